//! The request path between the client-facing server and the origin pools: route by host,
//! check the request, translate headers ([`headers`]), send through the origin's pool, translate
//! the response, and write one access-log line when the response body is done. Upgrade requests
//! (WebSocket…) branch off to [`upgrade`].

pub mod cached;
pub mod headers;
pub mod upgrade;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

use crate::body::{Observed, Observer};
use crate::cache::CacheRt;
use crate::config::ValidConfig;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::route::Router;
use crate::server::head_timeout::HeadClock;
use crate::upstream::{BoxError, ClientBodyError, OriginPool, OutBody, OutHead, Outgoing, UpBody};

/// Response body sent to clients.
pub type RespBody = UnsyncBoxBody<Bytes, BoxError>;
/// The body a client receives: the response body, logged when it ends.
pub type ClientBody = Observed<RespBody, LogOnEnd>;

/// `X-Cache-Status` (nginx's `$upstream_cache_status`).
static X_CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("x-cache-status");

/// Who sent a request.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Peer address.
    pub peer: SocketAddr,
    /// Arrived over TLS.
    pub tls: bool,
    /// The peer's address for `X-Forwarded-For`.
    pub forwarded_for: headers::ForwardedFor,
    /// The client connection's clock (HTTP/1.1 connections): it enforces the origin's
    /// `response_header_timeout` for this request instead of a timer of its own
    /// ([`HeadClock::response_within`]).
    pub head_clock: Option<Arc<HeadClock>>,
}

impl ClientInfo {
    /// A client connection from `peer`; `tls` if it came over TLS.
    pub fn new(peer: SocketAddr, tls: bool) -> ClientInfo {
        ClientInfo {
            peer,
            tls,
            forwarded_for: headers::ForwardedFor::for_peer(peer.ip()),
            head_clock: None,
        }
    }
}

/// Request extension the client-facing server adds: while any clone of it lives, the server
/// keeps counting the client connection as open (`client.max_connections`, the
/// `downstream_connections_open` gauge, graceful shutdown). An upgrade tunnel holds one for its
/// life, because hyper hands the connection over and finishes its own task at the 101.
#[derive(Clone)]
pub struct ConnHold(pub Arc<tokio::sync::oneshot::Sender<()>>);

/// Configured limits on the request head, checked here so the client gets a 414/431 with a
/// body (hyper's own parser limit is set at twice these and answers with an empty 431).
#[derive(Debug, Clone, Copy)]
struct HeadLimits {
    max_size: usize,
    max_count: usize,
}

struct Route {
    pool: Arc<OriginPool>,
    cache: bool,
    host_header: Option<Authority>,
    retry_buffer: u64,
}

/// Routing table, origin pools and request limits.
pub struct Proxy {
    router: Router,
    routes: Vec<Route>,
    max_body_size: u64,
    body_timeout: Duration,
    head: HeadLimits,
    cache: Option<Arc<CacheRt>>,
    metrics: Arc<Metrics>,
    /// Running upgrade tunnels; shared with the request paths that replace this one.
    tunnels: TunnelSet,
}

