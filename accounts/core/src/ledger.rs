//! The ledger: balances, reservations, and the rules that move them.

use std::collections::BTreeMap;

use protocol::{AccountId, OrderId, OrderType, PairId, PairSpec, Price, Qty, Side};
use serde::{Deserialize, Serialize};

use crate::assets::{AssetId, AssetRegistry, PairAssets};
use crate::command::{Amend, Fill, LedgerCommand, Release, Reserve, Transfer};
use crate::error::{ConfigError, LedgerError};
use crate::event::{Balance, Cause, LedgerEvent, Liquidity};

pub use protocol::{PPM_WHOLE, PairFees};

/// What the ledger is given at construction (by the actor's config, never read from a file here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConfig {
    /// The account every fee is credited to.
    pub fee_account_id: AccountId,
    /// Pairs not listed trade without fees.
    pub pair_fees: BTreeMap<PairId, PairFees>,
}

/// What one open order holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub account_id: AccountId,
    pub pair_id: PairId,
    pub side: Side,
    /// The quote asset for a buy, the base asset for a sell.
    pub asset_id: AssetId,
    /// `None` for a market order. A buy's reservation is at this price, so a trade below it
    /// returns the difference.
    pub limit_price: Option<Price>,
    /// The order's total quantity, filled part included.
    pub qty: Qty,
    /// The quantity of the fills this ledger has settled.
    pub filled_qty: Qty,
    /// What is left reserved: `limit_price x (qty - filled_qty)` for a limit buy, the budget
    /// not yet spent for a market buy, `qty - filled_qty` for a sell (in asset units).
    pub reserved_units: i128,
}

impl Reservation {
    fn remaining_qty(&self) -> Qty {
        Qty(self.qty.0 - self.filled_qty.0)
    }
}

/// Balances per (account, asset) and reservations per open order. See the crate documentation.
#[derive(Debug, Clone)]
pub struct Ledger {
    assets: AssetRegistry,
    fee_account_id: AccountId,
    /// Indexed by [`PairId`].
    fees: Vec<PairFees>,
    /// Ordered maps, so that iterating (snapshots, audits) is the same on every run.
    balances: BTreeMap<(AccountId, AssetId), Balance>,
    orders: BTreeMap<OrderId, Reservation>,
}

/// One side of a fill, as the fill names it.
struct FillSide {
    order_id: OrderId,
    account_id: AccountId,
    side: Side,
    liquidity: Liquidity,
    fee_ppm: u32,
}

/// The amounts one fill moves for one side, computed before anything changes.
struct Leg {
    order_id: OrderId,
    account_id: AccountId,
    liquidity: Liquidity,
    /// Leaves the order's reservation.
    paid_asset: AssetId,
    consumed_units: i128,
    /// Of `consumed_units`, what goes back to available (a buy's price improvement).
    returned_units: i128,
    received_asset: AssetId,
    received_units: i128,
    fee_units: i128,
}

impl Ledger {
    pub fn new(assets: AssetRegistry, config: LedgerConfig) -> Result<Ledger, ConfigError> {
        let mut fees = vec![PairFees::default(); assets.pair_count()];
        for (&pair_id, &pair_fees) in &config.pair_fees {
            let slot = fees
                .get_mut(pair_id as usize)
                .ok_or(ConfigError::UnknownPair { pair_id })?;
            for fee_ppm in [pair_fees.maker_fee_ppm, pair_fees.taker_fee_ppm] {
                if fee_ppm > PPM_WHOLE {
                    return Err(ConfigError::FeeAboveWhole { pair_id, fee_ppm });
                }
            }
            *slot = pair_fees;
        }
        Ok(Ledger {
            assets,
            fee_account_id: config.fee_account_id,
            fees,
            balances: BTreeMap::new(),
            orders: BTreeMap::new(),
        })
    }

    pub fn assets(&self) -> &AssetRegistry {
        &self.assets
    }

    pub fn fee_account_id(&self) -> AccountId {
        self.fee_account_id
    }

    /// An account's balance of an asset (zero if it never held any).
    pub fn balance(&self, account_id: AccountId, asset_id: AssetId) -> Balance {
        self.balances
            .get(&(account_id, asset_id))
            .copied()
            .unwrap_or_default()
    }

