//! PostgreSQL: a shard's recovery, and its commit (balances, reservations, ledger rows,
//! transfers, per-pair settlement seqs and its position, in one transaction fenced on the
//! previous position). Schema: `infra/migrations/0006_accounts.sql`; the ledger is one row per
//! line since `0008_ledger_lines.sql`.

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

/// Loads the shard's state into `state` (whose ledger must be empty); returns its position.
pub async fn recover(pool: &PgPool, state: &mut ShardState) -> Result<i64, StoreError> {
    let shard = state.shard;
    let s = shard as i32;
    ensure_shard(pool, shard).await?;
    let last: i64 = sqlx::query_scalar("SELECT last_offset FROM account_shards WHERE shard = $1")
        .bind(s)
        .fetch_one(pool)
        .await?;
    let corrupt = |what: String| StoreError::Corrupt { shard, what };
    let assets = state.ledger.assets().clone();
    let asset_id = |symbol: &str| {
        assets
            .by_symbol(symbol)
            .map(|a| a.id)
            .ok_or_else(|| corrupt(format!("unknown asset {symbol:?}")))
    };
    let rows = sqlx::query(
        "SELECT account_id, asset, available::text, reserved::text FROM balances WHERE shard = $1",
    )
    .bind(s)
    .fetch_all(pool)
    .await?;
    for r in rows {
        let account = AccountId(r.get::<i64, _>(0) as u64);
        let balance = Balance {
            available_units: units(shard, r.get::<&str, _>(2))?,
            reserved_units: units(shard, r.get::<&str, _>(3))?,
        };
        state
            .ledger
            .restore_balance(account, asset_id(r.get(1))?, balance)
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
        let order_id = OrderId(r.get::<i64, _>(0) as u64);
        let side = match r.get::<&str, _>(3) {
            "buy" => Side::Buy,
            _ => Side::Sell,
        };
        let reservation = Reservation {
            account_id: AccountId(r.get::<i64, _>(1) as u64),
            pair_id: r.get::<i32, _>(2) as PairId,
            side,
            asset_id: asset_id(r.get(4))?,
            limit_price: r.get::<Option<i64>, _>(5).map(Price),
            qty: Qty(r.get(6)),
            filled_qty: Qty(r.get(7)),
            reserved_units: units(shard, r.get::<&str, _>(8))?,
        };
        state
            .ledger
            .restore_reservation(order_id, reservation)
            .map_err(|e| corrupt(e.to_string()))?;
        let amend_from = match (r.get::<Option<i64>, _>(10), r.get::<Option<i64>, _>(11)) {
            (Some(p), Some(q)) => Some((Price(p), Qty(q))),
            _ => None,
        };
        let meta = OrderMeta {
            client_order_id: r.get(9),
            amend_from,
        };
        state.restore_meta(order_id, meta);
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
    let ids: Vec<i64> = sqlx::query_scalar("SELECT transfer_id FROM transfers WHERE shard = $1")
        .bind(s)
        .fetch_all(pool)
        .await?;
    state
        .transfers_seen
        .extend(ids.into_iter().map(|i| i as u64));
    Ok(last)
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

/// One line's changes as the compact JSON array `ledger_lines.changes` holds, each change an
/// array of account_id, asset, cause, detail, available_delta, reserved_delta, available,
/// reserved (amounts as strings: they can exceed 64 bits). `line` is one position's rows in
/// order; element i is the row of `idx` i.
fn line_json(assets: &AssetRegistry, line: &[LedgerRow]) -> String {
    use std::fmt::Write as _;
    let mut out = Vec::with_capacity(160 * line.len());
    // The four amounts of a change, formatted once into one reused buffer.
    let mut amounts = String::with_capacity(160);
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
        serde_json::to_writer(&mut out, &change).expect("a ledger change serializes");
    }
    out.push(b']');
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// What one or more batches change, with every value captured when its batch ended: the
/// actor decides the next batch while this one waits for Kafka and commits.
#[derive(Debug, Default)]
pub struct Rows {
    pub balances: BTreeMap<(AccountId, AssetId), (Balance, i64)>,
    pub open: BTreeMap<OrderId, (Reservation, Option<OrderMeta>)>,
    pub gone: BTreeSet<OrderId>,
    pub ledger: Vec<LedgerRow>,
    pub pair_seqs: BTreeMap<PairId, u64>,
    pub transfers: Vec<TransferRow>,
}

impl Rows {
    /// The rows of a batch's effects, as the state stands at the batch's end.
    pub fn capture(state: &ShardState, fx: &mut Effects) -> Rows {
        let mut open = BTreeMap::new();
        let mut gone = BTreeSet::new();
        for &order_id in &fx.orders {
            match state.ledger.reservation(order_id) {
                Some(r) => {
                    open.insert(order_id, (*r, state.meta.get(&order_id).cloned()));
                }
                None => {
                    gone.insert(order_id);
                }
            }
        }
        Rows {
            balances: std::mem::take(&mut fx.balances),
            open,
            gone,
            ledger: std::mem::take(&mut fx.ledger),
            pair_seqs: std::mem::take(&mut fx.pair_seqs),
            transfers: std::mem::take(&mut fx.transfers),
        }
    }

    /// Adds the rows of the batch that followed: its values win.
    pub fn absorb(&mut self, later: Rows) {
        self.balances.extend(later.balances);
        for (id, row) in later.open {
            self.gone.remove(&id);
            self.open.insert(id, row);
        }
        for id in later.gone {
            self.open.remove(&id);
            self.gone.insert(id);
        }
        self.ledger.extend(later.ledger);
        self.pair_seqs.extend(later.pair_seqs);
        self.transfers.extend(later.transfers);
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

    let gone: Vec<i64> = fx.gone.iter().map(|id| id.0 as i64).collect();
    let mut open = OpenColumns::default();
    for (&order_id, (r, meta)) in &fx.open {
        open.push(order_id, r, meta.as_ref(), assets);
    }
    if !gone.is_empty() {
        sqlx::query("DELETE FROM reservations WHERE order_id = ANY($1)")
            .bind(&gone)
            .execute(&mut *tx)
            .await?;
    }
    if !open.order_id.is_empty() {
        sqlx::query(
            "INSERT INTO reservations (order_id, shard, account_id, pair_id, side, asset, \
               limit_price, qty, filled_qty, reserved, client_order_id, amend_from_price, \
               amend_from_qty) \
             SELECT o, $13, a, p, sd, s, lp, q, f, r::numeric, c, afp, afq \
             FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::text[], $5::text[], \
               $6::bigint[], $7::bigint[], $8::bigint[], $9::text[], $10::text[], \
               $11::bigint[], $12::bigint[]) AS t(o, a, p, sd, s, lp, q, f, r, c, afp, afq) \
             ON CONFLICT (order_id) DO UPDATE SET limit_price = EXCLUDED.limit_price, \
               qty = EXCLUDED.qty, filled_qty = EXCLUDED.filled_qty, \
               reserved = EXCLUDED.reserved, amend_from_price = EXCLUDED.amend_from_price, \
               amend_from_qty = EXCLUDED.amend_from_qty",
        )
        .bind(&open.order_id)
        .bind(&open.account_id)
        .bind(&open.pair_id)
        .bind(&open.side)
        .bind(&open.asset)
        .bind(&open.limit_price)
        .bind(&open.qty)
        .bind(&open.filled_qty)
        .bind(&open.reserved)
        .bind(&open.client_order_id)
        .bind(&open.amend_from_price)
        .bind(&open.amend_from_qty)
        .bind(s)
        .execute(&mut *tx)
        .await?;
    }

    if !fx.ledger.is_empty() {
        // One row per line: its changes, in order, as one compact JSON array
        // (infra/migrations/0008_ledger_lines.sql documents the columns).
        let mut position = Vec::new();
        let mut changes = Vec::new();
        for line in fx.ledger.chunk_by(|a, b| a.position == b.position) {
            position.push(line[0].position);
            changes.push(line_json(assets, line));
        }
        sqlx::query(
            "INSERT INTO ledger_lines (shard, accounts_offset, changes) \
             SELECT $3, p, c::json FROM unnest($1::bigint[], $2::text[]) AS t(p, c)",
        )
        .bind(&position)
        .bind(&changes)
        .bind(s)
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

#[derive(Default)]
struct OpenColumns {
    order_id: Vec<i64>,
    account_id: Vec<i64>,
    pair_id: Vec<i32>,
    side: Vec<&'static str>,
    asset: Vec<String>,
    limit_price: Vec<Option<i64>>,
    qty: Vec<i64>,
    filled_qty: Vec<i64>,
    reserved: Vec<String>,
    client_order_id: Vec<Option<String>>,
    amend_from_price: Vec<Option<i64>>,
    amend_from_qty: Vec<Option<i64>>,
}

impl OpenColumns {
    fn push(
        &mut self,
        order_id: OrderId,
        r: &Reservation,
        meta: Option<&OrderMeta>,
        assets: &AssetRegistry,
    ) {
        self.order_id.push(order_id.0 as i64);
        self.account_id.push(r.account_id.0 as i64);
        self.pair_id.push(r.pair_id as i32);
        self.side.push(side_str(r.side));
        self.asset.push(symbol(assets, r.asset_id));
        self.limit_price.push(r.limit_price.map(|p| p.0));
        self.qty.push(r.qty.0);
        self.filled_qty.push(r.filled_qty.0);
        self.reserved.push(r.reserved_units.to_string());
        self.client_order_id
            .push(meta.and_then(|m| m.client_order_id.clone()));
        let from = meta.and_then(|m| m.amend_from);
        self.amend_from_price.push(from.map(|(p, _)| p.0));
        self.amend_from_qty.push(from.map(|(_, q)| q.0));
    }
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
