//! Network faults through Toxiproxy (`scripts/stack toxiproxy` builds it): each test starts its
//! own `toxiproxy-server` on a free port and drives it over its HTTP API. A proxy in front of the
//! real PostgreSQL or Kafka can be cut (every open connection dropped, new ones refused) and
//! healed, or given toxics (latency, `reset_peer`), without touching the servers other tests
//! share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The environment variable naming the server binary (scripts/test sets it).
pub const TOXIPROXY_BIN_ENV: &str = "TOXIPROXY_BIN";

/// A running `toxiproxy-server`, killed on drop.
pub struct Toxiproxy {
    api: SocketAddr,
    _server: Child,
}

impl Toxiproxy {
    /// Starts a server on a free port; `None` (after saying why) when `TOXIPROXY_BIN` is unset or
    /// missing outside CI. In CI (`CI=true`) a missing server fails the test.
    pub async fn start(test: &str) -> Option<Toxiproxy> {
        let bin = std::env::var(TOXIPROXY_BIN_ENV)
            .ok()
            .filter(|b| !b.is_empty())
            .map(PathBuf::from)
            .filter(|b| b.is_file());
        let Some(bin) = bin else {
            let why = format!(
                "{TOXIPROXY_BIN_ENV} unset or not a file; run \
                 `export {TOXIPROXY_BIN_ENV}=$(scripts/stack toxiproxy)`"
            );
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "{test}: {why} (required in CI)"
            );
            eprintln!("skip {test}: {why}");
            return None;
        };
        let api = super::free_local_addr();
        let server = Command::new(&bin)
            .args([
                "-host",
                &api.ip().to_string(),
                "-port",
                &api.port().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let toxiproxy = Toxiproxy {
            api,
            _server: server,
        };
        let started = Instant::now();
        while toxiproxy.call("GET", "/version", None).await.is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "toxiproxy-server did not answer at {api} within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(toxiproxy)
    }

    /// A proxy listening on a free local port, forwarding to `upstream` (`host:port`).
    pub async fn proxy(&self, name: &str, upstream: &str) -> Proxy<'_> {
        let body = json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream});
        let (status, answer) = self
            .call("POST", "/proxies", Some(body))
            .await
            .expect("toxiproxy answers");
        assert_eq!(status, 201, "create proxy {name}: {answer}");
        let addr = answer["listen"]
            .as_str()
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("proxy {name} listens where? {answer}"));
        Proxy {
            toxiproxy: self,
            name: name.to_owned(),
            addr,
        }
    }

    /// One request to the API: (status, JSON body or `Null`); `None` if the server did not answer.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Option<(u16, Value)> {
        let body = body.map(|b| b.to_string());
        let (status, text) = infra::http::request(
            &self.api.to_string(),
            method,
            path,
            body.as_deref(),
            Duration::from_secs(5),
        )
        .await?;
        Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}

/// One proxy of a [`Toxiproxy`].
pub struct Proxy<'a> {
    toxiproxy: &'a Toxiproxy,
    name: String,
    pub addr: SocketAddr,
}

impl Proxy<'_> {
    /// The upstream disappears: open connections drop, new ones are refused.
    pub async fn cut(&self) {
        self.set_enabled(false).await;
    }

    /// The upstream is back.
    pub async fn restore(&self) {
        self.set_enabled(true).await;
    }

    async fn set_enabled(&self, enabled: bool) {
        let path = format!("/proxies/{}", self.name);
        let (status, answer) = self
            .toxiproxy
            .call("POST", &path, Some(json!({"enabled": enabled})))
            .await
            .expect("toxiproxy answers");
        assert_eq!(status, 200, "set {} enabled={enabled}: {answer}", self.name);
    }

    /// Adds a toxic (`latency`, `reset_peer`, ...; see Toxiproxy's README) on the stream
    /// `downstream` (toward the client) or `upstream`.
    pub async fn add_toxic(&self, name: &str, kind: &str, stream: &str, attributes: Value) {
        let path = format!("/proxies/{}/toxics", self.name);
        let body = json!({"name": name, "type": kind, "stream": stream, "toxicity": 1.0,
                          "attributes": attributes});
        let (status, answer) = self
            .toxiproxy
            .call("POST", &path, Some(body))
            .await
            .expect("toxiproxy answers");
        assert_eq!(status, 200, "add toxic {name} to {}: {answer}", self.name);
    }

    pub async fn remove_toxic(&self, name: &str) {
        let path = format!("/proxies/{}/toxics/{name}", self.name);
        let (status, answer) = self
            .toxiproxy
            .call("DELETE", &path, None)
            .await
            .expect("toxiproxy answers");
        assert_eq!(status, 204, "remove toxic {name}: {answer}");
    }
}

/// The byte range of `url`'s `host:port`.
fn authority(url: &str) -> std::ops::Range<usize> {
    let start = url
        .find('@')
        .map_or_else(|| url.find("://").expect("a URL") + 3, |i| i + 1);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    start..end
}

/// The `host:port` a URL points at.
pub fn upstream(url: &str) -> String {
    url[authority(url)].to_owned()
}

/// `url` pointed at `addr` instead.
pub fn via(url: &str, addr: SocketAddr) -> String {
    let range = authority(url);
    format!("{}{addr}{}", &url[..range.start], &url[range.end..])
}
