//! Hostile clients against a real gateway, Kafka and PostgreSQL (issue 22, scenario 10): replayed,
//! tampered and stale logins, oversize and invalid frames, a foreign `Origin`, malformed
//! requests. Each is refused with its documented code, and a bystander trading on the same
//! gateway sees nothing of it. HMAC keys here; Ed25519 logins have their own tests. Without the
//! stack these print a skip line (and fail in CI): `scripts/stack up; eval "$(scripts/stack env)"`.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use gateway::Limits;
use protocol::ws::close_code;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as RawFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message};

/// The bystander still gets answers and its commands still reach Kafka.
async fn assert_unharmed(bystander: &mut Client, after: &str) {
    let r = bystander.request("ping", Value::Null).await;
    assert!(r["result"]["ts_ms"].is_u64(), "after {after}: {r}");
    let r = bystander
        .request("place", place_params("BTC-EUR", "buy", "100", "1"))
        .await;
    assert_eq!(r["result"]["status"], "received", "after {after}: {r}");
}

/// Flips one hex digit of a signature.
fn tampered(signature: &str) -> String {
    let mut s = signature.to_owned();
    let flipped = if s.ends_with('0') { "1" } else { "0" };
    s.replace_range(s.len() - 1.., flipped);
    s
}

#[tokio::test]
async fn replayed_tampered_and_stale_logins_are_refused() {
    let Some(stack) = start(Limits::default(), 3).await else {
        return;
    };
    let (victim, other) = (stack.creds[0].clone(), stack.creds[1].clone());
    let mut bystander = stack.logged_in(2).await;

    // Replay: the same signed login, once more on another connection, and again after the
    // first connection has gone.
    let signed = login_params(&victim, now_ms(), &unique("replayed"));
    let mut first = stack.client().await;
    let r = first.request("login", signed.clone()).await;
    assert_eq!(r["result"]["account_id"], victim.account_id, "{r}");
    let mut attacker = stack.client().await;
    let r = attacker.request("login", signed.clone()).await;
    assert_eq!(error_code(&r), "nonce_reused", "{r}");
    drop(first);
    let r = attacker.request("login", signed.clone()).await;
    assert_eq!(error_code(&r), "nonce_reused", "{r}");
    assert_unharmed(&mut bystander, "a replayed login").await;

    // Tampered: a captured signature cannot be bent to another digit, timestamp, nonce or key.
    let ts = now_ms();
    let nonce = unique("tamper");
    let genuine = login_params(&victim, ts, &nonce);
    let sig = genuine["signature"].as_str().unwrap().to_owned();
    let mut forgeries = Vec::new();
    let mut digit = genuine.clone();
    digit["signature"] = json!(tampered(&sig));
    forgeries.push(("a flipped digit", digit));
    let mut later = genuine.clone();
    later["ts_ms"] = json!(ts + 1);
    forgeries.push(("another timestamp", later));
    let mut renonced = genuine.clone();
    renonced["nonce"] = json!(unique("tamper"));
    forgeries.push(("another nonce", renonced));
    let mut rekeyed = login_params(&other, ts, &nonce);
    rekeyed["signature"] = json!(sig.clone());
    forgeries.push(("another key", rekeyed));
    let mut truncated = genuine.clone();
    truncated["signature"] = json!(sig[..sig.len() - 2]);
    forgeries.push(("a shortened signature", truncated));
    let mut not_hex = genuine.clone();
    not_hex["signature"] = json!("zz".repeat(sig.len() / 2));
    forgeries.push(("a signature that is not hex", not_hex));
    for (what, forged) in forgeries {
        let r = attacker.request("login", forged).await;
        assert_eq!(error_code(&r), "bad_signature", "{what}: {r}");
    }
    assert_unharmed(&mut bystander, "tampered logins").await;

    // Stale: signed correctly but outside the window (5 s), in the past or the future, and
    // timestamps at the ends of the range.
    let window_ms = Limits::DEFAULT.login_window_ms;
    for ts in [
        now_ms() - 10 * window_ms,
        now_ms() + 10 * window_ms,
        0,
        u64::MAX,
    ] {
        let r = attacker
            .request("login", login_params(&victim, ts, &unique("stale")))
            .await;
        assert_eq!(error_code(&r), "stale_timestamp", "ts_ms {ts}: {r}");
    }
    assert_unharmed(&mut bystander, "stale logins").await;

    // None of it logged the attacker in, and none of it spent the genuine login: the refused
    // connection still trades once it signs properly.
    let r = attacker
        .request("place", place_params("BTC-EUR", "sell", "100", "1"))
        .await;
    assert_eq!(error_code(&r), "unauthenticated", "{r}");
    let r = attacker.request("login", genuine).await;
    assert_eq!(r["result"]["account_id"], victim.account_id, "{r}");
    let r = attacker
        .request("place", place_params("BTC-EUR", "sell", "100", "1"))
        .await;
    assert_eq!(r["result"]["status"], "received", "{r}");
    stack.stop().await;
}

