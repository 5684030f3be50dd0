//! A client's HTTP/1.1 bytes through the gateway to in-memory HTTP/2 origins;
//! see `muxgate::fuzzing::downstream_h1`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    muxgate::fuzzing::downstream_h1(rt, data);
});
