//! `gateway provision`: accounts and API keys for local use and load tests, inserted in
//! batches (one statement per batch, not per row); with `--fund`, a deposit for each account
//! to the account stage's `accounts` topic. `gateway keys encrypt-existing`: seal the HMAC
//! secrets stored in clear, and re-seal those under a previous key-encryption key.
//!
//! No secret reaches the database in clear: an Ed25519 key stores its public key, an HMAC key
//! its secret sealed under the current key-encryption key ([`crate::keys`]).

use std::time::Duration;

use accounts_core::AssetRegistry;
use ed25519_dalek::VerifyingKey;
use protocol::AccountId;
use protocol::accounts::{AccountRecord, TransferDirection, TransferRecord, account_shard};
use protocol::records::RECORD_VERSION;
use rand::RngCore;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::keys::{KeyEncryption, KeyKind, SealError, Sealed};

const BATCH_ROWS_MAX: usize = 5_000;

/// One line of the provision output file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub key_id: String,
    /// HMAC: the shared secret. Ed25519: base64 of the 32-byte private key (its seed) when
    /// provision generated the pair, empty (and left out of the file) when the client brought
    /// its public key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret: String,
    pub account_id: u64,
    /// Absent in files written before Ed25519 keys: those are HMAC.
    #[serde(default)]
    pub kind: KeyKind,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("key_id", &self.key_id)
            .field("secret", &"***")
            .field("account_id", &self.account_id)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Credential {
    /// The login signature for this key (tests and tools; needs the secret).
    pub fn sign(&self, ts_ms: u64, nonce: &str) -> String {
        crate::keys::sign_login(self.kind, &self.secret, &self.key_id, ts_ms, nonce)
    }
}

