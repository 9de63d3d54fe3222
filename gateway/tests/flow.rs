//! Trading end to end: the gateway with the matching engine in-process, real Kafka and
//! PostgreSQL, real WebSocket clients.

mod common;

use common::*;
use gateway::Limits;
use protocol::records::{EventRecord, RECORD_VERSION};
use protocol::{AccountId, Event, EventBody, OrderId, OrderType, Price, Qty, Side, TimeInForce};
use serde_json::{Value, json};

fn is_order(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["channel"] == "orders" && v["type"] == kind
}

// The engine's actors use block_in_place, which needs the multi-threaded runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_accounts_cross_and_a_third_sees_the_book_and_the_trade() {
    let Some(stack) = start(Limits::default(), 3).await else {
        return;
    };
    let config = stack.engine_config();
    let engine_stop = tokio_util::sync::CancellationToken::new();
    let engine = tokio::spawn(engine::run(config, engine_stop.clone()));

    let mut watcher = stack.client().await;
    let r = watcher
        .request("subscribe", json!({"channel": "book", "pair": "BTC-EUR"}))
        .await;
    assert_eq!(r["result"]["channel"], "book", "{r}");
    watcher
        .request("subscribe", json!({"channel": "trades", "pair": "BTC-EUR"}))
        .await;
    let snapshot = watcher.push_where(|v| v["channel"] == "book").await;
    assert_eq!(snapshot["type"], "snapshot");
    let mut last_seq = snapshot["seq"].as_u64().unwrap();

    let mut maker = stack.logged_in(0).await;
    // The maker's account on a second connection (a UI beside a bot, say).
    let mut maker_ui = stack.logged_in(0).await;
    let mut taker = stack.logged_in(1).await;
    let mut params = place_params("BTC-EUR", "sell", "100.00", "0.5");
    params["client_order_id"] = json!("mk-1");
    let before_ms = now_ms();
    let r = maker.request("place", params).await;
    let maker_order = r["result"]["order_id"].as_u64().expect("received");
    let accepted = maker.push_where(is_order("accepted")).await;
    assert_eq!(accepted["order_id"], maker_order);
    assert_eq!(accepted["filled_qty"], "0.00000000");
    assert_eq!(accepted["remaining_qty"], "0.50000000");
    // Event time: when the gateway received the command.
    let ts_ms = accepted["ts_ms"].as_u64().expect("an event time");
    assert!((before_ms..=now_ms()).contains(&ts_ms), "{accepted}");
    assert_eq!(accepted["req_id"], r["id"], "the verdict names the request");
    // The account's other connection sees the same update, without the other's request id.
    let seen = maker_ui.push_where(is_order("accepted")).await;
    assert_eq!(seen["order_id"], maker_order);
    assert_eq!(seen["seq"], accepted["seq"]);
    assert!(seen.get("req_id").is_none(), "{seen}");

    let r = taker
        .request("place", place_params("BTC-EUR", "buy", "100.00", "0.2"))
        .await;
    let taker_order = r["result"]["order_id"].as_u64().expect("received");
    let fill = taker.push_where(is_order("fill")).await;
    assert_eq!(fill["order_id"], taker_order);
    assert_eq!(fill["maker"], false);
    assert_eq!(fill["qty"], "0.20000000");
    assert_eq!(fill["price"], "100.00");
    assert_eq!(fill["filled_qty"], "0.20000000");
    assert_eq!(fill["remaining_qty"], "0.00000000");
    assert_eq!(fill.get("client_order_id"), None, "{fill}");
    // Without the account stage nothing settles, so no fee is named.
    assert_eq!(fill.get("fee"), None, "{fill}");
    assert!(fill["ts_ms"].as_u64().unwrap() >= ts_ms);
    let done = taker.push_where(is_order("done")).await;
    assert_eq!(done["reason"], "filled");
    assert_eq!(done["ts_ms"], fill["ts_ms"], "one command, one event time");
    let maker_fill = maker.push_where(is_order("fill")).await;
    assert_eq!(maker_fill["order_id"], maker_order);
    assert_eq!(maker_fill["maker"], true);
    assert_eq!(maker_fill["client_order_id"], "mk-1");
    assert_eq!(maker_fill["filled_qty"], "0.20000000");
    assert_eq!(maker_fill["remaining_qty"], "0.30000000");
    assert_eq!(maker_fill["trade_id"], fill["trade_id"]);

    // The watcher sees the ask appear, then shrink, with contiguous book sequence numbers.
    let mut asks = Vec::new();
    while asks.len() < 2 {
        let update = watcher.push_where(|v| v["channel"] == "book").await;
        assert_eq!(update["type"], "update");
        assert_eq!(update["prev_seq"].as_u64().unwrap(), last_seq);
        last_seq = update["seq"].as_u64().unwrap();
        asks.push(update["asks"][0].clone());
    }
    assert_eq!(asks[0], json!(["100.00", "0.50000000"]));
    assert_eq!(asks[1], json!(["100.00", "0.30000000"]));
    let trades = watcher.push_where(|v| v["channel"] == "trades").await;
    assert_eq!(trades["trades"][0]["qty"], "0.20000000");
    assert_eq!(trades["trades"][0]["taker_side"], "buy");

    // An account cannot cancel another account's order.
    let r = taker
        .request(
            "cancel",
            json!({"pair": "BTC-EUR", "order_id": maker_order}),
        )
        .await;
    assert_eq!(r["result"]["status"], "received");
    let rejected = taker.push_where(is_order("rejected")).await;
    assert_eq!(rejected["code"], "unknown_order");
    assert_eq!(rejected["req_id"], r["id"]);

    // A late subscriber gets the current book as its snapshot.
    let mut late = stack.client().await;
    late.request("subscribe", json!({"channel": "book", "pair": "BTC-EUR"}))
        .await;
    let snap = late.push_where(|v| v["channel"] == "book").await;
    assert_eq!(snap["asks"], json!([["100.00", "0.30000000"]]));
    // The rejected cancel took a sequence number without changing the book.
    assert_eq!(snap["seq"].as_u64().unwrap(), last_seq + 1);

    // A gateway started now builds its book from PostgreSQL, not from the whole events topic:
    // with every event record deleted (as retention would), it still has the book.
    stack.delete_all_events().await;
    let (second, second_stop) = stack.another_gateway(2).await;
    let mut late = Client::connect(second.local_addr()).await;
    late.request("subscribe", json!({"channel": "book", "pair": "BTC-EUR"}))
        .await;
    let snap = late.push_where(|v| v["channel"] == "book").await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["asks"], json!([["100.00", "0.30000000"]]), "{snap}");
    let snap_seq = snap["seq"].as_u64().unwrap();
    assert_eq!(snap_seq, last_seq + 1);
    // ...and goes on from there with live events.
    let mut buyer = Client::connect(second.local_addr()).await;
    assert!(buyer.login(&stack.creds[2]).await.get("result").is_some());
    buyer
        .request("place", place_params("BTC-EUR", "buy", "100.00", "0.1"))
        .await;
    let update = late.push_where(|v| v["channel"] == "book").await;
    assert_eq!(update["type"], "update", "{update}");
    assert_eq!(update["prev_seq"].as_u64().unwrap(), snap_seq);
    assert_eq!(update["asks"][0], json!(["100.00", "0.20000000"]));
    // A market order without `tif` is immediate-or-cancel; the level it empties is removed
    // with the bare "0" the API documents, not the pair's "0.00000000".
    let r = buyer
        .request(
            "place",
            json!({"pair": "BTC-EUR", "side": "buy", "type": "market", "qty": "0.2"}),
        )
        .await;
    assert_eq!(r["result"]["status"], "received", "{r}");
    let req_id = r["id"].clone();
    let accepted = buyer
        .push_where(|v| is_order("accepted")(v) && v["req_id"] == req_id)
        .await;
    assert_eq!(accepted["tif"], "ioc", "{accepted}");
    let update = late.push_where(|v| v["channel"] == "book").await;
    assert_eq!(update["asks"], json!([["100.00", "0"]]), "{update}");
    second_stop.cancel();
    second.join().await.unwrap();

    engine_stop.cancel();
    let _ = engine.await;
    stack.stop().await;
}

