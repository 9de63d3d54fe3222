//! One pair's matching actor: consume a batch from the pair's partition queue, apply it to the
//! book and publish its events at once; commit it to PostgreSQL once Kafka holds those events.
//!
//! Two halves run in the actor's one task. The matcher owns the `OrderBook`: it applies a batch,
//! derives its row changes, hands its events to the producer and passes the batch on. The
//! committer waits for Kafka's acknowledgement of a batch's events, then writes it, together with
//! any later batches already waiting, in one fenced transaction. So a client's answer never waits
//! for PostgreSQL, and `pair_offsets.last_offset` never runs ahead of the `events` topic: after a
//! crash, the records past it are applied again to the same book and give the same events (same
//! `seq`, same content), which consumers drop as duplicates.
//!
//! A command an account shard forwarded is applied once per source ([`Sources`]); the map of
//! last sources per shard commits with the offset, so a restart decides repeats as before. With
//! an `accounts` topic, a batch's settlement lines (one per command line and account shard it
//! moves funds in) are produced right after its events, and the committer waits for both: the
//! shards are never behind what PostgreSQL says was applied, and a restart sends the same lines
//! (same `seq`) again, which the shards drop.
//!
//! Nothing on this path is shared with other pairs. Any error ends the actor (its book holds
//! batches that did not commit, so it must never be reused); the supervisor restarts it from
//! PostgreSQL.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::KeyValue;

use engine_core::OrderBook;
use protocol::records::{
    EVENTS_PAYLOAD_MAX, EventRecord, ORDERS_PAYLOAD_MAX, RECORD_VERSION, command_lines, pack_lines,
};
use protocol::{Command, Event, PairSpec};
use rdkafka::Message;
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, PairQueue};
use crate::record::{Outcome, Sources, apply_record};
use crate::rows::{self, Applied, RowChanges, RowsError};
use crate::settle::Settlements;
use crate::store::{self, BatchWrite, StoreError};
use crate::telemetry as m;

#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("batch rows: {0}")]
    Rows(#[from] RowsError),
    #[error("cannot publish {what} for pair {pair}: {source}")]
    Publish {
        pair: String,
        /// "events" or "settlements".
        what: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("{what} delivery for pair {pair} was cancelled (producer gone)")]
    DeliveryCancelled { pair: String, what: &'static str },
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
    #[error(
        "pair {pair}: PostgreSQL has applied {topic} partition {partition} up to offset \
         {last_offset}, but the partition ends at {end}: the log was recreated or lost records. \
         The pair stays stopped rather than skip commands; restore the topic, or reset the \
         pair's state (docs/DEPLOY.md, \"A log behind PostgreSQL\")"
    )]
    LogBehind {
        pair: String,
        topic: String,
        partition: i32,
        last_offset: i64,
        end: i64,
    },
    #[error("blocking Kafka call failed to run: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[cfg(feature = "fault-injection")]
    #[error("injected fault: the commit of pair {pair} through orders offset {last_offset} fails")]
    InjectedCommitFailure { pair: String, last_offset: i64 },
}

/// How often a pair stores its position in Kafka (for lag tools; PostgreSQL holds the truth).
const ADVISORY_COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Batches published but not yet committed: how far the matcher may run ahead of PostgreSQL
/// (and so at most what a restart applies again). When full, the matcher waits.
const STAGED_BATCHES_MAX: usize = 16;

/// A commit absorbs at most this many waiting batches.
const COMMIT_BATCHES_MAX: usize = 16;

/// The records one batch consumed and what the book decided for them.
struct Batch {
    /// When the first record was read.
    started: Instant,
    last_offset: i64,
    /// Records consumed, probes included.
    consumed: u64,
    poison: u64,
    /// Command lines skipped as repeats of a source already applied.
    repeated: u64,
    records: Vec<EventRecord>,
    commands: Vec<Option<Command>>,
    /// The traced commands' spans, ended once the batch is committed.
    traces: Vec<infra::trace::CmdSpan>,
    /// Injected fault: the commit holding this batch fails.
    #[cfg(feature = "fault-injection")]
    fail_commit: bool,
}

