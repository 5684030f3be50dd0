//! muxgate: a reverse-proxy gateway that carries many HTTP/1.1 client connections over a few
//! long-lived, ALPN-negotiated HTTP/2 TLS connections per origin.
//!
//! ```text
//! client ──h1/h2, TLS/plain──▶ server ──▶ proxy (route, headers) ──▶ upstream::OriginPool
//!                                                                     ├─ h2: streams over 1..N TLS conns
//!                                                                     └─ http/1.1: keep-alive pool
//! ```
//!
//! - [`config`]: figment layering and validation into a [`config::ValidConfig`].
//! - [`server`]: client listeners, TLS termination, limits, graceful shutdown; HTTP/1.1 and
//!   HTTP/2 clients ([`h2guard`]: h2c preface detection, flood limits).
//! - [`shard`]: the thread-per-core runtime (shard threads, where origin connections run).
//! - [`route`]: host → origin.
//! - [`proxy`]: request/response translation, upgrades (WebSocket: RFC 8441 or a dedicated
//!   HTTP/1.1 connection), access log.
//! - [`upstream`]: name resolution and re-resolution, dialling, the multiplexed HTTP/2 pool,
//!   the HTTP/1.1 pool, retries.
//! - [`admin`]: `/healthz`, `/metrics`, `/pool`.
//! - [`metrics`], [`error`], [`tls`]: shared definitions.
//! - [`testkit`]: in-process origins, certificates and a load client, used by `demo`, tests and
//!   the benchmark.
//!
//! [`Gateway::start`] runs the whole thing in-process and returns the bound addresses.

pub mod admin;
pub mod body;
pub mod cache;
pub mod coalesce;
pub mod config;
pub mod demo;
pub mod error;
pub mod fuzzing;
pub mod h2guard;
pub mod inplace;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod server;
pub mod shard;
pub mod testkit;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use config::ValidConfig;
use metrics::Metrics;
use proxy::Proxy;
use server::{Live, ServerCtx};
use tls::ReloadableCert;

/// A running gateway.
pub struct Gateway {
    /// Bound plain listeners, in config order.
    pub http_addrs: Vec<SocketAddr>,
    /// Bound TLS listeners, in config order.
    pub tls_addrs: Vec<SocketAddr>,
    /// Bound admin listener.
    pub admin_addr: Option<SocketAddr>,
    live: Arc<Live>,
    /// The configuration running now (the base of the next reload's plan).
    running: Mutex<ValidConfig>,
    /// One per TLS listener, in config order.
    certs: Vec<Arc<ReloadableCert>>,
    metrics: Arc<Metrics>,
    /// Wakes the listeners, the admin listener and client connections at shutdown.
    stop: Arc<server::stop::StopSignal>,
    tracker: TaskTracker,
    /// The shard threads (`runtime = "thread-per-core"`).
    shards: Option<Arc<shard::Shards>>,
    /// Where origin connections run (the shards' runtimes; empty without shards).
    placement: shard::Placement,
}

/// What a successful [`Gateway::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Origins whose pools (connections, TLS sessions) were kept.
    pub kept: Vec<String>,
    /// Origins with a fresh pool (new, or connection settings changed).
    pub fresh: Vec<String>,
    /// Origins whose old pool drains (removed, or replaced by a fresh pool).
    pub retired: Vec<String>,
    /// Changed keys that need a restart to take effect.
    pub needs_restart: Vec<&'static str>,
}

