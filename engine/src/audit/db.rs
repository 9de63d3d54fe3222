//! PostgreSQL, as the audit reads it: one REPEATABLE READ, READ ONLY transaction for the whole
//! run, so every table is seen as of one instant (the engine and the account stage write each
//! batch's rows together with their offset, so that instant is consistent), and streams in key
//! order where a table can be large.

use engine_core::RestingOrder;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use protocol::{AccountId, OrderId, PairSpec, Price, Qty, Side};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};

use super::AuditError;
use super::report::{Report, Rule, Violation};
use crate::rows;

/// Opens the snapshot every query of the audit reads.
pub(crate) async fn snapshot(pool: &PgPool) -> Result<Transaction<'static, Postgres>, AuditError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// A pair as PostgreSQL holds it: the offset its rows are committed up to and the book then.
pub(crate) struct Committed {
    /// -1: nothing committed.
    pub(crate) offset: i64,
    pub(crate) last_seq: u64,
    pub(crate) last_trade_id: u64,
    /// The open orders, by order id.
    pub(crate) open: Vec<RestingOrder>,
}

pub(crate) async fn committed(
    conn: &mut PgConnection,
    spec: &PairSpec,
) -> Result<Committed, AuditError> {
    let row = sqlx::query(
        "SELECT last_offset, last_seq, last_trade_id FROM pair_offsets WHERE pair_id = $1",
    )
    .bind(pair_id(spec))
    .fetch_optional(&mut *conn)
    .await?;
    let (offset, last_seq, last_trade_id) = match row {
        Some(r) => (
            r.try_get(0)?,
            r.try_get::<i64, _>(1)?,
            r.try_get::<i64, _>(2)?,
        ),
        None => (-1, 0, 0),
    };
    let rows = sqlx::query(
        "SELECT order_id, account_id, client_order_id, side, price, qty, filled_qty, stp, \
         priority_seq FROM orders WHERE pair_id = $1 AND status = 'open' ORDER BY order_id",
    )
    .bind(pair_id(spec))
    .fetch_all(&mut *conn)
    .await?;
    let mut open = Vec::with_capacity(rows.len());
    for r in rows {
        let side: String = r.try_get(3)?;
        let stp: String = r.try_get(7)?;
        let order_id: i64 = r.try_get(0)?;
        let bad = |what: &str| AuditError::Corrupt(format!("order {order_id}: unreadable {what}"));
        open.push(RestingOrder {
            order_id: OrderId(order_id as u64),
            account_id: AccountId(r.try_get::<i64, _>(1)? as u64),
            client_order_id: r.try_get(2)?,
            side: rows::parse_side(&side).ok_or_else(|| bad("side"))?,
            price: Price(
                r.try_get::<Option<i64>, _>(4)?
                    .ok_or_else(|| bad("price"))?,
            ),
            qty: Qty(r.try_get(5)?),
            filled_qty: Qty(r.try_get(6)?),
            stp: rows::parse_stp(&stp).ok_or_else(|| bad("stp"))?,
            priority_seq: r.try_get::<i64, _>(8)? as u64,
        });
    }
    Ok(Committed {
        offset,
        last_seq: last_seq as u64,
        last_trade_id: last_trade_id as u64,
        open,
    })
}

/// An order row whose quantities do not add up: its filled quantity is not the sum of its
/// trades, exceeds its quantity, or disagrees with its status.
const BAD_ORDER_ROWS: &str = "\
WITH fills AS (
  SELECT maker_order_id AS id, qty FROM trades WHERE pair_id = $1
  UNION ALL SELECT taker_order_id, qty FROM trades WHERE pair_id = $1
), filled AS (SELECT id, sum(qty) AS qty FROM fills GROUP BY id)
SELECT o.order_id, o.status, o.qty, o.filled_qty, coalesce(f.qty, 0)::bigint
FROM orders o LEFT JOIN filled f ON f.id = o.order_id
WHERE o.pair_id = $1 AND (o.filled_qty <> coalesce(f.qty, 0) OR o.filled_qty > o.qty
  OR (o.status = 'filled') <> (o.filled_qty = o.qty)
  OR (o.status = 'open' AND o.filled_qty >= o.qty))
ORDER BY o.order_id LIMIT $2";

