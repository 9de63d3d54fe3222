//! One WebSocket connection: login, then a writer fed by a bounded queue and a reader task,
//! sharing the connection's [`Trader`]. With `--reconnect` ([`crate::redial`]) a connection the
//! gateway dropped logs in again with the same account and goes on with its schedule.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use protocol::ws::{ErrorCode, Login, RequestBody, Response, login_payload};
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::accounts::{Account, KeyKind};
use crate::received::ReceivedTx;
use crate::redial::{self, Backoff};
use crate::rng::Rng;
use crate::stats::{NotSent, Observation, Recorder, code_name};
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
    Login {
        key_id: String,
        /// The gateway's refusal, when it answered the login with one.
        code: Option<ErrorCode>,
        message: String,
    },
    #[error("login as {key_id}: no answer within {timeout_ms} ms")]
    LoginTimeout { key_id: String, timeout_ms: u64 },
}

/// The wait a refused upgrade asks for: HTTP 503 with `Retry-After` (the gateway's bound on new
/// connections per second). `None` for any other failure.
pub fn retry_after(e: &ConnError) -> Option<Duration> {
    let ConnError::Connect { source, .. } = e else {
        return None;
    };
    let tokio_tungstenite::tungstenite::Error::Http(response) = source.as_ref() else {
        return None;
    };
    if response.status() != 503 {
        return None;
    }
    let secs = response
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_secs(secs.clamp(1, 30)))
}

/// Lowercase hex HMAC-SHA256 of the login payload, keyed by the API secret.
pub fn sign(secret: &str, key_id: &str, ts_ms: u64, nonce: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(login_payload(key_id, ts_ms, nonce).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Base64 of the Ed25519 signature of the login payload, by the private key whose 32-byte
/// seed `seed_b64` holds (base64); `None` when it does not.
pub fn sign_ed25519(seed_b64: &str, key_id: &str, ts_ms: u64, nonce: &str) -> Option<String> {
    use base64::Engine as _;
    use ed25519_dalek::Signer as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let seed: [u8; 32] = b64.decode(seed_b64).ok()?.try_into().ok()?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let signature = key.sign(login_payload(key_id, ts_ms, nonce).as_bytes());
    Some(b64.encode(signature.to_bytes()))
}

/// The login signature of `account`'s kind.
fn login_signature(account: &Account, ts_ms: u64, nonce: &str) -> Result<String, String> {
    match account.kind {
        KeyKind::Hmac => Ok(sign(&account.secret, &account.key_id, ts_ms, nonce)),
        KeyKind::Ed25519 => sign_ed25519(&account.secret, &account.key_id, ts_ms, nonce)
            .ok_or_else(|| "the secret is not base64 of a 32-byte Ed25519 private key".into()),
    }
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
        let fail = |code: Option<ErrorCode>, message: String| ConnError::Login {
            key_id: account.key_id.clone(),
            code,
            message,
        };
        let login = RequestBody::Login(Login {
            key_id: account.key_id.clone(),
            ts_ms,
            nonce: nonce.to_owned(),
            signature: login_signature(account, ts_ms, nonce).map_err(|m| fail(None, m))?,
        });
        ws.send(Message::text(request_json(0, &login)))
            .await
            .map_err(|e| fail(None, e.to_string()))?;
        while let Some(msg) = ws.next().await {
            let msg = msg.map_err(|e| fail(None, e.to_string()))?;
            let Message::Text(text) = msg else { continue };
            let Ok(r) = serde_json::from_str::<Response>(&text) else {
                continue; // a push before the answer
            };
            if r.id != Some(0) {
                continue;
            }
            return match r.error {
                None => Ok(ws),
                Some(e) => Err(fail(
                    Some(e.code),
                    format!("{}: {}", code_name(e.code), e.message),
                )),
            };
        }
        Err(fail(
            None,
            "connection closed before the login answer".into(),
        ))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(ConnError::LoginTimeout {
            key_id,
            timeout_ms: timeout.as_millis() as u64,
        }))
}

/// What a connection needs to log in again after the gateway dropped it (`--reconnect`).
#[derive(Debug, Clone)]
pub struct Redial {
    pub url: String,
    pub account: Account,
    /// The connection's number in the run: part of each login's nonce, and of what it says.
    pub index: usize,
    pub login_timeout: Duration,
    /// Seeds the jitter of the waits between attempts.
    pub seed: u64,
    /// No line on stderr when the connection gives up.
    pub quiet: bool,
}

/// What a connection does beyond trading: hand its acknowledgements to `--received-out`, and
/// log in again after a drop (`--reconnect`).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub received: Option<ReceivedTx>,
    pub redial: Option<Redial>,
}

