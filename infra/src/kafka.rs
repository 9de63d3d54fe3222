//! Kafka: the one place every client config is built, the topic layout, and a readiness probe.
//!
//! Topic layout (the contract with the pair registry): `orders` and `events` each have exactly
//! one partition per pair, partition i = pair i, with the broker's default replication factor
//! (`default.replication.factor`: 1 on the local stack, 3 on the MSK cluster of `deploy/`, whose
//! `min.insync.replicas` 2 would refuse every `acks=all` write to a topic with one replica).
//! [`ensure_topics`] creates them, adds partitions when pairs were appended, and refuses (with an
//! error) a topic that has more partitions than there are pairs: Kafka cannot remove partitions,
//! and silently routing to a partition without a pair would lose orders.
//!
//! Config overrides from the environment, applied after the defaults below:
//! `KAFKA_CFG_<NAME>` for every client, `KAFKA_PRODUCER_CFG_<NAME>` / `KAFKA_CONSUMER_CFG_<NAME>`
//! for one role. `<NAME>` is the librdkafka property upper-cased with dots as underscores:
//! `KAFKA_PRODUCER_CFG_LINGER_MS=20` sets `linger.ms=20`.
//!
//! Unset, clients speak plaintext without authentication (the local stack, docker-compose). A
//! broker that wants TLS and SASL/SCRAM (Amazon MSK, port 9096) is reached with the same
//! overrides, librdkafka being built with OpenSSL (rdkafka's `ssl` feature):
//! `KAFKA_CFG_SECURITY_PROTOCOL=SASL_SSL`, `KAFKA_CFG_SASL_MECHANISM=SCRAM-SHA-512`,
//! `KAFKA_CFG_SASL_USERNAME`, `KAFKA_CFG_SASL_PASSWORD`; brokers' certificates are checked
//! against the system's CA store. A second set of names for the same properties would only
//! raise the question which one wins.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::PairRegistry;
use protocol::records::{EVENTS_TOPIC, ORDERS_TOPIC};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// A topic the stack's readiness probe writes to, so probes never land in `orders` or `events`.
pub const PROBE_TOPIC: &str = "stack-probe";
/// Header set on every record written by [`round_trip`]. A consumer that finds it on `orders`
/// (the integration tests probe every `orders` partition) must skip the record.
pub const PROBE_HEADER: &str = "x-stack-probe";

/// How long `orders` and `events` keep records: 7 days, or 2 GiB per partition, whichever comes
/// first. PostgreSQL is the system of record (the engine stores its consumed offset there), so the
/// log only needs to outlive restarts and replay tests; the byte bound keeps a long load test
/// from filling the disk.
pub const TOPIC_RETENTION_MS: &str = "604800000";
pub const TOPIC_RETENTION_BYTES_PER_PARTITION: &str = "2147483648";
/// Smaller segments than Kafka's 1 GiB default so retention frees space in steps that matter.
pub const TOPIC_SEGMENT_BYTES: &str = "268435456";

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a client is for; decides its defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Records that arrive one at a time (the gateway's commands): the producer lingers 5 ms so
    /// one request carries several.
    Producer,
    /// Records handed over a whole batch at once (an engine actor's events, the account
    /// stage's lines): no linger, since the caller batched already and waiting would only delay
    /// every record of the batch. These are ordered streams that a restart publishes again
    /// from PostgreSQL's position, so a record must never be dropped while a later one of its
    /// partition is written: no message timeout (a record waits for the broker however long it
    /// is away; a publish error is then a lasting one, and the actor restarts from
    /// PostgreSQL, or the service exits when the producer itself is broken: [`exit_if_fatal`]).
    BatchProducer,
    Consumer,
    Admin,
}

impl Role {
    fn env_prefix(self) -> Option<&'static str> {
        match self {
            Role::Producer | Role::BatchProducer => Some("KAFKA_PRODUCER_CFG_"),
            Role::Consumer => Some("KAFKA_CONSUMER_CFG_"),
            Role::Admin => None,
        }
    }
}

/// Every Kafka client of the project is configured here, with overrides from the environment.
pub fn client_config(brokers: &str, client_id: &str, role: Role) -> ClientConfig {
    client_config_with_env(brokers, client_id, role, std::env::vars())
}

