//! The body of the `orders_record` fuzz target in `fuzz/`: an `orders` payload split and decoded
//! as the engine and the account stage do ([`protocol::fuzz::record_payload`]), then every
//! decoded command applied to a book, as the engine applies a record of its pair.
//! `tests/fuzz_corpus.rs` replays the seed corpus through it in an ordinary `cargo test`.

use std::sync::LazyLock;

use protocol::{PairRegistry, PairSpec};

use crate::OrderBook;

static SPEC: LazyLock<PairSpec> = LazyLock::new(|| {
    let pairs = PairRegistry::from_toml(include_str!("../../../config/pairs.toml"))
        .expect("config/pairs.toml is valid");
    pairs
        .by_symbol("BTC-EUR")
        .expect("BTC-EUR is listed")
        .clone()
});

/// Never panics on any payload; the book's events carry contiguous sequence numbers and the
/// book survives an export and restore unchanged. Returns how many commands were applied.
pub fn orders_record(data: &[u8]) -> usize {
    let records = protocol::fuzz::record_payload(data);
    if records.is_empty() {
        return 0;
    }
    let mut book = OrderBook::new(SPEC.clone());
    let mut out = Vec::new();
    for r in &records {
        let first = book.last_seq() + 1;
        out.clear();
        book.apply(&r.command, r.ts_ns, &mut out);
        for (i, e) in out.iter().enumerate() {
            assert_eq!(e.seq, first + i as u64, "{r:?} gave {out:?}");
        }
    }
    let state = book.export();
    let restored = OrderBook::restore(SPEC.clone(), state.clone()).expect("an export restores");
    assert_eq!(restored.export(), state);
    records.len()
}
