-- Reconciliation against a processor's or bank's statement (docs/reconciliation.md).
--
-- rm_payments: the paid-cash read model (projections/payments.py), one row per TopUp (kind
-- TOP_UP, the cash paid, never the bonus) and per cash-out (kind REFUND, the cash handed
-- back, with the reversed top-up's payment_ref). Rebuilt from the log like every read model;
-- times in integer microseconds (decision 5).
CREATE TABLE rm_payments (
    program_id TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    payment_ref TEXT NOT NULL,
    kind TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    occurred_at BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    store_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (program_id, transaction_id)
);
-- A reconciliation reads one programme's period of business time.
CREATE INDEX rm_payments_by_time ON rm_payments (program_id, occurred_at);
-- Which member each account is (events name only the account): this projection's own copy.
CREATE TABLE rm_payment_accounts (
    account_id TEXT PRIMARY KEY,
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL
);

-- Stored reconciliation runs: written once, never changed (a re-run is a new run, or the
-- same run answered again for the same request_id). `result` is the whole outcome as JSON
-- (ledger/reconciliation_store.py): every statement line and every ledger entry of the
-- period is in it exactly once. `fingerprint`: SHA-256 of the canonical request, to tell a
-- repeated request_id from a reused one.
CREATE TABLE reconciliations (
    reconciliation_id TEXT PRIMARY KEY,   -- uuid5(program, request_id), or a random uuid
    program_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    source TEXT NOT NULL,
    since BIGINT,                         -- inclusive, business time; NULL: unbounded
    until BIGINT,                         -- exclusive; NULL: unbounded
    tolerance_seconds BIGINT NOT NULL,
    position BIGINT NOT NULL,             -- the payments read model's position it read
    reconciled_at BIGINT NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX reconciliations_by_program ON reconciliations (program_id, reconciled_at);

-- Who signed a run off, when, and why: one row per run at most, never changed.
CREATE TABLE reconciliation_sign_offs (
    reconciliation_id TEXT PRIMARY KEY REFERENCES reconciliations (reconciliation_id),
    operator_id TEXT NOT NULL,
    note TEXT NOT NULL,
    request_id TEXT NOT NULL,
    signed_off_at BIGINT NOT NULL
);

CREATE FUNCTION reconciliations_insert_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is insert-only (% refused)', TG_TABLE_NAME, TG_OP;
END;
$$;

CREATE TRIGGER reconciliations_no_update_or_delete
    BEFORE UPDATE OR DELETE ON reconciliations
    FOR EACH STATEMENT EXECUTE FUNCTION reconciliations_insert_only();
CREATE TRIGGER reconciliation_sign_offs_no_update_or_delete
    BEFORE UPDATE OR DELETE ON reconciliation_sign_offs
    FOR EACH STATEMENT EXECUTE FUNCTION reconciliations_insert_only();
