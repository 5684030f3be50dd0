//! The origin side of an upgraded connection (WebSocket and other HTTP/1.1 `Upgrade`s): opens
//! the tunnel and hands back its byte stream. What the client asked for, the client-facing 101
//! and the byte splice live in `proxy::upgrade`; this module knows nothing about the client.
//!
//! Two carriers, chosen per request:
//! - **h2** (RFC 8441): a `websocket` upgrade on an origin whose shared HTTP/2 connection
//!   advertised `SETTINGS_ENABLE_CONNECT_PROTOCOL` becomes an extended CONNECT stream on that
//!   connection, taken from the multiplexed pool like any request
//!   ([`super::h2::H2Pool::acquire`]).
//! - **dedicated HTTP/1.1**: everything else (no setting, an http/1.1 or cleartext origin, a
//!   token other than `websocket`) gets a connection of its own, dialled with ALPN `http/1.1`
//!   only but resuming the origin's TLS session; it never comes from, and never goes back to,
//!   the keep-alive pool.
//!
//! # Hazard: tunnels hold stream slots
//! An h2 tunnel holds its stream slot for its whole life (minutes or hours, not milliseconds).
//! Many WebSockets therefore fill the origin's SETTINGS_MAX_CONCURRENT_STREAMS, make the pool
//! dial up to `max_connections`, and past that ordinary requests queue behind tunnels for
//! `pending_timeout` and then get 503. `max_upgraded` bounds the tunnels; size it (and
//! `max_connections`) so `max_upgraded` ≤ `max_connections` × the origin's stream limit minus the
//! request concurrency you need. An idle connection with a tunnel on it is never reaped, and a
//! connection past `max_connection_age` keeps serving its tunnels until they end.
//!
//! # Race window
//! A tunnel's stream may hit a GOAWAY between `acquire` and the CONNECT: `start_tunnel` then
//! fails before anything was sent and the next connection is tried, as for a request.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use http::uri::Scheme as UriScheme;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h2::{Acquired, H2Lease};
use super::{Guard, Inner, OriginPool, OutHead, Release, UpBody, Upstream};
use crate::body::Observed;
use crate::error::{classify, classify_h2, Error, RetryClass};
use crate::metrics::OriginMetrics;

/// Which carrier a tunnel uses (the `via` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// An RFC 8441 extended CONNECT stream on a shared HTTP/2 connection.
    H2,
    /// A dedicated HTTP/1.1 connection.
    Http1,
}

impl Via {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Via::H2 => "h2",
            Via::Http1 => "http/1.1",
        }
    }
}

/// An upgrade to ask the origin for.
pub struct UpgradeRequest {
    /// Method, authority, path and the end-to-end request headers (no hop-by-hop fields).
    pub head: OutHead,
    /// The protocols to ask for (the client's `Upgrade` list without `h2c`).
    pub protocols: HeaderValue,
    /// A WebSocket opening handshake (`GET`, `Upgrade: websocket` alone, a key): may travel
    /// over RFC 8441. `head` keeps `Sec-WebSocket-Key` (the HTTP/1.1 carrier forwards it);
    /// the h2 carrier drops it (RFC 8441 §5).
    pub websocket: bool,
}

/// What the origin answered.
pub enum UpgradeOutcome {
    /// The origin switched protocols: its response head and the tunnel's bytes.
    Switched {
        /// Status and headers as the origin sent them (2xx on h2, 101 on HTTP/1.1).
        head: http::response::Parts,
        /// The tunnel.
        io: TunnelIo,
        /// The carrier.
        via: Via,
        /// Connection id (h2: the shared connection; HTTP/1.1: the dedicated one).
        conn_id: u64,
    },
    /// The origin declined: relay this as an ordinary response.
    Refused(Upstream),
}

/// One open upgraded connection counted against `max_upgraded`; dropping it frees the place
/// and, once [`UpgradeSlot::opened`] was called, lowers `muxgate_upgraded_open`.
pub struct UpgradeSlot {
    count: Arc<AtomicUsize>,
    metrics: OriginMetrics,
    via: Option<Via>,
}

impl UpgradeSlot {
    /// Counts the tunnel as open on `via` (`muxgate_upgraded_open`, `muxgate_upgraded_total`).
    pub fn opened(&mut self, via: Via) {
        match via {
            Via::H2 => {
                self.metrics.upgraded_open_h2.inc();
                self.metrics.upgraded_h2.inc();
            }
            Via::Http1 => {
                self.metrics.upgraded_open_h1.inc();
                self.metrics.upgraded_h1.inc();
            }
        }
        self.via = Some(via);
    }
}

impl Drop for UpgradeSlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        match self.via {
            Some(Via::H2) => {
                self.metrics.upgraded_open_h2.dec();
            }
            Some(Via::Http1) => {
                self.metrics.upgraded_open_h1.dec();
            }
            None => {}
        }
    }
}

