//! The book as plain data: what the engine persists and what [`OrderBook::restore`] rebuilds.
//!
//! [`OrderBook::restore`]: crate::OrderBook::restore

use std::fmt;

use protocol::{AccountId, ClientOrderId, OrderId, Price, Qty, SelfTradePrevention, Side};
use serde::{Deserialize, Serialize};

/// Everything needed to rebuild a book exactly: its counters and its resting orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookState {
    pub last_seq: u64,
    pub last_trade_id: u64,
    /// In [`OrderBook::open_orders`](crate::OrderBook::open_orders) order when exported; any
    /// order is accepted by restore.
    pub orders: Vec<RestingOrder>,
}

/// An order resting on the book. Resting orders are always GTC limit orders: IOC, FOK and market
/// orders never rest, and post-only only matters at placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestingOrder {
    pub order_id: OrderId,
    pub account_id: AccountId,
    pub client_order_id: Option<ClientOrderId>,
    pub side: Side,
    pub price: Price,
    /// Total quantity, filled part included.
    pub qty: Qty,
    pub filled_qty: Qty,
    pub stp: SelfTradePrevention,
    /// Seq of the event that gave the order its current queue position (its Accepted, or the
    /// Amended that lost priority). Unique in a book, so it alone orders a level on restore.
    pub priority_seq: u64,
}

impl RestingOrder {
    /// What is left to fill.
    pub fn remaining_qty(&self) -> Qty {
        Qty(self.qty.0 - self.filled_qty.0)
    }
}

/// Why a [`BookState`] cannot be a book this core could have produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreError {
    DuplicateOrderId(OrderId),
    DuplicateClientOrderId {
        account_id: AccountId,
        client_order_id: ClientOrderId,
    },
    InvalidClientOrderId(OrderId),
    /// Price not positive.
    InvalidPrice(OrderId),
    /// Filled quantity negative, or nothing left to fill.
    NonPositiveRemaining(OrderId),
    /// Priority seq 0, or after the book's last seq.
    PriorityOutOfRange(OrderId),
    /// Two orders claim the same queue position.
    DuplicatePrioritySeq(u64),
    /// The best bid is at or above the best ask: matching would have traded them.
    CrossedBook {
        best_bid: Price,
        best_ask: Price,
    },
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreError::DuplicateOrderId(id) => write!(f, "order {} appears twice", id.0),
            RestoreError::DuplicateClientOrderId {
                account_id,
                client_order_id,
            } => write!(
                f,
                "account {} has two live orders with client order id {client_order_id:?}",
                account_id.0
            ),
            RestoreError::InvalidClientOrderId(id) => {
                write!(f, "order {} has an invalid client order id", id.0)
            }
            RestoreError::InvalidPrice(id) => write!(f, "order {} has a non-positive price", id.0),
            RestoreError::NonPositiveRemaining(id) => {
                write!(
                    f,
                    "order {} has a negative fill or nothing left to fill",
                    id.0
                )
            }
            RestoreError::PriorityOutOfRange(id) => {
                write!(
                    f,
                    "order {} has a priority seq of 0 or after the last seq",
                    id.0
                )
            }
            RestoreError::DuplicatePrioritySeq(seq) => {
                write!(f, "two orders share priority seq {seq}")
            }
            RestoreError::CrossedBook { best_bid, best_ask } => write!(
                f,
                "book is crossed: best bid {} >= best ask {}",
                best_bid.0, best_ask.0
            ),
        }
    }
}

impl std::error::Error for RestoreError {}
