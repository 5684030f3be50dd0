//! Dialling an origin: DNS, TCP connect (with timeout), TLS handshake with ALPN (with timeout).
//! Counts full vs resumed handshakes. Knows nothing about pools or HTTP.
//!
//! Fuzz targets and tests can replace the network with an in-memory [`Dialer`] ([`with_dialer`]):
//! the pools above then run unchanged over [`Transport::Memory`].

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
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
}

/// One address of an origin (`servers`, or the URL's host and port), with its health.
struct Server {
    host: String,
    port: u16,
    health: Mutex<Health>,
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
    tls: Option<TlsConnector>,
    /// Same config and session store as `tls`, ALPN `http/1.1` only: dedicated connections
    /// for upgrades, which must not negotiate h2.
    tls_h1: Option<TlsConnector>,
    connect_timeout: Duration,
    tls_timeout: Duration,
    backoff: Duration,
    backoff_max: Duration,
    metrics: OriginMetrics,
    /// Set only under [`with_dialer`].
    dialer: Option<Dialer>,
}

impl Connector {
    /// Builds the connector; fails only on unreadable CA files.
    pub fn new(o: &ValidOrigin, metrics: OriginMetrics) -> Result<Connector, String> {
        let sni = o
            .raw
            .tls_server_name
            .clone()
            .unwrap_or_else(|| o.host.clone());
        let server_name = ServerName::try_from(sni.clone())
            .map_err(|_| format!("invalid TLS server name {sni:?}"))?;
        let dialer = DIALER.with(|d| d.borrow().clone());
        let (tls, tls_h1) =
            match o.scheme {
                // An in-memory dialler needs no TLS (and loading the system roots per origin would
                // dominate a fuzz iteration).
                Scheme::Https if dialer.is_some() => (None, None),
                Scheme::Https => {
                    let cfg: Arc<ClientConfig> = crate::tls::client_config(
                        o.raw.tls_ca.as_deref(),
                        o.raw.tls_verify,
                        &o.raw.alpn,
                    )?;
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
            .map(|(host, port)| Server {
                host: host.clone(),
                port: *port,
                health: Mutex::new(Health::default()),
            })
            .collect();
        Ok(Connector {
            origin: o.raw.name.clone(),
            servers,
            next: AtomicUsize::new(0),
            server_name,
            tls,
            tls_h1,
            connect_timeout: o.raw.connect_timeout.0,
            tls_timeout: o.raw.tls_handshake_timeout.0,
            backoff: o.raw.server_backoff.0,
            backoff_max: o.raw.server_backoff_max.0,
            metrics,
            dialer,
        })
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

    async fn connect_one(
        &self,
        server: &Server,
        tls: Option<&TlsConnector>,
    ) -> Result<Connected, Error> {
        if let Some(dial) = &self.dialer {
            return dial(&server.host, server.port);
        }
        let tcp = tokio::time::timeout(self.connect_timeout, tcp(&server.host, server.port))
            .await
            .map_err(|_| Error::ConnectTimeout)??;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(Connected {
                io: Transport::Plain(tcp),
                h2: false,
                resumed: None,
            });
        };
        let stream =
            tokio::time::timeout(self.tls_timeout, tls.connect(self.server_name.clone(), tcp))
                .await
                .map_err(|_| Error::TlsTimeout)?
                .map_err(|e| Error::Tls(e.to_string()))?;
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
        })
    }
}

impl Server {
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

async fn tcp(host: &str, port: u16) -> Result<TcpStream, Error> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::Connect(format!("resolving {host}: {e}")))?;
    let mut last = None;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(format!("{a}: {e}")),
        }
    }
    Err(Error::Connect(last.unwrap_or_else(|| {
        format!("{host} resolved to no address")
    })))
}
