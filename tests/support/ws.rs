//! WebSocket test origins and clients for `tests/websocket.rs` (kept out of `src/` so
//! tungstenite stays a dev-dependency).
//!
//! [`WsOrigin`] is one TLS origin that, per connection, serves by the ALPN it negotiated:
//! - `http/1.1`: hyper with upgrades: a WebSocket handshake gets 101 and a tungstenite echo
//!   server on the upgraded connection (path `/reject`: 403 instead); other requests 200 `ok`.
//! - `h2`: the `h2` server crate; `GET` answers 200 `ok`; with `connect_protocol` it advertises
//!   SETTINGS_ENABLE_CONNECT_PROTOCOL and runs the same echo server over each
//!   `CONNECT :protocol websocket` stream (RFC 8441) through an AsyncRead/AsyncWrite adapter.
//!
//! It counts TCP connections by ALPN, full/resumed handshakes, tunnels and echoed messages, and
//! keeps the request fields of every WebSocket handshake it saw.

#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use std::convert::Infallible;

use bytes::{Buf, Bytes};
use futures_util::{SinkExt, StreamExt};
use h2::{RecvStream, SendStream};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use muxgate::testkit::pki::Pki;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Request fields of every WebSocket handshake, in arrival order.
pub type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// What the origin saw.
#[derive(Debug, Default)]
pub struct WsStats {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Connections that negotiated h2.
    pub h2_connections: AtomicU64,
    /// Connections that negotiated http/1.1.
    pub h1_connections: AtomicU64,
    /// Full TLS handshakes.
    pub full_handshakes: AtomicU64,
    /// Resumed TLS handshakes.
    pub resumed_handshakes: AtomicU64,
    /// WebSockets accepted over HTTP/1.1 Upgrade.
    pub ws_h1: AtomicU64,
    /// WebSockets accepted over RFC 8441 streams.
    pub ws_h2: AtomicU64,
    /// WebSockets whose echo loop ended after a close handshake.
    pub ws_closed_cleanly: AtomicU64,
    /// Messages echoed (text + binary).
    pub echoed: AtomicU64,
    /// Plain GETs answered over h2.
    pub gets: AtomicU64,
}

impl WsStats {
    /// A counter's value.
    pub fn get(&self, f: impl Fn(&WsStats) -> &AtomicU64) -> u64 {
        f(self).load(Ordering::SeqCst)
    }
}

/// A running origin; stops accepting when dropped.
pub struct WsOrigin {
    /// Bound address.
    pub addr: SocketAddr,
    /// Counters.
    pub stats: Arc<WsStats>,
    /// Request fields (lower-case name, value) of every WebSocket handshake, `:protocol` and
    /// `:method` included for RFC 8441 ones.
    pub seen: Seen,
    _stop: watch::Sender<bool>,
}

/// How to build a [`WsOrigin`].
pub struct WsOriginBuilder {
    alpn: Vec<Vec<u8>>,
    connect_protocol: bool,
    max_streams: u32,
}

impl WsOrigin {
    /// ALPN `http/1.1` only: WebSocket over HTTP/1.1 Upgrade.
    pub fn h1() -> WsOriginBuilder {
        WsOriginBuilder {
            alpn: vec![b"http/1.1".to_vec()],
            connect_protocol: false,
            max_streams: 100,
        }
    }

    /// ALPN `h2` only, advertising SETTINGS_ENABLE_CONNECT_PROTOCOL.
    pub fn h2_connect() -> WsOriginBuilder {
        WsOriginBuilder {
            alpn: vec![b"h2".to_vec()],
            connect_protocol: true,
            max_streams: 100,
        }
    }

    /// ALPN `h2` and `http/1.1`, h2 without the setting: WebSockets must come over HTTP/1.1.
    pub fn h2_without_connect() -> WsOriginBuilder {
        WsOriginBuilder {
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            connect_protocol: false,
            max_streams: 100,
        }
    }

    /// Cleartext HTTP/1.1: WebSocket over HTTP/1.1 Upgrade, no TLS.
    pub fn plain() -> WsOriginBuilder {
        WsOriginBuilder {
            alpn: Vec::new(),
            connect_protocol: false,
            max_streams: 100,
        }
    }

