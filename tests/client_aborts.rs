//! Clients that disconnect mid-request in bulk must not get the shared origin connection
//! closed: each abort cancels its upstream stream (RST_STREAM CANCEL), and neither the gateway's
//! own h2 limits on reset streams nor the origin may tear the connection down for everyone.
//!
//! Clients that stop reading a response are aborted by the gateway (`client.send_timeout`),
//! which releases the upstream stream they held; slow readers that keep reading are not.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use muxgate::testkit::origin::Origin;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

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

/// `client.abort_on_close`: by default a client that leaves while its request waits for the
/// origin cancels the request at once, and one that shuts its sending side counts as gone;
/// with `false` the request runs until the origin answers, and the half-closed client gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_on_close_decides_whether_a_leaving_client_cancels_its_request() {
    init();
    let (pki, _files) = pki();
    let origin = Origin::h2().start(&pki).await.expect("origin");
    for abort in [true, false] {
        let extra = format!("\n[client]\nabort_on_close = {abort}\n");
        let (gw, _f) = gateway_for(&origin, &pki, &extra).await;
        let addr = gw.http_addrs[0];
        let pool = gw.origin("app").expect("app");
        let in_flight = || pool.stats().iter().map(|c| c.in_flight).sum::<usize>();

        // A client that shuts its sending side after the request.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /delay/300 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await
            .expect("write");
        s.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        assert!(
            read.is_ok(),
            "abort_on_close = {abort}: connection left open"
        );
        let text = String::from_utf8_lossy(&got);
        assert_eq!(
            text.starts_with("HTTP/1.1 200"),
            !abort,
            "abort_on_close = {abort}: {text:?}"
        );
        assert!(wait_until(Duration::from_secs(2), || in_flight() == 0).await);

        // A client that leaves while its request waits 2 s for the origin.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /delay/2000 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await
            .expect("write");
        assert!(
            wait_until(Duration::from_secs(2), || in_flight() == 1).await,
            "the request never reached the origin"
        );
        let left = std::time::Instant::now();
        drop(s);
        if abort {
            assert!(
                wait_until(Duration::from_millis(1500), || in_flight() == 0).await,
                "the request outlived its client"
            );
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(in_flight(), 1, "the request was cancelled");
            assert!(wait_until(Duration::from_secs(5), || in_flight() == 0).await);
            // It ended when the origin answered, not when the client left.
            assert!(
                left.elapsed() >= Duration::from_millis(1000),
                "{:?}",
                left.elapsed()
            );
        }
    }
}

/// `[client] send_timeout = "1s"` after the origin's table.
const SEND_TIMEOUT_1S: &str = "\n[client]\nsend_timeout = \"1s\"\n";

/// A client connection with a small receive buffer, so the gateway's writes block soon after
/// the client stops reading.
async fn small_window_client(addr: std::net::SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    sock.connect(addr).await.expect("connect")
}

/// A client that stops reading a large response is closed at `client.send_timeout` (timed
/// from when the gateway's writes blocked), counted in
/// `muxgate_downstream_connections_closed_total{reason="send_timeout"}`, and the upstream
/// stream its response held is released; the shared connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_at_the_send_timeout() {
    init();
    let (pki, _files) = pki();
    let origin = Origin::h2().start(&pki).await.expect("origin");
    let (gw, _f) = gateway_for(&origin, &pki, SEND_TIMEOUT_1S).await;
    let addr = gw.http_addrs[0];
    assert_eq!(get(addr, "app.test", "/").await.status, 200);
    let pool = gw.origin("app").expect("app");
    let in_flight = || pool.stats().iter().map(|c| c.in_flight).sum::<usize>();
    let metrics = gw.metrics().clone();
    let closed = || {
        metric_value(
            &metrics.render(),
            "muxgate_downstream_connections_closed_total{reason=\"send_timeout\"}",
        )
        .unwrap_or(0.0)
    };
    const SIZE: usize = 64 << 20;
    let mut s = small_window_client(addr).await;
    s.write_all(format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let sent = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || in_flight() == 1).await,
        "the response never held an upstream stream"
    );
    assert!(
        wait_until(Duration::from_secs(10), || closed() == 1.0).await,
        "a client that reads nothing was not closed within 10 s"
    );
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed {took:?} after the request, with a 1 s send timeout"
    );
    assert!(
        wait_until(Duration::from_secs(2), || in_flight() == 0).await,
        "the upstream stream is still held: {:?}",
        pool.stats()
    );
    assert_eq!(
        origin.stats.get(|s| &s.connections),
        1,
        "the shared connection was replaced"
    );
    assert_eq!(get(addr, "app.test", "/").await.status, 200);
    // The client finds a truncated response, then the close.
    let mut got = 0;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("the connection stayed open after the send timeout ({got} bytes)"),
        }
    }
    assert!(got < SIZE, "the whole response arrived ({got} bytes)");
}

