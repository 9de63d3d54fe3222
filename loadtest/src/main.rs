//! `loadtest`: parses the configuration, runs the load, prints the summary. `loadtest merge
//! REPORT.json...` instead adds up the reports of generators that ran side by side.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// `loadtest merge`: one report from several generators' `report.json` (fixed runs side by
/// side against one system): counts and rates add, latency histograms add exactly.
#[derive(Parser)]
#[command(name = "loadtest merge", bin_name = "loadtest merge")]
struct MergeCli {
    /// The reports, two or more.
    #[arg(required = true, num_args = 2..)]
    reports: Vec<PathBuf>,
    /// Where the merged report is written.
    #[arg(long, default_value = "target/loadtest/merged.json")]
    out: PathBuf,
}

// The services allocate per message on many threads; mimalloc's thread-local heaps keep that
// off the profile, where glibc malloc showed up first.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("merge") {
        let cli = MergeCli::parse_from(std::env::args().skip(1));
        let merged = loadtest::merge::merge(&cli.reports)?;
        print!("{}", merged.summary());
        let json = serde_json::to_string_pretty(&merged)?;
        std::fs::write(&cli.out, json).with_context(|| format!("writing {}", cli.out.display()))?;
        println!("report: {}", cli.out.display());
        return Ok(());
    }
    let config = loadtest::Config::parse();
    let out_dir = config.out_dir.clone();
    // The first SIGINT or SIGTERM ends the schedule and the run finishes (drain, report,
    // `--received-out` flushed); a second one exits at once.
    let (first, first_seen) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        interrupted().await;
        let _ = first.send(());
        interrupted().await;
        eprintln!("loadtest: interrupted again: exiting without the report");
        std::process::exit(INTERRUPTED_EXIT);
    });
    let interrupt = async {
        if first_seen.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let report = loadtest::run_until(config, interrupt).await?;
    print!("{}", report.summary());
    println!("report: {}", out_dir.join("report.json").display());
    for chart in &report.charts {
        println!("chart:  {chart}");
    }
    if report.interrupted {
        std::io::Write::flush(&mut std::io::stdout())?;
        std::process::exit(INTERRUPTED_EXIT);
    }
    Ok(())
}

/// 128 + SIGINT, as a shell reports an interrupted command.
const INTERRUPTED_EXIT: i32 = 130;

/// Completes at the next SIGINT or SIGTERM.
/// Without a handler for one of them, only the other.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => ctrl_c.await,
    }
}