    /// The fields of every WebSocket handshake seen so far.
    pub fn seen(&self) -> Vec<Vec<(String, String)>> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl WsOriginBuilder {
    /// SETTINGS_MAX_CONCURRENT_STREAMS on h2 connections. Default 100.
    pub fn max_streams(mut self, n: u32) -> Self {
        self.max_streams = n;
        self
    }

    /// Binds 127.0.0.1:0 and serves until dropped.
    pub async fn start(self, pki: &Pki) -> WsOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let alpn: Vec<&[u8]> = self.alpn.iter().map(|a| a.as_slice()).collect();
        let acceptor = (!alpn.is_empty())
            .then(|| TlsAcceptor::from(pki.server_config(&alpn, false).expect("server cfg")));
        let stats = Arc::new(WsStats::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let cfg = Arc::new(self);
        let (st, sn) = (stats.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    r = listener.accept() => match r { Ok((t, _)) => t, Err(_) => continue },
                    _ = stop_rx.changed() => return,
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let (acceptor, cfg, st, sn) =
                    (acceptor.clone(), cfg.clone(), st.clone(), sn.clone());
                tokio::spawn(async move {
                    let Some(acceptor) = acceptor else {
                        st.h1_connections.fetch_add(1, Ordering::SeqCst);
                        serve_h1_ws(tcp, st, sn).await;
                        return;
                    };
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, conn) = tls.get_ref();
                    if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        st.resumed_handshakes.fetch_add(1, Ordering::SeqCst);
                    } else {
                        st.full_handshakes.fetch_add(1, Ordering::SeqCst);
                    }
                    if conn.alpn_protocol() == Some(b"h2") {
                        st.h2_connections.fetch_add(1, Ordering::SeqCst);
                        serve_h2(tls, &cfg, st, sn).await;
                    } else {
                        st.h1_connections.fetch_add(1, Ordering::SeqCst);
                        serve_h1_ws(tls, st, sn).await;
                    }
                });
            }
        });
        WsOrigin {
            addr,
            stats,
            seen,
            _stop: stop_tx,
        }
    }
}

fn fields(h: &http::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn serve_h1_ws<S>(io: S, st: Arc<WsStats>, seen: Seen)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |mut req: http::Request<Incoming>| {
        let (st, seen) = (st.clone(), seen.clone());
        async move {
            let upgrade = req
                .headers()
                .get(http::header::UPGRADE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
            let key = req.headers().get(http::header::SEC_WEBSOCKET_KEY).cloned();
            let mut f = fields(req.headers());
            f.push((":path".into(), req.uri().path().to_string()));
            let reply = |status: u16, body: &'static str| {
                let mut r = http::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
                r
            };
            let (true, Some(key)) = (upgrade, key) else {
                st.gets.fetch_add(1, Ordering::SeqCst);
                return Ok::<_, Infallible>(reply(200, "ok\n"));
            };
            if let Ok(mut s) = seen.lock() {
                s.push(f);
            }
            if req.uri().path() == "/reject" {
                return Ok(reply(403, "rejected\n"));
            }
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(up) = on.await else { return };
                st.ws_h1.fetch_add(1, Ordering::SeqCst);
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
                echo(ws, &st).await;
            });
            let mut r = reply(101, "");
            let h = r.headers_mut();
            h.insert(
                http::header::UPGRADE,
                http::HeaderValue::from_static("websocket"),
            );
            h.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("Upgrade"),
            );
            // RFC 6455 §4.2.2.
            h.insert(
                http::header::SEC_WEBSOCKET_ACCEPT,
                muxgate::proxy::upgrade::websocket_accept(key.as_bytes()),
            );
            Ok(r)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await;
}

/// Echoes text and binary messages until the peer closes; counts a clean close.
async fn echo<S>(mut ws: WebSocketStream<S>, st: &WsStats)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut close_seen = false;
    while let Some(m) = ws.next().await {
        match m {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).await.is_err() {
                    return;
                }
                st.echoed.fetch_add(1, Ordering::SeqCst);
            }
            // tungstenite queues the close reply itself and sends it on the next poll.
            Ok(Message::Close(_)) => close_seen = true,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if close_seen {
        st.ws_closed_cleanly.fetch_add(1, Ordering::SeqCst);
    }
}