/// [`client_config`] with the environment passed in, for tests.
pub fn client_config_with_env(
    brokers: &str,
    client_id: &str,
    role: Role,
    env: impl IntoIterator<Item = (String, String)>,
) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        .set("socket.keepalive.enable", "true")
        // librdkafka leaves Nagle on by default: a small request then waits for the broker's
        // delayed ACK (tens of milliseconds) whenever another is in flight on the connection.
        .set("socket.nagle.disable", "true");
    match role {
        Role::Producer | Role::BatchProducer => {
            let linger_ms = if role == Role::BatchProducer {
                "0"
            } else {
                "5"
            };
            // Idempotence + acks=all: a retried batch is written once, and an ack means the
            // record is on every in-sync replica.
            cfg.set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", linger_ms)
                .set("batch.num.messages", "10000")
                .set("batch.size", "1048576")
                .set("compression.type", "lz4")
                // The local queue is bounded; when it is full `send` fails with QueueFull and the
                // caller's back-pressure policy decides (never an unbounded buffer).
                .set("queue.buffering.max.messages", "100000")
                .set("queue.buffering.max.kbytes", "262144");
            if role == Role::BatchProducer {
                // A timed-out record is a gap when a later one of its partition gets through
                // (the broker back just then): consumers would see the stream skip, and the
                // restart's re-publication arrive behind later records. Measured in the
                // broker-crash scenario with a 30 s timeout and a ~30 s broker restart.
                // (librdkafka's `enable.gapless.guarantee` is still experimental, and does not
                // cover timeouts.)
                cfg.set("message.timeout.ms", "0");
            } else {
                // The gateway's commands: a client waits for the answer, so a record Kafka does
                // not take within 30 s is answered (each record stands alone, so a gap is fine).
                cfg.set("message.timeout.ms", "30000");
            }
        }
        Role::Consumer => {
            // Offsets move only after the effect is durable: the service stores them itself.
            cfg.set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("enable.partition.eof", "false")
                // With `fetch.min.bytes` at 1 the broker answers a fetch as soon as any of its
                // partitions has a record, so this wait adds no latency: it only decides how often
                // an idle consumer asks again. Every empty fetch costs the broker CPU (measured on
                // the 2-core box, idle: broker 2% of a core with no clients, 11% with the engine's
                // consumer at 10 ms, 3% at 100 ms).
                .set("fetch.wait.max.ms", "100")
                // Prefetch is bounded per partition (librdkafka's default is 64 MiB).
                .set("queued.max.messages.kbytes", "16384");
        }
        Role::Admin => {}
    }
    let mut overrides: Vec<(String, String, u8)> = env
        .into_iter()
        .filter_map(|(key, value)| {
            if let Some(name) = key.strip_prefix("KAFKA_CFG_") {
                Some((env_name_to_property(name), value, 0))
            } else {
                let name = key.strip_prefix(role.env_prefix()?)?;
                Some((env_name_to_property(name), value, 1))
            }
        })
        .collect();
    // Role-specific overrides win over general ones.
    overrides.sort_by_key(|(_, _, rank)| *rank);
    for (property, value, _) in overrides {
        if !property.is_empty() {
            cfg.set(property, value);
        }
    }
    cfg
}

/// The exit status of a service whose producer hit a fatal error.
pub const EXIT_KAFKA_FATAL: i32 = 70;

/// After an actor failed on Kafka: a producer with a fatal error (its idempotence state is
/// lost) refuses every record from now on, and only a new
/// producer can publish again. Exits the process, as a crash would, so its supervisor (ECS,
/// `scripts/serve`, the chaos suite) starts it again; the restart publishes again from
/// PostgreSQL's position. Returns when the producer is usable.
pub fn exit_if_fatal<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    service: &str,
) {
    if let Some((code, reason)) = client.fatal_error() {
        tracing::error!(
            service,
            ?code,
            reason,
            "the Kafka producer hit a fatal error; exiting so that a fresh process publishes again from PostgreSQL"
        );
        std::process::exit(EXIT_KAFKA_FATAL);
    }
}

