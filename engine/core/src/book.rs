//! The order book: validation, matching and the events each command produces.

use std::fmt;

use protocol::{
    AccountId, AmendOrder, CancelOrder, ClientOrderId, Command, CommandKind, DoneReason, Event,
    EventBody, OrderId, OrderRef, OrderType, PairSpec, PlaceOrder, Price, Qty, RejectReason,
    SelfTradePrevention, Side, TimeInForce,
};

use crate::state::{BookState, RestingOrder, RestoreError};
use crate::store::Store;
use crate::validate::{
    check_client_id, check_notional, check_place_price, check_price, check_qty, check_quote_budget,
    check_tif,
};

/// One pair's limit order book. See the crate documentation for the rules it enforces.
#[derive(Clone)]
pub struct OrderBook {
    spec: PairSpec,
    store: Store,
    last_seq: u64,
    last_trade_id: u64,
    /// Levels changed by the current command, with their total before the first change.
    touched: Vec<Touched>,
    /// Reused buffer for cancel-all, so a command allocates nothing once warmed up.
    scratch: Vec<u32>,
}

#[derive(Clone, Copy)]
struct Touched {
    side: Side,
    price: Price,
    old_total: i64,
}

/// The incoming side of a match: a placed order, or an amended one that lost priority.
struct Taker {
    order_id: OrderId,
    account_id: AccountId,
    client_order_id: Option<ClientOrderId>,
    side: Side,
    /// `None` for a market order.
    limit: Option<Price>,
    qty: Qty,
    filled: i64,
    stp: SelfTradePrevention,
}

impl Taker {
    fn remaining(&self) -> i64 {
        self.qty.0 - self.filled
    }
}

/// The (order id, client order id) a refusal of a cancel or amend reports.
type RefusedIds = (Option<OrderId>, Option<ClientOrderId>);

/// Why matching stopped.
enum MatchEnd {
    Filled,
    /// The opposite side is empty or no longer crosses the taker's limit.
    NoMoreLiquidity,
    /// Self-trade prevention expired the taker.
    SelfTrade,
    /// The quote budget cannot buy one more lot at the best remaining price. The order ends
    /// as if liquidity had run out: Done `Expired` with its remainder.
    BudgetSpent,
}

/// The most a quote budget of `left` buys at `price`: floor(left / price), rounded down to a
/// whole number of lots (0 when not even one lot). `price` and `lot` are positive.
fn affordable(left: i128, price: Price, lot: Qty) -> i64 {
    let qty = (left / i128::from(price.0)).min(i128::from(i64::MAX)) as i64;
    qty - qty % lot.0
}

/// Whether a taker on `side` with `limit` may trade at a resting `price`.
fn crosses(side: Side, limit: Option<Price>, price: Price) -> bool {
    match (side, limit) {
        (_, None) => true,
        (Side::Buy, Some(l)) => l >= price,
        (Side::Sell, Some(l)) => l <= price,
    }
}

impl OrderBook {
    /// `spec` comes from the pair registry, which guarantees a positive tick and lot; a spec
    /// without them is a programming error, not input.
    pub fn new(spec: PairSpec) -> OrderBook {
        assert!(
            spec.tick_size.0 > 0 && spec.lot_size.0 > 0,
            "pair spec needs a positive tick and lot"
        );
        OrderBook {
            spec,
            store: Store::default(),
            last_seq: 0,
            last_trade_id: 0,
            touched: Vec::new(),
            scratch: Vec::new(),
        }
    }

    pub fn spec(&self) -> &PairSpec {
        &self.spec
    }

    /// Applies one command at time `ts_ns`; appends the resulting events (each with the next
    /// per-pair seq) to `out`. Never panics on bad input: a refused command yields one Rejected.
    pub fn apply(&mut self, cmd: &Command, ts_ns: u64, out: &mut Vec<Event>) {
        match cmd {
            Command::Place(p) => self.place(p, ts_ns, out),
            Command::Cancel(c) => self.cancel(c, ts_ns, out),
            Command::CancelAll(c) => self.cancel_all(c.account_id, ts_ns, out),
            Command::Amend(a) => self.amend(a, ts_ns, out),
        }
        self.flush_levels(ts_ns, out);
    }

