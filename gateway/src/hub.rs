//! The `events` topic, fanned out: each account's private stream, and per pair an L2 replica of
//! the book with its subscribers.
//!
//! One task reads every partition of `events` from the beginning (assigned, no consumer group:
//! every gateway needs every pair, and the replica must be complete). Records are applied in
//! partition order; an event whose `seq` is not above the pair's last seen `seq` is a
//! re-delivery and is dropped, so clients see each event once and in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accounts_core::{AssetRegistry, Liquidity, PairFees, trade_fee};
use dashmap::DashMap;
use protocol::accounts::AccountEventRecord;
use protocol::records::EventRecord;
use protocol::ws::{
    BalanceUpdate, Channel, ErrorCode, OrderUpdate, OrderUpdateKind, PublicTrade, Push,
    RejectedType, StageRejection, TickerMessage,
};
use protocol::{
    AccountId, ClientOrderId, CommandKind, Event, EventBody, OrderId, PairId, PairRegistry,
    PairSpec, Price, Qty, Side,
};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::GatewayError;
use crate::outbound::{ConnId, Levels, MarketUpdate, Outbound};
use crate::sink::DelayWindow;

/// A request waiting for the engine's verdict is forgotten after this long.
const REQUEST_TTL: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct PendingRequest {
    conn: ConnId,
    req_id: u64,
    at: Instant,
    /// For a command sent to the account stage: what its refusal needs to be answered like an
    /// engine rejection (the refusal itself names only the command id).
    stage: Option<Box<StageCommand>>,
}

/// A place or amend sent to the account stage, as its refusal's push names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageCommand {
    pub account: AccountId,
    pub pair: PairId,
    pub command: CommandKind,
    pub order_id: Option<u64>,
    pub client_order_id: Option<ClientOrderId>,
}

/// (best bid, best ask) as (price, qty) units.
type BestBidAsk = (Option<(i64, i64)>, Option<(i64, i64)>);

#[derive(Debug, Default)]
struct PairState {
    last_seq: u64,
    bids: Levels,
    asks: Levels,
    best: BestBidAsk,
    subs: HashMap<Channel, HashMap<ConnId, Arc<Outbound>>>,
}

#[derive(Debug)]
pub struct Hub {
    pairs: Arc<PairRegistry>,
    books: Vec<Mutex<PairState>>,
    accounts: DashMap<AccountId, Vec<Arc<Outbound>>>,
    requests: DashMap<u64, PendingRequest>,
    request_map_max: usize,
    /// `requests.len()`, kept without walking the map's shards on every admission.
    awaiting: Arc<AtomicUsize>,
    /// Time from writing a command to its verdict, for admission control.
    engine_delay: Arc<DelayWindow>,
    depth: usize,
    caught_up: AtomicBool,
    /// Assets and their decimals, for `balances` pushes and fill fees.
    assets: AssetRegistry,
    /// Whether trades settle in the account stage: a fill then names its fee.
    settled: bool,
    /// Per account shard, the last `accounts_offset` whose answer was applied: a restarted
    /// shard sends its answers again, and those at or below it are dropped.
    shard_offsets: Mutex<HashMap<u32, i64>>,
}

fn side_top(levels: &Levels, side: Side, n: usize) -> Vec<(i64, i64)> {
    match side {
        Side::Buy => levels.iter().rev().take(n).map(|(p, q)| (*p, *q)).collect(),
        Side::Sell => levels.iter().take(n).map(|(p, q)| (*p, *q)).collect(),
    }
}

/// The changes that turn the `before` top-N view into the `after` one (qty 0 removes).
fn view_delta(before: &[(i64, i64)], after: &[(i64, i64)]) -> Levels {
    let old: HashMap<i64, i64> = before.iter().copied().collect();
    let mut delta: Levels = after
        .iter()
        .filter(|(p, q)| old.get(p) != Some(q))
        .copied()
        .collect();
    for (p, _) in before {
        if !after.iter().any(|(ap, _)| ap == p) {
            delta.insert(*p, 0);
        }
    }
    delta
}

impl PairState {
    fn best(&self) -> BestBidAsk {
        (
            self.bids.iter().next_back().map(|(p, q)| (*p, *q)),
            self.asks.iter().next().map(|(p, q)| (*p, *q)),
        )
    }

    fn subscribers(&self, channel: Channel) -> impl Iterator<Item = &Arc<Outbound>> {
        self.subs.get(&channel).into_iter().flat_map(|m| m.values())
    }

    fn has_subscribers(&self, channel: Channel) -> bool {
        self.subs.get(&channel).is_some_and(|m| !m.is_empty())
    }

