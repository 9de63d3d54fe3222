//! PostgreSQL: recovering a pair's book and offsets, and writing one batch in one transaction.
//!
//! A batch is ONE statement: data-modifying CTEs over `UNNEST`ed arrays, all conditioned on the
//! offset fence, so one round trip and one implicit transaction per batch, never one per row. Queries are runtime-checked `sqlx::query`, so the crate builds
//! without a database.

use engine_core::{BookState, OrderBook, RestingOrder, RestoreError};
use protocol::{AccountId, OrderId, PairSpec, Price, Qty};
use sqlx::{PgPool, Row};

use std::collections::BTreeMap;

use crate::record::Sources;
use crate::rows::{self, RowChanges};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    /// The pair's offset moved under us: another engine owns the pair now.
    #[error(
        "pair {pair_id}: last_offset is no longer {expected} (another engine committed); not \
         applying this batch"
    )]
    Fenced { pair_id: u32, expected: i64 },
    #[error(
        "pair_offsets row {pair_id} belongs to {stored:?}, but the pairs file names it {symbol:?}: \
         pairs must never be reordered"
    )]
    SymbolMismatch {
        pair_id: u32,
        stored: String,
        symbol: String,
    },
    #[error("pair {pair_id}: order {order_id} has an unreadable {column} {value:?}")]
    BadColumn {
        pair_id: u32,
        order_id: i64,
        column: &'static str,
        value: String,
    },
    #[error("pair {pair_id}: pair_sources holds an unreadable shard {shard}")]
    BadShard { pair_id: u32, shard: i32 },
    #[error("pair {pair_id}: the stored book cannot be restored: {source}")]
    Restore {
        pair_id: u32,
        #[source]
        source: RestoreError,
    },
}

/// A pair's durable state, as an actor starts from it.
pub struct Recovered {
    pub book: OrderBook,
    /// Last `orders` offset applied; -1 before the first.
    pub last_offset: i64,
    /// The last source applied per account shard, as of `last_offset`.
    pub sources: Sources,
}

/// Creates the pair's offsets row if it is missing; refuses a row naming another symbol.
pub async fn ensure_pair(pool: &PgPool, spec: &PairSpec) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO pair_offsets (pair_id, symbol, last_offset, last_seq, last_trade_id) \
         VALUES ($1, $2, -1, 0, 0) ON CONFLICT (pair_id) DO NOTHING",
    )
    .bind(pair_id_i32(spec.id))
    .bind(&spec.symbol)
    .execute(pool)
    .await?;
    let stored: String = sqlx::query_scalar("SELECT symbol FROM pair_offsets WHERE pair_id = $1")
        .bind(pair_id_i32(spec.id))
        .fetch_one(pool)
        .await?;
    if stored != spec.symbol {
        return Err(StoreError::SymbolMismatch {
            pair_id: spec.id,
            stored,
            symbol: spec.symbol.clone(),
        });
    }
    Ok(())
}

/// The last applied offset of each listed pair (-1 when it has none yet).
pub async fn last_offsets(pool: &PgPool, specs: &[PairSpec]) -> Result<Vec<i64>, StoreError> {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        ensure_pair(pool, spec).await?;
        let offset: i64 =
            sqlx::query_scalar("SELECT last_offset FROM pair_offsets WHERE pair_id = $1")
                .bind(pair_id_i32(spec.id))
                .fetch_one(pool)
                .await?;
        out.push(offset);
    }
    Ok(out)
}

