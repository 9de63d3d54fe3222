//! Shared harness for the engine's black-box tests: real Kafka and PostgreSQL from
//! `KAFKA_BROKERS` / `DATABASE_URL` (`eval "$(scripts/stack env)"`), a fresh pair of topics and
//! a fresh schema per test so tests run in parallel without seeing each other.
//!
//! Fresh *schema*, not database: the stack's `trading` role owns its database but may not
//! create databases; a schema on the connection's `search_path` isolates just as well.

#![allow(dead_code)]

pub mod faults;
pub mod proxy;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::records::{EventRecord, OrderRecord, RECORD_VERSION};
use protocol::{
    AccountId, Command, OrderId, OrderType, PairRegistry, PlaceOrder, Price, Qty,
    SelfTradePrevention, Side, TimeInForce,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::PgPool;

pub type Stack = infra::StackAddrs;

/// The stack from the environment; `None` (after printing why) when unset outside CI.
pub fn stack(test: &str) -> Option<Stack> {
    infra::stack_for_tests(test)
}

pub fn registry() -> PairRegistry {
    infra::config::load_pairs().expect("config/pairs.toml").1
}

/// One test's private world: its topics, its schema, its URL.
pub struct World {
    pub stack: Stack,
    pub registry: PairRegistry,
    pub orders_topic: String,
    pub events_topic: String,
    pub schema: String,
    /// `DATABASE_URL` with `search_path` set to the test's schema.
    pub database_url: String,
    pub pool: PgPool,
    /// The test's `accounts` topic ([`World::with_accounts`]), set in [`World::config`].
    pub accounts_topic: Option<String>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(tag: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{tag}_{}_{}_{}",
        std::process::id(),
        now % 1_000_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl World {
    pub async fn new(stack: Stack, tag: &str) -> World {
        let registry = registry();
        let id = unique(tag);
        let orders_topic = format!("orders_{id}");
        let events_topic = format!("events_{id}");
        let admin = Arc::new(infra::kafka::admin_client(&stack.brokers).expect("admin client"));
        for topic in [&orders_topic, &events_topic] {
            infra::kafka::ensure_topic(&admin, &stack.brokers, topic, registry.len(), &[])
                .await
                .expect("create test topic");
        }
        let schema = format!("test_{id}");
        let admin_pool = infra::db::connect(&stack.database_url, 1)
            .await
            .expect("connect PostgreSQL");
        // The schema name is generated above from digits and underscores only.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin_pool)
            .await
            .expect("create schema");
        admin_pool.close().await;
        let sep = if stack.database_url.contains('?') {
            '&'
        } else {
            '?'
        };
        let database_url = format!(
            "{}{sep}options=-c%20search_path%3D{schema}",
            stack.database_url
        );
        let pool = infra::db::connect(&database_url, 4)
            .await
            .expect("connect schema");
        infra::db::migrate(&pool).await.expect("migrate");
        World {
            stack,
            registry,
            orders_topic,
            events_topic,
            schema,
            database_url,
            pool,
            accounts_topic: None,
        }
    }

    /// Creates a fresh `accounts` topic with one partition per account shard; the engine's
    /// config then sends settlements there.
    pub async fn with_accounts(mut self, shards: usize) -> World {
        let topic = format!("accounts_{}", self.schema);
        let admin =
            Arc::new(infra::kafka::admin_client(&self.stack.brokers).expect("admin client"));
        infra::kafka::ensure_topic(&admin, &self.stack.brokers, &topic, shards, &[])
            .await
            .expect("create the accounts topic");
        self.accounts_topic = Some(topic);
        self
    }

    pub fn config(&self) -> engine::Config {
        let mut c = engine::Config::new(
            self.stack.brokers.clone(),
            self.database_url.clone(),
            self.registry.clone(),
        );
        c.orders_topic = self.orders_topic.clone();
        c.events_topic = self.events_topic.clone();
        c.accounts_topic = self.accounts_topic.clone();
        c.group_id = format!("g_{}", self.schema);
        c
    }

    pub fn producer(&self) -> FutureProducer {
        infra::kafka::client_config(
            &self.stack.brokers,
            "engine-test",
            infra::kafka::Role::Producer,
        )
        .create()
        .expect("producer")
    }

    /// Produces raw payloads to the pair's partition and waits for every acknowledgement.
    pub async fn produce_raw(&self, pair_id: u32, payloads: &[Vec<u8>]) {
        let producer = self.producer();
        self.produce_with(&producer, pair_id, payloads).await;
    }

    pub async fn produce_with(
        &self,
        producer: &FutureProducer,
        pair_id: u32,
        payloads: &[Vec<u8>],
    ) {
        let symbol = self.registry.get(pair_id).expect("pair").symbol.clone();
        let mut futures = Vec::with_capacity(payloads.len());
        for p in payloads {
            let record = FutureRecord::to(&self.orders_topic)
                .partition(pair_id as i32)
                .key(&symbol)
                .payload(p);
            futures.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("enqueue"),
            );
        }
        for f in futures {
            f.await
                .expect("delivery")
                .map_err(|(e, _)| e)
                .expect("acked");
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
    }

    pub async fn produce(&self, records: &[OrderRecord]) {
        let mut by_pair: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
        for r in records {
            let id = self.registry.by_symbol(&r.pair).expect("known pair").id;
            by_pair.entry(id).or_default().push(r.encode());
        }
        for (id, payloads) in by_pair {
            self.produce_raw(id, &payloads).await;
        }
    }

    /// Reads the events topic from the start until `count` records arrived or `timeout`.
    pub async fn read_events(&self, count: usize, timeout: Duration) -> Vec<EventRecord> {
        let brokers = self.stack.brokers.clone();
        let topic = self.events_topic.clone();
        let partitions = self.registry.len();
        tokio::task::spawn_blocking(move || {
            let consumer = reader_from_beginning(&brokers, &topic, 0..partitions as i32);
            let started = Instant::now();
            let mut out = Vec::new();
            while out.len() < count && started.elapsed() < timeout {
                if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) {
                    for rec in EventRecord::decode_all(msg.payload().expect("payload")) {
                        out.push(rec.expect("event record decodes"));
                    }
                }
            }
            out
        })
        .await
        .expect("reader")
    }

    /// The last applied offset of each pair, by pair id.
    pub async fn last_offsets(&self) -> HashMap<u32, i64> {
        let rows: Vec<(i32, i64)> = sqlx::query_as("SELECT pair_id, last_offset FROM pair_offsets")
            .fetch_all(&self.pool)
            .await
            .expect("offsets");
        rows.into_iter().map(|(p, o)| (p as u32, o)).collect()
    }

    /// Waits until every listed pair has applied up to `last_offset` (inclusive).
    pub async fn wait_applied(&self, want: &HashMap<u32, i64>, timeout: Duration) {
        let started = Instant::now();
        loop {
            let have = self.last_offsets().await;
            if want
                .iter()
                .all(|(p, o)| have.get(p).is_some_and(|h| h >= o))
            {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "pairs did not apply up to {want:?} within {timeout:?}; have {have:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn drop_schema(self) {
        self.pool.close().await;
        if let Ok(pool) = infra::db::connect(&self.stack.database_url, 1).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA {} CASCADE",
                self.schema
            )))
            .execute(&pool)
            .await;
        }
    }
}

