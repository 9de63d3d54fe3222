//! Client queries of what the engine committed to PostgreSQL: `open_orders`, `order_status`,
//! `my_trades`. Each answer names, per pair, the `seq` it reflects (`pair_offsets.last_seq`,
//! read in the same REPEATABLE READ snapshot as the rows: the engine writes a batch's orders,
//! trades and `last_seq` in one transaction), so a client that subscribed first applies only the
//! pushes above it.
//!
//! PostgreSQL trails `events` by the engine's commit interval, and this gateway may already
//! have pushed events the database does not hold yet, before the client's connection joined.
//! An answer is therefore held back until the database has reached, for every pair it covers,
//! the seq this gateway had read when the query began ([`CATCH_UP_WAIT`] at most): with the
//! pushes the connection receives after it, nothing is missed.
//!
//! The work is bounded: the account's rate limit, [`QUERY_CONCURRENCY_MAX`] queries at a time
//! per gateway, a statement timeout, a row limit, and indexes that serve each statement
//! (`infra/migrations/0007_account_queries.sql`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use protocol::ws::{
    ErrorBody, ErrorCode, Liquidity, MY_TRADES_LIMIT_DEFAULT, MY_TRADES_LIMIT_MAX, MyTrade,
    MyTrades, MyTradesQuery, OPEN_ORDERS_MAX, OpenOrders, OrderInfo, OrderState, OrderStatus,
    OrderStatusQuery,
};
use protocol::{
    AccountId, OrderType, PairId, PairRegistry, PairSpec, Price, Qty, Side, TimeInForce,
};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::hub::Hub;

/// Queries running at once on one gateway (waiting for the database to catch up included);
/// more are answered `overloaded`. The pool has 8 connections, shared with logins.
pub const QUERY_CONCURRENCY_MAX: usize = 16;
/// How long an answer may wait for the database to reach what this gateway already pushed.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(2);
const CATCH_UP_POLL: Duration = Duration::from_millis(20);
/// Every statement of a query.
const STATEMENT_TIMEOUT_MS: u32 = 2000;
/// `retry_after_ms` of an `overloaded` query.
pub const QUERY_RETRY_AFTER_MS: u64 = 250;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("the database has not caught up with the stream within {0:?}")]
    Behind(Duration),
}

impl From<QueryError> for ErrorBody {
    fn from(e: QueryError) -> ErrorBody {
        match e {
            QueryError::Behind(_) => {
                let mut b = ErrorBody::new(
                    ErrorCode::Overloaded,
                    "the database is behind the stream; retry",
                );
                b.retry_after_ms = Some(QUERY_RETRY_AFTER_MS);
                b
            }
            QueryError::Db(e) => {
                tracing::warn!(error = %e, "query failed");
                ErrorBody::new(ErrorCode::Internal, "cannot read the database now; retry")
            }
        }
    }
}

fn db_account(account: AccountId) -> i64 {
    i64::try_from(account.0).unwrap_or(i64::MAX)
}

/// A read-only REPEATABLE READ transaction with a statement timeout.
async fn snapshot(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"
    )))
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

/// `last_seq` of each of `pairs` in the transaction's snapshot (0: nothing committed yet).
async fn seqs(
    tx: &mut Transaction<'static, Postgres>,
    pairs: &[PairId],
) -> Result<HashMap<PairId, u64>, sqlx::Error> {
    let ids: Vec<i32> = pairs.iter().map(|p| *p as i32).collect();
    let rows = sqlx::query("SELECT pair_id, last_seq FROM pair_offsets WHERE pair_id = ANY($1)")
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?;
    let mut out: HashMap<PairId, u64> = pairs.iter().map(|p| (*p, 0)).collect();
    for row in rows {
        let pair: i32 = row.try_get(0)?;
        let seq: i64 = row.try_get(1)?;
        out.insert(pair as PairId, u64::try_from(seq).unwrap_or(0));
    }
    Ok(out)
}