    /// Every balance ever touched, in (account, asset) order.
    pub fn balances(&self) -> impl Iterator<Item = (AccountId, AssetId, Balance)> + '_ {
        self.balances
            .iter()
            .map(|(&(acc, asset), &b)| (acc, asset, b))
    }

    /// Puts back a balance read from storage (an actor's recovery). Refuses a negative one.
    pub fn restore_balance(
        &mut self,
        account_id: AccountId,
        asset_id: AssetId,
        balance: Balance,
    ) -> Result<(), LedgerError> {
        if self.assets.get(asset_id).is_none() {
            return Err(LedgerError::UnknownAsset { asset_id });
        }
        if balance.available_units < 0 || balance.reserved_units < 0 {
            return Err(LedgerError::InvalidAmount {
                amount_units: balance.available_units.min(balance.reserved_units),
            });
        }
        self.balances.insert((account_id, asset_id), balance);
        Ok(())
    }

    /// Puts back an open order's reservation read from storage (an actor's recovery).
    pub fn restore_reservation(
        &mut self,
        order_id: OrderId,
        reservation: Reservation,
    ) -> Result<(), LedgerError> {
        self.pair(reservation.pair_id)?;
        if self.orders.contains_key(&order_id) {
            return Err(LedgerError::DuplicateOrderId { order_id });
        }
        self.orders.insert(order_id, reservation);
        Ok(())
    }

    pub fn reservation(&self, order_id: OrderId) -> Option<&Reservation> {
        self.orders.get(&order_id)
    }

    /// Every open order's reservation, in order id order.
    pub fn reservations(&self) -> impl Iterator<Item = (OrderId, &Reservation)> + '_ {
        self.orders.iter().map(|(&id, r)| (id, r))
    }

    /// Applies one command. On success appends one event per balance change (none when nothing
    /// moves); on refusal changes nothing and appends nothing.
    pub fn apply(
        &mut self,
        cmd: &LedgerCommand,
        out: &mut Vec<LedgerEvent>,
    ) -> Result<(), LedgerError> {
        match cmd {
            LedgerCommand::Deposit(t) => self.deposit(t, out),
            LedgerCommand::Withdraw(t) => self.withdraw(t, out),
            LedgerCommand::Reserve(r) => self.reserve(r, out),
            LedgerCommand::Amend(a) => self.amend(a, out),
            LedgerCommand::Fill(f) => self.fill(f, out, None),
            LedgerCommand::FillLeg(l) => self.fill(&l.fill, out, Some(l.liquidity)),
            LedgerCommand::Release(r) => self.release(r, out),
        }
    }

    fn deposit(&mut self, t: &Transfer, out: &mut Vec<LedgerEvent>) -> Result<(), LedgerError> {
        self.check_transfer(t)?;
        let cause = Cause::Deposit {
            transfer_id: t.transfer_id,
        };
        self.change(cause, t.account_id, t.asset_id, t.amount_units, 0, out);
        Ok(())
    }

    fn withdraw(&mut self, t: &Transfer, out: &mut Vec<LedgerEvent>) -> Result<(), LedgerError> {
        self.check_transfer(t)?;
        self.check_available(t.account_id, t.asset_id, t.amount_units)?;
        let cause = Cause::Withdrawal {
            transfer_id: t.transfer_id,
        };
        self.change(cause, t.account_id, t.asset_id, -t.amount_units, 0, out);
        Ok(())
    }

    fn check_transfer(&self, t: &Transfer) -> Result<(), LedgerError> {
        if self.assets.get(t.asset_id).is_none() {
            return Err(LedgerError::UnknownAsset {
                asset_id: t.asset_id,
            });
        }
        if t.amount_units <= 0 {
            return Err(LedgerError::InvalidAmount {
                amount_units: t.amount_units,
            });
        }
        Ok(())
    }

    fn reserve(&mut self, r: &Reserve, out: &mut Vec<LedgerEvent>) -> Result<(), LedgerError> {
        let pair = *self.pair(r.pair_id)?;
        let order_id = r.order_id;
        if self.orders.contains_key(&order_id) {
            return Err(LedgerError::DuplicateOrderId { order_id });
        }
        if r.qty.0 <= 0 {
            return Err(LedgerError::InvalidQty { order_id });
        }
        let market_buy = r.order_type == OrderType::Market && r.side == Side::Buy;
        match (r.order_type, r.price) {
            (OrderType::Limit, Some(p)) if p.0 > 0 => {}
            (OrderType::Market, None) => {}
            _ => return Err(LedgerError::InvalidPrice { order_id }),
        }
        let amount_units = match (market_buy, r.quote_budget_notional) {
            (true, None) => return Err(LedgerError::QuoteBudgetRequired { order_id }),
            (true, Some(budget)) if budget > 0 => pair.quote_units(budget),
            (false, None) => reserve_units(&pair, r.side, r.price, r.qty),
            _ => return Err(LedgerError::InvalidQuoteBudget { order_id }),
        }
        .ok_or(LedgerError::AmountOutOfRange { order_id })?;
        let asset_id = reserved_asset(&pair, r.side);
        self.check_available(r.account_id, asset_id, amount_units)?;

        self.orders.insert(
            order_id,
            Reservation {
                account_id: r.account_id,
                pair_id: r.pair_id,
                side: r.side,
                asset_id,
                limit_price: r.price,
                qty: r.qty,
                filled_qty: Qty(0),
                reserved_units: amount_units,
            },
        );
        let cause = Cause::Reserve { order_id };
        self.change(
            cause,
            r.account_id,
            asset_id,
            -amount_units,
            amount_units,
            out,
        );
        Ok(())
    }

    fn amend(&mut self, a: &Amend, out: &mut Vec<LedgerEvent>) -> Result<(), LedgerError> {
        let order_id = a.order_id;
        let order = *self.order_of(order_id, a.account_id)?;
        let invalid = |problem| Err(LedgerError::InvalidAmend { order_id, problem });
        let Some(limit_price) = order.limit_price else {
            return invalid("a market order never rests");
        };
        if a.new_price.is_none() && a.new_qty.is_none() {
            return invalid("it names neither a new price nor a new quantity");
        }
        let price = a.new_price.unwrap_or(limit_price);
        let qty = a.new_qty.unwrap_or(order.qty);
        if price.0 <= 0 {
            return Err(LedgerError::InvalidPrice { order_id });
        }
        if qty.0 <= order.filled_qty.0 {
            return invalid("the new quantity must exceed the filled quantity");
        }
        let pair = *self.pair(order.pair_id)?;
        let remaining = Qty(qty.0 - order.filled_qty.0);
        let new_units = reserve_units(&pair, order.side, Some(price), remaining)
            .ok_or(LedgerError::AmountOutOfRange { order_id })?;
        let increase_units = new_units - order.reserved_units;
        if increase_units > 0 {
            self.check_available(order.account_id, order.asset_id, increase_units)?;
        }

        let slot = self.orders.get_mut(&order_id).expect("checked above");
        slot.limit_price = Some(price);
        slot.qty = qty;
        slot.reserved_units = new_units;
        if increase_units != 0 {
            let cause = Cause::Amend { order_id };
            let (account, asset) = (order.account_id, order.asset_id);
            self.change(cause, account, asset, -increase_units, increase_units, out);
        }
        Ok(())
    }

    /// Settles both legs of `f`, or only the one of `only`.
    fn fill(
        &mut self,
        f: &Fill,
        out: &mut Vec<LedgerEvent>,
        only: Option<Liquidity>,
    ) -> Result<(), LedgerError> {
        let pair = *self.pair(f.pair_id)?;
        let inconsistent = inconsistent(f);
        if f.qty.0 <= 0 || f.price.0 <= 0 {
            return Err(inconsistent("price and quantity must be positive"));
        }
        if f.maker_order_id == f.taker_order_id {
            return Err(inconsistent("an order cannot trade with itself"));
        }
        let fees = self.fees[f.pair_id as usize];
        let maker = FillSide {
            order_id: f.maker_order_id,
            account_id: f.maker_account_id,
            side: f.maker_side,
            liquidity: Liquidity::Maker,
            fee_ppm: fees.maker_fee_ppm,
        };
        let taker = FillSide {
            order_id: f.taker_order_id,
            account_id: f.taker_account_id,
            side: f.maker_side.opposite(),
            liquidity: Liquidity::Taker,
            fee_ppm: fees.taker_fee_ppm,
        };
        match only {
            None => {
                // Both legs are checked before either moves, so a refusal changes nothing.
                let legs = [self.leg(f, &pair, &maker)?, self.leg(f, &pair, &taker)?];
                for leg in &legs {
                    self.settle(f, leg, out);
                }
            }
            Some(liquidity) => {
                let side = if liquidity == Liquidity::Maker {
                    &maker
                } else {
                    &taker
                };
                let leg = self.leg(f, &pair, side)?;
                self.settle(f, &leg, out);
            }
        }
        Ok(())
    }

    /// What one side of a fill pays and receives, or why the fill contradicts its reservation.
    fn leg(&self, f: &Fill, pair: &PairAssets, s: &FillSide) -> Result<Leg, LedgerError> {
        let inconsistent = inconsistent(f);
        let order = self
            .orders
            .get(&s.order_id)
            .filter(|o| o.account_id == s.account_id)
            .ok_or(inconsistent("an order has no reservation for that account"))?;
        if order.pair_id != f.pair_id || order.side != s.side {
            return Err(inconsistent("an order is of another pair or side"));
        }
        if f.qty > order.remaining_qty() {
            return Err(inconsistent("the quantity exceeds an order's remainder"));
        }
        let too_big = inconsistent("the notional does not fit 128 bits");
        let cost_units = pair
            .quote_units(PairSpec::notional(f.price, f.qty))
            .ok_or(too_big)?;
        // What it receives, and its fee, by the rule a client's fill push shows (`trade_fee`).
        let (received_asset, received_units) =
            received(pair, s.side, f.price, f.qty).ok_or(too_big)?;
        let leg = |paid_asset, consumed_units, returned_units| Leg {
            order_id: s.order_id,
            account_id: s.account_id,
            liquidity: s.liquidity,
            paid_asset,
            consumed_units,
            returned_units,
            received_asset,
            received_units,
            fee_units: fee_units(received_units, s.fee_ppm),
        };
        if s.side == Side::Sell {
            return Ok(leg(pair.base, pair.base_units(f.qty), 0));
        }
        // A limit buy pays from what its limit reserved; a market buy from its budget.
        let consumed_units = match order.limit_price {
            Some(limit) if f.price > limit => {
                return Err(inconsistent("the price is above the buyer's limit"));
            }
            Some(limit) => pair
                .quote_units(PairSpec::notional(limit, f.qty))
                .ok_or(too_big)?,
            None => cost_units,
        };
        if consumed_units > order.reserved_units {
            return Err(inconsistent("the cost exceeds the buyer's reservation"));
        }
        Ok(leg(pair.quote, consumed_units, consumed_units - cost_units))
    }

    /// Moves one side of a validated fill: its reservation pays, it receives net of its fee,
    /// the fee account receives the fee.
    fn settle(&mut self, f: &Fill, leg: &Leg, out: &mut Vec<LedgerEvent>) {
        let order = self.orders.get_mut(&leg.order_id).expect("validated");
        order.reserved_units -= leg.consumed_units;
        order.filled_qty = Qty(order.filled_qty.0 + f.qty.0);
        assert!(order.reserved_units >= 0 && order.filled_qty <= order.qty);
        let (pair_id, trade_id, order_id, liquidity) =
            (f.pair_id, f.trade_id, leg.order_id, leg.liquidity);
        let fill = Cause::Fill {
            pair_id,
            trade_id,
            order_id,
            liquidity,
        };
        self.change(
            fill,
            leg.account_id,
            leg.paid_asset,
            leg.returned_units,
            -leg.consumed_units,
            out,
        );
        let net_units = leg.received_units - leg.fee_units;
        self.change(fill, leg.account_id, leg.received_asset, net_units, 0, out);
        let fee = Cause::Fee {
            pair_id,
            trade_id,
            order_id,
            liquidity,
        };
        let fee_account = self.fee_account_id;
        self.change(fee, fee_account, leg.received_asset, leg.fee_units, 0, out);
    }

    fn release(&mut self, r: &Release, out: &mut Vec<LedgerEvent>) -> Result<(), LedgerError> {
        let order = *self.order_of(r.order_id, r.account_id)?;
        self.orders.remove(&r.order_id);
        let cause = Cause::Release {
            order_id: r.order_id,
            reason: r.reason,
        };
        let left = order.reserved_units;
        self.change(cause, order.account_id, order.asset_id, left, -left, out);
        Ok(())
    }

    fn pair(&self, pair_id: PairId) -> Result<&PairAssets, LedgerError> {
        self.assets
            .pair(pair_id)
            .ok_or(LedgerError::UnknownPair { pair_id })
    }

    /// The order's reservation, if it is the account's: another account's order is unknown to
    /// this one, as in the book.
    fn order_of(
        &self,
        order_id: OrderId,
        account_id: AccountId,
    ) -> Result<&Reservation, LedgerError> {
        self.orders
            .get(&order_id)
            .filter(|o| o.account_id == account_id)
            .ok_or(LedgerError::UnknownOrder {
                order_id,
                account_id,
            })
    }

    fn check_available(
        &self,
        account_id: AccountId,
        asset_id: AssetId,
        needed_units: i128,
    ) -> Result<(), LedgerError> {
        let available_units = self.balance(account_id, asset_id).available_units;
        if available_units < needed_units {
            return Err(LedgerError::InsufficientFunds {
                account_id,
                asset_id,
                needed_units,
                available_units,
            });
        }
        Ok(())
    }

    /// The only place a balance changes. A change of nothing emits nothing; a negative result
    /// is a bug in the checks before it, never input, so it stops the ledger.
    fn change(
        &mut self,
        cause: Cause,
        account_id: AccountId,
        asset_id: AssetId,
        available_delta_units: i128,
        reserved_delta_units: i128,
        out: &mut Vec<LedgerEvent>,
    ) {
        if available_delta_units == 0 && reserved_delta_units == 0 {
            return;
        }
        let balance = self.balances.entry((account_id, asset_id)).or_default();
        balance.available_units += available_delta_units;
        balance.reserved_units += reserved_delta_units;
        assert!(
            balance.available_units >= 0 && balance.reserved_units >= 0,
            "balance of account {} asset {} went negative: {balance:?} after {cause:?}",
            account_id.0,
            asset_id.0
        );
        out.push(LedgerEvent {
            cause,
            account_id,
            asset_id,
            available_delta_units,
            reserved_delta_units,
            balance: *balance,
        });
    }
}

