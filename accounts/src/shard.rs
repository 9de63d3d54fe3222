//! One account shard's decisions, without I/O: an `accounts` line in, its effects out.
//!
//! [`ShardState::apply_line`] decodes one line of the shard's partition and applies it to the
//! ledger: a gateway's place or amend is reserved for and forwarded (with its [`Source`]) or
//! refused; an operator's transfer moves funds once per `transfer_id`; an engine's settlement
//! moves the funds of this shard's accounts once per pair `seq`. Everything it decides goes into
//! [`Effects`], which the actor publishes and commits. Deterministic: the same lines from the
//! same recovered state give the same effects, which is what makes a replay after a crash safe.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use accounts_core::{
    Amend, AssetId, Balance, Fill, FillLeg, Ledger, LedgerCommand, LedgerError, LedgerEvent,
    Liquidity, Release, ReleaseReason, Reserve, Transfer,
};
use opentelemetry::KeyValue;
use protocol::accounts::{
    AccountEventRecord, AccountRecord, BalanceLine, LINES_PER_RECORD_MAX, Refusal, SettleRecord,
    Source, TransferDirection, TransferRecord, account_shard, position,
};
use protocol::records::{OrderRecord, RECORD_VERSION, command_lines};
use protocol::{
    AccountId, Command, CommandKind, Event, EventBody, OrderId, OrderRef, PairId, PairRegistry,
    Price, Qty, Side,
};

/// What the shard keeps per open order besides the ledger's reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderMeta {
    pub client_order_id: Option<String>,
    /// While an amend is on its way to the book: the terms before it, restored if the book
    /// refuses it.
    pub amend_from: Option<(Price, Qty)>,
}

/// A transfer as stored: applied, or refused with a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRow {
    pub record: TransferRecord,
    pub position: i64,
    pub refused: Option<String>,
}

/// One ledger row with its place in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerRow {
    pub position: i64,
    pub idx: u32,
    pub event: LedgerEvent,
}

/// Everything a run of lines decided, for the actor to publish and commit.
#[derive(Debug, Default)]
pub struct Effects {
    /// Commands reserved for, to the pair's `orders` partition, in order.
    pub forwards: Vec<(PairId, OrderRecord)>,
    /// Answers to `account_events`, in order.
    pub answers: Vec<AccountEventRecord>,
    pub ledger: Vec<LedgerRow>,
    /// Balances changed, with the position of the line that last changed each.
    pub balances: BTreeMap<(AccountId, AssetId), (Balance, i64)>,
    pub pair_seqs: BTreeMap<PairId, u64>,
    pub transfers: Vec<TransferRow>,
    /// Lines that changed nothing because they were repeats (transfers, settlements).
    pub repeats: u64,
    /// Settlement inputs the ledger found inconsistent with its reservations.
    pub inconsistent: u64,
    /// Spans of the traced commands, ended once the batch is handed to Kafka.
    pub traces: Vec<infra::trace::CmdSpan>,
}

impl Effects {
    /// Every answer of the batch, in position order: the refusals and transfers, and for every
    /// balance the batch changed, its value at the batch's end, in a record at the position of
    /// the line that last changed it (joining that line's own answer, if it has one). Positions
    /// stay unique and increasing, so a consumer dropping those at or below the last it saw
    /// drops only repeats.
    pub fn balance_answers(
        &self,
        shard: u32,
        assets: &accounts_core::AssetRegistry,
    ) -> Vec<AccountEventRecord> {
        let mut by_position: BTreeMap<i64, AccountEventRecord> = self
            .answers
            .iter()
            .map(|a| {
                let mut a = a.clone();
                a.balances.clear();
                (a.accounts_offset, a)
            })
            .collect();
        for (&(account_id, asset_id), &(b, position)) in &self.balances {
            let record = by_position
                .entry(position)
                .or_insert_with(|| AccountEventRecord {
                    v: RECORD_VERSION,
                    shard,
                    accounts_offset: position,
                    command_id: None,
                    ts_ns: None,
                    account_id: None,
                    transfer_id: None,
                    refusal: None,
                    balances: Vec::new(),
                });
            record.balances.push(BalanceLine {
                account_id,
                asset: assets
                    .get(asset_id)
                    .map_or_else(|| format!("#{}", asset_id.0), |a| a.symbol.clone()),
                available_units: b.available_units,
                reserved_units: b.reserved_units,
            });
        }
        by_position.into_values().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.forwards.is_empty()
            && self.answers.is_empty()
            && self.ledger.is_empty()
            && self.pair_seqs.is_empty()
            && self.transfers.is_empty()
    }
}

/// One shard's state: the ledger of its accounts and what it needs to drop repeats.
pub struct ShardState {
    pub shard: u32,
    pub shards: u32,
    pairs: Arc<PairRegistry>,
    pub ledger: Ledger,
    pub pair_seqs: BTreeMap<PairId, u64>,
    pub transfers_seen: HashSet<u64>,
    pub meta: BTreeMap<OrderId, OrderMeta>,
    clients: HashMap<(AccountId, PairId, String), OrderId>,
    events: Vec<LedgerEvent>,
    /// Re-applying committed lines after a snapshot (recovery): no trace spans.
    pub replaying: bool,
}

