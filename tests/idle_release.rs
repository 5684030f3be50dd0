//! `client.idle_release_after`: an idle HTTP/1.1 keep-alive client connection gives its HTTP
//! state (hyper's buffers) back and waits on the bare socket; its next request is served as if
//! nothing happened, over plain TCP and TLS, including a head that was half-sent when it was
//! released. The header timeout, shutdown and a client's close still end it.

mod support;

use std::time::{Duration, Instant};

use muxgate::testkit::origin::Origin;
use muxgate::testkit::pki::Pki;
use muxgate::Gateway;
use support::proxy_kit::{bounded, head, setup, RawConn, BOTH};
use support::{
    gateway_toml, https_url, metric_value, origin_toml, start_gateway, wait_until, Client,
};

const RELEASE: &str = "[client]\nidle_release_after = \"200ms\"\n";

/// A series of the gateway's metrics; -1 when it is missing.
fn metric(gw: &Gateway, series: &str) -> f64 {
    metric_value(&gw.metrics().render(), series).unwrap_or(-1.0)
}

/// Connections released now (`muxgate_downstream_connections_released`).
fn released(gw: &Gateway) -> f64 {
    metric(gw, "muxgate_downstream_connections_released")
}

/// Releases so far (`muxgate_downstream_connection_releases_total`).
fn releases(gw: &Gateway) -> f64 {
    metric(gw, "muxgate_downstream_connection_releases_total")
}

async fn released_becomes(gw: &Gateway, n: f64) -> bool {
    wait_until(Duration::from_secs(5), || released(gw) == n).await
}

