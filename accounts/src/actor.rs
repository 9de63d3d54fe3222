//! One shard's I/O loop: read a batch of its `accounts` partition, decide it ([`ShardState`]),
//! publish the forwards and answers, and once Kafka holds them commit the batch to PostgreSQL.
//! Any error ends the actor (its state holds decisions that did not commit); the supervisor
//! recovers it from PostgreSQL and the partition is read again from the committed position, so
//! the same lines decide the same again and every consumer drops what it already has.

use std::sync::Arc;
use std::time::{Duration, Instant};

use accounts_core::{AssetRegistry, Ledger};
use protocol::PairRegistry;
use protocol::accounts::record_offset;
use protocol::records::{EVENTS_PAYLOAD_MAX, ORDERS_PAYLOAD_MAX, pack_lines, push_line};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::shard::{Effects, ShardState};
use crate::store::{self, Rows, StoreError};
use crate::telemetry as m;

/// What every shard actor shares.
pub struct Stage {
    pub config: Config,
    pub pairs: Arc<PairRegistry>,
    pub assets: AssetRegistry,
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub shards: u32,
    /// Per shard (indexed by shard number): the next `accounts` offset its actor will apply,
    /// -1 until it has recovered; read by the consumer-lag sampler.
    pub progress: Vec<std::sync::atomic::AtomicI64>,
}

