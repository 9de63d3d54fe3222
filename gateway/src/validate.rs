//! Client requests to engine commands, with the checks the engine would make anyway done first,
//! so an obviously bad order is refused at once and with the same code the engine would use.
//!
//! The order of checks mirrors `engine-core`'s validation (client id, time in force, price,
//! quantity, notional), so the same bad command gets the same code from either.

use protocol::pairs::DecimalError;
use protocol::ws::{Amend, Cancel, ErrorBody, ErrorCode, JSON_SAFE_INT_MAX, Place};
use protocol::{
    AccountId, AmendOrder, CancelOrder, OrderId, OrderRef, OrderType, PairSpec, PlaceOrder, Price,
    Qty, RejectReason, TimeInForce, is_valid_client_order_id,
};

fn order_error(reason: RejectReason) -> ErrorBody {
    ErrorBody::new(ErrorCode::Order(reason), reason.message())
}

fn decimal_error(field: &str, spec: &PairSpec, e: DecimalError) -> ErrorBody {
    let decimals = if field == "price" {
        spec.price_decimals
    } else {
        spec.qty_decimals
    };
    ErrorBody::new(
        ErrorCode::InvalidDecimal,
        format!(
            "{field}: {e} (a plain decimal string with at most {decimals} decimals for {})",
            spec.symbol
        ),
    )
}

/// `quote_qty` in the pair's notional units (price units x quantity units), only on a market
/// buy; checked where the engine checks `invalid_quote_budget` (after the price, before the
/// quantity).
fn quote_budget(spec: &PairSpec, p: &Place) -> Result<Option<i128>, ErrorBody> {
    let Some(text) = &p.quote_qty else {
        return Ok(None);
    };
    if p.order_type != OrderType::Market || p.side != protocol::Side::Buy {
        return Err(ErrorBody::new(
            ErrorCode::InvalidParams,
            "quote_qty is only for market buys",
        ));
    }
    let decimals = spec.price_decimals + spec.qty_decimals;
    let units = protocol::pairs::parse_units(text, decimals).map_err(|e| {
        ErrorBody::new(
            ErrorCode::InvalidDecimal,
            format!(
                "quote_qty: {e} (a plain decimal string with at most {decimals} decimals for {})",
                spec.symbol
            ),
        )
    })?;
    if units <= 0 {
        return Err(order_error(RejectReason::InvalidQuoteBudget));
    }
    Ok(Some(i128::from(units)))
}

fn check_client_id(id: Option<&str>) -> Result<(), ErrorBody> {
    match id {
        Some(c) if !is_valid_client_order_id(c) => {
            Err(order_error(RejectReason::InvalidClientOrderId))
        }
        _ => Ok(()),
    }
}

fn check_price(spec: &PairSpec, price: Price) -> Result<(), ErrorBody> {
    if price.0 <= 0 {
        return Err(order_error(RejectReason::InvalidPrice));
    }
    if price.0 % spec.tick_size.0 != 0 {
        return Err(order_error(RejectReason::PriceOffTick));
    }
    Ok(())
}

fn check_qty(spec: &PairSpec, qty: Qty) -> Result<(), ErrorBody> {
    let reason = if qty.0 % spec.lot_size.0 != 0 {
        RejectReason::QtyOffLot
    } else if qty < spec.min_qty {
        RejectReason::QtyBelowMin
    } else if qty > spec.max_qty {
        RejectReason::QtyAboveMax
    } else {
        return Ok(());
    };
    Err(order_error(reason))
}

fn check_notional(spec: &PairSpec, price: Price, qty: Qty) -> Result<(), ErrorBody> {
    if PairSpec::notional(price, qty) < spec.min_notional {
        return Err(order_error(RejectReason::BelowMinNotional));
    }
    Ok(())
}

