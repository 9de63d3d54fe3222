//! The WebSocket API against a real gateway, Kafka and PostgreSQL. Without the stack these
//! print a skip line (and fail in CI): `scripts/stack up; eval "$(scripts/stack env)"`.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use gateway::Limits;
use protocol::ws::close_code;
use protocol::{Command, OrderId};
use serde_json::json;

#[tokio::test]
async fn login_failures_each_have_their_code() {
    let Some(stack) = start(Limits::default(), 2).await else {
        return;
    };
    let cred = stack.creds[0].clone();
    let mut c = stack.client().await;

    let r = c
        .request("place", place_params("BTC-EUR", "buy", "100", "1"))
        .await;
    assert_eq!(error_code(&r), "unauthenticated");

    let mut unknown = login_params(&cred, now_ms(), "nonce-unknown");
    unknown["key_id"] = json!("no-such-key");
    assert_eq!(
        error_code(&c.request("login", unknown).await),
        "unknown_key"
    );

    let mut forged = login_params(&cred, now_ms(), "nonce-forged");
    forged["signature"] = json!("00".repeat(32));
    assert_eq!(
        error_code(&c.request("login", forged).await),
        "bad_signature"
    );

    let stale = login_params(&cred, now_ms() - 60_000, "nonce-stale");
    assert_eq!(
        error_code(&c.request("login", stale).await),
        "stale_timestamp"
    );

    let good = login_params(&cred, now_ms(), "nonce-once");
    let r = c.request("login", good.clone()).await;
    assert_eq!(r["result"]["account_id"], cred.account_id, "{r}");
    assert_eq!(
        error_code(&c.request("login", good.clone()).await),
        "already_authenticated"
    );

    let mut other = stack.client().await;
    assert_eq!(
        error_code(&other.request("login", good).await),
        "nonce_reused"
    );
    // The connection is still usable after a refused login.
    let r = other.login(&stack.creds[1]).await;
    assert_eq!(r["result"]["account_id"], stack.creds[1].account_id);
    stack.stop().await;
}

#[tokio::test]
async fn bad_input_is_answered_and_the_connection_stays_usable_until_an_oversize_frame() {
    let Some(stack) = start(Limits::default(), 1).await else {
        return;
    };
    let mut c = stack.logged_in(0).await;

    c.send_text("{not json").await;
    let Frame::Json(r) = c.read().await else {
        panic!()
    };
    assert_eq!(error_code(&r), "malformed_request");

    assert_eq!(
        error_code(&c.request("fly", json!({})).await),
        "unknown_method"
    );
    assert_eq!(
        error_code(&c.request("place", json!({"pair": "BTC-EUR"})).await),
        "invalid_params"
    );
    let r = c
        .request("place", place_params("DOGE-EUR", "buy", "1", "1"))
        .await;
    assert_eq!(error_code(&r), "unknown_pair");
    let r = c
        .request("place", place_params("BTC-EUR", "buy", "100.15", "0.5"))
        .await;
    assert_eq!(error_code(&r), "price_off_tick");
    let r = c
        .request("place", place_params("BTC-EUR", "buy", "1e5", "0.5"))
        .await;
    assert_eq!(error_code(&r), "invalid_decimal");
    let r = c.request("cancel", json!({"pair": "BTC-EUR"})).await;
    assert_eq!(error_code(&r), "invalid_order_ref");

    c.ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
        1, 2, 3,
    ]))
    .await
    .unwrap();
    let Frame::Json(r) = c.read().await else {
        panic!()
    };
    assert_eq!(error_code(&r), "unsupported_frame");

    let r = c.request("ping", serde_json::Value::Null).await;
    assert!(r["result"]["ts_ms"].as_u64().is_some(), "{r}");

    let big = format!(
        r#"{{"id":99,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(Limits::DEFAULT.max_message_bytes)
    );
    c.send_text(big).await;
    let (code, _, _) = c.until_closed().await;
    assert_eq!(code, Some(close_code::MESSAGE_TOO_BIG));
    stack.stop().await;
}

