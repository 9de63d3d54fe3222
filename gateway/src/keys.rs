//! What an API key is made of, and how its secret part is kept out of the database.
//!
//! Two kinds (`api_keys.kind`, `infra/migrations/0009_api_key_protection.sql`):
//! - **Ed25519**: the client signs the login with its private key; the row holds only the
//!   32-byte public key, so a copy of the database lets nobody log in.
//! - **HMAC-SHA256** (kept for compatibility): the gateway needs the shared secret itself, so
//!   the row holds it sealed with XChaCha20-Poly1305 under a key-encryption key the processes
//!   get from the environment (`GW_KEY_ENCRYPTION_KEY`), with the id of that key beside the
//!   ciphertext so keys can be rotated (`GW_KEY_ENCRYPTION_KEY_PREVIOUS`).
//!
//! Nothing here prints a key: the types that hold one show `***` in `Debug`, and clap is told
//! not to show the environment's values in `--help`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use protocol::ws::login_payload;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const KEY_ENCRYPTION_KEY_ENV: &str = "GW_KEY_ENCRYPTION_KEY";
pub const KEY_ENCRYPTION_KEY_PREVIOUS_ENV: &str = "GW_KEY_ENCRYPTION_KEY_PREVIOUS";
/// Bytes of a sealed secret's random nonce (XChaCha20-Poly1305).
pub const SEAL_NONCE_LEN: usize = 24;

/// `api_keys.kind`, and the `kind` of a `gateway provision` output line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// HMAC-SHA256 with a shared secret (lowercase hex signature).
    #[default]
    Hmac,
    /// Ed25519: the client keeps the private key (base64 signature of 64 bytes).
    Ed25519,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Hmac => "hmac",
            KeyKind::Ed25519 => "ed25519",
        }
    }
}

/// One 32-byte key-encryption key. Never printed.
#[derive(Clone)]
pub struct EncryptionKey {
    bytes: [u8; 32],
    id: String,
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptionKey {{ id: {:?}, bytes: *** }}", self.id)
    }
}

impl EncryptionKey {
    pub fn from_bytes(bytes: [u8; 32]) -> EncryptionKey {
        // The id names the key without revealing it: operators and rows can say which key
        // sealed a secret, and a wrong key is told apart from a damaged row.
        let mut h = Sha256::new();
        h.update(b"trading api_keys key-encryption key id\0");
        h.update(bytes);
        let id = hex::encode(&h.finalize()[..8]);
        EncryptionKey { bytes, id }
    }

    /// A fresh random key (tests, and `gateway keys new-encryption-key`).
    pub fn generate() -> EncryptionKey {
        let mut bytes = [0_u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        EncryptionKey::from_bytes(bytes)
    }

    /// Base64 (standard alphabet) of exactly 32 bytes, or 64 hex digits (what Secrets Manager
    /// can generate). The error never repeats the value.
    pub fn parse(text: &str) -> Result<EncryptionKey, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).expect("64 hex digits decode")
        } else {
            BASE64.decode(text).map_err(|_| {
                "a key-encryption key must be base64 of 32 bytes, or 64 hex digits".to_owned()
            })?
        };
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "a key-encryption key must be 32 bytes, this one has {}",
                b.len()
            )
        })?;
        Ok(EncryptionKey::from_bytes(bytes))
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.bytes)
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The key-encryption keys a process holds: the current one seals, every one opens.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KeyEncryption {
    /// Key-encryption key for HMAC secrets at rest: base64 of 32 random bytes, or 64 hex
    /// digits. Needed by the gateway when any HMAC key is stored, and by `gateway provision`
    /// to create HMAC keys. Set it in the environment (a flag would show in `ps`); it is never
    /// logged.
    #[arg(long, env = KEY_ENCRYPTION_KEY_ENV, hide_env_values = true, value_parser = EncryptionKey::parse)]
    pub key_encryption_key: Option<EncryptionKey>,
    /// Earlier key-encryption keys, comma separated: secrets sealed under them still open
    /// until `gateway keys encrypt-existing` re-seals them under the current key. Empty: none.
    #[arg(
        long,
        env = KEY_ENCRYPTION_KEY_PREVIOUS_ENV,
        hide_env_values = true,
        value_parser = PreviousKeys::parse
    )]
    pub key_encryption_key_previous: Option<PreviousKeys>,
}

/// `GW_KEY_ENCRYPTION_KEY_PREVIOUS`: keys that only open, comma separated; an empty value (what
/// ECS injects from an empty secret field) is none.
#[derive(Debug, Clone, Default)]
pub struct PreviousKeys(pub Vec<EncryptionKey>);

