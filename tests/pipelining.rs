//! HTTP/1.1 pipelining (RFC 9112 §9.3.2): requests written back to back in one write are
//! answered in request order, with bodies framed correctly, whether the origin is reached over
//! multiplexed HTTP/2 (where later requests could finish first) or the HTTP/1.1 pool.

mod support;

use std::time::Instant;

use support::proxy_kit::{bounded, head, setup, RawConn, BOTH};

#[tokio::test]
async fn three_pipelined_gets_come_back_in_order() {
    bounded(30, async {
        for up in BOTH {
            let s = setup(up, "", "").await;
            let mut c = RawConn::connect(s.addr).await;
            // The first is the slowest: answering in completion order would put it last.
            let batch = [
                head("GET", "/delay/300", "app.test", ""),
                head("GET", "/status/202", "app.test", ""),
                head("GET", "/status/203", "app.test", "Connection: close\r\n"),
            ]
            .concat();
            let t0 = Instant::now();
            c.send(batch.as_bytes()).await;
            let r1 = c.read_response(false).await;
            let r2 = c.read_response(false).await;
            let r3 = c.read_response(false).await;
            assert_eq!(
                (r1.status, r1.text().as_str()),
                (200, "delayed\n"),
                "{up:?}"
            );
            assert_eq!((r2.status, r2.text().as_str()), (202, "status\n"), "{up:?}");
            assert_eq!((r3.status, r3.text().as_str()), (203, "status\n"), "{up:?}");
            assert!(
                t0.elapsed().as_millis() >= 300,
                "{up:?}: delay not honoured"
            );
            assert_eq!(r3.header("connection"), Some("close"), "{up:?}");
            let rest = c.read_to_eof().await;
            assert!(rest.is_empty(), "{up:?}: stray bytes {rest:?}");
            assert_eq!(s.origin_requests(), 3, "{up:?}");
            s.stop().await;
        }
    })
    .await;
}

#[tokio::test]
async fn pipelined_requests_with_bodies_stay_framed() {
    bounded(30, async {
        for up in BOTH {
            let s = setup(up, "", "").await;
            let mut c = RawConn::connect(s.addr).await;
            let mut batch = head("POST", "/echo", "app.test", "Content-Length: 5\r\n");
            batch.push_str("hello");
            batch.push_str(&head("GET", "/bytes/70000", "app.test", ""));
            batch.push_str(&head(
                "POST",
                "/echo",
                "app.test",
                "Transfer-Encoding: chunked\r\n",
            ));
            batch.push_str("3\r\nabc\r\n0\r\n\r\n");
            batch.push_str(&head("HEAD", "/", "app.test", ""));
            batch.push_str(&head(
                "GET",
                "/status/204",
                "app.test",
                "Connection: close\r\n",
            ));
            c.send(batch.as_bytes()).await;

            let r = c.read_response(false).await;
            assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{up:?}");
            let r = c.read_response(false).await;
            assert_eq!(r.status, 200, "{up:?}");
            assert_eq!(r.body.len(), 70_000, "{up:?}");
            assert!(r.body.iter().all(|&b| b == b'y'), "{up:?}");
            let r = c.read_response(false).await;
            assert_eq!((r.status, r.text().as_str()), (200, "abc"), "{up:?}");
            let r = c.read_response(true).await;
            assert_eq!(r.status, 200, "{up:?}: HEAD");
            let r = c.read_response(false).await;
            assert_eq!(r.status, 204, "{up:?}");
            let rest = c.read_to_eof().await;
            assert!(rest.is_empty(), "{up:?}: stray bytes {rest:?}");
            assert_eq!(s.origin_requests(), 5, "{up:?}");
            s.stop().await;
        }
    })
    .await;
}

/// A malformed request in the middle of a pipeline: the ones before it are answered, it gets
/// 400 with `Connection: close`, and nothing after it is processed. Today the client gets no byte
/// at all, not even the 201 (see `connection_close_mid_pipeline_keeps_earlier_responses`).
#[tokio::test]
async fn pipeline_stops_at_a_bad_request() {
    bounded(30, async {
        for up in BOTH {
            let s = setup(up, "", "").await;
            let mut c = RawConn::connect(s.addr).await;
            let batch = [
                head("GET", "/status/201", "app.test", ""),
                // Two Host fields: refused by the gateway (RFC 9112 §3.2).
                head("GET", "/status/202", "app.test", "Host: other.test\r\n"),
                head("GET", "/status/203", "app.test", ""),
            ]
            .concat();
            c.send(batch.as_bytes()).await;
            let r = c.read_response(false).await;
            assert_eq!(r.status, 201, "{up:?}");
            let r = c.read_response(false).await;
            assert_eq!(r.status, 400, "{up:?}: {}", r.text());
            assert_eq!(r.header("connection"), Some("close"), "{up:?}");
            let rest = c.read_to_eof().await;
            assert!(
                rest.is_empty(),
                "{up:?}: answered after a 400: {:?}",
                String::from_utf8_lossy(&rest)
            );
            assert_eq!(s.origin_requests(), 1, "{up:?}");
            s.stop().await;
        }
    })
    .await;
}

/// RFC 9112 §9.6: a request with `Connection: close` is the last one answered; the responses
/// before it must still be delivered. With hyper's `pipeline_flush(true)` (src/server.rs) the
/// responses buffered for the pipeline are dropped when the connection closes while more
/// requests sit unread in the buffer: the client receives nothing (reproduced with a bare hyper
/// 1.12 server: `pipeline_flush(false)` answers 201 and 202, `true` answers nothing; with the
/// gateway's `pipeline_flush(false)` every test in this file passes).
#[tokio::test]
async fn connection_close_mid_pipeline_keeps_earlier_responses() {
    bounded(30, async {
        for up in BOTH {
            let s = setup(up, "", "").await;
            let mut c = RawConn::connect(s.addr).await;
            let batch = [
                head("GET", "/status/201", "app.test", ""),
                head("GET", "/status/202", "app.test", "Connection: close\r\n"),
                head("GET", "/status/203", "app.test", ""),
            ]
            .concat();
            c.send(batch.as_bytes()).await;
            let all = c.read_to_eof().await;
            let text = String::from_utf8_lossy(&all);
            let statuses: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("HTTP/1.1 "))
                .collect();
            assert_eq!(
                statuses,
                ["HTTP/1.1 201 Created", "HTTP/1.1 202 Accepted"],
                "{up:?}: {text:?}"
            );
            s.stop().await;
        }
    })
    .await;
}
