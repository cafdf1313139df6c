-- A group commit's insert in one statement (docs/decisions/0029): the events, in the order
-- given, with their hash links, and the commands' request records, in the transaction of
-- the one statement that calls this (the caller's connection is in autocommit, so that
-- statement commits, durably, when it returns). The table lock is the library's: inserts
-- into the events table are serialised, so notification ids commit in order and a reader
-- of "ids after my position" never skips a late commit (decision 4). Returns the events'
-- notification ids in their order. A duplicate (an account version or a request_id
-- written first by another writer) fails the whole statement on its primary key.
CREATE FUNCTION ledger_insert_events(
    lock_timeout text,
    e_originator_ids uuid[],
    e_originator_versions bigint[],
    e_topics text[],
    e_states bytea[],
    e_prev_hashes bytea[],
    e_hashes bytea[],
    r_record_ids uuid[],
    r_program_ids text[],
    r_request_ids text[],
    r_commands text[],
    r_request_hashes text[],
    r_member_ids text[],
    r_responses bytea[],
    r_originator_ids uuid[],
    r_originator_versions bigint[]
) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(e_originator_ids) > 0 THEN
        PERFORM set_config('lock_timeout', lock_timeout, true);
        LOCK TABLE ledger_events IN EXCLUSIVE MODE;
        RETURN QUERY
            INSERT INTO ledger_events
                (originator_id, originator_version, topic, state, prev_hash, hash)
            SELECT * FROM unnest(e_originator_ids, e_originator_versions, e_topics, e_states,
                                 e_prev_hashes, e_hashes)
            RETURNING notification_id;
    END IF;
    IF cardinality(r_record_ids) > 0 THEN
        INSERT INTO ledger_requests
            (record_id, program_id, request_id, command, request_hash, member_id, response,
             originator_id, originator_version)
        SELECT * FROM unnest(r_record_ids, r_program_ids, r_request_ids, r_commands,
                             r_request_hashes, r_member_ids, r_responses, r_originator_ids,
                             r_originator_versions);
    END IF;
END;
$$;