impl Gateway {
    /// Binds every listener and starts serving. Port 0 binds an ephemeral port.
    pub async fn start(mut cfg: ValidConfig) -> Result<Gateway, String> {
        let runtimes = match cfg.shards {
            Some(n) => Some(
                shard::ShardRuntimes::build(n)
                    .map_err(|e| format!("cannot start the shard threads: {e}"))?,
            ),
            None => None,
        };
        let placement = runtimes.as_ref().map(|r| r.placement()).unwrap_or_default();
        for o in &mut cfg.origins {
            o.placement = placement.clone();
        }
        let metrics = Metrics::new();
        let proxy = Arc::new(Proxy::new(&cfg, &metrics)?);
        let stop = Arc::new(server::stop::StopSignal::new());
        let tracker = TaskTracker::new();
        let live = Arc::new(Live {
            proxy: ArcSwap::new(proxy),
            limits: ArcSwap::from_pointee(cfg.raw.client.clone()),
        });
        let ctx = Arc::new(ServerCtx {
            live: live.clone(),
            metrics: metrics.clone(),
            open: AtomicUsize::new(0),
            stop: stop.clone(),
            tracker: tracker.clone(),
        });
        let shards = match runtimes {
            Some(r) => Some(
                r.start(ctx.clone())
                    .map_err(|e| format!("cannot start the shard threads: {e}"))?,
            ),
            None => None,
        };
        let reuse_port = cfg.raw.reuse_port;
        let mut http_addrs = Vec::new();
        for a in &cfg.listen {
            let l = bind(*a, reuse_port).await?;
            let addr = l.local_addr().map_err(|e| e.to_string())?;
            http_addrs.push(addr);
            serve_listener(l, addr, None, &ctx, &shards, reuse_port).await?;
        }
        let mut tls_addrs = Vec::new();
        let mut certs = Vec::new();
        for t in &cfg.listen_tls {
            let cert = ReloadableCert::load(&t.cert, &t.key)?;
            // RFC 9113 §3.2: "h2" for HTTP/2 over TLS, preferred; clients without ALPN or
            // offering only http/1.1 get HTTP/1.1.
            let sc = tls::server_config(cert.clone(), &[b"h2", b"http/1.1"])?;
            certs.push(cert);
            let l = bind(t.addr, reuse_port).await?;
            let addr = l.local_addr().map_err(|e| e.to_string())?;
            tls_addrs.push(addr);
            let acceptor = Some(TlsAcceptor::from(sc));
            serve_listener(l, addr, acceptor, &ctx, &shards, reuse_port).await?;
        }
        let admin_addr = match cfg.admin {
            Some(a) => {
                let l = bind(a, cfg.raw.reuse_port).await?;
                let addr = l.local_addr().map_err(|e| e.to_string())?;
                tokio::spawn(admin::serve(
                    l,
                    cfg.raw.admin.max_connections,
                    live.clone(),
                    metrics.clone(),
                    stop.clone(),
                    tracker.clone(),
                ));
                Some(addr)
            }
            None => None,
        };
        Ok(Gateway {
            http_addrs,
            tls_addrs,
            admin_addr,
            live,
            running: Mutex::new(cfg),
            certs,
            metrics,
            stop,
            tracker,
            shards,
            placement,
        })
    }

    /// Swaps in `new` (already validated) without dropping what it can keep: pools of origins
    /// whose connection settings did not change keep their connections and TLS sessions, the
    /// cache keeps its entries if `[cache]` did not change, listener certificates are re-read.
    /// All or nothing: if a certificate or an origin's TLS setup fails to load, nothing changes
    /// and the error names what failed. Counted in `muxgate_config_reloads_total{result}`.
    pub fn reload(&self, new: ValidConfig) -> Result<ReloadReport, String> {
        let r = self.try_reload(new);
        let result = if r.is_ok() { "ok" } else { "error" };
        self.metrics
            .config_reloads_total
            .get_or_create(&vec![("result", result.into())])
            .inc();
        r
    }

