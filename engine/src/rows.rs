//! From a batch's events to the rows PostgreSQL must change: pure, so it is unit-tested without a
//! database.
//!
//! One batch may touch an order many times (placed, partly filled, amended, cancelled). A
//! PostgreSQL `INSERT ... ON CONFLICT DO UPDATE` cannot touch one row twice in a statement, and
//! writing intermediate states is wasted work, so every order collapses to its final state here:
//! orders first seen in this batch become one insert, orders that existed before become one
//! update. Absolute values come from the book after the batch (open orders) or from the order's
//! `Done` event (`filled_qty + remaining_qty` is its total), never from adding up fills.

use std::collections::HashMap;

use engine_core::RestingOrder;
use protocol::{
    AccountId, ClientOrderId, Command, DoneReason, Event, EventBody, OrderId, OrderType, Price,
    SelfTradePrevention, Side, TimeInForce,
};

/// An order's state in the `orders` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    Open,
    Filled,
    Cancelled,
    Expired,
    ExpiredStp,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Open => "open",
            OrderStatus::Filled => "filled",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
            OrderStatus::ExpiredStp => "expired_stp",
        }
    }

    fn from_done(reason: DoneReason) -> OrderStatus {
        match reason {
            DoneReason::Filled => OrderStatus::Filled,
            DoneReason::Cancelled => OrderStatus::Cancelled,
            DoneReason::Expired => OrderStatus::Expired,
            DoneReason::ExpiredStp => OrderStatus::ExpiredStp,
        }
    }
}

/// The columns an order gets once, when it is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub account_id: AccountId,
    pub client_order_id: Option<ClientOrderId>,
    pub side: Side,
    pub order_type: OrderType,
    pub tif: TimeInForce,
    pub post_only: bool,
    pub stp: SelfTradePrevention,
    pub created_seq: u64,
}

/// An order's final state after a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub order_id: OrderId,
    /// `Some` when the order was accepted in this batch (insert), `None` when it existed before
    /// (update).
    pub new: Option<NewOrder>,
    /// `None`: unchanged (an update keeps the stored price; a market order has none).
    pub price: Option<Price>,
    pub qty: i64,
    pub filled_qty: i64,
    pub status: OrderStatus,
    /// `None`: unchanged (update only).
    pub priority_seq: Option<u64>,
    pub updated_seq: u64,
    pub ts_ns: u64,
}

/// One trade, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeRow {
    pub trade_id: u64,
    pub seq: u64,
    pub price: Price,
    pub qty: i64,
    pub taker_side: Side,
    pub maker_order_id: OrderId,
    pub maker_account_id: AccountId,
    pub taker_order_id: OrderId,
    pub taker_account_id: AccountId,
    pub orders_offset: i64,
    pub ts_ns: u64,
}

/// One consumed record's contribution to a batch: its command (when it decoded) and the events
/// the book decided for it.
#[derive(Debug, Clone, Copy)]
pub struct Applied<'a> {
    pub orders_offset: i64,
    pub command: Option<&'a Command>,
    pub events: &'a [Event],
}

/// What one batch changes in PostgreSQL.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RowChanges {
    /// Orders accepted in this batch, in final state.
    pub inserts: Vec<OrderRow>,
    /// Orders that existed before this batch, in final state.
    pub updates: Vec<OrderRow>,
    pub trades: Vec<TradeRow>,
}

