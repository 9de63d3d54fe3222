//! One connection's outbound side: what waits to be written, bounded, with a named policy for
//! each kind of message.
//!
//! - Responses and private pushes: a FIFO of at most `outbound_queue_max` messages. Overflow
//!   means the client cannot keep up with its own stream: the connection is closed with
//!   `slow_consumer` (policy: disconnect) at once, ahead of what is queued; what could not be
//!   delivered is counted in `gateway_undelivered_total`.
//! - Every other close is orderly: the answers already due are written first, then the status
//!   and the close frame (see [`Outbound::close_after_queue`]).
//! - Public market data: at most one pending entry per (channel, pair), merged while the client
//!   is behind (policy: conflate). Book deltas merge into one delta (the latest level state
//!   wins) or into a pending snapshot; the ticker keeps the latest; trades keep the newest
//!   `pending_trades_max` and count what they drop.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use protocol::PairId;
use protocol::ws::{Channel, ConnectionStatus, PublicTrade, TickerMessage, close_code};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub type ConnId = u64;

/// Why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    SlowConsumer,
    Abuse,
    ShuttingDown,
    IdleTimeout,
    TooBig,
    /// A text frame that is not UTF-8 (RFC 6455 section 8.1).
    InvalidUtf8,
}

impl Closing {
    pub fn code(self) -> u16 {
        match self {
            Closing::SlowConsumer => close_code::SLOW_CONSUMER,
            Closing::Abuse => close_code::POLICY_VIOLATION,
            Closing::ShuttingDown => close_code::GOING_AWAY,
            Closing::IdleTimeout => close_code::IDLE_TIMEOUT,
            Closing::TooBig => close_code::MESSAGE_TOO_BIG,
            Closing::InvalidUtf8 => close_code::INVALID_PAYLOAD,
        }
    }

    /// The status push sent before the close frame, when there is one.
    pub fn status(self) -> Option<(ConnectionStatus, &'static str)> {
        match self {
            Closing::SlowConsumer => Some((
                ConnectionStatus::SlowConsumer,
                "outbound queue overflowed: the client reads slower than its stream is produced",
            )),
            Closing::Abuse => Some((
                ConnectionStatus::Abuse,
                "too many rate-limited requests: the client ignores retry_after_ms",
            )),
            Closing::ShuttingDown => Some((
                ConnectionStatus::ShuttingDown,
                "the gateway is shutting down; reconnect",
            )),
            Closing::IdleTimeout => Some((
                ConnectionStatus::IdleTimeout,
                "nothing received from the client within the idle timeout",
            )),
            Closing::TooBig | Closing::InvalidUtf8 => None,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Closing::SlowConsumer => "slow_consumer",
            Closing::Abuse => "abuse",
            Closing::ShuttingDown => "shutting_down",
            Closing::IdleTimeout => "idle_timeout",
            Closing::TooBig => "message_too_big",
            Closing::InvalidUtf8 => "invalid_utf8",
        }
    }

    /// Every reason, for registering the metrics at start.
    pub const ALL: &'static [Closing] = &[
        Closing::SlowConsumer,
        Closing::Abuse,
        Closing::ShuttingDown,
        Closing::IdleTimeout,
        Closing::TooBig,
        Closing::InvalidUtf8,
    ];
}

/// What the reader had read when it asked for an orderly close, for the status push: every
/// request read was answered before it, nothing after it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadSoFar {
    pub frames: u64,
    pub last_request_id: Option<u64>,
}

/// Integer book levels: price units -> quantity units (0 removes the level).
pub type Levels = BTreeMap<i64, i64>;

/// Market data as the hub hands it over; formatted by the writer.
#[derive(Debug, Clone, PartialEq)]
pub enum MarketUpdate {
    BookSnapshot {
        seq: u64,
        bids: Levels,
        asks: Levels,
    },
    BookDelta {
        seq: u64,
        bids: Levels,
        asks: Levels,
    },
    Trades(Vec<PublicTrade>),
    Ticker(TickerMessage),
}