/// A running connection.
pub struct Connection {
    /// The bounded send queue; full means the generator fell behind.
    pub queue: mpsc::Sender<Slot>,
    pub trader: Arc<Mutex<Trader>>,
    /// The first socket's local and peer address, to find it in the kernel's tables
    /// ([`crate::sockq`]); a socket opened after a drop is not sampled.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    task: JoinHandle<Ended>,
}

pub fn lock(trader: &Mutex<Trader>) -> std::sync::MutexGuard<'_, Trader> {
    trader.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a connection's task leaves once its queue closed: the socket to send the cleanup on
/// while it is still up, and the reader to stop after that.
struct Ended {
    sink: Option<Sink>,
    reader: Option<JoinHandle<ReadEnd>>,
}

impl Connection {
    pub fn spawn(
        ws: Ws,
        trader: Trader,
        recorder: Arc<Recorder>,
        queue_depth: usize,
        options: Options,
    ) -> Connection {
        let addrs = match ws.get_ref() {
            MaybeTlsStream::Plain(s) => s.local_addr().ok().zip(s.peer_addr().ok()),
            _ => None,
        };
        let (queue, rx) = mpsc::channel(queue_depth);
        let trader = Arc::new(Mutex::new(trader));
        let task = tokio::spawn(supervise(ws, rx, trader.clone(), recorder, options));
        Connection {
            queue,
            trader,
            addrs,
            task,
        }
    }

