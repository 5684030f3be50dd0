//! WebSocket and other Upgrades from HTTP/1.1 clients, end to end over real sockets and TLS:
//! RFC 8441 tunnels on the shared h2 connection, dedicated HTTP/1.1 connections otherwise,
//! `h2c` never forwarded, the idle timeout and `max_upgraded`.

mod support;
#[path = "support/ws.rs"]
mod ws;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use muxgate::testkit::pki::Pki;
use muxgate::Gateway;
use support::proxy_kit::bounded;
use support::{gateway_toml, metric_value, origin_toml, raw_request, start_gateway};
use tokio_tungstenite::tungstenite::Message;
use ws::{session, WsOrigin};

/// Sockets in the concurrency tests.
const SOCKETS: usize = 120;
/// Text messages per socket (as many binary ones follow each).
const MESSAGES: usize = 10;

async fn gateway(origin_addr: std::net::SocketAddr, ca: &std::path::Path, extra: &str) -> Gateway {
    let toml = gateway_toml(
        "",
        &origin_toml(
            "app",
            &["*"],
            &format!("https://localhost:{}", origin_addr.port()),
            Some(ca),
            extra,
        ),
    );
    start_gateway(&toml).await
}

async fn metrics(gw: &Gateway) -> String {
    gw.metrics().render()
}

fn metric(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or(0.0)
}

/// `series` once it reads `want`, or its value after 5 s. A tunnel's gauge is lowered when the
/// tunnel task ends, which may be a moment after both peers saw the close.
async fn settled(gw: &Gateway, series: &str, want: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = metric(&metrics(gw).await, series);
        if v == want || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Shuts `gw` down (it must drain within 20 s with the tunnel open) and checks that the
/// client's WebSocket `c` ends within 10 s.
async fn shutdown_closes<S>(gw: Gateway, c: &mut S)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let drained = tokio::time::timeout(Duration::from_secs(20), gw.shutdown())
        .await
        .expect("shutdown hung");
    assert!(drained, "gateway did not drain with a tunnel open");
    assert!(
        ends_within(c, Duration::from_secs(10)).await,
        "tunnel still open after shutdown"
    );
}

/// Whether the client's WebSocket `c` ends (closed or failed) within `limit`; messages still
/// arriving are skipped.
async fn ends_within<S>(c: &mut S, limit: Duration) -> bool
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(limit, async {
        loop {
            match c.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Runs `SOCKETS` sessions at once; returns every result.
async fn many_sessions(addr: std::net::SocketAddr) -> Vec<Result<ws::Session, String>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(SOCKETS));
    let mut tasks = Vec::new();
    for id in 0..SOCKETS {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            session(addr, "app.test", id, MESSAGES).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Err(format!("task: {e}"))));
    }
    out
}

fn check_sessions(results: &[Result<ws::Session, String>]) {
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} failed sessions: {errors:?}",
        errors.len()
    );
    for r in results.iter().flatten() {
        assert_eq!(r.sent, 2 * MESSAGES as u64, "{r:?}");
        assert_eq!(r.echoed, r.sent, "{r:?}");
        assert!(r.clean_close, "close handshake not completed: {r:?}");
    }
}

