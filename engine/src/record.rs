//! One `orders` command line in, its decision out: decoding, poison handling and the core call.
//! A Kafka record holds one or more command lines ([`protocol::records::command_lines`]); the
//! engine applies them in order, each with this function.
//!
//! Public so that a test (or an audit tool) can replay an `orders` partition through
//! `engine-core` exactly as the engine does, and compare.

use engine_core::OrderBook;
use protocol::records::{OrderRecord, RECORD_VERSION};
use protocol::{AccountId, Command, CommandKind, Event, RejectReason};

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
}

/// Decodes one command line and applies it to `book`, appending the decided events to `out`.
/// `kafka_ts_ns` (the record's log timestamp) stamps the Rejected event of a line too broken
/// to carry its own timestamp, so a replay of the log still yields the same events.
pub fn apply_record(
    book: &mut OrderBook,
    payload: Option<&[u8]>,
    kafka_ts_ns: u64,
    out: &mut Vec<Event>,
) -> Outcome {
    let record = match payload.map(OrderRecord::decode) {
        Some(Ok(r)) if r.v == RECORD_VERSION => r,
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
            };
        }
    };
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
        };
    }
    book.apply(&record.command, record.ts_ns, out);
    Outcome {
        command_id: Some(record.command_id),
        account_id: Some(account_id),
        command: Some(record.command),
        poison: None,
    }
}
