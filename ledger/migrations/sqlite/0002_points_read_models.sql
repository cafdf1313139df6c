-- Read models of the points ledger, built by projections/ from the event log.
-- Times are integer microseconds since the Unix epoch (UTC) on both backends.

CREATE TABLE projection_tracking (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);

CREATE TABLE rm_programs (
    program_id TEXT PRIMARY KEY,
    created_position BIGINT NOT NULL
);

CREATE TABLE rm_accounts (
    account_id TEXT NOT NULL UNIQUE,
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    points_available BIGINT NOT NULL,
    points_held BIGINT NOT NULL,
    points_debt BIGINT NOT NULL,
    cash_minor BIGINT NOT NULL,
    bonus_minor BIGINT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    version BIGINT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (program_id, member_id)
);

CREATE TABLE rm_transactions (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    transaction_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    points_delta BIGINT NOT NULL,
    held_delta BIGINT NOT NULL,
    debt_delta BIGINT NOT NULL,
    cash_delta_minor BIGINT NOT NULL,
    bonus_delta_minor BIGINT NOT NULL,
    points_after BIGINT NOT NULL,
    held_after BIGINT NOT NULL,
    debt_after BIGINT NOT NULL,
    cash_after_minor BIGINT NOT NULL,
    bonus_after_minor BIGINT NOT NULL,
    -- Tier window: qualifying points this row adds (or a reversal removes), dated by the earn.
    qualifying_delta BIGINT NOT NULL,
    qualifying_at BIGINT NOT NULL,
    occurred_at BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    store_id TEXT NOT NULL,
    order_ref TEXT NOT NULL,
    reason TEXT NOT NULL,
    operator_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    reverses_transaction_id TEXT NOT NULL,
    hold_id TEXT NOT NULL,
    PRIMARY KEY (program_id, member_id, position)
);

CREATE INDEX rm_transactions_by_occurred ON rm_transactions (program_id, member_id, occurred_at);

CREATE TABLE rm_lots (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    lot_id TEXT NOT NULL,
    earned_at BIGINT NOT NULL,
    expires_at BIGINT,
    points BIGINT NOT NULL,
    remaining BIGINT NOT NULL,
    held BIGINT NOT NULL,
    expired BIGINT NOT NULL,
    qualifying INTEGER NOT NULL,
    PRIMARY KEY (program_id, member_id, lot_id)
);

-- The expiry sweep looks for lots with points left whose expiry has passed.
CREATE INDEX rm_lots_expiry ON rm_lots (program_id, expires_at) WHERE remaining > 0;

CREATE TABLE rm_holds (
    program_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    hold_id TEXT NOT NULL,
    points BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (program_id, member_id, hold_id)
);

-- The hold sweeper looks for active holds whose TTL has run out.
CREATE INDEX rm_holds_active ON rm_holds (expires_at) WHERE status = 'ACTIVE';
