//! Fault injection for tests (feature `fault-injection`, never in release binaries), by a
//! record's `x-fault` header, the first time this process applies the record; after the restart
//! from PostgreSQL the same record is applied normally:
//! - `panic`: panics its pair's actor while applying it;
//! - `commit`: its batch is applied and its events are published, then the commit that would
//!   hold it fails.

use std::collections::HashSet;
use std::sync::Mutex;

use rdkafka::message::{BorrowedHeaders, Headers};

pub const FAULT_HEADER: &str = "x-fault";

static FIRED: Mutex<Option<HashSet<(String, i64)>>> = Mutex::new(None);

pub(crate) fn maybe_panic(pair: &str, offset: i64, headers: Option<&BorrowedHeaders>) {
    if first_time(pair, offset, headers, b"panic") {
        panic!("injected fault: panic in pair {pair} at orders offset {offset}");
    }
}

/// Whether the batch holding this record must fail its commit.
pub(crate) fn fails_commit(pair: &str, offset: i64, headers: Option<&BorrowedHeaders>) -> bool {
    first_time(pair, offset, headers, b"commit")
}

/// The record asks for `fault`, and this process has not injected it yet.
fn first_time(pair: &str, offset: i64, headers: Option<&BorrowedHeaders>, fault: &[u8]) -> bool {
    let wanted = headers.is_some_and(|h| {
        h.iter()
            .any(|h| h.key == FAULT_HEADER && h.value == Some(fault))
    });
    wanted
        && FIRED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(HashSet::new)
            .insert((pair.to_owned(), offset))
}
