//! Prices and quantities that keep the books realistic: every pair has a reference mid that
//! drifts slowly and deterministically with time (the same for every connection, no
//! coordination needed); limit orders rest a few ticks away from it, marketable orders cross it.
//! Every price is on tick, every quantity on lot and above the minimum notional.

use protocol::{PairRegistry, PairSpec, Price, Qty, Side};

use crate::rng::Rng;

/// Farthest a resting order is placed from the mid, in ticks.
pub const REST_TICKS_MAX: i64 = 20;
/// How far through the mid a marketable order reaches, in ticks.
pub const CROSS_TICKS: i64 = 30;
/// Amplitude of the mid's drift, in ticks: slow against the resting band, so resting orders
/// mostly rest and trades come mainly from marketable orders (at most ~2 ticks/s).
const DRIFT_TICKS: f64 = 40.0;
/// Period of the mid's drift, in seconds.
const DRIFT_PERIOD_S: f64 = 120.0;

#[derive(Debug, Clone)]
pub struct PairMarket {
    pub spec: PairSpec,
    /// Reference mid in price units, on tick.
    pub base_mid: i64,
}

/// A typical price for a symbol, as a decimal string in the quote currency; an unknown pair
/// trades around 100.
fn reference_price(symbol: &str) -> &'static str {
    let base = symbol.split('-').next().unwrap_or("");
    match (base, symbol) {
        (_, "ETH-BTC") => "0.05",
        ("BTC", _) => "60000",
        ("ETH", _) => "3000",
        ("SOL", _) => "150",
        ("XRP", _) => "0.5",
        _ => "100",
    }
}

#[derive(Debug, Clone)]
pub struct Market {
    pub pairs: Vec<PairMarket>,
}

impl Market {
    pub fn new(registry: &PairRegistry) -> Market {
        let pairs = registry
            .iter()
            .map(|spec| {
                let units = protocol::pairs::parse_units(
                    reference_price(&spec.symbol),
                    spec.price_decimals,
                )
                .unwrap_or(0);
                let tick = spec.tick_size.0;
                // At least far enough from zero that a resting buy keeps a positive price.
                let base_mid = round_to(units, tick).max(tick * (REST_TICKS_MAX + 1) * 10);
                PairMarket {
                    spec: spec.clone(),
                    base_mid,
                }
            })
            .collect();
        Market { pairs }
    }
}

fn round_to(x: i64, step: i64) -> i64 {
    (x + step / 2) / step * step
}

fn ceil_to(x: i64, step: i64) -> i64 {
    (x + step - 1) / step * step
}

impl PairMarket {
    /// The mid at `t_s` seconds into the run, on tick.
    pub fn mid(&self, t_s: f64) -> i64 {
        let phase = f64::from(self.spec.id) * 0.7;
        let wave = (std::f64::consts::TAU * t_s / DRIFT_PERIOD_S + phase).sin();
        let tick = self.spec.tick_size.0;
        let mid = self.base_mid + (DRIFT_TICKS * wave).round() as i64 * tick;
        mid.max(tick * (REST_TICKS_MAX + 1))
    }

    /// The smallest quantity on lot, at or above `min_qty`, whose notional at `price` reaches
    /// the pair's minimum notional.
    pub fn min_qty_at(&self, price: i64) -> i64 {
        let spec = &self.spec;
        let price = i128::from(price.max(1));
        let by_notional = (spec.min_notional + price - 1) / price;
        let by_notional = i64::try_from(by_notional).unwrap_or(i64::MAX);
        ceil_to(by_notional.max(spec.min_qty.0), spec.lot_size.0)
    }

    /// 1 to 4 times the minimum quantity, capped at `max_qty`.
    pub fn qty_at(&self, price: i64, rng: &mut Rng) -> i64 {
        let lots = 1 + rng.below(4) as i64;
        (self.min_qty_at(price) * lots).min(self.spec.max_qty.0)
    }

    /// A passive price: 1 to `REST_TICKS_MAX` ticks on the own side of the mid.
    pub fn resting_price(&self, mid: i64, side: Side, rng: &mut Rng) -> i64 {
        let tick = self.spec.tick_size.0;
        let away = (1 + rng.below(REST_TICKS_MAX as u64) as i64) * tick;
        match side {
            Side::Buy => (mid - away).max(tick),
            Side::Sell => mid + away,
        }
    }

    /// A price through the mid that takes what rests near it.
    pub fn crossing_price(&self, mid: i64, side: Side) -> i64 {
        let tick = self.spec.tick_size.0;
        match side {
            Side::Buy => mid + CROSS_TICKS * tick,
            Side::Sell => (mid - CROSS_TICKS * tick).max(tick),
        }
    }

    pub fn format_price(&self, units: i64) -> String {
        self.spec.format_price(Price(units))
    }

    pub fn format_qty(&self, units: i64) -> String {
        self.spec.format_qty(Qty(units))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn market() -> Market {
        let text = include_str!("../../config/pairs.toml");
        Market::new(&PairRegistry::from_toml(text).unwrap())
    }

    #[test]
    fn every_generated_order_is_valid_for_its_pair() {
        let mut rng = Rng::new(11);
        for pm in &market().pairs {
            let spec = &pm.spec;
            for step in 0..500 {
                let mid = pm.mid(f64::from(step) * 0.37);
                assert_eq!(mid % spec.tick_size.0, 0, "{}", spec.symbol);
                for side in [Side::Buy, Side::Sell] {
                    for price in [
                        pm.resting_price(mid, side, &mut rng),
                        pm.crossing_price(mid, side),
                    ] {
                        assert!(price > 0);
                        assert_eq!(price % spec.tick_size.0, 0, "{}", spec.symbol);
                        let qty = pm.qty_at(price, &mut rng);
                        assert_eq!(qty % spec.lot_size.0, 0, "{}", spec.symbol);
                        assert!(qty >= spec.min_qty.0 && qty <= spec.max_qty.0);
                        let notional = PairSpec::notional(Price(price), Qty(qty));
                        assert!(notional >= spec.min_notional, "{}", spec.symbol);
                    }
                }
            }
        }
    }

    #[test]
    fn resting_orders_do_not_cross_and_marketable_ones_do() {
        let mut rng = Rng::new(5);
        let pm = &market().pairs[0];
        let mid = pm.mid(0.0);
        for _ in 0..100 {
            assert!(pm.resting_price(mid, Side::Buy, &mut rng) < mid);
            assert!(pm.resting_price(mid, Side::Sell, &mut rng) > mid);
        }
        let deepest_sell = mid + REST_TICKS_MAX * pm.spec.tick_size.0;
        assert!(pm.crossing_price(mid, Side::Buy) > deepest_sell);
    }

    #[test]
    fn the_mid_drifts_slowly() {
        let pm = &market().pairs[0];
        let (a, b) = (pm.mid(0.0), pm.mid(1.0));
        let tick = pm.spec.tick_size.0;
        assert!((a - b).abs() <= 3 * tick, "{a} -> {b}");
        let lo = (0..90).map(|s| pm.mid(f64::from(s))).min().unwrap();
        let hi = (0..90).map(|s| pm.mid(f64::from(s))).max().unwrap();
        assert!(hi > lo);
    }
}
