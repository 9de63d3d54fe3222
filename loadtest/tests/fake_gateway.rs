//! The load generator against a stand-in gateway on 127.0.0.1:0 that speaks the real protocol
//! (`protocol::ws`): it checks the generator's wiring, accounting and output files without
//! Kafka or PostgreSQL, and how it lives through a gateway that drops every connection at once
//! (`--reconnect`). The real end-to-end runs are `tests/end_to_end.rs` and `tests/reconnect.rs`.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use protocol::ws::{
    ConnectionStatus, ErrorBody, ErrorCode, OrderUpdate, OrderUpdateKind, Push, RequestBody,
    Response, parse_request,
};
use protocol::{CommandKind, DoneReason, OrderType, RejectReason, TimeInForce};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Every `SHED_EVERY`-th trading request is answered `overloaded`.
const SHED_EVERY: u64 = 50;

/// How the stand-in drops every connection once, after `after` trading requests in all.
#[derive(Debug, Clone, Copy)]
struct Fault {
    after: u64,
    /// `None`: the sockets just end (a killed gateway); else this close code first.
    close: Option<u16>,
    /// Logins after the drop are refused with this code.
    refuse_logins: Option<ErrorCode>,
    /// The listener is gone this long after the drop (connections are refused).
    outage: Duration,
}

/// What the stand-in saw, shared by its connections.
struct Fake {
    fault: Option<Fault>,
    requests: AtomicU64,
    dropped: watch::Sender<bool>,
    logins_after_drop: AtomicU64,
    acked_after_drop: AtomicU64,
}

impl Fake {
    fn new(fault: Option<Fault>) -> Arc<Fake> {
        Arc::new(Fake {
            fault,
            requests: AtomicU64::new(0),
            dropped: watch::channel(false).0,
            logins_after_drop: AtomicU64::new(0),
            acked_after_drop: AtomicU64::new(0),
        })
    }
}

/// Completes once the stand-in drops its connections.
async fn drop_signal(dropped: &mut watch::Receiver<bool>) {
    let _ = dropped.wait_for(|d| *d).await;
}

/// Serves on `listener`; after the drop, no listener for the fault's outage, then the same
/// address again.
async fn serve(listener: TcpListener, fake: Arc<Fake>) {
    let addr = listener.local_addr().unwrap();
    let mut listener = listener;
    let mut dropped = fake.dropped.subscribe();
    let mut account = 0;
    let mut outage_over = false;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { return };
                account += 1;
                tokio::spawn(connection(tcp, account, fake.clone()));
            }
            _ = drop_signal(&mut dropped), if !outage_over => {
                drop(listener);
                tokio::time::sleep(fake.fault.map_or(Duration::ZERO, |f| f.outage)).await;
                listener = TcpListener::bind(addr).await.unwrap();
                outage_over = true;
            }
        }
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

/// `received` as the gateway writes it: the new order's id (place) or the one named.
fn received(order_id: u64) -> serde_json::Value {
    serde_json::json!({"status": "received", "order_id": order_id, "commands": 1})
}

