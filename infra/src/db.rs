//! PostgreSQL: the connection pool, the embedded migrations, a liveness query.
//!
//! Queries are runtime-checked (`sqlx::query`), never the compile-time `query!` macros, so the
//! workspace builds without a database.

use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The schema, embedded at compile time from `infra/migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a caller waits for a free connection before getting an error instead of a hang.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL ({url}): {source}")]
    Url {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("query failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// A pool of at most `max_connections`, connected eagerly so a wrong URL or a down server is an
/// error at start-up, not on the first order.
pub async fn connect(database_url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options = PgConnectOptions::from_str(database_url)
        .map_err(|source| DbError::Url {
            url: redact(database_url),
            source,
        })?
        .application_name(&application_name());
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(Duration::from_secs(600))
        .connect_with(options)
        .await
        .map_err(|source| DbError::Connect {
            url: redact(database_url),
            source,
        })
}

/// Applies every pending migration. Safe to run concurrently: sqlx takes an advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// `SELECT 1`: the server answers queries, not just accepts connections.
pub async fn ping(pool: &PgPool) -> Result<(), DbError> {
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(pool).await?;
    assert_eq!(one, 1, "SELECT 1 returned {one}");
    Ok(())
}

/// The URL without its password, for errors and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

fn application_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "trading".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("postgres://trading:secret@127.0.0.1:15432/trading"),
            "postgres://trading:***@127.0.0.1:15432/trading"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn migrations_are_embedded_in_order() {
        let versions: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        assert!(!versions.is_empty());
        assert!(versions.windows(2).all(|w| w[0] < w[1]));
    }
}
