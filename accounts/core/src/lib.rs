//! The pure rules of balances: reserve before matching, settle after it.
//!
//! [`Ledger::apply`] takes a [`LedgerCommand`] and appends the [`LedgerEvent`]s it decides, one
//! per change of one (account, asset) balance, each naming its [`Cause`] and the balance after
//! it. Nothing here reads a clock, draws a random number or does I/O, and every map is ordered,
//! so the same commands always yield the same events and the same ledger, byte for byte.
//!
//! # Rules
//!
//! - **Assets** come from the pair symbols `BASE-QUOTE` ([`AssetRegistry::from_pairs`]), each
//!   with a unit fine enough that converting a pair's quantity or notional is an exact
//!   multiplication. Balances are `i128` in those units: `available` and `reserved`, never
//!   negative.
//! - **Deposit** adds to available; **withdraw** takes from it, refused with
//!   `insufficient_funds` beyond it.
//! - **Reserve** (a place): a limit buy holds price x qty of the quote asset, a market buy its
//!   `quote_budget_notional` (required: `quote_budget_required`), a sell its qty of the base
//!   asset; refused with `insufficient_funds` beyond available. Balances are per account, not
//!   per pair, so two orders in two pairs can never hold the same money.
//! - **Amend** re-reserves a resting limit order for its new price and/or new total quantity,
//!   less the fills the ledger has settled: an increase needs available funds
//!   (`insufficient_funds`), a decrease returns the difference.
//! - **Fill** settles both orders of a trade at its price. A buyer's reservation shrinks by its
//!   limit price x qty, and the part above the trade price (price improvement) goes back to
//!   available; a market buyer's budget shrinks by the cost. A seller's shrinks by the qty.
//!   Each side receives the other asset less its fee (`maker_fee_ppm` or `taker_fee_ppm` of
//!   the pair, default 0), rounded down to the received asset's unit and credited to the fee
//!   account. A self-trade settles like any other. Events: the maker's rows (paid, received,
//!   fee), then the taker's.
//! - **Release** (done, cancelled, expired, rejected) returns what is left reserved and forgets
//!   the order.
//! - A refused command changes nothing. Inputs the engine produced that contradict the
//!   reservations are `inconsistent_fill`, not a panic; a balance going negative is a broken
//!   invariant and stops the ledger (`assert!`).
//!
//! # For the actor around it
//!
//! - **When to apply an amend.** The engine may still trade the order at its old terms until
//!   it applies the amend, and may refuse it. So before forwarding an amend the actor applies
//!   one that holds enough for both terms (the higher price and the larger quantity; refused
//!   with `insufficient_funds` before the amend reaches the book), then, after the engine's
//!   `Amended`, one with the new terms exactly (a decrease, never refused), or after its
//!   rejection one with the old terms. Settlements of earlier trades come before the `Amended`
//!   in the pair's sequence, so the ledger's filled quantity is then the engine's.
//! - **Market buys.** The engine must stop a market buy when its budget is spent (today it
//!   knows no budget); a fill beyond it is `inconsistent_fill`.
//! - **Decimals follow the pairs.** A new pair can make an asset's unit finer; stored balances
//!   then need rescaling by the same power of ten.

mod assets;
mod command;
mod error;
mod event;
mod ledger;

pub use assets::{Asset, AssetId, AssetRegistry, PairAssets};
pub use command::{Amend, Fill, FillLeg, LedgerCommand, Release, ReleaseReason, Reserve, Transfer};
pub use error::{ConfigError, LedgerError};
pub use event::{Balance, Cause, LedgerEvent, Liquidity};
pub use ledger::{Ledger, LedgerConfig, PPM_WHOLE, PairFees, Reservation, fee_units, trade_fee};

#[cfg(test)]
mod tests;
