//! `gateway`: serve the WebSocket API, `gateway provision` accounts and API keys, or
//! `gateway keys ...` to manage how API key secrets are stored.

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
    /// (`{"key_id", "secret", "account_id", "kind"}`) for the load generator. The file is the
    /// only copy of each secret: the database keeps an Ed25519 public key, or an HMAC secret
    /// sealed under GW_KEY_ENCRYPTION_KEY.
    Provision {
        #[arg(long, default_value_t = 1)]
        accounts: usize,
        /// `hmac` (needs GW_KEY_ENCRYPTION_KEY) or `ed25519`.
        #[arg(long, value_enum, default_value_t = gateway::keys::KeyKind::Hmac)]
        key_kind: gateway::keys::KeyKind,
        /// An Ed25519 public key the client generated (base64 of 32 bytes, or a PEM file's
        /// path): one account per `--public-key`, no private key ever made here. Implies
        /// `--key-kind ed25519`; `--accounts` is then ignored.
        #[arg(long)]
        public_key: Vec<String>,
        #[command(flatten)]
        encryption: gateway::keys::KeyEncryption,
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
    /// How API key secrets are stored (docs/DEPLOY.md, "API keys").
    Keys {
        #[command(subcommand)]
        command: KeysCmd,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Seal every HMAC secret still in clear under GW_KEY_ENCRYPTION_KEY and empty its clear
    /// column; re-seal those sealed under a previous key. Then VACUUM FULL the table so the
    /// old values leave its files. Safe to run again, and beside running gateways.
    EncryptExisting {
        #[arg(long, env = infra::DATABASE_URL_ENV)]
        database_url: String,
        #[command(flatten)]
        encryption: gateway::keys::KeyEncryption,
    },
    /// Print a new random key-encryption key (base64 of 32 bytes) for GW_KEY_ENCRYPTION_KEY.
    NewEncryptionKey,
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
            key_kind,
            public_key,
            encryption,
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
            let publics = public_key
                .iter()
                .map(|arg| read_public_key(arg))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let keys = match (key_kind, publics.is_empty()) {
                (_, false) => gateway::provision::NewKeys::Ed25519Public(&publics),
                (gateway::keys::KeyKind::Ed25519, true) => {
                    gateway::provision::NewKeys::Ed25519Generated
                }
                (gateway::keys::KeyKind::Hmac, true) => {
                    if encryption.current().is_none() {
                        anyhow::bail!(
                            "HMAC keys are stored sealed: set {} (base64 of 32 bytes; \
                             `gateway keys new-encryption-key` makes one), or use \
                             --key-kind ed25519",
                            gateway::keys::KEY_ENCRYPTION_KEY_ENV
                        );
                    }
                    gateway::provision::NewKeys::Hmac(&encryption)
                }
            };
            provision(accounts, &keys, &out, &name_prefix, &database_url, funding).await
        }
        Some(Cmd::Keys {
            command:
                KeysCmd::EncryptExisting {
                    database_url,
                    encryption,
                },
        }) => encrypt_existing(&database_url, &encryption).await,
        Some(Cmd::Keys {
            command: KeysCmd::NewEncryptionKey,
        }) => {
            println!("{}", gateway::keys::EncryptionKey::generate().to_base64());
            Ok(())
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

/// `--public-key`: the key itself, or the path of a file holding it (PEM, say).
fn read_public_key(arg: &str) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    let path = std::path::Path::new(arg);
    let text = if path.is_file() {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    } else {
        arg.to_owned()
    };
    gateway::keys::parse_public_key(&text).map_err(|e| anyhow::anyhow!("--public-key {arg}: {e}"))
}

async fn encrypt_existing(
    database_url: &str,
    encryption: &gateway::keys::KeyEncryption,
) -> anyhow::Result<()> {
    let current = encryption.current().with_context(|| {
        format!(
            "set {} to the key to seal with",
            gateway::keys::KEY_ENCRYPTION_KEY_ENV
        )
    })?;
    let pool = infra::db::connect(database_url, 1).await?;
    let done = gateway::provision::encrypt_existing(&pool, encryption).await?;
    tracing::info!(
        sealed = done.sealed,
        resealed = done.resealed,
        key_encryption_key_id = current.id(),
        "HMAC secrets sealed"
    );
    // An UPDATE leaves the old row versions (clear secrets) in the table's files until they
    // are vacuumed; VACUUM FULL rewrites the table without them.
    if let Err(err) = sqlx::query("VACUUM FULL api_keys").execute(&pool).await {
        tracing::warn!(error = %err, "VACUUM FULL api_keys failed: run it yourself, the old clear secrets are still in the table's files");
    }
    if done.clear_left > 0 {
        anyhow::bail!(
            "{} secret(s) are still in clear (added or locked while this ran): run it again",
            done.clear_left
        );
    }
    println!(
        "sealed {} clear secret(s), re-sealed {} under key {}; no secret is left in clear",
        done.sealed,
        done.resealed,
        current.id()
    );
    Ok(())
}

async fn provision(
    accounts: usize,
    keys: &gateway::provision::NewKeys<'_>,
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
    let credentials = gateway::provision::provision(&pool, accounts, prefix, keys)
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
