-- Stored value in the journal, and the sums finance's reports read (docs/accounting.md).
-- The journal is rebuilt from the log: its rows so far are dropped and its tracking reset,
-- so the projection replays every event into the new shape once.
DELETE FROM rm_postings;
DELETE FROM rm_journal_accounts;
DELETE FROM projection_tracking WHERE name = 'journal';

-- Programs as the journal needs them: the unit of their stored value, where their days end.
CREATE TABLE rm_journal_programs (
    program_id TEXT PRIMARY KEY,
    currency TEXT NOT NULL,
    time_zone TEXT NOT NULL
);

-- Per programme and local day (the day's first instant in its time zone, in integer
-- microseconds), the postings summed by ledger account (a member's accounts collapsed into
-- member:*:<kind>), unit and the store where the transaction happened. A report reads
-- whole days here and only the part-day at a bound from rm_postings.
CREATE TABLE rm_journal_daily (
    program_id TEXT NOT NULL,
    day BIGINT NOT NULL,
    ledger_account TEXT NOT NULL,
    unit TEXT NOT NULL,
    store_id TEXT NOT NULL,
    debit BIGINT NOT NULL,
    credit BIGINT NOT NULL,
    postings BIGINT NOT NULL,
    PRIMARY KEY (program_id, day, ledger_account, unit, store_id)
);
CREATE INDEX rm_postings_by_time ON rm_postings (program_id, recorded_at);
