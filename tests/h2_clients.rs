//! HTTP/2 clients: ALPN `h2` on the TLS listener, h2c with prior knowledge on plain listeners,
//! the RFC 9113 request checks, and the hardening against hostile clients. Legitimate clients
//! use the `h2` crate; hostile ones write raw frames (the `h2` crate will not misbehave).
//!
//! In every hostile case a legitimate HTTP/2 client on another connection keeps getting 200s
//! with zero errors, and the origin's connection and full-handshake counts do not move: one
//! client's abuse never reaches the shared origin connection.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use muxgate::testkit::origin::{Origin, RunningOrigin};
use muxgate::testkit::pki::{Pki, PkiFiles};
use muxgate::Gateway;
use support::h2raw::{
    frame, hpack_literal, settings, CONTINUATION, DATA, END_HEADERS, END_STREAM, HEADERS,
    INTERNAL_ERROR, PING, PREFACE, RST_STREAM, SETTINGS, SETTINGS_INITIAL_WINDOW_SIZE,
};
use support::{gateway_toml, https_url, init, metric_value, origin_toml, start_gateway};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;
/// How long a hostile connection may take to be closed.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

struct Setup {
    gw: Gateway,
    origin: RunningOrigin,
    pki: Pki,
    _files: PkiFiles,
}

/// A gateway with a plain and a TLS listener in front of an h2 origin; `client` is appended to
/// a `[client]` table.
async fn setup(client: &str) -> Setup {
    init();
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let files = pki.write().unwrap();
    let tables = format!(
        "\n[client]\n{client}\n[[listen_tls]]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n{}",
        files.cert.display().to_string(),
        files.key.display().to_string(),
        origin_toml("app", &["*"], &https_url(&origin), Some(&files.ca), "")
    );
    let gw = start_gateway(&gateway_toml("", &tables)).await;
    Setup {
        gw,
        origin,
        pki,
        _files: files,
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(addr: SocketAddr, pki: &Pki, alpn: &[&[u8]]) -> Tls {
    tls_connect_with(addr, pki.client_config(alpn).unwrap()).await
}

async fn tls_connect_with(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Tls {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tokio::time::timeout(
        support::IO_TIMEOUT,
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .expect("TLS connect in time")
    .expect("TLS connect")
}

type H2 = h2::client::SendRequest<Bytes>;

/// An `h2` crate client over `io`; the connection task runs in the background.
async fn h2_over<T>(io: T) -> Result<H2, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await
}

async fn h2_tls(addr: SocketAddr, pki: &Pki) -> H2 {
    h2_tls_with(addr, pki.client_config(&[b"h2"]).unwrap()).await
}

async fn h2_tls_with(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> H2 {
    let tls = tls_connect_with(addr, cfg).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2_over(tls).await.expect("h2 handshake")
}

struct H2Resp {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
    trailers: Option<http::HeaderMap>,
}

/// One exchange: `req` with `body` (sent in 16 KiB chunks, respecting flow control).
async fn exchange(h2: &H2, req: Request<()>, body: &[u8]) -> Result<H2Resp, h2::Error> {
    let fut = async {
        let mut h2 = h2.clone().ready().await?;
        let (resp, mut stream) = h2.send_request(req, body.is_empty())?;
        if !body.is_empty() {
            for chunk in body.chunks(16 * 1024) {
                stream.reserve_capacity(chunk.len());
                let mut left = Bytes::copy_from_slice(chunk);
                while !left.is_empty() {
                    let cap = std::future::poll_fn(|cx| stream.poll_capacity(cx))
                        .await
                        .ok_or_else(|| h2::Error::from(h2::Reason::CANCEL))??;
                    let part = left.split_to(cap.min(left.len()));
                    stream.send_data(part, false)?;
                }
            }
            stream.send_data(Bytes::new(), true)?;
        }
        let resp = resp.await?;
        let (parts, mut recv) = resp.into_parts();
        let mut out = Vec::new();
        while let Some(d) = recv.data().await {
            let d = d?;
            let _ = recv.flow_control().release_capacity(d.len());
            out.extend_from_slice(&d);
        }
        let trailers = recv.trailers().await?;
        Ok(H2Resp {
            status: parts.status,
            headers: parts.headers,
            body: out,
            trailers,
        })
    };
    tokio::time::timeout(support::IO_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(h2::Error::from(h2::Reason::CANCEL)))
}

/// GET /headers with a `Host` header beside the `:authority`.
fn get_with_host(host: &str) -> Request<()> {
    let mut r = req(Method::GET, "/headers");
    r.headers_mut().insert("host", host.parse().unwrap());
    r
}

fn req(method: Method, path: &str) -> Request<()> {
    Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .body(())
        .unwrap()
}

async fn get(h2: &H2, path: &str) -> Result<H2Resp, h2::Error> {
    exchange(h2, req(Method::GET, path), b"").await
}

/// Legitimate traffic on its own h2 TLS connection: GET / in a loop until stopped.
struct Legit {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Legit {
    async fn start(addr: SocketAddr, pki: &Pki) -> Legit {
        let h2 = h2_tls(addr, pki).await;
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (s, o, e) = (stop.clone(), ok.clone(), errors.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Acquire) {
                match get(&h2, "/").await {
                    Ok(r) if r.status == 200 && r.body.len() == 1024 => {
                        o.fetch_add(1, Ordering::AcqRel);
                    }
                    Ok(r) => e.lock().unwrap().push(format!("status {}", r.status)),
                    Err(err) => e.lock().unwrap().push(err.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let l = Legit {
            stop,
            ok,
            errors,
            task,
        };
        // Warm: the origin connection exists before the case starts.
        assert!(support::wait_until(CLOSE_WAIT, || l.ok.load(Ordering::Acquire) >= 5).await);
        l
    }

    async fn finish(self) {
        let before = self.ok.load(Ordering::Acquire);
        // Still served after the case.
        assert!(
            support::wait_until(CLOSE_WAIT, || self.ok.load(Ordering::Acquire) >= before + 5).await,
            "legitimate client stalled: {:?}",
            self.errors.lock().unwrap()
        );
        self.stop.store(true, Ordering::Release);
        let _ = tokio::time::timeout(support::IO_TIMEOUT, self.task).await;
        let errors = self.errors.lock().unwrap();
        assert!(errors.is_empty(), "legitimate client errors: {errors:?}");
    }
}

/// The origin's connection and full-handshake counts.
fn origin_snapshot(o: &RunningOrigin) -> (u64, u64) {
    (
        o.stats.get(|s| &s.connections),
        o.stats.get(|s| &s.full_handshakes),
    )
}

/// A hostile client writing raw frames over TLS (ALPN h2); a reader task records what the
/// gateway sends until it closes.
struct Raw {
    w: tokio::io::WriteHalf<Tls>,
    seen: Arc<Mutex<Vec<support::h2raw::Frame>>>,
    /// When the first GOAWAY was read.
    goaway_at: Arc<Mutex<Option<Instant>>>,
    closed: Arc<AtomicBool>,
}

impl Raw {
    async fn connect(addr: SocketAddr, pki: &Pki) -> Raw {
        Raw::connect_with(addr, pki, &[]).await
    }

    /// Connects, sending `params` in the client's SETTINGS.
    async fn connect_with(addr: SocketAddr, pki: &Pki, params: &[(u16, u32)]) -> Raw {
        let tls = tls_connect(addr, pki, &[b"h2"]).await;
        let (mut r, mut w) = tokio::io::split(tls);
        w.write_all(PREFACE).await.unwrap();
        w.write_all(&settings(params)).await.unwrap();
        w.flush().await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let goaway_at = Arc::new(Mutex::new(None));
        let closed = Arc::new(AtomicBool::new(false));
        let (s, g, c) = (seen.clone(), goaway_at.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let mut h = [0u8; 9];
                if r.read_exact(&mut h).await.is_err() {
                    break;
                }
                let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                let mut payload = vec![0u8; len];
                if r.read_exact(&mut payload).await.is_err() {
                    break;
                }
                if h[3] == GOAWAY {
                    g.lock().unwrap().get_or_insert_with(Instant::now);
                }
                s.lock().unwrap().push(support::h2raw::Frame {
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                    payload,
                });
            }
            c.store(true, Ordering::Release);
        });
        Raw {
            w,
            seen,
            goaway_at,
            closed,
        }
    }

    /// Writes `bytes`; false once the gateway has closed.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(5), async {
                self.w.write_all(bytes).await?;
                self.w.flush().await
            })
            .await,
            Ok(Ok(()))
        )
    }

    /// Closes the client's side (TLS close_notify, then FIN).
    async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.w.shutdown()).await;
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The error code of the GOAWAY the gateway sent, if any.
    fn goaway(&self) -> Option<u32> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.kind == GOAWAY && f.payload.len() >= 8)
            .map(|f| u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]]))
            .find(|c| *c != 0)
    }

    /// RST_STREAM frames received: (stream, error code).
    fn resets(&self) -> Vec<(u32, u32)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.kind == RST_STREAM && f.payload.len() == 4)
            .map(|f| {
                (
                    f.stream,
                    u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]),
                )
            })
            .collect()
    }

    /// Streams that got a response HEADERS frame.
    fn answered(&self) -> Vec<u32> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.kind == HEADERS)
            .map(|f| f.stream)
            .collect()
    }
}

