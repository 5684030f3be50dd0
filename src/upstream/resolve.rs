//! Name resolution for origin servers: the [`Resolver`] trait (host + port → addresses, with a
//! TTL when the source has one), the system resolver (getaddrinfo through tokio) and a
//! hosts(5)-file resolver re-read on every resolution, picked by `[dns] hosts_file`.
//!
//! Owns only the lookup. When to re-resolve, which addresses are kept after a failure and what
//! happens to connections to addresses that disappeared is the [`super::connect::Connector`]'s
//! and the pools' business. IP literals never reach a resolver (the connector skips them).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// What one resolution produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Addresses, in the resolver's order (may be empty: the name has no address).
    pub addrs: Vec<SocketAddr>,
    /// How long the answer may be cached, when the source says (DNS TTL). `None`: unknown.
    pub ttl: Option<Duration>,
}

/// The future a [`Resolver`] returns.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Resolved>> + Send + 'a>>;

/// Resolves a host name and port to socket addresses. Object-safe so the connector holds an
/// `Arc<dyn Resolver>` and tests can plug in their own.
pub trait Resolver: Send + Sync + 'static {
    /// Looks up `host` (never an IP literal) for `port`.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a>;
}

/// The operating system's resolver (`getaddrinfo` via `tokio::net::lookup_host`), which honours
/// `/etc/hosts`, `nsswitch.conf` and the local DNS configuration. getaddrinfo exposes no TTL, so
/// answers are re-resolved every `resolve_interval`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, port)).await?.collect();
            Ok(Resolved { addrs, ttl: None })
        })
    }
}

/// Looks names up in a file in hosts(5) format, read afresh on every resolution so an operator
/// (or a test) can move an origin by rewriting the file. No TTL.
#[derive(Debug, Clone)]
pub struct HostsFileResolver {
    path: PathBuf,
}

impl HostsFileResolver {
    /// A resolver reading `path`.
    pub fn new(path: impl Into<PathBuf>) -> HostsFileResolver {
        HostsFileResolver { path: path.into() }
    }
}

impl Resolver for HostsFileResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        Box::pin(async move {
            let text = tokio::fs::read_to_string(&self.path).await.map_err(|e| {
                io::Error::new(e.kind(), format!("reading {}: {e}", self.path.display()))
            })?;
            let addrs = parse_hosts(&text, host)
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect();
            Ok(Resolved { addrs, ttl: None })
        })
    }
}

/// The resolver for `[dns] hosts_file`: that file when set, else the system resolver.
pub fn from_config(hosts_file: Option<&Path>) -> Arc<dyn Resolver> {
    match hosts_file {
        Some(p) => Arc::new(HostsFileResolver::new(p)),
        None => Arc::new(SystemResolver),
    }
}

/// The addresses hosts(5) text gives `host`: every line whose canonical name or an alias
/// equals `host` (ASCII case-insensitive, a trailing dot ignored), in file order, without
/// duplicates. `#` starts a comment; lines whose first field is not an IP address are skipped
/// (hosts(5) has no error reporting either).
pub fn parse_hosts(text: &str, host: &str) -> Vec<IpAddr> {
    let want = host.trim_end_matches('.');
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_ascii_whitespace();
        let Some(ip) = fields.next().and_then(|f| f.parse::<IpAddr>().ok()) else {
            continue;
        };
        let listed = fields.any(|name| name.trim_end_matches('.').eq_ignore_ascii_case(want));
        if listed && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn hosts_file_parsing() {
        let text = "\
# comment line
127.0.0.1   localhost
127.0.0.2   app.test  alias.test   # trailing comment
  10.0.0.1\tAPP.TEST
::1         app.test ip6-localhost
not-an-ip   app.test
127.0.0.2   app.test
#10.9.9.9   app.test
10.0.0.9    app.testing other
";
        assert_eq!(
            parse_hosts(text, "app.test"),
            ips(&["127.0.0.2", "10.0.0.1", "::1"])
        );
        assert_eq!(parse_hosts(text, "alias.test."), ips(&["127.0.0.2"]));
        assert_eq!(parse_hosts(text, "App.Test"), parse_hosts(text, "app.test"));
        assert!(parse_hosts(text, "missing.test").is_empty());
        assert!(parse_hosts("", "app.test").is_empty());
        // An address with no names lists nothing.
        assert!(parse_hosts("127.0.0.1\n", "app.test").is_empty());
    }

    #[tokio::test]
    async fn hosts_file_is_read_on_every_resolution() {
        let path = std::env::temp_dir().join(format!("muxgate-hosts-unit-{}", std::process::id()));
        let r = HostsFileResolver::new(&path);
        std::fs::write(&path, "127.0.0.1 a.test\n").expect("write");
        let first = r.resolve("a.test", 80).await.expect("resolve");
        assert_eq!(first.addrs, vec!["127.0.0.1:80".parse().expect("addr")]);
        std::fs::write(&path, "127.0.0.3 a.test\n").expect("write");
        let second = r.resolve("a.test", 80).await.expect("resolve");
        assert_eq!(second.addrs, vec!["127.0.0.3:80".parse().expect("addr")]);
        std::fs::remove_file(&path).expect("remove");
        assert!(r.resolve("a.test", 80).await.is_err());
    }
}
