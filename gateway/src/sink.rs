//! The way into Kafka: admission control, then the producer of `orders` (and, with the account
//! stage on, of `accounts`, where place and amend go to reserve funds first).
//!
//! Admission (named policy: reject, never queue without bound):
//! - new work (place, amend) is shed with `overloaded` when unacknowledged commands reach
//!   `inflight_new_max`, the producer's local queue reaches `producer_queue_new_max`, or Kafka
//!   acknowledgements show a standing queue (the smallest delay over the last 100 ms above
//!   `queue_delay_target_ms`, or no acknowledgement at all for that long while commands wait);
//! - new work is also shed when the engine is the bottleneck: the smallest time to the engine's
//!   verdict over the last 100 ms exceeds `engine_delay_target_ms` (a standing queue behind
//!   Kafka), or `awaiting_verdict_new_max` commands wait for a verdict. Without this, a saturated
//!   engine turns excess load into seconds of queueing instead of fast, explicit rejections;
//! - cancels and cancel-alls are admitted until the hard bound `inflight_hard_max`, because
//!   removing risk is what a client needs most when the system is slow;
//! - a full producer queue (`QueueFull`) or a failed delivery answers `overloaded` too.

use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use protocol::PairSpec;
use protocol::records::{ORDERS_PAYLOAD_MAX, OrderRecord, pack_lines, push_line};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::Limits;

const DELAY_WINDOW: Duration = Duration::from_millis(100);

/// What a command does to the system's risk, which decides how it is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// place, amend: shed first.
    New,
    /// cancel, cancel_all, the dead-man switch: admitted up to the hard bound.
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    #[error("{0} commands are waiting for Kafka")]
    InFlight(usize),
    #[error("the Kafka producer queue holds {0} records")]
    ProducerQueue(usize),
    #[error("Kafka acknowledgements take {0} ms")]
    QueueDelay(u64),
    #[error("the matching engine answers in {0} ms")]
    EngineDelay(u64),
    #[error("{0} commands are waiting for the matching engine")]
    AwaitingVerdict(usize),
}

impl Shed {
    /// Every [`Shed::label`].
    pub const LABELS: &'static [&'static str] = &[
        "in_flight",
        "producer_queue",
        "queue_delay",
        "engine_delay",
        "awaiting_verdict",
    ];

    pub fn label(self) -> &'static str {
        match self {
            Shed::InFlight(_) => "in_flight",
            Shed::ProducerQueue(_) => "producer_queue",
            Shed::QueueDelay(_) => "queue_delay",
            Shed::EngineDelay(_) => "engine_delay",
            Shed::AwaitingVerdict(_) => "awaiting_verdict",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("the Kafka producer queue is full")]
    QueueFull,
    #[error("Kafka did not acknowledge the command: {0}")]
    Delivery(KafkaError),
    #[error("the Kafka producer was dropped before acknowledging")]
    Cancelled,
    #[error("the account stage is off on this gateway")]
    NoAccountsTopic,
}

/// CoDel's signal: the smallest delay seen in the last full window. A queue that only bursts
/// shows some small delays in every window; a standing queue shows none. A window with fewer
/// than `DELAY_SAMPLES_MIN` samples says nothing under light traffic: one slow answer (a cold
/// start, say) is not a standing queue and must not shed the next order. With at least that
/// many commands waiting, though, few answers is itself the sign of a stall (a broker that
/// answers a trickle, or nothing): their delays count however few, and windows with no answer
/// at all add up, so a stall of seconds reads as seconds, not as one window's 100 ms.
#[derive(Debug)]
pub struct DelayWindow {
    state: Mutex<DelayState>,
}

#[derive(Debug)]
struct DelayState {
    window_start: Instant,
    window_min: Option<Duration>,
    window_samples: u32,
    last_min: Duration,
    /// Consecutive windows without an answer while many commands waited, in time.
    silent: Duration,
}

const DELAY_SAMPLES_MIN: u32 = 16;

impl Default for DelayWindow {
    fn default() -> DelayWindow {
        DelayWindow {
            state: Mutex::new(DelayState {
                window_start: Instant::now(),
                window_min: None,
                window_samples: 0,
                last_min: Duration::ZERO,
                silent: Duration::ZERO,
            }),
        }
    }
}

impl DelayWindow {
    pub fn record(&self, delay: Duration) {
        let mut d = self.state.lock().unwrap_or_else(|p| p.into_inner());
        d.window_min = Some(d.window_min.map_or(delay, |m| m.min(delay)));
        d.window_samples = d.window_samples.saturating_add(1);
    }

