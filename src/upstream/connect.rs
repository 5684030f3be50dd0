//! Dialling an origin: the current addresses of each server entry (resolved with a
//! [`Resolver`], re-resolved by [`Connector::refresh`]), TCP connect (with timeout), TLS
//! handshake with ALPN (with timeout), passive health per server entry. Counts full vs resumed
//! handshakes. Knows nothing about pools or HTTP: which connections drain when an address
//! disappears is decided by the pools, from [`Connector::is_current`].
//!
//! # Addresses
//! Each server entry keeps its last good address list. A resolution that fails or answers
//! nothing leaves it unchanged (and is logged and counted); an IP literal is its own address
//! and is never resolved. A dial uses the list as it is; only an entry that never resolved
//! resolves on the dial itself, so a gateway whose DNS was down at start recovers on the first
//! request after it comes back.
//!
//! Fuzz targets and tests can replace the network with an in-memory [`Dialer`] ([`with_dialer`]):
//! the pools above then run unchanged over [`Transport::Memory`].

use std::cell::RefCell;
use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{Scheme, ValidOrigin};
use crate::error::Error;
use crate::metrics::OriginMetrics;
use crate::tls::Sessions;

use super::resolve::{self, Resolver};

/// A TTL shorter than this is not honoured (a zero TTL would make the refresh spin).
const MIN_TTL: Duration = Duration::from_secs(1);
/// While an entry has no address at all, retry at least this often.
const UNRESOLVED_RETRY: Duration = Duration::from_secs(1);

/// The transport of one origin connection.
pub enum Transport {
    /// Cleartext TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
    /// An in-memory peer, from a [`Dialer`] (fuzzing and tests only).
    Memory(DuplexStream),
}

/// Replaces DNS, TCP and TLS for fuzz targets and tests: called with the server's host and port
/// (from the config), returns the connection — normally a [`Transport::Memory`] whose other end
/// the caller serves, with the ALPN outcome in [`Connected::h2`] — or the dial error.
pub type Dialer = Arc<dyn Fn(&str, u16) -> Result<Connected, Error> + Send + Sync>;

thread_local! {
    /// The dialler [`Connector::new`] picks up; set only inside [`with_dialer`].
    static DIALER: RefCell<Option<Dialer>> = const { RefCell::new(None) };
}

