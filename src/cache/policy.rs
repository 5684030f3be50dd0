//! RFC 9111 cache policy (pure functions; being written).
