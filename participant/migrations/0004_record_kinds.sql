-- One idempotency domain: a deposit's or withdrawal's transaction_id is
-- claimed at its decision partition, in the same table as transfers, so an
-- id is used once across the cluster and across kinds. A movement's record
-- names its account as both from_account and to_account.
ALTER TABLE transfers
    ADD COLUMN kind text NOT NULL DEFAULT 'transfer'
        CHECK (kind IN ('transfer', 'deposit', 'withdrawal'));
