//! DNS re-resolution of origin host names, end to end over real sockets and TLS. The gateway
//! resolves `app.test` from a hosts file (`[dns] hosts_file`) that the test rewrites; two
//! in-process origins listen on 127.0.0.1 and 127.0.0.2 (same port) to stand for the two
//! addresses of one name. Covered: a move from A to B under load (new requests reach B, A's
//! connections drain after their in-flight requests, no client error), a resolution that fails
//! (last good address kept, counted, traffic flows), and a name that does not resolve at start.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use muxgate::testkit::origin::{Origin, OriginBuilder, RunningOrigin};
use muxgate::testkit::pki::{Pki, PkiFiles};
use muxgate::Gateway;
use support::*;
use tokio::task::JoinHandle;

const A_IP: [u8; 4] = [127, 0, 0, 1];
const B_IP: [u8; 4] = [127, 0, 0, 2];

/// A PKI whose leaf covers `app.test`, the name the origin URL uses.
fn app_pki() -> (Pki, PkiFiles) {
    let pki = Pki::new(&["app.test"]).expect("pki");
    let files = pki.write().expect("pki files");
    (pki, files)
}

/// Writes the hosts file atomically (write + rename), so the resolver never reads half a file.
fn write_hosts(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write hosts");
    std::fs::rename(&tmp, path).expect("rename hosts");
}

fn hosts_line(ip: [u8; 4]) -> String {
    format!("# test hosts file\n{} app.test\n", IpAddr::from(ip))
}

/// Origin A on 127.0.0.1:P and origin B on 127.0.0.2:P (P picked by the system for A; retried
/// if B cannot take the same port).
async fn two_origins(builder: OriginBuilder, pki: &Pki) -> (RunningOrigin, RunningOrigin) {
    for _ in 0..20 {
        let a = builder
            .clone()
            .start_on(SocketAddr::from((A_IP, 0)), pki)
            .await
            .expect("origin A");
        if let Ok(b) = builder
            .clone()
            .start_on(SocketAddr::from((B_IP, a.addr.port())), pki)
            .await
        {
            return (a, b);
        }
    }
    panic!("could not bind 127.0.0.1 and 127.0.0.2 on one port");
}

/// A gateway whose origin `app` is `https://app.test:PORT`, resolved from `hosts` every 200 ms.
async fn gateway(files: &PkiFiles, hosts: &Path, port: u16, extra: &str) -> Gateway {
    let tables = format!(
        "[dns]\nhosts_file = {:?}\n{}",
        hosts.display().to_string(),
        origin_toml(
            "app",
            &["*"],
            &format!("https://app.test:{port}"),
            Some(&files.ca),
            &format!("resolve_interval = \"200ms\"\n{extra}"),
        )
    );
    start_gateway(&gateway_toml("", &tables)).await
}

/// Concurrent keep-alive clients sending `GET /` until stopped; counts answers by outcome.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    bad: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
                tokio::spawn(async move {
                    let mut c = Client::connect(addr).await;
                    while !stop.load(Ordering::SeqCst) {
                        let r = c.get("app.test", "/").await;
                        if r.status == 200 {
                            ok.fetch_add(1, Ordering::SeqCst);
                        } else {
                            eprintln!("client got {}: {}", r.status, r.text());
                            bad.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            bad,
            tasks,
        }
    }

    /// Stops the clients; returns (ok, errors). A client task that panicked (transport error
    /// or timeout in the helper) counts as an error.
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let mut panicked = 0;
        for t in self.tasks {
            if t.await.is_err() {
                panicked += 1;
            }
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.bad.load(Ordering::SeqCst) + panicked,
        )
    }
}

