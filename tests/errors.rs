//! What clients see when something fails (DESIGN.md "Errors clients see"): 502 for an
//! unreachable origin or an invalid response, 504 for origin timeouts, 400/431 for malformed or
//! oversized requests, each with a one-line text body naming the cause, and one metric count per
//! failure.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use muxgate::testkit::pki::Pki;
use muxgate::Gateway;
use support::proxy_kit::{assert_one_line, bounded, head, setup, Raw, RawConn, Up, BOTH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A gateway with one origin `app` at `url` (`tls_ca` from `ca` if given) and `extra` keys.
async fn gateway(url: &str, ca: Option<&std::path::Path>, extra: &str, tables: &str) -> Gateway {
    support::init();
    let toml = support::gateway_toml(
        "",
        &format!(
            "{}{tables}",
            support::origin_toml("app", &["*"], url, ca, extra)
        ),
    );
    support::start_gateway(&toml).await
}

/// `GET path` on a fresh connection.
async fn get(addr: SocketAddr, path: &str) -> Raw {
    let mut c = RawConn::connect(addr).await;
    c.send(head("GET", path, "app.test", "").as_bytes()).await;
    c.read_response(false).await
}

/// A loopback port nothing listens on (bound, then released).
fn upstream_errors(gw: &Gateway, kind: &str) -> f64 {
    support::metric_value(
        &gw.metrics().render(),
        &format!("muxgate_upstream_errors_total{{origin=\"app\",kind=\"{kind}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn closed_origin_port_gets_502_naming_the_cause() {
    bounded(30, async {
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("files");
        let (_refusing, port) = support::refusing_port();
        for url in [
            format!("https://127.0.0.1:{port}"),
            format!("http://127.0.0.1:{port}"),
        ] {
            let gw = gateway(&url, Some(&files.ca), "", "").await;
            let r = get(gw.http_addrs[0], "/").await;
            assert_eq!(r.status, 502, "{url}: {}", r.text());
            assert_one_line(&r.body, "origin connect failed");
            assert!(r.text().contains(&port.to_string()), "{url}: {}", r.text());
            assert_eq!(
                r.header("content-type"),
                Some("text/plain; charset=utf-8"),
                "{url}"
            );
            assert!(gw.shutdown().await);
        }
    })
    .await;
}

/// Accepts TCP connections and never says a word (holds them until the test ends).
async fn silent_origin() -> (u16, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (port, task)
}

#[tokio::test]
async fn origin_silent_during_tls_handshake_gets_504() {
    bounded(30, async {
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("files");
        let (port, task) = silent_origin().await;
        let gw = gateway(
            &format!("https://127.0.0.1:{port}"),
            Some(&files.ca),
            "tls_handshake_timeout = \"300ms\"",
            "",
        )
        .await;
        let t0 = Instant::now();
        let r = get(gw.http_addrs[0], "/").await;
        let took = t0.elapsed();
        assert_eq!(r.status, 504, "{}", r.text());
        assert_one_line(&r.body, "TLS handshake timed out");
        assert!(
            took >= Duration::from_millis(300),
            "answered before the timeout: {took:?}"
        );
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert!(gw.shutdown().await);
        task.abort();
    })
    .await;
}

#[tokio::test]
async fn slow_response_header_gets_504_and_the_pool_recovers() {
    bounded(30, async {
        for up in BOTH {
            let s = setup(up, "response_header_timeout = \"500ms\"", "").await;
            let t0 = Instant::now();
            let r = get(s.addr, "/delay/3000").await;
            let took = t0.elapsed();
            assert_eq!(r.status, 504, "{up:?}: {}", r.text());
            assert_one_line(&r.body, "origin response timed out");
            assert!(
                took >= Duration::from_millis(500) && took < Duration::from_millis(2500),
                "{up:?}: took {took:?}"
            );
            // The abandoned exchange does not poison the pool.
            let r = get(s.addr, "/status/201").await;
            assert_eq!(r.status, 201, "{up:?}");
            s.stop().await;
        }
    })
    .await;
}

/// Reads what the gateway sends on `c` until it closes (at most 10 s): the bytes, and when the
/// close came after `t0`.
async fn until_close(c: &mut tokio::net::TcpStream, t0: Instant) -> (Vec<u8>, Duration) {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, t0.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "the connection stayed open: {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// `read_timeout`: an origin that stalls mid-body (`/drip/3000` sends its first 2 bytes, then
/// waits 3 s) gets its response cut 1 s into the wait: the client has the head and the first
/// bytes, then the close; it is counted in `muxgate_upstream_errors_total{kind="timeout"}`, and
/// the pool serves the next request (over the same h2 connection, whose stream was reset).
/// Gaps shorter than the timeout (`/drip/600`: two of them, 1.2 s in all) are not cut.
#[tokio::test]
async fn a_body_that_stalls_past_read_timeout_is_cut_and_the_pool_recovers() {
    bounded(60, async {
        for up in BOTH {
            let s = setup(up, "read_timeout = \"1s\"", "").await;
            let mut c = tokio::net::TcpStream::connect(s.addr)
                .await
                .expect("connect");
            let t0 = Instant::now();
            c.write_all(head("GET", "/drip/3000", "app.test", "").as_bytes())
                .await
                .expect("request");
            let (got, took) = until_close(&mut c, t0).await;
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 200 "), "{up:?}: {text:?}");
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
            assert_eq!(body, "a\n", "{up:?}: the body before the cut");
            assert!(
                took >= Duration::from_millis(900) && took < Duration::from_millis(2800),
                "{up:?}: cut after {took:?}"
            );
            assert!(
                support::wait_until(Duration::from_secs(2), || upstream_errors(&s.gw, "timeout")
                    == 1.0)
                .await,
                "{up:?}: the read timeout was not counted once"
            );
            let conns = s.origin.stats.get(|st| &st.connections);
            let r = get(s.addr, "/drip/600").await;
            assert_eq!(r.status, 200, "{up:?}");
            assert_eq!(
                r.body, b"a\nb\nc\n",
                "{up:?}: a slow body within the timeout"
            );
            if matches!(up, Up::H2) {
                assert_eq!(
                    s.origin.stats.get(|st| &st.connections),
                    conns,
                    "the shared h2 connection was replaced"
                );
            }
            assert_eq!(upstream_errors(&s.gw, "timeout"), 1.0, "{up:?}");
            s.stop().await;
        }
    })
    .await;
}

/// A cleartext origin that answers every request with `reply` (after reading the head).
async fn raw_origin(reply: &'static [u8]) -> (u16, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(reply).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await;
            });
        }
    });
    (port, task)
}

