//! The scenarios: what load, which fault when, what recovered, and the audit's verdict.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde_json::Value;

use crate::world::{READY_LIMIT, World};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Form {
    Short,
    Long,
}

impl Form {
    pub fn name(self) -> &'static str {
        match self {
            Form::Short => "short",
            Form::Long => "long",
        }
    }
    pub fn rate_per_min(self) -> u64 {
        match self {
            Form::Short => 300_000,
            Form::Long => 800_000,
        }
    }
    pub fn duration_s(self) -> u64 {
        match self {
            Form::Short => 30,
            Form::Long => 120,
        }
    }
    pub fn connections(self) -> usize {
        match self {
            Form::Short => 40,
            Form::Long => 100,
        }
    }
    /// SIGKILLs of one process per scenario.
    fn kills(self) -> usize {
        match self {
            Form::Short => 2,
            Form::Long => 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Scenario 1: SIGKILL the engine at random moments under load, several times.
    EngineKill,
    /// Scenario 2: SIGKILL the gateway under load; its clients reconnect to the new one, and
    /// every command it acknowledged has its verdict in `events` (the audit's `--received`).
    GatewayKill,
    /// The account stage, SIGKILLed the same way (its own actors, fencing and recovery).
    StageKill,
    /// Scenario 4: the single broker killed and started again under load.
    BrokerCrash,
    /// Scenario 5: PostgreSQL stopped in immediate mode and started again under load.
    PostgresCrash,
    /// Scenario 7: copies of `orders` and `accounts` records and poison lines in `orders`,
    /// written past the gateway under load: each copy changes nothing, each poison line is
    /// answered with a rejection, no pair stops.
    DuplicatesPoison,
    /// Scenario 11: SIGTERM under load for the engine, the stage and the gateway: each drains and exits
    /// well within 120 s, is started again, and nothing is lost.
    Sigterm,
    /// Scenario 12: two gateways and two engines in group mode; one engine SIGKILLed, its pairs
    /// move to the other; started again, it takes pairs back (`elastic.rs`).
    Elastic,
    /// Scenario 8: bursts of 2x, 5x (10x) the measured capacity from well-behaved clients, then
    /// clients that ignore `rate_limited` beside well-behaved ones (`overload.rs`).
    Overload,
    /// Scenario 9: subscribers that stop reading, a flood of idle connections and half-open
    /// TCP beside a probe load (`slow.rs`).
    SlowClients,
    /// Scenario 3: on a three-broker cluster of its own, SIGKILL the leader of the busiest
    /// `orders` partition under load, start it again (`net.rs`).
    LeaderKill,
    /// Scenario 6: Toxiproxy between the services and Kafka and PostgreSQL: latency, resets, a
    /// cut and its healing (`net.rs`).
    Network,
}

impl Scenario {
    pub fn all() -> &'static [Scenario] {
        &[
            Scenario::EngineKill,
            Scenario::GatewayKill,
            Scenario::StageKill,
            Scenario::BrokerCrash,
            Scenario::PostgresCrash,
            Scenario::DuplicatesPoison,
            Scenario::Sigterm,
            Scenario::Elastic,
            Scenario::Overload,
            Scenario::SlowClients,
            Scenario::LeaderKill,
            Scenario::Network,
        ]
    }
    pub fn name(self) -> &'static str {
        match self {
            Scenario::EngineKill => "engine-kill",
            Scenario::GatewayKill => "gateway-kill",
            Scenario::StageKill => "stage-kill",
            Scenario::BrokerCrash => "broker-crash",
            Scenario::PostgresCrash => "postgres-crash",
            Scenario::DuplicatesPoison => "duplicates-poison",
            Scenario::Sigterm => "sigterm",
            Scenario::Elastic => "elastic",
            Scenario::Overload => "overload",
            Scenario::SlowClients => "slow-clients",
            Scenario::LeaderKill => "leader-kill",
            Scenario::Network => "network",
        }
    }
}