/// Runs `f` with `dialer` installed on this thread: every [`Connector`] built inside `f`
/// (by `OriginPool::new`, so also by `Proxy::new`) dials through `dialer` instead of the
/// network, keeps its server health bookkeeping, and builds no TLS configuration. The previous
/// dialler (normally none) is restored when `f` returns or panics.
///
/// A test hook: the gateway itself never installs one. A thread-local rather than a constructor
/// argument so that `Proxy::new(config)` — the code under test — needs no second signature.
#[doc(hidden)]
pub fn with_dialer<R>(dialer: Dialer, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Dialer>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            DIALER.with(|d| *d.borrow_mut() = prev);
        }
    }
    let _restore = Restore(DIALER.with(|d| d.borrow_mut().replace(dialer)));
    f()
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, b),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
            Transport::Memory(s) => Pin::new(s).poll_write(cx, b),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, b),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, b),
            Transport::Memory(s) => Pin::new(s).poll_write_vectored(cx, b),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
            Transport::Memory(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A freshly dialled connection.
pub struct Connected {
    /// The byte stream.
    pub io: Transport,
    /// ALPN selected `h2`.
    pub h2: bool,
    /// TLS handshake kind: `Some(true)` resumed, `Some(false)` full, `None` cleartext.
    pub resumed: Option<bool>,
    /// The address dialled (`None` for an in-memory [`Dialer`]).
    pub peer: Option<SocketAddr>,
}

/// One server entry of an origin (`servers`, or the URL's host and port): its current
/// addresses and its health.
struct Server {
    host: String,
    port: u16,
    /// An IP literal: `addrs` is fixed, never resolved.
    literal: bool,
    /// The last good answer (empty until the first one).
    addrs: Mutex<Arc<[SocketAddr]>>,
    health: Mutex<Health>,
    /// Serialises the lookups dials make while the entry has no address: concurrent dials
    /// share one. Holds the last such lookup's failure (when it ended, the error), so the
    /// dials that waited for it fail with it instead of each asking the resolver again.
    first_lookup: tokio::sync::Mutex<Option<(Instant, Error)>>,
}

/// Passive health: consecutive connect/TLS failures eject a server for an exponentially
/// growing time; one success restores it.
#[derive(Default)]
struct Health {
    failures: u32,
    ejected_until: Option<Instant>,
}

/// Dials one origin. Shared by its pools; holds the origin's one `ClientConfig`, so every new
/// connection to any of its servers can resume the TLS session.
pub struct Connector {
    origin: String,
    servers: Vec<Server>,
    next: AtomicUsize,
    server_name: ServerName<'static>,
    /// The origin TLS config (its session store and certificate verifier inside) and what it
    /// trusts (the CA file's contents, verification on or off): a pool replacing this one with
    /// the same trust builds on it, so its sessions stay resumable (rustls resumes a session
    /// only under the verifier that verified it).
    tls_base: Option<(Arc<ClientConfig>, Trust, Arc<Sessions>)>,
    tls: Option<TlsConnector>,
    /// Same config and session store as `tls`, ALPN `http/1.1` only: dedicated connections
    /// for upgrades, which must not negotiate h2.
    tls_h1: Option<TlsConnector>,
    connect_timeout: Duration,
    tls_timeout: Duration,
    backoff: Duration,
    backoff_max: Duration,
    metrics: OriginMetrics,
    resolver: Arc<dyn Resolver>,
    resolve_interval: Duration,
    /// Bumped whenever an address list changes, so pools re-check their connections cheaply.
    generation: AtomicU64,
    /// Set only under [`with_dialer`].
    dialer: Option<Dialer>,
}

/// What an origin's TLS config trusts: the CA file's contents (read again, so a CA rotated in
/// place is never covered by the old one) and whether certificates are verified at all.
#[derive(PartialEq, Eq)]
struct Trust {
    ca: Option<Vec<u8>>,
    verify: bool,
}

impl Trust {
    fn of(o: &ValidOrigin) -> Result<Trust, String> {
        let ca = match &o.raw.tls_ca {
            Some(p) => Some(std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?),
            None => None,
        };
        Ok(Trust {
            ca,
            verify: o.raw.tls_verify,
        })
    }
}

/// What one [`Connector::refresh`] did.
#[derive(Debug, Clone, Copy)]
pub struct Refreshed {
    /// When to resolve again: `resolve_interval`, or sooner for a short TTL or an entry
    /// still without any address.
    pub next: Duration,
    /// Some address list changed: connections to addresses no longer listed should drain.
    pub changed: bool,
}

impl Connector {
    /// Builds the connector; fails only on unreadable CA files.
    pub fn new(o: &ValidOrigin, metrics: OriginMetrics) -> Result<Connector, String> {
        Connector::replacing(o, metrics, None)
    }

    /// Builds the connector of a pool that replaces `prev`'s (a reload): it keeps `prev`'s TLS
    /// sessions when the server name and the trust (CA contents, `tls_verify`) are the same,
    /// so its connections resume instead of starting with a full handshake. A resumed session
    /// skips certificate verification, so sessions never cross a change of trust.
    pub fn replacing(
        o: &ValidOrigin,
        metrics: OriginMetrics,
        prev: Option<&Connector>,
    ) -> Result<Connector, String> {
        let sni = o
            .raw
            .tls_server_name
            .clone()
            .unwrap_or_else(|| o.host.clone());
        let server_name = ServerName::try_from(sni.clone())
            .map_err(|_| format!("invalid TLS server name {sni:?}"))?;
        let dialer = DIALER.with(|d| d.borrow().clone());
        let mut tls_base = None;
        let (tls, tls_h1) =
            match o.scheme {
                // An in-memory dialler needs no TLS (and loading the system roots per origin would
                // dominate a fuzz iteration).
                Scheme::Https if dialer.is_some() => (None, None),
                Scheme::Https => {
                    let trust = Trust::of(o)?;
                    let alpn: Vec<&[u8]> = o.raw.alpn.iter().map(|p| p.as_bytes()).collect();
                    let inherited = prev
                        .filter(|p| p.server_name == server_name)
                        .and_then(|p| p.tls_base.as_ref())
                        .filter(|(_, t, _)| *t == trust)
                        .map(|(cfg, _, s)| (crate::tls::with_alpn(cfg, &alpn), s.clone()));
                    let (cfg, sessions) = match inherited {
                        Some(x) => x,
                        None => {
                            let sessions = Sessions::new();
                            let cfg = crate::tls::client_config(
                                o.raw.tls_ca.as_deref(),
                                o.raw.tls_verify,
                                &o.raw.alpn,
                                sessions.clone(),
                            )?;
                            (cfg, sessions)
                        }
                    };
                    tls_base = Some((cfg.clone(), trust, sessions));
                    // Only if the operator allows http/1.1 to this origin at all.
                    let h1 =
                        o.raw.alpn.iter().any(|p| p == "http/1.1").then(|| {
                            TlsConnector::from(crate::tls::with_alpn(&cfg, &[b"http/1.1"]))
                        });
                    (Some(TlsConnector::from(cfg)), h1)
                }
                Scheme::Http => (None, None),
            };
        let servers = o
            .servers
            .iter()
            .map(|(host, port)| {
                let literal = host.parse::<IpAddr>().ok();
                let addrs: Vec<SocketAddr> = literal
                    .map(|ip| SocketAddr::new(ip, *port))
                    .into_iter()
                    .collect();
                Server {
                    host: host.clone(),
                    port: *port,
                    literal: literal.is_some(),
                    addrs: Mutex::new(addrs.into()),
                    health: Mutex::new(Health::default()),
                    first_lookup: tokio::sync::Mutex::new(None),
                }
            })
            .collect();
        Ok(Connector {
            origin: o.raw.name.clone(),
            servers,
            next: AtomicUsize::new(0),
            server_name,
            tls_base,
            tls,
            tls_h1,
            connect_timeout: o.raw.connect_timeout.0,
            tls_timeout: o.raw.tls_handshake_timeout.0,
            backoff: o.raw.server_backoff.0,
            backoff_max: o.raw.server_backoff_max.0,
            metrics,
            resolver: resolve::from_config(o.hosts_file.as_deref()),
            resolve_interval: o.raw.resolve_interval.0,
            generation: AtomicU64::new(0),
            dialer,
        })
    }

    /// Replaces the resolver (tests; the gateway picks one from `[dns]`).
    pub fn set_resolver(&mut self, resolver: Arc<dyn Resolver>) {
        self.resolver = resolver;
    }

    /// Whether some server entry is a name to re-resolve (not an IP literal, no test dialler).
    pub fn needs_refresh(&self) -> bool {
        self.dialer.is_none() && self.servers.iter().any(|s| !s.literal)
    }

    /// True once every server entry has at least one address (always under a test dialler).
    pub fn resolved(&self) -> bool {
        self.dialer.is_some() || self.servers.iter().all(|s| !s.addrs().is_empty())
    }

    /// Changes whenever some server entry's address list changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether `peer` is still a current address of some server entry. A connection with no
    /// peer (in-memory) is always current.
    pub fn is_current(&self, peer: Option<SocketAddr>) -> bool {
        let Some(peer) = peer else { return true };
        self.servers.iter().any(|s| s.addrs().contains(&peer))
    }

    /// Re-resolves every named server entry once. Failures keep the last good addresses (see
    /// [`Connector::resolve_server`]).
    pub async fn refresh(&self) -> Refreshed {
        let mut next = self.resolve_interval;
        let mut changed = false;
        for s in self.servers.iter().filter(|s| !s.literal) {
            match self.resolve_server(s).await {
                Ok((c, ttl)) => {
                    changed |= c;
                    if let Some(ttl) = ttl {
                        next = next.min(ttl.max(MIN_TTL));
                    }
                }
                Err(_) if s.addrs().is_empty() => next = next.min(UNRESOLVED_RETRY),
                Err(_) => {}
            }
        }
        Refreshed { next, changed }
    }

    /// Resolves one entry. A non-empty answer replaces its addresses (returns whether they
    /// changed, and the TTL); an error or an empty answer keeps the last good ones, with a
    /// warning naming origin and host, and counts `muxgate_dns_resolutions_total{result="error"}`.
    /// Bounded by `connect_timeout`: a hung resolver must not stall the refresh loop for ever.
    async fn resolve_server(&self, s: &Server) -> Result<(bool, Option<Duration>), Error> {
        let answer =
            tokio::time::timeout(self.connect_timeout, self.resolver.resolve(&s.host, s.port))
                .await;
        let failure = match answer {
            Ok(Ok(r)) if !r.addrs.is_empty() => {
                self.metrics.dns(true);
                // Dialled in the resolver's order (getaddrinfo sorts by RFC 6724 preference);
                // compared as sets, so a mere reordering neither counts as a change nor
                // drains anything, while the new order still applies to new dials.
                let mut addrs = r.addrs;
                let mut seen = HashSet::new();
                addrs.retain(|a| seen.insert(*a));
                let mut cur = s.addrs.lock().unwrap_or_else(|p| p.into_inner());
                let changed = cur.iter().copied().collect::<HashSet<_>>() != seen;
                if changed || **cur != *addrs {
                    if changed {
                        tracing::info!(origin = %self.origin, host = %s.host, from = ?&**cur, to = ?addrs, "origin addresses changed");
                        self.generation.fetch_add(1, Ordering::AcqRel);
                    }
                    *cur = addrs.into();
                }
                return Ok((changed, r.ttl));
            }
            Ok(Ok(_)) => "no address".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        self.metrics.dns(false);
        let kept = s.addrs();
        tracing::warn!(origin = %self.origin, host = %s.host, error = %failure, kept = ?&*kept, "resolving origin host failed; keeping the last good addresses");
        Err(Error::Connect(format!("resolving {}: {failure}", s.host)))
    }

    /// Whether this origin speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Dials the next healthy server (round robin), falling through to the others on failure.
    /// When every server is ejected, probes the one whose ejection ends first, so an origin
    /// that is entirely down fails fast instead of hanging.
    pub async fn connect(&self) -> Result<Connected, Error> {
        self.connect_with(self.tls.as_ref(), true).await
    }

    /// Dials like [`Connector::connect`] but offers only ALPN `http/1.1`, for a dedicated
    /// connection that carries one upgraded exchange (it never enters a pool). It shares the
    /// origin's TLS session store, so it resumes the session like any pool connection.
    ///
    /// It skips ejected servers but never ejects or restores one itself: its failure may be
    /// the origin refusing `http/1.1` (an h2-only server), which says nothing about the
    /// server's health, and a client must not be able to get servers ejected by asking for
    /// upgrades.
    pub async fn connect_h1_only(&self) -> Result<Connected, Error> {
        self.connect_with(self.tls_h1.as_ref(), false).await
    }

    /// Whether a dedicated HTTP/1.1 connection may be dialled: cleartext origins, and TLS
    /// origins whose `alpn` lists `http/1.1` (never a cleartext dial to a TLS origin).
    pub fn h1_only_available(&self) -> bool {
        self.dialer.is_some() || self.tls.is_none() || self.tls_h1.is_some()
    }

    async fn connect_with(
        &self,
        tls: Option<&TlsConnector>,
        track_health: bool,
    ) -> Result<Connected, Error> {
        let n = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut order: Vec<usize> = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| self.servers[i].ejected_until().is_none_or(|t| t <= now))
            .collect();
        if order.is_empty() {
            let soonest = (0..n).min_by_key(|&i| self.servers[i].ejected_until());
            order.extend(soonest);
        }
        let mut last = Error::Connect(format!("origin {} has no server", self.origin));
        for i in order {
            let server = &self.servers[i];
            match self.connect_one(server, tls).await {
                Ok(c) => {
                    if track_health {
                        server.succeeded();
                    }
                    return Ok(c);
                }
                Err(e) if !track_health => last = e,
                Err(e) => {
                    let ejected_for = server.failed(self.backoff, self.backoff_max);
                    tracing::warn!(origin = %self.origin, server = %format!("{}:{}", server.host, server.port), error = %e, ejected_for = ?ejected_for, "origin server failed; ejected");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// The addresses of an entry that has none yet (DNS was down at start, or the refresh has
    /// not run yet). A cold burst of dials makes one lookup: the first dial resolves, the
    /// others wait for it and use its answer, or fail with its error.
    async fn first_addrs(&self, server: &Server) -> Result<Arc<[SocketAddr]>, Error> {
        let asked = Instant::now();
        let mut last = server.first_lookup.lock().await;
        let addrs = server.addrs();
        if !addrs.is_empty() {
            return Ok(addrs);
        }
        if let Some((at, e)) = &*last {
            if *at >= asked {
                return Err(e.clone());
            }
        }
        match self.resolve_server(server).await {
            Ok(_) => {
                *last = None;
                Ok(server.addrs())
            }
            Err(e) => {
                *last = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    async fn connect_one(
        &self,
        server: &Server,
        tls: Option<&TlsConnector>,
    ) -> Result<Connected, Error> {
        if let Some(dial) = &self.dialer {
            return dial(&server.host, server.port);
        }
        let mut addrs = server.addrs();
        if addrs.is_empty() {
            addrs = self.first_addrs(server).await?;
        }
        let (tcp, peer) = tokio::time::timeout(self.connect_timeout, tcp(&server.host, &addrs))
            .await
            .map_err(|_| Error::ConnectTimeout)??;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(Connected {
                io: Transport::Plain(tcp),
                h2: false,
                resumed: None,
                peer: Some(peer),
            });
        };
        // While the origin has issued no TLS session yet, one handshake at a time (see
        // `Sessions`). Taken after the TCP connect, so a server that does not answer at all
        // holds up no dial to the others.
        let first = match &self.tls_base {
            Some((_, _, sessions)) => sessions.before_dial().await,
            None => None,
        };
        let started = Instant::now();
        let stream =
            tokio::time::timeout(self.tls_timeout, tls.connect(self.server_name.clone(), tcp))
                .await
                .map_err(|_| Error::TlsTimeout)?
                .map_err(|e| Error::Tls(e.to_string()))?;
        if let Some(turn) = first {
            turn.completed(started.elapsed());
        }
        let (_, conn) = stream.get_ref();
        let h2 = conn.alpn_protocol() == Some(b"h2");
        let resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        if resumed {
            self.metrics.handshakes_resumed.inc();
        } else {
            self.metrics.handshakes_full.inc();
        }
        Ok(Connected {
            io: Transport::Tls(Box::new(stream)),
            h2,
            resumed: Some(resumed),
            peer: Some(peer),
        })
    }
}

impl Server {
    fn addrs(&self) -> Arc<[SocketAddr]> {
        self.addrs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ejected_until(&self) -> Option<Instant> {
        self.health().ejected_until
    }

    fn succeeded(&self) {
        *self.health() = Health::default();
    }

    /// Records a failure; returns how long the server is now ejected.
    fn failed(&self, base: Duration, max: Duration) -> Duration {
        let mut h = self.health();
        h.failures = h.failures.saturating_add(1);
        let d = base
            .saturating_mul(1u32 << (h.failures - 1).min(16))
            .min(max);
        h.ejected_until = Some(Instant::now() + d);
        d
    }
}

/// Connects to the first address that accepts, in order.
async fn tcp(host: &str, addrs: &[SocketAddr]) -> Result<(TcpStream, SocketAddr), Error> {
    let mut last = None;
    for &a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok((s, a)),
            Err(e) => last = Some(format!("{a}: {e}")),
        }
    }
    Err(Error::Connect(last.unwrap_or_else(|| {
        format!("{host} resolved to no address")
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::upstream::resolve::{ResolveFuture, Resolved};

    /// Answers from a list the test changes; counts lookups.
    struct Scripted {
        answer: Mutex<io::Result<Resolved>>,
        lookups: AtomicUsize,
    }

    impl Scripted {
        fn set(&self, a: io::Result<Resolved>) {
            *self.answer.lock().unwrap_or_else(|p| p.into_inner()) = a;
        }
    }

    impl Resolver for Scripted {
        fn resolve<'a>(&'a self, _host: &'a str, _port: u16) -> ResolveFuture<'a> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            let a = match &*self.answer.lock().unwrap_or_else(|p| p.into_inner()) {
                Ok(r) => Ok(r.clone()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            Box::pin(async move { a })
        }
    }

    fn ok(addrs: &[&str], ttl: Option<u64>) -> io::Result<Resolved> {
        Ok(Resolved {
            addrs: addrs.iter().map(|a| a.parse().expect("addr")).collect(),
            ttl: ttl.map(Duration::from_secs),
        })
    }

    fn connector(extra: &str) -> (Connector, Arc<Scripted>, Arc<Metrics>) {
        let toml = format!(
            "[[origins]]\nname = \"o\"\nhosts = [\"*\"]\nurl = \"http://app.test:80\"\nresolve_interval = \"30s\"\n{extra}\n"
        );
        let cfg = Config::from_toml(&toml)
            .and_then(Config::validate)
            .unwrap_or_else(|e| panic!("{e}"));
        let metrics = Metrics::new();
        let mut c = Connector::new(&cfg.origins[0], metrics.origin("o")).expect("connector");
        let r = Arc::new(Scripted {
            answer: Mutex::new(ok(&[], None)),
            lookups: AtomicUsize::new(0),
        });
        c.set_resolver(r.clone());
        (c, r, metrics)
    }

    fn count(m: &Metrics, result: &str) -> bool {
        m.render().contains(&format!(
            "muxgate_dns_resolutions_total{{origin=\"o\",result=\"{result}\"}}"
        ))
    }

    #[tokio::test]
    async fn refresh_replaces_keeps_and_honours_ttl() {
        let (c, r, m) = connector("");
        let a: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:80".parse().expect("addr");
        assert!(!c.resolved());
        // Nothing yet, and an empty answer: retried soon, not after the whole interval.
        let out = c.refresh().await;
        assert!(!out.changed && out.next == UNRESOLVED_RETRY);
        assert!(count(&m, "error"));

        r.set(ok(&["10.0.0.1:80"], None));
        let g0 = c.generation();
        let out = c.refresh().await;
        assert!(out.changed && out.next == Duration::from_secs(30));
        assert!(c.resolved() && c.is_current(Some(a)) && !c.is_current(Some(b)));
        assert!(c.generation() != g0 && count(&m, "ok"));

        // The same answer again is no change; a TTL shorter than the interval wins, but a
        // zero TTL is raised to MIN_TTL.
        r.set(ok(&["10.0.0.1:80", "10.0.0.1:80"], Some(5)));
        let g1 = c.generation();
        let out = c.refresh().await;
        assert!(!out.changed && out.next == Duration::from_secs(5));
        assert_eq!(c.generation(), g1);
        r.set(ok(&["10.0.0.1:80"], Some(0)));
        assert_eq!(c.refresh().await.next, MIN_TTL);

        // Errors and empty answers keep the last good address.
        r.set(Err(io::Error::new(io::ErrorKind::NotFound, "gone")));
        assert!(!c.refresh().await.changed);
        r.set(ok(&[], None));
        let out = c.refresh().await;
        assert!(!out.changed && out.next == Duration::from_secs(30));
        assert!(c.is_current(Some(a)) && c.resolved());

        r.set(ok(&["10.0.0.2:80"], None));
        assert!(c.refresh().await.changed);
        assert!(!c.is_current(Some(a)) && c.is_current(Some(b)));
        // In-memory connections have no address and are never stale.
        assert!(c.is_current(None));
    }

    /// Answers after a delay; counts lookups.
    struct Slow {
        answer: io::Result<Resolved>,
        lookups: AtomicUsize,
    }

    impl Resolver for Slow {
        fn resolve<'a>(&'a self, _host: &'a str, _port: u16) -> ResolveFuture<'a> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            let a = match &self.answer {
                Ok(r) => Ok(r.clone()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                a
            })
        }
    }

    /// A burst of dials before the first resolution shares one lookup, whether it answers or
    /// fails; a later dial after a failure asks again.
    #[tokio::test]
    async fn a_cold_burst_of_dials_makes_one_lookup() {
        // Port 1 on loopback refuses: each dial gets past resolution and then fails to connect.
        for (answer, resolves) in [(ok(&["127.0.0.1:1"], None), true), (ok(&[], None), false)] {
            let (mut c, _, m) = connector("");
            let r = Arc::new(Slow {
                answer,
                lookups: AtomicUsize::new(0),
            });
            c.set_resolver(r.clone());
            let errors =
                futures_util::future::join_all((0..20).map(|_| c.connect_one(&c.servers[0], None)))
                    .await;
            assert_eq!(r.lookups.load(Ordering::SeqCst), 1, "resolves: {resolves}");
            for e in &errors {
                let msg = e
                    .as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                assert_eq!(msg.contains("resolv"), !resolves, "{msg}");
            }
            assert_eq!(count(&m, "ok"), resolves);
            if !resolves {
                // The failure is not cached for later dials: the next one asks again.
                let _ = c.connect_one(&c.servers[0], None).await;
                assert_eq!(r.lookups.load(Ordering::SeqCst), 2);
            }
        }
    }

    #[tokio::test]
    async fn ip_literals_are_never_resolved() {
        let (c, r, _) = connector("servers = [\"127.0.0.9:8080\", \"[::1]:8080\"]");
        assert!(c.resolved());
        assert!(!c.needs_refresh());
        assert!(c.is_current(Some("127.0.0.9:8080".parse().expect("addr"))));
        assert!(c.is_current(Some("[::1]:8080".parse().expect("addr"))));
        let _ = c.refresh().await;
        assert_eq!(r.lookups.load(Ordering::SeqCst), 0);
    }
}
