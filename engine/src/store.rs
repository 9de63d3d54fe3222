//! PostgreSQL: recovering a pair's book and offsets, and writing one batch in one transaction.
//!
//! Every write is a set-based statement over `UNNEST`ed arrays (one round trip per table per
//! batch, never one per row). Queries are runtime-checked `sqlx::query`, so the crate builds
//! without a database.

use engine_core::{BookState, OrderBook, RestingOrder, RestoreError};
use protocol::{AccountId, OrderId, PairSpec, Price, Qty};
use sqlx::{PgPool, Row};

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
    /// Last `orders` offset whose events Kafka acknowledged.
    pub published_offset: i64,
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

/// Loads the pair's counters and open orders and rebuilds its book.
pub async fn recover(pool: &PgPool, spec: &PairSpec) -> Result<Recovered, StoreError> {
    ensure_pair(pool, spec).await?;
    let pair_id = spec.id;
    let row = sqlx::query(
        "SELECT last_offset, last_seq, last_trade_id, published_offset FROM pair_offsets \
         WHERE pair_id = $1",
    )
    .bind(pair_id_i32(pair_id))
    .fetch_one(pool)
    .await?;
    let last_offset: i64 = row.try_get(0)?;
    let last_seq: i64 = row.try_get(1)?;
    let last_trade_id: i64 = row.try_get(2)?;
    let published_offset: i64 = row.try_get(3)?;
    let rows = sqlx::query(
        "SELECT order_id, account_id, client_order_id, side, price, qty, filled_qty, stp, \
         priority_seq FROM orders WHERE pair_id = $1 AND status = 'open'",
    )
    .bind(pair_id_i32(pair_id))
    .fetch_all(pool)
    .await?;
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
        published_offset,
    })
}

/// Everything one batch writes.
pub struct BatchWrite<'a> {
    pub pair_id: u32,
    /// The pair's `last_offset` this batch was applied on top of (the fence).
    pub expected_offset: i64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_trade_id: u64,
    pub published_offset: i64,
    pub rows: &'a RowChanges,
    /// The batch's EventRecords, newline-separated JSON.
    pub records: &'a [u8],
}

