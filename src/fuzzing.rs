//! Fuzz entry points, one per target in `fuzz/` (its own workspace; see `fuzz/README.md`). Each
//! takes the fuzzer's bytes, drives the gateway's real code and asserts the target's invariants
//! by panicking. They live in the library so the fuzz crate and the replay tests
//! (`tests/fuzz_regressions.rs`) share them; they are not part of the gateway's API.
//!
//! The two I/O targets run on a runtime the caller builds — current-thread with paused time
//! (`Builder::new_current_thread().enable_all().start_paused(true)`, tokio's `test-util`), so
//! every timeout resolves at once in virtual time — and reach the network code through the
//! in-memory dialler of [`crate::upstream::connect::with_dialer`].
//!
//! Panics inside tasks spawned on that runtime are caught by tokio; libFuzzer's panic hook
//! aborts the process first, and the replay tests install the same kind of hook.
#![doc(hidden)]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::config::{Config, ConfigError, ValidConfig, ValidOrigin};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::proxy::headers::{request_to_origin, response_to_client, ForwardedFor};
use crate::proxy::{ClientInfo, Proxy};
use crate::route::{HostPattern, Router};
use crate::upstream::connect::{with_dialer, Connected, Dialer, Transport};
use crate::upstream::{BoxError, OriginPool, OutBody, OutHead, Outgoing, UpBody};

/// Fields that must never cross the gateway, whatever `Connection` says (RFC 9110 §7.6.1,
/// RFC 9113 §8.2.2). `te` is checked apart: it may cross as exactly `trailers`.
const CONNECTION_SPECIFIC: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Buffer of each in-memory connection, per direction.
const DUPLEX_BUF: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// fuzz_header_translate
// ---------------------------------------------------------------------------------------------

/// `fuzz_header_translate`: byte 0 bit 0 = client over TLS, bit 1 = IPv6 client; bytes 1..5 the
/// client address; the rest, one field per `\n`-separated line as `name:value` (invalid names or
/// values are skipped). Runs `request_to_origin` and `response_to_client` and checks: no
/// hop-by-hop field and nothing `Connection` nominates survives; `te` only ever `trailers` (and
/// only towards the origin); no `Host` or `Expect` in the request; exactly one
/// `X-Forwarded-For` line, ending with the client address; one `X-Forwarded-Proto`; every other
/// field passes unchanged, in order.
pub fn header_translate(data: &[u8]) {
    let knob = data.first().copied().unwrap_or(0);
    let tls = knob & 1 != 0;
    let b = |i: usize| data.get(i).copied().unwrap_or(0);
    let client = if knob & 2 != 0 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            u16::from_be_bytes([b(1), b(2)]),
            u16::from_be_bytes([b(3), b(4)]),
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(b(1), b(2), b(3), b(4)))
    };
    let input = parse_fields(data.get(5..).unwrap_or(&[]));

    let out = request_to_origin(input.clone(), &ForwardedFor::new(client), tls);
    check_no_hop_by_hop(&input, &out, "request");
    let te: Vec<_> = out.get_all(header::TE).iter().collect();
    assert!(
        te.len() <= 1 && te.iter().all(|v| *v == "trailers"),
        "request: te forwarded as {te:?}"
    );
    assert!(!out.contains_key(header::HOST), "request: host forwarded");
    assert!(
        !out.contains_key(header::EXPECT),
        "request: expect forwarded"
    );
    let ip = client.to_string();
    let xff: Vec<_> = out.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff.len(), 1, "request: x-forwarded-for lines {xff:?}");
    let xff = xff[0].to_str().unwrap_or_default();
    assert!(
        xff == ip || xff.ends_with(&format!(", {ip}")),
        "request: x-forwarded-for {xff:?} does not end with {ip}"
    );
    let xfp: Vec<_> = out.get_all("x-forwarded-proto").iter().collect();
    assert!(
        xfp.len() == 1 && xfp[0] == if tls { "https" } else { "http" },
        "request: x-forwarded-proto {xfp:?}"
    );
    let gateway_set = [
        "te",
        "host",
        "expect",
        "x-forwarded-for",
        "x-forwarded-proto",
    ];
    check_end_to_end_kept(&input, &out, &gateway_set, "request");

    let mut resp = input.clone();
    response_to_client(&mut resp);
    check_no_hop_by_hop(&input, &resp, "response");
    assert!(!resp.contains_key(header::TE), "response: te forwarded");
    check_end_to_end_kept(&input, &resp, &["te"], "response");
}