    /// Ends the connection after the drain. With `cleanup`, first cancels every order the
    /// account still has resting and waits (at most `CLEANUP_WAIT`) for the gateway's answer,
    /// which comes once the request is in Kafka. Then a close frame, and the reader stops.
    /// Returns the cleanup's answer (true: accepted), None without one.
    pub async fn close(self, cleanup: bool) -> Option<bool> {
        drop(self.queue);
        let Ended { sink, reader } = self.task.await.ok()?;
        let Some(mut sink) = sink else {
            if let Some(reader) = reader {
                reader.abort();
            }
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
        if let Some(reader) = reader {
            reader.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
        answer
    }
}

/// How long a connection waits for the answer to its end-of-run `cancel_all`.
const CLEANUP_WAIT: Duration = Duration::from_secs(5);
/// After a failed write, how long the reader may take to read what already arrived and see
/// the socket end by itself before it is stopped.
const READER_GRACE: Duration = Duration::from_secs(1);

/// One connection for the whole run: a session on each socket, and with `--reconnect` a login
/// again after each drop, until its queue closes.
async fn supervise(
    mut ws: Ws,
    mut rx: mpsc::Receiver<Slot>,
    trader: Arc<Mutex<Trader>>,
    recorder: Arc<Recorder>,
    options: Options,
) -> Ended {
    let Options { received, redial } = options;
    let mut redialer = redial.map(Redialer::new);
    loop {
        let (sink, stream) = ws.split();
        let mut reader = tokio::spawn(read_loop(
            stream,
            trader.clone(),
            recorder.clone(),
            received.clone(),
        ));
        let Some(redialer) = redialer.as_mut() else {
            // One socket for the run: the writer goes on until a write fails, and what it had
            // written stays pending until the drain's deadline.
            return match write_loop(sink, &mut rx, &trader, &recorder, None).await {
                WriteEnd::QueueClosed(sink) => Ended {
                    sink: Some(sink),
                    reader: Some(reader),
                },
                WriteEnd::Failed(_) | WriteEnd::ReaderEnded(_) => {
                    refuse_the_rest(&mut rx, &recorder).await;
                    Ended {
                        sink: None,
                        reader: Some(reader),
                    }
                }
            };
        };
        let end = match write_loop(sink, &mut rx, &trader, &recorder, Some(&mut reader)).await {
            WriteEnd::QueueClosed(sink) => {
                return Ended {
                    sink: Some(sink),
                    reader: Some(reader),
                };
            }
            WriteEnd::ReaderEnded(end) => end,
            WriteEnd::Failed(error) => after_failed_write(reader, error, &recorder).await,
        };
        match redialer.after_drop(end, &mut rx, &trader, &recorder).await {
            Some(next) => ws = next,
            None => {
                refuse_the_rest(&mut rx, &recorder).await;
                return Ended {
                    sink: None,
                    reader: None,
                };
            }
        }
    }
}

/// The socket failed on write: the reader still reads what had arrived, or is stopped.
async fn after_failed_write(
    mut reader: JoinHandle<ReadEnd>,
    error: String,
    recorder: &Recorder,
) -> ReadEnd {
    if let Ok(Ok(end)) = tokio::time::timeout(READER_GRACE, &mut reader).await {
        return end;
    }
    reader.abort();
    let reason = format!("write error: {error}");
    recorder.observe(
        &Observation::Disconnected {
            reason: reason.clone(),
        },
        Instant::now(),
    );
    ReadEnd {
        reason,
        final_close: false,
    }
}

/// The connection is closed for good: every slot still queued or still to come is not sent.
async fn refuse_the_rest(rx: &mut mpsc::Receiver<Slot>, recorder: &Recorder) {
    rx.close();
    while let Some(slot) = rx.recv().await {
        recorder.not_sent(slot.phase, NotSent::ConnectionClosed);
    }
}

enum WriteEnd {
    /// The run is over; the socket is still up.
    QueueClosed(Sink),
    Failed(String),
    /// The socket ended on the read side (watched with `--reconnect` only).
    ReaderEnded(ReadEnd),
}

async fn write_loop(
    mut sink: Sink,
    rx: &mut mpsc::Receiver<Slot>,
    trader: &Mutex<Trader>,
    recorder: &Recorder,
    mut reader: Option<&mut JoinHandle<ReadEnd>>,
) -> WriteEnd {
    let mut slots = Vec::with_capacity(WRITE_BATCH_MAX);
    let mut texts = Vec::with_capacity(WRITE_BATCH_MAX);
    loop {
        let n = match reader.as_deref_mut() {
            None => rx.recv_many(&mut slots, WRITE_BATCH_MAX).await,
            Some(reader) => tokio::select! {
                biased;
                end = reader => {
                    return WriteEnd::ReaderEnded(end.unwrap_or_else(|e| ReadEnd {
                        reason: format!("reader failed: {e}"),
                        final_close: false,
                    }));
                }
                n = rx.recv_many(&mut slots, WRITE_BATCH_MAX) => n,
            },
        };
        if n == 0 {
            return WriteEnd::QueueClosed(sink);
        }
        let now = Instant::now();
        {
            let mut t = lock(trader);
            for slot in slots.drain(..) {
                let (text, kind) = t.build(slot, now);
                let lag = now.saturating_duration_since(slot.scheduled);
                recorder.sent(slot.phase, kind, kind != slot.kind, lag);
                recorder.wrote(text.len());
                texts.push(text);
            }
        }
        let mut failed = None;
        for text in texts.drain(..) {
            if failed.is_none()
                && let Err(e) = sink.feed(Message::text(text)).await
            {
                failed = Some(e.to_string());
            }
        }
        if failed.is_none()
            && let Err(e) = sink.flush().await
        {
            failed = Some(e.to_string());
        }
        // Commands already built stay pending (without `--reconnect` they end as lost).
        if let Some(error) = failed {
            return WriteEnd::Failed(error);
        }
    }
}

/// How a socket's reader ended.
#[derive(Debug)]
struct ReadEnd {
    reason: String,
    /// The gateway closed it for a reason that another login would only repeat.
    final_close: bool,
}

async fn read_loop(
    mut stream: SplitStream<Ws>,
    trader: Arc<Mutex<Trader>>,
    recorder: Arc<Recorder>,
    received: Option<ReceivedTx>,
) -> ReadEnd {
    let mut obs = Vec::new();
    let mut final_close = false;
    let reason = loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => {
                let now = Instant::now();
                recorder.read(text.len());
                lock(&trader).handle_text(&text, &mut obs);
                // The line first, the count after: a reader stopped in between leaves both
                // without this acknowledgement, never one without the other.
                if let Some(received) = &received {
                    for o in &obs {
                        if let Observation::Receipt(receipt) = o {
                            received.send(*receipt).await;
                        }
                    }
                }
                for o in obs.drain(..) {
                    recorder.observe(&o, now);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                final_close = frame
                    .as_ref()
                    .is_some_and(|f| redial::close_is_final(u16::from(f.code)));
                break frame.map_or("closed".to_owned(), |f| {
                    format!("close {}: {}", u16::from(f.code), f.reason)
                });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("error: {e}"),
            None => break "eof".to_owned(),
        }
    };
    recorder.observe(
        &Observation::Disconnected {
            reason: reason.clone(),
        },
        Instant::now(),
    );
    // The status push says it too, and survives a reset that loses the close frame.
    let told = lock(&trader).take_closing_status();
    ReadEnd {
        reason,
        final_close: final_close || told.is_some_and(redial::status_is_final),
    }
}

/// A connection's logins after drops.
struct Redialer {
    cfg: Redial,
    backoff: Backoff,
    rng: Rng,
    logins: u64,
}

enum Redialed {
    Connected(Box<Ws>),
    GaveUp(String),
    /// The queue closed: the run is over.
    RunOver,
}

impl Redialer {
    fn new(cfg: Redial) -> Redialer {
        Redialer {
            rng: Rng::new(cfg.seed),
            cfg,
            backoff: Backoff::default(),
            logins: 0,
        }
    }

    /// After a drop: what was in flight ends as closed in flight, then a login again unless the
    /// close was final. `None` when the connection gives up or the run is over.
    async fn after_drop(
        &mut self,
        end: ReadEnd,
        rx: &mut mpsc::Receiver<Slot>,
        trader: &Mutex<Trader>,
        recorder: &Recorder,
    ) -> Option<Ws> {
        let now = Instant::now();
        let mut obs = Vec::new();
        lock(trader).dropped(&mut obs);
        for o in &obs {
            recorder.observe(o, now);
        }
        recorder.link_down(now);
        if end.final_close {
            self.give_up(recorder, end.reason);
            return None;
        }
        match self.redial(rx, recorder).await {
            Redialed::Connected(ws) => {
                recorder.reconnected(Instant::now());
                Some(*ws)
            }
            Redialed::GaveUp(why) => {
                self.give_up(recorder, why);
                None
            }
            Redialed::RunOver => None,
        }
    }

    fn give_up(&self, recorder: &Recorder, why: String) {
        if !self.cfg.quiet {
            eprintln!(
                "loadtest: connection {} ({}) gives up reconnecting: {why}",
                self.cfg.index, self.cfg.account.key_id
            );
        }
        recorder.gave_up(why);
    }

    /// Waits, tries, and waits longer, until a login succeeds, the gateway refuses it
    /// [`redial::LOGIN_REFUSALS_MAX`] times in a row, or the run ends. Meanwhile slots that
    /// come due are not sent.
    async fn redial(&mut self, rx: &mut mpsc::Receiver<Slot>, recorder: &Recorder) -> Redialed {
        let mut refusals = 0;
        loop {
            let wait = self.backoff.next(self.rng.next_f64());
            if while_down(rx, recorder, tokio::time::sleep(wait))
                .await
                .is_none()
            {
                return Redialed::RunOver;
            }
            self.logins += 1;
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let nonce = format!("lt-{ms:x}-{}-r{}", self.cfg.index, self.logins);
            let c = &self.cfg;
            let attempt = connect(&c.url, &c.account, &nonce, c.login_timeout);
            let Some(result) = while_down(rx, recorder, attempt).await else {
                return Redialed::RunOver;
            };
            match result {
                Ok(ws) => {
                    self.backoff.reset();
                    return Redialed::Connected(Box::new(ws));
                }
                Err(ConnError::Login {
                    code: Some(code), ..
                }) if redial::refusal_counts(code) => {
                    refusals += 1;
                    if refusals >= redial::LOGIN_REFUSALS_MAX {
                        return Redialed::GaveUp(format!(
                            "login refused {refusals} times in a row ({})",
                            code_name(code)
                        ));
                    }
                }
                // Not there (yet), not answering, or refusing for now: try again.
                Err(_) => {}
            }
        }
    }
}

/// Runs `work` while the connection is down, counting each slot that comes due meanwhile as not
/// sent; `None` when the queue closed first (the run is over).
async fn while_down<F: Future>(
    rx: &mut mpsc::Receiver<Slot>,
    recorder: &Recorder,
    work: F,
) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return Some(out),
            slot = rx.recv() => match slot {
                Some(slot) => recorder.not_sent(slot.phase, NotSent::ConnectionClosed),
                None => return None,
            },
        }
    }
}
