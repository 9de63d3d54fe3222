//! The load generator against a stand-in gateway on 127.0.0.1:0 that speaks the real protocol
//! (`protocol::ws`): it checks the generator's wiring, accounting and output files without
//! Kafka or PostgreSQL. The real end-to-end run is `tests/end_to_end.rs`.

use std::collections::HashSet;
use std::path::PathBuf;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use protocol::ws::{
    ErrorBody, ErrorCode, OrderUpdate, OrderUpdateKind, Push, RequestBody, Response, parse_request,
};
use protocol::{CommandKind, DoneReason, OrderType, RejectReason, TimeInForce};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// Every `SHED_EVERY`-th trading request is answered `overloaded`.
const SHED_EVERY: u64 = 50;

async fn serve(listener: TcpListener) {
    let mut account = 0;
    while let Ok((tcp, _)) = listener.accept().await {
        account += 1;
        tokio::spawn(connection(tcp, account));
    }
}

fn push(pair: &str, seq: u64, req_id: u64, kind: OrderUpdateKind) -> Message {
    let p = Push::Orders(OrderUpdate {
        pair: pair.to_owned(),
        seq,
        req_id: Some(req_id),
        ts_ms: 1,
        kind,
    });
    Message::text(serde_json::to_string(&p).unwrap())
}

fn respond(id: u64, result: Option<serde_json::Value>, error: Option<ErrorBody>) -> Message {
    let r = Response {
        id: Some(id),
        result,
        error,
    };
    Message::text(serde_json::to_string(&r).unwrap())
}