/// `name:value` lines into a map; lines that do not make a valid field are skipped.
fn parse_fields(bytes: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in bytes.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = trim_ows(&line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            h.append(n, v);
        }
    }
    h
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// Every name `Connection` lists (RFC 9110 §7.6.1 `#connection-option`), read from the raw
/// bytes: a value with non-ASCII text still nominates its valid tokens.
fn nominated(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(trim_ows(t)).ok())
        .collect()
}

fn check_no_hop_by_hop(input: &HeaderMap, out: &HeaderMap, side: &str) {
    for name in CONNECTION_SPECIFIC {
        assert!(
            !out.contains_key(name),
            "{side}: hop-by-hop {name} forwarded"
        );
    }
    for name in nominated(input) {
        // The gateway sets these itself (te only as `trailers`, checked by the caller).
        if ["te", "x-forwarded-for", "x-forwarded-proto"].contains(&name.as_str()) {
            continue;
        }
        assert!(
            !out.contains_key(&name),
            "{side}: {name} is listed in Connection {:?} but was forwarded",
            input.get_all(header::CONNECTION).iter().collect::<Vec<_>>()
        );
    }
}

fn check_end_to_end_kept(input: &HeaderMap, out: &HeaderMap, gateway_set: &[&str], side: &str) {
    let dropped = nominated(input);
    for name in input.keys() {
        if CONNECTION_SPECIFIC.contains(&name.as_str())
            || gateway_set.contains(&name.as_str())
            || dropped.contains(name)
        {
            continue;
        }
        let a: Vec<_> = input.get_all(name).iter().collect();
        let b: Vec<_> = out.get_all(name).iter().collect();
        assert_eq!(a, b, "{side}: end-to-end field {name} changed");
    }
}

// ---------------------------------------------------------------------------------------------
// fuzz_config
// ---------------------------------------------------------------------------------------------

/// `fuzz_config`: the bytes as a TOML file → [`Config::from_toml`] → [`Config::validate`].
/// Either an error whose Display is one line, or a valid config such that: every host pattern
/// it accepts routes somewhere (a pattern no request can match is a silent misconfiguration),
/// and the effective configuration the CLI prints (`toml::to_string`) loads again to the same
/// valid configuration.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let valid = match Config::from_toml(text).and_then(Config::validate) {
        Ok(v) => v,
        Err(e) => return check_one_line(&e),
    };
    let router = Router::new(
        valid
            .origins
            .iter()
            .enumerate()
            .map(|(i, o)| (i, o.raw.hosts.as_slice())),
    );
    for o in &valid.origins {
        for h in &o.raw.hosts {
            let probe = match HostPattern::parse(h) {
                Ok(HostPattern::Exact(name)) => name,
                Ok(HostPattern::Suffix(s)) => format!("x{s}"),
                Ok(HostPattern::Any) => "any.example".into(),
                Err(e) => panic!("validate() accepted host pattern {h:?}: {e}"),
            };
            assert!(
                router.route(&probe).is_some(),
                "host pattern {h:?} of origin {:?} can never match (probe {probe:?})",
                o.raw.name
            );
        }
    }
    // A config that cannot be printed is reported by the CLI as an error, not a panic; what
    // does print must load back.
    let Ok(printed) = toml::to_string(&valid.raw) else {
        return;
    };
    let again = Config::from_toml(&printed)
        .and_then(Config::validate)
        .unwrap_or_else(|e| panic!("printed config does not load: {e}\n{printed}"));
    let reprinted = toml::to_string(&again.raw)
        .unwrap_or_else(|e| panic!("reloaded config does not print: {e}\n{printed}"));
    assert_eq!(printed, reprinted, "printing is not a fixpoint");
}

