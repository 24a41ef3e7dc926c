-- The query side: read models built from the participants' change feeds,
-- and where the projector is in each feed. A batch of entries and the
-- cursor that moves past it commit in one transaction: each entry counts
-- exactly once. Every model is a sum of per-entry deltas, so the order in
-- which nodes' feeds are read does not change the result.

-- Position reached in each node's feed, and the node's head when last read.
CREATE TABLE feed_cursors (
    node_id       text PRIMARY KEY,
    position      bigint NOT NULL,
    head          bigint NOT NULL DEFAULT 0,
    -- Time of the newest entry projected from this node.
    last_entry_at timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per account: its balance and last activity.
CREATE TABLE account_view (
    account_id       text PRIMARY KEY,
    currency         text NOT NULL,
    posted           bigint NOT NULL,
    held             bigint NOT NULL,
    pending_credit   bigint NOT NULL,
    events           bigint NOT NULL,
    last_seq         bigint NOT NULL,
    last_activity_at timestamptz NOT NULL
);

-- The ledger: totals per currency across every account (minor units).
CREATE TABLE ledger (
    currency       text PRIMARY KEY,
    -- Money in accounts: deposited - withdrawn once nothing is in flight.
    posted         numeric NOT NULL,
    held           numeric NOT NULL,
    pending_credit numeric NOT NULL,
    deposited      numeric NOT NULL,
    withdrawn      numeric NOT NULL,
    accounts       bigint NOT NULL,
    events         bigint NOT NULL
);

-- Transfers decided aborted, by day (UTC), reason and currency.
CREATE TABLE rejected_transfers (
    day       date NOT NULL,
    reason    text NOT NULL,
    currency  text NOT NULL,
    transfers bigint NOT NULL,
    amount    numeric NOT NULL,
    PRIMARY KEY (day, reason, currency)
);