impl Stage {
    fn set_progress(&self, shard: u32, last: i64) {
        if let Some(p) = self.progress.get(shard as usize) {
            p.store(
                record_offset(last) + 1,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Kafka: cannot {what}: {source}")]
    Kafka {
        what: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("a delivery was cancelled (producer gone)")]
    Cancelled,
    #[error("stopped while recovering")]
    Stopped,
    #[error(
        "shard {shard}: PostgreSQL has applied {topic} partition {shard} up to offset \
         {last_offset}, but the partition holds only [{start}, {end}) and the shard's snapshot \
         is at offset {snapshot_offset}: the log was recreated or lost records, and the lines \
         after the snapshot cannot be replayed. The shard stays stopped rather than guess its \
         balances; restore the topic (docs/DEPLOY.md, \"A log behind PostgreSQL\")"
    )]
    LogBehind {
        shard: u32,
        topic: String,
        last_offset: i64,
        snapshot_offset: i64,
        start: i64,
        end: i64,
    },
}

fn kafka(what: &'static str) -> impl FnOnce(KafkaError) -> ActorError {
    move |source| ActorError::Kafka { what, source }
}

/// Runs a shard's actor; restarts it from PostgreSQL after an error or a panic, with backoff,
/// until `stop`.
pub async fn supervise(stage: Arc<Stage>, shard: u32, stop: CancellationToken) {
    const BACKOFF_MIN: Duration = Duration::from_millis(100);
    let labels = [("shard", shard.to_string())];
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        match tokio::spawn(run(Arc::clone(&stage), shard, stop.clone())).await {
            Ok(Ok(())) => return,
            Ok(Err(err)) => {
                infra::kafka::exit_if_fatal(stage.producer.client(), "accounts");
                if matches!(
                    err,
                    ActorError::LogBehind { .. } | ActorError::Store(StoreError::Corrupt { .. })
                ) {
                    // Not a passing fault: it needs an operator.
                    tracing::error!(shard, error = %err, "shard cannot start");
                } else {
                    tracing::warn!(shard, error = %err, "shard actor failed; restarting from PostgreSQL");
                }
            }
            Err(join) if join.is_panic() => {
                tracing::error!(shard, "shard actor panicked; restarting from PostgreSQL");
            }
            Err(_) => return,
        }
        metrics::counter!(m::ACTOR_RESTARTS_TOTAL, &labels).increment(1);
        if started.elapsed() > Duration::from_secs(30) {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(stage.config.restart_backoff_max);
    }
}

/// A shard recovered: its state at its committed position.
pub struct Recovery {
    pub state: ShardState,
    /// The committed position (`account_shards.last_offset`).
    pub last: i64,
    /// The consumer, positioned at the first record after `last`.
    pub consumer: Arc<StreamConsumer>,
    /// No snapshot was found: the first commit writes one.
    pub snapshot_due: bool,
    /// The lines replayed from the snapshot to `last`.
    pub replayed: u64,
}

/// Recovers a shard: its snapshot from PostgreSQL, then its `accounts` partition replayed from
/// the snapshot's position to the committed one (the lines applied again, their effects
/// discarded: Kafka and PostgreSQL hold them already), checked against the `balances` rows.
pub async fn recover(
    stage: &Stage,
    shard: u32,
    stop: &CancellationToken,
) -> Result<Recovery, ActorError> {
    let ledger = Ledger::new(
        AssetRegistry::from_pairs(&stage.pairs),
        stage.config.ledger_config(),
    )
    .expect("checked at start");
    let mut state = ShardState::new(shard, stage.shards, Arc::clone(&stage.pairs), ledger);
    let found = store::recover(&stage.pool, &mut state).await?;
    let consumer: Arc<StreamConsumer> = Arc::new(
        infra::kafka::client_config(
            &stage.config.brokers,
            &format!("accounts-{shard}"),
            infra::kafka::Role::Consumer,
        )
        .set("group.id", "accounts")
        .create()
        .map_err(kafka("create the consumer"))?,
    );
    let topic = &stage.config.accounts_topic;
    let from_record = record_offset(found.from) + 1;
    // PostgreSQL says the shard applied records up to `last`, so the log holds them, and the
    // replay needs those after the snapshot. A partition that ends before `last` was recreated
    // (or lost records): reading on would take its first records for applied ones.
    if found.last >= 0
        && let Some((start, end)) = infra::kafka::watermarks(&consumer, topic, shard as i32).await
        && (end <= record_offset(found.last) || (found.from < found.last && start > from_record))
    {
        return Err(ActorError::LogBehind {
            shard,
            topic: topic.clone(),
            last_offset: record_offset(found.last),
            snapshot_offset: record_offset(found.from),
            start,
            end,
        });
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, shard as i32, Offset::Offset(from_record))
        .map_err(kafka("position the partition"))?;
    consumer
        .assign(&tpl)
        .map_err(kafka("assign the partition"))?;
    let mut replayed = 0;
    if let Some(expected) = &found.balances_at_last {
        if found.from < found.last {
            replayed = replay(&consumer, &mut state, found.from, found.last, stop).await?;
        }
        let replayed_balances: std::collections::BTreeMap<_, _> = state
            .ledger
            .balances()
            .map(|(a, s, b)| ((a, s), b))
            .collect();
        if let Some(what) = store::balances_differ(&replayed_balances, expected, &state) {
            return Err(StoreError::Corrupt {
                shard,
                what: format!(
                    "the snapshot at {} and the lines after it up to {} do not give the \
                     stored balances: {what}",
                    found.from, found.last
                ),
            }
            .into());
        }
    }
    Ok(Recovery {
        state,
        last: found.last,
        consumer,
        snapshot_due: found.snapshot_due,
        replayed,
    })
}

/// Applies the partition's lines after `from` up to `last` again; the number applied.
async fn replay(
    consumer: &StreamConsumer,
    state: &mut ShardState,
    from: i64,
    last: i64,
    stop: &CancellationToken,
) -> Result<u64, ActorError> {
    state.replaying = true;
    let mut at = from;
    let mut lines = 0u64;
    while at < last {
        let m = tokio::select! {
            biased;
            _ = stop.cancelled() => return Err(ActorError::Stopped),
            m = consumer.recv() => m,
        };
        let m = match m {
            Ok(m) => m,
            Err(err) => {
                tracing::warn!(shard = state.shard, error = %err, "accounts partition read error");
                continue;
            }
        };
        if m.offset() <= record_offset(at) {
            continue;
        }
        let mut scratch = Effects::default();
        let (read, through) = state.apply_record(m.offset(), m.payload(), &mut scratch);
        lines += read;
        at = through;
    }
    state.replaying = false;
    Ok(lines)
}

/// Batches decided and published but not yet committed: how far the decider may run ahead of
/// PostgreSQL (and so at most what a restart decides again). When full, the decider waits.
const STAGED_BATCHES_MAX: usize = 16;

/// A decided batch on its way to PostgreSQL.
struct Staged {
    last: i64,
    rows: Rows,
    deliveries: Vec<DeliveryFuture>,
    records: u64,
    lines: u64,
    repeats: u64,
    inconsistent: u64,
    refused: u64,
    published: Instant,
}

async fn run(stage: Arc<Stage>, shard: u32, stop: CancellationToken) -> Result<(), ActorError> {
    let started = Instant::now();
    let recovery = match recover(&stage, shard, &stop).await {
        Err(ActorError::Stopped) => return Ok(()),
        r => r?,
    };
    let state = recovery.state;
    let last = recovery.last;
    metrics::gauge!(m::RECOVERY_REPLAYED_LINES, "shard" => shard.to_string())
        .set(recovery.replayed as f64);
    tracing::info!(
        shard,
        next_offset = record_offset(last) + 1,
        balances = state.ledger.balances().count(),
        open_orders = state.ledger.reservations().count(),
        replayed_lines = recovery.replayed,
        recovery_ms = started.elapsed().as_millis() as u64,
        "shard actor started"
    );
    // The decider publishes each batch at once and passes it on; the committer waits for Kafka
    // and commits, absorbing the batches that queued meanwhile into one transaction. A client's
    // order never waits for PostgreSQL, and the position never runs ahead of what Kafka holds.
    let (staged, waiting) = tokio::sync::mpsc::channel(STAGED_BATCHES_MAX);
    let decider = Decider {
        stage: &stage,
        shard,
        consumer: recovery.consumer,
        staged,
        stop,
        snapshot_due: recovery.snapshot_due,
    };
    tokio::try_join!(
        decider.run(state, last),
        commit(&stage, shard, last, waiting),
    )?;
    Ok(())
}

/// The deciding half of a shard's actor.
struct Decider<'a> {
    stage: &'a Stage,
    shard: u32,
    consumer: Arc<StreamConsumer>,
    staged: tokio::sync::mpsc::Sender<Staged>,
    stop: CancellationToken,
    /// The first batch carries a snapshot (none was found at recovery).
    snapshot_due: bool,
}

