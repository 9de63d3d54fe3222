//! The server side over a phase (`server` in `report.json`) and its lines in the summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::delta::{HOPS, ServerPoint, VERDICT, round3, short_name};
use crate::report::MeanMax;

/// One hop over a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HopPhase {
    pub count: u64,
    /// Mean over every observation of the phase (weighted by each second's count).
    pub mean_ms: f64,
    /// The largest exported p99 seen during the phase (each covers about the last minute).
    pub p99_ms_max: f64,
}

/// The server side over one phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerPhase {
    pub phase: String,
    /// Rounds of scrapes (one a second) in the phase with figures from at least one service.
    pub seconds: u32,
    /// Rounds in which a service's scrape failed.
    pub seconds_missing: u32,
    /// [`VERDICT`] and each hop that saw traffic, by metric name.
    pub hops: BTreeMap<String, HopPhase>,
    /// Commands shed over the phase by reason (`gateway_shed_total`).
    pub shed: BTreeMap<String, u64>,
    /// The engine's consumer lag summed over the pairs, each second; the largest pair's largest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_lag_records: Option<MeanMax>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_lag_max_pair_records: Option<f64>,
    /// The account stage's, summed over the shards each second; the largest shard's largest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts_consumer_lag_records: Option<MeanMax>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts_consumer_lag_max_shard_records: Option<f64>,
}

/// A lag gauge over the seconds of a phase: the sum's mean and largest, the largest part.
#[derive(Default)]
struct LagOverPhase {
    sum: f64,
    max: f64,
    n: u32,
    part_max: Option<f64>,
}

impl LagOverPhase {
    fn add(&mut self, total: Option<f64>, part_max: Option<f64>) {
        if let Some(lag) = total {
            self.sum += lag;
            self.max = self.max.max(lag);
            self.n += 1;
        }
        if let Some(m) = part_max {
            self.part_max = Some(self.part_max.map_or(m, |p| p.max(m)));
        }
    }

    fn mean_max(&self) -> Option<MeanMax> {
        (self.n > 0).then(|| MeanMax {
            mean: round3(self.sum / f64::from(self.n)),
            max: self.max,
        })
    }
}

impl ServerPhase {
    /// Adds up the points of `phase` in `series`.
    pub fn of(series: &[ServerPoint], phase: &str) -> ServerPhase {
        let mut out = ServerPhase {
            phase: phase.to_owned(),
            ..ServerPhase::default()
        };
        let mut sums_ms: BTreeMap<&str, f64> = BTreeMap::new();
        let mut engine_lag = LagOverPhase::default();
        let mut accounts_lag = LagOverPhase::default();
        for s in series.iter().filter(|p| p.phase == phase) {
            out.seconds_missing += u32::from(!s.missing.is_empty());
            if !s.has_data() {
                continue;
            }
            out.seconds += 1;
            for (reason, n) in &s.shed {
                *out.shed.entry(reason.clone()).or_default() += n;
            }
            for (metric, h) in &s.hops {
                let hop = out.hops.entry(metric.clone()).or_default();
                hop.count += h.count;
                *sums_ms.entry(metric).or_default() += h.mean_ms.unwrap_or(0.0) * h.count as f64;
                hop.p99_ms_max = hop.p99_ms_max.max(h.p99_ms.unwrap_or(0.0));
            }
            engine_lag.add(s.consumer_lag_records, s.consumer_lag_max_pair_records);
            accounts_lag.add(
                s.accounts_consumer_lag_records,
                s.accounts_consumer_lag_max_shard_records,
            );
        }
        for (metric, hop) in &mut out.hops {
            let sum_ms = sums_ms.get(metric.as_str()).copied().unwrap_or(0.0);
            hop.mean_ms = if hop.count > 0 {
                round3(sum_ms / hop.count as f64)
            } else {
                0.0
            };
        }
        out.hops.retain(|_, h| h.count > 0);
        out.consumer_lag_records = engine_lag.mean_max();
        out.consumer_lag_max_pair_records = engine_lag.part_max;
        out.accounts_consumer_lag_records = accounts_lag.mean_max();
        out.accounts_consumer_lag_max_shard_records = accounts_lag.part_max;
        out
    }

    /// The hops that saw traffic, most time first: (metric, mean ms).
    pub fn hops_by_time(&self) -> Vec<(&str, f64)> {
        let mut hops: Vec<(&str, f64)> = HOPS
            .iter()
            .filter_map(|m| self.hops.get(*m).map(|h| (*m, h.mean_ms)))
            .collect();
        hops.sort_by(|a, b| b.1.total_cmp(&a.1));
        hops
    }
}

