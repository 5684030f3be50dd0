//! Header translation through the real gateway (DESIGN.md "proxy", RFC 9110 §7.6.1, RFC 9113
//! §8.2.2): hop-by-hop fields never reach the origin, X-Forwarded-For / -Proto are added, Host
//! travels as `:authority` (or is rewritten by `host_header`), the origin's `Date` and `Server`
//! reach the client unchanged, and extension methods are forwarded with their bodies.
//!
//! Every case runs against an HTTP/2 origin and an HTTP/1.1 origin: the two pools translate the
//! head differently (`:authority` vs `Host`).

mod support;

use std::time::Duration;

use support::proxy_kit::{bounded, head, report_setup, setup, RawConn, Up, BOTH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// `/headers` output as `(name, value)` pairs, in the order the origin received them.
fn seen(body: &str) -> Vec<(String, String)> {
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn values<'a>(seen: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    seen.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// GET `/headers` with `extra` header lines on a fresh connection; returns the response.
async fn headers_seen(
    addr: std::net::SocketAddr,
    host: &str,
    extra: &str,
) -> support::proxy_kit::Raw {
    let mut c = RawConn::connect(addr).await;
    c.send(head("GET", "/headers", host, extra).as_bytes())
        .await;
    c.read_response(false).await
}

#[tokio::test]
async fn hop_by_hop_request_fields_never_reach_the_origin() {
    bounded(30, async {
        for up in BOTH {
            let s = setup(up, "", "").await;
            let r = headers_seen(
                s.addr,
                "app.test",
                "Connection: keep-alive, X-Secret, x-other-secret\r\n\
                 X-Secret: 1\r\n\
                 X-Other-Secret: 2\r\n\
                 Keep-Alive: timeout=5\r\n\
                 Proxy-Connection: keep-alive\r\n\
                 Upgrade: h2c\r\n\
                 HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\
                 TE: gzip, trailers\r\n\
                 X-End-To-End: kept\r\n",
            )
            .await;
            assert_eq!(r.status, 200, "{up:?}: {}", r.text());
            let seen = seen(&r.text());
            for gone in [
                "connection",
                "x-secret",
                "x-other-secret",
                "keep-alive",
                "proxy-connection",
                "upgrade",
                "http2-settings",
                "transfer-encoding",
            ] {
                assert!(
                    values(&seen, gone).is_empty(),
                    "{up:?}: hop-by-hop {gone} reached the origin: {seen:?}"
                );
            }
            assert_eq!(values(&seen, "te"), ["trailers"], "{up:?}: {seen:?}");
            assert_eq!(values(&seen, "x-end-to-end"), ["kept"], "{up:?}: {seen:?}");
            s.stop().await;
        }
    })
    .await;
}

#[tokio::test]
async fn te_other_than_trailers_is_dropped() {
    bounded(30, async {
        for up in BOTH {
            let s = setup(up, "", "").await;
            let r = headers_seen(s.addr, "app.test", "TE: gzip, deflate;q=0.5\r\n").await;
            assert_eq!(r.status, 200, "{up:?}");
            let seen = seen(&r.text());
            assert!(values(&seen, "te").is_empty(), "{up:?}: {seen:?}");

            let r = headers_seen(s.addr, "app.test", "TE: trailers\r\n").await;
            assert_eq!(values(&self::seen(&r.text()), "te"), ["trailers"], "{up:?}");
            s.stop().await;
        }
    })
    .await;
}

#[tokio::test]
async fn x_forwarded_for_is_appended_and_proto_set() {
    bounded(30, async {
        for up in BOTH {
            let s = setup(up, "", "").await;
            // No previous value: the client's address alone.
            let r = headers_seen(s.addr, "app.test", "").await;
            let seen1 = seen(&r.text());
            assert_eq!(values(&seen1, "x-forwarded-for"), ["127.0.0.1"], "{up:?}");
            assert_eq!(values(&seen1, "x-forwarded-proto"), ["http"], "{up:?}");

            // An existing value is kept and the client appended; a spoofed proto is replaced.
            let r = headers_seen(
                s.addr,
                "app.test",
                "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n",
            )
            .await;
            let seen2 = seen(&r.text());
            assert_eq!(
                values(&seen2, "x-forwarded-for"),
                ["203.0.113.7, 127.0.0.1"],
                "{up:?}"
            );
            assert_eq!(values(&seen2, "x-forwarded-proto"), ["http"], "{up:?}");
            s.stop().await;
        }
    })
    .await;
}

/// RFC 9110 §5.3: several field lines of a list field are one comma-separated list; a proxy
/// that appends to X-Forwarded-For must keep every earlier hop, not only the first line.
#[tokio::test]
async fn x_forwarded_for_keeps_every_field_line() {
    bounded(30, async {
        for up in BOTH {
            let s = setup(up, "", "").await;
            let r = headers_seen(
                s.addr,
                "app.test",
                "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2, 10.0.0.3\r\n",
            )
            .await;
            let seen = seen(&r.text());
            let joined = values(&seen, "x-forwarded-for").join(", ");
            assert_eq!(
                joined, "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1",
                "{up:?}: {seen:?}"
            );
            s.stop().await;
        }
    })
    .await;
}

#[tokio::test]
async fn host_is_preserved_as_authority() {
    bounded(30, async {
        for up in BOTH {
            let s = setup(up, "", "").await;
            let r = headers_seen(s.addr, "shop.example.test:8080", "").await;
            assert_eq!(r.status, 200, "{up:?}");
            assert_eq!(
                r.header("x-seen-authority"),
                Some("shop.example.test:8080"),
                "{up:?}"
            );
            let seen = seen(&r.text());
            match up {
                // h2: the host travels as `:authority` only (RFC 9113 §8.3.1).
                Up::H2 => assert!(values(&seen, "host").is_empty(), "{seen:?}"),
                Up::H1 => assert_eq!(values(&seen, "host"), ["shop.example.test:8080"]),
            }
            // `Connection` naming Host (or any field) takes the client's field away; the
            // origin still gets the authority, once.
            for extra in [
                "Connection: Host\r\n",
                "Connection: x-other\r\nX-Other: 1\r\n",
            ] {
                let r = headers_seen(s.addr, "shop.example.test:8080", extra).await;
                assert_eq!(r.status, 200, "{up:?} {extra:?}");
                let got = crate::seen(&r.text());
                let want: &[&str] = match up {
                    Up::H2 => &[],
                    Up::H1 => &["shop.example.test:8080"],
                };
                assert_eq!(values(&got, "host"), want, "{up:?} {extra:?}");
                assert!(values(&got, "x-other").is_empty(), "{up:?} {extra:?}");
            }

            // Absolute-form target: its authority wins over Host (RFC 9112 §3.2.2).
            let mut c = RawConn::connect(s.addr).await;
            c.send(
                b"GET http://absolute.example.test/headers HTTP/1.1\r\n\
                  Host: ignored.example.test\r\nConnection: close\r\n\r\n",
            )
            .await;
            let r = c.read_response(false).await;
            assert_eq!(r.status, 200, "{up:?}: {}", r.text());
            assert_eq!(
                r.header("x-seen-authority"),
                Some("absolute.example.test"),
                "{up:?}"
            );
            s.stop().await;
        }
    })
    .await;
}

#[tokio::test]
async fn host_header_setting_rewrites_authority() {
    bounded(30, async {
        for up in BOTH {
            let s = setup(up, "host_header = \"backend.internal:9443\"", "").await;
            let r = headers_seen(s.addr, "public.example.test", "").await;
            assert_eq!(r.status, 200, "{up:?}");
            assert_eq!(
                r.header("x-seen-authority"),
                Some("backend.internal:9443"),
                "{up:?}"
            );
            let text = r.text();
            assert!(
                !text.contains("public.example.test"),
                "{up:?}: the client's host leaked to the origin: {text}"
            );
            s.stop().await;
        }
    })
    .await;
}

#[tokio::test]
async fn origin_date_and_server_reach_the_client_unchanged() {
    bounded(30, async {
        for up in BOTH {
            let s = setup(up, "", "").await;
            let mut c = RawConn::connect(s.addr).await;
            c.send(head("GET", "/", "app.test", "").as_bytes()).await;
            let r = c.read_response(false).await;
            assert_eq!(r.status, 200, "{up:?}");
            assert_eq!(
                r.header_all("date"),
                ["Thu, 01 Jan 2030 00:00:00 GMT"],
                "{up:?}"
            );
            assert_eq!(r.header_all("server"), ["muxgate-testkit-origin"], "{up:?}");
            assert_eq!(r.body.len(), 1024, "{up:?}");
            s.stop().await;
        }
    })
    .await;
}

#[tokio::test]
async fn extension_methods_are_forwarded_with_their_bodies() {
    bounded(30, async {
        for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
            let (gw, _origin, _files) = report_setup(alpn).await;
            let addr = gw.http_addrs[0];
            let tag = String::from_utf8_lossy(alpn).into_owned();
            let mut c = RawConn::connect(addr).await;

            // M-SEARCH without a body.
            c.send(head("M-SEARCH", "/ssdp", "app.test", "").as_bytes())
                .await;
            let r = c.read_response(false).await;
            assert_eq!(r.status, 200, "{tag}: {}", r.text());
            assert_eq!(r.header("x-method"), Some("M-SEARCH"), "{tag}");
            assert_eq!(r.header("x-path"), Some("/ssdp"), "{tag}");
            assert!(r.body.is_empty(), "{tag}");

            // PURGE with a Content-Length body (buffered path).
            let mut req = head("PURGE", "/cache/item", "app.test", "Content-Length: 14\r\n");
            req.push_str("purge this one");
            c.send(req.as_bytes()).await;
            let r = c.read_response(false).await;
            assert_eq!(r.status, 200, "{tag}: {}", r.text());
            assert_eq!(r.header("x-method"), Some("PURGE"), "{tag}");
            assert_eq!(r.text(), "purge this one", "{tag}");

            // PURGE with a chunked body (streamed path).
            let mut req = head(
                "PURGE",
                "/cache/item",
                "app.test",
                "Transfer-Encoding: chunked\r\n",
            );
            req.push_str("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
            c.send(req.as_bytes()).await;
            let r = c.read_response(false).await;
            assert_eq!(r.status, 200, "{tag}: {}", r.text());
            assert_eq!(r.header("x-method"), Some("PURGE"), "{tag}");
            assert_eq!(r.text(), "hello world", "{tag}");
            assert!(gw.shutdown().await, "{tag}: drain");
        }
    })
    .await;
}

#[tokio::test]
async fn extension_methods_reach_testkit_sink_and_echo() {
    bounded(30, async {
        for up in BOTH {
            let s = setup(up, "", "").await;
            let mut c = RawConn::connect(s.addr).await;
            c.send(head("M-SEARCH", "/sink", "app.test", "").as_bytes())
                .await;
            let r = c.read_response(false).await;
            assert_eq!((r.status, r.text().as_str()), (200, "0"), "{up:?}");

            let mut req = head("PURGE", "/sink", "app.test", "Content-Length: 5\r\n");
            req.push_str("abcde");
            c.send(req.as_bytes()).await;
            let r = c.read_response(false).await;
            assert_eq!((r.status, r.text().as_str()), (200, "5"), "{up:?}");

            let mut req = head("PURGE", "/echo", "app.test", "Content-Length: 5\r\n");
            req.push_str("vwxyz");
            c.send(req.as_bytes()).await;
            let r = c.read_response(false).await;
            assert_eq!((r.status, r.text().as_str()), (200, "vwxyz"), "{up:?}");
            assert_eq!(s.origin_requests(), 3, "{up:?}");
            s.stop().await;
        }
    })
    .await;
}

/// A cleartext origin of raw bytes whose response carries hop-by-hop fields: none may reach the
/// client (RFC 9110 §7.6.1 applies to responses too); end-to-end fields pass.
#[tokio::test]
async fn hop_by_hop_response_fields_never_reach_the_client() {
    bounded(30, async {
        support::init();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let origin = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).await.expect("read");
                assert!(n > 0, "gateway closed");
                buf.extend_from_slice(&chunk[..n]);
            }
            s.write_all(
                b"HTTP/1.1 200 OK\r\n\
                  Content-Length: 2\r\n\
                  Connection: X-Hop-Secret\r\n\
                  X-Hop-Secret: 1\r\n\
                  Keep-Alive: timeout=5, max=100\r\n\
                  Proxy-Connection: keep-alive\r\n\
                  X-End: kept\r\n\
                  \r\nok",
            )
            .await
            .expect("write");
            // Hold the connection until the gateway is done with it.
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await;
        });
        let toml = support::gateway_toml(
            "",
            &support::origin_toml("app", &["*"], &format!("http://127.0.0.1:{port}"), None, ""),
        );
        let gw = support::start_gateway(&toml).await;
        let mut c = RawConn::connect(gw.http_addrs[0]).await;
        c.send(head("GET", "/", "app.test", "").as_bytes()).await;
        let r = c.read_response(false).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok");
        assert_eq!(r.header("x-end"), Some("kept"));
        for gone in ["x-hop-secret", "keep-alive", "proxy-connection"] {
            assert!(r.header(gone).is_none(), "{gone} reached the client: {r:?}");
        }
        // The gateway's own `Connection` (if any) must not carry the origin's nominations.
        assert!(
            r.header_all("connection")
                .iter()
                .all(|v| !v.to_ascii_lowercase().contains("x-hop-secret")),
            "{r:?}"
        );
        drop(c);
        assert!(gw.shutdown().await);
        origin.abort();
    })
    .await;
}