/// The upgrade tunnels of a gateway. They outlive their client connection's task and any
/// reload: a reload hands the set to the new request path (`Proxy::adopt_tunnels`), so
/// dropping the old one closes nothing; only shutdown (`close_upgrades`) stops them.
#[derive(Clone)]
struct TunnelSet {
    tasks: tokio_util::task::TaskTracker,
    /// Set at shutdown: every tunnel closes.
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

impl TunnelSet {
    fn new() -> TunnelSet {
        TunnelSet {
            tasks: tokio_util::task::TaskTracker::new(),
            stop: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

impl Proxy {
    /// Builds pools for every origin of `cfg`.
    pub fn new(cfg: &ValidConfig, metrics: &Arc<Metrics>) -> Result<Proxy, String> {
        Proxy::reusing(cfg, metrics, &[], &[], None)
    }

    /// Builds the request path for `cfg`, taking over running parts (a live reload):
    /// `pools[i]`, when `Some`, is the pool origin `i` keeps; an origin that gets a fresh pool
    /// takes the TLS sessions of the pool of the same name in `previous` (the running ones);
    /// `cache`, when `Some`, is the running cache (or its absence) to keep.
    pub fn reusing(
        cfg: &ValidConfig,
        metrics: &Arc<Metrics>,
        pools: &[Option<Arc<OriginPool>>],
        previous: &[Arc<OriginPool>],
        cache: Option<Option<Arc<CacheRt>>>,
    ) -> Result<Proxy, String> {
        let router = Router::new(
            cfg.origins
                .iter()
                .enumerate()
                .map(|(i, o)| (i, o.raw.hosts.as_slice())),
        );
        let mut routes = Vec::new();
        for (i, o) in cfg.origins.iter().enumerate() {
            let pool = match pools.get(i).cloned().flatten() {
                Some(p) => p,
                None => {
                    let prev = previous.iter().find(|p| p.name() == o.raw.name);
                    Arc::new(
                        OriginPool::replacing(o, metrics.origin(&o.raw.name), prev.map(|p| &**p))
                            .map_err(|e| format!("origin {}: {e}", o.raw.name))?,
                    )
                }
            };
            routes.push(Route {
                pool,
                cache: o.raw.cache,
                host_header: o
                    .raw
                    .host_header
                    .as_deref()
                    .and_then(|h| Authority::try_from(h).ok()),
                retry_buffer: o.raw.retry_buffer.0,
            });
        }
        let cache = match cache {
            Some(c) => c,
            None => CacheRt::from_config(&cfg.raw.cache).map_err(|e| e.to_string())?,
        };
        Ok(Proxy {
            router,
            routes,
            max_body_size: cfg.raw.client.max_body_size.0,
            body_timeout: cfg.raw.client.header_timeout.0,
            head: HeadLimits {
                max_size: cfg.raw.client.max_header_size.0 as usize,
                max_count: cfg.raw.client.max_headers,
            },
            cache,
            metrics: metrics.clone(),
            tunnels: TunnelSet::new(),
        })
    }

    /// The pool of the origin named `name`.
    pub fn origin(&self, name: &str) -> Option<&Arc<OriginPool>> {
        self.routes
            .iter()
            .map(|r| &r.pool)
            .find(|p| p.name() == name)
    }

    /// The response cache, when enabled.
    pub fn cache(&self) -> Option<&Arc<CacheRt>> {
        self.cache.as_ref()
    }

    /// Closes every upgraded connection (a tunnel has no "end of the request" to wait for) and
    /// waits until their tasks have ended. Part of graceful shutdown.
    pub async fn close_upgrades(&self) {
        self.tunnels.stop.send_replace(true);
        self.tunnels.tasks.close();
        self.tunnels.tasks.wait().await;
    }

    /// Takes over the running tunnels of the request path this one replaces (a reload): they
    /// keep running, and this path's shutdown closes them.
    pub fn adopt_tunnels(&mut self, old: &Proxy) {
        self.tunnels = old.tunnels.clone();
    }

    /// All origin pools.
    pub fn origins(&self) -> impl Iterator<Item = &Arc<OriginPool>> {
        self.routes.iter().map(|r| &r.pool)
    }

    /// Serves one request; never fails (errors become responses).
    pub async fn handle<B>(
        self: Arc<Self>,
        req: Request<B>,
        client: ClientInfo,
    ) -> Response<ClientBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        let version = req.version();
        // Boxed: it ends in the response body, which hyper moves several times per request;
        // a pointer moves cheaper than its ~230 bytes (and the request's future is smaller).
        let mut log = Box::new(AccessLog {
            client: client.peer,
            method: req.method().clone(),
            host: None,
            path: req.uri().path_and_query().cloned(),
            status: 0,
            bytes: 0,
            start,
            origin: None,
            protocol: "-",
            conn_id: 0,
            cache: None,
        });
        // One pass over the field names for every check and translation below.
        let seen = headers::Seen::scan(req.headers());
        let upgrade = if seen.connection() && seen.upgrade() {
            upgrade::requested(&req)
        } else {
            // No `Upgrade` or no `Connection: upgrade`, no upgrade (RFC 9110 §7.8); a
            // `Connection: close` or `keep-alive` costs no look at its options here.
            None
        };
        let result = match upgrade {
            // Boxed: the upgrade future is large and rare; inline, it would make every
            // request's future (hyper holds one per in-flight request) ~1 KiB bigger.
            Some(want) => Box::pin(self.upgrade(req, want, client, &mut log)).await,
            None => self.forward(req, &seen, client, &mut log).await,
        };
        let (mut resp, origin) = match result {
            Ok((resp, origin)) => (resp, Some(origin)),
            Err((e, origin)) => {
                if e.side() != crate::error::Side::Client {
                    tracing::warn!(origin = %log.origin(), host = %log.host(), error = %e, "request failed");
                }
                (error_response(&e), origin)
            }
        };
        log.status = resp.status().as_u16();
        if let Some(status) = log.cache {
            resp.headers_mut()
                .insert(X_CACHE_STATUS.clone(), HeaderValue::from_static(status));
            self.metrics.cache_request(status);
        }
        if let Some(o) = origin {
            let m = o.metrics();
            m.request(log.status);
            m.duration.observe(start.elapsed().as_secs_f64());
        }
        if version == Version::HTTP_2 {
            // RFC 9113 §8.2.2: no connection-specific fields in an HTTP/2 response (the
            // `Connection: close` of an error response included).
            headers::strip_hop_by_hop(resp.headers_mut(), false);
            *resp.version_mut() = Version::HTTP_2;
            if log.method == Method::HEAD {
                // RFC 9110 §9.3.2: a HEAD response has no content. hyper's HTTP/1.1 server
                // drops a body an origin sends anyway; its HTTP/2 server would forward it
                // (or the stream error it causes upstream), so end the stream with the head.
                resp = resp.map(|_| empty_body());
            }
        } else {
            *resp.version_mut() = Version::HTTP_11;
        }
        // Not boxed again: one allocation and one dynamic call per body frame less.
        resp.map(|b| Observed::new(b, LogOnEnd(Some(log))))
    }

    async fn forward<B>(
        &self,
        req: Request<B>,
        seen: &headers::Seen,
        client: ClientInfo,
        log: &mut AccessLog,
    ) -> Result<(Response<RespBody>, Arc<OriginPool>), (Error, Option<Arc<OriginPool>>)>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let (route, host) = self.prelude(&parts, log)?;
        let pool = route.pool.clone();
        let fail = |e: Error| (e, Some(pool.clone()));
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        if seen.transfer_encoding() {
            check_transfer_coding(&parts.headers).map_err(fail)?;
        }
        let declared = if seen.content_length() {
            content_length(&parts.headers).map_err(fail)?
        } else {
            None
        };
        if self.max_body_size > 0 && declared.is_some_and(|n| n > self.max_body_size) {
            return Err(fail(Error::BodyTooLarge));
        }
        let (body, exceeded) = self
            .request_body(body, declared, route.retry_buffer)
            .await
            .map_err(fail)?;
        let cache_key = self.cache.as_ref().filter(|_| route.cache).map(|c| {
            let scheme = if client.tls { "https" } else { "http" };
            // `host` has no userinfo (`request_host`), so its string is host[:port].
            let name = crate::route::normalize_host(host.as_str());
            let key = c
                .key
                .render(scheme, &name, path_and_query.path(), path_and_query.query());
            (c.clone(), key)
        });
        // The key's variants, read once for the quick path and `cached::serve`. Not read for a
        // request with `Range`: uncached, unless its `Connection` nominates the field.
        let mut read = None;
        if let Some((c, key)) = &cache_key {
            if c.methods.contains(&parts.method)
                && matches!(body, OutBody::Empty)
                && !parts.headers.contains_key(header::RANGE)
            {
                let variants = c.store.variants(key);
                // A fresh hit needs no origin request: answered before the translation, when
                // that leaves every field the cache reads as it is.
                let exact =
                    !seen.connection() || !headers::nominates_end_to_end(&parts.headers, seen);
                if let Some((resp, status)) = variants
                    .as_deref()
                    .filter(|_| exact)
                    .and_then(|v| cached::quick_hit(v, &parts.headers))
                {
                    log.cache = Some(status);
                    return Ok((resp, pool));
                }
                read = Some(variants);
            }
        }
        // The client's Host can go to an HTTP/1.1 origin as it is when it is what the
        // authority is made from: not an absolute-form target's, not `host_header`.
        let keep_host =
            route.host_header.is_none() && parts.uri.authority().is_none() && pool.speaks_h1();
        let (headers, host_field) = headers::request_to_origin_seen(
            parts.headers,
            seen,
            &client.forwarded_for,
            client.tls,
            keep_host,
        );
        let head = OutHead {
            method: parts.method,
            authority: route.host_header.clone().unwrap_or(host),
            path_and_query,
            headers,
            host_field,
        };
        if let Some((c, key)) = &cache_key {
            let cacheable = c.methods.contains(&head.method)
                && matches!(body, OutBody::Empty)
                && !head.headers.contains_key(header::RANGE);
            if cacheable {
                // Boxed, like the upgrade path: 3.9 KiB that requests to uncached routes
                // would otherwise carry.
                let (r, status) =
                    crate::inplace::pinned(|| cached::serve(c, &pool, head, key.clone(), read))
                        .await;
                log.cache = Some(status);
                return r.map(|resp| (resp, pool.clone())).map_err(fail);
            }
            // Range requests, bodies, other methods: straight through (RFC 9111 §3.3/§3.4
            // partial content is not stored).
            log.cache = Some("BYPASS");
        }
        let method = head.method.clone();
        let out = Outgoing {
            head,
            body,
            head_clock: client.head_clock,
        };
        let up = match pool.send(out).await {
            Ok(up) => up,
            Err(_) if exceeded.is_some_and(|e| e.load(Ordering::Acquire)) => {
                return Err(fail(Error::BodyTooLarge))
            }
            Err(e) => return Err(fail(e)),
        };
        log.protocol = up.protocol;
        log.conn_id = up.conn_id;
        let (mut parts, body) = up.response.into_parts();
        if let Some((c, key)) = &cache_key {
            // RFC 9111 §4.4: a successful unsafe request invalidates the stored responses for
            // its URI (and Location / Content-Location on the same host).
            if crate::cache::policy::invalidates(&method, parts.status) {
                c.store.invalidate(key);
                for h in [header::LOCATION, header::CONTENT_LOCATION] {
                    if let Some(k) = parts.headers.get(&h).and_then(|v| same_host_key(key, v)) {
                        c.store.invalidate(&k);
                    }
                }
            }
        }
        headers::response_to_client(&mut parts.headers);
        Ok((Response::from_parts(parts, body), pool))
    }

    /// What every request goes through first: head limits, host, route, and the refusal of
    /// CONNECT.
    #[allow(clippy::type_complexity)]
    fn prelude(
        &self,
        parts: &http::request::Parts,
        log: &mut AccessLog,
    ) -> Result<(&Route, Authority), (Error, Option<Arc<OriginPool>>)> {
        check_head(parts, self.head).map_err(|e| (e, None))?;
        let host = request_host(parts).map_err(|e| (e, None))?;
        log.host = Some(host.clone());
        let idx = self
            .router
            .route_authority(&host)
            .ok_or((Error::NoRoute, None))?;
        let route = &self.routes[idx];
        log.origin = Some(route.pool.name_shared());
        if parts.method == Method::CONNECT {
            return Err((
                Error::BadRequest("CONNECT is not supported"),
                Some(route.pool.clone()),
            ));
        }
        Ok((route, host))
    }

    /// Chooses how the request body travels: empty, buffered (replayable), or streamed; a
    /// streamed body comes with the flag it sets when it runs past `max_body_size`.
    async fn request_body<B>(
        &self,
        body: B,
        declared: Option<u64>,
        retry_buffer: u64,
    ) -> Result<(OutBody, Option<Arc<AtomicBool>>), Error>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() || declared == Some(0) {
            return Ok((OutBody::Empty, None));
        }
        if let Some(n) = declared.filter(|&n| n <= retry_buffer) {
            let collected = tokio::time::timeout(self.body_timeout, body.collect())
                .await
                .map_err(|_| Error::BadRequest("request body timed out"))?
                .map_err(|_| Error::BadRequest("request body incomplete"))?;
            let bytes = collected.to_bytes();
            if bytes.len() as u64 != n {
                return Err(Error::BadRequest("request body length mismatch"));
            }
            return Ok((OutBody::Buffered(bytes), None));
        }
        let exceeded = Arc::new(AtomicBool::new(false));
        let limited = LimitedBody {
            inner: body,
            remaining: if self.max_body_size > 0 {
                self.max_body_size
            } else {
                u64::MAX
            },
            exceeded: exceeded.clone(),
        };
        Ok((
            OutBody::Stream(limited.boxed_unsync() as UpBody),
            Some(exceeded),
        ))
    }
}

/// Request line and header block against the configured limits (RFC 9110 §15.5.15, RFC 6585 §5).
fn check_head(parts: &http::request::Parts, limits: HeadLimits) -> Result<(), Error> {
    // The target's length as sent (absolute-form or origin-form), without rendering it.
    let u = &parts.uri;
    let target = u.scheme_str().map_or(0, |s| s.len() + 3)
        + u.authority().map_or(0, |a| a.as_str().len())
        + u.path_and_query().map_or(0, |p| p.as_str().len());
    if target > limits.max_size {
        return Err(Error::UriTooLong);
    }
    if parts.headers.len() > limits.max_count {
        return Err(Error::HeadersTooLarge);
    }
    // Request line + "name: value\r\n" per field, as they were on the wire.
    let size = parts.method.as_str().len()
        + target
        + 12
        + parts
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if size > limits.max_size {
        return Err(Error::HeadersTooLarge);
    }
    Ok(())
}

/// The request's host: the absolute-form target's authority wins over `Host` (RFC 9112 §3.2.2);
/// in HTTP/2, `:authority` and `Host` must agree when both are present (RFC 9113 §8.3.1).
fn request_host(parts: &http::request::Parts) -> Result<Authority, Error> {
    if let Some(a) = parts.uri.authority() {
        // RFC 9110 §4.2.4: userinfo is not allowed in an http(s) target; never forward it.
        if a.as_str().contains('@') {
            return Err(Error::BadRequest("userinfo in request target"));
        }
        if !port_is_digits(a) {
            return Err(Error::BadRequest("invalid port in request target"));
        }
        if parts.version == Version::HTTP_2 {
            // RFC 9113 §8.3.1: a Host that "identifies an entity that differs from the entity
            // in the ':authority'" makes the request malformed, compared after scheme-based
            // normalisation (RFC 3986 §6.2.3: case, default port) — a proxy must not let the
            // two name different hosts (the router and the origin could disagree).
            let mut hosts = parts.headers.get_all(header::HOST).iter();
            if let Some(h) = hosts.next() {
                if hosts.next().is_some() {
                    return Err(Error::BadRequest("more than one Host header"));
                }
                let default_port = if parts.uri.scheme() == Some(&http::uri::Scheme::HTTP) {
                    80
                } else {
                    443
                };
                if !same_entity(h.as_bytes(), a, default_port) {
                    return Err(Error::BadRequest(":authority and Host differ"));
                }
            }
        }
        return Ok(a.clone());
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts
        .next()
        .ok_or(Error::BadRequest("missing Host header"))?;
    if hosts.next().is_some() {
        return Err(Error::BadRequest("more than one Host header"));
    }
    host_authority(host).ok_or(Error::BadRequest("invalid Host header"))
}

/// A `Host` value as an [`Authority`], checked. Shared with the thread's previous request when
/// that named the same host, as nearly every request does: the check, the copy and the first
/// clone of a new one cost ~540 instructions (bench/callgrind.sh, ORIGIN=nginx). An
/// `Authority`'s text is the value it was parsed from, so the same bytes pass the same checks.
fn host_authority(v: &HeaderValue) -> Option<Authority> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<Authority>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some(a) = &*last {
            if a.as_str().as_bytes() == v.as_bytes() {
                return Some(a.clone());
            }
        }
        let a = v
            .to_str()
            .ok()
            .and_then(|h| Authority::try_from(h).ok())
            // Without userinfo, the host part is empty exactly when the value starts with ':'.
            .filter(|a| !a.as_str().starts_with(':') && !a.as_str().contains('@'))
            .filter(port_is_digits)?;
        *last = Some(a.clone());
        Some(a)
    })
}

