//! `muxgate demo`: an in-process TLS HTTP/2 origin (certificates generated now), the gateway in
//! front of it, and a burst of concurrent HTTP/1.1 clients; prints what happened on both sides.
//! `--direct` also runs the same load straight at the origin (HTTP/1.1 over TLS) for comparison;
//! `--serve` keeps everything running and prints the URL to curl.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::config::Config;
use crate::testkit::load::{self, LoadReport, LoadSpec};
use crate::testkit::origin::Origin;
use crate::testkit::pki::Pki;
use crate::Gateway;

/// Demo knobs.
#[derive(Debug, Clone)]
pub struct DemoOpts {
    /// Concurrent client connections.
    pub clients: usize,
    /// Requests in all.
    pub requests: usize,
    /// Origin response body size.
    pub body_size: usize,
    /// Origin SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_streams: u32,
    /// Also measure the origin reached directly.
    pub direct: bool,
    /// The origin's `min_connections`.
    pub min_connections: usize,
    /// Also measure cache hits (1 KiB, 100 KiB) against the miss path.
    pub cache: bool,
    /// Instead: an origin that sends GOAWAY after this many streams per connection.
    pub goaway_every: Option<u64>,
    /// Keep running after the report, listening here.
    pub serve: Option<SocketAddr>,
}

impl Default for DemoOpts {
    fn default() -> Self {
        DemoOpts {
            clients: 200,
            requests: 20_000,
            body_size: 1024,
            max_streams: 128,
            direct: false,
            min_connections: 1,
            cache: false,
            goaway_every: None,
            serve: None,
        }
    }
}