pub fn limit(
    command_id: u64,
    pair: &str,
    order_id: u64,
    account: u64,
    side: Side,
    price: i64,
    qty: i64,
) -> OrderRecord {
    OrderRecord {
        v: RECORD_VERSION,
        command_id,
        pair: pair.to_owned(),
        ts_ns: 1_700_000_000_000_000_000 + command_id,
        src: None,
        tp: None,
        command: Command::Place(PlaceOrder {
            quote_budget: None,
            order_id: OrderId(order_id),
            account_id: AccountId(account),
            client_order_id: None,
            side,
            order_type: OrderType::Limit,
            price: Some(Price(price)),
            qty: Qty(qty),
            tif: TimeInForce::Gtc,
            post_only: false,
            stp: SelfTradePrevention::ExpireTaker,
        }),
    }
}

/// Starts the engine in-process; returns its shutdown token and task.
pub fn spawn_engine(
    config: engine::Config,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<Result<(), engine::EngineError>>,
) {
    let token = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(engine::run(config, token.clone()));
    (token, handle)
}

/// Checks that per pair, after dropping duplicates by seq, the seqs are exactly 1..=n.
pub fn check_seqs(events: &[EventRecord]) -> HashMap<String, u64> {
    let mut by_pair: HashMap<String, std::collections::BTreeSet<u64>> = HashMap::new();
    for r in events {
        for e in &r.events {
            by_pair.entry(r.pair.clone()).or_default().insert(e.seq);
        }
    }
    let mut last = HashMap::new();
    for (pair, seqs) in by_pair {
        let n = seqs.len() as u64;
        assert_eq!(seqs.iter().next(), Some(&1), "{pair}: seqs start at 1");
        assert_eq!(
            seqs.iter().last(),
            Some(&n),
            "{pair}: seqs 1..={n} without gaps"
        );
        last.insert(pair, n);
    }
    last
}

