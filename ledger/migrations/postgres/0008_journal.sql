-- The double-entry journal (docs/accounting.md): every event's balanced postings, one row
-- each, built by the journal projection. Per program and unit the amounts sum to zero at
-- every position. Times in integer microseconds, like the other read models.
CREATE TABLE rm_postings (
    program_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    seq INTEGER NOT NULL,
    transaction_id TEXT NOT NULL,
    ledger_account TEXT NOT NULL,
    unit TEXT NOT NULL,
    amount BIGINT NOT NULL,
    occurred_at BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    store_id TEXT NOT NULL,
    PRIMARY KEY (program_id, position, seq)
);
CREATE INDEX rm_postings_by_account ON rm_postings (program_id, ledger_account, position);
CREATE INDEX rm_postings_by_transaction ON rm_postings (program_id, transaction_id);
-- Which member each account is (events name only the account): the journal's own copy.
CREATE TABLE rm_journal_accounts (
    account_id TEXT PRIMARY KEY,
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL
);
