//! The multiplexed HTTP/2 pool seen from outside: many HTTP/1.1 clients through the gateway onto
//! an in-process h2 origin, asserting how many connections and TLS handshakes the origin saw.
//!
//! A response `delay` on the origin keeps every request of a burst in flight at once, so the
//! number of streams needed — and therefore of connections — is deterministic.

mod support;

use std::time::Duration;

use muxgate::testkit::load::LoadReport;
use muxgate::testkit::origin::Origin;
use muxgate::testkit::pki::Pki;
use support::{burst, ceil_div, gateway_for, get, get_concurrent, init, serial};

use support::origin_stat as stat;

fn assert_all_ok(r: &LoadReport, n: u64) {
    assert_eq!(r.errors, 0, "transport errors: {r:?}");
    assert_eq!(r.requests, n, "{r:?}");
    assert_eq!(r.ok(), n, "statuses: {:?}", r.statuses);
}

/// 1,000 client connections × 10 requests against an origin allowing 100 streams per
/// connection: every answer is 200, and the origin sees exactly ceil(peak in flight / 100)
/// connections — ten, with a single full TLS handshake and nine resumed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_clients_share_ceil_peak_over_max_streams_connections() {
    init();
    let _serial = serial().await;
    assert!(
        support::nofile_soft_limit() >= 4096,
        "open-file limit too low"
    );
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2()
        .max_streams(100)
        .delay(Duration::from_secs(1))
        .start(&pki)
        .await
        .unwrap();
    let (gw, _files) = gateway_for(&origin, &pki, "").await;

    let r = burst(&gw, 1000, 10_000, "/", Duration::from_secs(90)).await;
    assert_all_ok(&r, 10_000);

    let peak = stat(&origin, |s| &s.peak_active);
    let conns = stat(&origin, |s| &s.connections);
    assert_eq!(
        peak, 1000,
        "the delay should keep all 1,000 requests in flight at once"
    );
    assert_eq!(
        conns,
        ceil_div(peak, 100),
        "origin connections for peak {peak}"
    );
    assert_eq!(conns, 10);
    assert_eq!(stat(&origin, |s| &s.h2_connections), 10);
    assert_eq!(stat(&origin, |s| &s.requests), 10_000);
    assert_eq!(
        stat(&origin, |s| &s.full_handshakes),
        1,
        "only the first dial is a full handshake"
    );
    assert_eq!(stat(&origin, |s| &s.resumed_handshakes), 9);

    let pool = gw.origin("app").unwrap();
    assert_eq!(pool.protocol(), "h2");
    let stats = pool.stats();
    assert_eq!(stats.len(), 10, "{stats:?}");
    assert!(stats
        .iter()
        .all(|c| c.protocol == "h2" && !c.draining && c.max_streams == 100));
    assert_eq!(stats.iter().map(|c| c.served).sum::<u64>(), 10_000);
    assert_eq!(pool.metrics().conns_h2.get(), 10);
    assert_eq!(pool.metrics().handshakes_full.get(), 1);
    assert_eq!(pool.metrics().handshakes_resumed.get(), 9);
    assert!(gw.shutdown().await, "gateway did not drain");
}

/// 100 requests in flight against max_streams 100 fit on one connection, opened with one full
/// handshake; a second burst reuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_in_flight_fit_one_connection() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2()
        .max_streams(100)
        .delay(Duration::from_millis(500))
        .start(&pki)
        .await
        .unwrap();
    let (gw, _files) = gateway_for(&origin, &pki, "").await;

    for round in 1..=2u64 {
        let r = burst(&gw, 100, 100, "/", Duration::from_secs(30)).await;
        assert_all_ok(&r, 100);
        assert_eq!(stat(&origin, |s| &s.peak_active), 100, "round {round}");
        assert_eq!(stat(&origin, |s| &s.connections), 1, "round {round}");
        assert_eq!(stat(&origin, |s| &s.full_handshakes), 1, "round {round}");
        assert_eq!(stat(&origin, |s| &s.resumed_handshakes), 0, "round {round}");
        assert_eq!(stat(&origin, |s| &s.requests), 100 * round);
    }
    let pool = gw.origin("app").unwrap();
    let stats = pool.stats();
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert_eq!(stats[0].served, 200);
    assert_eq!(stats[0].resumed, Some(false));
    assert_eq!(pool.metrics().handshakes_full.get(), 1);
    assert_eq!(pool.metrics().handshakes_resumed.get(), 0);
    assert!(gw.shutdown().await);
}

