//! `runtime = "thread-per-core"` (the default; set explicitly here with `workers = 2`, so the
//! tests mean the same on any machine): client connections spread over the shard threads; each
//! origin keeps one pool, so its connection count and limits are what one runtime would have,
//! while its connections are spread over the shards as they are dialled; the shards share one
//! TLS session store (one full handshake for the whole process); shutdown drains every shard.

mod support;

use std::time::Duration;

use muxgate::testkit::load::LoadReport;
use muxgate::testkit::origin::{Origin, RunningOrigin};
use muxgate::testkit::pki::Pki;
use support::{admin_get, gateway_toml, get, https_url, init, origin_toml, serial, start_gateway};

const SHARDED: &str = "runtime = \"thread-per-core\"\nworkers = 2";

use support::origin_stat as stat;

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
    support::burst(gw, connections, requests, "/", Duration::from_secs(60)).await
}

/// Client `a`, then client `b`, each sends 20 requests one after the other; returns how many
/// each of the origin's connections carried, in the order of their home shards.
async fn twenty_each(
    gw: &muxgate::Gateway,
    a: &mut support::Client,
    b: &mut support::Client,
) -> Vec<u64> {
    let pool = gw.origin("app").unwrap();
    let served = || {
        let mut v: Vec<(Option<usize>, u64)> =
            pool.stats().iter().map(|c| (c.shard, c.served)).collect();
        v.sort();
        v
    };
    let before = served();
    for c in [a, b] {
        for _ in 0..20 {
            assert_eq!(c.get("app.test", "/").await.status, 200);
        }
    }
    let after = served();
    assert_eq!(
        after.len(),
        before.len(),
        "before {before:?}, after {after:?}"
    );
    after
        .iter()
        .zip(&before)
        .map(|((_, x), (_, y))| x - y)
        .collect()
}

/// Homes (shards) of the origin's connections, sorted.
fn homes(gw: &muxgate::Gateway) -> Vec<Option<usize>> {
    let mut v: Vec<_> = gw
        .origin("app")
        .unwrap()
        .stats()
        .iter()
        .map(|c| c.shard)
        .collect();
    v.sort();
    v
}

/// 400 clients, one request each, all in flight at once (the origin holds every response for
/// 1 s), against an origin allowing 100 streams per connection: ceil(400 / 100) = 4
/// connections, as with one runtime, each dialled on the shard home to the fewest, so 2 per
/// shard. Only the first dial is a full TLS handshake. Then 50 clients on a fresh gateway: one
/// connection, not one per shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_shared_per_origin_and_spread_over_the_shards() {
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
    assert_eq!(stat(&origin, |s| &s.connections), 4);
    assert_eq!(
        homes(&gw),
        vec![Some(0), Some(0), Some(1), Some(1)],
        "{:?}",
        gw.origin("app").unwrap().stats()
    );
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

    let origin = Origin::h2()
        .max_streams(100)
        .delay(Duration::from_millis(300))
        .start(&pki)
        .await
        .unwrap();
    let (gw, _files) = sharded_gateway(&origin, &pki, "", "").await;
    let r = burst(&gw, 50, 100).await;
    assert_eq!(r.ok(), 100, "{r:?}");
    assert_eq!(
        stat(&origin, |s| &s.connections),
        1,
        "50 streams fit one connection"
    );
    assert!(gw.shutdown().await);
}

/// Every client connection is served on a shard thread and counted there until it closes.
/// With `reuse_port` (the default) each shard accepts on its own socket and the kernel spreads
/// connections (40 clients: both shards get some); with `reuse_port = false` the one socket is
/// accepted on the main thread, which hands each connection to the shard serving the fewest,
/// so 5 clients split 3 / 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_counted_per_shard_while_open() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    for top in ["", "reuse_port = false"] {
        let (gw, _files) = sharded_gateway(&origin, &pki, top, "").await;
        let addr = gw.http_addrs[0];
        // 40 clients: with `SO_REUSEPORT` the kernel's hash leaves a shard without any of them
        // with a probability of 2^-39, so both accept loops are seen at work.
        let n = if top.is_empty() { 40 } else { 5 };
        let mut clients = Vec::new();
        for _ in 0..n {
            let mut c = support::Client::connect(addr).await;
            assert_eq!(c.get("app.test", "/").await.status, 200);
            clients.push(c);
        }
        let open = gw.shard_connections().unwrap();
        assert_eq!(open.len(), 2);
        assert_eq!(open.iter().sum::<usize>(), n, "{top:?}: {open:?}");
        if top.is_empty() {
            assert!(
                open.iter().all(|&k| k > 0),
                "a shard accepted nothing: {open:?}"
            );
        } else {
            assert!(open.iter().all(|&k| k == 2 || k == 3), "{open:?}");
        }
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
        assert!(gone, "{top:?}: {:?}", gw.shard_connections());
        assert!(gw.shutdown().await);
    }
}