fn check_one_line(e: &ConfigError) {
    let s = e.to_string();
    assert!(
        !s.contains(['\n', '\r']),
        "config error is not one line: {s:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// fuzz_h2_guard
// ---------------------------------------------------------------------------------------------

/// `fuzz_h2_guard`: byte 0 and 1 set the control-frame and reset rates (1..=64 per second), the
/// top two bits of byte 0 the WINDOW_UPDATEs allowed per DATA frame sent (0 = no limit); the
/// rest is segments `[len, flag|dt_ms, len bytes…]` of what an HTTP/2 client sends after the
/// preface, each arriving `dt_ms` (0..=127) after the previous one — or, with the flag (0x80),
/// bytes the gateway writes to the client (its frames, counted for the WINDOW_UPDATE limit). Feeds them to [`crate::h2guard::FrameMeter`] as
/// segments and again byte by byte (same arrival times) and checks: both agree (passed bytes,
/// verdict, last stream id) — how TCP splits the stream never changes the outcome; a meter
/// passes at most what it is given, passes nothing once done, and stops early only when done;
/// an untripped meter passes everything; the GOAWAY it writes is one well-formed frame.
pub fn h2_guard(data: &[u8]) {
    use crate::h2guard::{FrameMeter, Limits, PREFACE};
    let b = |i: usize| data.get(i).copied().unwrap_or(0);
    let (control, resets) = (1 + u32::from(b(0) % 64), 1 + u32::from(b(1) % 64));
    // 0 (no limit) to 3 WINDOW_UPDATEs per DATA frame sent; the top bits of the first byte.
    let window_updates = u32::from(b(0) >> 6);
    let t0 = tokio::time::Instant::now();
    let mut segments: Vec<(tokio::time::Instant, bool, &[u8])> = vec![(t0, false, PREFACE)];
    let (mut i, mut t) = (2, t0);
    while i + 2 <= data.len() {
        let len = usize::from(data[i]);
        let sent = data[i + 1] & 0x80 != 0;
        t += Duration::from_millis(u64::from(data[i + 1] & 0x7f));
        let end = (i + 2 + len).min(data.len());
        segments.push((t, sent, &data[i + 2..end]));
        i = end;
    }
    let run = |bytewise: bool| {
        let limits = Limits {
            control_per_sec: control,
            resets_per_sec: resets,
            window_updates_per_data: window_updates,
        };
        let mut m = FrameMeter::new(limits, t0);
        let (mut fed, mut passed) = (0usize, 0usize);
        for (now, sent, seg) in &segments {
            if *sent {
                if bytewise {
                    seg.chunks(1).for_each(|p| m.feed_sent(p));
                } else {
                    m.feed_sent(seg);
                }
                continue;
            }
            let pieces: Vec<&[u8]> = if bytewise {
                seg.chunks(1).collect()
            } else {
                vec![*seg]
            };
            for piece in pieces {
                let was_done = m.done();
                let n = m.feed(piece, *now);
                assert!(n <= piece.len());
                assert!(!was_done || n == 0, "passed bytes after done");
                assert!(
                    n == piece.len() || m.done(),
                    "stopped early without a verdict"
                );
                fed += piece.len();
                passed += n;
            }
        }
        if m.tripped().is_none() {
            assert_eq!(passed, fed);
        }
        let g = m.goaway();
        let len = u32::from_be_bytes([0, g[0], g[1], g[2]]) as usize;
        assert_eq!(len + 9, g.len());
        assert_eq!(g[3], 0x7);
        (
            passed,
            m.tripped(),
            m.max_stream(),
            m.done(),
            m.data_frames_sent(),
        )
    };
    assert_eq!(run(false), run(true));
}

// ---------------------------------------------------------------------------------------------
// fuzz_cache_policy
// ---------------------------------------------------------------------------------------------

/// `fuzz_cache_policy`: see [`crate::cache::policy::fuzz_policy`].
pub fn cache_policy(data: &[u8]) {
    crate::cache::policy::fuzz_policy(data);
}

// ---------------------------------------------------------------------------------------------
// fuzz_upstream_frames
// ---------------------------------------------------------------------------------------------

/// With `MUXGATE_FUZZ_TRACE` set, prints what happened (for triaging an input).
fn trace(line: impl FnOnce() -> String) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("MUXGATE_FUZZ_TRACE").is_some()) {
        eprintln!("[fuzz] {}", line());
    }
}