#[derive(Clone)]
pub struct Plan {
    pub form: Form,
    pub rate_per_min: u64,
    pub duration_s: u64,
    pub connections: usize,
    pub bins: PathBuf,
    pub out: PathBuf,
    pub brokers: String,
    pub database_url: String,
    pub seed: u64,
}

/// One injected fault and how the system came back from it.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// Seconds into the load.
    pub at_s: f64,
    pub what: String,
    /// From the fault to the service answering ready again (`None`: it did not, in time).
    pub ready_s: Option<f64>,
    /// From the fault to work resuming: every pair consuming again (the account stage: its first
    /// commit after the restart).
    pub recovered_s: Option<f64>,
    /// SIGTERM: how long the drain took, and whether the process exited 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clean_exit: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub passed: bool,
    /// Why it failed, one line each.
    pub problems: Vec<String>,
    pub faults: Vec<Fault>,
    /// The load generator's figures: offered, acknowledged, verdicts, lost, shed, ...
    pub load: Value,
    /// From the end of the load to no lag anywhere.
    pub settled_s: Option<f64>,
    /// What was written past the gateway (duplicates-poison), and what the services counted.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub injected: Value,
    /// The audit's JSON report (absent when it could not run).
    pub audit: Value,
    pub audit_passed: bool,
    pub dir: String,
    /// Wall time of the whole scenario: its world, load, faults, settling and audit.
    pub elapsed_s: f64,
}

impl Outcome {
    pub fn line(&self) -> String {
        format!(
            "chaos: {} {} in {:.0} s{}",
            self.scenario,
            if self.passed { "passed" } else { "FAILED" },
            self.elapsed_s,
            if self.problems.is_empty() {
                String::new()
            } else {
                format!(": {}", self.problems.join("; "))
            }
        )
    }
}

/// xorshift64*: fault times from the seed (reproducible, no dependency).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `[lo, hi)`.
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub async fn run(s: Scenario, plan: &Plan) -> Outcome {
    let dir = plan.out.join(s.name());
    let mut outcome = Outcome {
        scenario: s.name().to_owned(),
        passed: false,
        problems: Vec::new(),
        faults: Vec::new(),
        load: Value::Null,
        settled_s: None,
        injected: Value::Null,
        audit: Value::Null,
        audit_passed: false,
        dir: dir.display().to_string(),
        elapsed_s: 0.0,
    };
    let started = Instant::now();
    // A leader election can take ~12 s on a busy machine (the 6 s broker session, then the
    // controller's work): leader-kill needs load on both sides of it, whatever the form.
    let widened;
    let plan = if s == Scenario::LeaderKill && plan.duration_s < 30 {
        widened = Plan {
            duration_s: 30,
            ..plan.clone()
        };
        &widened
    } else {
        plan
    };
    let result = match s {
        Scenario::Elastic => crate::elastic::run(plan, &mut outcome).await,
        Scenario::Overload => crate::overload::run(plan, &mut outcome).await,
        Scenario::SlowClients => crate::slow::run(plan, &mut outcome).await,
        _ => run_inner(s, plan, &mut outcome).await,
    };
    if let Err(e) = result {
        outcome.problems.push(format!("{e:#}"));
    }
    outcome.passed = outcome.problems.is_empty();
    outcome.elapsed_s = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    outcome
}

