//! One pair's matching actor: consume a batch from the pair's partition queue, apply it to the
//! book, persist it in one transaction, then publish its events.
//!
//! The actor owns its `OrderBook`; nothing on this path is shared with other pairs. Any error
//! ends the actor (its book was mutated by a batch that did not commit, so it must never be
//! reused); the supervisor restarts it from PostgreSQL.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use engine_core::OrderBook;
use futures_util::FutureExt;
use protocol::records::{
    EVENTS_PAYLOAD_MAX, EventRecord, RECORD_VERSION, command_lines, line_ranges, pack_lines,
};
use protocol::{Command, Event, PairSpec};
use rdkafka::Message;
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, PairQueue};
use crate::record::{Outcome, apply_record};
use crate::rows::{self, Applied, RowsError};
use crate::store::{self, BatchWrite, StoreError};
use crate::telemetry as m;

#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("batch rows: {0}")]
    Rows(#[from] RowsError),
    #[error("cannot publish events for pair {pair}: {source}")]
    Publish {
        pair: String,
        #[source]
        source: KafkaError,
    },
    #[error("events delivery for pair {pair} was cancelled (producer gone)")]
    DeliveryCancelled { pair: String },
    #[error("cannot position partition {partition} at offset {offset}: {source}")]
    Seek {
        partition: i32,
        offset: i64,
        #[source]
        source: KafkaError,
    },
    #[error(
        "pair {pair}: expected offset {expected} next but got {got}; re-reading from PostgreSQL's \
         offset"
    )]
    OffsetGap {
        pair: String,
        expected: i64,
        got: i64,
    },
    #[error("blocking Kafka call failed to run: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// How often a pair stores its position in Kafka (for lag tools; PostgreSQL holds the truth).
const ADVISORY_COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Batches whose events may await Kafka's acknowledgement while the next ones commit: the
/// pair does not stall on each batch's publish, and what is in flight stays bounded.
const PENDING_BATCHES_MAX: usize = 4;

/// How long a pair with events in flight waits for a record before confirming them alone.
const IDLE_CONFIRM: Duration = Duration::from_millis(200);

/// Events handed to the producer whose acknowledgements are not awaited yet.
struct Pending {
    /// Last `orders` offset the records answer.
    last_offset: i64,
    deliveries: Vec<DeliveryFuture>,
}

/// The records one batch consumed and what the book decided for them.
struct Batch {
    /// When the first record was read.
    started: Instant,
    first_offset: i64,
    last_offset: i64,
    /// Records consumed, probes included.
    consumed: u64,
    poison: u64,
    records: Vec<EventRecord>,
    commands: Vec<Option<Command>>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            started: Instant::now(),
            first_offset: -1,
            last_offset: -1,
            consumed: 0,
            poison: 0,
            records: Vec::new(),
            commands: Vec::new(),
        }
    }
}

