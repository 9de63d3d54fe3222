//! The load-test accounts, as `gateway provision` writes them: one JSON object per line.

use std::path::Path;

use serde::Deserialize;

#[derive(Clone, Deserialize)]
pub struct Account {
    pub key_id: String,
    /// HMAC: the shared secret; Ed25519: base64 of the 32-byte private key (seed).
    pub secret: String,
    pub account_id: u64,
    /// Absent in files written before Ed25519 keys: those are HMAC.
    #[serde(default)]
    pub kind: KeyKind,
}

/// How the login is signed (docs/API.md, "Login").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// Lowercase hex HMAC-SHA256.
    #[default]
    Hmac,
    /// Base64 of the 64-byte Ed25519 signature.
    Ed25519,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("key_id", &self.key_id)
            .field("secret", &"***")
            .field("account_id", &self.account_id)
            .field("kind", &self.kind)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("cannot read accounts file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("accounts file {path} line {line}: {source}")]
    Parse {
        path: String,
        line: usize,
        source: serde_json::Error,
    },
}

pub fn parse(text: &str, path: &str) -> Result<Vec<Account>, AccountsError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| AccountsError::Parse {
                path: path.to_owned(),
                line: i + 1,
                source,
            })
        })
        .collect()
}

pub fn load(path: &Path) -> Result<Vec<Account>, AccountsError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AccountsError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, &shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_json_lines_and_hides_secrets() {
        let text = "{\"key_id\":\"k1\",\"secret\":\"s1\",\"account_id\":1}\n\n\
                    {\"key_id\":\"k2\",\"secret\":\"s2\",\"account_id\":2,\"kind\":\"ed25519\"}\n";
        let accounts = parse(text, "a.jsonl").unwrap();
        assert_eq!(accounts.len(), 2);
        assert_eq!(accounts[1].account_id, 2);
        assert_eq!(accounts[0].kind, KeyKind::Hmac);
        assert_eq!(accounts[1].kind, KeyKind::Ed25519);
        assert!(!format!("{:?}", accounts[0]).contains("s1"));
        let err = parse("{}\n", "a.jsonl").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
