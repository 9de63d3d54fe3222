//! `stackctl`: prepares and checks the Kafka + PostgreSQL a deployment runs on.
//!
//! - `prepare`: topics `orders`/`events` with one partition per pair, then the migrations.
//! - `wait [kafka] [db]`: until a produce/fetch round trip and a `SELECT 1` succeed, bounded.
//! - `status`: partition counts and applied migrations.
//!
//! Used by `scripts/stack` and by the one-shot init service of docker-compose.yml.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use infra::kafka::{self, PROBE_TOPIC, TopicAction};
use infra::{config, db};
use protocol::records::{EVENTS_TOPIC, ORDERS_TOPIC};

#[derive(Parser)]
#[command(about = "Prepare and check the Kafka topics and PostgreSQL schema")]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BROKERS",
        global = true,
        default_value = "127.0.0.1:19092"
    )]
    brokers: String,
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        default_value = "postgres://trading:trading@127.0.0.1:15432/trading",
        hide_env_values = true
    )]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or grow the topics to match config/pairs.toml, then apply the migrations.
    Prepare,
    /// Wait until the services really work (Kafka round trip, SELECT 1).
    Wait {
        /// What to wait for (default: both).
        #[arg(value_enum)]
        targets: Vec<Target>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 90)]
        timeout_secs: u64,
    },
    /// Print topic partition counts and the applied migrations.
    Status,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Kafka,
    Db,
}

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("stackctl: error: {}", report(&err));
            // Do not wait for a metadata call still blocked on an unreachable broker.
            runtime.shutdown_background();
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: errors here already quote their source
/// in their own message.
fn report(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

async fn run() -> Result<()> {
    // librdkafka logs every refused connection while a broker starts; stackctl retries and
    // reports the outcome itself, so its logs stay quiet unless RUST_LOG asks.
    infra::telemetry::init_tracing_with_default("warn,rdkafka=off,librdkafka=off");
    let cli = Cli::parse();
    match cli.command {
        Command::Prepare => prepare(&cli.brokers, &cli.database_url).await,
        Command::Wait {
            mut targets,
            timeout_secs,
        } => {
            if targets.is_empty() {
                targets = vec![Target::Kafka, Target::Db];
            }
            let timeout = Duration::from_secs(timeout_secs);
            if targets.contains(&Target::Kafka) {
                wait_kafka(&cli.brokers, timeout).await?;
            }
            if targets.contains(&Target::Db) {
                wait_db(&cli.database_url, timeout).await?;
            }
            Ok(())
        }
        Command::Status => status(&cli.brokers, &cli.database_url).await,
    }
}

async fn prepare(brokers: &str, database_url: &str) -> Result<()> {
    let (pairs_path, registry) = config::load_pairs()?;
    println!("pairs: {} from {}", registry.len(), pairs_path.display());
    let mut reports = kafka::ensure_topics(brokers, &registry)
        .await
        .with_context(|| format!("preparing topics on Kafka at {brokers}"))?;
    let shards = match std::env::var("ACCOUNT_SHARDS") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("ACCOUNT_SHARDS={v:?} is not a positive count"))?,
        Err(_) => kafka::ACCOUNT_SHARDS_DEFAULT,
    };
    reports.extend(
        kafka::ensure_account_topics(brokers, shards)
            .await
            .with_context(|| format!("preparing the account topics on Kafka at {brokers}"))?,
    );
    for report in reports {
        let what = match report.action {
            TopicAction::Created => "created".to_owned(),
            TopicAction::Increased { from } => format!("increased from {from}"),
            TopicAction::Unchanged => "unchanged".to_owned(),
        };
        println!(
            "topic {}: {} partitions ({what})",
            report.topic, report.partitions
        );
    }
    let pool = db::connect(database_url, 2).await?;
    db::migrate(&pool)
        .await
        .with_context(|| format!("migrating {}", db::redact(database_url)))?;
    let applied = applied_migrations(&pool).await?;
    println!("migrations applied: {}", applied.join(", "));
    pool.close().await;
    Ok(())
}

