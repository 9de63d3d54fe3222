//! The pair registry: `config/pairs.toml`, read by the gateway, the engine and the load generator.
//!
//! A pair's index in the file is its [`PairId`] and its Kafka partition on both topics.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::{Price, Qty};

/// A pair's index in the registry, equal to its Kafka partition.
pub type PairId = u32;

/// Why a registry file or a decimal string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PairsError {
    #[error("pairs file is not valid TOML: {0}")]
    Toml(String),
    #[error("pairs file lists no pair")]
    Empty,
    #[error("pair {symbol}: {problem}")]
    Invalid { symbol: String, problem: String },
    #[error("pair {0} is listed twice")]
    Duplicate(String),
}

/// Why a client's decimal string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum DecimalError {
    #[error("not a plain decimal number")]
    Malformed,
    #[error("more decimal places than the pair allows")]
    TooPrecise,
    #[error("out of range")]
    OutOfRange,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PairsFile {
    pair: Vec<PairEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PairEntry {
    symbol: String,
    price_decimals: u32,
    qty_decimals: u32,
    tick_size: String,
    lot_size: String,
    min_qty: String,
    max_qty: String,
    min_notional: String,
    /// Rates as decimals of what each side receives ("0.001" is 0.1%); absent: 0.
    #[serde(default)]
    maker_fee: Option<String>,
    #[serde(default)]
    taker_fee: Option<String>,
}

/// One part in a million: a fee is `fee_ppm / PPM_WHOLE` of what its side receives.
pub const PPM_WHOLE: u32 = 1_000_000;

/// A pair's maker and taker fees, in parts per million of what each side receives (the buyer
/// the base asset, the seller the quote asset). Default 0: no fee.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairFees {
    pub maker_fee_ppm: u32,
    pub taker_fee_ppm: u32,
}

impl PairFees {
    /// Parses `pairs.toml`'s rates: plain decimals with at most 6 places, from 0 up to and
    /// excluding 1 (a fee of everything received is a configuration mistake).
    fn parse(maker: Option<&str>, taker: Option<&str>) -> Result<PairFees, String> {
        let rate = |name: &str, s: Option<&str>| -> Result<u32, String> {
            let Some(s) = s else { return Ok(0) };
            match parse_units(s, 6) {
                Ok(ppm) if (0..i64::from(PPM_WHOLE)).contains(&ppm) => {
                    Ok(u32::try_from(ppm).expect("below PPM_WHOLE"))
                }
                Ok(_) => Err(format!("{name} {s:?}: must be at least 0 and below 1")),
                Err(err) => Err(format!("{name} {s:?}: {err} (at most 6 decimals)")),
            }
        };
        Ok(PairFees {
            maker_fee_ppm: rate("maker_fee", maker)?,
            taker_fee_ppm: rate("taker_fee", taker)?,
        })
    }
}

/// One pair's trading rules, in integer units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairSpec {
    pub id: PairId,
    pub symbol: String,
    pub price_decimals: u32,
    pub qty_decimals: u32,
    pub tick_size: Price,
    pub lot_size: Qty,
    pub min_qty: Qty,
    pub max_qty: Qty,
    /// In price units x quantity units (scale `price_decimals + qty_decimals`).
    pub min_notional: i128,
}

/// Largest number of decimals a pair may use, so `i64` units hold realistic values.
const DECIMALS_MAX: u32 = 12;

impl PairSpec {
    /// Parses a client's price string ("123.45") into price units. Rejects more decimals than
    /// the pair has, signs other than a leading '-', exponents and whitespace.
    pub fn parse_price(&self, s: &str) -> Result<Price, DecimalError> {
        parse_units(s, self.price_decimals).map(Price)
    }

    pub fn parse_qty(&self, s: &str) -> Result<Qty, DecimalError> {
        parse_units(s, self.qty_decimals).map(Qty)
    }

    /// Formats a price with exactly `price_decimals` decimals.
    pub fn format_price(&self, price: Price) -> String {
        format_units(price.0, self.price_decimals)
    }

    pub fn format_qty(&self, qty: Qty) -> String {
        format_units(qty.0, self.qty_decimals)
    }

    /// Price x quantity in notional units.
    pub fn notional(price: Price, qty: Qty) -> i128 {
        i128::from(price.0) * i128::from(qty.0)
    }