impl RowChanges {
    /// Appends the changes of the batch that came after this one, as if the two were one batch
    /// (one statement may touch a row only once): an order both touch keeps one row in the later
    /// state, still an insert if it was accepted in the earlier batch.
    pub fn absorb(&mut self, later: RowChanges) {
        let mut rows: Vec<OrderRow> = self
            .inserts
            .drain(..)
            .chain(self.updates.drain(..))
            .collect();
        let mut at: HashMap<OrderId, usize> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.order_id, i))
            .collect();
        for row in later.inserts.into_iter().chain(later.updates) {
            match at.get(&row.order_id) {
                Some(&i) => {
                    let earlier = std::mem::replace(&mut rows[i], row);
                    let merged = &mut rows[i];
                    // A later insert of the same id is a reused id: the newest order wins, as
                    // the upsert would have it. Otherwise the later row is the absolute state,
                    // with "unchanged" columns taken from the earlier one.
                    if merged.new.is_none() {
                        merged.new = earlier.new;
                        merged.price = merged.price.or(earlier.price);
                        merged.priority_seq = merged.priority_seq.or(earlier.priority_seq);
                    }
                }
                None => {
                    at.insert(row.order_id, rows.len());
                    rows.push(row);
                }
            }
        }
        for row in rows {
            if row.new.is_some() {
                self.inserts.push(row);
            } else {
                self.updates.push(row);
            }
        }
        self.trades.extend(later.trades);
    }
}

/// An order reached an impossible state: an event stream the core cannot have produced.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RowsError {
    #[error("order {0} changed in the batch but is neither resting nor done at its end")]
    Vanished(u64),
}

/// Derives the row changes of a batch. `resting` looks an order up in the book as it is after
/// the whole batch.
pub fn derive<'a>(
    batch: impl IntoIterator<Item = Applied<'a>>,
    resting: impl Fn(OrderId) -> Option<&'a RestingOrder>,
) -> Result<RowChanges, RowsError> {
    let mut touched: HashMap<OrderId, OrderRow> = HashMap::new();
    // First-touch order, so the output (and the SQL it becomes) is deterministic.
    let mut order: Vec<OrderId> = Vec::new();
    let mut trades = Vec::new();
    for applied in batch {
        let stp = match applied.command {
            Some(Command::Place(p)) => p.stp,
            _ => SelfTradePrevention::default(),
        };
        for event in applied.events {
            match &event.body {
                EventBody::Accepted {
                    order_id,
                    account_id,
                    client_order_id,
                    side,
                    order_type,
                    price,
                    qty,
                    tif,
                    post_only,
                } => {
                    let row = touch_row(&mut touched, &mut order, *order_id, event);
                    row.new = Some(NewOrder {
                        account_id: *account_id,
                        client_order_id: client_order_id.clone(),
                        side: *side,
                        order_type: *order_type,
                        tif: *tif,
                        post_only: *post_only,
                        stp,
                        created_seq: event.seq,
                    });
                    row.price = *price;
                    row.qty = qty.0;
                    row.filled_qty = 0;
                    row.status = OrderStatus::Open;
                    row.priority_seq = Some(event.seq);
                    stamp(row, event);
                }
                EventBody::Trade {
                    trade_id,
                    price,
                    qty,
                    taker_side,
                    maker_order_id,
                    maker_account_id,
                    taker_order_id,
                    taker_account_id,
                    ..
                } => {
                    trades.push(TradeRow {
                        trade_id: *trade_id,
                        seq: event.seq,
                        price: *price,
                        qty: qty.0,
                        taker_side: *taker_side,
                        maker_order_id: *maker_order_id,
                        maker_account_id: *maker_account_id,
                        taker_order_id: *taker_order_id,
                        taker_account_id: *taker_account_id,
                        orders_offset: applied.orders_offset,
                        ts_ns: event.ts_ns,
                    });
                    stamp(
                        touch_row(&mut touched, &mut order, *maker_order_id, event),
                        event,
                    );
                    stamp(
                        touch_row(&mut touched, &mut order, *taker_order_id, event),
                        event,
                    );
                }
                EventBody::Amended {
                    order_id,
                    price,
                    qty,
                    priority_kept,
                    ..
                } => {
                    let row = touch_row(&mut touched, &mut order, *order_id, event);
                    row.price = Some(*price);
                    row.qty = qty.0;
                    if !priority_kept {
                        row.priority_seq = Some(event.seq);
                    }
                    stamp(row, event);
                }
                EventBody::Done {
                    order_id,
                    reason,
                    filled_qty,
                    remaining_qty,
                    ..
                } => {
                    let row = touch_row(&mut touched, &mut order, *order_id, event);
                    row.status = OrderStatus::from_done(*reason);
                    row.filled_qty = filled_qty.0;
                    row.qty = filled_qty.0 + remaining_qty.0;
                    stamp(row, event);
                }
                EventBody::Rejected { .. } | EventBody::BookLevel { .. } => {}
            }
        }
    }

    let mut changes = RowChanges {
        trades,
        ..RowChanges::default()
    };
    for id in order {
        let mut row = touched.remove(&id).expect("every touched id has a row");
        match resting(id) {
            Some(r) => {
                // Still on the book: the book holds the absolute truth.
                row.status = OrderStatus::Open;
                row.price = Some(r.price);
                row.qty = r.qty.0;
                row.filled_qty = r.filled_qty.0;
                row.priority_seq = Some(r.priority_seq);
                if let Some(new) = &mut row.new {
                    new.stp = r.stp;
                }
            }
            None if row.status != OrderStatus::Open => {}
            None => return Err(RowsError::Vanished(id.0)),
        }
        if row.new.is_some() {
            changes.inserts.push(row);
        } else {
            changes.updates.push(row);
        }
    }
    Ok(changes)
}

