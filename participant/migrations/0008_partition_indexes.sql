-- A partition move reads a partition's legs and decision records in change
-- order, counts its changes and, once it has moved, drops them: by
-- partition each time. Indexed by (partition, change_no) instead of
-- change_no alone (migration 0005), so each of those reads only the
-- partition's own rows, whatever the node holds besides, and the drop never
-- scans the table (a scan starts at the table's head on every batch and
-- wades through the rows the batches before it left dead). The same number
-- of indexes as before on the write path.
DROP INDEX legs_change_no;
DROP INDEX transfers_change_no;
CREATE INDEX legs_partition_change ON legs (partition, change_no);
CREATE INDEX transfers_partition_change ON transfers (partition, change_no);

-- When a leg or a decision record was inserted, as a change number (the
-- `change_no` it got then; `change_no` itself moves on with every update).
-- A move's cut-over counts the rows inserted after the partition was last
-- counted whole, found through the (partition, change_no) index, instead
-- of counting the whole partition again while it is frozen. Rows from
-- before this migration have none: they were inserted before any count a
-- move makes from now on. A copy leaves it to the new owner's own number.
ALTER TABLE legs ADD COLUMN created_no bigint;
ALTER TABLE legs ALTER COLUMN created_no SET DEFAULT nextval('row_changes');
ALTER TABLE transfers ADD COLUMN created_no bigint;
ALTER TABLE transfers ALTER COLUMN created_no SET DEFAULT nextval('row_changes');
