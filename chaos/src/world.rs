//! One scenario's world: its own topics and PostgreSQL schema (so the audit replays exactly what
//! this scenario wrote), funded accounts, and the three services wired to them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};

use crate::procs::Service;

/// Account shards of the scenario's `accounts` topic.
pub const SHARDS: usize = 4;
/// What each load-test account holds: far more than its traders can lock up in a scenario.
pub const FUND: &str = "EUR=1000000,USD=1000000,GBP=1000000,BTC=20,ETH=400,SOL=10000,XRP=1000000";
pub const READY_LIMIT: Duration = Duration::from_secs(120);

pub struct World {
    /// The schema, and the suffix of every topic.
    pub name: String,
    pub dir: PathBuf,
    pub brokers: String,
    pub database_url: String,
    pub orders_topic: String,
    pub events_topic: String,
    pub accounts_topic: String,
    pub account_events_topic: String,
    pub accounts_file: PathBuf,
    pub gw_port: u16,
    pub gateway: Service,
    pub engine: Service,
    pub stage: Service,
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Where the engine and the stage reach PostgreSQL, when not at the database URL's own
/// `host:port` (the network scenario's proxies, `net.rs`).
#[derive(Debug, Default, Clone)]
pub struct Routes {
    pub engine_db: Option<String>,
    pub stage_db: Option<String>,
}

impl World {
    /// Creates the topics and the schema, provisions and funds `accounts` accounts, and starts
    /// the stage (waiting until it applied every deposit), the engine and the gateway.
    pub async fn create(
        scenario: &str,
        plan: &crate::scenario::Plan,
        accounts: usize,
    ) -> Result<World> {
        Self::create_routed(
            scenario,
            &plan.out,
            &plan.bins,
            &plan.brokers,
            &plan.database_url,
            accounts,
            &Routes::default(),
        )
        .await
    }

