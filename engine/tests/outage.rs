//! PostgreSQL outage: the database vanishes mid-stream (through a Toxiproxy proxy the test cuts).
//! The engine keeps running, pauses its pairs, advances no offset, and recovers by itself when
//! the database returns; every order is still applied exactly once. Needs `TOXIPROXY_BIN`
//! (`export TOXIPROXY_BIN=$(scripts/stack toxiproxy)`).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::proxy::{Toxiproxy, upstream, via};
use common::*;
use engine::workload::Workload;
use serde_json::json;

const PAIRS: usize = 2;
const PER_PHASE: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_engine_waits_out_a_postgres_outage_and_resumes_exactly_once() {
    infra::telemetry::init_tracing_with_default("error");
    let Some(stack) = stack("outage") else {
        return;
    };
    let Some(toxiproxy) = Toxiproxy::start("outage").await else {
        return;
    };
    let world = World::new(stack, "outage").await;
    let specs: Vec<_> = world.registry.iter().take(PAIRS).cloned().collect();
    let mut gens: Vec<Workload> = specs.iter().map(|s| Workload::new(s.clone(), 3)).collect();
    let mut phase = |n: usize| -> Vec<(u32, Vec<Vec<u8>>)> {
        specs
            .iter()
            .zip(gens.iter_mut())
            .map(|(s, w)| {
                let payloads = (0..PER_PHASE)
                    .map(|i| w.next_record((n * PER_PHASE + i) as u64 + 1).encode())
                    .collect();
                (s.id, payloads)
            })
            .collect()
    };

    let proxy = toxiproxy
        .proxy("postgres", &upstream(&world.database_url))
        .await;
    let metrics_addr = free_local_addr();
    let mut config = world.config();
    config.database_url = via(&world.database_url, proxy.addr);
    config.static_pairs = Some(specs.iter().map(|s| s.symbol.clone()).collect());
    config.restart_backoff_max = Duration::from_millis(500);
    config.metrics_addr = Some(metrics_addr);
    let (stop, engine) = spawn_engine(config);

    // A slow database (20 ms each way) changes nothing but the pace.
    proxy
        .add_toxic("slow", "latency", "downstream", json!({"latency": 20}))
        .await;
    for (id, payloads) in phase(0) {
        world.produce_raw(id, &payloads).await;
    }
    let first: HashMap<u32, i64> = specs.iter().map(|s| (s.id, PER_PHASE as i64 - 1)).collect();
    world.wait_applied(&first, Duration::from_secs(60)).await;
    proxy.remove_toxic("slow").await;

    // PostgreSQL goes away; orders keep arriving.
    proxy.cut().await;
    for (id, payloads) in phase(1) {
        world.produce_raw(id, &payloads).await;
    }
    // Every pair notices (its next batch cannot commit) and holds its partition.
    let started = Instant::now();
    loop {
        let text = scrape(metrics_addr).await;
        let held = specs.iter().all(|s| {
            sample(&text, "engine_paused", &s.symbol) == Some(1.0)
                && sample(&text, "engine_actor_restarts_total", &s.symbol).unwrap_or(0.0) >= 1.0
        });
        if held {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "pairs did not pause during the outage:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        world.last_offsets().await,
        first,
        "no offset advances while PostgreSQL is down"
    );
    assert!(!engine.is_finished(), "the engine process stays up");

    // PostgreSQL returns: the engine resumes by itself.
    proxy.restore().await;
    let all: HashMap<u32, i64> = specs
        .iter()
        .map(|s| (s.id, 2 * PER_PHASE as i64 - 1))
        .collect();
    world.wait_applied(&all, Duration::from_secs(60)).await;
    let text = scrape(metrics_addr).await;
    for s in &specs {
        assert_eq!(sample(&text, "engine_paused", &s.symbol), Some(0.0));
    }
    stop.cancel();
    engine.await.unwrap().unwrap();
    verify_against_replay(&world, &specs, 2 * PER_PHASE).await;
    world.drop_schema().await;
}
