//! The outputs of the ledger: one row per change of one (account, asset) balance, with its cause
//! and the balance after it. These are the rows the actor persists and pushes.

use protocol::{AccountId, OrderId, PairId};
use serde::{Deserialize, Serialize};

use crate::assets::AssetId;
use crate::command::ReleaseReason;

/// One account's holding of one asset, in the asset's smallest unit. Never negative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// Free to reserve or withdraw.
    pub available_units: i128,
    /// Held for open orders.
    pub reserved_units: i128,
}

impl Balance {
    pub fn total_units(&self) -> i128 {
        self.available_units + self.reserved_units
    }
}

/// One change of one (account, asset) balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEvent {
    pub cause: Cause,
    pub account_id: AccountId,
    pub asset_id: AssetId,
    pub available_delta_units: i128,
    pub reserved_delta_units: i128,
    /// The balance after this change.
    pub balance: Balance,
}

/// Which side of a trade an order was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liquidity {
    Maker,
    Taker,
}

/// Why a balance changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Cause {
    Deposit {
        transfer_id: u64,
    },
    Withdrawal {
        transfer_id: u64,
    },
    /// Available to reserved for a new order.
    Reserve {
        order_id: OrderId,
    },
    /// Available to reserved (an increase) or back (a decrease).
    Amend {
        order_id: OrderId,
    },
    /// An order's own side of a trade: its reservation paid (any price improvement back to
    /// available), or what it received net of its fee.
    Fill {
        pair_id: PairId,
        trade_id: u64,
        order_id: OrderId,
        liquidity: Liquidity,
    },
    /// The fee an order paid on a trade, credited to the fee account.
    Fee {
        pair_id: PairId,
        trade_id: u64,
        order_id: OrderId,
        liquidity: Liquidity,
    },
    /// What was left reserved for an order, back to available.
    Release {
        order_id: OrderId,
        reason: ReleaseReason,
    },
}