#[tokio::test]
async fn commands_go_to_the_pairs_partition_and_are_acknowledged_after_kafka() {
    let Some(stack) = start(Limits::default(), 1).await else {
        return;
    };
    let consumer = stack.orders_consumer();
    let mut c = stack.logged_in(0).await;
    let account = stack.creds[0].account_id;

    let mut place = place_params("ETH-EUR", "sell", "2000.5", "0.25");
    place["client_order_id"] = json!("my-1");
    let r = c.request("place", place).await;
    assert_eq!(r["result"]["status"], "received", "{r}");
    let order_id = r["result"]["order_id"].as_u64().unwrap();
    assert!(order_id <= protocol::ws::JSON_SAFE_INT_MAX);

    let r = c
        .request("cancel", json!({"pair": "ETH-EUR", "order_id": order_id}))
        .await;
    assert_eq!(r["result"]["order_id"], order_id, "{r}");
    let r = c
        .request(
            "amend",
            json!({"pair": "ETH-EUR", "client_order_id": "my-1", "qty": "0.2"}),
        )
        .await;
    assert_eq!(r["result"]["commands"], 1, "{r}");
    let r = c.request("cancel_all", json!({})).await;
    assert_eq!(r["result"]["commands"], stack.pairs.len(), "{r}");

    let eth = stack.pairs.by_symbol("ETH-EUR").unwrap().id as i32;
    let records = stack
        .wait_orders(&consumer, 3 + stack.pairs.len(), |_, _, _| true)
        .await;
    let (partition, first) = &records
        .iter()
        .find(|(_, r)| matches!(r.command, Command::Place(_)))
        .unwrap();
    assert_eq!(*partition, eth);
    assert_eq!(first.command_id, order_id);
    let Command::Place(p) = &first.command else {
        unreachable!()
    };
    assert_eq!(p.order_id, OrderId(order_id));
    assert_eq!(p.account_id.0, account);
    assert_eq!(p.price, Some(protocol::Price(200050)));
    let cancel_alls: Vec<i32> = records
        .iter()
        .filter(|(_, r)| matches!(r.command, Command::CancelAll(_)))
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(cancel_alls.len(), stack.pairs.len());
    for (p, r) in &records {
        assert_eq!(stack.pairs.by_symbol(&r.pair).unwrap().id as i32, *p);
    }
    stack.stop().await;
}