/// One raw `orders` record as the engine saw it.
pub struct RawRecord {
    pub offset: i64,
    pub payload: Option<Vec<u8>>,
    pub ts_ns: u64,
    pub probe: bool,
}

impl World {
    /// The high watermark of the pair's `events` partition.
    pub async fn events_high(&self, pair_id: u32) -> i64 {
        let brokers = self.stack.brokers.clone();
        let topic = self.events_topic.clone();
        tokio::task::spawn_blocking(move || {
            let consumer =
                reader_from_beginning(&brokers, &topic, pair_id as i32..pair_id as i32 + 1);
            consumer
                .fetch_watermarks(&topic, pair_id as i32, Duration::from_secs(5))
                .expect("watermarks")
                .1
        })
        .await
        .expect("watermarks task")
    }

    /// Every record of the pair's `orders` partition, from the start to the high watermark.
    pub async fn read_orders(&self, pair_id: u32) -> Vec<RawRecord> {
        use rdkafka::message::Headers;
        let brokers = self.stack.brokers.clone();
        let topic = self.orders_topic.clone();
        tokio::task::spawn_blocking(move || {
            let consumer =
                reader_from_beginning(&brokers, &topic, pair_id as i32..pair_id as i32 + 1);
            let (_, high) = consumer
                .fetch_watermarks(&topic, pair_id as i32, Duration::from_secs(5))
                .expect("watermarks");
            let mut out = Vec::new();
            let started = Instant::now();
            while out.last().is_none_or(|r: &RawRecord| r.offset + 1 < high) {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "reading orders"
                );
                if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) {
                    out.push(RawRecord {
                        offset: msg.offset(),
                        payload: msg.payload().map(<[u8]>::to_vec),
                        ts_ns: msg
                            .timestamp()
                            .to_millis()
                            .map_or(0, |ms| (ms as u64).saturating_mul(1_000_000)),
                        probe: msg
                            .headers()
                            .is_some_and(|h| h.iter().any(|h| h.key == infra::kafka::PROBE_HEADER)),
                    });
                }
            }
            out
        })
        .await
        .expect("reader")
    }

    /// Reads `events` until `unique` distinct (pair, orders_offset) answers arrived and the topic
    /// stays quiet for a second; returns every record, duplicates included.
    pub async fn read_all_events(&self, unique: usize, timeout: Duration) -> Vec<EventRecord> {
        let brokers = self.stack.brokers.clone();
        let topic = self.events_topic.clone();
        let partitions = self.registry.len();
        tokio::task::spawn_blocking(move || {
            let consumer = reader_from_beginning(&brokers, &topic, 0..partitions as i32);
            let started = Instant::now();
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            let mut quiet_since = Instant::now();
            while started.elapsed() < timeout
                && (seen.len() < unique || quiet_since.elapsed() < Duration::from_secs(1))
            {
                if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) {
                    for rec in EventRecord::decode_all(msg.payload().expect("payload")) {
                        let rec = rec.expect("decodes");
                        seen.insert((rec.pair.clone(), rec.orders_offset));
                        out.push(rec);
                    }
                    quiet_since = Instant::now();
                }
            }
            out
        })
        .await
        .expect("reader")
    }
}