pub(crate) struct Actor {
    engine: Arc<Engine>,
    spec: PairSpec,
    queue: Arc<PairQueue>,
    stop: CancellationToken,
    book: OrderBook,
    /// Last `orders` offset durable in PostgreSQL.
    last_offset: i64,
    /// Last `orders` offset whose events Kafka acknowledged.
    published_offset: i64,
    /// Outbox rows starting at or below this offset are pruned (-1: unknown, prune them all).
    pruned_offset: i64,
    /// Batches whose events are handed to the producer, oldest first.
    pending: VecDeque<Pending>,
    events: Vec<Event>,
    /// When the position was last stored in Kafka.
    advised_at: Instant,
    labels: [(&'static str, String); 1],
}

/// Runs the pair until `stop` (Ok) or an error (Err: restart from PostgreSQL).
pub(crate) async fn run(
    engine: Arc<Engine>,
    spec: PairSpec,
    queue: Arc<PairQueue>,
    stop: CancellationToken,
    seek: bool,
) -> Result<(), ActorError> {
    let labels = [("pair", spec.symbol.clone())];
    metrics::gauge!(m::PAUSED, &labels).set(1.0);
    let recovered = store::recover(&engine.pool, &spec).await?;
    let partition = partition_of(&spec);
    if seek {
        engine
            .seek(partition, recovered.last_offset + 1)
            .await
            .map_err(|source| ActorError::Seek {
                partition,
                offset: recovered.last_offset + 1,
                source,
            })?;
    }
    engine.resume(partition);
    metrics::gauge!(m::PAUSED, &labels).set(0.0);
    tracing::info!(
        pair = %spec.symbol,
        last_offset = recovered.last_offset,
        last_seq = recovered.book.last_seq(),
        open_orders = recovered.book.len(),
        "pair actor started"
    );
    let mut actor = Actor {
        engine,
        book: recovered.book,
        last_offset: recovered.last_offset,
        published_offset: recovered.published_offset,
        pruned_offset: -1,
        spec,
        queue,
        stop,
        pending: VecDeque::new(),
        events: Vec::new(),
        advised_at: Instant::now(),
        labels,
    };
    actor.progress();
    actor.republish().await?;
    actor.run_batches().await?;
    actor.finish().await
}

fn partition_of(spec: &PairSpec) -> i32 {
    i32::try_from(spec.id).expect("pair ids are partition numbers")
}

impl Actor {
    async fn run_batches(&mut self) -> Result<(), ActorError> {
        let batch_max = self.engine.config.batch_records_max.max(1);
        let linger = self.engine.config.batch_linger;
        loop {
            let mut batch = Batch::new();
            // Wait for the first record of a batch (or the end).
            let queue = Arc::clone(&self.queue);
            let idle = !self.pending.is_empty();
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Ok(()),
                msg = queue.recv() => self.take(&mut batch, msg).await?,
                // Idle with events in flight: confirm them so a restart republishes nothing.
                _ = tokio::time::sleep(IDLE_CONFIRM), if idle => {
                    self.confirm_published().await?;
                    continue;
                }
            }
            let deadline = tokio::time::Instant::now() + linger;
            // Bounded in commands (a record may pack many) and in records (probes answer none).
            while batch.records.len() < batch_max && batch.consumed < batch_max as u64 {
                tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    msg = queue.recv() => self.take(&mut batch, msg).await?,
                }
            }
            if batch.consumed > 0 {
                self.commit_batch(batch).await?;
            }
        }
    }

