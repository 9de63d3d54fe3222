//! Commands into the matching core and the events it decides, in integer units.
//!
//! Prices and quantities are fixed-point integers at the pair's scale (`price_decimals`,
//! `qty_decimals` in `config/pairs.toml`): `Price(12345)` on a 2-decimal pair is 123.45. A tick or
//! a lot is a multiple of one unit, so "off tick" and "off lot" are checkable on integers.
//! Notional (price x quantity) is `i128`.

use serde::{Deserialize, Serialize};

/// Order id, unique across the whole system; assigned by the gateway that received the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(pub u64);

/// Account id, as stored in PostgreSQL (`accounts.id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub u64);

/// Price in the pair's smallest price unit (10^-price_decimals of the quote currency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Price(pub i64);

/// Quantity in the pair's smallest quantity unit (10^-qty_decimals of the base currency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Qty(pub i64);

/// The client's own id for an order: 1 to 36 characters of `[A-Za-z0-9_-]`.
pub type ClientOrderId = String;

/// Longest accepted client order id, in bytes.
pub const CLIENT_ORDER_ID_LEN_MAX: usize = 36;

/// Whether `id` is an acceptable client order id.
pub fn is_valid_client_order_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= CLIENT_ORDER_ID_LEN_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderType {
    Limit,
    Market,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeInForce {
    /// Good till cancelled: the remainder rests on the book.
    #[default]
    Gtc,
    /// Immediate or cancel: match what can be matched now, expire the rest.
    Ioc,
    /// Fill or kill: fill the whole quantity now, or reject without trading.
    Fok,
}

/// What happens when an order would trade with a resting order of the same account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelfTradePrevention {
    /// The incoming order's remainder expires; the resting order stays.
    #[default]
    ExpireTaker,
    /// The resting order expires; the incoming order continues matching.
    ExpireMaker,
    /// Both expire.
    ExpireBoth,
}

/// Names an existing order of the commanding account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderRef {
    Id(OrderId),
    ClientId(ClientOrderId),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    pub order_id: OrderId,
    pub account_id: AccountId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<ClientOrderId>,
    pub side: Side,
    pub order_type: OrderType,
    /// Required for limit orders; must be absent for market orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    pub qty: Qty,
    #[serde(default)]
    pub tif: TimeInForce,
    #[serde(default)]
    pub post_only: bool,
    #[serde(default)]
    pub stp: SelfTradePrevention,
    /// A market buy's budget: the most quote it may spend, in the pair's notional units (price
    /// units x quantity units, like `min_notional`). The book stops the order where the budget
    /// stops. Absent for every other order. A JSON string of the integer (`crate::accounts::units`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::accounts::opt_units"
    )]
    pub quote_budget: Option<i128>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelOrder {
    pub account_id: AccountId,
    pub target: OrderRef,
}

/// Cancels every live order of the account in this pair's book. A cancel-all over all pairs is
/// fanned out by the gateway, one command per pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelAll {
    pub account_id: AccountId,
}

/// Changes a live order. `new_qty` is the new *total* quantity (filled part included), as on
/// Binance and Kraken. Lowering the quantity keeps queue priority; a new price or a higher
/// quantity loses it, and an amended price that crosses the book matches like a new order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmendOrder {
    pub account_id: AccountId,
    pub target: OrderRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_price: Option<Price>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_qty: Option<Qty>,
}

/// A command for one pair's matching core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    Place(PlaceOrder),
    Cancel(CancelOrder),
    CancelAll(CancelAll),
    Amend(AmendOrder),
}

impl Command {
    pub fn account_id(&self) -> AccountId {
        match self {
            Command::Place(c) => c.account_id,
            Command::Cancel(c) => c.account_id,
            Command::CancelAll(c) => c.account_id,
            Command::Amend(c) => c.account_id,
        }
    }

    /// The order the command places or targets by id (`None` for a cancel-all, or a target
    /// named by its client order id): what logs name as `order_id`.
    pub fn order_id(&self) -> Option<OrderId> {
        let target = match self {
            Command::Place(c) => return Some(c.order_id),
            Command::CancelAll(_) => return None,
            Command::Cancel(c) => &c.target,
            Command::Amend(c) => &c.target,
        };
        match target {
            OrderRef::Id(id) => Some(*id),
            OrderRef::ClientId(_) => None,
        }
    }