impl PreviousKeys {
    pub fn parse(text: &str) -> Result<PreviousKeys, String> {
        text.split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(EncryptionKey::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(PreviousKeys)
    }
}

/// A secret as `api_keys` holds it: ciphertext with its tag, the nonce, the sealing key's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub key_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("no key-encryption key is set ({KEY_ENCRYPTION_KEY_ENV})")]
    NoKey,
    #[error(
        "the secret is sealed under key-encryption key {key_id}, which neither \
         {KEY_ENCRYPTION_KEY_ENV} nor {KEY_ENCRYPTION_KEY_PREVIOUS_ENV} provides"
    )]
    UnknownKey { key_id: String },
    #[error(
        "the secret sealed under key-encryption key {key_id} does not open: the row was \
         altered or moved to another key_id"
    )]
    Damaged { key_id: String },
}

impl KeyEncryption {
    pub const NONE: KeyEncryption = KeyEncryption {
        key_encryption_key: None,
        key_encryption_key_previous: None,
    };

    /// `current` seals; `previous` keys only open.
    pub fn new(current: EncryptionKey, previous: Vec<EncryptionKey>) -> KeyEncryption {
        KeyEncryption {
            key_encryption_key: Some(current),
            key_encryption_key_previous: Some(PreviousKeys(previous)),
        }
    }

    pub fn current(&self) -> Option<&EncryptionKey> {
        self.key_encryption_key.as_ref()
    }

    pub fn previous(&self) -> &[EncryptionKey] {
        self.key_encryption_key_previous
            .as_ref()
            .map_or(&[], |p| p.0.as_slice())
    }

    /// Every key this process holds, the current one first.
    pub fn all(&self) -> impl Iterator<Item = &EncryptionKey> {
        self.key_encryption_key.iter().chain(self.previous())
    }

    pub fn by_id(&self, id: &str) -> Option<&EncryptionKey> {
        self.all().find(|k| k.id == id)
    }

    /// Seals `secret` for the row of `api_key_id` (bound to it as associated data, so a
    /// ciphertext copied into another row does not open), with a fresh random nonce.
    pub fn seal(&self, api_key_id: &str, secret: &[u8]) -> Result<Sealed, SealError> {
        let key = self.current().ok_or(SealError::NoKey)?;
        let mut nonce = [0_u8; SEAL_NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = cipher(key)
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret,
                    aad: api_key_id.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 seals any secret shorter than 256 GiB");
        Ok(Sealed {
            ciphertext,
            nonce: nonce.to_vec(),
            key_id: key.id.clone(),
        })
    }

    pub fn open(&self, api_key_id: &str, sealed: &Sealed) -> Result<Vec<u8>, SealError> {
        let key = self
            .by_id(&sealed.key_id)
            .ok_or_else(|| SealError::UnknownKey {
                key_id: sealed.key_id.clone(),
            })?;
        let damaged = || SealError::Damaged {
            key_id: sealed.key_id.clone(),
        };
        let nonce: [u8; SEAL_NONCE_LEN] =
            sealed.nonce.as_slice().try_into().map_err(|_| damaged())?;
        cipher(key)
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: api_key_id.as_bytes(),
                },
            )
            .map_err(|_| damaged())
    }
}

fn cipher(key: &EncryptionKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&key.bytes.into())
}

/// A client's Ed25519 public key as `gateway provision --public-key` takes it: base64 of the
/// 32 raw bytes, or a PEM `PUBLIC KEY` block (what `openssl pkey -pubout` writes). Weak keys
/// (small order points) are refused.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let text = text.trim();
    let key = if text.starts_with("-----BEGIN") {
        VerifyingKey::from_public_key_pem(text)
            .map_err(|e| format!("not an Ed25519 PEM public key: {e}"))?
    } else {
        let bytes = BASE64
            .decode(text)
            .map_err(|_| "an Ed25519 public key is base64 of 32 bytes or PEM".to_owned())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "an Ed25519 public key is 32 bytes, this one has {}",
                b.len()
            )
        })?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 point".to_owned())?
    };
    if key.is_weak() {
        return Err("a weak Ed25519 public key (small order) is refused".to_owned());
    }
    Ok(key)
}

