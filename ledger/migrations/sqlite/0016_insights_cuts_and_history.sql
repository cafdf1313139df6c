-- The insights projection (decision 28, docs/performance.md) keeps the distribution its
-- quintile cuts are read from, so that a batch moves the cuts by what it changed instead of
-- reading every purchasing member: per programme and score (R: the last purchase day's
-- ordinal, F: lifetime purchases, M: lifetime net money), how many purchasing members have
-- each value (no row: none), and with each cut how many members are at or below it. And it
-- keeps each member's lifetime facts over business time, so that an as_of in the past reads
-- one row per member instead of every purchase.
CREATE TABLE rm_insight_values (
    program_id TEXT NOT NULL,
    score TEXT NOT NULL,
    value BIGINT NOT NULL,
    members BIGINT NOT NULL,
    PRIMARY KEY (program_id, score, value)
);
-- A value whose last member left is deleted in the same batch: this finds those rows.
CREATE INDEX rm_insight_values_emptied ON rm_insight_values (program_id) WHERE members = 0;
-- Each member's lifetime facts that a list of members reads (rm_insight_members' counts,
-- net money, cycle and last purchase day) from `since` until `until` (NULL: still so):
-- one row per instant at which one of their purchases or refunds occurred, ending at the
-- next, so that the facts at any as_of are the row whose span holds it (no row: no purchase
-- by then). A batch rewrites a member's rows from its earliest new fact on.
CREATE TABLE rm_insight_member_facts (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    since BIGINT NOT NULL,
    until BIGINT,
    lifetime_purchases BIGINT NOT NULL,
    lifetime_value_minor BIGINT NOT NULL,
    purchase_cycle_days BIGINT NOT NULL,
    last_purchase_day BIGINT,
    PRIMARY KEY (program_id, member_id, since)
);
-- The enrolment's local day (date.toordinal in the programme's zone): what a list of members
-- reads for each one's enrolment days and anniversary, with no time zone arithmetic.
ALTER TABLE rm_insight_members ADD COLUMN enrolled_day BIGINT NOT NULL DEFAULT 0;
-- What a purchase after every other fact of the member needs to update their lifetime facts
-- without reading their purchases (ledger/domain/insights.py Lifetime): how many gaps of
-- each length lie between their purchase days and their net money per store (JSON lists of
-- pairs, ascending), and the instant of their newest purchase or refund (0: none).
ALTER TABLE rm_insight_members ADD COLUMN purchase_gaps TEXT NOT NULL DEFAULT '[]';
ALTER TABLE rm_insight_members ADD COLUMN store_nets TEXT NOT NULL DEFAULT '[]';
ALTER TABLE rm_insight_members ADD COLUMN newest_fact_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE rm_insight_cuts ADD COLUMN recency_counts TEXT NOT NULL DEFAULT '';
ALTER TABLE rm_insight_cuts ADD COLUMN frequency_counts TEXT NOT NULL DEFAULT '';
ALTER TABLE rm_insight_cuts ADD COLUMN monetary_counts TEXT NOT NULL DEFAULT '';

-- The insights read model replays once into the new shape (as 0009 and 0012 did theirs).
DELETE FROM rm_insight_programs;
DELETE FROM rm_insight_accounts;
DELETE FROM rm_insight_purchases;
DELETE FROM rm_insight_refunds;
DELETE FROM rm_insight_members;
DELETE FROM rm_insight_cuts;
DELETE FROM rm_insight_stores;
DELETE FROM rm_insight_flows;
DELETE FROM rm_insight_flows_daily;
DELETE FROM projection_tracking WHERE name = 'insights';
