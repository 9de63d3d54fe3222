//! The replica's starting point: every pair's L2 book and last sequence number, read from
//! PostgreSQL in one consistent snapshot, so the gateway does not replay the whole `events`
//! topic when it starts (at 1.6M events/min, a day of retention is billions of records).
//!
//! The engine writes a batch's orders, its `last_seq` and the offset of its last `events` record
//! in one transaction, so one REPEATABLE READ snapshot sees a book exactly as of some `last_seq`,
//! and where in `events` that state ends. The events consumer starts right after that record and
//! drops everything at or below each pair's `last_seq` (the replica's duplicate rule), so nothing
//! after the snapshot is missed and nothing before it is applied twice. A row written before the
//! engine stored that offset falls back to the records produced shortly before the snapshot's
//! time (under the old engine, events were produced only after their commit).

use std::collections::HashMap;

use protocol::PairId;
use sqlx::{PgPool, Row};

/// One pair's book as of `last_seq`: (price, total open quantity) per level, in units.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PairSnapshot {
    pub last_seq: u64,
    /// Offset of the `events` record holding `last_seq`'s event; -1 when not stored (nothing
    /// committed yet, or committed by an engine that did not store it).
    pub events_offset: i64,
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
    for row in sqlx::query("SELECT pair_id, last_seq, events_offset FROM pair_offsets")
        .fetch_all(&mut *tx)
        .await?
    {
        let pair: i32 = row.try_get(0)?;
        let last_seq: i64 = row.try_get(1)?;
        let snap = pairs.entry(pair as PairId).or_default();
        snap.last_seq = u64::try_from(last_seq).unwrap_or(0);
        snap.events_offset = row.try_get(2)?;
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

impl Snapshot {
    /// Where the replica reads each pair's `events` partition from, on top of this snapshot.
    pub fn replica_start(&self) -> crate::hub::ReplicaStart {
        let after = self
            .pairs
            .iter()
            .filter_map(|(pair, snap)| {
                let after = match (snap.events_offset, snap.last_seq) {
                    (offset, _) if offset >= 0 => offset,
                    // Nothing committed: every record there is newer than the snapshot.
                    (_, 0) => -1,
                    // Committed by an engine that did not store the offset: by time.
                    _ => return None,
                };
                Some((*pair, after))
            })
            .collect();
        crate::hub::ReplicaStart::At {
            taken_at_ms: self.taken_at_ms,
            after,
        }
    }
}
