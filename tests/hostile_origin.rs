//! Hostile origins never hurt the gateway: raw HTTP/2 peers, scripted frame by frame, that break
//! the protocol where no server library would let them — garbage instead of a preface, a close
//! right after TLS, garbage mid-connection, an endless header block, SETTINGS and PING floods, a
//! RST_STREAM storm, a body that never ends, a data flood past the flow-control window, a window
//! that never opens, a connection-specific response header. Each time the affected request gets
//! a 502 with a one-line body (504 for the window that never opens; a cut response once the
//! headers were passed on), the broken connection is closed and replaced, a well-behaved origin
//! behind the same gateway keeps answering 200, and nothing grows without bound.
//!
//! The raw origin ([`raw_origin`], in `support::h2raw`) terminates TLS with ALPN `h2` and hands
//! the script a [`Peer`] that reads and writes frames as bytes (RFC 9113 §4.1: 3-byte length,
//! type, flags, stream id).

mod support;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use muxgate::testkit::origin::{Origin, RunningOrigin};
use muxgate::testkit::pki::{Pki, PkiFiles};
use muxgate::Gateway;
use support::h2raw::*;
use support::proxy_kit::{assert_one_line, bounded};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Short timeouts for both origins: a hostile origin's failures must show as fast 502s, well
/// inside them.
const FAST: &str = "response_header_timeout = \"2s\"\nconnect_timeout = \"1s\"\n\
                    tls_handshake_timeout = \"1s\"\nkeepalive_interval = \"0s\"\n";

/// A gateway with the hostile origin `bad` (host `bad.test`) and a well-behaved
/// `Origin::h2()` named `good` (host `good.test`).
struct Setup {
    gw: Gateway,
    bad: RawOrigin,
    _good: RunningOrigin,
    addr: SocketAddr,
    _files: PkiFiles,
}

/// Requests to `good.test` made in the background while a hostile origin does its worst.
struct GoodTraffic {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<u16>>,
}

/// Deterministic bytes that are no HTTP/2 at all (xorshift), starting with a frame length far
/// above any SETTINGS_MAX_FRAME_SIZE.
fn garbage(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = vec![0xde, 0xad, 0xbe, 0xef];
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Starts the hostile origin with `script`, a good h2 origin, and a gateway in front of both.
/// `extra` is appended to the hostile origin's table (after [`FAST`]).
async fn setup<F, Fut>(script: F, extra: &str) -> Setup
where
    F: Fn(u64, Peer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    init();
    let pki = Pki::localhost().expect("pki");
    let files = pki.write().expect("pki files");
    let bad = raw_origin(&pki, script).await;
    let good = Origin::h2().start(&pki).await.expect("good origin");
    let bad_url = format!("https://localhost:{}", bad.addr.port());
    let tables = format!(
        "{}{}",
        origin_toml(
            "bad",
            &["bad.test"],
            &bad_url,
            Some(&files.ca),
            &format!("{FAST}{extra}")
        ),
        origin_toml(
            "good",
            &["good.test"],
            &https_url(&good),
            Some(&files.ca),
            FAST
        ),
    );
    let gw = start_gateway(&gateway_toml("", &tables)).await;
    let addr = gw.http_addrs[0];
    Setup {
        gw,
        bad,
        _good: good,
        addr,
        _files: files,
    }
}

impl Setup {
    /// Streams in flight on the hostile origin's pool, over all its connections.
    fn bad_in_flight(&self) -> usize {
        self.pool_stats().iter().map(|c| c.in_flight).sum()
    }

    fn pool_stats(&self) -> Vec<muxgate::upstream::ConnStats> {
        self.gw.origin("bad").expect("origin bad").stats()
    }

    /// One request to the good origin must be served.
    async fn assert_good_serves(&self) {
        let r = get(self.addr, "good.test", "/").await;
        assert_eq!(r.status, 200, "good origin: {}", r.text());
        assert_eq!(r.body.len(), 1024);
    }

    /// Requests `good.test` on one keep-alive connection, back to back with a short pause,
    /// until [`GoodTraffic::finish`].
    async fn good_traffic(&self) -> GoodTraffic {
        let stop = Arc::new(AtomicBool::new(false));
        let mut client = Client::connect(self.addr).await;
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                statuses.push(client.get("good.test", "/").await.status.as_u16());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            statuses
        });
        GoodTraffic { stop, task }
    }
}

