//! `open_orders`, `order_status`, `my_trades` against the real engine, Kafka and PostgreSQL, and
//! the reconnect procedure of docs/API.md: subscribe (log in), buffer pushes, query, apply only
//! the pushes above the answer's seq, and end with exactly what PostgreSQL holds. The same
//! procedure for balances runs against the real account stage too.

mod common;

use std::collections::BTreeMap;

use common::*;
use gateway::Limits;
use serde_json::{Value, json};

fn is_order(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["channel"] == "orders" && v["type"] == kind
}

fn sell(price: &str, qty: &str, client_id: &str) -> Value {
    json!({"pair": "BTC-EUR", "side": "sell", "type": "limit", "price": price, "qty": qty,
           "client_order_id": client_id})
}

fn ioc_buy(price: &str, qty: &str) -> Value {
    json!({"pair": "BTC-EUR", "side": "buy", "type": "limit", "price": price, "qty": qty,
           "tif": "ioc"})
}

fn units(stack: &Stack, qty: &Value) -> i64 {
    let spec = stack.pairs.by_symbol("BTC-EUR").unwrap();
    spec.parse_qty(qty.as_str().unwrap()).unwrap().0
}

/// Open orders as (order_id -> remaining units), from PostgreSQL.
async fn open_in_db(stack: &Stack, account: u64) -> BTreeMap<u64, i64> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT order_id, qty - filled_qty FROM orders WHERE account_id = $1 AND status = 'open'",
    )
    .bind(account as i64)
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    rows.into_iter().map(|(o, r)| (o as u64, r)).collect()
}

async fn db_seq(stack: &Stack) -> u64 {
    sqlx::query_scalar::<_, i64>("SELECT last_seq FROM pair_offsets WHERE pair_id = 0")
        .fetch_optional(&stack.pool)
        .await
        .unwrap()
        .unwrap_or(0) as u64
}

