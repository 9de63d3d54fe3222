//! Replays the seed corpus of the `orders_record` fuzz target (`fuzz/corpus/orders_record/`, crash regressions
//! included) through the target's own body, so an ordinary `cargo test` checks every seed
//! without a nightly toolchain. `scripts/fuzz` searches beyond the seeds.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

#[test]
fn every_seed_of_orders_record_passes_its_properties() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/orders_record");
    let mut seeds = 0;
    let mut accepted = 0;
    let mut failed = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let data = std::fs::read(&path).expect("a readable seed");
        seeds += 1;
        match catch_unwind(AssertUnwindSafe(|| {
            engine_core::fuzz::orders_record(&data) > 0
        })) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => failed.push(path.display().to_string()),
        }
    }
    assert!(failed.is_empty(), "seeds that broke a property: {failed:?}");
    // Seeds that all bounced off the first check would exercise nothing behind it.
    assert!(
        seeds >= 15 && accepted >= 5,
        "{seeds} seeds, {accepted} accepted"
    );
}
