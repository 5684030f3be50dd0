//! Client-facing listeners: accept (with the `client.max_connections` cap), TLS termination
//! (with a handshake timeout), HTTP/1.1 via hyper (keep-alive, pipelining, header limits; the
//! header read timeout is [`head_timeout`]), HTTP/2 via hyper when TLS ALPN chose `h2` or a plain connection opens
//! with the HTTP/2 preface and `client.h2c` is on (stream, header-list, reset and flood limits;
//! see [`crate::h2guard`]), graceful shutdown (HTTP/2: GOAWAY, in-flight streams finish).
//! Requests go to [`Proxy::handle`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::ClientLimits;
use crate::h2guard::{self, Guarded, Prefixed};
use crate::metrics::Metrics;
use crate::proxy::{ClientInfo, ConnHold, Proxy};
use crate::shard::{Job, Open, Shards};

pub mod h2_send;
pub mod head_timeout;
pub mod stop;
use h2_send::SendClock;
use head_timeout::{Expiry, HeadClock, SendWatch, Tracked};

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
    /// Given on shutdown: what the listeners and client connections wait for.
    pub stop: Arc<stop::StopSignal>,
    /// Tracks connection tasks for draining.
    pub tracker: TaskTracker,
}

/// What an accept loop does with a connection.
pub enum Accepted {
    /// Serves it on this runtime (counted in the shard's `Open` when it runs on a shard).
    Serve(Option<Arc<Open>>),
    /// Hands it to the least busy shard thread (`runtime = "thread-per-core"` with
    /// `reuse_port = false`: one socket, accepted on the main thread).
    Dispatch(Arc<Shards>),
}

/// How long a listener waits after a failed `accept` before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// After a failed `accept` (EMFILE and friends): logs and counts it
/// (`muxgate_accept_errors_total{listener}`) and backs off. The error leaves the listener
/// readable, so accepting again at once would spin until a descriptor is free.
pub async fn accept_failed(listener: &'static str, e: &std::io::Error, metrics: &Metrics) {
    tracing::warn!(listener, error = %e, "accept failed");
    metrics.accept_error(listener);
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// Accepts on `listener` until shutdown.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    ctx: Arc<ServerCtx>,
    accepted: Accepted,
) {
    // Made once, like a connection's: a watch's `changed()` made in every pass registered its
    // waker under the watch's lock and removed it again, for every accepted connection
    // (~300 instructions, `bench/callgrind.sh` with `--close`).
    let stop = ctx.stop.wait();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    accept_failed("client", &e, &ctx.metrics).await;
                    continue;
                }
            },
            () = stop.as_mut() => return,
        };
        let max = ctx.live.limits.load().max_connections;
        if ctx.open.load(Ordering::Acquire) >= max {
            ctx.metrics.downstream_refused("limit");
            tracing::warn!(%peer, limit = max, "client connection refused: at client.max_connections");
            drop(stream);
            continue;
        }
        ctx.open.fetch_add(1, Ordering::AcqRel);
        let shards = match &accepted {
            Accepted::Serve(open) => {
                let open = open.clone();
                if let Some(o) = &open {
                    o.inc();
                }
                spawn_conn(&ctx, stream, peer, tls.clone(), move || {
                    if let Some(o) = open {
                        o.dec();
                    }
                });
                continue;
            }
            Accepted::Dispatch(shards) => shards,
        };
        let handed = stream
            .into_std()
            .map_err(|e| e.to_string())
            .and_then(|stream| {
                let job = Job {
                    stream,
                    peer,
                    tls: tls.clone(),
                };
                shards
                    .dispatch(job)
                    .map_err(|_| "shard stopped".to_string())
            });
        if let Err(e) = handed {
            ctx.open.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(%peer, error = %e, "client connection dropped: cannot hand it to a shard");
        }
    }
}