    /// [`World::create`], with the engine and the stage reaching PostgreSQL by `routes`.
    pub async fn create_routed(
        scenario: &str,
        out: &Path,
        bins: &Path,
        brokers: &str,
        database_url: &str,
        accounts: usize,
        routes: &Routes,
    ) -> Result<World> {
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let name = format!("chaos_{}_{stamp}", scenario.replace('-', "_"));
        let dir = out.join(scenario);
        std::fs::create_dir_all(&dir)?;
        let (_, pairs) = infra::config::load_pairs()?;

        let admin_pool = infra::db::connect(database_url, 1).await?;
        // The name is made of letters, digits and underscores only.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&admin_pool)
            .await?;
        admin_pool.close().await;
        let sep = if database_url.contains('?') { '&' } else { '?' };
        let db_url = format!("{database_url}{sep}options=-c%20search_path%3D{name}");
        let pool = infra::db::connect(&db_url, 1).await?;
        infra::db::migrate(&pool).await?;
        pool.close().await;

        let topic = |t: &str| format!("{t}_{name}");
        let (orders, events) = (topic("orders"), topic("events"));
        let (accounts_t, account_events) = (topic("accounts"), topic("account_events"));
        let admin = Arc::new(infra::kafka::admin_client(brokers)?);
        for (t, n) in [
            (&orders, pairs.len()),
            (&events, pairs.len()),
            (&accounts_t, SHARDS),
            (&account_events, SHARDS),
        ] {
            infra::kafka::ensure_topic(&admin, brokers, t, n, &[]).await?;
        }

        // HMAC secrets are stored sealed: this world's own key-encryption key, given to the
        // provisioning and to the gateway through their environment (never written down).
        let made = tokio::process::Command::new(bins.join("gateway"))
            .args(["keys", "new-encryption-key"])
            .output()
            .await
            .context("run gateway keys new-encryption-key")?;
        if !made.status.success() {
            bail!(
                "gateway keys new-encryption-key failed: {}",
                String::from_utf8_lossy(&made.stderr)
            );
        }
        let key_encryption_key = String::from_utf8(made.stdout)?.trim().to_owned();

        let accounts_file = dir.join("accounts.jsonl");
        let provision = tokio::process::Command::new(bins.join("gateway"))
            .args(["provision", "--accounts", &accounts.to_string()])
            .args(["--name-prefix", &name, "--fund", FUND])
            .arg("--out")
            .arg(&accounts_file)
            .args(["--accounts-topic", &accounts_t])
            .env("DATABASE_URL", &db_url)
            .env("KAFKA_BROKERS", brokers)
            .env("GW_KEY_ENCRYPTION_KEY", &key_encryption_key)
            .output()
            .await
            .context("run gateway provision")?;
        if !provision.status.success() {
            bail!(
                "gateway provision failed: {}",
                String::from_utf8_lossy(&provision.stderr)
            );
        }

        let common = [
            ("KAFKA_BROKERS", brokers.to_owned()),
            ("DATABASE_URL", db_url.clone()),
            ("TOKIO_WORKER_THREADS", "1".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ];
        let env = |extra: Vec<(&str, String)>| -> Vec<(String, String)> {
            common
                .iter()
                .cloned()
                .chain(extra)
                .map(|(k, v)| (k.to_owned(), v))
                .collect()
        };
        let stage_port = free_port()?;
        let stage = Service::new(
            "accounts",
            bins.join("accounts"),
            &["run"],
            env(vec![
                ("ACCOUNTS_TOPIC", accounts_t.clone()),
                ("ORDERS_TOPIC", orders.clone()),
                ("ACCOUNT_EVENTS_TOPIC", account_events.clone()),
                ("METRICS_ADDR", format!("127.0.0.1:{stage_port}")),
                (
                    "DATABASE_URL",
                    crate::net::via(&db_url, routes.stage_db.as_deref()),
                ),
            ]),
            dir.join("accounts.log"),
            format!("http://127.0.0.1:{stage_port}/healthz"),
            format!("http://127.0.0.1:{stage_port}/metrics"),
        );
        let engine_port = free_port()?;
        let all_pairs: Vec<&str> = pairs.iter().map(|p| p.symbol.as_str()).collect();
        let all_pairs = all_pairs.join(",");
        let engine = Service::new(
            "engine",
            bins.join("engine"),
            &["--pairs", &all_pairs],
            env(vec![
                ("ORDERS_TOPIC", orders.clone()),
                ("EVENTS_TOPIC", events.clone()),
                ("ENGINE_ACCOUNTS_TOPIC", accounts_t.clone()),
                ("ENGINE_GROUP_ID", format!("g_{name}")),
                ("METRICS_ADDR", format!("127.0.0.1:{engine_port}")),
                (
                    "DATABASE_URL",
                    crate::net::via(&db_url, routes.engine_db.as_deref()),
                ),
            ]),
            dir.join("engine.log"),
            format!("http://127.0.0.1:{engine_port}/healthz"),
            format!("http://127.0.0.1:{engine_port}/metrics"),
        );
        let gw_port = free_port()?;
        let gateway = Service::new(
            "gateway",
            bins.join("gateway"),
            &[],
            env(vec![
                ("GW_LISTEN", format!("127.0.0.1:{gw_port}")),
                ("GW_ORDERS_TOPIC", orders.clone()),
                ("GW_EVENTS_TOPIC", events.clone()),
                ("GW_ACCOUNTS_TOPIC", accounts_t.clone()),
                ("GW_ACCOUNT_EVENTS_TOPIC", account_events.clone()),
                ("GW_KEY_ENCRYPTION_KEY", key_encryption_key),
            ]),
            dir.join("gateway.log"),
            format!("http://127.0.0.1:{gw_port}/readyz"),
            format!("http://127.0.0.1:{gw_port}/metrics"),
        );
        let mut world = World {
            name,
            dir,
            brokers: brokers.to_owned(),
            database_url: db_url,
            orders_topic: orders,
            events_topic: events,
            accounts_topic: accounts_t,
            account_events_topic: account_events,
            accounts_file,
            gw_port,
            gateway,
            engine,
            stage,
        };
        world.stage.start()?;
        world.stage.wait_ready(READY_LIMIT).await?;
        let deposits = accounts * FUND.split(',').count();
        world.wait_stage_lines(deposits as f64).await?;
        world.engine.start()?;
        world.engine.wait_ready(READY_LIMIT).await?;
        world.gateway.start()?;
        world.gateway.wait_ready(READY_LIMIT).await?;
        Ok(world)
    }

    async fn wait_stage_lines(&self, lines: f64) -> Result<()> {
        let deadline = std::time::Instant::now() + READY_LIMIT;
        loop {
            if let Some(text) = self.stage.metrics().await
                && crate::scrape::sum(&text, "accounts_lines_total") >= lines
            {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("the account stage did not apply the {lines} deposits in {READY_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn services(&mut self) -> [&mut Service; 3] {
        [&mut self.stage, &mut self.engine, &mut self.gateway]
    }

    /// Until every pair consumes and neither the stage nor the engine is behind: the time it
    /// took, or `None` if `limit` passed first.
    pub async fn settled(&self, limit: Duration) -> Option<Duration> {
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            let engine = self.engine.metrics().await;
            let stage = self.stage.metrics().await;
            if let (Some(e), Some(s)) = (engine, stage) {
                let paused = crate::scrape::sum(&e, "engine_paused");
                let lag = crate::scrape::sum(&e, "engine_consumer_lag_records")
                    + crate::scrape::sum(&s, "accounts_consumer_lag_records");
                if paused == 0.0 && lag == 0.0 {
                    return Some(started.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        None
    }

    /// Until the (new) account stage commits its first batch: it reads, decides and persists
    /// again.
    pub async fn stage_committing(&self, limit: Duration) -> Option<Duration> {
        until_metrics(&self.stage, limit, |m| {
            crate::scrape::sum(m, "accounts_records_total") > 0.0
        })
        .await
    }

    /// Until the gateway holds `n` client connections again.
    pub async fn clients_back(&self, n: usize, limit: Duration) -> Option<Duration> {
        until_metrics(&self.gateway, limit, |m| {
            crate::scrape::sum(m, "gateway_connections") >= n as f64
        })
        .await
    }

    /// Until every pair consumes again (none paused), from the engine's own gauge.
    pub async fn pairs_running(&self, limit: Duration) -> Option<Duration> {
        until_metrics(&self.engine, limit, |m| {
            crate::scrape::samples(m, "engine_paused").next().is_some()
                && crate::scrape::sum(m, "engine_paused") == 0.0
        })
        .await
    }
}

/// Polls `service`'s `/metrics` every 100 ms until `done` holds: how long that took, or `None`
/// once `limit` passed.
async fn until_metrics(
    service: &Service,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> Option<Duration> {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if let Some(m) = service.metrics().await
            && done(&m)
        {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
