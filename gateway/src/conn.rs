//! One WebSocket connection: a reader that parses and answers requests, and a writer that
//! drains the connection's [`Outbound`] and keeps the socket alive with pings and heartbeats.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{FuturesUnordered, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, RateLimiter};
use opentelemetry::KeyValue;
use protocol::ws::{
    AssetBalance, Balances, BalancesQuery, BookMessage, BookMessageKind, Channel, DeadManSwitch,
    ErrorBody, ErrorCode, LoggedIn, Pong, Push, Received, ReceivedStatus, Request, RequestBody,
    Response, Subscribed, Subscription, TradesMessage, parse_request,
};
use protocol::{AccountId, Command, OrderId, PairId, PairSpec, Price, Qty};
use serde::Serialize;
use tokio::time::Instant;

use crate::abuse::Refusals;
use crate::auth::AuthError;
use crate::held::Held;
use crate::outbound::{Closing, ConnId, Levels, MarketPending, Next, Outbound, ReadSoFar};
use crate::sink::Class;
use crate::state::{Shared, count_error, quota, rate_limited};
use crate::{deadman, now_ms, telemetry, validate};

/// A request waiting for Kafka: its id, then its answer.
type Pending = Pin<Box<dyn Future<Output = (u64, String)> + Send>>;

/// A successful [`Response`] as it is written: the result serialized in place, without first
/// building it as a `serde_json::Value` (a map and a string per key, for every command's ack).
#[derive(Serialize)]
struct OkWire<T> {
    id: u64,
    result: T,
}

fn ok_text(id: u64, result: impl Serialize) -> String {
    serde_json::to_string(&OkWire { id, result }).expect("responses always serialize")
}

fn error_text(id: Option<u64>, error: ErrorBody) -> String {
    count_error(error.code);
    let response = Response {
        id,
        result: None,
        error: Some(error),
    };
    serde_json::to_string(&response).expect("responses always serialize")
}

fn received(order_id: Option<u64>, commands: u32) -> Received {
    Received {
        status: ReceivedStatus::Received,
        order_id,
        commands,
        trace_id: None,
    }
}

/// The gateway's span of one traced command: from its receipt to Kafka's acknowledgement,
/// with the produce as a step. Its `traceparent` travels with the command (`OrderRecord::tp`).
struct Traced {
    span: infra::trace::CmdSpan,
}

impl Traced {
    fn start(method: &'static str, client: Option<&str>, account: AccountId) -> Option<Traced> {
        let span = infra::trace::start("gateway.command", client, SystemTime::now())?;
        span.set_attribute(KeyValue::new("method", method));
        span.set_attribute(KeyValue::new("account_id", account.0 as i64));
        Some(Traced { span })
    }

    /// Ends the span once the command is written (or refused); the trace id, for the answer.
    fn finish(self, produce_from: SystemTime) -> String {
        let now = SystemTime::now();
        self.span.step("gateway.produce", produce_from, now);
        let trace_id = self.span.trace_id();
        self.span.end_at(now);
        trace_id
    }
}

/// Writes one command, traced when `traced` is set; answers `answer`, naming the trace.
async fn produce_traced(
    shared: &Shared,
    permit: crate::sink::Permit,
    spec: &PairSpec,
    (command_id, command): (u64, Command),
    origin: Option<(ConnId, u64)>,
    traced: Option<Traced>,
    answer: Received,
) -> Result<Received, ErrorBody> {
    let from = SystemTime::now();
    let tp = traced.as_ref().map(|t| t.span.traceparent());
    let (account_id, order_id, kind) = (command.account_id(), command.order_id(), command.kind());
    let result = shared
        .produce(permit, spec, command_id, command, origin, tp)
        .await;
    let trace_id = traced.map(|t| t.finish(from));
    if let Some(trace_id) = &trace_id {
        tracing::debug!(
            target: "command",
            trace_id = %trace_id,
            pair = %spec.symbol,
            account_id = account_id.0,
            order_id = order_id.map(|o| o.0),
            command_id,
            kind = ?kind,
            written = result.is_ok(),
            "command received"
        );
    }
    result.map(|()| Received { trace_id, ..answer })
}

/// The read error's tungstenite cause, when there is one.
fn tungstenite_cause(e: &axum::Error) -> Option<&tungstenite::Error> {
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<tungstenite::Error>())
}

/// Why the reader stopped.
enum Ending {
    /// The client closed or the socket failed: nobody is left to answer.
    ClientLeft,
    /// An urgent close was already requested (slow consumer): nothing more can be delivered.
    Closed,
    /// The gateway closes: the answers already due go out first, then the close.
    Orderly(Closing),
}

