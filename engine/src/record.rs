//! One `orders` command line in, its decision out: decoding, poison handling and the core call.
//! A Kafka record holds one or more command lines ([`protocol::records::command_lines`]); the
//! engine applies them in order, each with this function.
//!
//! Public so that a test (or an audit tool) can replay an `orders` partition through
//! `engine-core` exactly as the engine does, and compare.
//!
//! A command an account shard forwarded carries its [`Source`]; a restarted shard forwards the
//! same commands again. [`Sources`] keeps, per pair, the last source applied per shard, so each
//! is applied once: a line at or below it is a repeat and changes nothing (no events, no answer).

use std::collections::BTreeMap;

use engine_core::OrderBook;
use protocol::accounts::Source;
use protocol::records::{OrderRecord, RECORD_VERSION};
use protocol::{AccountId, Command, CommandKind, Event, RejectReason};

/// One pair's last applied source offset per account shard. The engine starts from the map
/// committed with the pair's offset (`store::recover`) and updates it line by line, so the
/// records a restart applies again are decided exactly as the first time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    last: BTreeMap<u32, i64>,
    /// Shards whose last offset moved since [`Sources::take_changed`], with the new value.
    changed: BTreeMap<u32, i64>,
}

impl Sources {
    /// The map as stored: `(shard, last_offset)` pairs.
    pub fn from_stored(rows: impl IntoIterator<Item = (u32, i64)>) -> Sources {
        Sources {
            last: rows.into_iter().collect(),
            changed: BTreeMap::new(),
        }
    }

    /// The last source offset applied from `shard`, if any.
    pub fn last(&self, shard: u32) -> Option<i64> {
        self.last.get(&shard).copied()
    }

    /// Whether `src` is new (then it is recorded) or a repeat (at or below the shard's last).
    pub fn admit(&mut self, src: Source) -> bool {
        if self.last(src.shard).is_some_and(|last| src.offset <= last) {
            return false;
        }
        self.last.insert(src.shard, src.offset);
        self.changed.insert(src.shard, src.offset);
        true
    }

    /// The shards whose offset moved since the last call, and their new offsets: what a commit
    /// writes.
    pub fn take_changed(&mut self) -> BTreeMap<u32, i64> {
        std::mem::take(&mut self.changed)
    }
}

/// What the engine made of one command line (or of a poison line turned into a Rejected
/// event). Readiness probes (`infra::kafka::PROBE_HEADER`) never get here: the caller skips
/// their whole record.
#[derive(Debug)]
pub struct Outcome {
    pub command_id: Option<u64>,
    pub account_id: Option<AccountId>,
    /// The decoded command, when there was one for this pair.
    pub command: Option<Command>,
    /// Why the line was poison, if it was.
    pub poison: Option<RejectReason>,
    /// `Some`: the line repeats a source already applied; nothing was applied and nothing is
    /// answered (`out` is untouched, every other field is `None`).
    pub repeat: Option<Source>,
    /// The gateway's trace context for the command, when it is traced.
    pub tp: Option<String>,
}

