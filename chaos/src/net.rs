//! Scenarios 3 and 6: the network under the services. `leader-kill` runs on a three-broker KRaft
//! cluster of its own (replication factor 3, `min.insync.replicas` 2) and SIGKILLs the leader of
//! the busiest `orders` partition; `network` puts Toxiproxy between the services and Kafka (a
//! broker of its own that advertises the proxy's address, so clients stay behind the proxy after
//! bootstrap) and between the engine, the stage and PostgreSQL, then adds latency, resets
//! connections, cuts everything and heals it. Each [`Rig`] starts and stops what it needs through
//! `scripts/stack`, with its own STACK_DIR and ports, and leaves the main stack alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use serde_json::{Value, json};

use crate::scenario::{Fault, Form, Outcome, Plan, Scenario};
use crate::world::{READY_LIMIT, World};

/// What a scenario of this module runs on: its own Kafka (three brokers, or one behind a proxy),
/// and for `network` the Toxiproxy server with its proxies.
pub struct Rig {
    stack_env: Vec<(String, String)>,
    pub brokers: String,
    toxiproxy: Option<Toxiproxy>,
    /// `host:port` the engine and the stage reach PostgreSQL at (`network`: their proxies).
    pub engine_db: Option<String>,
    pub stage_db: Option<String>,
}

impl Rig {
    /// The rig `s` needs, started; `None` for the scenarios of the main stack.
    pub async fn start(s: Scenario, plan: &Plan) -> Result<Option<Rig>> {
        let brokers = match s {
            Scenario::LeaderKill => 3,
            Scenario::Network => 1,
            _ => return Ok(None),
        };
        let base = free_port_run(6)?;
        let stack_dir = plan.out.join(s.name()).join("stack");
        std::fs::create_dir_all(stack_dir.join("kafka"))?;
        let stack_dir = std::fs::canonicalize(&stack_dir)?;
        // The Kafka jars of the main stack, not a second download.
        let libs = Path::new(".stack/kafka/libs");
        let link = stack_dir.join("kafka/libs");
        if libs.is_dir() && !link.exists() {
            std::os::unix::fs::symlink(std::fs::canonicalize(libs)?, &link)?;
        }
        let mut stack_env = vec![
            ("STACK_DIR", stack_dir.display().to_string()),
            ("STACK_KAFKA_BROKERS", brokers.to_string()),
            ("STACK_KAFKA_PORT", base.to_string()),
            ("STACK_KAFKA_CONTROLLER_PORT", (base + 1).to_string()),
            // Unused: a port other than the main one makes DATABASE_URL (the main PostgreSQL)
            // external to this stack, so it starts no PostgreSQL of its own.
            ("STACK_PG_PORT", (base + 6).to_string()),
            ("DATABASE_URL", plan.database_url.clone()),
        ];
        // The stackctl the caller chose (scripts/test's debug one) is inherited; else a release
        // one already built saves scripts/stack building it.
        if std::env::var_os("STACKCTL").is_none() && Path::new("target/release/stackctl").is_file()
        {
            stack_env.push(("STACKCTL", "target/release/stackctl".to_owned()));
        }
        let mut rig = Rig {
            stack_env: stack_env
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            brokers: (0..brokers)
                .map(|n| format!("127.0.0.1:{}", base + 2 * n))
                .collect::<Vec<_>>()
                .join(","),
            toxiproxy: None,
            engine_db: None,
            stage_db: None,
        };
        if s == Scenario::Network {
            let toxiproxy = Toxiproxy::start(&plan.out.join(s.name())).await?;
            // The broker tells clients to come back through the proxy (base+2), never directly.
            let proxy_port = base + 2;
            toxiproxy
                .proxy(
                    "kafka",
                    &format!("127.0.0.1:{proxy_port}"),
                    &format!("127.0.0.1:{base}"),
                )
                .await?;
            let pg = crate::net::authority(&plan.database_url).to_owned();
            rig.engine_db = Some(toxiproxy.proxy("pg_engine", "127.0.0.1:0", &pg).await?);
            rig.stage_db = Some(toxiproxy.proxy("pg_stage", "127.0.0.1:0", &pg).await?);
            rig.toxiproxy = Some(toxiproxy);
            rig.stack_env
                .push(("STACK_KAFKA_ADVERTISED_PORT".into(), proxy_port.to_string()));
            rig.brokers = format!("127.0.0.1:{proxy_port}");
        }
        let started = Instant::now();
        rig.stack(&["up"]).await?;
        println!(
            "chaos:   {brokers}-broker Kafka of its own at {} up in {:.0} s",
            rig.brokers,
            started.elapsed().as_secs_f64()
        );
        Ok(Some(rig))
    }