/// `order_quantity` and `bought_equals_sold` on the pair's rows.
pub(crate) async fn check_order_rows(
    conn: &mut PgConnection,
    spec: &PairSpec,
    report: &mut Report,
) -> Result<(), AuditError> {
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE pair_id = $1")
        .bind(pair_id(spec))
        .fetch_one(&mut *conn)
        .await?;
    report.check(Rule::OrderQuantity, orders as u64);
    let limit = report.violations_max as i64 + 1;
    let bad = sqlx::query(BAD_ORDER_ROWS)
        .bind(pair_id(spec))
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    for r in bad {
        let (id, status): (i64, String) = (r.try_get(0)?, r.try_get(1)?);
        let (qty, filled, traded): (i64, i64, i64) = (r.try_get(2)?, r.try_get(3)?, r.try_get(4)?);
        report.violate(
            Violation::new(
                Rule::OrderQuantity,
                format!(
                    "PostgreSQL row: status {status}, quantity {qty}, filled {filled}, but its \
                     trades add up to {traded}"
                ),
            )
            .pair(&spec.symbol)
            .order_id(id as u64),
        );
    }
    let sums = sqlx::query(
        "SELECT (SELECT coalesce(sum(filled_qty), 0) FROM orders WHERE pair_id = $1 AND side = 'buy')::text, \
                (SELECT coalesce(sum(filled_qty), 0) FROM orders WHERE pair_id = $1 AND side = 'sell')::text, \
                (SELECT coalesce(sum(qty), 0) FROM trades WHERE pair_id = $1)::text",
    )
    .bind(pair_id(spec))
    .fetch_one(&mut *conn)
    .await?;
    let (bought, sold, traded): (String, String, String) =
        (sums.try_get(0)?, sums.try_get(1)?, sums.try_get(2)?);
    report.check(Rule::BoughtEqualsSold, 1);
    if bought != sold || bought != traded {
        report.violate(
            Violation::new(
                Rule::BoughtEqualsSold,
                format!(
                    "buy orders filled {bought}, sell orders filled {sold}, trades total {traded}"
                ),
            )
            .pair(&spec.symbol),
        );
    }
    Ok(())
}

/// One `trades` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TradeRow {
    pub(crate) trade_id: u64,
    pub(crate) seq: u64,
    pub(crate) price: Price,
    pub(crate) qty: i64,
    pub(crate) taker_side: Side,
    pub(crate) maker_order_id: OrderId,
    pub(crate) maker_account_id: AccountId,
    pub(crate) taker_order_id: OrderId,
    pub(crate) taker_account_id: AccountId,
    pub(crate) orders_offset: i64,
    pub(crate) ts_ns: u64,
}

/// The pair's trades in trade id order, streamed.
pub(crate) struct Trades<'c> {
    rows: BoxStream<'c, Result<PgRow, sqlx::Error>>,
    peeked: Option<TradeRow>,
}

impl<'c> Trades<'c> {
    pub(crate) fn open(conn: &'c mut PgConnection, spec: &PairSpec) -> Trades<'c> {
        let rows = sqlx::query(
            "SELECT trade_id, seq, price, qty, taker_side, maker_order_id, maker_account_id, \
             taker_order_id, taker_account_id, orders_offset, ts_ns FROM trades \
             WHERE pair_id = $1 ORDER BY trade_id",
        )
        .bind(pair_id(spec))
        .fetch(conn);
        Trades { rows, peeked: None }
    }

    pub(crate) async fn peek(&mut self) -> Result<Option<&TradeRow>, AuditError> {
        if self.peeked.is_none() {
            self.peeked = match self.rows.next().await {
                Some(row) => Some(trade_row(&row?)?),
                None => None,
            };
        }
        Ok(self.peeked.as_ref())
    }

    pub(crate) async fn pop(&mut self) -> Result<Option<TradeRow>, AuditError> {
        self.peek().await?;
        Ok(self.peeked.take())
    }
}

fn trade_row(r: &PgRow) -> Result<TradeRow, AuditError> {
    let side: String = r.try_get(4)?;
    let trade_id = r.try_get::<i64, _>(0)? as u64;
    Ok(TradeRow {
        trade_id,
        seq: r.try_get::<i64, _>(1)? as u64,
        price: Price(r.try_get(2)?),
        qty: r.try_get(3)?,
        taker_side: rows::parse_side(&side)
            .ok_or_else(|| AuditError::Corrupt(format!("trade {trade_id}: side {side:?}")))?,
        maker_order_id: OrderId(r.try_get::<i64, _>(5)? as u64),
        maker_account_id: AccountId(r.try_get::<i64, _>(6)? as u64),
        taker_order_id: OrderId(r.try_get::<i64, _>(7)? as u64),
        taker_account_id: AccountId(r.try_get::<i64, _>(8)? as u64),
        orders_offset: r.try_get(9)?,
        ts_ns: r.try_get::<i64, _>(10)? as u64,
    })
}

fn pair_id(spec: &PairSpec) -> i32 {
    i32::try_from(spec.id).expect("pair ids are partition numbers")
}
