//! The WebSocket trading gateway: authenticates clients, validates their commands against the
//! pair registry, admits or sheds them, writes them to Kafka `orders` (partition = pair), and
//! streams the engine's results from `events` back: each account's private stream and the
//! public market data of an L2 book replica per pair. With the account stage on
//! (`GW_ACCOUNTS_TOPIC`), place and amend go to `accounts` instead, and `account_events`
//! brings its refusals and balances back (`accounts`).
//!
//! `run(config, shutdown)` is the whole service; the binary only parses flags and calls it.
//! `docs/API.md` is the client's reference, including the overload policy.

mod abuse;
pub mod accounts;
pub mod auth;
pub mod claim;
pub mod config;
mod conn;
mod deadman;
#[doc(hidden)]
pub mod fuzz;
mod held;
mod http;
pub mod hub;
pub mod ids;
pub mod keys;
mod listener;
pub mod outbound;
pub mod provision;
pub mod queries;
pub mod sink;
pub mod snapshot;
mod state;
mod telemetry;
pub mod validate;
mod web;

use axum::serve::ListenerExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use infra::kafka::{Role, client_config};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Config, Limits};

use crate::state::Shared;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Db(#[from] infra::db::DbError),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Ids(#[from] ids::IdError),
    #[error("a gateway task failed: {0}")]
    Task(String),
    #[error("account stage: {0}")]
    AccountStage(String),
    #[error(transparent)]
    Keys(#[from] auth::KeyCheckError),
    #[error(
        "gateway id {0} is in use by another running gateway on this database and schema (it held \
         the id throughout GW_ID_CLAIM_WAIT_MS): give each gateway writing to the same topics its \
         own GW_GATEWAY_ID (0-63), or stop the other one"
    )]
    IdInUse(u8),
    #[error("cannot claim the gateway id in PostgreSQL: {0}")]
    Claim(String),
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    task: JoinHandle<Result<(), GatewayError>>,
}

impl Gateway {
    /// The address it listens on (the real port when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the gateway has drained after its shutdown token was cancelled.
    pub async fn join(self) -> Result<(), GatewayError> {
        self.task
            .await
            .map_err(|e| GatewayError::Task(e.to_string()))?
    }
}

