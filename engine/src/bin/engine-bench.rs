//! `engine-bench`: preloads N orders (the shared realistic workload, spread over every pair) into
//! fresh topics and a fresh PostgreSQL schema, then runs the engine in-process and measures how
//! fast it drains them, with persistence and publishing, per pair and in total.
//!
//! ```text
//! eval "$(scripts/stack env)"
//! cargo run --release -p engine --bin engine-bench -- --orders 400000
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use engine::workload::Workload;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

// The services allocate per message on many threads; mimalloc's thread-local heaps keep that
// off the profile, where glibc malloc showed up first.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Measure the engine's drain rate (commands/s) with persistence")]
struct Cli {
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: String,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Orders to preload, spread evenly over all pairs.
    #[arg(long, default_value_t = 200_000)]
    orders: usize,
    #[arg(long, default_value_t = 2000)]
    batch_max_records: usize,
    #[arg(long, default_value_t = 2)]
    batch_linger_ms: u64,
    /// Commands per `orders` record, as a gateway packs a pair's concurrent commands (1: one
    /// record per command, the engine's worst case).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pack: u64,
    /// Keep the bench schema and topics afterwards (for inspection).
    #[arg(long)]
    keep: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    infra::telemetry::init_tracing_with_default("warn");
    let (_, registry) = infra::config::load_pairs()?;
    let id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let orders_topic = format!("bench_orders_{id}");
    let events_topic = format!("bench_events_{id}");
    let schema = format!("bench_{id}");

    let admin = Arc::new(infra::kafka::admin_client(&cli.brokers)?);
    for topic in [&orders_topic, &events_topic] {
        infra::kafka::ensure_topic(&admin, &cli.brokers, topic, registry.len(), &[]).await?;
    }
    let root = infra::db::connect(&cli.database_url, 1).await?;
    // The schema name is built from digits above: safe to splice.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&root)
        .await?;
    let sep = if cli.database_url.contains('?') {
        '&'
    } else {
        '?'
    };
    let database_url = format!(
        "{}{sep}options=-c%20search_path%3D{schema}",
        cli.database_url
    );
    infra::db::migrate(&infra::db::connect(&database_url, 1).await?).await?;

    let per_pair = cli.orders / registry.len();
    let preload_started = Instant::now();
    let pack = cli.pack as usize;
    preload(&cli.brokers, &orders_topic, &registry, per_pair, pack).await?;
    let total = per_pair * registry.len();
    println!(
        "preloaded {total} orders ({per_pair} per pair, {} pairs, {pack} per record) in {:.1} s",
        registry.len(),
        preload_started.elapsed().as_secs_f64()
    );

    let mut config =
        engine::Config::new(cli.brokers.clone(), database_url.clone(), registry.clone());
    config.orders_topic = orders_topic.clone();
    config.events_topic = events_topic.clone();
    config.group_id = format!("bench_{id}");
    config.static_pairs = Some(registry.iter().map(|s| s.symbol.clone()).collect());
    config.batch_records_max = cli.batch_max_records;
    config.batch_linger = Duration::from_millis(cli.batch_linger_ms);
    let pool = infra::db::connect(&database_url, 2).await?;

    let shutdown = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let engine = tokio::spawn(engine::run(config, shutdown.clone()));
    let mut done_at: HashMap<i32, f64> = HashMap::new();
    let target = per_pair.div_ceil(pack) as i64 - 1;
    while done_at.len() < registry.len() {
        if started.elapsed() > Duration::from_secs(900) {
            bail!("engine did not drain within 15 minutes");
        }
        let rows: Vec<(i32, i64)> = sqlx::query_as("SELECT pair_id, last_offset FROM pair_offsets")
            .fetch_all(&pool)
            .await?;
        for (pair, offset) in rows {
            if offset >= target {
                done_at
                    .entry(pair)
                    .or_insert_with(|| started.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    shutdown.cancel();
    engine.await?.context("engine run")?;
    let trades: i64 = sqlx::query_scalar("SELECT count(*) FROM trades")
        .fetch_one(&pool)
        .await?;

    println!("drained {total} commands in {elapsed:.2} s (from engine start, recovery included)");
    println!(
        "total: {:.0} commands/s; trades stored: {trades}",
        total as f64 / elapsed
    );
    for spec in registry.iter() {
        let t = done_at[&(spec.id as i32)];
        println!(
            "  {:<8} {per_pair} commands drained at {t:.2} s: {:.0} commands/s",
            spec.symbol,
            per_pair as f64 / t
        );
    }
    if !cli.keep {
        pool.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&root)
            .await?;
    }
    Ok(())
}

async fn preload(
    brokers: &str,
    topic: &str,
    registry: &protocol::PairRegistry,
    per_pair: usize,
    pack: usize,
) -> Result<()> {
    let producer: FutureProducer =
        infra::kafka::client_config(brokers, "engine-bench", infra::kafka::Role::Producer)
            .create()?;
    let mut gens: Vec<(i32, String, Workload)> = registry
        .iter()
        .map(|s| (s.id as i32, s.symbol.clone(), Workload::new(s.clone(), 1)))
        .collect();
    let mut inflight = Vec::with_capacity(100_000);
    for first in (0..per_pair).step_by(pack) {
        for (partition, symbol, w) in &mut gens {
            let lines: Vec<Vec<u8>> = (first..(first + pack).min(per_pair))
                .map(|i| w.next_record(1_700_000_000_000_000_000 + i as u64).encode())
                .collect();
            let payload = lines.join(&b'\n');
            let mut record = FutureRecord::to(topic)
                .partition(*partition)
                .key(symbol.as_str())
                .payload(&payload);
            loop {
                match producer.send_result(record) {
                    Ok(f) => {
                        inflight.push(f);
                        break;
                    }
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                        r,
                    )) => {
                        record = r;
                        for f in inflight.drain(..) {
                            f.await?.map_err(|(e, _)| e)?;
                        }
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
    }
    for f in inflight {
        f.await?.map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}