/// 150 in flight need a second connection; it resumes the first one's TLS session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connection_resumes_the_tls_session() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2()
        .max_streams(100)
        .delay(Duration::from_millis(800))
        .start(&pki)
        .await
        .unwrap();
    let (gw, _files) = gateway_for(&origin, &pki, "").await;

    let r = burst(&gw, 150, 150, "/", Duration::from_secs(30)).await;
    assert_all_ok(&r, 150);
    assert_eq!(stat(&origin, |s| &s.peak_active), 150);
    assert_eq!(stat(&origin, |s| &s.connections), 2);
    assert_eq!(stat(&origin, |s| &s.full_handshakes), 1);
    assert_eq!(stat(&origin, |s| &s.resumed_handshakes), 1);

    let pool = gw.origin("app").unwrap();
    let mut kinds: Vec<_> = pool.stats().iter().map(|c| c.resumed).collect();
    kinds.sort();
    assert_eq!(kinds, vec![Some(false), Some(true)]);
    assert_eq!(pool.metrics().handshakes_full.get(), 1);
    assert_eq!(pool.metrics().handshakes_resumed.get(), 1);
    assert!(gw.shutdown().await);
}

/// A cold burst of 1,000 requests on a fresh gateway waits for one dial instead of opening
/// 1,000 connections: with max_streams 1000 the origin sees exactly one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_burst_waits_for_one_dial() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2()
        .max_streams(1000)
        .delay(Duration::from_millis(1500))
        .start(&pki)
        .await
        .unwrap();
    let (gw, _files) = gateway_for(&origin, &pki, "").await;

    let r = burst(&gw, 1000, 1000, "/", Duration::from_secs(60)).await;
    assert_all_ok(&r, 1000);
    assert_eq!(stat(&origin, |s| &s.peak_active), 1000);
    assert_eq!(
        stat(&origin, |s| &s.connections),
        1,
        "a cold burst must share one connection"
    );
    assert_eq!(stat(&origin, |s| &s.full_handshakes), 1);
    let stats = gw.origin("app").unwrap().stats();
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert_eq!(stats[0].max_streams, 1000);
    assert!(gw.shutdown().await);
}

/// The bound that holds whatever the timing: dials are serialized and a connection is assumed
/// to carry `initial_max_streams` (100) streams until the origin's SETTINGS are seen, so a cold
/// burst of 1,000 opens at most ceil(1000/100) = 10 connections — never one per request — and
/// every request succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_burst_opens_at_most_burst_over_initial_max_streams() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2()
        .max_streams(1000)
        .delay(Duration::from_millis(1500))
        .start(&pki)
        .await
        .unwrap();
    let (gw, _files) = gateway_for(&origin, &pki, "").await;

    let r = burst(&gw, 1000, 1000, "/", Duration::from_secs(60)).await;
    assert_all_ok(&r, 1000);
    let conns = stat(&origin, |s| &s.connections);
    assert!(
        (1..=10).contains(&conns),
        "{conns} connections for a cold burst of 1,000"
    );
    assert_eq!(stat(&origin, |s| &s.full_handshakes), 1);
    assert_eq!(stat(&origin, |s| &s.resumed_handshakes), conns - 1);
    assert!(gw.shutdown().await);
}

/// Saturation below the cap: max_streams 10, 200 in flight → ceil(200/10) = 20 connections
/// when max_connections allows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturation_dials_one_connection_per_max_streams() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2()
        .max_streams(10)
        .delay(Duration::from_millis(1500))
        .start(&pki)
        .await
        .unwrap();
    let (gw, _files) = gateway_for(
        &origin,
        &pki,
        "max_connections = 32\ninitial_max_streams = 10",
    )
    .await;

    let r = burst(&gw, 200, 200, "/", Duration::from_secs(30)).await;
    assert_all_ok(&r, 200);
    assert_eq!(stat(&origin, |s| &s.peak_active), 200);
    assert_eq!(stat(&origin, |s| &s.connections), ceil_div(200, 10));
    assert_eq!(stat(&origin, |s| &s.full_handshakes), 1);
    assert_eq!(stat(&origin, |s| &s.resumed_handshakes), 19);
    assert_eq!(gw.origin("app").unwrap().stats().len(), 20);
    assert!(gw.shutdown().await);
}

/// Saturation at the cap: max_connections 5 × max_streams 10 = 50 streams; 200 requests queue
/// (pending_timeout is long enough) and all succeed, the origin never seeing a sixth connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturation_at_max_connections_queues_requests() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2()
        .max_streams(10)
        .delay(Duration::from_millis(300))
        .start(&pki)
        .await
        .unwrap();
    let (gw, _files) = gateway_for(
        &origin,
        &pki,
        "max_connections = 5\ninitial_max_streams = 10\npending_timeout = \"30s\"",
    )
    .await;

    let r = burst(&gw, 200, 200, "/", Duration::from_secs(30)).await;
    assert_all_ok(&r, 200);
    assert_eq!(
        stat(&origin, |s| &s.connections),
        5,
        "capped at max_connections"
    );
    assert_eq!(
        stat(&origin, |s| &s.peak_active),
        50,
        "5 connections × 10 streams"
    );
    // Four waves of 50 at 300 ms each: the requests really waited in the queue.
    assert!(
        r.quantile(1.0) >= Duration::from_millis(900),
        "max latency {:?}",
        r.quantile(1.0)
    );
    assert!(gw.origin("app").unwrap().stats().len() <= 5);
    assert!(gw.shutdown().await);
}

