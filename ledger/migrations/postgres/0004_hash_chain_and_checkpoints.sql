-- Tamper evidence (docs/audit.md): every event carries the SHA-256 chain of its account
-- (prev_hash, hash), computed by our recorder as the event is stored; checkpoints commit to
-- the whole log up to a position.
ALTER TABLE ledger_events ADD COLUMN prev_hash bytea, ADD COLUMN hash bytea;

CREATE TABLE ledger_checkpoints (
    checkpoint_id bigint PRIMARY KEY,       -- 1, 2, 3, ...: each commits to the one before
    position bigint NOT NULL,               -- covers every event at or below this position
    event_count bigint NOT NULL,            -- events at or below `position`
    prev_digest bytea NOT NULL,             -- the previous checkpoint's digest (zeros for 1)
    digest bytea NOT NULL,                  -- SHA-256, see docs/audit.md
    signature bytea,                        -- Ed25519 over `digest`, when a key is configured
    public_key bytea,                       -- the raw 32-byte key that signed
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The newest event of every account written since the previous checkpoint.
CREATE TABLE ledger_checkpoint_heads (
    checkpoint_id bigint NOT NULL REFERENCES ledger_checkpoints,
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    position bigint NOT NULL,
    hash bytea NOT NULL,
    PRIMARY KEY (checkpoint_id, originator_id)
);

CREATE FUNCTION ledger_checkpoints_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP;
END;
$$;

CREATE TRIGGER ledger_checkpoints_no_update_or_delete
    BEFORE UPDATE OR DELETE ON ledger_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_checkpoints_append_only();

CREATE TRIGGER ledger_checkpoint_heads_no_update_or_delete
    BEFORE UPDATE OR DELETE ON ledger_checkpoint_heads
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_checkpoints_append_only();
