-- The account stage's open orders as a periodic snapshot plus the log, instead of one
-- `reservations` row per open order written with every batch (docs/ARCHITECTURE.md, "Accounts
-- and balances").
--
-- Why: under load the reservation rows were the stage's largest statement in PostgreSQL
-- (pg_stat_statements, 2026-12-03: INSERT INTO reservations 12.6 s of execution in a 30 s run,
-- more than the ledger's rows), and most of them were deleted again a moment later, when the
-- order filled or was cancelled. A resting order cost an insert, an index entry, a delete and
-- a vacuum; now it costs nothing until a snapshot, which writes one row per shard.
--
-- A shard commits, every batch as before: its position, the balances it changed, its ledger
-- lines, transfers and settled seqs. Every ACCOUNTS_SNAPSHOT_INTERVAL_MS (10 s by default), the
-- same transaction also replaces the shard's snapshot: its whole state at `position` (a position
-- the shard committed, always the end of a record). A shard recovers by loading the snapshot and
-- replaying its `accounts` partition from there up to `account_shards.last_offset`, applying the
-- lines without publishing or writing anything (their effects are already in Kafka and here),
-- and then checks that the balances it replayed equal the `balances` rows.
--
-- `state`: JSON (stored as bytes: nothing in PostgreSQL reads into it), written by the service
-- (`accounts::store::Snapshot`):
--   {"v":1,
--    "balances":[[account_id, "ASSET", "available", "reserved"], ...],
--    "orders":[{"order_id":..,"account_id":..,"pair_id":..,"side":"buy"|"sell","asset":"EUR",
--               "limit_price":..|null,"qty":..,"filled_qty":..,"reserved":"units",
--               "client_order_id":..|null,"amend_from":[price,qty]|null}, ...],
--    "pair_seqs":[[pair_id, last_seq], ...]}
-- Amounts are strings of integers in the asset's smallest unit (they can exceed 64 bits).
-- Transfers seen up to `position` are the `transfers` rows at or below it.
CREATE TABLE account_snapshots (
    shard      integer     PRIMARY KEY,
    position   bigint      NOT NULL,
    state      bytea       NOT NULL,
    taken_at   timestamptz NOT NULL DEFAULT now()
);

-- `reservations` is no longer written. A shard that finds no snapshot recovers from it once
-- (the rows of a stage that ran before this migration), writes a snapshot with its first
-- commit and deletes its rows in that transaction.
COMMENT ON TABLE reservations IS
    'Before 0010 only: read once by a shard without a snapshot, then emptied.';