/// At the cap with a small queue: 10 streams busy, 20 requests queued, the other 70 get 503 at
/// once with `Retry-After` and a one-line body; the queued ones are served later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_503_with_retry_after() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().max_streams(10).start(&pki).await.unwrap();
    let (gw, _files) = gateway_for(
        &origin,
        &pki,
        "max_connections = 1\ninitial_max_streams = 10\nmax_pending = 20\npending_timeout = \"30s\"",
    )
    .await;
    // Warm up: the connection is open and its SETTINGS known before the burst.
    assert_eq!(get(gw.http_addrs[0], "app.test", "/").await.status, 200);

    let resps = tokio::time::timeout(
        Duration::from_secs(30),
        get_concurrent(gw.http_addrs[0], "app.test", "/delay/1000", 100),
    )
    .await
    .expect("burst timed out");
    let ok: Vec<_> = resps.iter().filter(|r| r.status == 200).collect();
    let busy: Vec<_> = resps.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok.len(), 30, "10 in flight + 20 queued");
    assert_eq!(busy.len(), 70);
    for r in &busy {
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.text(), "origin queue full\n");
    }
    assert_eq!(stat(&origin, |s| &s.connections), 1);
    assert_eq!(stat(&origin, |s| &s.requests), 31);
    assert!(gw.shutdown().await);
}

/// A request that waits longer than `pending_timeout` for a stream gets 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_timeout_answers_503() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().max_streams(10).start(&pki).await.unwrap();
    let (gw, _files) = gateway_for(
        &origin,
        &pki,
        "max_connections = 1\ninitial_max_streams = 10\npending_timeout = \"300ms\"",
    )
    .await;
    assert_eq!(get(gw.http_addrs[0], "app.test", "/").await.status, 200);

    let resps = tokio::time::timeout(
        Duration::from_secs(30),
        get_concurrent(gw.http_addrs[0], "app.test", "/delay/1500", 25),
    )
    .await
    .expect("burst timed out");
    let ok = resps.iter().filter(|r| r.status == 200).count();
    let timed_out: Vec<_> = resps.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok, 10);
    assert_eq!(timed_out.len(), 15);
    for r in &timed_out {
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.text(), "timed out waiting for an origin connection\n");
    }
    assert_eq!(stat(&origin, |s| &s.connections), 1);
    assert!(gw.shutdown().await);
}

/// The origin allows fewer streams (4) than `initial_max_streams` (the default 100, assumed
/// before a connection's SETTINGS arrive): streams over the origin's limit are refused
/// (REFUSED_STREAM, "no application processing", RFC 9113 §8.7) and must be retried
/// transparently — every request still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_limit_below_initial_max_streams_still_serves_everything() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2()
        .max_streams(4)
        .delay(Duration::from_millis(300))
        .start(&pki)
        .await
        .unwrap();
    let (gw, _files) = gateway_for(&origin, &pki, "max_connections = 64").await;

    let r = burst(&gw, 256, 256, "/", Duration::from_secs(60)).await;
    assert_all_ok(&r, 256);
    assert!(stat(&origin, |s| &s.connections) <= 64);
    assert!(gw.shutdown().await);
}

/// `min_connections` keeps that many connections open even when one would do (a multi-process
/// origin serves one connection per core): light sequential traffic opens exactly three, the
/// second and third resuming the first one's TLS session, and never a fourth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_connections_are_opened_and_no_more() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let (gw, _files) = gateway_for(&origin, &pki, "min_connections = 3").await;

    let mut client = support::Client::connect(gw.http_addrs[0]).await;
    for _ in 0..10 {
        assert_eq!(client.get("app.test", "/").await.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pool = gw.origin("app").unwrap();
    let three = support::wait_until(Duration::from_secs(5), || pool.stats().len() == 3).await;
    assert!(three, "{:?}", pool.stats());
    for _ in 0..10 {
        assert_eq!(client.get("app.test", "/").await.status, 200);
    }
    assert_eq!(stat(&origin, |s| &s.connections), 3);
    assert_eq!(stat(&origin, |s| &s.full_handshakes), 1);
    assert_eq!(stat(&origin, |s| &s.resumed_handshakes), 2);
    assert_eq!(pool.stats().iter().map(|c| c.served).sum::<u64>(), 20);
    assert!(gw.shutdown().await);
}
