//! A freshly started account stage exports every series `docs/METRICS.md` documents for it, per
//! owned shard, before it has applied anything; and nothing undocumented; and answers /healthz. Its own test binary,
//! so the process-wide recorder is fresh.

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_scrape_shows_exactly_the_documented_metrics() {
    let Some(world) = common::World::new("accounts_metrics").await else {
        return;
    };
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut config = accounts::Config::new(
        world.stack.brokers.clone(),
        world.database_url.clone(),
        world.registry.clone(),
    );
    config.accounts_topic = world.accounts_topic.clone();
    config.orders_topic = world.orders_topic.clone();
    config.account_events_topic = world.account_events_topic.clone();
    config.static_shards = Some(vec![1]);
    config.metrics_addr = Some(addr);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stage = tokio::spawn(accounts::run(config, shutdown.clone()));
    let url = format!("http://{addr}/metrics");
    let text = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(text) = scrape(&url).await {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the metrics endpoint answers");
    let doc = include_str!("../../docs/METRICS.md");
    let documented = infra::metrics_doc::documented(doc, "Accounts");
    assert!(documented.len() >= 8, "METRICS.md read: {documented:?}");
    let diff = infra::metrics_doc::differences(&documented, &infra::metrics_doc::exposed(&text));
    assert!(diff.is_empty(), "{}\n--- scrape:\n{text}", diff.join("\n"));
    assert!(
        text.contains("accounts_refused_total{shard=\"1\"} 0"),
        "{text}"
    );
    assert!(
        !text.contains("shard=\"0\""),
        "a shard this process does not own has no series: {text}"
    );
    // Beside /metrics, the health check ECS and a load balancer ask: 503 "not serving" while
    // the stage starts (and once it drains), then 200 "ok".
    let healthz = format!("http://{addr}/healthz");
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match scrape(&healthz).await.as_deref() {
                Ok("ok\n") => return,
                Ok("not serving\n") | Err(_) => {}
                Ok(other) => panic!("/healthz answered {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("/healthz says ok once the stage runs");
    shutdown.cancel();
    stage.await.unwrap().unwrap();
    world.drop_schema().await;
}

/// One plain HTTP/1.1 GET, read to the end.
async fn scrape(url: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    body.ok_or_else(|| std::io::Error::other("no HTTP body"))
}
