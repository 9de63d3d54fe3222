//! Unit tests: every order type, every reject reason, event order and restore.

use protocol::{
    AccountId, AmendOrder, CancelAll, CancelOrder, Command, CommandKind, DoneReason, Event,
    EventBody, OrderId, OrderRef, OrderType, PairSpec, PlaceOrder, Price, Qty, RejectReason,
    SelfTradePrevention, Side, TimeInForce,
};

use crate::{BookState, OrderBook, RestingOrder, RestoreError};

use Side::{Buy, Sell};

/// Tick 5, lot 10, qty 10..=100_000, min notional 600 (price 60 x qty 10).
fn spec() -> PairSpec {
    PairSpec {
        id: 0,
        symbol: "TST-EUR".into(),
        price_decimals: 2,
        qty_decimals: 2,
        tick_size: Price(5),
        lot_size: Qty(10),
        min_qty: Qty(10),
        max_qty: Qty(100_000),
        min_notional: 600,
    }
}

fn lim(id: u64, acct: u64, side: Side, price: i64, qty: i64) -> PlaceOrder {
    PlaceOrder {
        quote_budget: None,
        order_id: OrderId(id),
        account_id: AccountId(acct),
        client_order_id: None,
        side,
        order_type: OrderType::Limit,
        price: Some(Price(price)),
        qty: Qty(qty),
        tif: TimeInForce::Gtc,
        post_only: false,
        stp: SelfTradePrevention::ExpireTaker,
    }
}

fn mkt(id: u64, acct: u64, side: Side, qty: i64) -> PlaceOrder {
    PlaceOrder {
        order_type: OrderType::Market,
        price: None,
        tif: TimeInForce::Ioc,
        ..lim(id, acct, side, 0, qty)
    }
}

/// A market buy that may spend at most `budget` (price units x quantity units).
fn budgeted(id: u64, acct: u64, qty: i64, budget: i128) -> PlaceOrder {
    PlaceOrder {
        quote_budget: Some(budget),
        ..mkt(id, acct, Buy, qty)
    }
}

fn with_tif(p: PlaceOrder, tif: TimeInForce) -> PlaceOrder {
    PlaceOrder { tif, ..p }
}

fn with_stp(p: PlaceOrder, stp: SelfTradePrevention) -> PlaceOrder {
    PlaceOrder { stp, ..p }
}

fn with_client_id(p: PlaceOrder, c: &str) -> PlaceOrder {
    PlaceOrder {
        client_order_id: Some(c.into()),
        ..p
    }
}

fn cancel(acct: u64, id: u64) -> Command {
    Command::Cancel(CancelOrder {
        account_id: AccountId(acct),
        target: OrderRef::Id(OrderId(id)),
    })
}

fn amend(acct: u64, id: u64, price: Option<i64>, qty: Option<i64>) -> Command {
    Command::Amend(AmendOrder {
        account_id: AccountId(acct),
        target: OrderRef::Id(OrderId(id)),
        new_price: price.map(Price),
        new_qty: qty.map(Qty),
    })
}

/// A book plus a clock, checking on every command that seqs continue without a gap.
struct Harness {
    book: OrderBook,
    ts_ns: u64,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            book: OrderBook::new(spec()),
            ts_ns: 1_000,
        }
    }

    fn run(&mut self, cmd: Command) -> Vec<EventBody> {
        self.ts_ns += 1;
        let first = self.book.last_seq() + 1;
        let mut out: Vec<Event> = Vec::new();
        self.book.apply(&cmd, self.ts_ns, &mut out);
        for (i, e) in out.iter().enumerate() {
            assert_eq!(e.seq, first + i as u64, "seqs are consecutive");
            assert_eq!(e.ts_ns, self.ts_ns);
        }
        assert_eq!(self.book.last_seq(), first + out.len() as u64 - 1);
        out.into_iter().map(|e| e.body).collect()
    }

    fn place(&mut self, p: PlaceOrder) -> Vec<EventBody> {
        self.run(Command::Place(p))
    }

    /// Places and asserts the command was not rejected.
    fn ok(&mut self, p: PlaceOrder) -> Vec<EventBody> {
        let events = self.place(p);
        assert!(
            matches!(events[0], EventBody::Accepted { .. }),
            "{events:?}"
        );
        events
    }

    /// Runs a command that must be refused; asserts it changed nothing but the seq.
    fn rejects(&mut self, cmd: Command) -> RejectReason {
        let before = self.book.export();
        let events = self.run(cmd);
        let after = self.book.export();
        assert_eq!(
            after.orders, before.orders,
            "a rejected command changes nothing"
        );
        assert_eq!(after.last_trade_id, before.last_trade_id);
        assert_eq!(
            after.last_seq,
            before.last_seq + 1,
            "one seq for the Rejected event"
        );
        match events.as_slice() {
            [EventBody::Rejected { reason, .. }] => *reason,
            other => panic!("expected one Rejected, got {other:?}"),
        }
    }

    fn rejects_place(&mut self, p: PlaceOrder) -> RejectReason {
        self.rejects(Command::Place(p))
    }
}

fn trades(events: &[EventBody]) -> Vec<(i64, i64, u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            EventBody::Trade {
                price,
                qty,
                maker_order_id,
                taker_order_id,
                ..
            } => Some((price.0, qty.0, maker_order_id.0, taker_order_id.0)),
            _ => None,
        })
        .collect()
}