/// RFC 3986 §3.2.3: `port = *DIGIT` (and it must fit a TCP port). `http` accepts any text after
/// the colon; `Host: ww:w.a.test` would then be routed on its whole text (`*.a.test`) while
/// its host is `ww` (found by fuzz_downstream_h1). `authority` has no userinfo.
/// One scan of the text, without `Authority::host`'s parse (which cost ~330 instructions per
/// request, `bench/callgrind.sh`).
fn port_is_digits(authority: &Authority) -> bool {
    let s = authority.as_str();
    // What follows the host: after `]` for an IP literal, else from the first `:`.
    let rest = if s.starts_with('[') {
        match s.find(']') {
            Some(i) => &s[i + 1..],
            None => return false,
        }
    } else {
        match s.find(':') {
            Some(i) => &s[i..],
            None => return true,
        }
    };
    match rest.strip_prefix(':') {
        None => rest.is_empty(),
        // `u16::from_str` alone would take a leading `+`.
        Some(p) => {
            p.is_empty() || (p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok())
        }
    }
}

/// Whether a `Host` value names the same host and port as `authority`, the port defaulting to
/// `default_port` on either side (RFC 3986 §6.2.3).
fn same_entity(host: &[u8], authority: &Authority, default_port: u16) -> bool {
    let Some(h) = std::str::from_utf8(host)
        .ok()
        .and_then(|h| Authority::try_from(h).ok())
    else {
        return false;
    };
    h.host().eq_ignore_ascii_case(authority.host())
        && h.port_u16().unwrap_or(default_port) == authority.port_u16().unwrap_or(default_port)
}

