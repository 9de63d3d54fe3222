//! Accounting and latency. Every scheduled command ends in exactly one bucket, and latency is
//! measured from the command's scheduled time.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use protocol::ws::ErrorCode;
use protocol::{CommandKind, RejectReason};
use serde::Serialize;

use crate::mix::Kind;
use crate::procmem::{CpuShare, round1};
use crate::received::Receipt;
use crate::sockq::{self, Unread};

/// Highest latency a histogram holds, in microseconds (one hour); above it values saturate.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Why a scheduled command was never written to a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSent {
    /// The connection's bounded send queue was full: the generator fell behind its schedule.
    GeneratorBehind,
    /// The connection had closed.
    ConnectionClosed,
}

/// How one command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `received` and then the engine's success verdict (accepted, done, amended).
    Accepted,
    /// `received` and then the engine's rejection.
    EngineRejected(RejectReason),
    /// `received` and then the account stage's refusal (`insufficient_funds`, ...): a
    /// `rejected` push with `shard` and `accounts_offset` instead of `seq`.
    StageRejected(ErrorCode),
    /// An error response from the gateway (including `overloaded` and `rate_limited`).
    GatewayRejected(ErrorCode),
    /// `received`, but no verdict before the drain deadline.
    Timeout,
    /// No response of any kind before the drain deadline.
    Lost,
    /// Written, but the gateway closed the connection before reading it, and said so.
    UnreadAtClose,
    /// Written, and the connection dropped before its final answer (`--reconnect`): unresolved
    /// at the client, not waited for. Its verdict may exist all the same (the audit finds it
    /// through `--received-out` when it was acknowledged).
    ClosedInFlight,
    NotSent(NotSent),
}

/// The stable code of an error, as the API serializes it.
pub fn code_name(code: ErrorCode) -> String {
    match code {
        ErrorCode::Order(r) => r.code().to_owned(),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{other:?}")),
    }
}

pub fn is_shed(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Overloaded | ErrorCode::RateLimited)
}

/// The final bucket of every command of a phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Buckets {
    pub accepted: u64,
    /// Engine rejections by code.
    pub engine_rejected: BTreeMap<String, u64>,
    /// Account stage refusals by code (only with the stage on).
    pub stage_rejected: BTreeMap<String, u64>,
    /// Gateway error responses by code (`overloaded`, `rate_limited`, ...).
    pub gateway_rejected: BTreeMap<String, u64>,
    pub timeouts: u64,
    pub lost: u64,
    pub unread_at_close: u64,
    pub generator_behind: u64,
    /// Not sent: the connection was closed.
    pub connection_closed: u64,
    /// Sent, and open when the connection dropped ([`Outcome::ClosedInFlight`]).
    pub closed_in_flight: u64,
}

impl Buckets {
    pub fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Accepted => self.accepted += 1,
            Outcome::EngineRejected(r) => {
                *self.engine_rejected.entry(r.code().into()).or_default() += 1
            }
            Outcome::StageRejected(c) => *self.stage_rejected.entry(code_name(c)).or_default() += 1,
            Outcome::GatewayRejected(c) => {
                *self.gateway_rejected.entry(code_name(c)).or_default() += 1
            }
            Outcome::Timeout => self.timeouts += 1,
            Outcome::Lost => self.lost += 1,
            Outcome::UnreadAtClose => self.unread_at_close += 1,
            Outcome::ClosedInFlight => self.closed_in_flight += 1,
            Outcome::NotSent(NotSent::GeneratorBehind) => self.generator_behind += 1,
            Outcome::NotSent(NotSent::ConnectionClosed) => self.connection_closed += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.accepted
            + self.engine_rejected.values().sum::<u64>()
            + self.stage_rejected.values().sum::<u64>()
            + self.gateway_rejected.values().sum::<u64>()
            + self.timeouts
            + self.lost
            + self.unread_at_close
            + self.generator_behind
            + self.connection_closed
            + self.closed_in_flight
    }

    /// `overloaded` + `rate_limited`.
    pub fn shed(&self) -> u64 {
        ["overloaded", "rate_limited"]
            .iter()
            .map(|c| self.gateway_rejected.get(*c).copied().unwrap_or(0))
            .sum()
    }

    /// Every error and rejection by code, gateway, account stage and engine together.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        let mut all = self.gateway_rejected.clone();
        for (code, n) in self.engine_rejected.iter().chain(&self.stage_rejected) {
            *all.entry(code.clone()).or_default() += n;
        }
        all
    }
}

