-- The NATS JetStream relay's durable position (ledger/relay.py, decision 24): for each relay
-- (named by its stream, subject prefix and the programmes it publishes), the last log
-- position whose message JetStream acknowledged. Written after the acks, never ahead of
-- them; on start a relay resumes after the greater of this and the position carried by its
-- last message in the stream, so a crash between an ack and this write repeats nothing.
-- updated_at: integer microseconds since the epoch, UTC (decision 5).
CREATE TABLE relay_positions (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
