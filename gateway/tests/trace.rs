//! One order placed through a real WebSocket client is one trace in the real trace store
//! (Jaeger, `scripts/stack up --observe`), holding spans from the gateway, the account stage
//! (when it runs) and the engine processes, each correctly parented, ending in the answer
//! (docs/ARCHITECTURE.md, "Traces"); and each process's JSON log names the trace, the pair,
//! the account and the order in its `command` line.
//!
//! The gateway, the account stage and the engine run as their own processes (the built
//! binaries), exporting over OTLP/HTTP to the local Jaeger; the test reads the trace back from
//! Jaeger's query API. It needs
//! `JAEGER_QUERY_URL` and `OTEL_EXPORTER_OTLP_ENDPOINT` (`scripts/stack env` prints both while
//! Jaeger runs), so it is ignored by a plain `cargo test` and run by `scripts/test`'s `trace`
//! step: `cargo test -p gateway --test trace -- --ignored`.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Another workspace binary beside this crate's gateway binary (`cargo build --bins` builds
/// them all).
fn sibling_bin(name: &str) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_gateway")).with_file_name(name);
    assert!(
        bin.exists(),
        "{} is missing: build the binaries first (cargo build --bins)",
        bin.display()
    );
    bin
}

/// Starts `bin` with JSON logs and the `command` lines on, its log in `log`.
fn spawn(bin: PathBuf, args: &[&str], envs: &[(&str, String)], log: &std::path::Path) -> Child {
    let file = std::fs::File::create(log).expect("a log file");
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn,command=debug")
        .env("LOG_FORMAT", "json")
        // Spans leave the batch processor within a second instead of five.
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .stdout(file.try_clone().expect("a log file"))
        .stderr(file)
        .kill_on_drop(true);
    cmd.spawn().expect("the binary starts")
}

/// The JSON `command` lines of a log that name `trace_id`.
fn command_lines_of(log: &std::path::Path, trace_id: &str) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "command" && v["trace_id"] == trace_id)
        .collect()
}

/// GET over HTTP/1.0 (no chunked answer to decode): (status, body).
async fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = TcpStream::connect(host).await?;
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Ok((status, body.unwrap_or_default()))
}

#[derive(Debug, Clone)]
struct SpanView {
    id: String,
    name: String,
    service: String,
    parent: Option<String>,
    start_us: u64,
    duration_us: u64,
}

