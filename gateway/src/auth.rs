//! Login: API keys from PostgreSQL (cached), a signature over `protocol::ws::login_payload`
//! (Ed25519 or HMAC-SHA256, as the key's row says: [`crate::keys`]), a timestamp window and a
//! per-key nonce log bounded by that window.
//!
//! Nonces are remembered per gateway process: a replay to another gateway within the window is
//! not caught. The window (5 s by default) bounds that exposure; a shared store would close it.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ed25519_dalek::VerifyingKey;
use hmac::{Hmac, KeyInit, Mac};
use protocol::AccountId;
use protocol::ws::{Login, login_payload};
use sha2::Sha256;
use sqlx::PgPool;

use crate::keys::{KEY_ENCRYPTION_KEY_ENV, KeyEncryption, SealError, Sealed};

/// Keys read from PostgreSQL are trusted this long; a disabled key stops working within it.
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// Unknown keys are remembered briefly so a flood of them does not become a flood of queries.
const UNKNOWN_KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// Entries in the key cache; past it the cache is cleared (bounded, simple, rare).
const KEY_CACHE_MAX: usize = 100_000;
/// Logins of one key remembered within the window; more are refused as `rate_limited`.
const NONCES_PER_KEY_MAX: usize = 10_000;
pub const NONCE_LEN_MIN: usize = 8;
pub const NONCE_LEN_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("nonce must be {NONCE_LEN_MIN} to {NONCE_LEN_MAX} printable ASCII characters")]
    InvalidNonce,
    #[error("timestamp is outside the {window_ms} ms window around the gateway clock ({now_ms})")]
    StaleTimestamp { window_ms: u64, now_ms: u64 },
    #[error("unknown or disabled API key")]
    UnknownKey,
    #[error("signature does not match")]
    BadSignature,
    #[error("nonce already used for this key within the window")]
    NonceReused,
    #[error("too many logins with this key within the window")]
    TooManyLogins,
    /// The gateway cannot open this HMAC key's sealed secret (an operator's problem, not the
    /// client's: the key-encryption key that sealed it is not configured).
    #[error("this API key cannot be checked by this gateway now; retry later or use another key")]
    KeyUnavailable,
    #[error("cannot read API keys: {0}")]
    Db(#[from] sqlx::Error),
}

/// Why a gateway refuses to start: HMAC secrets it could not open.
#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    #[error(
        "api_keys holds {rows} usable HMAC secret(s) sealed under key-encryption key id(s) \
         {key_ids}, and this gateway has {have}: set {KEY_ENCRYPTION_KEY_ENV} (and \
         GW_KEY_ENCRYPTION_KEY_PREVIOUS while rotating) to the key(s) they were sealed with \
         (docs/DEPLOY.md, \"API keys\")"
    )]
    MissingKey {
        rows: i64,
        key_ids: String,
        have: String,
    },
    #[error("cannot check the API keys: {0}")]
    Db(#[from] sqlx::Error),
}

/// What a login is checked against.
#[derive(Clone)]
enum Verifier {
    Hmac(String),
    Ed25519(VerifyingKey),
}

#[derive(Clone)]
struct KeyRecord {
    account_id: AccountId,
    verifier: Verifier,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.verifier {
            Verifier::Hmac(_) => "hmac, secret: ***",
            Verifier::Ed25519(_) => "ed25519",
        };
        f.debug_struct("KeyRecord")
            .field("account_id", &self.account_id)
            .field("kind", &kind)
            .finish()
    }
}

