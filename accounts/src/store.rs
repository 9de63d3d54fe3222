//! PostgreSQL: a shard's recovery, and its commit (balances, ledger rows, transfers, per-pair
//! settlement seqs, now and then a snapshot of the whole state, and its position, in one
//! transaction fenced on the previous position). Schema: `infra/migrations/0006_accounts.sql`;
//! the ledger is one row per commit since `0011_ledger_batches.sql`; open orders live in the
//! snapshot since `0010_account_snapshots.sql` (a recovery replays the log from it).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use accounts_core::{AssetId, AssetRegistry, Balance, Cause, Reservation};
use protocol::{AccountId, OrderId, PairId, Price, Qty, Side};
use sqlx::{PgPool, Row};

use crate::shard::{Effects, LedgerRow, OrderMeta, ShardState, TransferRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("shard {shard}: another process moved its position (expected {expected}); stopping")]
    Fenced { shard: u32, expected: i64 },
    #[error("shard {shard}: stored row is not valid: {what}")]
    Corrupt { shard: u32, what: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Makes the shard's position row exist (-1: nothing applied yet).
pub async fn ensure_shard(pool: &PgPool, shard: u32) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO account_shards (shard, last_offset) VALUES ($1, -1) ON CONFLICT DO NOTHING",
    )
    .bind(shard as i32)
    .execute(pool)
    .await?;
    Ok(())
}

fn units(shard: u32, text: &str) -> Result<i128, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt {
        shard,
        what: format!("amount {text:?}"),
    })
}

/// Where a recovery starts and what it must reach.
#[derive(Debug)]
pub struct Recovered {
    /// The shard's committed position (`account_shards.last_offset`, -1: nothing yet).
    pub last: i64,
    /// The position the loaded state stands at: the snapshot's, or `last` when there was none.
    /// The lines after it up to `last` must be replayed (applied without publishing).
    pub from: i64,
    /// The `balances` rows at `last`, which the snapshot and the lines replayed after it must
    /// give; `None` without a snapshot (the balances were loaded from those rows).
    pub balances_at_last: Option<BTreeMap<(AccountId, AssetId), Balance>>,
    /// No snapshot was found (a new shard, or one from before snapshots): the first commit
    /// must write one, since the per-order rows it recovered from are no longer kept.
    pub snapshot_due: bool,
}

/// Loads the shard's state into `state` (whose ledger must be empty): its snapshot if it has
/// one, else the rows of a stage from before snapshots (or nothing, for a new shard).
pub async fn recover(pool: &PgPool, state: &mut ShardState) -> Result<Recovered, StoreError> {
    let shard = state.shard;
    let s = shard as i32;
    ensure_shard(pool, shard).await?;
    let last: i64 = sqlx::query_scalar("SELECT last_offset FROM account_shards WHERE shard = $1")
        .bind(s)
        .fetch_one(pool)
        .await?;
    let snapshot: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT position, state FROM account_snapshots WHERE shard = $1")
            .bind(s)
            .fetch_optional(pool)
            .await?;
    let Some((from, bytes)) = snapshot else {
        recover_rows(pool, state).await?;
        load_transfers(pool, state, last).await?;
        return Ok(Recovered {
            last,
            from: last,
            balances_at_last: None,
            snapshot_due: true,
        });
    };
    if from > last {
        return Err(StoreError::Corrupt {
            shard,
            what: format!("snapshot at position {from} is ahead of the shard's position {last}"),
        });
    }
    Snapshot::restore(&bytes, state)?;
    load_transfers(pool, state, from).await?;
    let balances_at_last = Some(stored_balances(pool, state).await?);
    Ok(Recovered {
        last,
        from,
        balances_at_last,
        snapshot_due: false,
    })
}

/// The transfer ids the shard applied (or refused) up to `upto`: later ones are replayed.
async fn load_transfers(
    pool: &PgPool,
    state: &mut ShardState,
    upto: i64,
) -> Result<(), StoreError> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT transfer_id FROM transfers WHERE shard = $1 AND accounts_offset <= $2",
    )
    .bind(state.shard as i32)
    .bind(upto)
    .fetch_all(pool)
    .await?;
    state
        .transfers_seen
        .extend(ids.into_iter().map(|i| i as u64));
    Ok(())
}

