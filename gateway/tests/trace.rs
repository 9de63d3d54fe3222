//! One order placed through a real WebSocket client is one trace in the real trace store
//! (Jaeger, `scripts/stack up --observe`), holding spans from both the gateway and the engine
//! processes, each correctly parented, ending in the answer (docs/ARCHITECTURE.md, "Traces").
//!
//! The gateway and the engine run as their own processes (the built binaries), exporting over
//! OTLP/HTTP to the local Jaeger; the test reads the trace back from Jaeger's query API. It needs
//! `JAEGER_QUERY_URL` and `OTEL_EXPORTER_OTLP_ENDPOINT` (`scripts/stack env` prints both while
//! Jaeger runs), so it is ignored by a plain `cargo test` and run by `scripts/test`'s `trace`
//! step: `cargo test -p gateway --test trace -- --ignored`.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
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

/// The engine binary beside this crate's gateway binary (`cargo build --bins` builds both).
fn engine_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_gateway")).with_file_name("engine");
    assert!(
        bin.exists(),
        "{} is missing: build the binaries first (cargo build --bins)",
        bin.display()
    );
    bin
}

fn spawn(bin: PathBuf, envs: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(bin);
    cmd.envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        // Spans leave the batch processor within a second instead of five.
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd.spawn().expect("the binary starts")
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

const EXPECTED: [(&str, &str); 7] = [
    ("gateway.command", "gateway"),
    ("gateway.produce", "gateway"),
    ("engine.command", "engine"),
    ("engine.match", "engine"),
    ("engine.publish", "engine"),
    ("engine.commit", "engine"),
    ("gateway.answer", "gateway"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Jaeger (scripts/stack up --observe); run by scripts/test's trace step"]
async fn one_order_is_one_trace_across_the_gateway_and_the_engine() {
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
    let creds = gateway::provision::provision(&pool, 1, "t").await.unwrap();
    let pairs = registry();
    let orders_topic = unique("orders_tr");
    let events_topic = unique("events_tr");
    let admin = std::sync::Arc::new(infra::kafka::admin_client(&env.brokers).unwrap());
    for topic in [&orders_topic, &events_topic] {
        infra::kafka::ensure_topic(&admin, &env.brokers, topic, pairs.len(), &[])
            .await
            .unwrap();
    }

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
    let _engine = spawn(engine_bin(), &engine_env);
    let _gateway = spawn(PathBuf::from(env!("CARGO_BIN_EXE_gateway")), &gateway_env);
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
    let accepted = tokio::time::timeout(
        WAIT,
        c.push_where(|p| p["channel"] == "orders" && p["type"] == "accepted"),
    )
    .await
    .expect("the engine's verdict in time");
    assert_eq!(accepted["req_id"], 7);

    // The trace in Jaeger: every expected span, from the right service, with the right parent.
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
        if EXPECTED.iter().all(|(n, _)| names.contains(n)) || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let by_name: HashMap<&str, &SpanView> = spans.iter().map(|s| (s.name.as_str(), s)).collect();
    for (name, service) in EXPECTED {
        let span = by_name
            .get(name)
            .unwrap_or_else(|| panic!("no {name} span in the trace: {spans:#?}"));
        assert_eq!(span.service, service, "{name}: {spans:#?}");
    }
    let id = |name: &str| by_name[name].id.clone();
    let parent = |name: &str| by_name[name].parent.clone();
    assert_eq!(
        parent("gateway.command"),
        Some(client_span.clone()),
        "continues the client's span"
    );
    assert_eq!(parent("gateway.produce"), Some(id("gateway.command")));
    assert_eq!(
        parent("engine.command"),
        Some(id("gateway.command")),
        "across Kafka"
    );
    for step in ["engine.match", "engine.publish", "engine.commit"] {
        assert_eq!(parent(step), Some(id("engine.command")), "{step}");
    }
    assert_eq!(
        parent("gateway.answer"),
        Some(id("engine.command")),
        "back across Kafka"
    );
    // It ends in the answer: the gateway's answer span starts after the match that decided it.
    let answer = by_name["gateway.answer"];
    let matched = by_name["engine.match"];
    assert!(
        answer.start_us >= matched.start_us,
        "the answer ({answer:?}) before the match ({matched:?})"
    );
    assert!(by_name["engine.command"].duration_us > 0);
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