fn dones(events: &[EventBody]) -> Vec<(u64, DoneReason, i64, i64)> {
    events
        .iter()
        .filter_map(|e| match e {
            EventBody::Done {
                order_id,
                reason,
                filled_qty,
                remaining_qty,
                ..
            } => Some((order_id.0, *reason, filled_qty.0, remaining_qty.0)),
            _ => None,
        })
        .collect()
}

fn levels(events: &[EventBody]) -> Vec<(Side, i64, i64)> {
    events
        .iter()
        .filter_map(|e| match e {
            EventBody::BookLevel { side, price, qty } => Some((*side, price.0, qty.0)),
            _ => None,
        })
        .collect()
}

fn ids(book: &OrderBook) -> Vec<u64> {
    book.open_orders().map(|o| o.order_id.0).collect()
}

// ---- order types -------------------------------------------------------------------------

#[test]
fn gtc_limit_rests_and_publishes_its_level() {
    let mut h = Harness::new();
    let events = h.ok(lim(1, 1, Buy, 100, 20));
    assert_eq!(events.len(), 2);
    assert_eq!(levels(&events), vec![(Buy, 100, 20)]);
    assert_eq!(h.book.best_bid(), Some((Price(100), Qty(20))));
    assert_eq!(h.book.best_ask(), None);
    let o = h.book.get(OrderId(1)).unwrap();
    assert_eq!((o.filled_qty, o.priority_seq), (Qty(0), 1));
}

#[test]
fn crossing_limit_trades_level_by_level_and_rests_its_remainder() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Sell, 100, 10));
    h.ok(lim(2, 1, Sell, 105, 10));
    h.ok(lim(3, 1, Sell, 110, 10));
    let events = h.ok(lim(4, 2, Buy, 105, 30));
    assert_eq!(trades(&events), vec![(100, 10, 1, 4), (105, 10, 2, 4)]);
    assert_eq!(
        dones(&events),
        vec![
            (1, DoneReason::Filled, 10, 0),
            (2, DoneReason::Filled, 10, 0)
        ]
    );
    assert_eq!(
        levels(&events),
        vec![(Buy, 105, 10), (Sell, 100, 0), (Sell, 105, 0)]
    );
    let rest = h.book.get(OrderId(4)).unwrap();
    assert_eq!((rest.qty, rest.filled_qty), (Qty(30), Qty(20)));
    assert_eq!(h.book.last_trade_id(), 2);
}

#[test]
fn ioc_limit_trades_what_crosses_and_expires_the_rest() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Sell, 100, 10));
    let events = h.ok(with_tif(lim(2, 2, Buy, 100, 30), TimeInForce::Ioc));
    assert_eq!(trades(&events), vec![(100, 10, 1, 2)]);
    assert_eq!(
        dones(&events),
        vec![
            (1, DoneReason::Filled, 10, 0),
            (2, DoneReason::Expired, 10, 20)
        ]
    );
    assert!(h.book.is_empty());
}

#[test]
fn ioc_that_crosses_nothing_expires_untouched() {
    let mut h = Harness::new();
    let events = h.ok(with_tif(lim(1, 1, Buy, 100, 30), TimeInForce::Ioc));
    assert_eq!(dones(&events), vec![(1, DoneReason::Expired, 0, 30)]);
    assert!(levels(&events).is_empty());
}

#[test]
fn market_order_sweeps_any_price() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Buy, 100, 10));
    h.ok(lim(2, 1, Buy, 60, 10));
    let events = h.ok(mkt(3, 2, Sell, 20));
    assert_eq!(trades(&events), vec![(100, 10, 1, 3), (60, 10, 2, 3)]);
    assert_eq!(dones(&events).last(), Some(&(3, DoneReason::Filled, 20, 0)));
    assert_eq!(levels(&events), vec![(Buy, 100, 0), (Buy, 60, 0)]);
}

#[test]
fn market_fok_fills_entirely_or_not_at_all() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Sell, 100, 10));
    let too_big = with_tif(mkt(2, 2, Buy, 20), TimeInForce::Fok);
    assert_eq!(h.rejects_place(too_big), RejectReason::FokCannotFill);
    let fits = with_tif(mkt(3, 2, Buy, 10), TimeInForce::Fok);
    let events = h.ok(fits);
    assert_eq!(dones(&events).last(), Some(&(3, DoneReason::Filled, 10, 0)));
}

#[test]
fn limit_fok_counts_only_crossing_levels() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Sell, 100, 10));
    h.ok(lim(2, 1, Sell, 110, 10));
    let limited = with_tif(lim(3, 2, Buy, 105, 20), TimeInForce::Fok);
    assert_eq!(h.rejects_place(limited), RejectReason::FokCannotFill);
    let events = h.ok(with_tif(lim(4, 2, Buy, 110, 20), TimeInForce::Fok));
    assert_eq!(trades(&events).len(), 2);
    assert_eq!(dones(&events).last(), Some(&(4, DoneReason::Filled, 20, 0)));
}

