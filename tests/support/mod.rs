//! Shared helpers for the integration tests: a gateway in front of test origins, small HTTP/1.1
//! clients (hyper and raw bytes), admin scraping and polling; [`h2raw`]: a raw HTTP/2 origin
//! scripted frame by frame.
//!
//! Every helper is bounded in time: network operations run under [`IO_TIMEOUT`].

#![allow(dead_code)]

pub mod h2raw;
pub mod process;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use muxgate::config::Config;
use muxgate::testkit::origin::RunningOrigin;
use muxgate::testkit::pki::{Pki, PkiFiles};
use muxgate::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

/// Upper bound for one client exchange in these helpers.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Once per test binary: raise the open-file soft limit (tests open thousands of sockets) and
/// install a tracing subscriber controlled by `RUST_LOG` (silent by default).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rlimit::increase_nofile_limit(65_536);
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A loopback port that refuses connections for as long as the returned socket lives: bound
/// but never listening, so the kernel answers a SYN with RST, and no other socket (a gateway's
/// own ephemeral listener, another test's origin) can take the port meanwhile. A port freed by
/// dropping a listener could be handed out again at once, which made "closed port" tests
/// connect to something else now and then.
pub fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let port = s.local_addr().expect("addr").port();
    (s, port)
}

/// Current open-file soft limit.
pub fn nofile_soft_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(0)
}

/// A fresh localhost PKI and its files (the files are removed when dropped).
pub fn pki() -> (Pki, PkiFiles) {
    let pki = Pki::localhost().expect("pki");
    let files = pki.write().expect("pki files");
    (pki, files)
}

/// One `[[origins]]` table. `url` is used as is; `ca` adds `tls_ca`; `extra` is appended
/// verbatim (one `key = value` per line).
pub fn origin_toml(
    name: &str,
    hosts: &[&str],
    url: &str,
    ca: Option<&Path>,
    extra: &str,
) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    let mut s = format!(
        "\n[[origins]]\nname = {name:?}\nhosts = [{}]\nurl = {url:?}\n",
        hosts.join(", ")
    );
    if let Some(ca) = ca {
        s.push_str(&format!("tls_ca = {:?}\n", ca.display().to_string()));
    }
    s.push_str(extra);
    s.push('\n');
    s
}

/// A whole config: plain listener and admin on ephemeral loopback ports, `top` (top-level keys,
/// before any table) and then `tables` (origins, `[client]`, `[[listen_tls]]`, …).
pub fn gateway_toml(top: &str, tables: &str) -> String {
    format!("listen = [\"127.0.0.1:0\"]\n{top}\n[admin]\nlisten = \"127.0.0.1:0\"\n{tables}")
}

/// Parses, validates and starts a gateway.
pub async fn start_gateway(toml: &str) -> Gateway {
    let cfg = Config::from_toml(toml)
        .unwrap_or_else(|e| panic!("{e}\n--- config ---\n{toml}"))
        .validate()
        .unwrap_or_else(|e| panic!("{e}\n--- config ---\n{toml}"));
    Gateway::start(cfg).await.expect("gateway start")
}

/// `https://localhost:PORT` of a TLS test origin.
pub fn https_url(origin: &RunningOrigin) -> String {
    format!("https://localhost:{}", origin.addr.port())
}

/// `http://127.0.0.1:PORT` of a cleartext test origin.
pub fn http_url(origin: &RunningOrigin) -> String {
    format!("http://127.0.0.1:{}", origin.addr.port())
}

/// A gateway with one TLS origin named `app` serving every host (`*`), trusting `pki`'s CA.
/// `extra` is appended to the origin's table. Keep the returned files alive while it runs.
pub async fn gateway_for(origin: &RunningOrigin, pki: &Pki, extra: &str) -> (Gateway, PkiFiles) {
    let files = pki.write().expect("pki files");
    let toml = gateway_toml(
        "",
        &origin_toml("app", &["*"], &https_url(origin), Some(&files.ca), extra),
    );
    (start_gateway(&toml).await, files)
}

/// A gateway with one cleartext origin named `app` serving every host.
pub async fn gateway_for_plain(origin: &RunningOrigin, extra: &str) -> Gateway {
    let toml = gateway_toml(
        "",
        &origin_toml("app", &["*"], &http_url(origin), None, extra),
    );
    start_gateway(&toml).await
}

/// A complete response.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Header fields.
    pub headers: HeaderMap,
    /// Whole body.
    pub body: Bytes,
}

