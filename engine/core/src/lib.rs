//! The pure matching core: one limit order book per pair.
//!
//! [`OrderBook::apply`] takes a [`protocol::Command`] and a timestamp and appends the
//! [`protocol::Event`]s it decides. Nothing here reads a clock, draws a random number or does
//! I/O, so the same command sequence always yields the same events and the same book, byte for
//! byte: the engine can rebuild any book by replaying its log, or from [`OrderBook::export`]
//! rows via [`OrderBook::restore`].
//!
//! # Rules
//!
//! - **Price-time priority.** The best price trades first, then the oldest order at that price.
//!   A trade is at the maker's price. A partial fill keeps the maker's place in its queue.
//! - **Orders.** Limit or market; GTC, IOC or FOK; post-only; an optional client order id.
//!   Market orders take IOC or FOK only; post-only needs a GTC limit order (else
//!   `InvalidTimeInForce`). Only a GTC limit remainder rests; an IOC or market remainder is
//!   Done `Expired`. FOK fills entirely or is rejected `FokCannotFill` without trading. A
//!   market order into an empty opposite side is `NoLiquidity`; a post-only order that would
//!   cross is `PostOnlyWouldTake`.
//! - **Quote budget.** A market buy may carry `quote_budget`, the most quote it may spend in
//!   the pair's notional units (price units x quantity units, like `min_notional`); no other
//!   order may. Matching goes level by level as usual, but each trade's quantity is also at
//!   most floor(budget left / maker price), rounded down to a whole number of lots. When the
//!   budget cannot buy one lot at the best remaining price the order stops there (before any
//!   self-trade prevention at that price) and its remainder is Done `Expired`, as when
//!   liquidity runs out; if that happens before any trade the order is still Accepted and
//!   Done `Expired` with nothing filled (`NoLiquidity` is only for an empty side). A FOK
//!   market buy with a budget fills its whole quantity within the budget or is rejected
//!   `FokCannotFill`. The sum of price x qty over the order's trades never exceeds the
//!   budget. A market buy without a budget trades as before (the account stage requires one).
//! - **Self-trade prevention** uses the *taker's* mode when the taker meets its own account's
//!   order at the front of the queue. `expire_taker` (default): matching stops and the
//!   taker's remainder is Done `ExpiredStp`, even for GTC; the maker stays. `expire_maker`: the
//!   maker is Done `ExpiredStp` and matching continues. `expire_both`: both are Done
//!   `ExpiredStp`. The FOK feasibility check walks the queue the same way: an own order ends
//!   it under `expire_taker`/`expire_both` and is skipped under `expire_maker` (and then
//!   really expired when the FOK executes).
//! - **Validation**, first failure wins, in this order. Place: `DuplicateOrderId` (id live in
//!   this book), `InvalidClientOrderId`, `DuplicateClientOrderId` (live for the same account),
//!   `InvalidTimeInForce`, `InvalidPrice` (limit without positive price, market with one),
//!   `PriceOffTick`, `InvalidQuoteBudget` (a budget on anything but a market buy, or not
//!   positive), `QtyOffLot`, `QtyBelowMin`, `QtyAboveMax`, `BelowMinNotional` (limit
//!   only, on the total quantity), `NoLiquidity`, `PostOnlyWouldTake`, `FokCannotFill`.
//!   Amend: `UnknownOrder`, `InvalidAmend` (nothing changes), `InvalidPrice`/`PriceOffTick`
//!   (new price), lot/min/max (new quantity), `InvalidAmend` (new total not above filled),
//!   `BelowMinNotional`. A refused command changes nothing and consumes one seq for its
//!   Rejected event.
//! - **Cancel** by order id or client id gives Done `Cancelled`. An order that is not live for
//!   the commanding account (filled, cancelled, never existed, or another account's) is
//!   `UnknownOrder`. **Cancel-all** cancels the account's live orders in order id order and
//!   emits nothing when there are none.
//! - **Amend.** `new_qty` is the new *total* (filled part included). Quantity down at the same
//!   price keeps priority; a new price or more quantity loses it: the order goes to the back
//!   of its (new) level with the Amended event's seq as its priority, and a crossing price
//!   matches like a taker first (post-only is a placement-time check only). Amended comes
//!   before any trades.
//! - **Events of one command**, in order: Accepted or Rejected (or Amended); each Trade followed
//!   by the maker's Done if it filled, or a maker's Done `ExpiredStp`; the taker's Done if it
//!   does not rest; then one BookLevel per level whose total changed (0 = gone), bids from high
//!   to low then asks from low to high. Every event takes the next per-pair seq, every trade
//!   the next trade id.
//! - **Accounting.** For every order, filled + resting + cancelled/expired = its quantity;
//!   every Done carries `filled_qty + remaining_qty = qty`.
//!
//! Money is integers: prices and quantities in the pair's units, notional in `i128`.

mod book;
#[doc(hidden)]
pub mod fuzz;
mod hash;
mod state;
mod store;
mod validate;

pub use book::OrderBook;
pub use state::{BookState, RestingOrder, RestoreError};

#[cfg(test)]
mod tests;