#[test]
fn limit_fok_into_an_empty_book_cannot_fill() {
    let mut h = Harness::new();
    let fok = with_tif(lim(1, 1, Buy, 100, 10), TimeInForce::Fok);
    assert_eq!(h.rejects_place(fok), RejectReason::FokCannotFill);
}

#[test]
fn post_only_rests_when_it_does_not_cross() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Sell, 105, 10));
    let p = PlaceOrder {
        post_only: true,
        ..lim(2, 2, Buy, 100, 10)
    };
    let events = h.ok(p);
    assert!(matches!(
        events[0],
        EventBody::Accepted {
            post_only: true,
            ..
        }
    ));
    assert_eq!(h.book.best_bid(), Some((Price(100), Qty(10))));
}

#[test]
fn client_order_id_is_carried_and_reusable_once_done() {
    let mut h = Harness::new();
    h.ok(with_client_id(lim(1, 1, Buy, 100, 10), "abc"));
    let events = h.run(Command::Cancel(CancelOrder {
        account_id: AccountId(1),
        target: OrderRef::ClientId("abc".into()),
    }));
    match &events[0] {
        EventBody::Done {
            client_order_id,
            reason,
            ..
        } => {
            assert_eq!(client_order_id.as_deref(), Some("abc"));
            assert_eq!(*reason, DoneReason::Cancelled);
        }
        other => panic!("{other:?}"),
    }
    h.ok(with_client_id(lim(2, 1, Buy, 100, 10), "abc"));
    // Another account may use the same client id at the same time.
    h.ok(with_client_id(lim(3, 2, Buy, 100, 10), "abc"));
}

// ---- self-trade prevention ---------------------------------------------------------------

fn stp_book() -> Harness {
    let mut h = Harness::new();
    h.ok(lim(1, 2, Sell, 100, 10));
    h.ok(lim(2, 1, Sell, 100, 10));
    h.ok(lim(3, 2, Sell, 105, 10));
    h
}

#[test]
fn stp_expire_taker_stops_at_own_order_and_keeps_the_maker() {
    let mut h = stp_book();
    let events = h.ok(lim(4, 1, Buy, 105, 30));
    assert_eq!(trades(&events), vec![(100, 10, 1, 4)]);
    assert_eq!(
        dones(&events),
        vec![
            (1, DoneReason::Filled, 10, 0),
            (4, DoneReason::ExpiredStp, 10, 20)
        ]
    );
    assert_eq!(ids(&h.book), vec![2, 3]);
}

#[test]
fn stp_expire_maker_removes_own_order_and_continues() {
    let mut h = stp_book();
    let p = with_stp(lim(4, 1, Buy, 105, 30), SelfTradePrevention::ExpireMaker);
    let events = h.ok(p);
    assert_eq!(trades(&events), vec![(100, 10, 1, 4), (105, 10, 3, 4)]);
    assert_eq!(
        dones(&events),
        vec![
            (1, DoneReason::Filled, 10, 0),
            (2, DoneReason::ExpiredStp, 0, 10),
            (3, DoneReason::Filled, 10, 0),
        ]
    );
    assert_eq!(ids(&h.book), vec![4]);
    assert_eq!(h.book.get(OrderId(4)).unwrap().filled_qty, Qty(20));
}

#[test]
fn stp_expire_both_removes_both() {
    let mut h = stp_book();
    let p = with_stp(lim(4, 1, Buy, 105, 30), SelfTradePrevention::ExpireBoth);
    let events = h.ok(p);
    assert_eq!(
        dones(&events),
        vec![
            (1, DoneReason::Filled, 10, 0),
            (2, DoneReason::ExpiredStp, 0, 10),
            (4, DoneReason::ExpiredStp, 10, 20),
        ]
    );
    assert_eq!(ids(&h.book), vec![3]);
}

#[test]
fn fok_feasibility_follows_the_stp_mode() {
    let mut h = stp_book();
    let taker = with_tif(lim(4, 1, Buy, 105, 20), TimeInForce::Fok);
    assert_eq!(h.rejects_place(taker.clone()), RejectReason::FokCannotFill);
    let both = with_stp(taker.clone(), SelfTradePrevention::ExpireBoth);
    assert_eq!(h.rejects_place(both), RejectReason::FokCannotFill);
    let maker = with_stp(taker, SelfTradePrevention::ExpireMaker);
    let events = h.ok(maker);
    assert_eq!(trades(&events), vec![(100, 10, 1, 4), (105, 10, 3, 4)]);
    assert!(h.book.is_empty());
}

// ---- quote budget ------------------------------------------------------------------------

/// What the taker `taker` paid over its trades: sum of price x qty.
fn spent(events: &[EventBody], taker: u64) -> i128 {
    trades(events)
        .iter()
        .filter(|t| t.3 == taker)
        .map(|&(price, qty, ..)| i128::from(price) * i128::from(qty))
        .sum()
}

#[test]
fn budget_stops_a_market_buy_in_the_middle_of_a_level() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Sell, 100, 30));
    // 2_500 buys 25 at 100, rounded down to the lot of 10: 20, leaving 500, less than a lot.
    let events = h.ok(budgeted(2, 2, 50, 2_500));
    assert_eq!(trades(&events), vec![(100, 20, 1, 2)]);
    assert_eq!(dones(&events), vec![(2, DoneReason::Expired, 20, 30)]);
    assert_eq!(levels(&events), vec![(Sell, 100, 10)]);
    assert!(matches!(
        events.as_slice(),
        [
            EventBody::Accepted { .. },
            EventBody::Trade { .. },
            EventBody::Done { .. },
            EventBody::BookLevel { .. }
        ]
    ));
    assert_eq!(spent(&events, 2), 2_000);
    let maker = h.book.get(OrderId(1)).unwrap();
    assert_eq!(maker.filled_qty, Qty(20), "the maker keeps its place");
}

