-- as_of reads (decision 20) answer from history the points read models keep: each
-- transaction row carries the account's aggregate version after it and the programme
-- version it was decided under, and every change of a lot is one row of rm_lot_history
-- with the lot as it stood after that event. Existing rows cannot be given a lot's past
-- states, so the points read models are emptied and their tracking reset: the projection
-- replays the log once into the new shape (as 0009 did for the journal).
DELETE FROM rm_transactions;
DELETE FROM rm_lots;
DELETE FROM rm_holds;
DELETE FROM rm_accounts;
DELETE FROM rm_programs;
DELETE FROM projection_tracking WHERE name = 'points';

ALTER TABLE rm_transactions ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE rm_transactions ADD COLUMN program_version BIGINT NOT NULL DEFAULT 0;
-- The account as of a recorded instant: its last row recorded then or before.
CREATE INDEX rm_transactions_by_recorded
    ON rm_transactions (program_id, member_id, recorded_at, position);

-- One row per event that changed a lot: remaining, held and expired after it. A lot as of
-- T is its row with the greatest position recorded at or before T (the key's range).
CREATE TABLE rm_lot_history (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    lot_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    remaining BIGINT NOT NULL,
    held BIGINT NOT NULL,
    expired BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (program_id, member_id, lot_id, position)
);
