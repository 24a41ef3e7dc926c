-- Partitions this node is moving away or has moved away (walletctl
-- partitions move). Read at start, so a fence survives a restart: a node
-- never again writes to a partition it gave away, whatever map a caller has.
CREATE TABLE partition_fences (
    partition  integer PRIMARY KEY,
    state      text NOT NULL CHECK (state IN ('draining', 'frozen', 'moved')),
    target     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