/// Virtual time within which every request must resolve: 5 attempts × (pending 5 s +
/// SETTINGS wait 2 s + response header 5 s) with room to spare.
const REQUEST_BOUND: Duration = Duration::from_secs(120);

/// `fuzz_upstream_frames`: a hostile origin's bytes against the real HTTP/2 (and HTTP/1.1) client
/// code of one [`OriginPool`], over in-memory connections.
///
/// ```text
/// input  = g0 g1 conn*          (missing bytes read as 0)
/// g0     bits 0-1  requests - 1 (1..=4, sent concurrently)
///        bit 2     max_connections = 2 (else 1)
///        bit 3     initial_max_streams = 1 (else 100)
///        bit 4     retry_idempotent
///        bit 5     no keepalive PINGs (else every 1 s, 1 s timeout)
///        bits 6-7  request body: none, 5 buffered bytes, 2 streamed chunks, chunks + trailers
/// g1     bit i     request i is a POST (else GET)
/// conn   = flags op*            one per dial, in order; a dial past the last one fails
/// flags  bit 0     ALPN chose http/1.1 (else h2)
///        bit 1     write a valid server preface (empty SETTINGS) first
///        bit 2     raw: once the gateway has written, send the rest of the input verbatim
/// op     'W' len:u16be bytes   write
///        'R'                   wait until the gateway has written since the last 'R' (≤ 1 s)
///        'S' n                 sleep n × 50 ms
///        'C'                   close the write side (EOF), keep reading
///        'N'                   close the connection; the next ops script the next dial
///        any other byte        write that byte
/// ```
/// At the end of its ops a connection stays open, reading, silent.
///
/// Invariants: no panic; every request resolves (response or error) within [`REQUEST_BOUND`] of
/// virtual time; once the response bodies are read (or given up after 30 s) nothing is in
/// flight; once the pool is dropped every connection closes.
///
/// `rt` must be a fresh current-thread runtime with paused time.
pub fn upstream_frames(rt: Runtime, data: &[u8]) {
    let g0 = data.first().copied().unwrap_or(0);
    let g1 = data.get(1).copied().unwrap_or(0);
    let scripts = parse_scripts(data.get(2..).unwrap_or(&[]));
    let mut origin = base_origin().clone();
    origin.raw.max_connections = if g0 & 4 != 0 { 2 } else { 1 };
    origin.raw.initial_max_streams = if g0 & 8 != 0 { 1 } else { 100 };
    origin.raw.retry_idempotent = g0 & 16 != 0;
    if g0 & 32 != 0 {
        origin.raw.keepalive_interval.0 = Duration::ZERO;
    }
    rt.block_on(async move {
        let metrics = Metrics::new();
        let om = metrics.origin("fuzz");
        let queue = Arc::new(Mutex::new(VecDeque::from(scripts)));
        let dialer: Dialer = Arc::new(move |_host: &str, _port: u16| {
            let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            let Some(script) = next else {
                return Err(Error::Connect("no more scripted connections".into()));
            };
            let (gateway_end, origin_end) = tokio::io::duplex(DUPLEX_BUF);
            let h2 = !script.h1;
            tokio::spawn(scripted_origin(origin_end, script));
            Ok(Connected {
                io: Transport::Memory(gateway_end),
                h2,
                resumed: None,
                peer: None,
            })
        });
        let pool = with_dialer(dialer, || OriginPool::new(&origin, om.clone()))
            .unwrap_or_else(|e| panic!("pool: {e}"));
        let pool = Arc::new(pool);

        let n = usize::from(g0 & 3) + 1;
        let requests = (0..n).map(|i| {
            let pool = pool.clone();
            let post = g1 & (1 << i) != 0;
            async move {
                let out = fuzz_request(post, g0 >> 6, i);
                let up = tokio::time::timeout(REQUEST_BOUND, pool.send(out))
                    .await
                    .unwrap_or_else(|_| panic!("request {i} unresolved after {REQUEST_BOUND:?}"));
                match up {
                    Ok(up) => {
                        let status = up.response.status();
                        let body = up.response.into_body().collect();
                        // A body the origin never finishes is the client's to abandon.
                        let body = tokio::time::timeout(Duration::from_secs(30), body).await;
                        trace(|| match body {
                            Ok(Ok(b)) => format!("request {i}: {status}, body {:?}", b.to_bytes()),
                            Ok(Err(e)) => format!("request {i}: {status}, body failed: {e}"),
                            Err(_) => format!("request {i}: {status}, body abandoned"),
                        });
                    }
                    Err(e) => trace(|| format!("request {i}: error {e}")),
                }
            }
        });
        futures_util::future::join_all(requests).await;

        let stats = pool.stats();
        assert!(
            stats.iter().all(|c| c.in_flight == 0),
            "streams still in flight after every response ended: {stats:?}"
        );
        assert_eq!(
            om.streams_active.get(),
            0,
            "streams_active gauge not back to 0"
        );
        drop(pool);
        // Background work (body drains, reapers, drivers) finishes within its own timeouts.
        tokio::time::sleep(Duration::from_secs(600)).await;
        let open = (om.open_h2.get(), om.open_h1.get());
        assert_eq!(
            open,
            (0, 0),
            "connections (h2, h1) left open after the pool was dropped"
        );
    });
}