/// The server side of a run: what was scraped, each phase, and the measured window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerReport {
    pub metrics_urls: Vec<String>,
    /// Scrapes over the run, and how many of them failed.
    pub scrapes: u64,
    pub scrapes_failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The report's measured window (fixed), or the phase the report describes (ramp).
    pub measured: ServerPhase,
    pub phases: Vec<ServerPhase>,
    /// One point a second.
    pub series: Vec<ServerPoint>,
}

/// The summary's lines for the server side: which hop holds the time, then shed by reason and
/// consumer lag when there were any. One line saying why when there is nothing to show.
pub fn summary_lines(s: &mut String, server: Option<&ServerReport>) {
    let Some(r) = server else {
        let _ = writeln!(
            s,
            "  server              not scraped (no --metrics-url): client side only"
        );
        return;
    };
    let m = &r.measured;
    if m.seconds == 0 {
        let why = r
            .last_error
            .as_deref()
            .map_or_else(String::new, |e| format!("; last error: {e}"));
        let _ = writeln!(
            s,
            "  server              no figures from /metrics in the window ({} of {} scrapes failed{why})",
            r.scrapes_failed, r.scrapes
        );
        return;
    }
    let _ = writeln!(s, "  server (/metrics)   {}", where_the_time_is(m));
    let mut extra = Vec::new();
    if !m.shed.is_empty() {
        let list: Vec<String> = m.shed.iter().map(|(r, n)| format!("{r} {n}")).collect();
        extra.push(format!("shed by reason {}", list.join(", ")));
    }
    if let (Some(lag), Some(pair)) = (m.consumer_lag_records, m.consumer_lag_max_pair_records) {
        extra.push(format!(
            "consumer lag mean {:.0}, max {:.0} records over all pairs (one pair at most {pair:.0})",
            lag.mean, lag.max
        ));
    }
    if let (Some(lag), Some(shard)) = (
        m.accounts_consumer_lag_records,
        m.accounts_consumer_lag_max_shard_records,
    ) {
        extra.push(format!(
            "account stage lag mean {:.0}, max {:.0} records over all shards (one shard at most {shard:.0})",
            lag.mean, lag.max
        ));
    }
    if m.seconds_missing > 0 {
        extra.push(format!("{} s with a scrape missing", m.seconds_missing));
    }
    if !extra.is_empty() {
        let _ = writeln!(s, "  server shed, lag    {}", extra.join("; "));
    }
}