fn dns_metric(gw: &Gateway, result: &str) -> f64 {
    metric_value(
        &gw.metrics().render(),
        &format!("muxgate_dns_resolutions_total{{origin=\"app\",result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Pool connections whose dialled address is on `ip`.
fn conns_on(gw: &Gateway, ip: [u8; 4]) -> usize {
    let ip = IpAddr::from(ip);
    gw.origin("app")
        .expect("app")
        .stats()
        .iter()
        .filter(|c| c.peer.is_some_and(|p| p.ip() == ip))
        .count()
}

fn hosts_path(files: &PkiFiles) -> PathBuf {
    files.dir.join("hosts")
}

/// The name moves from A to B under load: once re-resolved, new requests reach B; A's
/// connections stop taking requests and close once their in-flight ones finish (a slow request
/// in flight on A completes with 200); no client sees an error.
async fn moves_from_a_to_b(builder: OriginBuilder, protocol: &str) {
    init();
    let (pki, files) = app_pki();
    let (a, b) = two_origins(builder, &pki).await;
    let hosts = hosts_path(&files);
    write_hosts(&hosts, &hosts_line(A_IP));
    let gw = gateway(&files, &hosts, a.addr.port(), "").await;
    let addr = gw.http_addrs[0];
    let pool = gw.origin("app").expect("app").clone();

    // A slow request in flight on A across the switch.
    let slow = tokio::spawn(async move { get(addr, "app.test", "/delay/4000").await });
    assert!(
        wait_until(Duration::from_secs(10), || a.stats.get(|s| &s.active) == 1).await,
        "slow request never reached A"
    );
    assert!(pool.resolved());
    let load = Load::start(addr, 8);
    assert!(
        wait_until(Duration::from_secs(10), || a.stats.get(|s| &s.requests)
            > 20)
        .await,
        "load never reached A"
    );
    assert_eq!(pool.protocol(), protocol);
    assert_eq!(b.stats.get(|s| &s.requests), 0);
    let ok_before = dns_metric(&gw, "ok");
    assert!(ok_before >= 1.0, "initial resolution not counted");

    write_hosts(&hosts, &hosts_line(B_IP));
    let t_switch = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || b.stats.get(|s| &s.requests) > 0).await,
        "no request reached B after the hosts file changed"
    );
    let to_b = t_switch.elapsed();
    // A drains: its connection stays open for the slow request, taking no new streams.
    assert!(
        !slow.is_finished() && a.stats.get(|s| &s.open) >= 1,
        "the slow request on A did not outlive the switch (B first served after {to_b:?})"
    );
    if protocol == "h2" {
        assert!(
            wait_until(Duration::from_secs(10), || {
                let st = gw.origin("app").expect("app").stats();
                let on_a: Vec<_> = st
                    .iter()
                    .filter(|c| c.peer.is_some_and(|p| p.ip() == IpAddr::from(A_IP)))
                    .collect();
                !on_a.is_empty() && on_a.iter().all(|c| c.draining && c.in_flight == 1)
            })
            .await,
            "A's h2 connection not shown draining with the slow stream: {:?}",
            gw.origin("app").expect("app").stats()
        );
    }
    assert!(
        wait_until(Duration::from_secs(15), || a.stats.get(|s| &s.open) == 0
            && conns_on(&gw, A_IP) == 0)
        .await,
        "A's connections not closed: open {} pooled {}",
        a.stats.get(|s| &s.open),
        conns_on(&gw, A_IP)
    );
    let a_closed = t_switch.elapsed();
    let slow = slow.await.expect("slow request task");
    assert_eq!(slow.status, 200, "{}", slow.text());

    // From now on only B serves.
    let a_done = a.stats.get(|s| &s.requests);
    let b_mid = b.stats.get(|s| &s.requests);
    assert!(
        wait_until(Duration::from_secs(10), || b.stats.get(|s| &s.requests)
            > b_mid + 50)
        .await,
        "B stopped serving"
    );
    assert_eq!(
        a.stats.get(|s| &s.requests),
        a_done,
        "A served after it was drained"
    );
    assert!(conns_on(&gw, B_IP) >= 1 || protocol == "http/1.1");
    // `/pool` shows where each connection goes.
    let v: serde_json::Value =
        serde_json::from_slice(&admin_get(&gw, "/pool").await.body).expect("JSON");
    assert_eq!(v[0]["resolved"], true, "{v}");
    if protocol == "h2" {
        let b_peer = SocketAddr::from((B_IP, b.addr.port())).to_string();
        let conns = v[0]["connections"].as_array().expect("connections");
        assert!(
            !conns.is_empty() && conns.iter().all(|c| c["peer"] == b_peer.as_str()),
            "{v}"
        );
    }
    let (ok, errors) = load.finish().await;
    eprintln!(
        "{protocol}: {ok} requests, {errors} errors; B served {:.0?} after the switch, A closed \
         after {:.0?}; A served {a_done}, B {}; A connections {} B connections {}; dns ok {}",
        to_b,
        a_closed,
        b.stats.get(|s| &s.requests),
        a.stats.get(|s| &s.connections),
        b.stats.get(|s| &s.connections),
        dns_metric(&gw, "ok"),
    );
    assert_eq!(errors, 0, "client errors during the move");
    assert_eq!(dns_metric(&gw, "error"), 0.0);
    assert!(gw.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_moves_to_the_new_address_and_drains_the_old() {
    moves_from_a_to_b(Origin::h2(), "h2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_moves_to_the_new_address_and_drains_the_old() {
    moves_from_a_to_b(Origin::h1_tls(), "http/1.1").await;
}

/// The hosts file becomes empty, then unreadable: every resolution fails and is counted, the
/// last good address is kept, and traffic keeps flowing — also over connections dialled after
/// the failure (`drain_all` forces new dials, which use the kept address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_resolution_keeps_the_last_good_address() {
    init();
    let (pki, files) = app_pki();
    let a = Origin::h2()
        .start_on(SocketAddr::from((A_IP, 0)), &pki)
        .await
        .expect("origin");
    let hosts = hosts_path(&files);
    write_hosts(&hosts, &hosts_line(A_IP));
    let gw = gateway(&files, &hosts, a.addr.port(), "").await;
    let pool = gw.origin("app").expect("app").clone();
    let load = Load::start(gw.http_addrs[0], 4);
    assert!(
        wait_until(Duration::from_secs(10), || a.stats.get(|s| &s.requests)
            > 10)
        .await
    );

    write_hosts(&hosts, "# nothing here\n");
    assert!(
        wait_until(Duration::from_secs(10), || dns_metric(&gw, "error") >= 2.0).await,
        "empty answers not counted"
    );
    std::fs::remove_file(&hosts).expect("remove hosts");
    let errors_before = dns_metric(&gw, "error");
    assert!(
        wait_until(Duration::from_secs(10), || dns_metric(&gw, "error")
            >= errors_before + 2.0)
        .await,
        "unreadable file not counted"
    );
    assert!(pool.resolved(), "last good address dropped");

    // New connections still go to the kept address.
    let dialled = a.stats.get(|s| &s.connections);
    pool.drain_all();
    assert!(
        wait_until(Duration::from_secs(10), || a.stats.get(|s| &s.connections)
            > dialled)
        .await,
        "no new connection after drain_all"
    );
    assert!(
        wait_until(Duration::from_secs(10), || a.stats.get(|s| &s.open) == 1).await,
        "the drained connection did not close: {} open",
        a.stats.get(|s| &s.open)
    );
    let served = a.stats.get(|s| &s.requests);
    assert!(
        wait_until(Duration::from_secs(10), || a.stats.get(|s| &s.requests)
            > served + 50)
        .await
    );
    let (ok, errors) = load.finish().await;
    eprintln!(
        "{ok} requests, {errors} errors; dns ok {} error {}; origin connections {}",
        dns_metric(&gw, "ok"),
        dns_metric(&gw, "error"),
        a.stats.get(|s| &s.connections)
    );
    assert_eq!(errors, 0);
    assert!(gw.shutdown().await);
}

/// A name that does not resolve at start does not stop the gateway: requests fail with 502
/// until the name appears, then succeed; `resolved()` tells the two states apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_at_start_recovers() {
    init();
    let (pki, files) = app_pki();
    let a = Origin::h2()
        .start_on(SocketAddr::from((A_IP, 0)), &pki)
        .await
        .expect("origin");
    let hosts = hosts_path(&files);
    write_hosts(&hosts, "127.0.0.1 other.test\n");
    let gw = gateway(&files, &hosts, a.addr.port(), "").await;
    let pool = gw.origin("app").expect("app").clone();
    assert!(!pool.resolved());
    let ready = admin_get(&gw, "/readyz").await;
    assert_eq!(ready.status, 503, "not ready while unresolved");
    assert!(ready.text().contains("app"), "{}", ready.text());
    let r = get(gw.http_addrs[0], "app.test", "/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(dns_metric(&gw, "error") >= 1.0);

    write_hosts(&hosts, &hosts_line(A_IP));
    assert!(
        wait_until(Duration::from_secs(10), || pool.resolved()).await,
        "never resolved"
    );
    assert_eq!(admin_get(&gw, "/readyz").await.status, 200);
    // The failed dial ejected the server for `server_backoff`; poll past it.
    let mut status = 0;
    for _ in 0..50 {
        status = get(gw.http_addrs[0], "app.test", "/").await.status.as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    assert!(gw.shutdown().await);
}