impl Commit {
    /// A commit of one acknowledged batch.
    fn of(mut batch: Staged, events_offset: i64) -> Commit {
        let traces = published_traces(&mut batch);
        Commit {
            traces,
            last_offset: batch.last_offset,
            events_offset,
            last_seq: batch.last_seq,
            last_trade_id: batch.last_trade_id,
            commands: batch.commands,
            rows: batch.rows,
            sources: batch.sources,
            published: batch.published,
            batches: 1,
            #[cfg(feature = "fault-injection")]
            fail_commit: batch.fail_commit,
        }
    }

    /// Adds the acknowledged batch that followed.
    fn absorb(&mut self, mut batch: Staged, events_offset: i64) {
        self.traces.extend(published_traces(&mut batch));
        self.last_offset = batch.last_offset;
        self.events_offset = self.events_offset.max(events_offset);
        self.last_seq = batch.last_seq;
        self.last_trade_id = batch.last_trade_id;
        self.commands += batch.commands;
        self.rows.absorb(batch.rows);
        self.sources.extend(batch.sources);
        self.batches += 1;
        #[cfg(feature = "fault-injection")]
        {
            self.fail_commit |= batch.fail_commit;
        }
    }
}

impl Batch {
    fn new() -> Batch {
        Batch {
            started: Instant::now(),
            last_offset: -1,
            consumed: 0,
            poison: 0,
            repeated: 0,
            records: Vec::new(),
            commands: Vec::new(),
            traces: Vec::new(),
            #[cfg(feature = "fault-injection")]
            fail_commit: false,
        }
    }
}

/// A batch whose events are in the producer's hands, waiting to be committed.
struct Staged {
    last_offset: i64,
    last_seq: u64,
    last_trade_id: u64,
    commands: u64,
    rows: RowChanges,
    /// The shards whose last applied source moved in this batch.
    sources: BTreeMap<u32, i64>,
    /// Its `events` records.
    deliveries: Vec<DeliveryFuture>,
    /// Its settlement records (empty without an `accounts` topic).
    settle_deliveries: Vec<DeliveryFuture>,
    /// When its events were handed to the producer.
    published: Instant,
    /// Traced commands: `engine.publish` from `publish_from` to `published`, then the commit.
    traces: Vec<infra::trace::CmdSpan>,
    publish_from: SystemTime,
    #[cfg(feature = "fault-injection")]
    fail_commit: bool,
}

