//! An in-process origin with counters: TLS with ALPN `h2` (and/or `http/1.1`), or cleartext
//! HTTP/1.1. Counts accepted connections, full and resumed TLS handshakes, requests and the peak
//! of concurrent requests, so tests assert what the origin really saw.
//!
//! Paths:
//! - `/` and anything unlisted: `body_size` bytes of `x` (default 1 KiB).
//! - `/bytes/N`: N bytes, streamed in 64 KiB chunks (no allocation of the whole body).
//! - `/sink`: reads the request body to the end, answers with its length.
//! - `/echo`: streams the request body back.
//! - `/headers`: answers with the request's header names, one `name: value` per line, and
//!   `:authority`/`host` in `x-seen-authority`.
//! - `/status/N`: answers status N.
//! - `/declared/N`: status N (204 or 304) with `Content-Length: 5` and no content.
//! - `/delay/MS`: waits MS milliseconds, then answers.
//! - `/trailers`: a body followed by a trailer `x-trailer: done`.
//! - `/cc/VALUE`: `Cache-Control: VALUE` (percent-decoded), `ETag: "v1"`, body `n=<requests>`;
//!   answers `If-None-Match: "v1"` with 304.
//! - `/cached/N`: N bytes with `Cache-Control: max-age=3600`.
//! - `/drip/MS`: `Cache-Control: max-age=60`, `Content-Length: 6`, body `a\nb\nc\n` in three
//!   chunks MS milliseconds apart.
//! - `/vary`: `Vary: Accept-Encoding`, `Cache-Control: max-age=60`, body = the request's
//!   Accept-Encoding.
//!
//! [`RunningOrigin::force_status`] makes every response that status (body `forced`) until
//! reset to 0, to script an origin that starts failing.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::pki::Pki;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What the origin saw.
#[derive(Debug, Default)]
pub struct OriginStats {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// TCP connections open now (accepted, not yet closed by either side).
    pub open: AtomicU64,
    /// Full TLS handshakes.
    pub full_handshakes: AtomicU64,
    /// Resumed TLS handshakes.
    pub resumed_handshakes: AtomicU64,
    /// Connections that negotiated h2.
    pub h2_connections: AtomicU64,
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests being served now.
    pub active: AtomicU64,
    /// Most requests served at once.
    pub peak_active: AtomicU64,
    /// See [`RunningOrigin::force_status`].
    pub force_status: Arc<std::sync::atomic::AtomicU16>,
    /// See [`RunningOrigin::force_delay_ms`].
    pub force_delay_ms: Arc<AtomicU64>,
}

impl OriginStats {
    /// Convenience loads.
    pub fn get(&self, f: impl Fn(&OriginStats) -> &AtomicU64) -> u64 {
        f(self).load(Ordering::SeqCst)
    }
}

/// How to build an origin.
#[derive(Clone)]
pub struct OriginBuilder {
    alpn: Option<Vec<Vec<u8>>>,
    max_streams: u32,
    delay: Duration,
    body_size: usize,
    tls12_only: bool,
}

/// Namespace for builders.
pub struct Origin;

impl Origin {
    /// TLS, ALPN `h2` only.
    pub fn h2() -> OriginBuilder {
        OriginBuilder::new(Some(vec![b"h2".to_vec()]))
    }
    /// TLS, ALPN `h2` and `http/1.1` (what nginx offers).
    pub fn h2_or_h1() -> OriginBuilder {
        OriginBuilder::new(Some(vec![b"h2".to_vec(), b"http/1.1".to_vec()]))
    }
    /// TLS, ALPN `http/1.1` only.
    pub fn h1_tls() -> OriginBuilder {
        OriginBuilder::new(Some(vec![b"http/1.1".to_vec()]))
    }
    /// Cleartext HTTP/1.1.
    pub fn plain() -> OriginBuilder {
        OriginBuilder::new(None)
    }
}

impl OriginBuilder {
    fn new(alpn: Option<Vec<Vec<u8>>>) -> OriginBuilder {
        OriginBuilder {
            alpn,
            max_streams: 100,
            delay: Duration::ZERO,
            body_size: 1024,
            tls12_only: false,
        }
    }
    /// SETTINGS_MAX_CONCURRENT_STREAMS (h2). Default 100.
    pub fn max_streams(mut self, n: u32) -> Self {
        self.max_streams = n;
        self
    }
    /// Delay before every response. Default none.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    /// Size of the default response body. Default 1 KiB.
    pub fn body_size(mut self, n: usize) -> Self {
        self.body_size = n;
        self
    }
    /// Only TLS 1.2.
    pub fn tls12_only(mut self) -> Self {
        self.tls12_only = true;
        self
    }

    /// Binds 127.0.0.1:0 and serves until the returned handle is dropped.
    pub async fn start(self, pki: &Pki) -> Result<RunningOrigin, String> {
        self.start_on(SocketAddr::from(([127, 0, 0, 1], 0)), pki)
            .await
    }

