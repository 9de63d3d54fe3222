//! `gateway provision`: accounts and API keys for local use and load tests, inserted in
//! batches (one statement per batch, not per row); with `--fund`, a deposit for each account
//! to the account stage's `accounts` topic.

use std::time::Duration;

use accounts_core::AssetRegistry;
use protocol::AccountId;
use protocol::accounts::{AccountRecord, TransferDirection, TransferRecord, account_shard};
use protocol::records::RECORD_VERSION;
use rand::RngCore;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

const BATCH_ROWS_MAX: usize = 5_000;

/// One line of the provision output file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub key_id: String,
    pub secret: String,
    pub account_id: u64,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("key_id", &self.key_id)
            .field("secret", &"***")
            .field("account_id", &self.account_id)
            .finish()
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0_u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Creates `count` accounts named `{prefix}-{run}-{i}`, each with one API key.
pub async fn provision(
    pool: &PgPool,
    count: usize,
    prefix: &str,
) -> Result<Vec<Credential>, sqlx::Error> {
    let run = random_hex(4);
    let mut out = Vec::with_capacity(count);
    let mut start = 0;
    while start < count {
        let end = (start + BATCH_ROWS_MAX).min(count);
        let names: Vec<String> = (start..end)
            .map(|i| format!("{prefix}-{run}-{i}"))
            .collect();
        let mut tx = pool.begin().await?;
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "INSERT INTO accounts (name) SELECT * FROM UNNEST($1::text[]) RETURNING id, name",
        )
        .bind(&names)
        .fetch_all(&mut *tx)
        .await?;
        let by_name: std::collections::HashMap<String, i64> =
            rows.into_iter().map(|(id, name)| (name, id)).collect();
        let mut key_ids = Vec::with_capacity(names.len());
        let mut secrets = Vec::with_capacity(names.len());
        let mut account_ids = Vec::with_capacity(names.len());
        for name in &names {
            key_ids.push(format!("k{}", random_hex(12)));
            secrets.push(random_hex(32));
            account_ids.push(by_name[name]);
        }
        sqlx::query(
            "INSERT INTO api_keys (key_id, account_id, secret) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[])",
        )
        .bind(&key_ids)
        .bind(&account_ids)
        .bind(&secrets)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        for ((key_id, secret), account_id) in key_ids.into_iter().zip(secrets).zip(account_ids) {
            out.push(Credential {
                key_id,
                secret,
                account_id: account_id as u64,
            });
        }
        start = end;
    }
    Ok(out)
}

/// One `--fund` entry: a deposit of `units` (the asset's smallest unit) of `asset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Funding {
    pub asset: String,
    pub units: i128,
}

/// Parses `ASSET=AMOUNT[,ASSET=AMOUNT...]` ("EUR=10000,BTC=2.5"): assets the pairs trade,
/// positive amounts with at most the asset's decimals.
pub fn parse_funding(spec: &str, assets: &AssetRegistry) -> Result<Vec<Funding>, String> {
    spec.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (asset, amount) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not ASSET=AMOUNT"))?;
            let a = assets.by_symbol(asset).ok_or_else(|| {
                format!(
                    "unknown asset {asset:?}; known: {}",
                    assets
                        .iter()
                        .map(|a| a.symbol.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            let units = crate::accounts::parse_units(amount, a.decimals)
                .filter(|u| *u > 0)
                .ok_or_else(|| {
                    format!(
                        "{asset} amount {amount:?} must be a positive decimal with at most {} decimals",
                        a.decimals
                    )
                })?;
            Ok(Funding {
                asset: a.symbol.clone(),
                units,
            })
        })
        .collect()
}

/// Deposits `funding` into each account: one `AccountRecord::Transfer` per account and asset,
/// to the `accounts` partition of the account's shard (of `shards`), each with its own
/// `transfer_id` (random base, then consecutive). Returns how many were written.
pub async fn fund(
    producer: &FutureProducer,
    accounts_topic: &str,
    shards: u32,
    credentials: &[Credential],
    funding: &[Funding],
) -> Result<usize, KafkaError> {
    // Below 2^62, so ids stay positive in PostgreSQL's bigint however many follow.
    let base = rand::rng().next_u64() >> 2;
    let ts_ns = crate::now_ms().saturating_mul(1_000_000);
    let mut records = Vec::new();
    for c in credentials {
        for f in funding {
            let transfer = TransferRecord {
                v: RECORD_VERSION,
                transfer_id: base + records.len() as u64,
                account_id: AccountId(c.account_id),
                direction: TransferDirection::Deposit,
                asset: f.asset.clone(),
                amount_units: f.units,
                ts_ns,
            };
            let shard = account_shard(transfer.account_id, shards);
            records.push((shard, AccountRecord::Transfer(transfer).encode()));
        }
    }
    let sends = records.iter().map(|(shard, payload)| {
        let key = shard.to_string();
        async move {
            producer
                .send(
                    FutureRecord::to(accounts_topic)
                        .partition(*shard as i32)
                        .key(&key)
                        .payload(payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
        }
    });
    for sent in futures_util::future::join_all(sends).await {
        sent?;
    }
    Ok(records.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn funding_parses_assets_and_exact_amounts() {
        let pairs =
            protocol::PairRegistry::from_toml(include_str!("../../config/pairs.toml")).unwrap();
        let assets = AssetRegistry::from_pairs(&pairs);
        assert_eq!(
            parse_funding("EUR=10000, BTC=2.5", &assets).unwrap(),
            vec![
                Funding {
                    asset: "EUR".into(),
                    units: 10_000 * 10_i128.pow(10)
                },
                Funding {
                    asset: "BTC".into(),
                    units: 25 * 10_i128.pow(13)
                },
            ]
        );
        for bad in ["EUR", "DOGE=1", "EUR=0", "EUR=-1", "XRP=0.001", "EUR=1e3"] {
            assert!(parse_funding(bad, &assets).is_err(), "{bad}");
        }
    }
}