/// Serves one accepted client connection on a task of the calling runtime (counted in
/// `ctx.open`, which the caller already raised; lowered when it ends, then `done` runs).
pub fn spawn_conn(
    ctx: &Arc<ServerCtx>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    done: impl FnOnce() + Send + 'static,
) {
    let ctx2 = ctx.clone();
    let span = tracing::debug_span!("conn", %peer, tls = tls.is_some());
    ctx.tracker.spawn(
        async move {
            ctx2.metrics.downstream_connections_open.inc();
            // Boxed: spawning moves the task's future several times; a pointer is cheaper
            // to move than the connection's state (bench/callgrind.sh with --close).
            // Relayed: on a shard, wakes from other shards' origin connections are coalesced.
            crate::shard::wake::relayed(serve_conn(stream, peer, tls, &ctx2)).await;
            ctx2.metrics.downstream_connections_open.dec();
            ctx2.open.fetch_sub(1, Ordering::AcqRel);
            done();
        }
        .instrument(span),
    );
}

/// The connection's future, boxed at the size of what it serves: a plain HTTP/1.1 connection
/// is only [`serve_http1`]'s state (one async function holding every branch was 3 KiB, the
/// TLS stream's size included, for every connection; `bench/idle_conns.sh`).
fn serve_conn<'a>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    ctx: &'a Arc<ServerCtx>,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    let _ = stream.set_nodelay(true);
    let plain = ClientInfo::new(peer, false);
    match tls {
        None if ctx.live.limits.load().h2c => {
            crate::inplace::pinned(|| serve_h2c(stream, plain, ctx))
        }
        None => {
            count(ctx, "http/1.1");
            crate::inplace::pinned(|| serve_http1(stream, plain, ctx))
        }
        Some(acceptor) => crate::inplace::pinned(|| serve_tls(stream, peer, acceptor, ctx)),
    }
}

/// A plain connection with `client.h2c` on: RFC 9113 §3.3 prior knowledge. The sniffed bytes
/// are replayed to either server.
async fn serve_h2c(mut stream: TcpStream, plain: ClientInfo, ctx: &Arc<ServerCtx>) {
    let wait = ctx.live.limits.load().header_timeout.0;
    match Box::pin(h2guard::sniff_preface(&mut stream, wait)).await {
        Ok((true, seen)) => {
            count(ctx, "h2c");
            crate::inplace::pinned(|| serve_http2(Prefixed::new(seen, stream), plain, ctx)).await
        }
        Ok((false, seen)) => {
            count(ctx, "http/1.1");
            crate::inplace::pinned(|| serve_http1(Prefixed::new(seen, stream), plain, ctx)).await
        }
        Err(e) => tracing::debug!(error = %e, "client sent no request"),
    }
}

/// A TLS connection: the handshake (boxed, ~1 KiB of state), then HTTP/2 or HTTP/1.1 by ALPN.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    ctx: &Arc<ServerCtx>,
) {
    let timeout = ctx.live.limits.load().tls_handshake_timeout.0;
    let hs = Box::pin(tokio::time::timeout(timeout, acceptor.accept(stream))).await;
    match hs {
        Ok(Ok(s)) if s.get_ref().1.alpn_protocol() == Some(b"h2") => {
            count(ctx, "h2");
            crate::inplace::pinned(|| serve_http2(s, ClientInfo::new(peer, true), ctx)).await
        }
        Ok(Ok(s)) => {
            count(ctx, "http/1.1+tls");
            crate::inplace::pinned(|| serve_http1(s, ClientInfo::new(peer, true), ctx)).await
        }
        Ok(Err(e)) => {
            ctx.metrics.downstream_refused("tls");
            tracing::debug!(error = %e, "client TLS handshake failed");
        }
        Err(_) => {
            ctx.metrics.downstream_refused("tls_timeout");
            tracing::debug!("client TLS handshake timed out");
        }
    }
}

fn count(ctx: &ServerCtx, protocol: &'static str) {
    ctx.metrics.downstream_connection(protocol);
}

