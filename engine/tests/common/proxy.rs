//! A TCP proxy a test can cut: the engine talks to the real PostgreSQL through it, and the test
//! makes the database vanish (every open connection reset, new ones refused at once) and come
//! back, without touching the server other tests share.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct CutProxy {
    pub addr: SocketAddr,
    /// `true` while cut.
    cut: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl CutProxy {
    /// Listens on a free local port and forwards every connection to `upstream`.
    pub async fn start(upstream: String) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, cut_rx) = watch::channel(false);
        let upstream = Arc::new(upstream);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    drop(client);
                    continue;
                }
                let upstream = Arc::clone(&upstream);
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream.as_str()).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                    // Dropping both ends resets the connection mid-conversation.
                });
            }
        });
        CutProxy { addr, cut, accept }
    }

    /// PostgreSQL disappears: open connections drop, new ones are refused.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// PostgreSQL is back.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
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