struct Conn {
    shared: Arc<Shared>,
    out: Arc<Outbound>,
    account: Option<AccountId>,
    subs: HashSet<(Channel, PairId)>,
    limiter: DefaultDirectRateLimiter,
    /// The connection limit's refusals, toward `abuse`.
    refusals: Refusals,
    /// When the gateway stopped reading this socket, and the requests that owes the client.
    held: Held,
    pending: FuturesUnordered<Pending>,
    /// The ids in `pending` (a client may reuse one), to answer them if the wait runs out.
    pending_ids: HashMap<u64, u32>,
    read: ReadSoFar,
}

/// Serves one upgraded socket until either side closes it.
pub(crate) async fn serve(shared: Arc<Shared>, socket: WebSocket) {
    let limits = &shared.config.limits;
    let out = Arc::new(Outbound::new(
        shared.next_conn_id(),
        limits.outbound_queue_max,
        limits.pending_trades_max,
    ));
    let (sink, stream) = socket.split();
    let writer_done = tokio_util::sync::CancellationToken::new();
    let mut writer = tokio::spawn(write_loop(
        Arc::clone(&shared),
        Arc::clone(&out),
        sink,
        writer_done.clone(),
    ));
    let mut conn = Conn {
        limiter: RateLimiter::direct(quota(limits.conn_rate_per_s, limits.conn_burst)),
        shared: Arc::clone(&shared),
        out: Arc::clone(&out),
        account: None,
        subs: HashSet::new(),
        refusals: Refusals::new(Instant::now()),
        held: Held::new(limits.conn_rate_per_s),
        pending: FuturesUnordered::new(),
        pending_ids: HashMap::new(),
        read: ReadSoFar::default(),
    };
    let mut stream = stream;
    let ending = conn.read_loop(&mut stream).await;
    let orderly = matches!(ending, Ending::Orderly(_));
    conn.leave();
    match ending {
        Ending::Orderly(why) => {
            let flush_ms = match why {
                Closing::ShuttingDown => limits.drain_timeout_ms / 2,
                _ => limits.close_flush_timeout_ms,
            };
            conn.finish_pending(Duration::from_millis(flush_ms)).await;
            out.close_after_queue(why, conn.read);
        }
        Ending::ClientLeft => {
            conn.abandon_pending();
            // Nothing more to say; an urgent close may still be on its way out.
            if !out.closing().is_cancelled() {
                writer_done.cancel();
            }
        }
        Ending::Closed => conn.abandon_pending(),
    }
    let grace = Duration::from_millis(2 * limits.write_timeout_ms);
    // On an orderly close, read on (and drop) what the client still sends until its close
    // frame: a socket closed with unread input makes the kernel reset the connection, and a
    // reset can discard answers the client has not read yet.
    let drain = async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    tokio::pin!(drain);
    let finished = tokio::time::timeout(grace, async {
        let mut drained = !orderly;
        while !drained {
            tokio::select! {
                _ = &mut writer => break,
                _ = &mut drain => drained = true,
            }
        }
        if drained {
            let _ = (&mut writer).await;
        } else {
            // The close frame is out; a client that answers it does so at once.
            let _ = tokio::time::timeout(CLOSE_HANDSHAKE_WAIT, &mut drain).await;
        }
    })
    .await;
    if finished.is_err() {
        tracing::debug!(conn = out.id, "the close did not finish in time");
        writer.abort();
    }
    out.discard();
    shared.close_connection();
}

