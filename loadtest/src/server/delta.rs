//! From scrapes to seconds: the few series read from each scrape ([`Reading`]), the increase
//! between two scrapes of one service ([`delta`]), and one second of the whole system
//! ([`ServerPoint`]). Pure: no I/O, no clock.

use std::collections::BTreeMap;

use serde::Serialize;

use super::prom::Sample;

/// The whole path inside the system, from the gateway handing a command to Kafka to its verdict.
pub const VERDICT: &str = "gateway_verdict_seconds";

/// The hops of one command's path, in path order (docs/METRICS.md, end): to Kafka, through the
/// account stage's commit when it runs, to the engine's actor, through its batch, back to the
/// gateway. They overlap rather than add up exactly: `gateway_kafka_ack` and
/// `engine_record_age` both start at the gateway's produce call, so their shares of the
/// verdict can sum past 100%.
pub const HOPS: [&str; 5] = [
    "gateway_kafka_ack_seconds",
    "accounts_commit_seconds",
    "engine_record_age_seconds",
    "engine_batch_wait_seconds",
    "gateway_events_age_seconds",
];

const SHED_TOTAL: &str = "gateway_shed_total";
const CONSUMER_LAG: &str = "engine_consumer_lag_records";
const ACCOUNTS_LAG: &str = "accounts_consumer_lag_records";

/// The hop's name without its unit, for summaries and legends.
pub fn short_name(metric: &str) -> &str {
    metric.strip_suffix("_seconds").unwrap_or(metric)
}

/// One summary as exported: cumulative `_sum` and `_count`, and the p99 gauge (over the
/// exporter's recent window, not since start).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SummaryReading {
    pub sum_s: f64,
    pub count: f64,
    pub p99_s: Option<f64>,
}

/// What one scrape of one service says about the series this report reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// `gateway_shed_total` by `reason`, cumulative.
    pub shed_total: BTreeMap<String, f64>,
    /// `engine_consumer_lag_records` by `pair`, as sampled.
    pub lag_records: BTreeMap<String, f64>,
    /// `accounts_consumer_lag_records` by `shard`, as sampled.
    pub accounts_lag_records: BTreeMap<String, f64>,
    /// [`VERDICT`] and the [`HOPS`] this service exports.
    pub summaries: BTreeMap<&'static str, SummaryReading>,
}

impl Reading {
    /// Picks the series out of a scrape. Series of one name under several label sets add up
    /// (their p99 is the largest); other series are ignored, and so are NaN values.
    pub fn of(samples: &[Sample]) -> Reading {
        let mut r = Reading::default();
        for s in samples.iter().filter(|s| !s.value.is_nan()) {
            if s.name == SHED_TOTAL {
                let reason = s.label("reason").unwrap_or("unknown").to_owned();
                *r.shed_total.entry(reason).or_default() += s.value;
            } else if s.name == CONSUMER_LAG {
                let pair = s.label("pair").unwrap_or("unknown").to_owned();
                *r.lag_records.entry(pair).or_default() += s.value;
            } else if s.name == ACCOUNTS_LAG {
                let shard = s.label("shard").unwrap_or("unknown").to_owned();
                *r.accounts_lag_records.entry(shard).or_default() += s.value;
            } else {
                r.add_summary_line(s);
            }
        }
        r
    }

    fn add_summary_line(&mut self, s: &Sample) {
        let Some(metric) = std::iter::once(VERDICT)
            .chain(HOPS)
            .find(|m| s.name.starts_with(m))
        else {
            return;
        };
        let entry = self.summaries.entry(metric).or_default();
        match &s.name[metric.len()..] {
            "_sum" => entry.sum_s += s.value,
            "_count" => entry.count += s.value,
            "" if s.label("quantile") == Some("0.99") => {
                entry.p99_s = Some(entry.p99_s.map_or(s.value, |p| p.max(s.value)));
            }
            _ => {}
        }
    }
}

/// How much a cumulative value grew between two scrapes. A value that went down means the
/// process restarted and counted again from zero, so all of the new value is growth: never a
/// negative rate.
pub fn increase(prev: f64, cur: f64) -> f64 {
    if cur >= prev { cur - prev } else { cur }
}

/// One hop between two scrapes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HopDelta {
    pub count: u64,
    pub sum_s: f64,
    pub p99_s: Option<f64>,
}

/// What happened between two scrapes of one service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// Between the two scrapes, in seconds.
    pub span_s: f64,
    pub shed: BTreeMap<String, u64>,
    /// The gauges at the later scrape.
    pub lag_records: BTreeMap<String, f64>,
    pub accounts_lag_records: BTreeMap<String, f64>,
    pub hops: BTreeMap<&'static str, HopDelta>,
}

