//! The account stage, when its tables hold data: conservation per asset, a cause for every
//! ledger change, and balances equal to a replay of the `accounts` log through the shards' own
//! rules (`accounts::shard::ShardState`, around `accounts-core`).
//!
//! Each shard is replayed from offset 0 of its `accounts` partition up to the position its
//! PostgreSQL rows are committed at (`account_shards.last_offset`, read in the audit's
//! snapshot), so the replay and the rows describe the same instant. Memory is one shard's
//! balances, reservations and transfer ids at a time; the ledger rows are streamed.

use std::collections::BTreeMap;
use std::sync::Arc;

use accounts::shard::{Effects, LedgerRow, ShardState};
use accounts::store::Snapshot;
use accounts_core::{AssetRegistry, Cause, Ledger};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use protocol::accounts::record_offset;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::log::{Consumers, PartitionReader};
use super::report::{BalancesSummary, Report, Rule, Violation};
use super::{AuditConfig, AuditError};

const RULES: [Rule; 4] = [
    Rule::BalancesConserved,
    Rule::LedgerCause,
    Rule::BalancesEqualReplay,
    Rule::SnapshotEqualsReplay,
];

/// Audits the account stage if it ran; returns its figures.
pub(crate) async fn audit(
    config: &AuditConfig,
    consumers: &Arc<Consumers>,
    conn: &mut PgConnection,
    report: &mut Report,
) -> Result<Option<BalancesSummary>, AuditError> {
    let tables: bool = sqlx::query_scalar("SELECT to_regclass('account_shards') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    let positions: BTreeMap<u32, i64> = if tables {
        sqlx::query_as::<_, (i32, i64)>("SELECT shard, last_offset FROM account_shards")
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|(s, p)| (s as u32, p))
            .collect()
    } else {
        BTreeMap::new()
    };
    if positions.values().all(|&p| p < 0) {
        for rule in RULES {
            report.skip(rule, "the account stage has committed nothing here");
        }
        return Ok(None);
    }
    let mut summary = BalancesSummary::default();
    conservation(conn, report, &mut summary).await?;
    causes(conn, report).await?;
    let topic = config.accounts_topic.as_str();
    let shards = infra::kafka::topic_partitions(&config.brokers, &[topic])
        .await?
        .first()
        .and_then(|(_, n)| *n);
    let Some(shards) = shards else {
        report.skip(
            Rule::BalancesEqualReplay,
            format!("topic {topic:?} does not exist: balances were not replayed"),
        );
        return Ok(Some(summary));
    };
    summary.shards = shards as u32;
    for shard in 0..shards as u32 {
        let last = positions.get(&shard).copied().unwrap_or(-1);
        replay_shard(
            (config, consumers),
            conn,
            report,
            &mut summary,
            (shard, shards as u32),
            last,
        )
        .await?;
    }
    Ok(Some(summary))
}

/// Per asset, what accounts hold (fee account included) against what came in and went out.
async fn conservation(
    conn: &mut PgConnection,
    report: &mut Report,
    summary: &mut BalancesSummary,
) -> Result<(), AuditError> {
    let rows = sqlx::query(
        "WITH held AS (SELECT asset, sum(available + reserved) AS total FROM balances GROUP BY asset), \
         moved AS (SELECT asset, sum(CASE direction WHEN 'deposit' THEN amount ELSE -amount END) AS net \
                   FROM transfers WHERE refused IS NULL GROUP BY asset) \
         SELECT asset, coalesce(h.total, 0)::text, coalesce(m.net, 0)::text \
         FROM held h FULL JOIN moved m USING (asset) ORDER BY asset",
    )
    .fetch_all(&mut *conn)
    .await?;
    for r in rows {
        let (asset, held, net): (String, String, String) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        report.check(Rule::BalancesConserved, 1);
        if units(&held)? != units(&net)? {
            report.violate(Violation::new(
                Rule::BalancesConserved,
                format!(
                    "{asset}: accounts hold {held} units in all, deposits - withdrawals are {net}"
                ),
            ));
        }
        summary.totals_units.insert(asset, held);
    }
    Ok(())
}

