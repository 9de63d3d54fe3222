//! When each command is meant to be sent. The schedule depends only on the target rate, the
//! arrival process and the seed, never on responses: an open loop. Latency is measured from
//! these intended times, so a stalled system cannot hide its stall (no coordinated omission).

use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// Evenly spaced: command k at k / rate.
    Constant,
    /// A Poisson process: exponential gaps with mean 1 / rate.
    Poisson,
}

/// Intended send times, in nanoseconds from the start of a phase.
#[derive(Debug, Clone)]
pub struct Schedule {
    gap_ns: f64,
    arrival: Arrival,
    rng: Rng,
    count: u64,
    next_ns: f64,
}

impl Schedule {
    pub fn new(rate_per_s: f64, arrival: Arrival, seed: u64) -> Schedule {
        assert!(rate_per_s > 0.0, "rate must be positive");
        Schedule {
            gap_ns: 1e9 / rate_per_s,
            arrival,
            rng: Rng::new(seed),
            count: 0,
            next_ns: 0.0,
        }
    }

    /// The next command's intended time; non-decreasing.
    pub fn next_ns(&mut self) -> u64 {
        let t = match self.arrival {
            // Computed from the index, not summed, so rounding never drifts.
            Arrival::Constant => self.count as f64 * self.gap_ns,
            Arrival::Poisson => {
                let t = self.next_ns;
                // 1 - u is in (0, 1]: ln never sees 0.
                let u = 1.0 - self.rng.next_f64();
                self.next_ns += -u.ln() * self.gap_ns;
                t
            }
        };
        self.count += 1;
        t as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_is_evenly_spaced_without_drift() {
        let mut s = Schedule::new(26_667.0, Arrival::Constant, 1);
        let times: Vec<u64> = (0..=26_667).map(|_| s.next_ns()).collect();
        assert_eq!(times[0], 0);
        assert!(times.windows(2).all(|w| w[1] >= w[0]));
        // Command 26,667 is due at 1 s to within a nanosecond of rounding.
        assert!((times[26_667] as i64 - 1_000_000_000).abs() <= 1);
    }

    #[test]
    fn poisson_has_the_target_mean_and_is_seeded() {
        let rate = 10_000.0;
        let mut s = Schedule::new(rate, Arrival::Poisson, 42);
        let n = 200_000;
        let mut last = 0;
        for _ in 0..n {
            let t = s.next_ns();
            assert!(t >= last);
            last = t;
        }
        let expected_ns = n as f64 / rate * 1e9;
        assert!(
            (last as f64 / expected_ns - 1.0).abs() < 0.01,
            "{last} vs {expected_ns}"
        );
        let mut a = Schedule::new(rate, Arrival::Poisson, 5);
        let mut b = Schedule::new(rate, Arrival::Poisson, 5);
        for _ in 0..100 {
            assert_eq!(a.next_ns(), b.next_ns());
        }
    }
}