/// The trace's spans as Jaeger's query API returns them (its JSON model: `data[0].spans`, each
/// with `references` and a `processID` naming `processes[..].serviceName`).
fn spans_of(trace: &Value) -> Vec<SpanView> {
    let processes = &trace["processes"];
    trace["spans"]
        .as_array()
        .map(|spans| {
            spans
                .iter()
                .map(|s| SpanView {
                    id: s["spanID"].as_str().unwrap_or_default().to_owned(),
                    name: s["operationName"].as_str().unwrap_or_default().to_owned(),
                    service: processes[s["processID"].as_str().unwrap_or_default()]["serviceName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    parent: s["references"].as_array().and_then(|refs| {
                        refs.iter()
                            .find(|r| r["refType"] == "CHILD_OF")
                            .and_then(|r| r["spanID"].as_str().map(str::to_owned))
                    }),
                    start_us: s["startTime"].as_u64().unwrap_or(0),
                    duration_us: s["duration"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The spans of one order's trace: (name, service, parent's name).
fn expected(stage: bool) -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    let mut spans = vec![
        ("gateway.command", "gateway", None),
        ("gateway.produce", "gateway", Some("gateway.command")),
    ];
    // Across Kafka: from the gateway, or through the account shard that reserved for it.
    let engine_parent = if stage {
        spans.push(("accounts.command", "accounts", Some("gateway.command")));
        "accounts.command"
    } else {
        "gateway.command"
    };
    spans.extend([
        ("engine.command", "engine", Some(engine_parent)),
        ("engine.match", "engine", Some("engine.command")),
        ("engine.publish", "engine", Some("engine.command")),
        ("engine.commit", "engine", Some("engine.command")),
        // Back across Kafka.
        ("gateway.answer", "gateway", Some("engine.command")),
    ]);
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Jaeger (scripts/stack up --observe); run by scripts/test's trace step"]
async fn one_order_is_one_trace_across_the_gateway_and_the_engine() {
    one_order_traced(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Jaeger (scripts/stack up --observe); run by scripts/test's trace step"]
async fn one_order_is_one_trace_through_the_account_stage() {
    one_order_traced(true).await;
}

async fn one_order_traced(stage: bool) {
    let Some(env) = env() else {
        return;
    };
    let (Ok(jaeger), Ok(otlp)) = (
        std::env::var("JAEGER_QUERY_URL"),
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("JAEGER_QUERY_URL and OTEL_EXPORTER_OTLP_ENDPOINT must be set in CI");
        }
        eprintln!("SKIPPED: no Jaeger (scripts/stack up --observe; eval \"$(scripts/stack env)\")");
        return;
    };

    // A schema and topics of its own, as the other gateway tests have.
    let (schema, db_url, pool) = fresh_schema(&env, "test_trace", 2).await;
    // Ed25519: the spawned gateway needs no key-encryption key for it.
    let keys = gateway::provision::NewKeys::Ed25519Generated;
    let creds = gateway::provision::provision(&pool, 1, "t", &keys)
        .await
        .unwrap();
    let pairs = registry();
    let orders_topic = unique("orders_tr");
    let events_topic = unique("events_tr");
    let accounts_topic = unique("accounts_tr");
    let account_events_topic = unique("account_events_tr");
    const SHARDS: u32 = 2;
    let admin = std::sync::Arc::new(infra::kafka::admin_client(&env.brokers).unwrap());
    let mut topics = vec![(&orders_topic, pairs.len()), (&events_topic, pairs.len())];
    if stage {
        topics.push((&accounts_topic, SHARDS as usize));
        topics.push((&account_events_topic, SHARDS as usize));
    }
    for (topic, partitions) in topics {
        infra::kafka::ensure_topic(&admin, &env.brokers, topic, partitions, &[])
            .await
            .unwrap();
    }
    let logs = std::env::temp_dir().join(unique("trace_logs"));
    std::fs::create_dir_all(&logs).unwrap();
    let log = |name: &str| logs.join(format!("{name}.log"));

    let common_env = [
        ("KAFKA_BROKERS", env.brokers.clone()),
        ("DATABASE_URL", db_url.clone()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
    ];
    let mut engine_env = common_env.to_vec();
    engine_env.extend([
        ("ORDERS_TOPIC", orders_topic.clone()),
        ("EVENTS_TOPIC", events_topic.clone()),
        ("ENGINE_GROUP_ID", format!("g_{schema}")),
        ("METRICS_ADDR", format!("127.0.0.1:{}", free_port())),
    ]);
    let gw_port = free_port();
    let mut gateway_env = common_env.to_vec();
    gateway_env.extend([
        ("GW_LISTEN", format!("127.0.0.1:{gw_port}")),
        ("GW_ORDERS_TOPIC", orders_topic.clone()),
        ("GW_EVENTS_TOPIC", events_topic.clone()),
    ]);
    let mut stage_proc = None;
    if stage {
        // The order must find its funds: a deposit ahead of it in the account's shard.
        let assets = accounts_core::AssetRegistry::from_pairs(&pairs);
        let funding = gateway::provision::parse_funding("EUR=1000", &assets).unwrap();
        let producer: rdkafka::producer::FutureProducer =
            infra::kafka::client_config(&env.brokers, "trace-test", infra::kafka::Role::Producer)
                .create()
                .unwrap();
        gateway::provision::fund(&producer, &accounts_topic, SHARDS, &creds, &funding)
            .await
            .unwrap();
        engine_env.push(("ENGINE_ACCOUNTS_TOPIC", accounts_topic.clone()));
        gateway_env.extend([
            ("GW_ACCOUNTS_TOPIC", accounts_topic.clone()),
            ("GW_ACCOUNT_EVENTS_TOPIC", account_events_topic.clone()),
        ]);
        let mut stage_env = common_env.to_vec();
        stage_env.extend([
            ("ACCOUNTS_TOPIC", accounts_topic.clone()),
            ("ORDERS_TOPIC", orders_topic.clone()),
            ("ACCOUNT_EVENTS_TOPIC", account_events_topic.clone()),
            ("METRICS_ADDR", format!("127.0.0.1:{}", free_port())),
        ]);
        stage_proc = Some(spawn(
            sibling_bin("accounts"),
            &["run"],
            &stage_env,
            &log("accounts"),
        ));
    }
    let _engine = spawn(sibling_bin("engine"), &[], &engine_env, &log("engine"));
    let _gateway = spawn(
        PathBuf::from(env!("CARGO_BIN_EXE_gateway")),
        &[],
        &gateway_env,
        &log("gateway"),
    );
    let addr: SocketAddr = format!("127.0.0.1:{gw_port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the gateway did not listen in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The client's own trace context, sampled: the command's trace continues it.
    let client_trace = format!("{:032x}", rand_u128());
    let client_span = format!("{:016x}", rand_u128() as u64 | 1);
    let traceparent = format!("00-{client_trace}-{client_span}-01");
    let mut c = Client::connect(addr).await;
    assert!(c.login(&creds[0]).await.get("result").is_some());
    c.send_text(
        json!({"id": 7, "method": "place", "traceparent": traceparent,
               "params": {"pair": "BTC-EUR", "side": "buy", "type": "limit",
                          "price": "100.00", "qty": "0.5"}})
        .to_string(),
    )
    .await;
    let r = c.response_to(7).await;
    assert_eq!(r["result"]["status"], "received", "{r}");
    assert_eq!(
        r["result"]["trace_id"], client_trace,
        "the answer names the trace: {r}"
    );
    let order_id = r["result"]["order_id"].as_u64().expect("an order id");
    let accepted = tokio::time::timeout(
        WAIT,
        c.push_where(|p| p["channel"] == "orders" && p["type"] == "accepted"),
    )
    .await
    .expect("the engine's verdict in time");
    assert_eq!(accepted["req_id"], 7);

    // The trace in Jaeger: every expected span, from the right service, with the right parent.
    let expected = expected(stage);
    let url = format!("{}/api/traces/{client_trace}", jaeger.trim_end_matches('/'));
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = match http_get(&url).await {
            Ok((200, body)) => serde_json::from_str::<Value>(&body)
                .map(|v| spans_of(&v["data"][0]))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        if expected.iter().all(|(n, _, _)| names.contains(n)) || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let by_name: HashMap<&str, &SpanView> = spans.iter().map(|s| (s.name.as_str(), s)).collect();
    for &(name, service, _) in &expected {
        let span = by_name
            .get(name)
            .unwrap_or_else(|| panic!("no {name} span in the trace: {spans:#?}"));
        assert_eq!(span.service, service, "{name}: {spans:#?}");
    }
    for &(name, _, parent) in &expected {
        let want = match parent {
            // The first span continues the client's.
            None => client_span.clone(),
            Some(p) => by_name[p].id.clone(),
        };
        assert_eq!(
            by_name[name].parent.as_deref(),
            Some(want.as_str()),
            "{name}'s parent should be {parent:?}: {spans:#?}"
        );
    }
    // It ends in the answer: the gateway's answer span starts after the match that decided it.
    let answer = by_name["gateway.answer"];
    let matched = by_name["engine.match"];
    assert!(
        answer.start_us >= matched.start_us,
        "the answer ({answer:?}) before the match ({matched:?})"
    );
    assert!(by_name["engine.command"].duration_us > 0);

    // Each process's log leads to the trace: a `command` line naming it, the pair, the
    // account and the order.
    let mut services = vec![("gateway", 2), ("engine", 1)];
    if stage {
        services.push(("accounts", 1));
    }
    for (service, lines) in services {
        let found = command_lines_of(&log(service), &client_trace);
        assert_eq!(
            found.len(),
            lines,
            "{service}'s command lines for the trace ({}): {found:#?}",
            log(service).display()
        );
        for line in found {
            assert_eq!(line["pair"], "BTC-EUR", "{service}: {line}");
            assert_eq!(line["account_id"], creds[0].account_id, "{service}: {line}");
            assert_eq!(line["order_id"], order_id, "{service}: {line}");
        }
    }
    drop(stage_proc);
    let _ = std::fs::remove_dir_all(&logs);
}

/// Random enough for ids no other test run shares.
fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut out = 0u128;
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .elapsed()
                .map_or(0, |d| d.as_nanos()),
        );
        out = (out << 64) | u128::from(h.finish());
    }
    out
}