async fn connection(tcp: tokio::net::TcpStream, account: u64) {
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let mut live: HashSet<u64> = HashSet::new();
    let mut n = 0u64;
    let mut seq = 0u64;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let req = parse_request(&text).expect("the generator sends valid requests");
        let id = req.id;
        let received = serde_json::json!({"status": "received", "commands": 1});
        seq += 1;
        let out: Vec<Message> = match req.body {
            RequestBody::Login(l) => {
                assert_eq!(l.signature.len(), 64, "hex HMAC-SHA256");
                vec![respond(
                    id,
                    Some(serde_json::json!({"account_id": account})),
                    None,
                )]
            }
            // The generator's end-of-run cleanup; never shed here, so the test can count it.
            RequestBody::CancelAll(_) => vec![respond(id, Some(received), None)],
            _ if {
                n += 1;
                n.is_multiple_of(SHED_EVERY)
            } =>
            {
                let mut e = ErrorBody::new(ErrorCode::Overloaded, "shedding");
                e.retry_after_ms = Some(100);
                vec![respond(id, None, Some(e))]
            }
            RequestBody::Place(p) => {
                let order_id = account * 1_000_000 + n;
                let accepted = OrderUpdateKind::Accepted {
                    order_id,
                    client_order_id: None,
                    side: p.side,
                    order_type: OrderType::Limit,
                    price: p.price.clone(),
                    qty: p.qty.clone(),
                    tif: p.time_in_force(),
                    post_only: false,
                    filled_qty: "0".into(),
                    remaining_qty: p.qty.clone(),
                };
                let mut out = vec![
                    respond(id, Some(received), None),
                    push(&p.pair, seq, id, accepted),
                ];
                if p.time_in_force() == TimeInForce::Gtc {
                    live.insert(order_id);
                } else {
                    let fill = OrderUpdateKind::Fill {
                        order_id,
                        trade_id: seq,
                        side: p.side,
                        price: p.price.clone().unwrap(),
                        qty: p.qty.clone(),
                        maker: false,
                        client_order_id: None,
                        filled_qty: Some(p.qty.clone()),
                        remaining_qty: Some("0".into()),
                        fee: Some("0".into()),
                        fee_asset: Some("EUR".into()),
                    };
                    out.push(push(&p.pair, seq, id, fill));
                    let done = OrderUpdateKind::Done {
                        order_id,
                        client_order_id: None,
                        reason: DoneReason::Filled,
                        filled_qty: p.qty.clone(),
                        remaining_qty: "0".into(),
                    };
                    out.push(push(&p.pair, seq, id, done));
                }
                out
            }
            RequestBody::Cancel(c) => {
                let order_id = c.order_id.unwrap();
                let verdict = if live.remove(&order_id) {
                    OrderUpdateKind::Done {
                        order_id,
                        client_order_id: None,
                        reason: DoneReason::Cancelled,
                        filled_qty: "0".into(),
                        remaining_qty: "0".into(),
                    }
                } else {
                    OrderUpdateKind::Rejected {
                        order_id: Some(order_id),
                        client_order_id: None,
                        command: Some(CommandKind::Cancel),
                        code: RejectReason::UnknownOrder,
                        message: String::new(),
                    }
                };
                vec![
                    respond(id, Some(received), None),
                    push(&c.pair, seq, id, verdict),
                ]
            }
            RequestBody::Amend(a) => {
                let verdict = OrderUpdateKind::Amended {
                    order_id: a.order_id.unwrap(),
                    client_order_id: None,
                    price: a.price.clone().unwrap_or_else(|| "1".into()),
                    qty: a.qty.clone().unwrap_or_else(|| "1".into()),
                    filled_qty: "0".into(),
                    remaining_qty: "1".into(),
                    priority_kept: a.price.is_none(),
                };
                vec![
                    respond(id, Some(received), None),
                    push(&a.pair, seq, id, verdict),
                ]
            }
            other => panic!("unexpected request {other:?}"),
        };
        for m in out {
            if ws.feed(m).await.is_err() {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_is_accounted_for_and_the_report_is_written() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener));

    let dir = std::env::temp_dir().join(format!("loadtest-fake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let accounts: String = (1..=8)
        .map(|i| format!("{{\"key_id\":\"k{i}\",\"secret\":\"s{i}\",\"account_id\":{i}}}\n"))
        .collect();
    let accounts_file = dir.join("accounts.jsonl");
    std::fs::write(&accounts_file, accounts).unwrap();
    let pairs = workspace_root().join("config/pairs.toml");
    let config = loadtest::Config::parse_from([
        "loadtest".to_owned(),
        format!("--url=ws://{addr}/ws"),
        format!("--accounts-file={}", accounts_file.display()),
        format!("--pairs-file={}", pairs.display()),
        format!("--out-dir={}", dir.display()),
        "--connections=8".into(),
        "--rate-per-min=60000".into(),
        "--duration-s=2".into(),
        "--warmup-s=1".into(),
        "--arrival=poisson".into(),
        "--drain-timeout-s=5".into(),
        format!("--watch-pid=self={}", std::process::id()),
        "--quiet".into(),
    ]);
    let report = loadtest::run(config).await.unwrap();
    let m = &report.measured;

    // 1,000 commands/s for 2 s, Poisson: about 2,000.
    assert!((1500..2500).contains(&m.offered), "{}", m.offered);
    let bucketed = m.accepted
        + m.errors.values().sum::<u64>()
        + m.timeouts
        + m.lost
        + m.unread_at_close
        + m.generator_behind
        + m.connection_closed;
    assert_eq!(bucketed, m.offered, "every command in exactly one bucket");
    assert_eq!((m.lost, m.timeouts, report.lost_all_phases), (0, 0, 0));
    let cleanup = report.cleanup.clone().expect("cleanup is on by default");
    assert_eq!(
        (cleanup.connections, cleanup.accepted),
        (8, 8),
        "{cleanup:?}"
    );
    assert!(m.shed > 0 && m.errors.get("overloaded") == Some(&m.shed));
    assert_eq!(m.verdicts + m.shed, m.offered - m.generator_behind);
    assert!(
        m.trades == 0 && m.fills > 0,
        "taker fills only, no maker side here"
    );
    assert!(m.sent_by_kind.get("cancel").is_some_and(|n| *n > 0));
    assert!(m.accept_latency_ms.p99 > 0.0 && m.accept_latency_ms.p99 < 1000.0);
    assert!(report.peak_rss_mib.get("self").is_some_and(|m| *m > 0.0));
    // This process ran the generator and the fake gateway for the whole window: it used CPU,
    // and so did the machine.
    let cpu = &report.cpu_pct_measured;
    assert!(cpu.get("self").is_some_and(|c| *c > 0.0), "{cpu:?}");
    assert_eq!(
        cpu.get("loadtest"),
        cpu.get("self"),
        "the same process: {cpu:?}"
    );
    assert!(
        cpu.get("machine_busy")
            .is_some_and(|c| *c > 0.0 && *c <= 100.0),
        "{cpu:?}"
    );
    // Both ends of the connections are in this machine's socket tables, so the unread input of
    // both sides is sampled every second.
    let unread = &report.unread_ms_measured;
    assert!(
        unread.contains_key("generator") && unread.contains_key("gateway"),
        "{unread:?}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    for field in [
        "target_events_per_min",
        "achieved_events_per_min",
        "duration_s",
        "offered",
        "acknowledged",
        "accepted",
        "lost",
        "shed",
        "errors",
        "timeouts",
        "trades",
        "series",
    ] {
        assert!(json.get(field).is_some(), "report.json lacks {field}");
    }
    for field in ["p50", "p90", "p99", "p999", "max"] {
        assert!(json["accept_latency_ms"].get(field).is_some());
        assert!(json["ack_latency_ms"].get(field).is_some());
    }
    for png in ["throughput.png", "latency.png", "memory.png"] {
        let bytes = std::fs::read(dir.join(png)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{png}");
    }
    // LOADTEST_KEEP_OUT=1 keeps the report and charts to look at.
    if std::env::var_os("LOADTEST_KEEP_OUT").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    } else {
        eprintln!("kept {}", dir.display());
    }
}