impl GoodTraffic {
    /// Stops the traffic; asserts every response was a 200 and at least one was made.
    async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let statuses = self.task.await.expect("good traffic task");
        assert!(!statuses.is_empty(), "no request reached the good origin");
        assert!(
            statuses.iter().all(|s| *s == 200),
            "good origin disturbed: {statuses:?}"
        );
    }
}

/// Asserts a 502 whose one-line body names `cause`.
fn assert_502(r: &Resp, cause: &str) {
    assert_eq!(r.status, 502, "{}", r.text());
    assert_one_line(&r.body, cause);
}

/// Waits (a few seconds at most) until the hostile origin's pool shows no connection.
async fn assert_bad_pool_empties(s: &Setup) {
    assert!(
        wait_until(Duration::from_secs(3), || s.pool_stats().is_empty()).await,
        "the broken connection was not closed: {:?}",
        s.pool_stats()
    );
}

/// Sends one request to `bad.test` at an origin that breaks every connection before its
/// SETTINGS; asserts a quick 502 and at most 1 + MAX_UNPROCESSED_RETRIES (3) dials, and that
/// the dialling stops once the request is answered.
async fn assert_quick_502_and_bounded_dials(s: &Setup) {
    let t0 = Instant::now();
    let r = get(s.addr, "bad.test", "/").await;
    let took = t0.elapsed();
    let dials = s.bad.connections();
    assert_eq!(
        r.status,
        502,
        "after {took:?} and {dials} dials: {}",
        r.text()
    );
    assert_one_line(&r.body, "origin");
    assert!(
        took < Duration::from_millis(1500),
        "took {took:?} ({dials} dials)"
    );
    assert!(
        (1..=4).contains(&dials),
        "{dials} connections for one request"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.bad.connections(),
        dials,
        "the gateway kept dialling with no request waiting"
    );
    assert_bad_pool_empties(s).await;
    s.assert_good_serves().await;
}

/// An origin that negotiated h2 but speaks HTTP/1.1: it answers the client preface with a
/// `400` where the server preface (a SETTINGS frame) belongs — RFC 9113 §3.4: a client "MUST
/// treat [it] as a connection error (Section 5.4.1) of type PROTOCOL_ERROR".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_server_preface_is_a_quick_502() {
    bounded(30, async {
        let s = setup(
            |_, mut p: Peer| async move {
                p.r.preface().await?;
                p.w.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    .await?;
                p.w.send(&garbage(512)).await?;
                p.r.until_closed().await;
                Ok(())
            },
            "",
        )
        .await;
        assert_quick_502_and_bounded_dials(&s).await;
    })
    .await;
}

/// An origin that completes TLS and closes the connection at once (an overloaded server
/// shedding connections): a quick 502, not a reconnect storm. Regression: when the pool first
/// waited for the peer's SETTINGS before publishing a connection, a connection that died first
/// was published anyway and redialled at once, in a loop that outlived the request (thousands
/// of dials, then a 503 after `pending_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_closing_right_after_tls_is_a_quick_502_not_a_dial_storm() {
    bounded(30, async {
        let s = setup(
            |_, p: Peer| async move {
                drop(p);
                Ok(())
            },
            "",
        )
        .await;
        assert_quick_502_and_bounded_dials(&s).await;
    })
    .await;
}

/// An origin that sends a valid server preface and then closes: the connection settles (so it
/// is published), fails on first use, and the request is retried on fresh connections a bounded
/// number of times before its 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_closing_right_after_its_settings_is_a_quick_502() {
    bounded(30, async {
        let s = setup(
            |_, mut p: Peer| async move {
                p.handshake().await?;
                Ok(())
            },
            "",
        )
        .await;
        assert_quick_502_and_bounded_dials(&s).await;
    })
    .await;
}

/// A valid preface, then garbage where the responses to three requests should be: each gets
/// a 502 (not retried: they were sent), the connection is closed and counted once in
/// `muxgate_upstream_errors_total{kind="protocol"}` (one failure, not one per stream), and
/// the next request dials a new connection, which this origin serves properly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_mid_connection_replaces_the_connection() {
    garbage_mid_connection(false).await;
}

