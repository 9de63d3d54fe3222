//! What a gateway process is told at start. Every limit has a flag and an environment variable
//! (see `gateway --help`); the defaults are [`Limits::DEFAULT`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use protocol::PairRegistry;

/// Everything [`crate::run`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    pub brokers: String,
    pub database_url: String,
    pub pairs: Arc<PairRegistry>,
    pub orders_topic: String,
    pub events_topic: String,
    /// 0..=63, unique among the gateways writing to the same `orders` topic; goes into the high
    /// bits of every command id.
    pub gateway_id: u8,
    pub limits: Limits,
}

/// The account stage (docs/ARCHITECTURE.md, "Accounts and balances"): off unless
/// `accounts_topic` is set. It lives with the [`Limits`] (flags and environment alike) so
/// that every `Config` written before it still builds, with the stage off.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AccountStage {
    /// The account stage's input topic (one partition per account shard). Set: place and
    /// amend go there to reserve funds first, `balances` works; unset: the stage is off and
    /// commands go straight to `orders`.
    #[arg(long, env = "GW_ACCOUNTS_TOPIC")]
    pub accounts_topic: Option<String>,
    /// The account stage's answers (refusals, balances); default `account_events`. Read only
    /// when `accounts_topic` is set.
    #[arg(long, env = "GW_ACCOUNT_EVENTS_TOPIC")]
    pub account_events_topic: Option<String>,
}

impl AccountStage {
    pub const OFF: AccountStage = AccountStage {
        accounts_topic: None,
        account_events_topic: None,
    };

    pub fn events_topic(&self) -> &str {
        self.account_events_topic
            .as_deref()
            .unwrap_or(protocol::accounts::ACCOUNT_EVENTS_TOPIC)
    }
}

/// The web view (`web/`, docs/API.md "Operator endpoints"): off unless `web_dir` is set. Kept
/// with the [`Limits`], as [`AccountStage`] is, so every `Config` written before it still builds.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WebView {
    /// A directory of static files served at `/` (the built `web/dist`), so the page and `/ws`
    /// share one origin. Unset: nothing is served there.
    #[arg(long, env = "GW_WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// Other services' Prometheus endpoints (`http://host:port/metrics`, comma separated) that
    /// `GET /ops/metrics` reads on each request, beside the gateway's own, for the web view's
    /// operations strip (the engine's and the account stage's consumer lag).
    #[arg(long, env = "GW_OPS_METRICS_URLS", value_delimiter = ',')]
    pub ops_metrics_urls: Vec<String>,
}

impl WebView {
    pub const OFF: WebView = WebView {
        web_dir: None,
        ops_metrics_urls: Vec::new(),
    };
}