fn env_name_to_property(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', ".")
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("cannot create a Kafka {role:?} client for {brokers}: {source}")]
    Client {
        brokers: String,
        role: Role,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("cannot read the metadata of topic {topic} from {brokers}: {source}")]
    Metadata {
        brokers: String,
        topic: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("cannot {action} topic {topic}: {source}")]
    Admin {
        action: &'static str,
        topic: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("cannot {action} topic {topic}: broker answered {code}")]
    AdminRefused {
        action: &'static str,
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error(
        "topic {topic} has {actual} partitions but the pairs file lists {expected} pairs; Kafka \
         cannot remove partitions: restore the missing pairs, or delete the topic (locally: \
         scripts/stack down --purge && scripts/stack up)"
    )]
    TooManyPartitions {
        topic: String,
        actual: usize,
        expected: usize,
    },
    #[error(
        "topic {topic} has {actual} partitions but ACCOUNT_SHARDS is {expected}: an account's \
         shard is its id modulo the count, so the count never changes once balances exist \
         (set ACCOUNT_SHARDS={actual})"
    )]
    ShardCount {
        topic: String,
        actual: usize,
        expected: usize,
    },
    #[error("topic {topic} did not get {expected} partitions with leaders within {waited_ms} ms")]
    TopicNotReady {
        topic: String,
        expected: usize,
        waited_ms: u128,
    },
    #[error("round trip on {topic}[{partition}] via {brokers} failed: {detail}")]
    RoundTrip {
        brokers: String,
        topic: String,
        partition: i32,
        detail: String,
    },
    #[error("blocking Kafka call panicked or was cancelled: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What [`ensure_topic`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicAction {
    Created,
    Increased { from: usize },
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReport {
    pub topic: String,
    pub partitions: usize,
    pub action: TopicAction,
}

/// Makes `orders` and `events` have exactly one partition per pair.
pub async fn ensure_topics(
    brokers: &str,
    registry: &PairRegistry,
) -> Result<Vec<TopicReport>, KafkaSetupError> {
    let admin = Arc::new(admin_client(brokers)?);
    let config = [
        ("retention.ms", TOPIC_RETENTION_MS),
        ("retention.bytes", TOPIC_RETENTION_BYTES_PER_PARTITION),
        ("segment.bytes", TOPIC_SEGMENT_BYTES),
    ];
    let mut reports = Vec::with_capacity(2);
    for topic in [ORDERS_TOPIC, EVENTS_TOPIC] {
        reports.push(ensure_topic(&admin, brokers, topic, registry.len(), &config).await?);
    }
    Ok(reports)
}

/// Account shards the stack creates when `accounts` does not exist yet (`ACCOUNT_SHARDS`).
pub const ACCOUNT_SHARDS_DEFAULT: usize = 4;

/// Makes `accounts` and `account_events` exist with `shards` partitions each. Unlike the pair
/// topics they never grow: an account's shard is its id modulo the count, so a new count would
/// move accounts away from their balances. A topic with another count is an error.
pub async fn ensure_account_topics(
    brokers: &str,
    shards: usize,
) -> Result<Vec<TopicReport>, KafkaSetupError> {
    use protocol::accounts::{ACCOUNT_EVENTS_TOPIC, ACCOUNTS_TOPIC};
    let admin = Arc::new(admin_client(brokers)?);
    let config = [
        ("retention.ms", TOPIC_RETENTION_MS),
        ("retention.bytes", TOPIC_RETENTION_BYTES_PER_PARTITION),
        ("segment.bytes", TOPIC_SEGMENT_BYTES),
    ];
    let mut reports = Vec::with_capacity(2);
    for topic in [ACCOUNTS_TOPIC, ACCOUNT_EVENTS_TOPIC] {
        match partition_count(&admin, brokers, topic).await? {
            Some(actual) if actual != shards => {
                return Err(KafkaSetupError::ShardCount {
                    topic: topic.to_owned(),
                    actual,
                    expected: shards,
                });
            }
            _ => reports.push(ensure_topic(&admin, brokers, topic, shards, &config).await?),
        }
    }
    Ok(reports)
}

