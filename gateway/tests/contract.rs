//! The API's promise that matters most to a trading client, against a real gateway, Kafka and
//! PostgreSQL with a real WebSocket client: every request the gateway read gets exactly one
//! answer, also when the gateway closes the connection; what it did not read is named in the
//! closing `status` push. Plus the documented bounds a client author tripped over.

mod common;

use std::collections::BTreeMap;

use common::*;
use futures_util::SinkExt;
use gateway::Limits;
use protocol::Command;
use protocol::ws::close_code;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Writes every request with one flush: one burst on the socket, as a pipelining client does.
async fn send_burst(c: &mut Client, requests: &[Value]) {
    for r in requests {
        c.ws.feed(Message::text(r.to_string())).await.unwrap();
    }
    c.ws.flush().await.unwrap();
}

/// What a connection received until it closed: the answers by id, the pushes, the close code.
struct Transcript {
    answers: BTreeMap<u64, Vec<Value>>,
    unanswerable: Vec<Value>,
    status: Option<Value>,
    close: Option<u16>,
}

async fn read_until_closed(c: &mut Client) -> Transcript {
    // `Client::read` skips the server's pings, so a connection that stays open would never end.
    tokio::time::timeout(2 * WAIT, read_all(c))
        .await
        .expect("the gateway closes the connection")
}

async fn read_all(c: &mut Client) -> Transcript {
    let mut t = Transcript {
        answers: BTreeMap::new(),
        unanswerable: Vec::new(),
        status: None,
        close: None,
    };
    loop {
        match c.read().await {
            Frame::Json(v) if v["channel"] == "status" => t.status = Some(v),
            Frame::Json(v) if v.get("channel").is_some() => {}
            Frame::Json(v) => match v["id"].as_u64() {
                Some(id) => t.answers.entry(id).or_default().push(v),
                None => t.unanswerable.push(v),
            },
            Frame::Closed(code, _) => {
                t.close = code;
                return t;
            }
        }
    }
}

