//! Crash: SIGKILL the engine binary in the middle of a stream of thousands of orders, restart it,
//! and prove nothing was lost or applied twice, by comparing against a fresh in-memory replay of
//! every `orders` partition through engine-core.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use engine::record::apply_record;
use engine::workload::Workload;
use engine_core::OrderBook;
use protocol::records::EventRecord;
use protocol::{Event, EventBody};

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

    let events = world
        .read_all_events(PAIRS * PER_PAIR, Duration::from_secs(60))
        .await;
    // Dedupe by (pair, offset); a duplicate must be the same answer.
    let mut answers: HashMap<(String, i64), &EventRecord> = HashMap::new();
    for r in &events {
        if let Some(prev) = answers.insert((r.pair.clone(), r.orders_offset), r) {
            assert_eq!(prev, r, "a republished answer differs from the first");
        }
    }
    for spec in &specs {
        let mut book = OrderBook::new(spec.clone());
        let mut replay_trades = Vec::new();
        let mut next_seq = 1;
        for raw in world.read_orders(spec.id).await {
            let mut out: Vec<Event> = Vec::new();
            apply_record(
                &mut book,
                raw.payload.as_deref(),
                raw.probe,
                raw.ts_ns,
                &mut out,
            );
            if raw.probe {
                continue;
            }
            let got = answers
                .get(&(spec.symbol.clone(), raw.offset))
                .unwrap_or_else(|| panic!("{} offset {} unanswered", spec.symbol, raw.offset));
            assert_eq!(
                got.events, out,
                "{} offset {}: published != replay",
                spec.symbol, raw.offset
            );
            for e in &out {
                assert_eq!(e.seq, next_seq, "{}: seq gap or repeat", spec.symbol);
                next_seq += 1;
                if let EventBody::Trade {
                    trade_id,
                    price,
                    qty,
                    maker_order_id,
                    taker_order_id,
                    ..
                } = &e.body
                {
                    replay_trades.push((
                        *trade_id as i64,
                        price.0,
                        qty.0,
                        maker_order_id.0 as i64,
                        taker_order_id.0 as i64,
                    ));
                }
            }
        }
        let stored: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT trade_id, price, qty, maker_order_id, taker_order_id FROM trades \
             WHERE pair_id = $1 ORDER BY trade_id",
        )
        .bind(spec.id as i32)
        .fetch_all(&world.pool)
        .await
        .unwrap();
        assert!(!replay_trades.is_empty());
        assert_eq!(
            stored, replay_trades,
            "{}: trades in PostgreSQL != replay",
            spec.symbol
        );

        // The stored book equals the replayed one.
        let mut replay_open: Vec<(i64, i64, i64, i64)> = book
            .open_orders()
            .map(|o| (o.order_id.0 as i64, o.price.0, o.qty.0, o.filled_qty.0))
            .collect();
        replay_open.sort_unstable();
        let stored_open: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT order_id, price, qty, filled_qty FROM orders \
             WHERE pair_id = $1 AND status = 'open' ORDER BY order_id",
        )
        .bind(spec.id as i32)
        .fetch_all(&world.pool)
        .await
        .unwrap();
        assert_eq!(
            stored_open, replay_open,
            "{}: open orders != replay",
            spec.symbol
        );

        // Every order's filled quantity is exactly its trades', on both sides.
        let mismatched: i64 = sqlx::query_scalar(
            "WITH fills AS ( \
               SELECT maker_order_id AS id, qty FROM trades WHERE pair_id = $1 \
               UNION ALL SELECT taker_order_id, qty FROM trades WHERE pair_id = $1) \
             SELECT count(*) FROM orders o \
             LEFT JOIN (SELECT id, sum(qty) AS filled FROM fills GROUP BY id) f ON f.id = o.order_id \
             WHERE o.pair_id = $1 AND (o.filled_qty <> coalesce(f.filled, 0) OR o.filled_qty > o.qty \
               OR (o.status = 'filled') <> (o.filled_qty = o.qty))",
        )
        .bind(spec.id as i32)
        .fetch_one(&world.pool)
        .await
        .unwrap();
        assert_eq!(
            mismatched, 0,
            "{}: orders whose fills do not add up",
            spec.symbol
        );
    }
    let per_pair: BTreeMap<_, _> = world.last_offsets().await.into_iter().collect();
    eprintln!("crash test: killed at {at_kill} applied records; final offsets {per_pair:?}");
}
