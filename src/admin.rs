//! The admin listener: `/healthz`, `/readyz` (every origin resolved), `/metrics` (Prometheus
//! text), `/pool` (JSON view of every origin's connections), `POST /cache/purge?key=K` or
//! `?prefix=P` (drops stored responses; answers the count). Separate from client traffic;
//! never proxies.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::server::stop::StopSignal;
use crate::server::Live;

/// Serves the admin endpoints until shutdown, at most `max_connections` connections at a time;
/// connections run on `tracker`.
pub async fn serve(
    listener: TcpListener,
    max_connections: usize,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    stop: Arc<StopSignal>,
    tracker: TaskTracker,
) {
    let stopped = stop.wait();
    tokio::pin!(stopped);
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    crate::server::accept_failed("admin", &e, &metrics).await;
                    continue;
                }
            },
            _ = &mut stopped => return,
        };
        // Bounded like the client listener: a flood of scrapers (or of idle connections, each
        // held up to the header timeout) cannot take every descriptor.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.downstream_refused("admin_limit");
            tracing::warn!(%peer, limit = max_connections, "admin connection refused: at admin.max_connections");
            drop(stream);
            continue;
        };
        let (live, metrics, stop) = (live.clone(), metrics.clone(), stop.clone());
        // Tracked like client connections: shutdown's drain waits for them (at most
        // SHUTDOWN_GRACE once the signal is given).
        tracker.spawn(async move {
            let _slot = slot;
            // Like a client's: a connection that sends no complete request head within
            // `client.header_timeout` (its keep-alive idle time too) is closed.
            let header = live.limits.load().header_timeout.0;
            let svc = service_fn(move |req| {
                let r = route(&req, &live.proxy.load(), &metrics);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.wait() => {
                    // Shutdown: a response being written finishes, an idle keep-alive
                    // connection (a scraper's) closes now.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
        });
    }
}

/// How long an admin connection may take to finish its response at shutdown.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn route(req: &Request<Incoming>, proxy: &Proxy, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => readiness(proxy),
        "/metrics" => {
            if let Some(c) = proxy.cache() {
                let (entries, bytes) = c.store.usage();
                metrics.cache_entries.set(entries as i64);
                metrics.cache_size_bytes.set(bytes as i64);
            }
            (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.render(),
            )
        }
        "/cache/purge" => purge(req, proxy),
        "/pool" => (StatusCode::OK, "application/json", pool_json(proxy)),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}

/// `/readyz`: ready for traffic once every origin's names resolved to at least one address.
/// The listeners are bound before the admin listener starts, and it stops accepting when a
/// drain begins, so a load balancer polling it takes the instance out before it goes away.
fn readiness(proxy: &Proxy) -> (StatusCode, &'static str, String) {
    let waiting: Vec<&str> = proxy
        .origins()
        .filter(|p| !p.resolved())
        .map(|p| p.name())
        .collect();
    if waiting.is_empty() {
        (StatusCode::OK, "text/plain", "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!(
                "not ready: origin names not resolved yet: {}\n",
                waiting.join(", ")
            ),
        )
    }
}

/// `POST /cache/purge?key=K` drops one key; `?prefix=P` every key starting with P. Keys are
/// the rendered `[cache] key` template, e.g. `http://example.com/path?q`.
fn purge(req: &Request<Incoming>, proxy: &Proxy) -> (StatusCode, &'static str, String) {
    if req.method() != http::Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use POST\n".into(),
        );
    }
    let Some(cache) = proxy.cache() else {
        return (
            StatusCode::NOT_FOUND,
            "text/plain",
            "cache disabled\n".into(),
        );
    };
    let query = req.uri().query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(percent_decode)
    };
    let n = if let Some(k) = param("key") {
        usize::from(cache.store.invalidate(&k))
    } else if let Some(p) = param("prefix") {
        cache.store.purge_prefix(&p)
    } else {
        return (
            StatusCode::BAD_REQUEST,
            "text/plain",
            "need ?key= or ?prefix=\n".into(),
        );
    };
    (StatusCode::OK, "text/plain", format!("purged {n}\n"))
}

/// Decodes `%XX` escapes and `+` (query-string form).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn pool_json(proxy: &Proxy) -> String {
    let origins: Vec<_> = proxy
        .origins()
        .map(|o| {
            let conns: Vec<_> = o
                .stats()
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "id": c.id,
                        "shard": c.shard,
                        "protocol": c.protocol,
                        "streams_in_flight": c.in_flight,
                        "max_streams": c.max_streams,
                        "draining": c.draining,
                        "age_seconds": c.age.as_secs_f64(),
                        "requests": c.served,
                        "handshake": match c.resumed { Some(true) => "resumed", Some(false) => "full", None => "none" },
                        "peer": c.peer.map(|p| p.to_string()),
                    })
                })
                .collect();
            serde_json::json!({"origin": o.name(), "protocol": o.protocol(), "resolved": o.resolved(), "connections": conns})
        })
        .collect();
    let mut s = serde_json::Value::Array(origins).to_string();
    s.push('\n');
    s
}
