//! The ledger as stored: one `ledger_batches` row per commit, read back line by line through
//! the `ledger_lines` view and change by change through the `ledger` view
//! (infra/migrations/0008_ledger_lines.sql, 0011_ledger_batches.sql), against the real
//! PostgreSQL. Skipped without the stack (`eval "$(scripts/stack env)"`).

mod common;

use accounts::shard::LedgerRow;
use accounts::store::{self, Rows};
use accounts_core::{AssetRegistry, Balance, Cause, LedgerEvent, Liquidity, ReleaseReason};
use protocol::accounts::position;
use protocol::{AccountId, OrderId};
use sqlx::Row;

use common::World;

const SHARD: u32 = 1;

fn change(
    assets: &AssetRegistry,
    account: u64,
    asset: &str,
    cause: Cause,
    deltas: (i128, i128),
    after: (i128, i128),
) -> LedgerEvent {
    LedgerEvent {
        cause,
        account_id: AccountId(account),
        asset_id: assets.by_symbol(asset).expect("asset").id,
        available_delta_units: deltas.0,
        reserved_delta_units: deltas.1,
        balance: Balance {
            available_units: after.0,
            reserved_units: after.1,
        },
    }
}

/// Each line's changes as LedgerRows: `idx` from 0 within the line, lines in position order.
fn rows(lines: &[(i64, Vec<LedgerEvent>)]) -> Vec<LedgerRow> {
    lines
        .iter()
        .flat_map(|(pos, events)| {
            events.iter().enumerate().map(|(i, e)| LedgerRow {
                position: *pos,
                idx: i as u32,
                event: *e,
            })
        })
        .collect()
}

