-- The event store of the "Ledger" eventsourcing application, in the shape eventsourcing
-- 9.5's SQLite recorder expects (notification ids are the rowid).
CREATE TABLE stored_events (
    originator_id TEXT,
    originator_version INTEGER,
    topic TEXT,
    state BLOB,
    PRIMARY KEY (originator_id, originator_version)
);

-- The store is append-only: nothing may update or delete an event.
CREATE TRIGGER stored_events_no_update BEFORE UPDATE ON stored_events
BEGIN
    SELECT RAISE(ABORT, 'stored_events is append-only (UPDATE refused)');
END;

CREATE TRIGGER stored_events_no_delete BEFORE DELETE ON stored_events
BEGIN
    SELECT RAISE(ABORT, 'stored_events is append-only (DELETE refused)');
END;
