//! The pool grows under load and shrinks back when load drops: connections opened for a burst
//! fall idle (new streams go first-fit to the oldest connections) and `idle_timeout` closes
//! them; `muxgate_upstream_connections_open` follows.

mod support;

use std::time::{Duration, Instant};

use muxgate::testkit::load::{self, LoadSpec};
use muxgate::testkit::origin::Origin;
use support::*;

fn open_gauge(gw: &muxgate::Gateway) -> i64 {
    let text = gw.metrics().render();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("muxgate_upstream_connections_open{origin=\"app\",protocol=\"h2\"} ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_connections_close_after_idle_timeout() {
    init();
    let (pki, _files) = pki();
    let origin = Origin::h2()
        .max_streams(10)
        .delay(Duration::from_millis(300))
        .start(&pki)
        .await
        .expect("origin");
    let (gw, _f) = gateway_for(
        &origin,
        &pki,
        "idle_timeout = \"400ms\"\nmax_connections = 10",
    )
    .await;
    let spec = LoadSpec {
        close: false,
        target: gw.http_addrs[0],
        tls: None,
        host: "app.test".into(),
        path: "/".into(),
        connections: 50,
        requests: 50,
    };
    let r = tokio::time::timeout(Duration::from_secs(30), load::run(spec))
        .await
        .expect("load timed out");
    assert_eq!(r.ok(), 50, "{r:?}");
    // 50 in flight at 10 streams per connection: five connections.
    assert_eq!(origin.stats.get(|s| &s.connections), 5);
    assert_eq!(open_gauge(&gw), 5);
    // Light sequential traffic keeps one connection busy; the other four fall idle and close.
    let mut client = Client::connect(gw.http_addrs[0]).await;
    let until = Instant::now() + Duration::from_millis(2000);
    while Instant::now() < until {
        assert_eq!(client.get("app.test", "/").await.status, 200);
    }
    let pool = gw.origin("app").expect("app");
    assert_eq!(pool.stats().len(), 1, "{:?}", pool.stats());
    let deadline = Instant::now() + Duration::from_secs(3);
    while open_gauge(&gw) != 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open_gauge(&gw), 1, "upstream_connections_open");
    assert_eq!(
        origin.stats.get(|s| &s.connections),
        5,
        "no new connection was needed"
    );
    // With no traffic at all, the last one closes too.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(pool.stats().len(), 0);
}
