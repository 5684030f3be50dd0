//! Response cache (RFC 9111 + nginx-style use-stale): [`policy`] is the pure decision logic;
//! the moka store, request collapsing and background updates are built on it.

pub mod key;
pub mod policy;
