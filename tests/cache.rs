//! The response cache end to end: RFC 9111 storage and freshness, revalidation, Vary, the
//! nginx-style use-stale rules (error, timeout, http_503, updating with one background
//! refresh), request collapsing, invalidation, the host in the key, and X-Cache-Status.
//! The origin is the test-kit origin: `/cc/<Cache-Control>` answers with that Cache-Control, an
//! ETag and a body naming its request number.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use http_body_util::Empty;
use muxgate::testkit::origin::{Origin, RunningOrigin};
use muxgate::testkit::pki::PkiFiles;
use muxgate::Gateway;
use support::proxy_kit::RawConn;
use support::*;

async fn setup(cache: &str, origin_extra: &str) -> (Gateway, RunningOrigin, PkiFiles) {
    setup_with(Origin::h2(), cache, origin_extra).await
}

async fn setup_with(
    b: muxgate::testkit::origin::OriginBuilder,
    cache: &str,
    origin_extra: &str,
) -> (Gateway, RunningOrigin, PkiFiles) {
    init();
    let (pki, files) = pki();
    let origin = b.start(&pki).await.expect("origin");
    let toml = gateway_toml(
        "",
        &format!(
            "{}\n[cache]\nenabled = true\n{cache}\n",
            origin_toml(
                "app",
                &["*"],
                &https_url(&origin),
                Some(&files.ca),
                origin_extra
            )
        ),
    );
    (start_gateway(&toml).await, origin, files)
}

fn requests(o: &RunningOrigin) -> u64 {
    o.stats.requests.load(Ordering::SeqCst)
}

async fn fetch(gw: &Gateway, path: &str) -> Resp {
    get(gw.http_addrs[0], "app.test", path).await
}

