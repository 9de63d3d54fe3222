//! The order mix: what share of commands are resting limit orders, marketable orders, cancels
//! and amends.

use serde::Serialize;

use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A GTC limit order a few ticks away from the mid, on the passive side: it rests.
    Limit,
    /// An IOC limit order through the mid: it trades with what rests.
    Marketable,
    /// Cancel one of the connection's own resting orders.
    Cancel,
    /// Amend one of the connection's own resting orders (quantity down, or a new price).
    Amend,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Limit, Kind::Marketable, Kind::Cancel, Kind::Amend];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Limit => "limit",
            Kind::Marketable => "marketable",
            Kind::Cancel => "cancel",
            Kind::Amend => "amend",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MixError {
    #[error("mix shares must be finite and non-negative")]
    Negative,
    #[error("mix shares add up to {0}, not 1")]
    NotOne(f64),
}

/// Shares of each kind, adding up to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Mix {
    pub limit: f64,
    pub marketable: f64,
    pub cancel: f64,
    pub amend: f64,
}

impl Mix {
    pub fn new(limit: f64, marketable: f64, cancel: f64, amend: f64) -> Result<Mix, MixError> {
        let shares = [limit, marketable, cancel, amend];
        if shares.iter().any(|s| !s.is_finite() || *s < 0.0) {
            return Err(MixError::Negative);
        }
        let sum: f64 = shares.iter().sum();
        if (sum - 1.0).abs() > 1e-6 {
            return Err(MixError::NotOne(sum));
        }
        Ok(Mix {
            limit,
            marketable,
            cancel,
            amend,
        })
    }

    /// Draws one kind with the configured probabilities.
    pub fn pick(&self, rng: &mut Rng) -> Kind {
        let u = rng.next_f64();
        if u < self.limit {
            Kind::Limit
        } else if u < self.limit + self.marketable {
            Kind::Marketable
        } else if u < self.limit + self.marketable + self.cancel {
            Kind::Cancel
        } else {
            Kind::Amend
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_must_add_up_to_one() {
        assert!(Mix::new(0.6, 0.05, 0.25, 0.10).is_ok());
        assert_eq!(Mix::new(0.6, 0.05, 0.25, 0.2), Err(MixError::NotOne(1.1)));
        assert_eq!(Mix::new(-0.1, 0.6, 0.25, 0.25), Err(MixError::Negative));
    }

    #[test]
    fn picks_follow_the_shares() {
        let mix = Mix::new(0.6, 0.05, 0.25, 0.10).unwrap();
        let mut rng = Rng::new(9);
        let mut counts = [0u32; 4];
        let n = 100_000;
        for _ in 0..n {
            counts[mix.pick(&mut rng) as usize] += 1;
        }
        for (count, share) in counts.iter().zip([0.6, 0.05, 0.25, 0.10]) {
            let got = f64::from(*count) / f64::from(n);
            assert!((got - share).abs() < 0.01, "{got} vs {share}");
        }
    }

    #[test]
    fn a_zero_share_is_never_picked() {
        let mix = Mix::new(1.0, 0.0, 0.0, 0.0).unwrap();
        let mut rng = Rng::new(1);
        assert!((0..1000).all(|_| mix.pick(&mut rng) == Kind::Limit));
    }
}
