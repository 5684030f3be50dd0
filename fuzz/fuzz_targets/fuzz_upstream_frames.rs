//! A hostile origin's byte stream against the gateway's HTTP/2 client and pool;
//! see `muxgate::fuzzing::upstream_frames` for the input format.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    muxgate::fuzzing::upstream_frames(rt, data);
});