/// Makes `topic` exist with exactly `partitions` partitions (the broker's default replication
/// factor, see the module comment).
pub async fn ensure_topic(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    brokers: &str,
    topic: &str,
    partitions: usize,
    config: &[(&str, &str)],
) -> Result<TopicReport, KafkaSetupError> {
    assert!(partitions > 0, "a topic needs at least one partition");
    let opts = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let action = match partition_count(admin, brokers, topic).await? {
        None => {
            let partitions_i32 = i32::try_from(partitions).expect("partition count fits i32");
            // -1: the broker's `default.replication.factor` (KIP-464, Kafka >= 2.4).
            let mut new_topic = NewTopic::new(topic, partitions_i32, TopicReplication::Fixed(-1));
            for (key, value) in config {
                new_topic = new_topic.set(key, value);
            }
            let results = admin
                .create_topics([&new_topic], &opts)
                .await
                .map_err(|source| admin_error("create", topic, source))?;
            check_admin_results("create", results, RDKafkaErrorCode::TopicAlreadyExists)?;
            TopicAction::Created
        }
        Some(actual) if actual < partitions => {
            let results = admin
                .create_partitions([&NewPartitions::new(topic, partitions)], &opts)
                .await
                .map_err(|source| admin_error("add partitions to", topic, source))?;
            check_admin_results(
                "add partitions to",
                results,
                RDKafkaErrorCode::InvalidPartitions,
            )?;
            TopicAction::Increased { from: actual }
        }
        Some(actual) if actual > partitions => {
            return Err(KafkaSetupError::TooManyPartitions {
                topic: topic.to_owned(),
                actual,
                expected: partitions,
            });
        }
        Some(_) => TopicAction::Unchanged,
    };
    wait_for_partitions(admin, brokers, topic, partitions).await?;
    Ok(TopicReport {
        topic: topic.to_owned(),
        partitions,
        action,
    })
}

/// `topic`/`partition`'s (low, high) watermarks, asked on a blocking thread (librdkafka's call
/// blocks); `None` when the broker does not answer within a second.
pub async fn watermarks<C, X>(consumer: &Arc<C>, topic: &str, partition: i32) -> Option<(i64, i64)>
where
    C: Consumer<X> + Send + Sync + 'static,
    X: rdkafka::consumer::ConsumerContext + 'static,
{
    let consumer = Arc::clone(consumer);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        consumer.fetch_watermarks(&topic, partition, Duration::from_secs(1))
    })
    .await
    .ok()?
    .ok()
}

/// Partition counts of the given topics (`None`: the topic does not exist).
pub async fn topic_partitions(
    brokers: &str,
    topics: &[&str],
) -> Result<Vec<(String, Option<usize>)>, KafkaSetupError> {
    let admin = Arc::new(admin_client(brokers)?);
    let mut out = Vec::with_capacity(topics.len());
    for topic in topics {
        out.push((
            (*topic).to_owned(),
            partition_count(&admin, brokers, topic).await?,
        ));
    }
    Ok(out)
}

pub fn admin_client(brokers: &str) -> Result<AdminClient<DefaultClientContext>, KafkaSetupError> {
    client_config(brokers, "stack-admin", Role::Admin)
        .create()
        .map_err(|source| KafkaSetupError::Client {
            brokers: brokers.to_owned(),
            role: Role::Admin,
            source: Box::new(source),
        })
}

fn admin_error(action: &'static str, topic: &str, source: KafkaError) -> KafkaSetupError {
    KafkaSetupError::Admin {
        action,
        topic: topic.to_owned(),
        source: Box::new(source),
    }
}

/// A concurrent `prepare` may have done the same thing first; `tolerated` is that race's code,
/// and the partition check that follows decides whether the result is right.
fn check_admin_results(
    action: &'static str,
    results: Vec<rdkafka::admin::TopicResult>,
    tolerated: RDKafkaErrorCode,
) -> Result<(), KafkaSetupError> {
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, code)) if code == tolerated => {}
            Err((topic, code)) => {
                return Err(KafkaSetupError::AdminRefused {
                    action,
                    topic,
                    code,
                });
            }
        }
    }
    Ok(())
}

/// Number of partitions of `topic`, `None` if it does not exist. Metadata calls block, so they
/// run on the blocking pool.
async fn partition_count(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    brokers: &str,
    topic: &str,
) -> Result<Option<usize>, KafkaSetupError> {
    Ok(partition_leaders(admin, brokers, topic)
        .await?
        .map(|leaders| leaders.len()))
}

/// The leader of each partition of `topic` (negative: none yet), `None` if it does not exist.
async fn partition_leaders(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    brokers: &str,
    topic: &str,
) -> Result<Option<Vec<i32>>, KafkaSetupError> {
    let admin = Arc::clone(admin);
    let topic_owned = topic.to_owned();
    let metadata = tokio::task::spawn_blocking(move || {
        admin
            .inner()
            .fetch_metadata(Some(&topic_owned), METADATA_TIMEOUT)
    })
    .await?
    .map_err(|source| KafkaSetupError::Metadata {
        brokers: brokers.to_owned(),
        topic: topic.to_owned(),
        source: Box::new(source),
    })?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match found.error() {
        None => Ok(Some(
            found.partitions().iter().map(|p| p.leader()).collect(),
        )),
        Some(err) => match RDKafkaErrorCode::from(err) {
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => Ok(None),
            // Freshly created: listed, but its partitions have no leader yet.
            RDKafkaErrorCode::LeaderNotAvailable => Ok(Some(Vec::new())),
            code => Err(KafkaSetupError::Metadata {
                brokers: brokers.to_owned(),
                topic: topic.to_owned(),
                source: Box::new(KafkaError::MetadataFetch(code)),
            }),
        },
    }
}

