//! The account stage: one actor per account shard, between the `accounts` topic, PostgreSQL,
//! the pairs' `orders` partitions and `account_events` (docs/ARCHITECTURE.md, "Accounts and
//! balances").
//!
//! ```text
//! accounts[s] --> shard actor s: decode, ledger (reserve / transfer / settle), batch
//!                   | forwards --> orders[pair]          (each with its Source: applied once)
//!                   | answers  --> account_events[s]     (refusals, balances after each line)
//!                   v once Kafka acknowledged both:
//!                 PostgreSQL, one transaction: balances, ledger rows, transfers, settled
//!                 seqs per pair, position (fenced on the previous one), and every
//!                 `snapshot_interval` the shard's whole state (open orders included)
//! recovery: the snapshot, then the partition replayed from it to the position (no effects),
//!           checked against the `balances` rows
//! ```
//!
//! - [`shard`]: the decisions, pure and deterministic (a replay decides the same).
//! - [`store`]: recovery and the batch transaction.
//! - [`actor`]: the I/O loop of one shard and its supervisor.

pub mod actor;
pub mod shard;
pub mod store;
pub mod telemetry;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use accounts_core::{AssetRegistry, LedgerConfig, PairFees};
use protocol::{AccountId, PairId, PairRegistry};
use tokio_util::sync::CancellationToken;

/// Everything the stage needs, already parsed.
#[derive(Debug, Clone)]
pub struct Config {
    pub brokers: String,
    pub database_url: String,
    pub registry: PairRegistry,
    pub accounts_topic: String,
    pub orders_topic: String,
    pub account_events_topic: String,
    /// `Some`: only these shards. `None`: every partition of `accounts_topic`.
    pub static_shards: Option<Vec<u32>>,
    /// The account every fee is credited to.
    pub fee_account_id: AccountId,
    /// From `pairs.toml` (`maker_fee`, `taker_fee`); pairs not listed trade without fees.
    pub pair_fees: BTreeMap<PairId, PairFees>,
    /// A batch ends after this many records...
    pub batch_records_max: usize,
    /// ...or this long after its first.
    pub batch_linger: Duration,
    /// A shard commits to PostgreSQL at most this often; the batches decided meanwhile join the
    /// next commit. Orders never wait for it (forwards are published at once).
    pub commit_interval: Duration,
    /// A shard's snapshot (its whole state, with a commit) is written at most this often: a
    /// recovery replays at most this much of its partition.
    pub snapshot_interval: Duration,
    pub restart_backoff_max: Duration,
    /// Where `/metrics` is served; `None`: not served.
    pub metrics_addr: Option<SocketAddr>,
}

impl Config {
    pub fn new(brokers: String, database_url: String, registry: PairRegistry) -> Config {
        let pair_fees = registry
            .iter()
            .map(|p| (p.id, registry.fees(p.id)))
            .filter(|(_, fees)| *fees != PairFees::default())
            .collect();
        Config {
            brokers,
            database_url,
            registry,
            accounts_topic: protocol::accounts::ACCOUNTS_TOPIC.to_owned(),
            orders_topic: protocol::records::ORDERS_TOPIC.to_owned(),
            account_events_topic: protocol::accounts::ACCOUNT_EVENTS_TOPIC.to_owned(),
            static_shards: None,
            fee_account_id: AccountId(0),
            pair_fees,
            batch_records_max: 2000,
            batch_linger: Duration::from_millis(2),
            commit_interval: Duration::from_millis(100),
            snapshot_interval: Duration::from_secs(10),
            restart_backoff_max: Duration::from_secs(5),
            metrics_addr: None,
        }
    }

