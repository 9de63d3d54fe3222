//! The real thing for black-box tests: a gateway on 127.0.0.1:0 against the local Kafka and
//! PostgreSQL (`scripts/stack up; eval "$(scripts/stack env)"`), with fresh topics and a fresh
//! schema per test, and a real WebSocket client.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use gateway::provision::Credential;
use gateway::{Config, Gateway, Limits};
use protocol::PairRegistry;
use protocol::records::{EventRecord, OrderRecord};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(20);

pub type Env = infra::StackAddrs;

/// The stack's addresses, or `None` (skip) when they are not set; in CI a missing stack fails.
pub fn env() -> Option<Env> {
    infra::stack_for_tests("gateway integration test")
}

pub fn unique(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{prefix}_{}_{}_{n}",
        std::process::id(),
        ns % 1_000_000_000_000
    )
}

pub fn registry() -> Arc<PairRegistry> {
    let (_, reg) = infra::config::load_pairs().expect("config/pairs.toml");
    Arc::new(reg)
}

pub struct Stack {
    pub env: Env,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub gateway: Option<Gateway>,
    pub pool: PgPool,
    pub db_name: String,
    pub db_url: String,
    pub creds: Vec<Credential>,
    /// The key-encryption keys the gateway was given (a fresh random key per stack unless the
    /// test set `limits.keys`): provision more HMAC keys with `NewKeys::Hmac(&stack.keys)`.
    pub keys: gateway::keys::KeyEncryption,
    pub orders_topic: String,
    pub events_topic: String,
    pub pairs: Arc<PairRegistry>,
    /// With the account stage on: its `accounts` and `account_events` topics.
    pub accounts_topic: Option<String>,
    pub account_events_topic: Option<String>,
}

/// A fresh database (migrated), fresh topics, `accounts` provisioned accounts, and a gateway.
pub async fn start(limits: Limits, accounts: usize) -> Option<Stack> {
    start_stack(limits, accounts, None).await
}

/// Like [`start`], with the account stage on: fresh `accounts` and `account_events` topics of
/// `shards` partitions each (the test plays the stage at the Kafka level).
pub async fn start_with_accounts(limits: Limits, accounts: usize, shards: usize) -> Option<Stack> {
    start_stack(limits, accounts, Some(shards)).await
}

/// A fresh, migrated schema: (its name, a DATABASE_URL that puts it on the search_path, a pool).
/// The stack's role may not create databases; a schema on the search_path isolates as well.
pub async fn fresh_schema(env: &Env, prefix: &str, connections: u32) -> (String, String, PgPool) {
    let admin_pool = infra::db::connect(&env.database_url, 1).await.unwrap();
    let name = unique(prefix);
    // The name is generated from letters, digits and underscores only.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
        .execute(&admin_pool)
        .await
        .unwrap();
    admin_pool.close().await;
    let sep = if env.database_url.contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("{}{sep}options=-c%20search_path%3D{name}", env.database_url);
    let pool = infra::db::connect(&url, connections).await.unwrap();
    infra::db::migrate(&pool).await.unwrap();
    (name, url, pool)
}

async fn start_stack(mut limits: Limits, accounts: usize, shards: Option<usize>) -> Option<Stack> {
    tracing_subscriber_init();
    let env = env()?;
    let pairs = registry();
    let (db_name, db_url, pool) = fresh_schema(&env, "test_gw", 4).await;
    if limits.keys.current().is_none() {
        limits.keys =
            gateway::keys::KeyEncryption::new(gateway::keys::EncryptionKey::generate(), vec![]);
    }
    let keys = limits.keys.clone();
    let creds = gateway::provision::provision(
        &pool,
        accounts,
        "t",
        &gateway::provision::NewKeys::Hmac(&keys),
    )
    .await
    .unwrap();

    let orders_topic = unique("orders_t");
    let events_topic = unique("events_t");
    let admin = Arc::new(infra::kafka::admin_client(&env.brokers).unwrap());
    for topic in [&orders_topic, &events_topic] {
        infra::kafka::ensure_topic(&admin, &env.brokers, topic, pairs.len(), &[])
            .await
            .unwrap();
    }
    let (accounts_topic, account_events_topic) = match shards {
        None => (None, None),
        Some(shards) => {
            let accounts_topic = unique("accounts_t");
            let account_events_topic = unique("account_events_t");
            for topic in [&accounts_topic, &account_events_topic] {
                infra::kafka::ensure_topic(&admin, &env.brokers, topic, shards, &[])
                    .await
                    .unwrap();
            }
            limits.accounts.accounts_topic = Some(accounts_topic.clone());
            limits.accounts.account_events_topic = Some(account_events_topic.clone());
            (Some(accounts_topic), Some(account_events_topic))
        }
    };
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        brokers: env.brokers.clone(),
        database_url: db_url.clone(),
        pairs: Arc::clone(&pairs),
        orders_topic: orders_topic.clone(),
        events_topic: events_topic.clone(),
        gateway_id: 1,
        limits,
    };
    let shutdown = CancellationToken::new();
    let gw = gateway::run(config, shutdown.clone()).await.unwrap();
    Some(Stack {
        env,
        addr: gw.local_addr(),
        shutdown,
        gateway: Some(gw),
        pool,
        db_name,
        db_url,
        creds,
        keys,
        orders_topic,
        events_topic,
        pairs,
        accounts_topic,
        account_events_topic,
    })
}

