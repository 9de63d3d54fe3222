//! The fence: a batch applied on top of an offset that is no longer the pair's durable one (a
//! second owner committed first) must be refused whole, and change nothing in PostgreSQL (its
//! sources included).

mod common;

use std::collections::BTreeMap;

use engine::rows::{NewOrder, OrderRow, OrderStatus, RowChanges};
use engine::store::{self, BatchWrite, StoreError};
use protocol::{AccountId, OrderId, OrderType, Price, SelfTradePrevention, Side, TimeInForce};

async fn counts(world: &common::World) -> (i64, i64, i64, i64) {
    let one = |sql: &'static str| {
        let pool = world.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };
    (
        one("SELECT count(*) FROM orders").await,
        one("SELECT count(*) FROM trades").await,
        one("SELECT last_offset FROM pair_offsets WHERE pair_id = 0").await,
        one("SELECT count(*) FROM pair_sources").await,
    )
}

/// A GTC buy accepted in the batch and still resting at its end.
fn resting(order_id: u64, account: u64) -> OrderRow {
    OrderRow {
        order_id: OrderId(order_id),
        new: Some(NewOrder {
            account_id: AccountId(account),
            client_order_id: None,
            side: Side::Buy,
            order_type: OrderType::Limit,
            tif: TimeInForce::Gtc,
            post_only: false,
            stp: SelfTradePrevention::ExpireTaker,
            created_seq: 1,
        }),
        price: Some(Price(100_000)),
        qty: 1_000,
        filled_qty: 0,
        status: OrderStatus::Open,
        priority_seq: Some(1),
        updated_seq: 1,
        ts_ns: 1,
    }
}

fn batch<'a>(
    expected_offset: i64,
    rows: &'a RowChanges,
    sources: &'a BTreeMap<u32, i64>,
) -> BatchWrite<'a> {
    BatchWrite {
        pair_id: 0,
        expected_offset,
        last_offset: expected_offset + 1,
        last_seq: 2,
        last_trade_id: 0,
        events_offset: -1,
        rows,
        sources,
    }
}

/// A fresh world whose pair 0 committed one batch (offset 0): order 7 of account 1, resting.
async fn with_order_7(test: &str, tag: &str) -> Option<common::World> {
    let stack = common::stack(test)?;
    let world = common::World::new(stack, tag).await;
    let spec = world.registry.get(0).expect("pair 0").clone();
    store::ensure_pair(&world.pool, &spec)
        .await
        .expect("pair row");
    let rows = RowChanges {
        inserts: vec![resting(7, 1)],
        ..RowChanges::default()
    };
    let sources = BTreeMap::from([(0, 5)]);
    store::persist(&world.pool, &batch(-1, &rows, &sources))
        .await
        .expect("the first batch commits");
    Some(world)
}

#[tokio::test]
async fn a_batch_on_a_stale_offset_is_refused_whole() {
    let Some(world) = with_order_7("a_batch_on_a_stale_offset_is_refused_whole", "fence").await
    else {
        return;
    };
    let after_first = counts(&world).await;
    assert_eq!(after_first, (1, 0, 0, 1));

    // A second owner that applied its batch on top of the same old offset -1.
    let other = RowChanges {
        inserts: vec![resting(8, 2)],
        ..RowChanges::default()
    };
    let sources = BTreeMap::from([(1, 9)]);
    let refused = store::persist(&world.pool, &batch(-1, &other, &sources)).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Fenced {
                pair_id: 0,
                expected: -1
            })
        ),
        "{refused:?}"
    );
    assert_eq!(
        counts(&world).await,
        after_first,
        "a fenced batch wrote something"
    );
    world.drop_schema().await;
}

/// Order ids are unique by contract; a reused one must not stall the pair: the batch commits and
/// the newest order replaces the stored one.
#[tokio::test]
async fn a_reused_order_id_commits_with_the_newest_order() {
    let Some(world) =
        with_order_7("a_reused_order_id_commits_with_the_newest_order", "reuse").await
    else {
        return;
    };
    let again = RowChanges {
        inserts: vec![resting(7, 2), resting(8, 2)],
        ..RowChanges::default()
    };
    store::persist(&world.pool, &batch(0, &again, &BTreeMap::new()))
        .await
        .expect("a batch reusing an order id still commits");
    let owners: Vec<(i64, i64)> =
        sqlx::query_as("SELECT order_id, account_id FROM orders ORDER BY order_id")
            .fetch_all(&world.pool)
            .await
            .expect("orders");
    assert_eq!(owners, vec![(7, 2), (8, 2)]);
    assert_eq!(counts(&world).await, (2, 0, 1, 1));
    world.drop_schema().await;
}
