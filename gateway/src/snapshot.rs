//! The replica's starting point: every pair's L2 book and last sequence number, read from
//! PostgreSQL in one consistent snapshot, so the gateway does not replay the whole `events`
//! topic when it starts (at 1.6M events/min, a day of retention is billions of records).
//!
//! The engine writes a batch's orders and its `last_seq` in one transaction, so one
//! REPEATABLE READ snapshot sees a book exactly as of some `last_seq`. The events consumer then
//! starts at the first record produced shortly before the snapshot's time and drops everything
//! at or below each pair's `last_seq` (the replica's duplicate rule), so nothing after the
//! snapshot is missed and nothing before it is applied twice.

use std::collections::HashMap;

use protocol::PairId;
use sqlx::{PgPool, Row};

/// One pair's book as of `last_seq`: (price, total open quantity) per level, in units.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PairSnapshot {
    pub last_seq: u64,
    pub bids: Vec<(i64, i64)>,
    pub asks: Vec<(i64, i64)>,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    /// The database's clock when the snapshot's transaction began (ms since the epoch): every
    /// commit it does not see happened later, and so did the production of its events.
    pub taken_at_ms: i64,
    pub pairs: HashMap<PairId, PairSnapshot>,
}

/// Reads every pair's book and last sequence number in one read-only snapshot.
pub async fn load(pool: &PgPool) -> Result<Snapshot, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    // now() is the transaction's start, at or before the snapshot the next statement takes.
    let taken_at_ms: i64 = sqlx::query_scalar("SELECT (extract(epoch FROM now()) * 1000)::bigint")
        .fetch_one(&mut *tx)
        .await?;
    let mut pairs: HashMap<PairId, PairSnapshot> = HashMap::new();
    for row in sqlx::query("SELECT pair_id, last_seq FROM pair_offsets")
        .fetch_all(&mut *tx)
        .await?
    {
        let pair: i32 = row.try_get(0)?;
        let last_seq: i64 = row.try_get(1)?;
        pairs.entry(pair as PairId).or_default().last_seq = u64::try_from(last_seq).unwrap_or(0);
    }
    for row in sqlx::query(
        "SELECT pair_id, side, price, sum(qty - filled_qty)::bigint FROM orders \
         WHERE status = 'open' AND price IS NOT NULL GROUP BY pair_id, side, price",
    )
    .fetch_all(&mut *tx)
    .await?
    {
        let pair: i32 = row.try_get(0)?;
        let side: String = row.try_get(1)?;
        let level = (row.try_get::<i64, _>(2)?, row.try_get::<i64, _>(3)?);
        if level.1 <= 0 {
            continue;
        }
        let book = pairs.entry(pair as PairId).or_default();
        match side.as_str() {
            "buy" => book.bids.push(level),
            _ => book.asks.push(level),
        }
    }
    tx.commit().await?;
    Ok(Snapshot { taken_at_ms, pairs })
}
