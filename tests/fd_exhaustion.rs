//! Out of file descriptors: an `accept` that fails (EMFILE) leaves its listener readable, so a
//! listener that tried again at once would spin a core until a descriptor is free. The client
//! and admin listeners back off instead (counting the failures in
//! `muxgate_accept_errors_total{listener}`), and serve the waiting connections once
//! descriptors are free again. Its own test binary: it lowers the process's open-file limit.

mod support;

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use muxgate::testkit::origin::Origin;
use muxgate::testkit::pki::Pki;
use support::proxy_kit::bounded;
use support::{gateway_for, init};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// utime + stime of this process so far, in clock ticks, read through a file opened earlier
/// (no descriptor is free to open it when it matters).
fn cpu_ticks(stat: &mut std::fs::File) -> u64 {
    let mut s = String::new();
    stat.seek(SeekFrom::Start(0)).expect("seek /proc/self/stat");
    stat.read_to_string(&mut s).expect("read /proc/self/stat");
    let f: Vec<&str> = s[s.rfind(')').expect("comm") + 2..].split(' ').collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// Sends `GET path` on `s` (HTTP/1.1, `Connection: close`).
async fn send_get(s: &mut tokio::net::TcpStream, path: &str) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write request");
}

/// The status line of the response on `s`, read to its end (at most 5 s).
async fn status_line(mut s: tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// True if nothing arrives on `s` for `wait`.
async fn silent_for(s: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    let mut b = [0u8; 1];
    tokio::time::timeout(wait, s.peek(&mut b)).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_back_off_while_descriptors_run_out_and_serve_afterwards() {
    init();
    bounded(60, async {
        let pki = Pki::localhost().unwrap();
        let origin = Origin::h2().start(&pki).await.unwrap();
        let (gw, _files) = gateway_for(&origin, &pki, "").await;
        let (client_addr, admin_addr) = (gw.http_addrs[0], gw.admin_addr.expect("admin"));
        // The origin connection is opened now, so nothing has to be dialled while descriptors
        // run out; this client stays open until they are free again (closing it would free
        // one here and one in the gateway).
        let mut warm = support::Client::connect(client_addr).await;
        assert_eq!(warm.get("app.test", "/bytes/10").await.status, 200);

        let mut stat = std::fs::File::open("/proc/self/stat").expect("open /proc/self/stat");
        // The two client sockets exist before descriptors run out; connecting them takes none.
        let (to_client, to_admin) = (
            tokio::net::TcpSocket::new_v4().expect("socket"),
            tokio::net::TcpSocket::new_v4().expect("socket"),
        );
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
        // A low limit, so that filling it takes few files.
        let open_now = std::fs::read_dir("/proc/self/fd").expect("fd dir").count() as u64;
        rlimit::setrlimit(rlimit::Resource::NOFILE, open_now + 64, hard).expect("setrlimit");
        let mut fill = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            fill.push(f);
            assert!(fill.len() < 10_000, "the lowered limit did not hold");
        }
        // None free: the gateway's accepts of these two connections fail.
        let mut to_client = to_client
            .connect(client_addr)
            .await
            .expect("connect client");
        let mut to_admin = to_admin.connect(admin_addr).await.expect("connect admin");
        send_get(&mut to_client, "/bytes/10").await;
        send_get(&mut to_admin, "/healthz").await;

        // For a second: no answer on either (the gateway could not accept them), and no core
        // spent on trying.
        let t0 = cpu_ticks(&mut stat);
        let window = Duration::from_secs(1);
        let (client_silent, admin_silent) = tokio::join!(
            silent_for(&mut to_client, window),
            silent_for(&mut to_admin, window)
        );
        let used = cpu_ticks(&mut stat) - t0;
        assert!(
            client_silent && admin_silent,
            "answered while descriptors had run out (client {client_silent}, admin {admin_silent})"
        );
        // Spinning on either listener would cost one core: ~100 ticks a second (Linux's
        // CLK_TCK is 100).
        assert!(
            used < 40,
            "the process used {used} clock ticks in 1 s while its accepts failed"
        );

        drop(fill);
        rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard).expect("restore limit");
        assert_eq!(status_line(to_admin).await, "HTTP/1.1 200 OK");
        assert_eq!(status_line(to_client).await, "HTTP/1.1 200 OK");
        // Each listener counted its failed accepts: a few, 50 ms apart, not a spin's worth.
        let text = support::admin_get(&gw, "/metrics").await.text();
        for l in ["client", "admin"] {
            let n = support::metric_value(
                &text,
                &format!("muxgate_accept_errors_total{{listener=\"{l}\"}}"),
            )
            .unwrap_or(0.0);
            assert!((1.0..=60.0).contains(&n), "{l}: {n} failed accepts\n{text}");
        }
        drop(warm);
        assert!(gw.shutdown().await);
    })
    .await;
}
