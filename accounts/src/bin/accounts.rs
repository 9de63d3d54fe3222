//! `accounts`: the account stage process (`accounts run`), and the operator's way to move funds
//! in and out (`accounts deposit`, `accounts withdraw`): a transfer is a line in the account's
//! shard like any command, so it is applied exactly once and replayed with the rest. Trading
//! clients cannot reach this: it needs the brokers, which only the services and operators see.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use protocol::AccountId;
use protocol::accounts::{AccountRecord, TransferDirection, TransferRecord, account_shard};
use protocol::records::RECORD_VERSION;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "The account stage: reserve before matching, settle after it")]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", global = true, default_value = "")]
    brokers: String,
    /// The pairs registry (default: config/pairs.toml found upward from here).
    #[arg(long, env = "PAIRS_FILE", global = true)]
    pairs_file: Option<PathBuf>,
    #[arg(long, env = "ACCOUNTS_TOPIC", global = true, default_value = protocol::accounts::ACCOUNTS_TOPIC)]
    accounts_topic: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the shard actors until SIGTERM/SIGINT.
    Run {
        /// PostgreSQL URL.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[arg(long, env = "ORDERS_TOPIC", default_value = protocol::records::ORDERS_TOPIC)]
        orders_topic: String,
        #[arg(long, env = "ACCOUNT_EVENTS_TOPIC", default_value = protocol::accounts::ACCOUNT_EVENTS_TOPIC)]
        account_events_topic: String,
        /// Only these shards, e.g. 0,1. Absent: every partition of the accounts topic.
        #[arg(long, env = "ACCOUNTS_SHARDS", value_delimiter = ',')]
        shards: Option<Vec<u32>>,
        /// The account every trading fee is credited to.
        #[arg(long, env = "ACCOUNTS_FEE_ACCOUNT", default_value_t = 0)]
        fee_account: u64,
        /// Records per batch at most.
        #[arg(long, env = "ACCOUNTS_BATCH_MAX_RECORDS", default_value_t = 2000)]
        batch_max_records: usize,
        /// How long a batch waits for more records after its first.
        #[arg(long, env = "ACCOUNTS_BATCH_LINGER_MS", default_value_t = 2)]
        batch_linger_ms: u64,
        /// A shard commits to PostgreSQL at most this often (the batches decided meanwhile join
        /// the commit); orders never wait for it.
        #[arg(long, env = "ACCOUNTS_COMMIT_INTERVAL_MS", default_value_t = 100)]
        commit_interval_ms: u64,
        /// A shard writes a snapshot of its whole state (balances, open orders) at most this
        /// often, with a commit; a recovery loads it and replays only the lines after it.
        #[arg(long, env = "ACCOUNTS_SNAPSHOT_INTERVAL_MS", default_value_t = 10_000)]
        snapshot_interval_ms: u64,
        /// Where /metrics is served.
        #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9102")]
        metrics_addr: SocketAddr,
    },
    /// Credit an account (an operator's command; applied once per transfer id).
    Deposit(TransferArgs),
    /// Debit an account's available funds; refused beyond them.
    Withdraw(TransferArgs),
}

#[derive(clap::Args, Debug)]
struct TransferArgs {
    #[arg(long)]
    account: u64,
    /// The asset's symbol, e.g. EUR or BTC.
    #[arg(long)]
    asset: String,
    /// A positive decimal amount, e.g. 1500.25.
    #[arg(long)]
    amount: String,
    /// The operator's reference, unique per transfer (default: derived from the clock).
    #[arg(long)]
    transfer_id: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    infra::telemetry::init_tracing();
    if cli.brokers.is_empty() {
        bail!("no Kafka brokers: set KAFKA_BROKERS or --brokers");
    }
    let registry = match &cli.pairs_file {
        Some(path) => infra::config::load_pairs_from(path)?,
        None => infra::config::load_pairs()?.1,
    };
    match cli.command {
        Cmd::Run {
            database_url,
            orders_topic,
            account_events_topic,
            shards,
            fee_account,
            batch_max_records,
            batch_linger_ms,
            commit_interval_ms,
            snapshot_interval_ms,
            metrics_addr,
        } => {
            let mut config = accounts::Config::new(cli.brokers, database_url, registry);
            config.accounts_topic = cli.accounts_topic;
            config.orders_topic = orders_topic;
            config.account_events_topic = account_events_topic;
            config.static_shards = shards;
            config.fee_account_id = AccountId(fee_account);
            config.batch_records_max = batch_max_records;
            config.batch_linger = Duration::from_millis(batch_linger_ms);
            config.commit_interval = Duration::from_millis(commit_interval_ms);
            config.snapshot_interval = Duration::from_millis(snapshot_interval_ms);
            config.metrics_addr = Some(metrics_addr);
            let shutdown = infra::shutdown::shutdown_token();
            let ran = accounts::run(config, shutdown).await;
            let _ = tokio::task::spawn_blocking(infra::trace::shutdown).await;
            ran.context("account stage stopped with an error")
        }
        Cmd::Deposit(args) => {
            transfer(
                &cli.brokers,
                &cli.accounts_topic,
                &registry,
                args,
                TransferDirection::Deposit,
            )
            .await
        }
        Cmd::Withdraw(args) => {
            transfer(
                &cli.brokers,
                &cli.accounts_topic,
                &registry,
                args,
                TransferDirection::Withdrawal,
            )
            .await
        }
    }
}

async fn transfer(
    brokers: &str,
    topic: &str,
    registry: &protocol::PairRegistry,
    args: TransferArgs,
    direction: TransferDirection,
) -> Result<()> {
    let assets = accounts_core::AssetRegistry::from_pairs(registry);
    let Some(asset) = assets.by_symbol(&args.asset) else {
        let known: Vec<&str> = assets.iter().map(|a| a.symbol.as_str()).collect();
        bail!(
            "no asset {:?}; the assets are {}",
            args.asset,
            known.join(", ")
        );
    };
    let units = protocol::pairs::parse_units(&args.amount, asset.decimals)
        .with_context(|| format!("amount {:?} for {}", args.amount, asset.symbol))?;
    if units <= 0 {
        bail!("the amount must be positive");
    }
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let transfer_id = args.transfer_id.unwrap_or(now_ns / 1_000);
    let shards = accounts::shard_count(brokers, topic).await?;
    let account_id = AccountId(args.account);
    let record = AccountRecord::Transfer(TransferRecord {
        v: RECORD_VERSION,
        transfer_id,
        account_id,
        direction,
        asset: asset.symbol.clone(),
        amount_units: i128::from(units),
        ts_ns: now_ns,
    });
    let producer: FutureProducer =
        infra::kafka::client_config(brokers, "accounts-cli", infra::kafka::Role::Producer)
            .create()
            .context("Kafka producer")?;
    let shard = account_shard(account_id, shards);
    let payload = record.encode();
    let key = account_id.0.to_string();
    producer
        .send(
            FutureRecord::to(topic)
                .partition(shard as i32)
                .key(&key)
                .payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .context("sending the transfer")?;
    println!(
        "transfer {transfer_id}: {direction:?} of {} {} for account {} sent to shard {shard}",
        args.amount, asset.symbol, args.account
    );
    Ok(())
}
