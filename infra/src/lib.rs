//! Shared plumbing for the services: how they find their configuration, talk to Kafka and
//! PostgreSQL, report telemetry and shut down. Nothing here knows about orders or matching.
//!
//! - [`config`]: the pair registry file (`config/pairs.toml`).
//! - [`kafka`]: the one place every rdkafka client config is built; topic layout; readiness.
//! - [`db`]: the PostgreSQL pool and the embedded migrations.
//! - [`shutdown`]: SIGTERM/SIGINT as a cancellation token every service drains on.
//! - [`telemetry`]: tracing and the Prometheus recorder.

pub mod config;
pub mod db;
pub mod kafka;
pub mod shutdown;
pub mod telemetry;

/// Environment variable naming the Kafka bootstrap servers (`host:port[,host:port]`).
pub const KAFKA_BROKERS_ENV: &str = "KAFKA_BROKERS";
/// Environment variable holding the PostgreSQL URL (`postgres://user:pass@host:port/db`).
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";
