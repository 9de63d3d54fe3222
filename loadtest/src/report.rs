//! The run's result: `report.json` and the human summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::config::Mode;
use crate::merge::LatencyHistograms;
use crate::procmem::round1;
use crate::received::Written;
use crate::schedule::Arrival;
use crate::server::ServerReport;
use crate::stats::{LinkStats, Percentiles, PhaseStats, SecondPoint, Snapshot};

/// One phase (warm-up, the measured window, or a ramp step) in the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseReport {
    pub phase: String,
    pub target_events_per_min: u64,
    /// Engine verdicts (accepted, rejected, done, amended) per minute.
    pub achieved_events_per_min: f64,
    pub duration_s: f64,
    pub offered: u64,
    pub acknowledged: u64,
    pub verdicts: u64,
    pub accepted: u64,
    /// Rejected by the engine or refused by the account stage (sum of their codes in `errors`).
    pub rejected: u64,
    /// Of `rejected`, refused by the account stage (`insufficient_funds`, ...).
    #[serde(default)]
    pub stage_rejected: u64,
    pub lost: u64,
    pub timeouts: u64,
    /// `overloaded` + `rate_limited`.
    pub shed: u64,
    /// The generator's own queue was full: it fell behind its schedule.
    pub generator_behind: u64,
    /// Not sent because the connection was closed, and (`--reconnect`) sent but still open
    /// when it dropped: known unresolved at the client, never lost.
    pub connection_closed: u64,
    /// Of `connection_closed`, those sent and open at a drop: their verdicts may exist all
    /// the same (`--received-out` lists the acknowledged ones for the audit).
    #[serde(default)]
    pub closed_in_flight: u64,
    /// Connections that logged in again after a drop during the phase (`--reconnect`).
    #[serde(default)]
    pub reconnects: u64,
    /// Written, but the gateway closed the connection before reading them (its status push
    /// said how far it read): known not acted on, so not lost.
    pub unread_at_close: u64,
    pub errors: BTreeMap<String, u64>,
    pub trades: u64,
    pub fills: u64,
    pub ack_latency_ms: Percentiles,
    pub accept_latency_ms: Percentiles,
    /// How late the generator itself wrote commands (included in both latencies).
    pub send_lag_ms: Percentiles,
    pub sent_by_kind: BTreeMap<String, u64>,
    /// Shed commands (`overloaded`, `rate_limited`) by what they were: `place`, `cancel`,
    /// `cancel_all`, `amend` (cancels are admitted first under overload).
    #[serde(default)]
    pub shed_by_kind: BTreeMap<String, u64>,
    /// From a command's scheduled time to its shed answer: how fast the gateway says no.
    #[serde(default)]
    pub shed_latency_ms: Percentiles,
    pub substituted: u64,
    /// Ramp steps: whether the step met the SLO and the shed budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
}

impl PhaseReport {
    pub fn of(p: &PhaseStats) -> PhaseReport {
        let b = &p.buckets;
        PhaseReport {
            phase: p.name.clone(),
            target_events_per_min: p.rate_per_min,
            achieved_events_per_min: p.achieved_per_min().round(),
            duration_s: p.duration_s,
            offered: p.offered,
            acknowledged: p.acknowledged,
            verdicts: p.verdicts,
            accepted: b.accepted,
            rejected: b.engine_rejected.values().sum::<u64>()
                + b.stage_rejected.values().sum::<u64>(),
            stage_rejected: b.stage_rejected.values().sum(),
            lost: b.lost,
            timeouts: b.timeouts,
            shed: b.shed(),
            generator_behind: b.generator_behind,
            connection_closed: b.connection_closed + b.closed_in_flight,
            closed_in_flight: b.closed_in_flight,
            reconnects: p.reconnects,
            unread_at_close: b.unread_at_close,
            errors: b.errors(),
            trades: p.trades,
            fills: p.fills,
            ack_latency_ms: Percentiles::of(&p.ack_us),
            accept_latency_ms: Percentiles::of(&p.accept_us),
            send_lag_ms: Percentiles::of(&p.send_lag_us),
            sent_by_kind: p
                .sent_by_kind
                .iter()
                .map(|(k, n)| (k.name().to_owned(), *n))
                .collect(),
            shed_by_kind: p
                .shed_by_kind
                .iter()
                .map(|(k, n)| (k.name().to_owned(), *n))
                .collect(),
            shed_latency_ms: Percentiles::of(&p.shed_us),
            substituted: p.substituted,
            passed: None,
        }
    }

