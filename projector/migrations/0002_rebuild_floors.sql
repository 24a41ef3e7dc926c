-- A rebuild reads each node's history (its event log and the aborted
-- transfers it still keeps) before following its feed from where the feed
-- is still kept (see Follower::rebuild). What it read is noted here, so the
-- feed entries it covers are skipped, whichever node's feed carries them:
-- per account the last event sequence number read, and every aborted
-- transfer read. Emptied by the next rebuild.
CREATE TABLE rebuild_floors (
    account_id text PRIMARY KEY,
    seq        bigint NOT NULL
);
CREATE TABLE rebuild_aborted (
    transaction_id uuid PRIMARY KEY
);