    pub fn ledger_config(&self) -> LedgerConfig {
        LedgerConfig {
            fee_account_id: self.fee_account_id,
            pair_fees: self.pair_fees.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error(transparent)]
    Db(#[from] infra::db::DbError),
    #[error(transparent)]
    Kafka(#[from] infra::kafka::KafkaSetupError),
    #[error(
        "topic {0:?} does not exist: create it with one partition per account shard (scripts/stack up)"
    )]
    NoTopic(String),
    #[error("shard {shard} is not a partition of {topic:?} (it has {shards})")]
    NoShard {
        shard: u32,
        topic: String,
        shards: u32,
    },
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("cannot create the Kafka client that samples the consumer lag: {0}")]
    LagClient(#[source] rdkafka::error::KafkaError),
    #[error("fees: {0}")]
    Fees(#[from] accounts_core::ConfigError),
    #[error(transparent)]
    Telemetry(#[from] infra::telemetry::TelemetryError),
    #[error("cannot serve /metrics and /healthz on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The number of account shards: the partition count of the `accounts` topic.
pub async fn shard_count(brokers: &str, topic: &str) -> Result<u32, AccountsError> {
    let counts = infra::kafka::topic_partitions(brokers, &[topic]).await?;
    match counts.first().and_then(|(_, n)| *n) {
        Some(n) => Ok(u32::try_from(n).expect("partition counts fit u32")),
        None => Err(AccountsError::NoTopic(topic.to_owned())),
    }
}

/// How long a SIGTERM waits for the shards to commit what they decided.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs the stage until `shutdown`, then lets every shard finish and commit its batch.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AccountsError> {
    let shards = shard_count(&config.brokers, &config.accounts_topic).await?;
    let owned: Vec<u32> = match &config.static_shards {
        Some(list) => list.clone(),
        None => (0..shards).collect(),
    };
    if let Some(&shard) = owned.iter().find(|&&s| s >= shards) {
        return Err(AccountsError::NoShard {
            shard,
            topic: config.accounts_topic.clone(),
            shards,
        });
    }
    // Checked once here, so an actor's restart cannot fail on it.
    accounts_core::Ledger::new(
        AssetRegistry::from_pairs(&config.registry),
        config.ledger_config(),
    )?;
    // `/healthz` answers 200 while the stage runs and 503 once it drains (an ECS or load
    // balancer check stops counting on it), beside `/metrics`.
    let health = infra::telemetry::Health::default();
    let endpoint_stop = CancellationToken::new();
    if let Some(addr) = config.metrics_addr {
        let handle = infra::telemetry::install_prometheus_recorder()?;
        telemetry::describe();
        telemetry::register(&owned);
        let listener = infra::telemetry::bind(addr)
            .await
            .map_err(|source| AccountsError::Metrics { addr, source })?;
        tokio::spawn(infra::telemetry::serve(
            listener,
            handle,
            health.clone(),
            endpoint_stop.clone(),
        ));
    }
    let _endpoint = endpoint_stop.drop_guard();
    let pool = infra::db::connect(&config.database_url, owned.len() as u32 + 2).await?;
    let producer = infra::kafka::client_config(
        &config.brokers,
        "accounts",
        infra::kafka::Role::BatchProducer,
    )
    .create()
    .map_err(AccountsError::Producer)?;
    let stage = Arc::new(actor::Stage {
        pairs: Arc::new(config.registry.clone()),
        assets: AssetRegistry::from_pairs(&config.registry),
        config,
        pool,
        producer,
        shards,
        progress: (0..shards)
            .map(|_| std::sync::atomic::AtomicI64::new(-1))
            .collect(),
    });
    let lag_consumer: rdkafka::consumer::BaseConsumer = infra::kafka::client_config(
        &stage.config.brokers,
        "accounts-lag",
        infra::kafka::Role::Consumer,
    )
    .create()
    .map_err(AccountsError::LagClient)?;
    let lag_stop = CancellationToken::new();
    tokio::spawn(telemetry::sample_lag(
        Arc::clone(&stage),
        owned.clone(),
        Arc::new(lag_consumer),
        lag_stop.clone(),
    ));
    let _lag = lag_stop.drop_guard();
    health.set(true);
    tracing::info!(shards, owned = ?owned, "account stage started");
    let mut tasks = Vec::new();
    for shard in owned {
        tasks.push(tokio::spawn(actor::supervise(
            Arc::clone(&stage),
            shard,
            shutdown.clone(),
        )));
    }
    shutdown.cancelled().await;
    health.set(false);
    // Bounded: a shard waiting on Kafka (its records never time out) must not hold a SIGTERM
    // past the orchestrator's stop timeout. What it had not committed is decided again by the
    // next start, as after a crash.
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    for t in tasks {
        if tokio::time::timeout_at(deadline, t).await.is_err() {
            tracing::warn!(
                "a shard did not stop within the drain timeout; its uncommitted batches are decided again on the next start"
            );
        }
    }
    tracing::info!("account stage stopped");
    Ok(())
}
