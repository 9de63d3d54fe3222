//! The decimal parser: the first byte picks the scale (`protocol::fuzz::decimal`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = protocol::fuzz::decimal(data);
});
