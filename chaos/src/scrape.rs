//! The services' `/metrics` (Prometheus text), read over plain HTTP/1.0: the suite decides when a
//! service has recovered from what the service itself reports.

use std::time::Duration;

/// GET `http://host:port/path`: (status, body). Errors and timeouts are `None`.
pub async fn get(url: &str) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    infra::http::request(
        host,
        "GET",
        &format!("/{path}"),
        None,
        Duration::from_secs(2),
    )
    .await
}

/// Every sample of `name` (any labels), skipping `name_sum`, `name_count` and other names that
/// merely start with it.
pub fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = f64> + 'a {
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        line.rsplit(' ').next()?.parse().ok()
    })
}

pub fn sum(text: &str, name: &str) -> f64 {
    samples(text, name).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE engine_paused gauge\n\
        engine_paused{pair=\"BTC-EUR\"} 0\n\
        engine_paused{pair=\"ETH-EUR\"} 1\n\
        engine_paused_total 7\n\
        engine_consumer_lag_records{pair=\"BTC-EUR\"} 12\n\
        accounts_lines_total{shard=\"0\"} 3\n\
        accounts_lines_total{shard=\"1\"} 4\n\
        gateway_verdict_seconds_count 9\n\
        gateway_verdict_seconds{quantile=\"0.5\"} 0.25\n";

    #[test]
    fn samples_match_the_exact_name_with_or_without_labels() {
        assert_eq!(sum(TEXT, "engine_paused"), 1.0);
        assert_eq!(sum(TEXT, "accounts_lines_total"), 7.0);
        assert_eq!(sum(TEXT, "gateway_verdict_seconds"), 0.25);
        assert_eq!(samples(TEXT, "no_such_metric").count(), 0);
    }
}
