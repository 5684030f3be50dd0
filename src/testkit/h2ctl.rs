//! A controllable HTTP/2 origin on the `h2` crate's server side, for the pool's failure-mode
//! tests: it can send GOAWAY after N streams (like nginx's `keepalive_requests`), refuse
//! streams with REFUSED_STREAM, stop reading a connection altogether (a dead peer that keeps
//! TCP open), or reset streams. Counts what it saw.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::pki::Pki;

/// Knobs. Every limit counts per connection.
#[derive(Clone, Debug, Default)]
pub struct ControlOrigin {
    max_streams: Option<u32>,
    goaway_after: Option<u64>,
    refuse_first: u64,
    stall_after: Option<u64>,
    reset_all: bool,
    delay: Duration,
    tls12_only: bool,
    end_stream_after: Option<Duration>,
    abort_first: u64,
}

/// What the origin saw.
#[derive(Debug, Default)]
pub struct ControlStats {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Full TLS handshakes.
    pub full_handshakes: AtomicU64,
    /// Resumed TLS handshakes.
    pub resumed_handshakes: AtomicU64,
    /// Streams answered with a response.
    pub answered: AtomicU64,
    /// Streams refused with REFUSED_STREAM.
    pub refused: AtomicU64,
    /// Streams reset with INTERNAL_ERROR.
    pub reset: AtomicU64,
    /// Graceful GOAWAYs started.
    pub goaways: AtomicU64,
    /// Requests received (every stream, whatever happened to it).
    pub received: AtomicU64,
    /// Connections closed abruptly by `abort_first`.
    pub aborted: AtomicU64,
    /// Streams the client reset while the response waited for its END_STREAM
    /// (with `end_stream_after`).
    pub client_resets: AtomicU64,
}

impl ControlStats {
    /// Loads a counter.
    pub fn get(&self, f: impl Fn(&ControlStats) -> &AtomicU64) -> u64 {
        f(self).load(Ordering::SeqCst)
    }
}

/// A running controllable origin; stops when dropped.
pub struct RunningControl {
    /// Bound address.
    pub addr: SocketAddr,
    /// Counters.
    pub stats: Arc<ControlStats>,
    _stop: watch::Sender<bool>,
}

impl ControlOrigin {
    /// A well-behaved origin (ALPN h2, 100 streams).
    pub fn new() -> ControlOrigin {
        ControlOrigin::default()
    }
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub fn max_streams(mut self, n: u32) -> Self {
        self.max_streams = Some(n);
        self
    }
    /// Start a graceful shutdown (GOAWAY) after accepting `n` streams on a connection.
    pub fn goaway_after(mut self, n: u64) -> Self {
        self.goaway_after = Some(n);
        self
    }
    /// Refuse the first `n` streams of every connection with REFUSED_STREAM.
    pub fn refuse_first(mut self, n: u64) -> Self {
        self.refuse_first = n;
        self
    }
    /// After `n` streams, stop reading and writing the connection (TCP stays open).
    pub fn stall_after(mut self, n: u64) -> Self {
        self.stall_after = Some(n);
        self
    }
    /// Reset every stream with INTERNAL_ERROR (the origin processed it and failed).
    pub fn reset_all(mut self) -> Self {
        self.reset_all = true;
        self
    }
    /// Delay before each response.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    /// Close the TCP connection abruptly (no GOAWAY, no response) on receiving each of the first
    /// `n` streams of the origin's life — the request may or may not have been processed.
    pub fn abort_first(mut self, n: u64) -> Self {
        self.abort_first = n;
        self
    }
    /// Send the body (with `Content-Length`) without END_STREAM, and END_STREAM in an empty DATA
    /// frame this much later, as origins that stream their bodies do.
    pub fn end_stream_after(mut self, d: Duration) -> Self {
        self.end_stream_after = Some(d);
        self
    }
    /// TLS 1.2 only.
    pub fn tls12_only(mut self) -> Self {
        self.tls12_only = true;
        self
    }

    /// Binds 127.0.0.1:0 and serves.
    pub async fn start(self, pki: &Pki) -> Result<RunningControl, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let acceptor = TlsAcceptor::from(pki.server_config(&[b"h2"], self.tls12_only)?);
        let stats = Arc::new(ControlStats::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let cfg = Arc::new(self);
        let st = stats.clone();
        tokio::spawn(async move {
            let mut stop = stop_rx;
            loop {
                let tcp = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                    _ = stop.changed() => return,
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let (cfg, st, acceptor, mut stop) =
                    (cfg.clone(), st.clone(), acceptor.clone(), stop.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(tcp, acceptor, cfg, st) => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        Ok(RunningControl {
            addr,
            stats,
            _stop: stop_tx,
        })
    }
}

async fn serve(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    cfg: Arc<ControlOrigin>,
    stats: Arc<ControlStats>,
) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        stats.resumed_handshakes.fetch_add(1, Ordering::SeqCst);
    } else {
        stats.full_handshakes.fetch_add(1, Ordering::SeqCst);
    }
    let mut b = h2::server::Builder::new();
    if let Some(n) = cfg.max_streams {
        b.max_concurrent_streams(n);
    }
    let Ok(mut conn) = b.handshake::<_, Bytes>(tls).await else {
        return;
    };
    let mut seen: u64 = 0;
    while let Some(next) = conn.accept().await {
        let Ok((req, mut respond)) = next else { return };
        seen += 1;
        let nth = stats.received.fetch_add(1, Ordering::SeqCst) + 1;
        if nth <= cfg.abort_first {
            stats.aborted.fetch_add(1, Ordering::SeqCst);
            // Returning drops the TLS stream: the peer sees the TCP connection end.
            return;
        }
        if cfg.stall_after.is_some_and(|n| seen > n) {
            // Keep the socket open but never touch it again: a dead peer.
            let _keep = (req, respond, conn);
            return std::future::pending::<()>().await;
        }
        if seen <= cfg.refuse_first {
            stats.refused.fetch_add(1, Ordering::SeqCst);
            respond.send_reset(h2::Reason::REFUSED_STREAM);
        } else if cfg.reset_all {
            stats.reset.fetch_add(1, Ordering::SeqCst);
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
        } else {
            let (delay, stats, split) = (cfg.delay, stats.clone(), cfg.end_stream_after);
            tokio::spawn(async move {
                let mut body = req.into_body();
                while let Some(Ok(d)) = body.data().await {
                    let _ = body.flow_control().release_capacity(d.len());
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let resp = Response::builder()
                    .status(StatusCode::OK)
                    .header("content-length", "3")
                    .body(());
                if let Ok(resp) = resp {
                    if let Ok(mut send) = respond.send_response(resp, false) {
                        if send
                            .send_data(Bytes::from_static(b"ok\n"), split.is_none())
                            .is_ok()
                        {
                            stats.answered.fetch_add(1, Ordering::SeqCst);
                        }
                        if let Some(d) = split {
                            tokio::select! {
                                _ = std::future::poll_fn(|cx| send.poll_reset(cx)) => {
                                    stats.client_resets.fetch_add(1, Ordering::SeqCst);
                                }
                                _ = tokio::time::sleep(d) => {
                                    let _ = send.send_data(Bytes::new(), true);
                                }
                            }
                        }
                    }
                }
            });
        }
        if cfg.goaway_after == Some(seen) {
            stats.goaways.fetch_add(1, Ordering::SeqCst);
            conn.graceful_shutdown();
        }
    }
}
