//! The gateway's side of the account stage (docs/ARCHITECTURE.md, "Accounts and balances"),
//! on only when `GW_ACCOUNTS_TOPIC` is set:
//!
//! - place and amend go to the `accounts` partition of the account's shard (the stage reserves
//!   funds, then forwards them to `orders`, or refuses them); cancels still go to `orders`;
//! - `account_events` is read from its end at start: refusals answer the request like an
//!   engine rejection, balance lines reach the account's `balances` subscribers, each shard
//!   position once;
//! - `balances` reads what the stage committed to PostgreSQL, with the shard offset it covers.

use std::sync::Arc;
use std::time::Duration;

use protocol::AccountId;
use protocol::accounts::{AccountEventRecord, account_shard};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::GatewayError;
use crate::hub::Hub;

/// How long the start waits for a topic's metadata and watermarks before refusing to start.
const TOPIC_WAIT: Duration = Duration::from_secs(10);

/// Where the stage's input goes: the topic and its number of partitions (= account shards).
#[derive(Debug, Clone)]
pub struct Stage {
    pub topic: Arc<str>,
    pub shards: u32,
}

impl Stage {
    pub fn shard(&self, account: AccountId) -> u32 {
        account_shard(account, self.shards)
    }
}

/// An amount in an asset's smallest unit as a decimal string with the asset's decimals
/// (`1234567` at 4 decimals is `"123.4567"`). Exact for every `i128`.
pub fn format_units(units: i128, decimals: u32) -> String {
    let digits = units.unsigned_abs().to_string();
    let sign = if units < 0 { "-" } else { "" };
    if decimals == 0 {
        return format!("{sign}{digits}");
    }
    let d = decimals as usize;
    let padded = format!("{digits:0>width$}", width = d + 1);
    let (int, frac) = padded.split_at(padded.len() - d);
    format!("{sign}{int}.{frac}")
}

/// A plain non-negative decimal string ("12.5") as an integer at `decimals` places, exactly;
/// `None` when it is not one, has more decimals, or does not fit an `i128`.
pub fn parse_units(s: &str, decimals: u32) -> Option<i128> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (s.contains('.') && frac.is_empty()) {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > decimals as usize {
        return None;
    }
    let scale = 10_i128.checked_pow(decimals)?;
    let int: i128 = int.parse().ok()?;
    let frac_units: i128 = if frac.is_empty() {
        0
    } else {
        let f: i128 = frac.parse().ok()?;
        f.checked_mul(10_i128.checked_pow(decimals - frac.len() as u32)?)?
    };
    int.checked_mul(scale)?.checked_add(frac_units)
}

