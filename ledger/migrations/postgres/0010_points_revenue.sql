-- Finance's points figures (docs/accounting.md): IFRS 15 deferred revenue and breakage per
-- earn cohort, built by the `revenue` projection from the log.

-- The programme's time zone (where its days end) and, per change, the two settings an
-- earn's allocation uses: the value of a point and the expected redemption rate.
CREATE TABLE rm_revenue_programs (
    program_id TEXT PRIMARY KEY,
    program_key TEXT NOT NULL UNIQUE,
    currency TEXT NOT NULL,
    time_zone TEXT NOT NULL
);
CREATE TABLE rm_revenue_rates (
    program_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    point_value_minor BIGINT NOT NULL,
    rate_ppm BIGINT NOT NULL,
    PRIMARY KEY (program_id, position)
);
CREATE TABLE rm_revenue_accounts (
    account_id TEXT PRIMARY KEY,
    program_id TEXT NOT NULL
);

-- Each earn's allocation, an exact fraction (numerator / denominator, decimal text: they
-- outgrow 64 bits), kept so that its reversal takes back its share.
CREATE TABLE rm_revenue_earns (
    account_id TEXT NOT NULL,
    earn_id TEXT NOT NULL,
    points BIGINT NOT NULL,
    purchase_minor BIGINT NOT NULL,
    allocated_num TEXT NOT NULL,
    allocated_den TEXT NOT NULL,
    reversed_points BIGINT NOT NULL,
    PRIMARY KEY (account_id, earn_id)
);

-- One row per event that changes the figures: points issued and redeemed, purchases, and
-- the allocation as an exact fraction. Read for the part-day at an as_of, and summed
-- exactly when the per-day sums cannot decide a rounding.
CREATE TABLE rm_revenue_entries (
    program_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    issued BIGINT NOT NULL,
    redeemed BIGINT NOT NULL,
    purchases_minor BIGINT NOT NULL,
    allocated_num TEXT NOT NULL,
    allocated_den TEXT NOT NULL,
    PRIMARY KEY (program_id, position)
);
CREATE INDEX rm_revenue_entries_by_time ON rm_revenue_entries (program_id, recorded_at);

-- Per programme and local day of recording, the entries summed; the allocation as the sum
-- of each entry's floor in nano minor units, split in whole minor units and nanos so that
-- both fit 64 bits. `entries` bounds the floors' error (under one nano each).
CREATE TABLE rm_revenue_daily (
    program_id TEXT NOT NULL,
    day BIGINT NOT NULL,
    issued BIGINT NOT NULL,
    redeemed BIGINT NOT NULL,
    purchases_minor BIGINT NOT NULL,
    allocated_whole BIGINT NOT NULL,
    allocated_nanos BIGINT NOT NULL,
    entries BIGINT NOT NULL,
    PRIMARY KEY (program_id, day)
);

-- Breakage: each lot's cohort (the local day of its earn or adjustment, business time),
-- each redemption's lots in the order consumed (a reversal gives back last-consumed first),
-- and per programme and cohort day the points issued, reversed, redeemed and expired.
CREATE TABLE rm_breakage_lots (
    account_id TEXT NOT NULL,
    lot_id TEXT NOT NULL,
    day BIGINT NOT NULL,
    PRIMARY KEY (account_id, lot_id)
);
CREATE TABLE rm_breakage_redemptions (
    account_id TEXT NOT NULL,
    redemption_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    lot_id TEXT NOT NULL,
    consumed BIGINT NOT NULL,
    reversed BIGINT NOT NULL,
    PRIMARY KEY (account_id, redemption_id, seq)
);
CREATE TABLE rm_breakage_daily (
    program_id TEXT NOT NULL,
    day BIGINT NOT NULL,
    issued BIGINT NOT NULL,
    reversed BIGINT NOT NULL,
    redeemed BIGINT NOT NULL,
    expired BIGINT NOT NULL,
    PRIMARY KEY (program_id, day)
);