/// Decodes one command line and applies it to `book`, appending the decided events to `out`.
/// `kafka_ts_ns` (the record's log timestamp) stamps the Rejected event of a line too broken
/// to carry its own timestamp, so a replay of the log still yields the same events.
/// A forwarded command (`src` set) whose source `sources` has seen is skipped whole
/// ([`Outcome::repeat`]); a new one is recorded there before it is applied.
pub fn apply_record(
    book: &mut OrderBook,
    sources: &mut Sources,
    payload: Option<&[u8]>,
    kafka_ts_ns: u64,
    out: &mut Vec<Event>,
) -> Outcome {
    let record = match payload.map(OrderRecord::decode) {
        // A source names an `accounts` partition, so its shard fits an i32 (a partition number).
        Some(Ok(r))
            if r.v == RECORD_VERSION
                && r.src.is_none_or(|src| i32::try_from(src.shard).is_ok()) =>
        {
            r
        }
        _ => {
            book.reject(
                None,
                None,
                None,
                RejectReason::MalformedRecord,
                kafka_ts_ns,
                out,
            );
            return Outcome {
                command_id: None,
                account_id: None,
                command: None,
                poison: Some(RejectReason::MalformedRecord),
                repeat: None,
                tp: None,
            };
        }
    };
    // Before the pair check: a source is applied once, whatever its answer.
    if let Some(src) = record.src
        && !sources.admit(src)
    {
        return Outcome {
            command_id: None,
            account_id: None,
            command: None,
            poison: None,
            repeat: Some(src),
            tp: None,
        };
    }
    let account_id = record.command.account_id();
    if record.pair != book.spec().symbol {
        let order_id = match &record.command {
            Command::Place(p) => Some(p.order_id),
            _ => None,
        };
        let kind: CommandKind = record.command.kind();
        book.reject(
            order_id,
            Some(account_id),
            Some(kind),
            RejectReason::WrongPair,
            record.ts_ns,
            out,
        );
        return Outcome {
            command_id: Some(record.command_id),
            account_id: Some(account_id),
            command: None,
            poison: Some(RejectReason::WrongPair),
            repeat: None,
            tp: record.tp,
        };
    }
    book.apply(&record.command, record.ts_ns, out);
    Outcome {
        command_id: Some(record.command_id),
        account_id: Some(account_id),
        command: Some(record.command),
        poison: None,
        repeat: None,
        tp: record.tp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::pairs::PairRegistry;
    use protocol::{
        EventBody, OrderId, OrderType, PairSpec, PlaceOrder, Price, Qty, SelfTradePrevention, Side,
        TimeInForce,
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

    fn line(id: u64, src: Option<Source>, pair: &str) -> Vec<u8> {
        OrderRecord {
            v: RECORD_VERSION,
            command_id: id,
            pair: pair.into(),
            ts_ns: id,
            src,
            tp: None,
            command: Command::Place(PlaceOrder {
                quote_budget: None,
                order_id: OrderId(id),
                account_id: AccountId(1),
                client_order_id: None,
                side: Side::Buy,
                order_type: OrderType::Limit,
                price: Some(Price(100)),
                qty: Qty(1),
                tif: TimeInForce::Gtc,
                post_only: false,
                stp: SelfTradePrevention::ExpireTaker,
            }),
        }
        .encode()
    }

    fn src(shard: u32, offset: i64) -> Option<Source> {
        Some(Source { shard, offset })
    }

    #[test]
    fn a_source_is_applied_once_per_shard_and_position() {
        let mut book = OrderBook::new(spec());
        let mut sources = Sources::from_stored([(1, 50)]);
        let mut apply = |bytes: Vec<u8>| {
            let mut out = Vec::new();
            let o = apply_record(&mut book, &mut sources, Some(&bytes), 0, &mut out);
            (o.repeat.is_some(), out.len())
        };
        assert!(!apply(line(1, src(0, 10), "BTC-EUR")).0, "new shard");
        assert_eq!(
            apply(line(2, src(0, 10), "BTC-EUR")),
            (true, 0),
            "same source"
        );
        assert_eq!(apply(line(3, src(0, 9), "BTC-EUR")), (true, 0), "below it");
        assert!(apply(line(4, src(1, 50), "BTC-EUR")).0, "the stored one");
        assert!(!apply(line(5, src(1, 51), "BTC-EUR")).0);
        assert!(
            !apply(line(6, None, "BTC-EUR")).0,
            "no source: always applied"
        );
        assert!(!apply(line(7, None, "BTC-EUR")).0);
        // A wrong-pair line is answered once too.
        assert!(!apply(line(8, src(2, 1), "ETH-EUR")).0);
        assert_eq!(apply(line(9, src(2, 1), "ETH-EUR")), (true, 0));
        let changed = sources.take_changed();
        assert_eq!(
            changed.into_iter().collect::<Vec<_>>(),
            vec![(0, 10), (1, 51), (2, 1)]
        );
        assert!(sources.take_changed().is_empty());
        assert_eq!(sources.last(1), Some(51));
    }

    #[test]
    fn a_source_naming_no_partition_is_malformed() {
        let mut book = OrderBook::new(spec());
        let mut sources = Sources::default();
        let mut out = Vec::new();
        let bytes = line(1, src(u32::MAX, 1), "BTC-EUR");
        let o = apply_record(&mut book, &mut sources, Some(&bytes), 0, &mut out);
        assert_eq!(o.poison, Some(RejectReason::MalformedRecord));
        assert!(matches!(out[0].body, EventBody::Rejected { .. }));
        assert_eq!(sources, Sources::default());
    }
}