    fn snapshot(&self, depth: usize) -> MarketUpdate {
        MarketUpdate::BookSnapshot {
            seq: self.last_seq,
            bids: side_top(&self.bids, Side::Buy, depth).into_iter().collect(),
            asks: side_top(&self.asks, Side::Sell, depth)
                .into_iter()
                .collect(),
        }
    }

    fn ticker(&self, spec: &PairSpec) -> TickerMessage {
        let fmt = |l: Option<(i64, i64)>| {
            l.map(|(p, q)| [spec.format_price(Price(p)), spec.format_qty(Qty(q))])
        };
        TickerMessage {
            pair: spec.symbol.clone(),
            seq: self.last_seq,
            bid: fmt(self.best.0),
            ask: fmt(self.best.1),
        }
    }
}

impl Hub {
    pub fn new(
        pairs: Arc<PairRegistry>,
        depth: usize,
        request_map_max: usize,
        settled: bool,
    ) -> Hub {
        let books = (0..pairs.len())
            .map(|_| Mutex::new(PairState::default()))
            .collect();
        let assets = AssetRegistry::from_pairs(&pairs);
        Hub {
            assets,
            settled,
            shard_offsets: Mutex::new(HashMap::new()),
            pairs,
            books,
            accounts: DashMap::new(),
            requests: DashMap::new(),
            request_map_max,
            awaiting: Arc::new(AtomicUsize::new(0)),
            engine_delay: Arc::new(DelayWindow::default()),
            depth: depth.max(1),
            caught_up: AtomicBool::new(false),
        }
    }

    fn book(&self, pair: PairId) -> std::sync::MutexGuard<'_, PairState> {
        self.books[pair as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Shared with admission control: how many commands wait for a verdict, and how long
    /// verdicts take.
    pub fn verdict_signals(&self) -> (Arc<DelayWindow>, Arc<AtomicUsize>) {
        (Arc::clone(&self.engine_delay), Arc::clone(&self.awaiting))
    }

    /// Starts the replica from a PostgreSQL snapshot instead of an empty book.
    pub fn load_snapshot(&self, snap: &crate::snapshot::Snapshot) {
        for (pair, book) in &snap.pairs {
            if self.pairs.get(*pair).is_none() {
                continue;
            }
            let mut state = self.book(*pair);
            state.last_seq = book.last_seq;
            state.bids = book.bids.iter().copied().collect();
            state.asks = book.asks.iter().copied().collect();
            state.best = state.best();
        }
    }

    /// The last seq of `pair` this gateway has read (and pushed); 0 before any.
    pub fn last_seq(&self, pair: PairId) -> u64 {
        if (pair as usize) < self.books.len() {
            self.book(pair).last_seq
        } else {
            0
        }
    }

    /// The last `accounts_offset` of `shard` whose answer this gateway applied (and pushed).
    pub fn shard_offset(&self, shard: u32) -> Option<i64> {
        let seen = self.shard_offsets.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&shard).copied()
    }