/// HPACK block for `GET https://localhost{path}` (RFC 7541 Appendix A: 2 = `:method GET`,
/// 7 = `:scheme https`; `:path` and `:authority` as literals with indexed names 4 and 1).
fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x87];
    b.push(0x04);
    support::h2raw::hpack_int(&mut b, 0, 7, path.len());
    b.extend_from_slice(path.as_bytes());
    b.push(0x01);
    b.push(9);
    b.extend_from_slice(b"localhost");
    b
}

/// Sends frames until the gateway closes the connection (or `max` rounds); returns rounds sent.
async fn flood(raw: &mut Raw, chunk: &[u8], max: usize) -> usize {
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    for i in 0..max {
        if raw.is_closed() || tokio::time::Instant::now() > deadline || !raw.send(chunk).await {
            return i;
        }
    }
    max
}

async fn wait_closed(raw: &Raw) -> bool {
    support::wait_until(CLOSE_WAIT, || raw.is_closed()).await
}

/// Sends `one` frame over and over (50 per write) until the gateway closes the connection, and
/// checks that it closed with GOAWAY(ENHANCE_YOUR_CALM).
async fn flood_until_calm(raw: &mut Raw, one: &[u8], what: &str) {
    let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 50).collect();
    let sent = flood(raw, &chunk, 100_000).await;
    assert!(
        wait_closed(raw).await,
        "still open after {sent} × 50 {what}"
    );
    assert_eq!(raw.goaway(), Some(ENHANCE_YOUR_CALM));
}

fn metrics(gw: &Gateway) -> String {
    gw.metrics().render()
}

/// Exactly one client connection was closed for `reason`.
/// The gateway counts a close after h2 has written its GOAWAY and FIN, so the count may trail
/// what the client saw by a moment: polled for up to 5 s, then must be exactly 1.
async fn assert_closed_once(gw: &Gateway, reason: &str) {
    let series = format!("muxgate_downstream_connections_closed_total{{reason=\"{reason}\"}}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut m = metrics(gw);
    while metric_value(&m, &series).is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = metrics(gw);
    }
    assert_eq!(metric_value(&m, &series), Some(1.0), "{m}");
    // A second count would trail the first by as little: look again a moment later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = metrics(gw);
    assert_eq!(metric_value(&m, &series), Some(1.0), "{m}");
}

// ---------------------------------------------------------------------------------------------
// Legitimate HTTP/2 clients
// ---------------------------------------------------------------------------------------------

