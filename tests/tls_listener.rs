//! Client-facing TLS (`[[listen_tls]]`): certificate and key files from a PKI made at run time,
//! a rustls HTTP/1.1 client through the gateway to the origin, `X-Forwarded-Proto: https`.

mod support;

use std::sync::Arc;

use muxgate::testkit::origin::{Origin, RunningOrigin};
use muxgate::testkit::pki::{Pki, PkiFiles};
use muxgate::Gateway;
use support::{gateway_toml, https_url, init, metric_value, origin_toml, start_gateway, Client};

/// A gateway with a plain and a TLS listener in front of an h2 origin (`app`, every host).
async fn tls_gateway(pki: &Pki, origin: &RunningOrigin) -> (Gateway, PkiFiles) {
    let files = pki.write().unwrap();
    let tables = format!(
        "\n[[listen_tls]]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n{}",
        files.cert.display().to_string(),
        files.key.display().to_string(),
        origin_toml("app", &["*"], &https_url(origin), Some(&files.ca), "")
    );
    let gw = start_gateway(&gateway_toml("", &tables)).await;
    assert_eq!(gw.tls_addrs.len(), 1);
    (gw, files)
}

fn header_lines(body: &str, name: &str) -> Vec<String> {
    let prefix = format!("{name}: ");
    body.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(str::to_string)
        .collect()
}

/// A TLS HTTP/1.1 client gets 200 through the gateway, keeps its connection alive for several
/// requests, and the origin sees `X-Forwarded-Proto: https` (plain listener: `http`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_is_proxied_with_forwarded_proto_https() {
    init();
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let (gw, _files) = tls_gateway(&pki, &origin).await;

    let cfg = pki.client_config(&[b"http/1.1"]).unwrap();
    let (mut client, alpn) = Client::connect_tls(gw.tls_addrs[0], cfg, "localhost")
        .await
        .expect("TLS connect");
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    for _ in 0..3 {
        let r = client.get("localhost", "/headers").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.text();
        assert_eq!(
            header_lines(&body, "x-forwarded-proto"),
            vec!["https"],
            "{body}"
        );
        assert_eq!(
            header_lines(&body, "x-forwarded-for"),
            vec!["127.0.0.1"],
            "{body}"
        );
        assert_eq!(r.header("x-seen-authority"), Some("localhost"));
    }
    // The default path too, with its 1 KiB body.
    let r = client.get("localhost", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1024);
    assert_eq!(origin.stats.get(|s| &s.requests), 4);

    let r = support::get(gw.http_addrs[0], "localhost", "/headers").await;
    assert_eq!(header_lines(&r.text(), "x-forwarded-proto"), vec!["http"]);

    let metrics = gw.metrics().render();
    assert_eq!(
        metric_value(
            &metrics,
            "muxgate_downstream_connections_total{protocol=\"http/1.1+tls\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(gw.shutdown().await);
}

/// A client's own `X-Forwarded-Proto` is replaced, not trusted: over TLS the origin sees
/// exactly one value, `https`; a client claiming `https` on the plain listener gets `http`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_forwarded_proto_is_overwritten() {
    init();
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let (gw, _files) = tls_gateway(&pki, &origin).await;

    let cfg = pki.client_config(&[b"http/1.1"]).unwrap();
    let (mut client, _) = Client::connect_tls(gw.tls_addrs[0], cfg, "localhost")
        .await
        .unwrap();
    let req = http::Request::get("/headers")
        .header("host", "localhost")
        .header("x-forwarded-proto", "http")
        .body(http_body_util::Empty::new())
        .unwrap();
    let r = client.send(req).await;
    assert_eq!(header_lines(&r.text(), "x-forwarded-proto"), vec!["https"]);

    let mut plain = Client::connect(gw.http_addrs[0]).await;
    let req = http::Request::get("/headers")
        .header("host", "localhost")
        .header("x-forwarded-proto", "https")
        .body(http_body_util::Empty::new())
        .unwrap();
    let r = plain.send(req).await;
    assert_eq!(header_lines(&r.text(), "x-forwarded-proto"), vec!["http"]);
    assert!(gw.shutdown().await);
}

/// A client without ALPN is served HTTP/1.1 as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_without_alpn_is_served() {
    init();
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let (gw, _files) = tls_gateway(&pki, &origin).await;

    let cfg = pki.client_config(&[]).unwrap();
    let (mut client, alpn) = Client::connect_tls(gw.tls_addrs[0], cfg, "localhost")
        .await
        .unwrap();
    assert_eq!(alpn, None);
    let r = client.get("localhost", "/headers").await;
    assert_eq!(r.status, 200);
    assert_eq!(header_lines(&r.text(), "x-forwarded-proto"), vec!["https"]);
    assert!(gw.shutdown().await);
}

/// A client that does not trust the gateway's certificate fails its handshake; it is counted
/// as refused (`reason="tls"`), reaches no origin, and the listener keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_fails_handshake_and_listener_survives() {
    init();
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let (gw, _files) = tls_gateway(&pki, &origin).await;

    let stranger = Pki::localhost().unwrap();
    let bad = stranger.client_config(&[b"http/1.1"]).unwrap();
    let err = Client::connect_tls(gw.tls_addrs[0], bad, "localhost").await;
    assert!(
        err.is_err(),
        "a client trusting another CA must not connect"
    );
    // Right CA, wrong name: the certificate is for localhost / 127.0.0.1 / ::1 only.
    let good = pki.client_config(&[b"http/1.1"]).unwrap();
    let err = Client::connect_tls(gw.tls_addrs[0], Arc::clone(&good), "gateway.example").await;
    assert!(
        err.is_err(),
        "a name the certificate does not cover must fail"
    );

    let (mut client, _) = Client::connect_tls(gw.tls_addrs[0], good, "127.0.0.1")
        .await
        .expect("the listener still serves");
    assert_eq!(client.get("localhost", "/").await.status, 200);
    assert_eq!(origin.stats.get(|s| &s.requests), 1);

    let refused_ok = support::wait_until(std::time::Duration::from_secs(5), || {
        metric_value(
            &gw.metrics().render(),
            "muxgate_downstream_connections_refused_total{reason=\"tls\"}",
        ) == Some(2.0)
    })
    .await;
    assert!(refused_ok, "{}", gw.metrics().render());
    assert!(gw.shutdown().await);
}
