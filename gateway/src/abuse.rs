//! When a client that keeps being refused by its connection's rate limit is closed as abusive.
//!
//! Normally: `GW_ABUSE_LIMITED_PER_S` refusals within one second, or that many in a row however
//! slowly they are read (a client far above its limit gets a request through now and then, and
//! must not escape by that).
//!
//! While the gateway itself reads the client late (it held the socket, or it is overloaded and
//! its tasks run late), a well-behaved client's evenly sent frames reach it in bursts, over its
//! rate: one burst of refusals, once, while the backlog drains. So then it takes the threshold
//! in each of [`SUSTAINED_SECONDS`] consecutive seconds (a client that goes on sending far above
//! its limit), or ten times it in a row.

use std::time::Duration;

use tokio::time::Instant;

/// Consecutive seconds at the threshold that close an excused connection.
pub(crate) const SUSTAINED_SECONDS: u32 = 3;
/// How many times the threshold, in a row, closes an excused connection.
const EXCUSED_IN_A_ROW_FACTOR: u32 = 10;
const SECOND: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Refusals {
    /// The current one-second window: when it began, and its refusals.
    window: (Instant, u32),
    /// Windows at the threshold just before the current one, each following the last.
    full_before: u32,
    in_a_row: u32,
}

impl Refusals {
    pub(crate) fn new(now: Instant) -> Refusals {
        Refusals {
            window: (now, 0),
            full_before: 0,
            in_a_row: 0,
        }
    }

    /// A request passed the limit.
    pub(crate) fn passed(&mut self) {
        self.in_a_row = 0;
    }

    /// One refusal at `now`; true when the connection is to be closed as abusive. `threshold`:
    /// `GW_ABUSE_LIMITED_PER_S`; `excused`: the gateway may be reading this client late.
    pub(crate) fn refused(&mut self, now: Instant, threshold: u32, excused: bool) -> bool {
        let (start, count) = self.window;
        let age = now.saturating_duration_since(start);
        if age >= SECOND {
            let follows = age < 2 * SECOND;
            self.full_before = if count >= threshold && follows {
                self.full_before + 1
            } else {
                0
            };
            self.window = (now, 0);
        }
        self.window.1 += 1;
        self.in_a_row += 1;
        if excused {
            (self.window.1 >= threshold && self.full_before + 1 >= SUSTAINED_SECONDS)
                || self.in_a_row >= threshold.saturating_mul(EXCUSED_IN_A_ROW_FACTOR)
        } else {
            self.window.1 >= threshold || self.in_a_row >= threshold
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Refusals spread evenly at `per_s` from `t0` for `for_ms`, one passing request every
    /// `pass_every` refusals; the time of the one that closes the connection, if any.
    fn run(per_s: u64, for_ms: u64, pass_every: u32, excused: bool) -> Option<u64> {
        let t0 = Instant::now();
        let mut r = Refusals::new(t0);
        let n = per_s * for_ms / 1000;
        for i in 0..n {
            let at_ms = i * 1000 / per_s;
            if pass_every > 0 && (i as u32).is_multiple_of(pass_every) {
                r.passed();
            }
            if r.refused(t0 + Duration::from_millis(at_ms), 100, excused) {
                return Some(at_ms);
            }
        }
        None
    }

    #[test]
    fn normally_a_second_at_the_threshold_or_that_many_in_a_row_closes() {
        assert_eq!(run(200, 5_000, 20, false), Some(495));
        assert!(run(50, 10_000, 0, false).is_some(), "100 in a row");
        assert_eq!(
            run(50, 10_000, 20, false),
            None,
            "below, and passing now and then"
        );
    }

    #[test]
    fn excused_one_burst_does_not_close_but_a_sustained_excess_does() {
        // A backlog read at once: 800 refusals within a second, then nothing.
        let t0 = Instant::now();
        let mut r = Refusals::new(t0);
        for i in 0..800_u64 {
            if i.is_multiple_of(3) {
                r.passed();
            }
            assert!(!r.refused(t0 + Duration::from_micros(i * 500), 100, true));
        }
        assert!(!r.refused(t0 + Duration::from_secs(5), 100, true));
        // Far above the limit for seconds: closed in the third.
        let closed = run(300, 10_000, 20, true).expect("closed");
        assert!((2_000..3_000).contains(&closed), "{closed}");
        // One refusal in twenty passing would have it escape the in-a-row rule alone.
        assert_eq!(
            run(90, 10_000, 20, true),
            None,
            "below the threshold each second"
        );
        assert!(run(50, 30_000, 0, true).is_some(), "1,000 in a row");
    }
}