    /// For records the engine could not turn into a command: one Rejected event, so the
    /// sequence still accounts for every record consumed.
    pub fn reject(
        &mut self,
        order_id: Option<OrderId>,
        account_id: Option<AccountId>,
        command: Option<CommandKind>,
        reason: RejectReason,
        ts_ns: u64,
        out: &mut Vec<Event>,
    ) {
        let body = EventBody::Rejected {
            order_id,
            account_id,
            client_order_id: None,
            command,
            reason,
        };
        self.emit(ts_ns, out, body);
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn last_trade_id(&self) -> u64 {
        self.last_trade_id
    }

    pub fn export(&self) -> BookState {
        BookState {
            last_seq: self.last_seq,
            last_trade_id: self.last_trade_id,
            orders: self.open_orders().cloned().collect(),
        }
    }

    /// Rebuilds a book from persisted rows. Queue order comes only from `priority_seq`, so the
    /// rows may arrive in any order (a database gives no order without `ORDER BY`).
    pub fn restore(spec: PairSpec, state: BookState) -> Result<OrderBook, RestoreError> {
        let mut orders = state.orders;
        for o in &orders {
            check_resting(o, state.last_seq)?;
        }
        orders.sort_unstable_by_key(|o| o.priority_seq);
        if let Some(w) = orders
            .windows(2)
            .find(|w| w[0].priority_seq == w[1].priority_seq)
        {
            return Err(RestoreError::DuplicatePrioritySeq(w[0].priority_seq));
        }
        let mut book = OrderBook::new(spec);
        book.last_seq = state.last_seq;
        book.last_trade_id = state.last_trade_id;
        for o in orders {
            book.check_unique(&o)?;
            book.store.insert(o);
        }
        if let (Some((best_bid, _)), Some((best_ask, _))) = (book.best_bid(), book.best_ask())
            && best_bid >= best_ask
        {
            return Err(RestoreError::CrossedBook { best_bid, best_ask });
        }
        Ok(book)
    }

    fn check_unique(&self, o: &RestingOrder) -> Result<(), RestoreError> {
        if self.store.slot_of(o.order_id).is_some() {
            return Err(RestoreError::DuplicateOrderId(o.order_id));
        }
        if let Some(c) = &o.client_order_id
            && self.store.slot_by_client_id(o.account_id, c).is_some()
        {
            return Err(RestoreError::DuplicateClientOrderId {
                account_id: o.account_id,
                client_order_id: c.clone(),
            });
        }
        Ok(())
    }

    /// Resting orders: bids best first, then asks best first; oldest first within a level.
    pub fn open_orders(&self) -> impl Iterator<Item = &RestingOrder> {
        self.store
            .side_orders(Side::Buy)
            .chain(self.store.side_orders(Side::Sell))
    }

    /// Number of resting orders.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.len() == 0
    }

    pub fn get(&self, id: OrderId) -> Option<&RestingOrder> {
        self.store.slot_of(id).map(|s| self.store.order(s))
    }

    pub fn best_bid(&self) -> Option<(Price, Qty)> {
        self.store.depth(Side::Buy).next()
    }

    pub fn best_ask(&self) -> Option<(Price, Qty)> {
        self.store.depth(Side::Sell).next()
    }

    /// Aggregated L2, best level first.
    pub fn depth(&self, side: Side, levels_max: usize) -> Vec<(Price, Qty)> {
        self.store.depth(side).take(levels_max).collect()
    }

    fn emit(&mut self, ts_ns: u64, out: &mut Vec<Event>, body: EventBody) {
        self.last_seq += 1;
        out.push(Event {
            seq: self.last_seq,
            ts_ns,
            body,
        });
    }

    fn touch(&mut self, side: Side, price: Price, old_total: i64) {
        if let Some(last) = self.touched.last()
            && last.side == side
            && last.price == price
        {
            return;
        }
        self.touched.push(Touched {
            side,
            price,
            old_total,
        });
    }

