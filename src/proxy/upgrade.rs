//! The client side of upgraded connections (WebSocket and other HTTP/1.1 `Upgrade`s): decides
//! whether a request is an upgrade the gateway performs ([`requested`], pure), asks the origin
//! through [`OriginPool::upgrade`] (which picks RFC 8441 over the shared h2 connection or a
//! dedicated HTTP/1.1 connection), answers the client `101 Switching Protocols`, then splices
//! bytes both ways with an idle timeout and writes a log line at open and close.
//!
//! What is not an upgrade here keeps the old behaviour: `Upgrade` is hop-by-hop and stripped
//! (see [`super::headers`]). That covers `Upgrade: h2c` (never forwarded: RFC 9113 §3.1
//! deprecates it), an `Upgrade` without the `upgrade` connection option, HTTP/1.0, CONNECT,
//! and upgrade requests with a body.
//!
//! Upgrade requests never touch the cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::{headers, AccessLog, ClientInfo, ConnHold, Proxy, RespBody};
use crate::error::Error;
use crate::upstream::upgrade::{TunnelIo, UpgradeOutcome, UpgradeRequest, UpgradeSlot, Via};
use crate::upstream::{OriginPool, OutHead};

/// RFC 6455 §1.3: the GUID appended to the client's key.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// An upgrade the gateway will perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    /// The protocols to ask the origin for (the client's list without `h2c`).
    pub protocols: HeaderValue,
    /// A WebSocket opening handshake eligible for RFC 8441: `GET`, `Upgrade: websocket` alone,
    /// and a `Sec-WebSocket-Key` to answer.
    pub websocket: bool,
}

/// Whether `req` asks for an upgrade the gateway performs; `None` keeps the ordinary path.
pub fn requested<B: Body>(req: &Request<B>) -> Option<Requested> {
    requested_head(req.method(), req.version(), req.headers(), req.body())
}

fn requested_head<B: Body>(
    method: &Method,
    version: Version,
    h: &HeaderMap,
    body: &B,
) -> Option<Requested> {
    // RFC 9110 §7.8: "A server MUST ignore an Upgrade header field that is received in an
    // HTTP/1.0 request." (and HTTP/2 has no Upgrade: RFC 9113 §8.6).
    if version != Version::HTTP_11 || method == Method::CONNECT {
        return None;
    }
    // RFC 9110 §7.8: "A sender of Upgrade MUST also send an "Upgrade" connection option in the
    // Connection header field"; without it the field is just a hop-by-hop one to strip.
    let nominated = h
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    if !nominated {
        return None;
    }
    // RFC 9110 §7.8: the server "MAY ignore a received Upgrade header field if it wishes to
    // continue using the current protocol": a request with content is proxied as a request.
    let has_body = h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
        || !body.is_end_stream() && body.size_hint().upper() != Some(0);
    if has_body {
        return None;
    }
    let mut tokens = Vec::new();
    for v in h.get_all(header::UPGRADE) {
        let v = v.to_str().ok()?;
        for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            // RFC 9113 §3.1: the "h2c" upgrade "is deprecated"; muxgate never forwards it.
            if !t.eq_ignore_ascii_case("h2c") {
                tokens.push(t);
            }
        }
    }
    if tokens.is_empty() {
        return None;
    }
    let protocols = HeaderValue::from_str(&tokens.join(", ")).ok()?;
    // RFC 6455 §4.1: the opening handshake is a GET with `Upgrade: websocket` and a key.
    let websocket = method == Method::GET
        && tokens.len() == 1
        && tokens[0].eq_ignore_ascii_case("websocket")
        && h.contains_key(header::SEC_WEBSOCKET_KEY);
    Some(Requested {
        protocols,
        websocket,
    })
}

/// RFC 6455 §4.2.2 item 5.4: `Sec-WebSocket-Accept` is the base64 of the SHA-1 of the key
/// (as sent, trimmed) concatenated with the GUID.
pub fn websocket_accept(key: &[u8]) -> HeaderValue {
    let mut sha = Sha1::new();
    sha.update(key.trim_ascii());
    sha.update(WS_GUID.as_bytes());
    let text = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    // Base64 text is always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The client's 101: the origin's end-to-end response fields plus the fields of this hop.
/// `accept_key` is the client's `Sec-WebSocket-Key` when the gateway must answer it (RFC 8441
/// carrier); `upgrade` is the protocol switched to.
fn switching_response(
    mut origin: HeaderMap,
    upgrade: HeaderValue,
    accept_key: Option<&HeaderValue>,
) -> Response<RespBody> {
    headers::response_to_client(&mut origin);
    // RFC 9110 §8.6: "A server MUST NOT send a Content-Length header field in any response with
    // a status code of 1xx (Informational)".
    origin.remove(header::CONTENT_LENGTH);
    // RFC 9110 §7.8: the 101 names the new protocol in Upgrade, with the connection option.
    origin.insert(header::UPGRADE, upgrade);
    origin.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(key) = accept_key {
        origin.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            websocket_accept(key.as_bytes()),
        );
    }
    let mut resp = Response::new(Empty::new().map_err(|e| match e {}).boxed_unsync());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = origin;
    resp
}