async fn serve_http1<S>(io: S, mut client: ClientInfo, ctx: &Arc<ServerCtx>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let live = ctx.live.clone();
    let limits = live.limits.load_full();
    // Every request carries a `ConnHold`; an upgrade tunnel keeps one after hyper has handed
    // the connection over, and this task waits for it (see the end of this function).
    let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
    let hold_tx = Arc::new(hold_tx);
    let clock = HeadClock::new();
    let head_clock = clock.clone();
    // The proxy's request futures run inside this task's poll of the connection: the clock
    // can enforce their `response_header_timeout` (`HeadClock::response_within`).
    client.head_clock = Some(clock.clone());
    let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let proxy = live.proxy.load_full();
        // Only a request that may upgrade needs the hold (`proxy::upgrade` ignores the rest):
        // inserting it into every request cost an allocation on the hot path.
        if req.headers().contains_key(http::header::UPGRADE) {
            req.extensions_mut().insert(ConnHold(hold_tx.clone()));
        }
        // Boxed: hyper keeps one allocation the size of this future for the connection's whole
        // life, idle or not; unboxed, the proxy's request future made every idle keep-alive
        // connection several KiB larger (bench/idle_conns.sh).
        // The head is complete: the header timeout waits until this response is done.
        let busy = clock.request();
        clock.set_releasable(hyper::body::Body::is_end_stream(req.body()));
        let fut = crate::inplace::pinned(|| proxy.handle(req, client.clone()));
        async move {
            let resp = fut.await;
            Ok::<_, std::convert::Infallible>(resp.map(|b| Tracked::new(b, busy)))
        }
    });
    let mut builder = http1::Builder::new();
    builder
        // `client.header_timeout` is `head_timeout` (one timer per connection, not hyper's
        // timer per request); hyper's own would default to 30 s.
        .header_read_timeout(None::<Duration>)
        // Twice the configured limits: between 1x and 2x the proxy answers 431/414 with a body.
        .max_header_size(limits.max_header_size.0 as usize * 2)
        .max_buf_size((limits.max_header_size.0 as usize * 2).max(8192) + 8192)
        // Not `pipeline_flush(true)`: hyper then drops buffered responses (and its own 431) when
        // the connection closes with unread input.
        .keep_alive(true)
        // `client.abort_on_close`: hyper's half-close mode stops its reads while a request is
        // in flight, so it no longer sees a client that leaves, nor needs a second buffer.
        .half_close(!limits.abort_on_close);
    if let Some(n) = hyper_max_headers(&limits) {
        builder.max_headers(n);
    }
    // Made once for the connection's life: it registers the task's waker once.
    let stop = ctx.stop.wait();
    tokio::pin!(stop);
    let (header, send) = (limits.header_timeout.0, limits.send_timeout.0);
    let released = &ctx.metrics.downstream_connections_released;
    // `with_upgrades`: after a 101 the connection's I/O goes to the upgrade tunnel
    // (`proxy::upgrade`), which then lives on its own task.
    let conn = crate::inplace::pinned(|| {
        builder
            .serve_connection(TokioIo::new(SendWatch::new(io, head_clock.clone())), svc)
            .with_upgrades()
    });
    // The block's end drops the connection (or its parts), so the service and its `ConnHold`;
    // what remains is held by an upgrade tunnel, if any: the connection stays counted until
    // the tunnel ends (shutdown closes tunnels).
    // Each timeout is counted before the socket is dropped: a client that sees the close
    // finds it in the metrics.
    {
        let mut conn = conn;
        loop {
            let expired = head_clock.expired(header, send, limits.idle_release_after.0);
            tokio::pin!(expired);
            // `biased`: `expired` is polled after the connection in every pass, so it sees what
            // the connection's progress changed (`HeadClock::set_releasable`, a blocked write).
            let due = tokio::select! {
                biased;
                r = conn.as_mut() => { log_conn_end(r); break }
                e = expired.as_mut() => e,
                () = stop.as_mut() => {
                    // Finish the request in flight, then close (Connection: close on the response).
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        // The connection first, as above (a request's response wait may have
                        // asked the clock to look again).
                        biased;
                        r = conn.as_mut() => { log_conn_end(r); break }
                        // Idle (a half-read head is dropped, as hyper's own graceful close of
                        // an idle connection would).
                        e = expired => {
                            if e != Expiry::Release {
                                timed_out(ctx, e);
                            }
                            break;
                        }
                    }
                }
            };
            if due != Expiry::Release {
                timed_out(ctx, due);
                break;
            }
            // `client.idle_release_after`: hyper's state (its buffers) goes; the socket and the
            // service stay. Idle with its last request bodiless and its writes through, hyper has
            // nothing to send and nothing half-read except what `read_buf` returns.
            head_clock.set_releasable(false);
            let Some(http1::Parts {
                io,
                read_buf,
                service,
                ..
            }) = Pin::into_inner(conn).into_parts()
            else {
                break;
            };
            let mut io = io.into_inner();
            ctx.metrics.downstream_releases_total.inc();
            if read_buf.is_empty() {
                // Empty, it still holds hyper's whole read buffer.
                drop(read_buf);
                let _released = GaugeHold::new(released);
                let expired = head_clock.expired(header, send, Duration::ZERO);
                let woke = tokio::select! {
                    r = io.fill() => match r {
                        Ok(0) => Err(None),
                        Ok(_) => Ok(()),
                        Err(e) => {
                            tracing::debug!(error = %e, "idle client connection failed");
                            Err(None)
                        }
                    },
                    e = expired => Err(Some(e)),
                    () = stop.as_mut() => Err(None),
                };
                if let Err(expiry) = woke {
                    if let Some(e) = expiry {
                        timed_out(ctx, e);
                    }
                    break;
                }
            } else {
                // Part of a pipelined head: the next parser reads it again.
                // Copied: the slice would keep hyper's whole read buffer alive.
                io.replay(Bytes::copy_from_slice(&read_buf));
            }
            conn = crate::inplace::pinned(|| {
                builder
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades()
            });
        }
    }
    let _ = hold_rx.await;
}

