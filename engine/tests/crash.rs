//! Crash: SIGKILL the engine binary in the middle of a stream of thousands of orders, restart it,
//! and prove nothing was lost or applied twice, by comparing against a fresh in-memory replay of
//! every `orders` partition through engine-core.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use engine::workload::Workload;

const PAIRS: usize = 4;
const PER_PAIR: usize = 2500;

fn start_engine(world: &World, pairs: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["--pairs", pairs, "--metrics-addr", "127.0.0.1:0"])
        .args([
            "--orders-topic",
            &world.orders_topic,
            "--events-topic",
            &world.events_topic,
        ])
        .env("KAFKA_BROKERS", &world.stack.brokers)
        .env("DATABASE_URL", &world.database_url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the engine binary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let Some(stack) = stack("crash") else { return };
    let world = std::sync::Arc::new(World::new(stack, "crash").await);
    let specs: Vec<_> = world.registry.iter().take(PAIRS).cloned().collect();
    let pairs = specs
        .iter()
        .map(|s| s.symbol.clone())
        .collect::<Vec<_>>()
        .join(",");

    let mut engine = start_engine(&world, &pairs);
    // Stream the orders in slices while the engine runs.
    let producer_world = std::sync::Arc::clone(&world);
    let producer_specs = specs.clone();
    let streaming = tokio::spawn(async move {
        let producer = producer_world.producer();
        let mut gens: Vec<Workload> = producer_specs
            .iter()
            .map(|s| Workload::new(s.clone(), 42))
            .collect();
        for slice in 0..(PER_PAIR / 100) {
            for (spec, w) in producer_specs.iter().zip(gens.iter_mut()) {
                let payloads: Vec<Vec<u8>> = (0..100)
                    .map(|i| w.next_record((slice * 100 + i) as u64 + 1).encode())
                    .collect();
                producer_world
                    .produce_with(&producer, spec.id, &payloads)
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    // Kill it once it is clearly mid-stream.
    let started = Instant::now();
    loop {
        let applied: i64 = world.last_offsets().await.values().map(|o| o + 1).sum();
        if applied >= (PAIRS * PER_PAIR / 4) as i64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "engine made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.kill().expect("SIGKILL");
    engine.wait().expect("reaped");
    let at_kill: i64 = world.last_offsets().await.values().map(|o| o + 1).sum();
    streaming.await.expect("producer");
    assert!(
        at_kill < (PAIRS * PER_PAIR) as i64,
        "killed after the stream ended"
    );

    let mut engine = start_engine(&world, &pairs);
    let want: HashMap<u32, i64> = specs.iter().map(|s| (s.id, PER_PAIR as i64 - 1)).collect();
    world.wait_applied(&want, Duration::from_secs(120)).await;
    let status = Command::new("kill")
        .args(["-TERM", &engine.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = engine.wait().expect("engine exits");
    assert!(exit.success(), "SIGTERM drains and exits 0, got {exit:?}");

    verify_against_replay(&world, &specs, PER_PAIR).await;
    let per_pair: BTreeMap<_, _> = world.last_offsets().await.into_iter().collect();
    eprintln!("crash test: killed at {at_kill} applied records; final offsets {per_pair:?}");
}