/// As above, with an origin that closes its socket right after the garbage, unread data and
/// all (a TCP reset): the gateway's GOAWAY cannot be written, and the failure still counts
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_then_reset_counts_once() {
    garbage_mid_connection(true).await;
}

async fn garbage_mid_connection(close_at_once: bool) {
    bounded(30, async {
        let s = setup(
            move |n, mut p: Peer| async move {
                p.handshake().await?;
                if n == 1 {
                    for _ in 0..3 {
                        p.next_request().await?;
                    }
                    p.w.send(&garbage(4096)).await?;
                    if !close_at_once {
                        p.r.until_closed().await;
                    }
                    return Ok(());
                }
                loop {
                    let id = p.next_request().await?;
                    p.w.ok(id, b"ok\n").await?;
                }
            },
            "",
        )
        .await;
        let addr = s.addr;
        let three: Vec<_> = (0..3)
            .map(|_| tokio::spawn(async move { get(addr, "bad.test", "/").await }))
            .collect();
        for r in three {
            let r = r.await.expect("request");
            if close_at_once {
                // The reset may reach a stream before the garbage is parsed.
                assert_eq!(r.status, 502, "{}", r.text());
                assert_one_line(&r.body, "origin");
            } else {
                assert_502(&r, "origin sent an invalid response");
            }
        }
        assert_eq!(s.bad.connections(), 1);
        let protocol = || {
            metric_value(
                &s.gw.metrics().render(),
                "muxgate_upstream_errors_total{origin=\"bad\",kind=\"protocol\"}",
            )
        };
        // Counted by whichever of the connection's task and the failed streams gets there
        // first.
        assert!(
            wait_until(Duration::from_secs(3), || protocol() == Some(1.0)).await,
            "{:?}",
            protocol()
        );
        let r = get(s.addr, "bad.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "ok\n");
        assert_eq!(s.bad.connections(), 2);
        // Only the replacement is left in the pool, and the failure counted once.
        assert!(
            wait_until(Duration::from_secs(3), || s.pool_stats().len() == 1).await,
            "{:?}",
            s.pool_stats()
        );
        assert!(!s.pool_stats()[0].draining);
        assert_eq!(protocol(), Some(1.0));
        s.assert_good_serves().await;
    })
    .await;
}

/// `:status: 200` in a HEADERS frame without END_HEADERS, then CONTINUATION frames of
/// 16 KiB each, never ending (up to `cap` bytes, or until the gateway hangs up). Counts the
/// bytes written into `written`. With `ack` the origin ACKs the gateway's SETTINGS first, so the
/// gateway's 256 KiB header-list limit is in force (RFC 9113 §6.5.3: settings apply on ACK).
async fn endless_header_block(mut p: Peer, ack: bool, written: Arc<AtomicU64>) -> io::Result<()> {
    const CAP: u64 = 64 << 20;
    p.handshake().await?;
    let id = if ack {
        p.next_request().await?
    } else {
        p.next_request_silent().await?
    };
    let mut block = Vec::new();
    for i in 0..15 {
        hpack_literal(
            &mut block,
            format!("x-pad-{i:02}").as_bytes(),
            &[b'a'; 1000],
        );
    }
    let first = frame(HEADERS, 0, id, &[STATUS_200]);
    let cont = frame(CONTINUATION, 0, id, &block);
    p.w.send(&first).await?;
    // The gateway's reads run concurrently; drain them so its writes (GOAWAY) never block.
    let Peer { mut r, mut w } = p;
    let flood = async {
        while written.load(Ordering::SeqCst) < CAP {
            w.send(&cont).await?;
            written.fetch_add(cont.len() as u64, Ordering::SeqCst);
        }
        Ok::<_, io::Error>(())
    };
    tokio::select! {
        res = flood => res,
        _ = r.until_closed() => Ok(()),
    }
}

async fn endless_header_block_case(ack: bool) {
    bounded(60, async {
        let written = Arc::new(AtomicU64::new(0));
        let w = written.clone();
        let s = setup(
            move |_, p: Peer| endless_header_block(p, ack, w.clone()),
            "",
        )
        .await;
        let r = get(s.addr, "bad.test", "/").await;
        assert_502(&r, "origin sent an invalid response");
        assert_bad_pool_empties(&s).await;
        // The gateway cut the header block off instead of reading it for ever: the origin's
        // writes failed after what the socket buffers hold (a few MiB), long before the 64 MiB
        // it would have sent to a peer that kept reading.
        let n = written.load(Ordering::SeqCst);
        assert!(n < 16 << 20, "origin wrote {n} bytes of header block");
        assert_eq!(s.bad.connections(), 1);
        s.assert_good_serves().await;
    })
    .await;
}

/// An endless header block after the origin ACKed the gateway's SETTINGS: a 502, bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_continuation_header_block_is_a_502() {
    endless_header_block_case(true).await;
}

