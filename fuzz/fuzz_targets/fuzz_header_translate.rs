//! Client and origin header blocks through `proxy::headers`; see `muxgate::fuzzing::header_translate`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| muxgate::fuzzing::header_translate(data));
