//! One connection's outbound side: what waits to be written, bounded, with a named policy for
//! each kind of message.
//!
//! - Responses and private pushes: a FIFO of at most `outbound_queue_max` messages. Overflow
//!   means the client cannot keep up with its own stream: the connection is closed with
//!   `slow_consumer` (policy: disconnect). Nothing is silently dropped.
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
}

impl Closing {
    pub fn code(self) -> u16 {
        match self {
            Closing::SlowConsumer => close_code::SLOW_CONSUMER,
            Closing::Abuse => close_code::POLICY_VIOLATION,
            Closing::ShuttingDown => close_code::GOING_AWAY,
            Closing::IdleTimeout => close_code::IDLE_TIMEOUT,
            Closing::TooBig => close_code::MESSAGE_TOO_BIG,
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
                "too many rate-limited requests in a row",
            )),
            Closing::ShuttingDown => Some((
                ConnectionStatus::ShuttingDown,
                "the gateway is shutting down; reconnect",
            )),
            Closing::IdleTimeout => Some((
                ConnectionStatus::IdleTimeout,
                "nothing received from the client within the idle timeout",
            )),
            Closing::TooBig => None,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Closing::SlowConsumer => "slow_consumer",
            Closing::Abuse => "abuse",
            Closing::ShuttingDown => "shutting_down",
            Closing::IdleTimeout => "idle_timeout",
            Closing::TooBig => "message_too_big",
        }
    }
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
    Close(Closing),
}

#[derive(Debug, Default)]
struct OutState {
    queue: VecDeque<String>,
    market: HashMap<(Channel, PairId), MarketPending>,
    market_order: VecDeque<(Channel, PairId)>,
    /// The close the writer has yet to send.
    close: Option<Closing>,
    /// Set by the first `close`, never cleared: nothing more is queued after it.
    closed: bool,
}

#[derive(Debug)]
pub struct Outbound {
    pub id: ConnId,
    state: Mutex<OutState>,
    notify: Notify,
    closing: CancellationToken,
    queue_max: usize,
    trades_max: usize,
    /// Authenticated or subscribed: gets heartbeats.
    pub wants_heartbeat: AtomicBool,
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
            trades_max,
            wants_heartbeat: AtomicBool::new(false),
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
            metrics::counter!("gateway_slow_consumers_total").increment(1);
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

    /// Asks the writer to close the connection; the first reason wins.
    pub fn close(&self, why: Closing) {
        let mut s = self.state();
        if !s.closed {
            s.closed = true;
            s.close = Some(why);
            metrics::counter!("gateway_disconnects_total", "reason" => why.reason()).increment(1);
        }
        drop(s);
        self.closing.cancel();
        self.notify.notify_one();
    }

    /// Cancelled once a close was requested: the reader stops reading.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    pub fn queued(&self) -> usize {
        self.state().queue.len()
    }

    /// Waits for the next thing to write. Closing comes first, then responses and private
    /// pushes, then market data.
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
        if let Some(why) = s.close.take() {
            return Some(Next::Close(why));
        }
        if let Some(text) = s.queue.pop_front() {
            return Some(Next::Text(text));
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
            Next::Close(Closing::SlowConsumer)
        ));
        assert!(matches!(out.next().await, Next::Text(t) if t == "a"));
    }
}
