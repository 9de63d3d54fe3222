//! `chaos`: the fault suite (docs/RELIABILITY.md). Each scenario gets its own topics and schema,
//! drives the real services with the load generator, injects its fault, lets the system recover
//! by itself (the suite only starts a killed process again, as ECS would), then runs the audit
//! over what the scenario wrote. Prints a table and writes `summary.json`; exits non-zero on any
//! violation. Run through `scripts/chaos`, which builds the binaries and brings the stack up.

mod elastic;
mod inject;
mod load;
mod net;
mod overload;
mod procs;
mod scenario;
mod scrape;
mod slow;
mod world;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

use scenario::{Form, Scenario};

#[derive(Parser, Debug)]
#[command(about = "Faults under load, recovery, and the audit of every guarantee")]
struct Cli {
    /// `short` (CI: a few minutes in all) or `long` (more faults, longer load).
    #[arg(long, value_enum, default_value_t = Form::Short)]
    form: Form,
    /// Scenarios to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: String,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Where the release binaries are (engine, gateway, accounts, loadtest, audit).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    #[arg(long, default_value = "target/chaos")]
    out_dir: PathBuf,
    /// The offered load in commands per minute (default: the form's).
    #[arg(long)]
    rate_per_min: Option<u64>,
    /// Seconds of load per scenario (default: the form's).
    #[arg(long)]
    duration_s: Option<u64>,
    /// Seed of the fault times (default: from the clock; printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    infra::telemetry::init_tracing_with_default("warn");
    std::fs::create_dir_all(&cli.out_dir)?;
    let scenarios = if cli.scenarios.is_empty() {
        Scenario::all().to_vec()
    } else {
        cli.scenarios.clone()
    };
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let plan = scenario::Plan {
        form: cli.form,
        rate_per_min: cli.rate_per_min.unwrap_or(cli.form.rate_per_min()),
        duration_s: cli.duration_s.unwrap_or(cli.form.duration_s()),
        connections: cli.form.connections(),
        bins: cli.bin_dir.clone(),
        out: cli.out_dir.clone(),
        brokers: cli.brokers.clone(),
        database_url: cli.database_url.clone(),
        seed,
    };
    println!(
        "chaos: {} form, {} scenarios, {} commands/min for {} s each, seed {seed}",
        cli.form.name(),
        scenarios.len(),
        plan.rate_per_min,
        plan.duration_s
    );
    let mut outcomes = Vec::new();
    for s in scenarios {
        println!("chaos: scenario {} ...", s.name());
        let outcome = scenario::run(s, &plan).await;
        println!("{}", outcome.line());
        outcomes.push(outcome);
    }
    let table = scenario::table(&outcomes);
    println!("\n{table}");
    let summary = serde_json::json!({
        "form": cli.form.name(),
        "seed": seed,
        "rate_per_min": plan.rate_per_min,
        "duration_s": plan.duration_s,
        "connections": plan.connections,
        "scenarios": outcomes,
    });
    let path = cli.out_dir.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    std::fs::write(cli.out_dir.join("summary.md"), &table)?;
    println!("chaos: {} and summary.md written", path.display());
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| o.scenario.as_str())
        .collect();
    if failed.is_empty() {
        println!("chaos: every scenario passed");
        Ok(())
    } else {
        // Last, so that a log's tail (all CI keeps) says why, not only which.
        for o in outcomes.iter().filter(|o| !o.passed) {
            for problem in &o.problems {
                eprintln!("chaos: {}: {problem}", o.scenario);
            }
        }
        eprintln!("chaos: FAILED: {}", failed.join(", "));
        std::process::exit(1);
    }
}
