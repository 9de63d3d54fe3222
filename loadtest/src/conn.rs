//! One WebSocket connection: login, then a writer task fed by a bounded queue and a reader task,
//! sharing the connection's [`Trader`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use protocol::ws::{Login, RequestBody, Response, login_payload};
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::accounts::Account;
use crate::stats::{NotSent, Observation, Recorder};
use crate::trader::{Slot, Trader, request_json};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, Message>;

/// Slots a writer takes from its queue before one flush.
const WRITE_BATCH_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connect to {url}: {source}")]
    Connect {
        url: String,
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("login as {key_id}: {message}")]
    Login { key_id: String, message: String },
    #[error("login as {key_id}: no answer within {timeout_ms} ms")]
    LoginTimeout { key_id: String, timeout_ms: u64 },
}

/// Lowercase hex HMAC-SHA256 of the login payload, keyed by the API secret.
pub fn sign(secret: &str, key_id: &str, ts_ms: u64, nonce: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(login_payload(key_id, ts_ms, nonce).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Connects and logs in; the login uses request id 0.
pub async fn connect(
    url: &str,
    account: &Account,
    nonce: &str,
    timeout: Duration,
) -> Result<Ws, ConnError> {
    let key_id = account.key_id.clone();
    let attempt = async {
        // A small read buffer: tungstenite zeroes all its spare capacity before every read, and
        // with the 128 KiB default that was the load generator's largest single cost.
        let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
        let (mut ws, _) =
            // Nagle off, like the gateway: each command goes out when it is due.
            tokio_tungstenite::connect_async_with_config(url, Some(config), true)
                .await
                .map_err(|e| ConnError::Connect {
                    url: url.to_owned(),
                    source: Box::new(e),
                })?;
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let login = RequestBody::Login(Login {
            key_id: account.key_id.clone(),
            ts_ms,
            nonce: nonce.to_owned(),
            signature: sign(&account.secret, &account.key_id, ts_ms, nonce),
        });
        let fail = |message: String| ConnError::Login {
            key_id: account.key_id.clone(),
            message,
        };
        ws.send(Message::text(request_json(0, &login)))
            .await
            .map_err(|e| fail(e.to_string()))?;
        while let Some(msg) = ws.next().await {
            let msg = msg.map_err(|e| fail(e.to_string()))?;
            let Message::Text(text) = msg else { continue };
            let Ok(r) = serde_json::from_str::<Response>(&text) else {
                continue; // a push before the answer
            };
            if r.id != Some(0) {
                continue;
            }
            return match r.error {
                None => Ok(ws),
                Some(e) => Err(fail(format!("{:?}: {}", e.code, e.message))),
            };
        }
        Err(fail("connection closed before the login answer".into()))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(ConnError::LoginTimeout {
            key_id,
            timeout_ms: timeout.as_millis() as u64,
        }))
}

/// A running connection.
pub struct Connection {
    /// The bounded send queue; full means the generator fell behind.
    pub queue: mpsc::Sender<Slot>,
    pub trader: Arc<Mutex<Trader>>,
    /// The socket's local and peer address, to find it in the kernel's tables ([`crate::sockq`]).
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    writer: JoinHandle<Option<Sink>>,
    reader: JoinHandle<()>,
}

pub fn lock(trader: &Mutex<Trader>) -> std::sync::MutexGuard<'_, Trader> {
    trader.lock().unwrap_or_else(|e| e.into_inner())
}

impl Connection {
    pub fn spawn(
        ws: Ws,
        trader: Trader,
        recorder: Arc<Recorder>,
        queue_depth: usize,
    ) -> Connection {
        let addrs = match ws.get_ref() {
            MaybeTlsStream::Plain(s) => s.local_addr().ok().zip(s.peer_addr().ok()),
            _ => None,
        };
        let (sink, stream) = ws.split();
        let (queue, rx) = mpsc::channel(queue_depth);
        let trader = Arc::new(Mutex::new(trader));
        let writer = tokio::spawn(write_loop(sink, rx, trader.clone(), recorder.clone()));
        let reader = tokio::spawn(read_loop(stream, trader.clone(), recorder));
        Connection {
            queue,
            trader,
            addrs,
            writer,
            reader,
        }
    }

    /// Ends the connection after the drain. With `cleanup`, first cancels every order the
    /// account still has resting and waits (at most `CLEANUP_WAIT`) for the gateway's answer,
    /// which comes once the request is in Kafka. Then a close frame, and the reader stops.
    /// Returns the cleanup's answer (true: accepted), None without one.
    pub async fn close(self, cleanup: bool) -> Option<bool> {
        drop(self.queue);
        let Ok(Some(mut sink)) = self.writer.await else {
            self.reader.abort();
            return None;
        };
        let mut answer = None;
        if cleanup {
            let (text, answered) = lock(&self.trader).cleanup_request();
            if sink.send(Message::text(text)).await.is_ok() {
                answer = tokio::time::timeout(CLEANUP_WAIT, answered)
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
        }
        // The reader stops before our own close, which is not a disconnect to report.
        self.reader.abort();
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
        answer
    }
}

/// How long a connection waits for the answer to its end-of-run `cancel_all`.
const CLEANUP_WAIT: Duration = Duration::from_secs(5);

async fn write_loop(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Slot>,
    trader: Arc<Mutex<Trader>>,
    recorder: Arc<Recorder>,
) -> Option<Sink> {
    let mut slots = Vec::with_capacity(WRITE_BATCH_MAX);
    let mut texts = Vec::with_capacity(WRITE_BATCH_MAX);
    while rx.recv_many(&mut slots, WRITE_BATCH_MAX).await > 0 {
        let now = Instant::now();
        {
            let mut t = lock(&trader);
            for slot in slots.drain(..) {
                let (text, kind) = t.build(slot, now);
                let lag = now.saturating_duration_since(slot.scheduled);
                recorder.sent(slot.phase, kind, kind != slot.kind, lag);
                recorder.wrote(text.len());
                texts.push(text);
            }
        }
        let mut ok = true;
        for text in texts.drain(..) {
            if ok && sink.feed(Message::text(text)).await.is_err() {
                ok = false;
            }
        }
        if !ok || sink.flush().await.is_err() {
            // Commands already built stay pending and end as lost; the rest were never sent.
            rx.close();
            while let Some(slot) = rx.recv().await {
                recorder.not_sent(slot.phase, NotSent::ConnectionClosed);
            }
            return None;
        }
    }
    Some(sink)
}

async fn read_loop(
    mut stream: SplitStream<Ws>,
    trader: Arc<Mutex<Trader>>,
    recorder: Arc<Recorder>,
) {
    let mut obs = Vec::new();
    let reason = loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => {
                let now = Instant::now();
                recorder.read(text.len());
                lock(&trader).handle_text(&text, &mut obs);
                for o in obs.drain(..) {
                    recorder.observe(&o, now);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                break frame.map_or("closed".to_owned(), |f| {
                    format!("close {}: {}", u16::from(f.code), f.reason)
                });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("error: {e}"),
            None => break "eof".to_owned(),
        }
    };
    recorder.observe(&Observation::Disconnected { reason }, Instant::now());
}