async fn serve_h2<S>(io: S, cfg: &WsOriginBuilder, st: Arc<WsStats>, seen: Seen)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(cfg.max_streams);
    if cfg.connect_protocol {
        // RFC 8441 §3: SETTINGS_ENABLE_CONNECT_PROTOCOL = 1.
        b.enable_connect_protocol();
    }
    let Ok(mut conn) = b.handshake::<_, Bytes>(io).await else {
        return;
    };
    while let Some(r) = conn.accept().await {
        let Ok((req, mut respond)) = r else { return };
        let (st, seen) = (st.clone(), seen.clone());
        tokio::spawn(async move {
            let protocol = req
                .extensions()
                .get::<h2::ext::Protocol>()
                .map(|p| p.as_str().to_string());
            if req.method() == http::Method::CONNECT && protocol.as_deref() == Some("websocket") {
                let mut f = fields(req.headers());
                f.push((":method".into(), "CONNECT".into()));
                f.push((":protocol".into(), "websocket".into()));
                f.push((":path".into(), req.uri().path().to_string()));
                f.push((
                    ":scheme".into(),
                    req.uri().scheme_str().unwrap_or("").to_string(),
                ));
                if let Ok(mut s) = seen.lock() {
                    s.push(f);
                }
                if req.uri().path() == "/reject" {
                    let resp = http::Response::builder()
                        .status(403)
                        .body(())
                        .expect("resp");
                    if let Ok(mut s) = respond.send_response(resp, false) {
                        let _ = s.send_data(Bytes::from_static(b"rejected\n"), true);
                    }
                    return;
                }
                let recv = req.into_body();
                let resp = http::Response::builder()
                    .status(200)
                    .header("sec-websocket-protocol-seen", "yes")
                    .body(())
                    .expect("resp");
                let Ok(send) = respond.send_response(resp, false) else {
                    return;
                };
                st.ws_h2.fetch_add(1, Ordering::SeqCst);
                let io = H2Io {
                    send,
                    recv,
                    buf: Bytes::new(),
                    shut: false,
                };
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                echo(ws, &st).await;
            } else {
                st.gets.fetch_add(1, Ordering::SeqCst);
                let resp = http::Response::builder()
                    .status(200)
                    .body(())
                    .expect("resp");
                if let Ok(mut s) = respond.send_response(resp, false) {
                    let _ = s.send_data(Bytes::from_static(b"ok\n"), true);
                }
            }
        });
    }
}

/// An h2 stream as a byte stream (origin side). Dropping it ends the stream with END_STREAM.
struct H2Io {
    send: SendStream<Bytes>,
    recv: RecvStream,
    buf: Bytes,
    shut: bool,
}

impl Drop for H2Io {
    fn drop(&mut self) {
        if !self.shut {
            let _ = self.send.send_data(Bytes::new(), true);
        }
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.buf.is_empty() {
            match this.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Ok(d))) => this.buf = d,
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, e)))
                }
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if b.is_empty() {
            return Poll::Ready(Ok(0));
        }
        while this.send.capacity() == 0 {
            this.send.reserve_capacity(b.len());
            match this.send.poll_capacity(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(_))) => {}
                _ => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
        let n = this.send.capacity().min(b.len());
        this.send
            .send_data(Bytes::copy_from_slice(&b[..n]), false)
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.shut {
            this.shut = true;
            let _ = this.send.send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}

/// What one client WebSocket session did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// Messages sent.
    pub sent: u64,
    /// Echoes received and matched.
    pub echoed: u64,
    /// The close handshake completed (our Close answered, then EOF).
    pub clean_close: bool,
}

/// Opens a WebSocket to the gateway at `addr` (Host `host`, `path`).
pub async fn connect(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{host}{path}"), tcp).await?;
    assert_eq!(resp.status(), 101);
    Ok(ws)
}

/// One full session: `n` text and `n` binary messages, each echo checked, then the close
/// handshake. Errors are returned as text (the caller collects them).
pub async fn session(addr: SocketAddr, host: &str, id: usize, n: usize) -> Result<Session, String> {
    let mut ws = connect(addr, host, "/ws")
        .await
        .map_err(|e| format!("socket {id}: connect: {e}"))?;
    let mut s = Session::default();
    for i in 0..n {
        let text = Message::text(format!("socket {id} message {i}"));
        let bin = Message::binary(vec![(id % 251) as u8; 1 + (i * 37) % 3000]);
        for m in [text, bin] {
            ws.send(m.clone())
                .await
                .map_err(|e| format!("socket {id}: send: {e}"))?;
            s.sent += 1;
            match ws.next().await {
                Some(Ok(got)) if got == m => s.echoed += 1,
                other => return Err(format!("socket {id}: echo {i}: {other:?}")),
            }
        }
    }
    ws.close(None)
        .await
        .map_err(|e| format!("socket {id}: close: {e}"))?;
    // The origin's Close reply, then the end of the stream.
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(_))) => s.clean_close = true,
            Some(Ok(_)) => {}
            None => break,
            Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)) => break,
            Some(Err(e)) => return Err(format!("socket {id}: after close: {e}")),
        }
    }
    Ok(s)
}

/// Waits for `poll` to be true, at most `limit`.
pub async fn eventually(limit: Duration, mut poll: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if poll() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    poll()
}
