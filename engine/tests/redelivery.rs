//! Re-delivery: a second run whose Kafka group has no committed offsets (so Kafka would start
//! from the earliest record) changes nothing in PostgreSQL: the engine positions every pair from
//! its own stored offset and skips anything at or below it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use engine::workload::Workload;

async fn snapshot(world: &World) -> Vec<(String, i64, String)> {
    let mut out = Vec::new();
    for (table, query) in [
        (
            "orders",
            "SELECT count(*), md5(coalesce(string_agg(o::text, ',' ORDER BY order_id), '')) FROM orders o",
        ),
        (
            "trades",
            "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY pair_id, trade_id), '')) FROM trades t",
        ),
        (
            "pair_offsets",
            "SELECT count(*), md5(coalesce(string_agg(concat_ws(':', pair_id, last_offset, last_seq, last_trade_id), ',' ORDER BY pair_id), '')) FROM pair_offsets",
        ),
    ] {
        let (n, sum): (i64, String) = sqlx::query_as(query).fetch_one(&world.pool).await.unwrap();
        out.push((table.to_owned(), n, sum));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consuming_again_from_the_earliest_offset_changes_nothing() {
    let Some(stack) = stack("redelivery") else {
        return;
    };
    let world = World::new(stack, "redeliver").await;
    let mut records = Vec::new();
    let mut want = HashMap::new();
    for spec in world.registry.iter().take(3) {
        let mut w = Workload::new(spec.clone(), 7);
        for i in 0..300 {
            records.push(w.next_record(1_700_000_000_000_000_000 + i));
        }
        want.insert(spec.id, 299);
    }
    world.produce(&records).await;

    // First run: a fresh consumer group with a backlog waiting (the fetch must not beat the
    // split of the partition queues).
    let first = world.config();
    let (stop, engine) = spawn_engine(first);
    world.wait_applied(&want, Duration::from_secs(60)).await;
    stop.cancel();
    engine.await.unwrap().unwrap();
    let before = snapshot(&world).await;
    let trades = before.iter().find(|(t, _, _)| t == "trades").unwrap().1;
    assert!(trades > 0, "the workload trades");
    let events_before = world.read_events(900, Duration::from_secs(30)).await.len();
    assert_eq!(events_before, 900);

    // Second run, another fresh group (Kafka would start at offset 0), and static mode too.
    for static_mode in [false, true] {
        let mut config = world.config();
        config.group_id = format!("{}_again_{static_mode}", config.group_id);
        if static_mode {
            config.static_pairs = Some(
                world
                    .registry
                    .iter()
                    .take(3)
                    .map(|s| s.symbol.clone())
                    .collect(),
            );
        }
        let (stop, engine) = spawn_engine(config);
        tokio::time::sleep(Duration::from_secs(4)).await;
        stop.cancel();
        engine.await.unwrap().unwrap();
        assert_eq!(snapshot(&world).await, before, "static mode: {static_mode}");
    }
    // No event was published twice either.
    let events_after = world.read_events(901, Duration::from_secs(5)).await.len();
    assert_eq!(events_after, 900);
    world.drop_schema().await;
}
