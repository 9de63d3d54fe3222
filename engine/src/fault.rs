//! Fault injection for tests (feature `fault-injection`, never in release binaries): a record
//! carrying the header `x-fault: panic` panics its pair's actor the first time this process
//! applies it. After the restart from PostgreSQL the same record is applied normally.

use std::collections::HashSet;
use std::sync::Mutex;

use rdkafka::message::{BorrowedHeaders, Headers};

pub const FAULT_HEADER: &str = "x-fault";

static FIRED: Mutex<Option<HashSet<(String, i64)>>> = Mutex::new(None);

pub(crate) fn maybe_panic(pair: &str, offset: i64, headers: Option<&BorrowedHeaders>) {
    let wants_panic = headers.is_some_and(|h| {
        h.iter()
            .any(|h| h.key == FAULT_HEADER && h.value == Some(b"panic".as_slice()))
    });
    if !wants_panic {
        return;
    }
    let first = FIRED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get_or_insert_with(HashSet::new)
        .insert((pair.to_owned(), offset));
    if first {
        panic!("injected fault: panic in pair {pair} at orders offset {offset}");
    }
}