/// `verdict 4.10 ms mean; the time is in engine_batch_wait 2.60 ms (63%), then ...`.
pub fn where_the_time_is(m: &ServerPhase) -> String {
    let verdict_ms = m.hops.get(VERDICT).map(|h| h.mean_ms);
    let share = |ms: f64| match verdict_ms {
        Some(v) if v > 0.0 => format!(" ({:.0}%)", 100.0 * ms / v),
        _ => String::new(),
    };
    let head = match verdict_ms {
        Some(v) => format!("verdict {v:.2} ms mean"),
        None => "no verdict in the window".to_owned(),
    };
    let hops = m.hops_by_time();
    let Some(((first, first_ms), rest)) = hops.split_first() else {
        return format!("{head}; no hop exported a figure");
    };
    let mut line = format!(
        "{head}; the time is in {} {first_ms:.2} ms{}",
        short_name(first),
        share(*first_ms)
    );
    for (i, (hop, ms)) in rest.iter().enumerate() {
        let sep = if i == 0 { ", then" } else { "," };
        let _ = write!(line, "{sep} {} {ms:.2} ms{}", short_name(hop), share(*ms));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::delta::HopSecond;

    fn second(phase: &str, hops: &[(&str, u64, f64)], shed: u64, lag: f64) -> ServerPoint {
        ServerPoint {
            phase: phase.into(),
            span_s: 1.0,
            shed: if shed > 0 {
                [("in_flight".to_owned(), shed)].into()
            } else {
                BTreeMap::new()
            },
            consumer_lag_records: Some(lag),
            consumer_lag_max_pair_records: Some(lag / 2.0),
            hops: hops
                .iter()
                .map(|&(m, count, mean)| {
                    let hop = HopSecond {
                        count,
                        mean_ms: (count > 0).then_some(mean),
                        p99_ms: Some(mean * 3.0),
                    };
                    (m.to_owned(), hop)
                })
                .collect(),
            ..ServerPoint::default()
        }
    }

    fn measured() -> ServerPhase {
        let series = [
            second("warmup", &[(VERDICT, 100, 50.0)], 9, 100.0),
            second(
                "measure",
                &[
                    (VERDICT, 300, 4.0),
                    ("engine_batch_wait_seconds", 300, 2.0),
                    ("gateway_kafka_ack_seconds", 300, 1.0),
                ],
                2,
                10.0,
            ),
            second(
                "measure",
                &[
                    (VERDICT, 100, 8.0),
                    ("engine_batch_wait_seconds", 100, 6.0),
                    ("gateway_kafka_ack_seconds", 100, 1.0),
                    ("gateway_events_age_seconds", 0, 0.0),
                ],
                0,
                30.0,
            ),
            ServerPoint {
                phase: "measure".into(),
                missing: vec!["http://engine/metrics".into()],
                ..ServerPoint::default()
            },
        ];
        ServerPhase::of(&series, "measure")
    }

    #[test]
    fn a_phase_weights_each_second_by_its_count() {
        let m = measured();
        assert_eq!((m.seconds, m.seconds_missing), (2, 1));
        assert_eq!(m.hops[VERDICT].count, 400);
        assert_eq!(m.hops[VERDICT].mean_ms, 5.0, "(300*4 + 100*8) / 400");
        assert_eq!(m.hops["engine_batch_wait_seconds"].mean_ms, 3.0);
        assert_eq!(m.hops[VERDICT].p99_ms_max, 24.0);
        assert!(
            !m.hops.contains_key("gateway_events_age_seconds"),
            "no traffic"
        );
        assert_eq!(
            m.shed.get("in_flight"),
            Some(&2),
            "the warm-up's 9 are not in it"
        );
        assert_eq!(
            m.consumer_lag_records,
            Some(MeanMax {
                mean: 20.0,
                max: 30.0
            })
        );
        assert_eq!(m.consumer_lag_max_pair_records, Some(15.0));
    }

    #[test]
    fn the_account_stages_lag_is_its_own_figure_and_line() {
        let mut series = vec![second("measure", &[(VERDICT, 10, 1.0)], 0, 10.0); 2];
        series[0].accounts_consumer_lag_records = Some(40.0);
        series[0].accounts_consumer_lag_max_shard_records = Some(25.0);
        series[1].accounts_consumer_lag_records = Some(20.0);
        series[1].accounts_consumer_lag_max_shard_records = Some(5.0);
        let m = ServerPhase::of(&series, "measure");
        assert_eq!(
            m.accounts_consumer_lag_records,
            Some(MeanMax {
                mean: 30.0,
                max: 40.0
            })
        );
        assert_eq!(m.accounts_consumer_lag_max_shard_records, Some(25.0));
        assert_eq!(
            m.consumer_lag_records.map(|l| l.mean),
            Some(10.0),
            "the engine's apart"
        );
        let report = ServerReport {
            measured: m,
            ..ServerReport::default()
        };
        let mut s = String::new();
        summary_lines(&mut s, Some(&report));
        assert!(
            s.contains(
                "account stage lag mean 30, max 40 records over all shards (one shard at most 25)"
            ),
            "{s}"
        );
        assert!(s.contains("consumer lag mean 10"), "{s}");
        // Without the stage scraped, no such line.
        let mut s = String::new();
        summary_lines(
            &mut s,
            Some(&ServerReport {
                measured: measured(),
                ..ServerReport::default()
            }),
        );
        assert!(!s.contains("account stage"), "{s}");
    }

    #[test]
    fn the_summary_names_the_hop_that_holds_the_time() {
        let line = where_the_time_is(&measured());
        assert_eq!(
            line,
            "verdict 5.00 ms mean; the time is in engine_batch_wait 3.00 ms (60%), then gateway_kafka_ack 1.00 ms (20%)"
        );
        let report = ServerReport {
            metrics_urls: vec!["http://gw/metrics".into()],
            scrapes: 8,
            measured: measured(),
            ..ServerReport::default()
        };
        let mut s = String::new();
        summary_lines(&mut s, Some(&report));
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 2, "{s}");
        assert!(lines[0].ends_with(&line), "{s}");
        assert!(lines[1].contains("shed by reason in_flight 2"), "{s}");
        assert!(lines[1].contains("1 s with a scrape missing"), "{s}");
    }

    #[test]
    fn without_figures_the_summary_says_why_in_one_line() {
        let mut s = String::new();
        summary_lines(&mut s, None);
        assert_eq!(s.lines().count(), 1);
        assert!(s.contains("no --metrics-url"), "{s}");

        let failed = ServerReport {
            metrics_urls: vec!["http://127.0.0.1:1/metrics".into()],
            scrapes: 5,
            scrapes_failed: 5,
            last_error: Some("connection refused".into()),
            ..ServerReport::default()
        };
        let mut s = String::new();
        summary_lines(&mut s, Some(&failed));
        assert_eq!(s.lines().count(), 1, "{s}");
        assert!(s.contains("5 of 5 scrapes failed; last error: connection refused"));
    }
}