    fn from_entry(id: PairId, e: PairEntry) -> Result<(PairSpec, PairFees), PairsError> {
        let invalid = |problem: String| PairsError::Invalid {
            symbol: e.symbol.clone(),
            problem,
        };
        if !is_valid_symbol(&e.symbol) {
            return Err(invalid(
                "symbol must look like BASE-QUOTE in capitals".into(),
            ));
        }
        if e.price_decimals > DECIMALS_MAX || e.qty_decimals > DECIMALS_MAX {
            return Err(invalid(format!("decimals must be at most {DECIMALS_MAX}")));
        }
        let field = |name: &str, s: &str, decimals: u32| {
            parse_units(s, decimals).map_err(|err| invalid(format!("{name} {s:?}: {err}")))
        };
        let tick = field("tick_size", &e.tick_size, e.price_decimals)?;
        let lot = field("lot_size", &e.lot_size, e.qty_decimals)?;
        let min_qty = field("min_qty", &e.min_qty, e.qty_decimals)?;
        let max_qty = field("max_qty", &e.max_qty, e.qty_decimals)?;
        let min_notional = field(
            "min_notional",
            &e.min_notional,
            e.price_decimals + e.qty_decimals,
        )?;
        if tick <= 0 || lot <= 0 {
            return Err(invalid("tick_size and lot_size must be positive".into()));
        }
        if min_qty <= 0 || min_qty % lot != 0 || max_qty < min_qty || max_qty % lot != 0 {
            return Err(invalid(
                "min_qty and max_qty must be positive multiples of lot_size, min <= max".into(),
            ));
        }
        if min_notional < 0 {
            return Err(invalid("min_notional must not be negative".into()));
        }
        let fees =
            PairFees::parse(e.maker_fee.as_deref(), e.taker_fee.as_deref()).map_err(invalid)?;
        let spec = PairSpec {
            id,
            symbol: e.symbol,
            price_decimals: e.price_decimals,
            qty_decimals: e.qty_decimals,
            tick_size: Price(tick),
            lot_size: Qty(lot),
            min_qty: Qty(min_qty),
            max_qty: Qty(max_qty),
            min_notional: i128::from(min_notional),
        };
        Ok((spec, fees))
    }
}

fn is_valid_symbol(s: &str) -> bool {
    let mut parts = s.split('-');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            (2..=10).contains(&p.len())
                && p.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// Parses a plain decimal into an integer at `decimals` places, exactly.
pub fn parse_units(s: &str, decimals: u32) -> Result<i64, DecimalError> {
    let plain = !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_digit() || b == b'.' || (b == b'-' && i == 0));
    if !plain || s.starts_with('.') || s.ends_with('.') || s == "-" {
        return Err(DecimalError::Malformed);
    }
    let d = Decimal::from_str(s).map_err(|_| DecimalError::Malformed)?;
    if d.scale() > decimals && d.normalize().scale() > decimals {
        return Err(DecimalError::TooPrecise);
    }
    // 10^decimals overflows an i64 from 19 decimals on, and `quote_qty` has a pair's price
    // plus quantity decimals (up to 24): the factor is computed where it fits.
    let factor = 10_i128
        .checked_pow(decimals)
        .and_then(|f| Decimal::try_from_i128_with_scale(f, 0).ok())
        .ok_or(DecimalError::OutOfRange)?;
    let scaled = d.checked_mul(factor).ok_or(DecimalError::OutOfRange)?;
    i64::try_from(scaled.normalize()).map_err(|_| DecimalError::OutOfRange)
}

/// Formats an integer at `decimals` places as a plain decimal string.
pub fn format_units(units: i64, decimals: u32) -> String {
    Decimal::new(units, decimals).to_string()
}

/// The traded pairs, in partition order.
#[derive(Debug, Clone)]
pub struct PairRegistry {
    pairs: Vec<PairSpec>,
    /// By pair id.
    fees: Vec<PairFees>,
}