// The engine's actors use block_in_place, which needs the multi-threaded runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnecting_client_rebuilds_its_orders_from_the_query_and_the_pushes_above_it() {
    let Some(stack) = start(Limits::default(), 2).await else {
        return;
    };
    let config = stack.engine_config();
    let engine_stop = tokio_util::sync::CancellationToken::new();
    let engine = tokio::spawn(engine::run(config, engine_stop.clone()));
    let maker_account = stack.creds[0].account_id;

    // The maker rests three asks, then goes away.
    let mut maker = stack.logged_in(0).await;
    let mut placed = Vec::new();
    for (price, coid) in [("100.00", "a"), ("101.00", "b"), ("102.00", "c")] {
        let r = maker.request("place", sell(price, "0.5", coid)).await;
        placed.push(r["result"]["order_id"].as_u64().expect("received"));
        maker.push_where(is_order("accepted")).await;
    }
    drop(maker);

    // Meanwhile others trade against them: "a" fills, "b" partly.
    let mut taker = stack.logged_in(1).await;
    taker
        .request("place", place_params("BTC-EUR", "buy", "101.00", "0.7"))
        .await;
    taker.push_where(is_order("done")).await;

    // The maker comes back: logging in starts its private stream (buffered from here on),
    // and trading goes on while it queries.
    let mut maker = stack.logged_in(0).await;
    let r = taker.request("place", ioc_buy("102.00", "0.4")).await;
    assert_eq!(r["result"]["status"], "received", "{r}");
    let answer = maker.request("open_orders", Value::Null).await;
    let result = &answer["result"];
    assert_eq!(result["truncated"], false, "{answer}");
    let as_of = result["as_of_seq"]["BTC-EUR"].as_u64().expect("a seq");
    assert_eq!(
        result["as_of_seq"].as_object().unwrap().len(),
        8,
        "every pair"
    );
    let mut state: BTreeMap<u64, i64> = result["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            assert_eq!(o["status"], "open");
            assert_eq!(o["pair"], "BTC-EUR");
            assert_eq!(o["side"], "sell");
            (
                o["order_id"].as_u64().unwrap(),
                units(&stack, &o["remaining_qty"]),
            )
        })
        .collect();

    // Everything settles: the taker's order is done ("b" filled, "c" partly), the maker has
    // read its last fill, and the database has caught up with both.
    let done = taker.push_where(is_order("done")).await;
    let last = done["seq"].as_u64().unwrap();
    let mut applied = 0;
    loop {
        let push = tokio::time::timeout(WAIT, maker.push_where(|v| v["channel"] == "orders"))
            .await
            .expect("the maker's pushes in time");
        let seq = push["seq"].as_u64().unwrap();
        let order = push["order_id"].as_u64().unwrap();
        if seq > as_of {
            applied += 1;
            match push["type"].as_str().unwrap() {
                "fill" => {
                    *state.get_mut(&order).expect("a fill of a known order") -=
                        units(&stack, &push["qty"])
                }
                "done" => {
                    state.remove(&order);
                }
                other => panic!("unexpected {other}: {push}"),
            }
        }
        if push["type"] == "fill" && order == placed[2] {
            break;
        }
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while db_seq(&stack).await < last {
        assert!(tokio::time::Instant::now() < deadline, "the engine commits");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let db = open_in_db(&stack, maker_account).await;
    assert_eq!(
        state, db,
        "no gap, no double count ({applied} pushes applied above seq {as_of})"
    );
    assert_eq!(db, BTreeMap::from([(placed[2], 40_000_000)]));

    // order_status: any status, by id or client id; unknown is order_not_found.
    let r = maker
        .request(
            "order_status",
            json!({"pair": "BTC-EUR", "client_order_id": "a"}),
        )
        .await;
    let order = &r["result"]["order"];
    assert_eq!(order["order_id"], placed[0], "{r}");
    assert_eq!(order["status"], "filled");
    assert_eq!(order["filled_qty"], "0.50000000");
    assert_eq!(order["remaining_qty"], "0.00000000");
    assert_eq!(order["price"], "100.00");
    assert_eq!(order["tif"], "gtc");
    assert!(r["result"]["as_of_seq"].as_u64().unwrap() >= last);
    let r = maker
        .request(
            "order_status",
            json!({"pair": "BTC-EUR", "order_id": placed[2]}),
        )
        .await;
    assert_eq!(r["result"]["order"]["status"], "open", "{r}");
    assert_eq!(r["result"]["order"]["filled_qty"], "0.10000000");
    assert_eq!(r["result"]["order"]["remaining_qty"], "0.40000000");
    assert_eq!(r["result"]["order"]["client_order_id"], "c");
    let r = taker
        .request(
            "order_status",
            json!({"pair": "BTC-EUR", "order_id": placed[2]}),
        )
        .await;
    assert_eq!(error_code(&r), "order_not_found", "another account's order");
    let r = maker
        .request("order_status", json!({"pair": "BTC-EUR"}))
        .await;
    assert_eq!(error_code(&r), "invalid_order_ref");

    // my_trades: newest first, maker side, paged backwards.
    let mut pages = Vec::new();
    let mut cursor: Option<u64> = None;
    loop {
        let mut params = json!({"pair": "BTC-EUR", "limit": 2});
        if let Some(c) = cursor {
            params["before_trade_id"] = c.into();
        }
        let r = maker.request("my_trades", params).await;
        let page = r["result"]["trades"].as_array().expect("trades").clone();
        cursor = r["result"]["next_before_trade_id"].as_u64();
        if let Some(c) = cursor {
            assert_eq!(page.len(), 2, "a cursor only after a full page: {r}");
            assert_eq!(Some(c), page[1]["trade_id"].as_u64());
        }
        pages.extend(page);
        if cursor.is_none() {
            break;
        }
    }
    let got: Vec<(u64, &str, &str)> = pages
        .iter()
        .map(|t| {
            assert_eq!(t["liquidity"], "maker", "{t}");
            assert_eq!(t["side"], "sell");
            assert_eq!(t["pair"], "BTC-EUR");
            (
                t["order_id"].as_u64().unwrap(),
                t["price"].as_str().unwrap(),
                t["qty"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (placed[2], "102.00", "0.10000000"),
            (placed[1], "101.00", "0.30000000"),
            (placed[1], "101.00", "0.20000000"),
            (placed[0], "100.00", "0.50000000"),
        ]
    );
    assert!(
        pages
            .windows(2)
            .all(|w| w[0]["trade_id"].as_u64() > w[1]["trade_id"].as_u64())
    );
    // The taker's side of the same trades, across pairs.
    let r = taker.request("my_trades", json!({})).await;
    let mine = r["result"]["trades"].as_array().unwrap();
    assert_eq!(mine.len(), 4, "{r}");
    assert!(
        mine.iter()
            .all(|t| t["liquidity"] == "taker" && t["side"] == "buy")
    );
    assert!(r["result"]["as_of_seq"]["BTC-EUR"].as_u64().unwrap() >= last);
    for bad in [
        json!({"limit": 0}),
        json!({"limit": 1001}),
        json!({"before_trade_id": 3}),
    ] {
        let r = taker.request("my_trades", bad).await;
        assert_eq!(error_code(&r), "invalid_params", "{r}");
    }
    let mut anonymous = stack.client().await;
    let r = anonymous.request("open_orders", Value::Null).await;
    assert_eq!(error_code(&r), "unauthenticated");

    engine_stop.cancel();
    let _ = engine.await;
    stack.stop().await;
}

/// (asset -> (available, reserved)) in the asset's smallest unit: a balance string has exactly
/// the asset's decimals, so its digits are the units.
type Balances = BTreeMap<String, (i128, i128)>;

fn amount_units(v: &Value) -> i128 {
    v.as_str().unwrap().replace('.', "").parse().unwrap()
}

/// The account's balances as the stage committed them.
async fn balances_in_db(stack: &Stack, account: u64) -> Balances {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT asset, available::text, reserved::text FROM balances WHERE account_id = $1",
    )
    .bind(account as i64)
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(a, av, re)| (a, (av.parse().unwrap(), re.parse().unwrap())))
        .filter(|(_, b)| *b != (0, 0))
        .collect()
}

/// The reconnect procedure for balances (docs/API.md), with the real account stage and engine:
/// the maker's asks fill while it is away and the operator deposits an asset it will never see
/// a push for; it comes back while trading goes on, subscribes, buffers, queries `balances`,
/// applies only the pushes above `as_of_offset`, and ends with exactly its balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnecting_client_rebuilds_its_balances_from_the_query_and_the_pushes_above_it() {
    const SHARDS: u32 = 2;
    let Some(stack) = start_with_accounts(Limits::default(), 2, SHARDS as usize).await else {
        return;
    };
    let accounts_topic = stack.accounts_topic.clone().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let engine = tokio::spawn(engine::run(stack.engine_config(), stop.clone()));
    let mut stage_config = accounts::Config::new(
        stack.env.brokers.clone(),
        stack.db_url.clone(),
        (*stack.pairs).clone(),
    );
    stage_config.accounts_topic = accounts_topic.clone();
    stage_config.orders_topic = stack.orders_topic.clone();
    stage_config.account_events_topic = stack.account_events_topic.clone().unwrap();
    let stage = tokio::spawn(accounts::run(stage_config, stop.clone()));

    let assets = accounts_core::AssetRegistry::from_pairs(&stack.pairs);
    let fund = |spec: &str, who: std::ops::Range<usize>| {
        let funding = gateway::provision::parse_funding(spec, &assets).unwrap();
        let producer = stack.producer();
        let (topic, creds) = (accounts_topic.clone(), stack.creds[who].to_vec());
        async move {
            gateway::provision::fund(&producer, &topic, SHARDS, &creds, &funding)
                .await
                .unwrap()
        }
    };
    fund("EUR=1000,BTC=2", 0..2).await;
    let maker_account = stack.creds[0].account_id;

    // The maker rests three asks (1.5 BTC reserved), then goes away.
    let mut maker = stack.logged_in(0).await;
    for (price, coid) in [("100.00", "a"), ("101.00", "b"), ("102.00", "c")] {
        let r = maker.request("place", sell(price, "0.5", coid)).await;
        assert_eq!(r["result"]["status"], "received", "{r}");
        let v = maker
            .push_where(|v| v["channel"] == "orders" && v["client_order_id"] == coid)
            .await;
        assert_eq!(v["type"], "accepted", "{v}");
    }
    drop(maker);

    // While it is away: "a" fills and "b" partly; the operator deposits USD.
    let mut taker = stack.logged_in(1).await;
    let r = taker
        .request("place", place_params("BTC-EUR", "buy", "101.00", "0.7"))
        .await;
    assert_eq!(r["result"]["status"], "received", "{r}");
    taker.push_where(is_order("done")).await;
    fund("USD=500", 0..1).await;

    // It comes back: logs in, subscribes (pushes buffer from here on), and trading goes on
    // while it queries.
    let mut maker = stack.logged_in(0).await;
    let r = maker
        .request("subscribe", json!({"channel": "balances"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let r = taker.request("place", ioc_buy("102.00", "0.4")).await;
    assert_eq!(r["result"]["status"], "received", "{r}");
    let answer = maker.request("balances", Value::Null).await;
    let result = &answer["result"];
    let as_of = result["as_of_offset"].as_i64().expect("an offset");
    let shard = result["shard"].as_u64().expect("a shard");
    let mut state: Balances = result["balances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["asset"].as_str().unwrap().to_owned(),
                (amount_units(&b["available"]), amount_units(&b["reserved"])),
            )
        })
        .collect();

    // Sold 0.5 at 100, 0.5 at 101, 0.1 at 102 (no fees in pairs.toml); 0.4 BTC still reserved
    // for "c". EUR has 10 decimals, BTC 14, USD 10.
    let eur = 10_i128.pow(10);
    let btc = 10_i128.pow(14);
    let want: Balances = BTreeMap::from([
        ("BTC".to_owned(), (btc / 2, 4 * btc / 10)),
        ("EUR".to_owned(), (11_107 * eur / 10, 0)),
        ("USD".to_owned(), (500 * eur, 0)),
    ]);
    let (mut applied, mut dropped) = (0, 0);
    let rebuilt = tokio::time::timeout(WAIT, async {
        while state != want {
            let push = maker.push_where(|v| v["channel"] == "balances").await;
            assert_eq!(push["shard"].as_u64(), Some(shard), "{push}");
            if push["accounts_offset"].as_i64().unwrap() > as_of {
                applied += 1;
                state.insert(
                    push["asset"].as_str().unwrap().to_owned(),
                    (
                        amount_units(&push["available"]),
                        amount_units(&push["reserved"]),
                    ),
                );
            } else {
                dropped += 1;
            }
        }
    })
    .await;
    assert!(
        rebuilt.is_ok(),
        "the rebuilt balances {state:?} never reached {want:?} \
         ({applied} pushes applied above offset {as_of}, {dropped} dropped)"
    );
    assert!(
        applied > 0,
        "the trade after the query reached the client as pushes"
    );

    // And that is what the stage commits.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let db = balances_in_db(&stack, maker_account).await;
        if db == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "PostgreSQL's balances {db:?} never reached {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    stop.cancel();
    let _ = engine.await;
    let _ = stage.await;
    stack.stop().await;
}