impl Conn {
    async fn read_loop(&mut self, stream: &mut SplitStream<WebSocket>) -> Ending {
        let limits = self.shared.config.limits.clone();
        let idle = Duration::from_millis(limits.idle_timeout_ms);
        // One timer per idle period, not one per frame: a frame only notes the time, and the
        // timer, when it fires, re-arms itself from the last frame's time.
        let mut last_frame = Instant::now();
        let idle_timer = tokio::time::sleep_until(last_frame + idle);
        tokio::pin!(idle_timer);
        let shutdown = self.shared.shutdown.clone();
        let closing = self.out.closing().clone();
        // Waited on once for the whole loop: a fresh `cancelled()` per round takes the token's
        // locks several times per frame.
        let closed = closing.cancelled();
        let shutting_down = shutdown.cancelled();
        tokio::pin!(closed, shutting_down);
        let write_timeout = Duration::from_millis(limits.write_timeout_ms);
        let mut queue_held_since: Option<Instant> = None;
        loop {
            // Held while its answers pending on Kafka are at their limit, or while half the
            // outbound queue is waiting for the client to read it: either way the client's
            // frames wait in the kernel and TCP slows it, and nothing it is owed is dropped.
            let answers_fit = self.out.answers_fit();
            let can_read = answers_fit && self.pending.len() < limits.pending_per_conn_max;
            let now = Instant::now();
            self.held.note(can_read, now);
            queue_held_since = if answers_fit {
                None
            } else {
                Some(queue_held_since.unwrap_or(now))
            };
            // The writer frees room with every message the client reads: a hold on the queue
            // as long as the write timeout means the client read nothing meanwhile.
            let hold_ends = async {
                match queue_held_since {
                    Some(since) => tokio::time::sleep_until(since + write_timeout).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut closed => return Ending::Closed,
                _ = &mut shutting_down => return Ending::Orderly(Closing::ShuttingDown),
                Some(done) = self.pending.next(), if !self.pending.is_empty() => {
                    self.answer_pending(done);
                }
                () = self.out.room(), if !answers_fit => {}
                () = hold_ends => {
                    if !self.out.answers_fit() {
                        metrics::counter!(
                            "gateway_slow_consumers_total",
                            "reason" => telemetry::SLOW_OUTBOUND_QUEUE
                        )
                        .increment(1);
                        self.out.close(Closing::SlowConsumer);
                        return Ending::Closed;
                    }
                }
                _ = &mut idle_timer => {
                    // Time the gateway did not read is not the client's silence. (A client
                    // that reads nothing is cut by the writer's timeout.)
                    if !can_read {
                        last_frame = Instant::now();
                    }
                    if last_frame.elapsed() >= idle {
                        return Ending::Orderly(Closing::IdleTimeout);
                    }
                    idle_timer.as_mut().reset(last_frame + idle);
                }
                frame = stream.next(), if can_read => {
                    last_frame = Instant::now();
                    match frame {
                        None | Some(Ok(Message::Close(_))) => return Ending::ClientLeft,
                        Some(Err(e)) => {
                            return match tungstenite_cause(&e) {
                                Some(tungstenite::Error::Capacity(_)) => {
                                    Ending::Orderly(Closing::TooBig)
                                }
                                Some(tungstenite::Error::Utf8(_)) => {
                                    Ending::Orderly(Closing::InvalidUtf8)
                                }
                                _ => {
                                    tracing::debug!(conn = self.out.id, error = %e, "read failed");
                                    Ending::ClientLeft
                                }
                            };
                        }
                        Some(Ok(Message::Text(text))) => {
                            let started = Instant::now();
                            let closing = self.on_text(text.as_str()).await;
                            self.held.stalled(started, Instant::now());
                            if let Some(why) = closing {
                                return Ending::Orderly(why);
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            self.read.frames += 1;
                            let e = ErrorBody::new(
                                ErrorCode::UnsupportedFrame,
                                "binary frames are not part of the API; send JSON text frames",
                            );
                            self.out.push(error_text(None, e));
                        }
                        Some(Ok(_)) => {}
                    }
                }
            }
        }
    }

    fn answer_pending(&mut self, (id, text): (u64, String)) {
        if let Some(n) = self.pending_ids.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.pending_ids.remove(&id);
            }
        }
        self.out.push(text);
    }