/// Writes one batch atomically. The fence runs first so a second owner blocks on the row lock,
/// then finds the offset moved and rolls back before writing anything.
pub async fn persist(pool: &PgPool, w: &BatchWrite<'_>) -> Result<(), StoreError> {
    let pair = pair_id_i32(w.pair_id);
    let mut tx = pool.begin().await?;
    let fenced = sqlx::query(
        "UPDATE pair_offsets SET last_offset = $2, last_seq = $3, last_trade_id = $4, \
         published_offset = GREATEST(published_offset, $5), updated_at = now() \
         WHERE pair_id = $1 AND last_offset = $6",
    )
    .bind(pair)
    .bind(w.last_offset)
    .bind(w.last_seq as i64)
    .bind(w.last_trade_id as i64)
    .bind(w.published_offset)
    .bind(w.expected_offset)
    .execute(&mut *tx)
    .await?;
    if fenced.rows_affected() != 1 {
        tx.rollback().await?;
        return Err(StoreError::Fenced {
            pair_id: w.pair_id,
            expected: w.expected_offset,
        });
    }
    insert_orders(&mut tx, pair, w.rows).await?;
    update_orders(&mut tx, w.pair_id, w.rows).await?;
    insert_trades(&mut tx, pair, w.rows).await?;
    sqlx::query(
        "INSERT INTO event_log (pair_id, first_offset, last_offset, first_seq, last_seq, records) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(pair)
    .bind(w.first_offset)
    .bind(w.last_offset)
    .bind(w.first_seq as i64)
    .bind(w.last_seq as i64)
    .bind(w.records)
    .execute(&mut *tx)
    .await?;
    // The outbox only needs what Kafka has not acknowledged yet.
    sqlx::query("DELETE FROM event_log WHERE pair_id = $1 AND last_offset <= $2")
        .bind(pair)
        .bind(w.published_offset)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

type Tx<'c> = sqlx::Transaction<'c, sqlx::Postgres>;

async fn insert_orders(tx: &mut Tx<'_>, pair: i32, rows: &RowChanges) -> Result<(), StoreError> {
    if rows.inserts.is_empty() {
        return Ok(());
    }
    let n = rows.inserts.len();
    let mut c = OrderColumns::with_capacity(n);
    let (
        mut account,
        mut client_id,
        mut side,
        mut otype,
        mut tif,
        mut post_only,
        mut stp,
        mut created,
    ) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for r in &rows.inserts {
        let new = r
            .new
            .as_ref()
            .expect("inserts carry their creation columns");
        c.push(r);
        account.push(new.account_id.0 as i64);
        client_id.push(new.client_order_id.clone());
        side.push(rows::side_str(new.side));
        otype.push(rows::order_type_str(new.order_type));
        tif.push(rows::tif_str(new.tif));
        post_only.push(new.post_only);
        stp.push(rows::stp_str(new.stp));
        created.push(new.created_seq as i64);
    }
    // ON CONFLICT: order ids are unique system-wide by contract; should a gateway ever reuse
    // one, the newest order wins rather than the pair stalling on a batch it can never commit.
    sqlx::query(
        "INSERT INTO orders (order_id, pair_id, account_id, client_order_id, side, order_type, \
           tif, post_only, stp, price, qty, filled_qty, status, priority_seq, created_seq, \
           updated_seq, ts_ns) \
         SELECT u.order_id, $1, u.account_id, u.client_order_id, u.side, u.order_type, u.tif, \
           u.post_only, u.stp, u.price, u.qty, u.filled_qty, u.status, u.priority_seq, \
           u.created_seq, u.updated_seq, u.ts_ns \
         FROM UNNEST($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], \
           $8::bool[], $9::text[], $10::bigint[], $11::bigint[], $12::bigint[], $13::text[], \
           $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[]) \
           AS u(order_id, account_id, client_order_id, side, order_type, tif, post_only, stp, \
           price, qty, filled_qty, status, priority_seq, created_seq, updated_seq, ts_ns) \
         ON CONFLICT (order_id) DO UPDATE SET pair_id = EXCLUDED.pair_id, \
           account_id = EXCLUDED.account_id, client_order_id = EXCLUDED.client_order_id, \
           side = EXCLUDED.side, order_type = EXCLUDED.order_type, tif = EXCLUDED.tif, \
           post_only = EXCLUDED.post_only, stp = EXCLUDED.stp, price = EXCLUDED.price, \
           qty = EXCLUDED.qty, filled_qty = EXCLUDED.filled_qty, status = EXCLUDED.status, \
           priority_seq = EXCLUDED.priority_seq, created_seq = EXCLUDED.created_seq, \
           updated_seq = EXCLUDED.updated_seq, ts_ns = EXCLUDED.ts_ns",
    )
    .bind(pair)
    .bind(&c.order_id)
    .bind(&account)
    .bind(&client_id)
    .bind(&side)
    .bind(&otype)
    .bind(&tif)
    .bind(&post_only)
    .bind(&stp)
    .bind(&c.price)
    .bind(&c.qty)
    .bind(&c.filled_qty)
    .bind(&c.status)
    .bind(&c.priority_seq)
    .bind(&created)
    .bind(&c.updated_seq)
    .bind(&c.ts_ns)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn update_orders(tx: &mut Tx<'_>, pair_id: u32, rows: &RowChanges) -> Result<(), StoreError> {
    if rows.updates.is_empty() {
        return Ok(());
    }
    let mut c = OrderColumns::with_capacity(rows.updates.len());
    for r in &rows.updates {
        c.push(r);
    }
    let done = sqlx::query(
        "UPDATE orders o SET price = COALESCE(u.price, o.price), qty = u.qty, \
           filled_qty = u.filled_qty, status = u.status, \
           priority_seq = COALESCE(u.priority_seq, o.priority_seq), \
           updated_seq = u.updated_seq, ts_ns = u.ts_ns \
         FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], \
           $6::bigint[], $7::bigint[], $8::bigint[]) \
           AS u(order_id, price, qty, filled_qty, status, priority_seq, updated_seq, ts_ns) \
         WHERE o.order_id = u.order_id",
    )
    .bind(&c.order_id)
    .bind(&c.price)
    .bind(&c.qty)
    .bind(&c.filled_qty)
    .bind(&c.status)
    .bind(&c.priority_seq)
    .bind(&c.updated_seq)
    .bind(&c.ts_ns)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() != rows.updates.len() as u64 {
        // The book knew orders the table did not: the stored state and the book diverged.
        tracing::error!(
            pair_id,
            expected = rows.updates.len(),
            updated = done.rows_affected(),
            "order updates matched fewer rows than the book changed"
        );
    }
    Ok(())
}

async fn insert_trades(tx: &mut Tx<'_>, pair: i32, rows: &RowChanges) -> Result<(), StoreError> {
    if rows.trades.is_empty() {
        return Ok(());
    }
    let n = rows.trades.len();
    let mut cols: [Vec<i64>; 9] = std::array::from_fn(|_| Vec::with_capacity(n));
    let mut taker_side = Vec::with_capacity(n);
    for t in &rows.trades {
        let values = [
            t.trade_id as i64,
            t.seq as i64,
            t.price.0,
            t.qty,
            t.maker_order_id.0 as i64,
            t.maker_account_id.0 as i64,
            t.taker_order_id.0 as i64,
            t.taker_account_id.0 as i64,
            t.orders_offset,
        ];
        for (col, v) in cols.iter_mut().zip(values) {
            col.push(v);
        }
        taker_side.push(rows::side_str(t.taker_side));
    }
    let ts: Vec<i64> = rows.trades.iter().map(|t| t.ts_ns as i64).collect();
    let [
        trade_id,
        seq,
        price,
        qty,
        maker_order,
        maker_account,
        taker_order,
        taker_account,
        offset,
    ] = cols;
    sqlx::query(
        "INSERT INTO trades (pair_id, trade_id, seq, price, qty, taker_side, maker_order_id, \
           maker_account_id, taker_order_id, taker_account_id, orders_offset, ts_ns) \
         SELECT $1, * FROM UNNEST($2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], \
           $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], \
           $12::bigint[])",
    )
    .bind(pair)
    .bind(&trade_id)
    .bind(&seq)
    .bind(&price)
    .bind(&qty)
    .bind(&taker_side)
    .bind(&maker_order)
    .bind(&maker_account)
    .bind(&taker_order)
    .bind(&taker_account)
    .bind(&offset)
    .bind(&ts)
    .execute(&mut **tx)
    .await?;
    Ok(())
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

/// Records that Kafka acknowledged the events up to `published_offset` and prunes the outbox,
/// when no batch follows to carry it (idle pair, shutdown). Fenced like a batch.
pub async fn mark_published(
    pool: &PgPool,
    pair_id: u32,
    expected_offset: i64,
    published_offset: i64,
) -> Result<(), StoreError> {
    let pair = pair_id_i32(pair_id);
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE pair_offsets SET published_offset = GREATEST(published_offset, $2), \
         updated_at = now() WHERE pair_id = $1 AND last_offset = $3",
    )
    .bind(pair)
    .bind(published_offset)
    .bind(expected_offset)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        tx.rollback().await?;
        return Err(StoreError::Fenced {
            pair_id,
            expected: expected_offset,
        });
    }
    sqlx::query("DELETE FROM event_log WHERE pair_id = $1 AND last_offset <= $2")
        .bind(pair)
        .bind(published_offset)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Outbox rows not yet acknowledged by Kafka, oldest first: (last_offset, records).
pub async fn unpublished(
    pool: &PgPool,
    pair_id: u32,
    published_offset: i64,
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    let rows = sqlx::query(
        "SELECT last_offset, records FROM event_log WHERE pair_id = $1 AND last_offset > $2 \
         ORDER BY first_offset",
    )
    .bind(pair_id_i32(pair_id))
    .bind(published_offset)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

fn pair_id_i32(id: u32) -> i32 {
    i32::try_from(id).expect("pair ids are partition numbers, far below i32::MAX")
}