/// RFC 9112 §6.1: only a single, final `chunked` is a framing the gateway decodes; any other
/// coding would be forwarded still encoded with nothing saying so. Unknown codings get 501,
/// `chunked` twice 400.
fn check_transfer_coding(h: &http::HeaderMap) -> Result<(), Error> {
    let mut tokens = Vec::new();
    for v in h.get_all(header::TRANSFER_ENCODING) {
        let v = v
            .to_str()
            .map_err(|_| Error::BadRequest("invalid Transfer-Encoding"))?;
        tokens.extend(v.split(',').map(|t| t.trim().to_ascii_lowercase()));
    }
    match tokens.as_slice() {
        [] => Ok(()),
        [only] if only == "chunked" => Ok(()),
        t if t.iter().all(|x| x == "chunked") => {
            Err(Error::BadRequest("chunked applied more than once"))
        }
        _ => Err(Error::UnsupportedCoding),
    }
}

/// The request's Content-Length, if any; several differing values are refused (RFC 9112 §6.3).
fn content_length(h: &http::HeaderMap) -> Result<Option<u64>, Error> {
    let mut found: Option<u64> = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        for part in v
            .to_str()
            .map_err(|_| Error::BadRequest("invalid Content-Length"))?
            .split(',')
        {
            let n: u64 = part
                .trim()
                .parse()
                .map_err(|_| Error::BadRequest("invalid Content-Length"))?;
            if found.is_some_and(|f| f != n) {
                return Err(Error::BadRequest("conflicting Content-Length"));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// The cache key of a same-host `Location`-style URI reference, derived from `key` (which ends
/// with the request's path and query); `None` for other hosts or unparsable values.
fn same_host_key(key: &str, v: &HeaderValue) -> Option<String> {
    let text = v.to_str().ok()?;
    let uri: http::Uri = text.parse().ok()?;
    let pq = uri.path_and_query()?.as_str();
    if uri.authority().is_some() {
        // Absolute: only the same host counts; rebuild from the key's scheme and host.
        let host = uri.host()?.to_ascii_lowercase();
        let start = key.find(&host)?;
        return Some(format!("{}{}", &key[..start + host.len()], pq));
    }
    if !pq.starts_with('/') {
        return None;
    }
    // Relative: replace the request's path in the key (default template ends with it).
    let scheme_end = key.find("://").map_or(0, |i| i + 3);
    let path_start = key[scheme_end..].find('/').map(|i| i + scheme_end)?;
    Some(format!("{}{}", &key[..path_start], pq))
}

fn empty_body() -> RespBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The one place an [`Error`] becomes a client response.
pub fn error_response(e: &Error) -> Response<RespBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(e.body()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(s) = e.retry_after() {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    if e.side() == crate::error::Side::Client && e.status() != StatusCode::NOT_FOUND {
        // After a malformed request the stream position is unreliable: close.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Request body with a size cap; past it the body errors and `exceeded` is set (→ 413).
struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    exceeded: Arc<AtomicBool>,
}

/// The body grew past `client.max_body_size`.
#[derive(Debug, thiserror::Error)]
#[error("request body too large")]
struct TooLarge;

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.as_mut().get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let n = d.len() as u64;
                    if n > this.remaining {
                        this.exceeded.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(ClientBodyError(Box::new(
                            TooLarge,
                        ))))));
                    }
                    this.remaining -= n;
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e.into())))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One access-log line, written when the response body ends (or is dropped).
struct AccessLog {
    client: SocketAddr,
    method: Method,
    /// Cheap clones: `Authority` and `PathAndQuery` share the request's bytes.
    host: Option<Authority>,
    path: Option<PathAndQuery>,
    status: u16,
    bytes: u64,
    start: Instant,
    origin: Option<Arc<str>>,
    protocol: &'static str,
    conn_id: u64,
    cache: Option<&'static str>,
}