/// Which keys [`provision`] creates.
pub enum NewKeys<'a> {
    /// HMAC secrets, sealed under the current key of `encryption`.
    Hmac(&'a KeyEncryption),
    /// Ed25519 pairs generated here; the private keys are in the returned credentials only.
    Ed25519Generated,
    /// One account per public key the clients generated (the safe way: no private key ever
    /// leaves the client).
    Ed25519Public(&'a [VerifyingKey]),
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("HMAC keys: {0}")]
    Seal(#[from] SealError),
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0_u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// The columns of one batch of new `api_keys` rows.
#[derive(Default)]
struct KeyRows {
    key_ids: Vec<String>,
    kinds: Vec<&'static str>,
    public_keys: Vec<Option<Vec<u8>>>,
    ciphertexts: Vec<Option<Vec<u8>>>,
    nonces: Vec<Option<Vec<u8>>>,
    sealing_key_ids: Vec<Option<String>>,
    /// What the output file gets (the secret or the Ed25519 seed; never stored).
    secrets: Vec<String>,
}

impl KeyRows {
    fn push(&mut self, keys: &NewKeys<'_>, i: usize) -> Result<(), SealError> {
        let key_id = format!("k{}", random_hex(12));
        match keys {
            NewKeys::Hmac(encryption) => {
                let secret = random_hex(32);
                let sealed = encryption.seal(&key_id, secret.as_bytes())?;
                self.row(key_id, KeyKind::Hmac, None, Some(sealed), secret);
            }
            NewKeys::Ed25519Generated => {
                let (seed, public) = crate::keys::generate_ed25519();
                self.row(key_id, KeyKind::Ed25519, Some(public), None, seed);
            }
            NewKeys::Ed25519Public(publics) => {
                self.row(
                    key_id,
                    KeyKind::Ed25519,
                    Some(publics[i]),
                    None,
                    String::new(),
                );
            }
        }
        Ok(())
    }

    fn row(
        &mut self,
        key_id: String,
        kind: KeyKind,
        public: Option<VerifyingKey>,
        sealed: Option<Sealed>,
        secret: String,
    ) {
        self.key_ids.push(key_id);
        self.kinds.push(kind.as_str());
        self.public_keys.push(public.map(|p| p.to_bytes().to_vec()));
        let (c, n, k) = match sealed {
            Some(s) => (Some(s.ciphertext), Some(s.nonce), Some(s.key_id)),
            None => (None, None, None),
        };
        self.ciphertexts.push(c);
        self.nonces.push(n);
        self.sealing_key_ids.push(k);
        self.secrets.push(secret);
    }
}

/// Creates `count` accounts named `{prefix}-{run}-{i}`, each with one API key of the kind
/// `keys` says (with [`NewKeys::Ed25519Public`], one per public key: `count` is ignored).
pub async fn provision(
    pool: &PgPool,
    count: usize,
    prefix: &str,
    keys: &NewKeys<'_>,
) -> Result<Vec<Credential>, ProvisionError> {
    let count = match keys {
        NewKeys::Ed25519Public(publics) => publics.len(),
        _ => count,
    };
    if let NewKeys::Hmac(encryption) = keys {
        // Before any account exists: no account without its key.
        encryption.current().ok_or(SealError::NoKey)?;
    }
    let run = random_hex(4);
    let mut out = Vec::with_capacity(count);
    let mut start = 0;
    while start < count {
        let end = (start + BATCH_ROWS_MAX).min(count);
        let names: Vec<String> = (start..end)
            .map(|i| format!("{prefix}-{run}-{i}"))
            .collect();
        let mut rows = KeyRows::default();
        for i in start..end {
            rows.push(keys, i)?;
        }
        let mut tx = pool.begin().await?;
        let created: Vec<(i64, String)> = sqlx::query_as(
            "INSERT INTO accounts (name) SELECT * FROM UNNEST($1::text[]) RETURNING id, name",
        )
        .bind(&names)
        .fetch_all(&mut *tx)
        .await?;
        let by_name: std::collections::HashMap<String, i64> =
            created.into_iter().map(|(id, name)| (name, id)).collect();
        let account_ids: Vec<i64> = names.iter().map(|name| by_name[name]).collect();
        sqlx::query(
            "INSERT INTO api_keys (key_id, account_id, kind, public_key, secret_ciphertext, \
             secret_nonce, secret_key_id) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bytea[], \
             $5::bytea[], $6::bytea[], $7::text[])",
        )
        .bind(&rows.key_ids)
        .bind(&account_ids)
        .bind(&rows.kinds)
        .bind(&rows.public_keys)
        .bind(&rows.ciphertexts)
        .bind(&rows.nonces)
        .bind(&rows.sealing_key_ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        for (((key_id, secret), account_id), kind) in rows
            .key_ids
            .into_iter()
            .zip(rows.secrets)
            .zip(account_ids)
            .zip(rows.kinds)
        {
            out.push(Credential {
                key_id,
                secret,
                account_id: account_id as u64,
                kind: if kind == "ed25519" {
                    KeyKind::Ed25519
                } else {
                    KeyKind::Hmac
                },
            });
        }
        start = end;
    }
    Ok(out)
}

/// What [`encrypt_existing`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encrypted {
    /// Clear secrets sealed (and their clear column emptied).
    pub sealed: u64,
    /// Secrets sealed under a previous key, re-sealed under the current one.
    pub resealed: u64,
    /// Rows still holding a secret in clear afterwards (0 unless rows were added meanwhile).
    pub clear_left: u64,
}

/// Seals every HMAC secret still in clear under the current key-encryption key and empties
/// its clear column; re-seals those sealed under any other key (rotation). Each batch is one
/// transaction that locks its rows, so a concurrent run or provision is safe. Disabled keys
/// are sealed too: the point is that the database holds no secret in clear.
pub async fn encrypt_existing(
    pool: &PgPool,
    encryption: &KeyEncryption,
) -> Result<Encrypted, ProvisionError> {
    let current = encryption
        .current()
        .ok_or(SealError::NoKey)?
        .id()
        .to_owned();
    let mut done = Encrypted {
        sealed: 0,
        resealed: 0,
        clear_left: 0,
    };
    loop {
        let mut tx = pool.begin().await?;
        type Row = (
            String,
            Option<String>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<String>,
        );
        let batch: Vec<Row> = sqlx::query_as(
            "SELECT key_id, secret, secret_ciphertext, secret_nonce, secret_key_id \
             FROM api_keys WHERE kind = 'hmac' \
             AND (secret IS NOT NULL OR secret_key_id <> $1) \
             ORDER BY key_id LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(&current)
        .bind(BATCH_ROWS_MAX as i64)
        .fetch_all(&mut *tx)
        .await?;
        if batch.is_empty() {
            break;
        }
        let mut key_ids = Vec::with_capacity(batch.len());
        let mut ciphertexts = Vec::with_capacity(batch.len());
        let mut nonces = Vec::with_capacity(batch.len());
        for (key_id, clear, ciphertext, nonce, sealing_key_id) in batch {
            let secret = match (clear, ciphertext, nonce, sealing_key_id) {
                (Some(clear), _, _, _) => {
                    done.sealed += 1;
                    clear.into_bytes()
                }
                (None, Some(ciphertext), Some(nonce), Some(key_id_sealed)) => {
                    done.resealed += 1;
                    encryption.open(
                        &key_id,
                        &Sealed {
                            ciphertext,
                            nonce,
                            key_id: key_id_sealed,
                        },
                    )?
                }
                _ => unreachable!("api_keys_material_check allows no such hmac row"),
            };
            let sealed = encryption.seal(&key_id, &secret)?;
            key_ids.push(key_id);
            ciphertexts.push(sealed.ciphertext);
            nonces.push(sealed.nonce);
        }
        sqlx::query(
            "UPDATE api_keys SET secret = NULL, secret_ciphertext = u.c, secret_nonce = u.n, \
             secret_key_id = $4 \
             FROM UNNEST($1::text[], $2::bytea[], $3::bytea[]) AS u(k, c, n) \
             WHERE api_keys.key_id = u.k",
        )
        .bind(&key_ids)
        .bind(&ciphertexts)
        .bind(&nonces)
        .bind(&current)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    let (clear_left,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM api_keys WHERE secret IS NOT NULL")
            .fetch_one(pool)
            .await?;
    done.clear_left = clear_left as u64;
    Ok(done)
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
