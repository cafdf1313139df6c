-- Snapshots hold an account's state as its code then shaped it. This release changed that
-- shape (MemberAccount.debt_of, the tier window keyed by qualifies_until): a snapshot taken
-- before it would restore an account without them (AttributeError, or a tier of 0). They
-- are a cache, not part of the audited log: drop them, and loads replay the events and take
-- new ones (docs/decisions/0010). Any later change of the account's state shape does the same.
DELETE FROM stored_snapshots;
