//! Kafka record envelopes.
//!
//! - `orders`: [`OrderRecord`]s, one per client command, produced by a gateway to the partition
//!   of the command's pair, keyed by the pair symbol. A gateway packs the commands of one pair
//!   that arrive together into one Kafka record: newline-separated JSON lines, at most
//!   [`ORDERS_PAYLOAD_MAX`] bytes, in arrival order. The engine applies the lines in order
//!   ([`command_lines`]); a payload of one line is one command, so any producer may write one
//!   command per record.
//! - `events`: one [`EventRecord`] per command line consumed from `orders`, produced by the
//!   engine after the results are durable in PostgreSQL, to the same partition number, keyed by
//!   the pair symbol.
//!   A batch's EventRecords travel packed: one Kafka record holds consecutive EventRecords as
//!   newline-separated JSON lines, at most [`EVENTS_PAYLOAD_MAX`] bytes ([`pack_lines`]); a
//!   consumer reads them with [`EventRecord::decode_all`]. A payload of one line is one record.
//!
//! Payloads are JSON so the logs can be read and audited with ordinary tools. Trace context
//! travels in the record headers (W3C `traceparent`), never in the payload.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::accounts::Source;
use crate::domain::{AccountId, Command, Event};

pub const ORDERS_TOPIC: &str = "orders";
pub const EVENTS_TOPIC: &str = "events";

/// Schema version written by this build.
pub const RECORD_VERSION: u16 = 1;

/// A client command on its way to the pair's matching actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub v: u16,
    /// Unique per command across all gateways; ties the engine's answer to the request.
    pub command_id: u64,
    /// The pair symbol. The engine refuses a record whose symbol is not its partition's pair.
    pub pair: String,
    /// When the gateway received the command; the core's only notion of time.
    pub ts_ns: u64,
    /// Set when an account shard reserved funds for the command and forwarded it: the engine
    /// applies each source once (`crate::accounts::Source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Source>,
    /// The W3C `traceparent` of the gateway's span for this command, when it is traced
    /// (`infra::trace`); readers that do not trace ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tp: Option<String>,
    pub command: Command,
}

/// What the engine decided for one `orders` line, published as soon as it is decided (the batch
/// commits to PostgreSQL once Kafka holds it; a restart decides the same again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub v: u16,
    pub pair: String,
    /// The `orders` offset this answers; consumers use it, with `events[].seq`, to drop
    /// re-deliveries.
    pub orders_offset: i64,
    /// The command this answers; absent when the record could not be decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<AccountId>,
    /// The `traceparent` of the engine's span for this command, when it is traced: the
    /// gateway's answer continues the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tp: Option<String>,
    pub events: Vec<Event>,
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable {what} record: {source}")]
pub struct DecodeError {
    pub what: &'static str,
    #[source]
    pub source: serde_json::Error,
}

impl OrderRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an OrderRecord always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<OrderRecord, DecodeError> {
        serde_json::from_slice(bytes).map_err(|source| DecodeError {
            what: "order",
            source,
        })
    }
}

/// The largest `orders` payload a gateway packs; a single command longer than this (it cannot
/// be: the gateway's message limit is far lower) would travel alone.
pub const ORDERS_PAYLOAD_MAX: usize = 64 * 1024;

/// The command lines of one `orders` payload, in order. A record without any line (no payload,
/// or only newlines) is answered as one malformed command, so every record gets an answer.
pub fn command_lines(payload: Option<&[u8]>) -> Vec<Option<&[u8]>> {
    let Some(payload) = payload else {
        return vec![None];
    };
    let lines: Vec<Option<&[u8]>> = line_ranges(payload)
        .into_iter()
        .map(|r| Some(&payload[r]))
        .collect();
    if lines.is_empty() { vec![None] } else { lines }
}

/// The largest `events` payload the engine packs (Kafka's default limit is 1 MiB); a single
/// EventRecord longer than this travels alone.
pub const EVENTS_PAYLOAD_MAX: usize = 256 * 1024;

/// Groups consecutive lines of a buffer into payloads of at most `max` bytes. `lines` are the
/// byte ranges of newline-separated lines, in order, each next to the last with one `\n`
/// between; each payload spans whole lines and the newlines between them. Deterministic, so the
/// same buffer always packs into the same payloads.
pub fn pack_lines(lines: &[Range<usize>], max: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for line in lines {
        match out.last_mut() {
            Some(last) if line.end - last.start <= max => last.end = line.end,
            _ => out.push(line.clone()),
        }
    }
    out
}

/// Appends `value` as one JSON line to `buf` (after a newline when `buf` holds lines already)
/// and its byte range to `lines`: the layout [`pack_lines`] expects.
pub fn push_line<T: Serialize>(buf: &mut Vec<u8>, lines: &mut Vec<Range<usize>>, value: &T) {
    if !buf.is_empty() {
        buf.push(b'\n');
    }
    let start = buf.len();
    serde_json::to_writer(&mut *buf, value).expect("records always serialize");
    lines.push(start..buf.len());
}

/// Byte ranges of the non-empty lines of a newline-separated buffer (JSON never contains a raw
/// newline).
pub fn line_ranges(buf: &[u8]) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    for (i, b) in buf.iter().enumerate() {
        if *b == b'\n' {
            if i > start {
                ranges.push(start..i);
            }
            start = i + 1;
        }
    }
    if buf.len() > start {
        ranges.push(start..buf.len());
    }
    ranges
}