async fn wait_for_partitions(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    brokers: &str,
    topic: &str,
    expected: usize,
) -> Result<(), KafkaSetupError> {
    let started = Instant::now();
    loop {
        if let Some(leaders) = partition_leaders(admin, brokers, topic).await?
            && leaders.len() == expected
            && leaders.iter().all(|leader| *leader >= 0)
        {
            return Ok(());
        }
        if started.elapsed() > TOPIC_READY_TIMEOUT {
            return Err(KafkaSetupError::TopicNotReady {
                topic: topic.to_owned(),
                expected,
                waited_ms: started.elapsed().as_millis(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Makes the probe topic exist (one partition) for [`round_trip`].
pub async fn ensure_probe_topic(brokers: &str) -> Result<(), KafkaSetupError> {
    let admin = Arc::new(admin_client(brokers)?);
    ensure_topic(
        &admin,
        brokers,
        PROBE_TOPIC,
        1,
        &[("retention.ms", "3600000")],
    )
    .await?;
    Ok(())
}

/// The outcome of one successful [`round_trip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundTrip {
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
    pub elapsed: Duration,
}

/// Produces a unique record to `topic[partition]` with the project's producer config and reads
/// it back with the project's consumer config. Proves the broker accepts, stores and serves
/// records, which an open port alone does not.
pub async fn round_trip(
    brokers: &str,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<RoundTrip, KafkaSetupError> {
    let started = Instant::now();
    let fail = |detail: String| KafkaSetupError::RoundTrip {
        brokers: brokers.to_owned(),
        topic: topic.to_owned(),
        partition,
        detail,
    };
    let producer: FutureProducer = client_config(brokers, "stack-probe", Role::Producer)
        .create()
        .map_err(|source| KafkaSetupError::Client {
            brokers: brokers.to_owned(),
            role: Role::Producer,
            source: Box::new(source),
        })?;
    let payload = unique_payload(topic, partition);
    let headers = OwnedHeaders::new().insert(Header {
        key: PROBE_HEADER,
        value: Some("1"),
    });
    let record = FutureRecord::to(topic)
        .partition(partition)
        .key("stack-probe")
        .payload(&payload)
        .headers(headers);
    let delivery = tokio::time::timeout(timeout, producer.send(record, timeout))
        .await
        .map_err(|_| {
            fail(format!(
                "no delivery report within {} ms",
                timeout.as_millis()
            ))
        })?
        .map_err(|(err, _)| fail(format!("produce failed: {err}")))?;
    if delivery.partition != partition {
        return Err(fail(format!(
            "delivered to partition {}",
            delivery.partition
        )));
    }

    let consumer: StreamConsumer = client_config(brokers, "stack-probe", Role::Consumer)
        .set("group.id", "stack-probe")
        .create()
        .map_err(|source| KafkaSetupError::Client {
            brokers: brokers.to_owned(),
            role: Role::Consumer,
            source: Box::new(source),
        })?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(delivery.offset))
        .map_err(|err| fail(format!("cannot build the assignment: {err}")))?;
    consumer
        .assign(&assignment)
        .map_err(|err| fail(format!("cannot assign: {err}")))?;
    let remaining = timeout.saturating_sub(started.elapsed());
    let message = tokio::time::timeout(remaining, consumer.recv())
        .await
        .map_err(|_| {
            fail(format!(
                "produced at offset {} but could not fetch it within {} ms",
                delivery.offset,
                timeout.as_millis()
            ))
        })?
        .map_err(|err| fail(format!("fetch failed: {err}")))?;
    if message.offset() != delivery.offset || message.payload() != Some(payload.as_slice()) {
        return Err(fail(format!(
            "fetched offset {} with a different payload than produced at offset {}",
            message.offset(),
            delivery.offset
        )));
    }
    Ok(RoundTrip {
        partition,
        offset: delivery.offset,
        payload,
        elapsed: started.elapsed(),
    })
}

fn unique_payload(topic: &str, partition: i32) -> Vec<u8> {
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "stack-probe topic={topic} partition={partition} pid={} t_ns={now_ns}",
        std::process::id()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn producer_defaults_are_idempotent_and_acks_all() {
        let cfg = client_config_with_env("127.0.0.1:1", "t", Role::Producer, env(&[]));
        assert_eq!(cfg.get("enable.idempotence"), Some("true"));
        assert_eq!(cfg.get("acks"), Some("all"));
        assert_eq!(cfg.get("bootstrap.servers"), Some("127.0.0.1:1"));
        assert_eq!(cfg.get("enable.auto.commit"), None);
        assert_eq!(cfg.get("linger.ms"), Some("5"));
        let batch = client_config_with_env("b", "t", Role::BatchProducer, env(&[]));
        assert_eq!(batch.get("enable.idempotence"), Some("true"));
        assert_eq!(batch.get("acks"), Some("all"));
        assert_eq!(
            batch.get("linger.ms"),
            Some("0"),
            "the caller batched already"
        );
        assert_eq!(cfg.get("message.timeout.ms"), Some("30000"));
        assert_eq!(
            batch.get("message.timeout.ms"),
            Some("0"),
            "an ordered stream never drops a record by time"
        );
        let overridden = env(&[("KAFKA_PRODUCER_CFG_LINGER_MS", "2")]);
        let batch = client_config_with_env("b", "t", Role::BatchProducer, overridden);
        assert_eq!(batch.get("linger.ms"), Some("2"));
    }

    #[test]
    fn consumer_never_commits_or_stores_offsets_by_itself() {
        let cfg = client_config_with_env("b", "t", Role::Consumer, env(&[]));
        assert_eq!(cfg.get("enable.auto.commit"), Some("false"));
        assert_eq!(cfg.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(cfg.get("acks"), None);
    }

    #[test]
    fn environment_overrides_apply_by_role_and_role_wins() {
        let vars = env(&[
            ("KAFKA_PRODUCER_CFG_LINGER_MS", "20"),
            ("KAFKA_CFG_LINGER_MS", "1"),
            ("KAFKA_CFG_STATISTICS_INTERVAL_MS", "1000"),
            ("KAFKA_CONSUMER_CFG_FETCH_WAIT_MAX_MS", "99"),
            ("KAFKA_BROKERS", "ignored:1"),
        ]);
        let producer = client_config_with_env("b", "t", Role::Producer, vars.clone());
        assert_eq!(producer.get("linger.ms"), Some("20"));
        assert_eq!(producer.get("statistics.interval.ms"), Some("1000"));
        assert_eq!(producer.get("fetch.wait.max.ms"), None);
        assert_eq!(producer.get("bootstrap.servers"), Some("b"));
        let consumer = client_config_with_env("b", "t", Role::Consumer, vars);
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("99"));
    }

    #[test]
    fn plaintext_unless_the_environment_asks_for_tls_and_scram() {
        let plain = client_config_with_env("b", "t", Role::Producer, env(&[]));
        assert_eq!(
            plain.get("security.protocol"),
            None,
            "librdkafka's default: plaintext"
        );
        assert_eq!(plain.get("sasl.username"), None);

        let msk = env(&[
            ("KAFKA_CFG_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_CFG_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA_CFG_SASL_USERNAME", "trading"),
            ("KAFKA_CFG_SASL_PASSWORD", "secret"),
        ]);
        for role in [
            Role::Producer,
            Role::BatchProducer,
            Role::Consumer,
            Role::Admin,
        ] {
            let cfg = client_config_with_env("b-1.msk:9096", "t", role, msk.clone());
            assert_eq!(cfg.get("security.protocol"), Some("SASL_SSL"), "{role:?}");
            assert_eq!(cfg.get("sasl.mechanism"), Some("SCRAM-SHA-512"), "{role:?}");
            assert_eq!(cfg.get("sasl.username"), Some("trading"), "{role:?}");
            assert_eq!(cfg.get("sasl.password"), Some("secret"), "{role:?}");
        }
        // librdkafka refuses SASL_SSL and SCRAM when built without OpenSSL; creating a client
        // (no broker is contacted before the first request) proves the build has it.
        let producer = client_config_with_env("127.0.0.1:1", "t", Role::Producer, msk)
            .create::<rdkafka::producer::BaseProducer>();
        assert!(producer.is_ok(), "TLS + SCRAM client: {:?}", producer.err());
    }
}