/// The origin used by `fuzz_upstream_frames`: short timeouts so failures show in a few virtual
/// seconds.
fn base_origin() -> &'static ValidOrigin {
    static BASE: OnceLock<ValidOrigin> = OnceLock::new();
    BASE.get_or_init(|| {
        let toml = r#"
            [[origins]]
            name = "fuzz"
            hosts = ["*"]
            url = "https://origin.fuzz:443"
            pending_timeout = "5s"
            response_header_timeout = "5s"
            connect_timeout = "1s"
            keepalive_interval = "1s"
            keepalive_timeout = "1s"
            idle_timeout = "10s"
            retry_buffer = "1KiB"
        "#;
        let cfg = Config::from_toml(toml)
            .and_then(Config::validate)
            .unwrap_or_else(|e| panic!("fuzz origin config: {e}"));
        cfg.origins[0].clone()
    })
}

/// Request `i`: GET or POST `/r{i}` with the body kind `body` (0..=3, see [`upstream_frames`]).
fn fuzz_request(post: bool, body: u8, i: usize) -> Outgoing {
    let mut headers = HeaderMap::new();
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    let body = match body {
        0 => OutBody::Empty,
        1 => OutBody::Buffered(Bytes::from_static(b"hello")),
        kind => {
            let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
                Ok(Frame::data(Bytes::from_static(b"chunk-1;"))),
                Ok(Frame::data(Bytes::from(vec![b'x'; 2000]))),
            ];
            if kind == 3 {
                let mut t = HeaderMap::new();
                t.insert("x-checksum", HeaderValue::from_static("abc"));
                frames.push(Ok(Frame::trailers(t)));
            }
            let s = StreamBody::new(futures_util::stream::iter(frames));
            OutBody::Stream(s.boxed_unsync() as UpBody)
        }
    };
    let path = PathAndQuery::try_from(format!("/r{i}")).unwrap_or(PathAndQuery::from_static("/"));
    Outgoing {
        head: OutHead {
            method: if post { Method::POST } else { Method::GET },
            authority: Authority::from_static("app.fuzz"),
            path_and_query: path,
            headers,
            host_field: false,
        },
        body,
        head_clock: None,
    }
}

/// What one scripted connection does.
#[derive(Debug, Default)]
struct Script {
    h1: bool,
    preface: bool,
    ops: Vec<Op>,
    /// Ended with `N` (else it ran out of input and stays open).
    closed: bool,
}

#[derive(Debug)]
enum Op {
    Write(Vec<u8>),
    /// Wait for more bytes from the gateway.
    Read,
    Sleep(u8),
    Close,
}