    /// One BookLevel per level whose total differs from before the command: bids from the
    /// highest price down, then asks from the lowest up.
    fn flush_levels(&mut self, ts_ns: u64, out: &mut Vec<Event>) {
        if self.touched.is_empty() {
            return;
        }
        let mut touched = std::mem::take(&mut self.touched);
        // Stable, so the first touch of a level (holding its original total) survives dedup.
        touched.sort_by_key(|t| match t.side {
            Side::Buy => (0, -t.price.0),
            Side::Sell => (1, t.price.0),
        });
        touched.dedup_by_key(|t| (t.side, t.price));
        for t in &touched {
            let total = self.store.level_total(t.side, t.price);
            if total != t.old_total {
                let body = EventBody::BookLevel {
                    side: t.side,
                    price: t.price,
                    qty: Qty(total),
                };
                self.emit(ts_ns, out, body);
            }
        }
        touched.clear();
        self.touched = touched;
    }

    fn place(&mut self, p: &PlaceOrder, ts_ns: u64, out: &mut Vec<Event>) {
        let limit = match self.check_place(p) {
            Ok(limit) => limit,
            Err(reason) => return self.reject_place(p, reason, ts_ns, out),
        };
        let accepted = EventBody::Accepted {
            order_id: p.order_id,
            account_id: p.account_id,
            client_order_id: p.client_order_id.clone(),
            side: p.side,
            order_type: p.order_type,
            price: limit,
            qty: p.qty,
            tif: p.tif,
            post_only: p.post_only,
        };
        self.emit(ts_ns, out, accepted);
        let priority_seq = self.last_seq;
        let mut taker = Taker {
            order_id: p.order_id,
            account_id: p.account_id,
            client_order_id: p.client_order_id.clone(),
            side: p.side,
            limit,
            qty: p.qty,
            filled: 0,
            stp: p.stp,
        };
        let end = self.match_taker(&mut taker, p.quote_budget, ts_ns, out);
        let may_rest = p.order_type == OrderType::Limit && p.tif == TimeInForce::Gtc;
        self.finish_taker(taker, end, may_rest, priority_seq, ts_ns, out);
    }

    /// The place's limit price (`None` for market), or the first reason to refuse it.
    fn check_place(&self, p: &PlaceOrder) -> Result<Option<Price>, RejectReason> {
        if self.store.slot_of(p.order_id).is_some() {
            return Err(RejectReason::DuplicateOrderId);
        }
        check_client_id(p.client_order_id.as_deref())?;
        if let Some(c) = &p.client_order_id
            && self.store.slot_by_client_id(p.account_id, c).is_some()
        {
            return Err(RejectReason::DuplicateClientOrderId);
        }
        check_tif(p)?;
        let limit = check_place_price(&self.spec, p)?;
        check_quote_budget(p)?;
        check_qty(&self.spec, p.qty)?;
        if let Some(price) = limit {
            check_notional(&self.spec, price, p.qty)?;
        }
        self.check_liquidity(p, limit)?;
        Ok(limit)
    }

    /// The checks that depend on the opposite side; none of them changes the book.
    ///
    /// `NoLiquidity` means only an empty opposite side. A market buy whose quote budget cannot
    /// buy one lot at the best price is not refused here: like any market order that finds a
    /// non-empty side but trades nothing (self-trade prevention can stop it first), it is
    /// Accepted and then Done `Expired` with nothing filled. Only FOK refuses it, as
    /// `FokCannotFill`, since it cannot fill.
    fn check_liquidity(&self, p: &PlaceOrder, limit: Option<Price>) -> Result<(), RejectReason> {
        let best = self.store.best(p.side.opposite()).map(|l| l.price);
        if p.order_type == OrderType::Market && best.is_none() {
            return Err(RejectReason::NoLiquidity);
        }
        if p.post_only && best.is_some_and(|b| crosses(p.side, limit, b)) {
            return Err(RejectReason::PostOnlyWouldTake);
        }
        if p.tif == TimeInForce::Fok && !self.can_fill(p, limit) {
            return Err(RejectReason::FokCannotFill);
        }
        Ok(())
    }