/// Loads the pair's counters, sources and open orders and rebuilds its book, all from one
/// snapshot (they were written by the same transactions).
pub async fn recover(pool: &PgPool, spec: &PairSpec) -> Result<Recovered, StoreError> {
    ensure_pair(pool, spec).await?;
    let pair_id = spec.id;
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query(
        "SELECT last_offset, last_seq, last_trade_id FROM pair_offsets WHERE pair_id = $1",
    )
    .bind(pair_id_i32(pair_id))
    .fetch_one(&mut *tx)
    .await?;
    let last_offset: i64 = row.try_get(0)?;
    let last_seq: i64 = row.try_get(1)?;
    let last_trade_id: i64 = row.try_get(2)?;
    let stored: Vec<(i32, i64)> =
        sqlx::query_as("SELECT shard, last_offset FROM pair_sources WHERE pair_id = $1")
            .bind(pair_id_i32(pair_id))
            .fetch_all(&mut *tx)
            .await?;
    let sources = stored
        .into_iter()
        .map(|(shard, last)| {
            u32::try_from(shard)
                .map(|shard| (shard, last))
                .map_err(|_| StoreError::BadShard { pair_id, shard })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sources = Sources::from_stored(sources);
    let rows = sqlx::query(
        "SELECT order_id, account_id, client_order_id, side, price, qty, filled_qty, stp, \
         priority_seq FROM orders WHERE pair_id = $1 AND status = 'open'",
    )
    .bind(pair_id_i32(pair_id))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut orders = Vec::with_capacity(rows.len());
    for row in rows {
        let order_id: i64 = row.try_get(0)?;
        let bad = |column: &'static str, value: String| StoreError::BadColumn {
            pair_id,
            order_id,
            column,
            value,
        };
        let side: String = row.try_get(3)?;
        let stp: String = row.try_get(7)?;
        let price: Option<i64> = row.try_get(4)?;
        orders.push(RestingOrder {
            order_id: OrderId(order_id as u64),
            account_id: AccountId(row.try_get::<i64, _>(1)? as u64),
            client_order_id: row.try_get(2)?,
            side: rows::parse_side(&side).ok_or_else(|| bad("side", side.clone()))?,
            price: Price(price.ok_or_else(|| bad("price", "NULL".into()))?),
            qty: Qty(row.try_get(5)?),
            filled_qty: Qty(row.try_get(6)?),
            stp: rows::parse_stp(&stp).ok_or_else(|| bad("stp", stp.clone()))?,
            priority_seq: row.try_get::<i64, _>(8)? as u64,
        });
    }
    let state = BookState {
        last_seq: last_seq as u64,
        last_trade_id: last_trade_id as u64,
        orders,
    };
    let book = OrderBook::restore(spec.clone(), state)
        .map_err(|source| StoreError::Restore { pair_id, source })?;
    Ok(Recovered {
        book,
        last_offset,
        sources,
    })
}

/// Everything one batch writes.
pub struct BatchWrite<'a> {
    pub pair_id: u32,
    /// The pair's `last_offset` this batch was applied on top of (the fence).
    pub expected_offset: i64,
    pub last_offset: i64,
    pub last_seq: u64,
    pub last_trade_id: u64,
    /// Offset of the last `events` record of these batches; -1 when they published none.
    pub events_offset: i64,
    pub rows: &'a RowChanges,
    /// The account shards whose last applied source moved in these batches, and where to.
    pub sources: &'a BTreeMap<u32, i64>,
}

/// Writes one batch (or several consecutive ones, absorbed) atomically, in ONE statement: one
/// round trip, its own transaction.
///
/// Every data-modifying part is conditioned on the fence: the `pair_offsets` update matches only
/// while `last_offset` is still the one this batch was applied on top of. A second owner blocks
/// on that row lock, then (READ COMMITTED re-check) finds the offset moved, matches nothing, and
/// so writes nothing at all. The parts never touch the same row twice: `rows::derive` (and
/// `RowChanges::absorb`) split inserts from updates and collapse each order to its final state,
/// and `sources` holds each shard once. Only the shards that moved are upserted in
/// `pair_sources`, in the same statement, so the sources never disagree with `last_offset`.
pub async fn persist(pool: &PgPool, w: &BatchWrite<'_>) -> Result<(), StoreError> {
    let ins = InsertColumns::new(&w.rows.inserts);
    let mut upd = OrderColumns::with_capacity(w.rows.updates.len());
    for r in &w.rows.updates {
        upd.push(r);
    }
    let tr = TradeColumns::new(&w.rows.trades);
    let src = SourceColumns::new(w.sources);
    let cols = Columns {
        ins: &ins,
        upd: &upd,
        tr: &tr,
        src: &src,
    };
    let row = match run_persist(pool, PERSIST_SQL, w, &cols).await {
        Err(sqlx::Error::Database(e))
            if e.code().as_deref() == Some("23505") && e.constraint() == Some("orders_pkey") =>
        {
            // An order id the table already holds: a gateway broke the id contract. The
            // statement rolled back whole; write it again with the newest order winning, rather
            // than stall the pair on a batch it can never commit.
            tracing::warn!(
                pair_id = w.pair_id,
                error = %e,
                "an order id was used twice; the newest order replaces the stored one"
            );
            run_persist(pool, PERSIST_UPSERT_SQL, w, &cols).await?
        }
        other => other?,
    };
    let fenced: i64 = row.try_get(0)?;
    let updated: i64 = row.try_get(1)?;
    if fenced != 1 {
        return Err(StoreError::Fenced {
            pair_id: w.pair_id,
            expected: w.expected_offset,
        });
    }
    if updated != w.rows.updates.len() as i64 {
        // The book knew orders the table did not: the stored state and the book diverged.
        tracing::error!(
            pair_id = w.pair_id,
            expected = w.rows.updates.len(),
            updated,
            "order updates matched fewer rows than the book changed"
        );
    }
    Ok(())
}