/// p50/p90/p99/p99.9/max in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds; all zero when it is empty.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Significant digits of a phase's latency histograms (what `loadtest merge` adds up).
pub const LATENCY_DIGITS: u8 = 3;

pub fn latency_histogram(significant_digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, significant_digits)
        .expect("static histogram bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// One phase of a run: a warm-up, the measured window, or one ramp step.
#[derive(Debug, Clone)]
pub struct PhaseStats {
    pub name: String,
    pub rate_per_min: u64,
    pub duration_s: f64,
    pub started: Instant,
    pub offered: u64,
    pub sent_by_kind: BTreeMap<Kind, u64>,
    /// Commands sent as another kind than drawn (no own order to cancel, or too many resting).
    pub substituted: u64,
    pub acknowledged: u64,
    pub verdicts: u64,
    pub buckets: Buckets,
    pub ack_us: Histogram<u64>,
    pub accept_us: Histogram<u64>,
    /// From a command's scheduled time to the generator writing it: the generator's own delay,
    /// which both latencies include.
    pub send_lag_us: Histogram<u64>,
    /// From a command's scheduled time to its shed answer (`overloaded`, `rate_limited`).
    pub shed_us: Histogram<u64>,
    /// Shed commands by what they were (`place`, `cancel`, `cancel_all`, `amend`).
    pub shed_by_kind: BTreeMap<CommandKind, u64>,
    pub last_verdict: Option<Instant>,
    pub trades: u64,
    pub fills: u64,
    /// Connections that logged in again after a drop while this phase ran (`--reconnect`).
    pub reconnects: u64,
}

impl PhaseStats {
    fn new(name: &str, rate_per_min: u64, duration_s: f64, started: Instant) -> PhaseStats {
        PhaseStats {
            name: name.to_owned(),
            rate_per_min,
            duration_s,
            started,
            offered: 0,
            sent_by_kind: BTreeMap::new(),
            substituted: 0,
            acknowledged: 0,
            verdicts: 0,
            buckets: Buckets::default(),
            ack_us: latency_histogram(LATENCY_DIGITS),
            accept_us: latency_histogram(LATENCY_DIGITS),
            send_lag_us: latency_histogram(LATENCY_DIGITS),
            shed_us: latency_histogram(LATENCY_DIGITS),
            shed_by_kind: BTreeMap::new(),
            last_verdict: None,
            trades: 0,
            fills: 0,
            reconnects: 0,
        }
    }

    /// Commands offered and not yet in a bucket.
    pub fn outstanding(&self) -> u64 {
        self.offered.saturating_sub(self.buckets.total())
    }

    /// Engine verdicts per minute, over the window or until the last verdict arrived if that
    /// was later: a lagging engine cannot look faster than it was.
    pub fn achieved_per_min(&self) -> f64 {
        let until_last = self
            .last_verdict
            .map_or(0.0, |t| t.duration_since(self.started).as_secs_f64());
        let span_s = self.duration_s.max(until_last);
        if span_s <= 0.0 {
            0.0
        } else {
            self.verdicts as f64 * 60.0 / span_s
        }
    }
}

/// One second of the run, for the progress line, the report's series and the charts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SecondPoint {
    /// When the second closed, in seconds since the start (the last one may be partial).
    pub t_s: f64,
    /// The same moment on the wall clock (ms since the Unix epoch), to line up runs side by
    /// side (the fault suite's probe beside its burst).
    pub unix_ms: u64,
    pub phase: String,
    pub offered: u64,
    pub acknowledged: u64,
    pub verdicts: u64,
    pub accepted: u64,
    pub shed: u64,
    pub errors: u64,
    pub not_sent: u64,
    pub outstanding: u64,
    pub ack_p99_ms: f64,
    pub accept_p50_ms: f64,
    /// The mean, to set beside the server's means (`server`).
    pub accept_mean_ms: f64,
    pub accept_p90_ms: f64,
    pub accept_p99_ms: f64,
    pub accept_max_ms: f64,
    /// Resident memory of the watched processes, in MiB.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rss_mib: BTreeMap<String, f64>,
    /// CPU of the watched processes (with their descendants), percent of one core.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub cpu_pct: BTreeMap<String, f64>,
    /// The whole machine busy, and stolen by the hypervisor, percent of all its cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_busy_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steal_pct: Option<f64>,
    /// Input waiting unread in the connections' sockets at the end of the second, in KiB:
    /// `generator` (answers it has not read yet) and `gateway` (commands, when the gateway runs
    /// on this machine).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unread_kib: BTreeMap<String, f64>,
    /// The same backlogs in milliseconds of that side's input over the second
    /// ([`sockq::backlog_ms`]): roughly how long a byte arriving then waits to be read.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unread_ms: BTreeMap<String, f64>,
}

