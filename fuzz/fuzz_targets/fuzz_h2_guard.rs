//! What an HTTP/2 client sends, in segments, through `h2guard::FrameMeter`; see
//! `muxgate::fuzzing::h2_guard`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| muxgate::fuzzing::h2_guard(data));