/// An HTTP/1.1-only TLS origin: every WebSocket gets a dedicated connection (one origin
/// connection per socket), the keep-alive pool's counts do not move, messages both ways and
/// the close handshake complete, and the gauge returns to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_dedicated_http1_connections() {
    support::init();
    bounded(120, async {
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("files");
        let origin = WsOrigin::h1().start(&pki).await;
        let gw = gateway(origin.addr, &files.ca, "").await;
        let addr = gw.http_addrs[0];
        // Protocol discovery: the first request seeds the keep-alive pool.
        let r = support::get(addr, "app.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let before = metrics(&gw).await;
        let h1_total = r#"muxgate_upstream_connections_total{origin="app",protocol="http/1.1"}"#;
        let h1_open = r#"muxgate_upstream_connections_open{origin="app",protocol="http/1.1"}"#;
        let base_conns = origin.stats.get(|s| &s.connections);

        let results = many_sessions(addr).await;
        check_sessions(&results);

        let st = &origin.stats;
        assert_eq!(st.get(|s| &s.ws_h1), SOCKETS as u64);
        assert_eq!(st.get(|s| &s.ws_h2), 0);
        assert_eq!(st.get(|s| &s.echoed), (SOCKETS * 2 * MESSAGES) as u64);
        // One dedicated origin connection per socket, nothing else.
        assert_eq!(st.get(|s| &s.connections) - base_conns, SOCKETS as u64);
        assert!(
            ws::eventually(Duration::from_secs(10), || {
                st.get(|s| &s.ws_closed_cleanly) == SOCKETS as u64
            })
            .await,
            "origin saw {} clean closes",
            st.get(|s| &s.ws_closed_cleanly)
        );
        let after = metrics(&gw).await;
        assert_eq!(
            metric(&after, h1_total),
            metric(&before, h1_total),
            "pool total moved"
        );
        assert_eq!(
            metric(&after, h1_open),
            metric(&before, h1_open),
            "pool open moved"
        );
        assert_eq!(
            metric(
                &after,
                r#"muxgate_upgraded_total{origin="app",via="http/1.1"}"#
            ),
            SOCKETS as f64
        );
        let open = r#"muxgate_upgraded_open{origin="app",via="http/1.1"}"#;
        let gw_ref = &gw;
        let mut zero = false;
        for _ in 0..500 {
            if metric(&metrics(gw_ref).await, open) == 0.0 {
                zero = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(zero, "upgraded_open did not return to 0");
        // The handshake the origin saw: Upgrade regenerated for the hop, key forwarded.
        let seen = origin.seen();
        let first = &seen[0];
        let get = |n: &str| first.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("upgrade"), Some("websocket"));
        assert_eq!(get("connection"), Some("upgrade"));
        assert!(get("sec-websocket-key").is_some());
        assert!(get("x-forwarded-for").is_some());

        // A declined upgrade is relayed as an ordinary response.
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            ws::connect(addr, "app.test", "/reject"),
        )
        .await
        .expect("reject timed out");
        match resp {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
            other => panic!("expected 403, got {other:?}"),
        }
        drop(files);
    })
    .await;
}