/// Splits the input after the two global bytes into one [`Script`] per connection.
fn parse_scripts(mut b: &[u8]) -> Vec<Script> {
    let mut scripts = Vec::new();
    while let Some((&flags, rest)) = b.split_first() {
        b = rest;
        let mut s = Script {
            h1: flags & 1 != 0,
            preface: flags & 2 != 0,
            ops: Vec::new(),
            closed: false,
        };
        if flags & 4 != 0 {
            s.ops.push(Op::Read);
            s.ops.push(Op::Write(b.to_vec()));
            scripts.push(s);
            break;
        }
        while let Some((&op, rest)) = b.split_first() {
            b = rest;
            match op {
                b'W' => {
                    let len = match b {
                        [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
                        _ => 0,
                    };
                    b = b.get(2..).unwrap_or(&[]);
                    let (data, rest) = b.split_at(len.min(b.len()));
                    s.ops.push(Op::Write(data.to_vec()));
                    b = rest;
                }
                b'R' => s.ops.push(Op::Read),
                b'S' => {
                    s.ops.push(Op::Sleep(b.first().copied().unwrap_or(0)));
                    b = b.get(1..).unwrap_or(&[]);
                }
                b'C' => s.ops.push(Op::Close),
                b'N' => {
                    s.closed = true;
                    break;
                }
                other => match s.ops.last_mut() {
                    // Runs of plain bytes become one write.
                    Some(Op::Write(w)) => w.push(other),
                    _ => s.ops.push(Op::Write(vec![other])),
                },
            }
        }
        scripts.push(s);
    }
    scripts
}

/// Plays `script` as the origin's side of one connection. A reader task consumes everything the
/// gateway writes (so it never blocks on a full buffer) and counts it for `R`.
async fn scripted_origin(io: DuplexStream, script: Script) {
    let (mut rd, mut wr) = tokio::io::split(io);
    let (seen_tx, mut seen) = watch::channel(0u64);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen_tx.send_modify(|c| *c += n as u64);
        }
    });
    if script.preface {
        // An empty SETTINGS frame (RFC 9113 §6.5): length 0, type 4, flags 0, stream 0.
        let _ = wr.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
    }
    let closed = script.closed;
    for op in script.ops {
        match op {
            Op::Write(b) => {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            }
            Op::Read => {
                // Returns at once if the gateway wrote since the previous `R`.
                let _ = tokio::time::timeout(Duration::from_secs(1), seen.changed()).await;
            }
            Op::Sleep(n) => tokio::time::sleep(Duration::from_millis(50 * u64::from(n))).await,
            Op::Close => {
                let _ = wr.shutdown().await;
            }
        }
    }
    if closed {
        // `N`: both halves go away, the gateway reads EOF and its writes fail.
        reader.abort();
    } else {
        // Out of ops: stay open and silent until the gateway closes (the reader sees EOF).
        let _ = reader.await;
    }
    drop(wr);
}

// ---------------------------------------------------------------------------------------------
// fuzz_downstream_h1
// ---------------------------------------------------------------------------------------------

/// The client address the downstream target uses.
const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 40000);