    /// Where the engine and the stage reach PostgreSQL.
    pub fn routes(&self) -> crate::world::Routes {
        crate::world::Routes {
            engine_db: self.engine_db.clone(),
            stage_db: self.stage_db.clone(),
        }
    }

    async fn stack(&self, args: &[&str]) -> Result<()> {
        crate::scenario::stack_with(args, &self.stack_env).await
    }
}

impl Drop for Rig {
    /// The rig's Kafka goes (SIGKILL, then its data); Toxiproxy dies with its handle.
    fn drop(&mut self) {
        for args in [&["crash", "kafka"][..], &["down", "--purge"]] {
            let _ = std::process::Command::new("scripts/stack")
                .args(args)
                .env_remove("KAFKA_BROKERS")
                .envs(self.stack_env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `count` consecutive free local ports: the first.
fn free_port_run(count: u16) -> Result<u16> {
    for _ in 0..50 {
        let first = crate::world::free_port()?;
        if first > u16::MAX - count {
            continue;
        }
        let all_free =
            (first..first + count).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return Ok(first);
        }
    }
    bail!("no run of {count} free ports found")
}

/// `url`'s `host:port`.
pub fn authority(url: &str) -> &str {
    let start = url
        .find('@')
        .map_or_else(|| url.find("://").map_or(0, |i| i + 3), |i| i + 1);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    &url[start..end]
}

/// `url` pointed at `addr` (`host:port`) instead, when given.
pub fn via(url: &str, addr: Option<&str>) -> String {
    match addr {
        Some(addr) => url.replacen(authority(url), addr, 1),
        None => url.to_owned(),
    }
}

/// The fault of `s`, injected under load (started at `t0`, `duration` seconds).
pub async fn inject(
    s: Scenario,
    rig: &Rig,
    world: &mut World,
    plan: &Plan,
    t0: Instant,
    outcome: &mut Outcome,
) -> Result<()> {
    match s {
        Scenario::LeaderKill => leader_kill(rig, world, plan, t0, outcome).await,
        Scenario::Network => network(rig, world, plan, t0, outcome).await,
        _ => Ok(()),
    }
}

/// Codes a client cannot act on: a fault must show as a retryable refusal (`overloaded`) or a
/// verdict, never as these.
const NOT_RETRYABLE: [&str; 1] = ["internal"];

/// The checks of this module's scenarios beyond the common ones: the error codes the clients saw.
pub fn judge(outcome: &mut Outcome) {
    let errors = outcome.load["errors"].clone();
    for code in NOT_RETRYABLE {
        if let Some(n) = errors[code].as_u64()
            && n > 0
        {
            outcome
                .problems
                .push(format!("{n} requests answered `{code}` during the fault"));
        }
    }
}

// --- leader-kill -------------------------------------------------------------------------------

/// One partition's leader and in-sync replicas, from fresh metadata.
struct PartitionState {
    leader: i32,
    replicas: usize,
    isr: usize,
}

fn metadata_consumer(brokers: &str) -> Result<BaseConsumer> {
    infra::kafka::client_config(brokers, "chaos-leader", infra::kafka::Role::Consumer)
        .set("group.id", "chaos-leader")
        // The dead broker is the point: its connection errors are expected, not news.
        .set("log_level", "2")
        .create()
        .context("create the metadata consumer")
}

/// Every partition of `topic`: (partition, state).
fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<(i32, PartitionState)>> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .with_context(|| format!("metadata of {topic}"))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .context("no such topic")?;
    Ok(t.partitions()
        .iter()
        .map(|p| {
            (
                p.id(),
                PartitionState {
                    leader: p.leader(),
                    replicas: p.replicas().len(),
                    isr: p.isr().len(),
                },
            )
        })
        .collect())
}

/// The `orders` partition with the most records, and its state.
fn busiest(consumer: &BaseConsumer, topic: &str) -> Result<(i32, PartitionState)> {
    let mut best: Option<(i64, i32, PartitionState)> = None;
    for (p, state) in partitions(consumer, topic)? {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(5))
            .with_context(|| format!("watermarks of {topic}/{p}"))?;
        if best.as_ref().is_none_or(|(h, _, _)| high > *h) {
            best = Some((high, p, state));
        }
    }
    let (_, p, state) = best.context("a topic without partitions")?;
    Ok((p, state))
}

/// Polls metadata every 200 ms until `done` holds for `topic`: how long it took, or `None`.
async fn until_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    limit: Duration,
    done: impl Fn(&[(i32, PartitionState)]) -> bool,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let parts = tokio::task::block_in_place(|| partitions(consumer, topic));
        if parts.is_ok_and(|p| done(&p)) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

async fn leader_kill(
    rig: &Rig,
    world: &mut World,
    plan: &Plan,
    t0: Instant,
    outcome: &mut Outcome,
) -> Result<()> {
    let duration = plan.duration_s as f64;
    let topic = world.orders_topic.clone();
    let consumer = metadata_consumer(&rig.brokers)?;
    crate::scenario::sleep_until(t0, 0.2 * duration).await;
    let (partition, state) = tokio::task::block_in_place(|| busiest(&consumer, &topic))?;
    if state.replicas != 3 {
        bail!("{topic}/{partition} has {} replicas, not 3", state.replicas);
    }
    let victim = state.leader;
    let all = tokio::task::block_in_place(|| partitions(&consumer, &topic))?;
    let led = all.iter().filter(|(_, s)| s.leader == victim).count();
    let killed = Instant::now();
    rig.stack(&["crash", &format!("kafka-{victim}")]).await?;
    // A new leader once the controller fences the dead broker (its session timeout, 6 s here).
    let moved = until_partitions(&consumer, &topic, READY_LIMIT, |parts| {
        parts
            .iter()
            .all(|(_, s)| s.leader != victim && s.leader >= 0)
    })
    .await
    .map(|_| killed.elapsed());
    let flowing = match moved {
        Some(_) => {
            let left = Duration::from_secs(plan.duration_s).saturating_sub(t0.elapsed());
            flowing(world, left).await.map(|_| killed.elapsed())
        }
        None => None,
    };
    let down = Duration::from_secs(if plan.form == Form::Short { 5 } else { 20 });
    tokio::time::sleep(down.saturating_sub(killed.elapsed())).await;
    let down_s = killed.elapsed().as_secs_f64();
    rig.stack(&["start", &format!("kafka-{victim}")]).await?;
    let recovered = world.pairs_running(READY_LIMIT).await;
    // Resumed: commands flow end to end through the new leaders, and every pair consumes.
    let recovered_s = recovered.and(flowing).map(|d| d.as_secs_f64());
    // Back in every in-sync replica set: the cluster can lose another broker again.
    let rejoined = until_partitions(&consumer, &topic, READY_LIMIT, |parts| {
        parts.iter().all(|(_, s)| s.isr == 3)
    })
    .await
    .map(|_| killed.elapsed().as_secs_f64());
    let f1 = |v: Option<f64>| v.map_or("never".to_owned(), |v| format!("{v:.1} s"));
    outcome.faults.push(Fault {
        at_s: killed.duration_since(t0).as_secs_f64(),
        what: format!(
            "SIGKILL kafka-{victim}, leader of the busiest {topic}/{partition} ({led} of {} \
             partitions); new leaders after {}, commands flowing after {}; restarted after {down_s:.1} s; every ISR full \
             again after {}",
            all.len(),
            f1(moved.map(|d| d.as_secs_f64())),
            f1(flowing.map(|d| d.as_secs_f64())),
            f1(rejoined)
        ),
        ready_s: rejoined,
        recovered_s,
        drain_s: None,
        clean_exit: None,
    });
    if moved.is_none() {
        outcome
            .problems
            .push(format!("no new leader for kafka-{victim}'s partitions"));
    }
    if rejoined.is_none() {
        outcome
            .problems
            .push(format!("kafka-{victim} did not rejoin every ISR"));
    }
    Ok(())
}

// --- network -----------------------------------------------------------------------------------

/// What a network fault does to its proxies.
#[derive(Clone, Copy)]
enum Effect {
    /// 100 ms ±20 each way.
    Latency,
    /// Every connection reset (TCP RST) as soon as data flows.
    ResetPeer,
    /// Disabled: open connections dropped, new ones refused.
    Cut,
}

impl Effect {
    /// The Toxiproxy toxic (type, attributes); `None` for a cut.
    fn toxic(self) -> Option<(&'static str, Value)> {
        match self {
            Effect::Latency => Some(("latency", json!({"latency": 100, "jitter": 20}))),
            Effect::ResetPeer => Some(("reset_peer", json!({"timeout": 0}))),
            Effect::Cut => None,
        }
    }
}

/// One network fault: which proxies, what happens to them, for how long.
struct NetFault {
    what: &'static str,
    proxies: &'static [&'static str],
    effect: Effect,
    /// In units of the form's step (1 s short, 3 s long).
    steps: u64,
}