/// The shard's `balances` rows.
async fn stored_balances(
    pool: &PgPool,
    state: &ShardState,
) -> Result<BTreeMap<(AccountId, AssetId), Balance>, StoreError> {
    let shard = state.shard;
    let rows = sqlx::query(
        "SELECT account_id, asset, available::text, reserved::text FROM balances WHERE shard = $1",
    )
    .bind(shard as i32)
    .fetch_all(pool)
    .await?;
    let mut out = BTreeMap::new();
    for r in rows {
        let account = AccountId(r.get::<i64, _>(0) as u64);
        let balance = Balance {
            available_units: units(shard, r.get::<&str, _>(2))?,
            reserved_units: units(shard, r.get::<&str, _>(3))?,
        };
        out.insert((account, asset_id(state, r.get(1))?), balance);
    }
    Ok(out)
}

/// The first difference between a replayed state's balances and the stored rows (an entry
/// missing on one side counts as zero), if any.
pub fn balances_differ(
    replayed: &BTreeMap<(AccountId, AssetId), Balance>,
    stored: &BTreeMap<(AccountId, AssetId), Balance>,
    state: &ShardState,
) -> Option<String> {
    let zero = Balance::default();
    let keys: BTreeSet<_> = replayed.keys().chain(stored.keys()).collect();
    keys.into_iter().find_map(|key| {
        let a = replayed.get(key).unwrap_or(&zero);
        let b = stored.get(key).unwrap_or(&zero);
        (a != b).then(|| {
            format!(
                "account {} {}: replayed {}/{} (available/reserved), stored {}/{}",
                key.0.0,
                symbol(state.ledger.assets(), key.1),
                a.available_units,
                a.reserved_units,
                b.available_units,
                b.reserved_units
            )
        })
    })
}

fn asset_id(state: &ShardState, symbol: &str) -> Result<AssetId, StoreError> {
    state
        .ledger
        .assets()
        .by_symbol(symbol)
        .map(|a| a.id)
        .ok_or_else(|| StoreError::Corrupt {
            shard: state.shard,
            what: format!("unknown asset {symbol:?}"),
        })
}

/// The recovery of a stage from before snapshots: balances, one row per open order, seqs.
async fn recover_rows(pool: &PgPool, state: &mut ShardState) -> Result<(), StoreError> {
    let shard = state.shard;
    let s = shard as i32;
    let corrupt = |what: String| StoreError::Corrupt { shard, what };
    for ((account, asset), balance) in stored_balances(pool, state).await? {
        state
            .ledger
            .restore_balance(account, asset, balance)
            .map_err(|e| corrupt(e.to_string()))?;
    }
    let rows = sqlx::query(
        "SELECT order_id, account_id, pair_id, side, asset, limit_price, qty, filled_qty, \
         reserved::text, client_order_id, amend_from_price, amend_from_qty \
         FROM reservations WHERE shard = $1",
    )
    .bind(s)
    .fetch_all(pool)
    .await?;
    for r in rows {
        let amend_from = match (r.get::<Option<i64>, _>(10), r.get::<Option<i64>, _>(11)) {
            (Some(p), Some(q)) => Some((p, q)),
            _ => None,
        };
        let order = SnapOrder {
            order_id: r.get::<i64, _>(0) as u64,
            account_id: r.get::<i64, _>(1) as u64,
            pair_id: r.get::<i32, _>(2) as PairId,
            side: r.get(3),
            asset: r.get(4),
            limit_price: r.get(5),
            qty: r.get(6),
            filled_qty: r.get(7),
            reserved: r.get(8),
            client_order_id: r.get(9),
            amend_from,
        };
        order.restore(state)?;
    }
    let rows =
        sqlx::query("SELECT pair_id, last_seq FROM account_shard_pair_seqs WHERE shard = $1")
            .bind(s)
            .fetch_all(pool)
            .await?;
    for r in rows {
        state
            .pair_seqs
            .insert(r.get::<i32, _>(0) as PairId, r.get::<i64, _>(1) as u64);
    }
    Ok(())
}

/// A shard's whole state at a position, as `account_snapshots.state` holds it
/// (`infra/migrations/0010_account_snapshots.sql` documents the fields).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    v: u32,
    balances: Vec<(u64, String, String, String)>,
    orders: Vec<SnapOrder>,
    pair_seqs: Vec<(PairId, u64)>,
}

/// One open order: its reservation and what the shard keeps beside it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SnapOrder {
    order_id: u64,
    account_id: u64,
    pair_id: PairId,
    side: String,
    asset: String,
    limit_price: Option<i64>,
    qty: i64,
    filled_qty: i64,
    reserved: String,
    client_order_id: Option<String>,
    amend_from: Option<(i64, i64)>,
}

const SNAPSHOT_VERSION: u32 = 1;

