//! The matching engine: one isolated actor per pair, between the `orders` topic, PostgreSQL and
//! the `events` topic.
//!
//! ```text
//! orders[i] --split queue--> actor(pair i): decode, book.apply, batch --> events[i] (idempotent
//!                               |                                          producer)
//!                               |  once Kafka acknowledged the batch's events:
//!                               v
//!                           PostgreSQL: one transaction per batch (or several waiting ones):
//!                           orders, trades, sources, offset (fenced)
//! ```
//!
//! With an `accounts` topic configured ([`Config::accounts_topic`]), each batch also sends its
//! settlement lines to the account shards, right after its events, and commits only once Kafka
//! holds both.
//!
//! - [`run`] is the whole process; the `engine` binary only parses flags and calls it.
//! - [`record`]: decoding one record and applying it, each forwarded command once (public, so a
//!   test can replay a log).
//! - [`rows`]: a batch's events to row changes (pure).
//! - [`settle`]: a batch's events to settlement lines per account shard (pure).
//! - [`store`]: PostgreSQL recovery and the batch transaction.
//!
//! The runtime must be tokio's multi-threaded one: group-mode rebalance callbacks block their
//! worker (bounded) while pairs finish their batch.

mod actor;
pub mod audit;
mod engine;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod record;
pub mod rows;
pub mod settle;
pub mod store;
pub mod telemetry;
pub mod workload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::{PairRegistry, PairSpec};
use tokio_util::sync::CancellationToken;

pub use actor::ActorError;
pub use store::StoreError;

/// Everything the engine needs, already parsed.
#[derive(Debug, Clone)]
pub struct Config {
    pub brokers: String,
    pub database_url: String,
    pub registry: PairRegistry,
    pub orders_topic: String,
    pub events_topic: String,
    /// `Some`: send each batch's settlements to the account shards on this topic, one partition
    /// per shard (its partition count, read at start, is the number of shards; the topic must
    /// exist). `None`: no settlement feed.
    pub accounts_topic: Option<String>,
    pub group_id: String,
    /// `Some`: static mode, these pair symbols only. `None`: consumer-group mode.
    pub static_pairs: Option<Vec<String>>,
    /// A batch ends after this many records...
    pub batch_records_max: usize,
    /// ...or this long after its first record.
    pub batch_linger: Duration,
    /// A pair commits to PostgreSQL at most this often; the batches published meanwhile join the
    /// next commit. Clients never wait for a commit, so this trades only how far PostgreSQL
    /// trails Kafka for fewer, larger transactions.
    pub commit_interval: Duration,
    pub db_connections_max: u32,
    /// How long a revoke waits for pairs to finish and commit their batch.
    pub revoke_timeout: Duration,
    /// How long shutdown waits for each pair to finish its batch.
    pub drain_timeout: Duration,
    /// Ceiling of the exponential backoff between actor restarts.
    pub restart_backoff_max: Duration,
    /// Where `/metrics` and `/healthz` are served; `None`: not served.
    pub metrics_addr: Option<SocketAddr>,
}

impl Config {
    /// Defaults for everything but the addresses and the registry.
    pub fn new(brokers: String, database_url: String, registry: PairRegistry) -> Config {
        Config {
            brokers,
            database_url,
            registry,
            orders_topic: protocol::records::ORDERS_TOPIC.to_owned(),
            events_topic: protocol::records::EVENTS_TOPIC.to_owned(),
            accounts_topic: None,
            group_id: "engine".to_owned(),
            static_pairs: None,
            batch_records_max: 2000,
            batch_linger: Duration::from_millis(2),
            commit_interval: Duration::from_millis(100),
            db_connections_max: 0,
            revoke_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(20),
            restart_backoff_max: Duration::from_secs(5),
            metrics_addr: None,
        }
    }