/// A batch's values as the statement's arrays.
struct Columns<'a> {
    ins: &'a InsertColumns,
    upd: &'a OrderColumns,
    tr: &'a TradeColumns,
    src: &'a SourceColumns,
}

/// Runs one form of the batch statement with the batch's values.
async fn run_persist(
    pool: &PgPool,
    sql: &'static str,
    w: &BatchWrite<'_>,
    cols: &Columns<'_>,
) -> Result<sqlx::postgres::PgRow, sqlx::Error> {
    let Columns { ins, upd, tr, src } = *cols;
    sqlx::query(sql)
        .bind(pair_id_i32(w.pair_id))
        .bind(w.last_offset)
        .bind(w.last_seq as i64)
        .bind(w.last_trade_id as i64)
        .bind(w.expected_offset)
        // orders inserted ($6..$21)
        .bind(&ins.base.order_id)
        .bind(&ins.account)
        .bind(&ins.client_id)
        .bind(&ins.side)
        .bind(&ins.otype)
        .bind(&ins.tif)
        .bind(&ins.post_only)
        .bind(&ins.stp)
        .bind(&ins.base.price)
        .bind(&ins.base.qty)
        .bind(&ins.base.filled_qty)
        .bind(&ins.base.status)
        .bind(&ins.base.priority_seq)
        .bind(&ins.created)
        .bind(&ins.base.updated_seq)
        .bind(&ins.base.ts_ns)
        // orders updated ($22..$29)
        .bind(&upd.order_id)
        .bind(&upd.price)
        .bind(&upd.qty)
        .bind(&upd.filled_qty)
        .bind(&upd.status)
        .bind(&upd.priority_seq)
        .bind(&upd.updated_seq)
        .bind(&upd.ts_ns)
        // trades ($30..$40)
        .bind(&tr.trade_id)
        .bind(&tr.seq)
        .bind(&tr.price)
        .bind(&tr.qty)
        .bind(&tr.taker_side)
        .bind(&tr.maker_order)
        .bind(&tr.maker_account)
        .bind(&tr.taker_order)
        .bind(&tr.taker_account)
        .bind(&tr.offset)
        .bind(&tr.ts_ns)
        .bind(w.events_offset)
        // sources ($42..$43)
        .bind(&src.shard)
        .bind(&src.last_offset)
        .fetch_one(pool)
        .await
}