/// The process-wide Prometheus recorder; `None` when something else installed a recorder.
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = infra::telemetry::install_prometheus_recorder().ok()?;
            telemetry::register();
            Some(handle)
        })
        .clone()
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Connects to PostgreSQL and Kafka, binds the listener and serves until `shutdown` is
/// cancelled; then stops accepting, closes clients with 1001, flushes the producer.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Gateway, GatewayError> {
    let metrics = metrics_handle();
    let pool = infra::db::connect(&config.database_url, 8).await?;
    auth::check_keys(&pool, &config.limits.keys).await?;
    // Before anything hands out an id; held until the drain is over.
    let claim = claim::claim(
        &config.database_url,
        config.gateway_id,
        Duration::from_millis(config.limits.id_claim_wait_ms),
        shutdown.clone(),
    )
    .await?;
    let client_id = format!("gateway-{}", config.gateway_id);
    let producer: FutureProducer =
        client_config(&config.brokers, &client_id, Role::Producer).create()?;
    // No group is joined (partitions are assigned); the id only names the client to the broker.
    let unique = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let consumer: StreamConsumer = client_config(&config.brokers, &client_id, Role::Consumer)
        .set(
            "group.id",
            format!("{client_id}-{}-{unique}", std::process::id()),
        )
        .create()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| GatewayError::Bind {
        addr: config.listen,
        source,
    })?;
    // The account stage: its topic's partitions are the shards, and its answers are read from
    // their end as of now (the `balances` request gives the state before that).
    let stage = match &config.limits.accounts.accounts_topic {
        None => None,
        Some(topic) => {
            let probe: Arc<StreamConsumer> = Arc::new(
                client_config(&config.brokers, &client_id, Role::Consumer)
                    .set(
                        "group.id",
                        format!("{client_id}-accounts-{}-{unique}", std::process::id()),
                    )
                    .create()?,
            );
            let shards = accounts::partition_count(&probe, topic).await?;
            let events_topic = config.limits.accounts.events_topic().to_owned();
            let answers = accounts::partition_count(&probe, &events_topic).await?;
            accounts::assign_from_end(&probe, &events_topic, answers).await?;
            tracing::info!(topic = %topic, shards, account_events = %events_topic, "account stage on: place and amend reserve funds first");
            Some((
                accounts::Stage {
                    topic: Arc::from(topic.as_str()),
                    shards,
                },
                probe,
            ))
        }
    };
    let (stage, account_events) = stage.unzip();
    let now_s = now_ms() / 1000;
    let shared = Arc::new(Shared::new(
        config,
        pool,
        producer,
        now_s,
        shutdown.clone(),
        stage,
    )?);

    let events_stop = CancellationToken::new();
    let start = match snapshot::load(&shared.pool).await {
        Ok(snap) => {
            shared.hub.load_snapshot(&snap);
            tracing::info!(
                pairs = snap.pairs.len(),
                "book replica loaded from PostgreSQL; reading events from shortly before it"
            );
            snap.replica_start()
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the books from PostgreSQL; replaying the whole events topic instead");
            hub::ReplicaStart::Beginning
        }
    };
    let reading = hub::consume_events(
        Arc::clone(&shared.hub),
        consumer,
        start,
        shared.config.events_topic.clone(),
        events_stop.clone(),
    );
    let events = tokio::spawn(async move {
        let read = reading.await;
        if let Err(e) = &read {
            tracing::error!(error = %e, "the events task stopped: no verdict or market data will reach clients");
        }
        read
    });
    let account_events = account_events.map(|consumer| {
        let reading = accounts::consume_account_events(
            Arc::clone(&shared.hub),
            consumer,
            events_stop.clone(),
        );
        tokio::spawn(async move {
            let read = reading.await;
            if let Err(e) = &read {
                tracing::error!(error = %e, "the account_events task stopped: no refusal or balance will reach clients");
            }
            read
        })
    });
    let app = http::router(Arc::clone(&shared), metrics);
    let config_send_buffer = shared.config.limits.socket_send_buffer_bytes;
    let handshake_timeout = Duration::from_millis(shared.config.limits.handshake_timeout_ms);
    tracing::info!(%addr, gateway_id = shared.config.gateway_id, "gateway listening");
    let task = tokio::spawn(async move {
        // Small frames go out at once: with Nagle on, a push could wait for the client's delayed
        // ACK (tens of milliseconds) whenever an earlier frame is unacknowledged.
        let send_buffer = config_send_buffer;
        let listener = listener.tap_io(move |tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(error = %err, "cannot set TCP_NODELAY");
            }
            if send_buffer > 0
                && let Err(err) = socket2::SockRef::from(&*tcp).set_send_buffer_size(send_buffer)
            {
                tracing::debug!(error = %err, "cannot set SO_SNDBUF");
            }
        });
        let listener = listener::HeadDeadline::new(listener, handshake_timeout);
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await
            .map_err(GatewayError::Serve);
        drain(&shared).await;
        events_stop.cancel();
        let _ = events.await;
        if let Some(task) = account_events {
            let _ = task.await;
        }
        drop(claim);
        served
    });
    Ok(Gateway { addr, task })
}

/// After the listener stopped: wait for connections to close (they were told 1001), then give
/// Kafka the rest of the drain time to acknowledge what was written.
async fn drain(shared: &Arc<Shared>) {
    let limit = Duration::from_millis(shared.config.limits.drain_timeout_ms);
    let started = tokio::time::Instant::now();
    while shared.connection_count() > 0 && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Commands of closed connections may still wait for their record's flush task.
    while !shared.sink.all_handed_to_producer() && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let producer = shared.sink.producer().clone();
    let left = limit
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(100));
    let flushed = tokio::task::spawn_blocking(move || producer.flush(left)).await;
    match flushed {
        Ok(Ok(())) => tracing::info!("producer flushed; gateway stopped"),
        Ok(Err(e)) => tracing::error!(error = %e, "producer flush incomplete at shutdown"),
        Err(e) => tracing::error!(error = %e, "producer flush task failed"),
    }
}