/// Whom an answer is for: a gateway's command, an operator's transfer, or nobody in particular
/// (a settlement's balances).
#[derive(Debug, Clone, Copy, Default)]
struct Answering {
    command_id: Option<u64>,
    ts_ns: Option<u64>,
    account_id: Option<AccountId>,
    transfer_id: Option<u64>,
}

/// Why a line was refused, before the ledger saw it.
fn refusal(code: &str, message: impl Into<String>) -> Refusal {
    Refusal {
        code: code.to_owned(),
        message: message.into(),
    }
}

impl ShardState {
    pub fn new(shard: u32, shards: u32, pairs: Arc<PairRegistry>, ledger: Ledger) -> ShardState {
        ShardState {
            shard,
            shards,
            pairs,
            ledger,
            pair_seqs: BTreeMap::new(),
            transfers_seen: HashSet::new(),
            meta: BTreeMap::new(),
            clients: HashMap::new(),
            replaying: false,
            events: Vec::new(),
        }
    }

    /// Restores an open order's meta (recovery); the ledger holds its reservation.
    pub fn restore_meta(&mut self, order_id: OrderId, meta: OrderMeta) {
        if let (Some(cid), Some(r)) = (&meta.client_order_id, self.ledger.reservation(order_id)) {
            self.clients
                .insert((r.account_id, r.pair_id, cid.clone()), order_id);
        }
        self.meta.insert(order_id, meta);
    }

    fn owns(&self, account_id: AccountId) -> bool {
        account_shard(account_id, self.shards) == self.shard
    }

