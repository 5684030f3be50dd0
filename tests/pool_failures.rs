//! The HTTP/2 pool when the origin misbehaves or goes away: GOAWAY under load, REFUSED_STREAM,
//! streams the origin reset, a dead peer detected by PING, and `max_connection_age` rotation
//! with session resumption (TLS 1.3 and TLS 1.2). Origins are `testkit::h2ctl` servers built on
//! the h2 crate.

mod support;

use std::time::Duration;

use muxgate::testkit::h2ctl::{ControlOrigin, RunningControl};
use muxgate::testkit::load::{self, LoadSpec};
use muxgate::testkit::pki::{Pki, PkiFiles};
use muxgate::Gateway;
use support::*;

async fn gateway(origin: &RunningControl, pki: &Pki, extra: &str) -> (Gateway, PkiFiles) {
    let files = pki.write().expect("pki files");
    let url = format!("https://localhost:{}", origin.addr.port());
    let toml = gateway_toml(
        "",
        &origin_toml("app", &["*"], &url, Some(&files.ca), extra),
    );
    (start_gateway(&toml).await, files)
}

fn spec(gw: &Gateway, connections: usize, requests: usize) -> LoadSpec {
    LoadSpec {
        close: false,
        target: gw.http_addrs[0],
        tls: None,
        host: "app.test".into(),
        path: "/".into(),
        connections,
        requests,
    }
}

