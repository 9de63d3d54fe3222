//! Named regressions: bugs seen in other matching engines that must never appear here.

use engine_core::OrderBook;
use protocol::{
    AccountId, AmendOrder, CancelOrder, Command, DoneReason, EventBody, OrderId, OrderRef,
    OrderType, PairSpec, PlaceOrder, Price, Qty, RejectReason, SelfTradePrevention, Side,
    TimeInForce,
};

fn spec() -> PairSpec {
    PairSpec {
        id: 0,
        symbol: "TST-EUR".into(),
        price_decimals: 2,
        qty_decimals: 2,
        tick_size: Price(1),
        lot_size: Qty(1),
        min_qty: Qty(1),
        max_qty: Qty(1_000_000),
        min_notional: 0,
    }
}

fn place(
    id: u64,
    acct: u64,
    side: Side,
    price: Option<i64>,
    qty: i64,
    tif: TimeInForce,
) -> Command {
    Command::Place(PlaceOrder {
        quote_budget: None,
        order_id: OrderId(id),
        account_id: AccountId(acct),
        client_order_id: None,
        side,
        order_type: if price.is_some() {
            OrderType::Limit
        } else {
            OrderType::Market
        },
        price: price.map(Price),
        qty: Qty(qty),
        tif,
        post_only: false,
        stp: SelfTradePrevention::ExpireTaker,
    })
}

fn gtc(id: u64, acct: u64, side: Side, price: i64, qty: i64) -> Command {
    place(id, acct, side, Some(price), qty, TimeInForce::Gtc)
}

fn run(book: &mut OrderBook, cmd: Command) -> Vec<EventBody> {
    let mut out = Vec::new();
    book.apply(&cmd, 0, &mut out);
    out.into_iter().map(|e| e.body).collect()
}

fn ids(book: &OrderBook) -> Vec<u64> {
    book.open_orders().map(|o| o.order_id.0).collect()
}

fn trade_prices(events: &[EventBody]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|e| match e {
            EventBody::Trade { price, .. } => Some(price.0),
            _ => None,
        })
        .collect()
}

fn last_done(events: &[EventBody]) -> Option<(u64, DoneReason, i64)> {
    events.iter().rev().find_map(|e| match e {
        EventBody::Done {
            order_id,
            reason,
            remaining_qty,
            ..
        } => Some((order_id.0, *reason, remaining_qty.0)),
        _ => None,
    })
}

#[test]
fn partial_fill_does_not_send_resting_order_to_back_of_queue() {
    let mut book = OrderBook::new(spec());
    run(&mut book, gtc(1, 1, Side::Sell, 100, 10));
    run(&mut book, gtc(2, 2, Side::Sell, 100, 10));
    run(&mut book, gtc(3, 3, Side::Buy, 100, 4));
    assert_eq!(ids(&book), vec![1, 2]);
    let events = run(&mut book, gtc(4, 3, Side::Buy, 100, 6));
    assert!(events.iter().any(|e| matches!(
        e,
        EventBody::Trade {
            maker_order_id: OrderId(1),
            qty: Qty(6),
            ..
        }
    )));
    assert_eq!(ids(&book), vec![2]);
}

#[test]
fn ioc_remainder_never_rests() {
    let mut book = OrderBook::new(spec());
    run(&mut book, gtc(1, 1, Side::Sell, 100, 10));
    let events = run(
        &mut book,
        place(2, 2, Side::Buy, Some(100), 25, TimeInForce::Ioc),
    );
    assert_eq!(last_done(&events), Some((2, DoneReason::Expired, 15)));
    assert!(book.get(OrderId(2)).is_none());
    assert_eq!(book.best_bid(), None);
}

#[test]
fn market_remainder_never_rests() {
    let mut book = OrderBook::new(spec());
    run(&mut book, gtc(1, 1, Side::Buy, 100, 10));
    let events = run(
        &mut book,
        place(2, 2, Side::Sell, None, 25, TimeInForce::Ioc),
    );
    assert_eq!(last_done(&events), Some((2, DoneReason::Expired, 15)));
    assert!(book.is_empty());
}

#[test]
fn fok_never_partially_fills() {
    let mut book = OrderBook::new(spec());
    run(&mut book, gtc(1, 1, Side::Sell, 100, 10));
    let before = book.export();
    let events = run(
        &mut book,
        place(2, 2, Side::Buy, Some(100), 11, TimeInForce::Fok),
    );
    assert!(matches!(
        events.as_slice(),
        [EventBody::Rejected {
            reason: RejectReason::FokCannotFill,
            ..
        }]
    ));
    assert_eq!(book.export().orders, before.orders);
    assert_eq!(book.last_trade_id(), 0);
}

#[test]
fn amend_that_crosses_never_rests_crossed() {
    let mut book = OrderBook::new(spec());
    run(&mut book, gtc(1, 1, Side::Sell, 100, 10));
    run(&mut book, gtc(2, 2, Side::Buy, 90, 30));
    let amend = Command::Amend(AmendOrder {
        account_id: AccountId(2),
        target: OrderRef::Id(OrderId(2)),
        new_price: Some(Price(110)),
        new_qty: None,
    });
    let events = run(&mut book, amend);
    assert_eq!(trade_prices(&events), vec![100]);
    assert_eq!(book.best_ask(), None);
    assert_eq!(book.best_bid(), Some((Price(110), Qty(20))));
}

#[test]
fn stp_expire_taker_never_leaves_taker_remainder_resting() {
    let mut book = OrderBook::new(spec());
    run(&mut book, gtc(1, 1, Side::Sell, 100, 10));
    let events = run(&mut book, gtc(2, 1, Side::Buy, 100, 10));
    assert_eq!(last_done(&events), Some((2, DoneReason::ExpiredStp, 10)));
    assert_eq!(ids(&book), vec![1]);
    assert_eq!(book.best_bid(), None);
}

#[test]
fn trade_is_at_makers_price_never_takers() {
    let mut book = OrderBook::new(spec());
    run(&mut book, gtc(1, 1, Side::Sell, 100, 10));
    let events = run(&mut book, gtc(2, 2, Side::Buy, 120, 10));
    assert_eq!(trade_prices(&events), vec![100]);
    run(&mut book, gtc(3, 1, Side::Buy, 100, 10));
    let events = run(
        &mut book,
        place(4, 2, Side::Sell, Some(80), 10, TimeInForce::Ioc),
    );
    assert_eq!(trade_prices(&events), vec![100]);
}

#[test]
fn cancel_of_filled_order_is_unknown_order() {
    let mut book = OrderBook::new(spec());
    run(&mut book, gtc(1, 1, Side::Sell, 100, 10));
    run(&mut book, gtc(2, 2, Side::Buy, 100, 10));
    let cancel = Command::Cancel(CancelOrder {
        account_id: AccountId(1),
        target: OrderRef::Id(OrderId(1)),
    });
    let events = run(&mut book, cancel);
    assert!(matches!(
        events.as_slice(),
        [EventBody::Rejected {
            reason: RejectReason::UnknownOrder,
            ..
        }]
    ));
}