#[tokio::test]
async fn garbage_from_a_cleartext_origin_gets_502() {
    bounded(30, async {
        for reply in [
            &b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..],
            &b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok"[..],
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"[..],
        ] {
            let (port, task) = raw_origin(reply).await;
            let gw = gateway(&format!("http://127.0.0.1:{port}"), None, "", "").await;
            let r = get(gw.http_addrs[0], "/").await;
            let tag = String::from_utf8_lossy(reply);
            assert_eq!(r.status, 502, "{tag:?}: {}", r.text());
            assert_one_line(&r.body, "origin sent an invalid response");
            assert!(gw.shutdown().await);
            task.abort();
        }
    })
    .await;
}

/// The origin completes TLS choosing `h2`, then writes something that is not an HTTP/2 preface:
/// 502 at once, and the broken origin is not redialled in a loop. Since d73970c ("publish a new
/// h2 connection only after the peer's SETTINGS") `dial` publishes the connection as soon as any
/// byte was read (or the driver already ended), although the driver has failed: the waiter is
/// never failed, the pool redials at once, again and again (5,000 dials in 10 s here), and the
/// client gets 503 after `pending_timeout`.
#[tokio::test]
async fn garbage_after_an_h2_tls_handshake_gets_502() {
    bounded(30, async {
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("files");
        let acceptor = TlsAcceptor::from(pki.server_config(&[b"h2"], false).expect("tls"));
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                    let _ = tls.flush().await;
                    let mut b = [0u8; 4096];
                    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut b)).await;
                });
            }
        });
        let gw = gateway(
            &format!("https://127.0.0.1:{port}"),
            Some(&files.ca),
            "pending_timeout = \"2s\"",
            "",
        )
        .await;
        let t0 = Instant::now();
        let r = get(gw.http_addrs[0], "/").await;
        let took = t0.elapsed();
        let dials = accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            r.status,
            502,
            "{} (after {took:?}, {dials} dials)",
            r.text()
        );
        assert!(took < Duration::from_secs(5), "took {took:?}");
        // A broken origin is not hammered: the failed dial is not retried in a loop.
        assert!(dials <= 2, "{dials} connections to a broken origin");
        let text = r.text();
        assert!(
            text.starts_with("origin sent an invalid response")
                || text.starts_with("origin connection reset"),
            "{text:?}"
        );
        assert_one_line(&r.body, "origin");
        assert!(gw.shutdown().await);
        task.abort();
    })
    .await;
}