/// ALPN h2 on the TLS listener: 250 concurrent streams on one connection and 20 connections ×
/// 20 streams, 1 MiB up and down, echo, trailers, HEAD and 204 — all through a handful of
/// origin connections. Responses carry no connection-specific fields (the `h2` client rejects
/// them as malformed, RFC 9113 §8.2.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_streams_bodies_trailers() {
    let _g = support::serial().await;
    let s = setup("").await;
    let addr = s.gw.tls_addrs[0];
    let h2 = h2_tls(addr, &s.pki).await;

    // 250 concurrent streams on one connection (the h2 client queues past the gateway's 128).
    let mut tasks = Vec::new();
    for _ in 0..250 {
        let h2 = h2.clone();
        tasks.push(tokio::spawn(async move { get(&h2, "/").await }));
    }
    for t in tasks {
        let r = t.await.unwrap().expect("stream");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 1024);
        assert!(r.headers.get("connection").is_none());
    }

    // Many client connections.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let cfg = s.pki.client_config(&[b"h2"]).unwrap();
        tasks.push(tokio::spawn(async move {
            let h2 = h2_tls_with(addr, cfg).await;
            let mut inner = Vec::new();
            for _ in 0..20 {
                let h2 = h2.clone();
                inner.push(tokio::spawn(async move { get(&h2, "/").await }));
            }
            for t in inner {
                assert_eq!(t.await.unwrap().expect("stream").status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Bodies both ways.
    let mib = vec![b'u'; 1 << 20];
    let r = exchange(&h2, req(Method::POST, "/sink"), &mib)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.body.as_slice()),
        (StatusCode::OK, &b"1048576"[..])
    );
    let r = exchange(&h2, req(Method::POST, "/echo"), &mib)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == mib, "echo returned {} bytes", r.body.len());
    let r = get(&h2, "/bytes/1048576").await.unwrap();
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 1 << 20));

    // Trailers, HEAD, 204.
    let r = get(&h2, "/trailers").await.unwrap();
    assert_eq!(r.status, 200);
    let t = r.trailers.expect("trailers");
    assert_eq!(t.get("x-trailer").map(|v| v.as_bytes()), Some(&b"done"[..]));
    let r = exchange(&h2, req(Method::HEAD, "/"), b"").await.unwrap();
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 0));
    let r = get(&h2, "/status/204").await.unwrap();
    assert_eq!((r.status, r.body.len()), (StatusCode::NO_CONTENT, 0));
    // No content but a declared length, END_STREAM on the origin's HEADERS: the client's
    // HEADERS must end the stream too (h2 refuses an empty DATA frame after a non-zero
    // Content-Length as an underflow).
    for (path, status) in [
        ("/declared/304", StatusCode::NOT_MODIFIED),
        ("/declared/204", StatusCode::NO_CONTENT),
    ] {
        let r = get(&h2, path).await.expect(path);
        assert_eq!((r.status, r.body.len()), (status, 0), "{path}");
    }

    // 670 requests over 21 client connections; the origin saw a few connections, one full
    // handshake.
    let (conns, full) = origin_snapshot(&s.origin);
    assert!(conns <= 4, "origin connections: {conns}");
    assert_eq!(full, 1);
    let m = metrics(&s.gw);
    assert_eq!(
        metric_value(&m, "muxgate_downstream_connections_total{protocol=\"h2\"}"),
        Some(21.0),
        "{m}"
    );
    assert!(s.gw.shutdown().await);
}

/// `h2c = true`: a plain connection opening with the HTTP/2 preface is served HTTP/2 (prior
/// knowledge, RFC 9113 §3.3); HTTP/1.1 on the same listener still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_when_enabled() {
    let s = setup("h2c = true").await;
    let addr = s.gw.http_addrs[0];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let h2 = h2_over(tcp).await.expect("h2c handshake");
    let r = exchange(
        &h2,
        Request::get("http://localhost/headers").body(()).unwrap(),
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("x-forwarded-proto: http\n"));
    let r = support::get(addr, "localhost", "/").await;
    assert_eq!(r.status, 200);
    let m = metrics(&s.gw);
    assert_eq!(
        metric_value(&m, "muxgate_downstream_connections_total{protocol=\"h2c\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "muxgate_downstream_connections_total{protocol=\"http/1.1\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert!(s.gw.shutdown().await);
}

/// Default (`h2c = false`): the preface on a plain listener is not HTTP/2; the client's
/// handshake or request fails, and `Upgrade: h2c` from HTTP/1.1 is never honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_refused_when_disabled() {
    let s = setup("").await;
    let addr = s.gw.http_addrs[0];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let outcome = tokio::time::timeout(support::IO_TIMEOUT, async {
        match h2_over(tcp).await {
            Ok(h2) => get(&h2, "/").await.map(|r| r.status),
            Err(e) => Err(e),
        }
    })
    .await
    .expect("bounded");
    assert!(outcome.is_err(), "h2c served while disabled: {outcome:?}");

    let r = support::raw_request(
        addr,
        b"GET /headers HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.text().to_ascii_lowercase();
    assert!(
        !body.contains("upgrade:") && !body.contains("http2-settings"),
        "{body}"
    );
    assert_eq!(s.origin.stats.get(|s| &s.requests), 1);
    assert!(s.gw.shutdown().await);
}

/// RFC 9113 §8.3.1: `:authority` and `Host` must name the same entity after scheme-based
/// normalisation (case, default port); a mismatch (another host, another port) is refused
/// with 400 and the connection stays usable; matching pairs are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_host_mismatch_is_400() {
    let s = setup("").await;
    let h2 = h2_tls(s.gw.tls_addrs[0], &s.pki).await;
    let bad = get_with_host("evil.example");
    let r = exchange(&h2, bad, b"").await.unwrap();
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains(":authority and Host differ"));
    assert!(r.headers.get("connection").is_none());
    let other_port = get_with_host("localhost:8443");
    let r = exchange(&h2, other_port, b"").await.unwrap();
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));

    // `https://localhost` and `localhost:443` are the same entity.
    let default_port = get_with_host("localhost:443");
    let r = exchange(&h2, default_port, b"").await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let same = get_with_host("LocalHost");
    let r = exchange(&h2, same, b"").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers.get("x-seen-authority").map(|v| v.as_bytes()),
        Some(&b"localhost"[..])
    );
    assert_eq!(s.origin.stats.get(|s| &s.requests), 2);
    assert!(s.gw.shutdown().await);
}

