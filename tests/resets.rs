//! Streams are not reset when a response is complete by Content-Length before the origin's
//! END_STREAM arrives (hyper stops reading at the declared length). Before the fix every such
//! response cost a RST_STREAM(CANCEL); after 1,024 of them h2 closed the shared connection as
//! "excessive load generating behavior", failing the requests on it — and an origin like nginx
//! would see a rapid-reset pattern.

mod support;

use std::time::Duration;

use muxgate::testkit::h2ctl::ControlOrigin;
use muxgate::testkit::load::{self, LoadSpec};
use muxgate::testkit::pki::Pki;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_responses_do_not_reset_streams() {
    init();
    let pki = Pki::localhost().expect("pki");
    let origin = ControlOrigin::new()
        .end_stream_after(Duration::from_millis(20))
        .start(&pki)
        .await
        .expect("origin");
    let files = pki.write().expect("files");
    let url = format!("https://localhost:{}", origin.addr.port());
    let gw = start_gateway(&gateway_toml(
        "",
        &origin_toml("app", &["*"], &url, Some(&files.ca), ""),
    ))
    .await;
    let spec = LoadSpec {
        close: false,
        target: gw.http_addrs[0],
        tls: None,
        host: "app.test".into(),
        path: "/".into(),
        connections: 50,
        requests: 1500,
    };
    let r = tokio::time::timeout(Duration::from_secs(60), load::run(spec))
        .await
        .expect("load timed out");
    assert_eq!(r.errors, 0, "{r:?}");
    assert_eq!(r.ok(), 1500, "{r:?}");
    assert_eq!(
        origin.stats.get(|s| &s.client_resets),
        0,
        "complete responses were reset"
    );
    assert_eq!(
        origin.stats.get(|s| &s.connections),
        1,
        "the shared connection survived"
    );
}
