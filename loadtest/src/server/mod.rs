//! The server side of a run: each service's `/metrics` (docs/METRICS.md) scraped once a second
//! beside the load, and turned into the same per-second series as the client's figures: shed by
//! reason, consumer lag, and each hop of a command's path.
//!
//! A background task scrapes every URL once a second, all at once, and turns each service's
//! scrape into increases since its previous good one ([`delta`]): one point per round, on the
//! client series' clock and with its phase, kept apart from the client's seconds so that a slow
//! scrape never holds a client second back. Counters and summaries are cumulative, so a failed
//! scrape loses nothing: that round lists the service as missing, and its next good scrape
//! spans both. A scrape never stops the run.

pub mod delta;
pub mod phase;
pub mod prom;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use delta::{HopSecond, ServerPoint};
pub use phase::{ServerPhase, ServerReport};

use crate::stats::Recorder;
use delta::{Delta, Reading};

/// A scrape that has not answered by then has failed (it must end within its second).
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);
/// The largest `/metrics` response read; the services' are a few tens of KiB.
const RESPONSE_BYTES_MAX: u64 = 4 << 20;
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("{url}: only http://HOST:PORT/PATH is supported")]
    Url { url: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {} ms", SCRAPE_TIMEOUT.as_millis())]
    Timeout,
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("response larger than {} bytes", RESPONSE_BYTES_MAX)]
    TooLarge,
    #[error("not an HTTP/1 response with a plain body")]
    Malformed,
    #[error(transparent)]
    Parse(#[from] prom::ParseError),
}