/// What is waiting for one (channel, pair).
#[derive(Debug, Clone, PartialEq)]
pub enum MarketPending {
    Book {
        snapshot: bool,
        seq: u64,
        bids: Levels,
        asks: Levels,
    },
    Trades(VecDeque<PublicTrade>),
    Ticker(TickerMessage),
}

/// The next thing the writer should do.
#[derive(Debug)]
pub enum Next {
    Text(String),
    Market(PairId, MarketPending),
    Close(Closing, Option<ReadSoFar>),
}

#[derive(Debug, Default)]
struct OutState {
    queue: VecDeque<String>,
    market: HashMap<(Channel, PairId), MarketPending>,
    market_order: VecDeque<(Channel, PairId)>,
    /// The close the writer has yet to send.
    close: Option<Closing>,
    /// Whether that close waits until the queue is written (orderly) or goes first (urgent).
    close_after_queue: bool,
    read_so_far: Option<ReadSoFar>,
    /// Set by the first close, never cleared: nothing more is queued after it.
    closed: bool,
}

#[derive(Debug)]
pub struct Outbound {
    pub id: ConnId,
    state: Mutex<OutState>,
    notify: Notify,
    closing: CancellationToken,
    queue_max: usize,
    /// The reader stops reading the client's requests while this much is queued (half the
    /// queue): a client that sends faster than it reads its answers is slowed by TCP's own
    /// back-pressure, not cut as a slow consumer with answers it was owed dropped. The other
    /// half is for private pushes, which the client does not pace.
    answers_max: usize,
    /// Woken when the queue falls below `answers_max`.
    room: Notify,
    trades_max: usize,
    /// Authenticated or subscribed: gets heartbeats.
    pub wants_heartbeat: AtomicBool,
    /// Subscribed to the account's `balances` channel.
    pub wants_balances: AtomicBool,
}

