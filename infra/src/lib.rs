//! Shared plumbing for the services: how they find their configuration, talk to Kafka and
//! PostgreSQL, report telemetry and shut down. Nothing here knows about orders or matching.
//!
//! - [`config`]: the pair registry file (`config/pairs.toml`).
//! - [`kafka`]: the one place every rdkafka client config is built; topic layout; readiness.
//! - [`db`]: the PostgreSQL pool and the embedded migrations.
//! - [`shutdown`]: SIGTERM/SIGINT as a cancellation token every service drains on.
//! - [`telemetry`]: tracing and the Prometheus recorder.
//! - [`metrics_doc`]: `docs/METRICS.md` and a scrape read as data, to hold one against the other.

pub mod config;
pub mod db;
pub mod http;
pub mod kafka;
pub mod metrics_doc;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

/// Environment variable naming the Kafka bootstrap servers (`host:port[,host:port]`).
pub const KAFKA_BROKERS_ENV: &str = "KAFKA_BROKERS";
/// Environment variable holding the PostgreSQL URL (`postgres://user:pass@host:port/db`).
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";

/// Where the running stack is, as integration tests find it.
#[derive(Debug, Clone)]
pub struct StackAddrs {
    pub brokers: String,
    pub database_url: String,
}

/// The stack's addresses from `KAFKA_BROKERS` / `DATABASE_URL`, for integration tests. When they
/// are unset the test is skipped with a line saying so, except under `CI=true`, where it panics:
/// a CI run must never pass by skipping.
pub fn stack_for_tests(test: &str) -> Option<StackAddrs> {
    let get = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
    match (get(KAFKA_BROKERS_ENV), get(DATABASE_URL_ENV)) {
        (Some(brokers), Some(database_url)) => Some(StackAddrs {
            brokers,
            database_url,
        }),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "{test}: KAFKA_BROKERS and DATABASE_URL must be set in CI (scripts/stack up; \
             eval \"$(scripts/stack env)\")"
        ),
        _ => {
            eprintln!(
                "skip {test}: KAFKA_BROKERS/DATABASE_URL unset; run scripts/stack up and \
                 eval \"$(scripts/stack env)\""
            );
            None
        }
    }
}