    /// Answers what is already on its way to Kafka before the connection closes. What Kafka
    /// has not acknowledged within `limit` is answered `outcome_unknown`: the client still gets
    /// one answer per request, and learns that this one may or may not take effect.
    async fn finish_pending(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            while let Some(done) = self.pending.next().await {
                self.answer_pending(done);
            }
        })
        .await;
        let waited_ms = limit.as_millis();
        for (id, n) in self.pending_ids.drain() {
            for _ in 0..n {
                let e = ErrorBody::new(
                    ErrorCode::OutcomeUnknown,
                    format!(
                        "the connection is closing and Kafka has not acknowledged this command \
                         within {waited_ms} ms: it may or may not take effect; its verdict goes \
                         to the account's other connections"
                    ),
                );
                self.out.push(error_text(Some(id), e));
            }
        }
        // Dropping a produce future does not take back a record the producer already holds.
        self.pending.clear();
    }

    /// Gives up on answers that cannot be delivered any more, counting them.
    fn abandon_pending(&mut self) {
        let n = self.pending.len();
        if n > 0 {
            metrics::counter!("gateway_undelivered_total").increment(n as u64);
            self.pending.clear();
            self.pending_ids.clear();
        }
    }

    fn leave(&mut self) {
        for (channel, pair) in self.subs.drain() {
            self.shared.hub.unsubscribe(channel, pair, self.out.id);
        }
        if let Some(account) = self.account {
            self.shared.hub.remove_account(account, self.out.id);
        }
    }

    /// Handles one text frame; `Some` when the connection must close (after its answers).
    async fn on_text(&mut self, text: &str) -> Option<Closing> {
        metrics::counter!("gateway_frames_total").increment(1);
        let parsed = parse_request(text);
        let id = parsed.as_ref().map_or_else(|e| e.id, |r| Some(r.id));
        self.read.frames += 1;
        if id.is_some() {
            self.read.last_request_id = id;
        }
        if let Err(not_until) = self.limiter.check()
            && !self.held.take(Instant::now())
        {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            metrics::counter!("gateway_shed_total", "reason" => telemetry::SHED_CONNECTION_RATE)
                .increment(1);
            return self.limited(id, rate_limited(wait, "connection"));
        }
        // Only the connection's own limit counts toward `abuse`: an account-wide `rate_limited`
        // (its budget spent by other connections) is answered like any other error.
        self.refusals.passed();
        match parsed {
            Err(e) => self.out.push(error_text(e.id, e.error)),
            Ok(request) => {
                let id = request.id;
                match self.handle(request).await {
                    Ok(Some(text)) => self.out.push(text),
                    Ok(None) => {}
                    Err(e) => self.out.push(error_text(Some(id), e)),
                }
            }
        }
        None
    }

    /// Answers `rate_limited`; asks to close the connection once it keeps ignoring that.
    fn limited(&mut self, id: Option<u64>, e: ErrorBody) -> Option<Closing> {
        self.out.push(error_text(id, e));
        // While the gateway holds or has just held the socket, or the system is overloaded, it
        // reads a well-behaved client's frames late, in bursts over its rate however evenly they
        // were sent: then only a sustained excess counts (see `abuse`).
        let now = Instant::now();
        let excused = self.held.excuses(now) || self.shared.sink.overloaded();
        let threshold = self.shared.config.limits.abuse_limited_per_s;
        if self.refusals.refused(now, threshold, excused) {
            tracing::info!(
                conn = self.out.id,
                account_id = self.account.map(|a| a.0),
                "closing abusive connection"
            );
            return Some(Closing::Abuse);
        }
        None
    }

    /// Answers at once (`Some`), or later through `pending` (`None`).
    async fn handle(&mut self, request: Request) -> Result<Option<String>, ErrorBody> {
        let id = request.id;
        let method = request.body.method();
        metrics::counter!("gateway_requests_total", "method" => method).increment(1);
        match request.body {
            RequestBody::Ping => Ok(Some(ok_text(id, Pong { ts_ms: now_ms() }))),
            RequestBody::Login(login) => {
                if self.account.is_some() {
                    return Err(ErrorBody::new(
                        ErrorCode::AlreadyAuthenticated,
                        "this connection is already logged in",
                    ));
                }
                let account = self
                    .shared
                    .auth
                    .login(&login, now_ms())
                    .await
                    .map_err(auth_error)?;
                self.account = Some(account);
                self.shared.hub.add_account(account, &self.out);
                self.out.set_wants_heartbeat();
                Ok(Some(ok_text(
                    id,
                    LoggedIn {
                        account_id: account.0,
                    },
                )))
            }
            RequestBody::Subscribe(s) => self.subscribe(id, s),
            RequestBody::Unsubscribe(s) => self.unsubscribe(id, s).map(Some),
            RequestBody::Balances(q) => {
                let account = self.stage_account("asking for balances")?;
                self.shared.check_account_rate(account)?;
                let _permit = self.shared.query_permit()?;
                balances(Arc::clone(&self.shared), account, id, q)
                    .await
                    .map(Some)
            }
            body @ (RequestBody::OpenOrders(_)
            | RequestBody::OrderStatus(_)
            | RequestBody::MyTrades(_)) => {
                let account = self.account.ok_or_else(|| {
                    ErrorBody::new(
                        ErrorCode::Unauthenticated,
                        format!("log in before {method}"),
                    )
                })?;
                // Answered in line, like `balances`: one query at a time per connection.
                self.shared.check_account_rate(account)?;
                let _permit = self.shared.query_permit()?;
                query(Arc::clone(&self.shared), id, account, body)
                    .await
                    .map(Some)
            }
            body => {
                let account = self.account.ok_or_else(|| {
                    ErrorBody::new(ErrorCode::Unauthenticated, "log in before trading")
                })?;
                self.shared.check_account_rate(account)?;
                self.trade(id, account, body, request.traceparent.as_deref())
            }
        }
    }

    fn spec(&self, symbol: &str) -> Result<PairSpec, ErrorBody> {
        self.shared.pairs.by_symbol(symbol).cloned().ok_or_else(|| {
            ErrorBody::new(ErrorCode::UnknownPair, format!("unknown pair {symbol:?}"))
        })
    }

    /// The pair a market data subscription names.
    fn market_spec(&self, s: &Subscription) -> Result<PairSpec, ErrorBody> {
        let symbol = s.pair.as_deref().ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::InvalidParams,
                format!("the {} channel needs a pair", channel_name(s.channel)),
            )
        })?;
        self.spec(symbol)
    }

    /// The logged-in account, on a gateway with the account stage on.
    fn stage_account(&self, what: &str) -> Result<AccountId, ErrorBody> {
        let account = self.account.ok_or_else(|| {
            ErrorBody::new(ErrorCode::Unauthenticated, format!("log in before {what}"))
        })?;
        if self.shared.stage.is_none() {
            return Err(ErrorBody::new(
                ErrorCode::AccountsDisabled,
                format!("{what} needs the account stage, which is off on this gateway"),
            ));
        }
        Ok(account)
    }

    fn subscribe(&mut self, id: u64, s: Subscription) -> Result<Option<String>, ErrorBody> {
        if s.channel == Channel::Balances {
            self.stage_account("subscribing to balances")?;
            self.out.wants_balances.store(true, Ordering::Relaxed);
            self.out.set_wants_heartbeat();
            let subscribed = Subscribed {
                channel: s.channel,
                pair: None,
            };
            return Ok(Some(ok_text(id, subscribed)));
        }
        let spec = self.market_spec(&s)?;
        let key = (s.channel, spec.id);
        if !self.subs.contains(&key)
            && self.subs.len() >= self.shared.config.limits.max_subscriptions
        {
            return Err(ErrorBody::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "at most {} subscriptions per connection",
                    self.shared.config.limits.max_subscriptions
                ),
            ));
        }
        // Subscribing again re-sends the snapshot: how a client recovers from a gap.
        self.subs.insert(key);
        self.out.set_wants_heartbeat();
        let text = ok_text(
            id,
            Subscribed {
                channel: s.channel,
                pair: s.pair,
            },
        );
        // The response goes first so the snapshot follows the acknowledgement.
        self.out.push(text);
        self.shared.hub.subscribe(s.channel, spec.id, &self.out);
        Ok(None)
    }

    fn unsubscribe(&mut self, id: u64, s: Subscription) -> Result<String, ErrorBody> {
        if s.channel == Channel::Balances {
            if !self.out.wants_balances.swap(false, Ordering::Relaxed) {
                return Err(ErrorBody::new(
                    ErrorCode::NotSubscribed,
                    "not subscribed to balances",
                ));
            }
            let unsubscribed = Subscribed {
                channel: s.channel,
                pair: None,
            };
            return Ok(ok_text(id, unsubscribed));
        }
        let spec = self.market_spec(&s)?;
        if !self.subs.remove(&(s.channel, spec.id)) {
            return Err(ErrorBody::new(
                ErrorCode::NotSubscribed,
                format!(
                    "not subscribed to {} {}",
                    channel_name(s.channel),
                    spec.symbol
                ),
            ));
        }
        self.shared.hub.unsubscribe(s.channel, spec.id, self.out.id);
        self.out.clear_market(s.channel, spec.id);
        Ok(ok_text(
            id,
            Subscribed {
                channel: s.channel,
                pair: s.pair,
            },
        ))
    }

    fn later(
        &mut self,
        id: u64,
        work: impl Future<Output = Result<Received, ErrorBody>> + Send + 'static,
    ) {
        *self.pending_ids.entry(id).or_default() += 1;
        self.pending.push(Box::pin(async move {
            let text = match work.await {
                Ok(r) => ok_text(id, r),
                Err(e) => error_text(Some(id), e),
            };
            (id, text)
        }));
    }

    fn trade(
        &mut self,
        id: u64,
        account: AccountId,
        body: RequestBody,
        traceparent: Option<&str>,
    ) -> Result<Option<String>, ErrorBody> {
        let origin = Some((self.out.id, id));
        let shared = Arc::clone(&self.shared);
        let body_name = body.method();
        match body {
            RequestBody::Place(p) => {
                let traced = Traced::start("place", traceparent, account);
                let spec = self.spec(&p.pair)?;
                let command_id = shared.ids.next();
                let place = validate::place(&spec, &p, account, OrderId(command_id))?;
                let permit = shared.admit(Class::New)?;
                self.later(id, async move {
                    let command = Command::Place(place);
                    let answer = received(Some(command_id), 1);
                    let cmd = (command_id, command);
                    produce_traced(&shared, permit, &spec, cmd, origin, traced, answer).await
                });
            }
            RequestBody::Cancel(c) => {
                let traced = Traced::start("cancel", traceparent, account);
                let spec = self.spec(&c.pair)?;
                let cancel = validate::cancel(&c, account)?;
                let permit = shared.admit(Class::Cancel)?;
                self.later(id, async move {
                    let command_id = shared.ids.next();
                    let command = Command::Cancel(cancel);
                    let answer = received(c.order_id, 1);
                    let cmd = (command_id, command);
                    produce_traced(&shared, permit, &spec, cmd, origin, traced, answer).await
                });
            }
            RequestBody::Amend(a) => {
                let traced = Traced::start("amend", traceparent, account);
                let spec = self.spec(&a.pair)?;
                let amend = validate::amend(&spec, &a, account)?;
                let permit = shared.admit(Class::New)?;
                self.later(id, async move {
                    let command_id = shared.ids.next();
                    let command = Command::Amend(amend);
                    let answer = received(a.order_id, 1);
                    let cmd = (command_id, command);
                    produce_traced(&shared, permit, &spec, cmd, origin, traced, answer).await
                });
            }
            RequestBody::CancelAll(c) => {
                let spec = c.pair.as_deref().map(|p| self.spec(p)).transpose()?;
                self.later(id, async move {
                    let n = shared.cancel_all(account, spec.as_ref(), origin).await?;
                    Ok(received(None, n))
                });
            }
            RequestBody::CancelAllAfter(c) => {
                let max = shared.config.limits.deadman_max_ms;
                if c.timeout_ms > max {
                    return Err(ErrorBody::new(
                        ErrorCode::InvalidParams,
                        format!("timeout_ms must be at most {max} (0 disarms)"),
                    ));
                }
                let now = now_ms();
                let trigger = deadman::arm(&shared, account, c.timeout_ms, now);
                return Ok(Some(ok_text(
                    id,
                    DeadManSwitch {
                        current_time_ms: now,
                        trigger_time_ms: trigger,
                    },
                )));
            }
            RequestBody::Login(_)
            | RequestBody::Ping
            | RequestBody::Subscribe(_)
            | RequestBody::Unsubscribe(_)
            | RequestBody::Balances(_)
            | RequestBody::OpenOrders(_)
            | RequestBody::OrderStatus(_)
            | RequestBody::MyTrades(_) => {
                return Err(ErrorBody::new(
                    ErrorCode::Internal,
                    format!("{} is not a trading method", body_name),
                ));
            }
        }
        Ok(None)
    }
}