const PG: &[&str] = &["pg_engine", "pg_stage"];
const ALL: &[&str] = &["kafka", "pg_engine", "pg_stage"];

// The cut comes second: in CI's 15 s of load the last faults may not fit (they are skipped, and
// said so), and the cut is the one that must always run.
const NET_FAULTS: [NetFault; 5] = [
    NetFault {
        what: "latency 100 ms ±20 on Kafka",
        proxies: &["kafka"],
        effect: Effect::Latency,
        steps: 3,
    },
    NetFault {
        what: "Kafka and PostgreSQL cut",
        proxies: ALL,
        effect: Effect::Cut,
        steps: 3,
    },
    NetFault {
        what: "reset_peer on the engine's and the stage's PostgreSQL",
        proxies: PG,
        effect: Effect::ResetPeer,
        steps: 1,
    },
    NetFault {
        what: "reset_peer on Kafka",
        proxies: &["kafka"],
        effect: Effect::ResetPeer,
        steps: 1,
    },
    NetFault {
        what: "latency 100 ms ±20 on the engine's and the stage's PostgreSQL",
        proxies: PG,
        effect: Effect::Latency,
        steps: 3,
    },
];

async fn network(
    rig: &Rig,
    world: &mut World,
    plan: &Plan,
    t0: Instant,
    outcome: &mut Outcome,
) -> Result<()> {
    let toxiproxy = rig
        .toxiproxy
        .as_ref()
        .context("the network rig has a Toxiproxy")?;
    // The schedule scales with the load: a step of 1 s per 30 s of load (0.5 s in CI's 15 s).
    let load = Duration::from_secs(plan.duration_s);
    let step = load / 30;
    crate::scenario::sleep_until(t0, 0.1 * plan.duration_s as f64).await;
    for fault in &NET_FAULTS {
        // Recovery is judged by commands flowing, so a fault needs load left after it (4 s: more
        // than most recoveries took here).
        if t0.elapsed() + step * fault.steps as u32 + Duration::from_secs(4) > load {
            println!("chaos:   too little load left for: {}", fault.what);
            continue;
        }
        let started = Instant::now();
        for proxy in fault.proxies {
            match fault.effect.toxic() {
                Some((kind, attributes)) => {
                    for stream in ["downstream", "upstream"] {
                        let body = json!({"name": format!("{kind}_{stream}"), "type": kind,
                                          "stream": stream, "attributes": attributes});
                        toxiproxy
                            .call_ok("POST", &format!("/proxies/{proxy}/toxics"), Some(body))
                            .await?;
                    }
                }
                None => toxiproxy.set_enabled(proxy, false).await?,
            }
        }
        tokio::time::sleep(step * fault.steps as u32).await;
        for proxy in fault.proxies {
            match fault.effect.toxic() {
                Some((kind, _)) => {
                    for stream in ["downstream", "upstream"] {
                        let path = format!("/proxies/{proxy}/toxics/{kind}_{stream}");
                        toxiproxy.call_ok("DELETE", &path, None).await?;
                    }
                }
                None => toxiproxy.set_enabled(proxy, true).await?,
            }
        }
        let healed_s = started.elapsed().as_secs_f64();
        let ready = world.gateway.wait_ready(READY_LIMIT).await.ok();
        let ready_s = ready.map(|_| started.elapsed().as_secs_f64());
        let running = world.pairs_running(READY_LIMIT).await;
        let flowing = flowing(world, load.saturating_sub(t0.elapsed())).await;
        // With the load over there is nothing left to flow: resumed is then the gateway ready and
        // every pair consuming, and the fault says so.
        let load_over = flowing.is_none() && t0.elapsed() >= load;
        let note = if load_over {
            "; the load ended before commands flowed again"
        } else {
            ""
        };
        outcome.faults.push(Fault {
            at_s: started.duration_since(t0).as_secs_f64(),
            what: format!("{} for {healed_s:.1} s{note}", fault.what),
            ready_s,
            recovered_s: running
                .filter(|_| flowing.is_some() || load_over)
                .map(|_| started.elapsed().as_secs_f64()),
            drain_s: None,
            clean_exit: None,
        });
    }
    Ok(())
}

