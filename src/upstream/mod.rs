//! Upstream: one [`OriginPool`] per origin. It owns the dialler ([`connect`]) with its name
//! resolution ([`resolve`]), the multiplexed HTTP/2 pool ([`h2`]) and the HTTP/1.1 keep-alive
//! pool ([`h1`]), sends one request with the retry rules, and wraps the response body so the
//! stream slot or connection is released when the body ends or is dropped.
//!
//! DNS: a background task per origin re-resolves its host names every `resolve_interval` (or
//! the TTL, if shorter) and then drains connections to addresses no longer listed: HTTP/2 ones
//! are retired (a replacement is dialled first, then they finish their streams and close), idle
//! HTTP/1.1 ones are closed and busy ones are not reused. The task ends with the pool.
//!
//! Retry rules (DESIGN.md, RFC 9113 §8.7): a request the origin provably never processed — never
//! written, REFUSED_STREAM, above a GOAWAY's last-stream-id, connect/TLS failure of a fresh dial —
//! is retried on another connection for any method, provided its body can be replayed (empty, or
//! buffered within `retry_buffer`). A request that may have been processed is retried only with
//! `retry_idempotent`, once, and only for idempotent methods.

pub mod connect;
pub mod h1;
pub mod h2;
pub mod read_timeout;
pub mod resolve;
pub mod rst_watch;
pub mod upgrade;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme as UriScheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::task::AbortOnDropHandle;

use crate::body::{Observed, Observer};
use crate::config::{Scheme, ValidOrigin};
use crate::error::{classify, classify_h2, Error, RetryClass};
use crate::metrics::OriginMetrics;
use crate::server::head_timeout::HeadClock;
use connect::{Connector, Transport};
use h1::{H1Lease, H1Pool};
use h2::{Acquired, H2Lease, H2Pool};
use read_timeout::{ReadLimit, ReadTimer};

/// Boxed error for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request body sent upstream.
pub type UpBody = UnsyncBoxBody<Bytes, BoxError>;

/// Wraps the error of a client's request body, so a failed upload is told apart from an
/// origin failure wherever it surfaces (hyper keeps it as the error's source).
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(pub BoxError);

/// Whether `e` (or a source of it) is a [`ClientBodyError`].
fn client_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<ClientBodyError>().is_some() {
            return true;
        }
        src = s.source();
    }
    false
}

/// Most transparent retries of unprocessed requests per client request.
const MAX_UNPROCESSED_RETRIES: u32 = 3;

/// A connection's view for `/pool` and tests.
#[derive(Debug, Clone)]
pub struct ConnStats {
    /// Connection id (as in the access log).
    pub id: u64,
    /// `h2` or `http/1.1`.
    pub protocol: &'static str,
    /// Streams in flight.
    pub in_flight: usize,
    /// Peer's current stream limit (1 for HTTP/1.1).
    pub max_streams: usize,
    /// Closed for new streams (GOAWAY or failure), finishing in-flight ones.
    pub draining: bool,
    /// Time since the connection opened.
    pub age: Duration,
    /// Requests it carried.
    pub served: u64,
    /// TLS handshake kind (`None` for cleartext).
    pub resumed: Option<bool>,
    /// The origin address dialled (`None` for an in-memory test connection).
    pub peer: Option<SocketAddr>,
    /// The shard thread whose runtime drives the connection (`runtime = "thread-per-core"`;
    /// `None` otherwise).
    pub shard: Option<usize>,
}

/// A transport that keeps the `upstream_connections_open` gauge right: +1 when made, −1 when
/// the connection's I/O object is dropped (by hyper, when the connection really closes).
/// It also records whether any bytes were read yet (the peer's first frames have arrived),
/// and on HTTP/2 connections whether h2 wrote an RST_STREAM(FLOW_CONTROL_ERROR)
/// ([`rst_watch`]).
pub struct CountedIo {
    inner: Transport,
    open: Gauge,
    read_any: Arc<AtomicBool>,
    /// The written-bytes watch and the flag it raises (HTTP/2 connections only).
    rst: Option<(rst_watch::RstWatch, Arc<AtomicBool>)>,
}

