//! One connection's client logic, without I/O: turns scheduled slots into requests, follows
//! each request to its final bucket, and tracks the account's own resting orders from the
//! private stream so cancels and amends name live orders.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use protocol::ws::{
    Amend, Cancel, CancelAllParams, ConnectionStatus, ErrorBody, ErrorCode, OrderUpdate,
    OrderUpdateKind, Place, Push, RequestBody, StageRejection,
};
use protocol::{CommandKind, OrderType, RejectReason, SelfTradePrevention, Side, TimeInForce};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::market::Market;
use crate::mix::Kind;
use crate::received::Receipt;
use crate::rng::Rng;
use crate::stats::{Observation, Outcome};

/// A command that came due, handed from the scheduler to a connection.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub scheduled: Instant,
    pub kind: Kind,
    pub phase: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Ok,
    Rejected(RejectReason),
    /// The account stage refused it before it reached the book (`insufficient_funds`, ...).
    Refused(ErrorCode),
}

#[derive(Debug, Clone)]
struct Pending {
    scheduled: Instant,
    phase: usize,
    /// The resting order a cancel or amend names.
    target: Option<u64>,
    /// Index into the market's pairs, and what the command is: its `--received-out` line.
    pair: usize,
    command: CommandKind,
    acked: bool,
    verdict: Option<Verdict>,
}

#[derive(Debug, Clone)]
struct LiveOrder {
    pair: usize,
    order_id: u64,
    side: Side,
    price: i64,
    qty: i64,
    filled: i64,
    /// A cancel or amend for it is in flight: do not name it again.
    busy: bool,
}

/// A request as a client writes it: `{"id":..,"method":..,"params":{..}}`.
#[derive(Serialize)]
struct Wire<'a> {
    id: u64,
    #[serde(flatten)]
    body: &'a RequestBody,
}

pub fn request_json(id: u64, body: &RequestBody) -> String {
    serde_json::to_string(&Wire { id, body }).expect("requests always serialize")
}

/// A response without building the whole `result` value: whether it is an error, and the order
/// a `received` names.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    result: Option<AnswerResult>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct AnswerResult {
    #[serde(default)]
    order_id: Option<u64>,
}

/// How an `orders` push frame starts (`Push` is tagged by `channel`, written first).
const ORDERS_PUSH_PREFIX: &str = r#"{"channel":"orders","#;

/// Just enough of an incoming frame to route it.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow)]
    channel: Option<&'a str>,
}

#[derive(Debug)]
pub struct Trader {
    market: Arc<Market>,
    /// Time zero of the market's drifting mid.
    t0: Instant,
    rng: Rng,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    /// Set by an orderly close's status push: the gateway read no request after this id.
    read_up_to: Option<u64>,
    /// The `status` push of the gateway's orderly close, until the connection's end reads it.
    closing_status: Option<ConnectionStatus>,
    live: Vec<LiveOrder>,
    live_max: usize,
    /// The end-of-run `cancel_all`: its request id, and where its answer goes (true: accepted).
    cleanup: Option<(u64, oneshot::Sender<bool>)>,
}

impl Trader {
    /// `first_id` leaves room for requests sent before trading (login).
    pub fn new(
        market: Arc<Market>,
        t0: Instant,
        seed: u64,
        live_max: usize,
        first_id: u64,
    ) -> Trader {
        Trader {
            market,
            t0,
            rng: Rng::new(seed),
            next_id: first_id,
            pending: HashMap::new(),
            read_up_to: None,
            closing_status: None,
            live: Vec::new(),
            live_max,
            cleanup: None,
        }
    }

    /// The request that cancels every order this connection's account still has resting, so
    /// that one run leaves no book behind for the next (which would recover it: a larger book,
    /// more engine memory, a longer start).
    /// Returns the request's text and the receiver of the gateway's answer.
    pub fn cleanup_request(&mut self) -> (String, oneshot::Receiver<bool>) {
        let id = self.next_id;
        self.next_id += 1;
        let (answer, answered) = oneshot::channel();
        self.cleanup = Some((id, answer));
        let text = request_json(id, &RequestBody::CancelAll(CancelAllParams { pair: None }));
        (text, answered)
    }