async fn connection(tcp: tokio::net::TcpStream, account: u64, fake: Arc<Fake>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let mut dropped = fake.dropped.subscribe();
    let after_drop = *dropped.borrow();
    let mut live: HashSet<u64> = HashSet::new();
    let mut n = 0u64;
    let mut seq = 0u64;
    loop {
        let msg = tokio::select! {
            biased;
            _ = drop_signal(&mut dropped), if !after_drop => {
                let close = fake.fault.and_then(|f| f.close);
                if let Some(code) = close {
                    // As the gateway does: the `status` push, then the close frame.
                    let status = Push::Status {
                        status: ConnectionStatus::Abuse,
                        message: "ignoring the rate limit".into(),
                        frames_read: None,
                        last_request_id: None,
                    };
                    let _ = ws
                        .send(Message::text(serde_json::to_string(&status).unwrap()))
                        .await;
                    let frame = CloseFrame {
                        code: CloseCode::from(code),
                        reason: "abuse".into(),
                    };
                    let _ = ws.send(Message::Close(Some(frame))).await;
                    // As the gateway does: read on until the client's end, so that what it
                    // still sent does not turn the close into a reset that loses the frame.
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                }
                return; // the socket ends here
            }
            msg = ws.next() => msg,
        };
        let Some(Ok(msg)) = msg else { return };
        let Message::Text(text) = msg else { continue };
        let req = parse_request(&text).expect("the generator sends valid requests");
        let id = req.id;
        seq += 1;
        if !matches!(req.body, RequestBody::Login(_) | RequestBody::CancelAll(_)) {
            let all = fake.requests.fetch_add(1, Ordering::Relaxed) + 1;
            if fake.fault.is_some_and(|f| f.after == all) {
                fake.dropped.send_replace(true);
            }
        }
        let out: Vec<Message> = match req.body {
            RequestBody::Login(l) => {
                assert_eq!(l.signature.len(), 64, "hex HMAC-SHA256");
                if after_drop {
                    fake.logins_after_drop.fetch_add(1, Ordering::Relaxed);
                }
                match fake.fault.and_then(|f| f.refuse_logins) {
                    Some(code) if after_drop => {
                        vec![respond(id, None, Some(ErrorBody::new(code, "refused")))]
                    }
                    _ => vec![respond(
                        id,
                        Some(serde_json::json!({"account_id": account})),
                        None,
                    )],
                }
            }
            // The generator's end-of-run cleanup; never shed here, so the test can count it.
            RequestBody::CancelAll(_) => vec![respond(
                id,
                Some(serde_json::json!({"status": "received", "commands": 8})),
                None,
            )],
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
                    respond(id, Some(received(order_id)), None),
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
                    respond(id, Some(received(order_id)), None),
                    push(&c.pair, seq, id, verdict),
                ]
            }
            RequestBody::Amend(a) => {
                let order_id = a.order_id.unwrap();
                let verdict = OrderUpdateKind::Amended {
                    order_id,
                    client_order_id: None,
                    price: a.price.clone().unwrap_or_else(|| "1".into()),
                    qty: a.qty.clone().unwrap_or_else(|| "1".into()),
                    filled_qty: "0".into(),
                    remaining_qty: "1".into(),
                    priority_kept: a.price.is_none(),
                };
                vec![
                    respond(id, Some(received(order_id)), None),
                    push(&a.pair, seq, id, verdict),
                ]
            }
            other => panic!("unexpected request {other:?}"),
        };
        if after_drop && out.len() > 1 {
            fake.acked_after_drop.fetch_add(1, Ordering::Relaxed);
        }
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

const CONNECTIONS: u64 = 8;

/// A fresh output directory with the accounts file; the generator's flags for it and `addr`.
fn generator(
    addr: std::net::SocketAddr,
    name: &str,
    extra: &[String],
) -> (PathBuf, loadtest::Config) {
    let (dir, args) = generator_args(addr, name, extra);
    (dir, loadtest::Config::parse_from(args))
}

/// The same as command-line arguments, the program's name first.
fn generator_args(
    addr: std::net::SocketAddr,
    name: &str,
    extra: &[String],
) -> (PathBuf, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("loadtest-fake-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let accounts: String = (1..=CONNECTIONS)
        .map(|i| format!("{{\"key_id\":\"k{i}\",\"secret\":\"s{i}\",\"account_id\":{i}}}\n"))
        .collect();
    let accounts_file = dir.join("accounts.jsonl");
    std::fs::write(&accounts_file, accounts).unwrap();
    let pairs = workspace_root().join("config/pairs.toml");
    let args = [
        "loadtest".to_owned(),
        format!("--url=ws://{addr}/ws"),
        format!("--accounts-file={}", accounts_file.display()),
        format!("--pairs-file={}", pairs.display()),
        format!("--out-dir={}", dir.display()),
        format!("--connections={CONNECTIONS}"),
        "--rate-per-min=60000".into(),
        "--warmup-s=1".into(),
        "--drain-timeout-s=5".into(),
        format!("--received-out={}", dir.join("received.jsonl").display()),
        "--quiet".into(),
    ];
    (dir, args.into_iter().chain(extra.iter().cloned()).collect())
}

/// The `--received-out` lines, each checked: a known pair, a trading kind, an order id.
fn received_lines(path: &Path) -> Vec<(u64, String, String)> {
    let pairs: BTreeSet<String> =
        infra::config::load_pairs_from(&workspace_root().join("config/pairs.toml"))
            .unwrap()
            .iter()
            .map(|p| p.symbol.clone())
            .collect();
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let order_id = v["order_id"].as_u64().unwrap_or_else(|| panic!("{l}"));
            let pair = v["pair"].as_str().unwrap().to_owned();
            let kind = v["kind"].as_str().unwrap().to_owned();
            assert!(pairs.contains(&pair), "{l}");
            assert!(["place", "cancel", "amend"].contains(&kind.as_str()), "{l}");
            (order_id, pair, kind)
        })
        .collect()
}