impl CountedIo {
    fn new(inner: Transport, open: Gauge) -> CountedIo {
        open.inc();
        CountedIo {
            inner,
            open,
            read_any: Arc::new(AtomicBool::new(false)),
            rst: None,
        }
    }

    /// Starts watching the written bytes (an HTTP/2 client connection, before its preface);
    /// the flag is raised once h2 resets a stream with FLOW_CONTROL_ERROR.
    fn watch_flow_control_resets(&mut self) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.rst = Some((rst_watch::RstWatch::new(), flag.clone()));
        flag
    }

    /// Passes the first `n` bytes of `bufs` (what the transport accepted) to the watch.
    fn watched<'a>(&mut self, bufs: impl IntoIterator<Item = &'a [u8]>, mut n: usize) {
        let Some((watch, flag)) = self.rst.as_mut() else {
            return;
        };
        for b in bufs {
            if n == 0 {
                break;
            }
            let take = n.min(b.len());
            if watch.feed(&b[..take]) {
                flag.store(true, Ordering::Release);
            }
            n -= take;
        }
    }

    /// Set once the first non-empty read happened.
    fn read_any(&self) -> Arc<AtomicBool> {
        self.read_any.clone()
    }
}

impl Drop for CountedIo {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl AsyncRead for CountedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before && !this.read_any.load(Ordering::Relaxed) {
            this.read_any.store(true, Ordering::Release);
        }
        r
    }
}

impl AsyncWrite for CountedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, b);
        if let (Poll::Ready(Ok(n)), Some(_)) = (&r, &this.rst) {
            this.watched([b], *n);
        }
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, b);
        if let (Poll::Ready(Ok(n)), Some(_)) = (&r, &this.rst) {
            this.watched(b.iter().map(|s| &s[..]), *n);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The body of a request to send.
pub enum OutBody {
    /// No body (END_STREAM with the headers).
    Empty,
    /// A small body held in memory: replayable.
    Buffered(Bytes),
    /// A streamed body: sent once; replayable only while hyper hands it back unsent.
    Stream(UpBody),
    /// A streamed body already consumed by an attempt.
    Gone,
}

/// A request ready for the origin.
pub struct Outgoing {
    /// Method, target and translated headers.
    pub head: OutHead,
    /// The body.
    pub body: OutBody,
    /// The client connection's clock, when the request is polled by that connection's task
    /// (an HTTP/1.1 client's request, not the cache's): it enforces `response_header_timeout`
    /// in place of a timer per attempt ([`HeadClock::response_within`]).
    pub head_clock: Option<Arc<HeadClock>>,
}

/// The request head: headers already translated (no hop-by-hop, no Host).
#[derive(Debug, Clone)]
pub struct OutHead {
    /// Method (any, extension methods included).
    pub method: Method,
    /// Sent as `:authority` (h2) or `Host` (HTTP/1.1).
    pub authority: Authority,
    /// Path and query.
    pub path_and_query: PathAndQuery,
    /// End-to-end request headers.
    pub headers: HeaderMap,
    /// `headers` holds one `Host` field whose text is `authority` (the client's own, kept for
    /// an HTTP/1.1 origin): sent as it is over HTTP/1.1, left out over HTTP/2.
    pub host_field: bool,
}

impl Outgoing {
    fn take_body(&mut self) -> Option<UpBody> {
        match std::mem::replace(&mut self.body, OutBody::Gone) {
            OutBody::Empty => {
                self.body = OutBody::Empty;
                Some(Empty::new().map_err(|e| match e {}).boxed_unsync())
            }
            OutBody::Buffered(b) => {
                self.body = OutBody::Buffered(b.clone());
                Some(Full::new(b).map_err(|e| match e {}).boxed_unsync())
            }
            OutBody::Stream(s) => Some(s),
            OutBody::Gone => None,
        }
    }

    fn replayable(&self) -> bool {
        !matches!(self.body, OutBody::Gone)
    }
}

impl OutHead {
    fn request<B>(&self, body: B, h2: bool) -> Result<Request<B>, Error> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.headers_mut() = self.headers.clone();
        if h2 {
            // RFC 9113 §8.3.1: `:authority` carries the host; h2 needs an absolute URI.
            *req.version_mut() = Version::HTTP_2;
            // From parts: the builder's chain of results cost ~150 instructions a request.
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(UriScheme::HTTPS);
            uri.authority = Some(self.authority.clone());
            uri.path_and_query = Some(self.path_and_query.clone());
            *req.uri_mut() =
                Uri::from_parts(uri).map_err(|_| Error::BadRequest("invalid request target"))?;
            if self.host_field {
                // The pool turned to HTTP/2 after the head was made (RFC 9113 §8.3.1).
                req.headers_mut().remove(http::header::HOST);
            }
        } else {
            *req.version_mut() = Version::HTTP_11;
            *req.uri_mut() = Uri::from(self.path_and_query.clone());
            if !self.host_field {
                let host = HeaderValue::from_str(self.authority.as_str())
                    .map_err(|_| Error::BadRequest("invalid host"))?;
                req.headers_mut().insert(http::header::HOST, host);
            }
        }
        Ok(req)
    }
}

