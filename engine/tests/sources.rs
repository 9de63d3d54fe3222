//! Forwarded commands: an account shard that restarts forwards the same commands again (same
//! source). The engine applies each source once per pair: a repeat gets no events and no answer,
//! whether it comes in the same batch, after a clean restart (the sources are recovered from
//! PostgreSQL) or while the engine applies its own uncommitted records again after a failed
//! commit (injected with `x-fault: commit`), which must decide every line as the first time.
//! Its own test binary: it serves metrics (one recorder per process) and injects faults.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::*;
use protocol::records::{EventRecord, OrderRecord};
use protocol::{EventBody, Side};

const PAIR: u32 = 0;
const PRICE: i64 = 5_000_000;
const QTY: i64 = 50_000_000;

/// A resting buy of `order_id` (account 1), forwarded by `shard` from `position`.
fn buy(order_id: u64, shard: u32, position: i64) -> OrderRecord {
    forwarded(
        limit(order_id, "BTC-EUR", order_id, 1, Side::Buy, PRICE, QTY),
        shard,
        position,
    )
}

fn line(r: &OrderRecord) -> (Vec<u8>, Option<&'static str>) {
    (r.encode(), None)
}

/// The answers on `events` by (orders offset, command id), each once (a republished answer
/// must equal the first).
fn answers(events: &[EventRecord]) -> HashMap<(i64, Option<u64>), &EventRecord> {
    let mut out = HashMap::new();
    for r in events {
        if let Some(prev) = out.insert((r.orders_offset, r.command_id), r) {
            assert_eq!(prev, r, "a republished answer differs from the first");
        }
    }
    out
}

async fn run_until(
    world: &World,
    last_offset: i64,
    metrics: Option<std::net::SocketAddr>,
) -> String {
    let mut config = world.config();
    config.static_pairs = Some(vec!["BTC-EUR".into()]);
    // One record per batch, so a failed commit holds several batches or few, as it happens.
    config.batch_records_max = 1;
    config.metrics_addr = metrics;
    let (stop, engine) = spawn_engine(config);
    world
        .wait_applied(
            &HashMap::from([(PAIR, last_offset)]),
            Duration::from_secs(60),
        )
        .await;
    let text = match metrics {
        Some(addr) => scrape(addr).await,
        None => String::new(),
    };
    stop.cancel();
    engine.await.unwrap().unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_command_is_applied_once_across_restarts() {
    infra::telemetry::init_tracing_with_default("error");
    let Some(stack) = stack("sources") else {
        return;
    };
    let world = World::new(stack, "sources").await;

    // First run. The failed commit at offset 2 makes the actor apply offsets 0.. again from
    // PostgreSQL's state: A and B must be applied again (not taken for repeats of themselves),
    // the repeats skipped again.
    let a = buy(1001, 0, 10);
    let b = buy(1002, 1, 5);
    world
        .produce_marked(
            PAIR,
            &[
                line(&a),                     // 0: A
                line(&a),                     // 1: A again: repeat
                (b.encode(), Some("commit")), // 2: B, its commit fails once
                line(&b),                     // 3: B again: repeat
                line(&buy(1009, 1, 4)),       // 4: an older source of shard 1: repeat
                line(&buy(1003, 0, 11)),      // 5: C
                // 6: one record, two lines: A again (repeat), then D.
                ([a.encode(), buy(1004, 0, 12).encode()].join(&b'\n'), None),
            ],
        )
        .await;
    run_until(&world, 6, None).await;

    // Second run, from PostgreSQL: the sources were committed with the offset. Its failed
    // commit at offset 8 replays from that recovered map.
    let e = buy(1005, 1, 6);
    let sell = limit(1006, "BTC-EUR", 1006, 3, Side::Sell, PRICE, QTY);
    world
        .produce_marked(
            PAIR,
            &[
                line(&a),                     // 7: A again, after a restart: repeat
                (e.encode(), Some("commit")), // 8: E, its commit fails once
                line(&e),                     // 9: E again: repeat
                line(&sell),                  // 10: no source: applied (trades with A)
                line(&buy(1007, 0, 13)),      // 11: F
                line(&buy(1003, 0, 11)),      // 12: C again: repeat
            ],
        )
        .await;
    let metrics = free_local_addr();
    let text = run_until(&world, 12, Some(metrics)).await;

    let events = world.read_all_events(7, Duration::from_secs(30)).await;
    let answered = answers(&events);
    let keys: BTreeSet<(i64, Option<u64>)> = answered.keys().copied().collect();
    let want: BTreeSet<(i64, Option<u64>)> = [
        (0, 1001),
        (2, 1002),
        (5, 1003),
        (6, 1004),
        (8, 1005),
        (10, 1006),
        (11, 1007),
    ]
    .into_iter()
    .map(|(o, c)| (o, Some(c)))
    .collect();
    assert_eq!(keys, want, "exactly the first of each source is answered");
    for ((offset, command), r) in &answered {
        assert!(
            matches!(r.events[0].body, EventBody::Accepted { .. }),
            "offset {offset} command {command:?}: {r:?}"
        );
    }
    assert!(
        events.len() > answered.len(),
        "the failed commits republished answers (the replay really happened)"
    );
    // Published answers equal a fresh replay of the log that skips repeats the same way.
    let spec = world.registry.get(PAIR).unwrap().clone();
    verify_against_replay(&world, &[spec], want.len()).await;

    let stored: Vec<i64> = sqlx::query_scalar("SELECT order_id FROM orders ORDER BY order_id")
        .fetch_all(&world.pool)
        .await
        .unwrap();
    assert_eq!(stored, vec![1001, 1002, 1003, 1004, 1005, 1006, 1007]);
    let sources: Vec<(i32, i32, i64)> =
        sqlx::query_as("SELECT pair_id, shard, last_offset FROM pair_sources ORDER BY shard")
            .fetch_all(&world.pool)
            .await
            .unwrap();
    assert_eq!(sources, vec![(0, 0, 13), (0, 1, 6)]);

    // Repeats are counted as such, never as poison. (The replay after the failed commit may
    // count its repeats a second time.)
    let repeated = sample(&text, "engine_repeated_commands_total", "BTC-EUR").unwrap_or(0.0);
    assert!(repeated >= 3.0, "{text}");
    assert_eq!(
        sample(&text, "engine_poison_records_total", "BTC-EUR"),
        Some(0.0)
    );
    world.drop_schema().await;
}