#[test]
fn budget_stops_a_market_buy_at_a_level_boundary() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Sell, 100, 10));
    h.ok(lim(2, 1, Sell, 105, 10));
    // After 10 at 100, 1_049 is left: 9 at 105, not one lot.
    let events = h.ok(budgeted(3, 2, 30, 2_049));
    assert_eq!(trades(&events), vec![(100, 10, 1, 3)]);
    assert_eq!(
        dones(&events),
        vec![
            (1, DoneReason::Filled, 10, 0),
            (3, DoneReason::Expired, 10, 20)
        ]
    );
    assert_eq!(levels(&events), vec![(Sell, 100, 0)]);
    assert_eq!(ids(&h.book), vec![2]);
}

#[test]
fn budget_exactly_enough_fills_and_one_unit_less_does_not() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Sell, 100, 10));
    h.ok(lim(2, 1, Sell, 105, 20));
    let exact = 100 * 10 + 105 * 20;
    let mut short = h.book.clone();
    let events = h.ok(budgeted(3, 2, 30, exact));
    assert_eq!(trades(&events), vec![(100, 10, 1, 3), (105, 20, 2, 3)]);
    assert_eq!(dones(&events).last(), Some(&(3, DoneReason::Filled, 30, 0)));
    assert_eq!(spent(&events, 3), exact);
    assert!(h.book.is_empty());

    // One unit less: 2_099 left at 105 buys 19, one lot of 10.
    let mut out = Vec::new();
    short.apply(&Command::Place(budgeted(3, 2, 30, exact - 1)), 1, &mut out);
    let events: Vec<EventBody> = out.into_iter().map(|e| e.body).collect();
    assert_eq!(trades(&events), vec![(100, 10, 1, 3), (105, 10, 2, 3)]);
    assert_eq!(
        dones(&events).last(),
        Some(&(3, DoneReason::Expired, 20, 10))
    );
    assert_eq!(spent(&events, 3), 2_050);
}

#[test]
fn budget_larger_than_needed_changes_nothing() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Sell, 100, 10));
    h.ok(lim(2, 1, Sell, 105, 10));
    let mut unbudgeted = h.book.clone();
    let events = h.ok(budgeted(3, 2, 30, i128::MAX));
    let mut out = Vec::new();
    unbudgeted.apply(&Command::Place(mkt(3, 2, Buy, 30)), h.ts_ns, &mut out);
    let same: Vec<EventBody> = out.into_iter().map(|e| e.body).collect();
    assert_eq!(events, same);
    assert_eq!(
        dones(&events).last(),
        Some(&(3, DoneReason::Expired, 20, 10))
    );
}

#[test]
fn budget_below_one_lot_is_accepted_and_expires_untouched() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Sell, 100, 10));
    // 999 buys 9 at 100: not one lot. Like a market order that meets a non-empty side but
    // trades nothing, it is accepted and expires; NoLiquidity is for an empty side only.
    let events = h.ok(budgeted(2, 2, 10, 999));
    assert_eq!(trades(&events), vec![]);
    assert_eq!(dones(&events), vec![(2, DoneReason::Expired, 0, 10)]);
    assert!(levels(&events).is_empty());
    assert_eq!(ids(&h.book), vec![1]);
    assert_eq!(h.book.last_trade_id(), 0);
    let fok = with_tif(budgeted(3, 2, 10, 999), TimeInForce::Fok);
    assert_eq!(h.rejects_place(fok), RejectReason::FokCannotFill);
    let empty_side = budgeted(4, 1, 10, 999);
    let mut h = Harness::new();
    assert_eq!(h.rejects_place(empty_side), RejectReason::NoLiquidity);
}

#[test]
fn budgeted_fok_fills_within_its_budget_or_not_at_all() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Sell, 100, 10));
    h.ok(lim(2, 1, Sell, 105, 10));
    let outside = with_tif(budgeted(3, 2, 20, 2_049), TimeInForce::Fok);
    assert_eq!(h.rejects_place(outside), RejectReason::FokCannotFill);
    // Enough liquidity but the budget stops inside the first level.
    let mid_level = with_tif(budgeted(3, 2, 10, 999), TimeInForce::Fok);
    assert_eq!(h.rejects_place(mid_level), RejectReason::FokCannotFill);
    let within = with_tif(budgeted(3, 2, 20, 2_050), TimeInForce::Fok);
    let events = h.ok(within);
    assert_eq!(trades(&events), vec![(100, 10, 1, 3), (105, 10, 2, 3)]);
    assert_eq!(dones(&events).last(), Some(&(3, DoneReason::Filled, 20, 0)));
    assert!(h.book.is_empty());
}

