//! Zero-downtime upgrade with two processes on one port (`reuse_port = true`): a new muxgate
//! starts beside the running one on the same address, the old one gets SIGTERM, stops
//! accepting, finishes what it has in flight and exits 0, while clients keep being served.
//!
//! The clients behave like real HTTP clients (RFC 9112 §9.3.1): a GET whose connection closes
//! before any response byte arrives is retried (up to twice) on a new connection. That covers the one
//! window the kernel leaves open — a connection already queued on the old process's listener
//! when it closes is reset (Linux ≥ 5.14 can migrate those instead with
//! `net.ipv4.tcp_migrate_req = 1`), and a keep-alive connection closed by the old process just
//! as the client reuses it. Retries are counted and reported; a failure after the retry, or
//! any non-200, fails the test.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use muxgate::testkit::origin::Origin;
use muxgate::testkit::pki::Pki;
use support::process::{Gw, Scratch};
use support::{get, https_url, init, metric_value, origin_toml};
use tokio::net::TcpStream;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    retried: AtomicU64,
    errors: AtomicU64,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(tx)
}

/// One GET on `tx`: `Ok(status)` once a response head arrived and its body was read,
/// `Err(true)` if the connection failed before any response (safe to retry a GET),
/// `Err(false)` if it failed later.
async fn get_on(tx: &mut Sender) -> Result<StatusCode, bool> {
    let req = Request::get("/bytes/512")
        .header(http::header::HOST, "app.test")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        tx.ready().await.map_err(|_| true)?;
        let resp = tx.send_request(req).await.map_err(|_| true)?;
        let status = resp.status();
        resp.into_body().collect().await.map_err(|_| false)?;
        Ok(status)
    })
    .await;
    r.unwrap_or(Err(false))
}

fn spawn_clients(
    addr: SocketAddr,
    n: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (stop, tally) = (stop.clone(), tally.clone());
            tokio::spawn(async move {
                let mut conn: Option<Sender> = None;
                while !stop.load(Ordering::Relaxed) {
                    let mut outcome = Err(true);
                    for attempt in 0..3 {
                        if attempt > 0 {
                            tally.retried.fetch_add(1, Ordering::Relaxed);
                        }
                        let tx = match conn.as_mut() {
                            Some(tx) if !tx.is_closed() => tx,
                            _ => match connect(addr).await {
                                Some(tx) => conn.insert(tx),
                                None => {
                                    conn = None;
                                    continue;
                                }
                            },
                        };
                        outcome = get_on(tx).await;
                        if outcome.is_err() {
                            conn = None;
                        }
                        if outcome != Err(true) {
                            break;
                        }
                    }
                    match outcome {
                        Ok(StatusCode::OK) => tally.ok.fetch_add(1, Ordering::Relaxed),
                        _ => tally.errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_process_takes_over_the_port_while_the_old_one_drains() {
    init();
    let pki = Pki::localhost().unwrap();
    let files = pki.write().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let dir = Scratch::new("zero-downtime");
    let tables = origin_toml("app", &["*"], &https_url(&origin), Some(&files.ca), "");
    let config = |listen: &str| {
        format!(
            "listen = [\"{listen}\"]\nlog_format = \"json\"\nreuse_port = true\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n{tables}"
        )
    };
    let mut old = Gw::start(&dir.file("old.toml", &config("127.0.0.1:0"))).await;
    let addr = old.http[0];
    assert_eq!(get(addr, "app.test", "/").await.status, StatusCode::OK);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = spawn_clients(addr, 16, stop.clone(), tally.clone());
    tokio::time::sleep(Duration::from_millis(400)).await;

    // The new process binds the same port while the old one still serves it.
    let new = Gw::start(&dir.file("new.toml", &config(&addr.to_string()))).await;
    assert_eq!(new.http, vec![addr], "same port");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before_term = tally.ok.load(Ordering::Relaxed);

    old.signal("TERM");
    assert_eq!(
        old.wait(Duration::from_secs(20)).await,
        Some(0),
        "the old process drained and exited 0"
    );
    let at_exit = tally.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(15), c).await;
    }

    let ok = tally.ok.load(Ordering::Relaxed);
    let retried = tally.retried.load(Ordering::Relaxed);
    let errors = tally.errors.load(Ordering::Relaxed);
    eprintln!(
        "zero-downtime: {ok} ok ({before_term} before SIGTERM, {} after the old process exited), \
         {retried} retried, {errors} errors",
        ok - at_exit
    );
    assert_eq!(errors, 0, "requests failed across the upgrade");
    assert!(
        ok - at_exit > 50,
        "the new process served after the old one left"
    );
    let m = get(new.admin.expect("admin"), "admin", "/metrics")
        .await
        .text();
    let served = metric_value(&m, r#"muxgate_requests_total{origin="app",status="200"}"#);
    // Each of the 16 clients may count one response from the old process just after its exit
    // was observed.
    assert!(
        served.unwrap_or(0.0) + 16.0 >= (ok - at_exit) as f64,
        "the new process served them: {served:?}"
    );
}
