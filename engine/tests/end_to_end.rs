//! End to end: orders for several pairs in, events out, rows in PostgreSQL.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use protocol::records::{OrderRecord, RECORD_VERSION};
use protocol::{AccountId, CancelOrder, Command, EventBody, OrderId, OrderRef, Side};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_for_several_pairs_become_events_and_rows() {
    let Some(stack) = stack("end_to_end") else {
        return;
    };
    let world = World::new(stack, "e2e").await;
    // BTC-EUR: 2 decimals price, 8 qty. Account 1 sells 0.5 @ 50000.00, account 2 buys 0.2.
    // ETH-EUR: account 3 bids 1 ETH @ 3000.00 and cancels it.
    let records = vec![
        limit(1, "BTC-EUR", 101, 1, Side::Sell, 5_000_000, 50_000_000),
        limit(2, "BTC-EUR", 102, 2, Side::Buy, 5_000_000, 20_000_000),
        limit(3, "ETH-EUR", 201, 3, Side::Buy, 300_000, 100_000_000),
        OrderRecord {
            v: RECORD_VERSION,
            command_id: 4,
            pair: "ETH-EUR".into(),
            ts_ns: 1_700_000_000_000_000_004,
            src: None,
            tp: None,
            command: Command::Cancel(CancelOrder {
                account_id: AccountId(3),
                target: OrderRef::Id(OrderId(201)),
            }),
        },
    ];
    world.produce(&records).await;

    let mut config = world.config();
    config.static_pairs = Some(world.registry.iter().map(|p| p.symbol.clone()).collect());
    let (stop, engine) = spawn_engine(config);
    world
        .wait_applied(&HashMap::from([(0, 1), (1, 1)]), Duration::from_secs(30))
        .await;

    let events = world.read_events(4, Duration::from_secs(30)).await;
    assert_eq!(
        events.len(),
        4,
        "one EventRecord per orders record: {events:#?}"
    );
    let by_command: HashMap<u64, _> = events.iter().map(|r| (r.command_id.unwrap(), r)).collect();
    let trade = by_command[&2]
        .events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::Trade { .. } => Some(e.body.clone()),
            _ => None,
        })
        .expect("the buy traded");
    assert!(matches!(
        trade,
        EventBody::Trade {
            maker_account_id: AccountId(1),
            taker_account_id: AccountId(2),
            ..
        }
    ));
    let seqs = check_seqs(&events);
    assert!(seqs["BTC-EUR"] >= 4 && seqs["ETH-EUR"] >= 3, "{seqs:?}");
    assert_eq!(by_command[&1].orders_offset, 0);
    assert_eq!(by_command[&2].orders_offset, 1);

    let (price, qty, maker, taker, maker_acc, taker_acc): (i64, i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT price, qty, maker_order_id, taker_order_id, maker_account_id, taker_account_id \
             FROM trades WHERE pair_id = 0",
        )
        .fetch_one(&world.pool)
        .await
        .unwrap();
    assert_eq!(
        (price, qty, maker, taker, maker_acc, taker_acc),
        (5_000_000, 20_000_000, 101, 102, 1, 2)
    );
    let orders: Vec<(i64, String, i64, i64)> =
        sqlx::query_as("SELECT order_id, status, qty, filled_qty FROM orders ORDER BY order_id")
            .fetch_all(&world.pool)
            .await
            .unwrap();
    assert_eq!(
        orders,
        vec![
            (101, "open".into(), 50_000_000, 20_000_000),
            (102, "filled".into(), 20_000_000, 20_000_000),
            (201, "cancelled".into(), 100_000_000, 0),
        ]
    );

    stop.cancel();
    engine.await.unwrap().expect("engine drains and returns Ok");
    // Drained: everything published is committed, and each pair's row names its last events
    // record, where a reader that took the book from PostgreSQL continues.
    for pair in [0u32, 1] {
        let events_offset: i64 =
            sqlx::query_scalar("SELECT events_offset FROM pair_offsets WHERE pair_id = $1")
                .bind(pair as i32)
                .fetch_one(&world.pool)
                .await
                .unwrap();
        assert_eq!(
            events_offset,
            world.events_high(pair).await - 1,
            "pair {pair}"
        );
    }
    world.drop_schema().await;
}