impl Outbound {
    pub fn new(id: ConnId, queue_max: usize, trades_max: usize) -> Outbound {
        assert!(queue_max > 0 && trades_max > 0);
        Outbound {
            id,
            state: Mutex::new(OutState::default()),
            notify: Notify::new(),
            closing: CancellationToken::new(),
            queue_max,
            answers_max: queue_max.div_ceil(2),
            room: Notify::new(),
            trades_max,
            wants_heartbeat: AtomicBool::new(false),
            wants_balances: AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a response or private push. On overflow the connection is closed as a slow
    /// consumer and the message is not queued (the close tells the client why).
    pub fn push(&self, text: String) {
        // `close` marks the state under this lock before it cancels `closing`, so the state
        // answers "closing?" without taking the token's own lock for every message.
        let mut s = self.state();
        if s.closed {
            return;
        }
        if s.queue.len() >= self.queue_max {
            drop(s);
            metrics::counter!("gateway_slow_consumers_total", "reason" => crate::telemetry::SLOW_OUTBOUND_QUEUE)
                .increment(1);
            self.close(Closing::SlowConsumer);
            return;
        }
        s.queue.push_back(text);
        drop(s);
        self.notify.notify_one();
    }

    /// Merges market data into what is pending for its (channel, pair).
    pub fn push_market(&self, channel: Channel, pair: PairId, update: MarketUpdate) {
        let mut s = self.state();
        if s.closed {
            return;
        }
        let key = (channel, pair);
        let conflated = match s.market.get_mut(&key) {
            Some(pending) => {
                merge(pending, update, self.trades_max);
                true
            }
            None => {
                let pending = match update {
                    MarketUpdate::BookSnapshot { seq, bids, asks } => MarketPending::Book {
                        snapshot: true,
                        seq,
                        bids,
                        asks,
                    },
                    MarketUpdate::BookDelta { seq, bids, asks } => MarketPending::Book {
                        snapshot: false,
                        seq,
                        bids,
                        asks,
                    },
                    MarketUpdate::Trades(t) => MarketPending::Trades(t.into()),
                    MarketUpdate::Ticker(t) => MarketPending::Ticker(t),
                };
                s.market.insert(key, pending);
                s.market_order.push_back(key);
                false
            }
        };
        drop(s);
        if conflated {
            metrics::counter!("gateway_market_conflated_total").increment(1);
        }
        self.notify.notify_one();
    }

    /// Drops what is pending for an unsubscribed (channel, pair).
    pub fn clear_market(&self, channel: Channel, pair: PairId) {
        let mut s = self.state();
        if s.market.remove(&(channel, pair)).is_some() {
            s.market_order.retain(|k| *k != (channel, pair));
        }
    }

    /// Closes the connection now, ahead of anything queued (the client is not reading, so what
    /// is queued could not be delivered anyway); the first close wins.
    pub fn close(&self, why: Closing) {
        self.request_close(why, None);
    }

    /// Closes the connection once everything queued so far is written: the answers already
    /// due reach the client before the status and the close frame. Nothing queued after this.
    pub fn close_after_queue(&self, why: Closing, read: ReadSoFar) {
        self.request_close(why, Some(read));
    }

    fn request_close(&self, why: Closing, read: Option<ReadSoFar>) {
        let mut s = self.state();
        if !s.closed {
            s.closed = true;
            s.close = Some(why);
            s.close_after_queue = read.is_some();
            s.read_so_far = read;
            // Market data is public and conflated: nobody misses it after a close.
            s.market.clear();
            s.market_order.clear();
            metrics::counter!("gateway_disconnects_total", "reason" => why.reason()).increment(1);
        }
        drop(s);
        self.closing.cancel();
        self.notify.notify_one();
    }

    /// Drops what is still queued when the writer stops, counting it as undelivered.
    pub fn discard(&self) -> usize {
        let mut s = self.state();
        s.closed = true;
        let n = s.queue.len();
        s.queue.clear();
        drop(s);
        if n > 0 {
            metrics::counter!("gateway_undelivered_total").increment(n as u64);
        }
        n
    }

    /// Cancelled once a close was requested: the reader stops reading.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    pub fn queued(&self) -> usize {
        self.state().queue.len()
    }

    /// Whether the reader may read another request: the queue is below half full.
    pub fn answers_fit(&self) -> bool {
        self.state().queue.len() < self.answers_max
    }

    /// Waits until the queue falls below half full (for a reader that found it was not).
    pub async fn room(&self) {
        self.room.notified().await;
    }

    /// Waits for the next thing to write. An urgent close comes first, then responses and
    /// private pushes, then an orderly close, then market data.
    pub async fn next(&self) -> Next {
        loop {
            if let Some(next) = self.try_next() {
                return next;
            }
            // One consumer: notify_one keeps a permit when nobody waits, so no wake-up is lost.
            self.notify.notified().await;
        }
    }

    /// The next thing to write if one is queued now, without waiting.
    pub fn try_next(&self) -> Option<Next> {
        let mut s = self.state();
        if s.close.is_some() && !s.close_after_queue {
            return s.close.take().map(|why| Next::Close(why, None));
        }
        if let Some(text) = s.queue.pop_front() {
            // One reader: notify_one keeps a permit if it has not started waiting yet.
            if s.queue.len() + 1 == self.answers_max {
                self.room.notify_one();
            }
            return Some(Next::Text(text));
        }
        if let Some(why) = s.close.take() {
            return Some(Next::Close(why, s.read_so_far));
        }
        while let Some(key) = s.market_order.pop_front() {
            if let Some(pending) = s.market.remove(&key) {
                return Some(Next::Market(key.1, pending));
            }
        }
        None
    }

    pub fn set_wants_heartbeat(&self) {
        self.wants_heartbeat.store(true, Ordering::Relaxed);
    }
}

fn merge(pending: &mut MarketPending, update: MarketUpdate, trades_max: usize) {
    match (pending, update) {
        (p, MarketUpdate::BookSnapshot { seq, bids, asks }) => {
            *p = MarketPending::Book {
                snapshot: true,
                seq,
                bids,
                asks,
            };
        }
        (
            MarketPending::Book {
                snapshot,
                seq,
                bids,
                asks,
            },
            MarketUpdate::BookDelta {
                seq: new_seq,
                bids: new_bids,
                asks: new_asks,
            },
        ) => {
            // A delta names the new state of each level it lists, so later wins; a snapshot
            // holds only live levels, so a removal deletes.
            for (levels, changes) in [(bids, new_bids), (asks, new_asks)] {
                for (price, qty) in changes {
                    if *snapshot && qty == 0 {
                        levels.remove(&price);
                    } else {
                        levels.insert(price, qty);
                    }
                }
            }
            *seq = new_seq;
        }
        (MarketPending::Trades(trades), MarketUpdate::Trades(new)) => {
            trades.extend(new);
            let excess = trades.len().saturating_sub(trades_max);
            if excess > 0 {
                trades.drain(..excess);
                metrics::counter!("gateway_trades_dropped_total").increment(excess as u64);
            }
        }
        (p @ MarketPending::Ticker(_), MarketUpdate::Ticker(t)) => *p = MarketPending::Ticker(t),
        (p, u) => {
            // Kinds are keyed by channel, so they cannot mix; replace rather than panic.
            debug_assert!(false, "market update {u:?} does not match pending {p:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(v: &[(i64, i64)]) -> Levels {
        v.iter().copied().collect()
    }

    #[tokio::test]
    async fn deltas_merge_into_a_pending_snapshot_and_later_wins() {
        let out = Outbound::new(1, 4, 2);
        out.push_market(
            Channel::Book,
            0,
            MarketUpdate::BookSnapshot {
                seq: 5,
                bids: levels(&[(100, 1), (99, 2)]),
                asks: levels(&[]),
            },
        );
        out.push_market(
            Channel::Book,
            0,
            MarketUpdate::BookDelta {
                seq: 7,
                bids: levels(&[(100, 0), (98, 3)]),
                asks: levels(&[(101, 4)]),
            },
        );
        let Next::Market(
            0,
            MarketPending::Book {
                snapshot,
                seq,
                bids,
                asks,
            },
        ) = out.next().await
        else {
            panic!("expected a book")
        };
        assert!(snapshot);
        assert_eq!(seq, 7);
        assert_eq!(bids, levels(&[(99, 2), (98, 3)]));
        assert_eq!(asks, levels(&[(101, 4)]));
    }

    #[tokio::test]
    async fn overflow_closes_as_slow_consumer_and_close_comes_first() {
        let out = Outbound::new(1, 2, 2);
        out.push("a".into());
        out.push("b".into());
        assert!(!out.closing().is_cancelled());
        out.push("c".into());
        assert!(out.closing().is_cancelled());
        assert!(matches!(
            out.next().await,
            Next::Close(Closing::SlowConsumer, None)
        ));
        assert!(matches!(out.next().await, Next::Text(t) if t == "a"));
        assert_eq!(out.discard(), 1);
    }

    #[tokio::test]
    async fn an_orderly_close_comes_after_the_queued_answers_and_drops_market_data() {
        let out = Outbound::new(1, 8, 2);
        out.push("a".into());
        out.push_market(Channel::Trades, 0, MarketUpdate::Trades(Vec::new()));
        out.push("b".into());
        let read = ReadSoFar {
            frames: 2,
            last_request_id: Some(7),
        };
        out.close_after_queue(Closing::Abuse, read);
        assert!(out.closing().is_cancelled());
        out.push("late".into());
        assert!(matches!(out.next().await, Next::Text(t) if t == "a"));
        assert!(matches!(out.next().await, Next::Text(t) if t == "b"));
        assert!(matches!(
            out.next().await,
            Next::Close(Closing::Abuse, Some(r)) if r == read
        ));
        assert!(out.try_next().is_none());
        assert_eq!(out.discard(), 0);
    }
}