fn touch_row<'m>(
    touched: &'m mut HashMap<OrderId, OrderRow>,
    order: &mut Vec<OrderId>,
    id: OrderId,
    event: &Event,
) -> &'m mut OrderRow {
    touched.entry(id).or_insert_with(|| {
        order.push(id);
        OrderRow {
            order_id: id,
            new: None,
            price: None,
            qty: 0,
            filled_qty: 0,
            status: OrderStatus::Open,
            priority_seq: None,
            updated_seq: event.seq,
            ts_ns: event.ts_ns,
        }
    })
}

fn stamp(row: &mut OrderRow, event: &Event) {
    row.updated_seq = event.seq;
    row.ts_ns = event.ts_ns;
}

/// The snake_case names the schema stores, the same as the JSON codes.
pub fn side_str(side: Side) -> &'static str {
    match side {
        Side::Buy => "buy",
        Side::Sell => "sell",
    }
}

pub fn order_type_str(t: OrderType) -> &'static str {
    match t {
        OrderType::Limit => "limit",
        OrderType::Market => "market",
    }
}

pub fn tif_str(t: TimeInForce) -> &'static str {
    match t {
        TimeInForce::Gtc => "gtc",
        TimeInForce::Ioc => "ioc",
        TimeInForce::Fok => "fok",
    }
}

pub fn stp_str(s: SelfTradePrevention) -> &'static str {
    match s {
        SelfTradePrevention::ExpireTaker => "expire_taker",
        SelfTradePrevention::ExpireMaker => "expire_maker",
        SelfTradePrevention::ExpireBoth => "expire_both",
    }
}

pub fn parse_side(s: &str) -> Option<Side> {
    match s {
        "buy" => Some(Side::Buy),
        "sell" => Some(Side::Sell),
        _ => None,
    }
}