/// `record` as an account shard forwards it: with its source.
pub fn forwarded(mut record: OrderRecord, shard: u32, offset: i64) -> OrderRecord {
    record.src = Some(protocol::accounts::Source { shard, offset });
    record
}

/// One line of a record read back from a topic.
#[derive(Debug, Clone)]
pub struct TopicLine {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub line: Vec<u8>,
}

impl World {
    /// Produces payloads to the pair's `orders` partition in order, each with an `x-fault`
    /// header when given (`engine::fault`), and waits for every acknowledgement.
    pub async fn produce_marked(&self, pair_id: u32, payloads: &[(Vec<u8>, Option<&str>)]) {
        use rdkafka::message::{Header, OwnedHeaders};
        let producer = self.producer();
        let symbol = self.registry.get(pair_id).expect("pair").symbol.clone();
        for (payload, fault) in payloads {
            let mut record = FutureRecord::to(&self.orders_topic)
                .partition(pair_id as i32)
                .key(&symbol)
                .payload(payload);
            if let Some(fault) = fault {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: engine::fault::FAULT_HEADER,
                    value: Some(*fault),
                }));
            }
            // One at a time: the offsets are the test's to name.
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("enqueue")
                .await
                .expect("delivery")
                .map_err(|(e, _)| e)
                .expect("acked");
        }
    }

    /// Every line of every record of `topic`'s first `partitions` partitions, from the start to
    /// the high watermark each had when read, in log order per partition.
    pub async fn read_lines(&self, topic: &str, partitions: usize) -> Vec<TopicLine> {
        let brokers = self.stack.brokers.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for p in 0..partitions as i32 {
                let consumer = reader_from_beginning(&brokers, &topic, p..p + 1);
                let (_, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(5))
                    .expect("watermarks");
                let started = Instant::now();
                let mut next = 0;
                while next < high {
                    assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "reading {topic}[{p}]"
                    );
                    if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) {
                        next = msg.offset() + 1;
                        let key = msg.key().map(|k| String::from_utf8_lossy(k).into_owned());
                        let payload = msg.payload().unwrap_or_default();
                        for line in payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                            out.push(TopicLine {
                                partition: p,
                                offset: msg.offset(),
                                key: key.clone(),
                                line: line.to_vec(),
                            });
                        }
                    }
                }
            }
            out
        })
        .await
        .expect("reader")
    }
}

/// A consumer assigned to `partitions` of `topic` from their first record.
fn reader_from_beginning(
    brokers: &str,
    topic: &str,
    partitions: std::ops::Range<i32>,
) -> BaseConsumer {
    let consumer: BaseConsumer =
        infra::kafka::client_config(brokers, "engine-test", infra::kafka::Role::Consumer)
            .set("group.id", format!("reader_{}", unique("r")))
            .create()
            .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    consumer
}