/// An HTTP/1.1-only origin: `h1_max_connections = 4` holds for the origin across both shards,
/// and every request succeeds. Without a cap, 20 concurrent clients (10 per shard) make each
/// shard dial connections of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_pool_is_shared_and_its_connections_live_on_both_shards() {
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
    assert_eq!(stat(&origin, |s| &s.connections), 4);
    assert_eq!(stat(&origin, |s| &s.peak_active), 4);
    assert!(gw.shutdown().await);

    let origin = Origin::h1_tls()
        .delay(Duration::from_millis(100))
        .start(&pki)
        .await
        .unwrap();
    let (gw, _files) = sharded_gateway(&origin, &pki, "", "").await;
    let r = burst(&gw, 20, 200).await;
    assert_eq!(r.ok(), 200, "{r:?}");
    let conns = stat(&origin, |s| &s.connections);
    assert!((2..=20).contains(&conns), "{conns} connections");
    let h = homes(&gw);
    assert!(h.contains(&Some(0)) && h.contains(&Some(1)), "{h:?}");
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
    assert_eq!(busy.iter().sum::<usize>(), 10, "{busy:?}");
    assert!(gw.shutdown().await, "gateway did not drain");
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
}

/// A reload keeps the shards (they are fixed at start): a fresh pool built by the reload places
/// its connections on the running shards, and `workers` is reported as needing a restart.
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
    assert_eq!(get(gw.http_addrs[0], "app.test", "/").await.status, 200);
    let h = homes(&gw);
    assert_eq!(h.len(), 1, "{h:?}");
    assert!(matches!(h[0], Some(0 | 1)), "{h:?}");
    assert!(gw.shutdown().await);
}

/// A request takes a stream on a connection of its own shard first. Two clients, one per shard
/// (`reuse_port = false`: handed out in turn), `min_connections = 2`: one connection per shard.
/// Each client then sends 20 requests, one after the other: each connection carries exactly
/// its own shard's 20 (without the preference, the first connection would carry all 40).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_prefer_their_own_shards_connection() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let (gw, _files) =
        sharded_gateway(&origin, &pki, "reuse_port = false", "min_connections = 2").await;
    let addr = gw.http_addrs[0];
    let mut a = support::Client::connect(addr).await;
    let mut b = support::Client::connect(addr).await;
    assert_eq!(a.get("app.test", "/").await.status, 200);
    assert_eq!(b.get("app.test", "/").await.status, 200);
    let pool = gw.origin("app").unwrap();
    let two = support::wait_until(Duration::from_secs(5), || pool.stats().len() == 2).await;
    assert!(two, "{:?}", pool.stats());
    assert_eq!(homes(&gw), vec![Some(0), Some(1)]);
    let delta = twenty_each(&gw, &mut a, &mut b).await;
    assert_eq!(
        delta,
        vec![20, 20],
        "requests per connection, by home shard"
    );
    drop((a, b));
    assert!(gw.shutdown().await);
}