#[tokio::test]
async fn an_idle_connection_is_released_and_serves_its_next_requests() {
    bounded(60, async {
        for up in BOTH {
            let s = setup(up, "", RELEASE).await;
            let mut c = RawConn::connect(s.addr).await;
            for round in 0..3 {
                c.send(head("GET", "/bytes/3000", "app.test", "").as_bytes())
                    .await;
                let r = c.read_response(false).await;
                assert_eq!((r.status, r.body.len()), (200, 3000), "{up:?} {round}");
                assert!(
                    released_becomes(&s.gw, 1.0).await,
                    "{up:?} {round}: not released ({})",
                    released(&s.gw)
                );
                assert_eq!(releases(&s.gw), f64::from(round + 1), "{up:?}");
            }
            // A request whose head comes in two writes after the release.
            c.send(b"GET /status/203 HTTP/1.1\r\nHo").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.send(b"st: app.test\r\n\r\n").await;
            let r = c.read_response(false).await;
            assert_eq!(r.status, 203, "{up:?}");
            assert_eq!(s.origin_requests(), 4, "{up:?}");
            // The client closes while released: the connection ends, the gauge goes back.
            assert!(released_becomes(&s.gw, 1.0).await, "{up:?}");
            drop(c);
            assert!(released_becomes(&s.gw, 0.0).await, "{up:?}");
            s.stop().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_head_half_read_when_released_is_replayed() {
    bounded(30, async {
        let s = setup(support::proxy_kit::Up::H2, "", RELEASE).await;
        let mut c = RawConn::connect(s.addr).await;
        // A response, then the start of the next head, which hyper has read but not parsed
        // when the connection is released.
        let mut batch = head("GET", "/status/202", "app.test", "");
        batch.push_str("GET /status/203 HTTP/1.1\r\nHost: app");
        c.send(batch.as_bytes()).await;
        let r = c.read_response(false).await;
        assert_eq!(r.status, 202);
        tokio::time::sleep(Duration::from_millis(600)).await;
        // Released with the half head in hyper's buffer: nothing to wait for on the socket.
        assert_eq!(releases(&s.gw), 1.0);
        assert_eq!(released(&s.gw), 0.0);
        c.send(b".test\r\nX-Late: 1\r\n\r\n").await;
        let r = c.read_response(false).await;
        assert_eq!(r.status, 203, "{}", r.text());
        assert_eq!(s.origin_requests(), 2);
        // Released after it, like any idle connection.
        assert!(released_becomes(&s.gw, 1.0).await);
        assert_eq!(releases(&s.gw), 2.0);
        s.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_request_with_a_body_keeps_the_state_until_a_bodiless_one() {
    bounded(30, async {
        let s = setup(support::proxy_kit::Up::H2, "", RELEASE).await;
        let mut c = RawConn::connect(s.addr).await;
        let mut post = head("POST", "/echo", "app.test", "Content-Length: 5\r\n");
        post.push_str("hello");
        c.send(post.as_bytes()).await;
        let r = c.read_response(false).await;
        assert_eq!((r.status, r.text().as_str()), (200, "hello"));
        // Three release periods idle: hyper could still be draining a body, so it stays.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!((released(&s.gw), releases(&s.gw)), (0.0, 0.0));
        c.send(head("GET", "/status/204", "app.test", "").as_bytes())
            .await;
        assert_eq!(c.read_response(false).await.status, 204);
        assert!(released_becomes(&s.gw, 1.0).await);
        s.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_released_connection_closes_at_the_header_timeout_and_on_shutdown() {
    bounded(30, async {
        let tables = format!("{RELEASE}header_timeout = \"1s\"\n");
        let s = setup(support::proxy_kit::Up::H2, "", &tables).await;
        let mut c = RawConn::connect(s.addr).await;
        // Before the request: the gateway's idle clock starts after this, whenever the client
        // gets to read the response.
        let sent = Instant::now();
        c.send(head("GET", "/status/200", "app.test", "").as_bytes())
            .await;
        assert_eq!(c.read_response(false).await.status, 200);
        assert!(released_becomes(&s.gw, 1.0).await);
        assert!(c.read_head().await.is_none(), "closed without a response");
        let waited = sent.elapsed();
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_secs(8),
            "closed after {waited:?}"
        );
        assert!(released_becomes(&s.gw, 0.0).await);
        let m = s.gw.metrics().render();
        assert_eq!(
            metric_value(
                &m,
                "muxgate_downstream_connections_closed_total{reason=\"header_timeout\"}"
            ),
            Some(1.0),
            "{m}"
        );

        // Shutdown closes a released connection at once (nothing is in flight on it).
        let mut c = RawConn::connect(s.addr).await;
        c.send(head("GET", "/status/200", "app.test", "").as_bytes())
            .await;
        assert_eq!(c.read_response(false).await.status, 200);
        assert!(released_becomes(&s.gw, 1.0).await);
        let t = Instant::now();
        s.stop().await;
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(c.read_head().await.is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_connection_is_released_and_reused() {
    bounded(30, async {
        support::init();
        let pki = Pki::localhost().unwrap();
        let files = pki.write().unwrap();
        let origin = Origin::h2().start(&pki).await.unwrap();
        let tables = format!(
            "{RELEASE}\n[[listen_tls]]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n{}",
            files.cert.display().to_string(),
            files.key.display().to_string(),
            origin_toml("app", &["*"], &https_url(&origin), Some(&files.ca), "")
        );
        let gw = start_gateway(&gateway_toml("", &tables)).await;
        let cfg = pki.client_config(&[b"http/1.1"]).unwrap();
        let (mut client, _) = Client::connect_tls(gw.tls_addrs[0], cfg, "localhost")
            .await
            .expect("TLS connect");
        for round in 0..3 {
            let r = client.get("localhost", "/bytes/20000").await;
            assert_eq!(r.status, 200, "{round}");
            assert_eq!(r.body.len(), 20_000, "{round}");
            assert!(released_becomes(&gw, 1.0).await, "{round}");
        }
        assert_eq!(origin.stats.get(|s| &s.requests), 3);
        // One client connection all along.
        let m = gw.metrics().render();
        assert_eq!(
            metric_value(
                &m,
                "muxgate_downstream_connections_total{protocol=\"http/1.1+tls\"}"
            ),
            Some(1.0),
            "{m}"
        );
        drop(client);
        assert!(released_becomes(&gw, 0.0).await);
        assert!(gw.shutdown().await);
    })
    .await;
}

/// A cache hit is answered within the poll that read its head: the connection's deadline must
/// still move to the release (here after a POST had put it at the 60 s header timeout).
#[tokio::test]
async fn a_connection_whose_last_answer_was_a_cache_hit_is_released() {
    bounded(30, async {
        let tables = format!("{RELEASE}header_timeout = \"60s\"\n[cache]\nenabled = true\n");
        let s = setup(support::proxy_kit::Up::H2, "", &tables).await;
        let mut warm = RawConn::connect(s.addr).await;
        warm.send(head("GET", "/cached/100", "app.test", "Connection: close\r\n").as_bytes())
            .await;
        assert_eq!(warm.read_response(false).await.status, 200);
        for round in 0..5 {
            let mut c = RawConn::connect(s.addr).await;
            let mut post = head("POST", "/echo", "app.test", "Content-Length: 2\r\n");
            post.push_str("hi");
            c.send(post.as_bytes()).await;
            assert_eq!(c.read_response(false).await.status, 200);
            c.send(head("GET", "/cached/100", "app.test", "").as_bytes())
                .await;
            let r = c.read_response(false).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.header("x-cache-status"), Some("HIT"), "{round}");
            assert!(released_becomes(&s.gw, 1.0).await, "{round}: not released");
            drop(c);
            assert!(released_becomes(&s.gw, 0.0).await);
        }
        assert_eq!(s.origin_requests(), 6);
        s.stop().await;
    })
    .await;
}