/// Until commands flow end to end again: the gateway has written new commands to Kafka and read
/// new verdicts from it (`gateway_commands_produced_total`, `gateway_events_records_total`):
/// how long that took, or `None` once `limit` passed.
async fn flowing(world: &World, limit: Duration) -> Option<Duration> {
    let counts = |m: &str| {
        (
            crate::scrape::sum(m, "gateway_commands_produced_total"),
            crate::scrape::sum(m, "gateway_events_records_total"),
        )
    };
    let started = Instant::now();
    let mut before = None;
    while started.elapsed() < limit {
        if let Some(m) = world.gateway.metrics().await {
            let now = counts(&m);
            match before {
                None => before = Some(now),
                Some((produced, verdicts)) if now.0 > produced && now.1 > verdicts => {
                    return Some(started.elapsed());
                }
                Some(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

// --- Toxiproxy ---------------------------------------------------------------------------------

/// A `toxiproxy-server` of the scenario's own, on a free port, killed when dropped.
struct Toxiproxy {
    api: SocketAddr,
    _server: tokio::process::Child,
}

impl Toxiproxy {
    /// From `TOXIPROXY_BIN`, else what `scripts/stack toxiproxy` builds.
    async fn start(dir: &Path) -> Result<Toxiproxy> {
        let bin = std::env::var_os("TOXIPROXY_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".stack/bin/toxiproxy-server"));
        if !bin.is_file() {
            bail!(
                "no Toxiproxy at {} (scripts/stack toxiproxy builds it; TOXIPROXY_BIN names it)",
                bin.display()
            );
        }
        let port = crate::world::free_port()?;
        let api: SocketAddr = ([127, 0, 0, 1], port).into();
        std::fs::create_dir_all(dir)?;
        let log = std::fs::File::create(dir.join("toxiproxy.log"))?;
        let server = tokio::process::Command::new(&bin)
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let toxiproxy = Toxiproxy {
            api,
            _server: server,
        };
        let started = Instant::now();
        while toxiproxy.call("GET", "/version", None).await.is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("toxiproxy-server did not answer at {api} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(toxiproxy)
    }

    /// A proxy from `listen` (port 0: a free one) to `upstream`: the address it listens on.
    async fn proxy(&self, name: &str, listen: &str, upstream: &str) -> Result<String> {
        let body = json!({"name": name, "listen": listen, "upstream": upstream});
        let answer = self.call_ok("POST", "/proxies", Some(body)).await?;
        answer["listen"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("proxy {name} listens where? {answer}"))
    }

    /// Disabled: open connections dropped, new ones refused.
    async fn set_enabled(&self, proxy: &str, enabled: bool) -> Result<()> {
        let body = json!({"enabled": enabled});
        self.call_ok("POST", &format!("/proxies/{proxy}"), Some(body))
            .await
            .map(|_| ())
    }

    async fn call_ok(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        match self.call(method, path, body).await {
            Some((status, answer)) if (200..300).contains(&status) => Ok(answer),
            Some((status, answer)) => bail!("toxiproxy {method} {path}: {status} {answer}"),
            None => bail!("toxiproxy {method} {path}: no answer"),
        }
    }

    /// One request over HTTP/1.0: (status, JSON body or `Null`); `None` without an answer.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Option<(u16, Value)> {
        let body = body.map(|b| b.to_string());
        let (status, text) = infra::http::request(
            &self.api.to_string(),
            method,
            path,
            body.as_deref(),
            Duration::from_secs(5),
        )
        .await?;
        Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_pointed_at_a_proxy() {
        let url = "postgres://trading:trading@127.0.0.1:15432/trading?options=-c%20x";
        assert_eq!(authority(url), "127.0.0.1:15432");
        assert_eq!(
            via(url, Some("127.0.0.1:4000")),
            "postgres://trading:trading@127.0.0.1:4000/trading?options=-c%20x"
        );
        assert_eq!(via(url, None), url);
    }
}