/// The ledger changes whose cause is missing: a transfer not applied (or of another account,
/// asset or amount), a trade PostgreSQL does not hold at or below its pair's committed trade
/// id, or a cause the ledger does not know. (Reserves, amends and releases are tied to their
/// line by the replay.)
const CAUSELESS: &str = "\
FROM ledger l
WHERE CASE
  WHEN l.cause IN ('deposit', 'withdrawal') THEN NOT EXISTS (
    SELECT 1 FROM transfers t
    WHERE t.transfer_id = (l.detail->>'transfer_id')::bigint AND t.refused IS NULL
      AND t.direction = l.cause AND t.account_id = l.account_id AND t.asset = l.asset
      AND t.amount = abs(l.available_delta))
  WHEN l.cause IN ('fill', 'fee') THEN (l.detail->>'trade_id')::bigint <= coalesce(
      (SELECT p.last_trade_id FROM pair_offsets p WHERE p.pair_id = (l.detail->>'pair_id')::int), 0)
    AND NOT EXISTS (
      SELECT 1 FROM trades tr WHERE tr.pair_id = (l.detail->>'pair_id')::int
        AND tr.trade_id = (l.detail->>'trade_id')::bigint
        AND (l.detail->>'order_id')::bigint IN (tr.maker_order_id, tr.taker_order_id))
  ELSE l.cause NOT IN ('reserve', 'amend', 'release')
END";

async fn causes(conn: &mut PgConnection, report: &mut Report) -> Result<(), AuditError> {
    let changes: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(&mut *conn)
        .await?;
    report.check(Rule::LedgerCause, changes as u64);
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ledger l WHERE l.cause IN ('fill', 'fee') \
         AND (l.detail->>'trade_id')::bigint > coalesce((SELECT p.last_trade_id FROM pair_offsets p \
         WHERE p.pair_id = (l.detail->>'pair_id')::int), 0)",
    )
    .fetch_one(&mut *conn)
    .await?;
    report.pending.ledger_fills_past_commit += pending as u64;
    let sql = format!(
        "SELECT l.shard, l.accounts_offset, l.account_id, l.asset, l.cause, l.detail::text {CAUSELESS} \
         ORDER BY l.shard, l.accounts_offset, l.idx LIMIT $1"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(report.violations_max as i64 + 1)
        .fetch_all(&mut *conn)
        .await?;
    for r in rows {
        let (account, asset, cause, detail): (i64, String, String, String) =
            (r.try_get(2)?, r.try_get(3)?, r.try_get(4)?, r.try_get(5)?);
        report.violate(
            Violation::new(
                Rule::LedgerCause,
                format!("account {account} {asset}: {cause} {detail} has no such cause"),
            )
            .shard(r.try_get::<i32, _>(0)? as u32)
            .accounts_position(r.try_get(1)?),
        );
    }
    Ok(())
}

/// One shard's `accounts` partition through `ShardState` up to its committed position, its
/// ledger lines and balances compared with PostgreSQL's.
async fn replay_shard(
    (config, consumers): (&AuditConfig, &Arc<Consumers>),
    conn: &mut PgConnection,
    report: &mut Report,
    summary: &mut BalancesSummary,
    (shard, shards): (u32, u32),
    last: i64,
) -> Result<(), AuditError> {
    let registry = Arc::new(config.registry.clone());
    let ledger = Ledger::new(AssetRegistry::from_pairs(&registry), config.ledger_config())?;
    let mut state = ShardState::new(shard, shards, Arc::clone(&registry), ledger);
    let mut reader = PartitionReader::open(
        consumers,
        &config.accounts_topic,
        shard as i32,
        Some(record_offset(last)),
    )
    .await?;
    report.check(Rule::LogComplete, 1);
    if reader.low() > 0 {
        report.violate(
            Violation::new(
                Rule::LogComplete,
                format!(
                    "{} starts at offset {}: the shard cannot be replayed",
                    config.accounts_topic,
                    reader.low()
                ),
            )
            .shard(shard),
        );
        return Ok(());
    }
    if reader.end() <= record_offset(last) {
        report.violate(
            Violation::new(
                Rule::BalancesEqualReplay,
                format!(
                    "the shard committed position {last}, past the end of its log ({})",
                    reader.end()
                ),
            )
            .shard(shard),
        );
    }
    let mut snapshot = stored_snapshot(conn, shard, last).await?;
    if snapshot.is_some() {
        report.check(Rule::SnapshotEqualsReplay, 1);
    }
    let mut stored = LedgerLines::open(conn, shard);
    let (mut records, mut lines) = (0, 0);
    while let Some(rec) = reader.next().await? {
        records += 1;
        let mut fx = Effects::default();
        let (read, at) = state.apply_record(rec.offset, rec.payload.as_deref(), &mut fx);
        lines += read;
        if let Some((snap_at, bytes)) = snapshot.take_if(|(p, _)| *p <= at) {
            let ledger = Ledger::new(AssetRegistry::from_pairs(&registry), config.ledger_config())?;
            let empty = ShardState::new(shard, shards, Arc::clone(&registry), ledger);
            if let Some(what) = snapshot_differs(&state, snap_at, at, &bytes, empty) {
                report.violate(
                    Violation::new(Rule::SnapshotEqualsReplay, what)
                        .shard(shard)
                        .accounts_position(snap_at),
                );
            }
        }
        for line in fx.ledger.chunk_by(|a, b| a.position == b.position) {
            compare_line(shard, line, &mut stored, state.ledger.assets(), report).await?;
            summary.ledger_changes += line.len() as u64;
        }
    }
    if let Some((snap_at, _)) = snapshot {
        report.violate(
            Violation::new(
                Rule::SnapshotEqualsReplay,
                "the log ends before the snapshot's position: it cannot be replayed to it",
            )
            .shard(shard)
            .accounts_position(snap_at),
        );
    }
    summary.lines_replayed += lines;
    report.speed.records += records;
    report.speed.lines += lines;
    while let Some((at, _)) = stored.pop().await? {
        report.violate(
            Violation::new(
                Rule::LedgerCause,
                "no line of the accounts log makes this ledger line's changes",
            )
            .shard(shard)
            .accounts_position(at),
        );
    }
    drop(stored);
    compare_balances(conn, report, summary, shard, &state).await
}