/// The batch statement, with `$conflict` as the orders insert's conflict clause.
macro_rules! persist_sql {
    ($conflict:literal) => {
        concat!(
            "\
WITH fence AS (
  UPDATE pair_offsets SET last_offset = $2, last_seq = $3, last_trade_id = $4,
    events_offset = GREATEST(events_offset, $41), updated_at = now()
  WHERE pair_id = $1 AND last_offset = $5
  RETURNING pair_id
), ins AS (
  INSERT INTO orders (order_id, pair_id, account_id, client_order_id, side, order_type, tif,
    post_only, stp, price, qty, filled_qty, status, priority_seq, created_seq, updated_seq, ts_ns)
  SELECT u.order_id, $1, u.account_id, u.client_order_id, u.side, u.order_type, u.tif,
    u.post_only, u.stp, u.price, u.qty, u.filled_qty, u.status, u.priority_seq, u.created_seq,
    u.updated_seq, u.ts_ns
  FROM UNNEST($6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::text[], $11::text[],
    $12::bool[], $13::text[], $14::bigint[], $15::bigint[], $16::bigint[], $17::text[],
    $18::bigint[], $19::bigint[], $20::bigint[], $21::bigint[])
    AS u(order_id, account_id, client_order_id, side, order_type, tif, post_only, stp, price,
    qty, filled_qty, status, priority_seq, created_seq, updated_seq, ts_ns)
  WHERE EXISTS (SELECT 1 FROM fence)
",
            $conflict,
            "\
  RETURNING 1
), upd AS (
  UPDATE orders o SET price = COALESCE(u.price, o.price), qty = u.qty,
    filled_qty = u.filled_qty, status = u.status,
    priority_seq = COALESCE(u.priority_seq, o.priority_seq),
    updated_seq = u.updated_seq, ts_ns = u.ts_ns
  FROM UNNEST($22::bigint[], $23::bigint[], $24::bigint[], $25::bigint[], $26::text[],
    $27::bigint[], $28::bigint[], $29::bigint[])
    AS u(order_id, price, qty, filled_qty, status, priority_seq, updated_seq, ts_ns)
  WHERE o.order_id = u.order_id AND EXISTS (SELECT 1 FROM fence)
  RETURNING 1
), tr AS (
  INSERT INTO trades (pair_id, trade_id, seq, price, qty, taker_side, maker_order_id,
    maker_account_id, taker_order_id, taker_account_id, orders_offset, ts_ns)
  SELECT $1, u.* FROM UNNEST($30::bigint[], $31::bigint[], $32::bigint[], $33::bigint[],
    $34::text[], $35::bigint[], $36::bigint[], $37::bigint[], $38::bigint[], $39::bigint[],
    $40::bigint[]) AS u
  WHERE EXISTS (SELECT 1 FROM fence)
  RETURNING 1
), src AS (
  INSERT INTO pair_sources (pair_id, shard, last_offset)
  SELECT $1, u.shard, u.last_offset FROM UNNEST($42::integer[], $43::bigint[])
    AS u(shard, last_offset)
  WHERE EXISTS (SELECT 1 FROM fence)
  ON CONFLICT (pair_id, shard) DO UPDATE SET last_offset = EXCLUDED.last_offset
  RETURNING 1
)
SELECT (SELECT count(*) FROM fence), (SELECT count(*) FROM upd),
  (SELECT count(*) FROM ins) + (SELECT count(*) FROM tr)"
        )
    };
}

/// The batch write. Order ids are unique system-wide by contract, so a plain insert: the
/// speculative insertion behind ON CONFLICT costs an index search, a WAL record and a
/// confirmation per row.
const PERSIST_SQL: &str = persist_sql!("");

/// The batch write when an inserted order id already exists: the newest order wins.
const PERSIST_UPSERT_SQL: &str = persist_sql!(
    "\
  ON CONFLICT (order_id) DO UPDATE SET pair_id = EXCLUDED.pair_id,
    account_id = EXCLUDED.account_id, client_order_id = EXCLUDED.client_order_id,
    side = EXCLUDED.side, order_type = EXCLUDED.order_type, tif = EXCLUDED.tif,
    post_only = EXCLUDED.post_only, stp = EXCLUDED.stp, price = EXCLUDED.price,
    qty = EXCLUDED.qty, filled_qty = EXCLUDED.filled_qty, status = EXCLUDED.status,
    priority_seq = EXCLUDED.priority_seq, created_seq = EXCLUDED.created_seq,
    updated_seq = EXCLUDED.updated_seq, ts_ns = EXCLUDED.ts_ns
"
);

/// Columns of newly accepted orders.
struct InsertColumns {
    base: OrderColumns,
    account: Vec<i64>,
    client_id: Vec<Option<String>>,
    side: Vec<&'static str>,
    otype: Vec<&'static str>,
    tif: Vec<&'static str>,
    post_only: Vec<bool>,
    stp: Vec<&'static str>,
    created: Vec<i64>,
}

