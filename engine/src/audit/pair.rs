//! One pair: its `orders` partition replayed through engine-core exactly as the engine applies
//! it ([`crate::record::apply_record`]: poison lines answered, repeated sources skipped, probes
//! ignored), compared in step with its `events` partition and with PostgreSQL.
//!
//! The replay starts at offset 0 with an empty book, as the first engine did: the engine keeps
//! no snapshot outside PostgreSQL, whose rows are themselves what the audit checks.
//!
//! Positions. An answer is identified by `(orders_offset, i)`: the i-th answer to that record
//! (a record packs command lines; a line skipped as a repeated source has no answer). The
//! `events` partition is a sequence of runs: each engine run publishes answers in position
//! order from the record after PostgreSQL's committed offset, so after a restart a run goes
//! back and publishes the same answers again. An answer at or below the furthest position seen
//! (the frontier) is a re-publication and must equal the first copy; one above it is a first
//! copy and must be the replay's next answer. The first copies are remembered by a 64-bit hash
//! for the last `duplicate_window` answers (a restart goes back at most the batches a pair had
//! published but not committed), so memory is the book, its open orders and that window, never
//! the log.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use engine_core::{BookState, OrderBook};
use protocol::records::{EventRecord, RECORD_VERSION, command_lines, line_ranges};
use protocol::{Event, EventBody, OrderId, PairSpec, Qty};
use sqlx::PgConnection;

use super::db::{self, Committed, TradeRow, Trades};
use super::log::{Consumers, PartitionReader};
use super::received::Received;
use super::report::{PairSummary, Report, Rule, Violation, digest};
use super::{AuditConfig, AuditError};
use crate::record::{Sources, apply_record};

/// `(orders_offset, index of the answer among the record's answers)`.
type Pos = (i64, u32);

/// What the engine must have published for one command line.
struct Answer {
    pos: Pos,
    record: EventRecord,
}

/// An order between its Accepted and its Done, as the replay's events say.
struct Live {
    qty: i64,
    filled: i64,
}

/// Audits one pair; returns its figures.
pub(crate) async fn audit(
    config: &AuditConfig,
    consumers: &Arc<Consumers>,
    spec: &PairSpec,
    conn: &mut PgConnection,
    report: &mut Report,
    mut received: Option<&mut Received>,
) -> Result<PairSummary, AuditError> {
    let committed = db::committed(conn, spec).await?;
    db::check_order_rows(conn, spec, report).await?;
    let partition = i32::try_from(spec.id).expect("pair ids are partition numbers");
    // `events` first: every answer it holds then names a record below the `orders` end read
    // after it, even while the engine runs.
    let mut events =
        PartitionReader::open(consumers, &config.events_topic, partition, None).await?;
    let orders = PartitionReader::open(consumers, &config.orders_topic, partition, None).await?;
    let mut summary = PairSummary {
        pair: spec.symbol.clone(),
        committed_offset: committed.offset,
        ..PairSummary::default()
    };
    report.check(Rule::LogComplete, 2);
    for (topic, reader) in [
        (&config.orders_topic, &orders),
        (&config.events_topic, &events),
    ] {
        if reader.low() > 0 {
            report.violate(
                Violation::new(
                    Rule::LogComplete,
                    format!(
                        "{topic} starts at offset {} (retention deleted the records before it): \
                         the pair cannot be replayed, so its other rules were not checked",
                        reader.low()
                    ),
                )
                .pair(&spec.symbol),
            );
        }
    }
    if orders.low() > 0 || events.low() > 0 {
        return Ok(summary);
    }
    let mut replay = Replay::new(spec, committed, orders, Trades::open(conn, spec));
    let mut published = Published::new(config.duplicate_window);
    while let Some(rec) = events.next().await? {
        published.records += 1;
        let payload = rec.payload.unwrap_or_default();
        for range in line_ranges(&payload) {
            published.lines += 1;
            match EventRecord::decode(&payload[range]) {
                Ok(answer) => {
                    let first = published
                        .on_answer(&answer, rec.offset, &mut replay, report)
                        .await?;
                    // A re-published answer is not a second verdict.
                    if let (true, Some(r)) = (first, received.as_mut()) {
                        r.mark_answer(&answer);
                    }
                }
                Err(err) => report.violate(
                    Violation::new(Rule::AnswerEqualsReplay, format!("{err}"))
                        .pair(&spec.symbol)
                        .events_offset(rec.offset),
                ),
            }
        }
    }
    while let Some(answer) = replay.pop(report).await? {
        published.unanswered(&answer, replay.committed_offset(), report);
    }
    replay.finish(report).await?;
    summary.orders_records = replay.records;
    summary.command_lines = replay.lines;
    summary.event_records = published.lines;
    summary.duplicates = published.duplicates;
    summary.last_seq = replay.book.last_seq();
    summary.open_orders = replay.book.len() as u64;
    summary.book_digest_replay = replay.digest_replay;
    summary.book_digest_db = replay.digest_db;
    report.speed.records += replay.records + published.records;
    report.speed.lines += replay.lines + published.lines;
    Ok(summary)
}