/// A place request as the engine's command, or the first reason to refuse it.
pub fn place(
    spec: &PairSpec,
    p: &Place,
    account_id: AccountId,
    order_id: OrderId,
) -> Result<PlaceOrder, ErrorBody> {
    let price = match &p.price {
        Some(s) => Some(
            spec.parse_price(s)
                .map_err(|e| decimal_error("price", spec, e))?,
        ),
        None => None,
    };
    let qty = spec
        .parse_qty(&p.qty)
        .map_err(|e| decimal_error("qty", spec, e))?;
    check_client_id(p.client_order_id.as_deref())?;
    let tif = p.time_in_force();
    let market_gtc = p.order_type == OrderType::Market && tif == TimeInForce::Gtc;
    let bad_post_only =
        p.post_only && (p.order_type != OrderType::Limit || tif != TimeInForce::Gtc);
    if market_gtc || bad_post_only {
        return Err(order_error(RejectReason::InvalidTimeInForce));
    }
    match (p.order_type, price) {
        (OrderType::Limit, Some(price)) => check_price(spec, price)?,
        (OrderType::Market, None) => {}
        _ => return Err(order_error(RejectReason::InvalidPrice)),
    }
    let quote_budget = quote_budget(spec, p)?;
    check_qty(spec, qty)?;
    if let Some(price) = price {
        check_notional(spec, price, qty)?;
    }
    Ok(PlaceOrder {
        quote_budget,
        order_id,
        account_id,
        client_order_id: p.client_order_id.clone(),
        side: p.side,
        order_type: p.order_type,
        price,
        qty,
        tif,
        post_only: p.post_only,
        stp: p.stp,
    })
}

/// Exactly one of an order id and a client order id.
pub(crate) fn order_ref(
    order_id: Option<u64>,
    client_order_id: Option<&String>,
) -> Result<OrderRef, ErrorBody> {
    match (order_id, client_order_id) {
        (Some(id), None) if id > JSON_SAFE_INT_MAX => Err(ErrorBody::new(
            ErrorCode::InvalidOrderRef,
            format!("order_id {id} cannot exist: order ids are below 2^53"),
        )),
        (Some(id), None) => Ok(OrderRef::Id(OrderId(id))),
        (None, Some(c)) => {
            check_client_id(Some(c))?;
            Ok(OrderRef::ClientId(c.clone()))
        }
        _ => Err(ErrorBody::new(
            ErrorCode::InvalidOrderRef,
            "name the order with exactly one of order_id and client_order_id",
        )),
    }
}

pub fn cancel(c: &Cancel, account_id: AccountId) -> Result<CancelOrder, ErrorBody> {
    Ok(CancelOrder {
        account_id,
        target: order_ref(c.order_id, c.client_order_id.as_ref())?,
    })
}

