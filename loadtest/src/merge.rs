//! `loadtest merge REPORT.json...`: the reports of generators that ran in parallel against the
//! same system (one task cannot offer every rate) as one report. Counts add; the latency
//! histograms add exactly, so the merged percentiles are those of all commands together, not an
//! average of percentiles; throughput sums, since the windows ran side by side.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::report::{PhaseReport, disconnect_line, phase_lines};
use crate::stats::{LATENCY_DIGITS, Percentiles, PhaseStats, latency_histogram};

/// A histogram as `[value_us, count]` per recorded bucket: exact, and readable without a codec.
pub type Buckets = Vec<[u64; 2]>;

/// The latency histograms of one phase, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistograms {
    pub ack_us: Buckets,
    pub accept_us: Buckets,
    pub send_lag_us: Buckets,
    #[serde(default)]
    pub shed_us: Buckets,
}

fn buckets(h: &Histogram<u64>) -> Buckets {
    h.iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect()
}

fn histogram(b: &Buckets) -> Histogram<u64> {
    let mut h = latency_histogram(LATENCY_DIGITS);
    for [value, count] in b {
        // Each value is its bucket's highest equivalent value, so it lands in the same bucket.
        h.saturating_record_n(*value, *count);
    }
    h
}

impl LatencyHistograms {
    pub fn of(p: &PhaseStats) -> LatencyHistograms {
        LatencyHistograms {
            ack_us: buckets(&p.ack_us),
            accept_us: buckets(&p.accept_us),
            send_lag_us: buckets(&p.send_lag_us),
            shed_us: buckets(&p.shed_us),
        }
    }

    fn add(&mut self, other: &LatencyHistograms) {
        for (mine, theirs) in [
            (&mut self.ack_us, &other.ack_us),
            (&mut self.accept_us, &other.accept_us),
            (&mut self.send_lag_us, &other.send_lag_us),
            (&mut self.shed_us, &other.shed_us),
        ] {
            let mut h = histogram(mine);
            h.add(histogram(theirs))
                .expect("histograms of the same bounds add");
            *mine = buckets(&h);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("nothing to merge: name two or more report.json files")]
    TooFew,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a loadtest report of this version: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is a {mode} run; only fixed runs (one measured window) merge")]
    NotFixed { path: PathBuf, mode: String },
}

/// The part of `report.json` a merge reads.
#[derive(Debug, Deserialize)]
struct ReportFile {
    mode: String,
    url: String,
    connections: usize,
    #[serde(flatten)]
    measured: PhaseReport,
    lost_all_phases: u64,
    histograms: LatencyHistograms,
    #[serde(default)]
    disconnects: BTreeMap<String, u64>,
}

/// Several generators' reports as one.
#[derive(Debug, Clone, Serialize)]
pub struct Merged {
    pub reports: Vec<PathBuf>,
    pub urls: Vec<String>,
    pub connections: usize,
    #[serde(flatten)]
    pub measured: PhaseReport,
    pub lost_all_phases: u64,
    pub histograms: LatencyHistograms,
    pub disconnects: BTreeMap<String, u64>,
}

fn read(path: &Path) -> Result<ReportFile, MergeError> {
    let text = std::fs::read_to_string(path).map_err(|source| MergeError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file: ReportFile = serde_json::from_str(&text).map_err(|source| MergeError::Parse {
        path: path.to_owned(),
        source,
    })?;
    if file.mode != "fixed" {
        return Err(MergeError::NotFixed {
            path: path.to_owned(),
            mode: file.mode,
        });
    }
    Ok(file)
}

fn add_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, n) in from {
        *into.entry(k.clone()).or_default() += n;
    }
}