impl Decider<'_> {
    async fn run(self, mut state: ShardState, mut last: i64) -> Result<(), ActorError> {
        let Decider {
            stage,
            shard,
            consumer,
            staged,
            stop,
            mut snapshot_due,
        } = self;
        let batch_max = stage.config.batch_records_max.max(1);
        let mut last_snapshot = tokio::time::Instant::now();
        stage.set_progress(shard, last);
        loop {
            let mut fx = Effects::default();
            let mut records = 0u64;
            let mut lines_read = 0u64;
            let mut batch_last = last;
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                msg = consumer.recv() => msg,
            };
            let deadline = tokio::time::Instant::now() + stage.config.batch_linger;
            let mut msg = Some(first);
            while let Some(m) = msg.take() {
                match m {
                    Ok(m) => {
                        if m.offset() > record_offset(batch_last) {
                            let (read, through) =
                                state.apply_record(m.offset(), m.payload(), &mut fx);
                            lines_read += read;
                            batch_last = through;
                            records += 1;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(shard, error = %err, "accounts partition read error");
                    }
                }
                if records >= batch_max as u64 {
                    break;
                }
                msg = tokio::select! {
                    biased;
                    _ = stop.cancelled() => None,
                    _ = tokio::time::sleep_until(deadline) => None,
                    m = consumer.recv() => Some(m),
                };
            }
            if batch_last == last {
                continue;
            }
            let deliveries = publish(stage, shard, &fx).await?;
            let handed = std::time::SystemTime::now();
            for span in fx.traces.drain(..) {
                span.end_at(handed);
            }
            let refused = fx.answers.iter().filter(|a| a.refusal.is_some()).count() as u64;
            let mut rows = Rows::capture(&mut fx);
            // Now and then the whole state goes with the batch: a recovery loads it and
            // replays only the lines after it.
            if snapshot_due || last_snapshot.elapsed() >= stage.config.snapshot_interval {
                let bytes = store::Snapshot::encode(&state);
                let labels = [("shard", shard.to_string())];
                metrics::gauge!(m::SNAPSHOT_BYTES, &labels).set(bytes.len() as f64);
                metrics::gauge!(m::SNAPSHOT_OPEN_ORDERS, &labels)
                    .set(state.ledger.reservations().count() as f64);
                rows.snapshot = Some((batch_last, bytes));
                snapshot_due = false;
                last_snapshot = tokio::time::Instant::now();
            }
            let batch = Staged {
                last: batch_last,
                deliveries,
                records,
                lines: lines_read,
                repeats: fx.repeats,
                inconsistent: fx.inconsistent,
                refused,
                rows,
                published: Instant::now(),
            };
            last = batch_last;
            stage.set_progress(shard, last);
            // Err: the committer is gone, and its error ends the actor.
            if staged.send(batch).await.is_err() {
                std::future::pending::<()>().await;
            }
            if stop.is_cancelled() {
                return Ok(());
            }
        }
    }
}