/// The same from an origin that never ACKs the gateway's SETTINGS. h2 applies a client's own
/// receive limits (header list size, frame size) from the start instead of waiting for the ACK,
/// so the 256 KiB limit holds here too: still a 502, still bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_continuation_without_settings_ack_is_still_bounded() {
    endless_header_block_case(false).await;
}

/// Counts of what the gateway answered during a flood.
#[derive(Default)]
struct Answers {
    settings_acks: AtomicU64,
    ping_acks: AtomicU64,
}

/// On the first connection, after the first request's HEADERS, writes `flood` (thousands of
/// frames) while draining the gateway's answers, then answers the request (200 `ok`). Every
/// other request is answered at once.
async fn flood_then_answer(
    n: u64,
    mut p: Peer,
    flood: Arc<Vec<u8>>,
    seen: Arc<Answers>,
) -> io::Result<()> {
    p.handshake().await?;
    if n == 1 {
        let id = p.next_request().await?;
        let Peer { mut r, mut w } = p;
        let next = {
            let drain = async {
                loop {
                    let f = r.frame().await?;
                    match f.kind {
                        SETTINGS if f.flags & ACK != 0 => {
                            seen.settings_acks.fetch_add(1, Ordering::SeqCst);
                        }
                        PING if f.flags & ACK != 0 => {
                            seen.ping_acks.fetch_add(1, Ordering::SeqCst);
                        }
                        HEADERS => return Ok::<_, io::Error>(f.stream),
                        _ => {}
                    }
                }
            };
            let write = async {
                w.send(&flood).await?;
                w.ok(id, b"ok\n").await
            };
            tokio::pin!(drain);
            tokio::select! {
                res = write => {
                    res?;
                    drain.await?
                }
                res = &mut drain => res?,
            }
        };
        // The next request arrived while draining.
        w.ok(next, b"ok\n").await?;
        p = Peer { r, w };
    }
    loop {
        let id = p.next_request().await?;
        p.w.ok(id, b"ok\n").await?;
    }
}

async fn flood_case(flood: Vec<u8>) -> Arc<Answers> {
    let seen = Arc::new(Answers::default());
    let (flood, answers) = (Arc::new(flood), seen.clone());
    bounded(60, async move {
        let s = setup(
            move |n, p: Peer| flood_then_answer(n, p, flood.clone(), answers.clone()),
            "",
        )
        .await;
        s.assert_good_serves().await;
        let traffic = s.good_traffic().await;
        let r = get(s.addr, "bad.test", "/").await;
        // Either answer is acceptable; hanging (or a 504) is not.
        match r.status.as_u16() {
            200 => assert_eq!(r.text(), "ok\n"),
            502 => assert_one_line(&r.body, "origin"),
            other => panic!("status {other}: {}", r.text()),
        }
        traffic.finish().await;
        s.assert_good_serves().await;
        // The gateway still reaches the hostile origin (same or replaced connection).
        let r = get(s.addr, "bad.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(wait_until(Duration::from_secs(3), || s.bad_in_flight() == 0).await);
    })
    .await;
    seen
}

/// 10,000 SETTINGS frames flipping MAX_CONCURRENT_STREAMS and INITIAL_WINDOW_SIZE: each must be
/// ACKed (RFC 9113 §6.5.3) and each stream-limit change reaches the pool; none of it may hang
/// the gateway or disturb another origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flood_does_not_hang_the_gateway() {
    let mut flood = Vec::new();
    for i in 0..10_000u32 {
        flood.extend(settings(&[
            (
                SETTINGS_MAX_CONCURRENT_STREAMS,
                if i % 2 == 0 { 1 } else { 100 },
            ),
            (SETTINGS_INITIAL_WINDOW_SIZE, 65_535 + (i % 7) * 1024),
        ]));
    }
    flood.extend(settings(&[(SETTINGS_MAX_CONCURRENT_STREAMS, 100)]));
    let seen = flood_case(flood).await;
    eprintln!(
        "settings ACKs seen by the origin: {}",
        seen.settings_acks.load(Ordering::SeqCst)
    );
}

