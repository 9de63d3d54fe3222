//! A commit that fails after its batch's events were published (injected with the
//! `x-fault: commit` header, test builds only). Its own test binary: the engine installs the
//! process-wide metrics recorder, so one engine with metrics per process.

mod common;

use std::time::Duration;

use common::faults::*;
use common::*;

/// Events go out before their batch commits. When the commit fails, the restart applies the
/// same records to the same book and publishes the same events again: the topic then holds the
/// faulty batch's answers twice, identical (`verify_against_replay` requires a duplicate to
/// equal the first), and PostgreSQL holds them once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_commit_after_publishing_republishes_the_same_events() {
    infra::telemetry::init_tracing_with_default("error");
    let Some(stack) = stack("commit_fault") else {
        return;
    };
    let world = World::new(stack, "commit_fault").await;
    let specs: Vec<_> = world.registry.iter().take(PAIRS).cloned().collect();
    produce_with_fault(&world, &specs, "commit").await;
    run_to_the_end(&world, &specs).await;
    let events = world
        .read_all_events(specs.len() * PER_PAIR, Duration::from_secs(60))
        .await;
    let answers_to_fault = events
        .iter()
        .filter(|r| r.pair == specs[0].symbol && r.orders_offset == FAULT_OFFSET as i64)
        .count();
    assert_eq!(
        answers_to_fault, 2,
        "the faulty batch's events were published, then published again after the restart"
    );
    verify_against_replay(&world, &specs, PER_PAIR).await;
    world.drop_schema().await;
}