/// A new Ed25519 private key: (base64 of its 32-byte seed, its public key).
pub fn generate_ed25519() -> (String, VerifyingKey) {
    let mut seed = [0_u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    (BASE64.encode(seed), key.verifying_key())
}

/// The login signature a client sends, for either kind: `secret` is the HMAC secret, or the
/// base64 Ed25519 seed. (Tests and examples; real clients have their own.)
pub fn sign_login(kind: KeyKind, secret: &str, key_id: &str, ts_ms: u64, nonce: &str) -> String {
    let payload = login_payload(key_id, ts_ms, nonce);
    match kind {
        KeyKind::Hmac => {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
            mac.update(payload.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        }
        KeyKind::Ed25519 => {
            let seed: [u8; 32] = BASE64
                .decode(secret)
                .ok()
                .and_then(|b| b.try_into().ok())
                .expect("an Ed25519 secret is base64 of a 32-byte seed");
            let sig: Signature = SigningKey::from_bytes(&seed).sign(payload.as_bytes());
            BASE64.encode(sig.to_bytes())
        }
    }
}

/// Checks an Ed25519 login signature: base64 of 64 bytes, verified strictly (no malleable
/// encodings) over the login payload.
pub fn verify_ed25519(key: &VerifyingKey, payload: &[u8], signature_b64: &str) -> bool {
    let Ok(bytes) = BASE64.decode(signature_b64) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&bytes) else {
        return false;
    };
    key.verify_strict(payload, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_row() {
        let old = EncryptionKey::generate();
        let keys = KeyEncryption::new(old.clone(), vec![]);
        let sealed = keys.seal("k1", b"s3cret").unwrap();
        assert_eq!(sealed.key_id, old.id());
        assert!(!sealed.ciphertext.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(keys.open("k1", &sealed).unwrap(), b"s3cret");
        // Bound to its row.
        assert!(matches!(
            keys.open("k2", &sealed),
            Err(SealError::Damaged { .. })
        ));
        // Rotation: the old key, now previous, still opens; a keyring without it says which.
        let rotated = KeyEncryption::new(EncryptionKey::generate(), vec![old.clone()]);
        assert_eq!(rotated.open("k1", &sealed).unwrap(), b"s3cret");
        assert_ne!(rotated.seal("k1", b"x").unwrap().key_id, old.id());
        let wrong = KeyEncryption::new(EncryptionKey::generate(), vec![]);
        assert_eq!(
            wrong.open("k1", &sealed),
            Err(SealError::UnknownKey {
                key_id: old.id().to_owned()
            })
        );
        assert_eq!(KeyEncryption::NONE.seal("k1", b"x"), Err(SealError::NoKey));
    }

    #[test]
    fn keys_never_show_in_debug_or_parse_errors() {
        let key = EncryptionKey::generate();
        let b64 = key.to_base64();
        let parsed = EncryptionKey::parse(&b64).unwrap();
        assert_eq!(parsed.id(), key.id());
        let keys = KeyEncryption::new(key, vec![parsed]);
        assert!(!format!("{keys:?}").contains(&b64));
        let short = BASE64.encode([7_u8; 31]);
        assert!(!EncryptionKey::parse(&short).unwrap_err().contains(&short));
        assert!(EncryptionKey::parse("not base64!").is_err());
        assert!(PreviousKeys::parse("").unwrap().0.is_empty());
        let two = PreviousKeys::parse(&format!("{b64}, {}", "0f".repeat(32))).unwrap();
        assert_eq!(two.0.len(), 2);
        assert!(PreviousKeys::parse("x,").is_err());
        let hex_key = EncryptionKey::parse(&"0f".repeat(32)).unwrap();
        assert_eq!(hex_key.to_base64(), BASE64.encode([0x0f_u8; 32]));
    }

    /// docs/API.md's worked login examples are what this code computes, for both kinds.
    #[test]
    fn the_api_docs_login_examples_hold() {
        let doc = include_str!("../../docs/API.md");
        let (key_id, ts_ms, nonce) = ("kexample01", 1_764_000_000_000, "n-0001-abcd");
        let seed = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
        let public = parse_public_key("11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=").unwrap();
        assert_eq!(
            SigningKey::from_bytes(&BASE64.decode(seed).unwrap().try_into().unwrap())
                .verifying_key(),
            public
        );
        // The same key as `openssl pkey -pubout` writes it.
        let pem = "-----BEGIN PUBLIC KEY-----\n\
                   MCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n\
                   -----END PUBLIC KEY-----\n";
        assert_eq!(parse_public_key(pem).unwrap(), public);
        let ed = sign_login(KeyKind::Ed25519, seed, key_id, ts_ms, nonce);
        let payload = login_payload(key_id, ts_ms, nonce);
        assert!(verify_ed25519(&public, payload.as_bytes(), &ed));
        let hmac = sign_login(
            KeyKind::Hmac,
            "3f9a1c2b7d4e8f60a5b2c9d1e7f30468",
            key_id,
            ts_ms,
            nonce,
        );
        for (what, value) in [("seed", seed), ("Ed25519 signature", &ed), ("HMAC", &hmac)] {
            assert!(doc.contains(value), "docs/API.md lacks the {what} {value}");
        }
    }

    #[test]
    fn ed25519_signatures_verify_and_a_changed_byte_does_not() {
        let (seed, public) = generate_ed25519();
        let sig = sign_login(KeyKind::Ed25519, &seed, "k1", 1_000, "nonce-123");
        let payload = login_payload("k1", 1_000, "nonce-123");
        assert!(verify_ed25519(&public, payload.as_bytes(), &sig));
        assert!(!verify_ed25519(
            &public,
            login_payload("k1", 1_001, "nonce-123").as_bytes(),
            &sig
        ));
        let mut raw = BASE64.decode(&sig).unwrap();
        raw[10] ^= 1;
        assert!(!verify_ed25519(
            &public,
            payload.as_bytes(),
            &BASE64.encode(&raw)
        ));
        assert!(!verify_ed25519(&public, payload.as_bytes(), "zz"));
        let b64 = BASE64.encode(public.to_bytes());
        assert_eq!(parse_public_key(&b64).unwrap(), public);
        assert!(parse_public_key(&BASE64.encode([0_u8; 32])).is_err());
    }
}
