//! `--reconnect`: the rules for logging in again after the gateway dropped a connection. Pure:
//! the waits, which closes are final, which login refusals count; the connection's supervisor
//! ([`crate::conn`]) does the waiting and the dialling.

use std::time::Duration;

use protocol::ws::{ConnectionStatus, ErrorCode, close_code};

/// The wait before the first attempt, doubled after each failed one up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Login refusals in a row (of the kinds that do not pass by themselves) after which a
/// connection gives up: the key is wrong or disabled, and trying again would only loop.
pub const LOGIN_REFUSALS_MAX: u32 = 3;

/// Waits between attempts: 100 ms doubling to 2 s, each drawn between half and all of that
/// ceiling, so that the hundreds of connections a gateway dropped at once do not come back in
/// step.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failed: u32,
}

impl Backoff {
    /// The ceiling of the wait after `failed` failed attempts.
    pub fn ceiling(failed: u32) -> Duration {
        BACKOFF_FIRST
            .saturating_mul(1u32.checked_shl(failed).unwrap_or(u32::MAX))
            .min(BACKOFF_MAX)
    }

    /// The wait before the next attempt; `jitter` is uniform in [0, 1).
    pub fn next(&mut self, jitter: f64) -> Duration {
        let ceiling = Self::ceiling(self.failed);
        self.failed = self.failed.saturating_add(1);
        ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// After a successful login the next drop starts again from the first wait.
    pub fn reset(&mut self) {
        self.failed = 0;
    }
}

/// Whether a close code means the gateway will not serve this client as it behaves (the API's
/// `abuse`, a frame that is not UTF-8, a message too big): reconnecting would only repeat it.
/// The others (`shutting_down`, `slow_consumer`, `idle_timeout`, an internal error) and a
/// connection that simply ended are worth another login.
pub fn close_is_final(code: u16) -> bool {
    matches!(
        code,
        close_code::POLICY_VIOLATION | close_code::INVALID_PAYLOAD | close_code::MESSAGE_TOO_BIG
    )
}

/// Whether the reason of the gateway's `status` push before it closes is final, as its close
/// code would be: the push can arrive when the close frame does not (a socket reset).
pub fn status_is_final(status: ConnectionStatus) -> bool {
    status == ConnectionStatus::Abuse
}

/// Whether a login refusal counts towards [`LOGIN_REFUSALS_MAX`]. Those that pass with time
/// (a rate limit, load shedding, a draining or broken gateway) do not: the generator waits and
/// tries again for as long as the run lasts.
pub fn refusal_counts(code: ErrorCode) -> bool {
    !matches!(
        code,
        ErrorCode::RateLimited
            | ErrorCode::Overloaded
            | ErrorCode::ShuttingDown
            | ErrorCode::Internal
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_from_100_ms_to_2_s_and_stays() {
        let ms: Vec<u128> = (0..8).map(|n| Backoff::ceiling(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(Backoff::ceiling(40), BACKOFF_MAX, "no overflow");
        assert_eq!(Backoff::ceiling(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn each_wait_lies_between_half_and_all_of_its_ceiling() {
        let mut low = Backoff::default();
        let mut high = Backoff::default();
        let mut rng = crate::rng::Rng::new(5);
        let mut drawn = Backoff::default();
        for n in 0..10 {
            let ceiling = Backoff::ceiling(n);
            assert_eq!(low.next(0.0), ceiling / 2);
            let top = high.next(0.999_999);
            assert!(top <= ceiling && top > ceiling.mul_f64(0.99), "{top:?}");
            let d = drawn.next(rng.next_f64());
            assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} for {ceiling:?}");
        }
        // Out-of-range jitter stays inside the bounds too.
        assert_eq!(Backoff::default().next(-3.0), BACKOFF_FIRST / 2);
        assert_eq!(Backoff::default().next(7.0), BACKOFF_FIRST);
    }

    #[test]
    fn jitter_spreads_connections_dropped_together() {
        let mut rng = crate::rng::Rng::new(11);
        let waits: std::collections::BTreeSet<Duration> = (0..200)
            .map(|_| Backoff::default().next(rng.next_f64()))
            .collect();
        assert!(waits.len() > 150, "{} distinct first waits", waits.len());
    }

    #[test]
    fn a_reset_starts_from_the_first_wait_again() {
        let mut b = Backoff::default();
        for _ in 0..6 {
            b.next(0.0);
        }
        assert_eq!(b.next(0.0), BACKOFF_MAX / 2);
        b.reset();
        assert_eq!(b.next(0.0), BACKOFF_FIRST / 2);
    }

    #[test]
    fn abuse_and_broken_frames_are_final_a_drain_is_not() {
        for code in [1008, 1007, 1009] {
            assert!(close_is_final(code), "{code}");
        }
        for code in [1000, 1001, 1006, 1011, 4000, 4001] {
            assert!(!close_is_final(code), "{code}");
        }
    }

    #[test]
    fn of_the_status_pushes_only_abuse_is_final() {
        for status in ConnectionStatus::ALL {
            assert_eq!(
                status_is_final(*status),
                *status == ConnectionStatus::Abuse,
                "{status:?}"
            );
        }
    }

    #[test]
    fn a_wrong_key_counts_a_rate_limit_does_not() {
        for code in [
            ErrorCode::UnknownKey,
            ErrorCode::BadSignature,
            ErrorCode::StaleTimestamp,
            ErrorCode::NonceReused,
        ] {
            assert!(refusal_counts(code), "{code:?}");
        }
        for code in [
            ErrorCode::RateLimited,
            ErrorCode::Overloaded,
            ErrorCode::ShuttingDown,
            ErrorCode::Internal,
        ] {
            assert!(!refusal_counts(code), "{code:?}");
        }
    }
}