/// Adds `b`'s window to `a`'s: counts and rates sum, the window is the longer of the two.
fn add_phase(a: &mut PhaseReport, b: &PhaseReport) {
    a.target_events_per_min += b.target_events_per_min;
    a.achieved_events_per_min += b.achieved_events_per_min;
    a.duration_s = a.duration_s.max(b.duration_s);
    for (x, y) in [
        (&mut a.offered, b.offered),
        (&mut a.acknowledged, b.acknowledged),
        (&mut a.verdicts, b.verdicts),
        (&mut a.accepted, b.accepted),
        (&mut a.rejected, b.rejected),
        (&mut a.stage_rejected, b.stage_rejected),
        (&mut a.lost, b.lost),
        (&mut a.timeouts, b.timeouts),
        (&mut a.shed, b.shed),
        (&mut a.generator_behind, b.generator_behind),
        (&mut a.connection_closed, b.connection_closed),
        (&mut a.closed_in_flight, b.closed_in_flight),
        (&mut a.reconnects, b.reconnects),
        (&mut a.unread_at_close, b.unread_at_close),
        (&mut a.trades, b.trades),
        (&mut a.fills, b.fills),
        (&mut a.substituted, b.substituted),
    ] {
        *x += y;
    }
    add_counts(&mut a.errors, &b.errors);
    add_counts(&mut a.sent_by_kind, &b.sent_by_kind);
    add_counts(&mut a.shed_by_kind, &b.shed_by_kind);
}

/// Merges the reports at `paths` (fixed runs side by side against one system).
pub fn merge(paths: &[PathBuf]) -> Result<Merged, MergeError> {
    if paths.len() < 2 {
        return Err(MergeError::TooFew);
    }
    let mut files = paths.iter().map(|p| read(p));
    let first = files.next().expect("two or more")?;
    let mut merged = Merged {
        reports: paths.to_vec(),
        urls: vec![first.url],
        connections: first.connections,
        measured: first.measured,
        lost_all_phases: first.lost_all_phases,
        histograms: first.histograms,
        disconnects: first.disconnects,
    };
    for file in files {
        let file = file?;
        if !merged.urls.contains(&file.url) {
            merged.urls.push(file.url);
        }
        merged.connections += file.connections;
        add_phase(&mut merged.measured, &file.measured);
        merged.lost_all_phases += file.lost_all_phases;
        merged.histograms.add(&file.histograms);
        add_counts(&mut merged.disconnects, &file.disconnects);
    }
    let m = &mut merged.measured;
    m.ack_latency_ms = Percentiles::of(&histogram(&merged.histograms.ack_us));
    m.accept_latency_ms = Percentiles::of(&histogram(&merged.histograms.accept_us));
    m.send_lag_ms = Percentiles::of(&histogram(&merged.histograms.send_lag_us));
    m.shed_latency_ms = Percentiles::of(&histogram(&merged.histograms.shed_us));
    m.passed = None;
    Ok(merged)
}

impl Merged {
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "loadtest merge: {} reports, {} connections in all -> {}",
            self.reports.len(),
            self.connections,
            self.urls.join(", ")
        );
        phase_lines(&mut s, &self.measured, self.lost_all_phases);
        disconnect_line(&mut s, &self.disconnects);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values_us: &[u64]) -> Histogram<u64> {
        let mut h = latency_histogram(LATENCY_DIGITS);
        for v in values_us {
            h.record(*v).unwrap();
        }
        h
    }

    #[test]
    fn histograms_round_trip_and_add_exactly() {
        let a = hist(&[100, 250, 250, 10_000, 2_000_000]);
        let b = hist(&[1, 250, 99_999]);
        assert_eq!(
            histogram(&buckets(&a)),
            a,
            "a round trip keeps every bucket"
        );
        let mut both = LatencyHistograms {
            ack_us: buckets(&a),
            ..Default::default()
        };
        both.add(&LatencyHistograms {
            ack_us: buckets(&b),
            ..Default::default()
        });
        let mut expected = a.clone();
        expected.add(&b).unwrap();
        assert_eq!(histogram(&both.ack_us), expected);
        assert_eq!(histogram(&both.ack_us).len(), 8);
    }

    #[test]
    fn fewer_than_two_reports_is_an_error() {
        assert!(matches!(merge(&[]), Err(MergeError::TooFew)));
        let one = [PathBuf::from("a.json")];
        assert!(matches!(merge(&one), Err(MergeError::TooFew)));
        let missing = [
            PathBuf::from("/nonexistent/a"),
            PathBuf::from("/nonexistent/b"),
        ];
        assert!(matches!(merge(&missing), Err(MergeError::Read { .. })));
    }
}