/// The shard's snapshot, when it has one at or below its committed position.
async fn stored_snapshot(
    conn: &mut PgConnection,
    shard: u32,
    last: i64,
) -> Result<Option<(i64, Vec<u8>)>, AuditError> {
    let table: bool = sqlx::query_scalar("SELECT to_regclass('account_snapshots') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !table {
        return Ok(None);
    }
    let row: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT position, state FROM account_snapshots WHERE shard = $1")
            .bind(shard as i32)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.filter(|(p, _)| *p <= last))
}

/// How a snapshot taken at `snap_at`, loaded into `restored` (an empty state), differs from the
/// replay's state after the record ending at `at` (the first record reaching it), if it does.
/// A snapshot is taken at a record's last line, so anything else is a difference too.
fn snapshot_differs(
    replayed: &ShardState,
    snap_at: i64,
    at: i64,
    bytes: &[u8],
    mut restored: ShardState,
) -> Option<String> {
    if snap_at != at {
        return Some(format!(
            "the snapshot is at position {snap_at}, which is not the last line of a record \
             (that record ends at {at})"
        ));
    }
    if let Err(e) = Snapshot::restore(bytes, &mut restored) {
        return Some(format!("the snapshot does not load: {e}"));
    }
    restored
        .snapshot_difference(replayed)
        .map(|what| format!("the snapshot's {what} differ from the replay's"))
}

/// A shard's ledger lines in position order, streamed: its `ledger_batches` rows by position,
/// each expanded in its order (infra/migrations/0011_ledger_batches.sql).
struct LedgerLines<'c> {
    rows: BoxStream<'c, Result<PgRow, sqlx::Error>>,
    peeked: Option<(i64, String)>,
}