pub fn parse_stp(s: &str) -> Option<SelfTradePrevention> {
    match s {
        "expire_taker" => Some(SelfTradePrevention::ExpireTaker),
        "expire_maker" => Some(SelfTradePrevention::ExpireMaker),
        "expire_both" => Some(SelfTradePrevention::ExpireBoth),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_core::OrderBook;
    use protocol::{
        AmendOrder, CancelOrder, OrderRef, PairSpec, PlaceOrder, Qty, pairs::PairRegistry,
    };

    fn spec() -> PairSpec {
        let text = r#"
            [[pair]]
            symbol = "BTC-EUR"
            price_decimals = 2
            qty_decimals = 2
            tick_size = "0.01"
            lot_size = "0.01"
            min_qty = "0.01"
            max_qty = "1000"
            min_notional = "0"
        "#;
        PairRegistry::from_toml(text)
            .unwrap()
            .iter()
            .next()
            .unwrap()
            .clone()
    }

    fn place(id: u64, account: u64, side: Side, price: i64, qty: i64) -> Command {
        Command::Place(PlaceOrder {
            quote_budget: None,
            order_id: OrderId(id),
            account_id: AccountId(account),
            client_order_id: None,
            side,
            order_type: OrderType::Limit,
            price: Some(Price(price)),
            qty: Qty(qty),
            tif: TimeInForce::Gtc,
            post_only: false,
            stp: SelfTradePrevention::ExpireMaker,
        })
    }

    /// The account's order `id` moved to `price`.
    fn amend_price(account: u64, id: u64, price: i64) -> Command {
        Command::Amend(AmendOrder {
            account_id: AccountId(account),
            target: OrderRef::Id(OrderId(id)),
            new_price: Some(Price(price)),
            new_qty: None,
        })
    }

    /// Applies commands, one record each, and derives the batch's rows.
    fn run(book: &mut OrderBook, commands: &[Command]) -> RowChanges {
        run_from(book, commands, 0)
    }

    /// `run`, for commands that follow `first` earlier ones in the log (their timestamps too).
    fn run_from(book: &mut OrderBook, commands: &[Command], first: usize) -> RowChanges {
        let mut events: Vec<Vec<Event>> = Vec::new();
        for (i, c) in commands.iter().enumerate() {
            let mut out = Vec::new();
            book.apply(c, 1000 + (first + i) as u64, &mut out);
            events.push(out);
        }
        let applied = commands
            .iter()
            .zip(&events)
            .enumerate()
            .map(|(i, (c, e))| Applied {
                orders_offset: i as i64,
                command: Some(c),
                events: e,
            });
        derive(applied, |id| book.get(id)).unwrap()
    }

    /// Two batches absorbed into one must write what the two would have written in turn.
    #[test]
    fn absorbing_a_later_batch_equals_deriving_both_as_one() {
        let commands = [
            place(1, 10, Side::Sell, 100, 5),
            place(2, 20, Side::Buy, 90, 4),
            place(3, 30, Side::Buy, 100, 2),
            amend_price(20, 2, 95),
            place(4, 40, Side::Buy, 100, 3),
            Command::Cancel(CancelOrder {
                account_id: AccountId(20),
                target: OrderRef::Id(OrderId(2)),
            }),
            place(5, 50, Side::Sell, 120, 1),
        ];
        for split in 0..=commands.len() {
            let mut whole_book = OrderBook::new(spec());
            let whole = run(&mut whole_book, &commands);
            let mut book = OrderBook::new(spec());
            let mut first = run(&mut book, &commands[..split]);
            let second = run_from(&mut book, &commands[split..], split);
            first.absorb(second);
            let key = |rows: &[OrderRow]| {
                let mut v = rows.to_vec();
                v.sort_by_key(|r| r.order_id);
                v
            };
            assert_eq!(key(&first.inserts), key(&whole.inserts), "split at {split}");
            assert_eq!(key(&first.updates), key(&whole.updates), "split at {split}");
            assert_eq!(first.trades.len(), whole.trades.len(), "split at {split}");
        }
    }

    #[test]
    fn an_update_absorbed_keeps_the_unchanged_columns_of_the_earlier_row() {
        let mut book = OrderBook::new(spec());
        run(&mut book, &[place(1, 10, Side::Sell, 100, 5)]);
        // Order 1 existed before: amended (new price) in one batch, partly filled in the next.
        let mut first = run(&mut book, &[amend_price(10, 1, 101)]);
        let second = run(&mut book, &[place(2, 20, Side::Buy, 101, 2)]);
        first.absorb(second);
        let row = first
            .updates
            .iter()
            .find(|r| r.order_id == OrderId(1))
            .unwrap();
        assert_eq!(row.price, Some(Price(101)));
        assert_eq!(
            (row.qty, row.filled_qty, row.status),
            (5, 2, OrderStatus::Open)
        );
        assert_eq!(first.inserts.len(), 1);
        assert_eq!(first.trades.len(), 1);
    }

    #[test]
    fn an_order_placed_filled_in_one_batch_is_one_insert_in_final_state() {
        let mut book = OrderBook::new(spec());
        let rows = run(
            &mut book,
            &[
                place(1, 10, Side::Sell, 100, 5),
                place(2, 20, Side::Buy, 100, 3),
            ],
        );
        assert_eq!(rows.updates, vec![]);
        assert_eq!(rows.inserts.len(), 2);
        let maker = &rows.inserts[0];
        assert_eq!(
            (maker.order_id, maker.status),
            (OrderId(1), OrderStatus::Open)
        );
        assert_eq!((maker.qty, maker.filled_qty), (5, 3));
        assert_eq!(
            maker.new.as_ref().unwrap().stp,
            SelfTradePrevention::ExpireMaker
        );
        let taker = &rows.inserts[1];
        assert_eq!(
            (taker.status, taker.qty, taker.filled_qty),
            (OrderStatus::Filled, 3, 3)
        );
        assert_eq!(rows.trades.len(), 1);
        let t = &rows.trades[0];
        assert_eq!(
            (t.trade_id, t.price, t.qty, t.orders_offset),
            (1, Price(100), 3, 1)
        );
        assert_eq!(
            (t.maker_account_id, t.taker_account_id),
            (AccountId(10), AccountId(20))
        );
    }

    #[test]
    fn orders_from_earlier_batches_become_updates_with_absolute_values() {
        let mut book = OrderBook::new(spec());
        run(
            &mut book,
            &[
                place(1, 10, Side::Sell, 100, 5),
                place(2, 10, Side::Sell, 101, 5),
            ],
        );
        let rows = run(
            &mut book,
            &[
                place(3, 20, Side::Buy, 100, 2),
                place(4, 20, Side::Buy, 100, 1),
                amend_price(10, 2, 102),
                Command::Cancel(CancelOrder {
                    account_id: AccountId(10),
                    target: OrderRef::Id(OrderId(2)),
                }),
            ],
        );
        assert_eq!(rows.inserts.len(), 2, "{rows:?}");
        assert_eq!(rows.updates.len(), 2, "{rows:?}");
        // Order 1 traded twice in the batch: one update, filled 3 in total.
        let o1 = rows
            .updates
            .iter()
            .find(|r| r.order_id == OrderId(1))
            .unwrap();
        assert_eq!(
            (o1.status, o1.qty, o1.filled_qty),
            (OrderStatus::Open, 5, 3)
        );
        assert_eq!(o1.priority_seq, Some(1));
        // Order 2 amended then cancelled: the amended price, cancelled status.
        let o2 = rows
            .updates
            .iter()
            .find(|r| r.order_id == OrderId(2))
            .unwrap();
        assert_eq!(
            (o2.status, o2.price, o2.filled_qty),
            (OrderStatus::Cancelled, Some(Price(102)), 0)
        );
        assert_eq!(
            rows.trades.iter().map(|t| t.trade_id).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn rejected_commands_touch_no_row() {
        let mut book = OrderBook::new(spec());
        let rows = run(&mut book, &[place(1, 10, Side::Sell, 100, 0)]);
        assert_eq!(rows, RowChanges::default());
    }

    #[test]
    fn a_non_resting_order_without_done_is_an_error() {
        let events = [Event {
            seq: 1,
            ts_ns: 1,
            body: EventBody::Trade {
                trade_id: 1,
                price: Price(1),
                qty: Qty(1),
                taker_side: Side::Buy,
                maker_order_id: OrderId(1),
                maker_account_id: AccountId(1),
                taker_order_id: OrderId(2),
                taker_account_id: AccountId(2),
                maker_filled_qty: None,
                maker_remaining_qty: None,
                maker_client_order_id: None,
                taker_filled_qty: None,
                taker_remaining_qty: None,
                taker_client_order_id: None,
            },
        }];
        let applied = [Applied {
            orders_offset: 0,
            command: None,
            events: &events,
        }];
        assert_eq!(derive(applied, |_| None), Err(RowsError::Vanished(1)));
    }
}
