-- Member behaviour for marketing (docs/insights.md, decision 28), built by the `insights`
-- projection (projections/insights.py) from the log. Times are integer microseconds since
-- the epoch, UTC (decision 5); money in minor units.

-- Each programme's time zone (where its days end) and `facts_until`: the latest occurred_at
-- of any enrolment, purchase or refund of it. At an as_of at or after it, the stored "now"
-- facts below are exactly the facts at as_of (ledger/insights_queries.py).
CREATE TABLE rm_insight_programs (
    program_id TEXT PRIMARY KEY,
    program_key TEXT NOT NULL UNIQUE,
    time_zone TEXT NOT NULL,
    facts_until BIGINT NOT NULL
);
-- Which member each account is (events name only the account): this projection's own copy.
CREATE TABLE rm_insight_accounts (
    account_id TEXT PRIMARY KEY,
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL
);

-- One row per purchase (an Earn with purchase_minor > 0, at its occurred_at), and one per
-- refund of it (a reversal of that Earn, at its own occurred_at): an as_of subtracts only
-- the refunds that occurred by then.
CREATE TABLE rm_insight_purchases (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    store_id TEXT NOT NULL,
    purchase_minor BIGINT NOT NULL,
    points BIGINT NOT NULL,
    PRIMARY KEY (program_id, member_id, transaction_id)
);
CREATE INDEX rm_insight_purchases_by_time ON rm_insight_purchases (program_id, occurred_at);
CREATE TABLE rm_insight_refunds (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    purchase_id TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    amount_minor BIGINT NOT NULL,
    points BIGINT NOT NULL,
    PRIMARY KEY (program_id, member_id, transaction_id)
);

-- Per member: the enrolment and the lifetime facts once every purchase and refund recorded
-- so far has occurred (NULL days and instants: no purchase). last_purchase_day is the
-- local day's ordinal (date.toordinal), the value recency is scored on.
CREATE TABLE rm_insight_members (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    lifetime_purchases BIGINT NOT NULL,
    lifetime_value_minor BIGINT NOT NULL,
    purchase_cycle_days BIGINT NOT NULL,
    first_purchase_at BIGINT,
    last_purchase_at BIGINT,
    last_purchase_day BIGINT,
    favourite_store_id TEXT NOT NULL,
    PRIMARY KEY (program_id, member_id)
);

-- The programme's quintile cuts over the members' lifetime facts (ledger/domain/insights.py
-- ProgrammeCuts): the values where scores 2..5 start, comma-separated, for R (last purchase
-- day ordinal), F (lifetime purchases) and M (lifetime net money). Refreshed at the end of
-- each batch that changed a member's purchases.
CREATE TABLE rm_insight_cuts (
    program_id TEXT PRIMARY KEY,
    scored_members BIGINT NOT NULL,
    recency_starts TEXT NOT NULL,
    frequency_starts TEXT NOT NULL,
    monetary_starts TEXT NOT NULL
);

-- Per store, the net money and the purchases that still count, once every refund recorded
-- so far has occurred.
CREATE TABLE rm_insight_stores (
    program_id TEXT NOT NULL,
    store_id TEXT NOT NULL,
    net_minor BIGINT NOT NULL,
    purchases BIGINT NOT NULL,
    PRIMARY KEY (program_id, store_id)
);

-- Points earned and redeemed (each net of its reversals) and stored value loaded and used
-- (net of cash-outs and refunds), for the redemption and usage rates: one row per event
-- that moves them, at its occurred_at, and their sums per UTC day (day = occurred_at
-- // 86,400,000,000), so an as_of reads whole days plus the part of its own day.
CREATE TABLE rm_insight_flows (
    program_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    occurred_at BIGINT NOT NULL,
    points_earned BIGINT NOT NULL,
    points_redeemed BIGINT NOT NULL,
    value_loaded BIGINT NOT NULL,
    value_used BIGINT NOT NULL,
    PRIMARY KEY (program_id, position)
);
CREATE INDEX rm_insight_flows_by_time ON rm_insight_flows (program_id, occurred_at);
CREATE TABLE rm_insight_flows_daily (
    program_id TEXT NOT NULL,
    day BIGINT NOT NULL,
    points_earned BIGINT NOT NULL,
    points_redeemed BIGINT NOT NULL,
    value_loaded BIGINT NOT NULL,
    value_used BIGINT NOT NULL,
    PRIMARY KEY (program_id, day)
);