#[test]
fn budgeted_fok_walks_self_trade_prevention_like_matching() {
    // Own order (2, account 1) between two others at 100, then 3 at 105.
    let fok = |budget| {
        let p = with_tif(budgeted(4, 1, 20, budget), TimeInForce::Fok);
        with_stp(p, SelfTradePrevention::ExpireMaker)
    };
    let mut h = stp_book();
    assert_eq!(h.rejects_place(fok(2_049)), RejectReason::FokCannotFill);
    let events = h.ok(fok(2_050));
    assert_eq!(trades(&events), vec![(100, 10, 1, 4), (105, 10, 3, 4)]);
    assert_eq!(
        dones(&events),
        vec![
            (1, DoneReason::Filled, 10, 0),
            (2, DoneReason::ExpiredStp, 0, 10),
            (3, DoneReason::Filled, 10, 0),
            (4, DoneReason::Filled, 20, 0),
        ]
    );
}

#[test]
fn budget_is_checked_before_self_trade_prevention_at_each_price() {
    // stp_book: 1 (account 2) and own 2 (account 1) at 100, then 3 (account 2) at 105.
    // The budget runs out in front of the own order: the taker expires for its budget, and
    // the own order stays (the taker would not trade at that price anyway).
    let mut h = stp_book();
    let events = h.ok(budgeted(4, 1, 30, 1_999));
    assert_eq!(trades(&events), vec![(100, 10, 1, 4)]);
    assert_eq!(
        dones(&events),
        vec![
            (1, DoneReason::Filled, 10, 0),
            (4, DoneReason::Expired, 10, 20)
        ]
    );
    assert_eq!(ids(&h.book), vec![2, 3]);

    // With a lot's worth left, the taker meets its own order and STP decides, as without
    // a budget: expire_taker ends it ExpiredStp, expire_maker removes the maker and goes on
    // until the budget stops it at 105.
    let mut h = stp_book();
    let events = h.ok(budgeted(4, 1, 30, 2_000));
    assert_eq!(
        dones(&events).last(),
        Some(&(4, DoneReason::ExpiredStp, 10, 20))
    );
    let mut h = stp_book();
    let p = with_stp(budgeted(4, 1, 30, 2_000), SelfTradePrevention::ExpireMaker);
    let events = h.ok(p);
    assert_eq!(trades(&events), vec![(100, 10, 1, 4)]);
    assert_eq!(
        dones(&events),
        vec![
            (1, DoneReason::Filled, 10, 0),
            (2, DoneReason::ExpiredStp, 0, 10),
            (4, DoneReason::Expired, 10, 20)
        ]
    );
    assert_eq!(ids(&h.book), vec![3]);
}

// ---- cancel ------------------------------------------------------------------------------

#[test]
fn cancel_reports_filled_and_remaining() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Sell, 100, 30));
    h.ok(lim(2, 2, Buy, 100, 10));
    let events = h.run(cancel(1, 1));
    assert_eq!(dones(&events), vec![(1, DoneReason::Cancelled, 10, 20)]);
    assert_eq!(levels(&events), vec![(Sell, 100, 0)]);
    assert!(h.book.is_empty());
}

#[test]
fn cancel_all_cancels_by_order_id_and_is_silent_when_empty() {
    let mut h = Harness::new();
    h.ok(lim(7, 1, Sell, 110, 10));
    h.ok(lim(3, 1, Buy, 95, 10));
    h.ok(lim(5, 2, Buy, 95, 10));
    h.ok(lim(4, 1, Sell, 105, 10));
    let all = |a| {
        Command::CancelAll(CancelAll {
            account_id: AccountId(a),
        })
    };
    let events = h.run(all(1));
    let done_ids: Vec<u64> = dones(&events).iter().map(|d| d.0).collect();
    assert_eq!(done_ids, vec![3, 4, 7]);
    assert_eq!(
        levels(&events),
        vec![(Buy, 95, 10), (Sell, 105, 0), (Sell, 110, 0)]
    );
    assert_eq!(ids(&h.book), vec![5]);
    let seq = h.book.last_seq();
    assert!(h.run(all(1)).is_empty());
    assert_eq!(h.book.last_seq(), seq, "nothing to cancel consumes no seq");
}

// ---- amend -------------------------------------------------------------------------------

#[test]
fn amend_quantity_down_keeps_priority() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Buy, 100, 30));
    h.ok(lim(2, 2, Buy, 100, 10));
    let events = h.run(amend(1, 1, None, Some(20)));
    assert!(matches!(
        events[0],
        EventBody::Amended {
            priority_kept: true,
            qty: Qty(20),
            remaining_qty: Qty(20),
            ..
        }
    ));
    assert_eq!(levels(&events), vec![(Buy, 100, 30)]);
    assert_eq!(ids(&h.book), vec![1, 2]);
    assert_eq!(h.book.get(OrderId(1)).unwrap().priority_seq, 1);
}

#[test]
fn amend_quantity_up_loses_priority() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Buy, 100, 30));
    h.ok(lim(2, 2, Buy, 100, 10));
    let events = h.run(amend(1, 1, Some(100), Some(40)));
    assert!(matches!(
        events[0],
        EventBody::Amended {
            priority_kept: false,
            ..
        }
    ));
    assert_eq!(ids(&h.book), vec![2, 1]);
    assert_eq!(
        h.book.get(OrderId(1)).unwrap().priority_seq,
        h.book.last_seq() - 1,
        "priority is the Amended event's seq"
    );
}