    /// Whether the replica has read every record that existed when the gateway started.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
    }

    pub fn add_account(&self, account: AccountId, out: &Arc<Outbound>) {
        self.accounts
            .entry(account)
            .or_default()
            .push(Arc::clone(out));
    }

    pub fn remove_account(&self, account: AccountId, conn: ConnId) {
        self.accounts.remove_if_mut(&account, |_, outs| {
            outs.retain(|o| o.id != conn);
            outs.is_empty()
        });
    }

    /// Remembers which request a command answers, if there is room (else the verdict simply
    /// arrives without `req_id`).
    pub fn remember_request(
        &self,
        command_id: u64,
        conn: ConnId,
        req_id: u64,
        stage: Option<StageCommand>,
    ) {
        if self.requests.len() < self.request_map_max {
            let at = Instant::now();
            let pending = PendingRequest {
                conn,
                req_id,
                at,
                stage: stage.map(Box::new),
            };
            if self.requests.insert(command_id, pending).is_none() {
                self.awaiting.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            metrics::counter!("gateway_request_map_full_total").increment(1);
        }
    }

    pub fn forget_request(&self, command_id: u64) {
        self.take_request(command_id);
    }

    fn take_request(&self, command_id: u64) -> Option<PendingRequest> {
        let (_, r) = self.requests.remove(&command_id)?;
        self.awaiting.fetch_sub(1, Ordering::Relaxed);
        Some(r)
    }

    fn sweep_requests(&self) {
        self.requests.retain(|_, r| r.at.elapsed() < REQUEST_TTL);
        self.awaiting.store(self.requests.len(), Ordering::Relaxed);
    }

    /// Adds a subscriber and hands it the current state (a snapshot for the book), under the
    /// pair's lock so no update can fall between the state and the stream.
    pub fn subscribe(&self, channel: Channel, pair: PairId, out: &Arc<Outbound>) {
        let Some(spec) = self.pairs.get(pair) else {
            return;
        };
        let mut state = self.book(pair);
        match channel {
            Channel::Book => out.push_market(channel, pair, state.snapshot(self.depth)),
            Channel::Ticker => {
                out.push_market(channel, pair, MarketUpdate::Ticker(state.ticker(spec)))
            }
            Channel::Trades => {}
            // Not a market channel: the connection's own flag (`Outbound::wants_balances`).
            Channel::Balances => return,
        }
        state
            .subs
            .entry(channel)
            .or_default()
            .insert(out.id, Arc::clone(out));
    }

    pub fn unsubscribe(&self, channel: Channel, pair: PairId, conn: ConnId) {
        if (pair as usize) < self.books.len()
            && let Some(m) = self.book(pair).subs.get_mut(&channel)
        {
            m.remove(&conn);
        }
    }

    /// Applies one record from partition `pair`. A traced command's answer continues its
    /// trace: a `gateway.answer` span from the record's arrival to its pushes.
    pub fn apply(&self, pair: PairId, record: EventRecord) {
        let answer = record.tp.as_deref().and_then(|tp| {
            let span =
                infra::trace::start("gateway.answer", Some(tp), std::time::SystemTime::now())?;
            tracing::debug!(
                target: "command",
                trace_id = %span.trace_id(),
                pair = %record.pair,
                account_id = record.account_id.map(|a| a.0),
                order_id = record.events.iter().find_map(|e| e.body.order_id()).map(|o| o.0),
                command_id = record.command_id,
                orders_offset = record.orders_offset,
                "command answered"
            );
            Some(span)
        });
        self.apply_record(pair, record);
        if let Some(span) = answer {
            span.end_at(std::time::SystemTime::now());
        }
    }

    fn apply_record(&self, pair: PairId, record: EventRecord) {
        let Some(spec) = self.pairs.get(pair) else {
            metrics::counter!("gateway_events_wrong_pair_total").increment(1);
            return;
        };
        if record.pair != spec.symbol {
            tracing::warn!(partition = pair, pair = %record.pair, "event record for another pair");
            metrics::counter!("gateway_events_wrong_pair_total").increment(1);
            return;
        }
        let private = {
            let mut state = self.book(pair);
            let fresh: Vec<&Event> = record
                .events
                .iter()
                .filter(|e| e.seq > state.last_seq)
                .collect();
            if fresh.is_empty() {
                metrics::counter!("gateway_events_duplicates_total").increment(1);
                return;
            }
            self.apply_public(spec, &mut state, &fresh);
            let fees = self
                .settled
                .then(|| (&self.assets, self.pairs.fees(spec.id)));
            private_updates(spec, &fresh, fees)
        };
        metrics::counter!("gateway_events_records_total").increment(1);
        self.route_private(&record, private);
    }

    fn apply_public(&self, spec: &PairSpec, state: &mut PairState, events: &[&Event]) {
        let book_subs = state.has_subscribers(Channel::Book);
        let before = book_subs.then(|| {
            (
                side_top(&state.bids, Side::Buy, self.depth),
                side_top(&state.asks, Side::Sell, self.depth),
            )
        });
        let mut trades = Vec::new();
        for e in events {
            state.last_seq = e.seq;
            match &e.body {
                EventBody::BookLevel { side, price, qty } => {
                    let levels = match side {
                        Side::Buy => &mut state.bids,
                        Side::Sell => &mut state.asks,
                    };
                    if qty.0 == 0 {
                        levels.remove(&price.0);
                    } else {
                        levels.insert(price.0, qty.0);
                    }
                }
                EventBody::Trade {
                    trade_id,
                    price,
                    qty,
                    taker_side,
                    ..
                } => trades.push(PublicTrade {
                    trade_id: *trade_id,
                    seq: e.seq,
                    price: spec.format_price(*price),
                    qty: spec.format_qty(*qty),
                    taker_side: *taker_side,
                    ts_ms: e.ts_ns / 1_000_000,
                }),
                _ => {}
            }
        }
        let seq = state.last_seq;
        if let Some((bids_before, asks_before)) = before {
            let bids = view_delta(&bids_before, &side_top(&state.bids, Side::Buy, self.depth));
            let asks = view_delta(&asks_before, &side_top(&state.asks, Side::Sell, self.depth));
            if !bids.is_empty() || !asks.is_empty() {
                let update = MarketUpdate::BookDelta { seq, bids, asks };
                for out in state.subscribers(Channel::Book) {
                    out.push_market(Channel::Book, spec.id, update.clone());
                }
            }
        }
        if !trades.is_empty() {
            for out in state.subscribers(Channel::Trades) {
                out.push_market(
                    Channel::Trades,
                    spec.id,
                    MarketUpdate::Trades(trades.clone()),
                );
            }
        }
        let best = state.best();
        if best != state.best {
            state.best = best;
            if state.has_subscribers(Channel::Ticker) {
                let ticker = state.ticker(spec);
                for out in state.subscribers(Channel::Ticker) {
                    out.push_market(
                        Channel::Ticker,
                        spec.id,
                        MarketUpdate::Ticker(ticker.clone()),
                    );
                }
            }
        }
    }

    /// The assets of the pair registry.
    pub fn assets(&self) -> &AssetRegistry {
        &self.assets
    }

    /// Applies one answer of the account stage: a refusal answers its request (on the `orders`
    /// channel, `type: rejected`, like an engine rejection), and each balance line goes to the
    /// account's `balances` subscribers. A shard position seen before is dropped.
    pub fn apply_account_event(&self, record: AccountEventRecord) {
        {
            let mut seen = self.shard_offsets.lock().unwrap_or_else(|p| p.into_inner());
            let last = seen.entry(record.shard).or_insert(i64::MIN);
            if record.accounts_offset <= *last {
                metrics::counter!("gateway_account_events_duplicates_total").increment(1);
                return;
            }
            *last = record.accounts_offset;
        }
        metrics::counter!("gateway_account_events_records_total").increment(1);
        if let (Some(command_id), Some(refusal)) = (record.command_id, &record.refusal) {
            self.answer_refusal(&record, command_id, refusal);
        }
        for line in &record.balances {
            let Some(asset) = self.assets.by_symbol(&line.asset) else {
                tracing::warn!(asset = %line.asset, "balance of an asset no pair trades skipped");
                metrics::counter!("gateway_account_events_undecodable_total").increment(1);
                continue;
            };
            let Some(outs) = self.accounts.get(&line.account_id) else {
                continue;
            };
            let mut text: Option<String> = None;
            for out in outs.iter() {
                if !out.wants_balances.load(Ordering::Relaxed) {
                    continue;
                }
                let text = text.get_or_insert_with(|| {
                    let push = Push::Balances(BalanceUpdate {
                        asset: asset.symbol.clone(),
                        available: crate::accounts::format_units(
                            line.available_units,
                            asset.decimals,
                        ),
                        reserved: crate::accounts::format_units(
                            line.reserved_units,
                            asset.decimals,
                        ),
                        shard: record.shard,
                        accounts_offset: record.accounts_offset,
                    });
                    serde_json::to_string(&push).expect("pushes always serialize")
                });
                out.push(text.clone());
            }
        }
    }

    /// A refusal goes to every connection of the account on this gateway: the account is
    /// named by the stage's answer, or else by the request this gateway remembers. Only the
    /// gateway that wrote the command (and still remembers it) knows the pair, the kind and
    /// the order it named, and the requester's connection gets its `req_id`.
    fn answer_refusal(
        &self,
        record: &AccountEventRecord,
        command_id: u64,
        refusal: &protocol::accounts::Refusal,
    ) {
        let origin = self.take_request(command_id);
        if let Some(origin) = &origin {
            let delay = origin.at.elapsed();
            self.engine_delay.record(delay);
            metrics::histogram!("gateway_verdict_seconds").record(delay.as_secs_f64());
        }
        let stage = origin.as_ref().and_then(|o| o.stage.as_deref());
        let Some(account) = record.account_id.or(stage.map(|s| s.account)) else {
            return;
        };
        let Some(outs) = self.accounts.get(&account) else {
            return;
        };
        let (code, message) = match ErrorCode::from_name(&refusal.code) {
            Some(code) => (code, refusal.message.clone()),
            None => (
                ErrorCode::Internal,
                format!(
                    "the account stage refused the command ({}): {}",
                    refusal.code, refusal.message
                ),
            ),
        };
        let mut push = StageRejection {
            pair: stage
                .and_then(|s| self.pairs.get(s.pair))
                .map(|spec| spec.symbol.clone()),
            req_id: None,
            kind: RejectedType::Rejected,
            order_id: stage.and_then(|s| s.order_id),
            client_order_id: stage.and_then(|s| s.client_order_id.clone()),
            command: stage.map(|s| s.command),
            command_id: Some(command_id),
            code,
            message,
            shard: record.shard,
            accounts_offset: record.accounts_offset,
            // A stage older than `ts_ns` did not say: the time the gateway learned of it.
            ts_ms: record.ts_ns.map_or_else(crate::now_ms, |ns| ns / 1_000_000),
        };
        let requester = origin.as_ref().map(|o| (o.conn, o.req_id));
        let mut plain: Option<String> = None;
        for out in outs.iter() {
            match requester {
                Some((conn, req_id)) if conn == out.id => {
                    push.req_id = Some(req_id);
                    out.push(push.push_json());
                    push.req_id = None;
                }
                _ => out.push(plain.get_or_insert_with(|| push.push_json()).clone()),
            }
        }
    }

    fn route_private(&self, record: &EventRecord, updates: Vec<(AccountId, OrderUpdate)>) {
        let origin = record.command_id.and_then(|id| self.take_request(id));
        if let Some(r) = &origin {
            let delay = r.at.elapsed();
            self.engine_delay.record(delay);
            metrics::histogram!("gateway_verdict_seconds").record(delay.as_secs_f64());
        }
        for (account, mut update) in updates {
            let Some(outs) = self.accounts.get(&account) else {
                continue;
            };
            // The requesting connection sees its `req_id`; the account's other connections get
            // the same update without it. Each text is built only if someone receives it: with
            // one connection per account (the usual case) that is one serialization, not two.
            let origin_conn = origin
                .as_ref()
                .filter(|_| record.account_id == Some(account));
            let mut plain: Option<String> = None;
            for out in outs.iter() {
                match origin_conn {
                    Some(r) if r.conn == out.id => {
                        update.req_id = Some(r.req_id);
                        out.push(orders_text(&update));
                        update.req_id = None;
                    }
                    _ => out.push(plain.get_or_insert_with(|| orders_text(&update)).clone()),
                }
            }
        }
    }
}

