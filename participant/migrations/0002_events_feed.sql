-- Snapshots of account balances, and the change feed (outbox).

-- The balance of an account right after its event `seq`, written in the same
-- local transaction as every Nth event of the account (WALLET_SNAPSHOT_EVERY).
-- `as_of` starts from the newest snapshot at or before the instant and folds
-- only the events after it. `at` is the time of event `seq`; an account's
-- event times never go down, so every event up to `seq` is at or before it.
-- No foreign key: a partition move copies these rows like the events.
CREATE TABLE snapshots (
    account_id     text NOT NULL,
    seq            bigint NOT NULL,
    posted         bigint NOT NULL,
    held           bigint NOT NULL,
    pending_credit bigint NOT NULL,
    at             timestamptz NOT NULL,
    PRIMARY KEY (account_id, seq)
);

-- The change feed. The write path (the store's save of a transaction's
-- changes, never a trigger, never a bulk import such as a partition move)
-- adds ONE row per local transaction that wrote anything for the feed:
-- `body` holds its entries in order (a JSON array of self-contained copies:
-- one per event, and one per transfer decided aborted there, kind
-- `transfer_aborted`), `entries` how many. One row per transaction, not per
-- event, keeps the feed's cost on the write path to a single insert however
-- large the batch. Deleting a moved partition's events leaves these rows
-- alone.
--
-- `id` is the insertion order. Positions are handed out later by the
-- publisher, which numbers the committed rows it can see, oldest `id` first,
-- after the last position handed out: a row's entries get positions
-- `first_position` .. `first_position + entries - 1`. A row of a transaction
-- still in flight is invisible to it and is numbered by a later round, above
-- everything numbered before, so a reader that has read up to position P
-- never finds an entry below P appearing later. Positions are 1, 2, 3, ...
-- with no gaps.
CREATE TABLE outbox (
    id             bigserial NOT NULL,
    first_position bigint UNIQUE,
    entries        integer NOT NULL CHECK (entries > 0),
    body           json NOT NULL
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE first_position IS NULL;

-- The last position the publisher handed out (one row).
CREATE TABLE outbox_head (
    only_row      boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last_position bigint NOT NULL
);
INSERT INTO outbox_head (last_position) VALUES (0);
