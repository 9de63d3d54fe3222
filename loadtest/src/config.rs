//! What a run is told: flags with environment fallbacks (`loadtest --help`).

use std::path::PathBuf;

use crate::schedule::Arrival;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One rate for `--duration-s` after `--warmup-s`.
    Fixed,
    /// Step the rate up until the SLO or the shed budget breaks; report the highest passing rate.
    Ramp,
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "loadtest",
    about = "Open-loop WebSocket load generator for the trading gateway",
    after_help = "To add up the reports of generators run side by side: loadtest merge REPORT.json... (see loadtest merge --help)",
    // The last of a repeated flag wins, so `scripts/run`'s defaults yield to flags after `--`.
    args_override_self = true
)]
pub struct Config {
    /// Gateway WebSocket URL.
    #[arg(long, env = "LOADTEST_URL", default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Accounts as `gateway provision` writes them (JSON lines: key_id, secret, account_id).
    #[arg(
        long,
        env = "LOADTEST_ACCOUNTS_FILE",
        default_value = "target/loadtest/accounts.jsonl"
    )]
    pub accounts_file: PathBuf,
    /// WebSocket connections, each logged in with its own account.
    #[arg(long, env = "LOADTEST_CONNECTIONS", default_value_t = 200)]
    pub connections: usize,
    /// Target commands per minute (fixed mode).
    #[arg(long, env = "LOADTEST_RATE_PER_MIN", default_value_t = 1_600_000)]
    pub rate_per_min: u64,
    /// Measured window, in seconds (fixed mode).
    #[arg(long, env = "LOADTEST_DURATION_S", default_value_t = 60)]
    pub duration_s: u64,
    /// Unmeasured load before the window, at the same rate (fixed) or the first step (ramp).
    #[arg(long, env = "LOADTEST_WARMUP_S", default_value_t = 5)]
    pub warmup_s: u64,
    #[arg(long, value_enum, env = "LOADTEST_MODE", default_value_t = Mode::Fixed)]
    pub mode: Mode,
    #[arg(long, value_enum, env = "LOADTEST_ARRIVAL", default_value_t = Arrival::Constant)]
    pub arrival: Arrival,
    /// Ramp: p99 accept latency above this fails a step.
    #[arg(long, env = "LOADTEST_SLO_P99_MS", default_value_t = 50.0)]
    pub slo_p99_ms: f64,
    /// Ramp: a step fails when more than this share of its commands is shed or not sent.
    #[arg(long, default_value_t = 0.01)]
    pub shed_max: f64,
    #[arg(long, default_value_t = 400_000)]
    pub ramp_start_per_min: u64,
    #[arg(long, default_value_t = 400_000)]
    pub ramp_step_per_min: u64,
    #[arg(long, default_value_t = 6_000_000)]
    pub ramp_max_per_min: u64,
    #[arg(long, default_value_t = 15)]
    pub ramp_step_s: u64,
    /// Share of GTC limit orders resting near the mid.
    #[arg(long, default_value_t = 0.60)]
    pub share_limit: f64,
    /// Share of IOC orders through the mid (they trade).
    #[arg(long, default_value_t = 0.05)]
    pub share_marketable: f64,
    /// Share of cancels of the connection's own resting orders.
    #[arg(long, default_value_t = 0.25)]
    pub share_cancel: f64,
    /// Share of amends of the connection's own resting orders.
    #[arg(long, default_value_t = 0.10)]
    pub share_amend: f64,
    /// Resting orders one connection keeps at most; at the bound a limit order becomes a cancel.
    #[arg(long, default_value_t = 500)]
    pub live_orders_max: usize,
    #[arg(long, env = "PAIRS_FILE", default_value = "config/pairs.toml")]
    pub pairs_file: PathBuf,
    /// Where report.json and the charts go.
    #[arg(long, env = "LOADTEST_OUT_DIR", default_value = "target/loadtest")]
    pub out_dir: PathBuf,
    /// After the last command is due, wait this long for every final response.
    #[arg(long, env = "LOADTEST_DRAIN_TIMEOUT_S", default_value_t = 30)]
    pub drain_timeout_s: u64,
    /// Leave the connections' resting orders on the books at the end. By default each
    /// connection sends `cancel_all` after the drain, so a run leaves no book for the next.
    #[arg(long)]
    pub keep_orders: bool,
    /// Slots one connection may have queued before the generator counts itself behind.
    #[arg(long, default_value_t = 256)]
    pub queue_depth: usize,
    /// Logins in flight at once while connecting.
    #[arg(long, default_value_t = 50)]
    pub connect_parallel: usize,
    #[arg(long, default_value_t = 10_000)]
    pub login_timeout_ms: u64,
    /// Seed of the schedule and the order flow.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Processes whose memory to sample, as NAME=PID (repeatable): RSS per second, peak at the end.
    #[arg(long = "watch-pid", value_name = "NAME=PID")]
    pub watch_pids: Vec<String>,
    /// A service's Prometheus endpoint to scrape once a second (repeatable; the environment
    /// variable takes a comma-separated list): shed by reason, consumer lag and each hop's
    /// latency go into the report beside the client's (docs/METRICS.md).
    #[arg(
        long = "metrics-url",
        value_name = "http://HOST:PORT/metrics",
        env = "LOADTEST_METRICS_URLS",
        value_delimiter = ','
    )]
    pub metrics_urls: Vec<String>,
    /// Write one JSON line per command the gateway acknowledged with `received` (every phase):
    /// `{"order_id", "pair", "kind"}`, the file `audit --received` checks for verdicts.
    #[arg(long, value_name = "FILE", env = "LOADTEST_RECEIVED_OUT")]
    pub received_out: Option<PathBuf>,
    /// A connection the gateway drops logs in again (100 ms doubling to 2 s between attempts,
    /// with jitter) and goes on with its schedule. What was in flight counts as connection
    /// closed. A final close (abuse) or 3 login refusals in a row end it for the run.
    #[arg(long)]
    pub reconnect: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Config;

    #[test]
    fn metrics_urls_repeat_and_split_on_commas() {
        let c = Config::parse_from([
            "loadtest",
            "--metrics-url",
            "http://gw:8080/metrics",
            "--metrics-url=http://engine:9100/metrics,http://accounts:9102/metrics",
        ]);
        assert_eq!(
            c.metrics_urls,
            [
                "http://gw:8080/metrics",
                "http://engine:9100/metrics",
                "http://accounts:9102/metrics"
            ]
        );
        assert!(Config::parse_from(["loadtest"]).metrics_urls.is_empty());
    }

    #[test]
    fn received_out_and_reconnect_are_off_unless_asked() {
        let c = Config::parse_from(["loadtest"]);
        assert_eq!((c.received_out, c.reconnect), (None, false));
        let c = Config::parse_from(["loadtest", "--received-out", "r.jsonl", "--reconnect"]);
        assert_eq!(
            c.received_out.as_deref(),
            Some(std::path::Path::new("r.jsonl"))
        );
        assert!(c.reconnect);
    }
}