impl OriginPool {
    /// Takes one of the origin's `max_upgraded` places, or fails with 503.
    pub fn upgrade_slot(&self) -> Result<UpgradeSlot, Error> {
        let n = self.upgraded.fetch_add(1, Ordering::AcqRel);
        let slot = UpgradeSlot {
            count: self.upgraded.clone(),
            metrics: self.metrics.clone(),
            via: None,
        };
        if n >= self.max_upgraded {
            return Err(Error::UpgradeLimit);
        }
        Ok(slot)
    }

    /// How long a tunnel may stay silent both ways (`upgrade_idle_timeout`).
    pub fn upgrade_idle_timeout(&self) -> std::time::Duration {
        self.upgrade_idle_timeout
    }

    /// Asks the origin to switch protocols, over RFC 8441 where the origin's h2 connection
    /// allows it, else over a dedicated HTTP/1.1 connection.
    pub async fn upgrade(&self, req: UpgradeRequest) -> Result<UpgradeOutcome, Error> {
        // The RFC 8441 carrier counts its own failures (some are counted where they happen).
        match self.upgrade_h2(&req).await? {
            Some(out) => Ok(out),
            None => self.upgrade_h1(&req).await.inspect_err(|e| self.count(e)),
        }
    }

    /// Counts a failure in `muxgate_upstream_errors_total{kind}`.
    fn count(&self, e: &Error) {
        if let Some(kind) = e.kind() {
            self.metrics.error(kind);
        }
    }

    /// The RFC 8441 carrier; `Ok(None)` when it does not apply (not a WebSocket, no h2 pool,
    /// or the origin's connection lacks `SETTINGS_ENABLE_CONNECT_PROTOCOL`). Its errors are
    /// counted in `muxgate_upstream_errors_total` by the time it returns them.
    async fn upgrade_h2(&self, req: &UpgradeRequest) -> Result<Option<UpgradeOutcome>, Error> {
        let pool = match &self.h2 {
            Some(p) if req.websocket && !self.use_h1.load(Ordering::Acquire) => p,
            _ => return Ok(None),
        };
        let mut unprocessed = 0;
        loop {
            // A failed acquire is counted by the pool.
            let lease = match pool.acquire().await? {
                Acquired::Lease(l) => l,
                Acquired::UseH1 => return Ok(None),
            };
            // RFC 8441 §3: only on a connection whose peer sent SETTINGS_ENABLE_CONNECT_PROTOCOL.
            if !lease.conn().extended_connect() {
                return Ok(None);
            }
            let retry = match self.try_tunnel(lease, &req.head).await {
                Ok(out) => return Ok(Some(out)),
                Err(AttemptErr::Retry(reason)) => reason,
                Err(AttemptErr::Fail(e)) => {
                    self.count(&e);
                    return Err(e);
                }
                Err(AttemptErr::Counted(e)) => return Err(e),
            };
            unprocessed += 1;
            self.metrics.retry(retry);
            if unprocessed > super::MAX_UNPROCESSED_RETRIES {
                let e = Error::Reset("origin connections kept closing".into());
                self.count(&e);
                return Err(e);
            }
        }
    }

    async fn try_tunnel(
        &self,
        lease: H2Lease,
        out: &OutHead,
    ) -> Result<UpgradeOutcome, AttemptErr> {
        let head = extended_connect(out).map_err(AttemptErr::Fail)?;
        let conn_id = lease.conn().id;
        // Opening the stream never waits (h2 queues it until the connection has room, and
        // that wait counts against the origin's answer), as for ordinary requests.
        let deadline = tokio::time::Instant::now() + self.response_header_timeout;
        let (pending, mut send) = match lease.conn().start_tunnel(head) {
            Ok(x) => x,
            Err(e) if e.is_go_away() || e.is_io() => {
                // Nothing was sent: the connection is closing or broken.
                lease.conn().mark_closed();
                return Err(AttemptErr::Retry(if e.is_go_away() {
                    "goaway"
                } else {
                    "not_sent"
                }));
            }
            Err(e) => {
                tracing::debug!(error = %e, "extended CONNECT refused by HTTP/2 rules");
                return Err(AttemptErr::Fail(Error::BadRequest(
                    "upgrade request not valid for HTTP/2",
                )));
            }
        };
        let resp = match tokio::time::timeout_at(deadline, pending).await {
            Err(_) => return Err(AttemptErr::Fail(Error::ResponseTimeout)),
            Ok(Err(e)) => {
                return Err(match classify_h2(&e) {
                    (RetryClass::Unprocessed(reason), _) => AttemptErr::Retry(reason),
                    // h2 closed the connection on an error it detected: one count for it.
                    (_, err) if e.is_go_away() && e.is_library() => {
                        if lease.conn().first_protocol_error() {
                            self.metrics.error("protocol");
                        }
                        AttemptErr::Counted(err)
                    }
                    (_, err) => AttemptErr::Fail(err),
                });
            }
            Ok(Ok(resp)) => resp,
        };
        let (parts, recv) = resp.into_parts();
        // RFC 8441 §5: the server accepts with a 2xx ("200 (OK)"); anything else is an
        // ordinary response, relayed as such.
        if parts.status.is_success() {
            return Ok(UpgradeOutcome::Switched {
                head: parts,
                io: TunnelIo::H2(H2Tunnel {
                    stream: Some((send, recv, lease)),
                    buf: Bytes::new(),
                    shut: false,
                }),
                via: Via::H2,
                conn_id,
            });
        }
        // Close our half cleanly; the origin's answer ends the stream on its side.
        let _ = send.send_data(Bytes::new(), true);
        let body = lease.conn().body(recv, &parts.headers);
        Ok(UpgradeOutcome::Refused(Upstream {
            response: Response::from_parts(
                parts,
                Observed::new(Inner::h2(body, None), Release(Some(Guard::H2(lease, None))))
                    .boxed_unsync(),
            ),
            conn_id,
            protocol: "h2",
        }))
    }