/// What a response holds on to until it ends: an h2 stream slot (and its request-body pump)
/// or an exclusive HTTP/1.1 connection.
pub enum Guard {
    /// The stream slot, and the request-body pump (aborted when the response is done).
    H2(
        #[allow(dead_code)] H2Lease,
        #[allow(dead_code)] Option<h2::PumpGuard>,
    ),
    H1(H1Lease),
    /// A dedicated HTTP/1.1 connection (an upgrade the origin declined): its sender, so the
    /// connection lives until the response is done, then closes (it never enters the pool).
    Dedicated(#[allow(dead_code)] hyper::client::conn::http1::SendRequest<UpBody>),
}

/// The bytes of a response, from either pool, with the origin's `read_timeout` (none for an
/// upgraded connection's tunnel, which `upgrade_idle_timeout` bounds).
pub struct Inner {
    kind: InnerKind,
    read: Option<ReadTimer>,
}

enum InnerKind {
    /// An h2 stream.
    H2(h2::H2Body),
    /// An HTTP/1.1 response body.
    H1(Incoming),
}

impl Inner {
    /// An h2 stream's body.
    pub fn h2(body: h2::H2Body, read: Option<ReadTimer>) -> Inner {
        Inner {
            kind: InnerKind::H2(body),
            read,
        }
    }

    /// An HTTP/1.1 response body.
    pub fn h1(body: Incoming, read: Option<ReadTimer>) -> Inner {
        Inner {
            kind: InnerKind::H1(body),
            read,
        }
    }
}

impl Body for Inner {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.read.as_ref().is_some_and(ReadTimer::fired) {
            return Poll::Ready(Some(Err(Error::ReadTimeout.into())));
        }
        let p = match &mut this.kind {
            InnerKind::H2(b) => Pin::new(b).poll_frame(cx),
            InnerKind::H1(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
        };
        if let Some(t) = &mut this.read {
            if p.is_pending() {
                if t.waiting(cx).is_ready() {
                    return Poll::Ready(Some(Err(Error::ReadTimeout.into())));
                }
            } else {
                t.moved();
            }
        }
        p
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            InnerKind::H2(b) => b.is_end_stream(),
            InnerKind::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            InnerKind::H2(b) => b.size_hint(),
            InnerKind::H1(b) => b.size_hint(),
        }
    }
}

/// Releases the stream slot or connection when the response ends, fails or is dropped; an
/// HTTP/1.1 connection goes back to the pool only after a complete response.
pub struct Release(Option<Guard>);

impl Observer for Release {
    fn end(&mut self) {
        if let Some(Guard::H1(lease)) = &mut self.0 {
            lease.set_reusable();
        }
        self.0 = None;
    }

    fn error(&mut self) {
        self.0 = None;
    }
}

