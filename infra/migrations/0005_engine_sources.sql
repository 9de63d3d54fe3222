-- Commands an account shard forwards to `orders` carry their source (the shard and the position
-- of its `accounts` line); a restarted shard forwards the same commands again. Per pair, the
-- engine applies each source once: it keeps the last source applied per shard and skips any
-- command at or below it (docs/ARCHITECTURE.md, "Accounts and balances").
--
-- Written by the pair's batch statement, in the same transaction as its pair_offsets row and
-- fenced by it (only the shards that moved are upserted), so an actor that restarts from
-- pair_offsets.last_offset restarts from the sources as of that offset, and applying the records
-- past it again decides every repeat as the first time.
CREATE TABLE pair_sources (
    pair_id     integer NOT NULL,
    shard       integer NOT NULL CHECK (shard >= 0),
    -- The source offset (protocol::accounts::position) of the last command applied from shard.
    last_offset bigint  NOT NULL,
    PRIMARY KEY (pair_id, shard)
-- Updated by most commits of a pair: free space keeps the updates HOT (see 0003_hot_rows).
) WITH (fillfactor = 10);