impl AccessLog {
    fn host(&self) -> &str {
        self.host.as_ref().map_or("", |h| h.as_str())
    }

    fn origin(&self) -> &str {
        self.origin.as_deref().unwrap_or("-")
    }

    fn path(&self) -> &str {
        self.path.as_ref().map_or("", |p| p.as_str())
    }

    fn emit(&self, complete: bool) {
        tracing::info!(
            target: "muxgate::access",
            client = %self.client,
            method = %self.method,
            host = %self.host(),
            path = %self.path(),
            status = self.status,
            bytes = self.bytes,
            duration_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            origin = %self.origin(),
            upstream_protocol = self.protocol,
            upstream_conn = self.conn_id,
            cache = self.cache.unwrap_or("-"),
            complete,
        );
    }
}

/// Counts bytes and writes the access-log line when the response is complete, or when it is
/// dropped unfinished (client gone).
pub struct LogOnEnd(Option<Box<AccessLog>>);

impl Observer for LogOnEnd {
    fn data(&mut self, d: &Bytes) {
        if let Some(l) = self.0.as_mut() {
            l.bytes += d.len() as u64;
        }
    }

    fn end(&mut self) {
        if let Some(l) = self.0.take() {
            l.emit(true);
        }
    }
}

impl Drop for LogOnEnd {
    fn drop(&mut self) {
        if let Some(l) = self.0.take() {
            l.emit(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread's last host is reused only for the same bytes: each value gets its own
    /// authority and its own verdict whatever came before it.
    #[test]
    fn a_request_gets_its_own_host_whoever_came_before() {
        let host = |v: &'static str| host_authority(&HeaderValue::from_static(v));
        let seq = [
            ("a.test", Some("a.test")),
            ("a.test", Some("a.test")),
            ("a.test:8080", Some("a.test:8080")),
            ("a.test:80x", None),
            ("a.test:8080", Some("a.test:8080")),
            ("u@a.test", None),
            ("u@a.test", None),
            (":80", None),
            ("B.test", Some("B.test")),
            ("a.test", Some("a.test")),
        ];
        for (v, want) in seq {
            assert_eq!(host(v).as_ref().map(Authority::as_str), want, "{v}");
        }
        let v = HeaderValue::from_bytes(b"a.test\xff").unwrap();
        assert!(host_authority(&v).is_none());
    }

    /// The port check against what `Authority` itself says the host is, for every input
    /// `http` accepts as an authority.
    #[test]
    fn port_is_digits_agrees_with_the_parsed_host() {
        let cases = [
            ("a.test", true),
            ("a.test:80", true),
            ("a.test:", true),
            ("a.test:65535", true),
            ("a.test:65536", false),
            ("a.test:99999", false),
            ("a.test:+80", false),
            ("a.test:8o", false),
            ("ww:w.a.test", false),
            ("[::1]", true),
            ("[::1]:8080", true),
            ("[::1]:", true),
            ("[::1]:x", false),
            ("[::1]x", false),
            ("127.0.0.1:443", true),
        ];
        for (text, expect) in cases {
            // Every case parses as an authority (else it would check nothing).
            let Ok(a) = Authority::try_from(text) else {
                panic!("{text} is not an authority");
            };
            assert_eq!(port_is_digits(&a), expect, "{text}");
            // Where the port is digits, it is what `Authority` parsed after its host.
            if expect {
                let rest = &a.as_str()[a.host().len()..];
                assert!(rest.is_empty() || rest.starts_with(':'), "{text}");
            }
        }
    }
}