/// A snapshot in which every pair of `pairs` is at or above the seq the hub had read when the
/// query began (fresh snapshots until it is), and those pairs' seqs. The caller reads its rows
/// in it and commits.
async fn caught_up(
    pool: &PgPool,
    hub: &Hub,
    pairs: &[PairId],
) -> Result<(Transaction<'static, Postgres>, HashMap<PairId, u64>), QueryError> {
    let targets: Vec<(PairId, u64)> = pairs.iter().map(|p| (*p, hub.last_seq(*p))).collect();
    let wait = CatchUp::new();
    loop {
        let mut tx = snapshot(pool).await?;
        let seqs = seqs(&mut tx, pairs).await?;
        let behind = targets
            .iter()
            .any(|(p, target)| seqs.get(p).copied().unwrap_or(0) < *target);
        if !behind {
            return Ok((tx, seqs));
        }
        tx.rollback().await?;
        wait.again().await?;
    }
}

/// The bounded wait of a query for the database to catch up.
pub struct CatchUp {
    started: tokio::time::Instant,
}

impl CatchUp {
    pub fn new() -> CatchUp {
        CatchUp {
            started: tokio::time::Instant::now(),
        }
    }

    /// Sleeps before the next try, or gives up after [`CATCH_UP_WAIT`].
    pub async fn again(&self) -> Result<(), QueryError> {
        if self.started.elapsed() >= CATCH_UP_WAIT {
            metrics::counter!("gateway_query_behind_total").increment(1);
            return Err(QueryError::Behind(CATCH_UP_WAIT));
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
        Ok(())
    }
}

impl Default for CatchUp {
    fn default() -> CatchUp {
        CatchUp::new()
    }
}

fn named_seqs(registry: &PairRegistry, seqs: HashMap<PairId, u64>) -> BTreeMap<String, u64> {
    seqs.into_iter()
        .filter_map(|(p, s)| registry.get(p).map(|spec| (spec.symbol.clone(), s)))
        .collect()
}

const ORDER_COLUMNS: &str = "pair_id, order_id, client_order_id, side, order_type, tif, \
    post_only, price, qty, filled_qty, status, created_seq, updated_seq";

fn decode_err(what: &str, value: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("unexpected {what} {value:?}").into())
}

fn order_info(registry: &PairRegistry, row: &PgRow) -> Result<OrderInfo, sqlx::Error> {
    let pair: i32 = row.try_get("pair_id")?;
    let spec = registry
        .get(pair as PairId)
        .ok_or_else(|| decode_err("pair", &pair.to_string()))?;
    let text = |name: &str| -> Result<String, sqlx::Error> { row.try_get::<String, _>(name) };
    let side = match text("side")?.as_str() {
        "buy" => Side::Buy,
        "sell" => Side::Sell,
        other => return Err(decode_err("side", other)),
    };
    let order_type = match text("order_type")?.as_str() {
        "limit" => OrderType::Limit,
        "market" => OrderType::Market,
        other => return Err(decode_err("order type", other)),
    };
    let tif = match text("tif")?.as_str() {
        "gtc" => TimeInForce::Gtc,
        "ioc" => TimeInForce::Ioc,
        "fok" => TimeInForce::Fok,
        other => return Err(decode_err("tif", other)),
    };
    let status = match text("status")?.as_str() {
        "open" => OrderState::Open,
        "filled" => OrderState::Filled,
        "cancelled" => OrderState::Cancelled,
        "expired" => OrderState::Expired,
        "expired_stp" => OrderState::ExpiredStp,
        other => return Err(decode_err("status", other)),
    };
    let qty: i64 = row.try_get("qty")?;
    let filled: i64 = row.try_get("filled_qty")?;
    let order_id: i64 = row.try_get("order_id")?;
    let seq = |name: &str| -> Result<u64, sqlx::Error> {
        Ok(u64::try_from(row.try_get::<i64, _>(name)?).unwrap_or(0))
    };
    // A done order has nothing left; an open one has what is not filled.
    let remaining = if status == OrderState::Open {
        qty - filled
    } else {
        0
    };
    Ok(OrderInfo {
        pair: spec.symbol.clone(),
        order_id: u64::try_from(order_id).unwrap_or(0),
        client_order_id: row.try_get("client_order_id")?,
        side,
        order_type,
        tif,
        post_only: row.try_get("post_only")?,
        price: row
            .try_get::<Option<i64>, _>("price")?
            .map(|p| spec.format_price(Price(p))),
        qty: spec.format_qty(Qty(qty)),
        filled_qty: spec.format_qty(Qty(filled)),
        remaining_qty: spec.format_qty(Qty(remaining)),
        status,
        created_seq: seq("created_seq")?,
        updated_seq: seq("updated_seq")?,
    })
}

