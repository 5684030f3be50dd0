//! A raw HTTP/2 origin over TLS for scripted, frame-by-frame peers (`hostile_origin.rs`,
//! `settings_change.rs`): a server that does exactly what a test script says, including what no
//! server library would let it do.
//!
//! [`raw_origin`] terminates TLS with ALPN `h2` and hands the script a [`Peer`] that reads and
//! writes frames as bytes (RFC 9113 §4.1: 3-byte length, type, flags, stream id). Header blocks
//! are written with the few HPACK helpers below (no dynamic table, no Huffman).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use muxgate::testkit::pki::Pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// RFC 9113 §3.4: the client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113 §6) and flags.
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

// SETTINGS identifiers (RFC 9113 §6.5.2) and error codes (§7).
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const INTERNAL_ERROR: u32 = 0x2;
pub const CANCEL: u32 = 0x8;

/// HPACK (RFC 7541 Appendix A): static-table index 8 is `:status: 200`.
pub const STATUS_200: u8 = 0x88;

/// The server side of one TLS connection.
pub type Tls = TlsStream<TcpStream>;

/// One HTTP/2 frame as read off the wire.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// The read side of a raw origin connection.
pub struct Reader(pub ReadHalf<Tls>);

/// The write side of a raw origin connection.
pub struct Writer(pub WriteHalf<Tls>);

/// The server end of one connection, handed to a script.
pub struct Peer {
    pub r: Reader,
    pub w: Writer,
}

/// A running raw origin; stops accepting and drops its connections when dropped.
pub struct RawOrigin {
    pub addr: SocketAddr,
    connections: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// One frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    assert!(len < 1 << 24, "frame payload too long");
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A SETTINGS frame (not an ACK) with the given parameters.
pub fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::with_capacity(params.len() * 6);
    for (id, v) in params {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

/// HPACK integer with an `n`-bit prefix; `first` carries the pattern bits above the prefix
/// (RFC 7541 §5.1).
pub fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// HPACK "literal header field without indexing — new name" (RFC 7541 §6.2.2), no Huffman.
pub fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name);
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

impl Reader {
    /// Reads and checks the client connection preface.
    pub async fn preface(&mut self) -> io::Result<()> {
        let mut p = [0u8; 24];
        self.0.read_exact(&mut p).await?;
        if p != PREFACE {
            return Err(io::Error::other(format!("bad client preface {p:?}")));
        }
        Ok(())
    }

    /// Reads one frame.
    pub async fn frame(&mut self) -> io::Result<Frame> {
        let mut h = [0u8; 9];
        self.0.read_exact(&mut h).await?;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.0.read_exact(&mut payload).await?;
        Ok(Frame {
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Reads and discards until the gateway closes the connection.
    pub async fn until_closed(&mut self) {
        let mut buf = vec![0u8; 16 * 1024];
        while matches!(self.0.read(&mut buf).await, Ok(n) if n > 0) {}
    }
}

impl Writer {
    /// Writes `bytes` and flushes them.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes).await?;
        self.0.flush().await
    }

    /// `:status: 200` with END_HEADERS, then `body` in one DATA frame with END_STREAM.
    pub async fn ok(&mut self, stream: u32, body: &[u8]) -> io::Result<()> {
        let mut b = frame(HEADERS, END_HEADERS, stream, &[STATUS_200]);
        b.extend(frame(DATA, END_STREAM, stream, body));
        self.send(&b).await
    }
}

impl Peer {
    /// Reads the client preface and sends a valid server preface (an empty SETTINGS frame).
    pub async fn handshake(&mut self) -> io::Result<()> {
        self.r.preface().await?;
        self.w.send(&settings(&[])).await
    }

    /// Reads frames until a request's HEADERS, ACKing SETTINGS and PINGs on the way; returns the
    /// request's stream id.
    pub async fn next_request(&mut self) -> io::Result<u32> {
        loop {
            let f = self.r.frame().await?;
            match f.kind {
                SETTINGS if f.flags & ACK == 0 => {
                    self.w.send(&frame(SETTINGS, ACK, 0, &[])).await?
                }
                PING if f.flags & ACK == 0 => self.w.send(&frame(PING, ACK, 0, &f.payload)).await?,
                HEADERS => return Ok(f.stream),
                _ => {}
            }
        }
    }

    /// Like [`Peer::next_request`] without answering anything: SETTINGS stay un-ACKed.
    pub async fn next_request_silent(&mut self) -> io::Result<u32> {
        loop {
            let f = self.r.frame().await?;
            if f.kind == HEADERS {
                return Ok(f.stream);
            }
        }
    }
}

impl RawOrigin {
    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): aborting it drops them all.
        self.task.abort();
    }
}

/// Starts a raw TLS origin (ALPN `h2`) on 127.0.0.1:0 that runs `script(n, peer)` on its n-th
/// connection (1-based) after the TLS handshake. A script's error (the gateway hung up) ends
/// that connection quietly.
pub async fn raw_origin<F, Fut>(pki: &Pki, script: F) -> RawOrigin
where
    F: Fn(u64, Peer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(pki.server_config(&[b"h2"], false).expect("tls config"));
    let connections = Arc::new(AtomicU64::new(0));
    let count = connections.clone();
    let script = Arc::new(script);
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let (acceptor, script) = (acceptor.clone(), script.clone());
            conns.spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let (r, w) = tokio::io::split(tls);
                let _ = script(
                    n,
                    Peer {
                        r: Reader(r),
                        w: Writer(w),
                    },
                )
                .await;
            });
            while conns.try_join_next().is_some() {}
        }
    });
    RawOrigin {
        addr,
        connections,
        task,
    }
}