    /// Applies one consumed message to the book and adds its answer to the batch.
    async fn take(
        &mut self,
        batch: &mut Batch,
        msg: Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>,
    ) -> Result<(), ActorError> {
        let msg = match msg {
            Ok(msg) => msg,
            Err(err) => {
                tracing::warn!(pair = %self.spec.symbol, error = %err, "orders partition read error");
                return Ok(());
            }
        };
        let offset = msg.offset();
        let expected = batch_next(batch, self.last_offset);
        if offset < expected {
            // Re-delivery of a record already applied: harmless, skip.
            return Ok(());
        }
        if offset > expected {
            self.check_gap(expected, offset).await?;
        }
        let is_probe = msg
            .headers()
            .is_some_and(|h| h.iter().any(|h| h.key == infra::kafka::PROBE_HEADER));
        #[cfg(feature = "fault-injection")]
        crate::fault::maybe_panic(&self.spec.symbol, offset, msg.headers());
        let kafka_ts_ns = msg.timestamp().to_millis().map_or(0, |ms| {
            u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000)
        });
        if batch.consumed == 0 {
            batch.first_offset = offset;
            batch.started = Instant::now();
        }
        if kafka_ts_ns > 0 {
            let age_ns = wall_clock_ns().saturating_sub(kafka_ts_ns);
            metrics::histogram!(m::RECORD_AGE_SECONDS).record(age_ns as f64 / 1e9);
        }
        batch.last_offset = offset;
        batch.consumed += 1;
        if is_probe {
            return Ok(());
        }
        // A gateway packs the commands of a pair that arrive together into one record; each
        // line is one command, applied in order, and gets its own answer.
        for line in command_lines(msg.payload()) {
            self.events.clear();
            let Outcome {
                command_id,
                account_id,
                command,
                poison,
            } = apply_record(&mut self.book, line, kafka_ts_ns, &mut self.events);
            if let Some(reason) = poison {
                batch.poison += 1;
                tracing::warn!(
                    pair = %self.spec.symbol,
                    offset,
                    reason = reason.code(),
                    "poison command answered with a rejection"
                );
            }
            batch.records.push(EventRecord {
                v: RECORD_VERSION,
                pair: self.spec.symbol.clone(),
                orders_offset: offset,
                command_id,
                account_id,
                events: std::mem::take(&mut self.events),
            });
            batch.commands.push(command);
        }
        Ok(())
    }

    /// A record past the next expected offset: either records were deleted by retention
    /// before this pair applied them (lost data, accepted with an ERROR), or a stale prefetch
    /// after a seek or rebalance (restart from PostgreSQL's offset).
    async fn check_gap(&self, expected: i64, got: i64) -> Result<(), ActorError> {
        let low = self.engine.low_watermark(partition_of(&self.spec)).await;
        match low {
            Some(low) if low > expected && got <= low => {
                tracing::error!(
                    pair = %self.spec.symbol,
                    expected,
                    got,
                    log_start = low,
                    "orders records were deleted by retention before this pair applied them"
                );
                Ok(())
            }
            _ => Err(ActorError::OffsetGap {
                pair: self.spec.symbol.clone(),
                expected,
                got,
            }),
        }
    }

    /// Persists the batch (one transaction), then hands its events to the producer.
    async fn commit_batch(&mut self, batch: Batch) -> Result<(), ActorError> {
        self.reap_published()?;
        while self.pending.len() >= PENDING_BATCHES_MAX {
            self.await_oldest().await?;
        }
        metrics::histogram!(m::BATCH_WAIT_SECONDS).record(batch.started.elapsed().as_secs_f64());
        let first_seq = batch
            .records
            .iter()
            .find_map(|r| r.events.first().map(|e| e.seq))
            .unwrap_or(self.book.last_seq() + 1);
        let applied = batch
            .records
            .iter()
            .zip(&batch.commands)
            .map(|(r, c)| Applied {
                orders_offset: r.orders_offset,
                command: c.as_ref(),
                events: &r.events,
            });
        let book = &self.book;
        let row_changes = rows::derive(applied, |id| book.get(id))?;
        let (outbox, ranges) = EventRecord::encode_lines(&batch.records);
        let write = BatchWrite {
            pair_id: self.spec.id,
            expected_offset: self.last_offset,
            first_offset: batch.first_offset,
            last_offset: batch.last_offset,
            first_seq,
            last_seq: self.book.last_seq(),
            last_trade_id: self.book.last_trade_id(),
            published_offset: self.published_offset,
            pruned_offset: self.pruned_offset,
            rows: &row_changes,
            records: &outbox,
        };
        let started = Instant::now();
        store::persist(&self.engine.pool, &write).await?;
        metrics::histogram!(m::PERSIST_SECONDS).record(started.elapsed().as_secs_f64());
        let commands = batch.records.len() as u64;
        metrics::histogram!(m::BATCH_RECORDS).record(batch.consumed as f64);
        metrics::histogram!(m::BATCH_COMMANDS).record(commands as f64);
        metrics::counter!(m::COMMANDS_TOTAL, &self.labels).increment(commands);
        if batch.poison > 0 {
            metrics::counter!(m::POISON_RECORDS_TOTAL, &self.labels).increment(batch.poison);
        }
        self.last_offset = batch.last_offset;
        self.pruned_offset = self.published_offset;
        self.progress();
        let deliveries = self.produce(&outbox, ranges).await?;
        self.pending.push_back(Pending {
            last_offset: batch.last_offset,
            deliveries,
        });
        // Advisory only (lag dashboards), so at most once per interval: a commit per batch
        // would be a broker request and a __consumer_offsets append per batch.
        if self.advised_at.elapsed() >= ADVISORY_COMMIT_EVERY {
            self.advised_at = Instant::now();
            self.engine
                .commit_advisory(partition_of(&self.spec), self.last_offset + 1);
        }
        Ok(())
    }

    fn progress(&self) {
        if let Some(p) = self.engine.progress(self.spec.id) {
            p.store(self.last_offset + 1, Ordering::Relaxed);
        }
    }

    /// Hands the records to the producer, packed into as few Kafka records as the payload limit
    /// allows (the same buffer always packs the same way, so a republished payload is
    /// byte-identical); waits (bounded queue) when the producer's queue is full.
    async fn produce(
        &mut self,
        buf: &[u8],
        ranges: Vec<Range<usize>>,
    ) -> Result<Vec<DeliveryFuture>, ActorError> {
        let topic = self.engine.config.events_topic.as_str();
        let partition = partition_of(&self.spec);
        let payloads = pack_lines(&ranges, EVENTS_PAYLOAD_MAX);
        let mut deliveries = Vec::with_capacity(payloads.len());
        for range in payloads {
            let mut record = FutureRecord::to(topic)
                .partition(partition)
                .key(self.spec.symbol.as_str())
                .payload(&buf[range]);
            loop {
                match self.engine.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // Policy when full: block this pair until the producer drains.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((source, _)) => {
                        return Err(ActorError::Publish {
                            pair: self.spec.symbol.clone(),
                            source,
                        });
                    }
                }
            }
        }
        Ok(deliveries)
    }

    /// Takes the acknowledgements that already arrived, oldest batch first, without waiting;
    /// advances the published offset past every batch fully acknowledged.
    fn reap_published(&mut self) -> Result<(), ActorError> {
        while let Some(front) = self.pending.front_mut() {
            let mut done = 0;
            for delivery in &mut front.deliveries {
                match delivery.now_or_never() {
                    None => break,
                    Some(result) => {
                        delivered(&self.spec, result)?;
                        done += 1;
                    }
                }
            }
            front.deliveries.drain(..done);
            if !front.deliveries.is_empty() {
                break;
            }
            self.published_offset = self.published_offset.max(front.last_offset);
            self.pending.pop_front();
        }
        Ok(())
    }

    /// Waits for the oldest batch's acknowledgements; records its offset as published.
    async fn await_oldest(&mut self) -> Result<(), ActorError> {
        let Some(pending) = self.pending.pop_front() else {
            return Ok(());
        };
        for delivery in pending.deliveries {
            delivered(&self.spec, delivery.await)?;
        }
        self.published_offset = self.published_offset.max(pending.last_offset);
        Ok(())
    }

    /// Republishes what the outbox holds past the published offset (a crash between commit and
    /// acknowledgement). Consumers drop the duplicates by seq.
    async fn republish(&mut self) -> Result<(), ActorError> {
        let rows =
            store::unpublished(&self.engine.pool, self.spec.id, self.published_offset).await?;
        let Some(last_offset) = rows.last().map(|(offset, _)| *offset) else {
            return Ok(());
        };
        let mut deliveries = Vec::new();
        let mut count = 0u64;
        for (_, records) in &rows {
            let ranges = line_ranges(records);
            count += ranges.len() as u64;
            deliveries.extend(self.produce(records, ranges).await?);
        }
        tracing::info!(
            pair = %self.spec.symbol,
            from_offset = self.published_offset + 1,
            to_offset = last_offset,
            records = count,
            "republished events from the outbox"
        );
        metrics::counter!(m::PUBLISH_REPLAYED_RECORDS_TOTAL, &self.labels).increment(count);
        self.pending.push_back(Pending {
            last_offset,
            deliveries,
        });
        Ok(())
    }

    /// Awaits the in-flight events and records them as published without a new batch.
    async fn confirm_published(&mut self) -> Result<(), ActorError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        while !self.pending.is_empty() {
            self.await_oldest().await?;
        }
        store::mark_published(
            &self.engine.pool,
            self.spec.id,
            self.last_offset,
            self.published_offset,
        )
        .await?;
        // Idle or stopping: the throttled advisory position catches up too.
        self.advised_at = Instant::now();
        self.engine
            .commit_advisory(partition_of(&self.spec), self.last_offset + 1);
        Ok(())
    }

    /// On stop: wait for the last acknowledgements so the next owner republishes nothing.
    async fn finish(mut self) -> Result<(), ActorError> {
        self.confirm_published().await?;
        tracing::info!(
            pair = %self.spec.symbol,
            last_offset = self.last_offset,
            last_seq = self.book.last_seq(),
            "pair actor stopped after its last commit"
        );
        Ok(())
    }
}

fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The outcome of one event record's delivery.
/// (`Err(_)`: the producer dropped it, cancelled.)
fn delivered<E>(
    spec: &PairSpec,
    result: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, E>,
) -> Result<(), ActorError> {
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((source, _))) => Err(ActorError::Publish {
            pair: spec.symbol.clone(),
            source,
        }),
        Err(_) => Err(ActorError::DeliveryCancelled {
            pair: spec.symbol.clone(),
        }),
    }
}

/// The offset the batch expects next.
fn batch_next(batch: &Batch, last_durable: i64) -> i64 {
    if batch.consumed == 0 {
        last_durable + 1
    } else {
        batch.last_offset + 1
    }
}