/// `fuzz_downstream_h1`: byte 0 bit 0 = the client keeps its side open after sending (else it
/// half-closes), bit 1 = the client connection counts as TLS; the rest is what the client sends
/// to the gateway's HTTP/1.1 side, served by hyper with the server's settings into
/// [`Proxy::handle`]. Three origins, all in-memory HTTP/2 servers that record what they receive:
/// `a` (`a.test`, `*.a.test`, cached), `b` (`*`, `host_header = "rewritten.test"`), `c`
/// (`c.test`). Paths steer the origin: `slow` (answers after 10 s), `reset` (REFUSED_STREAM),
/// `goaway` (graceful GOAWAY), `cache` (cacheable), `trailers`.
///
/// Invariants: no panic; every request reaching an origin carries no connection-specific field
/// (RFC 9113 §8.2.2), `te` only as `trailers`, no `Host`, one `X-Forwarded-For` ending with the
/// client address, and an `:authority` that routes to that origin (or is its `host_header`);
/// the connection ends within bounded virtual time once the client has half-closed.
///
/// `rt` must be a fresh current-thread runtime with paused time.
pub fn downstream_h1(rt: Runtime, data: &[u8]) {
    let knob = data.first().copied().unwrap_or(0);
    let keep_open = knob & 1 != 0;
    let client = ClientInfo::new(CLIENT, knob & 2 != 0);
    let input = data.get(1..).unwrap_or(&[]).to_vec();
    let cfg = downstream_config();
    rt.block_on(async move {
        let violations: Arc<Mutex<Vec<String>>> = Arc::default();
        let router = Arc::new(Router::new(
            cfg.origins
                .iter()
                .enumerate()
                .map(|(i, o)| (i, o.raw.hosts.as_slice())),
        ));
        let origins: Arc<Vec<(String, Option<String>)>> = Arc::new(
            cfg.origins
                .iter()
                .map(|o| (o.host.clone(), o.raw.host_header.clone()))
                .collect(),
        );
        let seen = violations.clone();
        let dialer: Dialer = Arc::new(move |host: &str, _port: u16| {
            let idx = origins
                .iter()
                .position(|(h, _)| h == host)
                .ok_or_else(|| Error::Connect(format!("unknown origin {host}")))?;
            let (gateway_end, origin_end) = tokio::io::duplex(DUPLEX_BUF);
            let check = OriginCheck {
                idx,
                host_header: origins[idx].1.clone(),
                router: router.clone(),
                violations: seen.clone(),
            };
            tokio::spawn(recording_origin(origin_end, check));
            Ok(Connected {
                io: Transport::Memory(gateway_end),
                h2: true,
                resumed: None,
                peer: None,
            })
        });
        let metrics = Metrics::new();
        let proxy = with_dialer(dialer, || Proxy::new(cfg, &metrics))
            .unwrap_or_else(|e| panic!("proxy: {e}"));
        let proxy = Arc::new(proxy);

        let (client_end, server_end) = tokio::io::duplex(DUPLEX_BUF);
        let conn = serve_like_server(server_end, proxy, client, cfg);
        let (mut rd, mut wr) = tokio::io::split(client_end);
        let talk = async move {
            let _ = wr.write_all(&input).await;
            // Let every request finish before half-closing: hyper (without `half_close`) drops
            // a request in progress when the client's EOF arrives, and would hide it from the
            // origin.
            tokio::time::sleep(Duration::from_secs(30)).await;
            if !keep_open {
                let _ = wr.shutdown().await;
            }
            wr
        };
        let drain = async move {
            let mut sink = vec![0u8; 16 * 1024];
            while let Ok(n) = rd.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let talk = async move { tokio::join!(talk, drain).0 };
        let both = async { tokio::join!(conn, talk) };
        let done = tokio::time::timeout(REQUEST_BOUND * 2, both)
            .await
            .map(drop);
        if !keep_open {
            assert!(
                done.is_ok(),
                "client connection still open {:?} after the client half-closed",
                REQUEST_BOUND * 2
            );
        }
        trace(|| format!("connection done: {}", done.is_ok()));
        let v = violations.lock().unwrap_or_else(|p| p.into_inner());
        assert!(v.is_empty(), "origin received: {v:?}");
    });
}

/// Serves one client connection the way `server::serve_http1` does (same hyper settings).
async fn serve_like_server(
    io: DuplexStream,
    proxy: Arc<Proxy>,
    client: ClientInfo,
    cfg: &ValidConfig,
) {
    let limits = &cfg.raw.client;
    let svc = service_fn(move |req| {
        let (proxy, client) = (proxy.clone(), client.clone());
        async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, client).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout.0)
        .max_header_size(limits.max_header_size.0 as usize * 2)
        .max_buf_size((limits.max_header_size.0 as usize * 2).max(8192) + 8192)
        .keep_alive(true);
    if let Some(n) = crate::server::hyper_max_headers(limits) {
        builder.max_headers(n);
    }
    let _ = builder.serve_connection(TokioIo::new(io), svc).await;
}

fn downstream_config() -> &'static ValidConfig {
    static CFG: OnceLock<ValidConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        let fast = r#"
            pending_timeout = "5s"
            response_header_timeout = "5s"
            keepalive_interval = "0s"
            idle_timeout = "10s"
            retry_buffer = "1KiB"
        "#;
        let toml = format!(
            r#"
            listen = ["127.0.0.1:0"]
            [client]
            header_timeout = "5s"
            max_header_size = "4KiB"
            max_headers = 32
            max_body_size = "64KiB"
            [cache]
            enabled = true
            [[origins]]
            name = "a"
            hosts = ["a.test", "*.a.test"]
            url = "https://a.origin"
            {fast}
            [[origins]]
            name = "b"
            hosts = ["*"]
            url = "https://b.origin"
            host_header = "rewritten.test"
            cache = false
            {fast}
            [[origins]]
            name = "c"
            hosts = ["c.test"]
            url = "https://c.origin:8443"
            max_connections = 2
            initial_max_streams = 1
            {fast}
            "#
        );
        Config::from_toml(&toml)
            .and_then(Config::validate)
            .unwrap_or_else(|e| panic!("downstream fuzz config: {e}"))
    })
}

