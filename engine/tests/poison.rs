//! Poison records: garbage bytes and a record for another pair become Rejected events with their
//! offset; the pair goes on, other pairs are unaffected. In a record that packs several commands,
//! a garbage line is rejected alone and the lines around it are applied.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use protocol::{EventBody, RejectReason, Side};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_records_are_rejected_and_the_pair_continues() {
    let Some(stack) = stack("poison") else { return };
    let world = World::new(stack, "poison").await;
    let wrong_pair = limit(2, "ETH-EUR", 902, 2, Side::Buy, 300_000, 100_000_000);
    world
        .produce_raw(
            0,
            &[
                limit(1, "BTC-EUR", 901, 1, Side::Sell, 5_000_000, 50_000_000).encode(),
                b"\xff\x00 not json".to_vec(),
                wrong_pair.encode(),
                b"{\"v\":1}".to_vec(),
                limit(3, "BTC-EUR", 903, 2, Side::Buy, 5_000_000, 50_000_000).encode(),
                [
                    limit(5, "BTC-EUR", 905, 4, Side::Sell, 6_000_000, 10_000_000).encode(),
                    b"garbage".to_vec(),
                    limit(6, "BTC-EUR", 906, 4, Side::Sell, 6_100_000, 10_000_000).encode(),
                ]
                .join(&b'\n'),
            ],
        )
        .await;
    world
        .produce(&[limit(4, "ETH-EUR", 904, 3, Side::Buy, 300_000, 100_000_000)])
        .await;

    let mut config = world.config();
    config.static_pairs = Some(vec!["BTC-EUR".into(), "ETH-EUR".into()]);
    let (stop, engine) = spawn_engine(config);
    world
        .wait_applied(&HashMap::from([(0, 5), (1, 0)]), Duration::from_secs(30))
        .await;
    let events = world.read_events(9, Duration::from_secs(30)).await;
    assert_eq!(events.len(), 9, "{events:#?}");
    let packed: Vec<_> = events.iter().filter(|r| r.orders_offset == 5).collect();
    let answers: Vec<_> = packed
        .iter()
        .map(|r| (r.command_id, r.events[0].body.clone()))
        .collect();
    assert!(
        matches!(
            answers.as_slice(),
            [
                (Some(5), EventBody::Accepted { .. }),
                (
                    None,
                    EventBody::Rejected {
                        reason: RejectReason::MalformedRecord,
                        ..
                    }
                ),
                (Some(6), EventBody::Accepted { .. }),
            ]
        ),
        "{answers:#?}"
    );
    let btc: HashMap<i64, _> = events
        .iter()
        .filter(|r| r.pair == "BTC-EUR" && r.orders_offset != 5)
        .map(|r| (r.orders_offset, r))
        .collect();
    let reason = |offset: i64| match &btc[&offset].events[0].body {
        EventBody::Rejected { reason, .. } => Some(*reason),
        _ => None,
    };
    assert_eq!(reason(1), Some(RejectReason::MalformedRecord));
    assert_eq!(btc[&1].command_id, None);
    assert_eq!(reason(2), Some(RejectReason::WrongPair));
    assert_eq!(btc[&2].command_id, Some(2));
    assert_eq!(reason(3), Some(RejectReason::MalformedRecord));
    // The pair went on: the buy after the poison traded with the sell before it.
    assert!(
        btc[&4]
            .events
            .iter()
            .any(|e| matches!(e.body, EventBody::Trade { .. }))
    );
    let eth: Vec<_> = events.iter().filter(|r| r.pair == "ETH-EUR").collect();
    assert!(matches!(eth[0].events[0].body, EventBody::Accepted { .. }));
    check_seqs(&events);
    // The wrong-pair order was not stored anywhere.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE order_id = 902")
        .fetch_one(&world.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    stop.cancel();
    engine.await.unwrap().unwrap();
    world.drop_schema().await;
}
