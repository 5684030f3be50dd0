//! Test kit: in-process origins with counters, certificates made at run time, and a small
//! HTTP/1.1 load client. Used by `muxgate demo`, the integration tests and the benchmark, so
//! that all three exercise the same real sockets and TLS.

pub mod h2ctl;
pub mod load;
pub mod origin;
pub mod pki;
