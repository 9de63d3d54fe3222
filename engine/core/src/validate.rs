//! Static checks of a command against the pair's rules, before the book is consulted.
//!
//! Each function returns the *first* failing reason in a fixed order, so the same bad command
//! always gets the same code (the reference model in `tests/` checks the same order).

use protocol::{
    OrderType, PairSpec, PlaceOrder, Price, Qty, RejectReason, Side, TimeInForce,
    is_valid_client_order_id,
};

/// Market orders cannot rest, so GTC is meaningless for them; post-only only makes sense for an
/// order that would otherwise rest.
pub(crate) fn check_tif(p: &PlaceOrder) -> Result<(), RejectReason> {
    let market_gtc = p.order_type == OrderType::Market && p.tif == TimeInForce::Gtc;
    let bad_post_only =
        p.post_only && (p.order_type != OrderType::Limit || p.tif != TimeInForce::Gtc);
    if market_gtc || bad_post_only {
        return Err(RejectReason::InvalidTimeInForce);
    }
    Ok(())
}

pub(crate) fn check_client_id(id: Option<&str>) -> Result<(), RejectReason> {
    match id {
        Some(c) if !is_valid_client_order_id(c) => Err(RejectReason::InvalidClientOrderId),
        _ => Ok(()),
    }
}

/// A limit order's price, or `None` for a market order.
pub(crate) fn check_place_price(
    spec: &PairSpec,
    p: &PlaceOrder,
) -> Result<Option<Price>, RejectReason> {
    match (p.order_type, p.price) {
        (OrderType::Limit, Some(price)) => check_price(spec, price).map(Some),
        (OrderType::Market, None) => Ok(None),
        _ => Err(RejectReason::InvalidPrice),
    }
}

/// A quote budget only bounds a market buy (the one order whose spend is unknown in advance)
/// and must be positive. A market buy without one is fine here: the account stage, not the
/// book, requires it.
pub(crate) fn check_quote_budget(p: &PlaceOrder) -> Result<(), RejectReason> {
    match p.quote_budget {
        None => Ok(()),
        Some(b) if b > 0 && p.order_type == OrderType::Market && p.side == Side::Buy => Ok(()),
        Some(_) => Err(RejectReason::InvalidQuoteBudget),
    }
}

pub(crate) fn check_price(spec: &PairSpec, price: Price) -> Result<Price, RejectReason> {
    if price.0 <= 0 {
        return Err(RejectReason::InvalidPrice);
    }
    if price.0 % spec.tick_size.0 != 0 {
        return Err(RejectReason::PriceOffTick);
    }
    Ok(price)
}

pub(crate) fn check_qty(spec: &PairSpec, qty: Qty) -> Result<(), RejectReason> {
    if qty.0 % spec.lot_size.0 != 0 {
        return Err(RejectReason::QtyOffLot);
    }
    if qty < spec.min_qty {
        return Err(RejectReason::QtyBelowMin);
    }
    if qty > spec.max_qty {
        return Err(RejectReason::QtyAboveMax);
    }
    Ok(())
}

/// Only limit orders have a notional known in advance; market orders are bounded by min_qty.
pub(crate) fn check_notional(spec: &PairSpec, price: Price, qty: Qty) -> Result<(), RejectReason> {
    if PairSpec::notional(price, qty) < spec.min_notional {
        return Err(RejectReason::BelowMinNotional);
    }
    Ok(())
}
