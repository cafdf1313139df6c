-- Idempotency records: one row per command that was applied, written in the same
-- transaction as the command's events (see docs/decisions/0007). Append-only, like the log.
CREATE TABLE requests (
    record_id TEXT PRIMARY KEY,           -- uuid5(program, request_id) as hex
    program_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    command TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    member_id TEXT NOT NULL,
    response BLOB NOT NULL,
    originator_id TEXT,                   -- hex, as in stored_events
    originator_version INTEGER
) WITHOUT ROWID;

CREATE TRIGGER requests_no_update BEFORE UPDATE ON requests
BEGIN
    SELECT RAISE(ABORT, 'requests is append-only (UPDATE refused)');
END;

CREATE TRIGGER requests_no_delete BEFORE DELETE ON requests
BEGIN
    SELECT RAISE(ABORT, 'requests is append-only (DELETE refused)');
END;
