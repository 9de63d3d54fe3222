-- The matching engine's durable state: what each pair's actor decided, written in one
-- transaction per batch together with the pair's offset (see pair_offsets). Plain PostgreSQL that
-- Amazon Aurora PostgreSQL runs unchanged (LZ4 TOAST compression needs PostgreSQL/Aurora 14+).
--
-- No foreign key from orders/trades to accounts: an order reaches the engine only through the
-- gateway, which authenticated the account before producing the command, and the engine must
-- never stall a pair (or roll back a whole batch) because of a row it cannot change. A key check
-- per row would also cost an index probe on the hot path for no protection the gateway lacks.

-- Every order the engine accepted, one row per order, holding its latest state. Open rows are
-- the resting book: an actor restores its OrderBook from `status = 'open'` rows on start.
CREATE TABLE orders (
    order_id        bigint  PRIMARY KEY,
    pair_id         integer NOT NULL,
    account_id      bigint  NOT NULL,
    client_order_id text    NULL,
    side            text    NOT NULL CHECK (side IN ('buy', 'sell')),
    order_type      text    NOT NULL CHECK (order_type IN ('limit', 'market')),
    tif             text    NOT NULL CHECK (tif IN ('gtc', 'ioc', 'fok')),
    post_only       boolean NOT NULL,
    stp             text    NOT NULL CHECK (stp IN ('expire_taker', 'expire_maker', 'expire_both')),
    -- Pair price units; NULL for market orders.
    price           bigint  NULL,
    -- Total quantity in pair quantity units, filled part included (amend changes it).
    qty             bigint  NOT NULL CHECK (qty > 0),
    filled_qty      bigint  NOT NULL CHECK (filled_qty >= 0 AND filled_qty <= qty),
    status          text    NOT NULL
        CHECK (status IN ('open', 'filled', 'cancelled', 'expired', 'expired_stp')),
    -- Seq of the event that gave the order its queue position; orders a price level on restore.
    priority_seq    bigint  NOT NULL,
    -- Seq of the order's Accepted event, and of the last event that changed it.
    created_seq     bigint  NOT NULL,
    updated_seq     bigint  NOT NULL,
    -- Gateway receive time of the command that last changed the order.
    ts_ns           bigint  NOT NULL
);

-- The resting book of one pair, read on every actor start.
CREATE INDEX orders_open_by_pair_idx ON orders (pair_id) WHERE status = 'open';

-- Every trade, once: the primary key makes a duplicate trade impossible.
CREATE TABLE trades (
    pair_id          integer NOT NULL,
    trade_id         bigint  NOT NULL,
    -- Seq of the Trade event in the pair's event sequence.
    seq              bigint  NOT NULL,
    price            bigint  NOT NULL,
    qty              bigint  NOT NULL CHECK (qty > 0),
    taker_side       text    NOT NULL CHECK (taker_side IN ('buy', 'sell')),
    maker_order_id   bigint  NOT NULL,
    maker_account_id bigint  NOT NULL,
    taker_order_id   bigint  NOT NULL,
    taker_account_id bigint  NOT NULL,
    -- The `orders` record whose command caused the trade.
    orders_offset    bigint  NOT NULL,
    ts_ns            bigint  NOT NULL,
    PRIMARY KEY (pair_id, trade_id)
);

-- The transactional outbox: one row per committed batch holding the batch's EventRecords
-- (newline-separated JSON), written in the same transaction as the results. After a crash an
-- actor republishes the rows past pair_offsets.published_offset; rows at or below it are pruned.
CREATE TABLE event_log (
    pair_id      integer NOT NULL,
    first_offset bigint  NOT NULL,
    last_offset  bigint  NOT NULL,
    first_seq    bigint  NOT NULL,
    last_seq     bigint  NOT NULL,
    records      bytea   COMPRESSION lz4 NOT NULL,
    PRIMARY KEY (pair_id, first_offset)
);

-- Last `orders` offset whose events the `events` topic has acknowledged; -1 before any.
ALTER TABLE pair_offsets ADD COLUMN published_offset bigint NOT NULL DEFAULT -1;