/// The demo fails (exit 1) if any request did not get a 200.
fn outcome(r: &LoadReport) -> Result<(), String> {
    let failed = r.errors + r.requests - r.ok();
    if failed > 0 {
        return Err(format!("{failed} requests failed"));
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn line(label: &str, r: &LoadReport) -> String {
    format!(
        "{label:<28} {:>7} ok {:>5} errors {:>9.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms",
        r.ok(),
        r.errors + (r.requests - r.ok()),
        r.rps(),
        ms(r.quantile(0.5)),
        ms(r.quantile(0.99)),
    )
}

/// Runs the demo and prints the report.
pub async fn run(opts: DemoOpts) -> Result<(), String> {
    if let Some(n) = opts.goaway_every {
        return goaway_run(&opts, n).await;
    }
    let pki = Pki::localhost()?;
    let files = pki.write()?;
    let origin = Origin::h2_or_h1()
        .max_streams(opts.max_streams)
        .body_size(opts.body_size)
        .start(&pki)
        .await?;
    let listen = opts
        .serve
        .map(|a| a.to_string())
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let toml = format!(
        r#"
listen = ["{listen}"]
[admin]
listen = "127.0.0.1:0"
[[origins]]
name = "demo"
hosts = ["*"]
url = "https://localhost:{port}"
tls_ca = "{ca}"
min_connections = {min}
[cache]
enabled = {cache}
"#,
        cache = opts.cache,
        min = opts.min_connections,
        port = origin.addr.port(),
        ca = files.ca.display().to_string().replace('\\', "\\\\"),
    );
    let cfg = Config::from_toml(&toml)
        .and_then(Config::validate)
        .map_err(|e| e.to_string())?;
    let gw = Gateway::start(cfg).await?;
    let gw_addr = *gw.http_addrs.first().ok_or("no listener bound")?;

    println!(
        "muxgate demo: {} HTTP/1.1 client connections, {} requests, {} B bodies; origin: TLS, ALPN h2, max {} concurrent streams; min_connections {}",
        opts.clients, opts.requests, opts.body_size, opts.max_streams, opts.min_connections
    );
    let mut direct = None;
    if opts.direct {
        let spec = LoadSpec {
            close: false,
            target: origin.addr,
            tls: Some((
                pki.client_config(&[b"http/1.1"])?,
                ServerName::try_from("localhost").map_err(|e| e.to_string())?,
            )),
            host: "localhost".into(),
            path: "/".into(),
            connections: opts.clients,
            requests: opts.requests,
        };
        let before = origin.stats.get(|s| &s.full_handshakes);
        let r = load::run(spec).await;
        direct = Some((r, origin.stats.get(|s| &s.full_handshakes) - before));
    }
    let conns_before = origin.stats.get(|s| &s.connections);
    let full_before = origin.stats.get(|s| &s.full_handshakes);
    let resumed_before = origin.stats.get(|s| &s.resumed_handshakes);
    let requests_before = origin.stats.get(|s| &s.requests);
    let spec = LoadSpec {
        close: false,
        target: gw_addr,
        tls: None,
        host: "demo.test".into(),
        path: "/".into(),
        connections: opts.clients,
        requests: opts.requests,
    };
    let r = load::run(spec).await;
    let pool = gw.origin("demo").ok_or("origin missing")?;
    let m = pool.metrics();
    println!("{}", line("through muxgate:", &r));
    if let Some((d, hs)) = &direct {
        println!(
            "{}   ({} full TLS handshakes at the origin)",
            line("direct to origin (h1/TLS):", d),
            hs
        );
        println!(
            "gateway / direct:            {:.2}x req/s",
            r.rps() / d.rps().max(1e-9)
        );
    }
    println!(
        "upstream: protocol {}, {} connection(s) opened, TLS handshakes: {} full, {} resumed",
        pool.protocol(),
        m.conns_h2.get() + m.conns_h1.get(),
        m.handshakes_full.get(),
        m.handshakes_resumed.get(),
    );
    println!(
        "origin saw from muxgate: {} connection(s) ({} full, {} resumed TLS handshakes), {} requests",
        origin.stats.get(|s| &s.connections) - conns_before,
        origin.stats.get(|s| &s.full_handshakes) - full_before,
        origin.stats.get(|s| &s.resumed_handshakes) - resumed_before,
        origin.stats.requests.load(Ordering::SeqCst) - requests_before,
    );
    if opts.cache {
        cache_report(&gw, gw_addr, &origin, &opts).await;
    }
    if opts.serve.is_some() {
        println!();
        println!(
            "serving: curl -v http://{gw_addr}/   (admin: http://{}/pool, /metrics)",
            gw.admin_addr.map(|a| a.to_string()).unwrap_or_default()
        );
        println!("Ctrl-C to stop");
        let _ = tokio::signal::ctrl_c().await;
    }
    gw.shutdown().await;
    drop(files);
    outcome(&r)
}

/// Cache hits for a 1 KiB and a 100 KiB object next to the miss path (uncached 1 KiB), same run.
async fn cache_report(
    gw: &Gateway,
    addr: SocketAddr,
    origin: &crate::testkit::origin::RunningOrigin,
    opts: &DemoOpts,
) {
    let run = |path: &str, requests: usize| LoadSpec {
        close: false,
        target: addr,
        tls: None,
        host: "demo.test".into(),
        path: path.into(),
        connections: opts.clients,
        requests,
    };
    println!("cache (same gateway, same run):");
    for (label, path, n) in [
        ("  miss path, 1 KiB (origin):", "/bytes/1024", opts.requests),
        ("  cache hit, 1 KiB:", "/cached/1024", opts.requests),
        ("  cache hit, 100 KiB:", "/cached/102400", opts.requests / 4),
    ] {
        let before = origin.stats.get(|s| &s.requests);
        let r = load::run(run(path, n)).await;
        println!(
            "{}   origin requests {}",
            line(label, &r),
            origin.stats.get(|s| &s.requests) - before
        );
    }
    let m = gw.metrics().render();
    let hits = m
        .lines()
        .find_map(|l| l.strip_prefix("muxgate_cache_requests_total{status=\"HIT\"} "))
        .unwrap_or("0");
    println!("  X-Cache-Status HIT count: {hits}");
}

/// The origin drains every connection with GOAWAY after `every` streams (like nginx's
/// `keepalive_requests`): clients must see no error, the origin no duplicate.
async fn goaway_run(opts: &DemoOpts, every: u64) -> Result<(), String> {
    use crate::testkit::h2ctl::ControlOrigin;
    let pki = Pki::localhost()?;
    let files = pki.write()?;
    let origin = ControlOrigin::new()
        .max_streams(opts.max_streams)
        .goaway_after(every)
        .start(&pki)
        .await?;
    let toml = format!(
        "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"\"\n[[origins]]\nname = \"demo\"\nhosts = [\"*\"]\nurl = \"https://localhost:{}\"\ntls_ca = \"{}\"\n",
        origin.addr.port(),
        files.ca.display().to_string().replace('\\', "\\\\"),
    );
    let cfg = Config::from_toml(&toml)
        .and_then(Config::validate)
        .map_err(|e| e.to_string())?;
    let gw = Gateway::start(cfg).await?;
    let addr = *gw.http_addrs.first().ok_or("no listener bound")?;
    println!(
        "muxgate demo (GOAWAY every {every} streams): {} clients, {} requests; origin max {} streams",
        opts.clients, opts.requests, opts.max_streams
    );
    let r = load::run(LoadSpec {
        close: false,
        target: addr,
        tls: None,
        host: "demo.test".into(),
        path: "/".into(),
        connections: opts.clients,
        requests: opts.requests,
    })
    .await;
    println!("{}", line("through muxgate:", &r));
    let s = &origin.stats;
    println!(
        "origin: {} connections ({} full, {} resumed TLS handshakes), {} GOAWAYs, {} requests answered for {} sent (duplicates: {})",
        s.get(|s| &s.connections),
        s.get(|s| &s.full_handshakes),
        s.get(|s| &s.resumed_handshakes),
        s.get(|s| &s.goaways),
        s.get(|s| &s.answered),
        r.requests,
        s.get(|s| &s.answered).saturating_sub(r.ok()),
    );
    gw.shutdown().await;
    drop(files);
    outcome(&r)
}