/// The refusal of a fill that contradicts the reservations.
fn inconsistent(f: &Fill) -> impl Fn(&'static str) -> LedgerError {
    let (pair_id, trade_id) = (f.pair_id, f.trade_id);
    move |problem| LedgerError::InconsistentFill {
        pair_id,
        trade_id,
        problem,
    }
}

/// The asset a new order on `side` reserves.
fn reserved_asset(pair: &PairAssets, side: Side) -> AssetId {
    match side {
        Side::Buy => pair.quote,
        Side::Sell => pair.base,
    }
}

/// What a limit buy at `price` or a sell reserves for `qty`; `None` if it does not fit.
fn reserve_units(pair: &PairAssets, side: Side, price: Option<Price>, qty: Qty) -> Option<i128> {
    match side {
        Side::Buy => pair.quote_units(PairSpec::notional(price?, qty)),
        Side::Sell => Some(pair.base_units(qty)),
    }
}

/// What one side of a trade receives before its fee: the buyer the base quantity, the seller
/// the notional in the quote asset. `None` if the notional does not fit.
fn received(pair: &PairAssets, side: Side, price: Price, qty: Qty) -> Option<(AssetId, i128)> {
    match side {
        Side::Buy => Some((pair.base, pair.base_units(qty))),
        Side::Sell => Some((
            pair.quote,
            pair.quote_units(PairSpec::notional(price, qty))?,
        )),
    }
}

/// The fee one side of a trade pays, in the asset it receives: what the ledger settles (a
/// client's fill push names it). `None` for an unknown pair or a notional that does not fit.
pub fn trade_fee(
    assets: &AssetRegistry,
    fees: PairFees,
    pair_id: PairId,
    side: Side,
    liquidity: Liquidity,
    price: Price,
    qty: Qty,
) -> Option<(AssetId, i128)> {
    let (asset, received_units) = received(assets.pair(pair_id)?, side, price, qty)?;
    let fee_ppm = match liquidity {
        Liquidity::Maker => fees.maker_fee_ppm,
        Liquidity::Taker => fees.taker_fee_ppm,
    };
    Some((asset, fee_units(received_units, fee_ppm)))
}

/// `received_units x fee_ppm / 1_000_000`, rounded down (in the client's favour), without an
/// intermediate product that could overflow.
pub fn fee_units(received_units: i128, fee_ppm: u32) -> i128 {
    debug_assert!(received_units >= 0 && fee_ppm <= PPM_WHOLE);
    let whole = i128::from(PPM_WHOLE);
    let ppm = i128::from(fee_ppm);
    received_units / whole * ppm + received_units % whole * ppm / whole
}
