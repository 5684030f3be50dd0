//! Host → origin routing through the real gateway: exact names beat the longest `*.suffix`,
//! which beats `*`; no match is a 404 `no route for host` (never an open proxy); a missing or
//! duplicated Host is a 400. Which origin served a request is read from its own counters.

mod support;

use muxgate::testkit::origin::{Origin, RunningOrigin};
use muxgate::testkit::pki::Pki;
use support::{
    gateway_toml, get, http_url, https_url, init, origin_toml, raw_request, start_gateway, Client,
};

fn requests(o: &RunningOrigin) -> u64 {
    o.stats.get(|s| &s.requests)
}

struct Four {
    exact: RunningOrigin,
    wild: RunningOrigin,
    deep: RunningOrigin,
    any: RunningOrigin,
}

async fn four_origins(pki: &Pki) -> Four {
    Four {
        exact: Origin::h2().start(pki).await.unwrap(),
        wild: Origin::h1_tls().start(pki).await.unwrap(),
        deep: Origin::plain().start(pki).await.unwrap(),
        any: Origin::h2_or_h1().start(pki).await.unwrap(),
    }
}

/// Origins `exact` (api.example.com), `wild` (*.example.com), `deep` (*.deep.example.com) and,
/// when `with_any`, `any` (*).
fn routing_toml(o: &Four, ca: &std::path::Path, with_any: bool) -> String {
    let mut tables = origin_toml(
        "exact",
        &["api.example.com"],
        &https_url(&o.exact),
        Some(ca),
        "",
    );
    tables += &origin_toml(
        "wild",
        &["*.example.com"],
        &https_url(&o.wild),
        Some(ca),
        "",
    );
    tables += &origin_toml(
        "deep",
        &["*.deep.example.com"],
        &http_url(&o.deep),
        None,
        "",
    );
    if with_any {
        tables += &origin_toml("any", &["*"], &https_url(&o.any), Some(ca), "");
    }
    gateway_toml("", &tables)
}

/// Each Host goes to the origin its most specific pattern names, and only there; the origin
/// sees the client's Host as its authority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_picks_most_specific_origin() {
    init();
    let pki = Pki::localhost().unwrap();
    let files = pki.write().unwrap();
    let o = four_origins(&pki).await;
    let gw = start_gateway(&routing_toml(&o, &files.ca, true)).await;
    let addr = gw.http_addrs[0];

    // (Host, origin expected to serve it)
    let cases: [(&str, &str); 9] = [
        ("api.example.com", "exact"),
        ("API.Example.COM:8080", "exact"),
        ("api.example.com.", "exact"),
        ("www.example.com", "wild"),
        ("a.b.example.com", "wild"),
        ("x.deep.example.com", "deep"),
        ("deep.example.com", "wild"),
        ("example.com", "any"),
        ("other.org", "any"),
    ];
    let mut client = Client::connect(addr).await;
    for (host, want) in cases {
        let before = [&o.exact, &o.wild, &o.deep, &o.any].map(requests);
        let r = client.get(host, "/headers").await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        assert_eq!(r.header("x-seen-authority"), Some(host), "{host}");
        let after = [&o.exact, &o.wild, &o.deep, &o.any].map(requests);
        let served: Vec<&str> = ["exact", "wild", "deep", "any"]
            .iter()
            .zip(before.iter().zip(after.iter()))
            .filter(|(_, (b, a))| a > b)
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(served, vec![want], "Host {host:?}");
    }
    assert_eq!(requests(&o.exact), 3);
    assert_eq!(requests(&o.wild), 3);
    assert_eq!(requests(&o.deep), 1);
    assert_eq!(requests(&o.any), 2);
    assert!(gw.shutdown().await);
}

