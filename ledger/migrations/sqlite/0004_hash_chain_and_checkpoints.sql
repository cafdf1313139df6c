-- Tamper evidence (docs/audit.md): every event carries the SHA-256 chain of its account
-- (prev_hash, hash), computed by our recorder as the event is stored; checkpoints commit to
-- the whole log up to a position.
ALTER TABLE stored_events ADD COLUMN prev_hash BLOB;
ALTER TABLE stored_events ADD COLUMN hash BLOB;

CREATE TABLE checkpoints (
    checkpoint_id INTEGER PRIMARY KEY,
    position INTEGER NOT NULL,
    event_count INTEGER NOT NULL,
    prev_digest BLOB NOT NULL,
    digest BLOB NOT NULL,
    signature BLOB,
    public_key BLOB,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE checkpoint_heads (
    checkpoint_id INTEGER NOT NULL REFERENCES checkpoints,
    originator_id TEXT NOT NULL,
    originator_version INTEGER NOT NULL,
    position INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (checkpoint_id, originator_id)
) WITHOUT ROWID;

CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN
    SELECT RAISE(ABORT, 'checkpoints is append-only (UPDATE refused)');
END;

CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN
    SELECT RAISE(ABORT, 'checkpoints is append-only (DELETE refused)');
END;

CREATE TRIGGER checkpoint_heads_no_update BEFORE UPDATE ON checkpoint_heads
BEGIN
    SELECT RAISE(ABORT, 'checkpoint_heads is append-only (UPDATE refused)');
END;

CREATE TRIGGER checkpoint_heads_no_delete BEFORE DELETE ON checkpoint_heads
BEGIN
    SELECT RAISE(ABORT, 'checkpoint_heads is append-only (DELETE refused)');
END;