impl Resp {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// A keep-alive HTTP/1.1 client connection over cleartext TCP (hyper).
pub struct Client {
    sender: Sender,
}

impl Client {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        Client { sender }
    }

    /// Sends `GET path` with `Host: host` and reads the whole response.
    pub async fn get(&mut self, host: &str, path: &str) -> Resp {
        let req = Request::get(path)
            .header(http::header::HOST, host)
            .body(Empty::new())
            .expect("request");
        self.send(req).await
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&mut self, req: Request<Empty<Bytes>>) -> Resp {
        tokio::time::timeout(IO_TIMEOUT, async {
            self.sender.ready().await.expect("client connection ready");
            let resp = self.sender.send_request(req).await.expect("send request");
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.expect("read body").to_bytes();
            Resp {
                status: parts.status,
                headers: parts.headers,
                body,
            }
        })
        .await
        .expect("request timed out")
    }
}

/// One `GET` on a fresh connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Resp {
    Client::connect(addr).await.get(host, path).await
}

/// `n` concurrent `GET`s, each on its own connection, all released at the same instant.
/// Returns the responses in no particular order.
pub async fn get_concurrent(addr: SocketAddr, host: &str, path: &str, n: usize) -> Vec<Resp> {
    let barrier = Arc::new(Barrier::new(n));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (barrier, host, path) = (barrier.clone(), host.to_string(), path.to_string());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            barrier.wait().await;
            c.get(&host, &path).await
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("client task"));
    }
    out
}

/// A response parsed from raw bytes.
#[derive(Debug)]
pub struct RawResp {
    /// Status code.
    pub status: u16,
    /// Header fields, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl RawResp {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes `request` as is on a new connection and reads one response.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResp {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    raw_exchange(&mut s, request).await
}

/// Writes `request` on `s` and reads exactly one response (Content-Length, chunked, or until
/// close), leaving the stream positioned after it.
pub async fn raw_exchange(s: &mut TcpStream, request: &[u8]) -> RawResp {
    tokio::time::timeout(IO_TIMEOUT, async {
        s.write_all(request).await.expect("write request");
        read_response(s).await
    })
    .await
    .expect("raw exchange timed out")
}

async fn read_response(s: &mut TcpStream) -> RawResp {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.expect("read head");
        assert!(n > 0, "connection closed before a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if let Some(len) = get("content-length") {
        let len: usize = len.parse().expect("content-length");
        while rest.len() < len {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "connection closed inside the body");
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked(s, rest).await
    } else if status == 204 || status == 304 {
        Vec::new()
    } else {
        s.read_to_end(&mut rest).await.expect("read to end");
        rest
    };
    RawResp {
        status,
        headers,
        body,
    }
}