/// Bounds and timings. Each one is a named policy in `docs/API.md`. (Also the optional
/// account stage, [`AccountStage`], and the web view, [`WebView`].)
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Open WebSocket connections; the next upgrade gets HTTP 503.
    #[arg(long, env = "GW_MAX_CONNECTIONS", default_value_t = Limits::DEFAULT.max_connections)]
    pub max_connections: usize,
    /// New WebSocket connections per second over the whole gateway (GCRA, burst
    /// `GW_NEW_CONNECTIONS_BURST`); beyond it an upgrade gets HTTP 503 with `Retry-After`, so a
    /// flood of connections (or every client of a restarted gateway at once) cannot starve the
    /// clients already connected.
    #[arg(long, env = "GW_NEW_CONNECTIONS_PER_S", default_value_t = Limits::DEFAULT.new_connections_per_s)]
    pub new_connections_per_s: u32,
    #[arg(long, env = "GW_NEW_CONNECTIONS_BURST", default_value_t = Limits::DEFAULT.new_connections_burst)]
    pub new_connections_burst: u32,
    /// Kernel send buffer of each client socket, in bytes (0: the kernel's autotuning, up to
    /// `net.ipv4.tcp_wmem`'s maximum, 4 MiB on Linux). Bounds what a client that stops reading
    /// holds in the kernel, and lets `GW_WRITE_TIMEOUT_MS` find it within seconds.
    #[arg(long, env = "GW_SOCKET_SEND_BUFFER_BYTES", default_value_t = Limits::DEFAULT.socket_send_buffer_bytes)]
    pub socket_send_buffer_bytes: usize,
    /// A TCP connection that has not sent its whole HTTP request (the upgrade) this long after
    /// being accepted is closed: half-open connections cannot pile up.
    #[arg(long, env = "GW_HANDSHAKE_TIMEOUT_MS", default_value_t = Limits::DEFAULT.handshake_timeout_ms)]
    pub handshake_timeout_ms: u64,
    /// How long a starting gateway waits for another running gateway with its `GW_GATEWAY_ID`
    /// (on the same database and schema) to go away before it refuses to start: two gateways
    /// with one id would hand out the same order ids (see `gateway::claim`).
    #[arg(long, env = "GW_ID_CLAIM_WAIT_MS", default_value_t = Limits::DEFAULT.id_claim_wait_ms)]
    pub id_claim_wait_ms: u64,
    /// Largest accepted frame and message; larger closes the connection with 1009.
    #[arg(long, env = "GW_MAX_MESSAGE_BYTES", default_value_t = Limits::DEFAULT.max_message_bytes)]
    pub max_message_bytes: usize,
    /// Allowed `Origin` header values, comma separated; empty allows every origin (and requests
    /// without one, as bots send).
    #[arg(long, env = "GW_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Login timestamps further than this from the gateway clock are `stale_timestamp`.
    #[arg(long, env = "GW_LOGIN_WINDOW_MS", default_value_t = Limits::DEFAULT.login_window_ms)]
    pub login_window_ms: u64,
    /// Requests per second on one connection (GCRA), every method counted.
    #[arg(long, env = "GW_CONN_RATE_PER_S", default_value_t = Limits::DEFAULT.conn_rate_per_s)]
    pub conn_rate_per_s: u32,
    #[arg(long, env = "GW_CONN_BURST", default_value_t = Limits::DEFAULT.conn_burst)]
    pub conn_burst: u32,
    /// Trading commands per second per account, over all its connections on this gateway.
    #[arg(long, env = "GW_ACCOUNT_RATE_PER_S", default_value_t = Limits::DEFAULT.account_rate_per_s)]
    pub account_rate_per_s: u32,
    #[arg(long, env = "GW_ACCOUNT_BURST", default_value_t = Limits::DEFAULT.account_burst)]
    pub account_burst: u32,
    /// This many requests refused by the connection's own rate limit within one second close
    /// the connection (1008, `abuse`): the client keeps sending through its `retry_after_ms`.
    #[arg(long, env = "GW_ABUSE_LIMITED_PER_S", default_value_t = Limits::DEFAULT.abuse_limited_per_s)]
    pub abuse_limited_per_s: u32,
    /// Commands written to Kafka and not yet acknowledged above which new orders are shed.
    #[arg(long, env = "GW_INFLIGHT_NEW_MAX", default_value_t = Limits::DEFAULT.inflight_new_max)]
    pub inflight_new_max: usize,
    /// Hard bound on unacknowledged commands; above it even cancels are shed.
    #[arg(long, env = "GW_INFLIGHT_HARD_MAX", default_value_t = Limits::DEFAULT.inflight_hard_max)]
    pub inflight_hard_max: usize,
    /// Records in the Kafka producer's local queue (each packs one or more commands) above which
    /// new orders are shed.
    #[arg(long, env = "GW_PRODUCER_QUEUE_NEW_MAX", default_value_t = Limits::DEFAULT.producer_queue_new_max)]
    pub producer_queue_new_max: usize,
    /// When the smallest Kafka acknowledgement delay over the last 100 ms exceeds this, a queue
    /// is standing and new orders are shed (CoDel's signal).
    #[arg(long, env = "GW_QUEUE_DELAY_TARGET_MS", default_value_t = Limits::DEFAULT.queue_delay_target_ms)]
    pub queue_delay_target_ms: u64,
    /// When the smallest time from writing a command to the engine's verdict over the last
    /// 100 ms exceeds this, the engine has a standing queue and new orders are shed.
    #[arg(long, env = "GW_ENGINE_DELAY_TARGET_MS", default_value_t = Limits::DEFAULT.engine_delay_target_ms)]
    pub engine_delay_target_ms: u64,
    /// Commands waiting for the engine's verdict above which new orders are shed.
    #[arg(long, env = "GW_AWAITING_VERDICT_NEW_MAX", default_value_t = Limits::DEFAULT.awaiting_verdict_new_max)]
    pub awaiting_verdict_new_max: usize,
    /// `retry_after_ms` given with `overloaded`.
    #[arg(long, env = "GW_OVERLOAD_RETRY_AFTER_MS", default_value_t = Limits::DEFAULT.overload_retry_after_ms)]
    pub overload_retry_after_ms: u64,
    /// Responses and private pushes waiting to be written to one connection; overflowing closes
    /// it (4000, `slow_consumer`).
    #[arg(long, env = "GW_OUTBOUND_QUEUE_MAX", default_value_t = Limits::DEFAULT.outbound_queue_max)]
    pub outbound_queue_max: usize,
    /// Public trades kept for a slow reader per pair; older ones are dropped (conflation).
    #[arg(long, env = "GW_PENDING_TRADES_MAX", default_value_t = Limits::DEFAULT.pending_trades_max)]
    pub pending_trades_max: usize,
    /// Levels per side in book snapshots and the view updates maintain.
    #[arg(long, env = "GW_BOOK_DEPTH", default_value_t = Limits::DEFAULT.book_depth)]
    pub book_depth: usize,
    #[arg(long, env = "GW_MAX_SUBSCRIPTIONS", default_value_t = Limits::DEFAULT.max_subscriptions)]
    pub max_subscriptions: usize,
    /// Requests of one connection waiting for Kafka; at the bound the gateway stops reading that
    /// connection (TCP back-pressure) until some complete.
    #[arg(long, env = "GW_PENDING_PER_CONN_MAX", default_value_t = Limits::DEFAULT.pending_per_conn_max)]
    pub pending_per_conn_max: usize,
    /// Server WebSocket ping interval; below an ALB's 60 s idle timeout.
    #[arg(long, env = "GW_PING_INTERVAL_MS", default_value_t = Limits::DEFAULT.ping_interval_ms)]
    pub ping_interval_ms: u64,
    /// Nothing received (not even a pong) for this long closes the connection (4001).
    #[arg(long, env = "GW_IDLE_TIMEOUT_MS", default_value_t = Limits::DEFAULT.idle_timeout_ms)]
    pub idle_timeout_ms: u64,
    #[arg(long, env = "GW_HEARTBEAT_INTERVAL_MS", default_value_t = Limits::DEFAULT.heartbeat_interval_ms)]
    pub heartbeat_interval_ms: u64,
    /// One write to a socket that takes longer than this drops the connection.
    #[arg(long, env = "GW_WRITE_TIMEOUT_MS", default_value_t = Limits::DEFAULT.write_timeout_ms)]
    pub write_timeout_ms: u64,
    /// Before the gateway closes a connection (abuse, idle, a bad frame) it answers the
    /// requests already on their way to Kafka; this bounds that wait.
    #[arg(long, env = "GW_CLOSE_FLUSH_TIMEOUT_MS", default_value_t = Limits::DEFAULT.close_flush_timeout_ms)]
    pub close_flush_timeout_ms: u64,
    /// How long SIGTERM waits for clients to close and Kafka to acknowledge.
    #[arg(long, env = "GW_DRAIN_TIMEOUT_MS", default_value_t = Limits::DEFAULT.drain_timeout_ms)]
    pub drain_timeout_ms: u64,
    /// Requests remembered until the engine answers, so its verdict carries the `req_id`.
    #[arg(long, env = "GW_REQUEST_MAP_MAX", default_value_t = Limits::DEFAULT.request_map_max)]
    pub request_map_max: usize,
    /// Longest dead-man switch timeout.
    #[arg(long, env = "GW_DEADMAN_MAX_MS", default_value_t = Limits::DEFAULT.deadman_max_ms)]
    pub deadman_max_ms: u64,
    #[command(flatten)]
    pub accounts: AccountStage,
    /// The key-encryption keys for HMAC secrets at rest ([`crate::keys`]).
    #[command(flatten)]
    pub keys: crate::keys::KeyEncryption,
    #[command(flatten)]
    pub web: WebView,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        max_connections: 10_000,
        new_connections_per_s: 200,
        new_connections_burst: 200,
        socket_send_buffer_bytes: 256 * 1024,
        handshake_timeout_ms: 10_000,
        id_claim_wait_ms: 15_000,
        max_message_bytes: 16 * 1024,
        allowed_origins: Vec::new(),
        login_window_ms: 5_000,
        conn_rate_per_s: 200,
        conn_burst: 400,
        account_rate_per_s: 500,
        account_burst: 1_000,
        abuse_limited_per_s: 100,
        inflight_new_max: 50_000,
        inflight_hard_max: 80_000,
        producer_queue_new_max: 60_000,
        queue_delay_target_ms: 250,
        engine_delay_target_ms: 250,
        awaiting_verdict_new_max: 40_000,
        overload_retry_after_ms: 250,
        outbound_queue_max: 4_096,
        pending_trades_max: 1_000,
        book_depth: 50,
        max_subscriptions: 64,
        pending_per_conn_max: 1_024,
        ping_interval_ms: 20_000,
        idle_timeout_ms: 60_000,
        heartbeat_interval_ms: 5_000,
        write_timeout_ms: 5_000,
        close_flush_timeout_ms: 2_000,
        drain_timeout_ms: 10_000,
        request_map_max: 200_000,
        deadman_max_ms: 3_600_000,
        accounts: AccountStage::OFF,
        keys: crate::keys::KeyEncryption::NONE,
        web: WebView::OFF,
    };
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}