/// An h2 origin advertising SETTINGS_ENABLE_CONNECT_PROTOCOL: every WebSocket is an RFC 8441
/// stream on the gateway's shared connections (at most ceil(sockets / max_streams) of them),
/// ordinary GETs keep working meanwhile, and every stream slot is given back at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_rfc8441_share_h2_connections() {
    support::init();
    bounded(120, async {
        const MAX_STREAMS: u32 = 50;
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("files");
        let origin = WsOrigin::h2_connect()
            .max_streams(MAX_STREAMS)
            .start(&pki)
            .await;
        let gw = gateway(origin.addr, &files.ca, "").await;
        let addr = gw.http_addrs[0];

        let sessions = tokio::spawn(many_sessions(addr));
        // Ordinary GETs on the same origin while the tunnels run.
        let mut gets = 0;
        while !sessions.is_finished() {
            let r = support::get(addr, "app.test", "/").await;
            assert_eq!(r.status, 200, "{}", r.text());
            gets += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let results = sessions.await.expect("sessions");
        check_sessions(&results);
        assert!(gets >= 1);

        let st = &origin.stats;
        assert_eq!(st.get(|s| &s.ws_h2), SOCKETS as u64);
        assert_eq!(st.get(|s| &s.ws_h1), 0);
        assert_eq!(st.get(|s| &s.echoed), (SOCKETS * 2 * MESSAGES) as u64);
        assert!(st.get(|s| &s.gets) >= gets);
        let conns = st.get(|s| &s.connections);
        let bound = support::ceil_div(SOCKETS as u64, u64::from(MAX_STREAMS));
        assert!(
            conns <= bound,
            "{conns} origin connections for {SOCKETS} tunnels (≤ {bound})"
        );
        assert_eq!(st.get(|s| &s.h1_connections), 0);

        // RFC 8441 §4/§5: CONNECT with :protocol, :scheme, :path; no key, version forwarded.
        let seen = origin.seen();
        let first = &seen[0];
        let get = |n: &str| first.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get(":method"), Some("CONNECT"));
        assert_eq!(get(":protocol"), Some("websocket"));
        assert_eq!(get(":scheme"), Some("https"));
        assert_eq!(get(":path"), Some("/ws"));
        assert_eq!(get("sec-websocket-version"), Some("13"));
        for gone in ["sec-websocket-key", "upgrade", "connection"] {
            assert!(get(gone).is_none(), "{gone} sent over h2: {first:?}");
        }

        // Every tunnel's stream slot is released.
        let pool = gw.origin("app").expect("pool").clone();
        assert!(
            ws::eventually(Duration::from_secs(10), || {
                pool.stats().iter().map(|c| c.in_flight).sum::<usize>() == 0
            })
            .await,
            "stream slots still held: {:?}",
            pool.stats()
        );
        assert!(
            ws::eventually(Duration::from_secs(10), || {
                st.get(|s| &s.ws_closed_cleanly) == SOCKETS as u64
            })
            .await,
            "origin saw {} clean closes",
            st.get(|s| &s.ws_closed_cleanly)
        );
        let m = metrics(&gw).await;
        assert_eq!(
            metric(&m, r#"muxgate_upgraded_total{origin="app",via="h2"}"#),
            SOCKETS as f64
        );
        assert_eq!(
            settled(&gw, r#"muxgate_upgraded_open{origin="app",via="h2"}"#, 0.0).await,
            0.0
        );
        assert_eq!(
            settled(&gw, r#"muxgate_upstream_streams_active{origin="app"}"#, 0.0).await,
            0.0
        );

        // A non-2xx answer to the CONNECT is relayed as is.
        match ws::connect(addr, "app.test", "/reject").await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
            other => panic!("expected 403, got {other:?}"),
        }
        drop(files);
    })
    .await;
}

/// An h2 origin without the setting that also speaks http/1.1: WebSockets go over dedicated
/// HTTP/1.1 connections whose TLS handshakes resume the pool's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_fall_back_to_http1_with_resumed_tls() {
    support::init();
    bounded(120, async {
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("files");
        let origin = WsOrigin::h2_without_connect().start(&pki).await;
        let gw = gateway(origin.addr, &files.ca, "").await;
        let addr = gw.http_addrs[0];
        // The shared h2 connection: one full handshake.
        let r = support::get(addr, "app.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let s = session(addr, "app.test", 0, MESSAGES)
            .await
            .expect("session");
        assert_eq!(s.echoed, 2 * MESSAGES as u64);
        let st = &origin.stats;
        assert_eq!(st.get(|s| &s.ws_h1), 1);
        assert_eq!(
            st.get(|s| &s.full_handshakes),
            1,
            "dedicated connection not resumed"
        );
        assert_eq!(st.get(|s| &s.resumed_handshakes), 1);
        let m = metrics(&gw).await;
        assert_eq!(
            metric(
                &m,
                r#"muxgate_upstream_tls_handshakes_total{origin="app",resumed="true"}"#
            ),
            1.0
        );
        // More at once: all dedicated, none on the h2 connection.
        let mut tasks = Vec::new();
        for id in 1..=20 {
            tasks.push(tokio::spawn(session(addr, "app.test", id, 3)));
        }
        for t in tasks {
            let s = t.await.expect("task").expect("session");
            assert_eq!(s.echoed, 6);
        }
        assert_eq!(st.get(|s| &s.ws_h1), 21);
        assert_eq!(st.get(|s| &s.h2_connections), 1);
        assert_eq!(st.get(|s| &s.h1_connections), 21);
        let m = metrics(&gw).await;
        assert_eq!(
            metric(&m, r#"muxgate_upgraded_total{origin="app",via="http/1.1"}"#),
            21.0
        );
        assert_eq!(
            metric(&m, r#"muxgate_upgraded_total{origin="app",via="h2"}"#),
            0.0
        );
        drop(files);
    })
    .await;
}

/// `Upgrade: h2c` (with `Connection: upgrade, HTTP2-Settings`) is answered as an ordinary
/// request: the origin never sees Upgrade or HTTP2-Settings and there is no 101.
#[tokio::test]
async fn h2c_upgrade_is_never_forwarded() {
    bounded(60, async {
        for up in support::proxy_kit::BOTH {
            let s = support::proxy_kit::setup(up, "", "").await;
            let r = raw_request(
                s.addr,
                b"GET /headers HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                  Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
            )
            .await;
            assert_eq!(r.status, 200, "{up:?}: {}", r.text());
            assert!(r.header("upgrade").is_none());
            let text = r.text().to_ascii_lowercase();
            for gone in ["upgrade:", "http2-settings:", "connection:"] {
                assert!(!text.contains(gone), "{up:?}: {gone} forwarded: {text}");
            }
            s.stop().await;
        }
    })
    .await;
}

/// A tunnel with no byte either way for `upgrade_idle_timeout` is closed, on both carriers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnels_are_closed() {
    support::init();
    bounded(60, async {
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("files");
        for (origin, via) in [
            (WsOrigin::h1().start(&pki).await, "http/1.1"),
            (WsOrigin::h2_connect().start(&pki).await, "h2"),
        ] {
            let gw = gateway(origin.addr, &files.ca, "upgrade_idle_timeout = \"300ms\"").await;
            let addr = gw.http_addrs[0];
            let mut c = ws::connect(addr, "app.test", "/ws").await.expect("connect");
            // Traffic keeps it open past the timeout.
            for i in 0..4 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                c.send(Message::text(format!("m{i}"))).await.expect("send");
                let m = c.next().await;
                assert!(matches!(m, Some(Ok(Message::Text(_)))), "{via}: {m:?}");
            }
            // The client connection stays counted while its tunnel lives.
            let down = "muxgate_downstream_connections_open";
            assert_eq!(metric(&metrics(&gw).await, down), 1.0, "{via}");
            // Then silence: the gateway closes it.
            let start = tokio::time::Instant::now();
            assert!(
                ends_within(&mut c, Duration::from_secs(10)).await,
                "{via}: idle tunnel not closed"
            );
            assert!(
                start.elapsed() >= Duration::from_millis(250),
                "{via}: closed too early"
            );
            let open = format!(r#"muxgate_upgraded_open{{origin="app",via="{via}"}}"#);
            let mut zero = false;
            for _ in 0..500 {
                if metric(&metrics(&gw).await, &open) == 0.0 {
                    zero = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(zero, "{via}: gauge not back to 0");
            let gw_ref = &gw;
            let mut down_zero = false;
            for _ in 0..500 {
                if metric(&metrics(gw_ref).await, down) == 0.0 {
                    down_zero = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(down_zero, "{via}: client connection still counted");
        }
        drop(files);
    })
    .await;
}

/// Past `max_upgraded` an upgrade gets 503 with a one-line body; a closed tunnel frees its
/// place. Ordinary requests are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_upgraded_gives_503() {
    support::init();
    bounded(60, async {
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("files");
        let origin = WsOrigin::h1().start(&pki).await;
        let gw = gateway(origin.addr, &files.ca, "max_upgraded = 2").await;
        let addr = gw.http_addrs[0];
        let a = ws::connect(addr, "app.test", "/ws").await.expect("first");
        let b = ws::connect(addr, "app.test", "/ws").await.expect("second");
        let r = raw_request(
            addr,
            b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.text(), "too many upgraded connections to the origin\n");
        assert!(r.header("retry-after").is_some());
        assert_eq!(origin.stats.get(|s| &s.ws_h1), 2);
        // Ordinary requests still pass.
        let g = support::get(addr, "app.test", "/").await;
        assert_eq!(g.status, 200);
        // Closing one frees a place.
        drop(a);
        let mut ok = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if let Ok(c) = ws::connect(addr, "app.test", "/ws").await {
                drop(c);
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "place not freed after a close");
        drop(b);
        drop(files);
    })
    .await;
}

/// A cleartext origin: dedicated HTTP/1.1 connections, no TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_to_a_cleartext_origin() {
    support::init();
    bounded(60, async {
        let pki = Pki::localhost().expect("pki");
        let origin = WsOrigin::plain().start(&pki).await;
        let toml = gateway_toml(
            "",
            &origin_toml(
                "app",
                &["*"],
                &format!("http://127.0.0.1:{}", origin.addr.port()),
                None,
                "",
            ),
        );
        let gw = start_gateway(&toml).await;
        let addr = gw.http_addrs[0];
        let mut tasks = Vec::new();
        for id in 0..20 {
            tasks.push(tokio::spawn(session(addr, "app.test", id, MESSAGES)));
        }
        for t in tasks {
            let s = t.await.expect("task").expect("session");
            assert_eq!((s.echoed, s.clean_close), (2 * MESSAGES as u64, true));
        }
        assert_eq!(origin.stats.get(|s| &s.ws_h1), 20);
        assert_eq!(origin.stats.get(|s| &s.connections), 20);
        let m = metrics(&gw).await;
        assert_eq!(
            metric(&m, r#"muxgate_upgraded_total{origin="app",via="http/1.1"}"#),
            20.0
        );
    })
    .await;
}

/// Graceful shutdown closes open tunnels at once (they have no end to wait for) and still
/// reports a clean drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_tunnels() {
    support::init();
    bounded(60, async {
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("files");
        let h1 = WsOrigin::h1().start(&pki).await;
        let h2 = WsOrigin::h2_connect().start(&pki).await;
        for origin in [h1, h2] {
            let gw = gateway(origin.addr, &files.ca, "").await;
            let addr = gw.http_addrs[0];
            let mut c = ws::connect(addr, "app.test", "/ws").await.expect("connect");
            c.send(Message::text("hello")).await.expect("send");
            assert!(matches!(c.next().await, Some(Ok(Message::Text(_)))));
            shutdown_closes(gw, &mut c).await;
        }
        drop(files);
    })
    .await;
}

/// Messages far larger than every HTTP/2 window (the origin's 64 KiB default, the gateway's
/// 2 MiB stream window) cross an RFC 8441 tunnel both ways: flow-control credit is given back
/// as bytes are consumed, on both halves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_cross_rfc8441_flow_control() {
    support::init();
    bounded(120, async {
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("files");
        let origin = WsOrigin::h2_connect().start(&pki).await;
        let gw = gateway(origin.addr, &files.ca, "").await;
        let addr = gw.http_addrs[0];
        let mut tasks = Vec::new();
        for id in 0..4u8 {
            tasks.push(tokio::spawn(async move {
                let mut c = ws::connect(addr, "app.test", "/ws").await.expect("connect");
                for i in 0..3u8 {
                    let payload: Vec<u8> = (0..3 * 1024 * 1024 + usize::from(i))
                        .map(|n| (n as u8).wrapping_add(id))
                        .collect();
                    let m = Message::binary(payload);
                    c.send(m.clone()).await.expect("send");
                    let got = c.next().await;
                    assert!(
                        matches!(&got, Some(Ok(g)) if *g == m),
                        "socket {id} message {i}"
                    );
                }
                c.close(None).await.expect("close");
                while let Some(Ok(_)) = c.next().await {}
            }));
        }
        for t in tasks {
            t.await.expect("socket task");
        }
        assert_eq!(origin.stats.get(|s| &s.echoed), 12);
        assert_eq!(origin.stats.get(|s| &s.connections), 1);
        drop(files);
    })
    .await;
}

/// An h2-only origin without SETTINGS_ENABLE_CONNECT_PROTOCOL cannot carry a WebSocket: 502
/// with a one-line body, and ordinary requests are unaffected (the failed dedicated dial ejects
/// no server). With `alpn = ["h2"]` no HTTP/1.1 dial is attempted at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_h2_only_origin_without_the_setting_is_502() {
    support::init();
    bounded(60, async {
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("files");
        let origin = muxgate::testkit::origin::Origin::h2()
            .start(&pki)
            .await
            .expect("origin");
        for (extra, expect) in [
            ("", "origin TLS handshake failed"),
            ("alpn = [\"h2\"]", "alpn excludes http/1.1"),
        ] {
            let gw = gateway(origin.addr, &files.ca, extra).await;
            let addr = gw.http_addrs[0];
            let upgrade = b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\n\
                Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
            for _ in 0..3 {
                let r = raw_request(addr, upgrade).await;
                assert_eq!(r.status, 502, "{extra}: {}", r.text());
                assert!(r.text().contains(expect), "{extra}: {}", r.text());
                assert_eq!(r.text().lines().count(), 1, "{extra}: {}", r.text());
            }
            for _ in 0..5 {
                assert_eq!(support::get(addr, "app.test", "/").await.status, 200);
            }
        }
        drop(files);
    })
    .await;
}

/// An upgrade to an origin that refuses connections gets a 502 naming the cause, and each
/// failed dial counts once in `muxgate_upstream_errors_total{kind="connect"}`: the pool counts
/// it, and the upgrade path does not count it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_to_a_refusing_origin_counts_each_failure_once() {
    support::init();
    bounded(30, async {
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("files");
        let (_refusing, port) = support::refusing_port();
        let gw = gateway(([127, 0, 0, 1], port).into(), &files.ca, "").await;
        let upgrade = b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\n\
            Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let r = raw_request(gw.http_addrs[0], upgrade).await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.text().lines().count(), 1, "{}", r.text());
        let text = metrics(&gw).await;
        let connect = metric(
            &text,
            r#"muxgate_upstream_errors_total{origin="app",kind="connect"}"#,
        );
        assert_eq!(connect, 1.0, "{text}");
        assert!(gw.shutdown().await);
    })
    .await;
}