fn cause_name(cause: &Cause) -> &'static str {
    match cause {
        Cause::Deposit { .. } => "deposit",
        Cause::Withdrawal { .. } => "withdrawal",
        Cause::Reserve { .. } => "reserve",
        Cause::Amend { .. } => "amend",
        Cause::Fill { .. } => "fill",
        Cause::Fee { .. } => "fee",
        Cause::Release { .. } => "release",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_writes_one_row_and_the_views_give_back_every_line_and_change_in_order() {
    let Some(world) = World::new("ledger_lines").await else {
        return;
    };
    let assets = AssetRegistry::from_pairs(&world.registry);
    let a = &assets;
    // Above 2^64 and 2^100: amounts are i128 in the service and numeric(39,0) in the view.
    let big: i128 = (1 << 100) + 7;
    let deposit_line = position(10, 0);
    let place_line = position(11, 0);
    let refused_line = position(11, 1); // a line that changed nothing: no row
    let settle_line = position(12, 3);
    let release_line = position(13, 0);
    let lines = vec![
        (
            deposit_line,
            vec![change(
                a,
                7,
                "EUR",
                Cause::Deposit { transfer_id: 9 },
                (100, 0),
                (100, 0),
            )],
        ),
        (
            place_line,
            vec![
                change(
                    a,
                    7,
                    "EUR",
                    Cause::Reserve {
                        order_id: OrderId(42),
                    },
                    (-60, 60),
                    (40, 60),
                ),
                change(
                    a,
                    7,
                    "EUR",
                    Cause::Amend {
                        order_id: OrderId(42),
                    },
                    (-30, 30),
                    (10, 90),
                ),
                change(
                    a,
                    8,
                    "BTC",
                    Cause::Withdrawal {
                        transfer_id: u64::MAX,
                    },
                    (-big, 0),
                    (big, 0),
                ),
            ],
        ),
        (
            settle_line,
            vec![
                change(
                    a,
                    7,
                    "EUR",
                    Cause::Fill {
                        pair_id: 3,
                        trade_id: 1 << 40,
                        order_id: OrderId(42),
                        liquidity: Liquidity::Maker,
                    },
                    (5, -90),
                    (15, 0),
                ),
                change(
                    a,
                    7,
                    "BTC",
                    Cause::Fill {
                        pair_id: 3,
                        trade_id: 1 << 40,
                        order_id: OrderId(42),
                        liquidity: Liquidity::Maker,
                    },
                    (big, 0),
                    (big, 0),
                ),
                change(
                    a,
                    0,
                    "BTC",
                    Cause::Fee {
                        pair_id: 3,
                        trade_id: 1 << 40,
                        order_id: OrderId(42),
                        liquidity: Liquidity::Maker,
                    },
                    (3, 0),
                    (i128::MAX / 2, big),
                ),
                change(
                    a,
                    8,
                    "EUR",
                    Cause::Fill {
                        pair_id: 3,
                        trade_id: 1 << 40,
                        order_id: OrderId(43),
                        liquidity: Liquidity::Taker,
                    },
                    (85, 0),
                    (85, 0),
                ),
            ],
        ),
        (
            release_line,
            vec![
                change(
                    a,
                    8,
                    "BTC",
                    Cause::Release {
                        order_id: OrderId(43),
                        reason: ReleaseReason::ExpiredStp,
                    },
                    (2, -2),
                    (big + 2, 0),
                ),
                change(
                    a,
                    9,
                    "XRP",
                    Cause::Release {
                        order_id: OrderId(44),
                        reason: ReleaseReason::Rejected,
                    },
                    (1, -1),
                    (1, 0),
                ),
            ],
        ),
    ];
    let want = rows(&lines);
    store::ensure_shard(&world.pool, SHARD).await.unwrap();
    // A shard with the same positions must not mix with this one.
    store::ensure_shard(&world.pool, 0).await.unwrap();
    store::persist(
        &world.pool,
        0,
        &assets,
        -1,
        deposit_line,
        &Rows {
            ledger: rows(&lines[..1]),
            ..Rows::default()
        },
    )
    .await
    .unwrap();
    // Two commits: the deposit and the place, then the rest.
    for (prev, last, part) in [
        (-1, place_line, &lines[..2]),
        (place_line, release_line, &lines[2..]),
    ] {
        let fx = Rows {
            ledger: rows(part),
            ..Rows::default()
        };
        store::persist(&world.pool, SHARD, &assets, prev, last, &fx)
            .await
            .unwrap();
    }

    // One row per commit, naming its first and last line.
    let batches: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT first_offset, last_offset FROM ledger_batches WHERE shard = $1 \
         ORDER BY first_offset",
    )
    .bind(SHARD as i32)
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert_eq!(
        batches,
        vec![(deposit_line, place_line), (settle_line, release_line)]
    );

    // One line per line that changed something, none for the refused line.
    let stored: Vec<(i64, String)> = sqlx::query(
        "SELECT accounts_offset, changes::text FROM ledger_lines WHERE shard = $1 \
         ORDER BY accounts_offset",
    )
    .bind(SHARD as i32)
    .fetch_all(&world.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    let offsets: Vec<i64> = stored.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        offsets,
        vec![deposit_line, place_line, settle_line, release_line]
    );
    assert!(!offsets.contains(&refused_line));
    // The documented column order, compact.
    assert_eq!(
        stored[0].1,
        r#"[[7,"EUR","deposit",{"type":"deposit","transfer_id":9},"100","0","100","0"]]"#
    );

    // Through the view: the old table's rows, values and order.
    let got = sqlx::query(
        "SELECT shard, accounts_offset, idx, account_id, asset, cause, detail::text, \
           available_delta::text, reserved_delta::text, available::text, reserved::text \
         FROM ledger WHERE shard = $1 ORDER BY accounts_offset, idx",
    )
    .bind(SHARD as i32)
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert_eq!(got.len(), want.len(), "one view row per change");
    for (r, w) in got.iter().zip(&want) {
        let e = &w.event;
        let at = format!("position {} idx {}", w.position, w.idx);
        assert_eq!(r.get::<i32, _>(0), SHARD as i32, "{at}");
        assert_eq!(r.get::<i64, _>(1), w.position, "{at}");
        assert_eq!(r.get::<i32, _>(2), w.idx as i32, "{at}");
        assert_eq!(r.get::<i64, _>(3), e.account_id.0 as i64, "{at}");
        assert_eq!(
            r.get::<&str, _>(4),
            assets.get(e.asset_id).unwrap().symbol,
            "{at}"
        );
        assert_eq!(r.get::<&str, _>(5), cause_name(&e.cause), "{at}");
        let detail: Cause = serde_json::from_str(r.get::<&str, _>(6)).unwrap();
        assert_eq!(detail, e.cause, "{at}");
        let amounts: Vec<i128> = (7..11)
            .map(|i| r.get::<&str, _>(i).parse().unwrap())
            .collect();
        assert_eq!(
            amounts,
            vec![
                e.available_delta_units,
                e.reserved_delta_units,
                e.balance.available_units,
                e.balance.reserved_units
            ],
            "{at}"
        );
    }
}
