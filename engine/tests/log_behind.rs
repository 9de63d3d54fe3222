//! A log behind PostgreSQL: the `orders` topic recreated (or records lost to an unclean leader
//! election) while PostgreSQL keeps the offsets the pairs had applied. Reading on would take the
//! new log's first records for ones already applied and skip them, answering none: a silent
//! drop. The pair must stay stopped instead, and say why.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use engine::workload::Workload;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pair_whose_log_ends_before_postgresql_offset_stops_instead_of_skipping() {
    let Some(stack) = stack("log_behind") else {
        return;
    };
    let mut world = World::new(stack, "logbehind").await;
    let spec = world.registry.iter().next().unwrap().clone();
    let other = world.registry.iter().nth(1).unwrap().clone();
    let mut w = Workload::new(spec.clone(), 11);
    let records: Vec<_> = (0..40)
        .map(|i| w.next_record(1_700_000_000_000_000_000 + i))
        .collect();
    world.produce(&records).await;
    let (stop, engine) = spawn_engine(world.config());
    world
        .wait_applied(&HashMap::from([(spec.id, 39)]), Duration::from_secs(60))
        .await;
    stop.cancel();
    engine.await.unwrap().unwrap();

    // The topic is "recreated": a fresh one under the engine, PostgreSQL as it was. Ten new
    // commands for the pair (offsets 0..9, all at or below its stored offset 39) and ten for a
    // pair that never traded (nothing stored: it must simply run).
    let fresh = format!("{}_recreated", world.orders_topic);
    let admin = std::sync::Arc::new(infra::kafka::admin_client(&world.stack.brokers).unwrap());
    infra::kafka::ensure_topic(
        &admin,
        &world.stack.brokers,
        &fresh,
        world.registry.len(),
        &[],
    )
    .await
    .unwrap();
    world.orders_topic = fresh;
    let mut w = Workload::new(spec.clone(), 12);
    let mut o = Workload::new(other.clone(), 13);
    let mut again = Vec::new();
    for i in 0..10 {
        again.push(w.next_record(1_800_000_000_000_000_000 + i));
        again.push(o.next_record(1_800_000_000_000_000_000 + i));
    }
    world.produce(&again).await;

    let metrics_addr = free_local_addr();
    let mut config = world.config();
    config.metrics_addr = Some(metrics_addr);
    let (stop, engine) = spawn_engine(config);
    // The other pair runs and applies its ten.
    world
        .wait_applied(&HashMap::from([(other.id, 9)]), Duration::from_secs(60))
        .await;
    // The pair behind stays paused and keeps failing its start, rather than running on.
    let started = Instant::now();
    loop {
        let text = scrape(metrics_addr).await;
        if sample(&text, "engine_paused", &spec.symbol) == Some(1.0)
            && sample(&text, "engine_actor_restarts_total", &spec.symbol).unwrap_or(0.0) >= 2.0
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the pair behind its log did not stay stopped:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        world.last_offsets().await.get(&spec.id),
        Some(&39),
        "nothing of the new log was taken as applied"
    );
    let text = scrape(metrics_addr).await;
    assert_eq!(sample(&text, "engine_paused", &other.symbol), Some(0.0));
    stop.cancel();
    engine.await.unwrap().unwrap();
    world.drop_schema().await;
}