#[tokio::test]
async fn host_errors_get_400_with_a_one_line_body() {
    bounded(30, async {
        let s = setup(Up::H2, "", "").await;
        for (req, cause) in [
            (
                head("GET", "/", "a.test", "Host: b.test\r\n"),
                "more than one Host header",
            ),
            ("GET / HTTP/1.1\r\n\r\n".to_string(), "missing Host header"),
            (head("GET", "/", "a b", ""), "invalid Host header"),
        ] {
            let mut c = RawConn::connect(s.addr).await;
            c.send(req.as_bytes()).await;
            let r = c.read_response(false).await;
            assert_eq!(r.status, 400, "{req:?}: {}", r.text());
            assert_one_line(&r.body, cause);
            assert_eq!(r.header("connection"), Some("close"), "{req:?}");
        }
        assert_eq!(s.origin_requests(), 0);
        s.stop().await;
    })
    .await;
}

/// Requests hyper's parser refuses before muxgate sees them; status only (see
/// `parser_errors_have_a_one_line_body` for the body).
#[tokio::test]
async fn invalid_content_length_gets_400() {
    bounded(30, async {
        let s = setup(Up::H2, "", "").await;
        for extra in [
            "Content-Length: abc\r\n",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: -1\r\n",
        ] {
            let mut c = RawConn::connect(s.addr).await;
            c.send(head("POST", "/sink", "app.test", extra).as_bytes())
                .await;
            let r = c.read_response(false).await;
            assert_eq!(r.status, 400, "{extra:?}");
            assert!(c.closed_within(Duration::from_secs(5)).await, "{extra:?}");
        }
        assert_eq!(s.origin_requests(), 0);
        s.stop().await;
    })
    .await;
}

const SMALL_HEADERS: &str = "\n[client]\nmax_header_size = \"1KiB\"\nmax_headers = 10\n";

/// A header block past `client.max_header_size`, or more fields than `client.max_headers`, is
/// refused with 431. Today the client gets no response at all (EOF): hyper queues its automatic
/// 431 but, with `pipeline_flush(true)` (src/server.rs) and the rest of the oversized head still
/// unread in its buffer, shuts the connection down without flushing it. With
/// `pipeline_flush(false)` this test passes.
#[tokio::test]
async fn oversized_header_block_gets_431() {
    bounded(30, async {
        let s = setup(Up::H2, "", SMALL_HEADERS).await;
        // One 4 KiB field.
        let big = format!("X-Big: {}\r\n", "b".repeat(4096));
        // Twenty small fields (limit 10).
        let many: String = (0..20).map(|i| format!("X-F{i}: {i}\r\n")).collect();
        for extra in [big, many] {
            let mut c = RawConn::connect(s.addr).await;
            c.send(head("GET", "/", "app.test", &extra).as_bytes())
                .await;
            let r = c.read_response(false).await;
            assert_eq!(r.status, 431, "{}", &extra[..40.min(extra.len())]);
        }
        // Within the limits is fine.
        let ok: String = (0..5).map(|i| format!("X-F{i}: {i}\r\n")).collect();
        let mut c = RawConn::connect(s.addr).await;
        c.send(head("GET", "/", "app.test", &ok).as_bytes()).await;
        assert_eq!(c.read_response(false).await.status, 200);
        assert_eq!(s.origin_requests(), 1);
        s.stop().await;
    })
    .await;
}

/// DESIGN.md: every error "has a one-line text body naming the cause". A head over the
/// configured limits (up to twice them, where hyper's own parser limit sits) is refused by the
/// proxy with 431 / 414 and a one-line body.
#[tokio::test]
async fn oversized_head_errors_have_a_one_line_body() {
    bounded(30, async {
        let s = setup(Up::H2, "", SMALL_HEADERS).await;
        let big = format!("X-Big: {}\r\n", "b".repeat(1200));
        let mut c = RawConn::connect(s.addr).await;
        c.send(head("GET", "/", "app.test", &big).as_bytes()).await;
        let r = c.read_response(false).await;
        assert_eq!(r.status, 431);
        assert_one_line(&r.body, "request header fields too large");
        let long = format!("/{}", "p".repeat(1200));
        let mut c = RawConn::connect(s.addr).await;
        c.send(head("GET", &long, "app.test", "").as_bytes()).await;
        let r = c.read_response(false).await;
        assert_eq!(r.status, 414);
        assert_one_line(&r.body, "request target too long");
        assert_eq!(s.origin_requests(), 0);
        s.stop().await;
    })
    .await;
}