/// 10,000 PINGs, each of which asks for an ACK (RFC 9113 §6.7), interleaved with 10,000
/// unsolicited PING ACKs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_does_not_hang_the_gateway() {
    let mut flood = Vec::new();
    for i in 0..10_000u64 {
        flood.extend(frame(PING, 0, 0, &i.to_be_bytes()));
        flood.extend(frame(PING, ACK, 0, &(!i).to_be_bytes()));
    }
    let seen = flood_case(flood).await;
    eprintln!(
        "PING ACKs seen by the origin: {}",
        seen.ping_acks.load(Ordering::SeqCst)
    );
}

/// The origin resets every stream with INTERNAL_ERROR: every request gets a 502 (not retried:
/// the origin may have processed it), the connection itself stays (a stream error is not a
/// connection error) and ends with no stream in flight, and the other origin serves throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rst_stream_storm_gets_502s_and_spares_other_origins() {
    bounded(60, async {
        let resets = Arc::new(AtomicU64::new(0));
        let sent = resets.clone();
        let s = setup(
            move |_, mut p: Peer| {
                let sent = sent.clone();
                async move {
                    p.handshake().await?;
                    loop {
                        let id = p.next_request().await?;
                        p.w.send(&frame(RST_STREAM, 0, id, &INTERNAL_ERROR.to_be_bytes()))
                            .await?;
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                }
            },
            "",
        )
        .await;
        let traffic = s.good_traffic().await;
        for r in get_concurrent(s.addr, "bad.test", "/", 50).await {
            assert_502(&r, "origin connection reset");
        }
        let mut client = Client::connect(s.addr).await;
        for _ in 0..50 {
            assert_502(
                &client.get("bad.test", "/").await,
                "origin connection reset",
            );
        }
        traffic.finish().await;
        assert_eq!(
            resets.load(Ordering::SeqCst),
            100,
            "a reset stream was retried"
        );
        assert_eq!(
            s.bad.connections(),
            1,
            "stream resets closed the connection"
        );
        assert!(
            wait_until(Duration::from_secs(3), || s.bad_in_flight() == 0).await,
            "{:?}",
            s.pool_stats()
        );
        s.assert_good_serves().await;
    })
    .await;
}

/// HEADERS 200, then a DATA frame every 500 ms for 3 s (past the 2 s response_header_timeout,
/// which ends at the headers), then nothing, never END_STREAM. The client gets the status and
/// every chunk; when it hangs up, the gateway cancels the upstream stream (RST_STREAM CANCEL)
/// and frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_body_streams_past_header_timeout_and_client_close_releases_it() {
    bounded(60, async {
        let reset_code = Arc::new(AtomicU64::new(u64::MAX));
        let code = reset_code.clone();
        let s = setup(
            move |_, mut p: Peer| {
                let code = code.clone();
                async move {
                    p.handshake().await?;
                    let id = p.next_request().await?;
                    p.w.send(&frame(HEADERS, END_HEADERS, id, &[STATUS_200]))
                        .await?;
                    for i in 0..7 {
                        p.w.send(&frame(DATA, 0, id, format!("tick-{i}\n").as_bytes()))
                            .await?;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    loop {
                        let f = p.r.frame().await?;
                        if f.kind == RST_STREAM && f.stream == id && f.payload.len() == 4 {
                            let c = u32::from_be_bytes([
                                f.payload[0],
                                f.payload[1],
                                f.payload[2],
                                f.payload[3],
                            ]);
                            code.store(u64::from(c), Ordering::SeqCst);
                        }
                    }
                }
            },
            "",
        )
        .await;
        let mut c = TcpStream::connect(s.addr).await.expect("connect");
        c.write_all(b"GET /forever HTTP/1.1\r\nHost: bad.test\r\n\r\n")
            .await
            .expect("write");
        let t0 = Instant::now();
        let mut got = Vec::new();
        let text = loop {
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
                .await
                .expect("the body stalled")
                .expect("read");
            assert!(n > 0, "gateway closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if text.contains("tick-6\n") {
                break text;
            }
        };
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
        for i in 0..7 {
            assert!(text.contains(&format!("tick-{i}\n")), "{text}");
        }
        // The body has not ended (no last chunk), and the stream is still held.
        assert!(!text.contains("\r\n0\r\n\r\n"), "{text}");
        assert_eq!(s.bad_in_flight(), 1, "{:?}", s.pool_stats());
        drop(c);
        assert!(
            wait_until(Duration::from_secs(5), || s.bad_in_flight() == 0).await,
            "closing the client did not release the upstream stream: {:?}",
            s.pool_stats()
        );
        assert!(
            wait_until(Duration::from_secs(5), || reset_code.load(Ordering::SeqCst)
                == u64::from(CANCEL))
            .await,
            "origin saw reset code {}",
            reset_code.load(Ordering::SeqCst)
        );
        s.assert_good_serves().await;
    })
    .await;
}

