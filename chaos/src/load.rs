//! The load generator as the overload, slow-client and elastic scenarios run it: several at
//! once against one world, each with its own accounts, report and list of acknowledged commands,
//! the lists joined into the one file the audit checks.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::scenario::Plan;
use crate::world::World;

/// How long a run waits for its last answers after its last command: longer than the producer's
/// `message.timeout.ms` (30 s), the longest a command taken while Kafka is down waits for its
/// answer. Only a run with answers still due waits at all.
pub const DRAIN_TIMEOUT_S: u64 = 45;

/// One load generator run: what it offers, and where it writes.
pub struct Load {
    pub name: String,
    pub dir: PathBuf,
    child: Child,
}

/// What one run is asked to do.
pub struct Spec<'a> {
    /// Its directory under the world's (report.json, received.jsonl, logs).
    pub name: &'a str,
    pub gw_port: u16,
    /// Lines `from..to` of the world's accounts file: each connection its own account.
    pub accounts: std::ops::Range<usize>,
    pub rate_per_min: u64,
    pub duration_s: u64,
    /// Extra flags (ramp mode, `--reconnect`, `--watch-pid`, ...).
    pub extra: Vec<String>,
}

impl Load {
    pub fn start(plan: &Plan, world: &World, spec: Spec<'_>) -> Result<Load> {
        let dir = world.dir.join(spec.name);
        std::fs::create_dir_all(&dir)?;
        let accounts = dir.join("accounts.jsonl");
        let all = std::fs::read_to_string(&world.accounts_file)?;
        let lines: Vec<&str> = all.lines().collect();
        if spec.accounts.end > lines.len() {
            bail!(
                "{} wants accounts {:?}, the world has {}",
                spec.name,
                spec.accounts,
                lines.len()
            );
        }
        let mut chosen = lines[spec.accounts.clone()].join("\n");
        chosen.push('\n');
        std::fs::write(&accounts, chosen)?;
        let child = Command::new(plan.bins.join("loadtest"))
            .arg("--url")
            .arg(format!("ws://127.0.0.1:{}/ws", spec.gw_port))
            .arg("--accounts-file")
            .arg(&accounts)
            .args(["--connections", &spec.accounts.len().to_string()])
            .args(["--rate-per-min", &spec.rate_per_min.to_string()])
            .args(["--duration-s", &spec.duration_s.to_string()])
            .args(["--warmup-s", "0", "--quiet"])
            .args(["--drain-timeout-s", &DRAIN_TIMEOUT_S.to_string()])
            .arg("--received-out")
            .arg(dir.join("received.jsonl"))
            .arg("--out-dir")
            .arg(&dir)
            .args(&spec.extra)
            .stdout(std::fs::File::create(dir.join("load.log"))?)
            .stderr(std::fs::File::create(dir.join("load.err.log"))?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start the load generator {}", spec.name))?;
        Ok(Load {
            name: spec.name.to_owned(),
            dir,
            child,
        })
    }

    /// Waits for it to finish: its report (`Null` and a problem when it wrote none).
    pub async fn finish(mut self, problems: &mut Vec<String>) -> Result<Value> {
        let status = self.child.wait().await?;
        let report: Value = std::fs::read_to_string(self.dir.join("report.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        if report.is_null() {
            problems.push(format!(
                "load {} wrote no report ({status}); see {}/load.err.log",
                self.name,
                self.dir.display()
            ));
        }
        Ok(report)
    }
}

/// Joins the runs' acknowledged commands into the world's `received.jsonl` (the audit's
/// `--received`).
pub fn join_received(world: &World, names: &[&str]) -> Result<()> {
    let mut all = Vec::new();
    for name in names {
        let path = world.dir.join(name).join("received.jsonl");
        if let Ok(bytes) = std::fs::read(&path) {
            all.extend_from_slice(&bytes);
        }
    }
    std::fs::write(world.dir.join("received.jsonl"), all)?;
    Ok(())
}

/// The checks every run gets: nothing lost at the client, nobody gave up reconnecting.
pub fn check(name: &str, report: &Value, problems: &mut Vec<String>) {
    if let Some(lost) = report["lost_all_phases"].as_u64()
        && lost > 0
    {
        problems.push(format!(
            "{name}: {lost} commands got no answer at the client"
        ));
    }
    if let Some(gave_up) = report["reconnect"]["gave_up"].as_object()
        && !gave_up.is_empty()
    {
        problems.push(format!(
            "{name}: clients gave up reconnecting: {}",
            Value::Object(gave_up.clone())
        ));
    }
}

/// `NAME=PID` for `--watch-pid`.
pub fn watch(name: &str, pid: Option<i32>) -> Vec<String> {
    pid.map(|p| vec!["--watch-pid".to_owned(), format!("{name}={p}")])
        .unwrap_or_default()
}

/// One second of a report's series.
pub struct Second {
    /// Wall clock at the second's end, ms since the Unix epoch.
    pub unix_ms: u64,
    pub offered: u64,
    pub verdicts: u64,
    pub accept_p99_ms: f64,
}

pub fn series(report: &Value) -> Vec<Second> {
    report["series"]
        .as_array()
        .map(|points| {
            points
                .iter()
                .map(|p| Second {
                    unix_ms: p["unix_ms"].as_u64().unwrap_or(0),
                    offered: p["offered"].as_u64().unwrap_or(0),
                    verdicts: p["verdicts"].as_u64().unwrap_or(0),
                    accept_p99_ms: p["accept_p99_ms"].as_f64().unwrap_or(0.0),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Appends `line` to the scenario's notes file (what the suite measured, for RELIABILITY.md).
pub fn note(dir: &Path, line: &str) {
    use std::io::Write as _;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("notes.txt"))
    {
        let _ = writeln!(f, "{line}");
    }
    println!("chaos:   {line}");
}

/// Several runs' figures as one: each count summed over the runs (the summary table reads
/// these), and each run's own figures under `runs`.
pub fn combined(runs: &[(String, Value)]) -> Value {
    let mut sum = serde_json::Map::new();
    for (_, figures) in runs {
        for (k, v) in figures.as_object().into_iter().flatten() {
            if let Some(n) = v.as_u64() {
                let total = sum.get(k).and_then(Value::as_u64).unwrap_or(0) + n;
                sum.insert(k.clone(), total.into());
            }
        }
    }
    let each: serde_json::Map<String, Value> = runs.iter().cloned().collect();
    sum.insert("runs".into(), Value::Object(each));
    Value::Object(sum)
}
