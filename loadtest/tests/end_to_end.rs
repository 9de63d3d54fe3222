//! A short load test against the real thing: the gateway and the engine in-process, the local
//! Kafka and PostgreSQL (`scripts/stack up; eval "$(scripts/stack env)"`), fresh topics and a
//! fresh schema. It checks accounting, not speed: every command answered, none lost; and that
//! the server side read from `/metrics` lands in the report.

mod common;

use std::path::Path;
use std::time::Duration;

use clap::Parser;
use common::{System, stop_gateway, unique};

const CONNECTIONS: usize = 12;

/// The generator given `--metrics-url` reports the server side per second, per phase and in
/// its summary; the other says in one line that it has none.
fn server_side_is_reported(with: &loadtest::Report, without: &loadtest::Report, out: &Path) {
    use loadtest::server::delta::VERDICT;
    let server = with
        .server
        .as_ref()
        .expect("a --metrics-url run has a server side");
    let m = &server.measured;
    assert!(m.seconds > 0, "{server:?}");
    let verdicts = m.hops.get(VERDICT).map_or(0, |h| h.count);
    assert!(verdicts > 0, "{server:?}");
    for hop in [
        "gateway_kafka_ack_seconds",
        "engine_record_age_seconds",
        "engine_batch_wait_seconds",
        "gateway_events_age_seconds",
    ] {
        assert!(m.hops.get(hop).is_some_and(|h| h.count > 0), "{hop}: {m:?}");
    }
    let seconds = &server.series;
    assert!(
        seconds
            .iter()
            .all(|s| s.phase == "warmup" || s.phase == "measure"),
        "{seconds:?}"
    );
    assert!(
        seconds
            .iter()
            .any(|s| s.hops.get(VERDICT).is_some_and(|h| h.mean_ms.is_some())),
        "a second with a verdict mean"
    );
    assert!(
        seconds.iter().any(|s| s.consumer_lag_records.is_some()),
        "the engine's lag gauge is read"
    );
    let summary = with.summary();
    let line = summary
        .lines()
        .find(|l| l.trim_start().starts_with("server (/metrics)"))
        .unwrap_or_else(|| panic!("no server line in\n{summary}"));
    let holder = m.hops_by_time()[0].0;
    let holder = holder.strip_suffix("_seconds").unwrap_or(holder);
    assert!(
        line.contains(&format!("the time is in {holder} ")),
        "{line}"
    );
    assert!(out.join("gen0").join("server_latency.png").exists());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("gen0").join("report.json")).unwrap())
            .unwrap();
    assert!(json["server"]["measured"]["hops"][VERDICT]["mean_ms"].is_number());
    assert!(json["server"]["series"][0]["t_s"].is_number());

    assert!(without.server.is_none());
    let none: Vec<_> = without
        .summary()
        .lines()
        .filter(|l| l.trim_start().starts_with("server"))
        .map(str::to_owned)
        .collect();
    assert_eq!(none.len(), 1, "{none:?}");
    assert!(none[0].contains("no --metrics-url"), "{none:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_against_gateway_and_engine_loses_nothing() {
    let Some(sys) = System::start("loadtest end to end", CONNECTIONS).await else {
        return;
    };
    let (gw, gw_stop) = sys.gateway("127.0.0.1:0".parse().unwrap(), 2).await;
    let addr = gw.local_addr();

    // Two generators side by side against the one gateway, as N load-generator tasks run in
    // AWS; their reports are then merged into one, which must account for every command.
    let out = std::env::temp_dir().join(unique("loadtest_e2e"));
    let generator = |half: usize| {
        let dir = out.join(format!("gen{half}"));
        std::fs::create_dir_all(&dir).unwrap();
        let accounts =
            sys.accounts_file(&dir, half * CONNECTIONS / 2..(half + 1) * CONNECTIONS / 2);
        // The first generator also scrapes the gateway's /metrics, which in this one process
        // holds the engine's series too; the second reads the client side only.
        let metrics_url = format!("--metrics-url=http://{addr}/metrics");
        let config = loadtest::Config::parse_from(
            [
                "loadtest".to_owned(),
                format!("--url=ws://{addr}/ws"),
                format!("--accounts-file={}", accounts.display()),
                format!("--pairs-file={}", sys.pairs_file.display()),
                format!("--out-dir={}", dir.display()),
                format!("--connections={}", CONNECTIONS / 2),
                "--rate-per-min=15000".into(),
                "--duration-s=5".into(),
                "--warmup-s=1".into(),
                "--drain-timeout-s=30".into(),
                format!("--seed={}", 1 + half),
                "--quiet".into(),
            ]
            .into_iter()
            .chain((half == 0).then_some(metrics_url)),
        );
        async move {
            tokio::time::timeout(Duration::from_secs(120), loadtest::run(config))
                .await
                .expect("the run ends")
                .expect("the run succeeds")
        }
    };
    let (first, second) = tokio::join!(generator(0), generator(1));
    for r in [&first, &second] {
        eprintln!("{}", r.summary());
        assert!(r.measured.offered > 0);
    }
    server_side_is_reported(&first, &second, &out);

    let reports = [0, 1].map(|half| out.join(format!("gen{half}")).join("report.json"));
    let merged = loadtest::merge::merge(&reports).expect("the two reports merge");
    eprintln!("{}", merged.summary());
    let m = &merged.measured;
    assert_eq!(m.offered, first.measured.offered + second.measured.offered);
    assert_eq!(
        m.accept_latency_ms.count,
        first.measured.accept_latency_ms.count + second.measured.accept_latency_ms.count,
        "the histograms add"
    );
    let p99s = [
        first.measured.accept_latency_ms.p99,
        second.measured.accept_latency_ms.p99,
    ];
    let (low, high) = (p99s[0].min(p99s[1]), p99s[0].max(p99s[1]));
    assert!(
        (low..=high).contains(&m.accept_latency_ms.p99),
        "the merged p99 {} lies between the generators' {p99s:?}",
        m.accept_latency_ms.p99
    );

    assert_eq!(
        (m.lost, m.timeouts, merged.lost_all_phases),
        (0, 0, 0),
        "every command answered"
    );
    assert_eq!(
        (m.generator_behind, m.connection_closed, m.unread_at_close),
        (0, 0, 0),
        "(generator behind, connection closed, unread at close)"
    );
    assert_eq!(m.shed, 0, "500 commands/s is far below every limit");
    assert_eq!(m.acknowledged, m.offered, "each command got its `received`");
    assert_eq!(m.verdicts, m.offered, "and the engine's verdict");
    assert!(m.accepted > m.offered / 2, "{:?}", m.errors);
    assert!(m.trades > 0, "marketable orders trade with resting ones");
    assert!(reports.iter().all(|r| r.exists()));
    assert!(out.join("gen0").join("throughput.png").exists());

    // The run leaves no book behind: each connection's cancel_all was accepted, and once the
    // engine has applied them PostgreSQL holds no open order of these accounts.
    for report in [&first, &second] {
        let cleanup = report.cleanup.clone().expect("cleanup is on by default");
        assert_eq!(
            (cleanup.connections, cleanup.accepted),
            (CONNECTIONS / 2, CONNECTIONS / 2),
            "{cleanup:?}"
        );
    }
    let open = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let open: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'open'")
                .fetch_one(&sys.pool)
                .await
                .unwrap();
            if open == 0 {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(
        open,
        Ok(0),
        "every resting order is cancelled after the run"
    );

    stop_gateway(gw, gw_stop).await;
    sys.stop().await;
    std::fs::remove_dir_all(&out).ok();
}