impl SnapOrder {
    fn restore(self, state: &mut ShardState) -> Result<(), StoreError> {
        let shard = state.shard;
        let corrupt = |what: String| StoreError::Corrupt { shard, what };
        let side = match self.side.as_str() {
            "buy" => Side::Buy,
            "sell" => Side::Sell,
            other => return Err(corrupt(format!("order {}: side {other:?}", self.order_id))),
        };
        let order_id = OrderId(self.order_id);
        let reservation = Reservation {
            account_id: AccountId(self.account_id),
            pair_id: self.pair_id,
            side,
            asset_id: asset_id(state, &self.asset)?,
            limit_price: self.limit_price.map(Price),
            qty: Qty(self.qty),
            filled_qty: Qty(self.filled_qty),
            reserved_units: units(shard, &self.reserved)?,
        };
        state
            .ledger
            .restore_reservation(order_id, reservation)
            .map_err(|e| corrupt(e.to_string()))?;
        let meta = OrderMeta {
            client_order_id: self.client_order_id,
            amend_from: self.amend_from.map(|(p, q)| (Price(p), Qty(q))),
        };
        state.restore_meta(order_id, meta);
        Ok(())
    }
}

impl Snapshot {
    /// The state's bytes for `account_snapshots.state`.
    pub fn encode(state: &ShardState) -> Vec<u8> {
        let assets = state.ledger.assets();
        let snapshot = Snapshot {
            v: SNAPSHOT_VERSION,
            balances: state
                .ledger
                .balances()
                .map(|(account, asset, b)| {
                    (
                        account.0,
                        symbol(assets, asset),
                        b.available_units.to_string(),
                        b.reserved_units.to_string(),
                    )
                })
                .collect(),
            orders: state
                .ledger
                .reservations()
                .map(|(order_id, r)| {
                    let meta = state.meta.get(&order_id);
                    SnapOrder {
                        order_id: order_id.0,
                        account_id: r.account_id.0,
                        pair_id: r.pair_id,
                        side: side_str(r.side).to_owned(),
                        asset: symbol(assets, r.asset_id),
                        limit_price: r.limit_price.map(|p| p.0),
                        qty: r.qty.0,
                        filled_qty: r.filled_qty.0,
                        reserved: r.reserved_units.to_string(),
                        client_order_id: meta.and_then(|m| m.client_order_id.clone()),
                        amend_from: meta.and_then(|m| m.amend_from).map(|(p, q)| (p.0, q.0)),
                    }
                })
                .collect(),
            pair_seqs: state.pair_seqs.iter().map(|(&p, &q)| (p, q)).collect(),
        };
        serde_json::to_vec(&snapshot).expect("a snapshot serializes")
    }

    /// Loads `bytes` into `state` (whose ledger must be empty).
    pub fn restore(bytes: &[u8], state: &mut ShardState) -> Result<(), StoreError> {
        let shard = state.shard;
        let corrupt = |what: String| StoreError::Corrupt { shard, what };
        let snapshot: Snapshot = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(format!("snapshot does not decode: {e}")))?;
        if snapshot.v != SNAPSHOT_VERSION {
            return Err(corrupt(format!("snapshot version {} unknown", snapshot.v)));
        }
        for (account, asset, available, reserved) in snapshot.balances {
            let balance = Balance {
                available_units: units(shard, &available)?,
                reserved_units: units(shard, &reserved)?,
            };
            let asset = asset_id(state, &asset)?;
            state
                .ledger
                .restore_balance(AccountId(account), asset, balance)
                .map_err(|e| corrupt(e.to_string()))?;
        }
        for order in snapshot.orders {
            order.restore(state)?;
        }
        state.pair_seqs.extend(snapshot.pair_seqs);
        Ok(())
    }
}

fn side_str(side: Side) -> &'static str {
    match side {
        Side::Buy => "buy",
        Side::Sell => "sell",
    }
}

fn cause_name(cause: &Cause) -> &'static str {
    match cause {
        Cause::Deposit { .. } => "deposit",
        Cause::Withdrawal { .. } => "withdrawal",
        Cause::Reserve { .. } => "reserve",
        Cause::Amend { .. } => "amend",
        Cause::Fill { .. } => "fill",
        Cause::Fee { .. } => "fee",
        Cause::Release { .. } => "release",
    }
}

fn symbol(assets: &AssetRegistry, id: AssetId) -> String {
    symbol_str(assets, id).into_owned()
}

fn symbol_str(assets: &AssetRegistry, id: AssetId) -> Cow<'_, str> {
    assets.get(id).map_or_else(
        || Cow::Owned(format!("#{}", id.0)),
        |a| Cow::Borrowed(a.symbol.as_str()),
    )
}