/// Without a `*` origin an unknown host is refused with 404 `no route for host`, reaches no
/// origin, and the client connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_without_wildcard_is_404() {
    init();
    let pki = Pki::localhost().unwrap();
    let files = pki.write().unwrap();
    let o = four_origins(&pki).await;
    let gw = start_gateway(&routing_toml(&o, &files.ca, false)).await;
    let addr = gw.http_addrs[0];

    let mut client = Client::connect(addr).await;
    for host in [
        "other.org",
        "example.com",
        "example.com.evil.org",
        "localhost",
    ] {
        let r = client.get(host, "/").await;
        assert_eq!(r.status, 404, "{host}");
        assert_eq!(r.text(), "no route for host\n", "{host}");
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("text/plain")),
            "{host}"
        );
    }
    // Same connection: a routable host still works after the 404s.
    assert_eq!(client.get("www.example.com", "/").await.status, 200);
    assert_eq!(
        [&o.exact, &o.wild, &o.deep, &o.any].map(requests),
        [0, 1, 0, 0]
    );
    assert!(gw.shutdown().await);
}

/// An absolute-form request target names the host (RFC 9112 §3.2.2): it wins over `Host`, so
/// it cannot be used to reach an origin the Host would not route to, nor to proxy elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_routes_by_its_authority() {
    init();
    let pki = Pki::localhost().unwrap();
    let files = pki.write().unwrap();
    let o = four_origins(&pki).await;
    let gw = start_gateway(&routing_toml(&o, &files.ca, false)).await;
    let addr = gw.http_addrs[0];

    let r = raw_request(
        addr,
        b"GET http://api.example.com/headers HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(requests(&o.exact), 1);
    assert_eq!(requests(&o.wild), 0);

    let r = raw_request(
        addr,
        b"GET http://unrouted.test/ HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "no route for host\n");
    assert_eq!(requests(&o.exact), 1);
    assert!(gw.shutdown().await);
}

/// A request without Host is a 400, as is one with two Host fields; no origin sees either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_duplicate_host_is_400() {
    init();
    let pki = Pki::localhost().unwrap();
    let files = pki.write().unwrap();
    let o = four_origins(&pki).await;
    let gw = start_gateway(&routing_toml(&o, &files.ca, true)).await;
    let addr = gw.http_addrs[0];

    let r = raw_request(addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "bad request: missing Host header\n");
    assert_eq!(r.header("connection"), Some("close"));

    let r = raw_request(addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "bad request: missing Host header\n");

    let r = raw_request(
        addr,
        b"GET / HTTP/1.1\r\nHost: api.example.com\r\nHost: other.org\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "bad request: more than one Host header\n");

    assert_eq!(
        [&o.exact, &o.wild, &o.deep, &o.any].map(requests),
        [0, 0, 0, 0]
    );
    assert!(gw.shutdown().await);
}

/// `host_header` rewrites the authority the origin sees; routing still uses the client's Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_rewrites_origin_authority() {
    init();
    let pki = Pki::localhost().unwrap();
    let files = pki.write().unwrap();
    let h2 = Origin::h2().start(&pki).await.unwrap();
    let h1 = Origin::plain().start(&pki).await.unwrap();
    let mut tables = origin_toml(
        "h2",
        &["a.test"],
        &https_url(&h2),
        Some(&files.ca),
        "host_header = \"internal.svc:8443\"",
    );
    tables += &origin_toml(
        "h1",
        &["b.test"],
        &http_url(&h1),
        None,
        "host_header = \"backend.local\"",
    );
    let gw = start_gateway(&gateway_toml("", &tables)).await;

    let r = get(gw.http_addrs[0], "a.test", "/headers").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-seen-authority"), Some("internal.svc:8443"));
    let r = get(gw.http_addrs[0], "b.test", "/headers").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-seen-authority"), Some("backend.local"));
    assert!(r.text().contains("host: backend.local\n"), "{}", r.text());
    assert_eq!(requests(&h2), 1);
    assert_eq!(requests(&h1), 1);
    assert!(gw.shutdown().await);
}
