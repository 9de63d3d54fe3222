//! A freshly started gateway exports every series `docs/METRICS.md` documents for it, with the
//! documented labels, before any client has done anything; and nothing undocumented. Its own
//! test binary, so the process-wide recorder is fresh.

mod common;

use common::start;
use gateway::Limits;

#[tokio::test]
async fn the_first_scrape_shows_exactly_the_documented_metrics() {
    let Some(stack) = start(Limits::default(), 0).await else {
        return;
    };
    let (status, scrape) = stack.http_get("/metrics").await;
    assert_eq!(status, 200);
    let doc = include_str!("../../docs/METRICS.md");
    let documented = infra::metrics_doc::documented(doc, "Gateway");
    assert!(documented.len() > 20, "METRICS.md read: {documented:?}");
    let exposed = infra::metrics_doc::exposed(&scrape);
    let diff = infra::metrics_doc::differences(&documented, &exposed);
    assert!(
        diff.is_empty(),
        "{}\n--- scrape:\n{scrape}",
        diff.join("\n")
    );
    // Counters start at zero for every label value an alert may name.
    for series in [
        r#"gateway_shed_total{reason="account_rate"} 0"#,
        r#"gateway_disconnects_total{reason="abuse"} 0"#,
        r#"gateway_upgrades_refused_total{reason="origin"} 0"#,
        r#"gateway_errors_total{code="fok_cannot_fill"} 0"#,
        "gateway_undelivered_total 0",
    ] {
        assert!(scrape.lines().any(|l| l == series), "{series} missing");
    }
    stack.stop().await;
}
