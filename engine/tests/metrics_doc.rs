//! A freshly started engine exports every series `docs/METRICS.md` documents for it, per owned
//! pair, before it has applied anything; and nothing undocumented. Its own test binary, so the
//! process-wide recorder is fresh.

mod common;

use std::time::Duration;

use common::{World, free_local_addr, sample, scrape};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_scrape_shows_exactly_the_documented_metrics() {
    let Some(stack) = common::stack("engine metrics doc") else {
        return;
    };
    let world = World::new(stack, "metricsdoc").await;
    let metrics_addr = free_local_addr();
    let mut config = world.config();
    config.metrics_addr = Some(metrics_addr);
    config.static_pairs = Some(vec!["BTC-EUR".into(), "ETH-EUR".into()]);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let engine = tokio::spawn(engine::run(config, shutdown.clone()));
    let text = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(Ok(_)) = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(metrics_addr),
            )
            .await
            {
                return scrape(metrics_addr).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the metrics endpoint answers");
    let doc = include_str!("../../docs/METRICS.md");
    let documented = infra::metrics_doc::documented(doc, "Engine");
    assert!(documented.len() >= 10, "METRICS.md read: {documented:?}");
    let diff = infra::metrics_doc::differences(&documented, &infra::metrics_doc::exposed(&text));
    assert!(diff.is_empty(), "{}\n--- scrape:\n{text}", diff.join("\n"));
    for pair in ["BTC-EUR", "ETH-EUR"] {
        assert_eq!(
            sample(&text, "engine_actor_restarts_total", pair),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "engine_poison_records_total", pair),
            Some(0.0)
        );
    }
    assert_eq!(
        sample(&text, "engine_actor_restarts_total", "SOL-EUR"),
        None,
        "a pair this process does not own has no series"
    );
    shutdown.cancel();
    engine
        .await
        .expect("engine task")
        .expect("engine stops cleanly");
    world.drop_schema().await;
}
