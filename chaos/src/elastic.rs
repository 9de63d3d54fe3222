//! Scenario 12, elastic: two gateways and two engines in consumer-group mode share the load; one
//! engine is SIGKILLed, its pairs move to the other and resume; started again, it takes pairs
//! back. The clients of both gateways must see every answer once (no loss at either client, and
//! the audit's `received_has_verdict` over both lists).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::load::{self, Load, Spec};
use crate::procs::Service;
use crate::scenario::{Fault, Outcome, Plan};
use crate::world::{READY_LIMIT, World, free_port};

/// A dead member's partitions move after the group coordinator's session timeout: librdkafka's
/// default is 45 s. The scenario runs the engines with 6 s (the broker's smallest allowed
/// session) and 1 s heartbeats, as a deployment that wants fast failover would
/// (`KAFKA_CONSUMER_CFG_*` reaches every consumer's configuration).
const SESSION: [(&str, &str); 2] = [
    ("KAFKA_CONSUMER_CFG_SESSION_TIMEOUT_MS", "6000"),
    ("KAFKA_CONSUMER_CFG_HEARTBEAT_INTERVAL_MS", "1000"),
];

pub async fn run(plan: &Plan, outcome: &mut Outcome) -> Result<()> {
    let connections = plan.connections.max(2);
    let mut world = World::create("elastic", plan, connections).await?;
    // The world starts one engine with every pair (static mode): the scenario restarts it in
    // group mode and adds a second member, and a second gateway.
    world.engine.terminate(Duration::from_secs(60)).await?;
    world.engine.set_args(&[]);
    for (k, v) in SESSION {
        world.engine.set_env(k, v);
    }
    world.engine.start()?;
    world.engine.wait_ready(READY_LIMIT).await?;
    let port = free_port()?;
    let mut engine_b = world.engine.twin(
        world.dir.join("engine-b.log"),
        &[("METRICS_ADDR", format!("127.0.0.1:{port}"))],
        format!("http://127.0.0.1:{port}/healthz"),
        format!("http://127.0.0.1:{port}/metrics"),
    );
    engine_b.start()?;
    engine_b.wait_ready(READY_LIMIT).await?;
    let gw_b_port = free_port()?;
    let mut gateway_b = world.gateway.twin(
        world.dir.join("gateway-b.log"),
        // Its own gateway id, as the deployment derives one per task: two gateways with one id
        // issue the same order ids (a first run without it corrupted books; see RELIABILITY.md).
        &[
            ("GW_LISTEN", format!("127.0.0.1:{gw_b_port}")),
            ("GW_GATEWAY_ID", "1".to_owned()),
        ],
        format!("http://127.0.0.1:{gw_b_port}/readyz"),
        format!("http://127.0.0.1:{gw_b_port}/metrics"),
    );
    gateway_b.start()?;
    gateway_b.wait_ready(READY_LIMIT).await?;
    println!(
        "chaos:   two engines (group mode) and two gateways up; logs in {}",
        world.dir.display()
    );

    let half = connections / 2;
    // Long enough that the load outlasts the restart's rebalance (2.5 s on a busy box) by
    // seconds: a pair resumes only if commands still come (with 20 s, a fresh-clone run restarted
    // B 19 s in, B owned its pairs at 21.5 s, and the load had ended before every pair moved).
    let duration = plan.duration_s.max(30);
    let loads = [
        ("load-a", world.gw_port, 0..half),
        ("load-b", gw_b_port, half..connections),
    ];
    let mut running = Vec::new();
    for (name, port, accounts) in loads.clone() {
        running.push(Load::start(
            plan,
            &world,
            Spec {
                name,
                gw_port: port,
                accounts,
                rate_per_min: plan.rate_per_min / 2,
                duration_s: duration,
                extra: vec!["--reconnect".into()],
            },
        )?);
    }
    let t0 = Instant::now();
    let d = duration as f64;

    // Both members consume before the kill: the group shares the pairs.
    sleep_until(t0, 0.2 * d).await;
    let owned_a = active_pairs(&world.engine).await;
    let owned_b = active_pairs(&engine_b).await;
    load::note(
        &world.dir,
        &format!("before the kill: engine A consumes {owned_a:?}, engine B {owned_b:?}"),
    );
    if owned_b.is_empty() || owned_a.is_empty() {
        outcome.problems.push(format!(
            "the two engines did not share the pairs (A {owned_a:?}, B {owned_b:?})"
        ));
    }

    // Kill B: its pairs stop, then move to A after the session timeout and resume there.
    sleep_until(t0, 0.3 * d).await;
    let killed = Instant::now();
    engine_b.kill().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frozen = offsets(&world).await?;
    let moved = all_advanced(&world, &frozen, READY_LIMIT).await?;
    outcome.faults.push(Fault {
        at_s: killed.duration_since(t0).as_secs_f64(),
        what: format!("SIGKILL engine B ({} pairs)", owned_b.len()),
        ready_s: None,
        recovered_s: moved.map(|_| killed.elapsed().as_secs_f64()),
        drain_s: None,
        clean_exit: None,
    });

    // Start B again: the group rebalances and B takes pairs back.
    sleep_until(t0, 0.6 * d).await;
    let started = Instant::now();
    engine_b.start()?;
    let ready = engine_b.wait_ready(READY_LIMIT).await?;
    let owned_b = until_owns_pairs(&engine_b, READY_LIMIT).await;
    let resumed = match owned_b {
        Some(_) => {
            let frozen = offsets(&world).await?;
            all_advanced(&world, &frozen, READY_LIMIT).await?
        }
        None => None,
    };
    let owned_b = owned_b.unwrap_or_default();
    load::note(
        &world.dir,
        &format!("after the restart: engine B consumes {owned_b:?}"),
    );
    outcome.faults.push(Fault {
        at_s: started.duration_since(t0).as_secs_f64(),
        what: format!(
            "engine B started again: the group rebalances ({} pairs back to B)",
            owned_b.len()
        ),
        ready_s: Some(ready.as_secs_f64()),
        recovered_s: resumed.map(|_| started.elapsed().as_secs_f64()),
        drain_s: None,
        clean_exit: None,
    });

    let mut reports = Vec::new();
    for load in running {
        let name = load.name.clone();
        let report = load.finish(&mut outcome.problems).await?;
        load::check(&name, &report, &mut outcome.problems);
        reports.push((name, crate::scenario::load_figures(&report)));
    }
    outcome.load = load::combined(&reports);
    load::join_received(&world, &["load-a", "load-b"])?;

    let mut extra = [engine_b, gateway_b];
    let done = settled(&world, &extra[0], crate::scenario::SETTLE_LIMIT).await;
    crate::scenario::record_settled(outcome, done);
    crate::scenario::conclude(&mut world, &mut extra, plan, outcome).await
}

