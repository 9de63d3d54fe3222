//! Assets derived from the pair registry, and the exact conversions from a pair's units to them.
//!
//! A pair `BASE-QUOTE` names its two assets. Each asset's smallest unit is fine enough that no
//! conversion ever rounds: its decimals are the largest, over the pairs that use it, of
//! `qty_decimals` (as a base) and `price_decimals + qty_decimals` (as a quote, since a notional
//! is price units x quantity units). Converting is then a multiplication by a power of ten.

use protocol::{PairId, PairRegistry, Qty};
use serde::{Deserialize, Serialize};

/// An asset's index in the [`AssetRegistry`]: assets are numbered in order of first appearance
/// in `config/pairs.toml` (base before quote), so appending a pair never renumbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AssetId(pub u32);

/// One asset: its symbol and the number of decimals of its smallest unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    pub id: AssetId,
    pub symbol: String,
    pub decimals: u32,
}

/// A pair's two assets and the factors from the pair's units to the assets' units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairAssets {
    pub pair_id: PairId,
    pub base: AssetId,
    pub quote: AssetId,
    /// Base asset units per quantity unit: 10^(base decimals - qty_decimals).
    base_units_per_qty_unit: i128,
    /// Quote asset units per notional unit: 10^(quote decimals - price_decimals - qty_decimals).
    quote_units_per_notional_unit: i128,
}

impl PairAssets {
    /// A quantity of this pair in base asset units. Exact; cannot overflow (an `i64` times at
    /// most 10^12, see the registry's decimals limit).
    pub fn base_units(&self, qty: Qty) -> i128 {
        i128::from(qty.0) * self.base_units_per_qty_unit
    }

    /// A notional of this pair (price units x quantity units, as [`protocol::PairSpec::notional`])
    /// in quote asset units. Exact; `None` only if the result does not fit an `i128`.
    pub fn quote_units(&self, notional: i128) -> Option<i128> {
        notional.checked_mul(self.quote_units_per_notional_unit)
    }
}

/// The assets of every pair, and each pair's conversions.
#[derive(Debug, Clone)]
pub struct AssetRegistry {
    assets: Vec<Asset>,
    /// Indexed by [`PairId`].
    pairs: Vec<PairAssets>,
}

impl AssetRegistry {
    /// Derives the assets from the pairs' symbols. The registry has already checked that every
    /// symbol is `BASE-QUOTE` and that decimals are small, so this cannot fail.
    pub fn from_pairs(registry: &PairRegistry) -> AssetRegistry {
        let mut assets: Vec<Asset> = Vec::new();
        let mut intern = |symbol: &str, decimals: u32| -> AssetId {
            if let Some(asset) = assets.iter_mut().find(|a| a.symbol == symbol) {
                asset.decimals = asset.decimals.max(decimals);
                return asset.id;
            }
            let id = AssetId(u32::try_from(assets.len()).expect("fewer than 2^32 assets"));
            assets.push(Asset {
                id,
                symbol: symbol.to_owned(),
                decimals,
            });
            id
        };
        let mut sides = Vec::with_capacity(registry.len());
        for spec in registry.iter() {
            let (base, quote) = spec
                .symbol
                .split_once('-')
                .expect("the pair registry checks symbols are BASE-QUOTE");
            let base = intern(base, spec.qty_decimals);
            let quote = intern(quote, spec.price_decimals + spec.qty_decimals);
            sides.push((spec, base, quote));
        }
        let pairs = sides
            .into_iter()
            .map(|(spec, base, quote)| {
                assert_ne!(
                    base, quote,
                    "pair {} trades an asset for itself",
                    spec.symbol
                );
                let base_decimals = assets[base.0 as usize].decimals;
                let quote_decimals = assets[quote.0 as usize].decimals;
                PairAssets {
                    pair_id: spec.id,
                    base,
                    quote,
                    base_units_per_qty_unit: pow10(base_decimals - spec.qty_decimals),
                    quote_units_per_notional_unit: pow10(
                        quote_decimals - spec.price_decimals - spec.qty_decimals,
                    ),
                }
            })
            .collect();
        AssetRegistry { assets, pairs }
    }

    pub fn len(&self) -> usize {
        self.assets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.assets.is_empty()
    }

    pub fn get(&self, id: AssetId) -> Option<&Asset> {
        self.assets.get(id.0 as usize)
    }

