-- The tier window in force is fixed per earn when the earn is recorded (an UpdateProgram of
-- tier_window_days applies only to earns recorded after it): each qualifying row keeps the
-- last instant (integer microseconds) its points count toward the tier. Rows made before
-- this migration count for the default window of 365 days, as their events are upcast.
ALTER TABLE rm_transactions ADD COLUMN qualifies_until BIGINT;
ALTER TABLE rm_lots ADD COLUMN qualifies_until BIGINT;
UPDATE rm_transactions SET qualifies_until = qualifying_at + 31536000000000
    WHERE qualifying_delta <> 0;
UPDATE rm_lots SET qualifies_until = earned_at + 31536000000000 WHERE qualifying = 1;
CREATE INDEX rm_transactions_qualifying
    ON rm_transactions (program_id, member_id, qualifies_until) WHERE qualifying_delta <> 0;