/// What an in-memory origin checks each request against.
struct OriginCheck {
    idx: usize,
    host_header: Option<String>,
    router: Arc<Router>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl OriginCheck {
    fn check(&self, req: &Request<h2::RecvStream>) {
        let mut bad = Vec::new();
        let h = req.headers();
        for name in CONNECTION_SPECIFIC.iter().chain(&["host"]) {
            if h.contains_key(*name) {
                bad.push(format!("{name} field"));
            }
        }
        if h.get_all(header::TE).iter().any(|v| v != "trailers") {
            bad.push("te other than trailers".into());
        }
        let xff: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        let ip = CLIENT.ip().to_string();
        let ends = |v: &&HeaderValue| {
            v.to_str()
                .is_ok_and(|s| s == ip || s.ends_with(&format!(", {ip}")))
        };
        if xff.len() != 1 || !xff.iter().all(ends) {
            bad.push(format!("x-forwarded-for {xff:?}"));
        }
        match (req.uri().authority(), &self.host_header) {
            (None, _) => bad.push("no :authority".into()),
            (Some(a), Some(want)) if a.as_str() != want => {
                bad.push(format!(":authority {a} instead of host_header {want}"))
            }
            (Some(a), None) if self.router.route(a.host()) != Some(self.idx) => bad.push(format!(
                ":authority {a} does not route to origin {}",
                self.idx
            )),
            _ => {}
        }
        if !bad.is_empty() {
            let mut v = self.violations.lock().unwrap_or_else(|p| p.into_inner());
            v.push(format!(
                "{} {}: {}",
                req.method(),
                req.uri(),
                bad.join("; ")
            ));
        }
    }
}

/// An HTTP/2 origin on the h2 crate's server side: checks and answers every request.
async fn recording_origin(io: DuplexStream, check: OriginCheck) {
    let Ok(mut conn) = h2::server::Builder::new()
        .max_concurrent_streams(16)
        .handshake::<_, Bytes>(io)
        .await
    else {
        return;
    };
    while let Some(Ok((req, respond))) = conn.accept().await {
        trace(|| format!("origin {} got {} {}", check.idx, req.method(), req.uri()));
        check.check(&req);
        if req.uri().path().contains("goaway") {
            conn.graceful_shutdown();
        }
        tokio::spawn(answer(req, respond));
    }
}

async fn answer(req: Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
    let path = req.uri().path().to_string();
    let mut body = req.into_body();
    while let Some(Ok(d)) = body.data().await {
        let _ = body.flow_control().release_capacity(d.len());
    }
    if path.contains("slow") {
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    if path.contains("reset") {
        respond.send_reset(h2::Reason::REFUSED_STREAM);
        return;
    }
    let trailers = path.contains("trailers");
    let cc = if path.contains("cache") {
        "max-age=60"
    } else {
        "no-store"
    };
    let mut resp = Response::new(());
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
    if !trailers {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
    }
    let Ok(mut send) = respond.send_response(resp, false) else {
        return;
    };
    let _ = send.send_data(Bytes::from_static(b"ok"), !trailers);
    if trailers {
        let mut t = HeaderMap::new();
        t.insert("x-origin-trailer", HeaderValue::from_static("1"));
        let _ = send.send_trailers(t);
    }
}