/// The origin's response body (an `Observed<Inner, Release>`: it releases its stream slot or
/// connection at end or drop), boxed where the response is made: it then moves as a pointer
/// through the pool's and the proxy's futures, and the proxy hands it on without boxing again.
pub type UpstreamBody = UpBody;

/// A response from the origin, with where it came from.
pub struct Upstream {
    /// The response; its body releases the slot.
    pub response: Response<UpstreamBody>,
    /// Connection id (for the access log).
    pub conn_id: u64,
    /// `h2` or `http/1.1`.
    pub protocol: &'static str,
}

enum AttemptError {
    /// Never reached the origin; the body (if streamed) came back.
    Unsent(Option<UpBody>, &'static str),
    /// Failed after it may have been sent.
    Failed(RetryClass, Error),
    /// Not retryable at all (timeouts, pool limits).
    Fatal(Error),
    /// Failed, and already counted in `muxgate_upstream_errors_total` where it happened: no
    /// connection could be had (dial failure, queue full; counted by the pool), or the
    /// connection failed on a protocol error (counted once for the connection, whatever the
    /// number of its streams).
    Counted(Error),
}

/// Everything that talks to one origin.
pub struct OriginPool {
    name: Arc<str>,
    connector: Arc<Connector>,
    h2: Option<H2Pool>,
    h1: H1Pool,
    /// The re-resolution task (`None` when every server is an IP literal); aborted on drop.
    _refresh: Option<AbortOnDropHandle<()>>,
    use_h1: Arc<AtomicBool>,
    metrics: OriginMetrics,
    response_header_timeout: Duration,
    /// `read_timeout`, shared by the responses' bodies.
    read_limit: Arc<ReadLimit>,
    retry_idempotent: bool,
    next_id: Arc<AtomicU64>,
    /// Upgraded connections open now (see [`upgrade`]).
    upgraded: Arc<AtomicUsize>,
    max_upgraded: usize,
    upgrade_idle_timeout: Duration,
}

impl OriginPool {
    /// Builds the pools (no connection is opened until the first request).
    pub fn new(o: &ValidOrigin, metrics: OriginMetrics) -> Result<OriginPool, String> {
        OriginPool::replacing(o, metrics, None)
    }

    /// Builds the pools that replace `prev` (a reload that changed connection settings): the
    /// TLS sessions carry over when the trust settings allow (`Connector::replacing`).
    pub fn replacing(
        o: &ValidOrigin,
        metrics: OriginMetrics,
        prev: Option<&OriginPool>,
    ) -> Result<OriginPool, String> {
        let prev = prev.map(|p| p.connector.as_ref());
        let connector = Arc::new(Connector::replacing(o, metrics.clone(), prev)?);
        let next_id = Arc::new(AtomicU64::new(1));
        let refresh = connector.needs_refresh();
        let use_h1 = Arc::new(AtomicBool::new(false));
        let wants_h2 = o.scheme == Scheme::Https && o.raw.alpn.iter().any(|p| p == "h2");
        let h1 = H1Pool::new(o, connector.clone(), metrics.clone(), next_id.clone());
        let h2 = wants_h2.then(|| {
            H2Pool::new(
                o,
                connector.clone(),
                h1.clone(),
                use_h1.clone(),
                metrics.clone(),
                next_id.clone(),
            )
        });
        if o.scheme == Scheme::Https && !o.raw.tls_verify {
            tracing::warn!(origin = %o.raw.name, "tls_verify = false: the origin's certificate is NOT verified");
        }
        let refresh = refresh.then(|| {
            AbortOnDropHandle::new(tokio::spawn(refresh_loop(
                connector.clone(),
                h2.clone(),
                h1.clone(),
            )))
        });
        Ok(OriginPool {
            name: Arc::from(o.raw.name.as_str()),
            connector,
            h2,
            h1,
            _refresh: refresh,
            use_h1,
            read_limit: ReadLimit::new(o.raw.read_timeout.0, &o.raw.name, metrics.clone()),
            metrics,
            response_header_timeout: o.raw.response_header_timeout.0,
            retry_idempotent: o.raw.retry_idempotent,
            next_id,
            upgraded: Arc::new(AtomicUsize::new(0)),
            max_upgraded: o.raw.max_upgraded,
            upgrade_idle_timeout: o.raw.upgrade_idle_timeout.0,
        })
    }