    /// The smallest delay of the last full window. `waiting`: how much work is outstanding; a
    /// window without any sample while work waits means nothing came back at all (stuck), not
    /// that nothing was sent.
    pub fn standing(&self, waiting: usize) -> Duration {
        let mut d = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = d.window_start.elapsed();
        if elapsed >= DELAY_WINDOW {
            let many = waiting >= DELAY_SAMPLES_MIN as usize;
            if d.window_min.is_some() || !many {
                d.silent = Duration::ZERO;
            }
            d.last_min = match d.window_min {
                Some(min) if d.window_samples >= DELAY_SAMPLES_MIN || many => min,
                Some(_) => Duration::ZERO,
                None if many => {
                    d.silent += elapsed;
                    d.silent
                }
                None if waiting > 0 => elapsed,
                None => Duration::ZERO,
            };
            d.window_min = None;
            d.window_samples = 0;
            d.window_start = Instant::now();
        }
        d.last_min
    }
}

/// Which topic a command line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dest {
    /// `orders`, partition = pair.
    Orders,
    /// The account stage's `accounts`, partition = account shard.
    Accounts,
}

pub struct OrderSink {
    producer: FutureProducer,
    topic: Arc<str>,
    /// The account stage's input topic, when the stage is on.
    accounts_topic: Option<Arc<str>>,
    /// Per topic and partition: the commands waiting to be packed into its next record.
    packing: DashMap<(Dest, i32), Arc<Mutex<Packing>>>,
    in_flight: Arc<AtomicUsize>,
    kafka_delay: DelayWindow,
    /// Time from writing a command to its verdict on `events`, recorded by the hub.
    engine_delay: Arc<DelayWindow>,
    /// Commands waiting for their verdict (the hub's request map).
    awaiting_verdict: Arc<AtomicUsize>,
    limits: Limits,
}

/// One admitted command; gives its slot back when dropped.
#[derive(Debug)]
pub struct Permit {
    in_flight: Arc<AtomicUsize>,
    admitted: Instant,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let before = self.in_flight.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("gateway_commands_in_flight").set((before - 1) as f64);
    }
}