/// RFC 9113 §8.3.1: without `:authority` the `Host` field routes the request; with neither the
/// request is refused (400). Raw frames: the `h2` crate always sends `:authority`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_without_authority_routes() {
    let s = setup("").await;
    let mut raw = Raw::connect(s.gw.tls_addrs[0], &s.pki).await;
    // :method GET, :scheme https, :path /, then `host: localhost` (static index 38).
    let mut with_host = vec![0x82, 0x87, 0x84, 0x0f, 38 - 15, 9];
    with_host.extend_from_slice(b"localhost");
    let neither = vec![0x82, 0x87, 0x84];
    let mut bytes = frame(HEADERS, END_HEADERS | END_STREAM, 1, &with_host);
    bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &neither));
    assert!(raw.send(&bytes).await);
    assert!(
        support::wait_until(CLOSE_WAIT, || raw.answered().len() == 2).await,
        "{:?}",
        raw.resets()
    );
    // HPACK: the response starts with `:status`; 0x88 is the static entry `:status: 200`.
    let first = |id: u32| {
        raw.seen
            .lock()
            .unwrap()
            .iter()
            .find(|f| f.kind == HEADERS && f.stream == id)
            .and_then(|f| f.payload.first().copied())
    };
    assert_eq!(first(1), Some(0x88));
    assert_ne!(first(3), Some(0x88));
    assert_eq!(s.origin.stats.get(|s| &s.requests), 1);
    raw.close().await;
    assert!(s.gw.shutdown().await);
}

/// A client's RST_STREAM cancels the upstream stream; graceful shutdown sends GOAWAY and lets
/// a stream in flight finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reset_cancels_upstream_and_shutdown_drains() {
    let s = setup("").await;
    let h2 = h2_tls(s.gw.tls_addrs[0], &s.pki).await;
    let mut sender = h2.clone().ready().await.unwrap();
    let (resp, mut stream) = sender
        .send_request(req(Method::GET, "/delay/10000"), true)
        .unwrap();
    let active = |gw: &Gateway| {
        metric_value(
            &metrics(gw),
            "muxgate_upstream_streams_active{origin=\"app\"}",
        )
        .unwrap_or(0.0)
    };
    assert!(support::wait_until(CLOSE_WAIT, || active(&s.gw) == 1.0).await);
    stream.send_reset(h2::Reason::CANCEL);
    drop(resp);
    assert!(
        support::wait_until(CLOSE_WAIT, || active(&s.gw) == 0.0).await,
        "upstream stream not cancelled"
    );

    // Graceful shutdown with a stream in flight.
    let inflight = {
        let h2 = h2.clone();
        tokio::spawn(async move { get(&h2, "/delay/500").await })
    };
    assert!(support::wait_until(CLOSE_WAIT, || active(&s.gw) == 1.0).await);
    let drained = s.gw.shutdown().await;
    let r = inflight.await.unwrap().expect("in-flight stream finished");
    assert_eq!(r.status, 200);
    assert!(drained);
    // GOAWAY: the connection takes no new streams.
    assert!(get(&h2, "/").await.is_err());
}

/// Keep-alive PING (`h2_keepalive_interval`/`h2_keepalive_timeout`): an idle client that answers
/// is kept; one that never ACKs the PING is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_is_pinged_and_silent_one_closed() {
    let s = setup("h2_keepalive_interval = \"300ms\"\nh2_keepalive_timeout = \"300ms\"").await;
    let addr = s.gw.tls_addrs[0];
    let h2 = h2_tls(addr, &s.pki).await;
    assert_eq!(get(&h2, "/").await.unwrap().status, 200);
    let raw = Raw::connect(addr, &s.pki).await;
    assert!(wait_closed(&raw).await, "silent client not closed");
    let pinged = raw
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|f| f.kind == PING && f.flags & 1 == 0);
    assert!(pinged, "no keep-alive PING before the close");
    // The answering client (the h2 crate ACKs PINGs) is still served after several intervals.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get(&h2, "/").await.unwrap().status, 200);
    drop(h2);
    assert!(s.gw.shutdown().await);
}

// ---------------------------------------------------------------------------------------------
// Hostile clients
// ---------------------------------------------------------------------------------------------

/// Streams beyond `h2_max_concurrent_streams` (8 here) get RST_STREAM(REFUSED_STREAM)
/// (RFC 9113 §5.1.2); the 8 within the limit are answered and the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_streams_beyond_limit_are_refused() {
    let _g = support::serial().await;
    let s = setup("h2_max_concurrent_streams = 8\nh2_max_resets_per_sec = 8").await;
    let addr = s.gw.tls_addrs[0];
    let legit = Legit::start(addr, &s.pki).await;
    let before = origin_snapshot(&s.origin);

    let mut raw = Raw::connect(addr, &s.pki).await;
    let mut burst = Vec::new();
    for i in 0..20u32 {
        burst.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            2 * i + 1,
            &get_block("/delay/300"),
        ));
    }
    assert!(raw.send(&burst).await);
    let done = support::wait_until(CLOSE_WAIT, || {
        raw.answered().len() + raw.resets().len() >= 20
    })
    .await;
    assert!(
        done,
        "answered {:?} resets {:?}",
        raw.answered(),
        raw.resets()
    );
    let refused: Vec<_> = raw
        .resets()
        .into_iter()
        .filter(|(_, c)| *c == REFUSED_STREAM)
        .collect();
    assert_eq!(refused.len(), 12, "{refused:?}");
    assert_eq!(raw.answered().len(), 8);
    // Still usable once the streams are done.
    assert!(
        raw.send(&frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            41,
            &get_block("/")
        ))
        .await
    );
    assert!(support::wait_until(CLOSE_WAIT, || raw.answered().contains(&41)).await);
    assert!(!raw.is_closed());
    raw.close().await;

    legit.finish().await;
    assert_eq!(origin_snapshot(&s.origin), before);
    assert!(s.gw.shutdown().await);
}

