-- The time of each account's newest event (the event numbered `last_seq`),
-- on the account's row, so the write path reads it with the row it locks
-- instead of in a statement of its own: the next event of an account is
-- never stamped earlier. NULL where nothing wrote it (rows loaded in bulk,
-- and the ones below without events): the write path then reads the
-- events, as before.
ALTER TABLE accounts ADD COLUMN last_event_at timestamptz;
UPDATE accounts a SET last_event_at = e.at
  FROM events e
 WHERE e.account_id = a.account_id AND e.seq = a.last_seq;
