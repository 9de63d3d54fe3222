//! Scenario 8, overload: the system's capacity measured first (a ramp until the latency SLO or
//! the shed budget breaks), then bursts of 2x, 5x (and in the long form 10x) that capacity,
//! open loop, over enough connections that each stays within its own rate limit: the system is
//! overloaded, no client abuses it. A small probe load runs through each burst and after it, so
//! the suite sees how the other clients' latency comes back. Then clients that ignore
//! `rate_limited` beside well-behaved ones: the ignorers are cut off with every request they got
//! executed answered, and the well-behaved keep their goodput.
//!
//! Judged: goodput during each burst at least 90% of capacity, at least 99% of cancels admitted,
//! the probe's p99 back to normal within 10 s of the burst, every service's memory flat through
//! the burst (its second half's peak within 20% + 32 MiB of its first half's; the peak against
//! capacity's is recorded), nothing lost at any client, the audit clean. The shed answers' p99
//! is recorded.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use crate::load::{self, Load, Spec};
use crate::scenario::{Form, Outcome, Plan};
use crate::world::World;

/// Each connection offers at most this much (its own limit is 200 requests/s, `GW_CONN_RATE_PER_S`).
const PER_CONN_PER_MIN: u64 = 150 * 60;
const PROBE_CONNS: usize = 20;
/// Seconds of probe before a burst (the normal latency) and after it (the recovery).
const PROBE_BEFORE_S: u64 = 4;
const PROBE_AFTER_S: u64 = 14;
const RECOVERY_LIMIT_S: f64 = 10.0;

struct Shape {
    accounts: usize,
    multiples: &'static [u64],
    burst_s: u64,
    ramp_step_s: u64,
    /// The ramp starts at, and steps by, the form's rate divided by this.
    ramp_divisor: u64,
}

fn shape(form: Form) -> Shape {
    match form {
        Form::Short => Shape {
            accounts: 600,
            // Debug binaries (the test command's form) collapse under 5x what they carry, and so
            // does the generator offering it: there 2x; release binaries 2x and 5x.
            multiples: if cfg!(debug_assertions) {
                &[2]
            } else {
                &[2, 5]
            },
            burst_s: 8,
            ramp_step_s: 4,
            ramp_divisor: 4,
        },
        Form::Long => Shape {
            accounts: 1500,
            multiples: &[2, 5, 10],
            burst_s: 20,
            ramp_step_s: 6,
            ramp_divisor: 2,
        },
    }
}