#[test]
fn amend_new_price_loses_priority_and_moves_level() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Buy, 100, 30));
    h.ok(lim(2, 2, Buy, 95, 10));
    let events = h.run(amend(1, 1, Some(95), None));
    assert_eq!(levels(&events), vec![(Buy, 100, 0), (Buy, 95, 40)]);
    assert_eq!(ids(&h.book), vec![2, 1]);
}

#[test]
fn crossing_amend_trades_first_then_rests_its_remainder() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Sell, 105, 10));
    h.ok(lim(2, 2, Buy, 100, 30));
    let events = h.run(amend(2, 2, Some(105), None));
    assert!(matches!(events[0], EventBody::Amended { .. }));
    assert!(matches!(events[1], EventBody::Trade { .. }));
    assert_eq!(trades(&events), vec![(105, 10, 1, 2)]);
    assert_eq!(
        levels(&events),
        vec![(Buy, 105, 20), (Buy, 100, 0), (Sell, 105, 0)]
    );
    let o = h.book.get(OrderId(2)).unwrap();
    assert_eq!((o.price, o.filled_qty), (Price(105), Qty(10)));
}

#[test]
fn amend_that_fills_completely_is_done() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Sell, 105, 30));
    h.ok(lim(2, 2, Buy, 100, 10));
    let events = h.run(amend(2, 2, Some(105), None));
    assert_eq!(dones(&events), vec![(2, DoneReason::Filled, 10, 0)]);
    assert!(h.book.get(OrderId(2)).is_none());
}

#[test]
fn amend_keeps_filled_part_in_the_total() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Sell, 100, 30));
    h.ok(lim(2, 2, Buy, 100, 10));
    let events = h.run(amend(1, 1, None, Some(20)));
    assert!(matches!(
        events[0],
        EventBody::Amended {
            qty: Qty(20),
            remaining_qty: Qty(10),
            priority_kept: true,
            ..
        }
    ));
    assert_eq!(
        h.rejects(amend(1, 1, None, Some(10))),
        RejectReason::InvalidAmend
    );
}

// ---- every reject reason -----------------------------------------------------------------

#[test]
fn rejects_duplicate_order_id_while_live_only() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Buy, 100, 10));
    assert_eq!(
        h.rejects_place(lim(1, 2, Sell, 200, 10)),
        RejectReason::DuplicateOrderId
    );
    h.run(cancel(1, 1));
    h.ok(lim(1, 2, Sell, 200, 10));
}

#[test]
fn rejects_bad_and_duplicate_client_order_ids() {
    let mut h = Harness::new();
    for bad in ["", "has space", &"x".repeat(37)] {
        let p = with_client_id(lim(1, 1, Buy, 100, 10), bad);
        assert_eq!(h.rejects_place(p), RejectReason::InvalidClientOrderId);
    }
    h.ok(with_client_id(lim(1, 1, Buy, 100, 10), "c-1"));
    let dup = with_client_id(lim(2, 1, Buy, 100, 10), "c-1");
    assert_eq!(h.rejects_place(dup), RejectReason::DuplicateClientOrderId);
}

#[test]
fn invalid_client_order_id_is_not_echoed() {
    let mut h = Harness::new();
    let events = h.place(with_client_id(lim(1, 1, Buy, 100, 10), "bad id"));
    assert_eq!(
        events,
        vec![EventBody::Rejected {
            order_id: Some(OrderId(1)),
            account_id: Some(AccountId(1)),
            client_order_id: None,
            command: Some(CommandKind::Place),
            reason: RejectReason::InvalidClientOrderId,
        }]
    );
}

#[test]
fn rejects_invalid_time_in_force() {
    let mut h = Harness::new();
    h.ok(lim(9, 9, Sell, 100, 10));
    let market_gtc = with_tif(mkt(1, 1, Buy, 10), TimeInForce::Gtc);
    assert_eq!(
        h.rejects_place(market_gtc),
        RejectReason::InvalidTimeInForce
    );
    for tif in [TimeInForce::Ioc, TimeInForce::Fok] {
        let p = PlaceOrder {
            post_only: true,
            ..with_tif(lim(1, 1, Buy, 95, 10), tif)
        };
        assert_eq!(h.rejects_place(p), RejectReason::InvalidTimeInForce);
    }
    let post_only_market = PlaceOrder {
        post_only: true,
        ..mkt(1, 1, Buy, 10)
    };
    assert_eq!(
        h.rejects_place(post_only_market),
        RejectReason::InvalidTimeInForce
    );
}

#[test]
fn rejects_invalid_prices() {
    let mut h = Harness::new();
    h.ok(lim(9, 9, Sell, 100, 10));
    let no_price = PlaceOrder {
        price: None,
        ..lim(1, 1, Buy, 100, 10)
    };
    assert_eq!(h.rejects_place(no_price), RejectReason::InvalidPrice);
    let priced_market = PlaceOrder {
        price: Some(Price(100)),
        ..mkt(1, 1, Buy, 10)
    };
    assert_eq!(h.rejects_place(priced_market), RejectReason::InvalidPrice);
    for p in [0, -5] {
        assert_eq!(
            h.rejects_place(lim(1, 1, Buy, p, 10)),
            RejectReason::InvalidPrice
        );
    }
    assert_eq!(
        h.rejects_place(lim(1, 1, Buy, 101, 10)),
        RejectReason::PriceOffTick
    );
}