/// The same over TLS: rustls takes up to 64 KiB of plaintext into its own buffer after the
/// socket stops taking bytes, so the gateway's writes block a little later, but a TLS client
/// that reads nothing is still closed at `client.send_timeout` and its upstream stream
/// released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_stops_reading_is_closed_at_the_send_timeout() {
    init();
    let (pki, files) = pki();
    let origin = Origin::h2().start(&pki).await.expect("origin");
    let tables = format!(
        "{}\n[client]\nsend_timeout = \"1s\"\n[[listen_tls]]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
        origin_toml("app", &["*"], &https_url(&origin), Some(&files.ca), ""),
        files.cert.display().to_string(),
        files.key.display().to_string(),
    );
    let gw = start_gateway(&gateway_toml("", &tables)).await;
    let pool = gw.origin("app").expect("app");
    let in_flight = || pool.stats().iter().map(|c| c.in_flight).sum::<usize>();
    let metrics = gw.metrics().clone();
    let closed = || {
        metric_value(
            &metrics.render(),
            "muxgate_downstream_connections_closed_total{reason=\"send_timeout\"}",
        )
        .unwrap_or(0.0)
    };
    const SIZE: usize = 64 << 20;
    let tcp = small_window_client(gw.tls_addrs[0]).await;
    let cfg = pki.client_config(&[b"http/1.1"]).expect("client config");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut s = tokio::time::timeout(
        IO_TIMEOUT,
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .expect("TLS handshake in time")
    .expect("TLS handshake");
    s.write_all(format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes())
        .await
        .expect("request");
    s.flush().await.expect("flush");
    let sent = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || in_flight() == 1).await,
        "the response never held an upstream stream"
    );
    assert!(
        wait_until(Duration::from_secs(10), || closed() == 1.0).await,
        "a TLS client that reads nothing was not closed within 10 s"
    );
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed {took:?} after the request, with a 1 s send timeout"
    );
    assert!(
        wait_until(Duration::from_secs(2), || in_flight() == 0).await,
        "the upstream stream is still held: {:?}",
        pool.stats()
    );
    assert_eq!(get(gw.http_addrs[0], "app.test", "/").await.status, 200);
    drop(s);
    assert!(gw.shutdown().await);
}

/// A slow reader that pauses for less than `client.send_timeout` between reads gets the whole
/// response, although it takes longer than the timeout: the timeout bounds one blocked write,
/// not the response (nginx `send_timeout`). The same reader is cut when the timeout is shorter
/// than its pauses, which shows that they block the gateway's writes. Pauses are far from the
/// timeouts both ways, so a slow machine cannot flip the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_not_cut_by_the_send_timeout() {
    init();
    const SIZE: usize = 16 << 20;
    const HEAD_MAX: usize = 1024;
    let pause = Duration::from_millis(250);
    let (got, took, cut) = slow_read(SIZE, "2s", pause).await;
    assert!(
        got > SIZE && got < SIZE + HEAD_MAX,
        "{got} bytes for a {SIZE}-byte body"
    );
    assert!(
        took > Duration::from_secs(3),
        "the read took {took:?}: the pauses did not add up past the timeout"
    );
    assert_eq!(cut, 0.0, "a slow reader was closed by a 2 s send timeout");
    // Pauses of 1.5 s against a 300 ms timeout: cut.
    let (got, _, cut) = slow_read(SIZE, "300ms", Duration::from_millis(1500)).await;
    assert!(
        got < SIZE,
        "the whole response arrived past a 300 ms timeout"
    );
    assert_eq!(cut, 1.0, "send_timeout closes");
}

/// Reads a `size`-byte response through a gateway with `send_timeout`, 1 MiB at a time with
/// `pause` after each: bytes read (head included), the time it took, and the gateway's
/// `send_timeout` closes.
async fn slow_read(size: usize, send_timeout: &str, pause: Duration) -> (usize, Duration, f64) {
    let (pki, _files) = pki();
    let origin = Origin::h2().start(&pki).await.expect("origin");
    let client = format!("\n[client]\nsend_timeout = {send_timeout:?}\n");
    let (gw, _f) = gateway_for(&origin, &pki, &client).await;
    let mut s = small_window_client(gw.http_addrs[0]).await;
    s.write_all(
        format!("GET /bytes/{size} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("request");
    let start = std::time::Instant::now();
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    'reading: loop {
        let mut burst = 0;
        while burst < 1 << 20 {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break 'reading,
                Ok(Ok(n)) => {
                    got += n;
                    burst += n;
                }
                Err(_) => panic!("stalled after {got} bytes"),
            }
        }
        tokio::time::sleep(pause).await;
    }
    let took = start.elapsed();
    let cut = metric_value(
        &gw.metrics().render(),
        "muxgate_downstream_connections_closed_total{reason=\"send_timeout\"}",
    )
    .unwrap_or(0.0);
    (got, took, cut)
}