fn retries(gw: &Gateway, reason: &str) -> u64 {
    let text = gw.metrics().render();
    let needle = format!("muxgate_upstream_retries_total{{origin=\"app\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(needle.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn goaway_run() -> (Gateway, RunningControl, PkiFiles) {
    init();
    let pki = Pki::localhost().expect("pki");
    let origin = ControlOrigin::new()
        .goaway_after(100)
        .start(&pki)
        .await
        .expect("origin");
    let (gw, files) = gateway(&origin, &pki, "").await;
    let report = tokio::time::timeout(Duration::from_secs(60), load::run(spec(&gw, 50, 3000)))
        .await
        .expect("load timed out");
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.ok(), 3000, "{report:?}");
    (gw, origin, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_every_100_streams_under_load_loses_nothing() {
    let (gw, origin, _files) = goaway_run().await;
    let s = &origin.stats;
    assert!(
        s.get(|s| &s.goaways) >= 20,
        "goaways: {}",
        s.get(|s| &s.goaways)
    );
    assert!(s.get(|s| &s.connections) >= 25);
    // Every reconnect after the first resumed the TLS session.
    assert_eq!(s.get(|s| &s.full_handshakes), 1, "{s:?}");
    assert!(s.get(|s| &s.answered) >= 3000);
    assert!(retries(&gw, "not_sent") + retries(&gw, "goaway") > 0);
}

/// Regression: through hyper's HTTP/2 dispatcher a stream written just before a GOAWAY was
/// reported with the GOAWAY error and retried although the origin had processed it (about once
/// in 3 runs). Driving h2 directly makes "above last-stream-id" exact. Five runs of 3,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn goaway_never_duplicates_a_request() {
    for _ in 0..5 {
        let (gw, origin, _files) = goaway_run().await;
        assert_eq!(
            origin.stats.get(|s| &s.answered),
            3000,
            "duplicate at the origin; retries: not_sent {} goaway {}",
            retries(&gw, "not_sent"),
            retries(&gw, "goaway"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_retried_transparently() {
    init();
    let pki = Pki::localhost().expect("pki");
    let origin = ControlOrigin::new()
        .refuse_first(3)
        .start(&pki)
        .await
        .expect("origin");
    let (gw, _files) = gateway(&origin, &pki, "").await;
    let mut client = Client::connect(gw.http_addrs[0]).await;
    for _ in 0..5 {
        let r = client.get("app.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(origin.stats.get(|s| &s.refused), 3);
    assert_eq!(origin.stats.get(|s| &s.answered), 5);
    assert_eq!(retries(&gw, "refused_stream"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_origin_reset_is_not_retried() {
    init();
    let pki = Pki::localhost().expect("pki");
    let origin = ControlOrigin::new()
        .reset_all()
        .start(&pki)
        .await
        .expect("origin");
    let (gw, _files) = gateway(&origin, &pki, "").await;
    let r = get(gw.http_addrs[0], "app.test", "/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().starts_with("origin connection reset"),
        "{}",
        r.text()
    );
    assert_eq!(r.text().lines().count(), 1);
    // Exactly one attempt: the origin may have processed it.
    assert_eq!(origin.stats.get(|s| &s.reset), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_detects_a_dead_connection_and_it_is_replaced() {
    init();
    let pki = Pki::localhost().expect("pki");
    let origin = ControlOrigin::new()
        .stall_after(1)
        .start(&pki)
        .await
        .expect("origin");
    let (gw, _files) = gateway(
        &origin,
        &pki,
        "keepalive_interval = \"200ms\"\nkeepalive_timeout = \"300ms\"\nresponse_header_timeout = \"30s\"",
    )
    .await;
    let addr = gw.http_addrs[0];
    assert_eq!(get(addr, "app.test", "/").await.status, 200);
    // The second stream lands on a connection whose peer stopped reading: PING must notice
    // well before the 30 s response timeout.
    let t0 = std::time::Instant::now();
    let r = get(addr, "app.test", "/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    // A fresh connection serves the next request.
    let r = get(addr, "app.test", "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(origin.stats.get(|s| &s.connections), 2);
}

async fn rotation(tls12: bool) {
    init();
    let pki = Pki::localhost().expect("pki");
    let mut b = ControlOrigin::new();
    if tls12 {
        b = b.tls12_only();
    }
    let origin = b.start(&pki).await.expect("origin");
    let (gw, _files) = gateway(&origin, &pki, "max_connection_age = \"300ms\"").await;
    let mut client = Client::connect(gw.http_addrs[0]).await;
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    let mut n = 0;
    while std::time::Instant::now() < until {
        let r = client.get("app.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = &origin.stats;
    assert!(s.get(|s| &s.connections) >= 3, "rotated: {s:?}");
    assert_eq!(s.get(|s| &s.full_handshakes), 1, "{s:?}");
    assert_eq!(
        s.get(|s| &s.resumed_handshakes),
        s.get(|s| &s.connections) - 1,
        "{s:?}"
    );
    assert_eq!(s.get(|s| &s.answered), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_age_rotates_with_resumption_tls13() {
    rotation(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_age_rotates_with_resumption_tls12() {
    rotation(true).await;
}

async fn aborting(extra: &str) -> (Gateway, RunningControl, PkiFiles) {
    init();
    let pki = Pki::localhost().expect("pki");
    let origin = ControlOrigin::new()
        .abort_first(1)
        .start(&pki)
        .await
        .expect("origin");
    let (gw, files) = gateway(&origin, &pki, extra).await;
    (gw, origin, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_lost_mid_request_is_a_502_by_default() {
    let (gw, origin, _files) = aborting("").await;
    let r = get(gw.http_addrs[0], "app.test", "/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    // The origin saw the request once: never duplicated without opt-in.
    assert_eq!(origin.stats.get(|s| &s.received), 1);
    assert_eq!(retries(&gw, "idempotent"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_idempotent_retries_a_get_once() {
    let (gw, origin, _files) = aborting("retry_idempotent = true").await;
    let r = get(gw.http_addrs[0], "app.test", "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(origin.stats.get(|s| &s.received), 2);
    assert_eq!(retries(&gw, "idempotent"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_idempotent_never_retries_a_post() {
    let (gw, origin, _files) = aborting("retry_idempotent = true").await;
    let mut c = Client::connect(gw.http_addrs[0]).await;
    let post = http::Request::post("/")
        .header("host", "app.test")
        .body(http_body_util::Empty::new())
        .expect("request");
    let r = c.send(post).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(origin.stats.get(|s| &s.received), 1);
}