async fn wait_kafka(brokers: &str, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let last_error = loop {
        let attempt_timeout = Duration::from_secs(10).min(timeout);
        let attempt = async {
            kafka::ensure_probe_topic(brokers).await?;
            kafka::round_trip(brokers, PROBE_TOPIC, 0, attempt_timeout).await
        };
        let error = match tokio::time::timeout(attempt_timeout, attempt).await {
            Ok(Ok(trip)) => {
                println!(
                    "kafka ready at {brokers}: round trip on {PROBE_TOPIC}[0] offset {} in {} ms",
                    trip.offset,
                    trip.elapsed.as_millis()
                );
                return Ok(());
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!(
                "no answer within {} s (is a Kafka broker listening at {brokers}?)",
                attempt_timeout.as_secs()
            ),
        };
        if started.elapsed() + Duration::from_secs(1) >= timeout {
            break error;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    bail!(
        "Kafka at {brokers} not ready after {} s: {last_error}",
        started.elapsed().as_secs()
    )
}

async fn wait_db(database_url: &str, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let last_error = loop {
        let attempt = async {
            let pool = db::connect(database_url, 1).await?;
            db::ping(&pool).await?;
            pool.close().await;
            Ok::<_, db::DbError>(())
        };
        let error = match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(())) => {
                println!(
                    "postgres ready at {}: SELECT 1 ok",
                    db::redact(database_url)
                );
                return Ok(());
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => "no answer within 10 s".to_owned(),
        };
        if started.elapsed() + Duration::from_millis(500) >= timeout {
            break error;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bail!(
        "PostgreSQL not ready after {} s: {last_error}",
        started.elapsed().as_secs()
    )
}

async fn status(brokers: &str, database_url: &str) -> Result<()> {
    let (_, registry) = config::load_pairs()?;
    let mut ok = true;
    match kafka::topic_partitions(brokers, &[ORDERS_TOPIC, EVENTS_TOPIC]).await {
        Ok(topics) => {
            for (topic, partitions) in topics {
                let verdict = match partitions {
                    Some(n) if n == registry.len() => "ok".to_owned(),
                    Some(_) => {
                        ok = false;
                        format!("MISMATCH: the pairs file lists {}", registry.len())
                    }
                    None => {
                        ok = false;
                        "MISSING: run scripts/stack up".to_owned()
                    }
                };
                let count = partitions.map_or("-".to_owned(), |n| n.to_string());
                println!("topic {topic}: {count} partitions ({verdict})");
            }
        }
        Err(err) => {
            ok = false;
            println!("kafka at {brokers}: {err}");
        }
    }
    use protocol::accounts::{ACCOUNT_EVENTS_TOPIC, ACCOUNTS_TOPIC};
    if let Ok(topics) =
        kafka::topic_partitions(brokers, &[ACCOUNTS_TOPIC, ACCOUNT_EVENTS_TOPIC]).await
    {
        let counts: Vec<Option<usize>> = topics.iter().map(|(_, n)| *n).collect();
        for (topic, partitions) in topics {
            let verdict = match partitions {
                None => {
                    ok = false;
                    "MISSING: run scripts/stack up".to_owned()
                }
                Some(_) if counts.iter().any(|c| *c != partitions) => {
                    ok = false;
                    "MISMATCH: both account topics need one partition per shard".to_owned()
                }
                Some(_) => "ok, one per account shard".to_owned(),
            };
            let count = partitions.map_or("-".to_owned(), |n| n.to_string());
            println!("topic {topic}: {count} partitions ({verdict})");
        }
    }
    match db::connect(database_url, 1).await {
        Ok(pool) => {
            let applied = applied_migrations(&pool).await.unwrap_or_default();
            println!("migrations applied: {}", display_list(&applied));
            pool.close().await;
        }
        Err(err) => {
            ok = false;
            println!("postgres: {err}");
        }
    }
    if !ok {
        bail!("the stack is not fully prepared");
    }
    Ok(())
}

async fn applied_migrations(pool: &sqlx::PgPool) -> Result<Vec<String>> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT version, description FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(pool)
    .await
    .context("reading _sqlx_migrations")?;
    Ok(rows
        .into_iter()
        .map(|(version, description)| format!("{version:04} {description}"))
        .collect())
}

fn display_list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}
