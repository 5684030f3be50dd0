//! Several servers per origin (`servers = [...]`): connections spread round robin, a server
//! that fails its handshake is ejected with backoff while the others serve, and an origin whose
//! servers are all down fails fast with 502.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use muxgate::testkit::origin::Origin;
use support::*;
use tokio::net::TcpListener;

/// A server that accepts TCP and closes it at once (its TLS handshake fails); counts accepts.
async fn broken_server() -> (u16, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let n = Arc::new(AtomicU64::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            n2.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (port, n)
}

/// A port with nothing listening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_and_a_failing_server_is_ejected() {
    init();
    let (pki, files) = pki();
    let a = Origin::h2().start(&pki).await.expect("a");
    let b = Origin::h2().start(&pki).await.expect("b");
    let (bad, bad_accepts) = broken_server().await;
    let extra = format!(
        "servers = [\"127.0.0.1:{}\", \"127.0.0.1:{bad}\", \"127.0.0.1:{}\"]\nmin_connections = 3\nmax_connections = 3\nserver_backoff = \"30s\"\nserver_backoff_max = \"60s\"",
        a.addr.port(),
        b.addr.port()
    );
    let toml = gateway_toml(
        "",
        &origin_toml("app", &["*"], &https_url(&a), Some(&files.ca), &extra),
    );
    let gw = start_gateway(&toml).await;
    let mut client = Client::connect(gw.http_addrs[0]).await;
    for _ in 0..20 {
        let r = client.get("app.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // min_connections = 3 makes the pool dial three times: A, the broken one (fails, ejected,
    // falls through to B), then A again. The broken server is not tried twice.
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.origin("app").expect("app").stats().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let conns_a = a.stats.get(|s| &s.connections);
    let conns_b = b.stats.get(|s| &s.connections);
    assert_eq!(
        bad_accepts.load(Ordering::SeqCst),
        1,
        "ejected server was retried"
    );
    assert!(conns_a >= 1 && conns_b >= 1, "a {conns_a} b {conns_b}");
    assert_eq!(conns_a + conns_b, 3);
    assert_eq!(
        a.stats.get(|s| &s.requests) + b.stats.get(|s| &s.requests),
        20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_servers_down_fails_fast() {
    init();
    let ((_r1, p1), (_r2, p2)) = (refusing_port(), refusing_port());
    let extra =
        format!("servers = [\"127.0.0.1:{p1}\", \"127.0.0.1:{p2}\"]\nconnect_timeout = \"5s\"");
    let toml = gateway_toml(
        "",
        &origin_toml(
            "app",
            &["*"],
            &format!("https://localhost:{p1}"),
            None,
            &extra,
        ),
    );
    let gw = start_gateway(&toml).await;
    for _ in 0..3 {
        let t0 = Instant::now();
        let r = get(gw.http_addrs[0], "app.test", "/").await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(
            r.text().starts_with("origin connect failed"),
            "{}",
            r.text()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t0.elapsed()
        );
    }
}
