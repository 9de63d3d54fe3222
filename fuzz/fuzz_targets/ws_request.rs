//! A WebSocket text frame through the gateway's parse and validation (`gateway::fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = gateway::fuzz::ws_frame(data);
});
