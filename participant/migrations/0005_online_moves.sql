-- Online partition moves (walletctl partitions move): the partition is
-- copied in chunks while it keeps serving, then only the changes made
-- meanwhile are copied while it is frozen.
--
-- Every row of a partition's tables carries `change_no`, taken from one
-- sequence when the row is inserted and again whenever it is updated (every
-- UPDATE of these tables sets `change_no = nextval('row_changes')`; the
-- store's save and the bulk loader do). A copy reads rows in `change_no`
-- order after a cursor, so a row changed after it was copied comes round
-- again. `change_no` is this node's own: a copied row gets a new one here.
-- Not indexed on accounts: an index on a column every balance update
-- changes would cost the hot path its HOT updates; a partition's accounts
-- are found through `accounts_partition` instead.
CREATE SEQUENCE row_changes;
ALTER TABLE accounts  ADD COLUMN change_no bigint NOT NULL DEFAULT nextval('row_changes');
ALTER TABLE events    ADD COLUMN change_no bigint NOT NULL DEFAULT nextval('row_changes');
ALTER TABLE snapshots ADD COLUMN change_no bigint NOT NULL DEFAULT nextval('row_changes');
ALTER TABLE legs      ADD COLUMN change_no bigint NOT NULL DEFAULT nextval('row_changes');
ALTER TABLE transfers ADD COLUMN change_no bigint NOT NULL DEFAULT nextval('row_changes');
CREATE INDEX events_change_no    ON events (change_no);
CREATE INDEX snapshots_change_no ON snapshots (change_no);
CREATE INDEX legs_change_no      ON legs (change_no);
CREATE INDEX transfers_change_no ON transfers (change_no);

-- A move's cut-over has a deadline: a partition fenced draining or frozen
-- past it is rolled back by this node on its own (the move goes back to
-- copying in etcd, the fence is lifted, the partition serves again here).
ALTER TABLE partition_fences ADD COLUMN deadline timestamptz;

-- On the node a partition is moving to: how far its copy has come, per
-- table, as the source's `change_no` of the last row copied. Updated in the
-- same local transaction as every chunk it imports, so a copy interrupted
-- anywhere resumes where it stopped, and a chunk is never applied twice.
CREATE TABLE partition_copies (
    partition  integer PRIMARY KEY,
    -- The node the rows come from, and the move (its start time in etcd).
    source     text NOT NULL,
    move_id    text NOT NULL,
    cursors    jsonb NOT NULL DEFAULT '{}',
    rows       bigint NOT NULL DEFAULT 0,
    bytes      bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