/// `Push::Orders(update)` as JSON, from a borrowed update (no clone of its strings).
fn orders_text(update: &OrderUpdate) -> String {
    #[derive(Serialize)]
    #[serde(tag = "channel", rename_all = "snake_case")]
    enum PushRef<'a> {
        Orders(&'a OrderUpdate),
    }
    serde_json::to_string(&PushRef::Orders(update)).expect("pushes always serialize")
}

/// The engine's events as each concerned account sees them.
/// `fees`: when trades settle in the account stage, the assets and the pair's fees, so a fill
/// names the fee the stage charges for it.
fn private_updates(
    spec: &PairSpec,
    events: &[&Event],
    fees: Option<(&AssetRegistry, PairFees)>,
) -> Vec<(AccountId, OrderUpdate)> {
    let mut out = Vec::new();
    for e in events {
        let update = |seq, kind| OrderUpdate {
            pair: spec.symbol.clone(),
            seq,
            req_id: None,
            ts_ms: e.ts_ns / 1_000_000,
            kind,
        };
        match &e.body {
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
            } => out.push((
                *account_id,
                update(
                    e.seq,
                    OrderUpdateKind::Accepted {
                        order_id: order_id.0,
                        client_order_id: client_order_id.clone(),
                        side: *side,
                        order_type: *order_type,
                        price: price.map(|p| spec.format_price(p)),
                        qty: spec.format_qty(*qty),
                        tif: *tif,
                        post_only: *post_only,
                        filled_qty: spec.format_qty(Qty(0)),
                        remaining_qty: spec.format_qty(*qty),
                    },
                ),
            )),
            EventBody::Rejected {
                order_id,
                account_id: Some(account_id),
                client_order_id,
                command,
                reason,
            } => out.push((
                *account_id,
                update(
                    e.seq,
                    OrderUpdateKind::Rejected {
                        order_id: order_id.map(|o| o.0),
                        client_order_id: client_order_id.clone(),
                        command: *command,
                        code: *reason,
                        message: reason.message().to_owned(),
                    },
                ),
            )),
            EventBody::Rejected {
                account_id: None, ..
            } => {}
            EventBody::Trade {
                trade_id,
                price,
                qty,
                taker_side,
                maker_order_id,
                maker_account_id,
                taker_order_id,
                taker_account_id,
                maker_filled_qty,
                maker_remaining_qty,
                maker_client_order_id,
                taker_filled_qty,
                taker_remaining_qty,
                taker_client_order_id,
            } => {
                let fill = |order_id: OrderId,
                            client_order_id: &Option<ClientOrderId>,
                            side: Side,
                            liquidity: Liquidity,
                            filled: &Option<Qty>,
                            remaining: &Option<Qty>| {
                    let fee = fees.and_then(|(assets, fees)| {
                        let (asset, units) =
                            trade_fee(assets, fees, spec.id, side, liquidity, *price, *qty)?;
                        let asset = assets.get(asset)?;
                        Some((
                            crate::accounts::format_units(units, asset.decimals),
                            asset.symbol.clone(),
                        ))
                    });
                    let (fee, fee_asset) = fee.unzip();
                    OrderUpdateKind::Fill {
                        order_id: order_id.0,
                        client_order_id: client_order_id.clone(),
                        trade_id: *trade_id,
                        side,
                        price: spec.format_price(*price),
                        qty: spec.format_qty(*qty),
                        maker: liquidity == Liquidity::Maker,
                        filled_qty: filled.map(|q| spec.format_qty(q)),
                        remaining_qty: remaining.map(|q| spec.format_qty(q)),
                        fee,
                        fee_asset,
                    }
                };
                out.push((
                    *maker_account_id,
                    update(
                        e.seq,
                        fill(
                            *maker_order_id,
                            maker_client_order_id,
                            taker_side.opposite(),
                            Liquidity::Maker,
                            maker_filled_qty,
                            maker_remaining_qty,
                        ),
                    ),
                ));
                out.push((
                    *taker_account_id,
                    update(
                        e.seq,
                        fill(
                            *taker_order_id,
                            taker_client_order_id,
                            *taker_side,
                            Liquidity::Taker,
                            taker_filled_qty,
                            taker_remaining_qty,
                        ),
                    ),
                ));
            }
            EventBody::Done {
                order_id,
                account_id,
                client_order_id,
                reason,
                filled_qty,
                remaining_qty,
            } => out.push((
                *account_id,
                update(
                    e.seq,
                    OrderUpdateKind::Done {
                        order_id: order_id.0,
                        client_order_id: client_order_id.clone(),
                        reason: *reason,
                        filled_qty: spec.format_qty(*filled_qty),
                        remaining_qty: spec.format_qty(*remaining_qty),
                    },
                ),
            )),
            EventBody::Amended {
                order_id,
                account_id,
                client_order_id,
                price,
                qty,
                remaining_qty,
                priority_kept,
            } => out.push((
                *account_id,
                update(
                    e.seq,
                    OrderUpdateKind::Amended {
                        order_id: order_id.0,
                        client_order_id: client_order_id.clone(),
                        price: spec.format_price(*price),
                        qty: spec.format_qty(*qty),
                        filled_qty: spec.format_qty(Qty(qty.0 - remaining_qty.0)),
                        remaining_qty: spec.format_qty(*remaining_qty),
                        priority_kept: *priority_kept,
                    },
                ),
            )),
            EventBody::BookLevel { .. } => {}
        }
    }
    out
}

