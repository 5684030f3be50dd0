//! Live reload planning (pure): given the running configuration and a new, already validated
//! one, decide what survives the swap. The I/O side (loading certificates, building pools,
//! swapping) is `Gateway::reload` in lib.rs.
//!
//! The point of muxgate is its long-lived origin connections and resumable TLS sessions, so a
//! reload keeps an origin's pool whenever nothing that shapes its connections changed: routing
//! (`hosts`), caching (`cache`), `host_header` and `retry_buffer` are read per request and may
//! change freely. Any other origin key (URL, servers, TLS, pool limits, timeouts, windows…), or
//! `[dns] hosts_file`, builds a fresh pool; the old one drains (in-flight requests finish on it,
//! new requests go to the new one). Listener addresses cannot move without a restart (the sockets are bound); a
//! change to them is reported, not applied.

use crate::config::{CacheConfig, Origin, ValidConfig};

/// What a reload does with the running state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// For each origin of the new config (by index): the index of the running origin whose
    /// pool it keeps, or `None` for a fresh pool.
    pub keep: Vec<Option<usize>>,
    /// Running origins whose pools are not kept (removed or changed): they drain.
    pub retire: Vec<usize>,
    /// The cache store (and its entries) is kept: `[cache]` did not change.
    pub keep_cache: bool,
    /// Keys that changed but only take effect after a restart (bound sockets, logging).
    pub needs_restart: Vec<&'static str>,
}

/// Plans the swap from `old` to `new`.
pub fn plan(old: &ValidConfig, new: &ValidConfig) -> Plan {
    let mut keep = Vec::with_capacity(new.origins.len());
    let mut kept = vec![false; old.origins.len()];
    for o in &new.origins {
        let found = old
            .origins
            .iter()
            .position(|p| p.raw.name == o.raw.name && same_connections(&p.raw, &o.raw));
        if let Some(i) = found {
            kept[i] = true;
        }
        keep.push(found);
    }
    let retire = (0..old.origins.len()).filter(|&i| !kept[i]).collect();
    let mut needs_restart = Vec::new();
    if old.listen != new.listen {
        needs_restart.push("listen");
    }
    let tls_addrs = |c: &ValidConfig| c.listen_tls.iter().map(|t| t.addr).collect::<Vec<_>>();
    if tls_addrs(old) != tls_addrs(new) {
        needs_restart.push("listen_tls");
    }
    if old.admin != new.admin {
        needs_restart.push("admin.listen");
    }
    if old.raw.admin.max_connections != new.raw.admin.max_connections {
        needs_restart.push("admin.max_connections");
    }
    if old.raw.log_format != new.raw.log_format {
        needs_restart.push("log_format");
    }
    if old.raw.reuse_port != new.raw.reuse_port {
        needs_restart.push("reuse_port");
    }
    if old.raw.workers != new.raw.workers {
        needs_restart.push("workers");
    }
    if old.raw.runtime != new.raw.runtime {
        needs_restart.push("runtime");
    }
    Plan {
        keep,
        retire,
        keep_cache: same_cache(&old.raw.cache, &new.raw.cache),
        needs_restart,
    }
}

/// Whether two origin settings produce the same connections (everything except the keys read
/// per request).
pub fn same_connections(a: &Origin, b: &Origin) -> bool {
    let per_request_only = |o: &Origin| Origin {
        hosts: Vec::new(),
        cache: false,
        host_header: None,
        retry_buffer: crate::config::ByteSize(0),
        ..o.clone()
    };
    per_request_only(a) == per_request_only(b)
}

fn same_cache(a: &CacheConfig, b: &CacheConfig) -> bool {
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg(text: &str) -> ValidConfig {
        match Config::from_toml(text).and_then(Config::validate) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    const BASE: &str = r#"
        listen = ["127.0.0.1:0"]
        [[origins]]
        name = "a"
        hosts = ["a.test"]
        url = "http://127.0.0.1:1"
        [[origins]]
        name = "b"
        hosts = ["*"]
        url = "http://127.0.0.1:2"
    "#;

    #[test]
    fn identical_config_keeps_everything() {
        let p = plan(&cfg(BASE), &cfg(BASE));
        assert_eq!(p.keep, vec![Some(0), Some(1)]);
        assert!(p.retire.is_empty());
        assert!(p.keep_cache);
        assert!(p.needs_restart.is_empty());
    }

    #[test]
    fn per_request_keys_keep_the_pool() {
        let new = BASE.replace(
            r#"hosts = ["a.test"]"#,
            r#"hosts = ["a.test", "*.a.test"]
            host_header = "internal.a"
            retry_buffer = "1MiB"
            cache = false"#,
        );
        let p = plan(&cfg(BASE), &cfg(&new));
        assert_eq!(p.keep, vec![Some(0), Some(1)]);
        assert!(p.retire.is_empty());
    }

    #[test]
    fn connection_keys_replace_the_pool_and_retire_the_old_one() {
        let new = BASE.replace(
            r#"url = "http://127.0.0.1:1""#,
            "url = \"http://127.0.0.1:1\"\n        max_connections = 3",
        );
        let p = plan(&cfg(BASE), &cfg(&new));
        assert_eq!(p.keep, vec![None, Some(1)]);
        assert_eq!(p.retire, vec![0]);
    }

    #[test]
    fn removed_added_and_reordered_origins() {
        let new = r#"
            listen = ["127.0.0.1:0"]
            [[origins]]
            name = "c"
            hosts = ["c.test"]
            url = "http://127.0.0.1:3"
            [[origins]]
            name = "b"
            hosts = ["*"]
            url = "http://127.0.0.1:2"
        "#;
        let p = plan(&cfg(BASE), &cfg(new));
        assert_eq!(p.keep, vec![None, Some(1)]);
        assert_eq!(p.retire, vec![0]);
    }

    #[test]
    fn a_renamed_origin_is_a_new_pool() {
        let new = BASE.replace(r#"name = "a""#, r#"name = "a2""#);
        let p = plan(&cfg(BASE), &cfg(&new));
        assert_eq!(p.keep, vec![None, Some(1)]);
        assert_eq!(p.retire, vec![0]);
    }

    #[test]
    fn listener_and_cache_changes_are_reported() {
        let new = BASE.replace(
            r#"listen = ["127.0.0.1:0"]"#,
            "listen = [\"127.0.0.1:1\"]\n        log_format = \"json\"\n        reuse_port = false\n        workers = 1\n        runtime = \"work-stealing\"\n        [cache]\n        enabled = true",
        );
        let p = plan(&cfg(BASE), &cfg(&new));
        assert_eq!(
            p.needs_restart,
            vec!["listen", "log_format", "reuse_port", "workers", "runtime"]
        );
        assert!(!p.keep_cache);
        // The admin listener's cap is read once, when it starts.
        let new = format!("{BASE}\n        [admin]\n        max_connections = 8");
        let p = plan(&cfg(BASE), &cfg(&new));
        assert_eq!(p.needs_restart, vec!["admin.max_connections"]);
    }
}
