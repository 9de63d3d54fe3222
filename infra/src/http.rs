//! One HTTP/1.0 request over a plain TCP connection, for the small local APIs the tools and
//! tests talk to (a service's `/metrics`, Toxiproxy's API): no client library, no keep-alive.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// `method path` at `authority` (`host:port`), with `body` as JSON when there is one: the status
/// and the body. `None` on any error or when `timeout` passes first.
pub async fn request(
    authority: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(authority).await.ok()?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.ok()?;
        s.write_all(body.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.get(9..12)?.parse().ok()?;
        let answer = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
        Some((status, answer.unwrap_or_default()))
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}