#[tokio::test]
async fn oversize_and_invalid_frames_close_only_their_own_connection() {
    let Some(stack) = start(Limits::default(), 2).await else {
        return;
    };
    let mut bystander = stack.logged_in(1).await;
    let max = Limits::DEFAULT.max_message_bytes;

    // One frame over the limit, before and after login.
    for logged_in in [false, true] {
        let mut c = if logged_in {
            stack.logged_in(0).await
        } else {
            stack.client().await
        };
        c.send_text(format!(
            r#"{{"id":1,"method":"ping","pad":"{}"}}"#,
            "x".repeat(max)
        ))
        .await;
        let (code, reason, statuses) = c.until_closed().await;
        assert_eq!(
            code,
            Some(close_code::MESSAGE_TOO_BIG),
            "logged in: {logged_in}"
        );
        assert_eq!(reason, "message_too_big");
        assert!(
            statuses.is_empty(),
            "documented: no status push: {statuses:?}"
        );
        assert_unharmed(&mut bystander, "an oversize frame").await;
    }

    // A message over the limit in fragments that are each well under it.
    let mut c = stack.client().await;
    let chunk = "y".repeat(max / 4);
    let fragments = 6;
    for i in 0..fragments {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = RawFrame::message(chunk.clone(), opcode, i == fragments - 1);
        if c.ws.send(Message::Frame(frame)).await.is_err() {
            break; // the server may close before the last fragment
        }
    }
    let (code, reason, _) = c.until_closed().await;
    assert_eq!(code, Some(close_code::MESSAGE_TOO_BIG), "{reason}");
    assert_unharmed(&mut bystander, "an oversize fragmented message").await;

    // A text frame that is not UTF-8.
    let mut c = stack.client().await;
    let bad = RawFrame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(bad)).await.unwrap();
    let (code, reason, _) = c.until_closed().await;
    assert_eq!(code, Some(close_code::INVALID_PAYLOAD), "{reason}");
    assert_eq!(reason, "invalid_utf8");
    assert_unharmed(&mut bystander, "invalid UTF-8").await;

    // A frame just under the limit is a request like any other.
    let mut c = stack.client().await;
    let pad = "z".repeat(max - 100);
    c.send_text(format!(
        r#"{{"id":5,"method":"ping","params":{{"pad":"{pad}"}}}}"#
    ))
    .await;
    let r = c.response_to(5).await;
    assert!(r.get("result").is_some() || r.get("error").is_some(), "{r}");
    let r = c.request("ping", Value::Null).await;
    assert!(r["result"]["ts_ms"].is_u64(), "{r}");
    stack.stop().await;
}

