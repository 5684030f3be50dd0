//! The HTTP/1.1 keep-alive pool: an `https://` origin whose ALPN offers only http/1.1, and a
//! cleartext `http://` origin. Many client requests over few client connections must reuse a
//! bounded set of origin connections.
//!
//! Bound used below: the pool dials only when no idle connection is available, and a
//! connection goes back to the idle stack as soon as its response body has been read — before
//! the client can send its next request. With C client connections there are never more than C
//! requests at once, so the origin sees at most C connections. The ALPN discovery connection
//! (dialled by the HTTP/2 pool before the protocol is known) is adopted by the HTTP/1.1 pool,
//! so it is one of those C, not one more.

mod support;

use std::time::Duration;

use muxgate::testkit::load::{self, LoadReport, LoadSpec};
use muxgate::testkit::origin::{Origin, OriginStats, RunningOrigin};
use muxgate::testkit::pki::Pki;
use support::{gateway_for, gateway_for_plain, get, init, serial};

const CLIENTS: usize = 50;
const REQUESTS: usize = 10_000;

fn stat(o: &RunningOrigin, f: impl Fn(&OriginStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    o.stats.get(f)
}

async fn run_load(gw: &muxgate::Gateway) -> LoadReport {
    let spec = LoadSpec {
        close: false,
        target: gw.http_addrs[0],
        tls: None,
        host: "app.test".into(),
        path: "/".into(),
        connections: CLIENTS,
        requests: REQUESTS,
    };
    tokio::time::timeout(Duration::from_secs(120), load::run(spec))
        .await
        .expect("load run timed out")
}

fn assert_all_ok(r: &LoadReport) {
    assert_eq!(r.errors, 0, "transport errors: {r:?}");
    assert_eq!(r.requests, REQUESTS as u64);
    assert_eq!(r.ok(), REQUESTS as u64, "statuses: {:?}", r.statuses);
    assert_eq!(r.bytes, REQUESTS as u64 * 1024, "1 KiB body each");
}

/// ALPN said http/1.1: 50 clients × 10,000 requests all succeed over at most 50 keep-alive
/// origin connections, none of them HTTP/2; every opened connection is counted as http/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_http11_origin_uses_bounded_keepalive_pool() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h1_tls().start(&pki).await.unwrap();
    let (gw, _files) = gateway_for(&origin, &pki, "").await;

    let r = run_load(&gw).await;
    assert_all_ok(&r);

    let conns = stat(&origin, |s| &s.connections);
    assert!(
        (1..=CLIENTS as u64).contains(&conns),
        "{conns} origin connections for {CLIENTS} clients"
    );
    assert_eq!(stat(&origin, |s| &s.h2_connections), 0);
    assert_eq!(stat(&origin, |s| &s.requests), REQUESTS as u64);
    assert!(stat(&origin, |s| &s.peak_active) <= CLIENTS as u64);
    assert_eq!(
        stat(&origin, |s| &s.full_handshakes) + stat(&origin, |s| &s.resumed_handshakes),
        conns
    );

    let pool = gw.origin("app").unwrap();
    assert_eq!(pool.protocol(), "http/1.1");
    let m = pool.metrics();
    assert_eq!(m.conns_h2.get(), 0, "no HTTP/2 connection may be counted");
    assert_eq!(
        m.conns_h1.get(),
        conns,
        "every origin connection is an http/1.1 pool one"
    );
    assert_eq!(m.handshakes_full.get() + m.handshakes_resumed.get(), conns);
    // After the run every connection is back on the idle stack, reusable.
    let idle = pool.stats();
    assert_eq!(idle.len() as u64, conns, "{idle:?}");
    assert!(idle
        .iter()
        .all(|c| c.protocol == "http/1.1" && c.resumed.is_some()));
    assert_eq!(idle.iter().map(|c| c.served).sum::<u64>(), REQUESTS as u64);
    assert!(gw.shutdown().await);
}

/// A single client on an ALPN-http/1.1 origin: the discovery connection itself serves every
/// request, so the origin sees exactly one connection and one full handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_discovery_connection_is_reused() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h1_tls().start(&pki).await.unwrap();
    let (gw, _files) = gateway_for(&origin, &pki, "").await;

    let mut client = support::Client::connect(gw.http_addrs[0]).await;
    for _ in 0..20 {
        let r = client.get("app.test", "/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 1024);
    }
    assert_eq!(stat(&origin, |s| &s.connections), 1);
    assert_eq!(stat(&origin, |s| &s.full_handshakes), 1);
    assert_eq!(stat(&origin, |s| &s.requests), 20);
    let stats = gw.origin("app").unwrap().stats();
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert_eq!(stats[0].served, 20);
    assert!(gw.shutdown().await);
}

