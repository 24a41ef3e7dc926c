-- Tenants (API keys, see the README's "Security"): an account belongs to the
-- tenant that opened it, and a transfer's, deposit's or withdrawal's record
-- to the tenant that asked for it. NULL: opened or asked for by an admin key
-- (or before tenants existed), visible to admin keys only. A partition move
-- copies both columns with the rest of the row.
ALTER TABLE accounts ADD COLUMN owner text;
ALTER TABLE transfers ADD COLUMN tenant text;
