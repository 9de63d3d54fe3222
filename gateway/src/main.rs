//! `gateway`: serve the WebSocket API, or `gateway provision` accounts and API keys.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::{Config, Limits};

// The services allocate per message on many threads; mimalloc's thread-local heaps keep that
// off the profile, where glibc malloc showed up first.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "WebSocket trading gateway with back-pressure and load shedding"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create accounts with one API key each and write them as JSON lines
    /// (`{"key_id", "secret", "account_id"}`) for the load generator.
    Provision {
        #[arg(long, default_value_t = 1)]
        accounts: usize,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "acct")]
        name_prefix: String,
        #[arg(long, env = infra::DATABASE_URL_ENV)]
        database_url: String,
        /// Deposit into each new account, e.g. `EUR=10000,BTC=2.5` (amounts in the asset, at
        /// most its decimals): one transfer per account and asset to the account stage's topic.
        #[arg(long)]
        fund: Option<String>,
        /// With `--fund`: the account stage's input topic (one partition per shard).
        #[arg(long, env = "GW_ACCOUNTS_TOPIC")]
        accounts_topic: Option<String>,
        /// With `--fund`.
        #[arg(long, env = infra::KAFKA_BROKERS_ENV)]
        brokers: Option<String>,
        /// With `--fund`: the pairs the assets come from (default: as the gateway finds them).
        #[arg(long, env = infra::config::PAIRS_FILE_ENV)]
        pairs_file: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    #[arg(long, env = "GW_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    #[arg(long, env = infra::KAFKA_BROKERS_ENV)]
    brokers: Option<String>,
    #[arg(long, env = infra::DATABASE_URL_ENV)]
    database_url: Option<String>,
    /// Defaults to the lookup described in `infra::config` (PAIRS_FILE, then config/pairs.toml).
    #[arg(long, env = infra::config::PAIRS_FILE_ENV)]
    pairs_file: Option<PathBuf>,
    #[arg(long, env = "GW_ORDERS_TOPIC", default_value = protocol::records::ORDERS_TOPIC)]
    orders_topic: String,
    #[arg(long, env = "GW_EVENTS_TOPIC", default_value = protocol::records::EVENTS_TOPIC)]
    events_topic: String,
    /// 0 to 63, unique among gateways sharing an `orders` topic.
    #[arg(long, env = "GW_GATEWAY_ID", default_value_t = 0)]
    gateway_id: u8,
    #[command(flatten)]
    limits: Limits,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::telemetry::init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Provision {
            accounts,
            out,
            name_prefix,
            database_url,
            fund,
            accounts_topic,
            brokers,
            pairs_file,
        }) => {
            // Checked before any account is created, so a bad flag leaves nothing behind.
            let funding = match fund {
                None => None,
                Some(spec) => {
                    let topic = accounts_topic
                        .context("--fund needs --accounts-topic or GW_ACCOUNTS_TOPIC")?;
                    let brokers = brokers.context("--fund needs --brokers or KAFKA_BROKERS")?;
                    let pairs = load_pairs(pairs_file)?;
                    let assets = accounts_core::AssetRegistry::from_pairs(&pairs);
                    let funding = gateway::provision::parse_funding(&spec, &assets)
                        .map_err(|e| anyhow::anyhow!("--fund: {e}"))?;
                    Some((topic, brokers, funding))
                }
            };
            provision(accounts, &out, &name_prefix, &database_url, funding).await
        }
        None => {
            let served = serve(cli.serve).await;
            let _ = tokio::task::spawn_blocking(infra::trace::shutdown).await;
            served
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let brokers = args
        .brokers
        .context("set --brokers or KAFKA_BROKERS (host:port[,host:port])")?;
    let database_url = args
        .database_url
        .context("set --database-url or DATABASE_URL")?;
    let pairs = load_pairs(args.pairs_file)?;
    let config = Config {
        listen: args.listen,
        brokers,
        database_url,
        pairs: Arc::new(pairs),
        orders_topic: args.orders_topic,
        events_topic: args.events_topic,
        gateway_id: args.gateway_id,
        limits: args.limits,
    };
    let shutdown = infra::shutdown::shutdown_token();
    // A SIGTERM while still connecting (a stuck database, say) exits instead of waiting.
    let gateway = tokio::select! {
        started = gateway::run(config, shutdown.clone()) => started?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    gateway.join().await?;
    Ok(())
}

fn load_pairs(file: Option<PathBuf>) -> anyhow::Result<protocol::PairRegistry> {
    let (pairs_path, pairs) = match file {
        Some(path) => {
            let registry = infra::config::load_pairs_from(&path)?;
            (path, registry)
        }
        None => infra::config::load_pairs()?,
    };
    tracing::info!(pairs = pairs.len(), path = %pairs_path.display(), "pair registry loaded");
    Ok(pairs)
}

async fn provision(
    accounts: usize,
    out: &std::path::Path,
    prefix: &str,
    database_url: &str,
    funding: Option<(String, String, Vec<gateway::provision::Funding>)>,
) -> anyhow::Result<()> {
    let pool = infra::db::connect(database_url, 2).await?;
    // The accounts topic is looked up before any account exists: no account without its funds.
    let funder = match funding {
        None => None,
        Some((topic, brokers, funding)) => {
            let consumer: rdkafka::consumer::StreamConsumer = infra::kafka::client_config(
                &brokers,
                "gateway-provision",
                infra::kafka::Role::Consumer,
            )
            .set("group.id", "gateway-provision")
            .create()?;
            let shards = gateway::accounts::partition_count(&Arc::new(consumer), &topic).await?;
            let producer: rdkafka::producer::FutureProducer = infra::kafka::client_config(
                &brokers,
                "gateway-provision",
                infra::kafka::Role::Producer,
            )
            .create()?;
            Some((producer, topic, shards, funding))
        }
    };
    let credentials = gateway::provision::provision(&pool, accounts, prefix)
        .await
        .context("inserting accounts and API keys")?;
    if let Some((producer, topic, shards, funding)) = &funder {
        let n = gateway::provision::fund(producer, topic, *shards, &credentials, funding)
            .await
            .context("writing the deposits to the accounts topic")?;
        tracing::info!(transfers = n, topic = %topic, "deposits written");
    }
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for c in &credentials {
        serde_json::to_writer(&mut w, c)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    tracing::info!(accounts = credentials.len(), out = %out.display(), "provisioned");
    Ok(())
}