#[tokio::test]
async fn private_stream_drops_redeliveries_and_survives_garbage() {
    let Some(stack) = start(Limits::default(), 1).await else {
        return;
    };
    let account = AccountId(stack.creds[0].account_id);
    let mut c = stack.logged_in(0).await;
    let producer = stack.producer();
    let accepted = |seq: u64, order: u64| Event {
        seq,
        ts_ns: 1,
        body: EventBody::Accepted {
            order_id: OrderId(order),
            account_id: account,
            client_order_id: None,
            side: Side::Buy,
            order_type: OrderType::Limit,
            price: Some(Price(10_000)),
            qty: Qty(100_000),
            tif: TimeInForce::Gtc,
            post_only: false,
        },
    };
    let record = |offset: i64, events: Vec<Event>| EventRecord {
        v: RECORD_VERSION,
        pair: "BTC-EUR".into(),
        orders_offset: offset,
        command_id: None,
        account_id: Some(account),
        tp: None,
        events,
    };
    let first = record(0, vec![accepted(1, 11)]);
    stack.publish_record(&producer, 0, &first).await;
    stack.publish_record(&producer, 0, &first).await; // re-delivery
    stack
        .publish_event(&producer, 0, b"{not json".to_vec())
        .await;
    stack
        .publish_record(&producer, 0, &record(1, vec![accepted(2, 12)]))
        .await;
    let one = c.push_where(is_order("accepted")).await;
    let two = c.push_where(is_order("accepted")).await;
    assert_eq!(
        (one["seq"].as_u64(), one["order_id"].as_u64()),
        (Some(1), Some(11))
    );
    assert_eq!(
        (two["seq"].as_u64(), two["order_id"].as_u64()),
        (Some(2), Some(12))
    );
    assert_eq!(one["price"], "100.00");
    let (_, metrics) = stack.http_get("/metrics").await;
    assert!(
        metrics.contains("gateway_events_duplicates_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_events_undecodable_total"),
        "{metrics}"
    );
    stack.stop().await;
}