    /// The origin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The origin's name, shared (for per-request records such as the access log).
    pub fn name_shared(&self) -> Arc<str> {
        self.name.clone()
    }

    /// Per-origin metric handles.
    pub fn metrics(&self) -> &OriginMetrics {
        &self.metrics
    }

    /// Requests go to the origin over HTTP/1.1 now (configured, or learned from ALPN); it may
    /// change before the next attempt.
    pub fn speaks_h1(&self) -> bool {
        self.h2.is_none() || self.use_h1.load(Ordering::Acquire)
    }

    /// `h2`, `http/1.1`, or `unknown` before the first connection.
    pub fn protocol(&self) -> &'static str {
        match &self.h2 {
            None => "http/1.1",
            Some(_) if self.use_h1.load(Ordering::Acquire) => "http/1.1",
            Some(p) if p.stats().is_empty() => "unknown",
            Some(_) => "h2",
        }
    }

    /// True once every server entry of the origin has at least one address (IP literals
    /// always do; names after their first successful resolution).
    pub fn resolved(&self) -> bool {
        self.connector.resolved()
    }

    /// Closes every connection for new requests: HTTP/2 connections finish their in-flight
    /// streams and then close, idle HTTP/1.1 ones close now and busy ones after their response.
    /// Requests sent after this open new connections.
    pub fn drain_all(&self) {
        if let Some(p) = &self.h2 {
            p.drain_all();
        }
        self.h1.drain_all();
    }

    /// Connection snapshots (h2 connections, then idle HTTP/1.1 ones).
    pub fn stats(&self) -> Vec<ConnStats> {
        let mut v = self.h2.as_ref().map(|p| p.stats()).unwrap_or_default();
        v.extend(self.h1.stats());
        v
    }

    /// Sends one request, retrying where the rules allow.
    pub async fn send(&self, mut out: Outgoing) -> Result<Upstream, Error> {
        let mut unprocessed = 0;
        let mut maybe_retried = false;
        loop {
            let Some(body) = out.take_body() else {
                return Err(Error::Reset("request body already sent".into()));
            };
            let h2 = match &self.h2 {
                Some(p) if !self.use_h1.load(Ordering::Acquire) => Some(p),
                _ => None,
            };
            let clock = out.head_clock.as_deref();
            let attempt = match h2 {
                Some(p) => self.try_h2(p, &out.head, body, clock).await,
                // Boxed: its state (1.8 KiB) is larger than `try_h2`'s (1.3 KiB) and would
                // size every request's future (bench/heap.sh), HTTP/2 origins' included.
                None => crate::inplace::pinned(|| self.try_h1(&out.head, body, clock)).await,
            };
            let err = match attempt {
                Ok(up) => return Ok(up),
                Err(AttemptError::Unsent(body, reason)) => {
                    if let Some(b) = body {
                        if matches!(out.body, OutBody::Gone) {
                            out.body = OutBody::Stream(b);
                        }
                    }
                    // "switch" (ALPN chose http/1.1) is not a retry of the request.
                    if reason != "alpn_h1" {
                        unprocessed += 1;
                        self.metrics.retry(reason);
                        if unprocessed > MAX_UNPROCESSED_RETRIES {
                            return Err(Error::Reset("origin connections kept closing".into()));
                        }
                    }
                    continue;
                }
                Err(AttemptError::Counted(e)) => return Err(e),
                Err(AttemptError::Fatal(e)) => e,
                Err(AttemptError::Failed(class, e)) => {
                    let retry = match class {
                        RetryClass::Unprocessed(reason)
                            if out.replayable() && unprocessed < MAX_UNPROCESSED_RETRIES =>
                        {
                            unprocessed += 1;
                            Some(reason)
                        }
                        RetryClass::MaybeProcessed
                            if self.retry_idempotent
                                && !maybe_retried
                                && out.replayable()
                                && is_idempotent(&out.head.method) =>
                        {
                            maybe_retried = true;
                            Some("idempotent")
                        }
                        _ => None,
                    };
                    match retry {
                        Some(reason) => {
                            self.metrics.retry(reason);
                            tracing::debug!(origin = %self.name, reason, error = %e, "retrying request");
                            continue;
                        }
                        None => e,
                    }
                }
            };
            if let Some(kind) = err.kind() {
                self.metrics.error(kind);
            }
            return Err(err);
        }
    }