/// The origin ignores flow control: after HEADERS 200 it sends DATA as fast as it can, never
/// waiting for WINDOW_UPDATE, to a client that reads nothing. The gateway must refuse DATA past
/// the window it granted (RFC 9113 §6.9.1: FLOW_CONTROL_ERROR) rather than buffer it, and must
/// close the connection rather than discard the flood while granting connection window for it
/// (what h2 alone does after its stream reset): the origin's writes fail after the window
/// (256 KiB here) plus what the socket buffers hold, and the close is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_past_the_flow_control_window_is_refused() {
    flood_past_the_window("stream_window = \"256KiB\"\nconnection_window = \"1MiB\"").await;
}

/// As above, with a connection window far larger than the stream's: the origin overruns the
/// stream window first, h2 resets the stream (FLOW_CONTROL_ERROR) and would discard the rest of
/// the flood while granting connection window for it. The gateway sees its own reset go out
/// and closes the connection (`upstream::rst_watch`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_past_a_stream_window_closes_the_connection() {
    flood_past_the_window("stream_window = \"256KiB\"\nconnection_window = \"64MiB\"").await;
}

/// An origin that floods DATA regardless of flow control, to a client that reads nothing; the
/// gateway must cut it off well before `CAP` and count one protocol error.
async fn flood_past_the_window(windows: &'static str) {
    const CAP: u64 = 64 << 20;
    bounded(60, async {
        let written = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (w0, d0) = (written.clone(), done.clone());
        let s = setup(
            move |_, mut p: Peer| {
                let (written, done) = (w0.clone(), d0.clone());
                async move {
                    p.handshake().await?;
                    let id = p.next_request().await?;
                    p.w.send(&frame(HEADERS, END_HEADERS, id, &[STATUS_200]))
                        .await?;
                    let chunk = frame(DATA, 0, id, &[b'x'; 16 * 1024]);
                    let Peer { mut r, mut w } = p;
                    let flood = async {
                        while written.load(Ordering::SeqCst) < CAP {
                            w.send(&chunk).await?;
                            written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                        }
                        Ok::<_, io::Error>(())
                    };
                    let result = tokio::select! {
                        res = flood => res,
                        _ = r.until_closed() => Ok(()),
                    };
                    done.store(true, Ordering::SeqCst);
                    result
                }
            },
            windows,
        )
        .await;
        let mut c = TcpStream::connect(s.addr).await.expect("connect");
        c.write_all(b"GET /flood HTTP/1.1\r\nHost: bad.test\r\n\r\n")
            .await
            .expect("write");
        let mut head = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut head))
            .await
            .expect("no response head")
            .expect("read head");
        assert_eq!(&head, b"HTTP/1.1 200");
        // The client now reads nothing more.
        assert!(
            wait_until(Duration::from_secs(20), || done.load(Ordering::SeqCst)).await,
            "the origin is still writing: {} bytes",
            written.load(Ordering::SeqCst)
        );
        let n = written.load(Ordering::SeqCst);
        assert!(
            n < 16 << 20,
            "the gateway accepted {n} bytes past its window"
        );
        let text = s.gw.metrics().render();
        assert_eq!(
            metric_value(
                &text,
                "muxgate_upstream_errors_total{origin=\"bad\",kind=\"protocol\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert_bad_pool_empties(&s).await;
        s.assert_good_serves().await;
        drop(c);
    })
    .await;
}