#[test]
fn rejects_invalid_quantities_and_notional() {
    let mut h = Harness::new();
    assert_eq!(
        h.rejects_place(lim(1, 1, Buy, 100, 15)),
        RejectReason::QtyOffLot
    );
    assert_eq!(
        h.rejects_place(lim(1, 1, Buy, 100, 0)),
        RejectReason::QtyBelowMin
    );
    assert_eq!(
        h.rejects_place(lim(1, 1, Buy, 100, -10)),
        RejectReason::QtyBelowMin
    );
    assert_eq!(
        h.rejects_place(lim(1, 1, Buy, 100, 100_010)),
        RejectReason::QtyAboveMax
    );
    assert_eq!(
        h.rejects_place(lim(1, 1, Buy, 55, 10)),
        RejectReason::BelowMinNotional
    );
    // Market orders have no notional check; min_qty bounds them.
    h.ok(lim(9, 9, Sell, 5, 1_000));
    h.ok(mkt(2, 1, Buy, 10));
}

#[test]
fn rejects_market_into_empty_side() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Buy, 100, 10));
    assert_eq!(
        h.rejects_place(mkt(2, 2, Buy, 10)),
        RejectReason::NoLiquidity
    );
    let fok = with_tif(mkt(2, 2, Buy, 10), TimeInForce::Fok);
    assert_eq!(h.rejects_place(fok), RejectReason::NoLiquidity);
}

#[test]
fn rejects_invalid_quote_budgets() {
    let mut h = Harness::new();
    h.ok(lim(9, 9, Sell, 100, 10));
    h.ok(lim(8, 9, Buy, 95, 10));
    let on = |p: PlaceOrder, budget| PlaceOrder {
        quote_budget: Some(budget),
        ..p
    };
    for budget in [0, -1, i128::MIN] {
        assert_eq!(
            h.rejects_place(budgeted(1, 1, 10, budget)),
            RejectReason::InvalidQuoteBudget
        );
    }
    let not_a_market_buy = [
        lim(1, 1, Buy, 100, 10),
        with_tif(lim(1, 1, Buy, 100, 10), TimeInForce::Ioc),
        lim(1, 1, Sell, 100, 10),
        mkt(1, 1, Sell, 10),
        with_tif(mkt(1, 1, Sell, 10), TimeInForce::Fok),
    ];
    for p in not_a_market_buy {
        assert_eq!(
            h.rejects_place(on(p, 1_000)),
            RejectReason::InvalidQuoteBudget
        );
    }
    // In the validation order: after the price, before the quantity and the book.
    let priced = PlaceOrder {
        price: Some(Price(100)),
        ..budgeted(1, 1, 10, 0)
    };
    assert_eq!(h.rejects_place(priced), RejectReason::InvalidPrice);
    assert_eq!(
        h.rejects_place(on(lim(1, 1, Buy, 101, 10), 1_000)),
        RejectReason::PriceOffTick
    );
    assert_eq!(
        h.rejects_place(budgeted(1, 1, 15, 0)),
        RejectReason::InvalidQuoteBudget
    );
    assert_eq!(
        h.rejects_place(budgeted(1, 1, 15, 1_000)),
        RejectReason::QtyOffLot
    );
    assert_eq!(
        h.rejects_place(on(lim(1, 1, Buy, 55, 10), 1_000)),
        RejectReason::InvalidQuoteBudget
    );
    let mut empty = Harness::new();
    assert_eq!(
        empty.rejects_place(budgeted(1, 1, 10, 0)),
        RejectReason::InvalidQuoteBudget
    );
    // A market buy without a budget is the account stage's business, not the book's.
    h.ok(mkt(1, 1, Buy, 10));
}

#[test]
fn rejects_post_only_that_would_take() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Sell, 100, 10));
    let p = PlaceOrder {
        post_only: true,
        ..lim(2, 2, Buy, 100, 10)
    };
    assert_eq!(h.rejects_place(p), RejectReason::PostOnlyWouldTake);
}

#[test]
fn rejects_unknown_orders_without_leaking_other_accounts() {
    let mut h = Harness::new();
    h.ok(with_client_id(lim(1, 1, Buy, 100, 10), "mine"));
    assert_eq!(h.rejects(cancel(1, 99)), RejectReason::UnknownOrder);
    assert_eq!(h.rejects(cancel(2, 1)), RejectReason::UnknownOrder);
    assert_eq!(
        h.rejects(amend(2, 1, None, Some(20))),
        RejectReason::UnknownOrder
    );
    let by_client = Command::Cancel(CancelOrder {
        account_id: AccountId(2),
        target: OrderRef::ClientId("mine".into()),
    });
    let events = h.run(by_client);
    assert_eq!(
        events,
        vec![EventBody::Rejected {
            order_id: None,
            account_id: Some(AccountId(2)),
            client_order_id: Some("mine".into()),
            command: Some(CommandKind::Cancel),
            reason: RejectReason::UnknownOrder,
        }]
    );
}