    async fn try_h2(
        &self,
        pool: &H2Pool,
        out: &OutHead,
        body: UpBody,
        clock: Option<&HeadClock>,
    ) -> Result<Upstream, AttemptError> {
        let lease = match pool.acquire().await {
            Ok(Acquired::Lease(l)) => l,
            Ok(Acquired::UseH1) => return Err(AttemptError::Unsent(Some(body), "alpn_h1")),
            Err(e) => return Err(AttemptError::Counted(e)),
        };
        let head = out.request((), true).map_err(AttemptError::Fatal)?;
        let conn_id = lease.conn().id;
        let body = (!body.is_end_stream()).then_some(body);
        // Pinned where it is made: handed on by reference, not moved (each move is a copy).
        // The block ends its borrow of the lease before the response takes it.
        let waited = {
            let attempt = std::pin::pin!(async {
                let (response, pump) = match lease.conn().start(head, body) {
                    Ok(r) => r,
                    Err((e, body)) if e.is_go_away() || e.is_io() => {
                        // Nothing was sent: the connection is closing (GOAWAY) or broken.
                        lease.conn().mark_closed();
                        let reason = if e.is_go_away() { "goaway" } else { "not_sent" };
                        return Err(AttemptError::Unsent(body, reason));
                    }
                    Err((e, _)) => {
                        // h2 refused the request itself (a header HTTP/2 forbids).
                        tracing::debug!(error = %e, "request refused by HTTP/2 rules");
                        return Err(AttemptError::Fatal(Error::BadRequest(
                            "request not valid for HTTP/2",
                        )));
                    }
                };
                match response.await {
                    Ok(resp) => Ok((resp, pump)),
                    // The pump reset the stream because the client's body failed: not the origin.
                    Err(_) if pump.as_ref().is_some_and(|p| p.body_failed()) => {
                        Err(AttemptError::Fatal(Error::BadBody))
                    }
                    Err(e) => {
                        let (class, err) = classify_h2(&e);
                        if e.is_go_away() && e.is_library() {
                            // h2 closed the connection (GOAWAY) on an error it detected: counted
                            // once for the connection, not once per stream.
                            if lease.conn().first_protocol_error() {
                                self.metrics.error("protocol");
                            }
                            return Err(AttemptError::Counted(err));
                        }
                        Err(AttemptError::Failed(class, err))
                    }
                }
            });
            response_within(clock, self.response_header_timeout, attempt).await
        };
        match waited {
            None => Err(AttemptError::Fatal(Error::ResponseTimeout)),
            Some(Err(e)) => Err(e),
            Some(Ok((resp, pump))) => {
                let (parts, recv) = resp.into_parts();
                let body = lease.conn().body(recv, &parts.headers);
                Ok(Upstream {
                    response: Response::from_parts(
                        parts,
                        Observed::new(
                            Inner::h2(body, Some(ReadTimer::new(self.read_limit.clone()))),
                            Release(Some(Guard::H2(lease, pump))),
                        )
                        .boxed_unsync(),
                    ),
                    conn_id,
                    protocol: "h2",
                })
            }
        }
    }