impl OrderSink {
    pub fn new(
        producer: FutureProducer,
        topic: String,
        limits: Limits,
        engine_delay: Arc<DelayWindow>,
        awaiting_verdict: Arc<AtomicUsize>,
    ) -> OrderSink {
        OrderSink {
            producer,
            topic: topic.into(),
            accounts_topic: limits.accounts.accounts_topic.as_deref().map(Arc::from),
            packing: DashMap::new(),
            in_flight: Arc::new(AtomicUsize::new(0)),
            kafka_delay: DelayWindow::default(),
            engine_delay,
            awaiting_verdict,
            limits,
        }
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// True when every command handed to `send` is in the producer's queue (no flush is
    /// pending): the drain waits for this before it flushes the producer.
    pub fn all_handed_to_producer(&self) -> bool {
        self.packing
            .iter()
            .all(|p| !lock(p.value()).flush_scheduled)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether a new order would be shed now (the same signals as [`OrderSink::admit`], read
    /// without taking a slot): the system is overloaded, and reads its clients' frames late.
    pub fn overloaded(&self) -> bool {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        in_flight >= self.limits.inflight_new_max
            || self.producer.in_flight_count().max(0) as usize >= self.limits.producer_queue_new_max
            || self.kafka_delay.standing(in_flight)
                > Duration::from_millis(self.limits.queue_delay_target_ms)
            || self.awaiting_verdict.load(Ordering::Relaxed) >= self.limits.awaiting_verdict_new_max
            || self.engine_delay.standing(0)
                > Duration::from_millis(self.limits.engine_delay_target_ms)
    }

    /// Takes a slot for one command, or says why the system is shedding.
    pub fn admit(&self, class: Class) -> Result<Permit, Shed> {
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let permit = Permit {
            in_flight: Arc::clone(&self.in_flight),
            admitted: Instant::now(),
        };
        metrics::gauge!("gateway_commands_in_flight").set((in_flight + 1) as f64);
        if in_flight >= self.limits.inflight_hard_max {
            return Err(Shed::InFlight(in_flight));
        }
        if class == Class::New {
            if in_flight >= self.limits.inflight_new_max {
                return Err(Shed::InFlight(in_flight));
            }
            let queued = self.producer.in_flight_count().max(0) as usize;
            if queued >= self.limits.producer_queue_new_max {
                return Err(Shed::ProducerQueue(queued));
            }
            let delay = self.kafka_delay.standing(in_flight);
            if delay > Duration::from_millis(self.limits.queue_delay_target_ms) {
                return Err(Shed::QueueDelay(delay.as_millis() as u64));
            }
            let awaiting = self.awaiting_verdict.load(Ordering::Relaxed);
            if awaiting >= self.limits.awaiting_verdict_new_max {
                return Err(Shed::AwaitingVerdict(awaiting));
            }
            // Only observed verdicts count: a verdict that never comes (an engine that is down)
            // is bounded by `awaiting_verdict_new_max` instead.
            let engine = self.engine_delay.standing(0);
            if engine > Duration::from_millis(self.limits.engine_delay_target_ms) {
                return Err(Shed::EngineDelay(engine.as_millis() as u64));
            }
        }
        Ok(permit)
    }

    fn record_delay(&self, delay: Duration) {
        self.kafka_delay.record(delay);
        metrics::histogram!("gateway_kafka_ack_seconds").record(delay.as_secs_f64());
    }

    /// Writes one command to its pair's partition and waits for Kafka's acknowledgement.
    ///
    /// Commands of one pair that arrive together share a Kafka record: the first one schedules
    /// a flush task, which first lets the tasks that are ready now run (other connections'
    /// commands join the record), then packs everything queued for the partition into one
    /// record of newline-separated lines, in arrival order. Each waiter gets its record's
    /// acknowledgement. Per record, not per command, the producer, the broker and the engine
    /// pay their fixed costs; at 1.6M commands/min a record holds ~18 commands on average.
    pub async fn send(
        &self,
        permit: Permit,
        spec: &PairSpec,
        record: &OrderRecord,
    ) -> Result<(), SendError> {
        let partition = i32::try_from(spec.id).expect("pair ids fit a partition number");
        self.send_line(permit, Dest::Orders, partition, &spec.symbol, record)
            .await
    }

    /// Like [`OrderSink::send`], for one line of any topic: packed with the other lines queued
    /// for the same partition, in arrival order. `key` is the record's Kafka key (the pair's
    /// symbol on `orders`, the shard number on `accounts`). Admission and acknowledgement
    /// accounting are the same for both topics.
    pub async fn send_line<T: Serialize>(
        &self,
        permit: Permit,
        dest: Dest,
        partition: i32,
        key: &str,
        line: &T,
    ) -> Result<(), SendError> {
        let topic = match dest {
            Dest::Orders => Arc::clone(&self.topic),
            Dest::Accounts => match &self.accounts_topic {
                Some(t) => Arc::clone(t),
                None => return Err(SendError::NoAccountsTopic),
            },
        };
        let packing = Arc::clone(
            self.packing
                .entry((dest, partition))
                .or_insert_with(|| Arc::new(Mutex::new(Packing::default())))
                .value(),
        );
        let (done, answer) = oneshot::channel();
        let start_flush = {
            let mut p = lock(&packing);
            p.push(line, done);
            !std::mem::replace(&mut p.flush_scheduled, true)
        };
        if start_flush {
            tokio::spawn(flush(
                self.producer.clone(),
                topic,
                partition,
                key.to_owned(),
                packing,
            ));
        }
        let result = answer.await.unwrap_or(Err(SendError::Cancelled));
        if result.is_ok() {
            self.record_delay(permit.admitted.elapsed());
            metrics::counter!("gateway_commands_produced_total").increment(1);
        }
        drop(permit);
        result
    }
}

/// Commands of one partition waiting for the next record: their lines, back to back with one
/// newline between, and who waits for each.
#[derive(Default)]
struct Packing {
    buf: Vec<u8>,
    lines: Vec<Range<usize>>,
    waiting: Vec<oneshot::Sender<Result<(), SendError>>>,
    /// A flush task is scheduled and has not taken the queue yet.
    flush_scheduled: bool,
}

impl Packing {
    fn push<T: Serialize>(&mut self, line: &T, done: oneshot::Sender<Result<(), SendError>>) {
        push_line(&mut self.buf, &mut self.lines, line);
        self.waiting.push(done);
    }
}

fn lock(packing: &Mutex<Packing>) -> std::sync::MutexGuard<'_, Packing> {
    packing.lock().unwrap_or_else(|p| p.into_inner())
}

/// Packs what a partition has queued into records (at most `ORDERS_PAYLOAD_MAX` bytes each)
/// and answers each waiter with its record's delivery.
async fn flush(
    producer: FutureProducer,
    topic: Arc<str>,
    partition: i32,
    key: String,
    packing: Arc<Mutex<Packing>>,
) {
    tokio::task::yield_now().await;
    let mut sent = Vec::new();
    {
        // Handed to the producer under the lock, so records keep the order of arrival even
        // when the next flush task starts on another worker.
        let mut p = lock(&packing);
        p.flush_scheduled = false;
        let buf = std::mem::take(&mut p.buf);
        let lines = std::mem::take(&mut p.lines);
        let mut waiting = std::mem::take(&mut p.waiting).into_iter();
        for (payload, count) in payloads(&lines, ORDERS_PAYLOAD_MAX) {
            let waiters: Vec<_> = waiting.by_ref().take(count).collect();
            metrics::histogram!("gateway_record_commands").record(count as f64);
            let record = FutureRecord::to(&topic)
                .partition(partition)
                .key(key.as_str())
                .payload(&buf[payload]);
            match producer.send_result(record) {
                Ok(delivery) => sent.push((delivery, waiters)),
                Err((e, _)) => {
                    let e = match e {
                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                            SendError::QueueFull
                        }
                        e => SendError::Delivery(e),
                    };
                    answer(waiters, &Err(e));
                }
            }
        }
    }
    for (delivery, waiters) in sent {
        let result = match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(SendError::Delivery(e)),
            Err(_) => Err(SendError::Cancelled),
        };
        answer(waiters, &result);
    }
}

