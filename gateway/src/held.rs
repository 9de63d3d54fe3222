//! What the gateway owes a connection whose socket it stopped reading.
//!
//! The read loop stops reading a socket while the connection's answers pending on Kafka are at
//! their limit (`GW_PENDING_PER_CONN_MAX`: Kafka slow or down), and while it answers a request in
//! line that waits (a query on a slow PostgreSQL). A client within its rate limit
//! goes on sending meanwhile; its frames wait in the kernel and arrive together once reading
//! resumes, a burst the gateway made, not the client. Refusing them as over the connection's
//! limit answers a well-behaved client `rate_limited` (and, a hundred times within a second,
//! cuts it as abusive). So every second the socket was held earns the connection its rate in
//! requests that pass the limiter when it would refuse them: over any stretch of time, a
//! connection still gets no more than its rate plus its burst, however the gateway read it.
//!
//! The credit lapses once the backlog must have been read (twice the hold, plus a second), so
//! a client cannot save it up for a burst of its own later; a hold longer than [`HOLD_MAX`] earns
//! no more than that (the kernel's buffers bound the backlog anyway), one shorter than
//! [`HOLD_MIN`] nothing (reading a frame and answering it is not a hold).

use std::time::Duration;

use tokio::time::Instant;

/// The longest hold that earns credit.
pub(crate) const HOLD_MAX: Duration = Duration::from_secs(30);
/// The shortest.
pub(crate) const HOLD_MIN: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub(crate) struct Held {
    rate_per_s: u32,
    since: Option<Instant>,
    credit: u64,
    lapses: Option<Instant>,
}

impl Held {
    pub(crate) fn new(rate_per_s: u32) -> Held {
        Held {
            rate_per_s,
            since: None,
            credit: 0,
            lapses: None,
        }
    }

    /// The read loop's state at `now`: `reading` false while the socket is held.
    pub(crate) fn note(&mut self, reading: bool, now: Instant) {
        match (reading, self.since) {
            (false, None) => self.since = Some(now),
            (true, Some(since)) => {
                self.since = None;
                let held = now.saturating_duration_since(since).min(HOLD_MAX);
                if held < HOLD_MIN {
                    return;
                }
                let earned = (held.as_secs_f64() * f64::from(self.rate_per_s)) as u64;
                let cap = HOLD_MAX.as_secs() * u64::from(self.rate_per_s);
                self.credit = if self.lapses.is_some_and(|t| now < t) {
                    (self.credit + earned).min(cap)
                } else {
                    earned.min(cap)
                };
                let lapses = now + 2 * held + Duration::from_secs(1);
                self.lapses = Some(self.lapses.map_or(lapses, |t| t.max(lapses)));
            }
            _ => {}
        }
    }

    /// The read loop answered a request in line from `from` to `to`, reading nothing meanwhile.
    pub(crate) fn stalled(&mut self, from: Instant, to: Instant) {
        if self.since.is_none() && to.saturating_duration_since(from) >= HOLD_MIN {
            self.note(false, from);
            self.note(true, to);
        }
    }

    /// Takes one request's worth of credit, if any is left at `now`.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        if self.credit == 0 || self.lapses.is_none_or(|t| now >= t) {
            self.credit = 0;
            return false;
        }
        self.credit -= 1;
        true
    }

    /// Whether the socket is held now, or its backlog may still be arriving: refusals then are
    /// answered but do not count toward `abuse`.
    pub(crate) fn excuses(&self, now: Instant) -> bool {
        self.since.is_some() || self.lapses.is_some_and(|t| now < t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_hold_earns_the_rate_for_its_length() {
        let t0 = Instant::now();
        let mut h = Held::new(200);
        assert!(!h.take(t0), "no credit before any hold");
        h.note(false, t0);
        h.note(false, t0 + ms(500));
        assert!(h.excuses(t0 + ms(1000)));
        h.note(true, t0 + ms(2000));
        let mut taken = 0;
        while h.take(t0 + ms(2100)) {
            taken += 1;
        }
        assert_eq!(taken, 400, "2 s held at 200/s");
    }

    #[test]
    fn credit_lapses_after_twice_the_hold_and_a_second() {
        let t0 = Instant::now();
        let mut h = Held::new(100);
        h.note(false, t0);
        h.note(true, t0 + ms(1000));
        assert!(h.excuses(t0 + ms(3900)));
        assert!(h.take(t0 + ms(3900)));
        assert!(!h.excuses(t0 + ms(4000)));
        assert!(!h.take(t0 + ms(4000)));
        assert!(!h.take(t0 + ms(3950)), "a lapsed credit is gone");
    }

    #[test]
    fn short_holds_after_a_long_one_add_to_it_and_never_shorten_it() {
        let t0 = Instant::now();
        let mut h = Held::new(100);
        h.note(false, t0);
        h.note(true, t0 + ms(5000));
        h.note(false, t0 + ms(5010));
        h.note(true, t0 + ms(5070));
        assert!(h.excuses(t0 + ms(15_500)), "the long hold's window stands");
        let mut taken = 0;
        while h.take(t0 + ms(5030)) {
            taken += 1;
        }
        assert_eq!(taken, 506);
    }

    #[test]
    fn a_stall_shorter_than_the_minimum_earns_nothing_and_excuses_nothing() {
        let t0 = Instant::now();
        let mut h = Held::new(1000);
        h.stalled(t0, t0 + ms(49));
        assert!(!h.excuses(t0 + ms(50)));
        assert!(!h.take(t0 + ms(50)));
        h.stalled(t0 + ms(100), t0 + ms(600));
        assert!(h.excuses(t0 + ms(700)));
        let mut taken = 0;
        while h.take(t0 + ms(700)) {
            taken += 1;
        }
        assert_eq!(taken, 500, "half a second in line at 1000/s");
    }

    #[test]
    fn a_long_hold_earns_no_more_than_the_cap() {
        let t0 = Instant::now();
        let mut h = Held::new(10);
        h.note(false, t0);
        h.note(true, t0 + Duration::from_secs(600));
        let mut taken = 0;
        while h.take(t0 + Duration::from_secs(601)) {
            taken += 1;
        }
        assert_eq!(taken, 300);
    }
}