fn covered(registry: &PairRegistry, only: Option<&PairSpec>) -> Vec<PairId> {
    match only {
        Some(spec) => vec![spec.id],
        None => registry.iter().map(|s| s.id).collect(),
    }
}

/// `open_orders`: the account's open orders (oldest first, at most [`OPEN_ORDERS_MAX`]).
pub async fn open_orders(
    pool: &PgPool,
    hub: &Hub,
    registry: &PairRegistry,
    account: AccountId,
    only: Option<&PairSpec>,
) -> Result<OpenOrders, QueryError> {
    let pairs = covered(registry, only);
    let ids: Vec<i32> = pairs.iter().map(|p| *p as i32).collect();
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM orders \
         WHERE account_id = $1 AND status = 'open' AND pair_id = ANY($2) \
         ORDER BY order_id LIMIT $3"
    );
    let (mut tx, seqs) = caught_up(pool, hub, &pairs).await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(db_account(account))
        .bind(&ids)
        .bind(i64::from(OPEN_ORDERS_MAX) + 1)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let truncated = rows.len() > OPEN_ORDERS_MAX as usize;
    let orders = rows
        .iter()
        .take(OPEN_ORDERS_MAX as usize)
        .map(|r| order_info(registry, r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(OpenOrders {
        orders,
        as_of_seq: named_seqs(registry, seqs),
        truncated,
    })
}

/// `order_status`: the order by id, or the account's newest with that client order id.
pub async fn order_status(
    pool: &PgPool,
    hub: &Hub,
    registry: &PairRegistry,
    account: AccountId,
    spec: &PairSpec,
    q: &OrderStatusQuery,
) -> Result<Result<OrderStatus, ErrorBody>, QueryError> {
    let by_id = format!(
        "SELECT {ORDER_COLUMNS} FROM orders \
         WHERE order_id = $3 AND account_id = $1 AND pair_id = $2"
    );
    let by_client_id = format!(
        "SELECT {ORDER_COLUMNS} FROM orders \
         WHERE account_id = $1 AND client_order_id = $3 AND pair_id = $2 \
         ORDER BY order_id DESC LIMIT 1"
    );
    let pairs = [spec.id];
    let (mut tx, seqs) = caught_up(pool, hub, &pairs).await?;
    let query = match (&q.order_id, &q.client_order_id) {
        (Some(id), _) => sqlx::query(sqlx::AssertSqlSafe(by_id))
            .bind(db_account(account))
            .bind(spec.id as i32)
            .bind(i64::try_from(*id).unwrap_or(i64::MAX)),
        (None, client_id) => sqlx::query(sqlx::AssertSqlSafe(by_client_id))
            .bind(db_account(account))
            .bind(spec.id as i32)
            .bind(client_id.clone()),
    };
    let row = query.fetch_optional(&mut *tx).await?;
    tx.commit().await?;
    let as_of_seq = seqs.get(&spec.id).copied().unwrap_or(0);
    Ok(match row {
        Some(row) => Ok(OrderStatus {
            order: order_info(registry, &row)?,
            as_of_seq,
        }),
        None => Err(ErrorBody::new(
            ErrorCode::OrderNotFound,
            format!(
                "no such order of this account in {} as of seq {as_of_seq} (an order appears \
                 once the engine has committed it, shortly after its accepted push)",
                spec.symbol
            ),
        )),
    })
}

/// Checks `my_trades`' params: the page size, and a cursor only with a pair.
pub fn my_trades_limit(q: &MyTradesQuery) -> Result<u32, ErrorBody> {
    let limit = q.limit.unwrap_or(MY_TRADES_LIMIT_DEFAULT);
    if limit == 0 || limit > MY_TRADES_LIMIT_MAX {
        return Err(ErrorBody::new(
            ErrorCode::InvalidParams,
            format!("limit must be from 1 to {MY_TRADES_LIMIT_MAX}"),
        ));
    }
    if q.before_trade_id.is_some() && q.pair.is_none() {
        return Err(ErrorBody::new(
            ErrorCode::InvalidParams,
            "before_trade_id needs pair: trade ids are per pair",
        ));
    }
    Ok(limit)
}

/// `my_trades`: the account's fills, newest first. With a pair, by trade id, and the cursor of
/// the next page when this one is full; across pairs, by time (the newest `limit` of each pair,
/// merged), without a cursor.
pub async fn my_trades(
    pool: &PgPool,
    hub: &Hub,
    registry: &PairRegistry,
    account: AccountId,
    only: Option<&PairSpec>,
    limit: u32,
    before_trade_id: Option<u64>,
) -> Result<MyTrades, QueryError> {
    let pairs = covered(registry, only);
    let ids: Vec<i32> = pairs.iter().map(|p| *p as i32).collect();
    // Each side is an index scan per pair (trades_by_maker_idx / trades_by_taker_idx), newest
    // trade id first, stopped at `limit`.
    let side = |who: &str| {
        format!(
            "(SELECT pair_id, trade_id, seq, price, qty, taker_side, ts_ns, \
                     {who}_order_id AS order_id, '{who}'::text AS liquidity \
              FROM trades \
              WHERE {who}_account_id = $1 AND pair_id = p.pair_id \
                AND ($3::bigint IS NULL OR trade_id < $3) \
              ORDER BY trade_id DESC LIMIT $4)"
        )
    };
    let order = if only.is_some() {
        "trade_id DESC, liquidity"
    } else {
        "ts_ns DESC, pair_id, trade_id DESC, liquidity"
    };
    let sql = format!(
        "SELECT t.* FROM unnest($2::integer[]) AS p(pair_id) CROSS JOIN LATERAL \
         ({} UNION ALL {}) t ORDER BY {order} LIMIT $4",
        side("maker"),
        side("taker")
    );
    let (mut tx, seqs) = caught_up(pool, hub, &pairs).await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(db_account(account))
        .bind(&ids)
        .bind(before_trade_id.map(|t| i64::try_from(t).unwrap_or(i64::MAX)))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut trades = Vec::with_capacity(rows.len());
    for row in &rows {
        let pair: i32 = row.try_get("pair_id")?;
        let spec = registry
            .get(pair as PairId)
            .ok_or_else(|| decode_err("pair", &pair.to_string()))?;
        let taker_side = match row.try_get::<String, _>("taker_side")?.as_str() {
            "buy" => Side::Buy,
            "sell" => Side::Sell,
            other => return Err(decode_err("side", other).into()),
        };
        let maker = row.try_get::<String, _>("liquidity")? == "maker";
        let int = |name: &str| -> Result<u64, sqlx::Error> {
            Ok(u64::try_from(row.try_get::<i64, _>(name)?).unwrap_or(0))
        };
        trades.push(MyTrade {
            pair: spec.symbol.clone(),
            trade_id: int("trade_id")?,
            seq: int("seq")?,
            order_id: int("order_id")?,
            side: if maker {
                taker_side.opposite()
            } else {
                taker_side
            },
            liquidity: if maker {
                Liquidity::Maker
            } else {
                Liquidity::Taker
            },
            price: spec.format_price(Price(row.try_get("price")?)),
            qty: spec.format_qty(Qty(row.try_get("qty")?)),
            ts_ms: int("ts_ns")? / 1_000_000,
        });
    }
    let next_before_trade_id = match (only, trades.last()) {
        (Some(_), Some(last)) if trades.len() == limit as usize => Some(last.trade_id),
        _ => None,
    };
    Ok(MyTrades {
        trades,
        as_of_seq: named_seqs(registry, seqs),
        next_before_trade_id,
    })
}