/// `open_orders`, `order_status`, `my_trades` (see `queries`).
async fn query(
    shared: Arc<Shared>,
    id: u64,
    account: AccountId,
    body: RequestBody,
) -> Result<String, ErrorBody> {
    let spec_of = |symbol: &str| {
        shared.pairs.by_symbol(symbol).cloned().ok_or_else(|| {
            ErrorBody::new(ErrorCode::UnknownPair, format!("unknown pair {symbol:?}"))
        })
    };
    let (pool, hub, pairs) = (&shared.pool, &*shared.hub, &*shared.pairs);
    match body {
        RequestBody::OpenOrders(q) => {
            let spec = q.pair.as_deref().map(&spec_of).transpose()?;
            let answer =
                crate::queries::open_orders(pool, hub, pairs, account, spec.as_ref()).await?;
            Ok(ok_text(id, answer))
        }
        RequestBody::OrderStatus(q) => {
            let spec = spec_of(&q.pair)?;
            validate::order_ref(q.order_id, q.client_order_id.as_ref())?;
            let answer =
                crate::queries::order_status(pool, hub, pairs, account, &spec, &q).await??;
            Ok(ok_text(id, answer))
        }
        RequestBody::MyTrades(q) => {
            let spec = q.pair.as_deref().map(&spec_of).transpose()?;
            let limit = crate::queries::my_trades_limit(&q)?;
            let answer = crate::queries::my_trades(
                pool,
                hub,
                pairs,
                account,
                spec.as_ref(),
                limit,
                q.before_trade_id,
            )
            .await?;
            Ok(ok_text(id, answer))
        }
        other => Err(ErrorBody::new(
            ErrorCode::Internal,
            format!("{} is not a query", other.method()),
        )),
    }
}