impl<'c> LedgerLines<'c> {
    fn open(conn: &'c mut PgConnection, shard: u32) -> LedgerLines<'c> {
        let rows = sqlx::query(
            "SELECT (l.line ->> 0)::bigint, (l.line -> 1)::text FROM ledger_batches AS b \
             CROSS JOIN LATERAL json_array_elements(b.lines) WITH ORDINALITY AS l(line, n) \
             WHERE b.shard = $1 ORDER BY b.first_offset, l.n",
        )
        .bind(shard as i32)
        .fetch(conn);
        LedgerLines { rows, peeked: None }
    }

    async fn peek(&mut self) -> Result<Option<i64>, AuditError> {
        if self.peeked.is_none() {
            self.peeked = match self.rows.next().await {
                Some(row) => {
                    let row = row?;
                    Some((row.try_get(0)?, row.try_get(1)?))
                }
                None => None,
            };
        }
        Ok(self.peeked.as_ref().map(|(p, _)| *p))
    }

    async fn pop(&mut self) -> Result<Option<(i64, String)>, AuditError> {
        self.peek().await?;
        Ok(self.peeked.take())
    }
}

/// One change as `ledger_lines.changes` holds it (infra/migrations/0008_ledger_lines.sql).
type StoredChange = (u64, String, String, Cause, String, String, String, String);

/// The replay's changes of one line against PostgreSQL's row at the same position.
async fn compare_line(
    shard: u32,
    line: &[LedgerRow],
    stored: &mut LedgerLines<'_>,
    assets: &AssetRegistry,
    report: &mut Report,
) -> Result<(), AuditError> {
    let at = line[0].position;
    let violation = |rule, detail: String| {
        Violation::new(rule, detail)
            .shard(shard)
            .accounts_position(at)
    };
    loop {
        match stored.peek().await? {
            Some(p) if p < at => {
                stored.pop().await?;
                report.violate(
                    violation(
                        Rule::LedgerCause,
                        "the replay of this accounts line changes no balance".to_owned(),
                    )
                    .accounts_position(p),
                );
            }
            Some(p) if p == at => break,
            _ => {
                report.violate(violation(
                    Rule::BalancesEqualReplay,
                    format!(
                        "PostgreSQL lacks the {} ledger changes of this line",
                        line.len()
                    ),
                ));
                return Ok(());
            }
        }
    }
    let (_, text) = stored.pop().await?.expect("peeked");
    let changes: Vec<StoredChange> = match serde_json::from_str(&text) {
        Ok(c) => c,
        Err(e) => {
            report.violate(violation(
                Rule::LedgerCause,
                format!("unreadable changes: {e}"),
            ));
            return Ok(());
        }
    };
    let replayed: Vec<StoredChange> = line.iter().map(|r| as_stored(r, assets)).collect();
    if changes != replayed {
        let i = changes
            .iter()
            .zip(&replayed)
            .position(|(a, b)| a != b)
            .unwrap_or(changes.len().min(replayed.len()));
        report.violate(violation(
            Rule::LedgerCause,
            format!(
                "change {i}: PostgreSQL holds {:?}, the replay of the line makes {:?}",
                changes.get(i),
                replayed.get(i)
            ),
        ));
    }
    Ok(())
}

fn as_stored(row: &LedgerRow, assets: &AssetRegistry) -> StoredChange {
    let e = &row.event;
    let asset = assets
        .get(e.asset_id)
        .map_or_else(|| format!("#{}", e.asset_id.0), |a| a.symbol.clone());
    let cause = match e.cause {
        Cause::Deposit { .. } => "deposit",
        Cause::Withdrawal { .. } => "withdrawal",
        Cause::Reserve { .. } => "reserve",
        Cause::Amend { .. } => "amend",
        Cause::Fill { .. } => "fill",
        Cause::Fee { .. } => "fee",
        Cause::Release { .. } => "release",
    };
    (
        e.account_id.0,
        asset,
        cause.to_owned(),
        e.cause,
        e.available_delta_units.to_string(),
        e.reserved_delta_units.to_string(),
        e.balance.available_units.to_string(),
        e.balance.reserved_units.to_string(),
    )
}

/// The shard's balance rows against the replay's ledger (a balance never touched is zero).
async fn compare_balances(
    conn: &mut PgConnection,
    report: &mut Report,
    summary: &mut BalancesSummary,
    shard: u32,
    state: &ShardState,
) -> Result<(), AuditError> {
    let rows = sqlx::query(
        "SELECT account_id, asset, available::text, reserved::text FROM balances WHERE shard = $1",
    )
    .bind(shard as i32)
    .fetch_all(&mut *conn)
    .await?;
    let mut stored: BTreeMap<(u64, String), (i128, i128)> = BTreeMap::new();
    for r in rows {
        let key = (r.try_get::<i64, _>(0)? as u64, r.try_get::<String, _>(1)?);
        let value = (units(r.try_get(2)?)?, units(r.try_get(3)?)?);
        stored.insert(key, value);
    }
    let assets = state.ledger.assets();
    let mut replayed: BTreeMap<(u64, String), (i128, i128)> = BTreeMap::new();
    for (account, asset, b) in state.ledger.balances() {
        let symbol = assets
            .get(asset)
            .map_or_else(|| format!("#{}", asset.0), |a| a.symbol.clone());
        replayed.insert((account.0, symbol), (b.available_units, b.reserved_units));
    }
    let keys: std::collections::BTreeSet<&(u64, String)> =
        stored.keys().chain(replayed.keys()).collect();
    for key in keys {
        report.check(Rule::BalancesEqualReplay, 1);
        summary.balances += 1;
        let (s, r) = (
            stored.get(key).copied().unwrap_or_default(),
            replayed.get(key).copied().unwrap_or_default(),
        );
        if s != r {
            report.violate(
                Violation::new(
                    Rule::BalancesEqualReplay,
                    format!(
                        "account {} {}: PostgreSQL holds {} available + {} reserved, the replay \
                         {} + {}",
                        key.0, key.1, s.0, s.1, r.0, r.1
                    ),
                )
                .shard(shard),
            );
        }
    }
    Ok(())
}

fn units(text: &str) -> Result<i128, AuditError> {
    text.parse()
        .map_err(|_| AuditError::Corrupt(format!("amount {text:?} is not an integer")))
}
