//! `loadtest`: parses the configuration, runs the load, prints the summary.

use clap::Parser;

// The services allocate per message on many threads; mimalloc's thread-local heaps keep that
// off the profile, where glibc malloc showed up first.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