/// Every id up to the status push's `last_request_id` answered exactly once, none after it.
/// `earlier` frames were read (and answered) before `ids` were sent.
fn check_every_read_request_answered_once(t: &Transcript, earlier: u64, ids: &[u64]) -> u64 {
    let status = t.status.as_ref().expect("a status push before the close");
    let last = status["last_request_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("the status names the last request read: {status}"));
    let read = ids.iter().position(|id| *id == last).expect("a sent id") + 1;
    assert_eq!(
        status["frames_read"].as_u64(),
        Some(earlier + read as u64),
        "{status}"
    );
    for id in &ids[..read] {
        let n = t.answers.get(id).map_or(0, Vec::len);
        assert_eq!(n, 1, "request {id} was read and got {n} answers");
    }
    for id in &ids[read..] {
        assert!(
            !t.answers.contains_key(id),
            "request {id} was not read yet answered"
        );
    }
    assert!(t.unanswerable.is_empty(), "{:?}", t.unanswerable);
    read as u64
}

#[tokio::test]
async fn a_connection_closed_for_abuse_first_gets_every_answer_due() {
    // A slow refill, so the burst's tail is refused within one second however slowly the
    // gateway reads.
    let limits = Limits {
        conn_rate_per_s: 1,
        ..Limits::default()
    };
    let Some(stack) = start(limits, 1).await else {
        return;
    };
    let mut sender = stack.client().await;
    let orders = stack.orders_consumer();
    let nonce = unique("n");
    let mut requests = vec![json!({"id": 1, "method": "login",
        "params": login_params(&stack.creds[0], now_ms(), &nonce)})];
    for i in 0..60 {
        let price = format!("{}.00", 100 + i);
        requests.push(json!({"id": 2 + i, "method": "place",
            "params": place_params("BTC-EUR", "buy", &price, "0.1")}));
    }
    for i in 0..520 {
        requests.push(json!({"id": 100 + i, "method": "ping"}));
    }
    let ids: Vec<u64> = requests.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    send_burst(&mut sender, &requests).await;

    let t = read_until_closed(&mut sender).await;
    assert_eq!(t.close, Some(close_code::POLICY_VIOLATION));
    assert_eq!(t.status.as_ref().unwrap()["status"], "abuse");
    let read = check_every_read_request_answered_once(&t, 0, &ids);
    assert!(
        read >= 400,
        "the burst of 400 was read and answered: {read}"
    );
    assert!(
        t.answers[&1][0]["result"]["account_id"].is_u64(),
        "logged in"
    );
    let mut order_ids = Vec::new();
    for id in 2..62 {
        let a = &t.answers[&id][0];
        assert_eq!(a["result"]["status"], "received", "{a}");
        order_ids.push(a["result"]["order_id"].as_u64().unwrap());
    }
    let limited = t
        .answers
        .values()
        .filter(|a| a[0]["error"]["code"] == "rate_limited")
        .count();
    assert!(
        limited as u32 >= Limits::DEFAULT.abuse_limited_per_s,
        "each refusal before the close was answered too: {limited}"
    );
    // The orders the sender learned of are exactly the ones written to Kafka.
    let written = stack
        .wait_orders(&orders, 60, |_, _, r| {
            matches!(r.command, Command::Place(_))
        })
        .await;
    let mut written: Vec<u64> = written.iter().map(|(_, r)| r.command_id).collect();
    written.sort_unstable();
    order_ids.sort_unstable();
    assert_eq!(written, order_ids);
    let (_, scrape) = stack.http_get("/metrics").await;
    assert!(
        scrape.lines().any(|l| l == "gateway_undelivered_total 0"),
        "an orderly close delivers everything"
    );
    stack.stop().await;
}

#[tokio::test]
async fn commands_kafka_has_not_acknowledged_at_the_close_are_answered_outcome_unknown() {
    // No wait at all for Kafka once the close is decided.
    let limits = Limits {
        close_flush_timeout_ms: 0,
        conn_rate_per_s: 1,
        ..Limits::default()
    };
    let Some(stack) = start(limits, 1).await else {
        return;
    };
    let mut sender = stack.logged_in(0).await;
    let mut requests = Vec::new();
    for i in 0..100 {
        let price = format!("{}.00", 100 + i);
        requests.push(json!({"id": 1000 + i, "method": "place",
            "params": place_params("BTC-EUR", "buy", &price, "0.1")}));
    }
    for i in 0..600 {
        requests.push(json!({"id": 2000 + i, "method": "ping"}));
    }
    let ids: Vec<u64> = requests.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    send_burst(&mut sender, &requests).await;
    let t = read_until_closed(&mut sender).await;
    assert_eq!(t.close, Some(close_code::POLICY_VIOLATION));
    // The login was the one frame before.
    check_every_read_request_answered_once(&t, 1, &ids);
    let mut by_code = BTreeMap::<String, usize>::new();
    for id in 1000..1100 {
        let a = &t.answers[&id][0];
        let code = a["error"]["code"].as_str().unwrap_or("received").to_owned();
        *by_code.entry(code).or_default() += 1;
    }
    assert_eq!(by_code.values().sum::<usize>(), 100, "{by_code:?}");
    assert!(
        by_code
            .keys()
            .all(|c| c == "received" || c == "outcome_unknown"),
        "{by_code:?}"
    );
    assert!(by_code.contains_key("outcome_unknown"), "{by_code:?}");
    let (_, scrape) = stack.http_get("/metrics").await;
    assert!(scrape.lines().any(|l| l == "gateway_undelivered_total 0"));
    stack.stop().await;
}

#[tokio::test]
async fn the_accounts_shared_limit_answers_rate_limited_and_closes_nobody() {
    let limits = Limits {
        account_rate_per_s: 100,
        account_burst: 200,
        ..Limits::default()
    };
    let Some(stack) = start(limits, 1).await else {
        return;
    };
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(stack.logged_in(0).await);
    }
    let runs = clients
        .into_iter()
        .enumerate()
        .map(|(k, mut c)| async move {
            let ids: Vec<u64> = (0..390).map(|i| 10_000 * (k as u64 + 1) + i).collect();
            let requests: Vec<Value> = ids
                .iter()
                .map(|id| {
                    json!({"id": id, "method": "cancel",
                "params": {"pair": "BTC-EUR", "order_id": 1_000_000 + id}})
                })
                .collect();
            send_burst(&mut c, &requests).await;
            // Refusals are answered at once, receipts after Kafka: read until every id is answered.
            let mut answers = BTreeMap::<u64, Vec<Value>>::new();
            while answers.len() < ids.len() {
                match c.read().await {
                    Frame::Json(v) if v.get("channel").is_some() => {}
                    Frame::Json(v) => answers
                        .entry(v["id"].as_u64().unwrap())
                        .or_default()
                        .push(v),
                    Frame::Closed(code, reason) => panic!("closed: {code:?} {reason}"),
                }
            }
            assert!(
                ids.iter().all(|id| answers[id].len() == 1),
                "one answer each"
            );
            let mut codes = BTreeMap::<String, usize>::new();
            for a in answers.values() {
                let code = a[0]["error"]["code"]
                    .as_str()
                    .unwrap_or("received")
                    .to_owned();
                *codes.entry(code).or_default() += 1;
            }
            // Still open and usable.
            let r = c.request("ping", Value::Null).await;
            assert!(r.get("result").is_some(), "{r}");
            codes
        });
    let all = futures_util::future::join_all(runs).await;
    let limited: usize = all.iter().filter_map(|c| c.get("rate_limited")).sum();
    let received: usize = all.iter().filter_map(|c| c.get("received")).sum();
    assert_eq!(limited + received, 4 * 390, "{all:?}");
    assert!(limited > 0, "the account limit was reached: {all:?}");
    stack.stop().await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_after_the_answers_due() {
    let Some(stack) = start(Limits::default(), 0).await else {
        return;
    };
    let mut c = stack.client().await;
    c.ws.feed(Message::text(
        json!({"id": 1, "method": "ping"}).to_string(),
    ))
    .await
    .unwrap();
    let bad = WsFrame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.ws.feed(Message::Frame(bad)).await.unwrap();
    c.ws.flush().await.unwrap();
    let t = read_until_closed(&mut c).await;
    assert_eq!(t.close, Some(close_code::INVALID_PAYLOAD));
    assert_eq!(t.answers[&1].len(), 1, "the ping before it was answered");
    stack.stop().await;
}

#[tokio::test]
async fn ids_beyond_2_pow_53_and_empty_amends_are_refused_as_documented() {
    let Some(stack) = start(Limits::default(), 1).await else {
        return;
    };
    let mut c = stack.logged_in(0).await;
    let r = c
        .request("cancel", json!({"pair": "BTC-EUR", "order_id": 1u64 << 60}))
        .await;
    assert_eq!(error_code(&r), "invalid_order_ref", "{r}");
    let r = c
        .request("amend", json!({"pair": "BTC-EUR", "order_id": 5}))
        .await;
    assert_eq!(error_code(&r), "invalid_amend", "{r}");

    c.send_text(r#"{"id":9007199254740992,"method":"ping"}"#)
        .await;
    let Frame::Json(r) = c.read().await else {
        panic!("closed")
    };
    assert_eq!(error_code(&r), "malformed_request");
    assert!(r.get("id").is_none(), "an unsafe id is not echoed: {r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(!message.contains("line "), "{message}");
    stack.stop().await;
}