    /// Shed plus commands the generator could not send, as a share of offered.
    pub fn shed_share(&self) -> f64 {
        if self.offered == 0 {
            0.0
        } else {
            (self.shed + self.generator_behind + self.connection_closed + self.unread_at_close)
                as f64
                / self.offered as f64
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub arrival: Arrival,
    pub url: String,
    pub connections: usize,
    pub seed: u64,
    pub slo_p99_ms: f64,
    pub warmup_s: u64,
    /// The measured window (fixed), or the highest passing ramp step (ramp; absent if none
    /// passed, and then these fields describe the first step).
    #[serde(flatten)]
    pub measured: PhaseReport,
    /// Lost commands over every phase, warm-up included.
    pub lost_all_phases: u64,
    /// The measured window's latency histograms, exact, so reports of generators run in
    /// parallel merge into one (`loadtest merge`).
    pub histograms: LatencyHistograms,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highest_passing_events_per_min: Option<u64>,
    pub phases: Vec<PhaseReport>,
    /// Connections closed during the run, by reason.
    pub disconnects: BTreeMap<String, u64>,
    /// Peak resident memory (VmHWM) of the watched processes, in MiB.
    pub peak_rss_mib: BTreeMap<String, f64>,
    /// The end-of-run `cancel_all` of every connection; absent with `--keep-orders`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<Cleanup>,
    /// The run stopped offering commands early (SIGINT or SIGTERM), then finished as usual.
    pub interrupted: bool,
    /// With `--reconnect`: the run's reconnects (each phase has its own in `phases`), the time
    /// no connection was logged in, and the connections that gave up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect: Option<ReconnectReport>,
    /// With `--received-out`: the file of acknowledged commands and its line count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_out: Option<Written>,
    /// Mean CPU over the measured window (fixed mode): per watched process with its
    /// descendants in percent of one core, and `machine_busy` / `steal` in percent of all cores.
    pub cpu_pct_measured: BTreeMap<String, f64>,
    /// Unread input over the measured window, per side (`generator`, `gateway`), in ms of that
    /// side's input: see [`SecondPoint::unread_ms`]. Sampled once a second.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unread_ms_measured: BTreeMap<String, MeanMax>,
    /// The services' own figures from `/metrics`, each phase and the measured window: each
    /// hop's mean, shed by reason, consumer lag. Absent without `--metrics-url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerReport>,
    pub charts: Vec<String>,
    pub series: Vec<SecondPoint>,
}

/// The mean and the largest of a once-a-second sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MeanMax {
    pub mean: f64,
    pub max: f64,
}

/// The connections' drops and logins again over the run (`--reconnect`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReconnectReport {
    /// Logins again after a drop, over every phase.
    pub reconnects: u64,
    /// Seconds with no connection logged in (all of them dropped at once: the gateway was
    /// down), up to the end of the drain.
    pub no_client_connected_s: f64,
    /// Connections that stopped trying, by why (a final close, or logins refused).
    pub gave_up: BTreeMap<String, u64>,
}

impl ReconnectReport {
    pub fn of(links: &LinkStats) -> ReconnectReport {
        ReconnectReport {
            reconnects: links.reconnects,
            no_client_connected_s: (links.no_client_connected.as_secs_f64() * 1000.0).round()
                / 1000.0,
            gave_up: links.gave_up.clone(),
        }
    }

    /// `reconnects: 12 (4 in the window); no client connected for 1.8 s`, and who gave up.
    pub fn line(&self, in_window: u64) -> String {
        let mut line = format!(
            "  reconnects: {} ({in_window} in the window); no client connected for {:.1} s",
            self.reconnects, self.no_client_connected_s
        );
        if !self.gave_up.is_empty() {
            let list: Vec<String> = self
                .gave_up
                .iter()
                .map(|(why, n)| format!("{why} x{n}"))
                .collect();
            let _ = write!(line, "; gave up: {}", list.join(", "));
        }
        line
    }
}

/// How the connections' end-of-run `cancel_all` requests were answered by the gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Cleanup {
    pub connections: usize,
    pub accepted: usize,
    pub refused: usize,
    pub unanswered: usize,
}

impl Cleanup {
    pub fn count(answers: impl IntoIterator<Item = Option<bool>>) -> Cleanup {
        let mut c = Cleanup::default();
        for answer in answers {
            c.connections += 1;
            match answer {
                Some(true) => c.accepted += 1,
                Some(false) => c.refused += 1,
                None => c.unanswered += 1,
            }
        }
        c
    }
}

