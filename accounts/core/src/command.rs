//! The inputs of the ledger, as values: one account shard's log, decoded.

use protocol::{AccountId, DoneReason, OrderId, OrderType, PairId, Price, Qty, Side};
use serde::{Deserialize, Serialize};

use crate::assets::AssetId;
use crate::event::Liquidity;

/// One input of [`crate::Ledger::apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LedgerCommand {
    /// Funds arrive from outside (an operator's command).
    Deposit(Transfer),
    /// Funds leave; refused with `insufficient_funds` unless available.
    Withdraw(Transfer),
    /// A place, before it may reach the pair's book.
    Reserve(Reserve),
    /// An amend: the reservation becomes what the new price and quantity need.
    Amend(Amend),
    /// One trade, settled for both orders.
    Fill(Fill),
    /// One side of a trade: what a shard that holds only one of the two accounts settles.
    FillLeg(FillLeg),
    /// The order is done (filled, cancelled, expired) or was rejected: what is left reserved
    /// goes back to available and the order is forgotten.
    Release(Release),
}

/// A deposit or a withdrawal. `transfer_id` is the operator's reference, carried into the
/// ledger rows; uniqueness is the log's business (it drops repeats), not the ledger's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub transfer_id: u64,
    pub account_id: AccountId,
    pub asset_id: AssetId,
    /// Positive, in the asset's smallest unit.
    pub amount_units: i128,
}

/// Funds for a new order: a limit buy reserves price x qty of the quote asset, a market buy its
/// quote budget, a sell (limit or market) its qty of the base asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserve {
    pub order_id: OrderId,
    pub account_id: AccountId,
    pub pair_id: PairId,
    pub side: Side,
    pub order_type: OrderType,
    /// Required (positive) for a limit order, absent for a market order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    pub qty: Qty,
    /// Required (positive) for a market buy and absent otherwise: the most quote it may spend,
    /// in the pair's notional units (price units x quantity units, like `min_notional`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote_budget_notional: Option<i128>,
}

/// A new price and/or a new total quantity (filled part included, as in `protocol::AmendOrder`)
/// for a resting limit order. The filled quantity is the ledger's own: the fills it has
/// settled. See the crate documentation for when an actor applies an amend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amend {
    pub order_id: OrderId,
    pub account_id: AccountId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_price: Option<Price>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_qty: Option<Qty>,
}

/// One trade between two reserved orders (of two accounts, or of one: a self-trade settles
/// like any other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    pub pair_id: PairId,
    /// The engine's per-pair trade id, carried into the ledger rows.
    pub trade_id: u64,
    pub price: Price,
    pub qty: Qty,
    pub maker_side: Side,
    pub maker_order_id: OrderId,
    pub maker_account_id: AccountId,
    pub taker_order_id: OrderId,
    pub taker_account_id: AccountId,
}

/// One side of [`Fill`]: the maker's or the taker's. Settling both legs of a fill, maker first,
/// is exactly settling the fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FillLeg {
    pub fill: Fill,
    pub liquidity: Liquidity,
}

/// The end of an order's life, whatever ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub order_id: OrderId,
    pub account_id: AccountId,
    pub reason: ReleaseReason,
}

/// Why an order's reservation is released, for the ledger rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    Filled,
    Cancelled,
    Expired,
    ExpiredStp,
    /// The engine refused the place after the ledger reserved for it.
    Rejected,
}

impl From<DoneReason> for ReleaseReason {
    fn from(reason: DoneReason) -> ReleaseReason {
        match reason {
            DoneReason::Filled => ReleaseReason::Filled,
            DoneReason::Cancelled => ReleaseReason::Cancelled,
            DoneReason::Expired => ReleaseReason::Expired,
            DoneReason::ExpiredStp => ReleaseReason::ExpiredStp,
        }
    }
}
