//! Arbitrary TOML through `Config::from_toml` and `validate`; see `muxgate::fuzzing::config`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| muxgate::fuzzing::config(data));