    /// The dedicated HTTP/1.1 carrier: its own connection (ALPN `http/1.1` only, TLS session
    /// resumed), the request with `Connection: upgrade` and `Upgrade`, and the origin's 101.
    async fn upgrade_h1(&self, req: &UpgradeRequest) -> Result<UpgradeOutcome, Error> {
        if !self.connector.h1_only_available() {
            return Err(Error::Protocol(
                "upgrade needs HTTP/1.1 but the origin's alpn excludes http/1.1".into(),
            ));
        }
        let c = self.connector.connect_h1_only().await?;
        let conn_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, UpBody>(TokioIo::new(c.io))
            .await
            .map_err(|e| Error::Protocol(format!("HTTP/1.1 handshake: {e}")))?;
        // `with_upgrades`: after a 101 the connection hands its I/O to `hyper::upgrade::on`.
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let body = Empty::new().map_err(|e| match e {}).boxed_unsync();
        let mut r = req.head.request(body, false)?;
        // RFC 9110 §7.8: "A sender of Upgrade MUST also send an "Upgrade" connection option in
        // the Connection header field" — regenerated here for this hop.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        r.headers_mut()
            .insert(header::UPGRADE, req.protocols.clone());
        let timeout = self.response_header_timeout;
        let mut resp = match tokio::time::timeout(timeout, sender.send_request(r)).await {
            Err(_) => return Err(Error::ResponseTimeout),
            Ok(Err(e)) => return Err(classify(&e).1),
            Ok(Ok(resp)) => resp,
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(UpgradeOutcome::Refused(Upstream {
                response: resp.map(|b| {
                    Observed::new(Inner::h1(b, None), Release(Some(Guard::Dedicated(sender))))
                        .boxed_unsync()
                }),
                conn_id,
                protocol: "http/1.1",
            }));
        }
        // RFC 9110 §7.8: "A server that sends a 101 (Switching Protocols) response MUST send an
        // Upgrade header field to indicate the new protocol(s) to which the connection is being
        // switched".
        if !resp.headers().contains_key(header::UPGRADE) {
            return Err(Error::Protocol("101 without an Upgrade header".into()));
        }
        let upgraded = tokio::time::timeout(timeout, hyper::upgrade::on(&mut resp))
            .await
            .map_err(|_| Error::ResponseTimeout)?
            .map_err(|e| Error::Reset(format!("upgrade: {e}")))?;
        let (parts, _) = resp.into_parts();
        Ok(UpgradeOutcome::Switched {
            head: parts,
            io: TunnelIo::Http1(TokioIo::new(upgraded)),
            via: Via::Http1,
            conn_id,
        })
    }
}

