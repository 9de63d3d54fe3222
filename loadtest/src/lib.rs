//! Open-loop load generator for the trading gateway.
//!
//! Many WebSocket connections, each logged in with its own account, receive commands from one
//! scheduler that computes every command's intended send time from the target rate alone. Each
//! command is followed to exactly one final bucket (engine verdict, gateway error, timeout,
//! lost, or never sent), and latency runs from the scheduled time, so a stall shows up in the
//! percentiles instead of slowing the load down (no coordinated omission).
//!
//! For a fault suite it also writes every command the gateway acknowledged (`--received-out`,
//! [`received`]), and logs in again after the gateway drops a connection (`--reconnect`,
//! [`redial`]).

pub mod accounts;
pub mod chart;
pub mod config;
pub mod conn;
pub mod market;
pub mod merge;
pub mod mix;
pub mod procmem;
pub mod received;
pub mod redial;
pub mod report;
pub mod rng;
pub mod schedule;
pub mod server;
pub mod sockq;
pub mod stats;
pub mod trader;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc::error::TrySendError;

pub use config::{Config, Mode};
pub use report::Report;

use conn::Connection;
use market::Market;
use mix::Mix;
use procmem::Watched;
use received::ReceivedLog;
use report::{Cleanup, PhaseReport, ReconnectReport, ReportBase};
use schedule::Schedule;
use stats::{NotSent, Recorder, Sample};
use trader::{Slot, Trader};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid setting: {0}")]
    Config(String),
    #[error(transparent)]
    Mix(#[from] mix::MixError),
    #[error("cannot read pairs file {path}: {message}")]
    Pairs { path: String, message: String },
    #[error(transparent)]
    Accounts(#[from] accounts::AccountsError),
    #[error("{connected} of {wanted} connections logged in; first failure: {source}")]
    Connect {
        connected: usize,
        wanted: usize,
        source: conn::ConnError,
    },
    #[error("writing the report to {path}: {message}")]
    Output { path: String, message: String },
    #[error(transparent)]
    Chart(#[from] chart::ChartError),
    #[error(transparent)]
    Received(#[from] received::ReceivedError),
}

/// Runs the load test and writes `report.json` and the charts into `config.out_dir`.
pub async fn run(config: Config) -> Result<Report, LoadError> {
    run_until(config, std::future::pending()).await
}

/// [`run`], ended early when `interrupt` completes: no command is offered after it, then the run
/// finishes as usual (the drain, the cleanup, `--received-out` flushed, the report, marked
/// `interrupted`).
pub async fn run_until(
    config: Config,
    interrupt: impl Future<Output = ()> + Send + 'static,
) -> Result<Report, LoadError> {
    let mix = Mix::new(
        config.share_limit,
        config.share_marketable,
        config.share_cancel,
        config.share_amend,
    )?;
    validate(&config)?;
    let pairs_text = std::fs::read_to_string(&config.pairs_file).map_err(|e| LoadError::Pairs {
        path: config.pairs_file.display().to_string(),
        message: e.to_string(),
    })?;
    let registry =
        protocol::PairRegistry::from_toml(&pairs_text).map_err(|e| LoadError::Pairs {
            path: config.pairs_file.display().to_string(),
            message: e.to_string(),
        })?;
    let accounts = accounts::load(&config.accounts_file)?;
    if accounts.len() < config.connections {
        return Err(LoadError::Config(format!(
            "{} connections need as many accounts, {} has {}",
            config.connections,
            config.accounts_file.display(),
            accounts.len()
        )));
    }
    let watched: Vec<Watched> = config
        .watch_pids
        .iter()
        .map(|s| {
            procmem::parse_watch(s)
                .ok_or_else(|| LoadError::Config(format!("--watch-pid {s:?} is not NAME=PID")))
        })
        .collect::<Result<_, _>>()?;
    let scraper = if config.metrics_urls.is_empty() {
        None
    } else {
        let s = server::Scraper::new(&config.metrics_urls)
            .map_err(|e| LoadError::Config(format!("--metrics-url {e}")))?;
        Some(Arc::new(s))
    };
    std::fs::create_dir_all(&config.out_dir).map_err(|e| LoadError::Output {
        path: config.out_dir.display().to_string(),
        message: e.to_string(),
    })?;

    let t0 = Instant::now();
    let recorder = Arc::new(Recorder::new(t0));
    let market = Arc::new(Market::new(&registry));
    let received = match &config.received_out {
        None => None,
        Some(path) => {
            let symbols = market.pairs.iter().map(|p| p.spec.symbol.clone()).collect();
            Some(ReceivedLog::create(path, symbols)?)
        }
    };
    let conns = connect_all(
        &config,
        &accounts,
        market,
        recorder.clone(),
        t0,
        received.as_ref(),
    )
    .await?;
    say(&config, &format!("{} connections logged in", conns.len()));
    recorder.links_up(conns.len());
    let interrupted = Arc::new(AtomicBool::new(false));
    let watch_interrupt = {
        let interrupted = interrupted.clone();
        let quiet = config.quiet;
        tokio::spawn(async move {
            interrupt.await;
            interrupted.store(true, Ordering::Relaxed);
            if !quiet {
                eprintln!("loadtest: interrupted: no new commands; draining, then the report");
            }
        })
    };

    // The load generator's own CPU is part of the picture on a shared machine.
    let mut cpu_watched = watched.clone();
    cpu_watched.push(Watched {
        name: "loadtest".into(),
        pid: std::process::id(),
    });
    let cpu = Arc::new(std::sync::Mutex::new(procmem::CpuSampler::new(cpu_watched)));
    let sockets = Arc::new(sockq::Conns::new(conns.iter().filter_map(|c| c.addrs)));
    let scraping = scraper
        .clone()
        .map(|s| tokio::spawn(s.run(recorder.clone())));
    let probes = Probes {
        watched: watched.clone(),
        cpu,
        sockets,
    };
    let ticker = tokio::spawn(progress(recorder.clone(), probes.clone(), config.quiet));
    let mut driver = Driver {
        conns: &conns,
        recorder: &recorder,
        config: &config,
        mix,
        next_conn: 0,
        interrupted: &interrupted,
    };
    let (measured, highest) = match config.mode {
        Mode::Fixed => {
            if config.warmup_s > 0 {
                driver
                    .phase("warmup", config.rate_per_min, config.warmup_s)
                    .await;
            }
            let m = driver
                .phase("measure", config.rate_per_min, config.duration_s)
                .await;
            (m, None)
        }
        Mode::Ramp => driver.ramp().await,
    };

    drain(
        &recorder,
        &conns,
        Duration::from_secs(config.drain_timeout_s),
    )
    .await;
    watch_interrupt.abort();
    recorder.stop_link_clock(Instant::now());
    ticker.abort();
    recorder.tick(probes.sample());
    if let (Some(s), Some(task)) = (&scraper, scraping) {
        // The last, partial second gets its round too.
        task.abort();
        s.round(recorder.elapsed_s(), recorder.current_phase())
            .await;
    }
    // Every connection cancels what its account still has resting, unless told to keep it.
    let cleanup = !config.keep_orders;
    let answers = futures_util::future::join_all(conns.into_iter().map(|c| c.close(cleanup))).await;
    // Every reader has stopped: what they acknowledged is queued for the file.
    let received_out = match received {
        Some(log) => Some(log.finish().await?),
        None => None,
    };

    let snapshot = recorder.snapshot();
    let mut report = Report::build(
        &snapshot,
        config.mode,
        measured,
        ReportBase {
            arrival: config.arrival,
            url: config.url.clone(),
            connections: config.connections,
            seed: config.seed,
            slo_p99_ms: config.slo_p99_ms,
            warmup_s: config.warmup_s,
        },
    );
    if config.mode == Mode::Ramp {
        mark_ramp_steps(&mut report, &config);
        report.measured.passed = report.phases[measured].passed;
    }
    report.highest_passing_events_per_min = highest;
    report.server = scraper.map(|s| {
        let phases: Vec<String> = report.phases.iter().map(|p| p.phase.clone()).collect();
        s.report(&phases, &report.measured.phase)
    });
    report.cleanup = cleanup.then(|| Cleanup::count(answers));
    report.received_out = received_out;
    report.interrupted = interrupted.load(Ordering::Relaxed);
    report.reconnect = config
        .reconnect
        .then(|| ReconnectReport::of(&snapshot.links));
    report.peak_rss_mib = watched
        .iter()
        .filter_map(|w| procmem::read_mib(w.pid, "VmHWM").map(|m| (w.name.clone(), m)))
        .collect();
    let server_series = report.server.as_ref().map_or(&[][..], |s| &s.series[..]);
    let charts = chart::draw_all(&config.out_dir, &report.series, server_series)?;
    report.charts = charts.iter().map(|p| p.display().to_string()).collect();
    let path = config.out_dir.join("report.json");
    let json = serde_json::to_string_pretty(&report).expect("reports serialize");
    std::fs::write(&path, json).map_err(|e| LoadError::Output {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(report)
}

fn validate(c: &Config) -> Result<(), LoadError> {
    let bad = |m: &str| Err(LoadError::Config(m.to_owned()));
    if c.connections == 0 {
        return bad("--connections must be at least 1");
    }
    if c.mode == Mode::Fixed && (c.rate_per_min == 0 || c.duration_s == 0) {
        return bad("--rate-per-min and --duration-s must be positive");
    }
    if c.mode == Mode::Ramp
        && (c.ramp_start_per_min == 0 || c.ramp_step_per_min == 0 || c.ramp_step_s == 0)
    {
        return bad("--ramp-start-per-min, --ramp-step-per-min and --ramp-step-s must be positive");
    }
    if c.queue_depth == 0 || c.connect_parallel == 0 {
        return bad("--queue-depth and --connect-parallel must be positive");
    }
    Ok(())
}

fn say(config: &Config, line: &str) {
    if !config.quiet {
        eprintln!("loadtest: {line}");
    }
}

async fn connect_all(
    config: &Config,
    accounts: &[accounts::Account],
    market: Arc<Market>,
    recorder: Arc<Recorder>,
    t0: Instant,
    received: Option<&ReceivedLog>,
) -> Result<Vec<Connection>, LoadError> {
    let timeout = Duration::from_millis(config.login_timeout_ms);
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let results: Vec<(usize, Result<conn::Ws, conn::ConnError>)> =
        futures_util::stream::iter(0..config.connections)
            .map(|i| {
                let account = &accounts[i];
                let nonce = format!("lt-{started_ms:x}-{i}");
                async move {
                    // A gateway bounding its new connections per second answers 503 with
                    // Retry-After: wait as asked, as a client should (at most 20 times).
                    let mut tries = 0;
                    loop {
                        let result = conn::connect(&config.url, account, &nonce, timeout).await;
                        match result.as_ref().err().and_then(conn::retry_after) {
                            Some(wait) if tries < 20 => {
                                tries += 1;
                                tokio::time::sleep(wait).await;
                            }
                            _ => return (i, result),
                        }
                    }
                }
            })
            .buffer_unordered(config.connect_parallel)
            .collect()
            .await;
    let wanted = results.len();
    let mut ok = Vec::with_capacity(wanted);
    let mut first_err = None;
    for (i, r) in results {
        match r {
            Ok(ws) => ok.push((i, ws)),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(source) = first_err {
        return Err(LoadError::Connect {
            connected: ok.len(),
            wanted,
            source,
        });
    }
    ok.sort_by_key(|(i, _)| *i);
    Ok(ok
        .into_iter()
        .map(|(i, ws)| {
            let seed = config.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let trader = Trader::new(market.clone(), t0, seed, config.live_orders_max, 1);
            let options = conn::Options {
                received: received.map(ReceivedLog::sender),
                redial: config.reconnect.then(|| conn::Redial {
                    url: config.url.clone(),
                    account: accounts[i].clone(),
                    index: i,
                    login_timeout: timeout,
                    seed: seed.rotate_left(17),
                    quiet: config.quiet,
                }),
            };
            Connection::spawn(ws, trader, recorder.clone(), config.queue_depth, options)
        })
        .collect())
}

struct Driver<'a> {
    conns: &'a [Connection],
    recorder: &'a Arc<Recorder>,
    config: &'a Config,
    mix: Mix,
    next_conn: usize,
    /// Set when the run is interrupted: the phase under way ends, and no other begins.
    interrupted: &'a AtomicBool,
}

impl Driver<'_> {
    /// Offers commands at `rate_per_min` for `duration_s`, round-robin over the connections.
    async fn phase(&mut self, name: &str, rate_per_min: u64, duration_s: u64) -> usize {
        let phase = self
            .recorder
            .begin_phase(name, rate_per_min, duration_s as f64);
        let seed = self.config.seed.wrapping_add(phase as u64 * 1_000_003);
        let mut schedule = Schedule::new(rate_per_min as f64 / 60.0, self.config.arrival, seed);
        let mut rng = rng::Rng::new(seed ^ 0xA5A5);
        let end_ns = duration_s * 1_000_000_000;
        let start = Instant::now();
        loop {
            if self.interrupted.load(Ordering::Relaxed) {
                self.recorder.cut_phase(phase, start.elapsed());
                break;
            }
            let t_ns = schedule.next_ns();
            if t_ns >= end_ns {
                break;
            }
            let scheduled = start + Duration::from_nanos(t_ns);
            if scheduled > Instant::now() {
                tokio::time::sleep_until(scheduled.into()).await;
            }
            let slot = Slot {
                scheduled,
                kind: self.mix.pick(&mut rng),
                phase,
            };
            let conn = &self.conns[self.next_conn];
            self.next_conn = (self.next_conn + 1) % self.conns.len();
            let not_sent = match conn.queue.try_send(slot) {
                Ok(()) => None,
                Err(TrySendError::Full(_)) => Some(NotSent::GeneratorBehind),
                Err(TrySendError::Closed(_)) => Some(NotSent::ConnectionClosed),
            };
            self.recorder.offered(phase, not_sent);
        }
        phase
    }

    /// Steps the rate up until a step fails; returns the phase to report (the highest passing
    /// step, or the first) and the highest passing rate.
    async fn ramp(&mut self) -> (usize, Option<u64>) {
        let c = self.config;
        if c.warmup_s > 0 {
            self.phase("warmup", c.ramp_start_per_min, c.warmup_s).await;
        }
        let mut best: Option<(usize, u64)> = None;
        let mut first = None;
        let mut rate = c.ramp_start_per_min;
        while rate <= c.ramp_max_per_min && !self.interrupted.load(Ordering::Relaxed) {
            let name = format!("ramp-{rate}");
            let phase = self.phase(&name, rate, c.ramp_step_s).await;
            first.get_or_insert(phase);
            // Let the step's commands finish before judging it (the load pauses meanwhile).
            let deadline = Instant::now() + Duration::from_secs(c.drain_timeout_s);
            while self.recorder.outstanding(phase) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let stats = PhaseReport::of(&self.recorder.snapshot().phases[phase]);
            let passed = step_passes(&stats, self.recorder.outstanding(phase), c);
            say(
                c,
                &format!(
                    "step {rate}/min: p99 accept {:.2} ms, shed {:.3}% -> {}",
                    stats.accept_latency_ms.p99,
                    100.0 * stats.shed_share(),
                    if passed { "pass" } else { "fail" }
                ),
            );
            if !passed {
                break;
            }
            best = Some((phase, rate));
            rate += c.ramp_step_per_min;
        }
        match best {
            Some((phase, rate)) => (phase, Some(rate)),
            None => (first.unwrap_or(0), None),
        }
    }
}

/// A ramp step passes when every command was answered, p99 accept latency is within the SLO and
/// at most `shed_max` of the commands were shed or could not be sent.
pub fn step_passes(step: &PhaseReport, outstanding: u64, c: &Config) -> bool {
    outstanding == 0
        && step.verdicts > 0
        && step.accept_latency_ms.p99 <= c.slo_p99_ms
        && step.shed_share() <= c.shed_max
}

fn mark_ramp_steps(report: &mut Report, c: &Config) {
    for p in &mut report.phases {
        if p.phase.starts_with("ramp-") {
            p.passed = Some(step_passes(p, p.lost + p.timeouts, c));
        }
    }
}

/// Waits until every command has its final response or the deadline passes; whatever is still
/// open then ends as a timeout (acknowledged, no verdict) or lost (no response at all).
async fn drain(recorder: &Recorder, conns: &[Connection], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while recorder.outstanding_all() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut obs = Vec::new();
    let now = Instant::now();
    for c in conns {
        conn::lock(&c.trader).give_up(&mut obs);
        for o in obs.drain(..) {
            recorder.observe(&o, now);
        }
    }
}

/// What the generator reads from outside itself each second.
#[derive(Clone)]
struct Probes {
    watched: Vec<Watched>,
    cpu: Arc<std::sync::Mutex<procmem::CpuSampler>>,
    sockets: Arc<sockq::Conns>,
}

impl Probes {
    fn sample(&self) -> Sample {
        Sample {
            rss_mib: self
                .watched
                .iter()
                .filter_map(|w| procmem::read_mib(w.pid, "VmRSS").map(|m| (w.name.clone(), m)))
                .collect(),
            cpu: self.cpu.lock().unwrap_or_else(|e| e.into_inner()).sample(),
            unread: self.sockets.sample(),
        }
    }
}

/// Closes a second every second and prints the progress line.
async fn progress(recorder: Arc<Recorder>, probes: Probes, quiet: bool) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.tick().await;
    loop {
        interval.tick().await;
        let p = recorder.tick(probes.sample());
        if !quiet {
            eprintln!(
                "[{:>6.1}s {:<14}] offered {:>6}/s  acked {:>6}/s  verdicts {:>6}/s  accepted {:>6}/s  shed {:>5}/s  behind {:>4}  p99 accept {:>8.2} ms  outstanding {}",
                p.t_s,
                p.phase,
                p.offered,
                p.acknowledged,
                p.verdicts,
                p.accepted,
                p.shed,
                p.not_sent,
                p.accept_p99_ms,
                p.outstanding
            );
        }
    }
}