/// The `orders` partition through engine-core, producing the answers the engine must have
/// published, and checking the book, the orders and the trades as it goes.
struct Replay<'c> {
    spec: PairSpec,
    book: OrderBook,
    sources: Sources,
    orders: PartitionReader,
    committed: Committed,
    book_checked: bool,
    /// Answers decided and not yet matched with `events`: at most one record's.
    ready: VecDeque<Answer>,
    live: HashMap<OrderId, Live>,
    trades: Trades<'c>,
    records: u64,
    lines: u64,
    digest_replay: String,
    digest_db: String,
}

impl<'c> Replay<'c> {
    fn new(
        spec: &PairSpec,
        committed: Committed,
        orders: PartitionReader,
        trades: Trades<'c>,
    ) -> Replay<'c> {
        Replay {
            spec: spec.clone(),
            book: OrderBook::new(spec.clone()),
            sources: Sources::default(),
            orders,
            committed,
            book_checked: false,
            ready: VecDeque::new(),
            live: HashMap::new(),
            trades,
            records: 0,
            lines: 0,
            digest_replay: String::new(),
            digest_db: String::new(),
        }
    }

    fn committed_offset(&self) -> i64 {
        self.committed.offset
    }

    fn violation(&self, rule: Rule, detail: impl Into<String>) -> Violation {
        Violation::new(rule, detail).pair(&self.spec.symbol)
    }

    /// Makes sure an answer is ready, replaying records as needed; false at the log's end.
    async fn fill(&mut self, report: &mut Report) -> Result<bool, AuditError> {
        while self.ready.is_empty() {
            if !self.pull(report).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn pop(&mut self, report: &mut Report) -> Result<Option<Answer>, AuditError> {
        self.fill(report).await?;
        Ok(self.ready.pop_front())
    }

    /// Applies the next `orders` record as the engine's actor does (`actor::Matcher::take`).
    async fn pull(&mut self, report: &mut Report) -> Result<bool, AuditError> {
        let Some(rec) = self.orders.next().await? else {
            return Ok(false);
        };
        if rec.offset > self.committed.offset && !self.book_checked {
            self.check_book(report);
        }
        self.records += 1;
        if rec.probe {
            return Ok(true);
        }
        let mut index = 0;
        for line in command_lines(rec.payload.as_deref()) {
            let mut events = Vec::new();
            let outcome = apply_record(
                &mut self.book,
                &mut self.sources,
                line,
                rec.ts_ns,
                &mut events,
            );
            if outcome.repeat.is_some() {
                continue;
            }
            self.lines += 1;
            self.track(rec.offset, &events, report).await?;
            self.ready.push_back(Answer {
                pos: (rec.offset, index),
                record: EventRecord {
                    v: RECORD_VERSION,
                    pair: self.spec.symbol.clone(),
                    orders_offset: rec.offset,
                    command_id: outcome.command_id,
                    account_id: outcome.account_id,
                    tp: None,
                    events,
                },
            });
            index += 1;
        }
        Ok(true)
    }

    /// Follows every order from Accepted to Done, and compares each trade with PostgreSQL.
    async fn track(
        &mut self,
        offset: i64,
        events: &[Event],
        report: &mut Report,
    ) -> Result<(), AuditError> {
        for e in events {
            match &e.body {
                EventBody::Accepted { order_id, qty, .. } => {
                    self.live.insert(
                        *order_id,
                        Live {
                            qty: qty.0,
                            filled: 0,
                        },
                    );
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
                    maker_filled_qty,
                    taker_filled_qty,
                    ..
                } => {
                    self.fill_order(*maker_order_id, *qty, *maker_filled_qty, offset, report);
                    self.fill_order(*taker_order_id, *qty, *taker_filled_qty, offset, report);
                    let row = TradeRow {
                        trade_id: *trade_id,
                        seq: e.seq,
                        price: *price,
                        qty: qty.0,
                        taker_side: *taker_side,
                        maker_order_id: *maker_order_id,
                        maker_account_id: *maker_account_id,
                        taker_order_id: *taker_order_id,
                        taker_account_id: *taker_account_id,
                        orders_offset: offset,
                        ts_ns: e.ts_ns,
                    };
                    self.compare_trade(row, report).await?;
                }
                EventBody::Amended {
                    order_id,
                    qty,
                    remaining_qty,
                    ..
                } => self.amend_order(*order_id, *qty, *remaining_qty, offset, report),
                EventBody::Done {
                    order_id,
                    filled_qty,
                    remaining_qty,
                    ..
                } => self.done_order(*order_id, *filled_qty, *remaining_qty, offset, report),
                EventBody::Rejected { .. } | EventBody::BookLevel { .. } => {}
            }
        }
        Ok(())
    }

    fn fill_order(
        &mut self,
        id: OrderId,
        qty: Qty,
        reported: Option<Qty>,
        offset: i64,
        report: &mut Report,
    ) {
        let broken = match self.live.get_mut(&id) {
            Some(live) => {
                live.filled += qty.0;
                match reported {
                    Some(r) if r.0 != live.filled => Some(format!(
                        "a trade reports {} filled, its trades add up to {}",
                        r.0, live.filled
                    )),
                    _ => None,
                }
            }
            None => Some("traded while not live (never accepted, or already done)".to_owned()),
        };
        if let Some(detail) = broken {
            let v = self.violation(Rule::OrderQuantity, detail);
            report.violate(v.orders_offset(offset).order_id(id.0));
        }
    }

    fn amend_order(
        &mut self,
        id: OrderId,
        qty: Qty,
        remaining: Qty,
        offset: i64,
        report: &mut Report,
    ) {
        let broken = match self.live.get_mut(&id) {
            Some(live) => {
                live.qty = qty.0;
                (remaining.0 != live.qty - live.filled).then(|| {
                    format!(
                        "amended to {} with {} remaining, but {} is filled",
                        qty.0, remaining.0, live.filled
                    )
                })
            }
            None => Some("amended while not live".to_owned()),
        };
        if let Some(detail) = broken {
            let v = self.violation(Rule::OrderQuantity, detail);
            report.violate(v.orders_offset(offset).order_id(id.0));
        }
    }

    fn done_order(
        &mut self,
        id: OrderId,
        filled: Qty,
        remaining: Qty,
        offset: i64,
        report: &mut Report,
    ) {
        report.check(Rule::OrderQuantity, 1);
        let broken = match self.live.remove(&id) {
            Some(live) if filled.0 == live.filled && filled.0 + remaining.0 == live.qty => None,
            Some(live) => Some(format!(
                "done with {} filled + {} cancelled/expired, but its quantity is {} and its \
                 trades filled {}",
                filled.0, remaining.0, live.qty, live.filled
            )),
            None => Some("done while not live".to_owned()),
        };
        if let Some(detail) = broken {
            let v = self.violation(Rule::OrderQuantity, detail);
            report.violate(v.orders_offset(offset).order_id(id.0));
        }
    }

    /// The replay's next trade against PostgreSQL's next row, up to the committed trade id.
    async fn compare_trade(
        &mut self,
        want: TradeRow,
        report: &mut Report,
    ) -> Result<(), AuditError> {
        if want.trade_id > self.committed.last_trade_id {
            report.pending.trades_past_commit += 1;
            return Ok(());
        }
        report.check(Rule::TradesEqualReplay, 1);
        loop {
            let next_id = self.trades.peek().await?.map(|row| row.trade_id);
            match next_id {
                Some(id) if id < want.trade_id => {
                    let row = self.trades.pop().await?.expect("peeked");
                    self.extra_trade(&row, report);
                }
                Some(id) if id == want.trade_id => {
                    let row = self.trades.pop().await?.expect("peeked");
                    if row != want {
                        let v = self.violation(
                            Rule::TradesEqualReplay,
                            format!("PostgreSQL holds {row:?}, the replay makes {want:?}"),
                        );
                        report.violate(
                            v.orders_offset(want.orders_offset)
                                .seq(Some(want.seq))
                                .trade_id(want.trade_id),
                        );
                    }
                    return Ok(());
                }
                _ => {
                    let v = self.violation(
                        Rule::TradesEqualReplay,
                        "missing from PostgreSQL, though at or below its committed trade id",
                    );
                    report.violate(
                        v.orders_offset(want.orders_offset)
                            .seq(Some(want.seq))
                            .trade_id(want.trade_id)
                            .order_id(want.taker_order_id.0),
                    );
                    return Ok(());
                }
            }
        }
    }

    fn extra_trade(&self, row: &TradeRow, report: &mut Report) {
        let v = self.violation(
            Rule::TradesEqualReplay,
            format!(
                "PostgreSQL holds this trade (seq {}), which the replay does not make up to the \
                 committed trade id {}",
                row.seq, self.committed.last_trade_id
            ),
        );
        report.violate(v.orders_offset(row.orders_offset).trade_id(row.trade_id));
    }

    /// PostgreSQL's book against the replay's, once every record up to the committed offset
    /// is applied.
    fn check_book(&mut self, report: &mut Report) {
        self.book_checked = true;
        let mut replayed = self.book.export();
        replayed.orders.sort_unstable_by_key(|o| o.order_id);
        let stored = BookState {
            last_seq: self.committed.last_seq,
            last_trade_id: self.committed.last_trade_id,
            orders: std::mem::take(&mut self.committed.open),
        };
        self.digest_replay = format!("{:016x}", digest(&replayed));
        self.digest_db = format!("{:016x}", digest(&stored));
        let at = self.committed.offset;
        report.check(Rule::BookEqualsReplay, 1);
        if (replayed.last_seq, replayed.last_trade_id) != (stored.last_seq, stored.last_trade_id) {
            let v = self.violation(
                Rule::BookEqualsReplay,
                format!(
                    "PostgreSQL has last_seq {} and last_trade_id {} at offset {at}; the replay \
                     {} and {}",
                    stored.last_seq,
                    stored.last_trade_id,
                    replayed.last_seq,
                    replayed.last_trade_id
                ),
            );
            report.violate(v.orders_offset(at));
        }
        let (mut r, mut s) = (
            replayed.orders.iter().peekable(),
            stored.orders.iter().peekable(),
        );
        loop {
            let (detail, id) = match (r.peek(), s.peek()) {
                (None, None) => break,
                (Some(a), Some(b)) if a.order_id == b.order_id => {
                    report.check(Rule::BookEqualsReplay, 1);
                    let (a, b) = (r.next().expect("peeked"), s.next().expect("peeked"));
                    if a == b {
                        continue;
                    }
                    (
                        format!("PostgreSQL holds {b:?}, the replay {a:?}"),
                        a.order_id,
                    )
                }
                (Some(a), b) if b.is_none_or(|b| a.order_id < b.order_id) => {
                    report.check(Rule::BookEqualsReplay, 1);
                    let a = r.next().expect("peeked");
                    (
                        format!("open in the replayed book ({a:?}), not in PostgreSQL"),
                        a.order_id,
                    )
                }
                _ => {
                    report.check(Rule::BookEqualsReplay, 1);
                    let b = s.next().expect("peeked");
                    (
                        format!("open in PostgreSQL ({b:?}), not in the replayed book"),
                        b.order_id,
                    )
                }
            };
            let v = self.violation(Rule::BookEqualsReplay, detail);
            report.violate(v.orders_offset(at).order_id(id.0));
        }
    }

    /// At the log's end: the book if not compared yet, PostgreSQL's trades the replay never
    /// reached, and every order still live against the final book.
    async fn finish(&mut self, report: &mut Report) -> Result<(), AuditError> {
        if !self.book_checked {
            if self.committed.offset >= self.orders.end() {
                report.check(Rule::BookEqualsReplay, 1);
                let v = self.violation(
                    Rule::BookEqualsReplay,
                    format!(
                        "PostgreSQL's committed offset {} is past the end of the log ({})",
                        self.committed.offset,
                        self.orders.end()
                    ),
                );
                report.violate(v);
            } else {
                self.check_book(report);
            }
        }
        while let Some(row) = self.trades.pop().await? {
            self.extra_trade(&row, report);
        }
        let mut ids: Vec<&OrderId> = self.live.keys().collect();
        ids.sort_unstable();
        for id in ids {
            report.check(Rule::OrderQuantity, 1);
            let live = &self.live[id];
            let ok = self
                .book
                .get(*id)
                .is_some_and(|o| o.qty.0 == live.qty && o.filled_qty.0 == live.filled);
            if !ok {
                let v = self.violation(
                    Rule::OrderQuantity,
                    format!(
                        "live by its events (quantity {}, filled {}), but the book holds {:?}",
                        live.qty,
                        live.filled,
                        self.book.get(*id)
                    ),
                );
                report.violate(v.order_id(id.0));
            }
        }
        if self.book.len() != self.live.len() {
            let v = self.violation(
                Rule::OrderQuantity,
                format!(
                    "the book holds {} orders, its events leave {} live",
                    self.book.len(),
                    self.live.len()
                ),
            );
            report.violate(v);
        }
        Ok(())
    }
}

/// The `events` partition as consumers see it: first copies in order, and re-publications.
struct Published {
    /// Hash of the first copy of the last answers, in position order.
    window: VecDeque<(Pos, u64)>,
    window_max: usize,
    /// The furthest position published.
    frontier: Option<Pos>,
    /// The position of the previous answer in the partition.
    prev: Option<Pos>,
    next_seq: u64,
    next_trade_id: u64,
    records: u64,
    lines: u64,
    duplicates: u64,
}

impl Published {
    fn new(window_max: usize) -> Published {
        Published {
            window: VecDeque::new(),
            window_max: window_max.max(1),
            frontier: None,
            prev: None,
            next_seq: 1,
            next_trade_id: 1,
            records: 0,
            lines: 0,
            duplicates: 0,
        }
    }

    fn first_copy_hash(&self, pos: Pos) -> Option<u64> {
        self.window
            .binary_search_by(|(p, _)| p.cmp(&pos))
            .ok()
            .map(|i| self.window[i].1)
    }

    fn remember(&mut self, pos: Pos, hash: u64) {
        if self.window.len() == self.window_max {
            self.window.pop_front();
        }
        self.window.push_back((pos, hash));
        self.frontier = Some(pos);
    }

    /// Places one published answer; true when it is a first copy.
    async fn on_answer(
        &mut self,
        answer: &EventRecord,
        events_offset: i64,
        replay: &mut Replay<'_>,
        report: &mut Report,
    ) -> Result<bool, AuditError> {
        // The engine's own span id: a new one each time a command is applied again.
        let answer = EventRecord {
            tp: None,
            ..answer.clone()
        };
        let hash = digest(&answer);
        let offset = answer.orders_offset;
        let mut pos = match self.prev {
            Some((o, i)) if o == offset => (o, i + 1),
            _ => (offset, 0),
        };
        if pos.1 > 0 && self.restarts_record(pos, hash, replay, report).await? {
            pos = (offset, 0);
        }
        self.prev = Some(pos);
        if self.frontier.is_some_and(|f| pos <= f) {
            self.duplicate(pos, hash, &answer, events_offset, replay, report);
            return Ok(false);
        }
        self.first_copy(pos, answer, hash, events_offset, replay, report)
            .await?;
        Ok(true)
    }

    /// Whether an answer following one of the same record is a restart publishing that record
    /// again from its first answer (an earlier run published only part of its answers), rather
    /// than the record's next answer.
    async fn restarts_record(
        &self,
        pos: Pos,
        hash: u64,
        replay: &mut Replay<'_>,
        report: &mut Report,
    ) -> Result<bool, AuditError> {
        if self.first_copy_hash((pos.0, 0)) != Some(hash) {
            return Ok(false);
        }
        let continued = match self.first_copy_hash(pos) {
            Some(h) => Some(h),
            None if replay.fill(report).await? => replay
                .ready
                .front()
                .filter(|a| a.pos == pos)
                .map(|a| digest(&a.record)),
            None => None,
        };
        Ok(continued != Some(hash))
    }

    fn duplicate(
        &mut self,
        pos: Pos,
        hash: u64,
        answer: &EventRecord,
        events_offset: i64,
        replay: &Replay<'_>,
        report: &mut Report,
    ) {
        self.duplicates += 1;
        report.check(Rule::DuplicateIdentical, 1);
        let (rule, detail) = match self.first_copy_hash(pos) {
            Some(first) if first == hash => return,
            Some(_) => (
                Rule::DuplicateIdentical,
                "a re-published answer differs from the first copy".to_owned(),
            ),
            None if self.window.front().is_some_and(|(p, _)| pos < *p) => (
                Rule::DuplicateIdentical,
                format!(
                    "a re-published answer older than the last {} answers, so not compared; \
                     rerun with a larger --duplicate-window",
                    self.window_max
                ),
            ),
            None => (
                Rule::AnsweredOnce,
                format!("answer {} of the record names no command line", pos.1),
            ),
        };
        let v = replay.violation(rule, detail);
        report.violate(
            v.orders_offset(pos.0)
                .events_offset(events_offset)
                .seq(answer.events.first().map(|e| e.seq)),
        );
    }

    async fn first_copy(
        &mut self,
        pos: Pos,
        answer: EventRecord,
        hash: u64,
        events_offset: i64,
        replay: &mut Replay<'_>,
        report: &mut Report,
    ) -> Result<(), AuditError> {
        loop {
            if !replay.fill(report).await? {
                let v = replay.violation(
                    Rule::AnsweredOnce,
                    format!(
                        "answer {} to an orders record the log does not hold (it ends at {})",
                        pos.1,
                        replay.orders.end()
                    ),
                );
                report.violate(v.orders_offset(pos.0).events_offset(events_offset));
                return Ok(());
            }
            let next = replay.ready.front().expect("filled").pos;
            if next > pos {
                let v = replay.violation(
                    Rule::AnsweredOnce,
                    format!(
                        "answer {} of the record names no command line (a probe, a repeated \
                         source, or past its lines)",
                        pos.1
                    ),
                );
                report.violate(v.orders_offset(pos.0).events_offset(events_offset));
                return Ok(());
            }
            let expected = replay.ready.pop_front().expect("filled");
            report.check(Rule::AnsweredOnce, 1);
            if next < pos {
                self.skipped(&expected, pos, replay, report);
                continue;
            }
            report.check(Rule::AnswerEqualsReplay, 1);
            if expected.record != answer {
                let (detail, seq) = difference(&expected.record, &answer);
                let v = replay.violation(Rule::AnswerEqualsReplay, detail);
                report.violate(v.orders_offset(pos.0).events_offset(events_offset).seq(seq));
            }
            self.remember(pos, hash);
            self.check_sequence(&answer, events_offset, replay, report);
            return Ok(());
        }
    }

    /// An answer the stream skipped: a later one was published first.
    fn skipped(&mut self, missing: &Answer, at: Pos, replay: &Replay<'_>, report: &mut Report) {
        let v = replay.violation(
            Rule::AnsweredOnce,
            format!(
                "answer {} of the record was never published; the stream goes on with answer {} \
                 of offset {}",
                missing.pos.1, at.1, at.0
            ),
        );
        report.violate(
            v.orders_offset(missing.pos.0)
                .seq(missing.record.events.first().map(|e| e.seq)),
        );
        self.remember(missing.pos, digest(&missing.record));
    }

    /// A line the replay answers and `events` does not (yet).
    fn unanswered(&mut self, missing: &Answer, committed: i64, report: &mut Report) {
        report.check(Rule::AnsweredOnce, 1);
        if missing.pos.0 > committed {
            report.pending.unanswered_past_commit += 1;
            return;
        }
        let mut v = Violation::new(
            Rule::AnsweredOnce,
            format!(
                "answer {} of the record is not in events, though PostgreSQL committed offset \
                 {committed}",
                missing.pos.1
            ),
        )
        .pair(&missing.record.pair)
        .orders_offset(missing.pos.0);
        v.seq = missing.record.events.first().map(|e| e.seq);
        report.violate(v);
    }

    /// Seq and trade ids of a first copy continue those before it.
    fn check_sequence(
        &mut self,
        answer: &EventRecord,
        events_offset: i64,
        replay: &Replay<'_>,
        report: &mut Report,
    ) {
        for e in &answer.events {
            report.check(Rule::SeqContiguous, 1);
            if e.seq != self.next_seq {
                let what = if e.seq < self.next_seq {
                    "repeats"
                } else {
                    "skips"
                };
                let v = replay.violation(
                    Rule::SeqContiguous,
                    format!("seq {} {what}: {} was next", e.seq, self.next_seq),
                );
                report.violate(
                    v.orders_offset(answer.orders_offset)
                        .events_offset(events_offset)
                        .seq(Some(e.seq)),
                );
            }
            self.next_seq = self.next_seq.max(e.seq + 1);
            if let EventBody::Trade { trade_id, .. } = e.body {
                report.check(Rule::TradeIdUnique, 1);
                if trade_id != self.next_trade_id {
                    let what = if trade_id < self.next_trade_id {
                        "published twice"
                    } else {
                        "skips ids"
                    };
                    let v = replay.violation(
                        Rule::TradeIdUnique,
                        format!(
                            "trade id {trade_id} {what}: {} was next",
                            self.next_trade_id
                        ),
                    );
                    report.violate(
                        v.orders_offset(answer.orders_offset)
                            .events_offset(events_offset)
                            .seq(Some(e.seq))
                            .trade_id(trade_id),
                    );
                }
                self.next_trade_id = self.next_trade_id.max(trade_id + 1);
            }
        }
    }
}

/// The first difference between the replay's answer and the published one, and its seq.
fn difference(want: &EventRecord, got: &EventRecord) -> (String, Option<u64>) {
    if (want.v, &want.pair, want.command_id, want.account_id)
        != (got.v, &got.pair, got.command_id, got.account_id)
    {
        return (
            format!(
                "published for command {:?} of account {:?} (pair {}), the replay answers command \
                 {:?} of account {:?}",
                got.command_id,
                got.account_id.map(|a| a.0),
                got.pair,
                want.command_id,
                want.account_id.map(|a| a.0)
            ),
            got.events.first().map(|e| e.seq),
        );
    }
    for (i, (w, g)) in want.events.iter().zip(&got.events).enumerate() {
        if w != g {
            return (
                format!(
                    "event {i}: published {}, the replay decides {}",
                    json(g),
                    json(w)
                ),
                Some(w.seq),
            );
        }
    }
    (
        format!(
            "published {} events, the replay decides {}",
            got.events.len(),
            want.events.len()
        ),
        want.events.first().map(|e| e.seq),
    )
}

/// JSON of an event, for a violation's detail.
fn json(e: &Event) -> String {
    serde_json::to_string(e).expect("events serialize")
}