#[tokio::test]
async fn rate_limit_answers_retry_after_and_sustained_abuse_closes() {
    let limits = Limits {
        conn_rate_per_s: 2,
        conn_burst: 5,
        abuse_limited_per_s: 20,
        ..Limits::default()
    };
    let Some(stack) = start(limits, 0).await else {
        return;
    };
    let mut c = stack.client().await;
    let mut limited = None;
    for _ in 0..10 {
        let r = c.request("ping", serde_json::Value::Null).await;
        if r.get("error").is_some() {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("the burst of 5 runs out within 10 requests");
    assert_eq!(error_code(&r), "rate_limited");
    assert!(r["error"]["retry_after_ms"].as_u64().unwrap() > 0, "{r}");

    for i in 0..40 {
        c.send_text(json!({"id": 1000 + i, "method": "ping"}).to_string())
            .await;
    }
    let (code, reason, statuses) = c.until_closed().await;
    assert_eq!(code, Some(close_code::POLICY_VIOLATION), "{reason}");
    assert_eq!(statuses.last().unwrap()["status"], "abuse");
    stack.stop().await;
}

#[tokio::test]
async fn a_client_steadily_above_its_limit_is_cut_off_though_some_requests_pass() {
    // 20/s allowed, 100/s sent: one request in five passes, so never 30 refusals in a row, but
    // 80 a second: the client ignores every `retry_after_ms`, and is closed as abusive.
    let limits = Limits {
        conn_rate_per_s: 20,
        conn_burst: 1,
        abuse_limited_per_s: 30,
        ..Limits::default()
    };
    let Some(stack) = start(limits, 0).await else {
        return;
    };
    let mut c = stack.client().await;
    // Until the gateway closes it (at most 10 s of sending).
    for i in 0..1000 {
        if !c
            .try_send_text(json!({"id": i, "method": "ping"}).to_string())
            .await
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (code, reason, statuses) = c.until_closed().await;
    assert_eq!(code, Some(close_code::POLICY_VIOLATION), "{reason}");
    assert_eq!(statuses.last().unwrap()["status"], "abuse");
    stack.stop().await;
}

/// A client within its rate whose socket the gateway stopped reading (here: a query answered in
/// line that waits on a lock in PostgreSQL; in the field also its answers pending on a slow
/// Kafka) went on sending meanwhile. Its frames then arrive together, far over its burst: the
/// gateway made that burst, so none is refused and the client is not cut as abusive.
#[tokio::test]
async fn frames_the_gateway_read_late_are_not_refused_as_over_the_clients_rate() {
    let limits = Limits {
        conn_rate_per_s: 20,
        conn_burst: 10,
        abuse_limited_per_s: 10,
        ..Limits::default()
    };
    let Some(stack) = start(limits, 1).await else {
        return;
    };
    let mut c = stack.logged_in(0).await;
    let mut lock = stack.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE pair_offsets IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    c.send_text(json!({"id": 9_001, "method": "open_orders"}).to_string())
        .await;
    // 25 pings at 20 a second (the limit) while the query waits (within the gateway's 2 s
    // statement timeout): for 1.25 s the gateway reads nothing, then 25 frames at once.
    let sent = 25;
    for i in 0..sent {
        c.send_text(json!({"id": 100 + i, "method": "ping"}).to_string())
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lock.commit().await.unwrap();
    let r = c.response_to(9_001).await;
    assert!(r.get("result").is_some(), "open_orders: {r}");
    let mut refused = Vec::new();
    for i in 0..sent {
        let r = c.response_to(100 + i).await;
        if r.get("error").is_some() {
            refused.push(r);
        }
    }
    assert!(
        refused.is_empty(),
        "{} refused: {:?}",
        refused.len(),
        refused.first()
    );
    // Still open, and the limit still holds for what the client sends from now on.
    let mut limited = false;
    for _ in 0..200 {
        let r = c.request("ping", serde_json::Value::Null).await;
        if r.get("error").is_some() {
            assert_eq!(error_code(&r), "rate_limited", "{r}");
            limited = true;
            break;
        }
    }
    assert!(
        limited,
        "once the credit is spent, a client over its rate is refused"
    );
    stack.stop().await;
}

/// Two gateways with one id would hand out the same order ids (and the second order with an id
/// would overwrite the first in PostgreSQL, whatever its pair): a gateway refuses to start
/// while another holds its id on the same schema, starts beside it with another id, and takes
/// the id once its holder has stopped.
#[tokio::test]
async fn a_gateway_refuses_the_id_of_a_running_one_and_takes_it_once_free() {
    let Some(mut stack) = start(Limits::default(), 0).await else {
        return;
    };
    let quick = Limits {
        id_claim_wait_ms: 500,
        ..Limits::default()
    };
    let started = std::time::Instant::now();
    let err = gateway::run(
        stack.gateway_config(1, quick.clone()),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("id 1 is the running gateway's");
    assert!(matches!(err, gateway::GatewayError::IdInUse(1)), "{err}");
    assert!(err.to_string().contains("GW_GATEWAY_ID"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited first"
    );

    let (other, other_stop) = stack.another_gateway(2).await;
    other_stop.cancel();
    other.join().await.unwrap();

    stack.shutdown.cancel();
    stack.gateway.take().unwrap().join().await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let again = gateway::run(stack.gateway_config(1, quick), stop.clone())
        .await
        .expect("the id is free once its gateway stopped");
    stop.cancel();
    again.join().await.unwrap();
    stack.stop().await;
}

#[tokio::test]
async fn new_connections_beyond_the_gateways_rate_get_503_with_retry_after() {
    let limits = Limits {
        new_connections_per_s: 1,
        new_connections_burst: 2,
        ..Limits::default()
    };
    let Some(stack) = start(limits, 0).await else {
        return;
    };
    let url = format!("ws://{}/ws", stack.addr);
    let _a = tokio_tungstenite::connect_async(&url).await.expect("first");
    let _b = tokio_tungstenite::connect_async(&url)
        .await
        .expect("second");
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry >= 1, "{retry}");
        }
        other => panic!("the third connection within a second was not refused: {other:?}"),
    }
    stack.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_request_is_closed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let limits = Limits {
        handshake_timeout_ms: 300,
        ..Limits::default()
    };
    let Some(stack) = start(limits, 0).await else {
        return;
    };
    // Half a request head, then nothing: closed once the deadline passes.
    let mut slow = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("closed within 5 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // A client that completes its upgrade in time, and then says nothing for longer than the
    // deadline, is not affected.
    let mut c = stack.client().await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let r = c.request("ping", serde_json::Value::Null).await;
    assert!(r.get("error").is_none(), "{r}");
    stack.stop().await;
}

#[tokio::test]
async fn under_forced_overload_new_orders_are_shed_but_cancels_are_admitted() {
    let limits = Limits {
        inflight_new_max: 0,
        ..Limits::default()
    };
    let Some(stack) = start(limits, 1).await else {
        return;
    };
    let mut c = stack.logged_in(0).await;
    let r = c
        .request("place", place_params("BTC-EUR", "buy", "100", "0.5"))
        .await;
    assert_eq!(error_code(&r), "overloaded");
    assert!(r["error"]["retry_after_ms"].as_u64().unwrap() > 0);
    let r = c
        .request(
            "amend",
            json!({"pair": "BTC-EUR", "order_id": 1, "qty": "0.1"}),
        )
        .await;
    assert_eq!(error_code(&r), "overloaded");
    let r = c
        .request("cancel", json!({"pair": "BTC-EUR", "order_id": 1}))
        .await;
    assert_eq!(r["result"]["status"], "received", "{r}");
    let r = c.request("cancel_all", json!({})).await;
    assert_eq!(r["result"]["commands"], stack.pairs.len(), "{r}");
    stack.stop().await;
}

/// No engine runs here, so no verdict ever comes back: once `awaiting_verdict_new_max` commands
/// wait for one, the engine is the bottleneck and new orders are shed, cancels still admitted.
#[tokio::test]
async fn a_backlog_at_the_engine_sheds_new_orders_but_admits_cancels() {
    let limits = Limits {
        awaiting_verdict_new_max: 2,
        ..Limits::default()
    };
    let Some(stack) = start(limits, 1).await else {
        return;
    };
    let mut c = stack.logged_in(0).await;
    for price in ["100", "101"] {
        let r = c
            .request("place", place_params("BTC-EUR", "buy", price, "0.5"))
            .await;
        assert_eq!(r["result"]["status"], "received", "{r}");
    }
    let r = c
        .request("place", place_params("BTC-EUR", "buy", "102", "0.5"))
        .await;
    assert_eq!(error_code(&r), "overloaded", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("waiting for the matching engine"),
        "{r}"
    );
    let r = c
        .request("cancel", json!({"pair": "BTC-EUR", "order_id": 1}))
        .await;
    assert_eq!(r["result"]["status"], "received", "{r}");
    stack.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected_while_another_keeps_trading() {
    let limits = Limits {
        conn_rate_per_s: 1_000_000,
        conn_burst: 1_000_000,
        abuse_limited_per_s: 1_000_000,
        outbound_queue_max: 64,
        write_timeout_ms: 500,
        ..Limits::default()
    };
    let Some(stack) = start(limits, 1).await else {
        return;
    };
    let mut trader = stack.logged_in(0).await;
    let mut sloth = stack.client().await;
    // Requests whose answers (an error with its sentence, ~150 bytes) the sloth never reads,
    // until the gateway gives up on it: the gateway reads no further ahead than it can write,
    // so how many requests that takes depends on the socket buffers on both sides, which
    // Linux sizes by itself (a fixed 100,000 pings once all fit in them, and the sloth was never
    // behind).
    let request = json!({"id": 1, "method": "no_such_method"}).to_string();
    let flood = async {
        loop {
            let message = tokio_tungstenite::tungstenite::Message::text(request.clone());
            if sloth.ws.feed(message).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), flood).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let r = trader
        .request("place", place_params("BTC-EUR", "buy", "100", "0.5"))
        .await;
    assert_eq!(r["result"]["status"], "received", "{r}");

    let (m, _) = tokio::time::timeout(Duration::from_secs(30), async {
        let mut seen = 0_u64;
        loop {
            match sloth.read().await {
                Frame::Json(v) if v["channel"] == "status" => return (Some(v), seen),
                Frame::Json(_) => seen += 1,
                Frame::Closed(..) => return (None, seen),
            }
        }
    })
    .await
    .expect("the slow client is disconnected");
    if let Some(status) = m {
        assert_eq!(status["status"], "slow_consumer");
    }
    let (_, body) = stack.http_get("/metrics").await;
    assert!(body.contains("gateway_disconnects_total"), "{body}");
    stack.stop().await;
}

/// A client that sends faster than it reads its answers is slowed by TCP, not cut: the gateway
/// stops reading it while half its outbound queue waits, and every request gets its answer.
#[tokio::test]
async fn a_client_that_sends_faster_than_it_reads_gets_every_answer() {
    let limits = Limits {
        conn_rate_per_s: 1_000_000,
        conn_burst: 1_000_000,
        abuse_limited_per_s: 1_000_000,
        outbound_queue_max: 64,
        ..Limits::default()
    };
    let Some(stack) = start(limits, 1).await else {
        return;
    };
    let client = stack.client().await;
    let (mut tx, mut rx) = futures_util::StreamExt::split(client.ws);
    // Answers of ~150 bytes each: tens of megabytes, far more than the socket buffers hold,
    // so the gateway's queue fills while the client is not reading.
    const N: u64 = 150_000;
    let sender = tokio::spawn(async move {
        for id in 1..=N {
            let text = format!(r#"{{"id":{id},"method":"no_such_method"}}"#);
            tx.feed(tokio_tungstenite::tungstenite::Message::text(text))
                .await
                .expect("the gateway keeps the connection open");
        }
        tx.flush().await.expect("flushed");
        tx
    });
    // Not reading for a while (well within the write timeout), then reading everything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut answered = 0_u64;
    let mut next = 1_u64;
    while answered < N {
        let m = tokio::time::timeout(
            Duration::from_secs(30),
            futures_util::StreamExt::next(&mut rx),
        )
        .await
        .expect("an answer in time")
        .expect("the connection stays open")
        .expect("a frame");
        let tokio_tungstenite::tungstenite::Message::Text(t) = m else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert!(v.get("channel").is_none(), "no status push, no close: {v}");
        assert_eq!(v["id"], next, "answers in order, none dropped: {v}");
        assert_eq!(error_code(&v), "unknown_method", "{v}");
        next += 1;
        answered += 1;
    }
    let _tx = sender.await.unwrap();
    stack.stop().await;
}

#[tokio::test]
async fn dead_man_switch_cancels_everything_when_not_refreshed() {
    let Some(stack) = start(Limits::default(), 1).await else {
        return;
    };
    let consumer = stack.orders_consumer();
    let account = stack.creds[0].account_id;
    let mut c = stack.logged_in(0).await;
    let r = c
        .request("cancel_all_after", json!({"timeout_ms": 60_000}))
        .await;
    let first = r["result"]["trigger_time_ms"].as_u64().unwrap();
    let r = c
        .request("cancel_all_after", json!({"timeout_ms": 300}))
        .await;
    assert!(
        r["result"]["trigger_time_ms"].as_u64().unwrap() < first,
        "refresh moves it"
    );
    drop(c); // The switch outlives the connection.
    let found = stack
        .wait_orders(
            &consumer,
            stack.pairs.len(),
            |_, _, r| matches!(&r.command, Command::CancelAll(c) if c.account_id.0 == account),
        )
        .await;
    let mut partitions: Vec<i32> = found.iter().map(|(p, _)| *p).collect();
    partitions.sort();
    assert_eq!(
        partitions,
        (0..stack.pairs.len() as i32).collect::<Vec<_>>()
    );

    // Disarmed switches do not fire.
    let mut c = stack.logged_in(0).await;
    c.request("cancel_all_after", json!({"timeout_ms": 200}))
        .await;
    let r = c
        .request("cancel_all_after", json!({"timeout_ms": 0}))
        .await;
    assert!(r["result"].get("trigger_time_ms").is_none(), "{r}");
    stack.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let Some(stack) = start(Limits::default(), 0).await else {
        return;
    };
    assert_eq!(stack.http_get("/healthz").await.0, 200);
    let ready = tokio::time::timeout(WAIT, async {
        loop {
            let (status, body) = stack.http_get("/readyz").await;
            if status == 200 {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("ready in time");
    assert!(ready.contains("ready"));
    let mut c = stack.client().await;
    c.request("ping", serde_json::Value::Null).await;
    let (status, body) = stack.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("gateway_requests_total"), "{body}");
    stack.stop().await;
}

#[tokio::test]
async fn shutdown_closes_clients_with_1001_and_drains() {
    let Some(stack) = start(Limits::default(), 1).await else {
        return;
    };
    let mut c = stack.logged_in(0).await;
    stack.shutdown.cancel();
    let (code, reason, statuses) = c.until_closed().await;
    assert_eq!(code, Some(close_code::GOING_AWAY), "{reason}");
    assert_eq!(statuses.last().unwrap()["status"], "shutting_down");
    stack.stop().await;
}

#[tokio::test]
async fn provision_creates_thousands_of_working_keys_in_batches() {
    let Some(stack) = start(Limits::default(), 0).await else {
        return;
    };
    let keys = gateway::provision::NewKeys::Hmac(&stack.keys);
    let creds = gateway::provision::provision(&stack.pool, 6_001, "bulk", &keys)
        .await
        .unwrap();
    assert_eq!(creds.len(), 6_001);
    let mut ids: Vec<u64> = creds.iter().map(|c| c.account_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), creds.len(), "one account per key");
    for c in [&creds[0], &creds[5_000], &creds[6_000]] {
        let mut client = stack.client().await;
        let r = client.login(c).await;
        assert_eq!(r["result"]["account_id"], c.account_id, "{r}");
    }
    stack.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_closed_at_the_idle_timeout_and_a_talking_one_is_not() {
    let limits = Limits {
        idle_timeout_ms: 600,
        ..Limits::default()
    };
    let Some(stack) = start(limits, 1).await else {
        return;
    };
    let mut silent = stack.client().await;
    let mut talker = stack.client().await;
    // The talker sends a frame every 200 ms for three idle periods: each frame defers the close.
    for i in 0..9 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = talker.request("ping", serde_json::Value::Null).await;
        assert!(r.get("error").is_none(), "ping {i}: {r}");
    }
    let (code, _, statuses) = tokio::time::timeout(Duration::from_secs(5), silent.until_closed())
        .await
        .expect("the silent client is closed");
    assert_eq!(code, Some(close_code::IDLE_TIMEOUT));
    assert_eq!(
        statuses.last().map(|s| s["status"].clone()),
        Some(json!("idle_timeout"))
    );
    // Then the talker goes quiet, and is closed the same way.
    let (code, _, _) = tokio::time::timeout(Duration::from_secs(5), talker.until_closed())
        .await
        .expect("the talker, now silent, is closed");
    assert_eq!(code, Some(close_code::IDLE_TIMEOUT));
    stack.stop().await;
}
