//! `runtime = "thread-per-core"`: client connections spread evenly over the shard threads, each
//! shard dials its own origin connections (so the connection count follows each shard's share
//! of the load), the shards share one TLS session store (one full handshake for the whole
//! process), limits are divided among the shards, and shutdown drains every shard.

mod support;

use std::time::Duration;

use muxgate::testkit::load::{self, LoadReport, LoadSpec};
use muxgate::testkit::origin::{Origin, RunningOrigin};
use muxgate::testkit::pki::Pki;
use support::{admin_get, gateway_toml, get, https_url, init, origin_toml, serial, start_gateway};

const SHARDED: &str = "runtime = \"thread-per-core\"\nworkers = 2";

fn stat(
    o: &RunningOrigin,
    f: impl Fn(&muxgate::testkit::origin::OriginStats) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    o.stats.get(f)
}

async fn sharded_gateway(
    origin: &RunningOrigin,
    pki: &Pki,
    top: &str,
    extra: &str,
) -> (muxgate::Gateway, muxgate::testkit::pki::PkiFiles) {
    let files = pki.write().expect("pki files");
    let toml = gateway_toml(
        &format!("{SHARDED}\n{top}"),
        &origin_toml("app", &["*"], &https_url(origin), Some(&files.ca), extra),
    );
    (start_gateway(&toml).await, files)
}

async fn burst(gw: &muxgate::Gateway, connections: usize, requests: usize) -> LoadReport {
    let spec = LoadSpec {
        close: false,
        target: gw.http_addrs[0],
        tls: None,
        host: "app.test".into(),
        path: "/".into(),
        connections,
        requests,
    };
    tokio::time::timeout(Duration::from_secs(60), load::run(spec))
        .await
        .expect("load run timed out")
}

/// 400 clients, one request each, all in flight at once (the origin holds every response for
/// 1 s), against an origin allowing 100 streams per connection. The acceptor gives each shard
/// 200 clients, each shard needs ceil(200 / 100) = 2 connections of its own: 4 in all, the
/// same as one shared pool would need. The two shards dial at the same moment, yet only the
/// first dial is a full TLS handshake: the others wait for its session and resume it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_split_clients_evenly_and_dial_their_own_connections() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2()
        .max_streams(100)
        .delay(Duration::from_secs(1))
        .start(&pki)
        .await
        .unwrap();
    let (gw, _files) = sharded_gateway(&origin, &pki, "", "").await;
    assert_eq!(gw.shard_connections(), Some(vec![0, 0]));

    let r = burst(&gw, 400, 400).await;
    assert_eq!(r.errors, 0, "{r:?}");
    assert_eq!(r.ok(), 400, "statuses: {:?}", r.statuses);
    assert_eq!(stat(&origin, |s| &s.peak_active), 400);

    let pool = gw.origin("app").unwrap();
    assert_eq!(pool.shards(), 2);
    let per_shard: Vec<usize> = pool.shard_stats().iter().map(|v| v.len()).collect();
    assert_eq!(per_shard, vec![2, 2], "{:?}", pool.shard_stats());
    let served: Vec<u64> = pool
        .shard_stats()
        .iter()
        .map(|v| v.iter().map(|c| c.served).sum())
        .collect();
    assert_eq!(served, vec![200, 200], "requests per shard");
    assert_eq!(stat(&origin, |s| &s.connections), 4);
    assert_eq!(
        stat(&origin, |s| &s.full_handshakes),
        1,
        "one full handshake for the whole process"
    );
    assert_eq!(stat(&origin, |s| &s.resumed_handshakes), 3);

    // /pool names each connection's shard.
    let body = admin_get(&gw, "/pool").await.text();
    assert_eq!(body.matches("\"shard\":0").count(), 2, "{body}");
    assert_eq!(body.matches("\"shard\":1").count(), 2, "{body}");
    assert!(gw.shutdown().await, "gateway did not drain");
}