/// What the generator samples from outside itself once a second.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Resident memory of the watched processes, in MiB.
    pub rss_mib: BTreeMap<String, f64>,
    pub cpu: CpuShare,
    pub unread: Option<Unread>,
}

#[derive(Debug)]
struct Inner {
    t0: Instant,
    phases: Vec<PhaseStats>,
    second: SecondPoint,
    second_ack_us: Histogram<u64>,
    second_accept_us: Histogram<u64>,
    series: Vec<SecondPoint>,
    disconnects: BTreeMap<String, u64>,
    links: Links,
    /// When the last second closed.
    last_tick: Instant,
}

/// The connections' drops and logins again (`--reconnect`).
#[derive(Debug, Default)]
struct Links {
    reconnects: u64,
    connected: usize,
    /// Since when no connection is logged in, while that lasts.
    none_since: Option<Instant>,
    none: Duration,
    /// Stopped at the end of the run: closing the connections is not an outage.
    stopped: bool,
    gave_up: BTreeMap<String, u64>,
}

/// What [`Links`] add up to over the run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkStats {
    pub reconnects: u64,
    /// Time with no connection logged in.
    pub no_client_connected: Duration,
    /// Connections that stopped trying, by why.
    pub gave_up: BTreeMap<String, u64>,
}

/// Shared by every connection task; one short critical section per observation.
#[derive(Debug)]
pub struct Recorder {
    inner: Mutex<Inner>,
    /// Payload bytes written and read over the current second (the frames' few header bytes
    /// aside): each side's input rate, to turn its unread backlog into time.
    wrote_bytes: AtomicU64,
    read_bytes: AtomicU64,
}

/// A snapshot of everything recorded.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub phases: Vec<PhaseStats>,
    pub series: Vec<SecondPoint>,
    pub disconnects: BTreeMap<String, u64>,
    pub links: LinkStats,
}

impl Recorder {
    pub fn new(t0: Instant) -> Recorder {
        Recorder {
            inner: Mutex::new(Inner {
                t0,
                phases: Vec::new(),
                second: SecondPoint::default(),
                second_ack_us: latency_histogram(2),
                second_accept_us: latency_histogram(2),
                series: Vec::new(),
                disconnects: BTreeMap::new(),
                links: Links::default(),
                last_tick: t0,
            }),
            wrote_bytes: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
        }
    }

