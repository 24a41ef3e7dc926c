-- Bounded growth (participant/src/retention.rs): decision records and leg
-- (dedup) records are kept for `record_retention_secs` after they are
-- finished, then pruned in the background; the event log is the history
-- and is never pruned. The outbox is pruned behind the slowest registered
-- feed consumer.

-- When a decision record last changed: for a completed record, when it was
-- completed (after every leg applied the decision). Set by the store's save
-- on every update; a move copies it with the rest of the row.
ALTER TABLE transfers ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
-- What the pruner walks, oldest first: finished records and legs only.
CREATE INDEX transfers_finished ON transfers (updated_at) WHERE completed;
CREATE INDEX legs_finished ON legs (updated_at) WHERE state <> 'prepared';

-- Readers of this node's feed that hold its outbox back: each names itself
-- and the last position it has acknowledged (it never goes down). Outbox
-- rows whose entries are all at or below the smallest position here are
-- pruned; with no consumer registered, nothing is.
CREATE TABLE feed_consumers (
    name       text PRIMARY KEY,
    position   bigint NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The last position whose outbox row is gone: a read of the feed from
-- below it is refused (the reader rebuilds from the event tables).
ALTER TABLE outbox_head ADD COLUMN pruned_through bigint NOT NULL DEFAULT 0;