async fn run_inner(s: Scenario, plan: &Plan, outcome: &mut Outcome) -> Result<()> {
    // leader-kill and network run on a Kafka of their own (net.rs); dropped last.
    let rig = crate::net::Rig::start(s, plan).await?;
    let mut world = match &rig {
        None => World::create(s.name(), plan, plan.connections).await?,
        Some(rig) => {
            World::create_routed(
                s.name(),
                &plan.out,
                &plan.bins,
                &rig.brokers,
                &plan.database_url,
                plan.connections,
                &rig.routes(),
            )
            .await?
        }
    };
    println!(
        "chaos:   services up; schema and topic suffix {}, logs in {}",
        world.name,
        world.dir.display()
    );
    let mut rng = Rng(plan.seed ^ (s as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let load_dir = world.dir.join("load");
    let mut load = tokio::process::Command::new(plan.bins.join("loadtest"))
        .arg("--url")
        .arg(format!("ws://127.0.0.1:{}/ws", world.gw_port))
        .arg("--accounts-file")
        .arg(&world.accounts_file)
        .args(["--connections", &plan.connections.to_string()])
        .args(["--rate-per-min", &plan.rate_per_min.to_string()])
        .args(["--duration-s", &plan.duration_s.to_string()])
        .args(["--warmup-s", "0"])
        // A command the gateway took while Kafka was down is answered when Kafka acknowledges
        // it or when the producer gives up on it (`message.timeout.ms`, 30 s): the generator
        // waits longer than that for its last answers.
        .args([
            "--drain-timeout-s",
            &crate::load::DRAIN_TIMEOUT_S.to_string(),
        ])
        // Clients come back when their gateway does, and every command a gateway acknowledged is
        // listed for the audit, answered at the client or not.
        .arg("--reconnect")
        .arg("--received-out")
        .arg(world.dir.join("received.jsonl"))
        .arg("--out-dir")
        .arg(&load_dir)
        .stdout(std::fs::File::create(world.dir.join("load.log"))?)
        .stderr(std::fs::File::create(world.dir.join("load.err.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("start the load generator")?;
    let t0 = Instant::now();
    let duration = plan.duration_s as f64;

    match s {
        Scenario::GatewayKill => {
            let kills = plan.form.kills();
            let (from, to) = (0.15 * duration, 0.7 * duration);
            let slot = (to - from) / kills as f64;
            for k in 0..kills {
                sleep_until(
                    t0,
                    rng.between(from + slot * k as f64, from + slot * (k as f64 + 0.8)),
                )
                .await;
                let killed = Instant::now();
                world.gateway.kill().await?;
                world.gateway.start()?;
                let ready = world.gateway.wait_ready(READY_LIMIT).await?;
                // Resumed: the clients are back (each reconnects with its own backoff).
                let back = world.clients_back(plan.connections, READY_LIMIT).await;
                outcome.faults.push(Fault {
                    at_s: killed.duration_since(t0).as_secs_f64(),
                    what: "SIGKILL gateway".into(),
                    ready_s: Some(ready.as_secs_f64()),
                    recovered_s: back.map(|_| killed.elapsed().as_secs_f64()),
                    drain_s: None,
                    clean_exit: None,
                });
            }
        }
        Scenario::EngineKill | Scenario::StageKill => {
            let kills = plan.form.kills();
            // Spread over the middle of the load, one per slot, at a random moment in each.
            let (from, to) = (0.15 * duration, 0.75 * duration);
            let slot = (to - from) / kills as f64;
            for k in 0..kills {
                let when = rng.between(from + slot * k as f64, from + slot * (k as f64 + 0.8));
                sleep_until(t0, when).await;
                let killed = Instant::now();
                let service = if s == Scenario::EngineKill {
                    &mut world.engine
                } else {
                    &mut world.stage
                };
                let what = format!("SIGKILL {}", service.name);
                service.kill().await?;
                service.start()?;
                let ready = service.wait_ready(READY_LIMIT).await?;
                let recovered = if s == Scenario::EngineKill {
                    world.pairs_running(READY_LIMIT).await
                } else {
                    world.stage_committing(READY_LIMIT).await
                };
                outcome.faults.push(Fault {
                    at_s: killed.duration_since(t0).as_secs_f64(),
                    what,
                    ready_s: Some(ready.as_secs_f64()),
                    recovered_s: recovered.map(|_| killed.elapsed().as_secs_f64()),
                    drain_s: None,
                    clean_exit: None,
                });
            }
        }
        Scenario::BrokerCrash | Scenario::PostgresCrash => {
            let what = if s == Scenario::BrokerCrash {
                "kafka"
            } else {
                "postgres"
            };
            sleep_until(t0, rng.between(0.2 * duration, 0.4 * duration)).await;
            let crashed = Instant::now();
            stack(&["crash", what]).await?;
            // Down for a while under load: the services must hold on, not give up.
            let down = if plan.form == Form::Short { 5 } else { 20 };
            tokio::time::sleep(Duration::from_secs(down)).await;
            stack(&["up"]).await?;
            let back = crashed.elapsed();
            let recovered = world.pairs_running(READY_LIMIT).await;
            let gateway = world.gateway.wait_ready(READY_LIMIT).await.ok();
            outcome.faults.push(Fault {
                at_s: crashed.duration_since(t0).as_secs_f64(),
                what: format!(
                    "{what} crashed for {down} s (up again after {:.1} s)",
                    back.as_secs_f64()
                ),
                ready_s: gateway.map(|_| crashed.elapsed().as_secs_f64()),
                recovered_s: recovered.map(|_| crashed.elapsed().as_secs_f64()),
                drain_s: None,
                clean_exit: None,
            });
        }
        Scenario::DuplicatesPoison => {
            let (_, registry) = infra::config::load_pairs()?;
            let pairs: Vec<String> = registry.iter().map(|p| p.symbol.clone()).collect();
            let mut injected = crate::inject::Injected::default();
            let rounds = if plan.form == Form::Short { 2 } else { 5 };
            for k in 0..rounds {
                sleep_until(t0, (0.2 + 0.5 * k as f64 / rounds as f64) * duration).await;
                let at = at_s(t0);
                crate::inject::round(&world, &pairs, crate::world::SHARDS as i32, &mut injected)
                    .await?;
                outcome.faults.push(Fault {
                    at_s: at,
                    what: "copies and poison written past the gateway".into(),
                    ready_s: None,
                    // From the round written to every pair consuming (0 when none stopped).
                    recovered_s: world
                        .pairs_running(READY_LIMIT)
                        .await
                        .map(|d| d.as_secs_f64()),
                    drain_s: None,
                    clean_exit: None,
                });
            }
            outcome.injected = serde_json::to_value(&injected)?;
        }
        Scenario::Elastic | Scenario::Overload | Scenario::SlowClients => {
            bail!("{} runs in its own module", s.name())
        }
        Scenario::LeaderKill | Scenario::Network => {
            let rig = rig.as_ref().context("leader-kill and network have a rig")?;
            crate::net::inject(s, rig, &mut world, plan, t0, outcome).await?;
        }
        Scenario::Sigterm => {
            let n = 3.0;
            for (i, which) in ["engine", "accounts", "gateway"].into_iter().enumerate() {
                sleep_until(t0, (0.15 + 0.6 * i as f64 / n) * duration).await;
                let stopped = Instant::now();
                let service = match which {
                    "engine" => &mut world.engine,
                    "accounts" => &mut world.stage,
                    _ => &mut world.gateway,
                };
                let (drain, clean) = service.terminate(Duration::from_secs(120)).await?;
                service.start()?;
                let ready = service.wait_ready(READY_LIMIT).await?;
                let recovered = world.pairs_running(READY_LIMIT).await;
                outcome.faults.push(Fault {
                    at_s: stopped.duration_since(t0).as_secs_f64(),
                    what: format!("SIGTERM {which}"),
                    ready_s: Some(drain.as_secs_f64() + ready.as_secs_f64()),
                    recovered_s: recovered.map(|_| stopped.elapsed().as_secs_f64()),
                    drain_s: Some(drain.as_secs_f64()),
                    clean_exit: Some(clean),
                });
            }
        }
    }

    let status = load.wait().await?;
    let report: Value = std::fs::read_to_string(load_dir.join("report.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    outcome.load = load_figures(&report);
    if report.is_null() {
        outcome.problems.push(format!(
            "the load generator wrote no report ({status}); see load.err.log"
        ));
    }
    record_settled(outcome, world.settled(SETTLE_LIMIT).await);
    if let Some(poison) = outcome.injected["orders_poison_lines"].as_u64() {
        // Every poison line answered as poison (the engine's own count), and every copy of a
        // forwarded command skipped as a repeat, none applied twice.
        let engine = world.engine.metrics().await.unwrap_or_default();
        let stage = world.stage.metrics().await.unwrap_or_default();
        let answered = crate::scrape::sum(&engine, "engine_poison_records_total") as u64;
        let repeats = crate::scrape::sum(&engine, "engine_repeated_commands_total") as u64;
        let stage_repeats = crate::scrape::sum(&stage, "accounts_repeats_total") as u64;
        outcome.injected["engine_poison_records_total"] = answered.into();
        outcome.injected["engine_repeated_commands_total"] = repeats.into();
        outcome.injected["accounts_repeats_total"] = stage_repeats.into();
        if answered != poison {
            outcome.problems.push(format!(
                "{poison} poison lines written, the engine answered {answered} as poison"
            ));
        }
        let forwarded = outcome.injected["orders_copied_forwarded_lines"]
            .as_u64()
            .unwrap_or(0);
        if repeats < forwarded {
            outcome.problems.push(format!(
                "{forwarded} forwarded command lines copied, only {repeats} skipped as repeats"
            ));
        }
        let copies = outcome.injected["accounts_copies"].as_u64().unwrap_or(0);
        if copies > 0 && stage_repeats == 0 {
            outcome.problems.push(format!(
                "{copies} accounts records copied, none skipped as a repeat"
            ));
        }
    }
    if s == Scenario::GatewayKill && outcome.load["reconnect"]["reconnects"].as_u64() == Some(0) {
        outcome
            .problems
            .push("the gateway was killed, yet no client reconnected".into());
    }
    // A well-behaved client (the generator keeps within its limits) cut off for good, for
    // instance as abusive after an outage, has not recovered without intervention.
    if let Some(gave_up) = outcome.load["reconnect"]["gave_up"].as_object()
        && !gave_up.is_empty()
    {
        outcome.problems.push(format!(
            "clients gave up reconnecting: {}",
            serde_json::Value::Object(gave_up.clone())
        ));
    }
    if let Some(lost) = outcome.load["lost_all_phases"].as_u64()
        && lost > 0
    {
        outcome.problems.push(format!(
            "{lost} commands got no answer of any kind at the client"
        ));
    }
    if rig.is_some() {
        crate::net::judge(outcome);
    }
    conclude(&mut world, &mut [], plan, outcome).await
}

/// What every scenario ends with, once its load has finished: a service that died by itself is
/// a finding; the services stop in the order a deployment drains (gateways, then the stage and
/// the engines); a fault the system did not recover from, or an unclean exit, fails the
/// scenario; then the audit runs over what the scenario wrote. `extra`: the scenario's own
/// additional services (a second engine or gateway).
pub async fn conclude(
    world: &mut World,
    extra: &mut [crate::procs::Service],
    plan: &Plan,
    outcome: &mut Outcome,
) -> Result<()> {
    for service in world.services().into_iter().chain(extra.iter_mut()) {
        if !service.running() {
            outcome.problems.push(format!(
                "{} exited by itself; its log ends:\n{}",
                service.name,
                service.log_tail(10)
            ));
        }
    }
    let (gateways, others): (Vec<_>, Vec<_>) = extra.iter_mut().partition(|s| s.name == "gateway");
    for service in [&mut world.gateway]
        .into_iter()
        .chain(gateways)
        .chain([&mut world.stage, &mut world.engine])
        .chain(others)
    {
        service.terminate(Duration::from_secs(120)).await?;
    }
    for f in &outcome.faults {
        if f.recovered_s.is_none() {
            outcome.problems.push(format!(
                "{} at {:.1} s: work did not resume in time",
                f.what, f.at_s
            ));
        }
        if f.clean_exit == Some(false) {
            outcome
                .problems
                .push(format!("{}: not a clean exit", f.what));
        }
    }
    let (passed, audit) = audit(world, plan).await?;
    outcome.audit = audit;
    outcome.audit_passed = passed;
    if !passed {
        outcome.problems.push(format!(
            "the audit found violations (see {}/audit.json){}",
            world.dir.display(),
            audit_findings(&outcome.audit)
        ));
    }
    Ok(())
}

/// The broken rules of an audit report and its first few violations, so that a log's tail
/// says what broke without the report at hand.
pub fn audit_findings(report: &Value) -> String {
    let mut out = String::new();
    let Some(rules) = report["rules"].as_array() else {
        // Not a report: the audit's own error output.
        if let Some(text) = report.as_str() {
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            for line in tail.into_iter().rev() {
                out.push_str(&format!("\n    {line}"));
            }
        }
        return out;
    };
    for r in rules {
        if r["violations"].as_u64().unwrap_or(0) > 0 {
            out.push_str(&format!(
                "\n    rule {}: {} of {} checked",
                r["rule"].as_str().unwrap_or("?"),
                r["violations"],
                r["checked"]
            ));
        }
    }
    for v in report["violations"]
        .as_array()
        .into_iter()
        .flatten()
        .take(3)
    {
        let mut located: Vec<String> = Vec::new();
        if let Some(map) = v.as_object() {
            for (k, val) in map {
                if k != "detail" {
                    located.push(format!("{k}={}", val.to_string().trim_matches('"')));
                }
            }
        }
        out.push_str(&format!(
            "\n    {}: {}",
            located.join(" "),
            v["detail"].as_str().unwrap_or("")
        ));
    }
    out
}

fn at_s(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

pub async fn sleep_until(t0: Instant, at_s: f64) {
    let target = t0 + Duration::from_secs_f64(at_s.max(0.0));
    tokio::time::sleep_until(target.into()).await;
}

/// A finding about speed: a problem on release binaries; on debug ones (the test command's
/// form, several times slower and sharing two cores with the load) it is recorded in the
/// scenario's notes and judges nothing.
pub fn judged_on_release(world: &World, outcome: &mut Outcome, finding: String) {
    if cfg!(debug_assertions) {
        crate::load::note(
            &world.dir,
            &format!("{finding} (debug binaries: recorded, not judged)"),
        );
    } else {
        outcome.problems.push(finding);
    }
}

/// How long after its load a scenario waits for every consumer to catch up.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(90);

/// Records how long the services took to settle after the load (`World::settled` or the
/// scenario's own wait); not settling within [`SETTLE_LIMIT`] is a problem.
pub fn record_settled(outcome: &mut Outcome, settled: Option<Duration>) {
    outcome.settled_s = settled.map(|d| d.as_secs_f64());
    if outcome.settled_s.is_none() {
        outcome.problems.push(format!(
            "a consumer (the stage or an engine) still lagged, or a pair was paused, {} s after \
             the load",
            SETTLE_LIMIT.as_secs()
        ));
    }
}

/// `scripts/stack <args>` (crash kafka|postgres, up) on the shared stack, failing with its output.
async fn stack(args: &[&str]) -> Result<()> {
    stack_with(args, &[]).await
}

/// The same; `env` names a stack of the scenario's own (its STACK_DIR and ports), and then the
/// caller's `KAFKA_BROKERS` is not passed on.
pub async fn stack_with(args: &[&str], env: &[(String, String)]) -> Result<()> {
    let mut command = tokio::process::Command::new("scripts/stack");
    command.args(args).stdin(std::process::Stdio::null());
    if !env.is_empty() {
        command
            .env_remove("KAFKA_BROKERS")
            .envs(env.iter().map(|(k, v)| (k, v)));
    }
    let out = command.output().await.context("run scripts/stack")?;
    if !out.status.success() {
        bail!(
            "scripts/stack {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The load generator's figures the summary shows.
pub fn load_figures(report: &Value) -> Value {
    let keys = [
        "target_events_per_min",
        "achieved_events_per_min",
        "offered",
        "acknowledged",
        "verdicts",
        "accepted",
        "rejected",
        "lost",
        "lost_all_phases",
        "timeouts",
        "shed",
        "connection_closed",
        "unread_at_close",
        "reconnects",
        "reconnect",
        "closed_in_flight",
        "errors",
    ];
    let mut out = serde_json::Map::new();
    for k in keys {
        if let Some(v) = report.get(k) {
            out.insert(k.to_owned(), v.clone());
        }
    }
    Value::Object(out)
}

/// Runs the audit over the scenario's topics and schema: (passed, its JSON report).
pub async fn audit(world: &World, plan: &Plan) -> Result<(bool, Value)> {
    let json_path = world.dir.join("audit.json");
    let out = tokio::process::Command::new(plan.bins.join("audit"))
        .args(["--brokers", &world.brokers])
        .args(["--database-url", &world.database_url])
        .args(["--orders-topic", &world.orders_topic])
        .args(["--events-topic", &world.events_topic])
        .args(["--accounts-topic", &world.accounts_topic])
        .args(["--account-events-topic", &world.account_events_topic])
        .arg("--received")
        .arg(world.dir.join("received.jsonl"))
        .arg("--json-out")
        .arg(&json_path)
        .output()
        .await
        .context("run the audit")?;
    std::fs::write(world.dir.join("audit.txt"), &out.stdout)?;
    let report = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&out.stderr).into_owned()));
    Ok((out.status.success(), report))
}

/// The summary as a Markdown table.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut t = String::from(
        "| scenario | faults (at s: ready s / resumed s) | acknowledged | verdicts | lost | shed | settled s | audit | verdict |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let f1 = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    for o in outcomes {
        let faults: Vec<String> = o
            .faults
            .iter()
            .map(|f| {
                let drain = f
                    .drain_s
                    .map(|d| format!(", drained in {d:.1} s"))
                    .unwrap_or_default();
                format!(
                    "{} at {:.1}: {} / {}{drain}",
                    f.what,
                    f.at_s,
                    f1(f.ready_s),
                    f1(f.recovered_s)
                )
            })
            .collect();
        let n = |k: &str| o.load[k].as_u64().map_or("-".to_owned(), |v| v.to_string());
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            o.scenario,
            faults.join("<br>"),
            n("acknowledged"),
            n("verdicts"),
            n("lost_all_phases"),
            n("shed"),
            f1(o.settled_s),
            if o.audit_passed {
                "clean"
            } else {
                "VIOLATIONS"
            },
            if o.passed { "passed" } else { "FAILED" },
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::audit_findings;
    use serde_json::json;

    #[test]
    fn findings_name_the_broken_rules_and_the_first_violations() {
        let report = json!({
            "rules": [
                {"rule": "seq_contiguous", "checked": 10, "violations": 0},
                {"rule": "received_has_verdict", "checked": 9, "violations": 2},
            ],
            "violations": [
                {"rule": "received_has_verdict", "pair": "BTC-USD", "order_id": 7, "detail": "no verdict"},
                {"rule": "received_has_verdict", "pair": "ETH-USD", "order_id": 8, "detail": "no verdict"},
            ],
        });
        let text = audit_findings(&report);
        assert!(
            text.contains("rule received_has_verdict: 2 of 9 checked"),
            "{text}"
        );
        assert!(!text.contains("seq_contiguous"), "{text}");
        assert!(
            text.contains("order_id=7 pair=BTC-USD rule=received_has_verdict: no verdict"),
            "{text}"
        );
        assert_eq!(
            audit_findings(&json!("error: no brokers\n")),
            "\n    error: no brokers"
        );
    }
}