async fn read_chunked(s: &mut TcpStream, mut buf: Vec<u8>) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(&buf, b"\r\n") {
                break i;
            }
            read_more(s, &mut buf).await;
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers until an empty line.
            loop {
                if let Some(i) = find(&buf, b"\r\n") {
                    buf.drain(..i + 2);
                    if i == 0 {
                        return body;
                    }
                    continue;
                }
                read_more(s, &mut buf).await;
            }
        }
        while buf.len() < size + 2 {
            read_more(s, &mut buf).await;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = s.read(&mut chunk).await.expect("read");
    assert!(n > 0, "connection closed inside a chunked body");
    buf.extend_from_slice(&chunk[..n]);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `GET path` on the admin listener.
pub async fn admin_get(gw: &Gateway, path: &str) -> Resp {
    let addr = gw.admin_addr.expect("admin listener");
    get(addr, "admin", path).await
}

/// The value of one Prometheus sample line `series value` (exact series text, labels included).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let rest = rest.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `ceil(a / b)`.
pub fn ceil_div(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

/// One counter of a test origin's statistics.
pub fn origin_stat(
    o: &RunningOrigin,
    f: impl Fn(&muxgate::testkit::origin::OriginStats) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    o.stats.get(f)
}

/// `requests` GETs of `path` (Host `app.test`) over `connections` keep-alive client connections
/// to the gateway's first plain listener, bounded by `limit`.
pub async fn burst(
    gw: &Gateway,
    connections: usize,
    requests: usize,
    path: &str,
    limit: Duration,
) -> muxgate::testkit::load::LoadReport {
    let spec = muxgate::testkit::load::LoadSpec {
        close: false,
        target: gw.http_addrs[0],
        tls: None,
        host: "app.test".into(),
        path: path.into(),
        connections,
        requests,
    };
    tokio::time::timeout(limit, muxgate::testkit::load::run(spec))
        .await
        .expect("load run timed out")
}

/// Helpers for the proxy-semantics tests (`headers.rs`, `bodies.rs`, `pipelining.rs`,
/// `errors.rs`, `shutdown.rs`): the gateway in front of an h2 or an HTTP/1.1 origin, a buffered
/// raw HTTP/1.1 connection that keeps its read position across responses (pipelining, HEAD,
/// `100 Continue`), and a small origin of our own that reports the method and declares trailers.
pub mod proxy_kit {
    use std::convert::Infallible;
    use std::future::Future;
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, Request, Response};
    use http_body_util::combinators::UnsyncBoxBody;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::{Frame, Incoming};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use muxgate::testkit::origin::{Origin, RunningOrigin};
    use muxgate::testkit::pki::{Pki, PkiFiles};
    use muxgate::Gateway;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;
    use tokio_rustls::TlsAcceptor;

    use super::{gateway_toml, https_url, origin_toml, start_gateway, IO_TIMEOUT};

    /// Which origin protocol the gateway talks.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Up {
        /// TLS, ALPN h2: the multiplexed pool.
        H2,
        /// TLS, ALPN http/1.1: the keep-alive pool.
        H1,
    }

    /// Both flavours, for tests that run every case against each.
    pub const BOTH: [Up; 2] = [Up::H2, Up::H1];

    /// A gateway (plain listener, no admin) in front of one testkit origin named `app`.
    pub struct Setup {
        /// The gateway.
        pub gw: Gateway,
        /// The origin.
        pub origin: RunningOrigin,
        /// The gateway's plain listener.
        pub addr: SocketAddr,
        /// The certificate files (removed when dropped).
        pub files: PkiFiles,
    }

    /// Starts a testkit origin of flavour `up` and a gateway in front of it. `origin_extra` is
    /// appended to the `[[origins]]` table, `tables` after it (e.g. a `[client]` table).
    pub async fn setup(up: Up, origin_extra: &str, tables: &str) -> Setup {
        super::init();
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("pki files");
        let builder = match up {
            Up::H2 => Origin::h2(),
            Up::H1 => Origin::h1_tls(),
        };
        let origin = builder.start(&pki).await.expect("origin start");
        let toml = gateway_toml(
            "",
            &format!(
                "{}{tables}",
                origin_toml(
                    "app",
                    &["*"],
                    &https_url(&origin),
                    Some(&files.ca),
                    origin_extra
                )
            ),
        );
        let gw = start_gateway(&toml).await;
        let addr = gw.http_addrs[0];
        Setup {
            gw,
            origin,
            addr,
            files,
        }
    }

    impl Setup {
        /// Requests the origin received so far.
        pub fn origin_requests(&self) -> u64 {
            self.origin.stats.get(|s| &s.requests)
        }

        /// Shuts the gateway down and checks it drained.
        pub async fn stop(self) {
            let drained = tokio::time::timeout(Duration::from_secs(35), self.gw.shutdown())
                .await
                .expect("shutdown hung");
            assert!(drained, "gateway did not drain");
        }
    }

    /// Runs `fut`, failing the test if it takes longer than `secs` seconds.
    pub async fn bounded<T>(secs: u64, fut: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(secs), fut)
            .await
            .unwrap_or_else(|_| panic!("test did not finish within {secs}s"))
    }

    /// Asserts the contract of error bodies: one short line of text naming the cause.
    pub fn assert_one_line(body: &[u8], expect_contains: &str) {
        let text = String::from_utf8_lossy(body);
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "error body is not exactly one line: {text:?}"
        );
        assert!(text.len() <= 200, "error body too long: {text:?}");
        assert!(
            text.contains(expect_contains),
            "error body {text:?} does not name {expect_contains:?}"
        );
    }

    /// A parsed response from a [`RawConn`].
    #[derive(Debug, Clone)]
    pub struct Raw {
        /// Status code.
        pub status: u16,
        /// Header fields, names lower-cased, in order.
        pub headers: Vec<(String, String)>,
        /// Body (de-chunked).
        pub body: Vec<u8>,
        /// Chunked trailer fields, names lower-cased.
        pub trailers: Vec<(String, String)>,
    }

    impl Raw {
        /// First value of a header (case-insensitive name).
        pub fn header(&self, name: &str) -> Option<&str> {
            let name = name.to_ascii_lowercase();
            self.headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
        }

        /// All values of a header.
        pub fn header_all(&self, name: &str) -> Vec<&str> {
            let name = name.to_ascii_lowercase();
            self.headers
                .iter()
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
                .collect()
        }

        /// The body as text (lossy).
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// A raw HTTP/1.1 client connection that keeps unread bytes between responses, so several
    /// responses (pipelined, or after a HEAD / 1xx) are parsed from one byte stream.
    pub struct RawConn {
        /// The socket.
        pub stream: TcpStream,
        buf: Vec<u8>,
    }

    impl RawConn {
        /// Connects to `addr`.
        pub async fn connect(addr: SocketAddr) -> RawConn {
            let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
                .await
                .expect("connect timed out")
                .expect("connect");
            let _ = stream.set_nodelay(true);
            RawConn {
                stream,
                buf: Vec::new(),
            }
        }

        /// Writes `bytes` as is.
        pub async fn send(&mut self, bytes: &[u8]) {
            tokio::time::timeout(IO_TIMEOUT, self.stream.write_all(bytes))
                .await
                .expect("write timed out")
                .expect("write");
        }

        async fn fill(&mut self) -> usize {
            let mut chunk = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .expect("read timed out")
                .expect("read");
            self.buf.extend_from_slice(&chunk[..n]);
            n
        }

        async fn line(&mut self) -> String {
            loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                    self.buf.drain(..i + 2);
                    return line;
                }
                assert!(self.fill().await > 0, "connection closed mid-line");
            }
        }

        /// Reads one response head (status line and fields) and nothing more; `None` if the
        /// connection was closed cleanly before any byte of it.
        pub async fn read_head(&mut self) -> Option<(u16, Vec<(String, String)>)> {
            while self.buf.is_empty() {
                if self.fill().await == 0 {
                    return None;
                }
            }
            let status_line = self.line().await;
            let status: u16 = status_line
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
            assert!(
                status_line.starts_with("HTTP/1.1 "),
                "not an HTTP/1.1 status line: {status_line:?}"
            );
            let mut headers = Vec::new();
            loop {
                let l = self.line().await;
                if l.is_empty() {
                    break;
                }
                let (k, v) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header line {l:?}"));
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            Some((status, headers))
        }

        /// Reads one complete response. `head_request`: the request was HEAD (no body follows).
        /// Interim (1xx) responses are returned as responses of their own.
        pub async fn read_response(&mut self, head_request: bool) -> Raw {
            let (status, headers) = self.read_head().await.expect("connection closed");
            let mut resp = Raw {
                status,
                headers,
                body: Vec::new(),
                trailers: Vec::new(),
            };
            if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
                return resp;
            }
            let chunked = resp
                .header("transfer-encoding")
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
            if chunked {
                loop {
                    let size_line = self.line().await;
                    let size =
                        usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                            .unwrap_or_else(|_| panic!("bad chunk size {size_line:?}"));
                    if size == 0 {
                        loop {
                            let l = self.line().await;
                            if l.is_empty() {
                                return resp;
                            }
                            if let Some((k, v)) = l.split_once(':') {
                                resp.trailers
                                    .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                            }
                        }
                    }
                    while self.buf.len() < size + 2 {
                        assert!(self.fill().await > 0, "connection closed inside a chunk");
                    }
                    resp.body.extend_from_slice(&self.buf[..size]);
                    assert_eq!(&self.buf[size..size + 2], b"\r\n", "chunk not terminated");
                    self.buf.drain(..size + 2);
                }
            } else if let Some(len) = resp.header("content-length") {
                let len: usize = len.parse().expect("content-length");
                while self.buf.len() < len {
                    assert!(self.fill().await > 0, "connection closed inside the body");
                }
                resp.body = self.buf.drain(..len).collect();
            } else {
                while self.fill().await > 0 {}
                resp.body = std::mem::take(&mut self.buf);
            }
            resp
        }

        /// Reads a response's body without keeping it; returns its length. Handles
        /// Content-Length and chunked framing.
        pub async fn count_body(&mut self, headers: &[(String, String)]) -> u64 {
            let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            if let Some(len) = get("content-length") {
                let len: u64 = len.parse().expect("content-length");
                let mut got = self.buf.len() as u64;
                self.buf.clear();
                let mut chunk = vec![0u8; 256 * 1024];
                while got < len {
                    let n = tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut chunk))
                        .await
                        .expect("read timed out")
                        .expect("read");
                    assert!(n > 0, "connection closed after {got} of {len} body bytes");
                    got += n as u64;
                }
                assert_eq!(got, len, "more bytes than Content-Length");
                got
            } else {
                let (status, headers) = (200, headers.to_vec());
                let r = self.read_rest(status, headers).await;
                r.body.len() as u64
            }
        }

        async fn read_rest(&mut self, status: u16, headers: Vec<(String, String)>) -> Raw {
            // Re-inject the head so read_response parses the body with the same rules.
            let mut head = format!("HTTP/1.1 {status} X\r\n");
            for (k, v) in &headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let mut rest = std::mem::take(&mut self.buf);
            self.buf = head.into_bytes();
            self.buf.append(&mut rest);
            self.read_response(false).await
        }

        /// Reads until the peer closes; returns what was left unread plus what arrived.
        pub async fn read_to_eof(&mut self) -> Vec<u8> {
            while self.fill().await > 0 {}
            std::mem::take(&mut self.buf)
        }

        /// True if the peer closed the connection (EOF or reset) within `wait` with no further
        /// bytes.
        pub async fn closed_within(&mut self, wait: Duration) -> bool {
            if !self.buf.is_empty() {
                return false;
            }
            let mut b = [0u8; 1];
            matches!(
                tokio::time::timeout(wait, self.stream.read(&mut b)).await,
                Ok(Ok(0)) | Ok(Err(_))
            )
        }
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    /// A request head: `METHOD path HTTP/1.1`, `Host`, then `extra` lines (each ending in
    /// `\r\n`), then the blank line.
    pub fn head(method: &str, path: &str, host: &str, extra: &str) -> String {
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")
    }

    type ReportBody = UnsyncBoxBody<Bytes, Infallible>;

    /// An origin of our own (hyper): answers every request with `x-method: <method>` and
    /// `x-path`, and echoes the request body. `/declared-trailers` answers a body followed by
    /// trailer `x-trailer: done`, announced in a `Trailer` header (RFC 9110 §6.6.2).
    pub struct ReportOrigin {
        /// Bound address (127.0.0.1).
        pub addr: SocketAddr,
        _stop: watch::Sender<bool>,
    }

    /// Starts a [`ReportOrigin`]: TLS with `alpn` (`b"h2"` or `b"http/1.1"`).
    pub async fn report_origin(pki: &Pki, alpn: &'static [u8]) -> ReportOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = TlsAcceptor::from(pki.server_config(&[alpn], false).expect("tls config"));
        let (stop, mut stopped) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                    _ = stopped.changed() => return,
                };
                let (acceptor, mut stopped) = (acceptor.clone(), stopped.clone());
                tokio::spawn(async move {
                    let serve = async {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        let io = TokioIo::new(tls);
                        let svc = service_fn(report);
                        if h2 {
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, svc)
                                .await;
                        } else {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .await;
                        }
                    };
                    tokio::select! {
                        _ = serve => {}
                        _ = stopped.changed() => {}
                    }
                });
            }
        });
        ReportOrigin { addr, _stop: stop }
    }

    async fn report(req: Request<Incoming>) -> Result<Response<ReportBody>, Infallible> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let declared_trailers = path == "/declared-trailers";
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let mut resp = if declared_trailers {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-trailer", HeaderValue::from_static("done"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"body with trailers\n"))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut r =
                Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync());
            r.headers_mut()
                .insert("trailer", HeaderValue::from_static("x-trailer"));
            r
        } else {
            Response::new(Full::new(body).boxed_unsync())
        };
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&method) {
            h.insert("x-method", v);
        }
        if let Ok(v) = HeaderValue::from_str(&path) {
            h.insert("x-path", v);
        }
        Ok(resp)
    }

    /// A gateway in front of a [`ReportOrigin`] with ALPN `alpn`.
    pub async fn report_setup(alpn: &'static [u8]) -> (Gateway, ReportOrigin, PkiFiles) {
        super::init();
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("pki files");
        let origin = report_origin(&pki, alpn).await;
        let url = format!("https://localhost:{}", origin.addr.port());
        let toml = gateway_toml("", &origin_toml("app", &["*"], &url, Some(&files.ca), ""));
        (start_gateway(&toml).await, origin, files)
    }
}

/// Serializes the timing-sensitive tests of one test binary (the machine has 2 cores; two
/// bursts of 1,000 connections at once would blur each other's in-flight counts). Hold the
/// guard for the whole test.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

impl Client {
    /// Connects to `addr` over TLS (server name `server_name`, trust and ALPN from `cfg`).
    /// Returns the client and the ALPN protocol the server selected.
    pub async fn connect_tls(
        addr: SocketAddr,
        cfg: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<(Client, Option<Vec<u8>>), std::io::Error> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let tls = tokio::time::timeout(IO_TIMEOUT, async {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
        })
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS connect timed out")
        })??;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok((Client { sender }, alpn))
    }
}