/// Every acknowledged command of every phase is one line of the file, and places name
/// distinct orders.
fn every_acknowledged_command_is_listed(report: &loadtest::Report, dir: &Path) {
    let lines = received_lines(&dir.join("received.jsonl"));
    let acknowledged: u64 = report.phases.iter().map(|p| p.acknowledged).sum();
    assert!(
        acknowledged > report.measured.acknowledged,
        "the warm-up's too"
    );
    assert_eq!(lines.len() as u64, acknowledged, "one line per `received`");
    let written = report
        .received_out
        .as_ref()
        .expect("--received-out was given");
    assert_eq!((written.lines, written.without_order_id), (acknowledged, 0));
    let places: Vec<u64> = lines
        .iter()
        .filter(|(_, _, kind)| kind == "place")
        .map(|(id, _, _)| *id)
        .collect();
    assert_eq!(places.iter().collect::<HashSet<_>>().len(), places.len());
    assert!(lines.iter().any(|(_, _, kind)| kind == "cancel"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_is_accounted_for_and_the_report_is_written() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, Fake::new(None)));

    let extra = [
        "--duration-s=2".to_owned(),
        "--arrival=poisson".into(),
        format!("--watch-pid=self={}", std::process::id()),
    ];
    let (dir, config) = generator(addr, "accounting", &extra);
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
    every_acknowledged_command_is_listed(&report, &dir);
    assert!(report.reconnect.is_none() && !report.interrupted);
    assert!(!report.summary().contains("reconnects"), "no --reconnect");
    // LOADTEST_KEEP_OUT=1 keeps the report and charts to look at.
    if std::env::var_os("LOADTEST_KEEP_OUT").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    } else {
        eprintln!("kept {}", dir.display());
    }
}