impl InsertColumns {
    fn new(inserts: &[rows::OrderRow]) -> InsertColumns {
        let n = inserts.len();
        let mut c = InsertColumns {
            base: OrderColumns::with_capacity(n),
            account: Vec::with_capacity(n),
            client_id: Vec::with_capacity(n),
            side: Vec::with_capacity(n),
            otype: Vec::with_capacity(n),
            tif: Vec::with_capacity(n),
            post_only: Vec::with_capacity(n),
            stp: Vec::with_capacity(n),
            created: Vec::with_capacity(n),
        };
        for r in inserts {
            let new = r
                .new
                .as_ref()
                .expect("inserts carry their creation columns");
            c.base.push(r);
            c.account.push(new.account_id.0 as i64);
            c.client_id.push(new.client_order_id.clone());
            c.side.push(rows::side_str(new.side));
            c.otype.push(rows::order_type_str(new.order_type));
            c.tif.push(rows::tif_str(new.tif));
            c.post_only.push(new.post_only);
            c.stp.push(rows::stp_str(new.stp));
            c.created.push(new.created_seq as i64);
        }
        c
    }
}

/// Columns of the batch's trades.
struct TradeColumns {
    trade_id: Vec<i64>,
    seq: Vec<i64>,
    price: Vec<i64>,
    qty: Vec<i64>,
    taker_side: Vec<&'static str>,
    maker_order: Vec<i64>,
    maker_account: Vec<i64>,
    taker_order: Vec<i64>,
    taker_account: Vec<i64>,
    offset: Vec<i64>,
    ts_ns: Vec<i64>,
}

impl TradeColumns {
    fn new(trades: &[rows::TradeRow]) -> TradeColumns {
        let col = |f: &dyn Fn(&rows::TradeRow) -> i64| trades.iter().map(f).collect::<Vec<_>>();
        TradeColumns {
            trade_id: col(&|t| t.trade_id as i64),
            seq: col(&|t| t.seq as i64),
            price: col(&|t| t.price.0),
            qty: col(&|t| t.qty),
            taker_side: trades
                .iter()
                .map(|t| rows::side_str(t.taker_side))
                .collect(),
            maker_order: col(&|t| t.maker_order_id.0 as i64),
            maker_account: col(&|t| t.maker_account_id.0 as i64),
            taker_order: col(&|t| t.taker_order_id.0 as i64),
            taker_account: col(&|t| t.taker_account_id.0 as i64),
            offset: col(&|t| t.orders_offset),
            ts_ns: col(&|t| t.ts_ns as i64),
        }
    }
}

/// The account shards whose last source moved, and their new offsets.
struct SourceColumns {
    shard: Vec<i32>,
    last_offset: Vec<i64>,
}

impl SourceColumns {
    fn new(sources: &BTreeMap<u32, i64>) -> SourceColumns {
        SourceColumns {
            shard: sources
                .keys()
                .map(|s| i32::try_from(*s).expect("shards are partition numbers"))
                .collect(),
            last_offset: sources.values().copied().collect(),
        }
    }
}

/// The columns inserts and updates share, as arrays.
struct OrderColumns {
    order_id: Vec<i64>,
    price: Vec<Option<i64>>,
    qty: Vec<i64>,
    filled_qty: Vec<i64>,
    status: Vec<&'static str>,
    priority_seq: Vec<Option<i64>>,
    updated_seq: Vec<i64>,
    ts_ns: Vec<i64>,
}

impl OrderColumns {
    fn with_capacity(n: usize) -> OrderColumns {
        OrderColumns {
            order_id: Vec::with_capacity(n),
            price: Vec::with_capacity(n),
            qty: Vec::with_capacity(n),
            filled_qty: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            priority_seq: Vec::with_capacity(n),
            updated_seq: Vec::with_capacity(n),
            ts_ns: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, r: &rows::OrderRow) {
        self.order_id.push(r.order_id.0 as i64);
        self.price.push(r.price.map(|p| p.0));
        self.qty.push(r.qty);
        self.filled_qty.push(r.filled_qty);
        self.status.push(r.status.as_str());
        self.priority_seq.push(r.priority_seq.map(|s| s as i64));
        self.updated_seq.push(r.updated_seq as i64);
        self.ts_ns.push(r.ts_ns as i64);
    }
}

fn pair_id_i32(id: u32) -> i32 {
    i32::try_from(id).expect("pair ids are partition numbers, far below i32::MAX")
}