impl EventRecord {
    /// The records as newline-separated JSON lines (a packed payload's source),
    /// and each record's byte range in it.
    pub fn encode_lines(records: &[EventRecord]) -> (Vec<u8>, Vec<Range<usize>>) {
        let mut buf = Vec::with_capacity(records.len() * 256);
        let mut ranges = Vec::with_capacity(records.len());
        for r in records {
            push_line(&mut buf, &mut ranges, r);
        }
        (buf, ranges)
    }

    /// Every EventRecord of one `events` payload (newline-separated JSON lines), in order.
    pub fn decode_all(
        payload: &[u8],
    ) -> impl Iterator<Item = Result<EventRecord, DecodeError>> + '_ {
        payload
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(EventRecord::decode)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an EventRecord always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<EventRecord, DecodeError> {
        serde_json::from_slice(bytes).map_err(|source| DecodeError {
            what: "event",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;

    #[test]
    fn order_record_round_trips_and_reads_as_expected() {
        let rec = OrderRecord {
            v: RECORD_VERSION,
            command_id: 7,
            pair: "BTC-EUR".into(),
            ts_ns: 1_700_000_000_000_000_000,
            src: None,
            tp: None,
            command: Command::Place(PlaceOrder {
                quote_budget: None,
                order_id: OrderId(7),
                account_id: AccountId(3),
                client_order_id: Some("c-1".into()),
                side: Side::Buy,
                order_type: OrderType::Limit,
                price: Some(Price(1_000_000)),
                qty: Qty(100_000),
                tif: TimeInForce::Gtc,
                post_only: false,
                stp: SelfTradePrevention::ExpireTaker,
            }),
        };
        let bytes = rec.encode();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains(r#""type":"place""#), "{text}");
        assert_eq!(OrderRecord::decode(&bytes).unwrap(), rec);
        assert!(!text.contains("quote_budget"), "absent, not null: {text}");
        let mut budgeted = rec.clone();
        if let Command::Place(p) = &mut budgeted.command {
            p.quote_budget = Some(1 << 70);
        }
        let text = String::from_utf8(budgeted.encode()).unwrap();
        assert!(
            text.contains(r#""quote_budget":"1180591620717411303424""#),
            "{text}"
        );
        assert_eq!(OrderRecord::decode(text.as_bytes()).unwrap(), budgeted);
    }

    #[test]
    fn an_orders_payload_is_one_or_more_command_lines() {
        assert_eq!(command_lines(None), vec![None]);
        assert_eq!(command_lines(Some(b"")), vec![None]);
        assert_eq!(command_lines(Some(b"\n\n")), vec![None]);
        assert_eq!(command_lines(Some(b"{}")), vec![Some(&b"{}"[..])]);
        assert_eq!(
            command_lines(Some(b"a\nbb\n\nccc\n")),
            vec![Some(&b"a"[..]), Some(&b"bb"[..]), Some(&b"ccc"[..])]
        );
    }

    #[test]
    fn packed_lines_stay_whole_and_under_the_limit() {
        let lines: Vec<&[u8]> = vec![b"aaaa", b"bb", b"cccccccccc", b"d", b"eeeeeee"];
        let buf = lines.join(&b'\n');
        let mut ranges = Vec::new();
        let mut at = 0;
        for l in &lines {
            ranges.push(at..at + l.len());
            at += l.len() + 1;
        }
        let packed = pack_lines(&ranges, 8);
        let payloads: Vec<&[u8]> = packed.iter().map(|r| &buf[r.clone()]).collect();
        assert_eq!(
            payloads,
            vec![&b"aaaa\nbb"[..], b"cccccccccc", b"d", b"eeeeeee"],
            "whole lines, at most 8 bytes unless one line is longer"
        );
        assert_eq!(pack_lines(&ranges, 1 << 20), vec![0..buf.len()]);
        assert!(pack_lines(&[], 8).is_empty());
    }

    #[test]
    fn encoded_lines_split_pack_and_decode_back_in_order() {
        let recs: Vec<EventRecord> = (0..3)
            .map(|i| EventRecord {
                v: RECORD_VERSION,
                pair: "BTC-EUR".into(),
                orders_offset: i,
                command_id: Some(i as u64),
                account_id: None,
                tp: None,
                events: Vec::new(),
            })
            .collect();
        let (buf, ranges) = EventRecord::encode_lines(&recs);
        assert_eq!(line_ranges(&buf), ranges);
        for (r, range) in recs.iter().zip(&ranges) {
            assert_eq!(&EventRecord::decode(&buf[range.clone()]).unwrap(), r);
        }
        let packed = pack_lines(&ranges, EVENTS_PAYLOAD_MAX);
        assert_eq!(packed, vec![0..buf.len()]);
        let back: Vec<EventRecord> = EventRecord::decode_all(&buf[packed[0].clone()])
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, recs);
        assert_eq!(EventRecord::decode_all(&recs[0].encode()).count(), 1);
        assert!(line_ranges(b"").is_empty());
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        for junk in [&b""[..], b"{", b"null", b"{\"v\":1}", &[0xff, 0xfe, 0x00]] {
            assert!(OrderRecord::decode(junk).is_err());
            assert!(EventRecord::decode(junk).is_err());
        }
    }
}
