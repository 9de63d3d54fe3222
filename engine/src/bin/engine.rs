//! `engine`: the matching engine process. Parses flags (each with an environment fallback),
//! sets up logs, and runs [`engine::run`] until SIGTERM/SIGINT, then drains and exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

// The services allocate per message on many threads; mimalloc's thread-local heaps keep that
// off the profile, where glibc malloc showed up first.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "One isolated matching actor per pair: orders -> PostgreSQL -> events")]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: String,
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The pairs registry (default: config/pairs.toml found upward from here).
    #[arg(long, env = "PAIRS_FILE")]
    pairs_file: Option<PathBuf>,
    #[arg(long, env = "ORDERS_TOPIC", default_value = protocol::records::ORDERS_TOPIC)]
    orders_topic: String,
    #[arg(long, env = "EVENTS_TOPIC", default_value = protocol::records::EVENTS_TOPIC)]
    events_topic: String,
    /// Send settlements (trades, done, amends, rejected places/amends) to the account shards on
    /// this topic, one partition per shard; it must exist. Absent: no settlement feed.
    #[arg(long, env = "ENGINE_ACCOUNTS_TOPIC")]
    accounts_topic: Option<String>,
    /// Kafka consumer group (group mode shares pairs between the group's processes).
    #[arg(long, env = "ENGINE_GROUP_ID", default_value = "engine")]
    group_id: String,
    /// Static mode: only these pairs, e.g. BTC-EUR,ETH-EUR. Absent: consumer-group mode.
    #[arg(long, env = "ENGINE_PAIRS", value_delimiter = ',')]
    pairs: Option<Vec<String>>,
    /// Records per batch (applied and published together) at most.
    #[arg(long, env = "ENGINE_BATCH_MAX_RECORDS", default_value_t = 2000)]
    batch_max_records: usize,
    /// How long a batch waits for more records after its first.
    #[arg(long, env = "ENGINE_BATCH_LINGER_MS", default_value_t = 2)]
    batch_linger_ms: u64,
    /// A pair commits to PostgreSQL at most this often (the batches published meanwhile join
    /// the commit); clients never wait for it.
    #[arg(long, env = "ENGINE_COMMIT_INTERVAL_MS", default_value_t = 100)]
    commit_interval_ms: u64,
    /// PostgreSQL connections (0: one per pair plus two).
    #[arg(long, env = "ENGINE_DB_CONNECTIONS", default_value_t = 0)]
    db_connections: u32,
    /// Where /metrics and /healthz are served.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9100")]
    metrics_addr: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // Logs: RUST_LOG filters, LOG_FORMAT=json for one JSON object per line (infra convention).
    infra::telemetry::init_tracing();
    let registry = match &cli.pairs_file {
        Some(path) => infra::config::load_pairs_from(path)?,
        None => infra::config::load_pairs()?.1,
    };
    let mut config = engine::Config::new(cli.brokers, cli.database_url, registry);
    config.orders_topic = cli.orders_topic;
    config.events_topic = cli.events_topic;
    config.accounts_topic = cli.accounts_topic.filter(|t| !t.is_empty());
    config.group_id = cli.group_id;
    config.static_pairs = cli.pairs;
    config.batch_records_max = cli.batch_max_records;
    config.batch_linger = Duration::from_millis(cli.batch_linger_ms);
    config.commit_interval = Duration::from_millis(cli.commit_interval_ms);
    config.db_connections_max = cli.db_connections;
    config.metrics_addr = Some(cli.metrics_addr);
    let shutdown = infra::shutdown::shutdown_token();
    let ran = engine::run(config, shutdown).await;
    let _ = tokio::task::spawn_blocking(infra::trace::shutdown).await;
    ran.context("engine stopped with an error")
}