    /// Whether matching `p` now would fill it entirely. Walks the queue exactly as matching
    /// would: an own order ends the match under expire-taker/expire-both, and is expired and
    /// skipped under expire-maker.
    fn can_fill(&self, p: &PlaceOrder, limit: Option<Price>) -> bool {
        if let Some(budget) = p.quote_budget {
            return self.can_fill_within(p, budget);
        }
        let mut available = 0_i64;
        for level in self.store.levels_from_best(p.side.opposite()) {
            if !crosses(p.side, limit, level.price) {
                return false;
            }
            for slot in self.store.queue(Store::head(level)) {
                let maker = self.store.order(slot);
                if maker.account_id == p.account_id {
                    if p.stp == SelfTradePrevention::ExpireMaker {
                        continue;
                    }
                    return false;
                }
                available += maker.remaining_qty().0;
                if available >= p.qty.0 {
                    return true;
                }
            }
        }
        false
    }

    /// [`Self::can_fill`] for a market buy with a quote budget (so no limit to cross): the walk
    /// also spends the budget exactly as matching would, and fails where the budget cannot buy
    /// one more lot at the next maker's price, which matching checks before self-trade
    /// prevention. Cold: only a budgeted FOK market buy gets here, and keeping it out of line
    /// keeps every other place's validation as short as before.
    #[cold]
    fn can_fill_within(&self, p: &PlaceOrder, budget: i128) -> bool {
        let (mut needed, mut left) = (p.qty.0, budget);
        for level in self.store.levels_from_best(p.side.opposite()) {
            for slot in self.store.queue(Store::head(level)) {
                let affordable = affordable(left, level.price, self.spec.lot_size);
                if affordable == 0 {
                    return false;
                }
                let maker = self.store.order(slot);
                if maker.account_id == p.account_id {
                    if p.stp == SelfTradePrevention::ExpireMaker {
                        continue;
                    }
                    return false;
                }
                let qty = needed.min(maker.remaining_qty().0).min(affordable);
                needed -= qty;
                left -= PairSpec::notional(level.price, Qty(qty));
                if needed == 0 {
                    return true;
                }
            }
        }
        false
    }

    fn reject_place(
        &mut self,
        p: &PlaceOrder,
        reason: RejectReason,
        ts_ns: u64,
        out: &mut Vec<Event>,
    ) {
        // An invalid client id is not echoed: it may be arbitrarily long or contain anything.
        let client_order_id = match reason {
            RejectReason::InvalidClientOrderId => None,
            _ => p.client_order_id.clone(),
        };
        let body = EventBody::Rejected {
            order_id: Some(p.order_id),
            account_id: Some(p.account_id),
            client_order_id,
            command: Some(CommandKind::Place),
            reason,
        };
        self.emit(ts_ns, out, body);
    }

    /// Matches the taker against the opposite side until it is filled, runs out of crossing
    /// liquidity, spends its quote budget (a market buy's, in notional units), or self-trade
    /// prevention stops it.
    fn match_taker(
        &mut self,
        t: &mut Taker,
        budget: Option<i128>,
        ts_ns: u64,
        out: &mut Vec<Event>,
    ) -> MatchEnd {
        match budget {
            None => self.match_levels::<false>(t, 0, ts_ns, out),
            Some(budget) => self.match_levels::<true>(t, budget, ts_ns, out),
        }
    }

