//! Kafka record envelopes.
//!
//! - `orders`: one [`OrderRecord`] per client command, produced by a gateway to the partition of
//!   the command's pair, keyed by the pair symbol.
//! - `events`: one [`EventRecord`] per consumed `orders` record, produced by the engine after the
//!   results are durable in PostgreSQL, to the same partition number, keyed by the pair symbol.
//!
//! Payloads are JSON so the logs can be read and audited with ordinary tools. Trace context
//! travels in the record headers (W3C `traceparent`), never in the payload.

use serde::{Deserialize, Serialize};

use crate::domain::{AccountId, Command, Event};

pub const ORDERS_TOPIC: &str = "orders";
pub const EVENTS_TOPIC: &str = "events";
/// The record header carrying W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";

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
    pub command: Command,
}

/// What the engine decided for one `orders` record, published after it is durable.
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

impl EventRecord {
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
            command: Command::Place(PlaceOrder {
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
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        for junk in [&b""[..], b"{", b"null", b"{\"v\":1}", &[0xff, 0xfe, 0x00]] {
            assert!(OrderRecord::decode(junk).is_err());
            assert!(EventRecord::decode(junk).is_err());
        }
    }
}
