//! The way into Kafka: admission control, then the `orders` producer.
//!
//! Admission (named policy: reject, never queue without bound):
//! - new work (place, amend) is shed with `overloaded` when unacknowledged commands reach
//!   `inflight_new_max`, the producer's local queue reaches `producer_queue_new_max`, or Kafka
//!   acknowledgements show a standing queue (the smallest delay over the last 100 ms above
//!   `queue_delay_target_ms`, or no acknowledgement at all for that long while commands wait);
//! - cancels and cancel-alls are admitted until the hard bound `inflight_hard_max`, because
//!   removing risk is what a client needs most when the system is slow;
//! - a full producer queue (`QueueFull`) or a failed delivery answers `overloaded` too.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use protocol::PairSpec;
use protocol::records::OrderRecord;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

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
}

impl Shed {
    pub fn label(self) -> &'static str {
        match self {
            Shed::InFlight(_) => "in_flight",
            Shed::ProducerQueue(_) => "producer_queue",
            Shed::QueueDelay(_) => "queue_delay",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the Kafka producer queue is full")]
    QueueFull,
    #[error("Kafka did not acknowledge the command: {0}")]
    Delivery(KafkaError),
    #[error("the Kafka producer was dropped before acknowledging")]
    Cancelled,
}

/// CoDel's signal: the smallest acknowledgement delay seen in the last full window.
#[derive(Debug)]
struct DelayState {
    window_start: Instant,
    window_min: Option<Duration>,
    last_min: Duration,
}

pub struct OrderSink {
    producer: FutureProducer,
    topic: String,
    in_flight: Arc<AtomicUsize>,
    delay: Mutex<DelayState>,
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
    pub fn new(producer: FutureProducer, topic: String, limits: Limits) -> OrderSink {
        OrderSink {
            producer,
            topic,
            in_flight: Arc::new(AtomicUsize::new(0)),
            delay: Mutex::new(DelayState {
                window_start: Instant::now(),
                window_min: None,
                last_min: Duration::ZERO,
            }),
            limits,
        }
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
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
            let delay = self.queue_delay(in_flight > 0);
            if delay > Duration::from_millis(self.limits.queue_delay_target_ms) {
                return Err(Shed::QueueDelay(delay.as_millis() as u64));
            }
        }
        Ok(permit)
    }

    fn queue_delay(&self, waiting: bool) -> Duration {
        let mut d = self.delay.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = d.window_start.elapsed();
        if elapsed >= DELAY_WINDOW {
            d.last_min = match d.window_min {
                Some(min) => min,
                // Nothing acknowledged for a whole window while commands wait: Kafka is stuck.
                None if waiting => elapsed,
                None => Duration::ZERO,
            };
            d.window_min = None;
            d.window_start = Instant::now();
        }
        d.last_min
    }

    fn record_delay(&self, delay: Duration) {
        let mut d = self.delay.lock().unwrap_or_else(|p| p.into_inner());
        d.window_min = Some(d.window_min.map_or(delay, |m| m.min(delay)));
        metrics::histogram!("gateway_kafka_ack_seconds").record(delay.as_secs_f64());
    }

    /// Writes one command to its pair's partition and waits for Kafka's acknowledgement.
    pub async fn send(
        &self,
        permit: Permit,
        spec: &PairSpec,
        record: &OrderRecord,
    ) -> Result<(), SendError> {
        let payload = record.encode();
        let partition = i32::try_from(spec.id).expect("pair ids fit a partition number");
        let kafka_record = FutureRecord::to(&self.topic)
            .partition(partition)
            .key(spec.symbol.as_str())
            .payload(&payload);
        let delivery = match self.producer.send_result(kafka_record) {
            Ok(delivery) => delivery,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                return Err(SendError::QueueFull);
            }
            Err((e, _)) => return Err(SendError::Delivery(e)),
        };
        let result = match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(SendError::Delivery(e)),
            Err(_) => Err(SendError::Cancelled),
        };
        if result.is_ok() {
            self.record_delay(permit.admitted.elapsed());
            metrics::counter!("gateway_commands_produced_total").increment(1);
        }
        drop(permit);
        result
    }
}
