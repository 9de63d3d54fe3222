//! `audit`: replays the logs and checks the guarantees against `events` and PostgreSQL
//! ([`engine::audit`]). Prints a table (or JSON with `--json`), and exits 0 when every rule
//! holds, 1 on any violation, 2 when the audit could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use engine::audit::{AuditConfig, Report};
use protocol::AccountId;

// As the services: mimalloc's thread-local heaps, and memory a pair freed is reused by the next.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Replay the orders log through engine-core and check events and PostgreSQL")]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: String,
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Read the tables of this schema (sets the connection's search_path).
    #[arg(long)]
    schema: Option<String>,
    /// The pairs registry (default: config/pairs.toml found upward from here).
    #[arg(long, env = "PAIRS_FILE")]
    pairs_file: Option<PathBuf>,
    #[arg(long, env = "ORDERS_TOPIC", default_value = protocol::records::ORDERS_TOPIC)]
    orders_topic: String,
    #[arg(long, env = "EVENTS_TOPIC", default_value = protocol::records::EVENTS_TOPIC)]
    events_topic: String,
    #[arg(long, env = "ACCOUNTS_TOPIC", default_value = protocol::accounts::ACCOUNTS_TOPIC)]
    accounts_topic: String,
    #[arg(long, env = "ACCOUNT_EVENTS_TOPIC", default_value = protocol::accounts::ACCOUNT_EVENTS_TOPIC)]
    account_events_topic: String,
    /// The account the stage credits fees to (as given to `accounts run`).
    #[arg(long, env = "ACCOUNTS_FEE_ACCOUNT", default_value_t = 0)]
    fee_account: u64,
    /// Only these pairs, e.g. BTC-EUR,ETH-EUR (default: all).
    #[arg(long, value_delimiter = ',')]
    pair: Option<Vec<String>>,
    /// JSON lines of the commands acknowledged as received: {"order_id": N, "command_id": N,
    /// "pair": "BTC-EUR"}, order_id or command_id required.
    #[arg(long)]
    received: Option<PathBuf>,
    /// Skip the account stage's rules.
    #[arg(long)]
    no_balances: bool,
    /// Print the report as JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// How many violations the report lists in detail (all are counted).
    #[arg(long, default_value_t = 100)]
    violations_max: usize,
    /// Answers remembered per pair (by a hash) to compare re-published ones with.
    #[arg(long, default_value_t = 1_000_000)]
    duplicate_window: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs to stderr; the report alone goes to stdout. Only warnings unless RUST_LOG says, and
    // not sqlx's "slow statement": the audit streams whole tables through one statement each.
    infra::telemetry::init_tracing_with_default("warn,sqlx::query=error");
    match audit(cli) {
        Ok(report) if report.ok => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(err) => {
            eprintln!("audit: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn audit(cli: Cli) -> Result<Report> {
    let registry = match &cli.pairs_file {
        Some(path) => infra::config::load_pairs_from(path)?,
        None => infra::config::load_pairs()?.1,
    };
    let database_url = match &cli.schema {
        Some(schema) => with_search_path(&cli.database_url, schema)?,
        None => cli.database_url.clone(),
    };
    let mut config = AuditConfig::new(cli.brokers, database_url, registry);
    config.orders_topic = cli.orders_topic;
    config.events_topic = cli.events_topic;
    config.accounts_topic = cli.accounts_topic;
    config.account_events_topic = cli.account_events_topic;
    config.fee_account_id = AccountId(cli.fee_account);
    config.pairs = cli.pair;
    config.received = cli.received;
    config.balances = !cli.no_balances;
    config.violations_max = cli.violations_max;
    config.duplicate_window = cli.duplicate_window;
    let runtime = tokio::runtime::Runtime::new().context("start the runtime")?;
    let report = runtime.block_on(engine::audit::run(&config))?;
    if let Some(path) = &cli.json_out {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("write {}", path.display()))?;
    }
    if cli.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    Ok(report)
}

/// `url` with its connections' `search_path` set to `schema`.
fn with_search_path(url: &str, schema: &str) -> Result<String> {
    if schema.is_empty()
        || !schema
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        bail!("--schema must be letters, digits and underscores, not {schema:?}");
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{sep}options=-c%20search_path%3D{schema}"))
}