    /// The pairs of static mode, checked against the registry.
    fn static_specs(&self) -> Result<Option<Vec<PairSpec>>, EngineError> {
        let Some(symbols) = &self.static_pairs else {
            return Ok(None);
        };
        symbols
            .iter()
            .map(|s| {
                self.registry
                    .by_symbol(s)
                    .cloned()
                    .ok_or_else(|| EngineError::UnknownPair(s.clone()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Db(#[from] infra::db::DbError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot {what}: {source}")]
    Kafka {
        what: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("pair {0:?} is not in the pairs file")]
    UnknownPair(String),
    #[error(
        "the accounts topic {0:?} does not exist: create it with one partition per account \
         shard, or start without an accounts topic"
    )]
    AccountsTopicMissing(String),
    #[error("cannot read the accounts topic's partitions: {0}")]
    AccountsTopic(#[from] infra::kafka::KafkaSetupError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Telemetry(#[from] infra::telemetry::TelemetryError),
}

/// Runs the engine until `shutdown` is cancelled, then drains: every pair finishes and commits
/// its batch, the producer flushes, and the function returns.
pub async fn run(mut config: Config, shutdown: CancellationToken) -> Result<(), EngineError> {
    let specs = config.static_specs()?;
    let owned = specs.as_ref().map_or(config.registry.len(), Vec::len);
    if config.db_connections_max == 0 {
        // One connection per pair actor, and a few for recovery and rebalances.
        config.db_connections_max = u32::try_from(owned).unwrap_or(u32::MAX).saturating_add(2);
    }
    let health = telemetry::Health::default();
    if let Some(addr) = config.metrics_addr {
        let handle = infra::telemetry::install_prometheus_recorder()?;
        telemetry::describe();
        match &specs {
            Some(specs) => telemetry::register(specs.iter().map(|s| s.symbol.as_str())),
            None => telemetry::register(config.registry.iter().map(|s| s.symbol.as_str())),
        }
        let listener = telemetry::bind(addr)
            .await
            .map_err(|source| EngineError::Metrics { addr, source })?;
        tokio::spawn(telemetry::serve(
            listener,
            handle,
            health.clone(),
            shutdown.clone(),
        ));
    }
    let inner = shutdown.child_token();
    let engine = engine::Engine::start(config, inner.clone()).await?;
    match &specs {
        Some(specs) => {
            tracing::info!(pairs = ?specs.iter().map(|s| &s.symbol).collect::<Vec<_>>(), "static mode");
            engine.assign_static(specs).await?;
        }
        None => {
            tracing::info!(group_id = %engine.config.group_id, "consumer-group mode");
            engine.subscribe()?;
        }
    }
    health.set(true);
    tokio::spawn(Arc::clone(&engine).report_lag(Duration::from_secs(2)));
    let main_queue = {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move { engine.serve_main_queue().await })
    };
    shutdown.cancelled().await;
    health.set(false);
    tracing::info!("draining: finishing batches, committing, flushing events");
    engine.drain().await;
    inner.cancel();
    let _ = main_queue.await;
    close_bounded(engine, CONSUMER_CLOSE_WAIT).await;
    tracing::info!("engine stopped");
    Ok(())
}

/// How long shutdown waits for librdkafka to close the consumer.
const CONSUMER_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Drops the engine (and so closes its Kafka consumer, leaving the group) on a side thread,
/// waiting at most `wait`. Everything is durable and flushed by now. The close normally takes
/// milliseconds; the bound is there because a librdkafka close that blocks on an unreachable
/// broker must not hold a SIGTERM past Fargate's stop timeout.
async fn close_bounded(engine: Arc<engine::Engine>, wait: Duration) {
    let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        drop(engine);
        let _ = closed_tx.send(());
    });
    let closed = tokio::task::spawn_blocking(move || closed_rx.recv_timeout(wait)).await;
    if !matches!(closed, Ok(Ok(()))) {
        tracing::warn!(
            waited_ms = wait.as_millis() as u64,
            "Kafka consumer close did not finish; exiting anyway (all results are durable)"
        );
    }
}