/// A gateway that drops every connection at once (its process killed: the sockets just end) and
/// is gone for a moment: with `--reconnect` each connection logs in again and goes on, what was
/// in flight is counted as connection closed, never lost, and every command acknowledged before
/// and after the drop is in `--received-out`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_reconnect_a_dropped_connection_logs_in_again_and_goes_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Fake::new(Some(Fault {
        // About half a second into the measured window (1,000 commands/s).
        after: 1_500,
        close: None,
        refuse_logins: None,
        outage: Duration::from_millis(300),
    }));
    tokio::spawn(serve(listener, fake.clone()));
    let extra = ["--duration-s=3".to_owned(), "--reconnect".into()];
    let (dir, config) = generator(addr, "reconnect", &extra);
    let report = loadtest::run(config).await.unwrap();
    eprintln!("{}", report.summary());

    let r = report.reconnect.clone().expect("--reconnect reports");
    assert!(
        r.reconnects >= CONNECTIONS,
        "each dropped connection came back: {r:?}"
    );
    assert!(r.gave_up.is_empty(), "{r:?}");
    assert_eq!(
        report.phases.iter().map(|p| p.reconnects).sum::<u64>(),
        r.reconnects,
        "each reconnect in its phase"
    );
    assert!(
        r.no_client_connected_s > 0.0,
        "every connection was down during the outage: {r:?}"
    );
    assert!(
        fake.acked_after_drop.load(Ordering::Relaxed) > 0,
        "commands acknowledged after the drop"
    );
    let lost: u64 = report.phases.iter().map(|p| p.lost + p.timeouts).sum();
    assert_eq!(
        (lost, report.lost_all_phases),
        (0, 0),
        "nothing lost or waited for"
    );
    let closed: u64 = report.phases.iter().map(|p| p.connection_closed).sum();
    assert!(closed > 0, "slots due during the outage were not sent");
    for p in &report.phases {
        assert!(p.closed_in_flight <= p.connection_closed, "{p:?}");
    }
    let m = &report.measured;
    let bucketed = m.accepted
        + m.errors.values().sum::<u64>()
        + m.timeouts
        + m.lost
        + m.unread_at_close
        + m.generator_behind
        + m.connection_closed;
    assert_eq!(bucketed, m.offered, "every command in exactly one bucket");
    every_acknowledged_command_is_listed(&report, &dir);
    let summary = report.summary();
    assert!(
        summary.contains(&format!("reconnects: {} (", r.reconnects)),
        "{summary}"
    );
    let cleanup = report.cleanup.clone().unwrap();
    assert_eq!(
        cleanup.accepted as u64, CONNECTIONS,
        "cleanup on the new sockets"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A close the API calls final (abuse, 1008), or logins refused for a wrong key after a drop:
/// the connection does not loop. It gives up (at once, or after 3 refusals) and says so, and
/// the run ends as scheduled with the rest counted as connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_close_or_refused_logins_end_the_connection_without_a_loop() {
    for (name, close, refuse, logins_after, why) in [
        ("abuse", Some(1008), None, 0, "close 1008: abuse"),
        (
            "refused",
            None,
            Some(ErrorCode::UnknownKey),
            CONNECTIONS * loadtest::redial::LOGIN_REFUSALS_MAX as u64,
            "login refused 3 times in a row (unknown_key)",
        ),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Fake::new(Some(Fault {
            after: 300,
            close,
            refuse_logins: refuse,
            outage: Duration::ZERO,
        }));
        tokio::spawn(serve(listener, fake.clone()));
        let extra = ["--duration-s=3".to_owned(), "--reconnect".into()];
        let (dir, config) = generator(addr, name, &extra);
        let report = loadtest::run(config).await.unwrap();
        let r = report.reconnect.clone().expect("--reconnect reports");
        assert_eq!(r.reconnects, 0, "{name}: {r:?}");
        assert_eq!(
            r.gave_up.get(why).copied(),
            Some(CONNECTIONS),
            "{name}: every connection gave up: {r:?}"
        );
        assert_eq!(
            fake.logins_after_drop.load(Ordering::Relaxed),
            logins_after,
            "{name}: logins after the drop"
        );
        assert!(
            report
                .summary()
                .contains(&format!("gave up: {why} x{CONNECTIONS}"))
        );
        assert_eq!(report.lost_all_phases, 0, "{name}");
        assert!(report.measured.connection_closed > 0, "{name}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// The binary, interrupted (SIGINT) in the middle of a long run: the file of acknowledged
/// commands was being written while it ran, and at the end holds every one the report counts;
/// the report says it was interrupted, and the exit code is 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_generator_still_lists_every_acknowledged_command() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, Fake::new(None)));
    let (dir, args) = generator_args(addr, "interrupt", &["--duration-s=600".to_owned()]);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(&args[1..])
        .stdout(std::fs::File::create(dir.join("stdout.txt")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let file = dir.join("received.jsonl");
    let written_while_running = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let lines = std::fs::read_to_string(&file).map_or(0, |t| t.lines().count());
            if lines >= 500 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        written_while_running.is_ok(),
        "the file grows during the run"
    );
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the interrupted generator exits")
        .unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["interrupted"], true);
    let acknowledged: u64 = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["acknowledged"].as_u64().unwrap())
        .sum();
    let lines = received_lines(&file);
    assert_eq!(lines.len() as u64, acknowledged);
    assert_eq!(report["received_out"]["lines"].as_u64(), Some(acknowledged));
    let stdout = std::fs::read_to_string(dir.join("stdout.txt")).unwrap();
    assert!(stdout.contains("interrupted"), "{stdout}");
    std::fs::remove_dir_all(&dir).ok();
}