enum AttemptErr {
    /// Provably not processed: try another connection.
    Retry(&'static str),
    Fail(Error),
    /// Failed, and already counted in `muxgate_upstream_errors_total`.
    Counted(Error),
}

/// The RFC 8441 §4 request: `CONNECT` with `:protocol websocket`, `:scheme`, `:path` and
/// `:authority` from the client's target, the end-to-end headers, and no
/// `Sec-WebSocket-Key` (§5: "are not used" over HTTP/2; the gateway answers the client's key).
fn extended_connect(out: &OutHead) -> Result<Request<()>, Error> {
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.version_mut() = Version::HTTP_2;
    *req.uri_mut() = Uri::builder()
        .scheme(UriScheme::HTTPS)
        .authority(out.authority.clone())
        .path_and_query(out.path_and_query.clone())
        .build()
        .map_err(|_| Error::BadRequest("invalid request target"))?;
    let mut headers = out.headers.clone();
    headers.remove(header::SEC_WEBSOCKET_KEY);
    *req.headers_mut() = headers;
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    Ok(req)
}

/// The origin side of a tunnel as a byte stream.
pub enum TunnelIo {
    /// An extended CONNECT stream; holds its stream slot until dropped.
    H2(H2Tunnel),
    /// A dedicated HTTP/1.1 connection after its 101.
    Http1(TokioIo<Upgraded>),
}

/// An h2 stream as `AsyncRead`/`AsyncWrite`, honouring flow control both ways: writes wait for
/// send capacity granted by the origin's window; reads give window back only as bytes are
/// handed on, so a slow client slows the origin. Shutdown sends END_STREAM. Dropped with the
/// stream still open, [`H2Lease::end_tunnel`] closes it (reset within the connection's budget,
/// else END_STREAM and a bounded drain) and frees the slot.
pub struct H2Tunnel {
    /// `None` only during drop.
    stream: Option<(SendStream<Bytes>, RecvStream, H2Lease)>,
    buf: Bytes,
    shut: bool,
}

impl Drop for H2Tunnel {
    fn drop(&mut self) {
        if let Some((send, recv, lease)) = self.stream.take() {
            lease.end_tunnel(send, recv, self.shut);
        }
    }
}

fn gone() -> io::Error {
    io::ErrorKind::BrokenPipe.into()
}

/// Largest DATA payload asked for at once.
const MAX_WRITE: usize = 64 * 1024;

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into());
    }
    io::Error::new(io::ErrorKind::BrokenPipe, e)
}

impl AsyncRead for H2Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some((_, recv, _)) = this.stream.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        while this.buf.is_empty() {
            match recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                // END_STREAM: the origin closed its half.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Ok(d))) => this.buf = d,
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(match e.reason() {
                        Some(h2::Reason::NO_ERROR) | Some(h2::Reason::CANCEL) => Ok(()),
                        _ => Err(h2_io(e)),
                    })
                }
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        let _ = recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Tunnel {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if b.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let Some((send, _, _)) = this.stream.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        if this.shut {
            return Poll::Ready(Err(gone()));
        }
        while send.capacity() == 0 {
            if let Poll::Ready(r) = send.poll_reset(cx) {
                let e = match r {
                    Ok(reason) => h2::Error::from(reason),
                    Err(e) => e,
                };
                return Poll::Ready(Err(h2_io(e)));
            }
            // Reserve only when there is something to send: an idle reservation would pin
            // window on the shared connection.
            send.reserve_capacity(b.len().min(MAX_WRITE));
            match send.poll_capacity(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(h2_io(e))),
                Poll::Ready(None) => return Poll::Ready(Err(gone())),
            }
        }
        let n = send.capacity().min(b.len());
        send.send_data(Bytes::copy_from_slice(&b[..n]), false)
            .map_err(h2_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's driver task writes queued frames.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some((send, _, _)) = this.stream.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        if !this.shut {
            this.shut = true;
            send.send_data(Bytes::new(), true).map_err(h2_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TunnelIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::H2(t) => Pin::new(t).poll_read(cx, buf),
            TunnelIo::Http1(t) => Pin::new(t).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TunnelIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TunnelIo::H2(t) => Pin::new(t).poll_write(cx, b),
            TunnelIo::Http1(t) => Pin::new(t).poll_write(cx, b),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::H2(t) => Pin::new(t).poll_flush(cx),
            TunnelIo::Http1(t) => Pin::new(t).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::H2(t) => Pin::new(t).poll_shutdown(cx),
            TunnelIo::Http1(t) => Pin::new(t).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::uri::{Authority, PathAndQuery};
    use http::HeaderMap;

    #[test]
    fn extended_connect_request() {
        let mut headers = HeaderMap::new();
        headers.insert("sec-websocket-key", HeaderValue::from_static("k"));
        headers.insert("sec-websocket-version", HeaderValue::from_static("13"));
        headers.insert("origin", HeaderValue::from_static("https://a.test"));
        let head = OutHead {
            method: Method::GET,
            authority: Authority::from_static("a.test"),
            path_and_query: PathAndQuery::from_static("/chat?room=1"),
            headers,
            host_field: false,
        };
        let r = extended_connect(&head).unwrap();
        assert_eq!(r.method(), Method::CONNECT);
        assert_eq!(r.uri(), "https://a.test/chat?room=1");
        assert_eq!(
            r.extensions()
                .get::<h2::ext::Protocol>()
                .map(|p| p.as_str()),
            Some("websocket")
        );
        assert!(!r.headers().contains_key("sec-websocket-key"));
        assert_eq!(r.headers()["sec-websocket-version"], "13");
        assert_eq!(r.headers()["origin"], "https://a.test");
    }
}