/// The records for queued `lines` (back to back, one newline between): each record's byte range
/// and how many lines (commands) it holds, in order.
fn payloads(lines: &[Range<usize>], max: usize) -> Vec<(Range<usize>, usize)> {
    let mut line = 0;
    pack_lines(lines, max)
        .into_iter()
        .map(|payload| {
            let count = lines[line..]
                .iter()
                .take_while(|l| l.end <= payload.end)
                .count();
            line += count;
            (payload, count)
        })
        .collect()
}

fn answer(waiters: Vec<oneshot::Sender<Result<(), SendError>>>, result: &Result<(), SendError>) {
    for w in waiters {
        // A waiter that is gone (its connection closed) needs no answer.
        let _ = w.send(result.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_commands_pack_into_records_under_the_limit_in_order() {
        // Lines of 10, 20, 30 and 5 bytes, one newline between.
        let lines = vec![0..10, 11..31, 32..62, 63..68];
        assert_eq!(payloads(&lines, 1024), vec![(0..68, 4)]);
        assert_eq!(
            payloads(&lines, 40),
            vec![(0..31, 2), (32..68, 2)],
            "whole lines, at most 40 bytes, nothing dropped"
        );
        assert_eq!(
            payloads(&lines, 8),
            vec![(0..10, 1), (11..31, 1), (32..62, 1), (63..68, 1)],
            "a line longer than the limit travels alone"
        );
        assert!(payloads(&[], 1024).is_empty());
    }

    #[test]
    fn a_standing_delay_is_the_smallest_of_the_last_full_window() {
        let w = DelayWindow::default();
        for _ in 0..DELAY_SAMPLES_MIN {
            w.record(Duration::from_millis(300));
        }
        w.record(Duration::from_millis(120));
        std::thread::sleep(DELAY_WINDOW + Duration::from_millis(10));
        assert_eq!(w.standing(0), Duration::from_millis(120));
        w.record(Duration::from_millis(900));
        std::thread::sleep(DELAY_WINDOW + Duration::from_millis(10));
        assert_eq!(
            w.standing(0),
            Duration::ZERO,
            "one slow answer is not a queue"
        );
        std::thread::sleep(DELAY_WINDOW + Duration::from_millis(10));
        assert_eq!(w.standing(0), Duration::ZERO, "no sample, nothing waiting");
        std::thread::sleep(DELAY_WINDOW + Duration::from_millis(10));
        assert!(
            w.standing(1) >= DELAY_WINDOW,
            "no sample while work waits: stuck"
        );
    }

    #[test]
    fn with_many_waiting_a_trickle_of_slow_answers_or_none_is_a_stall() {
        let w = DelayWindow::default();
        let many = DELAY_SAMPLES_MIN as usize;
        w.record(Duration::from_millis(900));
        std::thread::sleep(DELAY_WINDOW + Duration::from_millis(10));
        assert_eq!(
            w.standing(many),
            Duration::from_millis(900),
            "a trickle counts"
        );
        let mut silent = Duration::ZERO;
        for _ in 0..3 {
            std::thread::sleep(DELAY_WINDOW + Duration::from_millis(10));
            let now = w.standing(many);
            assert!(now > silent, "silence adds up: {now:?} after {silent:?}");
            silent = now;
        }
        assert!(silent >= 3 * DELAY_WINDOW, "{silent:?}");
        w.record(Duration::from_millis(5));
        std::thread::sleep(DELAY_WINDOW + Duration::from_millis(10));
        assert_eq!(
            w.standing(many),
            Duration::from_millis(5),
            "an answer ends it"
        );
        std::thread::sleep(DELAY_WINDOW + Duration::from_millis(10));
        assert!(
            w.standing(many) < 2 * DELAY_WINDOW,
            "the silence starts over"
        );
    }
}