fn status(r: &Resp) -> &str {
    r.header("x-cache-status").unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_response_is_a_hit_with_age_and_no_origin_request() {
    let (gw, origin, _f) = setup("", "").await;
    let a = fetch(&gw, "/cc/max-age=60").await;
    assert_eq!((a.status.as_u16(), status(&a)), (200, "MISS"));
    let b = fetch(&gw, "/cc/max-age=60").await;
    assert_eq!((b.status.as_u16(), status(&b)), (200, "HIT"));
    assert_eq!(a.body, b.body, "stored body replayed");
    assert!(b.header("age").is_some());
    assert_eq!(b.header("etag"), Some("\"v1\""), "stored fields replayed");
    assert_eq!(requests(&origin), 1);
    let m = gw.metrics().render();
    assert_eq!(
        metric_value(&m, "muxgate_cache_requests_total{status=\"HIT\"}"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_and_private_are_never_stored() {
    let (gw, origin, _f) = setup("", "").await;
    for path in ["/cc/no-store", "/cc/private,%20max-age=60", "/"] {
        let before = requests(&origin);
        assert_eq!(status(&fetch(&gw, path).await), "MISS");
        assert_eq!(status(&fetch(&gw, path).await), "MISS", "{path}");
        assert_eq!(requests(&origin) - before, 2, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_entry_with_etag_is_revalidated_with_304() {
    let (gw, origin, _f) = setup("", "").await;
    let a = fetch(&gw, "/cc/max-age=0").await;
    assert_eq!(status(&a), "MISS");
    let b = fetch(&gw, "/cc/max-age=0").await;
    assert_eq!((b.status.as_u16(), status(&b)), (200, "REVALIDATED"));
    assert_eq!(a.body, b.body, "304 serves the stored body");
    assert_eq!(requests(&origin), 2, "one conditional request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_accept_encoding_keeps_separate_variants() {
    let (gw, origin, _f) = setup("", "").await;
    let mut c = Client::connect(gw.http_addrs[0]).await;
    let req = |ae: &str| {
        Request::get("/vary")
            .header("host", "app.test")
            .header("accept-encoding", ae)
            .body(Empty::new())
            .expect("request")
    };
    let g1 = c.send(req("gzip")).await;
    let b1 = c.send(req("br")).await;
    let g2 = c.send(req("gzip")).await;
    let b2 = c.send(req("br")).await;
    assert_eq!((status(&g1), status(&b1)), ("MISS", "MISS"));
    assert_eq!((status(&g2), status(&b2)), ("HIT", "HIT"));
    assert_eq!(g2.text(), "gzip");
    assert_eq!(b2.text(), "br");
    assert_eq!(requests(&origin), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_down_serves_stale_for_error() {
    let (gw, origin, _f) = setup("use_stale = [\"error\"]", "connect_timeout = \"1s\"").await;
    let a = fetch(&gw, "/cc/max-age=1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    drop(origin);
    // The pooled connection dies with the origin; the next dial is refused.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = fetch(&gw, "/cc/max-age=1").await;
    assert_eq!(
        (b.status.as_u16(), status(&b)),
        (200, "STALE"),
        "{}",
        b.text()
    );
    assert_eq!(a.body, b.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_use_stale_the_error_reaches_the_client() {
    let (gw, origin, _f) = setup("", "connect_timeout = \"1s\"").await;
    fetch(&gw, "/cc/max-age=1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    drop(origin);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = fetch(&gw, "/cc/max-age=1").await;
    assert_eq!(b.status, 502, "{}", b.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_revalidate_forbids_stale_even_when_configured() {
    let (gw, origin, _f) = setup("use_stale = [\"error\", \"http_503\"]", "").await;
    fetch(&gw, "/cc/max-age=1,%20must-revalidate").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.force_status.store(503, Ordering::SeqCst);
    let b = fetch(&gw, "/cc/max-age=1,%20must-revalidate").await;
    assert_eq!(b.status, 503, "{}", b.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_503_serves_stale_for_http_503() {
    let (gw, origin, _f) = setup("use_stale = [\"http_503\"]", "").await;
    let a = fetch(&gw, "/cc/max-age=1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.force_status.store(503, Ordering::SeqCst);
    let b = fetch(&gw, "/cc/max-age=1").await;
    assert_eq!((b.status.as_u16(), status(&b)), (200, "STALE"));
    assert_eq!(a.body, b.body);
    // Not listed: a 500 passes through.
    origin.force_status.store(500, Ordering::SeqCst);
    assert_eq!(fetch(&gw, "/cc/max-age=1").await.status, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_origin_serves_stale_for_timeout() {
    let (gw, origin, _f) = setup(
        "use_stale = [\"timeout\"]",
        "response_header_timeout = \"300ms\"",
    )
    .await;
    let a = fetch(&gw, "/cc/max-age=1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.force_delay_ms.store(2000, Ordering::SeqCst);
    let t0 = std::time::Instant::now();
    let b = fetch(&gw, "/cc/max-age=1").await;
    assert_eq!((b.status.as_u16(), status(&b)), (200, "STALE"));
    assert_eq!(a.body, b.body);
    assert!(t0.elapsed() < Duration::from_millis(1500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updating_serves_stale_while_exactly_one_background_refresh_runs() {
    let (gw, origin, _f) = setup("use_stale = [\"updating\"]\nbackground_update = true", "").await;
    fetch(&gw, "/cc/max-age=2").await;
    // HTTP dates have one-second resolution: max-age=2 leaves the refreshed entry at least
    // one second of freshness.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The refresh is slow, so all of these arrive while it runs.
    origin.force_delay_ms.store(500, Ordering::SeqCst);
    let before = requests(&origin);
    let rs = get_concurrent(gw.http_addrs[0], "app.test", "/cc/max-age=2", 20).await;
    for r in &rs {
        assert_eq!((r.status.as_u16(), status(r)), (200, "UPDATING"));
    }
    // Until the refresh lands every request is answered UPDATING from the stale entry; then the
    // refreshed entry is a HIT. Machine load decides how long the 500 ms refresh really takes,
    // so poll for it; the origin must see one request in all.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        let r = fetch(&gw, "/cc/max-age=2").await;
        last = status(&r).to_string();
        if last != "UPDATING" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, "HIT", "the refresh was stored");
    assert_eq!(
        requests(&origin) - before,
        1,
        "exactly one background request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_misses_send_one_origin_request() {
    let (gw, origin, _f) = setup_with(Origin::h2().delay(Duration::from_millis(300)), "", "").await;
    let rs = get_concurrent(gw.http_addrs[0], "app.test", "/cc/max-age=60", 100).await;
    assert!(rs.iter().all(|r| r.status == 200));
    assert_eq!(requests(&origin), 1, "collapsed");
    assert_eq!(rs.iter().filter(|r| status(r) == "MISS").count(), 1);
    assert!(rs.iter().all(|r| r.body == rs[0].body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_method_invalidates_and_bypasses() {
    let (gw, origin, _f) = setup("", "").await;
    fetch(&gw, "/cc/max-age=60").await;
    assert_eq!(status(&fetch(&gw, "/cc/max-age=60").await), "HIT");
    let mut c = Client::connect(gw.http_addrs[0]).await;
    let post = Request::post("/cc/max-age=60")
        .header("host", "app.test")
        .body(Empty::new())
        .expect("request");
    let p = c.send(post).await;
    assert_eq!(status(&p), "BYPASS");
    assert_eq!(status(&fetch(&gw, "/cc/max-age=60").await), "MISS");
    assert_eq!(requests(&origin), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_includes_the_host_and_range_bypasses() {
    let (gw, origin, _f) = setup("", "").await;
    assert_eq!(
        status(&get(gw.http_addrs[0], "a.test", "/cc/max-age=60").await),
        "MISS"
    );
    assert_eq!(
        status(&get(gw.http_addrs[0], "b.test", "/cc/max-age=60").await),
        "MISS"
    );
    assert_eq!(
        status(&get(gw.http_addrs[0], "a.test", "/cc/max-age=60").await),
        "HIT"
    );
    let mut c = Client::connect(gw.http_addrs[0]).await;
    let range = Request::get("/cc/max-age=60")
        .header("host", "a.test")
        .header("range", "bytes=0-1")
        .body(Empty::new())
        .expect("request");
    assert_eq!(status(&c.send(range).await), "BYPASS");
    assert_eq!(requests(&origin), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_makes_responses_without_freshness_cacheable() {
    let (gw, origin, _f) = setup("valid = { \"200\" = \"60s\" }", "").await;
    assert_eq!(status(&fetch(&gw, "/").await), "MISS");
    assert_eq!(status(&fetch(&gw, "/").await), "HIT");
    assert_eq!(requests(&origin), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_served_from_the_stored_get() {
    let (gw, origin, _f) = setup("", "").await;
    fetch(&gw, "/cc/max-age=60").await;
    let mut c = RawConn::connect(gw.http_addrs[0]).await;
    c.send(b"HEAD /cc/max-age=60 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let r = c.read_response(true).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-cache-status"), Some("HIT"));
    assert!(r.body.is_empty());
    assert_eq!(requests(&origin), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_key_and_prefix_and_size_gauges() {
    let (gw, origin, _f) = setup("", "").await;
    for p in ["/cc/max-age=60", "/cc/max-age=61", "/cc/max-age=62"] {
        fetch(&gw, p).await;
    }
    let m = admin_get(&gw, "/metrics").await.text();
    assert_eq!(metric_value(&m, "muxgate_cache_entries"), Some(3.0));
    assert!(metric_value(&m, "muxgate_cache_size_bytes").unwrap_or(0.0) > 0.0);
    let admin = gw.admin_addr.expect("admin");
    let purge = |q: &'static str| async move {
        let mut c = Client::connect(admin).await;
        c.send(
            Request::post(format!("/cache/purge?{q}"))
                .header("host", "admin")
                .body(Empty::new())
                .expect("request"),
        )
        .await
    };
    let r = purge("key=http%3A%2F%2Fapp.test%2Fcc%2Fmax-age%3D60").await;
    assert_eq!(r.text(), "purged 1\n");
    assert_eq!(status(&fetch(&gw, "/cc/max-age=60").await), "MISS");
    assert_eq!(status(&fetch(&gw, "/cc/max-age=61").await), "HIT");
    let r = purge("prefix=http%3A%2F%2Fapp.test%2Fcc%2F").await;
    assert_eq!(r.text(), "purged 3\n");
    assert_eq!(status(&fetch(&gw, "/cc/max-age=62").await), "MISS");
    assert_eq!(requests(&origin), 5);
}

/// Collapsed requests get the leader's response streamed as it arrives: their response head
/// comes at once (well before the second chunk, 1 s in), not after the whole 2 s body was read
/// and stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collapsed_requests_stream_the_leaders_response() {
    use http_body_util::BodyExt;
    let (gw, origin, _f) = setup("", "").await;
    let addr = gw.http_addrs[0];
    let mut tasks = Vec::new();
    for _ in 0..10 {
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (mut tx, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            let t0 = std::time::Instant::now();
            let req = Request::get("/drip/1000")
                .header("host", "app.test")
                .body(Empty::<bytes::Bytes>::new())
                .expect("request");
            let resp = tx.send_request(req).await.expect("response");
            let head_after = t0.elapsed();
            let cache = resp
                .headers()
                .get("x-cache-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (head_after, t0.elapsed(), cache, body)
        }));
    }
    let mut hits = 0;
    for t in tasks {
        let (head_after, total, cache, body) = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("timed out")
            .expect("task");
        assert_eq!(&body[..], b"a\nb\nc\n");
        assert!(total >= Duration::from_millis(1900), "{total:?}");
        assert!(
            head_after < Duration::from_millis(1000),
            "head after {head_after:?}"
        );
        hits += usize::from(cache == "HIT");
    }
    assert_eq!(hits, 9, "one leader, nine followers");
    assert_eq!(requests(&origin), 1);
}

/// RFC 9111 §5.2.1.7: `only-if-cached` with nothing usable stored is a 504, without asking the
/// origin; with a fresh entry it is a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_if_cached_never_asks_the_origin() {
    let (gw, origin, _f) = setup("", "").await;
    let mut c = Client::connect(gw.http_addrs[0]).await;
    let req = || {
        Request::get("/cc/max-age=60")
            .header("host", "app.test")
            .header("cache-control", "only-if-cached")
            .body(Empty::new())
            .expect("request")
    };
    let r = c.send(req()).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.text(), "not in cache\n");
    assert_eq!(requests(&origin), 0);
    fetch(&gw, "/cc/max-age=60").await;
    let r = c.send(req()).await;
    assert_eq!((r.status.as_u16(), status(&r)), (200, "HIT"));
    assert_eq!(requests(&origin), 1);
}

/// A stored fresh response is reused only as the request's own directives allow, whichever
/// path answers (a hit is found before the request is translated for the origin): `no-cache`
/// and `max-age=0` revalidate, `Authorization` is not answered from a response that did not
/// allow it, and a `Cache-Control` that `Connection` nominates is a hop-by-hop field, removed
/// before the cache reads it (RFC 9110 §7.6.1), so that request is a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_directives_decide_reuse_of_a_fresh_entry() {
    let (gw, origin, _f) = setup("", "").await;
    let path = "/cc/max-age=60";
    assert_eq!(status(&fetch(&gw, path).await), "MISS");
    assert_eq!(status(&fetch(&gw, path).await), "HIT");
    let mut c = RawConn::connect(gw.http_addrs[0]).await;
    for (extra, expect, asked) in [
        ("Cache-Control: no-cache\r\n", "REVALIDATED", 1),
        ("Cache-Control: max-age=0\r\n", "REVALIDATED", 1),
        ("Authorization: Basic eDp5\r\n", "MISS", 1),
        (
            "Connection: cache-control\r\nCache-Control: no-cache\r\n",
            "HIT",
            0,
        ),
        ("Cache-Control: max-stale\r\n", "HIT", 0),
        // Browsers' `Connection: keep-alive` removes nothing the cache reads.
        (
            "Connection: keep-alive\r\nCache-Control: no-cache\r\n",
            "REVALIDATED",
            1,
        ),
        ("Connection: keep-alive\r\n", "HIT", 0),
        ("", "HIT", 0),
    ] {
        ask(&mut c, &origin, path, extra, expect, asked).await;
    }
    // An entry stale at once: `max-stale` accepts it, unless the request's `Connection`
    // removes the field before the cache reads it.
    let path = "/cc/max-age=0";
    assert_eq!(status(&fetch(&gw, path).await), "MISS");
    for (extra, expect, asked) in [
        ("Cache-Control: max-stale\r\n", "STALE", 0),
        (
            "Connection: cache-control\r\nCache-Control: max-stale\r\n",
            "REVALIDATED",
            1,
        ),
        (
            "Connection: keep-alive, close\r\nCache-Control: max-stale\r\n",
            "STALE",
            0,
        ),
    ] {
        ask(&mut c, &origin, path, extra, expect, asked).await;
    }
}

/// Sends GET `path` with the `extra` fields on `c`; checks the cache status and how many
/// requests the origin saw for it.
async fn ask(
    c: &mut RawConn,
    origin: &RunningOrigin,
    path: &str,
    extra: &str,
    expect: &str,
    asked: u64,
) {
    let before = requests(origin);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n{extra}\r\n").as_bytes())
        .await;
    let r = c.read_response(false).await;
    assert_eq!(
        (r.status, r.header("x-cache-status")),
        (200, Some(expect)),
        "{path} {extra:?}"
    );
    assert_eq!(requests(origin) - before, asked, "{path} {extra:?}");
}
