//! Logs and metrics setup shared by every binary.
//!
//! Logs: `RUST_LOG` filters (default `info`); `LOG_FORMAT=json` writes one JSON object per line,
//! for CloudWatch and other collectors. Metrics: the `metrics` facade, exported for Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot install the Prometheus recorder: {0}")]
    Prometheus(#[from] metrics_exporter_prometheus::BuildError),
    #[error("cannot start the metrics upkeep thread: {0}")]
    Upkeep(#[source] std::io::Error),
}

/// Installs the global tracing subscriber, and trace export when the OpenTelemetry environment
/// asks for it ([`crate::trace`]; `service` is the default `service.name`). Call once, first
/// thing in `main`; call [`crate::trace::shutdown`] before exiting so buffered spans go out.
/// A trace setting that cannot be honoured stops the service with the reason.
pub fn init_tracing() {
    let service = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "trading".to_owned());
    if let Err(err) = crate::trace::init(&service) {
        eprintln!("{service}: tracing: {err}");
        std::process::exit(2);
    }
    init_tracing_with_default("info");
}

/// [`init_tracing`] with another filter than `info` when `RUST_LOG` is unset, and no export
/// unless [`crate::trace::init`] ran first.
pub fn init_tracing_with_default(default_filter: &str) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let fmt = tracing_subscriber::fmt::layer();
    let fmt = if json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    // `tracing` spans join the exported traces (through tracing-opentelemetry) when export is
    // on; the command spans themselves are made in `crate::trace`.
    let otel = crate::trace::tracer().map(|t| tracing_opentelemetry::layer().with_tracer(t));
    // try_init: a second call (tests) keeps the first subscriber instead of panicking.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
}

/// Installs the global metrics recorder and returns a handle that renders the Prometheus text
/// format, for a service that serves `/metrics` from its own HTTP server.
///
/// Also starts the recorder's upkeep on a small thread of its own: without it, every histogram
/// sample is kept until the next scrape, so an unscraped process grows without bound (tens of
/// MiB a minute at 1.6M commands/min).
pub fn install_prometheus_recorder() -> Result<PrometheusHandle, TelemetryError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        })
        .map_err(TelemetryError::Upkeep)?;
    Ok(handle)
}

/// How often histogram samples are folded into their summaries.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the service is up: false once it started draining, so a load balancer or ECS health
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
                // Starting, or draining.
                "/healthz" => ("503 Service Unavailable", "not serving\n".to_owned()),
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