    /// The matching loop. `BUDGETED` is fixed at compile time, so orders without a budget (all
    /// but budgeted market buys) run a loop without the budget's checks; `left` is the budget
    /// left, unused without one.
    ///
    /// The budget acts like a limit price that depends on what is left: a level where it
    /// cannot buy one lot is not traded, and its makers (own orders included, so no self-trade
    /// prevention applies there) are left alone.
    fn match_levels<const BUDGETED: bool>(
        &mut self,
        t: &mut Taker,
        mut left: i128,
        ts_ns: u64,
        out: &mut Vec<Event>,
    ) -> MatchEnd {
        let opposite = t.side.opposite();
        loop {
            if t.remaining() == 0 {
                return MatchEnd::Filled;
            }
            let Some(level) = self.store.best(opposite) else {
                return MatchEnd::NoMoreLiquidity;
            };
            if !crosses(t.side, t.limit, level.price) {
                return MatchEnd::NoMoreLiquidity;
            }
            let mut max_qty = t.remaining();
            if BUDGETED {
                match affordable(left, level.price, self.spec.lot_size) {
                    0 => return MatchEnd::BudgetSpent,
                    qty => max_qty = max_qty.min(qty),
                }
            }
            let (slot, price) = (Store::head(level), level.price);
            if self.store.order(slot).account_id != t.account_id {
                let filled_before = t.filled;
                self.trade(t, slot, max_qty, ts_ns, out);
                if BUDGETED {
                    left -= PairSpec::notional(price, Qty(t.filled - filled_before));
                }
                continue;
            }
            match t.stp {
                SelfTradePrevention::ExpireTaker => return MatchEnd::SelfTrade,
                SelfTradePrevention::ExpireMaker => {
                    self.remove_maker(slot, DoneReason::ExpiredStp, ts_ns, out)
                }
                SelfTradePrevention::ExpireBoth => {
                    self.remove_maker(slot, DoneReason::ExpiredStp, ts_ns, out);
                    return MatchEnd::SelfTrade;
                }
            }
        }
    }

    /// One trade of at most `max_qty` (at most the taker's remainder) at the maker's price; the
    /// maker keeps its place unless it is filled. Inlined into both matching loops: it runs
    /// once per maker, so a call per trade costs a sweep a measurable share.
    #[inline(always)]
    fn trade(&mut self, t: &mut Taker, slot: u32, max_qty: i64, ts_ns: u64, out: &mut Vec<Event>) {
        let maker = self.store.order(slot);
        let maker_remaining = maker.remaining_qty().0;
        let qty = max_qty.min(maker_remaining);
        let (price, side) = (maker.price, maker.side);
        self.last_trade_id += 1;
        let body = EventBody::Trade {
            trade_id: self.last_trade_id,
            price,
            qty: Qty(qty),
            taker_side: t.side,
            maker_order_id: maker.order_id,
            maker_account_id: maker.account_id,
            taker_order_id: t.order_id,
            taker_account_id: t.account_id,
            maker_filled_qty: Some(Qty(maker.filled_qty.0 + qty)),
            maker_remaining_qty: Some(Qty(maker_remaining - qty)),
            maker_client_order_id: maker.client_order_id.clone(),
            taker_filled_qty: Some(Qty(t.filled + qty)),
            taker_remaining_qty: Some(Qty(t.remaining() - qty)),
            taker_client_order_id: t.client_order_id.clone(),
        };
        self.emit(ts_ns, out, body);
        t.filled += qty;
        if qty == maker_remaining {
            self.remove_maker(slot, DoneReason::Filled, ts_ns, out);
        } else {
            let old_total = self.store.fill(slot, qty);
            self.touch(side, price, old_total);
        }
    }

    /// Takes an order off the book and reports it Done. A filled maker's `filled_qty` in the
    /// store lags the last trade, so Filled reports its whole quantity.
    fn remove_maker(&mut self, slot: u32, reason: DoneReason, ts_ns: u64, out: &mut Vec<Event>) {
        let (mut order, old_total) = self.store.remove(slot);
        self.touch(order.side, order.price, old_total);
        if reason == DoneReason::Filled {
            order.filled_qty = order.qty;
        }
        self.emit_done(order, reason, ts_ns, out);
    }

    fn emit_done(
        &mut self,
        order: RestingOrder,
        reason: DoneReason,
        ts_ns: u64,
        out: &mut Vec<Event>,
    ) {
        let body = EventBody::Done {
            order_id: order.order_id,
            account_id: order.account_id,
            remaining_qty: order.remaining_qty(),
            client_order_id: order.client_order_id,
            reason,
            filled_qty: order.filled_qty,
        };
        self.emit(ts_ns, out, body);
    }