/// Logs and counts an HTTP/1.1 client connection closed by a timeout; called while the socket
/// is still open. Idle past the header timeout or a head still incomplete: closed without a
/// response (as hyper's own header timeout did). A response the client stopped reading: the
/// connection is closed mid-response, which releases its upstream stream.
fn timed_out(ctx: &ServerCtx, e: Expiry) {
    match e {
        Expiry::Header => tracing::debug!("client connection closed: header read timeout"),
        Expiry::Send => tracing::debug!(
            "client connection closed: send timeout (the client stopped reading the response)"
        ),
        Expiry::Release => {}
    }
    closed(ctx, e.reason());
}

/// Raises a gauge for as long as it lives (dropped with its task, too).
struct GaugeHold<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> GaugeHold<'a> {
    fn new(g: &'a prometheus_client::metrics::gauge::Gauge) -> GaugeHold<'a> {
        g.inc();
        GaugeHold(g)
    }
}

impl Drop for GaugeHold<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
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

/// How long a client connection may take to end once it crossed a flood limit, or held a
/// stream past `client.send_timeout` for good (its GOAWAY is written; a client that stops
/// reading must not hold the task).
const FLOOD_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Serves one HTTP/2 client connection (after the TLS handshake, or after the h2c preface was
/// sniffed; `io` still starts with the preface).
async fn serve_http2<S>(io: S, client: ClientInfo, ctx: &Arc<ServerCtx>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let live = ctx.live.clone();
    let limits = live.limits.load_full();
    let (io, alarm) = Guarded::new(
        io,
        h2guard::Limits {
            control_per_sec: limits.h2_max_control_frames_per_sec,
            resets_per_sec: limits.h2_max_resets_per_sec,
            window_updates_per_data: limits.h2_max_window_updates_per_data_frame,
        },
    );
    let send_timeout = limits.send_timeout.0;
    let clock = Arc::new(SendClock::new(send_timeout));
    let bodies = clock.clone();
    let svc = service_fn(move |req| {
        let proxy = live.proxy.load_full();
        let client = client.clone();
        let bodies = bodies.clone();
        async move {
            let resp = proxy.handle(req, client).await;
            Ok::<_, std::convert::Infallible>(resp.map(|b| bodies.guard(b)))
        }
    });
    let conn = h2_builder(&limits).serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let stop = ctx.stop.wait();
    let metrics = ctx.metrics.clone();
    let send_expired = clock.expire(move || {
        metrics
            .downstream_streams_closed_total
            .get_or_create(&vec![("reason", "send_timeout".into())])
            .inc();
        tracing::info!(
            timeout = ?send_timeout,
            "HTTP/2 client stream blocked past client.send_timeout: response abandoned, its upstream stream released"
        );
    });
    tokio::pin!(send_expired);
    let mut stalled = false;
    let r = tokio::select! {
        r = conn.as_mut() => r,
        () = send_expired.as_mut() => {
            // A stream given up a timeout ago was never let go by the client (hyper still
            // holds its next piece): GOAWAY, a few seconds for the other streams, then close.
            stalled = true;
            conn.as_mut().graceful_shutdown();
            finish_within(FLOOD_CLOSE_WAIT, conn.as_mut()).await
        }
        () = stop => {
            // RFC 9113 §6.8: GOAWAY (hyper sends last-stream-id 2^31-1, a PING, then the real
            // last stream id), streams in flight finish, then the connection closes. The send
            // clock keeps running: a stalled stream must not hold its upstream stream until
            // `drain_timeout`.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                () = send_expired.as_mut() => {
                    // GOAWAY is out already: the other streams get the same few seconds.
                    stalled = true;
                    finish_within(FLOOD_CLOSE_WAIT, conn.as_mut()).await
                }
            }
        }
        _ = alarm.wait() => {
            // Flood: the guard ends the client's stream; h2 fails its streams and flushes, and
            // the guard adds GOAWAY(ENHANCE_YOUR_CALM). Bounded: a client that does not read
            // loses the connection at the deadline anyway.
            finish_within(FLOOD_CLOSE_WAIT, conn.as_mut()).await
        }
    };
    let flood = alarm.flood();
    if stalled {
        closed(ctx, "send_timeout");
        tracing::info!(
            timeout = ?send_timeout,
            "HTTP/2 client closed: a stream given up at client.send_timeout was still blocked a timeout later"
        );
    } else if let Some(f) = flood {
        closed(ctx, f.as_str());
        tracing::info!(
            reason = f.as_str(),
            "HTTP/2 client closed: GOAWAY(ENHANCE_YOUR_CALM)"
        );
    } else if let Err(e) = &r {
        if let Some(reason) = local_goaway(e) {
            closed(
                ctx,
                &format!("h2_{}", format!("{reason:?}").to_ascii_lowercase()),
            );
        }
    }
    log_conn_end(r);
}