/// The growth from `prev` to `cur`, scraped `span_s` apart. A series new in `cur` grew from
/// zero (it is created at its first use). A summary whose count went down restarted, and so
/// did its sum with it.
pub fn delta(prev: &Reading, cur: &Reading, span_s: f64) -> Delta {
    let shed = cur
        .shed_total
        .iter()
        .map(|(reason, &v)| {
            let before = prev.shed_total.get(reason).copied().unwrap_or(0.0);
            (reason.clone(), increase(before, v).round() as u64)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let hops = cur
        .summaries
        .iter()
        .map(|(&metric, c)| {
            let p = prev.summaries.get(metric).copied().unwrap_or_default();
            let (count, sum_s) = if c.count >= p.count {
                (c.count - p.count, (c.sum_s - p.sum_s).max(0.0))
            } else {
                (c.count, c.sum_s)
            };
            let hop = HopDelta {
                count: count.round() as u64,
                sum_s,
                p99_s: c.p99_s,
            };
            (metric, hop)
        })
        .collect();
    Delta {
        span_s,
        shed,
        lag_records: cur.lag_records.clone(),
        accounts_lag_records: cur.accounts_lag_records.clone(),
        hops,
    }
}

/// One hop over one second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HopSecond {
    /// Observations in the second (commands, records or batches, as the metric counts them).
    pub count: u64,
    /// Their mean: the increase of `_sum` over that of `_count`; absent when there was none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_ms: Option<f64>,
    /// The exported `quantile="0.99"`, which covers the exporter's recent window (about a
    /// minute), not this second alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

/// One second of the server side: one round of scrapes of every service's `/metrics`, against
/// each one's previous good scrape (`server.series` in `report.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerPoint {
    /// When the round began, in seconds since the start (the client series' clock).
    pub t_s: f64,
    /// The generator's phase then.
    pub phase: String,
    /// The longest time back to a service's previous good scrape (about 1 s; more after a
    /// failed one, whose figures come with the next good scrape); 0 when none answered.
    pub span_s: f64,
    /// Metrics URLs whose scrape failed this round.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// Commands the gateways shed since their previous scrape, by `reason`
    /// (`gateway_shed_total`), and the same per second; reasons with none are left out.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub shed: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub shed_per_s: BTreeMap<String, f64>,
    /// `engine_consumer_lag_records` summed over the pairs, and the largest pair's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_lag_records: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_lag_max_pair_records: Option<f64>,
    /// `accounts_consumer_lag_records` (the account stage) summed over the shards, and the
    /// largest shard's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts_consumer_lag_records: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts_consumer_lag_max_shard_records: Option<f64>,
    /// [`VERDICT`] and each of the [`HOPS`] exported, by metric name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub hops: BTreeMap<String, HopSecond>,
}

impl ServerPoint {
    /// The services' deltas of one round as one point: counts and rates add, p99s take the
    /// largest. Without `t_s` and `phase`, which the caller knows.
    pub fn of(deltas: &[Delta], missing: Vec<String>) -> ServerPoint {
        let span_s = deltas.iter().map(|d| d.span_s).fold(0.0, f64::max);
        let mut point = ServerPoint {
            // Never 0 once a service answered: 0 means none did.
            span_s: if deltas.is_empty() {
                0.0
            } else {
                round3(span_s).max(0.001)
            },
            missing,
            ..ServerPoint::default()
        };
        let mut sums_s: BTreeMap<&str, f64> = BTreeMap::new();
        let mut lag: BTreeMap<&str, f64> = BTreeMap::new();
        let mut accounts_lag: BTreeMap<&str, f64> = BTreeMap::new();
        for d in deltas {
            for (reason, n) in &d.shed {
                *point.shed.entry(reason.clone()).or_default() += n;
                if d.span_s > 0.0 {
                    *point.shed_per_s.entry(reason.clone()).or_default() += *n as f64 / d.span_s;
                }
            }
            for (pair, v) in &d.lag_records {
                *lag.entry(pair).or_default() += v;
            }
            for (shard, v) in &d.accounts_lag_records {
                *accounts_lag.entry(shard).or_default() += v;
            }
            for (&metric, h) in &d.hops {
                let hop = point.hops.entry(metric.to_owned()).or_default();
                hop.count += h.count;
                *sums_s.entry(metric).or_default() += h.sum_s;
                if let Some(p) = h.p99_s {
                    hop.p99_ms = Some(hop.p99_ms.map_or(p * 1e3, |q| q.max(p * 1e3)));
                }
            }
        }
        for rate in point.shed_per_s.values_mut() {
            *rate = round3(*rate);
        }
        for (metric, hop) in &mut point.hops {
            let sum_s = sums_s.get(metric.as_str()).copied().unwrap_or(0.0);
            hop.mean_ms = (hop.count > 0).then(|| round3(sum_s * 1e3 / hop.count as f64));
            hop.p99_ms = hop.p99_ms.map(round3);
        }
        if !lag.is_empty() {
            point.consumer_lag_records = Some(lag.values().sum());
            point.consumer_lag_max_pair_records = Some(lag.values().copied().fold(0.0, f64::max));
        }
        if !accounts_lag.is_empty() {
            point.accounts_consumer_lag_records = Some(accounts_lag.values().sum());
            point.accounts_consumer_lag_max_shard_records =
                Some(accounts_lag.values().copied().fold(0.0, f64::max));
        }
        point
    }

    /// Whether any service answered this round.
    pub fn has_data(&self) -> bool {
        self.span_s > 0.0
    }
}

/// Rounded to the microsecond (of milliseconds) or the millisecond (of seconds).
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::prom::parse;

    fn reading(text: &str) -> Reading {
        Reading::of(&parse(text).unwrap())
    }

    const GATEWAY_T0: &str = "\
gateway_shed_total{reason=\"in_flight\"} 10
gateway_shed_total{reason=\"queue_delay\"} 0
gateway_verdict_seconds{quantile=\"0.5\"} 0.002
gateway_verdict_seconds{quantile=\"0.99\"} 0.009
gateway_verdict_seconds_sum 2.0
gateway_verdict_seconds_count 1000
gateway_kafka_ack_seconds_sum 0.5
gateway_kafka_ack_seconds_count 1000
gateway_connections 200
";
    const GATEWAY_T1: &str = "\
gateway_shed_total{reason=\"in_flight\"} 25
gateway_shed_total{reason=\"queue_delay\"} 4
gateway_verdict_seconds{quantile=\"0.99\"} 0.011
gateway_verdict_seconds_sum 6.0
gateway_verdict_seconds_count 1500
gateway_kafka_ack_seconds_sum 1.5
gateway_kafka_ack_seconds_count 1500
";

    #[test]
    fn a_reading_keeps_only_the_reported_series() {
        let r = reading(GATEWAY_T0);
        assert_eq!(r.shed_total.get("in_flight"), Some(&10.0));
        assert_eq!(r.shed_total.len(), 2);
        let v = r.summaries[VERDICT];
        assert_eq!((v.sum_s, v.count, v.p99_s), (2.0, 1000.0, Some(0.009)));
        assert_eq!(r.summaries["gateway_kafka_ack_seconds"].p99_s, None);
        assert_eq!(r.summaries.len(), 2, "gateway_connections is not read");
    }

    #[test]
    fn label_sets_of_one_summary_add_and_keep_the_largest_p99() {
        let r = reading(
            "engine_batch_wait_seconds{pair=\"A\",quantile=\"0.99\"} 0.004\n\
             engine_batch_wait_seconds{pair=\"B\",quantile=\"0.99\"} 0.007\n\
             engine_batch_wait_seconds_sum{pair=\"A\"} 1\n\
             engine_batch_wait_seconds_sum{pair=\"B\"} 2\n\
             engine_batch_wait_seconds_count{pair=\"A\"} 10\n\
             engine_batch_wait_seconds_count{pair=\"B\"} 20\n\
             engine_consumer_lag_records{pair=\"A\"} 5\n\
             engine_consumer_lag_records{pair=\"B\"} NaN\n",
        );
        let b = r.summaries["engine_batch_wait_seconds"];
        assert_eq!((b.sum_s, b.count, b.p99_s), (3.0, 30.0, Some(0.007)));
        assert_eq!(r.lag_records.len(), 1, "NaN is no reading");
    }

    #[test]
    fn the_mean_of_a_second_comes_from_the_sum_and_count_increases() {
        let d = delta(&reading(GATEWAY_T0), &reading(GATEWAY_T1), 1.0);
        assert_eq!(d.shed.get("in_flight"), Some(&15));
        assert_eq!(d.shed.get("queue_delay"), Some(&4));
        let p = ServerPoint::of(&[d], Vec::new());
        let v = p.hops[VERDICT];
        assert_eq!(v.count, 500);
        assert_eq!(v.mean_ms, Some(8.0), "4 s over 500 commands");
        assert_eq!(v.p99_ms, Some(11.0), "the exported gauge as it was");
        assert_eq!(p.hops["gateway_kafka_ack_seconds"].mean_ms, Some(2.0));
        assert_eq!(p.shed_per_s.get("in_flight"), Some(&15.0));
    }

    #[test]
    fn a_restarted_service_never_gives_a_negative_rate() {
        assert_eq!(increase(10.0, 25.0), 15.0);
        assert_eq!(increase(25.0, 3.0), 3.0, "counted from zero again");
        let restarted = reading(
            "gateway_shed_total{reason=\"in_flight\"} 2\n\
             gateway_verdict_seconds_sum 0.3\n\
             gateway_verdict_seconds_count 100\n",
        );
        let d = delta(&reading(GATEWAY_T1), &restarted, 2.0);
        assert_eq!(d.shed.get("in_flight"), Some(&2));
        assert_eq!(d.shed.get("queue_delay"), None, "gone, not negative");
        let h = d.hops[VERDICT];
        assert_eq!((h.count, h.sum_s), (100, 0.3));
        let p = ServerPoint::of(&[d], Vec::new());
        assert_eq!(p.hops[VERDICT].mean_ms, Some(3.0));
        assert_eq!(p.shed_per_s.get("in_flight"), Some(&1.0), "2 over 2 s");
    }

    #[test]
    fn a_quiet_second_has_a_count_of_zero_and_no_mean() {
        let r = reading(GATEWAY_T1);
        let p = ServerPoint::of(&[delta(&r, &r, 1.0)], Vec::new());
        assert_eq!(p.hops[VERDICT].count, 0);
        assert_eq!(p.hops[VERDICT].mean_ms, None);
        assert!(p.shed.is_empty());
    }

    #[test]
    fn services_add_up_into_one_second() {
        let engine_t0 = reading(
            "engine_record_age_seconds_sum 1\n\
             engine_record_age_seconds_count 100\n\
             engine_consumer_lag_records{pair=\"BTC-EUR\"} 0\n",
        );
        let engine_t1 = reading(
            "engine_record_age_seconds_sum 1.5\n\
             engine_record_age_seconds_count 200\n\
             engine_consumer_lag_records{pair=\"BTC-EUR\"} 7\n\
             engine_consumer_lag_records{pair=\"ETH-EUR\"} 3\n",
        );
        let p = ServerPoint::of(
            &[
                delta(&reading(GATEWAY_T0), &reading(GATEWAY_T1), 1.0),
                delta(&engine_t0, &engine_t1, 1.2),
            ],
            vec!["http://accounts/metrics".into()],
        );
        assert_eq!(p.span_s, 1.2);
        assert_eq!(p.hops["engine_record_age_seconds"].mean_ms, Some(5.0));
        assert_eq!(p.hops[VERDICT].count, 500);
        assert_eq!(p.consumer_lag_records, Some(10.0));
        assert_eq!(p.consumer_lag_max_pair_records, Some(7.0));
        assert_eq!(p.accounts_consumer_lag_records, None, "no stage scraped");
        assert_eq!(p.missing, vec!["http://accounts/metrics".to_owned()]);
        assert!(p.has_data());
        assert!(!ServerPoint::of(&[], vec!["x".into()]).has_data());
    }

    #[test]
    fn two_gateways_pool_their_means_by_count() {
        let a = Delta {
            span_s: 1.0,
            hops: [(
                VERDICT,
                HopDelta {
                    count: 300,
                    sum_s: 0.3,
                    p99_s: Some(0.002),
                },
            )]
            .into(),
            ..Delta::default()
        };
        let mut b = a.clone();
        b.hops.insert(
            VERDICT,
            HopDelta {
                count: 100,
                sum_s: 0.5,
                p99_s: Some(0.009),
            },
        );
        let p = ServerPoint::of(&[a, b], Vec::new());
        assert_eq!(p.hops[VERDICT].mean_ms, Some(2.0), "0.8 s over 400");
        assert_eq!(p.hops[VERDICT].p99_ms, Some(9.0));
    }

    #[test]
    fn the_account_stages_lag_is_read_per_shard_apart_from_the_engines() {
        let stage = reading(
            "accounts_consumer_lag_records{shard=\"0\"} 4\n\
             accounts_consumer_lag_records{shard=\"1\"} 9\n\
             accounts_consumer_lag_records{shard=\"2\"} NaN\n",
        );
        assert_eq!(stage.accounts_lag_records.len(), 2, "NaN is no reading");
        assert!(stage.lag_records.is_empty());
        let engine = reading("engine_consumer_lag_records{pair=\"BTC-EUR\"} 5\n");
        let p = ServerPoint::of(
            &[delta(&stage, &stage, 1.0), delta(&engine, &engine, 1.0)],
            Vec::new(),
        );
        assert_eq!(
            (
                p.accounts_consumer_lag_records,
                p.accounts_consumer_lag_max_shard_records
            ),
            (Some(13.0), Some(9.0))
        );
        assert_eq!(p.consumer_lag_records, Some(5.0), "the engine's alone");
    }
}
