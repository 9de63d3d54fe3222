-- The gateway's client queries (docs/API.md, "Orders and fills"): an account's open orders, one
-- order by its client order id, and an account's fills as maker or taker, newest first. Without
-- these, each is a scan of a whole table per request.
--
-- Cost on the engine's hot path: one more index entry per order insert and status change (the
-- open index is partial, like orders_open_by_pair_idx, whose predicate already makes a status
-- change a non-HOT update), one per order with a client id, and two per trade. Fills that only
-- change filled_qty stay HOT: no index names it.

-- open_orders: the account's open orders, oldest first.
CREATE INDEX orders_open_by_account_idx ON orders (account_id, order_id) WHERE status = 'open';

-- order_status by client_order_id (the newest of the account's orders with it).
CREATE INDEX orders_by_client_id_idx ON orders (account_id, client_order_id, order_id)
    WHERE client_order_id IS NOT NULL;

-- my_trades: per pair, newest trade id first, stopped at the page size.
CREATE INDEX trades_by_maker_idx ON trades (maker_account_id, pair_id, trade_id);
CREATE INDEX trades_by_taker_idx ON trades (taker_account_id, pair_id, trade_id);