impl Report {
    pub fn build(
        snapshot: &Snapshot,
        mode: Mode,
        measured_phase: usize,
        base: ReportBase,
    ) -> Report {
        let phases: Vec<PhaseReport> = snapshot.phases.iter().map(PhaseReport::of).collect();
        let lost_all_phases = phases.iter().map(|p| p.lost).sum();
        let cpu_pct_measured = mean_cpu(&snapshot.series, &phases[measured_phase].phase);
        let unread_ms_measured = unread_ms(&snapshot.series, &phases[measured_phase].phase);
        Report {
            mode,
            arrival: base.arrival,
            url: base.url,
            connections: base.connections,
            seed: base.seed,
            slo_p99_ms: base.slo_p99_ms,
            warmup_s: base.warmup_s,
            measured: phases[measured_phase].clone(),
            lost_all_phases,
            histograms: LatencyHistograms::of(&snapshot.phases[measured_phase]),
            highest_passing_events_per_min: None,
            phases,
            disconnects: snapshot.disconnects.clone(),
            peak_rss_mib: BTreeMap::new(),
            cleanup: None,
            interrupted: false,
            reconnect: None,
            received_out: None,
            cpu_pct_measured,
            unread_ms_measured,
            server: None,
            charts: Vec::new(),
            series: snapshot.series.clone(),
        }
    }

    /// The summary printed on stdout.
    pub fn summary(&self) -> String {
        let m = &self.measured;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "loadtest: {} mode, {} arrival, {} connections -> {}",
            mode_name(self.mode),
            arrival_name(self.arrival),
            self.connections,
            self.url
        );
        if let Some(best) = self.highest_passing_events_per_min {
            let _ = writeln!(
                s,
                "  highest passing rate  {best} events/min (p99 accept <= {} ms, shed <= 1%)",
                self.slo_p99_ms
            );
        } else if self.mode == Mode::Ramp {
            let _ = writeln!(
                s,
                "  no ramp step passed (p99 accept <= {} ms, shed <= 1%)",
                self.slo_p99_ms
            );
        }
        phase_lines(&mut s, m, self.lost_all_phases);
        crate::server::phase::summary_lines(&mut s, self.server.as_ref());
        if self.mode == Mode::Ramp {
            for p in &self.phases {
                let _ = writeln!(
                    s,
                    "  step {:<12} {:>9}/min -> {:>9.0}/min  p99 {:>8.2} ms  shed {:>6.3}%  {}",
                    p.phase,
                    p.target_events_per_min,
                    p.achieved_events_per_min,
                    p.accept_latency_ms.p99,
                    100.0 * p.shed_share(),
                    match p.passed {
                        Some(true) => "pass",
                        Some(false) => "FAIL",
                        None => "",
                    }
                );
            }
        }
        disconnect_line(&mut s, &self.disconnects);
        if let Some(r) = &self.reconnect {
            let _ = writeln!(s, "{}", r.line(m.reconnects));
        }
        if let Some(r) = &self.received_out {
            let _ = writeln!(
                s,
                "  received-out        {} acknowledged commands -> {}{}",
                r.lines,
                r.path,
                if r.without_order_id > 0 {
                    format!(" ({} without an order id left out)", r.without_order_id)
                } else {
                    String::new()
                }
            );
        }
        if self.interrupted {
            let _ = writeln!(
                s,
                "  interrupted         the schedule was cut short; the window ran {:.1} s",
                m.duration_s
            );
        }
        for (name, mib) in &self.peak_rss_mib {
            let _ = writeln!(s, "  peak RSS {name:<10} {mib:.1} MiB");
        }
        if let Some(c) = &self.cleanup {
            let _ = writeln!(
                s,
                "  cleanup             cancel_all accepted on {} of {} connections ({} refused, {} unanswered)",
                c.accepted, c.connections, c.refused, c.unanswered
            );
        }
        if !self.cpu_pct_measured.is_empty() {
            let list: Vec<String> = self
                .cpu_pct_measured
                .iter()
                .map(|(name, pct)| format!("{name} {pct:.0}%"))
                .collect();
            let _ = writeln!(
                s,
                "  mean CPU            {} (processes: % of one core; machine: % of all cores)",
                list.join(", ")
            );
        }
        if !self.unread_ms_measured.is_empty() {
            let list: Vec<String> = self
                .unread_ms_measured
                .iter()
                .map(|(side, v)| format!("{side} mean {:.0} ms, max {:.0} ms", v.mean, v.max))
                .collect();
            let _ = writeln!(
                s,
                "  unread input        {} (socket receive queues each second, in ms of that side's input)",
                list.join("; ")
            );
        }
        s
    }
}

/// Mean and largest unread backlog of each side over the seconds of one phase.
/// Connections closed during the run, by reason, when there were any.
pub(crate) fn disconnect_line(s: &mut String, disconnects: &BTreeMap<String, u64>) {
    if !disconnects.is_empty() {
        let list: Vec<String> = disconnects
            .iter()
            .map(|(c, n)| format!("{c} x{n}"))
            .collect();
        let _ = writeln!(s, "  disconnects         {}", list.join(", "));
    }
}

