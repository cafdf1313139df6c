-- A group commit's insert in one statement (docs/decisions/0029): the events, in the order
-- given, with their hash links, and the commands' request records, in the transaction of
-- the one statement that calls this (the caller's connection is in autocommit, so that
-- statement commits, durably, when it returns). The table lock is the library's: inserts
-- into the events table are serialised, so notification ids commit in order and a reader
-- of "ids after my position" never skips a late commit (decision 4). Returns the events'
-- notification ids in their order. A duplicate (an account version or a request_id
-- written first by another writer) fails the whole statement on its primary key.
--
-- `programs` names the programme versions the group was decided under: if a newer version
-- of one was recorded (an UpdateProgram, by any process), nothing is written and the
-- statement fails with SQLSTATE TL001, and the group is decided again on the newer one.
-- Checked under the lock, so every command recorded after an UpdateProgram is decided
-- under it.
--
-- The rows come as JSON arrays (one JSON text each for the events and the records: the
-- client encodes them in C, where an array per column cost three to four times as much
-- client CPU): events [originator_id, originator_version, topic, state, prev_hash, hash],
-- records [record_id, program_id, request_id, command, request_hash, member_id, response,
-- originator_id, originator_version], programs [programme aggregate id, version], bytes
-- as hex.
CREATE FUNCTION ledger_insert_events(
    lock_timeout text, events jsonb, requests jsonb, programs jsonb
) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_array_length(events) > 0 THEN
        PERFORM set_config('lock_timeout', lock_timeout, true);
        LOCK TABLE ledger_events IN EXCLUSIVE MODE;
        IF EXISTS (
            SELECT 1 FROM jsonb_array_elements(programs) AS p(v)
            JOIN ledger_events e ON e.originator_id = (p.v->>0)::uuid
                AND e.originator_version > (p.v->>1)::bigint
        ) THEN
            RAISE EXCEPTION 'a programme was updated after the group was decided'
                USING ERRCODE = 'TL001';
        END IF;
        RETURN QUERY
            INSERT INTO ledger_events
                (originator_id, originator_version, topic, state, prev_hash, hash)
            SELECT (e->>0)::uuid, (e->>1)::bigint, e->>2, decode(e->>3, 'hex'),
                   decode(e->>4, 'hex'), decode(e->>5, 'hex')
            FROM jsonb_array_elements(events) WITH ORDINALITY AS t(e, n)
            ORDER BY n
            RETURNING notification_id;
    END IF;
    IF jsonb_array_length(requests) > 0 THEN
        INSERT INTO ledger_requests
            (record_id, program_id, request_id, command, request_hash, member_id, response,
             originator_id, originator_version)
        SELECT (r->>0)::uuid, r->>1, r->>2, r->>3, r->>4, r->>5, decode(r->>6, 'hex'),
               (r->>7)::uuid, (r->>8)::bigint
        FROM jsonb_array_elements(requests) AS t(r);
    END IF;
END;
$$;
