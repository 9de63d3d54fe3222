//! The web view's two server-side pieces (`web/`, docs/API.md "Operator endpoints"): its built
//! files served at `/` from `GW_WEB_DIR`, so the page and `/ws` share one origin, and
//! `GET /ops/metrics`, the Prometheus text of this gateway and of `GW_OPS_METRICS_URLS` in one
//! same-origin JSON answer, from which the page's operations strip computes its rates.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One scrape of another service; a slow one is reported as such, never waited for longer.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(1_000);
/// A service's metrics text is tens of KiB; anything far above that is not a metrics page.
const RESPONSE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// One source's text, or why it could not be read.
#[derive(Debug, Serialize)]
pub struct Source {
    /// `gateway` for this process, else the URL.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct OpsMetrics {
    /// Milliseconds since the epoch when the answer was put together (the page's rate clock).
    pub ts_ms: u64,
    pub sources: Vec<Source>,
}

/// The gateway's own text, then each URL's (read at once, each within [`SCRAPE_TIMEOUT`]).
pub async fn ops_metrics(own: Option<String>, urls: &[String]) -> Response {
    let mut sources = vec![Source {
        name: "gateway".to_owned(),
        error: own
            .is_none()
            .then(|| "no metrics recorder in this process".to_owned()),
        text: own,
    }];
    let scraped = futures_util::future::join_all(urls.iter().map(|url| async move {
        match tokio::time::timeout(SCRAPE_TIMEOUT, get(url)).await {
            Ok(Ok(text)) => (Some(text), None),
            Ok(Err(e)) => (None, Some(e)),
            Err(_) => (None, Some(format!("no answer within {SCRAPE_TIMEOUT:?}"))),
        }
    }))
    .await;
    for (url, (text, error)) in urls.iter().zip(scraped) {
        sources.push(Source {
            name: url.clone(),
            text,
            error,
        });
    }
    let ts_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    (StatusCode::OK, Json(OpsMetrics { ts_ms, sources })).into_response()
}

/// `http://host:port/path` into its address and path (plain HTTP only: these are the
/// services' own metrics listeners, beside the gateway).
fn split_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are read"))?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// One plain HTTP/1.0 GET (so no server answers in chunks), as the load generator's scraper
/// does: the body is what follows the head until the server closes.
async fn get(url: &str) -> Result<String, String> {
    let (authority, path) = split_url(url)?;
    let mut stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connecting to {authority}: {e}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: text/plain\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("writing the request: {e}"))?;
    let mut buf = Vec::new();
    (&mut stream)
        .take(RESPONSE_BYTES_MAX + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    if buf.len() as u64 > RESPONSE_BYTES_MAX {
        return Err(format!("answer above {RESPONSE_BYTES_MAX} bytes"));
    }
    let text = String::from_utf8(buf).map_err(|_| "answer is not UTF-8".to_owned())?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "answer without an HTTP head".to_owned())?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answered {status:?}"));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:9100/metrics"),
            Ok(("127.0.0.1:9100", "/metrics"))
        );
        assert_eq!(split_url("http://h:1"), Ok(("h:1", "/")));
        assert!(split_url("https://h:1/metrics").is_err());
    }

    #[tokio::test]
    async fn an_unreachable_source_is_named_with_its_error() {
        // Port 9 (discard) on loopback: nothing listens there.
        let urls = vec!["http://127.0.0.1:9/metrics".to_owned()];
        let response = ops_metrics(Some("x 1\n".to_owned()), &urls).await;
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["sources"][0]["name"], "gateway");
        assert_eq!(v["sources"][0]["text"], "x 1\n");
        assert_eq!(v["sources"][1]["name"], "http://127.0.0.1:9/metrics");
        assert!(
            v["sources"][1]["error"]
                .as_str()
                .unwrap()
                .contains("connecting")
        );
    }
}
