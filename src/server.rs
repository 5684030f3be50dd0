//! Client-facing listeners: accept (with the `client.max_connections` cap), TLS termination
//! (with a handshake timeout), HTTP/1.1 via hyper (keep-alive, pipelining, header limits and the
//! header read timeout), graceful shutdown. Requests go to [`Proxy::handle`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

/// What every connection task needs.
pub struct ServerCtx {
    /// The request path.
    pub proxy: Arc<Proxy>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Limits.
    pub limits: ClientLimits,
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
        if ctx.open.load(Ordering::Acquire) >= ctx.limits.max_connections {
            ctx.metrics
                .downstream_refused_total
                .get_or_create(&vec![("reason", "limit".into())])
                .inc();
            tracing::warn!(%peer, limit = ctx.limits.max_connections, "client connection refused: at client.max_connections");
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
            let hs =
                tokio::time::timeout(ctx.limits.tls_handshake_timeout.0, acceptor.accept(stream))
                    .await;
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
    let proxy = ctx.proxy.clone();
    // Every request carries a `ConnHold`; an upgrade tunnel keeps one after hyper has handed
    // the connection over, and this task waits for it (see the end of this function).
    let (hold_tx, mut hold_rx) = tokio::sync::mpsc::channel::<()>(1);
    let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let proxy = proxy.clone();
        req.extensions_mut().insert(ConnHold(hold_tx.clone()));
        async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, client).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.limits.header_timeout.0)
        // Twice the configured limits: between 1x and 2x the proxy answers 431/414 with a body.
        .max_headers(ctx.limits.max_headers * 2)
        .max_header_size(ctx.limits.max_header_size.0 as usize * 2)
        .max_buf_size((ctx.limits.max_header_size.0 as usize * 2).max(8192) + 8192)
        // Not `pipeline_flush(true)`: hyper then drops buffered responses (and its own 431) when
        // the connection closes with unread input.
        .keep_alive(true);
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

fn log_conn_end(r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        if e.is_timeout() {
            tracing::debug!("client connection closed: header read timeout");
        } else {
            tracing::debug!(error = %e, "client connection ended with error");
        }
    }
}
