//! HTTP: the WebSocket upgrade at `/ws` (Origin allowlist, connection limit, frame limits) and
//! the operator endpoints `/healthz`, `/readyz`, `/metrics`, `/ops/metrics`; with `GW_WEB_DIR`,
//! the web view's files at `/`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use governor::clock::Clock as _;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::producer::Producer;

use crate::conn;
use crate::state::Shared;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    metrics: Option<PrometheusHandle>,
}

pub(crate) fn router(shared: Arc<Shared>, metrics: Option<PrometheusHandle>) -> Router {
    let web_dir = shared.config.limits.web.web_dir.clone();
    let router = Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .route("/ops/metrics", get(ops_metrics))
        .with_state(App { shared, metrics });
    match web_dir {
        Some(dir) => router.fallback_service(tower_http::services::ServeDir::new(dir)),
        None => router,
    }
}

async fn ops_metrics(State(app): State<App>) -> Response {
    let own = app.metrics.as_ref().map(|h| h.render());
    crate::web::ops_metrics(own, &app.shared.config.limits.web.ops_metrics_urls).await
}

/// Per-connection WebSocket read buffer: a few typical frames (commands are well under 1 KiB).
const WS_READ_BUFFER_BYTES: usize = 8 * 1024;

async fn upgrade(State(app): State<App>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let shared = app.shared;
    let limits = &shared.config.limits;
    if shared.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if !limits.allowed_origins.is_empty() {
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        if !origin.is_some_and(|o| limits.allowed_origins.iter().any(|a| a == o)) {
            metrics::counter!("gateway_upgrades_refused_total", "reason" => crate::telemetry::REFUSED_ORIGIN).increment(1);
            return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
        }
    }
    if let Err(not_until) = shared.upgrades.check() {
        metrics::counter!("gateway_upgrades_refused_total", "reason" => crate::telemetry::REFUSED_NEW_CONNECTION_RATE)
            .increment(1);
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, secs.max(1).to_string())],
            "too many new connections; retry after the Retry-After seconds\n",
        )
            .into_response();
    }
    if !shared.try_open_connection() {
        metrics::counter!("gateway_upgrades_refused_total", "reason" => crate::telemetry::REFUSED_MAX_CONNECTIONS)
            .increment(1);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    }
    let max = limits.max_message_bytes;
    // tungstenite never negotiates permessage-deflate, as OWASP advises. The read buffer is small
    // because tungstenite zeroes its whole spare capacity before every socket read: the 128 KiB
    // default cost more CPU than any other single thing in the gateway. Larger frames still fit;
    // the buffer grows for them.
    ws.read_buffer_size(WS_READ_BUFFER_BYTES)
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade({
            let shared = Arc::clone(&shared);
            move |_| shared.close_connection()
        })
        .on_upgrade(move |socket| conn::serve(shared, socket))
}

async fn ready(State(app): State<App>) -> Response {
    let shared = app.shared;
    let mut problems = Vec::new();
    if shared.shutdown.is_cancelled() {
        problems.push("shutting down".to_owned());
    }
    if !shared.hub.caught_up() {
        problems.push("events replica still catching up".to_owned());
    }
    match tokio::time::timeout(PROBE_TIMEOUT, infra::db::ping(&shared.pool)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("postgresql: {e}")),
        Err(_) => problems.push("postgresql: no answer within 2 s".to_owned()),
    }
    let producer = shared.sink.producer().clone();
    let topic = shared.config.orders_topic.clone();
    let kafka = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&topic), PROBE_TIMEOUT)
            .map(|_| ())
    })
    .await;
    match kafka {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("kafka: {e}")),
        Err(e) => problems.push(format!("kafka probe failed: {e}")),
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let body = format!("not ready: {}\n", problems.join("; "));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn render_metrics(State(app): State<App>) -> Response {
    match app.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "another metrics recorder is installed in this process\n",
        )
            .into_response(),
    }
}
