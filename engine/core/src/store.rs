//! Where resting orders live: a slab of nodes linked into price-level queues and per-account
//! lists, plus the indexes the commands need.
//!
//! Each side is a `Vec<Level>` sorted so that the best level is the *last* element: new orders
//! arrive near the top of the book, so inserting or removing there moves few elements, and the
//! best level is one load away. A level's queue is an intrusive doubly linked list through the
//! slab, so a cancel anywhere in a queue is O(1) after the index lookup, and a partial fill
//! changes nothing about queue position.

use protocol::{AccountId, ClientOrderId, OrderId, Price, Qty, Side};

use crate::hash::FxHashMap;
use crate::state::RestingOrder;

/// "No slot": the end of a linked list.
pub(crate) const NIL: u32 = u32::MAX;

#[derive(Clone)]
struct Node {
    order: RestingOrder,
    prev: u32,
    next: u32,
    acct_prev: u32,
    acct_next: u32,
}

/// One price level: its queue (oldest first) and the sum of its orders' remaining quantities.
#[derive(Clone)]
pub(crate) struct Level {
    pub(crate) price: Price,
    pub(crate) total: i64,
    head: u32,
    tail: u32,
}

/// An account's live orders in this book, for cancel-all and client-id lookups.
#[derive(Default, Clone)]
struct Account {
    head: u32,
    live: u32,
    by_client_id: FxHashMap<ClientOrderId, u32>,
}

#[derive(Default, Clone)]
pub(crate) struct Store {
    nodes: Vec<Node>,
    free: Vec<u32>,
    bids: Vec<Level>,
    asks: Vec<Level>,
    by_id: FxHashMap<OrderId, u32>,
    accounts: FxHashMap<AccountId, Account>,
}

/// Sort key that puts the best level of either side last.
#[inline]
fn key(side: Side, price: Price) -> i64 {
    match side {
        Side::Buy => price.0,
        Side::Sell => -price.0,
    }
}

impl Store {
    fn levels(&self, side: Side) -> &Vec<Level> {
        match side {
            Side::Buy => &self.bids,
            Side::Sell => &self.asks,
        }
    }

    fn levels_mut(&mut self, side: Side) -> &mut Vec<Level> {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }

    fn find_level(&self, side: Side, price: Price) -> Result<usize, usize> {
        let k = key(side, price);
        self.levels(side)
            .binary_search_by_key(&k, |l| key(side, l.price))
    }

    pub(crate) fn order(&self, slot: u32) -> &RestingOrder {
        &self.nodes[slot as usize].order
    }

    pub(crate) fn slot_of(&self, id: OrderId) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    pub(crate) fn slot_by_client_id(&self, account: AccountId, client_id: &str) -> Option<u32> {
        self.accounts
            .get(&account)?
            .by_client_id
            .get(client_id)
            .copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The best level of a side.
    pub(crate) fn best(&self, side: Side) -> Option<&Level> {
        self.levels(side).last()
    }

    /// Total remaining quantity at a price, 0 when no level exists.
    pub(crate) fn level_total(&self, side: Side, price: Price) -> i64 {
        match self.find_level(side, price) {
            Ok(i) => self.levels(side)[i].total,
            Err(_) => 0,
        }
    }

    /// Levels best first, as (price, total).
    pub(crate) fn depth(&self, side: Side) -> impl Iterator<Item = (Price, Qty)> + '_ {
        self.levels(side)
            .iter()
            .rev()
            .map(|l| (l.price, Qty(l.total)))
    }

