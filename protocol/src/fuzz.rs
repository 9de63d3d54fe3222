//! Bodies of the fuzz targets in `fuzz/` that need nothing but this crate.
//!
//! Each takes arbitrary bytes, must never panic, and asserts the properties that are cheap to
//! check. The same functions replay the seed corpus (`fuzz/corpus/<target>/`) in an ordinary
//! `cargo test` (`tests/fuzz_corpus.rs` of this crate, of `engine-core` and of `gateway`), so CI
//! checks every seed and every past crash without a nightly toolchain.

use std::str::FromStr;

use rust_decimal::Decimal;

use crate::accounts::AccountRecord;
use crate::pairs::{format_units, parse_units};
use crate::records::{OrderRecord, command_lines};
use crate::ws::{ErrorCode, JSON_SAFE_INT_MAX, Request, Response, parse_request};

/// The most decimals `parse_units` is asked for: a pair's price plus quantity decimals (12 + 12),
/// the scale of `quote_qty` and `min_notional`.
const DECIMALS_FUZZ_MAX: u32 = 24;

/// The decimal parser (`price`, `qty`, `quote_qty`, the pairs file). The first byte picks the
/// scale, the rest is the text. What parses formats back to a string that parses to the same
/// integer, and means the same number as the text. True when the text parsed.
pub fn decimal(data: &[u8]) -> bool {
    let Some((&scale, text)) = data.split_first() else {
        return false;
    };
    let decimals = u32::from(scale) % (DECIMALS_FUZZ_MAX + 1);
    let Ok(text) = std::str::from_utf8(text) else {
        return false;
    };
    let Ok(units) = parse_units(text, decimals) else {
        return false;
    };
    let formatted = format_units(units, decimals);
    assert_eq!(
        parse_units(&formatted, decimals),
        Ok(units),
        "{text:?} at {decimals} decimals parsed to {units}, formatted as {formatted:?}"
    );
    let exact = Decimal::from_str(text).expect("parse_units accepted it");
    assert_eq!(
        exact,
        Decimal::new(units, decimals),
        "{text:?} at {decimals} decimals parsed to {units}"
    );
    true
}

/// One WebSocket text frame up to the typed request, as the gateway parses it. A refusal names
/// a client error code and echoes only an id a JavaScript client can read; what parses
/// serializes back to a frame that parses to the same request.
pub fn request(data: &[u8]) -> Option<Request> {
    // The WebSocket layer closes the connection on a text frame that is not UTF-8.
    let text = std::str::from_utf8(data).ok()?;
    match parse_request(text) {
        Err(e) => {
            assert!(e.id.is_none_or(|id| id <= JSON_SAFE_INT_MAX), "{e:?}");
            assert!(
                matches!(
                    e.error.code,
                    ErrorCode::MalformedRequest
                        | ErrorCode::UnknownMethod
                        | ErrorCode::InvalidParams
                ),
                "{e:?}"
            );
            assert!(!e.error.message.is_empty());
            let answer = Response {
                id: e.id,
                result: None,
                error: Some(e.error),
            };
            let json = serde_json::to_string(&answer).expect("an error answer serializes");
            serde_json::from_str::<Response>(&json).expect("an error answer reads back");
            None
        }
        Ok(r) => {
            assert!(r.id <= JSON_SAFE_INT_MAX);
            let mut frame = serde_json::to_value(&r.body).expect("a request body serializes");
            frame["id"] = r.id.into();
            if let Some(tp) = &r.traceparent {
                frame["traceparent"] = tp.as_str().into();
            }
            match parse_request(&frame.to_string()) {
                Ok(again) => assert_eq!(again, r, "{text:?} re-encoded as {frame}"),
                Err(e) => panic!("{text:?} re-encoded as {frame} is refused: {e:?}"),
            }
            Some(r)
        }
    }
}

/// One record payload as the engine (`orders`) and the account stage (`accounts`) split and
/// decode it. Every line that decodes encodes to a line that decodes to the same record.
/// Returns the `orders` records, for a caller to apply.
pub fn record_payload(data: &[u8]) -> Vec<OrderRecord> {
    let mut orders = Vec::new();
    for line in command_lines(Some(data)).into_iter().flatten() {
        if let Ok(r) = AccountRecord::decode(line) {
            let back = AccountRecord::decode(&r.encode()).expect("an encoded record decodes");
            assert_eq!(back, r);
        }
        if let Ok(r) = OrderRecord::decode(line) {
            let back = OrderRecord::decode(&r.encode()).expect("an encoded record decodes");
            assert_eq!(back, r);
            orders.push(r);
        }
    }
    orders
}
