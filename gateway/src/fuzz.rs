//! The body of the `ws_request` fuzz target in `fuzz/`: what the gateway runs on an incoming text
//! frame before anything leaves the process (the parse, then each method's validation).
//! `tests/fuzz_corpus.rs` replays the seed corpus through it in an ordinary `cargo test`.

use std::sync::LazyLock;

use protocol::ws::{ErrorCode, RequestBody};
use protocol::{AccountId, OrderId, OrderType, PairRegistry, PairSpec};

use crate::{queries, validate};

/// The pairs the gateway ships with, and one at the registry's extremes (12 price and 12
/// quantity decimals, so `quote_qty` has 24).
static PAIRS: LazyLock<[PairRegistry; 2]> = LazyLock::new(|| {
    let shipped = PairRegistry::from_toml(include_str!("../../config/pairs.toml"))
        .expect("config/pairs.toml is valid");
    let extreme = PairRegistry::from_toml(
        r#"
        [[pair]]
        symbol = "FUZZ-MAX"
        price_decimals = 12
        qty_decimals = 12
        tick_size = "0.000000000001"
        lot_size = "0.000000000001"
        min_qty = "0.000000000001"
        max_qty = "1000000"
        min_notional = "0"
        "#,
    )
    .expect("the extreme pair is valid");
    [shipped, extreme]
});

fn spec(symbol: &str) -> Option<&'static PairSpec> {
    PAIRS.iter().find_map(|r| r.by_symbol(symbol))
}

/// Parses and validates one frame; panics only on a broken property. A place the gateway lets
/// through is one the engine's own checks of price, quantity and notional would let through.
/// True when the frame parsed into a request.
pub fn ws_frame(data: &[u8]) -> bool {
    let Some(request) = protocol::fuzz::request(data) else {
        return false;
    };
    let account = AccountId(1);
    let refused = |e: protocol::ws::ErrorBody| {
        assert!(e.code != ErrorCode::Internal, "{e:?}");
        assert!(!e.message.is_empty());
    };
    match request.body {
        RequestBody::Place(p) => {
            let Some(spec) = spec(&p.pair) else {
                return true;
            };
            match validate::place(spec, &p, account, OrderId(1)) {
                Ok(place) => {
                    assert!(place.qty.0 % spec.lot_size.0 == 0, "{p:?}");
                    assert!(
                        spec.min_qty <= place.qty && place.qty <= spec.max_qty,
                        "{p:?}"
                    );
                    if let Some(price) = place.price {
                        assert!(price.0 > 0 && price.0 % spec.tick_size.0 == 0, "{p:?}");
                        let notional = PairSpec::notional(price, place.qty);
                        assert!(notional >= spec.min_notional, "{p:?}");
                    }
                    assert_eq!(place.price.is_none(), p.order_type == OrderType::Market);
                    assert!(place.quote_budget.is_none_or(|b| b > 0), "{p:?}");
                }
                Err(e) => refused(e),
            }
        }
        RequestBody::Cancel(c) => {
            if let Err(e) = validate::cancel(&c, account) {
                refused(e);
            }
        }
        RequestBody::Amend(a) => {
            let Some(spec) = spec(&a.pair) else {
                return true;
            };
            match validate::amend(spec, &a, account) {
                Ok(amend) => assert!(amend.new_price.is_some() || amend.new_qty.is_some()),
                Err(e) => refused(e),
            }
        }
        RequestBody::OrderStatus(q) => {
            if let Err(e) = validate::order_ref(q.order_id, q.client_order_id.as_ref()) {
                refused(e);
            }
        }
        RequestBody::MyTrades(q) => {
            if let Err(e) = queries::my_trades_limit(&q) {
                refused(e);
            }
        }
        _ => {}
    }
    true
}