/// Refuses to start a gateway that could not open every usable sealed HMAC secret: better a
/// clear error at deploy time than every HMAC client refused. Also warns about secrets still
/// in clear (rows from before migration 0009; `gateway keys encrypt-existing` seals them).
pub async fn check_keys(pool: &PgPool, keys: &KeyEncryption) -> Result<(), KeyCheckError> {
    let sealed: Vec<(String, i64)> = sqlx::query_as(
        "SELECT secret_key_id, count(*) FROM api_keys \
         WHERE kind = 'hmac' AND secret_key_id IS NOT NULL AND disabled_at IS NULL \
         GROUP BY secret_key_id ORDER BY secret_key_id",
    )
    .fetch_all(pool)
    .await?;
    let missing: Vec<&(String, i64)> = sealed
        .iter()
        .filter(|(id, _)| keys.by_id(id).is_none())
        .collect();
    if !missing.is_empty() {
        let held: Vec<&str> = keys.all().map(|k| k.id()).collect();
        let have = if held.is_empty() {
            "none".to_owned()
        } else {
            held.join(", ")
        };
        return Err(KeyCheckError::MissingKey {
            rows: missing.iter().map(|(_, n)| n).sum(),
            key_ids: missing
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            have,
        });
    }
    let (clear,): (i64,) = sqlx::query_as("SELECT count(*) FROM api_keys WHERE secret IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if clear > 0 {
        tracing::warn!(
            rows = clear,
            "api_keys holds HMAC secrets in clear; run `gateway keys encrypt-existing`"
        );
    }
    let current = keys.current().map(|k| k.id().to_owned());
    tracing::info!(
        sealed_rows = sealed.iter().map(|(_, n)| n).sum::<i64>(),
        key_encryption_key_id = current.as_deref().unwrap_or("none"),
        "API keys checked"
    );
    Ok(())
}

#[derive(Debug)]
struct CachedKey {
    record: Option<KeyRecord>,
    fetched: Instant,
}

#[derive(Debug, Default)]
struct NonceLog {
    order: VecDeque<(u64, String)>,
    seen: HashSet<String>,
}

#[derive(Debug)]
pub struct Authenticator {
    pool: PgPool,
    window_ms: u64,
    encryption: KeyEncryption,
    keys: DashMap<String, CachedKey>,
    nonces: DashMap<String, Mutex<NonceLog>>,
}

impl Authenticator {
    pub fn new(pool: PgPool, window_ms: u64, encryption: KeyEncryption) -> Authenticator {
        Authenticator {
            pool,
            window_ms,
            encryption,
            keys: DashMap::new(),
            nonces: DashMap::new(),
        }
    }

    /// Checks a login in this order: nonce shape, timestamp window, key, signature, nonce
    /// reuse. The nonce is recorded only once the signature holds, so nobody can burn another
    /// client's nonces.
    pub async fn login(&self, login: &Login, now_ms: u64) -> Result<AccountId, AuthError> {
        let nonce_ok = (NONCE_LEN_MIN..=NONCE_LEN_MAX).contains(&login.nonce.len())
            && login.nonce.bytes().all(|b| b.is_ascii_graphic());
        if !nonce_ok {
            return Err(AuthError::InvalidNonce);
        }
        if login.ts_ms.abs_diff(now_ms) > self.window_ms {
            return Err(AuthError::StaleTimestamp {
                window_ms: self.window_ms,
                now_ms,
            });
        }
        let key = self
            .key(&login.key_id)
            .await?
            .ok_or(AuthError::UnknownKey)?;
        let payload = login_payload(&login.key_id, login.ts_ms, &login.nonce);
        let verified = match &key.verifier {
            Verifier::Hmac(secret) => verify(secret, login),
            Verifier::Ed25519(public) => {
                crate::keys::verify_ed25519(public, payload.as_bytes(), &login.signature)
            }
        };
        if !verified {
            return Err(AuthError::BadSignature);
        }
        self.record_nonce(&login.key_id, &login.nonce, now_ms)?;
        Ok(key.account_id)
    }