/// The measured window's lines of the summary, shared by a run's report and a merged one.
pub(crate) fn phase_lines(s: &mut String, m: &PhaseReport, lost_all_phases: u64) {
    let pct = |p: &Percentiles| {
        format!(
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms",
            p.p50, p.p90, p.p99, p.p999, p.max
        )
    };
    let _ = writeln!(
        s,
        "  window ({})         {:.0} s at {} events/min target",
        m.phase, m.duration_s, m.target_events_per_min
    );
    let _ = writeln!(
        s,
        "  achieved            {:.0} events/min ({:.0}/s) engine verdicts",
        m.achieved_events_per_min,
        m.achieved_events_per_min / 60.0
    );
    let _ = writeln!(s, "  offered             {}", m.offered);
    let _ = writeln!(s, "  acknowledged        {}", m.acknowledged);
    let _ = writeln!(
        s,
        "  verdicts            {} (accepted {}, rejected {}, of which by the account stage {})",
        m.verdicts, m.accepted, m.rejected, m.stage_rejected
    );
    let _ = writeln!(
        s,
        "  shed                {} ({:.3}% of offered)",
        m.shed,
        100.0 * m.shed as f64 / m.offered.max(1) as f64
    );
    if m.shed > 0 {
        let kinds: Vec<String> = m
            .shed_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "  shed by kind        {}; shed answer latency {}",
            kinds.join(", "),
            pct(&m.shed_latency_ms)
        );
    }
    let _ = writeln!(
        s,
        "  generator behind    {}   connection closed {} (in flight {})   unread at close {}",
        m.generator_behind, m.connection_closed, m.closed_in_flight, m.unread_at_close
    );
    let _ = writeln!(s, "  timeouts            {}", m.timeouts);
    let _ = writeln!(
        s,
        "  lost                {} in the window, {} in all phases (warm-up and drain too)",
        m.lost, lost_all_phases
    );
    let _ = writeln!(s, "  trades              {} ({} fills)", m.trades, m.fills);
    let _ = writeln!(s, "  ack latency         {}", pct(&m.ack_latency_ms));
    let _ = writeln!(s, "  accept latency      {}", pct(&m.accept_latency_ms));
    let _ = writeln!(s, "  generator send lag  {}", pct(&m.send_lag_ms));
    if !m.errors.is_empty() {
        let list: Vec<String> = m.errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let _ = writeln!(s, "  errors by code      {}", list.join(", "));
    }
    let kinds: Vec<String> = m
        .sent_by_kind
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(
        s,
        "  sent by kind        {} (substituted {})",
        kinds.join(", "),
        m.substituted
    );
}

fn unread_ms(series: &[SecondPoint], phase: &str) -> BTreeMap<String, MeanMax> {
    let mut acc: BTreeMap<String, (f64, f64, u32)> = BTreeMap::new();
    for p in series.iter().filter(|p| p.phase == phase) {
        for (side, ms) in &p.unread_ms {
            let e = acc.entry(side.clone()).or_default();
            e.0 += ms;
            e.1 = e.1.max(*ms);
            e.2 += 1;
        }
    }
    acc.into_iter()
        .map(|(side, (sum, max, n))| {
            let mean = round1(sum / f64::from(n));
            (side, MeanMax { mean, max })
        })
        .collect()
}

/// Mean of each CPU figure over the seconds of one phase.
fn mean_cpu(series: &[SecondPoint], phase: &str) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, (f64, u32)> = BTreeMap::new();
    let mut add = |name: &str, v: f64| {
        let e = sums.entry(name.to_owned()).or_default();
        e.0 += v;
        e.1 += 1;
    };
    for p in series.iter().filter(|p| p.phase == phase) {
        for (name, v) in &p.cpu_pct {
            add(name, *v);
        }
        if let Some(v) = p.machine_busy_pct {
            add("machine_busy", v);
        }
        if let Some(v) = p.steal_pct {
            add("steal", v);
        }
    }
    sums.into_iter()
        .map(|(name, (sum, n))| (name, round1(sum / f64::from(n))))
        .collect()
}

/// The run's settings that go into the report as they were.
#[derive(Debug, Clone)]
pub struct ReportBase {
    pub arrival: Arrival,
    pub url: String,
    pub connections: usize,
    pub seed: u64,
    pub slo_p99_ms: f64,
    pub warmup_s: u64,
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Fixed => "fixed",
        Mode::Ramp => "ramp",
    }
}

fn arrival_name(a: Arrival) -> &'static str {
    match a {
        Arrival::Constant => "constant",
        Arrival::Poisson => "poisson",
    }
}