/// Known limitation: the 400 (and the 431 past twice the limit) that hyper's HTTP/1.1 parser
/// sends on its own has an empty body; hyper offers no hook to give it one.
#[tokio::test]
#[ignore = "limitation: hyper's parser-level 400/431 have an empty body (no hook in hyper 1.x)"]
async fn parser_errors_have_a_one_line_body() {
    bounded(30, async {
        let s = setup(Up::H2, "", SMALL_HEADERS).await;
        let big = format!("X-Big: {}\r\n", "b".repeat(4096));
        for (extra, status) in [("Content-Length: abc\r\n".to_string(), 400), (big, 431)] {
            let mut c = RawConn::connect(s.addr).await;
            c.send(head("POST", "/", "app.test", &extra).as_bytes())
                .await;
            let r = c.read_response(false).await;
            assert_eq!(r.status, status);
            assert_one_line(&r.body, "");
        }
        s.stop().await;
    })
    .await;
}

/// DESIGN.md: each origin failure has "a log line and metric": one failure, one count in
/// `muxgate_upstream_errors_total`. A failed dial is counted by the pool (h2 `dial`, h1
/// `acquire`) and again by `OriginPool::send`.
#[tokio::test]
async fn one_failure_counts_once_in_upstream_errors() {
    bounded(30, async {
        let pki = Pki::localhost().expect("pki");
        let files = pki.write().expect("files");
        let (_refusing, port) = support::refusing_port();
        let mut counts = Vec::new();
        for url in [
            format!("https://127.0.0.1:{port}"),
            format!("http://127.0.0.1:{port}"),
        ] {
            let gw = gateway(&url, Some(&files.ca), "", "").await;
            let r = get(gw.http_addrs[0], "/").await;
            assert_eq!(r.status, 502);
            counts.push((url, upstream_errors(&gw, "connect")));
            assert!(gw.shutdown().await);
        }
        // A TLS handshake timeout (kind `timeout`) takes the same dial path.
        let (silent, task) = silent_origin().await;
        let gw = gateway(
            &format!("https://127.0.0.1:{silent}"),
            Some(&files.ca),
            "tls_handshake_timeout = \"200ms\"",
            "",
        )
        .await;
        assert_eq!(get(gw.http_addrs[0], "/").await.status, 504);
        counts.push(("tls timeout".into(), upstream_errors(&gw, "timeout")));
        assert!(gw.shutdown().await);
        task.abort();
        assert!(counts.iter().all(|(_, n)| *n == 1.0), "{counts:?}");
    })
    .await;
}

/// `response_header_timeout` holds for every request of a keep-alive HTTP/1.1 connection,
/// which the connection's own timer enforces (in time, past it, in time again, past it again,
/// all on one connection), and for an HTTP/2 client's stream, which has a timer of its own.
#[tokio::test]
async fn response_header_timeout_holds_for_every_request_of_a_connection() {
    bounded(60, async {
        for up in BOTH {
            let s = setup(
                up,
                "response_header_timeout = \"500ms\"",
                "\n[client]\nh2c = true\n",
            )
            .await;
            let mut c = RawConn::connect(s.addr).await;
            for (path, status) in [
                ("/delay/100", 200),
                ("/delay/3000", 504),
                ("/delay/50", 200),
                ("/delay/3000", 504),
                ("/status/201", 201),
            ] {
                let t0 = Instant::now();
                c.send(head("GET", path, "app.test", "").as_bytes()).await;
                let r = c.read_response(false).await;
                let took = t0.elapsed();
                assert_eq!(r.status, status, "{up:?} {path}: {}", r.text());
                if status == 504 {
                    assert_one_line(&r.body, "origin response timed out");
                    assert!(
                        took >= Duration::from_millis(500) && took < Duration::from_millis(2500),
                        "{up:?} {path}: took {took:?}"
                    );
                }
            }
            let tcp = tokio::net::TcpStream::connect(s.addr)
                .await
                .expect("connect");
            let (h2, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
            tokio::spawn(conn);
            let mut h2 = h2.ready().await.expect("h2 ready");
            let req = http::Request::get("http://app.test/delay/3000")
                .body(())
                .expect("request");
            let t0 = Instant::now();
            let (resp, _) = h2.send_request(req, true).expect("send");
            let resp = resp.await.expect("response");
            let took = t0.elapsed();
            assert_eq!(resp.status(), 504, "{up:?}: h2 client");
            assert!(
                took >= Duration::from_millis(500) && took < Duration::from_millis(2500),
                "{up:?}: h2 client took {took:?}"
            );
            s.stop().await;
        }
    })
    .await;
}

/// The response-timeout path is counted once (it only goes through `OriginPool::send`).
#[tokio::test]
async fn response_timeout_counts_once_in_upstream_errors() {
    bounded(30, async {
        for up in BOTH {
            let s = setup(up, "response_header_timeout = \"300ms\"", "").await;
            let r = get(s.addr, "/delay/2000").await;
            assert_eq!(r.status, 504, "{up:?}");
            assert_eq!(upstream_errors(&s.gw, "timeout"), 1.0, "{up:?}");
            s.stop().await;
        }
    })
    .await;
}