    fn try_reload(&self, mut new: ValidConfig) -> Result<ReloadReport, String> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        // The shard threads are fixed at start (`runtime` and `workers` need a restart): new
        // pools place their connections on the running shards.
        new.shards = running.shards;
        for o in &mut new.origins {
            o.placement = self.placement.clone();
        }
        let plan = reload::plan(&running, &new);
        // Load everything that can fail before swapping anything.
        let mut keys = Vec::new();
        for (i, t) in new.listen_tls.iter().enumerate().take(self.certs.len()) {
            let key = ReloadableCert::load(&t.cert, &t.key)
                .map_err(|e| format!("config error: key `listen_tls.{i}.cert`: {e}"))?;
            keys.push(key.current());
        }
        let old = self.live.proxy.load_full();
        let old_pools: Vec<Arc<upstream::OriginPool>> = old.origins().cloned().collect();
        let pools: Vec<Option<Arc<upstream::OriginPool>>> = plan
            .keep
            .iter()
            .map(|k| k.and_then(|i| old_pools.get(i).cloned()))
            .collect();
        let cache = plan.keep_cache.then(|| old.cache().cloned());
        let mut proxy = Proxy::reusing(&new, &self.metrics, &pools, &old_pools, cache)?;
        // Open WebSocket (and other upgraded) connections survive the reload.
        proxy.adopt_tunnels(&old);
        // Swap: certificates, then the request path, then the limits.
        for (cert, key) in self.certs.iter().zip(keys) {
            cert.set(key);
        }
        self.live.proxy.store(Arc::new(proxy));
        self.live.limits.store(Arc::new(new.raw.client.clone()));
        let name = |i: &usize| old_pools.get(*i).map(|p| p.name().to_string());
        let report = ReloadReport {
            kept: plan.keep.iter().flatten().filter_map(name).collect(),
            fresh: plan
                .keep
                .iter()
                .zip(&new.origins)
                .filter(|(k, _)| k.is_none())
                .map(|(_, o)| o.raw.name.clone())
                .collect(),
            retired: plan.retire.iter().filter_map(name).collect(),
            needs_restart: plan.needs_restart.clone(),
        };
        // Retired pools drain: no new streams on their connections, requests in flight finish,
        // each connection closes once its last stream ends.
        for i in &plan.retire {
            if let Some(p) = old_pools.get(*i) {
                p.drain_all();
            }
        }
        *running = new;
        Ok(report)
    }

    /// The pool of origin `name` (connection stats for tests and `/pool`).
    pub fn origin(&self, name: &str) -> Option<Arc<upstream::OriginPool>> {
        self.live.proxy.load().origin(name).cloned()
    }

    /// The certificate TLS listener `i` serves now.
    pub fn tls_cert(&self, i: usize) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.certs.get(i).map(|c| c.current())
    }

    /// Client connections each shard thread serves now (`None` unless
    /// `runtime = "thread-per-core"`).
    pub fn shard_connections(&self) -> Option<Vec<usize>> {
        self.shards.as_ref().map(|s| s.open())
    }

    /// This instance's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops accepting, closes upgraded connections (WebSockets), lets in-flight requests
    /// finish within `drain_timeout`, then returns.
    /// Returns false if connections were still open at the deadline.
    pub async fn shutdown(self) -> bool {
        self.stop.stop();
        self.tracker.close();
        let drain = async {
            // Upgraded connections are closed at once; requests get the drain time.
            let proxy = self.live.proxy.load_full();
            tokio::join!(self.tracker.wait(), proxy.close_upgrades());
        };
        // Read now, not at start: a reload may have changed it.
        let drain_timeout = self.live.limits.load().drain_timeout.0;
        tokio::time::timeout(drain_timeout, drain).await.is_ok()
    }
}

/// Starts accepting on a bound client listener: on this runtime; or with shards, one socket
/// per shard (`reuse_port`), else on this runtime handing connections to the shards.
async fn serve_listener(
    l: TcpListener,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    ctx: &Arc<ServerCtx>,
    shards: &Option<Arc<shard::Shards>>,
    reuse_port: bool,
) -> Result<(), String> {
    let accepted = match shards {
        Some(sh) if reuse_port => {
            // `addr`, not the configured address: port 0 was bound to a real port.
            return sh.listen(l, || bind(addr, true), tls, ctx).await;
        }
        Some(sh) => server::Accepted::Dispatch(sh.clone()),
        None => server::Accepted::Serve(None),
    };
    tokio::spawn(server::accept_loop(l, tls, ctx.clone(), accepted));
    Ok(())
}

/// Binds a listener. With `reuse_port` (client listeners, `reuse_port = true`), another process
/// can bind the same address: the kernel spreads new connections over both until one closes
/// its listener — the basis of the zero-downtime upgrade (README).
async fn bind(addr: SocketAddr, reuse_port: bool) -> Result<TcpListener, String> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| format!("listen {addr}: {e}"))?;
    sock.set_reuseaddr(true)
        .map_err(|e| format!("listen {addr}: {e}"))?;
    #[cfg(unix)]
    if reuse_port {
        sock.set_reuseport(true)
            .map_err(|e| format!("listen {addr}: SO_REUSEPORT: {e}"))?;
    }
    #[cfg(not(unix))]
    let _ = reuse_port;
    sock.bind(addr).map_err(|e| format!("listen {addr}: {e}"))?;
    sock.listen(4096).map_err(|e| format!("listen {addr}: {e}"))
}
