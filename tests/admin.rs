//! The admin listener: `/healthz`, `/metrics` (Prometheus/OpenMetrics text with the DESIGN.md
//! names and labels) and `/pool` (JSON view of every origin's connections).

mod support;

use std::time::Duration;

use muxgate::testkit::origin::Origin;
use muxgate::testkit::pki::Pki;
use support::proxy_kit::RawConn;
use support::{
    admin_get, gateway_for, gateway_toml, https_url, init, metric_value, origin_toml,
    start_gateway, Client,
};

/// `/healthz` answers 200 `ok`; unknown admin paths are 404; the admin listener never proxies,
/// and it and its idle connections close at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_ok() {
    init();
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let (gw, _files) = gateway_for(&origin, &pki, "").await;

    let r = admin_get(&gw, "/healthz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok\n");
    assert!(r
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/plain")));

    let r = admin_get(&gw, "/nope").await;
    assert_eq!(r.status, 404);
    // Whatever the path, nothing reaches the origin through the admin listener.
    let r = admin_get(&gw, "/bytes/10").await;
    assert_eq!(r.status, 404);
    assert_eq!(origin.stats.get(|s| &s.requests), 0);
    assert_eq!(origin.stats.get(|s| &s.connections), 0);
    let admin = gw.admin_addr.expect("admin listener");
    // A scraper's keep-alive connection, idle when shutdown comes.
    let mut scraper = RawConn::connect(admin).await;
    scraper
        .send(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await;
    assert_eq!(scraper.read_response(false).await.status, 200);
    assert!(gw.shutdown().await);
    assert!(
        scraper.closed_within(Duration::from_secs(3)).await,
        "idle admin connection left open after shutdown"
    );
    // Shutdown closes the admin listener too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpStream::connect(admin).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            r => assert!(
                tokio::time::Instant::now() < deadline,
                "admin listener still accepting after shutdown: {r:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An admin connection that does not complete its request head within `client.header_timeout`
/// is closed, whether it sent part of one or nothing (a slow client cannot hold the admin
/// listener's connections open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connection_without_a_complete_head_is_closed() {
    init();
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let files = pki.write().unwrap();
    let tables = origin_toml("app", &["*"], &https_url(&origin), Some(&files.ca), "")
        + "\n[client]\nheader_timeout = \"300ms\"\n";
    let gw = start_gateway(&gateway_toml("", &tables)).await;
    let admin = gw.admin_addr.expect("admin listener");
    // Before the connections: each one's timer starts after this.
    let t0 = std::time::Instant::now();
    let mut silent = RawConn::connect(admin).await;
    let mut slow = RawConn::connect(admin).await;
    slow.send(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n").await;
    assert!(
        slow.closed_within(Duration::from_secs(5)).await,
        "half a request head held the admin connection open"
    );
    // One that sends nothing at all (or idles between requests) is closed the same way.
    assert!(
        silent.closed_within(Duration::from_secs(5)).await,
        "a silent admin connection was held open"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(290),
        "closed before the header timeout: {:?}",
        t0.elapsed()
    );
    // The listener still serves.
    assert_eq!(admin_get(&gw, "/healthz").await.status, 200);
    assert!(gw.shutdown().await);
}

/// `admin.max_connections` caps open admin connections: past it a new one is closed at accept
/// without an answer and counted; once one of the open ones closes, the listener serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_past_the_limit_are_refused() {
    init();
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let files = pki.write().unwrap();
    // Right after `[admin]`, so the key lands in that table.
    let tables = "max_connections = 2\n".to_string()
        + &origin_toml("app", &["*"], &https_url(&origin), Some(&files.ca), "");
    let gw = start_gateway(&gateway_toml("", &tables)).await;
    let admin = gw.admin_addr.expect("admin listener");
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n";
    // Two keep-alive connections, each answered once, hold both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = RawConn::connect(admin).await;
        c.send(healthz).await;
        assert_eq!(c.read_response(false).await.status, 200);
        held.push(c);
    }
    let mut third = RawConn::connect(admin).await;
    assert!(
        third.closed_within(Duration::from_secs(5)).await,
        "a third admin connection was accepted past admin.max_connections = 2"
    );
    // The held connections close; their slots are free once the gateway sees that. Until
    // then a new connection is refused too, and counted.
    drop(held);
    let mut refused = 1.0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Nothing sent first: a refused connection then ends with a clean close, and an
        // accepted one waits silently for its request (2 s is far inside the 30 s header
        // timeout, and a refusal is seen at once).
        let mut c = RawConn::connect(admin).await;
        if !c.closed_within(Duration::from_secs(2)).await {
            c.send(healthz).await;
            assert_eq!(c.read_response(false).await.status, 200);
            break;
        }
        refused += 1.0;
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connections' slots were not freed"
        );
    }
    // Read in process: an admin request would need a slot of its own.
    let text = gw.metrics().render();
    let series = "muxgate_downstream_connections_refused_total{reason=\"admin_limit\"}";
    assert_eq!(metric_value(&text, series), Some(refused), "{text}");
    assert!(gw.shutdown().await);
}