    /// Binds `addr` (e.g. another loopback address on a port already used on 127.0.0.1, to
    /// stand for a second host of one name) and serves until the returned handle is dropped.
    pub async fn start_on(self, addr: SocketAddr, pki: &Pki) -> Result<RunningOrigin, String> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("bind {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let acceptor = match &self.alpn {
            Some(alpn) => {
                let refs: Vec<&[u8]> = alpn.iter().map(|a| a.as_slice()).collect();
                Some(TlsAcceptor::from(
                    pki.server_config(&refs, self.tls12_only)?,
                ))
            }
            None => None,
        };
        let stats = Arc::new(OriginStats::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let cfg = Arc::new(self);
        let force_status = stats.force_status.clone();
        let force_delay_ms = stats.force_delay_ms.clone();
        tokio::spawn(accept_loop(listener, acceptor, cfg, stats.clone(), stop_rx));
        Ok(RunningOrigin {
            addr,
            stats,
            force_status,
            force_delay_ms,
            _stop: stop_tx,
        })
    }
}

/// A running origin; stops accepting and closes its connections when dropped.
pub struct RunningOrigin {
    /// Bound address.
    pub addr: SocketAddr,
    /// Counters.
    pub stats: Arc<OriginStats>,
    /// Non-zero: answer every request with this status.
    pub force_status: Arc<std::sync::atomic::AtomicU16>,
    /// Non-zero: wait this many milliseconds before every response.
    pub force_delay_ms: Arc<AtomicU64>,
    _stop: watch::Sender<bool>,
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    cfg: Arc<OriginBuilder>,
    stats: Arc<OriginStats>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        stats.connections.fetch_add(1, Ordering::SeqCst);
        let (cfg, stats, acceptor, mut stop) =
            (cfg.clone(), stats.clone(), acceptor.clone(), stop.clone());
        tokio::spawn(async move {
            stats.open.fetch_add(1, Ordering::SeqCst);
            tokio::select! {
                _ = serve(stream, acceptor, cfg, stats.clone()) => {}
                _ = stop.changed() => {}
            }
            stats.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    acceptor: Option<TlsAcceptor>,
    cfg: Arc<OriginBuilder>,
    stats: Arc<OriginStats>,
) {
    let Some(acceptor) = acceptor else {
        serve_h1(TokioIo::new(stream), cfg, stats).await;
        return;
    };
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let (_, conn) = tls.get_ref();
    if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        stats.resumed_handshakes.fetch_add(1, Ordering::SeqCst);
    } else {
        stats.full_handshakes.fetch_add(1, Ordering::SeqCst);
    }
    if conn.alpn_protocol() == Some(b"h2") {
        stats.h2_connections.fetch_add(1, Ordering::SeqCst);
        let svc = make_service(cfg.clone(), stats.clone());
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .max_concurrent_streams(cfg.max_streams)
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .serve_connection(TokioIo::new(tls), svc)
            .await;
    } else {
        serve_h1(TokioIo::new(tls), cfg, stats).await;
    }
}

async fn serve_h1<I>(io: I, cfg: Arc<OriginBuilder>, stats: Arc<OriginStats>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = make_service(cfg, stats);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .await;
}

fn make_service(
    cfg: Arc<OriginBuilder>,
    stats: Arc<OriginStats>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    service_fn(move |req: Request<Incoming>| {
        let (cfg, stats) = (cfg.clone(), stats.clone());
        async move {
            stats.requests.fetch_add(1, Ordering::SeqCst);
            let now = stats.active.fetch_add(1, Ordering::SeqCst) + 1;
            stats.peak_active.fetch_max(now, Ordering::SeqCst);
            let _guard = ActiveGuard(stats.clone());
            if !cfg.delay.is_zero() {
                tokio::time::sleep(cfg.delay).await;
            }
            let extra = stats.force_delay_ms.load(Ordering::SeqCst);
            if extra > 0 {
                tokio::time::sleep(Duration::from_millis(extra)).await;
            }
            let forced = stats.force_status.load(Ordering::SeqCst);
            if forced != 0 {
                let mut r = Response::new(full("forced\n"));
                *r.status_mut() =
                    StatusCode::from_u16(forced).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return Ok(r);
            }
            let n = stats.requests.load(Ordering::SeqCst);
            // RFC 9110 §9.3.2: no content in a response to HEAD. hyper's HTTP/1.1 server drops
            // it by itself; its HTTP/2 server would send it (and the gateway resets the stream).
            let head = req.method() == http::Method::HEAD;
            let mut resp = respond(req, &cfg, n).await;
            if head {
                *resp.body_mut() = full(Bytes::new());
            }
            Ok::<_, Infallible>(resp)
        }
    })
}

struct ActiveGuard(Arc<OriginStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

fn now_date() -> HeaderValue {
    let text = crate::cache::policy::format_http_date(std::time::SystemTime::now());
    HeaderValue::from_str(&text)
        .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

async fn respond(req: Request<Incoming>, cfg: &OriginBuilder, n: u64) -> Response<Body> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let head = parts.next().unwrap_or("");
    let arg = parts.next().unwrap_or("");
    let mut resp = match head {
        "bytes" => {
            let n: u64 = arg.parse().unwrap_or(0);
            let mut r = Response::new(stream_bytes(n));
            r.headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
            r
        }
        "cached" => {
            let n: usize = arg.parse().unwrap_or(0);
            let mut r = Response::new(full(vec![b'c'; n]));
            r.headers_mut().insert("date", now_date());
            r.headers_mut().insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=3600"),
            );
            r
        }
        "drip" => {
            let ms: u64 = arg.parse().unwrap_or(0);
            let stream = futures_util::stream::unfold(0u8, move |i| async move {
                if i == 3 {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let chunk = Bytes::from(vec![b'a' + i, b'\n']);
                Some((Ok::<_, Infallible>(Frame::data(chunk)), i + 1))
            });
            let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
            let h = r.headers_mut();
            h.insert("date", now_date());
            h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(6));
            h.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=60"),
            );
            r
        }
        "sink" => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(Ok(f)) = body.frame().await {
                if let Some(d) = f.data_ref() {
                    n += d.len() as u64;
                }
            }
            Response::new(full(n.to_string()))
        }
        "echo" => {
            let body = req.into_body();
            let stream = futures_util::stream::unfold(body, |mut b| async move {
                match b.frame().await {
                    Some(Ok(f)) => Some((Ok::<_, Infallible>(f), b)),
                    _ => None,
                }
            });
            Response::new(StreamBody::new(stream).boxed_unsync())
        }
        "headers" => {
            let mut text = String::new();
            for (k, v) in req.headers() {
                text.push_str(&format!(
                    "{}: {}\n",
                    k,
                    String::from_utf8_lossy(v.as_bytes())
                ));
            }
            let authority = req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .or_else(|| {
                    req.headers()
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_string)
                })
                .unwrap_or_default();
            let mut r = Response::new(full(text));
            if let Ok(v) = HeaderValue::from_str(&authority) {
                r.headers_mut().insert("x-seen-authority", v);
            }
            r
        }
        "status" => {
            let code = arg
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
            let mut r = Response::new(full(
                if code.is_informational() || code == 204 || code == 304 {
                    ""
                } else {
                    "status\n"
                },
            ));
            *r.status_mut() = code;
            r
        }
        "declared" => {
            // No content, yet a declared length (what a 304 or a HEAD answer may carry, RFC
            // 9110 §8.6): hyper's h2 server puts END_STREAM on the HEADERS frame.
            let mut r = Response::new(full(""));
            *r.status_mut() = arg
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::NOT_MODIFIED);
            r.headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("5"));
            r
        }
        "delay" => {
            let ms: u64 = arg.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("delayed\n"))
        }
        "trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-trailer", HeaderValue::from_static("done"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"body with trailers\n"))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut r =
                Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync());
            // RFC 9110 §6.6.2: announce the trailer (hyper's HTTP/1.1 server sends only those).
            r.headers_mut()
                .insert("trailer", HeaderValue::from_static("x-trailer"));
            r
        }
        "cc" => {
            let etag = HeaderValue::from_static("\"v1\"");
            if req.headers().get(http::header::IF_NONE_MATCH) == Some(&etag) {
                let mut r = Response::new(full(""));
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                r.headers_mut().insert(http::header::ETAG, etag);
                return r;
            }
            let mut r = Response::new(full(format!("n={n}\n")));
            r.headers_mut().insert("date", now_date());
            if let Ok(v) = HeaderValue::from_str(&crate::admin::percent_decode(arg)) {
                r.headers_mut().insert(http::header::CACHE_CONTROL, v);
            }
            r.headers_mut().insert(http::header::ETAG, etag);
            r
        }
        "vary" => {
            let ae = req
                .headers()
                .get(http::header::ACCEPT_ENCODING)
                .cloned()
                .unwrap_or(HeaderValue::from_static("none"));
            let mut r = Response::new(full(ae.as_bytes().to_vec()));
            let h = r.headers_mut();
            h.insert("date", now_date());
            h.insert(
                http::header::VARY,
                HeaderValue::from_static("Accept-Encoding"),
            );
            h.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=60"),
            );
            r
        }
        _ => Response::new(full(vec![b'x'; cfg.body_size])),
    };
    let h = resp.headers_mut();
    h.insert("server", HeaderValue::from_static("muxgate-testkit-origin"));
    h.insert(
        "date",
        HeaderValue::from_static("Thu, 01 Jan 2030 00:00:00 GMT"),
    );
    resp
}

fn stream_bytes(n: u64) -> Body {
    const CHUNK: usize = 64 * 1024;
    Repeat {
        chunk: Bytes::from(vec![b'y'; CHUNK.min(n as usize)]),
        left: n,
    }
    .boxed_unsync()
}

/// `left` bytes of `chunk`, a chunk per frame. It reports its end with the last chunk, so
/// HTTP/2 sends END_STREAM on the last DATA frame, as nginx does for a file (a stream body
/// sent an extra empty DATA frame for it, which the benchmarks then measured).
struct Repeat {
    chunk: Bytes,
    left: u64,
}

impl hyper::body::Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let take = self.left.min(self.chunk.len() as u64);
        self.left -= take;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..take as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}