/// The half that owns the book: applies batches and publishes their events.
struct Matcher {
    engine: Arc<Engine>,
    spec: PairSpec,
    queue: Arc<PairQueue>,
    stop: CancellationToken,
    book: OrderBook,
    /// Last `orders` offset applied to the book (committed or not).
    applied_offset: i64,
    /// The last source applied per shard, as of `applied_offset`.
    sources: Sources,
    /// A batch's settlement lines per shard; `None` without an `accounts` topic.
    settle: Option<Settlements>,
    events: Vec<Event>,
    staged: mpsc::Sender<Staged>,
    labels: [(&'static str, String); 1],
}

/// The half that owns the durable position: commits published batches in order.
struct Committer {
    engine: Arc<Engine>,
    spec: PairSpec,
    /// Last `orders` offset durable in PostgreSQL.
    last_offset: i64,
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
    // PostgreSQL says this pair applied records up to `last_offset`, so the log holds them. A
    // partition that ends before it was recreated (or lost records to an unclean leader
    // election): reading on would skip its first records as "already applied" and answer none
    // of them. The pair stays stopped, loudly, until an operator decides (docs/DEPLOY.md).
    if recovered.last_offset >= 0
        && let Some((_, end)) = engine.watermarks(partition).await
        && end <= recovered.last_offset
    {
        return Err(ActorError::LogBehind {
            pair: spec.symbol.clone(),
            topic: engine.config.orders_topic.clone(),
            partition,
            last_offset: recovered.last_offset,
            end,
        });
    }
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
    let (staged, waiting) = mpsc::channel(STAGED_BATCHES_MAX);
    let matcher = Matcher {
        engine: Arc::clone(&engine),
        spec: spec.clone(),
        queue,
        stop,
        applied_offset: recovered.last_offset,
        sources: recovered.sources,
        settle: engine.settle.as_ref().map(|t| Settlements::new(t.shards)),
        book: recovered.book,
        events: Vec::new(),
        staged,
        labels: labels.clone(),
    };
    let committer = Committer {
        engine,
        spec,
        last_offset: recovered.last_offset,
        advised_at: Instant::now(),
        labels,
    };
    committer.progress();
    // The matcher ends on stop and drops its sender; the committer then commits what is left.
    // An error in either ends both.
    tokio::try_join!(matcher.run(), committer.run(waiting))?;
    Ok(())
}

fn partition_of(spec: &PairSpec) -> i32 {
    i32::try_from(spec.id).expect("pair ids are partition numbers")
}

impl Matcher {
    async fn run(mut self) -> Result<(), ActorError> {
        let batch_max = self.engine.config.batch_records_max.max(1);
        let linger = self.engine.config.batch_linger;
        loop {
            let mut batch = Batch::new();
            // Wait for the first record of a batch (or the end).
            let queue = Arc::clone(&self.queue);
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Ok(()),
                msg = queue.recv() => self.take(&mut batch, msg).await?,
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
                self.publish_batch(batch).await?;
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
        let expected = batch_next(batch, self.applied_offset);
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
        {
            crate::fault::maybe_panic(&self.spec.symbol, offset, msg.headers());
            batch.fail_commit |=
                crate::fault::fails_commit(&self.spec.symbol, offset, msg.headers());
        }
        let kafka_ts_ns = msg.timestamp().to_millis().map_or(0, |ms| {
            u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000)
        });
        if batch.consumed == 0 {
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
            let applying = infra::trace::enabled().then(SystemTime::now);
            let Outcome {
                command_id,
                account_id,
                command,
                poison,
                repeat,
                tp,
            } = apply_record(
                &mut self.book,
                &mut self.sources,
                line,
                kafka_ts_ns,
                &mut self.events,
            );
            if let Some(src) = repeat {
                // A restarted account shard forwarded it again: applied once already, and
                // answered then.
                batch.repeated += 1;
                tracing::debug!(
                    pair = %self.spec.symbol,
                    offset,
                    shard = src.shard,
                    source_offset = src.offset,
                    "repeated command skipped"
                );
                continue;
            }
            if let Some(reason) = poison {
                batch.poison += 1;
                tracing::warn!(
                    pair = %self.spec.symbol,
                    offset,
                    reason = reason.code(),
                    "poison command answered with a rejection"
                );
            }
            // A traced command: `engine.command` from its line's read to its commit, with
            // the match as a step; the answer carries it on.
            let span = match (applying, tp.as_deref()) {
                (Some(at), Some(tp)) => infra::trace::start("engine.command", Some(tp), at),
                _ => None,
            };
            let answer_tp = span.as_ref().map(|span| {
                tracing::debug!(
                    target: "command",
                    trace_id = %span.trace_id(),
                    pair = %self.spec.symbol,
                    account_id = account_id.map(|a| a.0),
                    order_id = self.events.iter().find_map(|e| e.body.order_id()).map(|o| o.0),
                    command_id,
                    orders_offset = offset,
                    "command applied"
                );
                span.set_attribute(KeyValue::new("pair", self.spec.symbol.clone()));
                span.set_attribute(KeyValue::new("orders_offset", offset));
                span.step(
                    "engine.match",
                    applying.unwrap_or_else(SystemTime::now),
                    SystemTime::now(),
                );
                span.traceparent()
            });
            batch.traces.extend(span);
            batch.records.push(EventRecord {
                v: RECORD_VERSION,
                pair: self.spec.symbol.clone(),
                orders_offset: offset,
                command_id,
                account_id,
                tp: answer_tp,
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

    /// Derives the batch's rows, hands its events to the producer, and passes it to the
    /// committer (waiting while `STAGED_BATCHES_MAX` batches are uncommitted).
    async fn publish_batch(&mut self, mut batch: Batch) -> Result<(), ActorError> {
        let publish_from = SystemTime::now();
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
        let rows = rows::derive(applied, |id| book.get(id))?;
        let (buf, ranges) = EventRecord::encode_lines(&batch.records);
        let partition = partition_of(&self.spec);
        let deliveries = send_packed(
            &self.engine,
            &self.spec,
            EVENTS,
            &self.engine.config.events_topic,
            partition,
            &buf,
            pack_lines(&ranges, EVENTS_PAYLOAD_MAX),
        )
        .await?;
        let settle_deliveries = self.send_settlements(&batch.records).await?;
        metrics::histogram!(m::BATCH_WAIT_SECONDS).record(batch.started.elapsed().as_secs_f64());
        metrics::histogram!(m::BATCH_RECORDS).record(batch.consumed as f64);
        metrics::histogram!(m::BATCH_COMMANDS).record(batch.records.len() as f64);
        if batch.poison > 0 {
            metrics::counter!(m::POISON_RECORDS_TOTAL, &self.labels).increment(batch.poison);
        }
        if batch.repeated > 0 {
            metrics::counter!(m::REPEATED_COMMANDS_TOTAL, &self.labels).increment(batch.repeated);
        }
        self.applied_offset = batch.last_offset;
        let staged = Staged {
            last_offset: batch.last_offset,
            last_seq: self.book.last_seq(),
            last_trade_id: self.book.last_trade_id(),
            commands: batch.records.len() as u64,
            rows,
            sources: self.sources.take_changed(),
            deliveries,
            settle_deliveries,
            published: Instant::now(),
            traces: std::mem::take(&mut batch.traces),
            publish_from,
            #[cfg(feature = "fault-injection")]
            fail_commit: batch.fail_commit,
        };
        // Err: the committer is gone, and its error ends this task.
        if self.staged.send(staged).await.is_err() {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    /// Hands the batch's settlement lines to the producer, per shard packed into as few records
    /// as `ORDERS_PAYLOAD_MAX` allows (the `accounts` topic's packing), keyed by the pair.
    /// Nothing without an `accounts` topic.
    async fn send_settlements(
        &mut self,
        records: &[EventRecord],
    ) -> Result<Vec<DeliveryFuture>, ActorError> {
        let (Some(settle), Some(target)) = (self.settle.as_mut(), self.engine.settle.as_ref())
        else {
            return Ok(Vec::new());
        };
        settle.clear();
        for r in records {
            settle.add(&self.spec.symbol, &r.events);
        }
        let mut deliveries = Vec::new();
        for (shard, lines) in settle.shards() {
            let partition = i32::try_from(shard).expect("shards are partition numbers");
            deliveries.extend(
                send_packed(
                    &self.engine,
                    &self.spec,
                    SETTLEMENTS,
                    &target.topic,
                    partition,
                    &lines.buf,
                    pack_lines(&lines.lines, ORDERS_PAYLOAD_MAX),
                )
                .await?,
            );
        }
        Ok(deliveries)
    }
}

/// What a batch publishes, as errors name it.
const EVENTS: &str = "events";
const SETTLEMENTS: &str = "settlements";

/// Hands `payloads` (ranges of `buf`) to the producer as records of `topic`'s `partition`, keyed
/// by the pair; waits (bounded queue) when the producer's queue is full.
async fn send_packed(
    engine: &Engine,
    spec: &PairSpec,
    what: &'static str,
    topic: &str,
    partition: i32,
    buf: &[u8],
    payloads: Vec<Range<usize>>,
) -> Result<Vec<DeliveryFuture>, ActorError> {
    let mut deliveries = Vec::with_capacity(payloads.len());
    for range in payloads {
        let mut record = FutureRecord::to(topic)
            .partition(partition)
            .key(spec.symbol.as_str())
            .payload(&buf[range]);
        loop {
            match engine.producer.send_result(record) {
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
                        pair: spec.symbol.clone(),
                        what,
                        source,
                    });
                }
            }
        }
    }
    Ok(deliveries)
}

impl Committer {
    /// Commits staged batches in order until the matcher is gone and nothing is left.
    async fn run(mut self, mut waiting: mpsc::Receiver<Staged>) -> Result<(), ActorError> {
        let interval = self.engine.config.commit_interval;
        let mut last_commit = tokio::time::Instant::now();
        while let Some(mut first) = waiting.recv().await {
            let events_offset = self.acknowledged(&mut first).await?;
            let mut commit = Commit::of(first, events_offset);
            // At most one commit per interval; the batches published meanwhile join this
            // transaction: one commit (and one fsync) for all of them. Once the matcher has
            // stopped (a drain), nothing more will join: the last commits go at once.
            if !waiting.is_closed() {
                tokio::time::sleep_until(last_commit + interval).await;
            }
            last_commit = tokio::time::Instant::now();
            while commit.batches < COMMIT_BATCHES_MAX {
                let Ok(mut next) = waiting.try_recv() else {
                    break;
                };
                let events_offset = self.acknowledged(&mut next).await?;
                commit.absorb(next, events_offset);
            }
            self.commit(commit).await?;
        }
        // Stopping: the throttled advisory position catches up.
        self.advise();
        tracing::info!(
            pair = %self.spec.symbol,
            last_offset = self.last_offset,
            "pair actor stopped after its last commit"
        );
        Ok(())
    }

    /// Waits until Kafka holds every record of a batch's events and settlements; returns the
    /// offset of the last `events` record (-1 when there was none).
    async fn acknowledged(&self, batch: &mut Staged) -> Result<i64, ActorError> {
        let mut last = -1;
        for delivery in batch.deliveries.drain(..) {
            last = last.max(delivered(&self.spec, EVENTS, delivery.await)?);
        }
        for delivery in batch.settle_deliveries.drain(..) {
            delivered(&self.spec, SETTLEMENTS, delivery.await)?;
        }
        Ok(last)
    }

    async fn commit(&mut self, c: Commit) -> Result<(), ActorError> {
        #[cfg(feature = "fault-injection")]
        if c.fail_commit {
            return Err(ActorError::InjectedCommitFailure {
                pair: self.spec.symbol.clone(),
                last_offset: c.last_offset,
            });
        }
        let write = BatchWrite {
            pair_id: self.spec.id,
            expected_offset: self.last_offset,
            last_offset: c.last_offset,
            last_seq: c.last_seq,
            last_trade_id: c.last_trade_id,
            events_offset: c.events_offset,
            rows: &c.rows,
            sources: &c.sources,
        };
        let started = Instant::now();
        let persist_from = SystemTime::now();
        store::persist(&self.engine.pool, &write).await?;
        let persisted = SystemTime::now();
        for span in c.traces {
            span.step("engine.commit", persist_from, persisted);
            span.end_at(persisted);
        }
        metrics::histogram!(m::PERSIST_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(m::COMMIT_LAG_SECONDS).record(c.published.elapsed().as_secs_f64());
        metrics::histogram!(m::COMMIT_BATCHES).record(c.batches as f64);
        metrics::counter!(m::COMMANDS_TOTAL, &self.labels).increment(c.commands);
        self.last_offset = c.last_offset;
        self.progress();
        // Advisory only (lag dashboards), so at most once per interval: a commit per batch
        // would be a broker request and a __consumer_offsets append per batch.
        if self.advised_at.elapsed() >= ADVISORY_COMMIT_EVERY {
            self.advise();
        }
        Ok(())
    }

    fn advise(&mut self) {
        self.advised_at = Instant::now();
        self.engine
            .commit_advisory(partition_of(&self.spec), self.last_offset + 1);
    }

    fn progress(&self) {
        if let Some(p) = self.engine.progress(self.spec.id) {
            p.store(self.last_offset + 1, Ordering::Relaxed);
        }
    }
}

/// One transaction's worth of staged batches, absorbed into one.
struct Commit {
    last_offset: i64,
    /// Offset of the last `events` record of these batches (-1: none).
    events_offset: i64,
    last_seq: u64,
    last_trade_id: u64,
    commands: u64,
    rows: RowChanges,
    /// The shards whose last applied source moved in these batches, and where to.
    sources: BTreeMap<u32, i64>,
    /// When the first batch's events were handed to the producer.
    published: Instant,
    batches: usize,
    /// Traced commands, their publish step recorded; ended after the commit.
    traces: Vec<infra::trace::CmdSpan>,
    #[cfg(feature = "fault-injection")]
    fail_commit: bool,
}

/// Records the publish step of a staged batch's traced commands (it ends now: Kafka holds
/// their answers) and hands the spans on.
fn published_traces(batch: &mut Staged) -> Vec<infra::trace::CmdSpan> {
    let now = SystemTime::now();
    for span in &batch.traces {
        span.step("engine.publish", batch.publish_from, now);
    }
    std::mem::take(&mut batch.traces)
}

fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The outcome of one record's delivery (of `what`): its offset.
/// (`Err(_)`: the producer dropped it, cancelled.)
fn delivered<E>(
    spec: &PairSpec,
    what: &'static str,
    result: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, E>,
) -> Result<i64, ActorError> {
    match result {
        Ok(Ok(delivery)) => Ok(delivery.offset),
        Ok(Err((source, _))) => Err(ActorError::Publish {
            pair: spec.symbol.clone(),
            what,
            source,
        }),
        Err(_) => Err(ActorError::DeliveryCancelled {
            pair: spec.symbol.clone(),
            what,
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