/// `balances`: what the account stage committed, and up to which offset of the shard.
async fn balances(
    shared: Arc<Shared>,
    account: AccountId,
    id: u64,
    q: BalancesQuery,
) -> Result<String, ErrorBody> {
    let Some(stage) = &shared.stage else {
        return Err(ErrorBody::new(
            ErrorCode::AccountsDisabled,
            "no account stage",
        ));
    };
    let assets = shared.hub.assets();
    if let Some(asset) = &q.asset
        && assets.by_symbol(asset).is_none()
    {
        return Err(ErrorBody::new(
            ErrorCode::UnknownAsset,
            format!(
                "unknown asset {asset:?}; known: {}",
                assets
                    .iter()
                    .map(|a| a.symbol.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let shard = stage.shard(account);
    // Not older than the balances pushes this gateway already sent (see `queries`).
    let target = shared.hub.shard_offset(shard);
    let wait = crate::queries::CatchUp::new();
    let (held, as_of_offset) = loop {
        let found =
            crate::accounts::committed_balances(&shared.pool, account, shard, q.asset.as_deref())
                .await
                .map_err(crate::queries::QueryError::from)?;
        if target.is_none_or(|t| found.1 >= t) {
            break found;
        }
        wait.again().await?;
    };
    let balances = held
        .into_iter()
        .map(|h| {
            let decimals = assets.by_symbol(&h.asset).map_or(0, |a| a.decimals);
            AssetBalance {
                available: crate::accounts::format_units(h.available, decimals),
                reserved: crate::accounts::format_units(h.reserved, decimals),
                asset: h.asset,
            }
        })
        .collect();
    Ok(ok_text(
        id,
        Balances {
            balances,
            shard,
            as_of_offset,
        },
    ))
}

/// A channel's wire name (`book`).
fn channel_name(c: Channel) -> String {
    match serde_json::to_value(c) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{c:?}"),
    }
}

fn auth_error(e: AuthError) -> ErrorBody {
    let code = match &e {
        AuthError::InvalidNonce => ErrorCode::InvalidParams,
        AuthError::StaleTimestamp { .. } => ErrorCode::StaleTimestamp,
        AuthError::UnknownKey => ErrorCode::UnknownKey,
        AuthError::BadSignature => ErrorCode::BadSignature,
        AuthError::NonceReused => ErrorCode::NonceReused,
        AuthError::TooManyLogins => ErrorCode::RateLimited,
        AuthError::KeyUnavailable => ErrorCode::Internal,
        AuthError::Db(err) => {
            tracing::warn!(error = %err, "API key lookup failed");
            ErrorCode::Internal
        }
    };
    let mut body = ErrorBody::new(code, e.to_string());
    if code == ErrorCode::RateLimited {
        body.retry_after_ms = Some(1_000);
    }
    body
}

async fn write_loop(
    shared: Arc<Shared>,
    out: Arc<Outbound>,
    mut sink: SplitSink<WebSocket, Message>,
    done: tokio_util::sync::CancellationToken,
) {
    let limits = &shared.config.limits;
    let write_timeout = Duration::from_millis(limits.write_timeout_ms);
    let mut ping = tokio::time::interval(Duration::from_millis(limits.ping_interval_ms.max(1)));
    let mut heartbeat =
        tokio::time::interval(Duration::from_millis(limits.heartbeat_interval_ms.max(1)));
    ping.tick().await;
    heartbeat.tick().await;
    let done = done.cancelled();
    tokio::pin!(done);
    let mut book_seqs: HashMap<PairId, u64> = HashMap::new();
    loop {
        // A keep-alive frame of our own, or the first queued item.
        let (mut own, mut next) = tokio::select! {
            biased;
            _ = &mut done => return,
            next = out.next() => (None, Some(next)),
            _ = ping.tick() => (Some(Message::Ping(Vec::new().into())), None),
            _ = heartbeat.tick() => {
                if !out.wants_heartbeat.load(Ordering::Relaxed) {
                    continue;
                }
                let push = Push::Heartbeat { ts_ms: now_ms() };
                let text = serde_json::to_string(&push).expect("pushes serialize");
                (Some(Message::Text(text.into())), None)
            }
        };
        // Everything already queued goes out with one flush (one write to the socket), so a
        // busy connection costs a system call per burst, not per frame.
        let mut closing = None;
        let written = tokio::time::timeout(write_timeout, async {
            if let Some(message) = own.take() {
                sink.feed(message).await?;
            }
            let mut fed = 0;
            while let Some(item) = next.take() {
                let message = match item {
                    Next::Text(text) => Message::Text(text.into()),
                    Next::Market(pair, pending) => {
                        match market_text(&shared, pair, pending, &mut book_seqs) {
                            Some(text) => Message::Text(text.into()),
                            None => {
                                next = out.try_next();
                                continue;
                            }
                        }
                    }
                    Next::Close(why, read) => {
                        closing = Some((why, read));
                        break;
                    }
                };
                sink.feed(message).await?;
                fed += 1;
                if fed < WRITE_BURST_MAX {
                    next = out.try_next();
                }
            }
            sink.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                // The client does not read; its socket buffer is full. Drop it.
                metrics::counter!("gateway_slow_consumers_total", "reason" => telemetry::SLOW_WRITE_TIMEOUT)
                    .increment(1);
                out.close(Closing::SlowConsumer);
                return;
            }
        }
        if let Some((why, read)) = closing {
            close(&mut sink, why, read, write_timeout).await;
            return;
        }
    }
}

/// How long an orderly close waits for the client's close frame after sending its own.
const CLOSE_HANDSHAKE_WAIT: Duration = Duration::from_secs(1);

/// Frames written before one flush, so one busy connection cannot hog its worker.
const WRITE_BURST_MAX: usize = 256;

async fn close(
    sink: &mut SplitSink<WebSocket, Message>,
    why: Closing,
    read: Option<ReadSoFar>,
    timeout: Duration,
) {
    let _ = tokio::time::timeout(timeout, async {
        if let Some(status) = status_push(why, read) {
            let text = serde_json::to_string(&status).expect("pushes serialize");
            sink.send(Message::Text(text.into())).await?;
        }
        let frame = CloseFrame {
            code: why.code(),
            reason: why.reason().into(),
        };
        sink.send(Message::Close(Some(frame))).await?;
        sink.close().await
    })
    .await;
}

/// The `status` push before a close: why, and on an orderly close how far the gateway read.
fn status_push(why: Closing, read: Option<ReadSoFar>) -> Option<Push> {
    let (status, reason) = why.status()?;
    let message = match read {
        Some(ReadSoFar {
            frames,
            last_request_id,
        }) => {
            let last = last_request_id.map_or_else(String::new, |id| format!(", the last id {id}"));
            format!(
                "{reason}. Every request read was answered before this message ({frames} frames \
                 read{last}); nothing sent after them was read or acted on"
            )
        }
        None => format!("{reason}. Answers still queued were not delivered"),
    };
    Some(Push::Status {
        status,
        message,
        frames_read: read.map(|r| r.frames),
        last_request_id: read.and_then(|r| r.last_request_id),
    })
}

fn format_levels(spec: &PairSpec, levels: &Levels, best_high: bool) -> Vec<[String; 2]> {
    // A removal is the bare "0" the API documents, whatever the pair's decimals, so a client
    // comparing strings cannot miss it.
    let qty = |q: i64| match q {
        0 => "0".to_owned(),
        q => spec.format_qty(Qty(q)),
    };
    let fmt = |(p, q): (&i64, &i64)| [spec.format_price(Price(*p)), qty(*q)];
    if best_high {
        levels.iter().rev().map(fmt).collect()
    } else {
        levels.iter().map(fmt).collect()
    }
}

fn market_text(
    shared: &Shared,
    pair: PairId,
    pending: MarketPending,
    book_seqs: &mut HashMap<PairId, u64>,
) -> Option<String> {
    let spec = shared.pairs.get(pair)?;
    let push = match pending {
        MarketPending::Book {
            snapshot,
            seq,
            bids,
            asks,
        } => {
            let prev_seq = book_seqs.insert(pair, seq);
            Push::Book(BookMessage {
                pair: spec.symbol.clone(),
                kind: if snapshot {
                    BookMessageKind::Snapshot
                } else {
                    BookMessageKind::Update
                },
                seq,
                prev_seq: if snapshot { None } else { prev_seq },
                bids: format_levels(spec, &bids, true),
                asks: format_levels(spec, &asks, false),
            })
        }
        MarketPending::Trades(trades) => Push::Trades(TradesMessage {
            pair: spec.symbol.clone(),
            trades: trades.into(),
        }),
        MarketPending::Ticker(t) => Push::Ticker(t),
    };
    Some(serde_json::to_string(&push).expect("pushes serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct serialization reads back as the same `Response` the generic one wrote.
    #[test]
    fn ok_text_is_a_response_with_the_result() {
        let ack = received(Some(42), 3);
        let text = ok_text(7, &ack);
        let parsed: Response = serde_json::from_str(&text).expect("a Response");
        assert_eq!(parsed.id, Some(7));
        assert_eq!(parsed.error, None);
        assert_eq!(
            parsed.result,
            Some(serde_json::to_value(&ack).expect("serializes"))
        );
        let pong: Response = serde_json::from_str(&ok_text(1, Pong { ts_ms: 5 })).unwrap();
        assert_eq!(pong.result, Some(serde_json::json!({"ts_ms": 5})));
    }
}
