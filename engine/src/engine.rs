//! The process: one Kafka consumer whose partitions are split into one queue per pair, one
//! supervised actor per owned pair, one idempotent producer, one PostgreSQL pool.
//!
//! Static mode assigns the configured pairs' partitions at PostgreSQL's offsets. Group mode
//! subscribes; the rebalance callback positions newly assigned partitions at PostgreSQL's
//! offsets and spawns their actors, and on revoke lets every actor finish and commit its batch
//! (bounded wait) before the partitions are released. Fencing in the offset update makes a late
//! or duplicate owner harmless either way.

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use protocol::PairSpec;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::telemetry as m;
use crate::{Config, EngineError, actor, store};

pub(crate) type PairQueue = StreamPartitionQueue<EngineContext>;

/// A pair this process owns right now.
struct PairSlot {
    stop: CancellationToken,
    supervisor: JoinHandle<()>,
    /// Next `orders` offset to apply, for the lag gauge.
    progress: Arc<AtomicI64>,
}

/// Where settlements go: the `accounts` topic and its partition count (the number of shards).
#[derive(Debug, Clone)]
pub(crate) struct SettleTarget {
    pub(crate) topic: String,
    pub(crate) shards: u32,
}

pub(crate) struct Engine {
    pub(crate) config: Config,
    pub(crate) pool: PgPool,
    /// Idempotent: events, and settlements when [`Engine::settle`] is set.
    pub(crate) producer: FutureProducer,
    /// `None`: no settlement feed (no `accounts` topic configured).
    pub(crate) settle: Option<SettleTarget>,
    consumer: Arc<StreamConsumer<EngineContext>>,
    pairs: Mutex<HashMap<u32, PairSlot>>,
    /// Parent of every pair's stop token: cancelled on shutdown.
    shutdown: CancellationToken,
}

/// Consumer callbacks. Holds the engine weakly: the engine owns the consumer.
pub(crate) struct EngineContext {
    engine: OnceLock<Weak<Engine>>,
    group_mode: bool,
}

impl ClientContext for EngineContext {}

impl ConsumerContext for EngineContext {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let engine = self.engine.get().and_then(Weak::upgrade);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let positioned = match &engine {
                    Some(e) if self.group_mode => e.position_assignment(tpl),
                    _ => false,
                };
                // Split before assigning: the first fetch must land in the pairs' own queues.
                let queues = engine.as_ref().map(|e| e.split_queues(tpl));
                if let Err(err) = base.assign(tpl) {
                    tracing::warn!(error = %err, "cannot take the assigned partitions");
                    return;
                }
                if let (Some(e), Some(queues)) = (engine, queues) {
                    e.start_pairs(queues, positioned);
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if let Some(e) = engine {
                    e.on_revoked(tpl);
                }
                if let Err(err) = base.unassign() {
                    tracing::warn!(error = %err, "cannot release the revoked partitions");
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error; releasing all partitions");
                if let Some(e) = engine {
                    e.on_revoked(tpl);
                }
                let _ = base.unassign();
            }
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(err) = result {
            // Advisory only (PostgreSQL holds the truth); a failed commit just shows more lag.
            tracing::debug!(error = %err, "advisory Kafka offset commit failed");
        }
    }
}

impl Engine {
    pub(crate) async fn start(
        config: Config,
        shutdown: CancellationToken,
    ) -> Result<Arc<Engine>, EngineError> {
        let settle = match &config.accounts_topic {
            Some(topic) => Some(settle_target(&config.brokers, topic).await?),
            None => None,
        };
        let pool = infra::db::connect(&config.database_url, config.db_connections_max).await?;
        let client_id = format!("engine-{}", std::process::id());
        let producer: FutureProducer = infra::kafka::client_config(
            &config.brokers,
            &client_id,
            infra::kafka::Role::BatchProducer,
        )
        .create()
        .map_err(|source| EngineError::Kafka {
            what: "create the events producer",
            source,
        })?;
        let context = EngineContext {
            engine: OnceLock::new(),
            group_mode: config.static_pairs.is_none(),
        };
        let consumer: StreamConsumer<EngineContext> =
            infra::kafka::client_config(&config.brokers, &client_id, infra::kafka::Role::Consumer)
                .set("group.id", &config.group_id)
                .create_with_context(context)
                .map_err(|source| EngineError::Kafka {
                    what: "create the orders consumer",
                    source,
                })?;
        let engine = Arc::new(Engine {
            config,
            pool,
            producer,
            settle,
            consumer: Arc::new(consumer),
            pairs: Mutex::new(HashMap::new()),
            shutdown,
        });
        let _ = engine
            .consumer
            .context()
            .engine
            .set(Arc::downgrade(&engine));
        Ok(engine)
    }