    pub fn by_symbol(&self, symbol: &str) -> Option<&Asset> {
        self.assets.iter().find(|a| a.symbol == symbol)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Asset> {
        self.assets.iter()
    }

    /// The assets and conversions of a pair; `None` for a pair the registry does not hold.
    pub fn pair(&self, pair_id: PairId) -> Option<&PairAssets> {
        self.pairs.get(pair_id as usize)
    }

    pub fn pair_count(&self) -> usize {
        self.pairs.len()
    }
}

fn pow10(exponent: u32) -> i128 {
    10_i128
        .checked_pow(exponent)
        .expect("asset decimals are at most twice the registry's limit")
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::PairSpec;
    use protocol::Price;

    const REPO_PAIRS: &str = include_str!("../../../config/pairs.toml");

    fn repo_assets() -> (PairRegistry, AssetRegistry) {
        let pairs = PairRegistry::from_toml(REPO_PAIRS).unwrap();
        let assets = AssetRegistry::from_pairs(&pairs);
        (pairs, assets)
    }

    fn decimals(assets: &AssetRegistry, symbol: &str) -> u32 {
        assets.by_symbol(symbol).unwrap().decimals
    }

    #[test]
    fn repository_pairs_give_each_asset_the_finest_unit_it_needs() {
        let (_, assets) = repo_assets();
        assert_eq!(decimals(&assets, "EUR"), 10);
        assert_eq!(decimals(&assets, "USD"), 10);
        assert_eq!(decimals(&assets, "GBP"), 10);
        // 8 as a base, 14 as ETH-BTC's quote (6 price + 8 qty decimals).
        assert_eq!(decimals(&assets, "BTC"), 14);
        assert_eq!(decimals(&assets, "ETH"), 8);
        assert_eq!(decimals(&assets, "SOL"), 6);
        assert_eq!(decimals(&assets, "XRP"), 2);
        assert_eq!(assets.len(), 7);
    }

    #[test]
    fn assets_are_numbered_in_order_of_first_appearance() {
        let (_, assets) = repo_assets();
        let symbols: Vec<&str> = assets.iter().map(|a| a.symbol.as_str()).collect();
        assert_eq!(symbols, ["BTC", "EUR", "ETH", "USD", "SOL", "XRP", "GBP"]);
        for (i, a) in assets.iter().enumerate() {
            assert_eq!(a.id, AssetId(i as u32));
        }
    }

    #[test]
    fn every_pair_converts_qty_and_notional_exactly() {
        let (pairs, assets) = repo_assets();
        for spec in pairs.iter() {
            let p = assets.pair(spec.id).unwrap();
            let base = assets.get(p.base).unwrap();
            let quote = assets.get(p.quote).unwrap();
            assert_eq!(spec.symbol, format!("{}-{}", base.symbol, quote.symbol));
            // One quantity unit is 10^-qty_decimals of the base asset.
            assert_eq!(
                p.base_units(Qty(1)),
                10_i128.pow(base.decimals - spec.qty_decimals)
            );
            // One notional unit is 10^-(price + qty decimals) of the quote asset.
            assert_eq!(
                p.quote_units(1),
                Some(10_i128.pow(quote.decimals - spec.price_decimals - spec.qty_decimals))
            );
        }
    }

    #[test]
    fn conversions_match_the_decimal_meaning() {
        let (pairs, assets) = repo_assets();
        let btc_eur = pairs.by_symbol("BTC-EUR").unwrap();
        let p = assets.pair(btc_eur.id).unwrap();
        // 0.5 BTC at 60000.10 EUR = 30000.05 EUR; BTC has 14 decimals, EUR 10.
        let qty = btc_eur.parse_qty("0.5").unwrap();
        let price = btc_eur.parse_price("60000.10").unwrap();
        assert_eq!(p.base_units(qty), 5 * 10_i128.pow(13));
        assert_eq!(
            p.quote_units(PairSpec::notional(price, qty)),
            Some(3_000_005 * 10_i128.pow(8))
        );

        let eth_btc = pairs.by_symbol("ETH-BTC").unwrap();
        let p = assets.pair(eth_btc.id).unwrap();
        // 2 ETH at 0.051234 BTC = 0.102468 BTC.
        let qty = eth_btc.parse_qty("2").unwrap();
        let price = eth_btc.parse_price("0.051234").unwrap();
        assert_eq!(p.base_units(qty), 2 * 10_i128.pow(8));
        assert_eq!(
            p.quote_units(PairSpec::notional(price, qty)),
            Some(102_468 * 10_i128.pow(8))
        );
    }

    #[test]
    fn an_absurd_notional_is_refused_not_wrapped() {
        let (pairs, assets) = repo_assets();
        let xrp_eur = pairs.by_symbol("XRP-EUR").unwrap();
        let p = assets.pair(xrp_eur.id).unwrap();
        // XRP-EUR's notional scale is 7 decimals; EUR has 10, so the factor is 1000.
        let huge = PairSpec::notional(Price(i64::MAX), Qty(i64::MAX));
        assert_eq!(p.quote_units(huge), None);
        assert_eq!(p.quote_units(7), Some(7_000));
    }

    #[test]
    fn an_unknown_pair_has_no_assets() {
        let (pairs, assets) = repo_assets();
        assert!(assets.pair(pairs.len() as PairId).is_none());
        assert_eq!(assets.pair_count(), pairs.len());
    }
}
