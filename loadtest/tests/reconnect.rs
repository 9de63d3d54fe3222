//! `--reconnect` and `--received-out` against the real thing: the gateway (in-process, on a
//! fixed address) is stopped mid-run and a new one started on the same address; the generator
//! logs in again on every connection and goes on trading. Every command acknowledged before and
//! after is in the received file, and nothing ends as lost. Nothing here waits on a clock: the
//! test moves on when the file or the database shows what it waits for, and then interrupts the
//! run (the path a SIGINT takes).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use common::{System, stop_gateway, unique};

const CONNECTIONS: usize = 6;
/// Command ids carry the gateway's id above bit 47 (gateway/src/ids.rs).
const GATEWAY_SHIFT: u32 = 47;
const FIRST_GATEWAY: u8 = 2;
const SECOND_GATEWAY: u8 = 3;

/// The received file's lines as (order_id, kind); checks each line's shape on the way.
fn received(path: &Path, symbols: &HashSet<String>) -> Vec<(u64, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        // The writer may be in the middle of a line while the run goes on.
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let pair = v["pair"].as_str().expect("a pair");
            assert!(symbols.contains(pair), "{v}");
            let kind = v["kind"].as_str().expect("a kind").to_owned();
            assert!(["place", "cancel", "amend"].contains(&kind.as_str()), "{v}");
            (v["order_id"].as_u64().expect("an order id"), kind)
        })
        .collect()
}

/// Places in the file minted by each gateway.
fn places_by_gateway(lines: &[(u64, String)]) -> BTreeMap<u8, usize> {
    let mut by = BTreeMap::new();
    for (id, kind) in lines {
        if kind == "place" {
            *by.entry((id >> GATEWAY_SHIFT) as u8).or_default() += 1;
        }
    }
    by
}

/// Polls `ready` every 100 ms for at most `limit`; panics with `what` if it never holds.
async fn wait_for(what: &str, limit: Duration, mut ready: impl AsyncFnMut() -> bool) {
    let waited = tokio::time::timeout(limit, async {
        while !ready().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what} did not happen within {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_mid_run_is_reconnected_and_every_ack_is_listed() {
    let Some(sys) = System::start("loadtest reconnect", CONNECTIONS).await else {
        return;
    };
    let symbols: HashSet<String> = sys.pairs.iter().map(|p| p.symbol.clone()).collect();
    let (gw, gw_stop) = sys
        .gateway("127.0.0.1:0".parse().unwrap(), FIRST_GATEWAY)
        .await;
    let addr = gw.local_addr();

    let out = std::env::temp_dir().join(unique("loadtest_reconnect"));
    std::fs::create_dir_all(&out).unwrap();
    let received_file = out.join("received.jsonl");
    let config = loadtest::Config::parse_from([
        "loadtest".to_owned(),
        format!("--url=ws://{addr}/ws"),
        format!(
            "--accounts-file={}",
            sys.accounts_file(&out, 0..CONNECTIONS).display()
        ),
        format!("--pairs-file={}", sys.pairs_file.display()),
        format!("--out-dir={}", out.display()),
        format!("--connections={CONNECTIONS}"),
        "--rate-per-min=6000".into(),
        "--warmup-s=1".into(),
        // Longer than the test needs: it interrupts the run once it has seen enough.
        "--duration-s=600".into(),
        "--drain-timeout-s=30".into(),
        "--reconnect".into(),
        format!("--received-out={}", received_file.display()),
        "--quiet".into(),
    ]);
    let (interrupt, interrupted) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(loadtest::run_until(config, async {
        let _ = interrupted.await;
    }));

    // Commands acknowledged by the first gateway, then it goes away under load.
    wait_for(
        "places through the first gateway",
        Duration::from_secs(60),
        async || {
            places_by_gateway(&received(&received_file, &symbols))
                .get(&FIRST_GATEWAY)
                .is_some_and(|n| *n >= 50)
        },
    )
    .await;
    stop_gateway(gw, gw_stop).await;

    // A new gateway on the same address; every connection comes back to it and trades: each
    // account has an order through it in PostgreSQL, and the file lists its places.
    let (gw, gw_stop) = sys.gateway(addr, SECOND_GATEWAY).await;
    let second_ids = i64::from(SECOND_GATEWAY) << GATEWAY_SHIFT;
    wait_for(
        "an order of every account through the second gateway",
        Duration::from_secs(90),
        async || {
            let accounts: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT account_id) FROM orders WHERE order_id >= $1",
            )
            .bind(second_ids)
            .fetch_one(&sys.pool)
            .await
            .unwrap();
            accounts == CONNECTIONS as i64
        },
    )
    .await;
    wait_for(
        "places through the second gateway in the file",
        Duration::from_secs(30),
        async || {
            places_by_gateway(&received(&received_file, &symbols))
                .get(&SECOND_GATEWAY)
                .is_some_and(|n| *n >= 50)
        },
    )
    .await;

    interrupt.send(()).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the interrupted run ends")
        .unwrap()
        .expect("the run succeeds");
    eprintln!("{}", report.summary());
    assert!(report.interrupted);

    let r = report.reconnect.clone().expect("--reconnect reports");
    assert!(
        r.reconnects >= CONNECTIONS as u64,
        "every connection logged in again: {r:?}"
    );
    assert!(r.gave_up.is_empty(), "{r:?}");
    assert_eq!(
        report.phases.iter().map(|p| p.reconnects).sum::<u64>(),
        r.reconnects
    );
    assert!(
        report
            .disconnects
            .keys()
            .any(|k| k.starts_with("close 1001")),
        "the first gateway drained and closed with 1001: {:?}",
        report.disconnects
    );

    // Every acknowledged command of every phase, from both gateways, is one line.
    let lines = received(&received_file, &symbols);
    let acknowledged: u64 = report.phases.iter().map(|p| p.acknowledged).sum();
    assert_eq!(lines.len() as u64, acknowledged, "one line per `received`");
    assert_eq!(
        report.received_out.as_ref().map(|w| w.lines),
        Some(acknowledged)
    );
    let by = places_by_gateway(&lines);
    assert_eq!(
        by.keys().copied().collect::<Vec<_>>(),
        [FIRST_GATEWAY, SECOND_GATEWAY],
        "{by:?}"
    );
    let places: Vec<u64> = lines
        .iter()
        .filter(|(_, k)| k == "place")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        places.iter().collect::<HashSet<_>>().len(),
        places.len(),
        "each place once"
    );

    // What was in flight at the drop is connection closed, never lost; every other command
    // was answered.
    for p in &report.phases {
        assert_eq!((p.lost, p.timeouts), (0, 0), "{}: {p:?}", p.phase);
        assert!(p.closed_in_flight <= p.connection_closed, "{p:?}");
    }
    assert_eq!(report.lost_all_phases, 0);
    let cleanup = report.cleanup.clone().expect("cleanup is on by default");
    assert_eq!(cleanup.accepted, CONNECTIONS, "{cleanup:?}");

    stop_gateway(gw, gw_stop).await;
    sys.stop().await;
    if std::env::var_os("LOADTEST_KEEP_OUT").is_none() {
        std::fs::remove_dir_all(&out).ok();
    } else {
        eprintln!("kept {}", out.display());
    }
}