    pub fn kind(&self) -> CommandKind {
        match self {
            Command::Place(_) => CommandKind::Place,
            Command::Cancel(_) => CommandKind::Cancel,
            Command::CancelAll(_) => CommandKind::CancelAll,
            Command::Amend(_) => CommandKind::Amend,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Place,
    Cancel,
    CancelAll,
    Amend,
}

impl CommandKind {
    /// The serialized name: `place`, `cancel`, `cancel_all`, `amend` (a test in this module
    /// holds it to serde's).
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::Place => "place",
            CommandKind::Cancel => "cancel",
            CommandKind::CancelAll => "cancel_all",
            CommandKind::Amend => "amend",
        }
    }
}

/// Why a command was refused. The serialized name is the stable, machine-readable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Cancel or amend of an order that is not live for this account (never existed, already
    /// filled, cancelled or expired, or belongs to another account).
    UnknownOrder,
    /// A place whose order id is already live in this book.
    DuplicateOrderId,
    /// A place whose client order id is already live for this account in this book.
    DuplicateClientOrderId,
    /// Client order id empty, too long or with characters outside `[A-Za-z0-9_-]`.
    InvalidClientOrderId,
    /// Limit order without a price, market order with one, or a price <= 0.
    InvalidPrice,
    PriceOffTick,
    /// A `quote_budget` on anything but a market buy, or one that is not positive.
    InvalidQuoteBudget,
    QtyOffLot,
    QtyBelowMin,
    QtyAboveMax,
    BelowMinNotional,
    /// Market order with GTC, or post-only on anything but a limit GTC order.
    InvalidTimeInForce,
    PostOnlyWouldTake,
    FokCannotFill,
    /// Market order into an empty opposite side.
    NoLiquidity,
    /// Amend with nothing to change, or a new total quantity not above the filled quantity.
    InvalidAmend,
    /// Engine level: the Kafka record could not be decoded.
    MalformedRecord,
    /// Engine level: the record names a pair this partition does not hold.
    WrongPair,
}

impl RejectReason {
    /// The stable code, as serialized.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::UnknownOrder => "unknown_order",
            RejectReason::DuplicateOrderId => "duplicate_order_id",
            RejectReason::DuplicateClientOrderId => "duplicate_client_order_id",
            RejectReason::InvalidClientOrderId => "invalid_client_order_id",
            RejectReason::InvalidPrice => "invalid_price",
            RejectReason::PriceOffTick => "price_off_tick",
            RejectReason::InvalidQuoteBudget => "invalid_quote_budget",
            RejectReason::QtyOffLot => "qty_off_lot",
            RejectReason::QtyBelowMin => "qty_below_min",
            RejectReason::QtyAboveMax => "qty_above_max",
            RejectReason::BelowMinNotional => "below_min_notional",
            RejectReason::InvalidTimeInForce => "invalid_time_in_force",
            RejectReason::PostOnlyWouldTake => "post_only_would_take",
            RejectReason::FokCannotFill => "fok_cannot_fill",
            RejectReason::NoLiquidity => "no_liquidity",
            RejectReason::InvalidAmend => "invalid_amend",
            RejectReason::MalformedRecord => "malformed_record",
            RejectReason::WrongPair => "wrong_pair",
        }
    }

    /// A human sentence for the client.
    pub fn message(self) -> &'static str {
        match self {
            RejectReason::UnknownOrder => "no live order of this account matches that id",
            RejectReason::DuplicateOrderId => "an order with this order id is already live",
            RejectReason::DuplicateClientOrderId => {
                "a live order of this account already uses this client order id"
            }
            RejectReason::InvalidClientOrderId => {
                "client order id must be 1 to 36 characters of A-Z, a-z, 0-9, '-' or '_'"
            }
            RejectReason::InvalidPrice => {
                "a limit order needs a positive price and a market order must not have one"
            }
            RejectReason::PriceOffTick => "price is not a multiple of the pair's tick size",
            RejectReason::InvalidQuoteBudget => {
                "a quote budget must be positive and only a market buy may have one"
            }
            RejectReason::QtyOffLot => "quantity is not a multiple of the pair's lot size",
            RejectReason::QtyBelowMin => "quantity is below the pair's minimum",
            RejectReason::QtyAboveMax => "quantity is above the pair's maximum",
            RejectReason::BelowMinNotional => {
                "price x quantity is below the pair's minimum notional"
            }
            RejectReason::InvalidTimeInForce => {
                "market orders take IOC or FOK; post-only needs a GTC limit order"
            }
            RejectReason::PostOnlyWouldTake => "post-only order would have traded immediately",
            RejectReason::FokCannotFill => "fill-or-kill order cannot be filled entirely now",
            RejectReason::NoLiquidity => "market order found no resting orders on the other side",
            RejectReason::InvalidAmend => {
                "amend must change price or quantity, and the new quantity must exceed the filled quantity"
            }
            RejectReason::MalformedRecord => "the engine could not decode this command",
            RejectReason::WrongPair => "the command reached the partition of another pair",
        }
    }
}

