//! Why the ledger refused an input or a configuration. A refused input changes nothing.

use protocol::{AccountId, OrderId, PairId};

use crate::assets::AssetId;

/// Why [`crate::Ledger::apply`] refused a command. The [`LedgerError::code`] is the stable,
/// machine-readable name a client sees; the `Display` text is the human sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error(
        "account {} has {available_units} units of asset {} available, {needed_units} needed",
        account_id.0, asset_id.0
    )]
    InsufficientFunds {
        account_id: AccountId,
        asset_id: AssetId,
        needed_units: i128,
        available_units: i128,
    },
    #[error("a market buy needs a quote budget (order {})", order_id.0)]
    QuoteBudgetRequired { order_id: OrderId },
    #[error("a quote budget must be positive and is only for a market buy (order {})", order_id.0)]
    InvalidQuoteBudget { order_id: OrderId },
    #[error("a limit order needs a positive price and a market order must not have one (order {})", order_id.0)]
    InvalidPrice { order_id: OrderId },
    #[error("quantity must be positive (order {})", order_id.0)]
    InvalidQty { order_id: OrderId },
    #[error("a deposit or withdrawal must be positive, not {amount_units}")]
    InvalidAmount { amount_units: i128 },
    #[error("no asset {}", asset_id.0)]
    UnknownAsset { asset_id: AssetId },
    #[error("no pair {pair_id}")]
    UnknownPair { pair_id: PairId },
    #[error("order {} already has a reservation", order_id.0)]
    DuplicateOrderId { order_id: OrderId },
    #[error("account {} has no open order {}", account_id.0, order_id.0)]
    UnknownOrder {
        order_id: OrderId,
        account_id: AccountId,
    },
    #[error("cannot amend order {}: {problem}", order_id.0)]
    InvalidAmend {
        order_id: OrderId,
        problem: &'static str,
    },
    #[error("the amounts of order {} do not fit 128 bits", order_id.0)]
    AmountOutOfRange { order_id: OrderId },
    /// A fill that does not match the reservations: the engine and the ledger disagree. Never a
    /// client's doing; the actor logs it as an error.
    #[error("fill {trade_id} of pair {pair_id} does not match the reservations: {problem}")]
    InconsistentFill {
        pair_id: PairId,
        trade_id: u64,
        problem: &'static str,
    },
}

impl LedgerError {
    /// The stable code, as a client or an operator sees it.
    pub fn code(&self) -> &'static str {
        match self {
            LedgerError::InsufficientFunds { .. } => "insufficient_funds",
            LedgerError::QuoteBudgetRequired { .. } => "quote_budget_required",
            LedgerError::InvalidQuoteBudget { .. } => "invalid_quote_budget",
            LedgerError::InvalidPrice { .. } => "invalid_price",
            LedgerError::InvalidQty { .. } => "invalid_qty",
            LedgerError::InvalidAmount { .. } => "invalid_amount",
            LedgerError::UnknownAsset { .. } => "unknown_asset",
            LedgerError::UnknownPair { .. } => "unknown_pair",
            LedgerError::DuplicateOrderId { .. } => "duplicate_order_id",
            LedgerError::UnknownOrder { .. } => "unknown_order",
            LedgerError::InvalidAmend { .. } => "invalid_amend",
            LedgerError::AmountOutOfRange { .. } => "amount_out_of_range",
            LedgerError::InconsistentFill { .. } => "inconsistent_fill",
        }
    }
}

/// Why [`crate::Ledger::new`] refused its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("fees are given for pair {pair_id}, which the registry does not hold")]
    UnknownPair { pair_id: PairId },
    #[error("pair {pair_id}: a fee of {fee_ppm} ppm is above 1000000 (100%)")]
    FeeAboveWhole { pair_id: PairId, fee_ppm: u32 },
}