/// The number of partitions of `topic`, or a clear error when it does not exist. Retries for a
/// few seconds: a topic created a moment ago may not have its leaders known yet.
pub async fn partition_count(
    consumer: &Arc<StreamConsumer>,
    topic: &str,
) -> Result<u32, GatewayError> {
    let started = tokio::time::Instant::now();
    loop {
        let c = Arc::clone(consumer);
        let t = topic.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            let md = c.fetch_metadata(Some(&t), Duration::from_secs(5))?;
            Ok::<_, rdkafka::error::KafkaError>(md.topics().first().map(|m| {
                let ok = m.error().is_none() && m.partitions().iter().all(|p| p.error().is_none());
                (ok, m.partitions().len())
            }))
        })
        .await
        .map_err(|e| GatewayError::Task(e.to_string()))?;
        let why = match found {
            Ok(Some((true, n))) if n > 0 => {
                return u32::try_from(n).map_err(|_| {
                    GatewayError::AccountStage(format!("topic {topic:?} has {n} partitions"))
                });
            }
            Ok(_) => "the broker does not know it (or it has no partitions yet)".to_owned(),
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= TOPIC_WAIT {
            return Err(GatewayError::AccountStage(format!(
                "the account stage is on (GW_ACCOUNTS_TOPIC) but topic {topic:?} cannot be used: \
                 {why}; create it (one partition per account shard) or unset GW_ACCOUNTS_TOPIC"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Assigns every partition of `topic` at its current end: what the stage answers from now on.
/// Done before the gateway accepts clients, so no answer to a command of theirs can come
/// before the position.
pub(crate) async fn assign_from_end(
    consumer: &Arc<StreamConsumer>,
    topic: &str,
    partitions: u32,
) -> Result<(), GatewayError> {
    let c = Arc::clone(consumer);
    let t = topic.to_owned();
    let ends = tokio::task::spawn_blocking(move || {
        (0..partitions as i32)
            .map(|p| {
                c.fetch_watermarks(&t, p, TOPIC_WAIT)
                    .map(|(_, high)| (p, high))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| GatewayError::Task(e.to_string()))?
    .map_err(|e| {
        GatewayError::AccountStage(format!("cannot find the end of topic {topic:?}: {e}"))
    })?;
    let mut assignment = TopicPartitionList::new();
    for (p, high) in ends {
        assignment
            .add_partition_offset(topic, p, Offset::Offset(high))
            .map_err(GatewayError::Kafka)?;
    }
    consumer.assign(&assignment).map_err(GatewayError::Kafka)?;
    Ok(())
}

/// Reads `account_events` until `shutdown`, handing each record to the hub.
pub(crate) async fn consume_account_events(
    hub: Arc<Hub>,
    consumer: Arc<StreamConsumer>,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let stopping = shutdown.cancelled();
    tokio::pin!(stopping);
    loop {
        let message = tokio::select! {
            _ = &mut stopping => return Ok(()),
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the account_events topic; retrying");
                metrics::counter!("gateway_account_events_read_errors_total").increment(1);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // A record packs one or more lines, like `orders`; a bad line is skipped alone.
        for line in protocol::records::command_lines(message.payload()) {
            match line.map(AccountEventRecord::decode) {
                Some(Ok(record)) => hub.apply_account_event(record),
                Some(Err(e)) => {
                    tracing::warn!(partition = message.partition(), offset = message.offset(), error = %e, "undecodable account event skipped");
                    metrics::counter!("gateway_account_events_undecodable_total").increment(1);
                }
                None => {
                    metrics::counter!("gateway_account_events_undecodable_total").increment(1);
                }
            }
        }
    }
}

/// One asset's committed balance, in its smallest unit, summed over shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub asset: String,
    pub available: i128,
    pub reserved: i128,
}

/// (shard's last offset, asset, available, reserved) as the balances query returns them.
type BalanceRow = (Option<i64>, Option<String>, Option<String>, Option<String>);

/// The account's balances (every asset, or one) and the last `accounts` offset of `shard` they
/// reflect (`-1`: nothing committed yet), read in one statement, so from one snapshot.
pub async fn committed_balances(
    pool: &PgPool,
    account: AccountId,
    shard: u32,
    asset: Option<&str>,
) -> Result<(Vec<Held>, i64), sqlx::Error> {
    let account_id = i64::try_from(account.0).unwrap_or(i64::MAX);
    let rows: Vec<BalanceRow> = sqlx::query_as(
        "SELECT s.last_offset, b.asset, b.available, b.reserved \
             FROM (SELECT $2::integer AS shard) q \
             LEFT JOIN account_shards s ON s.shard = q.shard \
             LEFT JOIN LATERAL ( \
                 SELECT asset, sum(available)::text AS available, sum(reserved)::text AS reserved \
                 FROM balances \
                 WHERE account_id = $1 AND ($3::text IS NULL OR asset = $3) \
                 GROUP BY asset \
             ) b ON true \
             ORDER BY b.asset",
    )
    .bind(account_id)
    .bind(i32::try_from(shard).unwrap_or(i32::MAX))
    .bind(asset)
    .fetch_all(pool)
    .await?;
    let as_of = rows.first().and_then(|r| r.0).unwrap_or(-1);
    let amount = |text: Option<String>| -> Result<i128, sqlx::Error> {
        let text = text.unwrap_or_default();
        text.parse()
            .map_err(|_| sqlx::Error::Decode(format!("balance {text:?} is not an integer").into()))
    };
    let mut held = Vec::with_capacity(rows.len());
    for (_, asset, available, reserved) in rows {
        if let Some(asset) = asset {
            held.push(Held {
                asset,
                available: amount(available)?,
                reserved: amount(reserved)?,
            });
        }
    }
    Ok((held, as_of))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_format_with_the_assets_decimals_exactly() {
        assert_eq!(format_units(1_234_567, 4), "123.4567");
        assert_eq!(format_units(5, 3), "0.005");
        assert_eq!(format_units(0, 2), "0.00");
        assert_eq!(format_units(42, 0), "42");
        assert_eq!(format_units(-15, 1), "-1.5");
        assert_eq!(
            format_units(i128::MAX, 10),
            "17014118346046923173168730371.5884105727"
        );
    }

    #[test]
    fn units_parse_plain_decimals_exactly_or_not_at_all() {
        assert_eq!(parse_units("123.4567", 4), Some(1_234_567));
        assert_eq!(parse_units("1000", 14), Some(1000 * 10_i128.pow(14)));
        assert_eq!(parse_units("0.50", 1), Some(5), "trailing zeros are fine");
        assert_eq!(parse_units("0.05", 1), None, "too precise");
        for bad in ["", ".5", "5.", "-1", "1e3", "1,5", " 1"] {
            assert_eq!(parse_units(bad, 4), None, "{bad:?}");
        }
        assert_eq!(parse_units(&"9".repeat(40), 0), None, "beyond i128");
        for n in [0_i128, 1, 99, 123_456_789_012_345] {
            assert_eq!(parse_units(&format_units(n, 6), 6), Some(n));
        }
    }
}
