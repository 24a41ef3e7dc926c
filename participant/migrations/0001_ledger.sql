-- The participant's whole durable state. Balances are a projection of the
-- events, kept in the same local transaction as every event.

CREATE TABLE accounts (
    account_id     text PRIMARY KEY,
    partition      integer NOT NULL,
    currency       text NOT NULL,
    -- Money that is the account's, in minor units.
    posted         bigint NOT NULL DEFAULT 0 CHECK (posted >= 0),
    -- Part of posted held by prepared debits: available = posted - held.
    held           bigint NOT NULL DEFAULT 0 CHECK (held >= 0 AND held <= posted),
    -- Prepared credits, not yet the account's.
    pending_credit bigint NOT NULL DEFAULT 0 CHECK (pending_credit >= 0),
    last_seq       bigint NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX accounts_partition ON accounts (partition);

CREATE TABLE events (
    account_id     text NOT NULL REFERENCES accounts (account_id),
    seq            bigint NOT NULL,
    kind           text NOT NULL,
    amount         bigint NOT NULL CHECK (amount >= 0),
    transaction_id uuid,
    counterparty   text,
    at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (account_id, seq)
);

-- One row per leg of a transfer (debit, credit) and per deposit or
-- withdrawal: the unique key makes every leg operation idempotent, and an
-- 'aborted' row with no effect is the tombstone that refuses a late prepare.
CREATE TABLE legs (
    transaction_id     uuid NOT NULL,
    role               text NOT NULL,
    account_id         text NOT NULL,
    partition          integer NOT NULL,
    amount             bigint NOT NULL,
    currency           text NOT NULL,
    counterparty       text,
    decision_partition integer,
    fingerprint        text,
    state              text NOT NULL CHECK (state IN ('prepared', 'committed', 'aborted')),
    reason_code        text,
    reason_message     text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (transaction_id, role)
);
CREATE INDEX legs_prepared ON legs (created_at) WHERE state = 'prepared';

-- Dedup record and decision of each transfer whose decision partition is
-- here. Presumed abort: no 'committed' row means the transfer did not happen.
CREATE TABLE transfers (
    transaction_id uuid PRIMARY KEY,
    partition      integer NOT NULL,
    fingerprint    text NOT NULL,
    from_account   text NOT NULL,
    to_account     text NOT NULL,
    amount         bigint NOT NULL,
    currency       text NOT NULL,
    state          text NOT NULL CHECK (state IN ('preparing', 'committed', 'aborted')),
    reason_code    text,
    reason_message text,
    lease_until    timestamptz NOT NULL,
    -- The coordinator attempt that holds the lease.
    lease_owner    uuid NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    decided_at     timestamptz,
    completed      boolean NOT NULL DEFAULT false
);
CREATE INDEX transfers_open ON transfers (created_at) WHERE NOT completed;