/// Pairs whose `engine_commands_total` grows over 1.5 s: what this member consumes now.
async fn active_pairs(engine: &Service) -> BTreeSet<String> {
    let before = per_pair(&engine.metrics().await.unwrap_or_default());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = per_pair(&engine.metrics().await.unwrap_or_default());
    after
        .into_iter()
        .filter(|(pair, n)| *n > before.get(pair).copied().unwrap_or(0.0))
        .map(|(pair, _)| pair)
        .collect()
}

fn per_pair(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("engine_commands_total{")?;
            let pair = rest.split("pair=\"").nth(1)?.split('"').next()?;
            let value = line.rsplit(' ').next()?.parse().ok()?;
            Some((pair.to_owned(), value))
        })
        .collect()
}

/// Until the member consumes some pair: the pairs it consumes then.
async fn until_owns_pairs(engine: &Service, limit: Duration) -> Option<BTreeSet<String>> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let owned = active_pairs(engine).await;
        if !owned.is_empty() {
            return Some(owned);
        }
    }
    None
}

/// Every pair's committed `orders` offset, from PostgreSQL.
async fn offsets(world: &World) -> Result<BTreeMap<String, i64>> {
    let pool = infra::db::connect(&world.database_url, 1).await?;
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT symbol, last_offset FROM pair_offsets")
        .fetch_all(&pool)
        .await?;
    pool.close().await;
    if rows.is_empty() {
        bail!("no pair has committed anything yet");
    }
    Ok(rows.into_iter().collect())
}

/// Until every pair's committed offset moved past `frozen`: every pair consumes and persists
/// again, whichever member owns it.
async fn all_advanced(
    world: &World,
    frozen: &BTreeMap<String, i64>,
    limit: Duration,
) -> Result<Option<Duration>> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let now = offsets(world).await?;
        if frozen
            .iter()
            .all(|(pair, off)| now.get(pair).is_some_and(|n| n > off))
        {
            return Ok(Some(started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(None)
}

/// As [`World::settled`], with the second engine's lag counted too.
async fn settled(world: &World, engine_b: &Service, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let b = engine_b.metrics().await.unwrap_or_default();
        let b_lag = crate::scrape::sum(&b, "engine_consumer_lag_records");
        if b_lag == 0.0 && world.settled(Duration::from_millis(300)).await.is_some() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

async fn sleep_until(t0: Instant, at_s: f64) {
    tokio::time::sleep_until((t0 + Duration::from_secs_f64(at_s.max(0.0))).into()).await;
}