/// Header lists: between 1x and 2x `max_header_size` the proxy answers 431 with a body; far past
/// it the gateway refuses without decoding (a 431 or RST_STREAM from h2, or GOAWAY), bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_oversized_header_list() {
    let _g = support::serial().await;
    let s = setup("max_header_size = \"16KiB\"").await;
    let addr = s.gw.tls_addrs[0];
    let legit = Legit::start(addr, &s.pki).await;
    let before = origin_snapshot(&s.origin);
    let h2 = h2_tls(addr, &s.pki).await;
    let mut big = req(Method::GET, "/");
    big.headers_mut()
        .insert("x-big", "a".repeat(20 * 1024).parse().unwrap());
    let r = exchange(&h2, big, b"").await.unwrap();
    assert_eq!(r.status, 431);
    assert!(!r.body.is_empty());

    // Past twice the limit (40 KiB here) in 3 frames: h2 refuses the stream without decoding
    // further (its own 431 and RST_STREAM, RFC 9113 §8.2.1 / RFC 6585 §5); the connection stays.
    let mut raw = Raw::connect(addr, &s.pki).await;
    assert!(raw.send(&header_block_frames(1, 40 * 1024)).await);
    let refused = support::wait_until(CLOSE_WAIT, || {
        raw.answered().contains(&1) || raw.resets().iter().any(|(id, _)| *id == 1)
    })
    .await;
    assert!(refused, "stream 1 not refused");
    assert!(raw.goaway().is_none() && !raw.is_closed());

    // 1 MiB of header value in HEADERS + CONTINUATION frames (16 KiB each, within the frame
    // size): more CONTINUATION frames than the header list size can need → GOAWAY
    // (ENHANCE_YOUR_CALM) after a handful, never buffered whole.
    let _ = raw.send(&header_block_frames(3, 1 << 20)).await;
    assert!(wait_closed(&raw).await);
    assert_eq!(raw.goaway(), Some(ENHANCE_YOUR_CALM));

    legit.finish().await;
    assert_eq!(origin_snapshot(&s.origin), before);
    assert!(s.gw.shutdown().await);
}

/// `GET /` with an `x-huge` field of `value_len` bytes, as HEADERS + CONTINUATION frames of
/// 16 KiB (the default SETTINGS_MAX_FRAME_SIZE).
fn header_block_frames(stream: u32, value_len: usize) -> Vec<u8> {
    let mut block = get_block("/");
    hpack_literal(&mut block, b"x-huge", &vec![b'h'; value_len]);
    let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    let mut bytes = frame(HEADERS, END_STREAM, stream, chunks[0]);
    for (i, c) in chunks.iter().enumerate().skip(1) {
        let flags = if i + 1 == chunks.len() {
            END_HEADERS
        } else {
            0
        };
        bytes.extend(frame(CONTINUATION, flags, stream, c));
    }
    bytes
}

/// Rapid reset (CVE-2023-44487): thousands of HEADERS + RST_STREAM pairs → that client's
/// connection gets GOAWAY(ENHANCE_YOUR_CALM); the few streams that reached the origin are
/// cancelled within the upstream reset budget, so the shared origin connection survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rapid_reset() {
    let _g = support::serial().await;
    let s = setup("").await;
    let addr = s.gw.tls_addrs[0];
    let legit = Legit::start(addr, &s.pki).await;
    let before = origin_snapshot(&s.origin);

    let mut raw = Raw::connect(addr, &s.pki).await;
    let block = get_block("/delay/200");
    let mut id = 1u32;
    let mut rounds = 0;
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    while !raw.is_closed() && id < 20_000 && tokio::time::Instant::now() < deadline {
        let mut batch = Vec::new();
        for _ in 0..100 {
            batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
            batch.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
            id += 2;
        }
        if !raw.send(&batch).await {
            break;
        }
        rounds += 1;
        // Paced (still ~100,000 resets a second): unpaced, an optimised build wrote all
        // 10,000 pairs into the socket buffers before the gateway had read the first ones,
        // and the check below measured the client's speed, not the cut.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(wait_closed(&raw).await, "still open after {rounds} batches");
    assert_eq!(raw.goaway(), Some(ENHANCE_YOUR_CALM));
    assert!(id < 20_000, "never cut off");

    legit.finish().await;
    assert_eq!(origin_snapshot(&s.origin), before);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut m = metrics(&s.gw);
    while !m.contains("muxgate_downstream_connections_closed_total{reason=\"h2_")
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = metrics(&s.gw);
    }
    assert!(
        m.contains("muxgate_downstream_connections_closed_total{reason=\"h2_"),
        "{m}"
    );
    assert!(s.gw.shutdown().await);
}

