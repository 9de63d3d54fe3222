//! An `orders` record payload decoded and applied to a book (`engine_core::fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = engine_core::fuzz::orders_record(data);
});
