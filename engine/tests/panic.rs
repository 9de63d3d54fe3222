//! A panic inside one pair's actor (injected with the `x-fault: panic` header, test builds only)
//! restarts that pair from PostgreSQL; the process and the other pairs never notice, and every
//! order is still applied exactly once.

mod common;

use common::faults::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_in_one_actor_restarts_only_that_pair() {
    infra::telemetry::init_tracing_with_default("error");
    let Some(stack) = stack("panic") else {
        return;
    };
    let world = World::new(stack, "panic").await;
    let specs: Vec<_> = world.registry.iter().take(PAIRS).cloned().collect();
    produce_with_fault(&world, &specs, "panic").await;
    run_to_the_end(&world, &specs).await;
    verify_against_replay(&world, &specs, PER_PAIR).await;
    world.drop_schema().await;
}