/// Rapid reset of streams the gateway already accepted (h2's pending-accept counter never sees
/// them): the guard's RST_STREAM bucket (`h2_max_resets_per_sec`) ends the connection with
/// GOAWAY(ENHANCE_YOUR_CALM); the cancelled upstream streams stay within the upstream reset
/// budget, so the origin connection survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_reset_of_accepted_streams() {
    let _g = support::serial().await;
    let s =
        setup("h2_max_resets_per_sec = 128\nh2_max_pending_accept_reset_streams = 100000").await;
    let addr = s.gw.tls_addrs[0];
    let legit = Legit::start(addr, &s.pki).await;
    let before = origin_snapshot(&s.origin);

    let mut raw = Raw::connect(addr, &s.pki).await;
    let block = get_block("/delay/5");
    let mut id = 1u32;
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    while !raw.is_closed() && id < 20_000 && tokio::time::Instant::now() < deadline {
        // Separate writes with a pause: the gateway accepts the stream before its reset.
        if !raw
            .send(&frame(HEADERS, END_HEADERS | END_STREAM, id, &block))
            .await
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        if !raw
            .send(&frame(RST_STREAM, 0, id, &8u32.to_be_bytes()))
            .await
        {
            break;
        }
        id += 2;
    }
    assert!(
        wait_closed(&raw).await,
        "still open after {} streams",
        id / 2
    );
    assert_eq!(raw.goaway(), Some(ENHANCE_YOUR_CALM));

    legit.finish().await;
    assert_eq!(origin_snapshot(&s.origin), before);
    assert_closed_once(&s.gw, "h2_reset_flood").await;
    assert!(s.gw.shutdown().await);
}

/// CONTINUATION flood (CVE-2024-27316 class): HEADERS without END_HEADERS, then CONTINUATION
/// frames without end → GOAWAY(ENHANCE_YOUR_CALM) after a handful (h2 counts them against the
/// header list size), memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_continuation_flood() {
    let _g = support::serial().await;
    let s = setup("").await;
    let addr = s.gw.tls_addrs[0];
    let legit = Legit::start(addr, &s.pki).await;
    let before = origin_snapshot(&s.origin);
    let rss_before = rss_kib();

    let mut raw = Raw::connect(addr, &s.pki).await;
    assert!(
        raw.send(&frame(HEADERS, END_STREAM, 1, &get_block("/")))
            .await
    );
    // Each CONTINUATION carries complete small fields, so only the frame count and the header
    // list size can stop it.
    let mut fields = Vec::new();
    while fields.len() < 4000 {
        hpack_literal(&mut fields, b"x-c", b"continued");
    }
    let cont = frame(CONTINUATION, 0, 1, &fields);
    let chunk: Vec<u8> = cont.iter().copied().cycle().take(cont.len() * 16).collect();
    let sent = flood(&mut raw, &chunk, 100_000).await;
    assert!(wait_closed(&raw).await, "still open after {sent} rounds");
    assert_eq!(raw.goaway(), Some(ENHANCE_YOUR_CALM));
    assert!(sent < 100, "cut off after {sent} × 16 CONTINUATION frames");
    let grew = rss_kib().saturating_sub(rss_before);
    assert!(grew < 64 * 1024, "RSS grew by {grew} KiB");

    legit.finish().await;
    assert_eq!(origin_snapshot(&s.origin), before);
    assert!(s.gw.shutdown().await);
}

/// PING flood (CVE-2019-9512): h2 answers one PING at a time and never disconnects; the guard
/// closes the connection with GOAWAY(ENHANCE_YOUR_CALM) past `h2_max_control_frames_per_sec`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ping_flood() {
    let _g = support::serial().await;
    let s = setup("").await;
    let addr = s.gw.tls_addrs[0];
    let legit = Legit::start(addr, &s.pki).await;
    let before = origin_snapshot(&s.origin);

    let mut raw = Raw::connect(addr, &s.pki).await;
    flood_until_calm(&mut raw, &frame(PING, 0, 0, &[7; 8]), "PINGs").await;
    // Default 100 per second: cut off within a few hundred, not after the whole flood.
    let acks = raw
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f.kind == PING)
        .count();
    assert!(acks <= 400, "{acks} PING ACKs before the close");

    legit.finish().await;
    assert_eq!(origin_snapshot(&s.origin), before);
    assert_closed_once(&s.gw, "h2_control_flood").await;
    assert!(s.gw.shutdown().await);
}

/// SETTINGS flood (CVE-2019-9515): same bound, same GOAWAY(ENHANCE_YOUR_CALM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_settings_flood() {
    let _g = support::serial().await;
    let s = setup("").await;
    let addr = s.gw.tls_addrs[0];
    let legit = Legit::start(addr, &s.pki).await;
    let before = origin_snapshot(&s.origin);

    let mut raw = Raw::connect(addr, &s.pki).await;
    let one = frame(SETTINGS, 0, 0, &[0, 0x4, 0, 1, 0, 0]);
    flood_until_calm(&mut raw, &one, "SETTINGS").await;
    let acks = raw
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f.kind == SETTINGS && f.flags & 1 == 1)
        .count();
    assert!(acks <= 400, "{acks} SETTINGS ACKs before the close");

    legit.finish().await;
    assert_eq!(origin_snapshot(&s.origin), before);
    assert!(s.gw.shutdown().await);
}

/// Empty DATA frames (CVE-2019-9518) count as control frames too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_empty_data_flood() {
    let _g = support::serial().await;
    let s = setup("").await;
    let addr = s.gw.tls_addrs[0];
    let legit = Legit::start(addr, &s.pki).await;
    let before = origin_snapshot(&s.origin);

    let mut raw = Raw::connect(addr, &s.pki).await;
    // POST /sink with a body that never ends: empty DATA frames only.
    let mut block = vec![0x83, 0x87, 0x04, 5];
    block.extend_from_slice(b"/sink");
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    assert!(raw.send(&frame(HEADERS, END_HEADERS, 1, &block)).await);
    flood_until_calm(&mut raw, &frame(DATA, 0, 1, &[]), "empty DATA").await;

    legit.finish().await;
    assert_eq!(origin_snapshot(&s.origin), before);
    assert!(s.gw.shutdown().await);
}