pub async fn run(plan: &Plan, outcome: &mut Outcome) -> Result<()> {
    let shape = shape(plan.form);
    let mut world = World::create("overload", plan, shape.accounts).await?;
    let watch: Vec<String> = [
        ("gateway", world.gateway.pid()),
        ("engine", world.engine.pid()),
        ("accounts", world.stage.pid()),
    ]
    .into_iter()
    .flat_map(|(name, pid)| load::watch(name, pid))
    .collect();
    let mut names = Vec::new();
    let mut runs: Vec<(String, Value)> = Vec::new();
    let mut figures = serde_json::Map::new();

    // 1. Capacity: the highest ramp step within a 1 s p99 and 1% shed.
    let step = (plan.rate_per_min / shape.ramp_divisor).max(10_000);
    let ramp_max = step * 24;
    let ramp_conns = usize::try_from(ramp_max.div_ceil(PER_CONN_PER_MIN))?
        .clamp(PROBE_CONNS, shape.accounts - PROBE_CONNS);
    let mut extra = vec![
        "--mode".into(),
        "ramp".into(),
        format!("--ramp-start-per-min={step}"),
        format!("--ramp-step-per-min={step}"),
        format!("--ramp-max-per-min={ramp_max}"),
        format!("--ramp-step-s={}", shape.ramp_step_s),
        "--slo-p99-ms=1000".into(),
        "--shed-max=0.01".into(),
    ];
    extra.extend(watch.iter().cloned());
    let ramp = Load::start(
        plan,
        &world,
        Spec {
            name: "capacity",
            gw_port: world.gw_port,
            accounts: PROBE_CONNS..PROBE_CONNS + ramp_conns,
            rate_per_min: step,
            duration_s: shape.ramp_step_s,
            extra,
        },
    )?;
    names.push("capacity".to_owned());
    let report = ramp.finish(&mut outcome.problems).await?;
    runs.push(("capacity".into(), crate::scenario::load_figures(&report)));
    load::check("capacity", &report, &mut outcome.problems);
    let capacity = match report["highest_passing_events_per_min"].as_u64() {
        Some(rate) => rate,
        None => {
            // Not even the first step held: the capacity is what that step carried.
            let first = report["phases"][0]["achieved_events_per_min"]
                .as_f64()
                .unwrap_or(0.0) as u64;
            load::note(
                &world.dir,
                &format!("no ramp step passed; the capacity is the first step's {first}/min"),
            );
            first.max(1_000)
        }
    };
    let baseline_rss = report["peak_rss_mib"].clone();
    load::note(
        &world.dir,
        &format!(
            "capacity: {capacity}/min (ramp steps of {step}/min, {} s each, p99 <= 1 s, shed <= 1%)",
            shape.ramp_step_s
        ),
    );
    figures.insert("capacity_per_min".into(), capacity.into());
    figures.insert("capacity_peak_rss_mib".into(), baseline_rss.clone());
    world.settled(Duration::from_secs(60)).await;

    // 2. Bursts at multiples of it, a probe running through each and after it.
    let mut bursts = Vec::new();
    for &m in shape.multiples {
        let rate = capacity * m;
        let free = shape.accounts - PROBE_CONNS;
        let wanted = usize::try_from(rate.div_ceil(PER_CONN_PER_MIN))?;
        let conns = wanted.min(free);
        // Never ask a connection for more than its limit: with too few accounts, offer less.
        let offered_rate = rate.min(conns as u64 * PER_CONN_PER_MIN);
        let probe_rate = (capacity / 10).max(600);
        let probe_name = format!("probe-{m}x");
        let burst_name = format!("burst-{m}x");
        let mut probe_extra = vec!["--reconnect".to_owned()];
        probe_extra.extend(watch.iter().cloned());
        let probe = Load::start(
            plan,
            &world,
            Spec {
                name: &probe_name,
                gw_port: world.gw_port,
                accounts: 0..PROBE_CONNS,
                rate_per_min: probe_rate,
                // The burst's clients take a few seconds to log in before it starts.
                duration_s: PROBE_BEFORE_S + 6 + shape.burst_s + PROBE_AFTER_S,
                extra: probe_extra,
            },
        )?;
        tokio::time::sleep(Duration::from_secs(PROBE_BEFORE_S)).await;
        let burst = Load::start(
            plan,
            &world,
            Spec {
                name: &burst_name,
                gw_port: world.gw_port,
                accounts: PROBE_CONNS..PROBE_CONNS + conns,
                rate_per_min: offered_rate,
                duration_s: shape.burst_s,
                extra: vec!["--reconnect".into()],
            },
        )?;
        let burst_report = burst.finish(&mut outcome.problems).await?;
        let probe_report = probe.finish(&mut outcome.problems).await?;
        load::check(&burst_name, &burst_report, &mut outcome.problems);
        load::check(&probe_name, &probe_report, &mut outcome.problems);
        runs.push((
            probe_name.clone(),
            crate::scenario::load_figures(&probe_report),
        ));
        runs.push((
            burst_name.clone(),
            crate::scenario::load_figures(&burst_report),
        ));
        names.push(probe_name);
        names.push(burst_name);

        // The report's measured window is at its top level.
        let b = &burst_report;
        let goodput = b["achieved_events_per_min"].as_f64().unwrap_or(0.0);
        let sent_cancels = b["sent_by_kind"]["cancel"].as_u64().unwrap_or(0);
        let shed_cancels = b["shed_by_kind"]["cancel"].as_u64().unwrap_or(0);
        let cancels_admitted = if sent_cancels == 0 {
            1.0
        } else {
            1.0 - shed_cancels as f64 / sent_cancels as f64
        };
        let behind = b["generator_behind"].as_u64().unwrap_or(0);
        let offered = b["offered"].as_u64().unwrap_or(0);
        let recovery = recovery_s(&probe_report, &burst_report);
        let peak = probe_report["peak_rss_mib"].clone();
        let figure = json!({
            "multiple": m,
            "offered_per_min": offered_rate,
            "connections": conns,
            "goodput_per_min": goodput,
            "goodput_of_capacity": goodput / capacity.max(1) as f64,
            "cancels_admitted": cancels_admitted,
            "shed": b["shed"],
            "shed_latency_ms": b["shed_latency_ms"],
            "generator_behind": behind,
            "probe_accept_latency_ms": probe_report["accept_latency_ms"],
            "recovery_s": recovery,
            "peak_rss_mib": peak,
        });
        load::note(&world.dir, &format!("burst {m}x: {figure}"));
        if offered > 0 && behind * 10 > offered {
            load::note(
                &world.dir,
                &format!(
                    "burst {m}x: the generator could not offer {behind} of {offered} commands on \
                     time (this machine, not the system under test, set the offered load)"
                ),
            );
        }
        if goodput < 0.9 * capacity as f64 {
            outcome.problems.push(format!(
                "{m}x: goodput {goodput:.0}/min is below 90% of the capacity {capacity}/min"
            ));
        }
        if cancels_admitted < 0.99 {
            outcome.problems.push(format!(
                "{m}x: {:.2}% of cancels admitted ({shed_cancels} of {sent_cancels} shed)",
                100.0 * cancels_admitted
            ));
        }
        match recovery {
            Some(s) if s <= RECOVERY_LIMIT_S => {}
            Some(s) => outcome.problems.push(format!(
                "{m}x: the probe's latency took {s:.1} s to come back after the burst"
            )),
            None => outcome.problems.push(format!(
                "{m}x: the probe's latency did not come back after the burst"
            )),
        }
        // Flat: no service keeps growing while the overload lasts. More connections hold more
        // buffers (the peak against capacity's is recorded), but over the burst's second half
        // the memory must stay within 20% (plus 32 MiB) of its first half's peak.
        for (service, (first, second)) in halves(&probe_report, &burst_report) {
            if second > 1.2 * first + 32.0 {
                outcome.problems.push(format!(
                    "{m}x: {service} grew from {first:.0} MiB in the burst's first half to \
                     {second:.0} MiB in its second"
                ));
            }
        }
        bursts.push(figure);
        world.settled(Duration::from_secs(60)).await;
    }
    figures.insert("bursts".into(), Value::Array(bursts));

    // 3. Clients that ignore `rate_limited`, beside well-behaved ones.
    let polite_conns = 40.min(shape.accounts / 4);
    let rude_conns = 5;
    let polite_rate = (capacity / 2).min(polite_conns as u64 * PER_CONN_PER_MIN);
    let polite = Load::start(
        plan,
        &world,
        Spec {
            name: "polite",
            gw_port: world.gw_port,
            accounts: 0..polite_conns,
            rate_per_min: polite_rate,
            duration_s: 12,
            extra: vec!["--reconnect".into()],
        },
    )?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Twenty times their connection's limit, answers ignored (the generator is open loop).
    let rude = Load::start(
        plan,
        &world,
        Spec {
            name: "rude",
            gw_port: world.gw_port,
            accounts: polite_conns..polite_conns + rude_conns,
            rate_per_min: rude_conns as u64 * 200 * 20 * 60,
            duration_s: 6,
            extra: Vec::new(),
        },
    )?;
    let rude_report = rude.finish(&mut outcome.problems).await?;
    let polite_report = polite.finish(&mut outcome.problems).await?;
    names.push("polite".into());
    names.push("rude".into());
    runs.push((
        "polite".into(),
        crate::scenario::load_figures(&polite_report),
    ));
    runs.push(("rude".into(), crate::scenario::load_figures(&rude_report)));
    outcome.load = load::combined(&runs);
    load::check("polite", &polite_report, &mut outcome.problems);
    load::check("rude", &rude_report, &mut outcome.problems);
    let cut = rude_report["disconnects"]["abuse"].as_u64().unwrap_or(0);
    let polite_goodput = polite_report["achieved_events_per_min"]
        .as_f64()
        .unwrap_or(0.0);
    let ignorers = json!({
        "polite_connections": polite_conns,
        "polite_offered_per_min": polite_rate,
        "polite_goodput_per_min": polite_goodput,
        "polite_shed": polite_report["shed"],
        "rude_connections": rude_conns,
        "rude_cut_off_for_abuse": cut,
        "rude_disconnects": rude_report["disconnects"],
        "rude_errors": rude_report["errors"],
    });
    load::note(&world.dir, &format!("ignorers: {ignorers}"));
    if cut < rude_conns as u64 {
        outcome.problems.push(format!(
            "{cut} of {rude_conns} clients ignoring rate_limited were cut off"
        ));
    }
    if polite_goodput < 0.9 * polite_rate as f64 {
        // Debug binaries (the test command's form) carry ~45,000/min where release ones carry
        // 1.3M, and the generator offering the ignorers' 20x competes with them for the two
        // cores (in CI, 19,546 of 22,500/min with every ignorer cut).
        crate::scenario::judged_on_release(
            &world,
            outcome,
            format!(
                "the well-behaved clients got {polite_goodput:.0}/min of {polite_rate}/min beside \
                 the ignorers"
            ),
        );
    }
    figures.insert("ignorers".into(), ignorers);
    outcome.injected = Value::Object(figures);

    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    load::join_received(&world, &refs)?;
    crate::scenario::record_settled(outcome, world.settled(crate::scenario::SETTLE_LIMIT).await);
    crate::scenario::conclude(&mut world, &mut [], plan, outcome).await
}

