//! muxgate: a reverse-proxy gateway that carries many HTTP/1.1 client connections over a few
//! long-lived, ALPN-negotiated HTTP/2 TLS connections per origin.
//!
//! ```text
//! client ──h1/TLS──▶ server ──▶ proxy (route, headers) ──▶ upstream::OriginPool
//!                                                           ├─ h2: streams over 1..N TLS conns
//!                                                           └─ http/1.1: keep-alive pool
//! ```
//!
//! - [`config`]: figment layering and validation into a [`config::ValidConfig`].
//! - [`server`]: client listeners, TLS termination, limits, graceful shutdown.
//! - [`route`]: host → origin.
//! - [`proxy`]: request/response translation, upgrades (WebSocket: RFC 8441 or a dedicated
//!   HTTP/1.1 connection), access log.
//! - [`upstream`]: dialling, the multiplexed HTTP/2 pool, the HTTP/1.1 pool, retries.
//! - [`admin`]: `/healthz`, `/metrics`, `/pool`.
//! - [`metrics`], [`error`], [`tls`]: shared definitions.
//! - [`testkit`]: in-process origins, certificates and a load client, used by `demo`, tests and
//!   the benchmark.
//!
//! [`Gateway::start`] runs the whole thing in-process and returns the bound addresses.

pub mod admin;
pub mod body;
pub mod cache;
pub mod config;
pub mod demo;
pub mod error;
pub mod fuzzing;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod server;
pub mod testkit;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use config::ValidConfig;
use metrics::Metrics;
use proxy::Proxy;
use server::ServerCtx;

/// A running gateway.
pub struct Gateway {
    /// Bound plain listeners, in config order.
    pub http_addrs: Vec<SocketAddr>,
    /// Bound TLS listeners, in config order.
    pub tls_addrs: Vec<SocketAddr>,
    /// Bound admin listener.
    pub admin_addr: Option<SocketAddr>,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    shutdown_tx: watch::Sender<bool>,
    tracker: TaskTracker,
    drain_timeout: Duration,
}

impl Gateway {
    /// Binds every listener and starts serving. Port 0 binds an ephemeral port.
    pub async fn start(cfg: ValidConfig) -> Result<Gateway, String> {
        let metrics = Metrics::new();
        let proxy = Arc::new(Proxy::new(&cfg, &metrics)?);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let tracker = TaskTracker::new();
        let ctx = Arc::new(ServerCtx {
            proxy: proxy.clone(),
            metrics: metrics.clone(),
            limits: cfg.raw.client.clone(),
            open: AtomicUsize::new(0),
            shutdown: shutdown_rx.clone(),
            tracker: tracker.clone(),
        });
        let mut http_addrs = Vec::new();
        for a in &cfg.listen {
            let l = bind(*a).await?;
            http_addrs.push(l.local_addr().map_err(|e| e.to_string())?);
            tokio::spawn(server::accept_loop(l, None, ctx.clone()));
        }
        let mut tls_addrs = Vec::new();
        for t in &cfg.listen_tls {
            let certs = tls::load_certs(&t.cert)?;
            let key = tls::load_key(&t.key)?;
            let sc = tls::server_config(certs, key, &[b"http/1.1"])?;
            let l = bind(t.addr).await?;
            tls_addrs.push(l.local_addr().map_err(|e| e.to_string())?);
            tokio::spawn(server::accept_loop(
                l,
                Some(TlsAcceptor::from(sc)),
                ctx.clone(),
            ));
        }
        let admin_addr = match cfg.admin {
            Some(a) => {
                let l = bind(a).await?;
                let addr = l.local_addr().map_err(|e| e.to_string())?;
                tokio::spawn(admin::serve(l, proxy.clone(), metrics.clone(), shutdown_rx));
                Some(addr)
            }
            None => None,
        };
        Ok(Gateway {
            http_addrs,
            tls_addrs,
            admin_addr,
            proxy,
            metrics,
            shutdown_tx,
            tracker,
            drain_timeout: cfg.raw.client.drain_timeout.0,
        })
    }

    /// The pool of origin `name` (connection stats for tests and `/pool`).
    pub fn origin(&self, name: &str) -> Option<&Arc<upstream::OriginPool>> {
        self.proxy.origin(name)
    }

    /// This instance's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops accepting, closes upgraded connections (WebSockets), lets in-flight requests
    /// finish within `drain_timeout`, then returns.
    /// Returns false if connections were still open at the deadline.
    pub async fn shutdown(self) -> bool {
        let _ = self.shutdown_tx.send(true);
        self.tracker.close();
        let drain = async {
            // Upgraded connections are closed at once; requests get the drain time.
            tokio::join!(self.tracker.wait(), self.proxy.close_upgrades());
        };
        tokio::time::timeout(self.drain_timeout, drain)
            .await
            .is_ok()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| format!("listen {addr}: {e}"))?;
    sock.set_reuseaddr(true)
        .map_err(|e| format!("listen {addr}: {e}"))?;
    sock.bind(addr).map_err(|e| format!("listen {addr}: {e}"))?;
    sock.listen(4096).map_err(|e| format!("listen {addr}: {e}"))
}