    /// Orders of one side in priority order: best level first, oldest first within a level.
    pub(crate) fn side_orders(&self, side: Side) -> impl Iterator<Item = &RestingOrder> + '_ {
        self.levels(side)
            .iter()
            .rev()
            .flat_map(move |l| self.queue(l.head).map(move |s| self.order(s)))
    }

    /// Slots of a queue from `head` on, oldest first.
    pub(crate) fn queue(&self, head: u32) -> impl Iterator<Item = u32> + '_ {
        std::iter::successors((head != NIL).then_some(head), move |&s| {
            let next = self.nodes[s as usize].next;
            (next != NIL).then_some(next)
        })
    }

    /// Levels of one side from the best on, for feasibility scans.
    pub(crate) fn levels_from_best(&self, side: Side) -> impl Iterator<Item = &Level> + '_ {
        self.levels(side).iter().rev()
    }

    pub(crate) fn head(level: &Level) -> u32 {
        level.head
    }

    /// The account's live orders' slots, in no particular order.
    pub(crate) fn account_slots(&self, account: AccountId, into: &mut Vec<u32>) {
        let Some(acct) = self.accounts.get(&account) else {
            return;
        };
        let mut s = acct.head;
        while s != NIL {
            into.push(s);
            s = self.nodes[s as usize].acct_next;
        }
    }

    /// Adds an order at the back of its level's queue; returns the level's previous total.
    pub(crate) fn insert(&mut self, order: RestingOrder) -> i64 {
        let remaining = order.qty.0 - order.filled_qty.0;
        debug_assert!(remaining > 0, "a resting order has something left to fill");
        let (side, price, id, account) =
            (order.side, order.price, order.order_id, order.account_id);
        let client_id = order.client_order_id.clone();
        let slot = self.alloc(order);
        let level_i = match self.find_level(side, price) {
            Ok(i) => i,
            Err(i) => {
                let level = Level {
                    price,
                    total: 0,
                    head: NIL,
                    tail: NIL,
                };
                self.levels_mut(side).insert(i, level);
                i
            }
        };
        let old_total = self.levels(side)[level_i].total;
        self.link_level(side, level_i, slot, remaining);
        self.link_account(account, slot, client_id);
        self.by_id.insert(id, slot);
        old_total
    }

    fn alloc(&mut self, order: RestingOrder) -> u32 {
        let node = Node {
            order,
            prev: NIL,
            next: NIL,
            acct_prev: NIL,
            acct_next: NIL,
        };
        match self.free.pop() {
            Some(slot) => {
                self.nodes[slot as usize] = node;
                slot
            }
            None => {
                let slot = u32::try_from(self.nodes.len()).expect("fewer than 2^32 resting orders");
                assert!(slot != NIL, "slab full");
                self.nodes.push(node);
                slot
            }
        }
    }

    fn link_level(&mut self, side: Side, level_i: usize, slot: u32, remaining: i64) {
        let level = &mut self.levels_mut(side)[level_i];
        let tail = level.tail;
        level.tail = slot;
        level.total += remaining;
        if tail == NIL {
            level.head = slot;
        }
        self.nodes[slot as usize].prev = tail;
        if tail != NIL {
            self.nodes[tail as usize].next = slot;
        }
    }

    fn link_account(&mut self, account: AccountId, slot: u32, client_id: Option<ClientOrderId>) {
        let acct = self.accounts.entry(account).or_insert_with(|| Account {
            head: NIL,
            ..Account::default()
        });
        let old_head = acct.head;
        acct.head = slot;
        acct.live += 1;
        if let Some(c) = client_id {
            acct.by_client_id.insert(c, slot);
        }
        self.nodes[slot as usize].acct_next = old_head;
        if old_head != NIL {
            self.nodes[old_head as usize].acct_prev = slot;
        }
    }

    /// Removes an order from every structure; returns it and its level's total before removal.
    pub(crate) fn remove(&mut self, slot: u32) -> (RestingOrder, i64) {
        let old_total = self.unlink_level(slot);
        self.unlink_account(slot);
        let order = &mut self.nodes[slot as usize].order;
        self.by_id.remove(&order.order_id);
        let taken = RestingOrder {
            client_order_id: order.client_order_id.take(),
            ..*order
        };
        self.free.push(slot);
        (taken, old_total)
    }

    fn unlink_level(&mut self, slot: u32) -> i64 {
        let node = &self.nodes[slot as usize];
        let (prev, next) = (node.prev, node.next);
        let (side, price) = (node.order.side, node.order.price);
        let remaining = node.order.qty.0 - node.order.filled_qty.0;
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
        let level_i = self.level_index(side, price);
        let levels = self.levels_mut(side);
        let level = &mut levels[level_i];
        let old_total = level.total;
        level.total -= remaining;
        if level.head == slot {
            level.head = next;
        }
        if level.tail == slot {
            level.tail = prev;
        }
        if level.head == NIL {
            levels.remove(level_i);
        }
        old_total
    }

    /// Index of an existing level; the best is checked first since most changes happen there.
    fn level_index(&self, side: Side, price: Price) -> usize {
        let levels = self.levels(side);
        match levels.last() {
            Some(l) if l.price == price => levels.len() - 1,
            _ => self
                .find_level(side, price)
                .expect("a resting order's level exists"),
        }
    }

    fn unlink_account(&mut self, slot: u32) {
        let node = &self.nodes[slot as usize];
        let (prev, next, account) = (node.acct_prev, node.acct_next, node.order.account_id);
        if prev != NIL {
            self.nodes[prev as usize].acct_next = next;
        }
        if next != NIL {
            self.nodes[next as usize].acct_prev = prev;
        }
        let acct = self
            .accounts
            .get_mut(&account)
            .expect("a resting order's account exists");
        if acct.head == slot {
            acct.head = next;
        }
        acct.live -= 1;
        if let Some(c) = &self.nodes[slot as usize].order.client_order_id {
            acct.by_client_id.remove(c.as_str());
        }
        if acct.live == 0 {
            self.accounts.remove(&account);
        }
    }

    /// Fills part of a resting order in place (keeping its queue position); returns the level's
    /// total before the fill.
    pub(crate) fn fill(&mut self, slot: u32, qty: i64) -> i64 {
        self.change_remaining(slot, |o| o.filled_qty.0 += qty)
    }

    /// Lowers an order's total quantity in place (keeping its queue position); returns the
    /// level's total before the change.
    pub(crate) fn reduce_total(&mut self, slot: u32, new_qty: Qty) -> i64 {
        self.change_remaining(slot, |o| o.qty = new_qty)
    }

    fn change_remaining(&mut self, slot: u32, change: impl FnOnce(&mut RestingOrder)) -> i64 {
        let order = &mut self.nodes[slot as usize].order;
        let before = order.qty.0 - order.filled_qty.0;
        change(order);
        let after = order.qty.0 - order.filled_qty.0;
        debug_assert!(after > 0, "a partially changed order still rests");
        let (side, price) = (order.side, order.price);
        let level_i = self.level_index(side, price);
        let level = &mut self.levels_mut(side)[level_i];
        let old_total = level.total;
        level.total += after - before;
        old_total
    }
}