/// Lets a connection that is closing finish for up to `wait`; then it is dropped (closed).
async fn finish_within<F>(wait: Duration, conn: std::pin::Pin<&mut F>) -> Result<(), hyper::Error>
where
    F: std::future::Future<Output = Result<(), hyper::Error>>,
{
    tokio::time::timeout(wait, conn).await.unwrap_or(Ok(()))
}

/// hyper's HTTP/2 server with the `[client]` limits.
fn h2_builder(limits: &ClientLimits) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        // RFC 9113 §5.1.2: streams past the advertised limit get RST_STREAM(REFUSED_STREAM).
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        // RFC 9113 §6.5.2 SETTINGS_MAX_HEADER_LIST_SIZE: the same budget as an HTTP/1.1 head.
        // Twice the configured size, as for HTTP/1.1: between 1x and 2x the proxy answers 431
        // with a body; past 2x h2 refuses the stream (431 / RST_STREAM) without decoding it,
        // and a list far past it (or too many CONTINUATION frames) gets
        // GOAWAY(ENHANCE_YOUR_CALM).
        .max_header_list_size(u32::try_from(limits.max_header_size.0 * 2).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
        .initial_stream_window_size(u32::try_from(limits.h2_stream_window.0).unwrap_or(u32::MAX))
        .initial_connection_window_size(
            u32::try_from(limits.h2_connection_window.0).unwrap_or(u32::MAX),
        )
        .max_send_buf_size(usize::try_from(limits.h2_max_send_buf_size.0).unwrap_or(usize::MAX));
    if !limits.h2_keepalive_interval.0.is_zero() {
        b.keep_alive_interval(limits.h2_keepalive_interval.0)
            .keep_alive_timeout(limits.h2_keepalive_timeout.0);
    }
    b
}

/// The reason of a GOAWAY the gateway's h2 sent because of the client's behaviour.
fn local_goaway(e: &hyper::Error) -> Option<h2::Reason> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<h2::Error>() {
            return (h.is_go_away() && !h.is_remote())
                .then(|| h.reason())
                .flatten()
                .filter(|r| *r != h2::Reason::NO_ERROR);
        }
        src = s.source();
    }
    None
}

fn closed(ctx: &ServerCtx, reason: &str) {
    ctx.metrics
        .downstream_closed_total
        .get_or_create(&vec![("reason", reason.into())])
        .inc();
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