/// Every client connection is served on a shard thread, and the shards' counts go back to zero
/// when the clients leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_counted_per_shard_while_open() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let (gw, _files) = sharded_gateway(&origin, &pki, "", "").await;
    let addr = gw.http_addrs[0];
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = support::Client::connect(addr).await;
        assert_eq!(c.get("app.test", "/").await.status, 200);
        clients.push(c);
    }
    let open = gw.shard_connections().unwrap();
    assert_eq!(open.iter().sum::<usize>(), 5, "{open:?}");
    assert!(open.iter().all(|&n| n == 2 || n == 3), "{open:?}");
    let metrics = admin_get(&gw, "/metrics").await.text();
    let gauge = |shard: usize| {
        support::metric_value(
            &metrics,
            &format!("muxgate_shard_connections_open{{shard=\"{shard}\"}}"),
        )
    };
    assert_eq!(gauge(0), Some(open[0] as f64), "{metrics}");
    assert_eq!(gauge(1), Some(open[1] as f64), "{metrics}");
    drop(clients);
    let gone = support::wait_until(Duration::from_secs(5), || {
        gw.shard_connections() == Some(vec![0, 0])
    })
    .await;
    assert!(gone, "{:?}", gw.shard_connections());
    assert!(gw.shutdown().await);
}

/// An HTTP/1.1-only origin: `h1_max_connections = 4` is divided among the 2 shards (2 each), so
/// 20 concurrent requests never open more than 4 origin connections, and all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_connection_limit_is_divided_among_shards() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h1_tls()
        .delay(Duration::from_millis(100))
        .start(&pki)
        .await
        .unwrap();
    let (gw, _files) = sharded_gateway(&origin, &pki, "", "h1_max_connections = 4").await;
    let r = burst(&gw, 20, 200).await;
    assert_eq!(r.errors, 0, "{r:?}");
    assert_eq!(r.ok(), 200, "statuses: {:?}", r.statuses);
    let conns = stat(&origin, |s| &s.connections);
    assert!(conns <= 4, "origin saw {conns} connections");
    assert_eq!(
        stat(&origin, |s| &s.peak_active),
        4,
        "both shards used their share"
    );
    let per_shard: Vec<usize> = gw
        .origin("app")
        .unwrap()
        .shard_stats()
        .iter()
        .map(|v| v.len())
        .collect();
    assert!(per_shard.iter().all(|&n| n <= 2), "{per_shard:?}");
    assert!(gw.shutdown().await);
}

/// SIGTERM-style shutdown with requests in flight on both shards: every one completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_every_shard() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2()
        .delay(Duration::from_millis(500))
        .start(&pki)
        .await
        .unwrap();
    let (gw, _files) = sharded_gateway(&origin, &pki, "", "").await;
    let addr = gw.http_addrs[0];
    let mut tasks = Vec::new();
    for _ in 0..10 {
        tasks.push(tokio::spawn(
            async move { get(addr, "app.test", "/").await },
        ));
    }
    let started = support::wait_until(Duration::from_secs(5), || {
        stat(&origin, |s| &s.active) == 10
    })
    .await;
    assert!(started, "requests did not reach the origin");
    let busy = gw.shard_connections().unwrap();
    assert_eq!(busy, vec![5, 5]);
    assert!(gw.shutdown().await, "gateway did not drain");
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
}

/// A reload keeps the shard count (it is fixed at start): a fresh pool built by the reload has
/// one sub-pool per running shard, and `workers` is reported as needing a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_running_shards() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let (gw, files) = sharded_gateway(&origin, &pki, "", "").await;
    assert_eq!(get(gw.http_addrs[0], "app.test", "/").await.status, 200);
    let toml = gateway_toml(
        "runtime = \"thread-per-core\"\nworkers = 3",
        &origin_toml(
            "app",
            &["*"],
            &https_url(&origin),
            Some(&files.ca),
            "max_connections = 4",
        ),
    );
    let cfg = muxgate::config::Config::from_toml(&toml)
        .unwrap()
        .validate()
        .unwrap();
    let report = gw.reload(cfg).expect("reload");
    assert_eq!(report.needs_restart, vec!["workers"]);
    assert_eq!(report.fresh, vec!["app".to_string()]);
    assert_eq!(gw.origin("app").unwrap().shards(), 2);
    assert_eq!(get(gw.http_addrs[0], "app.test", "/").await.status, 200);
    assert!(gw.shutdown().await);
}