    /// A connection wrote a message of `bytes` payload bytes.
    pub fn wrote(&self, bytes: usize) {
        self.wrote_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A connection read a message of `bytes` payload bytes.
    pub fn read(&self, bytes: usize) {
        self.read_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a phase and returns its index.
    pub fn begin_phase(&self, name: &str, rate_per_min: u64, duration_s: f64) -> usize {
        let mut g = self.lock();
        g.phases.push(PhaseStats::new(
            name,
            rate_per_min,
            duration_s,
            Instant::now(),
        ));
        g.phases.len() - 1
    }

    /// A command came due; `not_sent` when it could not be queued.
    pub fn offered(&self, phase: usize, not_sent: Option<NotSent>) {
        let mut g = self.lock();
        g.phases[phase].offered += 1;
        g.second.offered += 1;
        if let Some(reason) = not_sent {
            g.phases[phase].buckets.add(Outcome::NotSent(reason));
            g.second.not_sent += 1;
        }
    }

    /// A command counted as offered could not be written after all.
    pub fn not_sent(&self, phase: usize, reason: NotSent) {
        let mut g = self.lock();
        g.phases[phase].buckets.add(Outcome::NotSent(reason));
        g.second.not_sent += 1;
    }

    /// A command was written, as `kind` (which differs from the drawn kind when `substituted`),
    /// `lag` after its scheduled time.
    pub fn sent(&self, phase: usize, kind: Kind, substituted: bool, lag: Duration) {
        let mut g = self.lock();
        let p = &mut g.phases[phase];
        *p.sent_by_kind.entry(kind).or_default() += 1;
        p.substituted += u64::from(substituted);
        p.send_lag_us.saturating_record(micros(lag));
    }

    pub fn observe(&self, obs: &Observation, now: Instant) {
        let mut g = self.lock();
        let g = &mut *g;
        match *obs {
            Observation::Ack { phase, scheduled } => {
                let us = micros(now.saturating_duration_since(scheduled));
                g.phases[phase].acknowledged += 1;
                g.phases[phase].ack_us.saturating_record(us);
                g.second.acknowledged += 1;
                g.second_ack_us.saturating_record(us);
            }
            Observation::Verdict { phase, scheduled } => {
                let us = micros(now.saturating_duration_since(scheduled));
                let p = &mut g.phases[phase];
                p.verdicts += 1;
                p.accept_us.saturating_record(us);
                p.last_verdict = Some(now);
                g.second.verdicts += 1;
                g.second_accept_us.saturating_record(us);
            }
            Observation::Finished { phase, outcome } => {
                g.phases[phase].buckets.add(outcome);
                match outcome {
                    Outcome::Accepted => g.second.accepted += 1,
                    Outcome::GatewayRejected(c) if is_shed(c) => g.second.shed += 1,
                    Outcome::GatewayRejected(_)
                    | Outcome::EngineRejected(_)
                    | Outcome::StageRejected(_) => g.second.errors += 1,
                    _ => {}
                }
            }
            Observation::Shed {
                phase,
                command,
                scheduled,
            } => {
                let p = &mut g.phases[phase];
                *p.shed_by_kind.entry(command).or_default() += 1;
                p.shed_us
                    .saturating_record(micros(now.saturating_duration_since(scheduled)));
            }
            Observation::Fill { maker } => {
                if let Some(p) = g.phases.last_mut() {
                    p.fills += 1;
                    p.trades += u64::from(maker);
                }
            }
            Observation::Disconnected { ref reason } => {
                *g.disconnects.entry(reason.clone()).or_default() += 1;
            }
            Observation::Receipt(_) => {}
        }
    }

    /// `n` connections logged in at the start.
    pub fn links_up(&self, n: usize) {
        self.lock().links.connected = n;
    }

    /// A connection dropped and tries again; the time without any connection starts when the
    /// last one drops.
    pub fn link_down(&self, now: Instant) {
        let mut g = self.lock();
        let l = &mut g.links;
        l.connected = l.connected.saturating_sub(1);
        if l.connected == 0 && !l.stopped {
            l.none_since.get_or_insert(now);
        }
    }

    /// A dropped connection logged in again: one reconnect, for the run and the phase under way.
    pub fn reconnected(&self, now: Instant) {
        let mut g = self.lock();
        let g = &mut *g;
        if let Some(p) = g.phases.last_mut() {
            p.reconnects += 1;
        }
        let l = &mut g.links;
        l.reconnects += 1;
        l.connected += 1;
        if let Some(since) = l.none_since.take() {
            l.none += now.saturating_duration_since(since);
        }
    }

    /// A dropped connection stopped trying (`why` is a short class, not a message).
    pub fn gave_up(&self, why: String) {
        *self.lock().links.gave_up.entry(why).or_default() += 1;
    }

    /// The end of the run: an outage under way ends here, and closing the connections after
    /// it is none.
    pub fn stop_link_clock(&self, now: Instant) {
        let mut g = self.lock();
        let l = &mut g.links;
        if let Some(since) = l.none_since.take() {
            l.none += now.saturating_duration_since(since);
        }
        l.stopped = true;
    }

    /// A phase that ended before its planned duration (the run was interrupted): its rates
    /// are over the time it ran.
    pub fn cut_phase(&self, phase: usize, ran: Duration) {
        let mut g = self.lock();
        let p = &mut g.phases[phase];
        p.duration_s = p.duration_s.min(ran.as_secs_f64());
    }

    /// Closes the current second: appends it to the series and returns it.
    pub fn tick(&self, sample: Sample) -> SecondPoint {
        let mut g = self.lock();
        let g = &mut *g;
        let mut point = std::mem::take(&mut g.second);
        let now = Instant::now();
        let span_s = now.duration_since(g.last_tick).as_secs_f64();
        g.last_tick = now;
        let wrote = self.wrote_bytes.swap(0, Ordering::Relaxed);
        let read = self.read_bytes.swap(0, Ordering::Relaxed);
        if let Some(unread) = sample.unread {
            // The gateway's input is what the generator wrote; the generator's, what it read.
            let sides = [
                ("generator", Some(unread.generator), read),
                ("gateway", unread.gateway, wrote),
            ];
            for (side, bytes, input) in sides {
                let Some(bytes) = bytes else { continue };
                point
                    .unread_kib
                    .insert(side.to_owned(), round1(bytes as f64 / 1024.0));
                let per_s = if span_s > 0.0 {
                    (input as f64 / span_s) as u64
                } else {
                    0
                };
                if let Some(ms) = sockq::backlog_ms(bytes, per_s) {
                    point.unread_ms.insert(side.to_owned(), round1(ms));
                }
            }
        }
        point.t_s = (g.t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        point.unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        point.phase = g.phases.last().map(|p| p.name.clone()).unwrap_or_default();
        point.outstanding = g.phases.iter().map(PhaseStats::outstanding).sum();
        point.ack_p99_ms = Percentiles::of(&g.second_ack_us).p99;
        let accept = Percentiles::of(&g.second_accept_us);
        point.accept_p50_ms = accept.p50;
        point.accept_mean_ms = if g.second_accept_us.is_empty() {
            0.0
        } else {
            g.second_accept_us.mean().round() / 1000.0
        };
        point.accept_p90_ms = accept.p90;
        point.accept_p99_ms = accept.p99;
        point.accept_max_ms = accept.max;
        point.rss_mib = sample.rss_mib;
        point.cpu_pct = sample.cpu.per_process;
        point.machine_busy_pct = sample.cpu.machine_busy_pct;
        point.steal_pct = sample.cpu.steal_pct;
        g.second_ack_us.reset();
        g.second_accept_us.reset();
        g.series.push(point.clone());
        point
    }

    /// Seconds since the start, on the series' clock.
    pub fn elapsed_s(&self) -> f64 {
        self.lock().t0.elapsed().as_secs_f64()
    }

    /// The phase under way (empty before the first).
    pub fn current_phase(&self) -> String {
        self.lock()
            .phases
            .last()
            .map(|p| p.name.clone())
            .unwrap_or_default()
    }

    pub fn outstanding(&self, phase: usize) -> u64 {
        self.lock().phases[phase].outstanding()
    }

    pub fn outstanding_all(&self) -> u64 {
        self.lock().phases.iter().map(PhaseStats::outstanding).sum()
    }

    /// The running p99 accept latency of a phase, in ms.
    pub fn accept_p99_ms(&self, phase: usize) -> f64 {
        Percentiles::of(&self.lock().phases[phase].accept_us).p99
    }

    pub fn snapshot(&self) -> Snapshot {
        let g = self.lock();
        Snapshot {
            phases: g.phases.clone(),
            series: g.series.clone(),
            disconnects: g.disconnects.clone(),
            links: LinkStats {
                reconnects: g.links.reconnects,
                no_client_connected: g.links.none
                    + g.links
                        .none_since
                        .map_or(Duration::ZERO, |since| since.elapsed()),
                gave_up: g.links.gave_up.clone(),
            },
        }
    }
}

/// What a connection saw, recorded by [`Recorder::observe`].
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// The gateway's `received` for a command scheduled at `scheduled`.
    Ack {
        phase: usize,
        scheduled: Instant,
    },
    /// The engine's verdict for it.
    Verdict {
        phase: usize,
        scheduled: Instant,
    },
    /// The command's final bucket.
    Finished {
        phase: usize,
        outcome: Outcome,
    },
    /// The gateway shed it (`overloaded` or `rate_limited`): what it was, and when it was due,
    /// for the shed answers' own latency and the share of cancels admitted under overload.
    Shed {
        phase: usize,
        command: CommandKind,
        scheduled: Instant,
    },
    /// A fill on one of our orders; each trade has exactly one maker fill.
    Fill {
        maker: bool,
    },
    Disconnected {
        reason: String,
    },
    /// The gateway acknowledged a command with `received` (for `--received-out`).
    Receipt(Receipt),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_lands_in_exactly_one_bucket() {
        let outcomes = [
            Outcome::Accepted,
            Outcome::EngineRejected(RejectReason::UnknownOrder),
            Outcome::GatewayRejected(ErrorCode::Overloaded),
            Outcome::GatewayRejected(ErrorCode::RateLimited),
            Outcome::GatewayRejected(ErrorCode::InvalidDecimal),
            Outcome::StageRejected(ErrorCode::InsufficientFunds),
            Outcome::Timeout,
            Outcome::Lost,
            Outcome::UnreadAtClose,
            Outcome::ClosedInFlight,
            Outcome::NotSent(NotSent::GeneratorBehind),
            Outcome::NotSent(NotSent::ConnectionClosed),
        ];
        let mut b = Buckets::default();
        for (i, o) in outcomes.iter().enumerate() {
            b.add(*o);
            assert_eq!(b.total(), i as u64 + 1, "{o:?}");
        }
        assert_eq!(b.shed(), 2);
        assert_eq!(b.errors().get("unknown_order"), Some(&1));
        assert_eq!(b.errors().get("invalid_decimal"), Some(&1));
        assert_eq!(b.errors().get("insufficient_funds"), Some(&1));
        assert_eq!(b.errors().values().sum::<u64>(), 5);
    }

    #[test]
    fn code_names_are_the_wire_codes() {
        assert_eq!(code_name(ErrorCode::Overloaded), "overloaded");
        assert_eq!(code_name(ErrorCode::RateLimited), "rate_limited");
        assert_eq!(
            code_name(ErrorCode::Order(RejectReason::PostOnlyWouldTake)),
            "post_only_would_take"
        );
    }

    #[test]
    fn percentiles_come_from_the_histogram_in_ms() {
        let mut h = latency_histogram(3);
        assert_eq!(Percentiles::of(&h), Percentiles::default());
        for us in 1..=1000u64 {
            h.record(us * 100).unwrap(); // 0.1 ms .. 100 ms
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        let close = |a: f64, b: f64| (a - b).abs() / b < 0.002;
        assert!(close(p.p50, 50.0), "{p:?}");
        assert!(close(p.p90, 90.0), "{p:?}");
        assert!(close(p.p99, 99.0), "{p:?}");
        assert!(close(p.p999, 99.9), "{p:?}");
        assert!(close(p.max, 100.0), "{p:?}");
    }

    #[test]
    fn latency_is_from_the_scheduled_time_and_outstanding_drains() {
        let t0 = Instant::now();
        let rec = Recorder::new(t0);
        let phase = rec.begin_phase("measure", 60, 1.0);
        rec.offered(phase, None);
        rec.offered(phase, Some(NotSent::GeneratorBehind));
        assert_eq!(rec.outstanding(phase), 1);
        let scheduled = t0;
        let now = t0 + Duration::from_millis(40);
        rec.observe(&Observation::Ack { phase, scheduled }, now);
        rec.observe(&Observation::Verdict { phase, scheduled }, now);
        rec.observe(
            &Observation::Finished {
                phase,
                outcome: Outcome::Accepted,
            },
            now,
        );
        assert_eq!(rec.outstanding(phase), 0);
        let p99 = rec.accept_p99_ms(phase);
        assert!((p99 - 40.0).abs() < 0.1, "{p99}");
        let second = rec.tick(Sample::default());
        assert_eq!(
            (second.offered, second.accepted, second.not_sent),
            (2, 1, 1)
        );
        let snap = rec.snapshot();
        assert_eq!(snap.phases[0].buckets.total(), 2);
        assert_eq!(snap.series.len(), 1);
    }

    #[test]
    fn reconnects_count_per_phase_and_the_outage_is_when_none_is_connected() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let rec = Recorder::new(t0);
        rec.links_up(2);
        let warmup = rec.begin_phase("warmup", 60, 1.0);
        rec.link_down(at(1));
        rec.reconnected(at(2)); // one of two was down: the system still had a client
        let measure = rec.begin_phase("measure", 60, 1.0);
        rec.link_down(at(3));
        rec.link_down(at(4)); // both down from 4 s
        rec.reconnected(at(7));
        rec.reconnected(at(8));
        rec.link_down(at(9));
        rec.gave_up("login refused 3 times in a row (unknown_key)".into());
        rec.link_down(at(10)); // none from 10 s to the end of the run at 12 s
        rec.stop_link_clock(at(12));
        rec.link_down(at(13)); // closing after the run is no outage
        let snap = rec.snapshot();
        assert_eq!(snap.phases[warmup].reconnects, 1);
        assert_eq!(snap.phases[measure].reconnects, 2);
        assert_eq!(snap.links.reconnects, 3);
        assert_eq!(snap.links.no_client_connected, Duration::from_secs(3 + 2));
        assert_eq!(snap.links.gave_up.values().sum::<u64>(), 1);
    }

    #[test]
    fn achieved_rate_counts_a_lagging_tail() {
        let t0 = Instant::now();
        let mut p = PhaseStats::new("m", 0, 10.0, t0);
        p.verdicts = 1000;
        p.last_verdict = Some(t0 + Duration::from_secs(5));
        assert!((p.achieved_per_min() - 6000.0).abs() < 1e-6);
        p.last_verdict = Some(t0 + Duration::from_secs(20));
        assert!((p.achieved_per_min() - 3000.0).abs() < 1e-6);
    }
}