/// WINDOW_UPDATE flood: frames a client sends only for what it receives, counted against the
/// DATA frames the gateway sent it (`h2_max_window_updates_per_data_frame`); a flood gets
/// GOAWAY(ENHANCE_YOUR_CALM). A client with a 1 KiB stream window, which sends about one
/// WINDOW_UPDATE per DATA frame, downloads 256 KiB untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_window_update_flood() {
    let _g = support::serial().await;
    let s = setup("").await;
    let addr = s.gw.tls_addrs[0];
    let legit = Legit::start(addr, &s.pki).await;
    let before = origin_snapshot(&s.origin);

    // A chatty but legitimate client: tiny stream window, capacity released per DATA frame.
    let tls = tls_connect(addr, &s.pki, &[b"h2"]).await;
    let (small, conn) = h2::client::Builder::new()
        .initial_window_size(1024)
        .handshake::<_, Bytes>(tls)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    for _ in 0..3 {
        let r = get(&small, "/bytes/262144").await.expect("download");
        assert_eq!((r.status, r.body.len()), (StatusCode::OK, 262_144));
    }

    let mut raw = Raw::connect(addr, &s.pki).await;
    let one = frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes());
    flood_until_calm(&mut raw, &one, "WINDOW_UPDATEs").await;

    // The chatty client's connection is still in service.
    let r = get(&small, "/bytes/65536").await.expect("after the flood");
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 65_536));
    legit.finish().await;
    assert_eq!(origin_snapshot(&s.origin), before);
    assert_closed_once(&s.gw, "h2_window_update_flood").await;
    assert!(s.gw.shutdown().await);
}

/// Upstream streams held for the origin `app`.
fn upstream_active(gw: &Gateway) -> f64 {
    metric_value(
        &metrics(gw),
        "muxgate_upstream_streams_active{origin=\"app\"}",
    )
    .unwrap_or(0.0)
}

fn send_timeouts(gw: &Gateway) -> f64 {
    metric_value(
        &metrics(gw),
        "muxgate_downstream_streams_closed_total{reason=\"send_timeout\"}",
    )
    .unwrap_or(0.0)
}

/// A raw client with SETTINGS_INITIAL_WINDOW_SIZE 0 that asks for 4 MiB on stream 1: the
/// response cannot send a byte of its body until the client opens the window. Also returns
/// when the request was sent: the send clock cannot start before.
async fn stalled_stream(s: &Setup) -> (Raw, Instant) {
    let mut raw = Raw::connect_with(
        s.gw.tls_addrs[0],
        &s.pki,
        &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)],
    )
    .await;
    let sent = Instant::now();
    raw.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &get_block("/bytes/4194304"),
    ))
    .await;
    (raw, sent)
}

/// Waits up to `limit` for `cond`; returns the last moment it was seen false and the moment
/// it was seen true, so the change happened between the two.
async fn when(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<(Instant, Instant)> {
    let deadline = Instant::now() + limit;
    let mut before = Instant::now();
    loop {
        let checked = Instant::now();
        if cond() {
            return Some((before, checked));
        }
        before = checked;
        if checked >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `client.send_timeout` for HTTP/2: a client that keeps its connection alive but never opens
/// a stream's window (SETTINGS_INITIAL_WINDOW_SIZE 0) holds the response's upstream stream
/// only until the timeout (1 s here, cut within 1.25 s); the stream is then reset when the
/// client lets data through, the connection stays up, and other clients are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_window_withheld_past_send_timeout() {
    let s = setup("send_timeout = \"1s\"").await;
    let addr = s.gw.tls_addrs[0];
    let (mut raw, sent) = stalled_stream(&s).await;
    assert!(
        support::wait_until(CLOSE_WAIT, || raw.answered() == [1]).await,
        "no response HEADERS"
    );
    assert_eq!(upstream_active(&s.gw), 1.0, "upstream stream held");

    // Not cut before the timeout (unless this thread was held up past it: then the check
    // says nothing)...
    tokio::time::sleep_until((sent + Duration::from_millis(700)).into()).await;
    let (active, cut) = (upstream_active(&s.gw), send_timeouts(&s.gw));
    if sent.elapsed() < Duration::from_millis(950) {
        assert_eq!((active, cut), (1.0, 0.0), "cut before send_timeout");
    }
    // ...and released after it, by 1.25 × (plus scheduling slack).
    assert!(
        support::wait_until(CLOSE_WAIT, || upstream_active(&s.gw) == 0.0).await,
        "upstream stream still held"
    );
    let released = Instant::now();
    let held = sent.elapsed();
    assert!(
        held < Duration::from_millis(2500),
        "released after {held:?}"
    );
    assert_eq!(send_timeouts(&s.gw), 1.0);
    assert!(raw.resets().is_empty(), "reset while the window was shut");

    // The client opens the window: the stream is reset (whether hyper first sends what it
    // had queued for it depends on timing). With it, a second stream whose response drips
    // for 2 s (its window open): a body alive keeps the connection's clock ticking.
    let mut open = frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        3,
        &get_block("/drip/1000"),
    );
    open.extend(frame(WINDOW_UPDATE, 0, 3, &65_535u32.to_be_bytes()));
    open.extend(frame(WINDOW_UPDATE, 0, 1, &65_535u32.to_be_bytes()));
    raw.send(&open).await;
    let opened_after = released.elapsed();
    assert!(
        support::wait_until(CLOSE_WAIT, || raw.resets().contains(&(1, INTERNAL_ERROR))).await,
        "no RST_STREAM: {:?}",
        raw.resets()
    );
    // The connection is kept past the moment a stream still held would have cost it (a
    // timeout after the give-up). Checked only if the window opened well before that moment.
    if opened_after < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert_eq!(raw.answered(), [1, 3]);
        assert!(!raw.is_closed(), "connection closed");
        assert_eq!(*raw.goaway_at.lock().unwrap(), None, "GOAWAY sent");
        let m = metrics(&s.gw);
        let series = "muxgate_downstream_connections_closed_total{reason=\"send_timeout\"}";
        assert_eq!(metric_value(&m, series), None, "{m}");
    }

    // Other clients, and a new stream on the same gateway, are served.
    let h2 = h2_tls(addr, &s.pki).await;
    let r = get(&h2, "/bytes/65536").await.expect("another client");
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 65_536));
    assert_eq!(send_timeouts(&s.gw), 1.0);
    drop(h2);
    raw.close().await;
    assert!(s.gw.shutdown().await);
}