fn tracing_subscriber_init() {
    infra::telemetry::init_tracing_with_default("warn");
}

impl Stack {
    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// A client logged in as provisioned account `i`.
    pub async fn logged_in(&self, i: usize) -> Client {
        let mut c = self.client().await;
        let r = c.login(&self.creds[i]).await;
        assert!(r.get("result").is_some(), "login failed: {r}");
        c
    }

    /// Stops the gateway (SIGTERM path) and drops the test schema.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(gw) = self.gateway.take() {
            tokio::time::timeout(WAIT, gw.join())
                .await
                .expect("gateway drains in time")
                .expect("gateway stops cleanly");
        }
        self.pool.close().await;
        if let Ok(admin) = infra::db::connect(&self.env.database_url, 1).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                self.db_name
            )))
            .execute(&admin)
            .await;
        }
    }

    /// The matching engine's config on this stack's topics and schema (tests run it in
    /// process), with the account stage's `accounts` topic when the stack has one.
    pub fn engine_config(&self) -> engine::Config {
        let mut config = engine::Config::new(
            self.env.brokers.clone(),
            self.db_url.clone(),
            (*self.pairs).clone(),
        );
        config.orders_topic = self.orders_topic.clone();
        config.events_topic = self.events_topic.clone();
        config.accounts_topic = self.accounts_topic.clone();
        config.group_id = format!("g_{}", self.db_name);
        config
    }

    /// The config of another gateway on the same topics and schema.
    pub fn gateway_config(&self, gateway_id: u8, limits: Limits) -> Config {
        Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            brokers: self.env.brokers.clone(),
            database_url: self.db_url.clone(),
            pairs: Arc::clone(&self.pairs),
            orders_topic: self.orders_topic.clone(),
            events_topic: self.events_topic.clone(),
            gateway_id,
            limits: Limits {
                keys: self.keys.clone(),
                ..limits
            },
        }
    }

    /// Another gateway on the same topics and schema (a restart, or a second ECS task).
    pub async fn another_gateway(&self, gateway_id: u8) -> (Gateway, CancellationToken) {
        let config = self.gateway_config(gateway_id, Limits::default());
        let shutdown = CancellationToken::new();
        let gw = gateway::run(config, shutdown.clone()).await.unwrap();
        (gw, shutdown)
    }

    /// Deletes every record of the `events` topic (what retention does to old records).
    pub async fn delete_all_events(&self) {
        let admin = infra::kafka::admin_client(&self.env.brokers).unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.pairs.len() as i32 {
            tpl.add_partition_offset(&self.events_topic, p, Offset::End)
                .unwrap();
        }
        admin
            .delete_records(&tpl, &rdkafka::admin::AdminOptions::new())
            .await
            .expect("delete records");
    }

    pub fn orders_consumer(&self) -> StreamConsumer {
        let consumer: StreamConsumer =
            infra::kafka::client_config(&self.env.brokers, "gw-test", infra::kafka::Role::Consumer)
                .set("group.id", unique("gw-test"))
                .create()
                .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.pairs.len() as i32 {
            tpl.add_partition_offset(&self.orders_topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        consumer
    }

    /// Reads `orders` command lines until `pred` has matched at least `n` of them.
    pub async fn wait_orders(
        &self,
        consumer: &StreamConsumer,
        n: usize,
        pred: impl Fn(i32, &str, &OrderRecord) -> bool,
    ) -> Vec<(i32, OrderRecord)> {
        let mut found = Vec::new();
        tokio::time::timeout(WAIT, async {
            while found.len() < n {
                let m = consumer.recv().await.unwrap();
                let key = std::str::from_utf8(m.key().unwrap_or_default())
                    .unwrap()
                    .to_owned();
                // A record packs one or more command lines.
                for line in protocol::records::command_lines(m.payload()) {
                    let rec = OrderRecord::decode(line.unwrap()).unwrap();
                    if pred(m.partition(), &key, &rec) {
                        found.push((m.partition(), rec));
                    }
                }
            }
        })
        .await
        .expect("orders records in time");
        found
    }

    pub fn producer(&self) -> FutureProducer {
        infra::kafka::client_config(&self.env.brokers, "gw-test", infra::kafka::Role::Producer)
            .create()
            .unwrap()
    }

    /// Plays the engine: writes an event record to the pair's `events` partition.
    pub async fn publish_event(&self, producer: &FutureProducer, pair: u32, payload: Vec<u8>) {
        let symbol = self.pairs.get(pair).unwrap().symbol.clone();
        producer
            .send(
                FutureRecord::to(&self.events_topic)
                    .partition(pair as i32)
                    .key(&symbol)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    pub async fn publish_record(&self, producer: &FutureProducer, pair: u32, rec: &EventRecord) {
        self.publish_event(producer, pair, rec.encode()).await;
    }

    /// GET over plain HTTP/1.1: (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text[9..12].parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn login_params(c: &Credential, ts_ms: u64, nonce: &str) -> Value {
    json!({
        "key_id": c.key_id,
        "ts_ms": ts_ms,
        "nonce": nonce,
        "signature": c.sign(ts_ms, nonce),
    })
}

/// What reading a connection gave.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Closed(Option<u16>, String),
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    pub pushes: VecDeque<Value>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("websocket connects");
        Client {
            ws,
            next_id: 1,
            pushes: VecDeque::new(),
        }
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(Message::text(text.into())).await.unwrap();
    }

    /// As [`Client::send_text`]; false once the server has closed the connection.
    pub async fn try_send_text(&mut self, text: impl Into<String>) -> bool {
        self.ws.send(Message::text(text.into())).await.is_ok()
    }

    /// The next JSON message or the close, skipping pings.
    pub async fn read(&mut self) -> Frame {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time");
            match m {
                None => return Frame::Closed(None, "stream ended".into()),
                Some(Err(e)) => return Frame::Closed(None, e.to_string()),
                Some(Ok(Message::Text(t))) => {
                    return Frame::Json(serde_json::from_str(&t).unwrap());
                }
                Some(Ok(Message::Close(f))) => {
                    return Frame::Closed(
                        f.as_ref().map(|f| u16::from(f.code)),
                        f.map(|f| f.reason.to_string()).unwrap_or_default(),
                    );
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Sends a request and returns its response; pushes read meanwhile are kept.
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({"id": id, "method": method});
        if !params.is_null() {
            req["params"] = params;
        }
        self.send_text(req.to_string()).await;
        self.response_to(id).await
    }

    pub async fn response_to(&mut self, id: u64) -> Value {
        loop {
            match self.read().await {
                Frame::Json(v) if v.get("id").and_then(Value::as_u64) == Some(id) => return v,
                Frame::Json(v) if v.get("channel").is_some() => self.pushes.push_back(v),
                Frame::Json(v) => panic!("unexpected message waiting for {id}: {v}"),
                Frame::Closed(code, reason) => {
                    panic!("closed ({code:?} {reason}) waiting for response {id}")
                }
            }
        }
    }

    /// The next push matching `pred` (earlier non-matching pushes are dropped).
    pub async fn push_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        while let Some(p) = self.pushes.pop_front() {
            if pred(&p) {
                return p;
            }
        }
        loop {
            match self.read().await {
                Frame::Json(v) if pred(&v) => return v,
                Frame::Json(_) => {}
                Frame::Closed(code, reason) => {
                    panic!("closed ({code:?} {reason}) waiting for a push")
                }
            }
        }
    }

    pub async fn login(&mut self, c: &Credential) -> Value {
        let nonce = unique("n");
        self.request("login", login_params(c, now_ms(), &nonce))
            .await
    }

    /// Reads until the server closes; returns the close code and the status pushes seen.
    pub async fn until_closed(&mut self) -> (Option<u16>, String, Vec<Value>) {
        let mut statuses = Vec::new();
        loop {
            match self.read().await {
                Frame::Json(v) => {
                    if v["channel"] == "status" {
                        statuses.push(v);
                    }
                }
                Frame::Closed(code, reason) => return (code, reason, statuses),
            }
        }
    }
}

pub fn error_code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {v}"))
}

pub fn place_params(pair: &str, side: &str, price: &str, qty: &str) -> Value {
    json!({"pair": pair, "side": side, "type": "limit", "price": price, "qty": qty})
}
