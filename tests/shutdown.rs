//! Graceful shutdown (DESIGN.md CLI contract: "stop accepting, finish in-flight requests up to a
//! drain timeout"): a request in flight when `Gateway::shutdown` is called completes, idle
//! keep-alive connections (and connections that never sent a request) do not hold the drain up, the drain gives up at `drain_timeout`, and
//! the listener refuses new connections afterwards.

mod support;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use support::proxy_kit::{bounded, head, setup, RawConn, Setup, BOTH};
use tokio::net::TcpStream;

fn drain(timeout: &str) -> String {
    format!("\n[client]\ndrain_timeout = \"{timeout}\"\n")
}

/// Polls until the origin is serving `n` requests at once.
async fn until_origin_active(s: &Setup, n: u64) {
    let origin = s.origin.stats.clone();
    assert!(
        support::wait_until(Duration::from_secs(5), || origin.get(|st| &st.active) == n).await,
        "origin never had {n} request(s) in flight"
    );
}

#[tokio::test]
async fn in_flight_request_completes_and_new_connections_are_refused() {
    bounded(30, async {
        for up in BOTH {
            let s = setup(up, "", &drain("5s")).await;
            let addr = s.addr;
            let mut c = RawConn::connect(addr).await;
            c.send(head("GET", "/delay/500", "app.test", "").as_bytes())
                .await;
            until_origin_active(&s, 1).await;

            let Setup { gw, origin, .. } = s;
            let t0 = Instant::now();
            let shutdown = tokio::spawn(gw.shutdown());
            let r = c.read_response(false).await;
            assert_eq!((r.status, r.text().as_str()), (200, "delayed\n"), "{up:?}");
            // The connection is not kept alive past the drain.
            assert_eq!(r.header("connection"), Some("close"), "{up:?}");
            assert!(c.closed_within(Duration::from_secs(5)).await, "{up:?}");

            let drained = shutdown.await.expect("shutdown task");
            assert!(drained, "{up:?}: shutdown reported a timed-out drain");
            assert!(
                t0.elapsed() < Duration::from_secs(4),
                "{up:?}: drain took {:?}",
                t0.elapsed()
            );
            let refused = TcpStream::connect(addr).await;
            assert_eq!(
                refused.as_ref().err().map(|e| e.kind()),
                Some(ErrorKind::ConnectionRefused),
                "{up:?}: listener still accepting after shutdown: {refused:?}"
            );
            assert_eq!(origin.stats.get(|st| &st.requests), 1, "{up:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_delay_the_drain() {
    bounded(30, async {
        for up in BOTH {
            let s = setup(up, "", &drain("10s")).await;
            // Three keep-alive connections, each idle after one exchange.
            let mut conns = Vec::new();
            for _ in 0..3 {
                let mut c = RawConn::connect(s.addr).await;
                c.send(head("GET", "/status/201", "app.test", "").as_bytes())
                    .await;
                assert_eq!(c.read_response(false).await.status, 201, "{up:?}");
                conns.push(c);
            }
            // And one that connected but never sent a byte.
            conns.push(RawConn::connect(s.addr).await);
            // Let the gateway accept it before shutting down.
            let gauge = s.gw.metrics().clone();
            assert!(
                support::wait_until(Duration::from_secs(5), || {
                    support::metric_value(&gauge.render(), "muxgate_downstream_connections_open")
                        == Some(4.0)
                })
                .await,
                "{up:?}: {}",
                gauge.render()
            );
            let t0 = Instant::now();
            let drained = s.gw.shutdown().await;
            assert!(drained, "{up:?}");
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "{up:?}: idle connections held the drain for {:?}",
                t0.elapsed()
            );
            for c in &mut conns {
                assert!(c.closed_within(Duration::from_secs(2)).await, "{up:?}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn drain_gives_up_at_drain_timeout() {
    bounded(30, async {
        let s = setup(support::proxy_kit::Up::H2, "", &drain("300ms")).await;
        let mut c = RawConn::connect(s.addr).await;
        c.send(head("GET", "/delay/3000", "app.test", "").as_bytes())
            .await;
        until_origin_active(&s, 1).await;
        let t0 = Instant::now();
        let drained = s.gw.shutdown().await;
        let took = t0.elapsed();
        assert!(
            !drained,
            "shutdown claimed a complete drain with a request in flight"
        );
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "drain took {took:?}"
        );
        drop(c);
    })
    .await;
}
