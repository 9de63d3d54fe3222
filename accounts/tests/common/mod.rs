//! The account stage's black-box harness: real Kafka and PostgreSQL from `KAFKA_BROKERS` /
//! `DATABASE_URL` (`eval "$(scripts/stack env)"`), fresh topics and a fresh schema per test.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::PairRegistry;
use protocol::accounts::{AccountEventRecord, AccountRecord, account_shard, position};
use protocol::records::{OrderRecord, command_lines};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::PgPool;

pub const SHARDS: u32 = 2;

pub struct World {
    pub stack: infra::StackAddrs,
    pub registry: PairRegistry,
    pub accounts_topic: String,
    pub orders_topic: String,
    pub account_events_topic: String,
    pub events_topic: String,
    pub schema: String,
    pub database_url: String,
    pub pool: PgPool,
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
    pub async fn new(tag: &str) -> Option<World> {
        let stack = infra::stack_for_tests(tag)?;
        let registry = infra::config::load_pairs().expect("config/pairs.toml").1;
        let id = unique(tag);
        let accounts_topic = format!("accounts_{id}");
        let orders_topic = format!("orders_{id}");
        let account_events_topic = format!("account_events_{id}");
        let events_topic = format!("events_{id}");
        let admin = Arc::new(infra::kafka::admin_client(&stack.brokers).expect("admin client"));
        for (topic, n) in [
            (&accounts_topic, SHARDS as usize),
            (&orders_topic, registry.len()),
            (&account_events_topic, SHARDS as usize),
            (&events_topic, registry.len()),
        ] {
            infra::kafka::ensure_topic(&admin, &stack.brokers, topic, n, &[])
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
        Some(World {
            stack,
            registry,
            accounts_topic,
            orders_topic,
            account_events_topic,
            events_topic,
            schema,
            database_url,
            pool,
        })
    }

    /// Starts the `accounts` binary on this world's topics and schema.
    pub fn start_stage(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_accounts"))
            .args(["--accounts-topic", &self.accounts_topic, "run"])
            .args(["--orders-topic", &self.orders_topic])
            .args(["--account-events-topic", &self.account_events_topic])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("KAFKA_BROKERS", &self.stack.brokers)
            .env("DATABASE_URL", &self.database_url)
            .env("RUST_LOG", "warn")
            // Snapshots every few commits: a SIGKILL then leaves lines after the last one, and
            // the restart replays them (the path a production restart takes).
            .env("ACCOUNTS_SNAPSHOT_INTERVAL_MS", "300")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the accounts binary")
    }

    /// The stage's shared parts, in process, for calling `accounts::actor::recover`.
    pub async fn stage(&self) -> accounts::actor::Stage {
        let mut config = accounts::Config::new(
            self.stack.brokers.clone(),
            self.database_url.clone(),
            self.registry.clone(),
        );
        config.accounts_topic = self.accounts_topic.clone();
        config.orders_topic = self.orders_topic.clone();
        config.account_events_topic = self.account_events_topic.clone();
        accounts::actor::Stage {
            pairs: Arc::new(self.registry.clone()),
            assets: accounts_core::AssetRegistry::from_pairs(&self.registry),
            config,
            pool: infra::db::connect(&self.database_url, 2)
                .await
                .expect("connect schema"),
            producer: infra::kafka::client_config(
                &self.stack.brokers,
                "accounts-test",
                infra::kafka::Role::Producer,
            )
            .create()
            .expect("producer"),
            shards: SHARDS,
            progress: (0..SHARDS)
                .map(|_| std::sync::atomic::AtomicI64::new(-1))
                .collect(),
        }
    }

    /// The high watermark of one partition of `topic`.
    pub async fn high(&self, topic: &str, partition: u32) -> i64 {
        let brokers = self.stack.brokers.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = infra::kafka::client_config(
                &brokers,
                "accounts-test",
                infra::kafka::Role::Consumer,
            )
            .set("group.id", unique("wm"))
            .create()
            .expect("consumer");
            consumer
                .fetch_watermarks(&topic, partition as i32, Duration::from_secs(5))
                .expect("watermarks")
                .1
        })
        .await
        .expect("watermarks task")
    }

    pub fn producer(&self) -> FutureProducer {
        infra::kafka::client_config(
            &self.stack.brokers,
            "accounts-test",
            infra::kafka::Role::Producer,
        )
        .create()
        .expect("producer")
    }

    /// Produces each record as one `accounts` line to its account's shard; waits for the acks.
    /// Returns each line's position.
    pub async fn produce(
        &self,
        producer: &FutureProducer,
        recs: &[(u32, AccountRecord)],
    ) -> Vec<i64> {
        let mut futures = Vec::with_capacity(recs.len());
        for (shard, r) in recs {
            let payload = r.encode();
            let record = FutureRecord::to(&self.accounts_topic)
                .partition(*shard as i32)
                .key("t")
                .payload(&payload);
            futures.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("enqueue"),
            );
        }
        let mut positions = Vec::new();
        for f in futures {
            let d = f
                .await
                .expect("delivery")
                .map_err(|(e, _)| e)
                .expect("acked");
            positions.push(position(d.offset, 0));
        }
        positions
    }

    /// Every line of every partition of `topic` from the start, until `idle` passes without one.
    pub async fn read_all(
        &self,
        topic: &str,
        partitions: u32,
        idle: Duration,
    ) -> Vec<(u32, i64, Vec<u8>)> {
        let brokers = self.stack.brokers.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = infra::kafka::client_config(
                &brokers,
                "accounts-test",
                infra::kafka::Role::Consumer,
            )
            .set("group.id", unique("reader"))
            .create()
            .expect("consumer");
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions as i32 {
                tpl.add_partition_offset(&topic, p, Offset::Beginning)
                    .expect("tpl");
            }
            consumer.assign(&tpl).expect("assign");
            let mut out = Vec::new();
            let mut last = Instant::now();
            while last.elapsed() < idle {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    last = Instant::now();
                    for (i, line) in command_lines(m.payload()).into_iter().enumerate() {
                        out.push((
                            m.partition() as u32,
                            position(m.offset(), i),
                            line.unwrap_or_default().to_vec(),
                        ));
                    }
                }
            }
            out
        })
        .await
        .expect("reader")
    }

    pub async fn forwards(&self, idle: Duration) -> Vec<OrderRecord> {
        self.read_all(&self.orders_topic, self.registry.len() as u32, idle)
            .await
            .into_iter()
            .map(|(_, _, l)| OrderRecord::decode(&l).expect("a forwarded command decodes"))
            .collect()
    }

    pub async fn answers(&self, idle: Duration) -> Vec<AccountEventRecord> {
        self.read_all(&self.account_events_topic, SHARDS, idle)
            .await
            .into_iter()
            .map(|(_, _, l)| AccountEventRecord::decode(&l).expect("an answer decodes"))
            .collect()
    }

    /// Each shard's committed position.
    pub async fn positions(&self) -> BTreeMap<u32, i64> {
        let rows: Vec<(i32, i64)> = sqlx::query_as("SELECT shard, last_offset FROM account_shards")
            .fetch_all(&self.pool)
            .await
            .expect("positions");
        rows.into_iter().map(|(s, o)| (s as u32, o)).collect()
    }

    /// Waits until every shard committed at least up to `want`.
    pub async fn wait_committed(&self, want: &BTreeMap<u32, i64>, timeout: Duration) {
        let started = Instant::now();
        loop {
            let have = self.positions().await;
            if want
                .iter()
                .all(|(s, p)| have.get(s).is_some_and(|h| h >= p))
            {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "shards did not commit up to {want:?} within {timeout:?}; have {have:?}"
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

/// An operator's deposit, as the line its account's shard reads.
pub fn deposit(id: u64, account: u64, asset: &str, units: i128) -> (u32, AccountRecord) {
    (
        shard_of(account),
        AccountRecord::Transfer(protocol::accounts::TransferRecord {
            v: protocol::records::RECORD_VERSION,
            transfer_id: id,
            account_id: protocol::AccountId(account),
            direction: protocol::accounts::TransferDirection::Deposit,
            asset: asset.into(),
            amount_units: units,
            ts_ns: 0,
        }),
    )
}

pub fn shard_of(account: u64) -> u32 {
    account_shard(protocol::AccountId(account), SHARDS)
}

pub fn stop(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = child.wait().expect("stage exits");
    assert!(
        exit.success(),
        "SIGTERM stops the stage with 0, got {exit:?}"
    );
}