    /// The taker's end: Done, or (GTC limit with nothing else stopping it) rest at the back of
    /// its level with queue position `priority_seq`.
    fn finish_taker(
        &mut self,
        t: Taker,
        end: MatchEnd,
        may_rest: bool,
        priority_seq: u64,
        ts_ns: u64,
        out: &mut Vec<Event>,
    ) {
        let order = RestingOrder {
            order_id: t.order_id,
            account_id: t.account_id,
            client_order_id: t.client_order_id,
            side: t.side,
            price: t.limit.unwrap_or(Price(0)),
            qty: t.qty,
            filled_qty: Qty(t.filled),
            stp: t.stp,
            priority_seq,
        };
        let reason = match end {
            MatchEnd::Filled => DoneReason::Filled,
            MatchEnd::SelfTrade => DoneReason::ExpiredStp,
            MatchEnd::NoMoreLiquidity if may_rest => {
                let (side, price) = (order.side, order.price);
                let old_total = self.store.insert(order);
                return self.touch(side, price, old_total);
            }
            MatchEnd::NoMoreLiquidity | MatchEnd::BudgetSpent => DoneReason::Expired,
        };
        self.emit_done(order, reason, ts_ns, out);
    }

    /// The live order a cancel or amend names, if it belongs to the commanding account.
    fn find_live(&self, account: AccountId, target: &OrderRef) -> Option<u32> {
        match target {
            OrderRef::Id(id) => self
                .store
                .slot_of(*id)
                .filter(|&s| self.store.order(s).account_id == account),
            OrderRef::ClientId(c) => self.store.slot_by_client_id(account, c),
        }
    }

    /// The ids a cancel or amend refusal reports. Once the order is known both its ids are
    /// reported; before, only the target is echoed, so another account's order never leaks.
    fn refused_ids(&self, target: &OrderRef, found: Option<u32>) -> RefusedIds {
        match (found, target) {
            (Some(s), _) => {
                let o = self.store.order(s);
                (Some(o.order_id), o.client_order_id.clone())
            }
            (None, OrderRef::Id(id)) => (Some(*id), None),
            (None, OrderRef::ClientId(c)) => (None, Some(c.clone())),
        }
    }

    fn reject_target(
        &mut self,
        (account_id, command): (AccountId, CommandKind),
        (order_id, client_order_id): RefusedIds,
        reason: RejectReason,
        ts_ns: u64,
        out: &mut Vec<Event>,
    ) {
        let body = EventBody::Rejected {
            order_id,
            account_id: Some(account_id),
            client_order_id,
            command: Some(command),
            reason,
        };
        self.emit(ts_ns, out, body);
    }

    fn cancel(&mut self, c: &CancelOrder, ts_ns: u64, out: &mut Vec<Event>) {
        let Some(slot) = self.find_live(c.account_id, &c.target) else {
            let ids = self.refused_ids(&c.target, None);
            let who = (c.account_id, CommandKind::Cancel);
            return self.reject_target(who, ids, RejectReason::UnknownOrder, ts_ns, out);
        };
        self.remove_maker(slot, DoneReason::Cancelled, ts_ns, out);
    }

    /// Cancels in order id order, so the event stream does not depend on hash or slab layout.
    fn cancel_all(&mut self, account: AccountId, ts_ns: u64, out: &mut Vec<Event>) {
        let mut slots = std::mem::take(&mut self.scratch);
        self.store.account_slots(account, &mut slots);
        slots.sort_unstable_by_key(|&s| self.store.order(s).order_id);
        for &slot in &slots {
            self.remove_maker(slot, DoneReason::Cancelled, ts_ns, out);
        }
        slots.clear();
        self.scratch = slots;
    }

    fn amend(&mut self, a: &AmendOrder, ts_ns: u64, out: &mut Vec<Event>) {
        let found = self.find_live(a.account_id, &a.target);
        let checked = match found {
            None => Err(RejectReason::UnknownOrder),
            Some(slot) => self.check_amend(slot, a).map(|v| (slot, v)),
        };
        let (slot, (price, qty)) = match checked {
            Ok(v) => v,
            Err(reason) => {
                let ids = self.refused_ids(&a.target, found);
                let who = (a.account_id, CommandKind::Amend);
                return self.reject_target(who, ids, reason, ts_ns, out);
            }
        };
        let current = self.store.order(slot);
        if price == current.price && qty < current.qty {
            self.amend_in_place(slot, qty, ts_ns, out);
        } else {
            self.amend_requeue(slot, price, qty, ts_ns, out);
        }
    }