/// Why an order left the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DoneReason {
    Filled,
    /// Cancelled by the account (cancel, cancel-all, or the dead-man switch).
    Cancelled,
    /// IOC or market remainder that found nothing more to match.
    Expired,
    /// Removed by self-trade prevention.
    ExpiredStp,
}

/// What the core decided. Every event of a pair carries the pair's next sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// The timestamp of the command that caused it (an input, never read from a clock).
    pub ts_ns: u64,
    pub body: EventBody,
}

/// Serialized with the `type` tag first; read by a streaming `Deserialize` (`event_de`) that
/// accepts the same JSON without serde's buffering of internally tagged enums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// A place command passed validation; trades and book changes may follow.
    Accepted {
        order_id: OrderId,
        account_id: AccountId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_order_id: Option<ClientOrderId>,
        side: Side,
        order_type: OrderType,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        price: Option<Price>,
        qty: Qty,
        tif: TimeInForce,
        post_only: bool,
    },
    /// A command was refused and changed nothing.
    Rejected {
        /// The placed order's id, or the target of a cancel/amend by id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order_id: Option<OrderId>,
        /// Absent only when the engine could not decode the record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account_id: Option<AccountId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_order_id: Option<ClientOrderId>,
        /// Absent only when the engine could not decode the record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command: Option<CommandKind>,
        reason: RejectReason,
    },
    /// Two orders traded at the maker's price.
    Trade {
        /// Per pair, strictly increasing, starting at 1.
        trade_id: u64,
        price: Price,
        qty: Qty,
        taker_side: Side,
        maker_order_id: OrderId,
        maker_account_id: AccountId,
        taker_order_id: OrderId,
        taker_account_id: AccountId,
        /// Each order's cumulative filled quantity and what is left of it after this trade, and
        /// its client order id. Always written; `None` only in a record written before they
        /// existed (the `events` topic keeps those, and readers start from its beginning).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        maker_filled_qty: Option<Qty>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        maker_remaining_qty: Option<Qty>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        maker_client_order_id: Option<ClientOrderId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        taker_filled_qty: Option<Qty>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        taker_remaining_qty: Option<Qty>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        taker_client_order_id: Option<ClientOrderId>,
    },
    /// An order left the book, or never rested. `filled_qty + remaining_qty` is its total
    /// quantity; `remaining_qty` is what was cancelled or expired (0 when filled).
    Done {
        order_id: OrderId,
        account_id: AccountId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_order_id: Option<ClientOrderId>,
        reason: DoneReason,
        filled_qty: Qty,
        remaining_qty: Qty,
    },
    /// A live order changed. `qty` is the new total, `remaining_qty` what is left to fill.
    Amended {
        order_id: OrderId,
        account_id: AccountId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_order_id: Option<ClientOrderId>,
        price: Price,
        qty: Qty,
        remaining_qty: Qty,
        priority_kept: bool,
    },
    /// The total resting quantity at one price level after a command; 0 means the level is gone.
    BookLevel { side: Side, price: Price, qty: Qty },
}

impl EventBody {
    /// The order this event is about: the command's own order for a verdict (accepted,
    /// rejected, done, amended), the taker for a trade; `None` for book levels and a rejection
    /// that names none.
    pub fn order_id(&self) -> Option<OrderId> {
        match self {
            EventBody::Accepted { order_id, .. }
            | EventBody::Done { order_id, .. }
            | EventBody::Amended { order_id, .. } => Some(*order_id),
            EventBody::Rejected { order_id, .. } => *order_id,
            EventBody::Trade { taker_order_id, .. } => Some(*taker_order_id),
            EventBody::BookLevel { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CommandKind;

    #[test]
    fn a_command_kinds_name_is_its_serialized_name() {
        for kind in [
            CommandKind::Place,
            CommandKind::Cancel,
            CommandKind::CancelAll,
            CommandKind::Amend,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
    }
}
