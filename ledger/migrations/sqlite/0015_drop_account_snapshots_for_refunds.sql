-- Snapshots hold an account's state as its code then shaped it. This release gave each
-- earn record its purchase money and what reversals refunded of it (issue 15): a snapshot
-- taken before it would restore earns with a purchase of 0, and a later Reverse of them
-- would refund nothing. Snapshots are a cache, not part of the audited log: drop them, and
-- loads replay the events (which carry purchase_minor) and take new ones (decision 10, as
-- 0007 did). Numbered 0015: 0014 is the insights read model's.
DELETE FROM stored_snapshots;
