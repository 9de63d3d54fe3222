//! Injected faults (feature `fault-injection`): a workload with one faulty record, and a run
//! of the engine that expects exactly that pair to restart once.

use std::collections::HashMap;
use std::time::Duration;

use engine::workload::Workload;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use super::*;

/// Pairs each fault test uses, and records per pair.
pub const PAIRS: usize = 3;
pub const PER_PAIR: usize = 400;
/// The record of pair 0 that carries the fault.
pub const FAULT_OFFSET: usize = 250;

/// `PER_PAIR` records for each pair; pair 0's record at `FAULT_OFFSET` carries `x-fault: fault`.
pub async fn produce_with_fault(world: &World, specs: &[protocol::PairSpec], fault: &str) {
    let producer = world.producer();
    for spec in specs {
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
                    value: Some(fault),
                }));
            }
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        for d in deliveries {
            d.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }
}

/// Runs the engine over the pairs until every record is applied; returns its metrics text.
pub async fn run_to_the_end(world: &World, specs: &[protocol::PairSpec]) -> String {
    let metrics_addr = free_local_addr();
    let mut config = world.config();
    config.static_pairs = Some(specs.iter().map(|s| s.symbol.clone()).collect());
    config.metrics_addr = Some(metrics_addr);
    // Small batches, so the faulty batch is not the pair's first one.
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
    assert!(!engine.is_finished(), "the process survived the fault");
    stop.cancel();
    engine.await.unwrap().unwrap();
    text
}
