//! Rebalance: group mode, a second engine joins mid-stream; the pairs move between them and
//! every order is still applied exactly once.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use engine::workload::Workload;

const PAIRS: usize = 8;
const PER_PAIR: usize = 1500;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_engine_joining_mid_stream_changes_no_outcome() {
    infra::telemetry::init_tracing_with_default("warn");
    let Some(stack) = stack("rebalance") else {
        return;
    };
    let world = Arc::new(World::new(stack, "rebalance").await);
    let specs: Vec<_> = world.registry.iter().take(PAIRS).cloned().collect();

    let (stop_a, engine_a) = spawn_engine(world.config());
    let producer_world = Arc::clone(&world);
    let producer_specs = specs.clone();
    let streaming = tokio::spawn(async move {
        let producer = producer_world.producer();
        let mut gens: Vec<Workload> = producer_specs
            .iter()
            .map(|s| Workload::new(s.clone(), 9))
            .collect();
        for slice in 0..(PER_PAIR / 50) {
            for (spec, w) in producer_specs.iter().zip(gens.iter_mut()) {
                let payloads: Vec<Vec<u8>> = (0..50)
                    .map(|i| w.next_record((slice * 50 + i) as u64 + 1).encode())
                    .collect();
                producer_world
                    .produce_with(&producer, spec.id, &payloads)
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Join once engine A is clearly working.
    let started = Instant::now();
    while world
        .last_offsets()
        .await
        .values()
        .map(|o| o + 1)
        .sum::<i64>()
        < 1000
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "engine A made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (stop_b, engine_b) = spawn_engine(world.config());
    streaming.await.unwrap();
    let want = specs.iter().map(|s| (s.id, PER_PAIR as i64 - 1)).collect();
    world.wait_applied(&want, Duration::from_secs(120)).await;
    stop_b.cancel();
    stop_a.cancel();
    engine_b.await.unwrap().unwrap();
    engine_a.await.unwrap().unwrap();
    verify_against_replay(&world, &specs, PER_PAIR).await;
}

/// A brand-new group whose pairs already have a backlog: the first fetch can land before the
/// partition queues are split, and every pair must still apply its whole backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_group_applies_the_backlog_of_every_pair() {
    infra::telemetry::init_tracing_with_default("warn");
    let Some(stack) = stack("rebalance_backlog") else {
        return;
    };
    let world = World::new(stack, "backlog").await;
    let specs: Vec<_> = world.registry.iter().take(PAIRS).cloned().collect();
    let mut want = std::collections::HashMap::new();
    for spec in &specs {
        let mut w = Workload::new(spec.clone(), 5);
        let payloads: Vec<Vec<u8>> = (0..200).map(|i| w.next_record(i + 1).encode()).collect();
        world.produce_raw(spec.id, &payloads).await;
        want.insert(spec.id, 199);
    }
    let (stop, engine) = spawn_engine(world.config());
    world.wait_applied(&want, Duration::from_secs(30)).await;
    stop.cancel();
    engine.await.unwrap().unwrap();
    world.drop_schema().await;
}