    /// Why the gateway said it closes the connection (its `status` push), if it did; once.
    pub fn take_closing_status(&mut self) -> Option<ConnectionStatus> {
        self.closing_status.take()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub fn live_len(&self) -> usize {
        self.live.len()
    }

    /// Builds the request for a slot; returns its JSON and the kind actually sent, which differs
    /// from the drawn one when there is no free own order to cancel or amend (a limit order
    /// instead) or when `live_max` orders already rest (a cancel instead).
    pub fn build(&mut self, slot: Slot, now: Instant) -> (String, Kind) {
        let free = match slot.kind {
            Kind::Cancel | Kind::Amend => self.free_order(),
            Kind::Limit if self.live.len() >= self.live_max => self.free_order(),
            _ => None,
        };
        let kind = match slot.kind {
            Kind::Cancel | Kind::Amend if free.is_none() => Kind::Limit,
            Kind::Limit if free.is_some() => Kind::Cancel,
            k => k,
        };
        let t_s = now.saturating_duration_since(self.t0).as_secs_f64();
        let (body, target, pair, command) = match kind {
            Kind::Limit | Kind::Marketable => {
                let (body, pair) = self.place(kind, t_s);
                (body, None, pair, CommandKind::Place)
            }
            Kind::Cancel => {
                let i = free.expect("checked above");
                let o = &mut self.live[i];
                o.busy = true;
                let body = RequestBody::Cancel(Cancel {
                    pair: self.market.pairs[o.pair].spec.symbol.clone(),
                    order_id: Some(o.order_id),
                    client_order_id: None,
                });
                (body, Some(o.order_id), o.pair, CommandKind::Cancel)
            }
            Kind::Amend => {
                let i = free.expect("checked above");
                self.live[i].busy = true;
                let o = &self.live[i];
                let (target, pair) = (o.order_id, o.pair);
                (self.amend(i, t_s), Some(target), pair, CommandKind::Amend)
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(
            id,
            Pending {
                scheduled: slot.scheduled,
                phase: slot.phase,
                target,
                pair,
                command,
                acked: false,
                verdict: None,
            },
        );
        (request_json(id, &body), kind)
    }

    /// A random resting order with no cancel or amend in flight. A few random probes find one
    /// almost always (few orders are busy at a time); the counted scan is the fallback.
    fn free_order(&mut self) -> Option<usize> {
        if self.live.is_empty() {
            return None;
        }
        for _ in 0..8 {
            let i = self.rng.below(self.live.len() as u64) as usize;
            if !self.live[i].busy {
                return Some(i);
            }
        }
        let free = self.live.iter().filter(|o| !o.busy).count();
        if free == 0 {
            return None;
        }
        let nth = self.rng.below(free as u64) as usize;
        self.live
            .iter()
            .enumerate()
            .filter(|(_, o)| !o.busy)
            .nth(nth)
            .map(|(i, _)| i)
    }

    /// A place on a random pair; returns it and the pair's index.
    fn place(&mut self, kind: Kind, t_s: f64) -> (RequestBody, usize) {
        let pair = self.rng.below(self.market.pairs.len() as u64) as usize;
        let pm = &self.market.pairs[pair];
        let side = if self.rng.chance(0.5) {
            Side::Buy
        } else {
            Side::Sell
        };
        let mid = pm.mid(t_s);
        let (price, tif) = match kind {
            Kind::Marketable => (pm.crossing_price(mid, side), TimeInForce::Ioc),
            _ => (pm.resting_price(mid, side, &mut self.rng), TimeInForce::Gtc),
        };
        let qty = pm.qty_at(price, &mut self.rng);
        let body = RequestBody::Place(Place {
            pair: pm.spec.symbol.clone(),
            side,
            order_type: OrderType::Limit,
            price: Some(pm.format_price(price)),
            qty: pm.format_qty(qty),
            tif: Some(tif),
            post_only: false,
            client_order_id: None,
            stp: SelfTradePrevention::ExpireTaker,
            quote_qty: None,
        });
        (body, pair)
    }

    /// Quantity down (keeps priority) when enough remains, else a new price near the mid.
    fn amend(&mut self, i: usize, t_s: f64) -> RequestBody {
        let o = self.live[i].clone();
        let pm = &self.market.pairs[o.pair];
        let remaining = o.qty - o.filled;
        let min = pm.min_qty_at(o.price);
        let (price, qty) = if remaining >= 2 * min {
            let lot = pm.spec.lot_size.0;
            let keep = (remaining / 2).div_euclid(lot) * lot;
            (None, Some(pm.format_qty(o.filled + keep.max(min))))
        } else {
            let mid = pm.mid(t_s);
            let price = pm.resting_price(mid, o.side, &mut self.rng);
            (Some(pm.format_price(price)), None)
        };
        RequestBody::Amend(Amend {
            pair: pm.spec.symbol.clone(),
            order_id: Some(o.order_id),
            client_order_id: None,
            price,
            qty,
        })
    }

    /// Handles one incoming text frame; what it means for accounting goes to `obs`.
    pub fn handle_text(&mut self, text: &str, obs: &mut Vec<Observation>) {
        // Fast path for most frames: the gateway writes a push's `channel` first, and an
        // OrderUpdate parses straight from the frame (the `channel` key is ignored), which saves
        // the routing parse and serde's buffering of an internally tagged enum.
        if text.starts_with(ORDERS_PUSH_PREFIX) {
            self.on_orders_push(text, obs);
            return;
        }
        let Ok(peek) = serde_json::from_str::<Peek>(text) else {
            return;
        };
        match (peek.channel, peek.id) {
            (Some("orders"), _) => self.on_orders_push(text, obs),
            (Some("status"), _) => {
                if let Ok(Push::Status {
                    status,
                    last_request_id,
                    frames_read,
                    ..
                }) = serde_json::from_str::<Push>(text)
                {
                    let reason = serde_json::to_value(status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    obs.push(Observation::Disconnected { reason });
                    self.closing_status = Some(status);
                    if frames_read.is_some() {
                        self.unread_at_close(last_request_id.unwrap_or(0), obs);
                    }
                }
            }
            (Some(_), _) => {}
            (None, Some(_)) => {
                if let Ok(response) = serde_json::from_str::<Answer>(text) {
                    self.on_response(response, obs);
                }
            }
            (None, None) => {}
        }
    }

    fn on_response(&mut self, r: Answer, obs: &mut Vec<Observation>) {
        let Some(id) = r.id else { return };
        if let Some((_, answer)) = self.cleanup.take_if(|(cleanup_id, _)| *cleanup_id == id) {
            let _ = answer.send(r.error.is_none());
            return;
        }
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        match r.error {
            Some(error) => {
                let p = self.pending.remove(&id).expect("present");
                let outcome = match p.verdict {
                    // The engine answered, so the gateway did write it: the verdict stands.
                    Some(v) => verdict_outcome(v),
                    None => Outcome::GatewayRejected(error.code),
                };
                if p.verdict.is_none() {
                    self.release(p.target, None);
                    if crate::stats::is_shed(error.code) {
                        obs.push(Observation::Shed {
                            phase: p.phase,
                            command: p.command,
                            scheduled: p.scheduled,
                        });
                    }
                }
                obs.push(Observation::Finished {
                    phase: p.phase,
                    outcome,
                });
            }
            None if !p.acked => {
                p.acked = true;
                obs.push(Observation::Ack {
                    phase: p.phase,
                    scheduled: p.scheduled,
                });
                let named = r.result.and_then(|result| result.order_id);
                obs.push(Observation::Receipt(Receipt {
                    order_id: named.or(p.target),
                    pair: p.pair,
                    kind: p.command,
                }));
                self.finish_if_done(id, obs);
            }
            None => {}
        }
    }

    /// An `orders` push: the engine's event (it has a `seq`), or else the account stage's
    /// refusal (`shard` and `accounts_offset` instead of `seq`, and the stage's codes).
    fn on_orders_push(&mut self, text: &str, obs: &mut Vec<Observation>) {
        match serde_json::from_str::<OrderUpdate>(text) {
            Ok(update) => self.on_update(update, obs),
            Err(_) => {
                if let Ok(refusal) = serde_json::from_str::<StageRejection>(text) {
                    self.on_refusal(refusal, obs);
                }
            }
        }
    }

    fn on_refusal(&mut self, r: StageRejection, obs: &mut Vec<Observation>) {
        if let Some(req_id) = r.req_id {
            self.record_verdict(req_id, Verdict::Refused(r.code), obs);
        }
        // A refused amend leaves its order as it was; a refused place never rested.
        if r.command == Some(CommandKind::Amend) {
            let code = match r.code {
                ErrorCode::Order(reason) => Some(reason),
                _ => None,
            };
            self.release(r.order_id, code);
        }
    }

    fn on_update(&mut self, u: OrderUpdate, obs: &mut Vec<Observation>) {
        if let Some(req_id) = u.req_id {
            self.on_verdict(req_id, &u.kind, obs);
        }
        let pair = self
            .market
            .pairs
            .iter()
            .position(|p| p.spec.symbol == u.pair);
        match u.kind {
            OrderUpdateKind::Accepted {
                order_id,
                side,
                price: Some(price),
                qty,
                tif: TimeInForce::Gtc,
                ..
            } => {
                let Some(pair) = pair else { return };
                let spec = &self.market.pairs[pair].spec;
                if let (Ok(price), Ok(qty)) = (spec.parse_price(&price), spec.parse_qty(&qty)) {
                    self.live.push(LiveOrder {
                        pair,
                        order_id,
                        side,
                        price: price.0,
                        qty: qty.0,
                        filled: 0,
                        busy: false,
                    });
                }
            }
            OrderUpdateKind::Fill {
                order_id,
                qty,
                maker,
                ..
            } => {
                obs.push(Observation::Fill { maker });
                if let Some(o) = self.live.iter_mut().find(|o| o.order_id == order_id) {
                    let spec = &self.market.pairs[o.pair].spec;
                    o.filled += spec.parse_qty(&qty).map_or(0, |q| q.0);
                }
            }
            OrderUpdateKind::Done { order_id, .. } => self.forget(order_id),
            OrderUpdateKind::Amended {
                order_id,
                price,
                qty,
                ..
            } => {
                if let Some(o) = self.live.iter_mut().find(|o| o.order_id == order_id) {
                    let spec = &self.market.pairs[o.pair].spec;
                    o.price = spec.parse_price(&price).map_or(o.price, |p| p.0);
                    o.qty = spec.parse_qty(&qty).map_or(o.qty, |q| q.0);
                    o.busy = false;
                }
            }
            OrderUpdateKind::Rejected {
                order_id: Some(order_id),
                command: Some(CommandKind::Cancel | CommandKind::Amend),
                code,
                ..
            } => self.release(Some(order_id), Some(code)),
            _ => {}
        }
    }

    fn on_verdict(&mut self, req_id: u64, kind: &OrderUpdateKind, obs: &mut Vec<Observation>) {
        let verdict = match kind {
            OrderUpdateKind::Accepted { .. }
            | OrderUpdateKind::Done { .. }
            | OrderUpdateKind::Amended { .. } => Verdict::Ok,
            OrderUpdateKind::Rejected { code, .. } => Verdict::Rejected(*code),
            OrderUpdateKind::Fill { .. } => return,
        };
        self.record_verdict(req_id, verdict, obs);
    }

    fn record_verdict(&mut self, req_id: u64, verdict: Verdict, obs: &mut Vec<Observation>) {
        let Some(p) = self.pending.get_mut(&req_id) else {
            return;
        };
        if p.verdict.is_some() {
            return; // fills and done events after the verdict
        }
        p.verdict = Some(verdict);
        obs.push(Observation::Verdict {
            phase: p.phase,
            scheduled: p.scheduled,
        });
        self.finish_if_done(req_id, obs);
    }

    fn finish_if_done(&mut self, id: u64, obs: &mut Vec<Observation>) {
        let done = self
            .pending
            .get(&id)
            .is_some_and(|p| p.acked && p.verdict.is_some());
        if done {
            let p = self.pending.remove(&id).expect("present");
            obs.push(Observation::Finished {
                phase: p.phase,
                outcome: verdict_outcome(p.verdict.expect("checked")),
            });
        }
    }

    /// A cancel or amend of `target` ended without changing it (or it is gone).
    fn release(&mut self, target: Option<u64>, code: Option<RejectReason>) {
        let Some(order_id) = target else { return };
        if code == Some(RejectReason::UnknownOrder) {
            self.forget(order_id);
        } else if let Some(o) = self.live.iter_mut().find(|o| o.order_id == order_id) {
            o.busy = false;
        }
    }

    fn forget(&mut self, order_id: u64) {
        if let Some(i) = self.live.iter().position(|o| o.order_id == order_id) {
            self.live.swap_remove(i);
        }
    }

    /// On an orderly close the gateway answered every request up to `last_read` and read none
    /// after it (ids are sent in increasing order): those are known not to have been acted on.
    fn unread_at_close(&mut self, last_read: u64, obs: &mut Vec<Observation>) {
        self.read_up_to = Some(last_read);
        let unread: Vec<u64> = self
            .pending
            .iter()
            .filter(|(id, p)| **id > last_read && !p.acked && p.verdict.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in unread {
            let p = self.pending.remove(&id).expect("present");
            self.release(p.target, None);
            obs.push(Observation::Finished {
                phase: p.phase,
                outcome: Outcome::UnreadAtClose,
            });
        }
    }

    /// At the drain deadline: every command still open gets its final bucket.
    /// Commands built after an orderly close was announced (queued at the writer, or written
    /// to the closed socket in vain) were never read by the gateway either.
    pub fn give_up(&mut self, obs: &mut Vec<Observation>) {
        self.settle_open(obs, |acked| {
            if acked {
                Outcome::Timeout
            } else {
                Outcome::Lost
            }
        });
    }

    /// The connection dropped and another will follow (`--reconnect`): what is still open will
    /// not be answered on it, and is not waited for. It ends as [`Outcome::ClosedInFlight`]
    /// (one with its verdict already in ends by that verdict, one the gateway said it never
    /// read as unread), and the orders its cancels and amends named can be named again.
    pub fn dropped(&mut self, obs: &mut Vec<Observation>) {
        self.settle_open(obs, |_| Outcome::ClosedInFlight);
        // The next connection's ids are read afresh.
        self.read_up_to = None;
    }

    /// Ends every open command: by its verdict when it has one, as unread when the gateway's
    /// orderly close said it never read it, else as `unanswered(acked)` says.
    fn settle_open(&mut self, obs: &mut Vec<Observation>, unanswered: impl Fn(bool) -> Outcome) {
        let read_up_to = self.read_up_to.unwrap_or(u64::MAX);
        let open: Vec<(u64, Pending)> = self.pending.drain().collect();
        for (id, p) in open {
            let outcome = match (p.verdict, p.acked) {
                (Some(v), _) => verdict_outcome(v),
                (None, false) if id > read_up_to => Outcome::UnreadAtClose,
                (None, acked) => unanswered(acked),
            };
            if p.verdict.is_none() {
                self.release(p.target, None);
            }
            obs.push(Observation::Finished {
                phase: p.phase,
                outcome,
            });
        }
    }
}

fn verdict_outcome(v: Verdict) -> Outcome {
    match v {
        Verdict::Ok => Outcome::Accepted,
        Verdict::Rejected(r) => Outcome::EngineRejected(r),
        Verdict::Refused(code) => Outcome::StageRejected(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::PairRegistry;
    use protocol::ws::{ErrorCode, Response, parse_request};

    fn trader(live_max: usize) -> Trader {
        let reg = PairRegistry::from_toml(include_str!("../../config/pairs.toml")).unwrap();
        Trader::new(Arc::new(Market::new(&reg)), Instant::now(), 3, live_max, 1)
    }

    fn slot(kind: Kind) -> Slot {
        Slot {
            scheduled: Instant::now(),
            kind,
            phase: 0,
        }
    }

    fn received(id: u64) -> String {
        format!(r#"{{"id":{id},"result":{{"status":"received","commands":1}}}}"#)
    }

    fn accepted(req_id: u64, order_id: u64, place: &Place) -> String {
        let push = Push::Orders(OrderUpdate {
            pair: place.pair.clone(),
            seq: order_id,
            req_id: Some(req_id),
            ts_ms: 1,
            kind: OrderUpdateKind::Accepted {
                order_id,
                client_order_id: None,
                side: place.side,
                order_type: place.order_type,
                price: place.price.clone(),
                qty: place.qty.clone(),
                tif: place.time_in_force(),
                post_only: false,
                filled_qty: "0".into(),
                remaining_qty: place.qty.clone(),
            },
        });
        serde_json::to_string(&push).unwrap()
    }

    fn finished(obs: &[Observation]) -> Vec<Outcome> {
        obs.iter()
            .filter_map(|o| match o {
                Observation::Finished { outcome, .. } => Some(*outcome),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_orders_push_takes_the_fast_path_and_parses_as_its_update() {
        let place = Place {
            pair: "BTC-EUR".into(),
            client_order_id: None,
            side: Side::Buy,
            order_type: OrderType::Limit,
            price: Some("100.00".into()),
            qty: "0.01".into(),
            tif: Some(TimeInForce::Gtc),
            post_only: false,
            stp: SelfTradePrevention::ExpireTaker,
            quote_qty: None,
        };
        let text = accepted(7, 42, &place);
        assert!(text.starts_with(ORDERS_PUSH_PREFIX), "{text}");
        let Ok(Push::Orders(full)) = serde_json::from_str::<Push>(&text) else {
            panic!("not an orders push: {text}")
        };
        assert_eq!(serde_json::from_str::<OrderUpdate>(&text).unwrap(), full);
    }

    #[test]
    fn requests_parse_as_the_gateway_parses_them() {
        let mut t = trader(100);
        let (text, kind) = t.build(slot(Kind::Limit), Instant::now());
        assert_eq!(kind, Kind::Limit);
        let req = parse_request(&text).unwrap();
        assert_eq!(req.id, 1);
        let RequestBody::Place(p) = req.body else {
            panic!("not a place: {text}")
        };
        assert_eq!(p.tif, Some(TimeInForce::Gtc));
        let (text, _) = t.build(slot(Kind::Marketable), Instant::now());
        let RequestBody::Place(p) = parse_request(&text).unwrap().body else {
            panic!("not a place")
        };
        assert_eq!(p.tif, Some(TimeInForce::Ioc));
    }

    #[test]
    fn cancel_without_own_orders_becomes_a_limit_order() {
        let mut t = trader(100);
        let (_, kind) = t.build(slot(Kind::Cancel), Instant::now());
        assert_eq!(kind, Kind::Limit);
        let (_, kind) = t.build(slot(Kind::Amend), Instant::now());
        assert_eq!(kind, Kind::Limit);
    }

    #[test]
    fn a_place_ends_accepted_after_ack_and_verdict_in_either_order() {
        let mut t = trader(100);
        let mut obs = Vec::new();
        let (text, _) = t.build(slot(Kind::Limit), Instant::now());
        let RequestBody::Place(place) = parse_request(&text).unwrap().body else {
            panic!()
        };
        t.handle_text(&received(1), &mut obs);
        assert!(finished(&obs).is_empty());
        t.handle_text(&accepted(1, 77, &place), &mut obs);
        assert_eq!(finished(&obs), vec![Outcome::Accepted]);
        assert_eq!((t.pending_len(), t.live_len()), (0, 1));

        // Verdict before the ack.
        obs.clear();
        let (text, _) = t.build(slot(Kind::Marketable), Instant::now());
        let RequestBody::Place(place) = parse_request(&text).unwrap().body else {
            panic!()
        };
        t.handle_text(&accepted(2, 78, &place), &mut obs);
        assert!(finished(&obs).is_empty());
        t.handle_text(&received(2), &mut obs);
        assert_eq!(finished(&obs), vec![Outcome::Accepted]);
        // IOC orders never join the resting set.
        assert_eq!(t.live_len(), 1);
    }

    #[test]
    fn cancels_name_live_orders_and_errors_release_them() {
        let mut t = trader(100);
        let mut obs = Vec::new();
        let (text, _) = t.build(slot(Kind::Limit), Instant::now());
        let RequestBody::Place(place) = parse_request(&text).unwrap().body else {
            panic!()
        };
        t.handle_text(&received(1), &mut obs);
        t.handle_text(&accepted(1, 500, &place), &mut obs);

        let (text, kind) = t.build(slot(Kind::Cancel), Instant::now());
        assert_eq!(kind, Kind::Cancel);
        let RequestBody::Cancel(c) = parse_request(&text).unwrap().body else {
            panic!()
        };
        assert_eq!(c.order_id, Some(500));
        // The only order is busy: the next cancel becomes a limit order.
        assert_eq!(t.build(slot(Kind::Cancel), Instant::now()).1, Kind::Limit);

        let shed = Response {
            id: Some(2),
            result: None,
            error: Some(ErrorBody::new(ErrorCode::Overloaded, "busy")),
        };
        obs.clear();
        t.handle_text(&serde_json::to_string(&shed).unwrap(), &mut obs);
        assert_eq!(
            finished(&obs),
            vec![Outcome::GatewayRejected(ErrorCode::Overloaded)]
        );
        // Released: it can be named again.
        assert_eq!(t.build(slot(Kind::Cancel), Instant::now()).1, Kind::Cancel);
    }

    #[test]
    fn at_the_resting_bound_a_limit_order_becomes_a_cancel() {
        let mut t = trader(1);
        let mut obs = Vec::new();
        let (text, _) = t.build(slot(Kind::Limit), Instant::now());
        let RequestBody::Place(place) = parse_request(&text).unwrap().body else {
            panic!()
        };
        t.handle_text(&accepted(1, 9, &place), &mut obs);
        assert_eq!(t.build(slot(Kind::Limit), Instant::now()).1, Kind::Cancel);
    }

    #[test]
    fn giving_up_splits_timeouts_from_lost() {
        let mut t = trader(100);
        let mut obs = Vec::new();
        t.build(slot(Kind::Limit), Instant::now());
        t.build(slot(Kind::Limit), Instant::now());
        t.handle_text(&received(1), &mut obs);
        obs.clear();
        t.give_up(&mut obs);
        let mut outcomes = finished(&obs);
        outcomes.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(outcomes, vec![Outcome::Lost, Outcome::Timeout]);
        assert_eq!(t.pending_len(), 0);
    }

    #[test]
    fn requests_the_gateway_never_read_before_closing_are_unread_not_lost() {
        let mut t = trader(100);
        let mut obs = Vec::new();
        for _ in 0..4 {
            t.build(slot(Kind::Limit), Instant::now());
        }
        t.handle_text(&received(1), &mut obs);
        let status = Push::Status {
            status: ConnectionStatus::Abuse,
            message: String::new(),
            frames_read: Some(2),
            last_request_id: Some(2),
        };
        t.handle_text(&serde_json::to_string(&status).unwrap(), &mut obs);
        assert_eq!(
            finished(&obs),
            vec![Outcome::UnreadAtClose; 2],
            "ids 3 and 4"
        );
        obs.clear();
        // Built after the status: the gateway never reads it.
        t.build(slot(Kind::Limit), Instant::now());
        t.give_up(&mut obs);
        let mut outcomes = finished(&obs);
        outcomes.sort_by_key(|o| format!("{o:?}"));
        // Id 2 was read and never answered: that is lost, whatever the status said.
        assert_eq!(
            outcomes,
            vec![Outcome::Lost, Outcome::Timeout, Outcome::UnreadAtClose]
        );
    }

    fn receipts(obs: &[Observation]) -> Vec<Receipt> {
        obs.iter()
            .filter_map(|o| match o {
                Observation::Receipt(r) => Some(*r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn each_received_answer_gives_one_receipt_naming_its_order() {
        let mut t = trader(100);
        let mut obs = Vec::new();
        let (text, _) = t.build(slot(Kind::Limit), Instant::now());
        let RequestBody::Place(place) = parse_request(&text).unwrap().body else {
            panic!("not a place")
        };
        let pair = t
            .market
            .pairs
            .iter()
            .position(|p| p.spec.symbol == place.pair)
            .unwrap();
        let with_order =
            r#"{"id":1,"result":{"status":"received","order_id":5348024557502465,"commands":1}}"#;
        t.handle_text(with_order, &mut obs);
        t.handle_text(with_order, &mut obs);
        assert_eq!(
            receipts(&obs),
            [Receipt {
                order_id: Some(5_348_024_557_502_465),
                pair,
                kind: CommandKind::Place
            }],
            "once, however often the answer comes"
        );
        t.handle_text(&accepted(1, 500, &place), &mut obs);

        // A cancel: the order it names, from the answer or else from the request.
        obs.clear();
        let (_, kind) = t.build(slot(Kind::Cancel), Instant::now());
        assert_eq!(kind, Kind::Cancel);
        t.handle_text(&received(2), &mut obs);
        assert_eq!(
            receipts(&obs),
            [Receipt {
                order_id: Some(500),
                pair,
                kind: CommandKind::Cancel
            }]
        );
        // Errors and the end-of-run cleanup give none.
        obs.clear();
        t.build(slot(Kind::Limit), Instant::now());
        let shed = Response {
            id: Some(3),
            result: None,
            error: Some(ErrorBody::new(ErrorCode::Overloaded, "busy")),
        };
        t.handle_text(&serde_json::to_string(&shed).unwrap(), &mut obs);
        let (cleanup, _answered) = t.cleanup_request();
        let cleanup_id = parse_request(&cleanup).unwrap().id;
        t.handle_text(&received(cleanup_id), &mut obs);
        assert!(receipts(&obs).is_empty(), "{obs:?}");
    }

    #[test]
    fn a_drop_settles_what_was_open_as_closed_in_flight_and_frees_its_orders() {
        let mut t = trader(100);
        let mut obs = Vec::new();
        let (text, _) = t.build(slot(Kind::Limit), Instant::now());
        let RequestBody::Place(place) = parse_request(&text).unwrap().body else {
            panic!("not a place")
        };
        t.handle_text(&received(1), &mut obs);
        t.handle_text(&accepted(1, 500, &place), &mut obs);
        // 2: a cancel acknowledged without its verdict; 3: a place never answered; 4: a place
        // whose verdict came without its `received`.
        assert_eq!(t.build(slot(Kind::Cancel), Instant::now()).1, Kind::Cancel);
        t.handle_text(&received(2), &mut obs);
        t.build(slot(Kind::Limit), Instant::now());
        let (text, _) = t.build(slot(Kind::Limit), Instant::now());
        let RequestBody::Place(place4) = parse_request(&text).unwrap().body else {
            panic!("not a place")
        };
        t.handle_text(&accepted(4, 501, &place4), &mut obs);
        obs.clear();
        t.dropped(&mut obs);
        let mut outcomes = finished(&obs);
        outcomes.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(
            outcomes,
            [
                Outcome::Accepted,
                Outcome::ClosedInFlight,
                Outcome::ClosedInFlight
            ],
            "never lost, never waited for"
        );
        assert_eq!(t.pending_len(), 0);
        assert!(
            t.live.iter().all(|o| !o.busy),
            "the cancelled order can be named again"
        );
    }

    #[test]
    fn after_a_drop_the_next_connections_requests_are_not_unread() {
        let mut t = trader(100);
        let mut obs = Vec::new();
        t.build(slot(Kind::Limit), Instant::now());
        let status = Push::Status {
            status: ConnectionStatus::ShuttingDown,
            message: String::new(),
            frames_read: Some(1),
            last_request_id: Some(1),
        };
        t.handle_text(&serde_json::to_string(&status).unwrap(), &mut obs);
        t.build(slot(Kind::Limit), Instant::now());
        obs.clear();
        t.dropped(&mut obs);
        let mut outcomes = finished(&obs);
        outcomes.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(
            outcomes,
            [Outcome::ClosedInFlight, Outcome::UnreadAtClose],
            "1 was read and never answered; 2 was written after the close began"
        );
        // On the next socket, an id above the old close's is an ordinary request.
        obs.clear();
        t.build(slot(Kind::Limit), Instant::now());
        t.give_up(&mut obs);
        assert_eq!(finished(&obs), [Outcome::Lost]);
    }

    #[test]
    fn engine_rejections_keep_their_code() {
        let mut t = trader(100);
        let mut obs = Vec::new();
        t.build(slot(Kind::Limit), Instant::now());
        t.handle_text(&received(1), &mut obs);
        let push = Push::Orders(OrderUpdate {
            pair: "BTC-EUR".into(),
            seq: 1,
            req_id: Some(1),
            ts_ms: 1,
            kind: OrderUpdateKind::Rejected {
                order_id: Some(1),
                client_order_id: None,
                command: Some(CommandKind::Place),
                code: RejectReason::BelowMinNotional,
                message: String::new(),
            },
        });
        t.handle_text(&serde_json::to_string(&push).unwrap(), &mut obs);
        assert_eq!(
            finished(&obs),
            vec![Outcome::EngineRejected(RejectReason::BelowMinNotional)]
        );
    }

    /// The account stage's refusal exactly as the gateway writes it (gateway/src/hub.rs,
    /// `StageRejection::push_json`): no `seq`, `shard` and `accounts_offset` instead.
    const STAGE_REFUSAL: &str = r#"{"channel":"orders","pair":"BTC-EUR","req_id":1,"type":"rejected","order_id":5348024557502465,"command":"place","command_id":5348024557502465,"code":"insufficient_funds","message":"EUR: 3000 needed, 0 available","shard":1,"accounts_offset":12,"ts_ms":1700000000555}"#;

    #[test]
    fn a_stage_refusal_is_a_rejection_by_its_code_before_or_after_the_ack() {
        let refusal: StageRejection = serde_json::from_str(STAGE_REFUSAL).unwrap();
        assert_eq!(
            refusal.push_json(),
            STAGE_REFUSAL,
            "the gateway's own serialization"
        );
        for refusal_first in [false, true] {
            let mut t = trader(100);
            let mut obs = Vec::new();
            t.build(slot(Kind::Limit), Instant::now());
            if refusal_first {
                t.handle_text(STAGE_REFUSAL, &mut obs);
                t.handle_text(&received(1), &mut obs);
            } else {
                t.handle_text(&received(1), &mut obs);
                t.handle_text(STAGE_REFUSAL, &mut obs);
            }
            assert_eq!(
                finished(&obs),
                vec![Outcome::StageRejected(ErrorCode::InsufficientFunds)]
            );
            assert!(
                obs.iter().any(|o| matches!(o, Observation::Verdict { .. })),
                "a refusal is the command's verdict"
            );
            t.give_up(&mut obs);
            assert_eq!(finished(&obs).len(), 1, "nothing left to time out or lose");
        }
        // A refusal of another connection's command, as a gateway that did not write it pushes
        // it (no pair, no req_id): nothing of ours, and nothing breaks.
        let mut t = trader(100);
        let mut obs = Vec::new();
        t.handle_text(
            r#"{"channel":"orders","type":"rejected","command_id":9,"code":"insufficient_funds","message":"m","shard":0,"accounts_offset":5}"#,
            &mut obs,
        );
        assert!(obs.is_empty(), "{obs:?}");
        // Through the slow path too (a frame that does not start with the channel).
        let mut t = trader(100);
        let mut obs = Vec::new();
        t.build(slot(Kind::Limit), Instant::now());
        t.handle_text(&received(1), &mut obs);
        let reordered = format!(
            r#"{{"req_id":1,{}"#,
            &STAGE_REFUSAL[1..].replace(r#""req_id":1,"#, "")
        );
        t.handle_text(&reordered, &mut obs);
        assert_eq!(
            finished(&obs),
            vec![Outcome::StageRejected(ErrorCode::InsufficientFunds)]
        );
    }

    #[test]
    fn a_refused_amend_frees_its_order_for_the_next_cancel_or_amend() {
        let mut t = trader(100);
        let mut obs = Vec::new();
        let (text, _) = t.build(slot(Kind::Limit), Instant::now());
        let RequestBody::Place(place) = parse_request(&text).unwrap().body else {
            panic!("not a place")
        };
        t.handle_text(&received(1), &mut obs);
        t.handle_text(&accepted(1, 77, &place), &mut obs);
        let (text, kind) = t.build(slot(Kind::Amend), Instant::now());
        assert_eq!(kind, Kind::Amend, "{text}");
        assert!(
            t.live.iter().all(|o| o.busy),
            "the amend names the only order"
        );
        t.handle_text(&received(2), &mut obs);
        let refusal = StageRejection {
            pair: Some(place.pair.clone()),
            req_id: Some(2),
            kind: protocol::ws::RejectedType::Rejected,
            order_id: Some(77),
            client_order_id: None,
            command: Some(CommandKind::Amend),
            command_id: Some(78),
            code: ErrorCode::InsufficientFunds,
            message: "not enough".into(),
            shard: 0,
            accounts_offset: 3,
            ts_ms: 1,
        };
        t.handle_text(&refusal.push_json(), &mut obs);
        assert_eq!(
            finished(&obs)[1..],
            [Outcome::StageRejected(ErrorCode::InsufficientFunds)]
        );
        assert!(t.live.iter().all(|o| !o.busy), "the order is free again");
    }

    #[test]
    fn stage_refusals_are_reported_as_rejections_by_code() {
        let mut b = crate::stats::Buckets::default();
        b.add(Outcome::StageRejected(ErrorCode::InsufficientFunds));
        b.add(Outcome::StageRejected(ErrorCode::InsufficientFunds));
        b.add(Outcome::EngineRejected(RejectReason::FokCannotFill));
        assert_eq!(b.errors().get("insufficient_funds"), Some(&2));
        assert_eq!(b.total(), 3);
        assert_eq!(b.lost + b.timeouts, 0);
    }
}