/// Proves exactly-once against a fresh replay of each pair's whole `orders` partition through
/// engine-core: every record answered, published answers equal the replay (so seqs have no gap
/// or repeat), stored trades and open orders equal the replay's, fills add up per order.
pub async fn verify_against_replay(world: &World, specs: &[protocol::PairSpec], per_pair: usize) {
    use engine::record::{Sources, apply_record};
    use engine_core::OrderBook;
    use protocol::records::command_lines;
    use protocol::{Event, EventBody};
    let events = world
        .read_all_events(specs.len() * per_pair, Duration::from_secs(60))
        .await;
    // Dedupe by (pair, offset, command): a record may pack several commands, each answered by
    // its own EventRecord; a duplicate must be the same answer.
    let mut answers: HashMap<(String, i64, Option<u64>), &EventRecord> = HashMap::new();
    for r in &events {
        if let Some(prev) = answers.insert((r.pair.clone(), r.orders_offset, r.command_id), r) {
            assert_eq!(prev, r, "a republished answer differs from the first");
        }
    }
    for spec in specs {
        let mut book = OrderBook::new(spec.clone());
        let mut replay_trades = Vec::new();
        let mut next_seq = 1;
        let mut sources = Sources::default();
        for raw in world.read_orders(spec.id).await {
            if raw.probe {
                continue;
            }
            for line in command_lines(raw.payload.as_deref()) {
                let mut out: Vec<Event> = Vec::new();
                let outcome = apply_record(&mut book, &mut sources, line, raw.ts_ns, &mut out);
                if outcome.repeat.is_some() {
                    continue;
                }
                let command_id = outcome.command_id;
                let got = answers
                    .get(&(spec.symbol.clone(), raw.offset, command_id))
                    .unwrap_or_else(|| panic!("{} offset {} unanswered", spec.symbol, raw.offset));
                assert_eq!(
                    got.events, out,
                    "{} offset {}: published != replay",
                    spec.symbol, raw.offset
                );
                for e in &out {
                    assert_eq!(e.seq, next_seq, "{}: seq gap or repeat", spec.symbol);
                    next_seq += 1;
                    if let EventBody::Trade {
                        trade_id,
                        price,
                        qty,
                        maker_order_id,
                        taker_order_id,
                        ..
                    } = &e.body
                    {
                        replay_trades.push((
                            *trade_id as i64,
                            price.0,
                            qty.0,
                            maker_order_id.0 as i64,
                            taker_order_id.0 as i64,
                        ));
                    }
                }
            }
        }
        let stored: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT trade_id, price, qty, maker_order_id, taker_order_id FROM trades \
             WHERE pair_id = $1 ORDER BY trade_id",
        )
        .bind(spec.id as i32)
        .fetch_all(&world.pool)
        .await
        .unwrap();
        assert!(!replay_trades.is_empty());
        assert_eq!(
            stored, replay_trades,
            "{}: trades in PostgreSQL != replay",
            spec.symbol
        );

        // The stored book equals the replayed one.
        let mut replay_open: Vec<(i64, i64, i64, i64)> = book
            .open_orders()
            .map(|o| (o.order_id.0 as i64, o.price.0, o.qty.0, o.filled_qty.0))
            .collect();
        replay_open.sort_unstable();
        let stored_open: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT order_id, price, qty, filled_qty FROM orders \
             WHERE pair_id = $1 AND status = 'open' ORDER BY order_id",
        )
        .bind(spec.id as i32)
        .fetch_all(&world.pool)
        .await
        .unwrap();
        assert_eq!(
            stored_open, replay_open,
            "{}: open orders != replay",
            spec.symbol
        );

        // Every order's filled quantity is exactly its trades', on both sides.
        let mismatched: i64 = sqlx::query_scalar(
            "WITH fills AS ( \
               SELECT maker_order_id AS id, qty FROM trades WHERE pair_id = $1 \
               UNION ALL SELECT taker_order_id, qty FROM trades WHERE pair_id = $1) \
             SELECT count(*) FROM orders o \
             LEFT JOIN (SELECT id, sum(qty) AS filled FROM fills GROUP BY id) f ON f.id = o.order_id \
             WHERE o.pair_id = $1 AND (o.filled_qty <> coalesce(f.filled, 0) OR o.filled_qty > o.qty \
               OR (o.status = 'filled') <> (o.filled_qty = o.qty))",
        )
        .bind(spec.id as i32)
        .fetch_one(&world.pool)
        .await
        .unwrap();
        assert_eq!(
            mismatched, 0,
            "{}: orders whose fills do not add up",
            spec.symbol
        );
    }
}

/// The engine's `/metrics` text (plain HTTP/1.0, no client library needed).
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: engine\r\n\r\n")
        .await
        .expect("metrics request");
    let mut body = String::new();
    stream
        .read_to_string(&mut body)
        .await
        .expect("metrics response");
    body
}

/// The value of the sample `name{pair="<pair>"}` in a scrape, if present.
pub fn sample(text: &str, name: &str, pair: &str) -> Option<f64> {
    let prefix = format!("{name}{{pair=\"{pair}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// A free local port for the engine's metrics endpoint.
pub fn free_local_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
}
