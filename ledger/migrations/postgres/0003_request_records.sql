-- Idempotency records: one row per command that was applied, written in the same
-- transaction as the command's events (see docs/decisions/0007). Append-only, like the log.
CREATE TABLE ledger_requests (
    record_id uuid PRIMARY KEY,           -- uuid5(program, request_id) = the transaction id
    program_id text NOT NULL,
    request_id text NOT NULL,
    command text NOT NULL,
    request_hash text NOT NULL,           -- SHA-256 of the canonical request, for key reuse
    member_id text NOT NULL,
    response bytea NOT NULL,              -- the answer, in the event store's JSON transcoding
    originator_id uuid,                   -- the event whose position the answer reports
    originator_version bigint
);

CREATE FUNCTION ledger_requests_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_requests is append-only (% refused)', TG_OP;
END;
$$;

CREATE TRIGGER ledger_requests_no_update_or_delete
    BEFORE UPDATE OR DELETE ON ledger_requests
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_requests_append_only();