/// The origin grants no flow-control window (SETTINGS_INITIAL_WINDOW_SIZE = 0, RFC 9113 §6.9.2),
/// allows one stream at a time, never reads request bodies and answers only body-less requests.
/// A POST cannot send its body and gets a 504 after `response_header_timeout`; the abandoned
/// stream must then be cancelled upstream (RST_STREAM, RFC 9113 §8.1) so that it stops counting
/// against the origin's stream limit and the next GET on the connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_is_cancelled_upstream_after_the_timeout() {
    bounded(30, async {
        let resets = Arc::new(AtomicU64::new(0));
        let seen = resets.clone();
        let s = setup(
            move |_, mut p: Peer| {
                let seen = seen.clone();
                async move {
                    p.r.preface().await?;
                    p.w.send(&settings(&[
                        (SETTINGS_INITIAL_WINDOW_SIZE, 0),
                        (SETTINGS_MAX_CONCURRENT_STREAMS, 1),
                    ]))
                    .await?;
                    loop {
                        let f = p.r.frame().await?;
                        match f.kind {
                            HEADERS if f.flags & END_STREAM != 0 => {
                                p.w.ok(f.stream, b"ok\n").await?
                            }
                            RST_STREAM => {
                                seen.fetch_add(1, Ordering::SeqCst);
                            }
                            SETTINGS if f.flags & ACK == 0 => {
                                p.w.send(&frame(SETTINGS, ACK, 0, &[])).await?;
                            }
                            _ => {}
                        }
                    }
                }
            },
            "",
        )
        .await;
        let r = get(s.addr, "bad.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let mut req =
            b"POST /upload HTTP/1.1\r\nHost: bad.test\r\nContent-Length: 1000\r\n\r\n".to_vec();
        req.extend_from_slice(&[b'u'; 1000]);
        let t0 = Instant::now();
        let r = raw_request(s.addr, &req).await;
        assert_eq!(r.status, 504, "{}", r.text());
        assert_one_line(&r.body, "origin response timed out");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t0.elapsed()
        );
        assert!(
            wait_until(Duration::from_secs(3), || s.bad_in_flight() == 0).await,
            "{:?}",
            s.pool_stats()
        );
        let r = get(s.addr, "bad.test", "/").await;
        assert_eq!(r.status, 200, "GET after the abandoned POST: {}", r.text());
        assert!(
            wait_until(Duration::from_secs(5), || resets.load(Ordering::SeqCst)
                == 1)
            .await,
            "the abandoned stream was never reset upstream: it stays open on the connection"
        );
        assert_eq!(s.bad.connections(), 1);
        s.assert_good_serves().await;
    })
    .await;
}

/// `connection: close` in a response header block (literal, HPACK §6.2.2): a connection-specific
/// field makes the response malformed (RFC 9113 §8.2.2), so the stream fails with a 502 — and
/// only the stream: the connection carries the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_specific_response_header_is_a_502() {
    bounded(30, async {
        let s = setup(
            |_, mut p: Peer| async move {
                p.handshake().await?;
                let mut block = vec![STATUS_200];
                hpack_literal(&mut block, b"connection", b"close");
                loop {
                    let id = p.next_request().await?;
                    p.w.send(&frame(HEADERS, END_HEADERS | END_STREAM, id, &block))
                        .await?;
                }
            },
            "",
        )
        .await;
        for _ in 0..2 {
            let r = get(s.addr, "bad.test", "/").await;
            assert_502(&r, "origin sent an invalid response");
        }
        assert_eq!(s.bad.connections(), 1);
        assert!(wait_until(Duration::from_secs(3), || s.bad_in_flight() == 0).await);
        s.assert_good_serves().await;
    })
    .await;
}