/// A commit's ledger as the compact JSON array `ledger_batches.lines` holds: each line
/// `[position, changes]`, in position order (infra/migrations/0011_ledger_batches.sql).
/// `ledger` holds the lines' rows in position order, each line's in `idx` order.
fn batch_json(assets: &AssetRegistry, ledger: &[LedgerRow]) -> String {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(192 * ledger.len());
    // The four amounts of a change, formatted once into one reused buffer.
    let mut amounts = String::with_capacity(160);
    out.push(b'[');
    for (i, line) in ledger.chunk_by(|a, b| a.position == b.position).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write!(out, "[{},", line[0].position).expect("writing into a Vec");
        line_json(&mut out, &mut amounts, assets, line);
        out.push(b']');
    }
    out.push(b']');
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Appends one line's changes to `out` as the compact JSON array `ledger_lines.changes` gives
/// back, each change an array of account_id, asset, cause, detail, available_delta,
/// reserved_delta, available, reserved (amounts as strings: they can exceed 64 bits). `line` is
/// one position's rows in order; element i is the row of `idx` i.
fn line_json(out: &mut Vec<u8>, amounts: &mut String, assets: &AssetRegistry, line: &[LedgerRow]) {
    use std::fmt::Write as _;
    out.push(b'[');
    for (i, row) in line.iter().enumerate() {
        debug_assert_eq!(row.idx as usize, i, "a line's rows arrive in idx order");
        let e = &row.event;
        if i > 0 {
            out.push(b',');
        }
        amounts.clear();
        let mut ends = [0; 4];
        for (end, units) in ends.iter_mut().zip([
            e.available_delta_units,
            e.reserved_delta_units,
            e.balance.available_units,
            e.balance.reserved_units,
        ]) {
            write!(amounts, "{units}").expect("formatting into a String");
            *end = amounts.len();
        }
        let asset = symbol_str(assets, e.asset_id);
        let change = (
            e.account_id.0 as i64,
            asset.as_ref(),
            cause_name(&e.cause),
            &e.cause,
            &amounts[..ends[0]],
            &amounts[ends[0]..ends[1]],
            &amounts[ends[1]..ends[2]],
            &amounts[ends[2]..ends[3]],
        );
        serde_json::to_writer(&mut *out, &change).expect("a ledger change serializes");
    }
    out.push(b']');
}

/// What one or more batches change, with every value captured when its batch ended: the
/// actor decides the next batch while this one waits for Kafka and commits.
#[derive(Debug, Default)]
pub struct Rows {
    pub balances: BTreeMap<(AccountId, AssetId), (Balance, i64)>,
    pub ledger: Vec<LedgerRow>,
    pub pair_seqs: BTreeMap<PairId, u64>,
    pub transfers: Vec<TransferRow>,
    /// The shard's whole state at a position ([`Snapshot::encode`]), when one is due.
    pub snapshot: Option<(i64, Vec<u8>)>,
}

impl Rows {
    /// The rows of a batch's effects, as the state stands at the batch's end.
    pub fn capture(fx: &mut Effects) -> Rows {
        Rows {
            balances: std::mem::take(&mut fx.balances),
            ledger: std::mem::take(&mut fx.ledger),
            pair_seqs: std::mem::take(&mut fx.pair_seqs),
            transfers: std::mem::take(&mut fx.transfers),
            snapshot: None,
        }
    }

    /// Adds the rows of the batch that followed: its values win.
    pub fn absorb(&mut self, later: Rows) {
        self.balances.extend(later.balances);
        self.ledger.extend(later.ledger);
        self.pair_seqs.extend(later.pair_seqs);
        self.transfers.extend(later.transfers);
        if later.snapshot.is_some() {
            self.snapshot = later.snapshot;
        }
    }
}