    /// The first part of what a snapshot holds (`store::Snapshot`) in which `self` and `other`
    /// differ: "balances", "reservations", "open orders' client ids or amends", "settled
    /// seqs"; `None` when they hold the same.
    pub fn snapshot_difference(&self, other: &ShardState) -> Option<&'static str> {
        if !self.ledger.balances().eq(other.ledger.balances()) {
            return Some("balances");
        }
        if !self.ledger.reservations().eq(other.ledger.reservations()) {
            return Some("reservations");
        }
        if self.meta != other.meta {
            return Some("open orders' client ids or amends");
        }
        if self.pair_seqs != other.pair_seqs {
            return Some("settled seqs");
        }
        None
    }

    /// Applies the lines of the `accounts` record at `offset` in order (at most
    /// [`LINES_PER_RECORD_MAX`]; a record without any line is one unreadable line). Returns how
    /// many it applied and the position of the last: what the shard has read up to.
    pub fn apply_record(
        &mut self,
        offset: i64,
        payload: Option<&[u8]>,
        fx: &mut Effects,
    ) -> (u64, i64) {
        let lines = command_lines(payload);
        let kept = lines.len().min(LINES_PER_RECORD_MAX);
        for (i, line) in lines.into_iter().take(kept).enumerate() {
            self.apply_line(position(offset, i), line, fx);
        }
        (kept as u64, position(offset, kept - 1))
    }

    /// Applies one line at `position`; `None` is a line that could not be read at all.
    pub fn apply_line(&mut self, position: i64, line: Option<&[u8]>, fx: &mut Effects) {
        let record = match line.map(AccountRecord::decode) {
            Some(Ok(r)) => r,
            Some(Err(err)) => {
                tracing::warn!(shard = self.shard, position, error = %err, "poison accounts line");
                return;
            }
            None => return,
        };
        match record {
            AccountRecord::Order(rec) => self.order(position, rec, fx),
            AccountRecord::Transfer(t) => self.transfer(position, t, fx),
            AccountRecord::Settle(s) => self.settle(position, s, fx),
        }
    }

    /// Runs one ledger command; its rows join the effects and `touched` (for the answer).
    fn ledger_apply(
        &mut self,
        position: i64,
        cmd: &LedgerCommand,
        fx: &mut Effects,
        touched: &mut BTreeMap<(AccountId, AssetId), Balance>,
    ) -> Result<(), LedgerError> {
        self.events.clear();
        self.ledger.apply(cmd, &mut self.events)?;
        for e in &self.events {
            let idx = fx
                .ledger
                .last()
                .filter(|r| r.position == position)
                .map_or(0, |r| r.idx + 1);
            fx.ledger.push(LedgerRow {
                position,
                idx,
                event: *e,
            });
            fx.balances
                .insert((e.account_id, e.asset_id), (e.balance, position));
            touched.insert((e.account_id, e.asset_id), e.balance);
        }
        Ok(())
    }

    fn answer(
        &self,
        position: i64,
        to: Answering,
        refusal: Option<Refusal>,
        touched: BTreeMap<(AccountId, AssetId), Balance>,
        fx: &mut Effects,
    ) {
        let Answering {
            command_id,
            ts_ns,
            account_id,
            transfer_id,
        } = to;
        // A line answers on its own only when refused or a transfer: the rest of a batch's
        // balance changes go out once per (account, asset), as of the batch's end
        // (`Effects::balance_answers`), so an active account costs one line, not one per order.
        if refusal.is_none() && transfer_id.is_none() {
            return;
        }
        let balances = touched
            .into_iter()
            .map(|((account_id, asset_id), b)| BalanceLine {
                account_id,
                asset: self.asset_symbol(asset_id),
                available_units: b.available_units,
                reserved_units: b.reserved_units,
            })
            .collect();
        fx.answers.push(AccountEventRecord {
            v: RECORD_VERSION,
            shard: self.shard,
            accounts_offset: position,
            command_id,
            ts_ns,
            account_id,
            transfer_id,
            refusal,
            balances,
        });
    }

    fn asset_symbol(&self, asset_id: AssetId) -> String {
        self.ledger
            .assets()
            .get(asset_id)
            .map_or_else(|| format!("#{}", asset_id.0), |a| a.symbol.clone())
    }

    // ---- a gateway's command -------------------------------------------------------------

    fn order(&mut self, position: i64, mut rec: OrderRecord, fx: &mut Effects) {
        let mut touched = BTreeMap::new();
        let to = Answering {
            command_id: Some(rec.command_id),
            ts_ns: Some(rec.ts_ns),
            account_id: Some(rec.command.account_id()),
            transfer_id: None,
        };
        // A traced command: `accounts.command` from its line's read to the batch handed to
        // Kafka; the engine's span continues it.
        // A replay re-applies lines whose spans were exported when they were decided.
        let span = rec
            .tp
            .as_deref()
            .filter(|_| !self.replaying)
            .and_then(|tp| {
                infra::trace::start("accounts.command", Some(tp), std::time::SystemTime::now())
            });
        let decided = self.reserve_for(position, &rec, fx, &mut touched);
        if let Some(span) = span {
            let refused = decided.as_ref().err().map(|r| r.code.clone());
            tracing::debug!(
                target: "command",
                trace_id = %span.trace_id(),
                pair = %rec.pair,
                account_id = rec.command.account_id().0,
                order_id = rec.command.order_id().map(|o| o.0),
                command_id = rec.command_id,
                shard = self.shard,
                position,
                refused = refused.as_deref(),
                "command reserved"
            );
            span.set_attribute(KeyValue::new("shard", i64::from(self.shard)));
            span.set_attribute(KeyValue::new("accounts_position", position));
            match refused {
                Some(code) => span.set_attribute(KeyValue::new("refused", code)),
                None => rec.tp = Some(span.traceparent()),
            }
            fx.traces.push(span);
        }
        match decided {
            Ok(pair_id) => {
                rec.src = Some(Source {
                    shard: self.shard,
                    offset: position,
                });
                fx.forwards.push((pair_id, rec));
                self.answer(position, to, None, touched, fx);
            }
            Err(refused) => self.answer(position, to, Some(refused), touched, fx),
        }
    }

    /// Reserves what the command needs; the pair to forward it to, or why not.
    fn reserve_for(
        &mut self,
        position: i64,
        rec: &OrderRecord,
        fx: &mut Effects,
        touched: &mut BTreeMap<(AccountId, AssetId), Balance>,
    ) -> Result<PairId, Refusal> {
        let Some(spec) = self.pairs.by_symbol(&rec.pair) else {
            return Err(refusal(
                "unknown_pair",
                format!("no pair {:?} is traded", rec.pair),
            ));
        };
        let pair_id = spec.id;
        let account_id = rec.command.account_id();
        if !self.owns(account_id) {
            return Err(refusal(
                "wrong_shard",
                format!(
                    "account {} belongs to shard {}, not {}",
                    account_id.0,
                    account_shard(account_id, self.shards),
                    self.shard
                ),
            ));
        }
        let ledger_refusal = |e: LedgerError| refusal(e.code(), e.to_string());
        match &rec.command {
            Command::Place(p) => {
                let cmd = LedgerCommand::Reserve(Reserve {
                    order_id: p.order_id,
                    account_id,
                    pair_id,
                    side: p.side,
                    order_type: p.order_type,
                    price: p.price,
                    qty: p.qty,
                    quote_budget_notional: p.quote_budget,
                });
                self.ledger_apply(position, &cmd, fx, touched)
                    .map_err(ledger_refusal)?;
                let meta = OrderMeta {
                    client_order_id: p.client_order_id.clone(),
                    amend_from: None,
                };
                if let Some(cid) = &p.client_order_id {
                    self.clients
                        .entry((account_id, pair_id, cid.clone()))
                        .or_insert(p.order_id);
                }
                self.meta.insert(p.order_id, meta);
            }
            Command::Amend(a) => {
                let order_id = self
                    .resolve(account_id, pair_id, &a.target)
                    .ok_or_else(|| {
                        refusal(
                            "unknown_order",
                            "no open order of this account matches that reference",
                        )
                    })?;
                let r = *self.ledger.reservation(order_id).expect("resolved");
                let meta = self.meta.entry(order_id).or_insert(OrderMeta {
                    client_order_id: None,
                    amend_from: None,
                });
                if meta.amend_from.is_some() {
                    return Err(refusal(
                        "amend_pending",
                        "an earlier amend of this order has not reached the book yet",
                    ));
                }
                let Some(old_price) = r.limit_price else {
                    return Err(refusal(
                        "invalid_amend",
                        "a market order never rests, so it cannot be amended",
                    ));
                };
                // Until the book applies (or refuses) the amend it may still trade the order at
                // its old terms: hold enough for both.
                let new_price = a.new_price.unwrap_or(old_price);
                let new_qty = a.new_qty.unwrap_or(r.qty);
                let hold_price = if r.side == Side::Buy {
                    old_price.max(new_price)
                } else {
                    new_price
                };
                let hold = LedgerCommand::Amend(Amend {
                    order_id,
                    account_id,
                    new_price: Some(hold_price),
                    new_qty: Some(r.qty.max(new_qty)),
                });
                self.ledger_apply(position, &hold, fx, touched)
                    .map_err(ledger_refusal)?;
                if let Some(meta) = self.meta.get_mut(&order_id) {
                    meta.amend_from = Some((old_price, r.qty));
                }
            }
            // Cancels go straight to `orders`; one that comes this way is passed on as is.
            Command::Cancel(_) | Command::CancelAll(_) => {}
        }
        Ok(pair_id)
    }

    fn resolve(
        &self,
        account_id: AccountId,
        pair_id: PairId,
        target: &OrderRef,
    ) -> Option<OrderId> {
        let id = match target {
            OrderRef::Id(id) => *id,
            OrderRef::ClientId(cid) => *self.clients.get(&(account_id, pair_id, cid.clone()))?,
        };
        self.ledger
            .reservation(id)
            .filter(|r| r.account_id == account_id && r.pair_id == pair_id)
            .map(|_| id)
    }

    // ---- an operator's transfer ----------------------------------------------------------

    fn transfer(&mut self, position: i64, t: TransferRecord, fx: &mut Effects) {
        if !self.transfers_seen.insert(t.transfer_id) {
            fx.repeats += 1;
            return;
        }
        let mut touched = BTreeMap::new();
        let decided = match self.ledger.assets().by_symbol(&t.asset) {
            None => Err(refusal(
                "unknown_asset",
                format!("no asset {:?} is traded", t.asset),
            )),
            Some(_) if !self.owns(t.account_id) => Err(refusal(
                "wrong_shard",
                format!("account {} is not in shard {}", t.account_id.0, self.shard),
            )),
            Some(asset) => {
                let transfer = Transfer {
                    transfer_id: t.transfer_id,
                    account_id: t.account_id,
                    asset_id: asset.id,
                    amount_units: t.amount_units,
                };
                let cmd = match t.direction {
                    TransferDirection::Deposit => LedgerCommand::Deposit(transfer),
                    TransferDirection::Withdrawal => LedgerCommand::Withdraw(transfer),
                };
                self.ledger_apply(position, &cmd, fx, &mut touched)
                    .map_err(|e| refusal(e.code(), e.to_string()))
            }
        };
        let refused = decided.as_ref().err().map(|r| r.code.clone());
        let to = Answering {
            command_id: None,
            ts_ns: None,
            account_id: Some(t.account_id),
            transfer_id: Some(t.transfer_id),
        };
        fx.transfers.push(TransferRow {
            record: t,
            position,
            refused,
        });
        self.answer(position, to, decided.err(), touched, fx);
    }

    // ---- an engine's settlement ----------------------------------------------------------

    fn settle(&mut self, position: i64, s: SettleRecord, fx: &mut Effects) {
        let Some(spec) = self.pairs.by_symbol(&s.pair) else {
            tracing::error!(shard = self.shard, pair = %s.pair, "settlement of an unknown pair");
            fx.inconsistent += 1;
            return;
        };
        let pair_id = spec.id;
        if self
            .pair_seqs
            .get(&pair_id)
            .is_some_and(|&last| s.seq <= last)
        {
            fx.repeats += 1;
            return;
        }
        let mut touched = BTreeMap::new();
        for event in &s.events {
            self.settle_event(position, pair_id, event, fx, &mut touched);
        }
        self.pair_seqs.insert(pair_id, s.seq);
        fx.pair_seqs.insert(pair_id, s.seq);
        self.answer(position, Answering::default(), None, touched, fx);
    }

    fn settle_event(
        &mut self,
        position: i64,
        pair_id: PairId,
        event: &Event,
        fx: &mut Effects,
        touched: &mut BTreeMap<(AccountId, AssetId), Balance>,
    ) {
        let result = match &event.body {
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
                let fill = Fill {
                    pair_id,
                    trade_id: *trade_id,
                    price: *price,
                    qty: *qty,
                    maker_side: taker_side.opposite(),
                    maker_order_id: *maker_order_id,
                    maker_account_id: *maker_account_id,
                    taker_order_id: *taker_order_id,
                    taker_account_id: *taker_account_id,
                };
                let mut result = Ok(());
                for (account, liquidity) in [
                    (*maker_account_id, Liquidity::Maker),
                    (*taker_account_id, Liquidity::Taker),
                ] {
                    if self.owns(account) {
                        let leg = LedgerCommand::FillLeg(FillLeg { fill, liquidity });
                        result = result.and(self.ledger_apply(position, &leg, fx, touched));
                    }
                }
                result
            }
            EventBody::Done {
                order_id,
                account_id,
                reason,
                ..
            } if self.owns(*account_id) => self.release(
                position,
                *order_id,
                *account_id,
                (*reason).into(),
                fx,
                touched,
            ),
            EventBody::Rejected {
                order_id,
                account_id: Some(account_id),
                client_order_id,
                command: Some(kind @ (CommandKind::Place | CommandKind::Amend)),
                ..
            } if self.owns(*account_id) => {
                let target = match (order_id, client_order_id) {
                    (Some(id), _) => Some(*id),
                    (None, Some(cid)) => self
                        .clients
                        .get(&(*account_id, pair_id, cid.clone()))
                        .copied(),
                    (None, None) => None,
                };
                match (kind, target) {
                    (CommandKind::Place, Some(id)) => {
                        // (The ledger refuses a duplicate order id before forwarding, so a
                        // reservation under this id is this place's.)
                        let reserved_here = self.ledger.reservation(id).is_some();
                        if reserved_here {
                            self.release(
                                position,
                                id,
                                *account_id,
                                ReleaseReason::Rejected,
                                fx,
                                touched,
                            )
                        } else {
                            Ok(())
                        }
                    }
                    (CommandKind::Amend, Some(id)) => {
                        self.end_amend(position, id, *account_id, None, fx, touched)
                    }
                    _ => Ok(()),
                }
            }
            EventBody::Amended {
                order_id,
                account_id,
                price,
                qty,
                ..
            } if self.owns(*account_id) => self.end_amend(
                position,
                *order_id,
                *account_id,
                Some((*price, *qty)),
                fx,
                touched,
            ),
            _ => Ok(()),
        };
        match result {
            Ok(()) => {}
            // An order placed before the stage reserved anything: nothing to move.
            Err(LedgerError::UnknownOrder { .. }) => {}
            Err(err) => {
                fx.inconsistent += 1;
                tracing::error!(
                    shard = self.shard,
                    pair_id,
                    seq = event.seq,
                    code = err.code(),
                    error = %err,
                    "a settlement contradicts the reservations; the balances are left as they were"
                );
            }
        }
    }

    fn release(
        &mut self,
        position: i64,
        order_id: OrderId,
        account_id: AccountId,
        reason: ReleaseReason,
        fx: &mut Effects,
        touched: &mut BTreeMap<(AccountId, AssetId), Balance>,
    ) -> Result<(), LedgerError> {
        let pair_id = self.ledger.reservation(order_id).map(|r| r.pair_id);
        let cmd = LedgerCommand::Release(Release {
            order_id,
            account_id,
            reason,
        });
        self.ledger_apply(position, &cmd, fx, touched)?;
        if let (Some(meta), Some(pair_id)) = (self.meta.remove(&order_id), pair_id)
            && let Some(cid) = meta.client_order_id
        {
            let key = (account_id, pair_id, cid);
            if self.clients.get(&key) == Some(&order_id) {
                self.clients.remove(&key);
            }
        }
        Ok(())
    }

    /// The book applied an amend (`terms`: its new price and total quantity) or refused it
    /// (`None`: back to the terms before it). Either only releases what the hold took.
    fn end_amend(
        &mut self,
        position: i64,
        order_id: OrderId,
        account_id: AccountId,
        terms: Option<(Price, Qty)>,
        fx: &mut Effects,
        touched: &mut BTreeMap<(AccountId, AssetId), Balance>,
    ) -> Result<(), LedgerError> {
        let from = self
            .meta
            .get_mut(&order_id)
            .and_then(|m| m.amend_from.take());
        let Some((price, qty)) = terms.or(from) else {
            return Ok(());
        };
        let cmd = LedgerCommand::Amend(Amend {
            order_id,
            account_id,
            new_price: Some(price),
            new_qty: Some(qty),
        });
        self.ledger_apply(position, &cmd, fx, touched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accounts_core::{AssetRegistry, LedgerConfig};
    use protocol::{
        AmendOrder, CancelOrder, DoneReason, OrderType, PlaceOrder, SelfTradePrevention,
        TimeInForce,
    };

    const PAIRS: &str = include_str!("../../config/pairs.toml");
    const SHARDS: u32 = 2;

    fn shard(n: u32) -> ShardState {
        let pairs = Arc::new(PairRegistry::from_toml(PAIRS).unwrap());
        let config = LedgerConfig {
            fee_account_id: AccountId(0),
            pair_fees: BTreeMap::new(),
        };
        let ledger = Ledger::new(AssetRegistry::from_pairs(&pairs), config).unwrap();
        ShardState::new(n, SHARDS, pairs, ledger)
    }

    fn line(rec: &AccountRecord) -> Vec<u8> {
        rec.encode()
    }

    fn deposit(id: u64, account: u64, asset: &str, units: i128) -> AccountRecord {
        AccountRecord::Transfer(TransferRecord {
            v: 1,
            transfer_id: id,
            account_id: AccountId(account),
            direction: TransferDirection::Deposit,
            asset: asset.into(),
            amount_units: units,
            ts_ns: 0,
        })
    }

    fn order(command_id: u64, pair: &str, command: Command) -> AccountRecord {
        AccountRecord::Order(OrderRecord {
            v: 1,
            command_id,
            pair: pair.into(),
            ts_ns: 1,
            src: None,
            tp: None,
            command,
        })
    }

    fn buy(id: u64, account: u64, price: i64, qty: i64) -> Command {
        Command::Place(PlaceOrder {
            order_id: OrderId(id),
            account_id: AccountId(account),
            client_order_id: Some(format!("c{id}")),
            side: Side::Buy,
            order_type: OrderType::Limit,
            price: Some(Price(price)),
            qty: Qty(qty),
            tif: TimeInForce::Gtc,
            post_only: false,
            stp: SelfTradePrevention::ExpireTaker,
            quote_budget: None,
        })
    }

    fn sell(id: u64, account: u64, price: i64, qty: i64) -> Command {
        match buy(id, account, price, qty) {
            Command::Place(p) => Command::Place(PlaceOrder {
                side: Side::Sell,
                ..p
            }),
            _ => unreachable!(),
        }
    }

    fn settle(pair: &str, seq: u64, bodies: Vec<EventBody>) -> AccountRecord {
        let events = bodies
            .into_iter()
            .map(|body| Event {
                seq,
                ts_ns: 1,
                body,
            })
            .collect();
        AccountRecord::Settle(SettleRecord {
            v: 1,
            pair: pair.into(),
            seq,
            events,
        })
    }

    fn run(s: &mut ShardState, at: i64, recs: &[AccountRecord]) -> Effects {
        let mut fx = Effects::default();
        for (i, r) in recs.iter().enumerate() {
            s.apply_line(protocol::accounts::position(at, i), Some(&line(r)), &mut fx);
        }
        fx
    }

    fn eur(s: &ShardState) -> AssetId {
        s.ledger.assets().by_symbol("EUR").unwrap().id
    }

    // BTC-EUR: price 2 decimals, qty 8; EUR unit 10 decimals, so a notional unit is one EUR unit.
    // Account 2 is in shard 0, account 3 in shard 1 (of 2).

    #[test]
    fn two_orders_in_two_pairs_cannot_spend_the_same_money() {
        let mut s = shard(0);
        let thousand_eur = 1000 * 10_i128.pow(10);
        let fx = run(
            &mut s,
            0,
            &[
                deposit(1, 2, "EUR", thousand_eur),
                // 800 EUR each: 0.01 BTC at 80000.00, 0.4 ETH at 2000.00.
                order(10, "BTC-EUR", buy(100, 2, 8_000_000, 1_000_000)),
                order(11, "ETH-EUR", buy(101, 2, 200_000, 40_000_000)),
            ],
        );
        assert_eq!(fx.forwards.len(), 1, "only the first is forwarded");
        let (pair, fwd) = &fx.forwards[0];
        assert_eq!(*pair, 0);
        assert_eq!(
            fwd.src,
            Some(Source {
                shard: 0,
                offset: protocol::accounts::position(0, 1)
            })
        );
        let refused: Vec<_> = fx
            .answers
            .iter()
            .filter_map(|a| a.refusal.as_ref().map(|r| (a.command_id, r.code.as_str())))
            .collect();
        assert_eq!(refused, [(Some(11), "insufficient_funds")]);
        let b = s.ledger.balance(AccountId(2), eur(&s));
        assert_eq!(b.available_units, 200 * 10_i128.pow(10));
        assert_eq!(b.reserved_units, 800 * 10_i128.pow(10));
    }

    #[test]
    fn repeats_of_transfers_and_settlements_change_nothing() {
        let mut s = shard(0);
        run(&mut s, 0, &[deposit(1, 2, "EUR", 500)]);
        let fx = run(&mut s, 1, &[deposit(1, 2, "EUR", 500)]);
        assert_eq!(fx.repeats, 1);
        assert!(fx.ledger.is_empty() && fx.answers.is_empty());
        assert_eq!(s.ledger.balance(AccountId(2), eur(&s)).available_units, 500);

        run(
            &mut s,
            2,
            &[
                deposit(2, 2, "EUR", 10_i128.pow(12)),
                order(1, "BTC-EUR", buy(7, 2, 10_000, 1_000)),
            ],
        );
        let done = EventBody::Done {
            order_id: OrderId(7),
            account_id: AccountId(2),
            client_order_id: None,
            reason: DoneReason::Cancelled,
            filled_qty: Qty(0),
            remaining_qty: Qty(1_000),
        };
        let fx = run(&mut s, 3, &[settle("BTC-EUR", 5, vec![done.clone()])]);
        assert_eq!(fx.pair_seqs.get(&0), Some(&5));
        assert!(s.ledger.reservation(OrderId(7)).is_none());
        let before = s.ledger.balance(AccountId(2), eur(&s));
        let fx = run(&mut s, 4, &[settle("BTC-EUR", 5, vec![done])]);
        assert_eq!((fx.repeats, fx.inconsistent), (1, 0));
        assert_eq!(s.ledger.balance(AccountId(2), eur(&s)), before);
        assert_eq!(before.reserved_units, 0);
    }

    #[test]
    fn a_trade_across_shards_settles_each_side_in_its_own_shard() {
        let (mut s0, mut s1) = (shard(0), shard(1));
        // Account 2 (shard 0) sells 0.001 BTC to account 3 (shard 1) at 100.00 EUR.
        run(
            &mut s0,
            0,
            &[
                deposit(1, 2, "BTC", 10_i128.pow(14)),
                order(1, "BTC-EUR", sell(20, 2, 10_000, 100_000)),
            ],
        );
        run(
            &mut s1,
            0,
            &[
                deposit(2, 3, "EUR", 10_i128.pow(13)),
                order(2, "BTC-EUR", buy(21, 3, 10_000, 100_000)),
            ],
        );
        let trade = EventBody::Trade {
            trade_id: 1,
            price: Price(10_000),
            qty: Qty(100_000),
            taker_side: Side::Buy,
            maker_order_id: OrderId(20),
            maker_account_id: AccountId(2),
            taker_order_id: OrderId(21),
            taker_account_id: AccountId(3),
            maker_filled_qty: None,
            maker_remaining_qty: None,
            maker_client_order_id: None,
            taker_filled_qty: None,
            taker_remaining_qty: None,
            taker_client_order_id: None,
        };
        let done = |id, acc| EventBody::Done {
            order_id: OrderId(id),
            account_id: AccountId(acc),
            client_order_id: None,
            reason: DoneReason::Filled,
            filled_qty: Qty(100_000),
            remaining_qty: Qty(0),
        };
        let f0 = run(
            &mut s0,
            1,
            &[settle("BTC-EUR", 3, vec![trade.clone(), done(20, 2)])],
        );
        let f1 = run(
            &mut s1,
            1,
            &[settle("BTC-EUR", 3, vec![trade, done(21, 3)])],
        );
        assert_eq!((f0.inconsistent, f1.inconsistent), (0, 0));
        // 100.00 EUR x 0.001 BTC = 0.1 EUR.
        let btc = s0.ledger.assets().by_symbol("BTC").unwrap().id;
        assert_eq!(
            s0.ledger.balance(AccountId(2), eur(&s0)).available_units,
            10_i128.pow(9)
        );
        assert_eq!(
            s1.ledger.balance(AccountId(3), btc).available_units,
            10_i128.pow(11)
        );
        assert_eq!(
            s1.ledger.balance(AccountId(3), eur(&s1)).available_units,
            10_i128.pow(13) - 10_i128.pow(9)
        );
        assert!(s0.ledger.reservations().next().is_none());
        assert!(s1.ledger.reservations().next().is_none());
    }

    #[test]
    fn an_amend_holds_for_both_terms_until_the_book_decides() {
        let mut s = shard(0);
        let units = 10_i128.pow(12); // 100 EUR
        run(
            &mut s,
            0,
            &[
                deposit(1, 2, "EUR", units),
                order(1, "BTC-EUR", buy(30, 2, 10_000, 100_000)),
            ],
        );
        // 0.1 EUR reserved; amend to 200.00 x 0.0005: hold 200.00 x 0.001 = 0.2 EUR.
        let amend = Command::Amend(AmendOrder {
            account_id: AccountId(2),
            target: OrderRef::ClientId("c30".into()),
            new_price: Some(Price(20_000)),
            new_qty: Some(Qty(50_000)),
        });
        let fx = run(&mut s, 1, &[order(2, "BTC-EUR", amend.clone())]);
        assert_eq!(fx.forwards.len(), 1);
        assert_eq!(
            s.ledger.balance(AccountId(2), eur(&s)).reserved_units,
            2 * 10_i128.pow(9)
        );
        let again = run(&mut s, 2, &[order(3, "BTC-EUR", amend)]);
        assert_eq!(
            again.answers[0].refusal.as_ref().unwrap().code,
            "amend_pending"
        );
        // The book applies it: exactly 200.00 x 0.0005 = 0.1 EUR held.
        let amended = EventBody::Amended {
            order_id: OrderId(30),
            account_id: AccountId(2),
            client_order_id: None,
            price: Price(20_000),
            qty: Qty(50_000),
            remaining_qty: Qty(50_000),
            priority_kept: false,
        };
        run(&mut s, 3, &[settle("BTC-EUR", 9, vec![amended])]);
        assert_eq!(
            s.ledger.balance(AccountId(2), eur(&s)).reserved_units,
            10_i128.pow(9)
        );
        // A refused amend goes back to the terms before it.
        let up = Command::Amend(AmendOrder {
            account_id: AccountId(2),
            target: OrderRef::Id(OrderId(30)),
            new_price: Some(Price(40_000)),
            new_qty: None,
        });
        run(&mut s, 4, &[order(4, "BTC-EUR", up)]);
        assert_eq!(
            s.ledger.balance(AccountId(2), eur(&s)).reserved_units,
            2 * 10_i128.pow(9)
        );
        let rejected = EventBody::Rejected {
            order_id: Some(OrderId(30)),
            account_id: Some(AccountId(2)),
            client_order_id: None,
            command: Some(CommandKind::Amend),
            reason: protocol::RejectReason::InvalidAmend,
        };
        run(&mut s, 5, &[settle("BTC-EUR", 10, vec![rejected])]);
        assert_eq!(
            s.ledger.balance(AccountId(2), eur(&s)).reserved_units,
            10_i128.pow(9)
        );
        assert_eq!(s.ledger.balance(AccountId(2), eur(&s)).total_units(), units);
    }

    #[test]
    fn a_batch_answers_each_balance_once_at_the_line_that_last_changed_it() {
        let mut s = shard(0);
        let fx = run(
            &mut s,
            0,
            &[
                deposit(1, 2, "EUR", 10_i128.pow(12)),
                order(1, "BTC-EUR", buy(50, 2, 10_000, 100_000)),
                order(2, "BTC-EUR", buy(51, 2, 10_000, 100_000)),
                order(3, "BTC-EUR", buy(52, 2, 10_i128.pow(9) as i64, 100_000_000)),
            ],
        );
        let answers = fx.balance_answers(0, s.ledger.assets());
        let positions: Vec<i64> = answers.iter().map(|a| a.accounts_offset).collect();
        let p = |i| protocol::accounts::position(0, i);
        // The transfer, the refused order; EUR last changed by the second order.
        assert_eq!(positions, [p(0), p(2), p(3)]);
        assert_eq!(answers[0].transfer_id, Some(1));
        assert!(
            answers[0].balances.is_empty(),
            "changed again later in the batch"
        );
        assert_eq!(answers[1].balances.len(), 1);
        let eur = &answers[1].balances[0];
        assert_eq!(
            (eur.available_units, eur.reserved_units),
            (10_i128.pow(12) - 2 * 10_i128.pow(9), 2 * 10_i128.pow(9))
        );
        assert_eq!(
            answers[2].refusal.as_ref().unwrap().code,
            "insufficient_funds"
        );
    }

    #[test]
    fn a_rejected_place_releases_its_reservation_and_cancels_pass_through() {
        let mut s = shard(0);
        run(
            &mut s,
            0,
            &[
                deposit(1, 2, "EUR", 10_i128.pow(12)),
                order(1, "BTC-EUR", buy(40, 2, 10_000, 100_000)),
            ],
        );
        let rejected = EventBody::Rejected {
            order_id: Some(OrderId(40)),
            account_id: Some(AccountId(2)),
            client_order_id: Some("c40".into()),
            command: Some(CommandKind::Place),
            reason: protocol::RejectReason::PostOnlyWouldTake,
        };
        run(&mut s, 1, &[settle("BTC-EUR", 2, vec![rejected])]);
        let b = s.ledger.balance(AccountId(2), eur(&s));
        assert_eq!((b.available_units, b.reserved_units), (10_i128.pow(12), 0));
        let cancel = Command::Cancel(CancelOrder {
            account_id: AccountId(2),
            target: OrderRef::Id(OrderId(1)),
        });
        let fx = run(&mut s, 2, &[order(5, "BTC-EUR", cancel)]);
        assert_eq!(fx.forwards.len(), 1);
        // An account of the other shard, a poison line: refused or skipped, never a panic.
        let fx = run(&mut s, 3, &[order(6, "BTC-EUR", buy(41, 3, 10_000, 1))]);
        assert_eq!(fx.answers[0].refusal.as_ref().unwrap().code, "wrong_shard");
        let mut fx = Effects::default();
        s.apply_line(99, Some(b"{not json"), &mut fx);
        s.apply_line(100, None, &mut fx);
        assert!(fx.is_empty());
    }
}