/// `muxgate_shard_relayed_wakes_total{shard}` from `/metrics`, per shard.
async fn relayed_wakes(gw: &muxgate::Gateway) -> Vec<u64> {
    let text = admin_get(gw, "/metrics").await.text();
    (0..2)
        .map(|i| {
            let name = format!("muxgate_shard_relayed_wakes_total{{shard=\"{i}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(name.as_str()))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        })
        .collect()
}

/// One origin connection (it has room for both clients' streams), so the client of the other
/// shard has its responses delivered across threads: each of its 20 requests is woken through
/// its shard's relay (`shard::wake`), and all 40 are served. The client of the connection's own
/// shard needs no relay for its responses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_for_the_other_shards_clients_go_through_its_relay() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2().start(&pki).await.unwrap();
    let (gw, _files) = sharded_gateway(&origin, &pki, "reuse_port = false", "").await;
    let addr = gw.http_addrs[0];
    let mut a = support::Client::connect(addr).await;
    let mut b = support::Client::connect(addr).await;
    assert_eq!(a.get("app.test", "/").await.status, 200);
    assert_eq!(b.get("app.test", "/").await.status, 200);
    assert_eq!(gw.shard_connections(), Some(vec![1, 1]));
    let home = match homes(&gw).as_slice() {
        [Some(h)] => *h,
        other => panic!("one connection with a home expected: {other:?}"),
    };
    let before = relayed_wakes(&gw).await;
    let delta = twenty_each(&gw, &mut a, &mut b).await;
    assert_eq!(delta, vec![40], "one connection carries all 40");
    let after = relayed_wakes(&gw).await;
    let other = 1 - home;
    assert!(
        after[other] - before[other] >= 20,
        "relayed wakes before {before:?}, after {after:?} (connection on shard {home})"
    );
    drop((a, b));
    assert!(gw.shutdown().await);
}

/// `runtime = "work-stealing"` (the runtime before thread-per-core became the default) still
/// serves the same burst with the same connection counts; no connection has a shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_stealing_runtime_serves_the_same_burst() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h2()
        .max_streams(100)
        .delay(Duration::from_millis(500))
        .start(&pki)
        .await
        .unwrap();
    let files = pki.write().expect("pki files");
    let toml = gateway_toml(
        "runtime = \"work-stealing\"",
        &origin_toml("app", &["*"], &https_url(&origin), Some(&files.ca), ""),
    );
    let gw = start_gateway(&toml).await;
    assert_eq!(gw.shard_connections(), None);
    let r = burst(&gw, 400, 400).await;
    assert_eq!(r.ok(), 400, "{r:?}");
    assert_eq!(stat(&origin, |s| &s.connections), 4);
    assert_eq!(stat(&origin, |s| &s.full_handshakes), 1);
    assert_eq!(homes(&gw), vec![None; 4]);
    assert!(gw.shutdown().await);
}

/// An HTTP/1.1 request takes an idle connection of its own shard first. One client per shard
/// (`reuse_port = false`), an HTTP/1.1-only origin, one connection at home on each shard; then
/// each client sends 20 requests, one after the other. Each connection carries exactly its
/// shard's 20 (plain LIFO reuse gives the last returned connection all 40: checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_prefer_their_own_shards_idle_connection() {
    init();
    let _serial = serial().await;
    let pki = Pki::localhost().unwrap();
    let origin = Origin::h1_tls().start(&pki).await.unwrap();
    let (gw, _files) = sharded_gateway(&origin, &pki, "reuse_port = false", "").await;
    let addr = gw.http_addrs[0];
    let mut a = support::Client::connect(addr).await;
    let mut b = support::Client::connect(addr).await;
    // a (shard 0) alone: the first connection, at home on shard 0. Then, while a's next
    // request holds it (slow answers), b (shard 1) finds no idle connection and dials one
    // of its own.
    assert_eq!(a.get("app.test", "/").await.status, 200);
    origin
        .force_delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let second = async {
        let busy =
            support::wait_until(Duration::from_secs(5), || stat(&origin, |s| &s.active) == 1).await;
        assert!(busy, "a's request never reached the origin");
        b.get("app.test", "/").await
    };
    let (ra, rb) = tokio::join!(a.get("app.test", "/"), second);
    assert_eq!((ra.status.as_u16(), rb.status.as_u16()), (200, 200));
    assert_eq!(
        homes(&gw),
        vec![Some(0), Some(1)],
        "one connection per shard"
    );
    origin
        .force_delay_ms
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let delta = twenty_each(&gw, &mut a, &mut b).await;
    assert_eq!(
        delta,
        vec![20, 20],
        "requests per connection, by home shard"
    );
    assert_eq!(stat(&origin, |s| &s.connections), 2);
    drop((a, b));
    assert!(gw.shutdown().await);
}
