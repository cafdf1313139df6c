-- The event store of the "Ledger" eventsourcing application (table ledger_events), in the
-- shape eventsourcing 9.5's PostgreSQL recorder expects: CREATE_TABLE is off, so this file
-- is the only place the table is defined.
CREATE TYPE stored_event_uuid AS (
    originator_id uuid,
    originator_version bigint,
    topic text,
    state bytea
);

CREATE TABLE ledger_events (
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    topic text,
    state bytea,
    notification_id bigserial,
    PRIMARY KEY (originator_id, originator_version)
) WITH (
    autovacuum_enabled = true,
    autovacuum_vacuum_threshold = 100000000,
    autovacuum_vacuum_scale_factor = 0.5,
    autovacuum_analyze_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01
);

CREATE UNIQUE INDEX ledger_events_notification_id_idx ON ledger_events (notification_id ASC);

-- The store is append-only: nothing may update or delete an event.
CREATE FUNCTION ledger_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_events is append-only (% refused)', TG_OP;
END;
$$;

CREATE TRIGGER ledger_events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON ledger_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_append_only();