    async fn try_h1(
        &self,
        out: &OutHead,
        body: UpBody,
        clock: Option<&HeadClock>,
    ) -> Result<Upstream, AttemptError> {
        let mut lease = match self.h1.acquire().await {
            Ok(l) => l,
            Err(e) => return Err(AttemptError::Counted(e)),
        };
        let req = out.request(body, false).map_err(AttemptError::Fatal)?;
        let conn_id = lease.id();
        let Some(conn) = lease.conn() else {
            return Err(AttemptError::Fatal(Error::ShuttingDown));
        };
        let sender = conn.sender();
        if sender.ready().await.is_err() {
            return Err(AttemptError::Unsent(Some(req.into_body()), "not_sent"));
        }
        let fut = std::pin::pin!(sender.try_send_request(req));
        match response_within(clock, self.response_header_timeout, fut).await {
            None => Err(AttemptError::Fatal(Error::ResponseTimeout)),
            Some(Ok(resp)) => Ok(Upstream {
                response: resp.map(|b| {
                    Observed::new(
                        Inner::h1(b, Some(ReadTimer::new(self.read_limit.clone()))),
                        Release(Some(Guard::H1(lease))),
                    )
                    .boxed_unsync()
                }),
                conn_id,
                protocol: "http/1.1",
            }),
            Some(Err(mut e)) => match e.take_message() {
                Some(req) => Err(AttemptError::Unsent(Some(req.into_body()), "not_sent")),
                None if client_body_failed(e.error()) => Err(AttemptError::Fatal(Error::BadBody)),
                None => {
                    let (class, err) = classify(e.error());
                    Err(AttemptError::Failed(class, err))
                }
            },
        }
    }
}

/// `wait` (for a response head), given up after `limit` (`None`): by the client connection's
/// clock when the request has one, else by a timer of its own.
async fn response_within<F: Future>(
    clock: Option<&HeadClock>,
    limit: Duration,
    wait: Pin<&mut F>,
) -> Option<F::Output> {
    match clock {
        Some(c) => c.response_within(limit, wait).await,
        None => tokio::time::timeout(limit, wait).await.ok(),
    }
}

/// Re-resolves the origin's names for as long as the pool lives, then drains connections to
/// addresses that are gone. Runs the stale check after every resolution, changed or not: a dial
/// racing a change may have added a connection to an old address after the previous check.
async fn refresh_loop(connector: Arc<Connector>, h2: Option<H2Pool>, h1: H1Pool) {
    loop {
        let r = connector.refresh().await;
        if let Some(p) = &h2 {
            p.retire_stale();
        }
        let closed = h1.drop_stale();
        if closed > 0 {
            tracing::info!(origin = %h1.origin(), connections = closed, "origin address gone: closed idle http/1.1 connections");
        }
        tokio::time::sleep(r.next).await;
    }
}

/// RFC 9110 §9.2.2.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&'static str, &'static str)], host_field: bool) -> OutHead {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(*k, HeaderValue::from_static(v));
        }
        OutHead {
            method: Method::GET,
            authority: Authority::from_static("a.test:8080"),
            path_and_query: PathAndQuery::from_static("/x?y"),
            headers: h,
            host_field,
        }
    }

    fn hosts<B>(r: &Request<B>) -> Vec<&str> {
        r.headers()
            .get_all(http::header::HOST)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// A kept client `Host` goes to an HTTP/1.1 origin as it is and never with `:authority`;
    /// without one, HTTP/1.1 gets the authority added, once.
    #[test]
    fn host_goes_once_over_http1_and_never_over_h2() {
        let kept = head(&[("host", "a.test:8080"), ("x-a", "1")], true);
        let h1 = kept.request((), false).unwrap();
        assert_eq!(hosts(&h1), ["a.test:8080"]);
        assert_eq!(h1.uri(), "/x?y");
        let h2 = kept.request((), true).unwrap();
        assert!(hosts(&h2).is_empty());
        assert_eq!(h2.uri(), "https://a.test:8080/x?y");
        assert_eq!(h2.headers()["x-a"], "1");
        let bare = head(&[("x-a", "1")], false);
        assert_eq!(hosts(&bare.request((), false).unwrap()), ["a.test:8080"]);
        assert!(hosts(&bare.request((), true).unwrap()).is_empty());
        // The head stays whole for the next attempt.
        assert_eq!(kept.headers.len(), 2);
    }
}