/// Clients that vanish mid-session (TCP dropped, no close handshake) free their RFC 8441
/// stream slots and places, and the shared connection survives: no new origin connection, and
/// the next WebSocket and GET work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_clients_free_their_h2_tunnels() {
    support::init();
    bounded(120, async {
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("files");
        let origin = WsOrigin::h2_connect().max_streams(200).start(&pki).await;
        let gw = gateway(origin.addr, &files.ca, "").await;
        let addr = gw.http_addrs[0];
        let mut tasks = Vec::new();
        for id in 0..100usize {
            tasks.push(tokio::spawn(async move {
                let mut c = ws::connect(addr, "app.test", "/ws").await.expect("connect");
                c.send(Message::text(format!("hi {id}")))
                    .await
                    .expect("send");
                assert!(matches!(c.next().await, Some(Ok(Message::Text(_)))));
                // Half of them leave a message in flight.
                if id % 2 == 0 {
                    c.send(Message::binary(vec![1u8; 100_000]))
                        .await
                        .expect("send");
                }
                drop(c);
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let pool = gw.origin("app").expect("pool").clone();
        assert!(
            ws::eventually(Duration::from_secs(20), || {
                pool.stats().iter().map(|c| c.in_flight).sum::<usize>() == 0
            })
            .await,
            "stream slots still held: {:?}",
            pool.stats()
        );
        let open = r#"muxgate_upgraded_open{origin="app",via="h2"}"#;
        assert_eq!(settled(&gw, open, 0.0).await, 0.0);
        assert_eq!(
            origin.stats.get(|s| &s.connections),
            1,
            "shared connection lost"
        );
        let s = session(addr, "app.test", 1000, 2)
            .await
            .expect("session after aborts");
        assert_eq!(s.echoed, 4);
        assert_eq!(support::get(addr, "app.test", "/").await.status, 200);
        assert_eq!(origin.stats.get(|s| &s.connections), 1);
        drop(files);
    })
    .await;
}

/// Open tunnels survive live reloads: one that keeps the origin's pool (routes and limits
/// changed) and one that replaces it (connection settings changed, the old pool drains; the
/// old socket is checked again after the drained pool's 10 s grace). The
/// socket opened before both reloads keeps echoing in both directions, new sockets open after
/// them, and shutdown still closes the old socket (the new request path took the tunnels over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_survive_reloads() {
    support::init();
    bounded(90, async {
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("files");
        let h1 = WsOrigin::h1().start(&pki).await;
        let h2 = WsOrigin::h2_connect().start(&pki).await;
        for origin in [h1, h2] {
            let url = format!("https://localhost:{}", origin.addr.port());
            let config = |hosts: &[&str], extra: &str, max_connections: usize| {
                let toml = gateway_toml(
                    &format!("[client]\nmax_connections = {max_connections}"),
                    &origin_toml("app", hosts, &url, Some(&files.ca), extra),
                );
                muxgate::config::Config::from_toml(&toml)
                    .and_then(muxgate::config::Config::validate)
                    .unwrap_or_else(|e| panic!("{e}\n{toml}"))
            };
            let gw = Gateway::start(config(&["*"], "", 1000))
                .await
                .expect("start");
            let addr = gw.http_addrs[0];
            let mut old = ws::connect(addr, "app.test", "/ws").await.expect("connect");
            let mut echoed = 0;
            for step in 0..3 {
                match step {
                    0 => {}
                    // Same connection settings: the pool (and its connection) is kept.
                    1 => {
                        let r = gw
                            .reload(config(&["app.test", "*.test"], "", 900))
                            .expect("reload");
                        assert_eq!(r.kept, vec!["app".to_string()], "{r:?}");
                    }
                    // Changed connection settings: a fresh pool, the old one drains.
                    _ => {
                        let r = gw
                            .reload(config(&["app.test"], "connect_timeout = \"7s\"", 900))
                            .expect("reload");
                        assert!(r.kept.is_empty(), "{r:?}");
                        // Past the grace after which a connection nobody holds is closed
                        // (RETIRE_GRACE, 10 s): the tunnel still holds its connection.
                        tokio::time::sleep(Duration::from_secs(11)).await;
                    }
                }
                for i in 0..5 {
                    let text = format!("before and after reloads {step}.{i}");
                    old.send(Message::text(text.clone()))
                        .await
                        .expect("send on the old socket");
                    match tokio::time::timeout(Duration::from_secs(10), old.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), text),
                        other => panic!("step {step}: no echo on the old socket: {other:?}"),
                    }
                    echoed += 1;
                }
                let mut new = ws::connect(addr, "app.test", "/ws")
                    .await
                    .expect("new socket");
                new.send(Message::binary(vec![7u8; 3000]))
                    .await
                    .expect("send");
                match tokio::time::timeout(Duration::from_secs(10), new.next()).await {
                    Ok(Some(Ok(Message::Binary(b)))) => assert_eq!(b.len(), 3000),
                    other => panic!("step {step}: no echo on a new socket: {other:?}"),
                }
                new.close(None).await.expect("close");
            }
            assert_eq!(echoed, 15);
            shutdown_closes(gw, &mut old).await;
        }
        drop(files);
    })
    .await;
}