/// A client that never lets a given-up stream be reset (its window stays shut) loses the
/// connection a timeout later: GOAWAY a timeout (1 s) and a 100 ms settling pause after the
/// give-up, then the close once the other streams had 5 s, counted in
/// `muxgate_downstream_connections_closed_total{reason="send_timeout"}`. hyper would otherwise
/// hold the stream's next 16 KiB for as long as the client keeps the connection alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_window_withheld_for_good_loses_the_connection() {
    let s = setup("send_timeout = \"1s\"").await;
    let (raw, _) = stalled_stream(&s).await;
    let (not_yet, given_up) = when(CLOSE_WAIT, || send_timeouts(&s.gw) == 1.0)
        .await
        .expect("stream given up");
    assert!(
        support::wait_until(Duration::from_secs(5), || raw
            .goaway_at
            .lock()
            .unwrap()
            .is_some())
        .await,
        "no GOAWAY"
    );
    let goaway_at = raw.goaway_at.lock().unwrap().expect("GOAWAY");
    // The give-up happened after `not_yet`, and the clock waits 4 ticks of 250 ms and the
    // settling pause after it: never sooner, whatever the load.
    let after = goaway_at.duration_since(not_yet);
    assert!(
        after >= Duration::from_millis(1100),
        "GOAWAY {after:?} after the give-up"
    );
    let late = goaway_at.duration_since(given_up);
    assert!(late < Duration::from_millis(3000), "GOAWAY {late:?} late");
    assert_eq!(raw.goaway(), None, "GOAWAY with an error code");
    assert!(
        support::wait_until(Duration::from_secs(15), || raw.is_closed()).await,
        "connection kept after the GOAWAY"
    );
    assert_closed_once(&s.gw, "send_timeout").await;
    assert!(s.gw.shutdown().await);
}

/// The send clock keeps running while the gateway drains for shutdown: a stalled stream
/// loses its upstream stream at `client.send_timeout`, not at `drain_timeout` (30 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_timeout_applies_while_draining() {
    let s = setup("send_timeout = \"1s\"\ndrain_timeout = \"30s\"").await;
    let (mut raw, _) = stalled_stream(&s).await;
    assert!(support::wait_until(CLOSE_WAIT, || raw.answered() == [1]).await);
    assert_eq!(upstream_active(&s.gw), 1.0);
    let metrics = s.gw.metrics().clone();
    let active = move || {
        metric_value(
            &metrics.render(),
            "muxgate_upstream_streams_active{origin=\"app\"}",
        )
        .unwrap_or(0.0)
    };
    let started = Instant::now();
    let shutdown = tokio::spawn(s.gw.shutdown());
    assert!(
        support::wait_until(CLOSE_WAIT, || active() == 0.0).await,
        "upstream stream held while draining"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The client leaves; the drain ends.
    raw.close().await;
    drop(raw);
    let drained = tokio::time::timeout(Duration::from_secs(20), shutdown).await;
    assert!(
        drained.is_ok(),
        "shutdown did not finish once the client left"
    );
}

/// `client.send_timeout` for HTTP/2 when the client stops reading its socket while every
/// window is wide open: once the socket and h2's send buffer are full the response waits, and
/// its upstream stream is released after the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_h2_client_not_reading_past_send_timeout() {
    let s = setup("send_timeout = \"1s\"").await;
    let mut tls = tls_connect(s.gw.tls_addrs[0], &s.pki, &[b"h2"]).await;
    let mut hello = PREFACE.to_vec();
    hello.extend(settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 0x7fff_ffff)]));
    hello.extend(frame(WINDOW_UPDATE, 0, 0, &0x7fff_0000u32.to_be_bytes()));
    hello.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &get_block("/bytes/268435456"),
    ));
    tls.write_all(&hello).await.unwrap();
    tls.flush().await.unwrap();
    assert!(support::wait_until(CLOSE_WAIT, || upstream_active(&s.gw) == 1.0).await);
    // Never read: the gateway's writes block, then the response waits past the timeout.
    assert!(
        support::wait_until(CLOSE_WAIT, || upstream_active(&s.gw) == 0.0).await,
        "upstream stream still held"
    );
    assert_eq!(send_timeouts(&s.gw), 1.0);
    drop(tls);
    assert!(s.gw.shutdown().await);
}

/// A slow but steady HTTP/2 reader is not cut by `client.send_timeout`: with a 16 KiB stream
/// window and a 600 ms pause after every 16 KiB, a 256 KiB download takes ~10 s against a
/// 1.5 s timeout and completes, because each wait for the client is well under the timeout.
/// Without the 16 KiB pieces it is cut: the origin's 64 KiB chunks make each wait ~2.4 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_h2_reader_within_send_timeout_is_served() {
    let s = setup("send_timeout = \"1500ms\"").await;
    let tls = tls_connect(s.gw.tls_addrs[0], &s.pki, &[b"h2"]).await;
    let (h2, conn) = h2::client::Builder::new()
        .initial_window_size(16 * 1024)
        .handshake::<_, Bytes>(tls)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut h2 = h2.ready().await.unwrap();
    let (resp, _) = h2
        .send_request(req(Method::GET, "/bytes/262144"), true)
        .unwrap();
    let read = async {
        let mut recv = resp.await?.into_body();
        let mut got = 0usize;
        while let Some(d) = recv.data().await {
            let d = d?;
            got += d.len();
            tokio::time::sleep(Duration::from_millis(600 * d.len() as u64 / 16384)).await;
            let _ = recv.flow_control().release_capacity(d.len());
        }
        Ok::<_, h2::Error>(got)
    };
    let got = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("download in time")
        .expect("download");
    assert_eq!(got, 262_144);
    assert_eq!(send_timeouts(&s.gw), 0.0);
    drop(h2);
    assert!(s.gw.shutdown().await);
}

/// Resident set size of this process (Linux), KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