type Outcome = Result<(Response<RespBody>, Arc<OriginPool>), (Error, Option<Arc<OriginPool>>)>;

impl Proxy {
    /// Serves an upgrade request: the origin's 101 (or its refusal, relayed) now, the tunnel in
    /// a task of its own once hyper hands over the client connection.
    pub(super) async fn upgrade<B>(
        &self,
        mut req: Request<B>,
        want: Requested,
        client: ClientInfo,
        log: &mut AccessLog,
    ) -> Outcome
    where
        B: Body,
    {
        let on_client = hyper::upgrade::on(&mut req);
        let (mut parts, _body) = req.into_parts();
        let hold = parts.extensions.remove::<ConnHold>();
        let (route, host) = self.prelude(&parts, log)?;
        let pool = route.pool.clone();
        let fail = |e: Error| (e, Some(pool.clone()));
        if self.cache.is_some() && route.cache {
            log.cache = Some("BYPASS");
        }
        let mut slot = pool.upgrade_slot().map_err(fail)?;
        let key = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned();
        let head = OutHead {
            method: parts.method,
            authority: route.host_header.clone().unwrap_or(host),
            path_and_query: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            headers: headers::request_to_origin(parts.headers, &client.forwarded_for, client.tls),
            host_field: false,
        };
        let out = UpgradeRequest {
            head,
            protocols: want.protocols.clone(),
            websocket: want.websocket,
        };
        let (origin_head, io, via, conn_id) = match pool.upgrade(out).await.map_err(fail)? {
            UpgradeOutcome::Switched {
                head,
                io,
                via,
                conn_id,
            } => (head, io, via, conn_id),
            UpgradeOutcome::Refused(up) => {
                log.protocol = up.protocol;
                log.conn_id = up.conn_id;
                let (mut parts, body) = up.response.into_parts();
                headers::response_to_client(&mut parts.headers);
                return Ok((Response::from_parts(parts, body), pool));
            }
        };
        log.protocol = via.label();
        log.conn_id = conn_id;
        let resp = match via {
            Via::H2 => switching_response(origin_head.headers, want.protocols, key.as_ref()),
            Via::Http1 => {
                let upgrade = origin_head
                    .headers
                    .get(header::UPGRADE)
                    .cloned()
                    .unwrap_or(want.protocols);
                switching_response(origin_head.headers, upgrade, None)
            }
        };
        slot.opened(via);
        let tunnel = Tunnel {
            origin: pool.name().to_string(),
            client: client.peer,
            path: log.path().to_string(),
            via,
            conn_id,
            idle: pool.upgrade_idle_timeout(),
            _slot: slot,
        };
        let stop = self.tunnels.stop.subscribe();
        self.tunnels.tasks.spawn(async move {
            // Keeps the client connection counted as open until the tunnel ends.
            let _hold = hold;
            match on_client.await {
                Ok(c) => tunnel.run(TokioIo::new(c), io, stop).await,
                Err(e) => tracing::debug!(error = %e, "client went away before the upgrade"),
            }
        });
        Ok((resp, pool))
    }
}

/// One open tunnel: holds its `max_upgraded` place (and the h2 stream slot, inside the
/// origin-side I/O) until it ends.
struct Tunnel {
    origin: String,
    client: std::net::SocketAddr,
    path: String,
    via: Via,
    conn_id: u64,
    idle: Duration,
    _slot: UpgradeSlot,
}

