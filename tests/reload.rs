//! Live reload (`Gateway::reload`, SIGHUP in the binary): routes, origins, cache settings and
//! limits swap without dropping the origin connections and TLS sessions muxgate exists to keep;
//! pools whose connection settings changed are replaced and the old ones drain; listener
//! certificates rotate without a restart; an invalid file is refused and the old configuration
//! keeps running.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use muxgate::config::Config;
use muxgate::testkit::origin::{Origin, RunningOrigin};
use muxgate::testkit::pki::{Pki, PkiFiles};
use muxgate::Gateway;
use support::{
    admin_get, gateway_toml, get, https_url, init, metric_value, origin_toml, start_gateway,
    wait_until, Client,
};
use tokio::net::TcpStream;

/// Counts of a background load: responses by outcome.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
}

/// `clients` keep-alive connections sending `GET path` with `Host: host` back to back until
/// `stop`; any transport error or non-200 counts as an error (and the client reconnects).
fn spawn_load(
    addr: SocketAddr,
    host: &'static str,
    path: &'static str,
    clients: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (stop, tally) = (stop.clone(), tally.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Ok(tcp)) =
                        tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
                            .await
                    else {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let Ok((mut tx, conn)) =
                        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
                    else {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    tokio::spawn(conn);
                    while !stop.load(Ordering::Relaxed) {
                        let req = Request::get(path)
                            .header(http::header::HOST, host)
                            .body(Empty::<Bytes>::new())
                            .expect("request");
                        let r = tokio::time::timeout(Duration::from_secs(10), async {
                            tx.ready().await?;
                            let resp = tx.send_request(req).await?;
                            let status = resp.status();
                            resp.into_body().collect().await?;
                            Ok::<_, hyper::Error>(status)
                        })
                        .await;
                        match r {
                            Ok(Ok(StatusCode::OK)) => {
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                tally.errors.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

fn validated(toml: &str) -> muxgate::config::ValidConfig {
    Config::from_toml(toml)
        .and_then(Config::validate)
        .unwrap_or_else(|e| panic!("{e}\n--- config ---\n{toml}"))
}

/// Round `round` of the reload test: `app` keeps its connection settings but gains a new host
/// alias each round, toggles per-request keys, and a second origin comes and goes.
fn round_config(origin: &RunningOrigin, files: &PkiFiles, round: usize) -> String {
    let alias = format!("alias{round}.test");
    let extra = if round % 2 == 1 {
        "retry_buffer = \"128KiB\"\nhost_header = \"localhost\""
    } else {
        ""
    };
    let mut tables = origin_toml(
        "app",
        &["app.test", alias.as_str()],
        &https_url(origin),
        Some(&files.ca),
        extra,
    );
    if round % 2 == 1 {
        tables += &origin_toml("other", &["other.test"], "http://127.0.0.1:1", None, "");
    }
    let limits = if round % 2 == 1 {
        "\n[client]\nmax_header_size = \"48KiB\"\n"
    } else {
        ""
    };
    gateway_toml("", &format!("{tables}{limits}"))
}

/// Ten reloads while 32 keep-alive clients hammer the gateway: every request succeeds, each
/// round's new route is live right after its reload (and the removed one is gone), and the
/// origin saw exactly one connection and one full TLS handshake in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_reloads_under_load_keep_the_origin_connection_and_session() {
    init();
    let pki = Pki::localhost().unwrap();
    let files = pki.write().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let gw = Arc::new(start_gateway(&round_config(&origin, &files, 0)).await);
    let addr = gw.http_addrs[0];
    assert_eq!(get(addr, "app.test", "/").await.status, StatusCode::OK);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load = spawn_load(
        addr,
        "app.test",
        "/bytes/1024",
        32,
        stop.clone(),
        tally.clone(),
    );
    for round in 1..=10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let report = gw
            .reload(validated(&round_config(&origin, &files, round)))
            .expect("reload");
        assert_eq!(report.kept, vec!["app".to_string()], "round {round}");
        assert!(report.retired.iter().all(|r| r == "other"), "{report:?}");
        let alias = format!("alias{round}.test");
        let mut c = Client::connect(addr).await;
        assert_eq!(
            c.get(&alias, "/").await.status,
            StatusCode::OK,
            "round {round}"
        );
        let stale = format!("alias{}.test", round - 1);
        assert_eq!(c.get(&stale, "/").await.status, StatusCode::NOT_FOUND);
        let other = c.get("other.test", "/").await.status;
        let want = if round % 2 == 1 {
            StatusCode::BAD_GATEWAY // routed to the unreachable second origin
        } else {
            StatusCode::NOT_FOUND // that origin is gone again
        };
        assert_eq!(other, want, "round {round}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }

    let ok = tally.ok.load(Ordering::Relaxed);
    let errors = tally.errors.load(Ordering::Relaxed);
    eprintln!("reload under load: {ok} ok, {errors} errors");
    assert_eq!(errors, 0, "client errors across ten reloads");
    assert!(ok > 100, "the load ran ({ok} responses)");
    let s = &origin.stats;
    assert_eq!(s.get(|s| &s.connections), 1, "origin connections");
    assert_eq!(s.get(|s| &s.full_handshakes), 1, "full TLS handshakes");
    let m = admin_get(&gw, "/metrics").await.text();
    assert_eq!(
        metric_value(&m, r#"muxgate_config_reloads_total{result="ok"}"#),
        Some(10.0)
    );
}

/// Changing a connection setting (`max_connections`) gives the origin a fresh pool; a slow
/// request already on the old pool still completes, and the old connection closes once it has.
/// The fresh pool resumes the old pool's TLS session, unless the trust settings changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_connection_settings_get_a_fresh_pool_and_the_old_one_drains() {
    init();
    let pki = Pki::localhost().unwrap();
    let files = pki.write().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let config = |extra: &str| {
        gateway_toml(
            "",
            &origin_toml("app", &["*"], &https_url(&origin), Some(&files.ca), extra),
        )
    };
    let gw = start_gateway(&config("")).await;
    let addr = gw.http_addrs[0];
    assert_eq!(get(addr, "app.test", "/").await.status, StatusCode::OK);

    let slow = tokio::spawn(async move { get(addr, "app.test", "/delay/1500").await.status });
    assert!(
        wait_until(Duration::from_secs(5), || origin.stats.get(|s| &s.active)
            == 1)
        .await,
        "the slow request reached the origin"
    );
    let report = gw
        .reload(validated(&config("max_connections = 5")))
        .expect("reload");
    assert_eq!(report.fresh, vec!["app".to_string()]);
    assert_eq!(report.retired, vec!["app".to_string()]);
    // New requests use the fresh pool (a second origin connection) while the slow one runs.
    assert_eq!(get(addr, "app.test", "/").await.status, StatusCode::OK);
    assert_eq!(origin.stats.get(|s| &s.connections), 2);
    // The fresh pool took over the old one's TLS sessions: its connection resumed.
    assert_eq!(origin.stats.get(|s| &s.full_handshakes), 1);
    assert_eq!(origin.stats.get(|s| &s.resumed_handshakes), 1);
    assert_eq!(
        slow.await.unwrap(),
        StatusCode::OK,
        "in-flight request finished"
    );

    let open = r#"muxgate_upstream_connections_open{origin="app",protocol="h2"}"#;
    let mut last = None;
    for _ in 0..200 {
        let m = admin_get(&gw, "/metrics").await.text();
        last = metric_value(&m, open);
        if last == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        last,
        Some(1.0),
        "the old pool's connection closed after draining"
    );
    assert_eq!(get(addr, "app.test", "/").await.status, StatusCode::OK);

    // Other trust (the CA file now also trusts a second CA): sessions verified under the old
    // trust are not offered, so the next pool starts with a full handshake.
    let other_ca = files.ca.with_file_name("other-ca.pem");
    let second = Pki::localhost().unwrap().write().unwrap();
    let both = [
        std::fs::read(&files.ca).unwrap(),
        std::fs::read(&second.ca).unwrap(),
    ]
    .concat();
    std::fs::write(&other_ca, both).unwrap();
    let toml = gateway_toml(
        "",
        &origin_toml("app", &["*"], &https_url(&origin), Some(&other_ca), ""),
    );
    let report = gw.reload(validated(&toml)).expect("reload");
    assert_eq!(report.fresh, vec!["app".to_string()]);
    assert_eq!(get(addr, "app.test", "/").await.status, StatusCode::OK);
    assert_eq!(origin.stats.get(|s| &s.full_handshakes), 2);
}

fn tls_config(origin: &RunningOrigin, origin_ca: &Path, listener: &PkiFiles) -> String {
    tls_config_files(origin, origin_ca, &listener.cert, &listener.key)
}

fn tls_config_files(origin: &RunningOrigin, origin_ca: &Path, cert: &Path, key: &Path) -> String {
    let tables = format!(
        "\n[[listen_tls]]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n{}",
        cert.display().to_string(),
        key.display().to_string(),
        origin_toml("app", &["*"], &https_url(origin), Some(origin_ca), "")
    );
    gateway_toml("", &tables)
}

/// A reload re-reads listener certificates: new handshakes present the new certificate (valid
/// under the new CA only), while a connection made before the rotation keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_certificate_rotates_without_a_restart() {
    init();
    let pki = Pki::localhost().unwrap();
    let files = pki.write().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let first = Pki::localhost().unwrap();
    let first_files = first.write().unwrap();
    let second = Pki::localhost().unwrap();
    let second_files = second.write().unwrap();
    let gw = start_gateway(&tls_config(&origin, &files.ca, &first_files)).await;
    let tls_addr = gw.tls_addrs[0];

    let old_trust = first.client_config(&[b"http/1.1"]).unwrap();
    let new_trust = second.client_config(&[b"http/1.1"]).unwrap();
    let (mut before, _) = Client::connect_tls(tls_addr, old_trust.clone(), "localhost")
        .await
        .expect("handshake with the first certificate");
    assert_eq!(before.get("localhost", "/").await.status, StatusCode::OK);
    assert!(
        Client::connect_tls(tls_addr, new_trust.clone(), "localhost")
            .await
            .is_err()
    );

    gw.reload(validated(&tls_config(&origin, &files.ca, &second_files)))
        .expect("reload");

    let (mut after, _) = Client::connect_tls(tls_addr, new_trust, "localhost")
        .await
        .expect("handshake with the rotated certificate");
    assert_eq!(after.get("localhost", "/").await.status, StatusCode::OK);
    // A fresh client config: the old one holds a session ticket, and resuming skips the
    // certificate (correctly: the ticket stays valid across a rotation).
    let old_trust_fresh = first.client_config(&[b"http/1.1"]).unwrap();
    drop(old_trust);
    assert!(
        Client::connect_tls(tls_addr, old_trust_fresh, "localhost")
            .await
            .is_err(),
        "new handshakes no longer present the old certificate"
    );
    assert_eq!(
        before.get("localhost", "/").await.status,
        StatusCode::OK,
        "the connection made before the rotation still works"
    );
}

/// A reload whose certificate cannot be loaded changes nothing: the error names the key, the
/// old routes keep serving, and the failure is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_load_changes_nothing() {
    init();
    let pki = Pki::localhost().unwrap();
    let files = pki.write().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let gw: Gateway = start_gateway(&tls_config(&origin, &files.ca, &files)).await;
    let addr = gw.http_addrs[0];

    // Valid at validation time, but the key does not belong to the certificate.
    let other = Pki::localhost().unwrap();
    let other_files = other.write().unwrap();
    let mut bad = tls_config_files(&origin, &files.ca, &files.cert, &other_files.key);
    bad = bad.replace("hosts = [\"*\"]", "hosts = [\"only.test\"]");
    let e = gw
        .reload(validated(&bad))
        .expect_err("mismatched key refused");
    assert!(e.contains("listen_tls.0.cert"), "{e}");
    assert_eq!(get(addr, "anything.test", "/").await.status, StatusCode::OK);
    let m = admin_get(&gw, "/metrics").await.text();
    assert_eq!(
        metric_value(&m, r#"muxgate_config_reloads_total{result="error"}"#),
        Some(1.0)
    );
}

/// The binary reloads on SIGHUP: an invalid file is refused with a log line naming the key and
/// counted, the old configuration keeps serving; a valid file adds a route without a new
/// origin connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary_and_refuses_an_invalid_file() {
    use support::process::{Gw, Scratch};
    init();
    let pki = Pki::localhost().unwrap();
    let files = pki.write().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let dir = Scratch::new("reload");
    let config = |hosts: &[&str], extra: &str| {
        let t = origin_toml("app", hosts, &https_url(&origin), Some(&files.ca), extra);
        gateway_toml("log_format = \"json\"", &t)
    };
    let path = dir.file("muxgate.toml", &config(&["app.test"], ""));
    let mut gw = Gw::start(&path).await;
    let addr = gw.http[0];
    let admin = gw.admin.expect("admin address");
    assert_eq!(get(addr, "app.test", "/").await.status, StatusCode::OK);
    assert_eq!(
        get(addr, "new.test", "/").await.status,
        StatusCode::NOT_FOUND
    );

    let reloads = |result: &'static str| async move {
        let m = get(admin, "admin", "/metrics").await.text();
        metric_value(
            &m,
            &format!("muxgate_config_reloads_total{{result=\"{result}\"}}"),
        )
    };

    // Invalid: refused, named, counted; the old routes keep serving.
    dir.file(
        "muxgate.toml",
        &config(&["app.test", "new.test"], "max_connections = 0"),
    );
    gw.signal("HUP");
    let mut refused = false;
    for _ in 0..200 {
        if reloads("error").await == Some(1.0) {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the invalid reload was counted");
    assert!(
        gw.logged(&["reload refused", "origins.0.max_connections"]),
        "a log line names the key"
    );
    assert_eq!(get(addr, "app.test", "/").await.status, StatusCode::OK);
    assert_eq!(
        get(addr, "new.test", "/").await.status,
        StatusCode::NOT_FOUND
    );

    // Valid: the new route is live, on the same origin connection.
    dir.file("muxgate.toml", &config(&["app.test", "new.test"], ""));
    gw.signal("HUP");
    let mut applied = false;
    for _ in 0..200 {
        if get(addr, "new.test", "/").await.status == StatusCode::OK {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(applied, "the new route is served after SIGHUP");
    assert_eq!(reloads("ok").await, Some(1.0));
    assert_eq!(origin.stats.get(|s| &s.connections), 1);
    assert_eq!(origin.stats.get(|s| &s.full_handshakes), 1);

    gw.signal("TERM");
    assert_eq!(gw.wait(Duration::from_secs(15)).await, Some(0));
}