/// Commits staged batches in order until the decider is gone and nothing is left.
async fn commit(
    stage: &Stage,
    shard: u32,
    mut last: i64,
    mut waiting: tokio::sync::mpsc::Receiver<Staged>,
) -> Result<(), ActorError> {
    let labels = [("shard", shard.to_string())];
    let assets = &stage.assets;
    let interval = stage.config.commit_interval;
    let mut last_commit = tokio::time::Instant::now();
    while let Some(mut first) = waiting.recv().await {
        acknowledged(&mut first).await?;
        // At most one commit per interval: the batches decided meanwhile join it (one
        // transaction and one fsync for all). Once the decider stopped, nothing more will
        // join, so the last commits go at once.
        if !waiting.is_closed() {
            tokio::time::sleep_until(last_commit + interval).await;
        }
        last_commit = tokio::time::Instant::now();
        let published = first.published;
        let mut batch = first;
        while let Ok(mut next) = waiting.try_recv() {
            acknowledged(&mut next).await?;
            batch.rows.absorb(next.rows);
            batch.last = next.last;
            batch.records += next.records;
            batch.lines += next.lines;
            batch.repeats += next.repeats;
            batch.inconsistent += next.inconsistent;
            batch.refused += next.refused;
        }
        store::persist(&stage.pool, shard, assets, last, batch.last, &batch.rows).await?;
        last = batch.last;
        metrics::histogram!(m::COMMIT_SECONDS).record(published.elapsed().as_secs_f64());
        metrics::histogram!(m::BATCH_RECORDS).record(batch.records as f64);
        metrics::counter!(m::RECORDS_TOTAL, &labels).increment(batch.records);
        metrics::counter!(m::LINES_TOTAL, &labels).increment(batch.lines);
        metrics::counter!(m::REPEATS_TOTAL, &labels).increment(batch.repeats);
        metrics::counter!(m::INCONSISTENT_TOTAL, &labels).increment(batch.inconsistent);
        metrics::counter!(m::REFUSED_TOTAL, &labels).increment(batch.refused);
    }
    Ok(())
}

/// Waits until Kafka holds every forward and answer of a batch.
async fn acknowledged(batch: &mut Staged) -> Result<(), ActorError> {
    for d in batch.deliveries.drain(..) {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((source, _))) => return Err(kafka("publish")(source)),
            Err(_) => return Err(ActorError::Cancelled),
        }
    }
    Ok(())
}

/// Hands the batch's forwards (per pair partition of `orders`) and answers (the shard's
/// partition of `account_events`) to the producer, packed into as few records as allowed.
async fn publish(
    stage: &Stage,
    shard: u32,
    fx: &Effects,
) -> Result<Vec<DeliveryFuture>, ActorError> {
    let mut deliveries = Vec::new();
    let mut per_pair: Vec<(Vec<u8>, Vec<std::ops::Range<usize>>)> =
        vec![(Vec::new(), Vec::new()); stage.pairs.len()];
    for (pair_id, rec) in &fx.forwards {
        let (buf, lines) = &mut per_pair[*pair_id as usize];
        push_line(buf, lines, rec);
    }
    for (pair_id, (buf, lines)) in per_pair.iter().enumerate() {
        if lines.is_empty() {
            continue;
        }
        let spec = stage.pairs.get(pair_id as u32).expect("a registry pair");
        for range in pack_lines(lines, ORDERS_PAYLOAD_MAX) {
            let record = FutureRecord::to(&stage.config.orders_topic)
                .partition(pair_id as i32)
                .key(spec.symbol.as_str())
                .payload(&buf[range]);
            deliveries.push(send(stage, record).await?);
        }
    }
    let mut buf = Vec::new();
    let mut lines = Vec::new();
    for a in fx.balance_answers(shard, &stage.assets) {
        push_line(&mut buf, &mut lines, &a);
    }
    let key = shard.to_string();
    for range in pack_lines(&lines, EVENTS_PAYLOAD_MAX) {
        let record = FutureRecord::to(&stage.config.account_events_topic)
            .partition(shard as i32)
            .key(key.as_str())
            .payload(&buf[range]);
        deliveries.push(send(stage, record).await?);
    }
    Ok(deliveries)
}

/// Sends one record, waiting while the producer's queue is full.
async fn send<'a>(
    stage: &Stage,
    mut record: FutureRecord<'a, str, [u8]>,
) -> Result<DeliveryFuture, ActorError> {
    loop {
        match stage.producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((source, _)) => return Err(kafka("publish")(source)),
        }
    }
}
