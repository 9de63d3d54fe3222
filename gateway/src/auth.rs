//! Login: API keys from PostgreSQL (cached), HMAC-SHA256 over `protocol::ws::login_payload`,
//! a timestamp window and a per-key nonce log bounded by that window.
//!
//! Nonces are remembered per gateway process: a replay to another gateway within the window is
//! not caught. The window (5 s by default) bounds that exposure; a shared store would close it.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hmac::{Hmac, KeyInit, Mac};
use protocol::AccountId;
use protocol::ws::{Login, login_payload};
use sha2::Sha256;
use sqlx::PgPool;

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
    #[error("cannot read API keys: {0}")]
    Db(#[from] sqlx::Error),
}

#[derive(Clone)]
struct KeyRecord {
    account_id: AccountId,
    secret: String,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("account_id", &self.account_id)
            .field("secret", &"***")
            .finish()
    }
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
    keys: DashMap<String, CachedKey>,
    nonces: DashMap<String, Mutex<NonceLog>>,
}

impl Authenticator {
    pub fn new(pool: PgPool, window_ms: u64) -> Authenticator {
        Authenticator {
            pool,
            window_ms,
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
        if !verify(&key.secret, login) {
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
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT account_id, secret FROM api_keys WHERE key_id = $1 AND disabled_at IS NULL",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        let record = row.and_then(|(account_id, secret)| {
            Some(KeyRecord {
                account_id: AccountId(u64::try_from(account_id).ok()?),
                secret,
            })
        });
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
            secret: "hunter2".into(),
        };
        assert!(!format!("{k:?}").contains("hunter2"));
    }
}
