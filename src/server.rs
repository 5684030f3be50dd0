//! Client-facing listeners: accept (with the `client.max_connections` cap), TLS termination
//! (with a handshake timeout), HTTP/1.1 via hyper (keep-alive, pipelining, header limits and the
//! header read timeout), graceful shutdown. Requests go to [`Proxy::handle`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::ClientLimits;
use crate::metrics::Metrics;
use crate::proxy::{ClientInfo, ConnHold, Proxy};

/// What a configuration reload swaps. Read once per request (the proxy: routes, pools, cache)
/// or once per accepted connection (the limits), so a reload never disturbs a request in flight
/// and a keep-alive connection picks up new routes with its next request.
pub struct Live {
    /// The request path.
    pub proxy: ArcSwap<Proxy>,
    /// Client limits.
    pub limits: ArcSwap<ClientLimits>,
}

/// What every connection task needs.
pub struct ServerCtx {
    /// Routes, pools, cache and limits; swapped by a reload.
    pub live: Arc<Live>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Open client connections (all listeners).
    pub open: AtomicUsize,
    /// Flips to true on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Tracks connection tasks for draining.
    pub tracker: TaskTracker,
}

/// Accepts on `listener` until shutdown.
pub async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, ctx: Arc<ServerCtx>) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let max = ctx.live.limits.load().max_connections;
        if ctx.open.load(Ordering::Acquire) >= max {
            ctx.metrics
                .downstream_refused_total
                .get_or_create(&vec![("reason", "limit".into())])
                .inc();
            tracing::warn!(%peer, limit = max, "client connection refused: at client.max_connections");
            drop(stream);
            continue;
        }
        ctx.open.fetch_add(1, Ordering::AcqRel);
        let ctx2 = ctx.clone();
        let tls = tls.clone();
        let span = tracing::debug_span!("conn", %peer, tls = tls.is_some());
        ctx.tracker.spawn(
            async move {
                ctx2.metrics.downstream_connections_open.inc();
                serve_conn(stream, peer, tls, &ctx2).await;
                ctx2.metrics.downstream_connections_open.dec();
                ctx2.open.fetch_sub(1, Ordering::AcqRel);
            }
            .instrument(span),
        );
    }
}

async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    ctx: &Arc<ServerCtx>,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => {
            count(ctx, "http/1.1");
            serve_http1(stream, ClientInfo { peer, tls: false }, ctx).await
        }
        Some(acceptor) => {
            let timeout = ctx.live.limits.load().tls_handshake_timeout.0;
            let hs = tokio::time::timeout(timeout, acceptor.accept(stream)).await;
            match hs {
                Ok(Ok(s)) => {
                    count(ctx, "http/1.1+tls");
                    serve_http1(s, ClientInfo { peer, tls: true }, ctx).await
                }
                Ok(Err(e)) => {
                    refused(ctx, "tls");
                    tracing::debug!(error = %e, "client TLS handshake failed");
                }
                Err(_) => {
                    refused(ctx, "tls_timeout");
                    tracing::debug!("client TLS handshake timed out");
                }
            }
        }
    }
}

fn count(ctx: &ServerCtx, protocol: &str) {
    ctx.metrics
        .downstream_connections_total
        .get_or_create(&vec![("protocol", protocol.into())])
        .inc();
}

fn refused(ctx: &ServerCtx, reason: &str) {
    ctx.metrics
        .downstream_refused_total
        .get_or_create(&vec![("reason", reason.into())])
        .inc();
}

async fn serve_http1<S>(io: S, client: ClientInfo, ctx: &Arc<ServerCtx>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let live = ctx.live.clone();
    let limits = live.limits.load_full();
    // Every request carries a `ConnHold`; an upgrade tunnel keeps one after hyper has handed
    // the connection over, and this task waits for it (see the end of this function).
    let (hold_tx, mut hold_rx) = tokio::sync::mpsc::channel::<()>(1);
    let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let proxy = live.proxy.load_full();
        req.extensions_mut().insert(ConnHold(hold_tx.clone()));
        // Boxed: hyper keeps one allocation the size of this future for the connection's whole
        // life, idle or not; unboxed, the proxy's request future made every idle keep-alive
        // connection several KiB larger (bench/idle_conns.sh).
        let fut = Box::pin(proxy.handle(req, client));
        async move { Ok::<_, std::convert::Infallible>(fut.await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout.0)
        // Twice the configured limits: between 1x and 2x the proxy answers 431/414 with a body.
        .max_header_size(limits.max_header_size.0 as usize * 2)
        .max_buf_size((limits.max_header_size.0 as usize * 2).max(8192) + 8192)
        // Not `pipeline_flush(true)`: hyper then drops buffered responses (and its own 431) when
        // the connection closes with unread input.
        .keep_alive(true);
    if let Some(n) = hyper_max_headers(&limits) {
        builder.max_headers(n);
    }
    // `with_upgrades`: after a 101 the connection's I/O goes to the upgrade tunnel
    // (`proxy::upgrade`), which then lives on its own task.
    let mut conn = Box::pin(
        builder
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades(),
    );
    let mut shutdown = ctx.shutdown.clone();
    tokio::select! {
        r = conn.as_mut() => log_conn_end(r),
        _ = shutdown.changed() => {
            // Finish the request in flight, then close (Connection: close on the response).
            conn.as_mut().graceful_shutdown();
            log_conn_end(conn.as_mut().await);
        }
    }
    // Drops the service and its `ConnHold`; what remains is held by an upgrade tunnel, if
    // any: the connection stays counted until the tunnel ends (shutdown closes tunnels).
    drop(conn);
    let _ = hold_rx.recv().await;
}

/// The header-count limit given to hyper: its own default (100) unless `client.max_headers`
/// exceeds that, then twice the limit (so between 1x and 2x the proxy answers 431 with a body).
/// Setting it at all makes hyper allocate and fill two arrays of that size for every request
/// head — 3.7 % of the gateway's instructions per request in bench/callgrind.sh — while its
/// default lives on the stack. Up to 100 fields the proxy's own check (`client.max_headers`)
/// answers; past 100 hyper does, with an empty-bodied 431.
pub fn hyper_max_headers(limits: &ClientLimits) -> Option<usize> {
    (limits.max_headers > 100).then(|| limits.max_headers * 2)
}

fn log_conn_end(r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        if e.is_timeout() {
            tracing::debug!("client connection closed: header read timeout");
        } else {
            tracing::debug!(error = %e, "client connection ended with error");
        }
    }
}
