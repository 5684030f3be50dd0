//! Response cache (RFC 9111 + nginx-style use-stale). [`policy`] is the pure decision logic,
//! [`key`] renders cache keys, [`store`] keeps responses (moka, weighed by bytes) and collapses
//! concurrent fetches; [`CacheRt`] is the configured cache the request path consults
//! (`proxy::cached`).

pub mod key;
pub mod policy;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};

use crate::config::{CacheConfig, ConfigError};
use policy::{parse_ignore_headers, PolicyConfig, UseStale, ValidStatus};
use store::Store;

/// The configured cache of one gateway.
pub struct CacheRt {
    /// Stored responses and flights.
    pub store: Arc<Store>,
    /// RFC 9111 / nginx policy settings.
    pub policy: PolicyConfig,
    /// Key template.
    pub key: key::Template,
    /// Larger responses are not stored.
    pub max_object_size: u64,
    /// Refresh stale entries in the background while serving them (`UPDATING`).
    pub background_update: bool,
    /// Collapse concurrent misses.
    pub lock: bool,
    /// How long a collapsed request waits.
    pub lock_timeout: Duration,
    /// Send validators when refreshing.
    pub revalidate: bool,
    /// Methods answered from the cache.
    pub methods: Vec<Method>,
}

impl CacheRt {
    /// Builds the cache from `[cache]`; `None` when disabled.
    pub fn from_config(c: &CacheConfig) -> Result<Option<Arc<CacheRt>>, ConfigError> {
        let policy = policy_config(c)?;
        if !c.enabled {
            return Ok(None);
        }
        Ok(Some(Arc::new(CacheRt {
            store: Store::new(c.max_size.0),
            policy,
            key: key::Template::parse(&c.key).map_err(|r| ConfigError {
                key: "cache.key".into(),
                reason: r,
            })?,
            max_object_size: c.max_object_size.0,
            background_update: c.background_update,
            lock: c.lock,
            lock_timeout: c.lock_timeout.0,
            revalidate: c.revalidate,
            methods: c
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
        })))
    }
}

/// Translates `[cache]` into the policy's settings; errors name the key.
pub fn policy_config(c: &CacheConfig) -> Result<PolicyConfig, ConfigError> {
    let e = |key: &str, reason: String| ConfigError {
        key: key.into(),
        reason,
    };
    let mut valid = Vec::new();
    for (status, d) in &c.valid {
        let s = ValidStatus::parse(status).map_err(|r| e(&format!("cache.valid.{status}"), r))?;
        valid.push((s, d.0));
    }
    // Exact statuses before `any`, as nginx matches them.
    valid.sort_by_key(|(s, _)| matches!(s, ValidStatus::Any));
    let use_stale = UseStale::parse(&c.use_stale).map_err(|r| e("cache.use_stale", r))?;
    let ignore_headers =
        parse_ignore_headers(&c.ignore_headers).map_err(|r| e("cache.ignore_headers", r))?;
    let targeted_field = if c.targeted_field.is_empty() {
        None
    } else {
        Some(
            HeaderName::from_bytes(c.targeted_field.as_bytes())
                .map_err(|_| e("cache.targeted_field", "not a header name".into()))?,
        )
    };
    Ok(PolicyConfig {
        valid,
        use_stale,
        ignore_headers,
        targeted_field,
        ..PolicyConfig::default()
    })
}
