//! Logs and metrics setup shared by every binary.
//!
//! Logs: `RUST_LOG` filters (default `info`); `LOG_FORMAT=json` writes one JSON object per line,
//! for CloudWatch and other collectors. Metrics: the `metrics` facade, exported for Prometheus.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot install the Prometheus recorder: {0}")]
    Prometheus(#[from] metrics_exporter_prometheus::BuildError),
    #[error("cannot start the metrics upkeep thread: {0}")]
    Upkeep(#[source] std::io::Error),
}

/// Installs the global tracing subscriber. Call once, first thing in `main`.
pub fn init_tracing() {
    init_tracing_with_default("info");
}

/// [`init_tracing`] with another filter than `info` when `RUST_LOG` is unset.
pub fn init_tracing_with_default(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // try_init: a second call (tests) keeps the first subscriber instead of panicking.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
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

/// Installs the global metrics recorder with its own HTTP listener serving `/metrics` on `addr`.
/// Must be called inside a tokio runtime.
pub fn serve_prometheus(addr: SocketAddr) -> Result<(), TelemetryError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()?;
    Ok(())
}
