//! `loadtest`: parses the configuration, runs the load, prints the summary.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = loadtest::Config::parse();
    let out_dir = config.out_dir.clone();
    let report = loadtest::run(config).await?;
    print!("{}", report.summary());
    println!("report: {}", out_dir.join("report.json").display());
    for chart in &report.charts {
        println!("chart:  {chart}");
    }
    Ok(())
}