impl PairRegistry {
    /// Parses the text of a `pairs.toml`.
    pub fn from_toml(text: &str) -> Result<PairRegistry, PairsError> {
        let file: PairsFile = toml::from_str(text).map_err(|e| PairsError::Toml(e.to_string()))?;
        if file.pair.is_empty() {
            return Err(PairsError::Empty);
        }
        let mut pairs: Vec<PairSpec> = Vec::with_capacity(file.pair.len());
        let mut fees = Vec::with_capacity(file.pair.len());
        for (i, entry) in file.pair.into_iter().enumerate() {
            if pairs.iter().any(|p| p.symbol == entry.symbol) {
                return Err(PairsError::Duplicate(entry.symbol));
            }
            let id = PairId::try_from(i).expect("fewer than 2^32 pairs");
            let (spec, pair_fees) = PairSpec::from_entry(id, entry)?;
            pairs.push(spec);
            fees.push(pair_fees);
        }
        Ok(PairRegistry { pairs, fees })
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn get(&self, id: PairId) -> Option<&PairSpec> {
        self.pairs.get(id as usize)
    }

    /// The pair's fees (`pairs.toml`'s `maker_fee` and `taker_fee`); 0 for an unknown pair.
    pub fn fees(&self, id: PairId) -> PairFees {
        self.fees.get(id as usize).copied().unwrap_or_default()
    }

    pub fn by_symbol(&self, symbol: &str) -> Option<&PairSpec> {
        self.pairs.iter().find(|p| p.symbol == symbol)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PairSpec> {
        self.pairs.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO_PAIRS: &str = include_str!("../../config/pairs.toml");

    #[test]
    fn repository_registry_parses_with_at_least_eight_pairs() {
        let reg = PairRegistry::from_toml(REPO_PAIRS).unwrap();
        assert!(reg.len() >= 8);
        let btc = reg.by_symbol("BTC-EUR").unwrap();
        assert_eq!(btc.id, 0);
        assert_eq!(btc.tick_size, Price(10));
        assert_eq!(btc.lot_size, Qty(1000));
        assert_eq!(btc.min_notional, 5 * 10_i128.pow(10));
        for (i, p) in reg.iter().enumerate() {
            assert_eq!(p.id as usize, i);
        }
    }

    #[test]
    fn parse_units_is_exact() {
        assert_eq!(parse_units("123.45", 2), Ok(12345));
        assert_eq!(parse_units("123.4", 2), Ok(12340));
        assert_eq!(parse_units("123", 2), Ok(12300));
        assert_eq!(parse_units("0.10", 1), Ok(1));
        assert_eq!(parse_units("-1.5", 1), Ok(-15));
        assert_eq!(parse_units("0.00000001", 8), Ok(1));
    }

    #[test]
    fn parse_units_rejects_what_is_not_plain() {
        for bad in [
            "", "-", ".", "1.", ".5", "1e3", " 1", "1 ", "+1", "1,5", "0x10", "NaN", "1..2",
        ] {
            assert_eq!(parse_units(bad, 2), Err(DecimalError::Malformed), "{bad:?}");
        }
        assert_eq!(parse_units("1.234", 2), Err(DecimalError::TooPrecise));
        assert_eq!(
            parse_units("99999999999999999999", 2),
            Err(DecimalError::OutOfRange)
        );
    }

    /// Found by the `decimal` fuzz target's seeds: 10^19 overflowed an i64 and panicked
    /// (silently wrapped, in a release build) for a `quote_qty` of a pair with more than 18
    /// decimals in all, which the registry allows (12 + 12).
    #[test]
    fn parse_units_takes_up_to_24_decimals_without_overflow() {
        assert_eq!(parse_units("0.000000000000000000000001", 24), Ok(1));
        assert_eq!(parse_units("1", 19), Err(DecimalError::OutOfRange));
        assert_eq!(parse_units("1", 40), Err(DecimalError::OutOfRange));
    }

    #[test]
    fn format_round_trips() {
        assert_eq!(format_units(12345, 2), "123.45");
        assert_eq!(format_units(1, 8), "0.00000001");
        assert_eq!(format_units(100, 2), "1.00");
    }

    #[test]
    fn registry_rejects_bad_files() {
        assert_eq!(
            PairRegistry::from_toml("pair = []").unwrap_err(),
            PairsError::Empty
        );
        let dup = format!("{}\n{}", one_pair("BTC-EUR"), one_pair("BTC-EUR"));
        assert_eq!(
            PairRegistry::from_toml(&dup).unwrap_err(),
            PairsError::Duplicate("BTC-EUR".into())
        );
        let bad_symbol = one_pair("btc_eur");
        assert!(matches!(
            PairRegistry::from_toml(&bad_symbol).unwrap_err(),
            PairsError::Invalid { .. }
        ));
        let off_lot = one_pair("BTC-EUR").replace("min_qty = \"0.01\"", "min_qty = \"0.015\"");
        assert!(matches!(
            PairRegistry::from_toml(&off_lot).unwrap_err(),
            PairsError::Invalid { .. }
        ));
    }

    #[test]
    fn fees_parse_as_parts_per_million_and_default_to_zero() {
        let reg = PairRegistry::from_toml(&format!(
            "{}maker_fee = \"0.0002\"\ntaker_fee = \"0.001\"\n{}",
            one_pair("BTC-EUR"),
            one_pair("ETH-EUR")
        ))
        .unwrap();
        assert_eq!(
            reg.fees(0),
            PairFees {
                maker_fee_ppm: 200,
                taker_fee_ppm: 1000
            }
        );
        assert_eq!(reg.fees(1), PairFees::default());
        assert_eq!(reg.fees(9), PairFees::default());
        for bad in ["1", "-0.001", "0.0000001", "1e-3", "2.5"] {
            let text = format!("{}taker_fee = \"{bad}\"\n", one_pair("BTC-EUR"));
            match PairRegistry::from_toml(&text) {
                Err(PairsError::Invalid { problem, .. }) => {
                    assert!(problem.starts_with("taker_fee"), "{bad:?}: {problem}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    fn one_pair(symbol: &str) -> String {
        format!(
            "[[pair]]\nsymbol = \"{symbol}\"\nprice_decimals = 2\nqty_decimals = 3\n\
             tick_size = \"0.01\"\nlot_size = \"0.01\"\nmin_qty = \"0.01\"\nmax_qty = \"10\"\n\
             min_notional = \"1\"\n"
        )
    }
}