impl Tunnel {
    /// Copies bytes both ways until both directions ended, an error, `idle` without a byte, or
    /// gateway shutdown.
    /// A half-close is passed on (EOF from one side shuts down writing to the other).
    async fn run<C>(self, client: C, origin: TunnelIo, mut stop: tokio::sync::watch::Receiver<bool>)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let start = Instant::now();
        tracing::info!(target: "muxgate::upgrade", origin = %self.origin, via = self.via.label(),
            upstream_conn = self.conn_id, client = %self.client, path = %self.path,
            "upgraded connection open");
        let activity = Arc::new(AtomicU64::new(0));
        let mut client = Metered::new(client, start, activity.clone());
        let mut origin = Metered::new(origin, start, activity.clone());
        let reason = {
            let copy = tokio::io::copy_bidirectional(&mut client, &mut origin);
            tokio::pin!(copy);
            loop {
                let last = start + Duration::from_millis(activity.load(Ordering::Acquire));
                tokio::select! {
                    r = &mut copy => break match r {
                        Ok(_) => "closed",
                        Err(_) => "error",
                    },
                    // Gateway shutdown (also when the proxy is gone).
                    _ = stop.wait_for(|s| *s) => break "shutdown",
                    _ = tokio::time::sleep_until(last + self.idle) => {
                        let last = start + Duration::from_millis(activity.load(Ordering::Acquire));
                        if Instant::now() >= last + self.idle {
                            break "idle_timeout";
                        }
                    }
                }
            }
        };
        tracing::info!(target: "muxgate::upgrade", origin = %self.origin, via = self.via.label(),
            upstream_conn = self.conn_id, client = %self.client, path = %self.path,
            bytes_from_client = client.read, bytes_from_origin = origin.read,
            duration_ms = start.elapsed().as_secs_f64() * 1000.0, reason,
            "upgraded connection closed");
    }
}

/// Counts bytes read from one side and stamps the tunnel's last activity (milliseconds since
/// its start, on tokio's clock).
struct Metered<T> {
    inner: T,
    read: u64,
    start: Instant,
    activity: Arc<AtomicU64>,
}

impl<T> Metered<T> {
    fn new(inner: T, start: Instant, activity: Arc<AtomicU64>) -> Metered<T> {
        Metered {
            inner,
            read: 0,
            start,
            activity,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read += n as u64;
            let ms = this.start.elapsed().as_millis() as u64;
            this.activity.fetch_max(ms, Ordering::AcqRel);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn req(
        method: Method,
        version: Version,
        pairs: &[(&str, &str)],
    ) -> Request<Empty<bytes::Bytes>> {
        let mut r = Request::new(Empty::new());
        *r.method_mut() = method;
        *r.version_mut() = version;
        for (k, v) in pairs {
            r.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        r
    }

    const WS: &[(&str, &str)] = &[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];

    #[test]
    fn accept_key_matches_rfc6455_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn websocket_is_detected() {
        let r = requested(&req(Method::GET, Version::HTTP_11, WS)).unwrap();
        assert_eq!(r.protocols, "websocket");
        assert!(r.websocket);
    }

    #[test]
    fn not_upgrades() {
        // HTTP/1.0, CONNECT, no connection option, h2c only.
        assert!(requested(&req(Method::GET, Version::HTTP_10, WS)).is_none());
        assert!(requested(&req(Method::CONNECT, Version::HTTP_11, WS)).is_none());
        assert!(requested(&req(
            Method::GET,
            Version::HTTP_11,
            &[("upgrade", "websocket")]
        ))
        .is_none());
        let h2c = [
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ];
        assert!(requested(&req(Method::GET, Version::HTTP_11, &h2c)).is_none());
        let body = [
            ("connection", "upgrade"),
            ("upgrade", "foo"),
            ("content-length", "3"),
        ];
        assert!(requested(&req(Method::POST, Version::HTTP_11, &body)).is_none());
        let mut full = Request::new(Full::new(bytes::Bytes::from_static(b"abc")));
        full.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        full.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("foo"));
        assert!(requested(&full).is_none());
    }

    #[test]
    fn other_protocols_and_h2c_filtered() {
        let r = requested(&req(
            Method::GET,
            Version::HTTP_11,
            &[
                ("connection", "upgrade"),
                ("upgrade", "h2c, foo/2"),
                ("upgrade", "bar"),
            ],
        ))
        .unwrap();
        assert_eq!(r.protocols, "foo/2, bar");
        assert!(!r.websocket);
        // A WebSocket without a key is not answered by the gateway.
        let r = requested(&req(
            Method::GET,
            Version::HTTP_11,
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        ))
        .unwrap();
        assert!(!r.websocket);
    }

    #[test]
    fn switching_response_fields() {
        let mut origin = HeaderMap::new();
        origin.insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
        origin.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        origin.insert("x-hop", HeaderValue::from_static("1"));
        origin.insert(header::CONNECTION, HeaderValue::from_static("x-hop"));
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let r = switching_response(origin, HeaderValue::from_static("websocket"), Some(&key));
        assert_eq!(r.status(), 101);
        let h = r.headers();
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(h["sec-websocket-protocol"], "chat");
        assert!(!h.contains_key("content-length"));
        assert!(!h.contains_key("x-hop"));
    }
}
