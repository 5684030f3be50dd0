//! Clients that disconnect mid-request in bulk must not get the shared origin connection
//! closed: each abort cancels its upstream stream (RST_STREAM CANCEL), and neither the gateway's
//! own h2 limits on reset streams nor the origin may tear the connection down for everyone.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use muxgate::testkit::origin::Origin;
use support::*;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_client_aborts_leave_the_shared_connection_alive() {
    init();
    let (pki, _files) = pki();
    let origin = Origin::h2()
        .max_streams(1000)
        .start(&pki)
        .await
        .expect("origin");
    let (gw, _f) = gateway_for(&origin, &pki, "").await;
    let addr = gw.http_addrs[0];
    assert_eq!(get(addr, "app.test", "/").await.status, 200);
    assert_eq!(origin.stats.get(|s| &s.connections), 1);

    // Legitimate traffic on other connections throughout.
    let stop = Arc::new(AtomicU64::new(0));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut background = Vec::new();
    for _ in 0..2 {
        let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
        background.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            while stop.load(Ordering::SeqCst) == 0 {
                if c.get("app.test", "/").await.status == 200 {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    bad.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }

    // 10,000 clients send a request whose response is slow, then vanish (issue 5: "10,000
    // client aborts in a few seconds").
    let mut aborts = Vec::new();
    for batch in 0..100 {
        for _ in 0..100 {
            aborts.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let _ = s
                    .write_all(b"GET /delay/300 HTTP/1.1\r\nHost: app.test\r\n\r\n")
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(s);
            }));
        }
        if batch % 5 == 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for a in aborts {
        let _ = a.await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(1, Ordering::SeqCst);
    for b in background {
        let _ = tokio::time::timeout(Duration::from_secs(10), b).await;
    }
    assert_eq!(bad.load(Ordering::SeqCst), 0, "background traffic failed");
    assert!(ok.load(Ordering::SeqCst) > 0);
    // More than 1,000 requests in flight at a moment may add a connection (saturation), but
    // none may be lost: every connection the origin accepted is still open in the pool.
    let pool = gw.origin("app").expect("app");
    let opened = origin.stats.get(|s| &s.connections);
    let open: Vec<_> = pool.stats().into_iter().filter(|c| !c.draining).collect();
    assert_eq!(
        open.len() as u64,
        opened,
        "a shared origin connection was closed: {open:?}"
    );
    assert!(
        open.iter().any(|c| c.id == 1),
        "the first connection was replaced"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pool.stats().iter().any(|c| c.in_flight > 0) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        pool.stats().iter().all(|c| c.in_flight == 0),
        "{:?}",
        pool.stats()
    );
}