    /// Static mode: assign the pairs' partitions at PostgreSQL's offsets and start their actors.
    pub(crate) async fn assign_static(
        self: &Arc<Self>,
        specs: &[PairSpec],
    ) -> Result<(), EngineError> {
        let offsets = store::last_offsets(&self.pool, specs).await?;
        let mut tpl = TopicPartitionList::new();
        for (spec, last) in specs.iter().zip(&offsets) {
            tpl.add_partition_offset(
                &self.config.orders_topic,
                partition(spec),
                Offset::Offset(last + 1),
            )
            .map_err(|source| EngineError::Kafka {
                what: "build the assignment",
                source,
            })?;
        }
        let queues = self.split_queues(&tpl);
        self.consumer
            .assign(&tpl)
            .map_err(|source| EngineError::Kafka {
                what: "assign the pairs' partitions",
                source,
            })?;
        self.start_pairs(queues, true);
        Ok(())
    }

    pub(crate) fn subscribe(&self) -> Result<(), EngineError> {
        self.consumer
            .subscribe(&[&self.config.orders_topic])
            .map_err(|source| EngineError::Kafka {
                what: "subscribe to the orders topic",
                source,
            })
    }

    /// Serves the main consumer queue (rebalances, errors) until shutdown. Every partition's
    /// queue is split before it is assigned, so no record should arrive here. If one does, it is
    /// dropped: the pair's actor sees the gap at its next record and re-reads from its offset.
    pub(crate) async fn serve_main_queue(&self) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                msg = self.consumer.recv() => match msg {
                    Ok(msg) => tracing::warn!(
                        partition = msg.partition(),
                        offset = msg.offset(),
                        "record on the main queue dropped; its pair re-reads it"
                    ),
                    Err(err) => tracing::warn!(error = %err, "Kafka consumer error"),
                },
            }
        }
    }

    /// Stops every actor (each finishes and commits its batch), then flushes the producer.
    pub(crate) async fn drain(&self) {
        let slots: Vec<PairSlot> = {
            let mut pairs = self.pairs.lock().expect("pairs lock");
            pairs.drain().map(|(_, slot)| slot).collect()
        };
        for slot in &slots {
            slot.stop.cancel();
        }
        // One deadline for all: the pairs stop side by side, and a SIGTERM is bounded by one
        // drain timeout, not by one per pair.
        let deadline = tokio::time::Instant::now() + self.config.drain_timeout;
        for slot in slots {
            if tokio::time::timeout_at(deadline, slot.supervisor)
                .await
                .is_err()
            {
                tracing::warn!("a pair did not stop within the drain timeout");
            }
        }
        let producer = self.producer.clone();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("events producer did not flush within 10 s");
        }
    }

    /// Group mode: sets each assigned partition's start to PostgreSQL's offset. Runs inside the
    /// rebalance callback, so it blocks this worker briefly (bounded by the pool's timeout).
    fn position_assignment(&self, tpl: &mut TopicPartitionList) -> bool {
        let specs: Vec<PairSpec> = tpl
            .elements_for_topic(&self.config.orders_topic)
            .iter()
            .filter_map(|e| self.config.registry.get(u32::try_from(e.partition()).ok()?))
            .cloned()
            .collect();
        let pool = self.pool.clone();
        let loaded = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                store::last_offsets(&pool, &specs).await.map(|o| (specs, o))
            })
        });
        match loaded {
            Ok((specs, offsets)) => {
                for (spec, last) in specs.iter().zip(offsets) {
                    if let Err(err) = tpl.set_partition_offset(
                        &self.config.orders_topic,
                        partition(spec),
                        Offset::Offset(last + 1),
                    ) {
                        tracing::warn!(pair = %spec.symbol, error = %err, "cannot set start offset");
                        return false;
                    }
                }
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read offsets from PostgreSQL on assign; actors will seek");
                false
            }
        }
    }

    /// Gives every pair of the assignment its own queue. Called *before* the assignment takes
    /// effect: librdkafka then never forwards the partition's records to the main queue (the
    /// application-set forwarding survives the fetch start), so no prefetch is stranded there.
    fn split_queues(&self, tpl: &TopicPartitionList) -> Vec<(PairSpec, PairQueue)> {
        let mut queues = Vec::new();
        for elem in tpl.elements_for_topic(&self.config.orders_topic) {
            let Some(spec) = u32::try_from(elem.partition())
                .ok()
                .and_then(|id| self.config.registry.get(id))
                .cloned()
            else {
                tracing::error!(
                    partition = elem.partition(),
                    "assigned a partition no pair owns"
                );
                continue;
            };
            match self
                .consumer
                .split_partition_queue(&self.config.orders_topic, elem.partition())
            {
                Some(queue) => queues.push((spec, queue)),
                None => {
                    tracing::error!(pair = %spec.symbol, "cannot split the pair's partition queue");
                }
            }
        }
        queues
    }

    /// Spawns a supervised actor for each newly owned pair.
    fn start_pairs(self: &Arc<Self>, queues: Vec<(PairSpec, PairQueue)>, positioned: bool) {
        for (spec, queue) in queues {
            let stop = self.shutdown.child_token();
            let progress = Arc::new(AtomicI64::new(-1));
            let supervisor = tokio::spawn(supervise(
                Arc::clone(self),
                spec.clone(),
                Arc::new(queue),
                stop.clone(),
                !positioned,
            ));
            let slot = PairSlot {
                stop,
                supervisor,
                progress,
            };
            if let Some(old) = self.pairs.lock().expect("pairs lock").insert(spec.id, slot) {
                old.stop.cancel();
            }
            tracing::info!(pair = %spec.symbol, "pair assigned");
        }
    }

    /// Lets the revoked pairs finish and commit their batch, waiting at most the revoke timeout.
    fn on_revoked(&self, tpl: &TopicPartitionList) {
        let slots: Vec<(u32, PairSlot)> = {
            let mut pairs = self.pairs.lock().expect("pairs lock");
            tpl.elements_for_topic(&self.config.orders_topic)
                .iter()
                .filter_map(|e| {
                    let id = u32::try_from(e.partition()).ok()?;
                    pairs.remove(&id).map(|s| (id, s))
                })
                .collect()
        };
        if slots.is_empty() {
            return;
        }
        for (_, slot) in &slots {
            slot.stop.cancel();
        }
        let deadline = Instant::now() + self.config.revoke_timeout;
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                for (id, slot) in slots {
                    // The new owner reports this pair's lag now; a stale figure here would show
                    // a backlog that is not there (and keep a "settled" check from passing).
                    if let Some(spec) = self.config.registry.get(id) {
                        metrics::gauge!(m::CONSUMER_LAG_RECORDS, "pair" => spec.symbol.clone())
                            .set(0.0);
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if tokio::time::timeout(left, slot.supervisor).await.is_err() {
                        tracing::warn!(
                            pair_id = id,
                            "pair did not finish its batch before release"
                        );
                    } else {
                        tracing::info!(pair_id = id, "pair released");
                    }
                }
            });
        });
    }

    pub(crate) fn progress(&self, pair_id: u32) -> Option<Arc<AtomicI64>> {
        self.pairs
            .lock()
            .expect("pairs lock")
            .get(&pair_id)
            .map(|s| Arc::clone(&s.progress))
    }

    pub(crate) async fn seek(&self, partition: i32, offset: i64) -> Result<(), KafkaError> {
        let consumer = Arc::clone(&self.consumer);
        let topic = self.config.orders_topic.clone();
        let mut tries = 0;
        loop {
            let consumer = Arc::clone(&consumer);
            let topic = topic.clone();
            let result = tokio::task::spawn_blocking(move || {
                consumer.seek(
                    &topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(5),
                )
            })
            .await
            .unwrap_or(Err(KafkaError::Canceled));
            match result {
                Ok(()) => return Ok(()),
                // Right after an assignment the partition may not be fetching yet.
                Err(err) if tries < 20 => {
                    tries += 1;
                    tracing::debug!(partition, offset, error = %err, "seek not possible yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    pub(crate) fn pause(&self, partition: i32) {
        self.set_paused(partition, true);
    }

    pub(crate) fn resume(&self, partition: i32) {
        self.set_paused(partition, false);
    }

    fn set_paused(&self, partition: i32, paused: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.orders_topic, partition);
        let result = if paused {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(err) = result {
            tracing::debug!(partition, paused, error = %err, "pause/resume refused");
        }
    }

    /// The partition's first retained offset, if the broker answers within a second.
    /// The partition's (log start, end) in `orders`; `None` when Kafka does not answer.
    pub(crate) async fn watermarks(&self, partition: i32) -> Option<(i64, i64)> {
        infra::kafka::watermarks(&self.consumer, &self.config.orders_topic, partition).await
    }

    pub(crate) async fn low_watermark(&self, partition: i32) -> Option<i64> {
        infra::kafka::watermarks(&self.consumer, &self.config.orders_topic, partition)
            .await
            .map(|(low, _)| low)
    }

    /// Stores the consumed position in Kafka, for lag dashboards only.
    pub(crate) fn commit_advisory(&self, partition: i32, next_offset: i64) {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(
                &self.config.orders_topic,
                partition,
                Offset::Offset(next_offset),
            )
            .is_ok()
            && let Err(err) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::debug!(partition, error = %err, "advisory commit not sent");
        }
    }

    /// Updates the lag gauges every `period` until shutdown.
    pub(crate) async fn report_lag(self: Arc<Self>, period: Duration) {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let owned: Vec<(u32, i64)> = self
                .pairs
                .lock()
                .expect("pairs lock")
                .iter()
                .map(|(id, s)| (*id, s.progress.load(std::sync::atomic::Ordering::Relaxed)))
                .collect();
            for (id, next) in owned {
                let Some(spec) = self.config.registry.get(id) else {
                    continue;
                };
                if next < 0 {
                    continue;
                }
                let marks = infra::kafka::watermarks(
                    &self.consumer,
                    &self.config.orders_topic,
                    partition(spec),
                )
                .await;
                if let Some((_, high)) = marks {
                    metrics::gauge!(m::CONSUMER_LAG_RECORDS, "pair" => spec.symbol.clone())
                        .set((high - next).max(0) as f64);
                }
            }
        }
    }
}

/// The `accounts` topic's partition count is the number of account shards; a topic that does
/// not exist (or has no partition yet) is an error, never a guess.
async fn settle_target(brokers: &str, topic: &str) -> Result<SettleTarget, EngineError> {
    let found = infra::kafka::topic_partitions(brokers, &[topic]).await?;
    let partitions = found.first().and_then(|(_, n)| *n).unwrap_or(0);
    if partitions == 0 {
        return Err(EngineError::AccountsTopicMissing(topic.to_owned()));
    }
    let shards = u32::try_from(partitions).expect("a partition count fits u32");
    tracing::info!(topic, shards, "settlements go to the account shards");
    Ok(SettleTarget {
        topic: topic.to_owned(),
        shards,
    })
}

fn partition(spec: &PairSpec) -> i32 {
    i32::try_from(spec.id).expect("pair ids are partition numbers")
}

/// Runs a pair's actor; restarts it from PostgreSQL after an error or a panic, with backoff,
/// until `stop`. Other pairs never notice.
async fn supervise(
    engine: Arc<Engine>,
    spec: PairSpec,
    queue: Arc<PairQueue>,
    stop: CancellationToken,
    mut seek: bool,
) {
    const BACKOFF_MIN: Duration = Duration::from_millis(100);
    const HEALTHY_RUN: Duration = Duration::from_secs(30);
    let labels = [("pair", spec.symbol.clone())];
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let run = tokio::spawn(actor::run(
            Arc::clone(&engine),
            spec.clone(),
            Arc::clone(&queue),
            stop.clone(),
            seek,
        ));
        match run.await {
            Ok(Ok(())) => return,
            Ok(Err(err)) => {
                infra::kafka::exit_if_fatal(engine.producer.client(), "engine");
                if matches!(err, actor::ActorError::LogBehind { .. }) {
                    // Not a passing fault: it needs an operator.
                    tracing::error!(pair = %spec.symbol, error = %err, "pair cannot start");
                } else {
                    tracing::warn!(pair = %spec.symbol, error = %err, "pair actor failed; restarting from PostgreSQL");
                }
            }
            Err(join) if join.is_panic() => {
                tracing::error!(pair = %spec.symbol, "pair actor panicked; restarting from PostgreSQL");
            }
            Err(_) => return,
        }
        if stop.is_cancelled() {
            return;
        }
        // Hold the partition while down: its prefetch stays bounded and nothing is consumed.
        engine.pause(partition(&spec));
        metrics::gauge!(m::PAUSED, &labels).set(1.0);
        metrics::counter!(m::ACTOR_RESTARTS_TOTAL, &labels).increment(1);
        if started.elapsed() > HEALTHY_RUN {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(engine.config.restart_backoff_max);
        seek = true;
    }
}