    async fn key(&self, key_id: &str) -> Result<Option<KeyRecord>, AuthError> {
        if let Some(cached) = self.keys.get(key_id) {
            let ttl = if cached.record.is_some() {
                KEY_CACHE_TTL
            } else {
                UNKNOWN_KEY_CACHE_TTL
            };
            if cached.fetched.elapsed() < ttl {
                return Ok(cached.record.clone());
            }
        }
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT account_id, kind, secret, public_key, secret_ciphertext, secret_nonce, \
             secret_key_id FROM api_keys WHERE key_id = $1 AND disabled_at IS NULL",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        let record = match row {
            None => None,
            Some(row) => self.record(key_id, row)?,
        };
        if self.keys.len() >= KEY_CACHE_MAX {
            self.keys.clear();
        }
        self.keys.insert(
            key_id.to_owned(),
            CachedKey {
                record: record.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(record)
    }

    /// A row as a [`KeyRecord`]; `None` for a row no login can use (a malformed public key).
    fn record(&self, key_id: &str, row: KeyRow) -> Result<Option<KeyRecord>, AuthError> {
        let Ok(account_id) = u64::try_from(row.account_id) else {
            return Ok(None);
        };
        let verifier = match row.kind.as_str() {
            "ed25519" => {
                let bytes: Option<[u8; 32]> = row.public_key.and_then(|b| b.try_into().ok());
                match bytes.map(|b| VerifyingKey::from_bytes(&b)) {
                    Some(Ok(public)) => Verifier::Ed25519(public),
                    _ => {
                        tracing::warn!(key_id, "API key row has no valid Ed25519 public key");
                        return Ok(None);
                    }
                }
            }
            _ => match (
                row.secret,
                row.secret_ciphertext,
                row.secret_nonce,
                row.secret_key_id,
            ) {
                (_, Some(ciphertext), Some(nonce), Some(sealing_key_id)) => {
                    let sealed = Sealed {
                        ciphertext,
                        nonce,
                        key_id: sealing_key_id,
                    };
                    let opened = self.encryption.open(key_id, &sealed).map_err(|e| {
                        warn_unopened(key_id, &e);
                        AuthError::KeyUnavailable
                    })?;
                    let secret =
                        String::from_utf8(opened).map_err(|_| AuthError::KeyUnavailable)?;
                    Verifier::Hmac(secret)
                }
                (Some(clear), _, _, _) => Verifier::Hmac(clear),
                _ => return Ok(None),
            },
        };
        Ok(Some(KeyRecord {
            account_id: AccountId(account_id),
            verifier,
        }))
    }

    fn record_nonce(&self, key_id: &str, nonce: &str, now_ms: u64) -> Result<(), AuthError> {
        // A nonce is only accepted with a timestamp within the window of now, so after twice
        // the window it can never be accepted again and is forgotten.
        let forget_before_ms = now_ms.saturating_sub(2 * self.window_ms);
        let entry = self.nonces.entry(key_id.to_owned()).or_default();
        let mut log = entry.lock().unwrap_or_else(|p| p.into_inner());
        while log
            .order
            .front()
            .is_some_and(|(t, _)| *t < forget_before_ms)
        {
            if let Some((_, old)) = log.order.pop_front() {
                log.seen.remove(&old);
            }
        }
        if log.seen.contains(nonce) {
            return Err(AuthError::NonceReused);
        }
        if log.order.len() >= NONCES_PER_KEY_MAX {
            return Err(AuthError::TooManyLogins);
        }
        log.seen.insert(nonce.to_owned());
        log.order.push_back((now_ms, nonce.to_owned()));
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    account_id: i64,
    kind: String,
    secret: Option<String>,
    public_key: Option<Vec<u8>>,
    secret_ciphertext: Option<Vec<u8>>,
    secret_nonce: Option<Vec<u8>>,
    secret_key_id: Option<String>,
}

fn warn_unopened(key_id: &str, e: &SealError) {
    tracing::warn!(key_id, error = %e, "cannot open an HMAC key's sealed secret; its logins are refused");
}

/// Lowercase hex HMAC-SHA256 of the login payload, as a client computes it.
pub fn sign(secret: &str, key_id: &str, ts_ms: u64, nonce: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(login_payload(key_id, ts_ms, nonce).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time comparison of the client's signature (`Mac::verify_slice`).
fn verify(secret: &str, login: &Login) -> bool {
    let Ok(claimed) = hex::decode(&login.signature) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(login_payload(&login.key_id, login.ts_ms, &login.nonce).as_bytes());
    mac.verify_slice(&claimed).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_verifies_and_a_changed_field_does_not() {
        let sig = sign("s3cret", "k1", 1_000, "nonce-123");
        let mut login = Login {
            key_id: "k1".into(),
            ts_ms: 1_000,
            nonce: "nonce-123".into(),
            signature: sig,
        };
        assert!(verify("s3cret", &login));
        assert!(!verify("other", &login));
        login.ts_ms = 1_001;
        assert!(!verify("s3cret", &login));
        login.signature = "zz".into();
        assert!(!verify("s3cret", &login));
    }

    #[test]
    fn key_record_debug_hides_the_secret() {
        let k = KeyRecord {
            account_id: AccountId(1),
            verifier: Verifier::Hmac("hunter2".into()),
        };
        assert!(!format!("{k:?}").contains("hunter2"));
    }
}
