//! The engine's metrics (documented in docs/METRICS.md) and its small HTTP endpoint serving
//! `/metrics` (Prometheus text) and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const COMMANDS_TOTAL: &str = "engine_commands_total";
pub const BATCH_RECORDS: &str = "engine_batch_records";
pub const BATCH_COMMANDS: &str = "engine_batch_commands";
pub const PERSIST_SECONDS: &str = "engine_persist_seconds";
pub const RECORD_AGE_SECONDS: &str = "engine_record_age_seconds";
pub const BATCH_WAIT_SECONDS: &str = "engine_batch_wait_seconds";
pub const CONSUMER_LAG_RECORDS: &str = "engine_consumer_lag_records";
pub const PAUSED: &str = "engine_paused";
pub const ACTOR_RESTARTS_TOTAL: &str = "engine_actor_restarts_total";
pub const POISON_RECORDS_TOTAL: &str = "engine_poison_records_total";
pub const REPEATED_COMMANDS_TOTAL: &str = "engine_repeated_commands_total";
pub const COMMIT_LAG_SECONDS: &str = "engine_commit_lag_seconds";
pub const COMMIT_BATCHES: &str = "engine_commit_batches";

/// Registers every metric's description with the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        COMMANDS_TOTAL,
        Unit::Count,
        "orders command lines applied and committed, per pair"
    );
    describe_histogram!(
        BATCH_RECORDS,
        Unit::Count,
        "orders records per persisted batch"
    );
    describe_histogram!(
        BATCH_COMMANDS,
        Unit::Count,
        "command lines per persisted batch"
    );
    describe_histogram!(
        PERSIST_SECONDS,
        Unit::Seconds,
        "duration of one commit's PostgreSQL transaction (one or more batches)"
    );
    describe_histogram!(
        RECORD_AGE_SECONDS,
        Unit::Seconds,
        "from an orders record's Kafka timestamp (the gateway's produce call) to its actor reading it"
    );
    describe_histogram!(
        BATCH_WAIT_SECONDS,
        Unit::Seconds,
        "from a batch's first record read to its events handed to the producer (linger, matching, a full staging queue)"
    );
    describe_gauge!(
        CONSUMER_LAG_RECORDS,
        Unit::Count,
        "orders records in the partition not yet applied (high watermark - next offset)"
    );
    describe_gauge!(
        PAUSED,
        "1 while the pair does not consume (recovering or backing off)"
    );
    describe_counter!(
        ACTOR_RESTARTS_TOTAL,
        Unit::Count,
        "actor restarts after an error or a panic, per pair"
    );
    describe_counter!(
        POISON_RECORDS_TOTAL,
        Unit::Count,
        "records rejected as malformed_record or wrong_pair, per pair"
    );
    describe_counter!(
        REPEATED_COMMANDS_TOTAL,
        Unit::Count,
        "forwarded command lines skipped because their source (account shard and position) was applied already, per pair"
    );
    describe_histogram!(
        COMMIT_BATCHES,
        Unit::Count,
        "batches one PostgreSQL transaction commits (batches published meanwhile join it)"
    );
    describe_histogram!(
        COMMIT_LAG_SECONDS,
        Unit::Seconds,
        "from a batch's events handed to the producer to its commit in PostgreSQL (Kafka ack, queue, transaction)"
    );
}

/// Creates every series at zero before anything happens, so a scrape right after start shows
/// each documented metric and `rate()` / `absent()` alerts work from the first minute. `pairs`
/// are the pairs this process may own (its static pairs, or every pair in group mode).
pub fn register<'a>(pairs: impl IntoIterator<Item = &'a str>) {
    for pair in pairs {
        let labels = [("pair", pair.to_owned())];
        metrics::counter!(COMMANDS_TOTAL, &labels).increment(0);
        metrics::counter!(ACTOR_RESTARTS_TOTAL, &labels).increment(0);
        metrics::counter!(POISON_RECORDS_TOTAL, &labels).increment(0);
        metrics::counter!(REPEATED_COMMANDS_TOTAL, &labels).increment(0);
        metrics::gauge!(CONSUMER_LAG_RECORDS, &labels).set(0.0);
        metrics::gauge!(PAUSED, &labels).set(0.0);
    }
    for histogram in [
        BATCH_RECORDS,
        BATCH_COMMANDS,
        PERSIST_SECONDS,
        RECORD_AGE_SECONDS,
        BATCH_WAIT_SECONDS,
        COMMIT_LAG_SECONDS,
        COMMIT_BATCHES,
    ] {
        // Registering the handle is enough: it renders with a count of 0.
        let _ = metrics::histogram!(histogram);
    }
}

/// Whether the engine is up: false once it started draining, so a load balancer or ECS health
/// check stops counting on it.
#[derive(Clone, Default)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    pub fn set(&self, healthy: bool) {
        self.0.store(healthy, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Largest request head read; anything longer is answered 400.
const REQUEST_BYTES_MAX: usize = 4096;

/// Serves `GET /metrics` and `GET /healthz` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    health: Health,
    shutdown: CancellationToken,
) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics endpoint accept failed");
                    continue;
                }
            },
        };
        let handle = handle.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; REQUEST_BYTES_MAX];
            let n = match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stream.read(&mut buf),
            )
            .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/metrics" => ("200 OK", handle.render()),
                "/healthz" if health.get() => ("200 OK", "ok\n".to_owned()),
                "/healthz" => ("503 Service Unavailable", "draining\n".to_owned()),
                _ => ("404 Not Found", "not found\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// Binds the endpoint; an error names the address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
