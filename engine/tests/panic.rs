//! A panic inside one pair's actor (injected with the `x-fault: panic` header, test builds only)
//! restarts that pair from PostgreSQL; the process and the other pairs never notice, and every
//! order is still applied exactly once.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use engine::workload::Workload;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

const PAIRS: usize = 3;
const PER_PAIR: usize = 400;
/// The record of pair 0 that panics its actor the first time.
const FAULT_OFFSET: usize = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_in_one_actor_restarts_only_that_pair() {
    infra::telemetry::init_tracing_with_default("error");
    let Some(stack) = stack("panic") else {
        return;
    };
    let world = World::new(stack, "panic").await;
    let specs: Vec<_> = world.registry.iter().take(PAIRS).cloned().collect();
    let producer = world.producer();
    for spec in &specs {
        let mut w = Workload::new(spec.clone(), 11);
        let mut deliveries = Vec::new();
        for i in 0..PER_PAIR {
            let payload = w.next_record(i as u64 + 1).encode();
            let mut record = FutureRecord::to(&world.orders_topic)
                .partition(spec.id as i32)
                .key(spec.symbol.as_str())
                .payload(&payload);
            if spec.id == specs[0].id && i == FAULT_OFFSET {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: engine::fault::FAULT_HEADER,
                    value: Some("panic"),
                }));
            }
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        for d in deliveries {
            d.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }

    let metrics_addr = free_local_addr();
    let mut config = world.config();
    config.static_pairs = Some(specs.iter().map(|s| s.symbol.clone()).collect());
    config.metrics_addr = Some(metrics_addr);
    // Small batches, so the panicking batch is not the pair's first one.
    config.batch_records_max = 100;
    let (stop, engine) = spawn_engine(config);
    let want: HashMap<u32, i64> = specs.iter().map(|s| (s.id, PER_PAIR as i64 - 1)).collect();
    world.wait_applied(&want, Duration::from_secs(60)).await;

    let text = scrape(metrics_addr).await;
    let restarts = |pair: &str| sample(&text, "engine_actor_restarts_total", pair).unwrap_or(0.0);
    assert_eq!(restarts(&specs[0].symbol), 1.0, "{text}");
    for s in &specs[1..] {
        assert_eq!(restarts(&s.symbol), 0.0, "{}: {text}", s.symbol);
    }
    assert!(!engine.is_finished(), "the process survived the panic");
    stop.cancel();
    engine.await.unwrap().unwrap();
    verify_against_replay(&world, &specs, PER_PAIR).await;
    world.drop_schema().await;
}