/// Commits the rows of the lines after `expected` up to `last` (positions), fenced.
pub async fn persist(
    pool: &PgPool,
    shard: u32,
    assets: &AssetRegistry,
    expected: i64,
    last: i64,
    fx: &Rows,
) -> Result<(), StoreError> {
    let s = shard as i32;
    let mut tx = pool.begin().await?;
    let moved = sqlx::query(
        "UPDATE account_shards SET last_offset = $3, updated_at = now() \
         WHERE shard = $1 AND last_offset = $2",
    )
    .bind(s)
    .bind(expected)
    .bind(last)
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() != 1 {
        return Err(StoreError::Fenced { shard, expected });
    }

    if !fx.balances.is_empty() {
        let mut accounts = Vec::new();
        let mut asset = Vec::new();
        let mut available = Vec::new();
        let mut reserved = Vec::new();
        let mut position = Vec::new();
        for (&(account_id, asset_id), &(b, pos)) in &fx.balances {
            accounts.push(account_id.0 as i64);
            asset.push(symbol(assets, asset_id));
            available.push(b.available_units.to_string());
            reserved.push(b.reserved_units.to_string());
            position.push(pos);
        }
        sqlx::query(
            "INSERT INTO balances (account_id, asset, shard, available, reserved, accounts_offset) \
             SELECT a, s, $6, av::numeric, re::numeric, p \
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
               AS t(a, s, av, re, p) \
             ON CONFLICT (account_id, asset, shard) DO UPDATE SET available = EXCLUDED.available, \
               reserved = EXCLUDED.reserved, accounts_offset = EXCLUDED.accounts_offset",
        )
        .bind(&accounts)
        .bind(&asset)
        .bind(&available)
        .bind(&reserved)
        .bind(&position)
        .bind(s)
        .execute(&mut *tx)
        .await?;
    }

    if let Some((position, state)) = &fx.snapshot {
        sqlx::query(
            "INSERT INTO account_snapshots (shard, position, state) VALUES ($1, $2, $3) \
             ON CONFLICT (shard) DO UPDATE SET position = EXCLUDED.position, \
               state = EXCLUDED.state, taken_at = now()",
        )
        .bind(s)
        .bind(position)
        .bind(state)
        .execute(&mut *tx)
        .await?;
        // The rows a stage from before snapshots kept per open order: the snapshot holds them.
        sqlx::query("DELETE FROM reservations WHERE shard = $1")
            .bind(s)
            .execute(&mut *tx)
            .await?;
    }

    if let (Some(first), Some(last)) = (fx.ledger.first(), fx.ledger.last()) {
        // One row per commit: its lines, in order, as one compact JSON array
        // (infra/migrations/0011_ledger_batches.sql documents the columns).
        sqlx::query(
            "INSERT INTO ledger_batches (shard, first_offset, last_offset, lines) \
             VALUES ($1, $2, $3, $4::json)",
        )
        .bind(s)
        .bind(first.position)
        .bind(last.position)
        .bind(batch_json(assets, &fx.ledger))
        .execute(&mut *tx)
        .await?;
    }

    if !fx.pair_seqs.is_empty() {
        let pairs: Vec<i32> = fx.pair_seqs.keys().map(|&p| p as i32).collect();
        let seqs: Vec<i64> = fx.pair_seqs.values().map(|&q| q as i64).collect();
        sqlx::query(
            "INSERT INTO account_shard_pair_seqs (shard, pair_id, last_seq) \
             SELECT $3, p, q FROM unnest($1::int[], $2::bigint[]) AS t(p, q) \
             ON CONFLICT (shard, pair_id) DO UPDATE SET last_seq = EXCLUDED.last_seq",
        )
        .bind(&pairs)
        .bind(&seqs)
        .bind(s)
        .execute(&mut *tx)
        .await?;
    }

    for t in &fx.transfers {
        let r = &t.record;
        let direction = match r.direction {
            protocol::accounts::TransferDirection::Deposit => "deposit",
            protocol::accounts::TransferDirection::Withdrawal => "withdrawal",
        };
        sqlx::query(
            "INSERT INTO transfers (transfer_id, account_id, asset, direction, amount, shard, \
               accounts_offset, refused) VALUES ($1, $2, $3, $4, $5::numeric, $6, $7, $8) \
             ON CONFLICT (transfer_id) DO NOTHING",
        )
        .bind(r.transfer_id as i64)
        .bind(r.account_id.0 as i64)
        .bind(&r.asset)
        .bind(direction)
        .bind(r.amount_units.to_string())
        .bind(s)
        .bind(t.position)
        .bind(&t.refused)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Every balance of every account, summed over shards (the fee account has one row per shard):
/// what a test or an audit compares with a replay.
pub async fn all_balances(
    pool: &PgPool,
) -> Result<BTreeMap<(u64, String), (i128, i128)>, StoreError> {
    let rows = sqlx::query(
        "SELECT account_id, asset, sum(available)::text, sum(reserved)::text FROM balances \
         GROUP BY account_id, asset",
    )
    .fetch_all(pool)
    .await?;
    let mut out = BTreeMap::new();
    for r in rows {
        out.insert(
            (r.get::<i64, _>(0) as u64, r.get::<String, _>(1)),
            (
                units(0, r.get::<&str, _>(2))?,
                units(0, r.get::<&str, _>(3))?,
            ),
        );
    }
    Ok(out)
}