#[tokio::test]
async fn a_foreign_origin_is_refused_with_403_when_origins_are_listed() {
    let allowed = "https://trade.example";
    let limits = Limits {
        allowed_origins: vec![allowed.to_owned()],
        ..Limits::default()
    };
    let Some(stack) = start(limits, 1).await else {
        return;
    };
    let url = format!("ws://{}/ws", stack.addr);
    let with_origin = |origin: Option<&str>| {
        let mut req = url.as_str().into_client_request().unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        req
    };

    // The listed origin connects, and keeps being answered while the others are turned away.
    let (mut listed, _) = tokio_tungstenite::connect_async(with_origin(Some(allowed)))
        .await
        .expect("the listed origin connects");
    for (i, origin) in [
        Some("https://evil.example"),
        Some("https://trade.example.evil.example"),
        Some("null"),
        None,
    ]
    .into_iter()
    .enumerate()
    {
        match tokio_tungstenite::connect_async(with_origin(origin)).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403, "origin {origin:?}")
            }
            Err(e) => panic!("origin {origin:?}: {e}"),
            Ok(_) => panic!("origin {origin:?} was let in"),
        }
        let id = i as u64 + 1;
        listed
            .send(Message::text(
                json!({"id": id, "method": "ping"}).to_string(),
            ))
            .await
            .unwrap();
        let answer = loop {
            match tokio::time::timeout(WAIT, listed.next())
                .await
                .expect("an answer")
            {
                Some(Ok(Message::Text(t))) => break serde_json::from_str::<Value>(&t).unwrap(),
                Some(Ok(_)) => {}
                other => panic!("the listed connection ended: {other:?}"),
            }
        };
        assert_eq!(answer["id"], id, "{answer}");
        assert!(answer["result"]["ts_ms"].is_u64(), "{answer}");
    }
    stack.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_their_codes_and_the_connection_stays_usable() {
    let Some(stack) = start(Limits::default(), 2).await else {
        return;
    };
    let mut bystander = stack.logged_in(1).await;
    let mut c = stack.logged_in(0).await;

    // (frame, code, whether the answer carries the frame's id 41)
    let cases: Vec<(String, &str, bool)> = vec![
        ("{not json".into(), "malformed_request", false),
        ("".into(), "malformed_request", false),
        ("null".into(), "malformed_request", false),
        ("[1,2,3]".into(), "malformed_request", false),
        (r#"{"id":"41","method":"ping"}"#.into(), "malformed_request", false),
        (r#"{"id":-41,"method":"ping"}"#.into(), "malformed_request", false),
        (r#"{"id":4.1,"method":"ping"}"#.into(), "malformed_request", false),
        (r#"{"id":9007199254740992,"method":"ping"}"#.into(), "malformed_request", false),
        (r#"{"id":41}"#.into(), "malformed_request", true),
        (r#"{"id":41,"method":7}"#.into(), "malformed_request", true),
        (format!(r#"{{"id":{}{},"method":"ping"}}"#, "[".repeat(5000), "]".repeat(5000)), "malformed_request", false),
        (r#"{"id":41,"method":"withdraw","params":{"asset":"BTC"}}"#.into(), "unknown_method", true),
        (r#"{"id":41,"method":"PLACE","params":{}}"#.into(), "unknown_method", true),
        (r#"{"id":41,"method":"place","params":"BTC-EUR"}"#.into(), "invalid_params", true),
        (r#"{"id":41,"method":"place","params":[1]}"#.into(), "invalid_params", true),
        (r#"{"id":41,"method":"place","params":{"pair":"BTC-EUR","side":"buy","type":"limit","price":100,"qty":"1"}}"#.into(), "invalid_params", true),
        (r#"{"id":41,"method":"place","params":{"pair":"BTC-EUR","side":"up","type":"limit","price":"100","qty":"1"}}"#.into(), "invalid_params", true),
        (r#"{"id":41,"method":"place","params":{"pair":"BTC-EUR","side":"buy","type":"limit","price":"100","qty":"1","leverage":100}}"#.into(), "invalid_params", true),
        (r#"{"id":41,"method":"place","params":{"pair":"BTC-EUR","side":"buy","side":"sell","type":"limit","price":"100","qty":"1"}}"#.into(), "invalid_params", true),
        (r#"{"id":41,"method":"place","params":{"pair":"BTC-EUR","side":"buy","type":"limit","price":"1e2","qty":"1"}}"#.into(), "invalid_decimal", true),
        (r#"{"id":41,"method":"place","params":{"pair":"BTC-EUR","side":"buy","type":"limit","price":"99999999999999999999999999","qty":"1"}}"#.into(), "invalid_decimal", true),
        (r#"{"id":41,"method":"place","params":{"pair":"BTC-EUR","side":"buy","type":"limit","price":"-100","qty":"1"}}"#.into(), "invalid_price", true),
        (r#"{"id":41,"method":"cancel","params":{"pair":"BTC-EUR","order_id":18446744073709551615}}"#.into(), "invalid_order_ref", true),
        (r#"{"id":41,"method":"my_trades","params":{"limit":4294967296}}"#.into(), "invalid_params", true),
    ];
    for (frame, code, echoes_id) in &cases {
        c.send_text(frame.clone()).await;
        let Frame::Json(r) = c.read().await else {
            panic!("closed after {frame:.80}")
        };
        assert_eq!(error_code(&r), *code, "{frame:.200}: {r}");
        assert!(!r["error"]["message"].as_str().unwrap().is_empty());
        let id = if *echoes_id { json!(41) } else { Value::Null };
        assert_eq!(r["id"], id, "{frame:.200}: {r}");
    }
    // Nesting as deep as the frame limit allows, in a field the envelope ignores: read and
    // answered without exhausting the stack.
    let depth = Limits::DEFAULT.max_message_bytes / 2 - 50;
    c.send_text(format!(
        r#"{{"id":42,"method":"ping","x":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    ))
    .await;
    let r = c.response_to(42).await;
    assert!(r["result"]["ts_ms"].is_u64(), "{r}");
    // Still the same logged-in, trading connection, and the bystander saw nothing.
    let r = c
        .request("place", place_params("BTC-EUR", "buy", "100", "1"))
        .await;
    assert_eq!(r["result"]["status"], "received", "{r}");
    assert_unharmed(&mut bystander, "malformed requests").await;
    assert!(bystander.pushes.iter().all(|p| p["channel"] != "status"));
    stack.stop().await;
}
