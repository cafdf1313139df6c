-- Snapshots of long-lived accounts (every 200 events): a cache of an account's state at a
-- version, read instead of replaying everything before it. Not part of the audited log: it
-- can be deleted and is rebuilt as accounts move on. Shape: eventsourcing 9.5's recorder.
CREATE TABLE ledger_snapshots (
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    topic text,
    state bytea,
    PRIMARY KEY (originator_id, originator_version)
);
