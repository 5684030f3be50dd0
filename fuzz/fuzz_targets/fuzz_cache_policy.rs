//! RFC 9111 cache decisions; see `muxgate::cache::policy::fuzz_policy`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| muxgate::fuzzing::cache_policy(data));