/// (partition, first offset to read, high watermark) for every partition. Blocking calls.
fn replica_starts(
    consumer: &StreamConsumer,
    topic: &str,
    partitions: usize,
    start: &ReplicaStart,
) -> Result<Vec<(i32, i64, i64)>, rdkafka::error::KafkaError> {
    const TIMEOUT: Duration = Duration::from_secs(10);
    let mut out = Vec::with_capacity(partitions);
    for p in 0..partitions as i32 {
        let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
        out.push((p, low, high));
    }
    let ReplicaStart::At { taken_at_ms, after } = start else {
        return Ok(out);
    };
    // Right after the record the snapshot's state ends with, where the engine stored it.
    for (p, from, high) in &mut out {
        if let Some(last) = after.get(&(*p as PairId)) {
            *from = (last + 1).clamp(*from, *high);
        }
    }
    let by_time: Vec<i32> = out
        .iter()
        .map(|(p, _, _)| *p)
        .filter(|p| !after.contains_key(&(*p as PairId)))
        .collect();
    if by_time.is_empty() {
        return Ok(out);
    }
    let rewind_ms = i64::try_from(REPLICA_REWIND.as_millis()).unwrap_or(i64::MAX);
    let mut query = TopicPartitionList::new();
    for p in &by_time {
        query.add_partition_offset(
            topic,
            *p,
            Offset::Offset(taken_at_ms.saturating_sub(rewind_ms)),
        )?;
    }
    let found = consumer.offsets_for_times(query, TIMEOUT)?;
    for (p, from, high) in out.iter_mut().filter(|(p, _, _)| by_time.contains(p)) {
        // No record at or after that time: nothing the snapshot lacks was there when we asked,
        // so start at the end as it was before asking.
        *from = match found.find_partition(topic, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.clamp(*from, *high),
            _ => *high,
        };
    }
    Ok(out)
}