/// Each watched service's peak RSS in the first and in the second half of the burst (from the
/// probe's per-second samples, lined up with the burst's offered seconds on the wall clock).
fn halves(probe: &Value, burst: &Value) -> Vec<(String, (f64, f64))> {
    let offered: Vec<u64> = load::series(burst)
        .iter()
        .filter(|s| s.offered > 0)
        .map(|s| s.unix_ms)
        .collect();
    let (Some(&from), Some(&to)) = (offered.first(), offered.last()) else {
        return Vec::new();
    };
    let middle = from + (to - from) / 2;
    let mut peaks: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for point in probe["series"].as_array().into_iter().flatten() {
        let t = point["unix_ms"].as_u64().unwrap_or(0);
        if t < from || t > to {
            continue;
        }
        for (service, mib) in point["rss_mib"].as_object().into_iter().flatten() {
            let mib = mib.as_f64().unwrap_or(0.0);
            let entry = peaks.entry(service.clone()).or_default();
            if t <= middle {
                entry.0 = entry.0.max(mib);
            } else {
                entry.1 = entry.1.max(mib);
            }
        }
    }
    peaks.into_iter().collect()
}

/// Seconds from the burst's last offered second until the probe's per-second p99 is normal
/// again and stays so: normal is at most twice its worst second before the burst plus 250 ms.
/// `None`: never, while the probe ran. Both series are lined up on the wall clock.
fn recovery_s(probe: &Value, burst: &Value) -> Option<f64> {
    let burst = load::series(burst);
    let first = burst.iter().find(|s| s.offered > 0)?.unix_ms;
    let end = burst.iter().rev().find(|s| s.offered > 0)?.unix_ms;
    let probe = load::series(probe);
    // The second the burst started in is partly before it: leave it out of "before".
    let before = probe
        .iter()
        .filter(|s| s.unix_ms + 1000 < first && s.verdicts > 0)
        .map(|s| s.accept_p99_ms)
        .fold(0.0, f64::max);
    let normal = 2.0 * before + 250.0;
    let after: Vec<&load::Second> = probe
        .iter()
        .filter(|s| s.unix_ms > end && s.verdicts > 0)
        .collect();
    let last = after.last()?;
    match after.iter().rev().find(|s| s.accept_p99_ms > normal) {
        None => Some(0.0),
        Some(bad) if bad.unix_ms < last.unix_ms => Some((bad.unix_ms - end) as f64 / 1000.0),
        Some(_) => None,
    }
}