/// One metrics endpoint, `http://HOST:PORT/PATH`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub url: String,
    /// `HOST:PORT` as written, for the `Host` header.
    authority: String,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, ScrapeError> {
        let bad = || ScrapeError::Url {
            url: url.to_owned(),
        };
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        let (host, port) = match authority.strip_prefix('[') {
            // An IPv6 literal: [::1]:9100.
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or_else(bad)?;
                match after.strip_prefix(':') {
                    Some(p) => (host, p.parse().map_err(|_| bad())?),
                    None if after.is_empty() => (host, 80),
                    None => return Err(bad()),
                }
            }
            None => match authority.split_once(':') {
                Some((host, p)) => (host, p.parse().map_err(|_| bad())?),
                None => (authority, 80),
            },
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Target {
            url: url.to_owned(),
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// One plain HTTP GET. HTTP/1.0, so that no server answers in chunks: the body is what comes
/// after the head until the server closes. (Written out rather than taking an HTTP client in:
/// these are local, plain-text endpoints, and the generator has no other HTTP to do.)
async fn get(t: &Target) -> Result<String, ScrapeError> {
    let mut stream = TcpStream::connect((t.host.as_str(), t.port)).await?;
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\n\r\n",
        t.path, t.authority
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    (&mut stream)
        .take(RESPONSE_BYTES_MAX + 1)
        .read_to_end(&mut buf)
        .await?;
    if buf.len() as u64 > RESPONSE_BYTES_MAX {
        return Err(ScrapeError::TooLarge);
    }
    let text = String::from_utf8(buf).map_err(|_| ScrapeError::Malformed)?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or(ScrapeError::Malformed)?;
    let mut status_line = head.lines().next().unwrap_or("").split_whitespace();
    if !status_line.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(ScrapeError::Malformed);
    }
    let status: u16 = status_line
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(ScrapeError::Malformed)?;
    if status != 200 {
        return Err(ScrapeError::Status(status));
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        return Err(ScrapeError::Malformed);
    }
    Ok(body.to_owned())
}

async fn scrape(t: &Target) -> Result<Reading, ScrapeError> {
    let body = tokio::time::timeout(SCRAPE_TIMEOUT, get(t))
        .await
        .map_err(|_| ScrapeError::Timeout)??;
    Ok(Reading::of(&prom::parse(&body)?))
}

#[derive(Debug, Clone)]
struct Scraped {
    at: Instant,
    reading: Reading,
}

#[derive(Debug, Default)]
struct State {
    /// Each target's last good scrape: where its next delta starts.
    last: Vec<Option<Scraped>>,
    series: Vec<ServerPoint>,
    scrapes: u64,
    failed: u64,
    last_error: Option<String>,
}

/// Scrapes the metrics URLs once a second in the background and keeps the server's series.
#[derive(Debug)]
pub struct Scraper {
    targets: Vec<Target>,
    state: Mutex<State>,
}

impl Scraper {
    pub fn new(urls: &[String]) -> Result<Scraper, ScrapeError> {
        let targets = urls
            .iter()
            .map(|u| Target::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        let state = State {
            last: vec![None; targets.len()],
            ..State::default()
        };
        Ok(Scraper {
            targets,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A round now (the baseline), then one a second, until aborted; each is stamped with the
    /// recorder's clock and phase.
    pub async fn run(self: Arc<Self>, recorder: Arc<Recorder>) {
        let mut interval = tokio::time::interval(SCRAPE_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            interval.tick().await;
            self.round(recorder.elapsed_s(), recorder.current_phase())
                .await;
        }
    }

    /// Scrapes every target at once and appends the round's point: each target's growth since
    /// its last good scrape, the failed ones listed as missing. The first good scrape of a
    /// target is only its baseline, so a round of baselines adds no point.
    pub async fn round(&self, t_s: f64, phase: String) {
        let results = futures_util::future::join_all(
            self.targets
                .iter()
                .map(|t| async move { (scrape(t).await, Instant::now()) }),
        )
        .await;
        let mut g = self.lock();
        let g = &mut *g;
        let mut deltas: Vec<Delta> = Vec::new();
        let mut missing = Vec::new();
        for ((result, at), (last, target)) in results
            .into_iter()
            .zip(g.last.iter_mut().zip(&self.targets))
        {
            g.scrapes += 1;
            match result {
                Ok(reading) => {
                    if let Some(prev) = last.as_ref() {
                        let span_s = at.duration_since(prev.at).as_secs_f64();
                        deltas.push(delta::delta(&prev.reading, &reading, span_s));
                    }
                    *last = Some(Scraped { at, reading });
                }
                Err(e) => {
                    g.failed += 1;
                    g.last_error = Some(format!("{}: {e}", target.url));
                    missing.push(target.url.clone());
                }
            }
        }
        if deltas.is_empty() && missing.is_empty() {
            return;
        }
        let mut point = ServerPoint::of(&deltas, missing);
        point.t_s = delta::round3(t_s);
        point.phase = phase;
        g.series.push(point);
    }

    /// The run's server side: the series, each phase of `phases`, and the measured one.
    pub fn report(&self, phases: &[String], measured: &str) -> ServerReport {
        let g = self.lock();
        ServerReport {
            metrics_urls: self.targets.iter().map(|t| t.url.clone()).collect(),
            scrapes: g.scrapes,
            scrapes_failed: g.failed,
            last_error: g.last_error.clone(),
            measured: ServerPhase::of(&g.series, measured),
            phases: phases
                .iter()
                .map(|p| ServerPhase::of(&g.series, p))
                .collect(),
            series: g.series.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_plain_http_urls() {
        let t = Target::parse("http://127.0.0.1:9100/metrics").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 9100, "/metrics")
        );
        let t = Target::parse("http://gateway").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("gateway", 80, "/metrics")
        );
        let t = Target::parse("http://[::1]:8080/m").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8080));
        let t = Target::parse("http://[::1]").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        for bad in [
            "https://x/metrics",
            "127.0.0.1:9100",
            "http://:80/",
            "http://h:port/",
            "http://[::1/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    /// Serves `responses` in turn, one per connection, on 127.0.0.1:0.
    async fn serve(responses: Vec<String>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for response in responses {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(response.as_bytes()).await;
            }
        });
        format!("http://{addr}/metrics")
    }

    fn ok(body: &str) -> String {
        format!("HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n{body}")
    }

    #[tokio::test]
    async fn a_failed_scrape_is_missing_and_the_next_good_one_spans_it() {
        let url = serve(vec![
            ok("gateway_shed_total{reason=\"kafka\"} 1\n"),
            ok("gateway_shed_total{reason=\"kafka\"} 4\n"),
            "HTTP/1.0 503 Service Unavailable\r\n\r\n".to_owned(),
            ok("not prometheus\n"),
            ok("gateway_shed_total{reason=\"kafka\"} 10\n"),
        ])
        .await;
        let scraper = Scraper::new(std::slice::from_ref(&url)).unwrap();
        for t_s in 0..5 {
            scraper.round(f64::from(t_s), "measure".into()).await;
        }
        let report = scraper.report(&["measure".into()], "measure");
        let series = &report.series;
        assert_eq!(
            series.len(),
            4,
            "the first round is the baseline: {series:?}"
        );
        assert_eq!(series[0].shed.get("kafka"), Some(&3));
        assert_eq!((series[0].t_s, series[0].phase.as_str()), (1.0, "measure"));
        for failed in &series[1..3] {
            assert_eq!(failed.missing, vec![url.clone()]);
            assert!(!failed.has_data());
        }
        assert_eq!(
            series[3].shed.get("kafka"),
            Some(&6),
            "from the last good scrape"
        );
        assert_eq!((report.scrapes, report.scrapes_failed), (5, 2));
        let last_error = report.last_error.unwrap();
        assert!(last_error.contains("not Prometheus text"), "{last_error}");
        assert_eq!(report.measured.shed.get("kafka"), Some(&9));
        assert_eq!(
            (report.measured.seconds, report.measured.seconds_missing),
            (2, 2)
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_a_failed_scrape() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        drop(listener);
        let scraper = Scraper::new(&[url]).unwrap();
        scraper.round(0.0, "warmup".into()).await;
        let report = scraper.report(&[], "warmup");
        assert_eq!(report.scrapes_failed, 1);
        assert!(report.last_error.unwrap().contains("/metrics: "));
        assert!(!report.series[0].has_data());
    }
}
