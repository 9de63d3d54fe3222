//! Finding and reading `config/pairs.toml`.
//!
//! Lookup order: the `PAIRS_FILE` environment variable; then `config/pairs.toml` in the current
//! directory or any parent; then the same walk from this crate's source directory, so tests and
//! `cargo run` work from anywhere inside the repository. Containers set `PAIRS_FILE`.

use std::path::{Path, PathBuf};

use protocol::pairs::{PairRegistry, PairsError};

pub const PAIRS_FILE_ENV: &str = "PAIRS_FILE";
const PAIRS_RELATIVE: &str = "config/pairs.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot find {PAIRS_RELATIVE}: set {PAIRS_FILE_ENV}=/path/to/pairs.toml or run from \
         inside the repository (searched upward from {searched_from})"
    )]
    PairsNotFound { searched_from: PathBuf },
    #[error("cannot read pairs file {path}: {source}")]
    PairsUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pairs file {path} is invalid: {source}")]
    PairsInvalid {
        path: PathBuf,
        #[source]
        source: PairsError,
    },
}

/// Where the pairs file is, by the lookup order in the module docs.
pub fn pairs_path() -> Result<PathBuf, ConfigError> {
    if let Some(path) = std::env::var_os(PAIRS_FILE_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    find_upward(&cwd)
        .or_else(|| find_upward(crate_dir))
        .ok_or(ConfigError::PairsNotFound { searched_from: cwd })
}

/// Loads the registry from [`pairs_path`]; returns the path too, for logs.
pub fn load_pairs() -> Result<(PathBuf, PairRegistry), ConfigError> {
    let path = pairs_path()?;
    let registry = load_pairs_from(&path)?;
    Ok((path, registry))
}

pub fn load_pairs_from(path: &Path) -> Result<PairRegistry, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::PairsUnreadable {
        path: path.to_owned(),
        source,
    })?;
    PairRegistry::from_toml(&text).map_err(|source| ConfigError::PairsInvalid {
        path: path.to_owned(),
        source,
    })
}

fn find_upward(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(PAIRS_RELATIVE))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_repository_file_from_the_crate_directory() {
        let path = find_upward(Path::new(env!("CARGO_MANIFEST_DIR"))).expect("repo pairs file");
        let registry = load_pairs_from(&path).unwrap();
        assert!(registry.len() >= 8);
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = load_pairs_from(Path::new("/nonexistent/pairs.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::PairsUnreadable { .. }));
        assert!(err.to_string().contains("/nonexistent/pairs.toml"));
    }
}