/// Where the replica starts reading `events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaStart {
    /// From the first retained record, onto an empty book.
    Beginning,
    /// Onto a PostgreSQL snapshot: each pair in `after` from the record after that offset (the
    /// last one the snapshot's state covers); any other pair from the first record produced
    /// `REPLICA_REWIND` before `taken_at_ms` (ms since the epoch). What the snapshot already
    /// holds is dropped by seq.
    At {
        taken_at_ms: i64,
        after: HashMap<PairId, i64>,
    },
}

/// For a pair without a stored `events` offset: how far before the snapshot's time the replica
/// starts reading, for clock skew between the engine's host and the database's.
pub const REPLICA_REWIND: Duration = Duration::from_secs(10);

/// Reads every partition of the events topic from `start` until `shutdown`.
pub async fn consume_events(
    hub: Arc<Hub>,
    consumer: StreamConsumer,
    start: ReplicaStart,
    topic: String,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let partitions = hub.pairs.len();
    let consumer = Arc::new(consumer);
    // Each partition's retained range now, and where to start in it. A topic created moments
    // ago may not have its partitions' leaders known yet: retry until it answers, because a
    // gateway without its events task would take orders and never answer them.
    let mut backoff = Duration::from_millis(100);
    let starts = loop {
        let consumer = Arc::clone(&consumer);
        let topic = topic.clone();
        let start = start.clone();
        let found = tokio::task::spawn_blocking(move || {
            replica_starts(&consumer, &topic, partitions, &start)
        })
        .await
        .map_err(|e| GatewayError::Task(e.to_string()))?;
        match found {
            Ok(starts) => break starts,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot find where to start reading the events topic; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let mut assignment = TopicPartitionList::new();
    // The end of each partition when we started: the replica is complete once past all of them.
    let mut behind: HashMap<i32, i64> = HashMap::new();
    for (p, from, high) in starts {
        assignment
            .add_partition_offset(&topic, p, Offset::Offset(from))
            .map_err(GatewayError::Kafka)?;
        if high > from {
            behind.insert(p, high);
        }
    }
    consumer.assign(&assignment).map_err(GatewayError::Kafka)?;
    if behind.is_empty() {
        hub.caught_up.store(true, Ordering::Relaxed);
    }
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    let stopping = shutdown.cancelled();
    tokio::pin!(stopping);
    loop {
        let message = tokio::select! {
            _ = &mut stopping => return Ok(()),
            _ = sweep.tick() => {
                hub.sweep_requests();
                continue;
            }
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the events topic; retrying");
                metrics::counter!("gateway_events_read_errors_total").increment(1);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let partition = message.partition();
        // Only live records: a replay's ages say nothing about the path.
        if behind.is_empty()
            && let Some(ms) = message.timestamp().to_millis()
            && let Some(age_ms) = crate::now_ms().checked_sub(u64::try_from(ms).unwrap_or(u64::MAX))
        {
            metrics::histogram!("gateway_events_age_seconds").record(age_ms as f64 / 1e3);
        }
        match message.payload() {
            // One Kafka record carries one or more EventRecords (newline-separated lines); a bad
            // line is skipped alone.
            Some(payload) => {
                for line in EventRecord::decode_all(payload) {
                    match line {
                        Ok(record) => hub.apply(partition as PairId, record),
                        Err(e) => {
                            tracing::warn!(partition, offset = message.offset(), error = %e, "undecodable event record skipped");
                            metrics::counter!("gateway_events_undecodable_total").increment(1);
                        }
                    }
                }
            }
            None => {
                metrics::counter!("gateway_events_undecodable_total").increment(1);
            }
        }
        if !behind.is_empty()
            && let Some(high) = behind.get(&partition)
            && message.offset() + 1 >= *high
        {
            behind.remove(&partition);
            if behind.is_empty() {
                tracing::info!("events replica caught up");
                hub.caught_up.store(true, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn orders_text_is_the_orders_push_with_or_without_req_id() {
        let spec = PairRegistry::from_toml(include_str!("../../config/pairs.toml"))
            .unwrap()
            .by_symbol("BTC-EUR")
            .unwrap()
            .clone();
        let done = Event {
            seq: 9,
            ts_ns: 1,
            body: EventBody::Done {
                order_id: protocol::OrderId(5),
                account_id: AccountId(3),
                client_order_id: Some("c-\"1\"".into()),
                reason: protocol::DoneReason::Cancelled,
                filled_qty: Qty(0),
                remaining_qty: Qty(7),
            },
        };
        let (_, mut update) = private_updates(&spec, &[&done], None).remove(0);
        for req_id in [None, Some(42)] {
            update.req_id = req_id;
            let text = orders_text(&update);
            let want = serde_json::to_string(&protocol::ws::Push::Orders(update.clone())).unwrap();
            assert_eq!(text, want);
            let back: protocol::ws::Push = serde_json::from_str(&text).unwrap();
            assert_eq!(back, protocol::ws::Push::Orders(update.clone()));
        }
    }

    #[test]
    fn a_fill_names_its_cumulative_quantities_and_the_fee_the_stage_settles() {
        let text = include_str!("../../config/pairs.toml").replacen(
            "symbol = \"BTC-EUR\"\n",
            "symbol = \"BTC-EUR\"\nmaker_fee = \"0.001\"\ntaker_fee = \"0.0025\"\n",
            1,
        );
        let pairs = PairRegistry::from_toml(&text).unwrap();
        let spec = pairs.by_symbol("BTC-EUR").unwrap().clone();
        let assets = AssetRegistry::from_pairs(&pairs);
        // 0.3 BTC at 60000.10 EUR: the seller (maker) receives 18000.03 EUR, the buyer 0.3 BTC.
        let trade = Event {
            seq: 12,
            ts_ns: 1_700_000_000_123_456_789,
            body: EventBody::Trade {
                trade_id: 4,
                price: spec.parse_price("60000.10").unwrap(),
                qty: spec.parse_qty("0.3").unwrap(),
                taker_side: Side::Buy,
                maker_order_id: OrderId(1),
                maker_account_id: AccountId(7),
                taker_order_id: OrderId(2),
                taker_account_id: AccountId(8),
                maker_filled_qty: Some(spec.parse_qty("0.5").unwrap()),
                maker_remaining_qty: Some(spec.parse_qty("0.1").unwrap()),
                maker_client_order_id: Some("m-1".into()),
                taker_filled_qty: Some(spec.parse_qty("0.3").unwrap()),
                taker_remaining_qty: Some(Qty(0)),
                taker_client_order_id: None,
            },
        };
        let amended = Event {
            seq: 13,
            ts_ns: 1_700_000_001_000_000_000,
            body: EventBody::Amended {
                order_id: OrderId(1),
                account_id: AccountId(7),
                client_order_id: Some("m-1".into()),
                price: spec.parse_price("60000.10").unwrap(),
                qty: spec.parse_qty("0.55").unwrap(),
                remaining_qty: spec.parse_qty("0.05").unwrap(),
                priority_kept: true,
            },
        };
        let fees = Some((&assets, pairs.fees(spec.id)));
        let out = private_updates(&spec, &[&trade, &amended], fees);
        let json = |u: &OrderUpdate| serde_json::to_value(u).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].0, AccountId(7));
        assert_eq!(
            json(&out[0].1),
            serde_json::json!({"pair": "BTC-EUR", "seq": 12, "ts_ms": 1_700_000_000_123_u64,
                "type": "fill", "order_id": 1, "client_order_id": "m-1", "trade_id": 4,
                "side": "sell", "price": "60000.10", "qty": "0.30000000", "maker": true,
                "filled_qty": "0.50000000", "remaining_qty": "0.10000000",
                "fee": "18.0000300000", "fee_asset": "EUR"})
        );
        assert_eq!(out[1].0, AccountId(8));
        let taker = json(&out[1].1);
        assert_eq!(taker["side"], "buy");
        assert_eq!(
            taker["fee"], "0.00075000000000",
            "0.25% of 0.3 BTC: {taker}"
        );
        assert_eq!(taker["fee_asset"], "BTC");
        assert_eq!(taker["remaining_qty"], "0.00000000");
        assert_eq!(taker.get("client_order_id"), None);
        let amend = json(&out[2].1);
        assert_eq!(amend["filled_qty"], "0.50000000", "{amend}");
        assert_eq!(amend["client_order_id"], "m-1");
        assert_eq!(amend["ts_ms"], 1_700_000_001_000_u64);
        // Without the stage nothing settles: no fee named.
        let plain = private_updates(&spec, &[&trade], None);
        assert_eq!(json(&plain[0].1).get("fee"), None);
        assert_eq!(json(&plain[0].1).get("fee_asset"), None);
    }

    #[test]
    fn view_delta_names_changes_removals_and_levels_entering_the_view() {
        let before = [(100, 1), (99, 2)];
        let after = [(100, 3), (98, 5)];
        let d = view_delta(&before, &after);
        let want: BTreeMap<i64, i64> = [(100, 3), (99, 0), (98, 5)].into_iter().collect();
        assert_eq!(d, want);
    }
}