/// Checks what can be checked without the order: each given field on its own, and the notional
/// when both are given. The engine checks the rest against the live order.
pub fn amend(spec: &PairSpec, a: &Amend, account_id: AccountId) -> Result<AmendOrder, ErrorBody> {
    let target = order_ref(a.order_id, a.client_order_id.as_ref())?;
    let new_price = match &a.price {
        Some(s) => Some(
            spec.parse_price(s)
                .map_err(|e| decimal_error("price", spec, e))?,
        ),
        None => None,
    };
    let new_qty = match &a.qty {
        Some(s) => Some(
            spec.parse_qty(s)
                .map_err(|e| decimal_error("qty", spec, e))?,
        ),
        None => None,
    };
    if new_price.is_none() && new_qty.is_none() {
        return Err(order_error(RejectReason::InvalidAmend));
    }
    if let Some(p) = new_price {
        check_price(spec, p)?;
    }
    if let Some(q) = new_qty {
        check_qty(spec, q)?;
    }
    if let (Some(p), Some(q)) = (new_price, new_qty) {
        check_notional(spec, p, q)?;
    }
    Ok(AmendOrder {
        account_id,
        target,
        new_price,
        new_qty,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{PairRegistry, SelfTradePrevention, Side};

    fn btc() -> PairSpec {
        let text = include_str!("../../config/pairs.toml");
        PairRegistry::from_toml(text)
            .unwrap()
            .by_symbol("BTC-EUR")
            .unwrap()
            .clone()
    }

    fn limit(price: &str, qty: &str) -> Place {
        Place {
            pair: "BTC-EUR".into(),
            side: Side::Buy,
            order_type: OrderType::Limit,
            price: Some(price.into()),
            qty: qty.into(),
            tif: None,
            post_only: false,
            client_order_id: None,
            stp: SelfTradePrevention::ExpireTaker,
            quote_qty: None,
        }
    }

    #[test]
    fn quote_qty_is_a_market_buys_budget_in_notional_units() {
        let reg = PairRegistry::from_toml(include_str!("../../config/pairs.toml")).unwrap();
        let spec = reg.by_symbol("BTC-EUR").unwrap();
        let market_buy = Place {
            order_type: OrderType::Market,
            price: None,
            quote_qty: Some("250.5".into()),
            ..limit("1", "0.01")
        };
        let order = place(spec, &market_buy, AccountId(1), OrderId(2)).unwrap();
        // BTC-EUR: 2 price decimals + 8 quantity decimals.
        assert_eq!(order.quote_budget, Some(2_505 * 10_i128.pow(9)));
        assert_eq!(
            place(spec, &limit("100.0", "0.1"), AccountId(1), OrderId(2))
                .unwrap()
                .quote_budget,
            None
        );
        let on_limit = Place {
            quote_qty: Some("10".into()),
            ..limit("100.0", "0.1")
        };
        let on_sell = Place {
            side: Side::Sell,
            ..market_buy.clone()
        };
        for p in [on_limit, on_sell] {
            let e = place(spec, &p, AccountId(1), OrderId(2)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidParams, "{p:?}");
        }
        for (text, code) in [
            ("0", ErrorCode::Order(RejectReason::InvalidQuoteBudget)),
            ("1.00000000001", ErrorCode::InvalidDecimal),
            ("-5", ErrorCode::Order(RejectReason::InvalidQuoteBudget)),
            ("abc", ErrorCode::InvalidDecimal),
        ] {
            let p = Place {
                quote_qty: Some(text.into()),
                ..market_buy.clone()
            };
            let e = place(spec, &p, AccountId(1), OrderId(2)).unwrap_err();
            assert_eq!(e.code, code, "{text}");
        }
    }

    fn code(r: Result<PlaceOrder, ErrorBody>) -> ErrorCode {
        r.unwrap_err().code
    }

    #[test]
    fn a_valid_limit_order_converts_to_integer_units() {
        let p = place(&btc(), &limit("100.10", "0.5"), AccountId(1), OrderId(9)).unwrap();
        assert_eq!(p.price, Some(Price(10010)));
        assert_eq!(p.qty, Qty(50_000_000));
        assert_eq!(p.order_id, OrderId(9));
    }

    #[test]
    fn each_static_rule_has_the_engines_code() {
        let s = btc();
        let a = (AccountId(1), OrderId(1));
        let bad = |p: Place| code(place(&s, &p, a.0, a.1));
        use RejectReason::*;
        assert_eq!(bad(limit("100.15", "0.5")), ErrorCode::Order(PriceOffTick));
        assert_eq!(bad(limit("100.1", "0.000015")), ErrorCode::Order(QtyOffLot));
        assert_eq!(bad(limit("100.1", "2000")), ErrorCode::Order(QtyAboveMax));
        assert_eq!(bad(limit("1", "0.001")), ErrorCode::Order(BelowMinNotional));
        assert_eq!(bad(limit("0", "0.5")), ErrorCode::Order(InvalidPrice));
        assert_eq!(bad(limit("1e3", "0.5")), ErrorCode::InvalidDecimal);
        assert_eq!(bad(limit("100.123", "0.5")), ErrorCode::InvalidDecimal);
        let mut market = limit("100", "0.5");
        market.order_type = OrderType::Market;
        market.tif = Some(TimeInForce::Gtc);
        assert_eq!(bad(market.clone()), ErrorCode::Order(InvalidTimeInForce));
        market.tif = None;
        assert_eq!(bad(market.clone()), ErrorCode::Order(InvalidPrice));
        market.price = None;
        let ok = place(&s, &market, a.0, a.1).expect("a market order without tif");
        assert_eq!(ok.tif, TimeInForce::Ioc, "market orders default to ioc");
        market.tif = Some(TimeInForce::Fok);
        assert_eq!(place(&s, &market, a.0, a.1).unwrap().tif, TimeInForce::Fok);
        let mut cid = limit("100", "0.5");
        cid.client_order_id = Some("has space".into());
        assert_eq!(bad(cid), ErrorCode::Order(InvalidClientOrderId));
    }

    #[test]
    fn order_refs_need_exactly_one_id() {
        let c = Cancel {
            pair: "BTC-EUR".into(),
            order_id: Some(1),
            client_order_id: Some("x".into()),
        };
        assert_eq!(
            cancel(&c, AccountId(1)).unwrap_err().code,
            ErrorCode::InvalidOrderRef
        );
        let too_big = Cancel {
            pair: "BTC-EUR".into(),
            order_id: Some(1 << 60),
            client_order_id: None,
        };
        assert_eq!(
            cancel(&too_big, AccountId(1)).unwrap_err().code,
            ErrorCode::InvalidOrderRef,
            "order ids are below 2^53"
        );
        let a = Amend {
            pair: "BTC-EUR".into(),
            order_id: Some(1),
            client_order_id: None,
            price: None,
            qty: None,
        };
        assert_eq!(
            amend(&btc(), &a, AccountId(1)).unwrap_err().code,
            ErrorCode::Order(RejectReason::InvalidAmend)
        );
    }
}