#[test]
fn rejects_invalid_amends() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Buy, 100, 20));
    assert_eq!(
        h.rejects(amend(1, 1, None, None)),
        RejectReason::InvalidAmend
    );
    assert_eq!(
        h.rejects(amend(1, 1, Some(100), Some(20))),
        RejectReason::InvalidAmend
    );
    assert_eq!(
        h.rejects(amend(1, 1, Some(0), None)),
        RejectReason::InvalidPrice
    );
    assert_eq!(
        h.rejects(amend(1, 1, Some(102), None)),
        RejectReason::PriceOffTick
    );
    assert_eq!(
        h.rejects(amend(1, 1, None, Some(25))),
        RejectReason::QtyOffLot
    );
    assert_eq!(
        h.rejects(amend(1, 1, None, Some(0))),
        RejectReason::QtyBelowMin
    );
    assert_eq!(
        h.rejects(amend(1, 1, None, Some(200_000))),
        RejectReason::QtyAboveMax
    );
    h.ok(lim(2, 1, Buy, 55, 20));
    assert_eq!(
        h.rejects(amend(1, 2, None, Some(10))),
        RejectReason::BelowMinNotional
    );
    assert_eq!(
        h.rejects(amend(1, 1, Some(55), Some(10))),
        RejectReason::BelowMinNotional
    );
}

#[test]
fn engine_level_reject_consumes_one_seq() {
    let mut book = OrderBook::new(spec());
    let mut out = Vec::new();
    book.reject(None, None, None, RejectReason::MalformedRecord, 5, &mut out);
    assert_eq!(book.last_seq(), 1);
    assert_eq!(
        out,
        vec![Event {
            seq: 1,
            ts_ns: 5,
            body: EventBody::Rejected {
                order_id: None,
                account_id: None,
                client_order_id: None,
                command: None,
                reason: RejectReason::MalformedRecord,
            },
        }]
    );
}

// ---- queries, export and restore ---------------------------------------------------------

#[test]
fn depth_aggregates_best_first() {
    let mut h = Harness::new();
    h.ok(lim(1, 1, Buy, 100, 10));
    h.ok(lim(2, 2, Buy, 100, 20));
    h.ok(lim(3, 1, Buy, 105, 10));
    h.ok(lim(4, 1, Sell, 120, 10));
    h.ok(lim(5, 1, Sell, 110, 10));
    assert_eq!(
        h.book.depth(Buy, 5),
        vec![(Price(105), Qty(10)), (Price(100), Qty(30))]
    );
    assert_eq!(h.book.depth(Sell, 1), vec![(Price(110), Qty(10))]);
    assert_eq!(ids(&h.book), vec![3, 1, 2, 5, 4]);
}

fn busy_book() -> Harness {
    let mut h = Harness::new();
    h.ok(with_client_id(lim(1, 1, Buy, 100, 30), "a"));
    h.ok(lim(2, 2, Buy, 100, 10));
    h.ok(lim(3, 2, Sell, 110, 20));
    h.ok(lim(4, 3, Sell, 105, 20));
    h.run(amend(1, 1, None, Some(40)));
    h.ok(lim(5, 3, Sell, 100, 20));
    h
}

#[test]
fn restore_of_export_is_the_same_book_even_from_shuffled_rows() {
    let h = busy_book();
    let state = h.book.export();
    let mut shuffled = state.clone();
    shuffled.orders.reverse();
    shuffled.orders.swap(0, 1);
    let restored = OrderBook::restore(spec(), shuffled).unwrap();
    assert_eq!(restored, h.book);
    assert_eq!(restored.export(), state);
}

#[test]
fn restore_rejects_inconsistent_states() {
    let state = busy_book().book.export();
    let broken = |f: &dyn Fn(&mut Vec<RestingOrder>)| {
        let mut s: BookState = state.clone();
        f(&mut s.orders);
        OrderBook::restore(spec(), s).unwrap_err()
    };
    let dup = broken(&|o| {
        let mut copy = o[0].clone();
        copy.priority_seq = 3;
        o.push(copy)
    });
    assert!(matches!(dup, RestoreError::DuplicateOrderId(_)), "{dup}");
    let dup_client = broken(&|o| {
        let mut copy = o[0].clone();
        copy.order_id = OrderId(77);
        copy.priority_seq = 3;
        o.push(copy)
    });
    assert!(matches!(
        dup_client,
        RestoreError::DuplicateClientOrderId { .. }
    ));
    let filled = broken(&|o| o[0].filled_qty = o[0].qty);
    assert!(matches!(filled, RestoreError::NonPositiveRemaining(_)));
    let price = broken(&|o| o[0].price = Price(0));
    assert!(matches!(price, RestoreError::InvalidPrice(_)));
    let future = broken(&|o| o[0].priority_seq = 10_000);
    assert!(matches!(future, RestoreError::PriorityOutOfRange(_)));
    let same_seq = broken(&|o| o[1].priority_seq = o[0].priority_seq);
    assert!(matches!(same_seq, RestoreError::DuplicatePrioritySeq(_)));
    let crossed = broken(&|o| {
        let ask = o.iter_mut().find(|r| r.side == Sell).unwrap();
        ask.price = Price(95);
    });
    assert!(
        matches!(crossed, RestoreError::CrossedBook { .. }),
        "{crossed}"
    );
}