/// After traffic, `/metrics` reports the one h2 connection opened with one full handshake, the
/// answered requests, an open connection and no stream left active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_handshakes_and_requests() {
    init();
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let (gw, _files) = gateway_for(&origin, &pki, "").await;

    let before = admin_get(&gw, "/metrics").await;
    assert_eq!(before.status, 200);
    let text = before.text();
    assert_eq!(
        metric_value(
            &text,
            "muxgate_upstream_connections_total{origin=\"app\",protocol=\"h2\"}"
        )
        .unwrap_or(0.0),
        0.0,
        "{text}"
    );

    let mut client = Client::connect(gw.http_addrs[0]).await;
    for _ in 0..5 {
        assert_eq!(client.get("app.test", "/").await.status, 200);
    }
    assert_eq!(client.get("app.test", "/status/404").await.status, 404);

    let r = admin_get(&gw, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/openmetrics-text")),
        "{:?}",
        r.headers
    );
    let text = r.text();
    let v = |series: &str| metric_value(&text, series);
    assert_eq!(
        v("muxgate_upstream_connections_total{origin=\"app\",protocol=\"h2\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        v("muxgate_upstream_tls_handshakes_total{origin=\"app\",resumed=\"false\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        v("muxgate_upstream_tls_handshakes_total{origin=\"app\",resumed=\"true\"}").unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        v("muxgate_upstream_connections_open{origin=\"app\",protocol=\"h2\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        v("muxgate_requests_total{origin=\"app\",status=\"200\"}"),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        v("muxgate_requests_total{origin=\"app\",status=\"404\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        v("muxgate_request_duration_seconds_count{origin=\"app\"}"),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        v("muxgate_downstream_connections_total{protocol=\"http/1.1\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    // The response body is read to the end, so the stream slot is free again.
    let idle = support::wait_until(Duration::from_secs(5), || {
        metric_value(
            &gw.metrics().render(),
            "muxgate_upstream_streams_active{origin=\"app\"}",
        ) == Some(0.0)
    })
    .await;
    assert!(idle, "{}", gw.metrics().render());
    assert!(gw.shutdown().await);
}

/// A second connection (forced by in-flight requests over max_streams) shows up in the metrics
/// as a resumed handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_resumed_handshakes() {
    init();
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2()
        .max_streams(2)
        .delay(Duration::from_millis(500))
        .start(&pki)
        .await
        .unwrap();
    let (gw, _files) = gateway_for(&origin, &pki, "initial_max_streams = 2").await;

    let resps = tokio::time::timeout(
        Duration::from_secs(20),
        support::get_concurrent(gw.http_addrs[0], "app.test", "/", 4),
    )
    .await
    .expect("requests timed out");
    assert!(resps.iter().all(|r| r.status == 200));
    assert_eq!(origin.stats.get(|s| &s.connections), 2);

    let text = admin_get(&gw, "/metrics").await.text();
    let v = |series: &str| metric_value(&text, series);
    assert_eq!(
        v("muxgate_upstream_connections_total{origin=\"app\",protocol=\"h2\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        v("muxgate_upstream_tls_handshakes_total{origin=\"app\",resumed=\"false\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        v("muxgate_upstream_tls_handshakes_total{origin=\"app\",resumed=\"true\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(gw.shutdown().await);
}

/// `/pool` lists each origin with its protocol and connections (id, protocol, streams, limit,
/// requests carried, handshake kind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_lists_the_connection() {
    init();
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().max_streams(50).start(&pki).await.unwrap();
    let (gw, _files) = gateway_for(&origin, &pki, "").await;

    let r = admin_get(&gw, "/pool").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(v[0]["origin"], "app");
    assert_eq!(
        v[0]["protocol"], "unknown",
        "no connection before the first request"
    );
    assert_eq!(v[0]["connections"].as_array().map(Vec::len), Some(0));

    let mut client = Client::connect(gw.http_addrs[0]).await;
    for _ in 0..3 {
        assert_eq!(client.get("app.test", "/").await.status, 200);
    }
    // The origin's SETTINGS (max 50 streams) are in once a later request was dispatched.
    let settled = support::wait_until(Duration::from_secs(5), || {
        gw.origin("app")
            .is_some_and(|p| p.stats().first().is_some_and(|c| c.in_flight == 0))
    })
    .await;
    assert!(settled);

    let r = admin_get(&gw, "/pool").await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    let origins = v.as_array().expect("array of origins");
    assert_eq!(origins.len(), 1, "{v}");
    let o = &origins[0];
    assert_eq!(o["origin"], "app");
    assert_eq!(o["protocol"], "h2");
    let conns = o["connections"].as_array().expect("connections");
    assert_eq!(conns.len(), 1, "{v}");
    let c = &conns[0];
    assert_eq!(c["protocol"], "h2");
    assert_eq!(c["handshake"], "full");
    assert_eq!(c["requests"], 3);
    assert_eq!(c["streams_in_flight"], 0);
    assert_eq!(c["max_streams"], 50, "{v}");
    assert_eq!(c["draining"], false);
    assert!(c["id"].as_u64().is_some_and(|id| id > 0));
    assert!(c["age_seconds"].as_f64().is_some_and(|a| a >= 0.0));
    let stats = gw.origin("app").unwrap().stats();
    assert_eq!(c["id"].as_u64(), Some(stats[0].id));
    assert!(gw.shutdown().await);
}
