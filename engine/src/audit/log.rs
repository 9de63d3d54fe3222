//! Reading one partition of a topic from its first record to the high watermark it had when the
//! reader opened: what the audit streams, one record at a time. librdkafka's prefetch per
//! partition is bounded (`infra::kafka`, `queued.max.messages.kbytes`), so memory stays flat
//! whatever the log's length.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::AuditError;

/// How long a reader waits for the next record below the high watermark before it gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One record of a partition.
pub(crate) struct LogRecord {
    pub(crate) offset: i64,
    pub(crate) payload: Option<Vec<u8>>,
    /// The record's log time, as the engine reads it (a poison line's Rejected carries it).
    pub(crate) ts_ns: u64,
    /// A stack readiness probe (`infra::kafka::PROBE_HEADER`), which the engine skips.
    pub(crate) probe: bool,
}

/// Consumers reused from one partition to the next. A consumer per partition starts new
/// librdkafka threads each time, and glibc keeps what they freed in per-thread arenas: the
/// audit's resident memory grew by ~45 MB per pair that way (flat with `MALLOC_ARENA_MAX=1`).
pub(crate) struct Consumers {
    brokers: String,
    idle: Mutex<Vec<StreamConsumer>>,
}

impl Consumers {
    pub(crate) fn new(brokers: &str) -> Arc<Consumers> {
        Arc::new(Consumers {
            brokers: brokers.to_owned(),
            idle: Mutex::new(Vec::new()),
        })
    }

    fn take(&self) -> Result<StreamConsumer, AuditError> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(c);
        }
        infra::kafka::client_config(&self.brokers, "audit", infra::kafka::Role::Consumer)
            // Never used to commit: the audit only assigns partitions.
            .set("group.id", format!("audit-{}", std::process::id()))
            .create()
            .map_err(|source| AuditError::Kafka {
                what: "create a consumer",
                source,
            })
    }

    fn give(&self, consumer: StreamConsumer) {
        // Stops its fetches; a record of this assignment still queued is skipped by the next
        // reader, which checks every record's topic and partition.
        let _ = consumer.unassign();
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(consumer);
    }
}

pub(crate) struct PartitionReader {
    pool: Arc<Consumers>,
    /// `Some` until the reader is dropped; then back to the pool.
    consumer: Option<StreamConsumer>,
    topic: String,
    partition: i32,
    /// First offset the log still holds (0 unless retention deleted records).
    low: i64,
    /// Reading stops before this offset.
    end: i64,
    next: i64,
}

impl PartitionReader {
    /// A reader of `topic[partition]` from its log start up to the current high watermark, or
    /// up to and including `last` when given (a committed position).
    pub(crate) async fn open(
        pool: &Arc<Consumers>,
        topic: &str,
        partition: i32,
        last: Option<i64>,
    ) -> Result<PartitionReader, AuditError> {
        let consumer = pool.take()?;
        let topic_owned = topic.to_owned();
        // Metadata calls block: off the async workers.
        let (consumer, low, high) = tokio::task::spawn_blocking(move || {
            let (low, high) = consumer
                .fetch_watermarks(&topic_owned, partition, Duration::from_secs(10))
                .map_err(|source| AuditError::Kafka {
                    what: "read a partition's watermarks",
                    source,
                })?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic_owned, partition, Offset::Offset(low))
                .and_then(|()| consumer.assign(&tpl))
                .map_err(|source| AuditError::Kafka {
                    what: "assign a partition",
                    source,
                })?;
            Ok::<_, AuditError>((consumer, low, high))
        })
        .await??;
        let end = last.map_or(high, |last| high.min(last + 1));
        Ok(PartitionReader {
            pool: Arc::clone(pool),
            consumer: Some(consumer),
            topic: topic.to_owned(),
            partition,
            low,
            end,
            next: low,
        })
    }

    pub(crate) fn low(&self) -> i64 {
        self.low
    }

    /// The offset reading stops before.
    pub(crate) fn end(&self) -> i64 {
        self.end
    }

    /// The next record, or `None` at the end.
    pub(crate) async fn next(&mut self) -> Result<Option<LogRecord>, AuditError> {
        let consumer = self.consumer.as_ref().expect("present until dropped");
        while self.next < self.end {
            let msg = tokio::time::timeout(STALL_TIMEOUT, consumer.recv())
                .await
                .map_err(|_| AuditError::Stalled {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    at: self.next,
                    end: self.end,
                })?
                .map_err(|source| AuditError::Kafka {
                    what: "read a record",
                    source,
                })?;
            let offset = msg.offset();
            let ours = msg.partition() == self.partition && msg.topic() == self.topic;
            if !ours || offset < self.next {
                continue;
            }
            self.next = offset + 1;
            if offset >= self.end {
                return Ok(None);
            }
            let ts_ns = msg.timestamp().to_millis().map_or(0, |ms| {
                u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000)
            });
            let probe = msg
                .headers()
                .is_some_and(|h| h.iter().any(|h| h.key == infra::kafka::PROBE_HEADER));
            return Ok(Some(LogRecord {
                offset,
                payload: msg.payload().map(<[u8]>::to_vec),
                ts_ns,
                probe,
            }));
        }
        Ok(None)
    }
}

impl Drop for PartitionReader {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            self.pool.give(consumer);
        }
    }
}
