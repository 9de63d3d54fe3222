//! The gateway's metrics, documented in `docs/METRICS.md`: every series is created at start, so a
//! scrape of a fresh gateway already shows each one (at zero) and `rate()` / `absent()` alerts
//! work from the first minute.

use protocol::ws::{ErrorCode, METHODS};

use crate::outbound::Closing;
use crate::sink::Shed;
use crate::state::error_code_name;

/// Reasons of `gateway_shed_total` besides the admission signals of [`Shed`].
pub(crate) const SHED_CONNECTION_RATE: &str = "connection_rate";
pub(crate) const SHED_ACCOUNT_RATE: &str = "account_rate";
pub(crate) const SHED_KAFKA: &str = "kafka";
/// Too many client queries of the database at once (`queries::QUERY_CONCURRENCY_MAX`).
pub(crate) const SHED_QUERIES: &str = "queries";

/// Reasons of `gateway_slow_consumers_total`.
pub(crate) const SLOW_OUTBOUND_QUEUE: &str = "outbound_queue";
pub(crate) const SLOW_WRITE_TIMEOUT: &str = "write_timeout";

/// Reasons of `gateway_upgrades_refused_total`.
pub(crate) const REFUSED_ORIGIN: &str = "origin";
pub(crate) const REFUSED_MAX_CONNECTIONS: &str = "max_connections";
pub(crate) const REFUSED_NEW_CONNECTION_RATE: &str = "new_connection_rate";

const COUNTERS: &[&str] = &[
    "gateway_frames_total",
    "gateway_handshake_timeouts_total",
    "gateway_commands_produced_total",
    "gateway_events_records_total",
    "gateway_events_duplicates_total",
    "gateway_events_undecodable_total",
    "gateway_events_wrong_pair_total",
    "gateway_events_read_errors_total",
    "gateway_market_conflated_total",
    "gateway_trades_dropped_total",
    "gateway_request_map_full_total",
    "gateway_deadman_fired_total",
    "gateway_undelivered_total",
    "gateway_account_events_records_total",
    "gateway_account_events_duplicates_total",
    "gateway_account_events_undecodable_total",
    "gateway_account_events_read_errors_total",
    "gateway_query_behind_total",
];

const GAUGES: &[&str] = &["gateway_connections", "gateway_commands_in_flight"];

const HISTOGRAMS: &[&str] = &[
    "gateway_record_commands",
    "gateway_kafka_ack_seconds",
    "gateway_verdict_seconds",
    "gateway_events_age_seconds",
];

/// Creates every series at zero. Call once the recorder is installed.
pub(crate) fn register() {
    for name in COUNTERS {
        metrics::counter!(*name).increment(0);
    }
    for name in GAUGES {
        metrics::gauge!(*name).set(0.0);
    }
    for name in HISTOGRAMS {
        let _ = metrics::histogram!(*name);
    }
    for method in METHODS {
        metrics::counter!("gateway_requests_total", "method" => *method).increment(0);
    }
    let codes = ErrorCode::GATEWAY
        .iter()
        .chain(ErrorCode::ACCOUNT_REFUSALS)
        .copied()
        .chain(
            ErrorCode::ORDER_REASONS
                .iter()
                .map(|r| ErrorCode::Order(*r)),
        );
    for code in codes {
        metrics::counter!("gateway_errors_total", "code" => error_code_name(code)).increment(0);
    }
    let shed = [
        SHED_CONNECTION_RATE,
        SHED_ACCOUNT_RATE,
        SHED_KAFKA,
        SHED_QUERIES,
    ];
    for reason in shed.iter().chain(Shed::LABELS) {
        metrics::counter!("gateway_shed_total", "reason" => *reason).increment(0);
    }
    for why in Closing::ALL {
        metrics::counter!("gateway_disconnects_total", "reason" => why.reason()).increment(0);
    }
    for reason in [SLOW_OUTBOUND_QUEUE, SLOW_WRITE_TIMEOUT] {
        metrics::counter!("gateway_slow_consumers_total", "reason" => reason).increment(0);
    }
    for reason in [
        REFUSED_ORIGIN,
        REFUSED_MAX_CONNECTIONS,
        REFUSED_NEW_CONNECTION_RATE,
    ] {
        metrics::counter!("gateway_upgrades_refused_total", "reason" => reason).increment(0);
    }
}