/// `alpn = ["http/1.1"]` in the origin's config skips HTTP/2 even when the origin offers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_alpn_http11_skips_h2() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2_or_h1().start(&pki).await.unwrap();
    let (gw, _files) = gateway_for(&origin, &pki, "alpn = [\"http/1.1\"]").await;

    let r = get(gw.http_addrs[0], "app.test", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(stat(&origin, |s| &s.h2_connections), 0);
    assert_eq!(stat(&origin, |s| &s.connections), 1);
    let pool = gw.origin("app").unwrap();
    assert_eq!(pool.protocol(), "http/1.1");
    assert_eq!(pool.metrics().conns_h1.get(), 1);
    assert!(gw.shutdown().await);
}

/// An origin offering both picks h2 when the gateway offers both (the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_offering_both_gets_h2() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2_or_h1().start(&pki).await.unwrap();
    let (gw, _files) = gateway_for(&origin, &pki, "").await;

    let r = get(gw.http_addrs[0], "app.test", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(stat(&origin, |s| &s.h2_connections), 1);
    let pool = gw.origin("app").unwrap();
    assert_eq!(pool.protocol(), "h2");
    assert_eq!(pool.metrics().conns_h2.get(), 1);
    assert_eq!(pool.metrics().conns_h1.get(), 0);
    assert!(gw.shutdown().await);
}

/// `http://` origin: the same keep-alive pool without TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_origin_uses_bounded_keepalive_pool() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::plain().start(&pki).await.unwrap();
    let gw = gateway_for_plain(&origin, "").await;

    let r = run_load(&gw).await;
    assert_all_ok(&r);

    let conns = stat(&origin, |s| &s.connections);
    assert!(
        (1..=CLIENTS as u64).contains(&conns),
        "{conns} origin connections for {CLIENTS} clients"
    );
    assert_eq!(stat(&origin, |s| &s.requests), REQUESTS as u64);
    assert_eq!(stat(&origin, |s| &s.full_handshakes), 0);
    assert_eq!(stat(&origin, |s| &s.resumed_handshakes), 0);

    let pool = gw.origin("app").unwrap();
    assert_eq!(pool.protocol(), "http/1.1");
    let m = pool.metrics();
    assert_eq!(m.conns_h1.get(), conns);
    assert_eq!(m.conns_h2.get(), 0);
    assert_eq!(m.handshakes_full.get() + m.handshakes_resumed.get(), 0);
    let idle = pool.stats();
    assert_eq!(idle.len() as u64, conns, "{idle:?}");
    assert!(idle.iter().all(|c| c.resumed.is_none()));
    assert!(gw.shutdown().await);
}

/// `h1_max_connections` caps the keep-alive pool; requests over the cap wait for a connection
/// to come free and then succeed (20 clients, 4 connections, 100 ms per response: a waiter
/// needs at most ~0.5 s, far below the 3 s `pending_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_pool_at_h1_max_connections_queues_requests() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::plain()
        .delay(Duration::from_millis(100))
        .start(&pki)
        .await
        .unwrap();
    let gw = gateway_for_plain(&origin, "h1_max_connections = 4\npending_timeout = \"3s\"").await;

    let spec = LoadSpec {
        close: false,
        target: gw.http_addrs[0],
        tls: None,
        host: "app.test".into(),
        path: "/".into(),
        connections: 20,
        requests: 80,
    };
    let r = tokio::time::timeout(Duration::from_secs(60), load::run(spec))
        .await
        .expect("load timed out");
    assert_eq!(r.errors, 0);
    assert_eq!(r.ok(), 80, "statuses: {:?}", r.statuses);
    assert!(stat(&origin, |s| &s.connections) <= 4);
    assert_eq!(stat(&origin, |s| &s.peak_active), 4);
    assert!(gw.shutdown().await);
}

/// What holds today at the cap: the origin never sees more than `h1_max_connections`
/// connections or concurrent requests, and every request is answered (200 or 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_pool_never_exceeds_h1_max_connections() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::plain()
        .delay(Duration::from_millis(100))
        .start(&pki)
        .await
        .unwrap();
    let gw = gateway_for_plain(&origin, "h1_max_connections = 4\npending_timeout = \"1s\"").await;

    let spec = LoadSpec {
        close: false,
        target: gw.http_addrs[0],
        tls: None,
        host: "app.test".into(),
        path: "/".into(),
        connections: 20,
        requests: 40,
    };
    let r = tokio::time::timeout(Duration::from_secs(60), load::run(spec))
        .await
        .expect("load timed out");
    assert_eq!(r.errors, 0);
    assert_eq!(r.requests, 40);
    let ok = r.ok();
    let busy = r.statuses.get(&503).copied().unwrap_or(0);
    assert_eq!(ok + busy, 40, "statuses: {:?}", r.statuses);
    assert!(ok >= 4, "statuses: {:?}", r.statuses);
    assert!(stat(&origin, |s| &s.connections) <= 4);
    assert!(stat(&origin, |s| &s.peak_active) <= 4);
    assert!(gw.shutdown().await);
}