    /// The amended (price, total qty), or the first reason to refuse it.
    fn check_amend(&self, slot: u32, a: &AmendOrder) -> Result<(Price, Qty), RejectReason> {
        let current = self.store.order(slot);
        let price = a.new_price.unwrap_or(current.price);
        let qty = a.new_qty.unwrap_or(current.qty);
        if price == current.price && qty == current.qty {
            return Err(RejectReason::InvalidAmend);
        }
        if let Some(p) = a.new_price {
            check_price(&self.spec, p)?;
        }
        if let Some(q) = a.new_qty {
            check_qty(&self.spec, q)?;
        }
        if qty <= current.filled_qty {
            return Err(RejectReason::InvalidAmend);
        }
        check_notional(&self.spec, price, qty)?;
        Ok((price, qty))
    }

    /// Quantity down at the same price: the order keeps its place in the queue.
    fn amend_in_place(&mut self, slot: u32, qty: Qty, ts_ns: u64, out: &mut Vec<Event>) {
        let old_total = self.store.reduce_total(slot, qty);
        let o = self.store.order(slot);
        let body = EventBody::Amended {
            order_id: o.order_id,
            account_id: o.account_id,
            client_order_id: o.client_order_id.clone(),
            price: o.price,
            qty: o.qty,
            remaining_qty: o.remaining_qty(),
            priority_kept: true,
        };
        let (side, price) = (o.side, o.price);
        self.touch(side, price, old_total);
        self.emit(ts_ns, out, body);
    }

    /// New price or more quantity: the order leaves its queue, matches like a taker if the new
    /// price crosses, and rests at the back of its new level with the Amended seq as priority.
    fn amend_requeue(
        &mut self,
        slot: u32,
        price: Price,
        qty: Qty,
        ts_ns: u64,
        out: &mut Vec<Event>,
    ) {
        let (order, old_total) = self.store.remove(slot);
        self.touch(order.side, order.price, old_total);
        let body = EventBody::Amended {
            order_id: order.order_id,
            account_id: order.account_id,
            client_order_id: order.client_order_id.clone(),
            price,
            qty,
            remaining_qty: Qty(qty.0 - order.filled_qty.0),
            priority_kept: false,
        };
        self.emit(ts_ns, out, body);
        let priority_seq = self.last_seq;
        let mut taker = Taker {
            order_id: order.order_id,
            account_id: order.account_id,
            client_order_id: order.client_order_id,
            side: order.side,
            limit: Some(price),
            qty,
            filled: order.filled_qty.0,
            stp: order.stp,
        };
        let end = self.match_taker(&mut taker, None, ts_ns, out);
        self.finish_taker(taker, end, true, priority_seq, ts_ns, out);
    }
}

/// The per-order consistency a restored row must have on its own.
fn check_resting(o: &RestingOrder, last_seq: u64) -> Result<(), RestoreError> {
    let id = o.order_id;
    if o.price.0 <= 0 {
        return Err(RestoreError::InvalidPrice(id));
    }
    if o.filled_qty.0 < 0 || o.qty.0 <= o.filled_qty.0 {
        return Err(RestoreError::NonPositiveRemaining(id));
    }
    if o.priority_seq == 0 || o.priority_seq > last_seq {
        return Err(RestoreError::PriorityOutOfRange(id));
    }
    if o.client_order_id
        .as_deref()
        .is_some_and(|c| check_client_id(Some(c)).is_err())
    {
        return Err(RestoreError::InvalidClientOrderId(id));
    }
    Ok(())
}

/// Two books are equal when they would answer every future command identically.
impl PartialEq for OrderBook {
    fn eq(&self, other: &OrderBook) -> bool {
        self.spec == other.spec
            && self.last_seq == other.last_seq
            && self.last_trade_id == other.last_trade_id
            && self.open_orders().eq(other.open_orders())
    }
}

impl Eq for OrderBook {}

impl fmt::Debug for OrderBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrderBook")
            .field("symbol", &self.spec.symbol)
            .field("last_seq", &self.last_seq)
            .field("last_trade_id", &self.last_trade_id)
            .field("orders", &self.open_orders().collect::<Vec<_>>())
            .finish()
    }
}
