//! The `muxgate` command: `run` (default), `check`, `demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use muxgate::config::Config;
use muxgate::demo::{self, DemoOpts};
use muxgate::Gateway;

/// mimalloc instead of glibc malloc: glibc's per-thread arenas kept ~35 MiB more resident after
/// a 1 GiB streamed download (bench/large_bodies.sh); mimalloc returns it. The `system-alloc`
/// feature keeps the system's, for heap profilers (bench/heap.sh).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "muxgate",
    version,
    about = "Many HTTP/1.1 clients onto a few multiplexed HTTP/2 TLS origin connections"
)]
struct Cli {
    /// Configuration file (TOML). Without it: built-in defaults and MUXGATE_* variables.
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration and print the effective settings.
    Check,
    /// Start an in-process TLS HTTP/2 origin and the gateway, drive a client burst, report.
    Demo {
        /// Concurrent client connections.
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Requests in all.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Response body size in bytes.
        #[arg(long, default_value_t = 1024)]
        body_size: usize,
        /// Origin's SETTINGS_MAX_CONCURRENT_STREAMS.
        #[arg(long, default_value_t = 128)]
        max_streams: u32,
        /// Also run the same load straight at the origin (HTTP/1.1 over TLS).
        #[arg(long)]
        direct: bool,
        /// The origin's min_connections.
        #[arg(long, default_value_t = 1)]
        min_connections: usize,
        /// Enable the cache and also measure hits (1 KiB, 100 KiB) next to the miss path.
        #[arg(long)]
        cache: bool,
        /// Instead: an origin that sends GOAWAY after every N streams per connection.
        #[arg(long)]
        goaway_every: Option<u64>,
        /// Keep serving after the report (on 127.0.0.1:8080 unless --listen).
        #[arg(long)]
        serve: bool,
        /// Listen address with --serve.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Benchmark helper: a fixed number of keep-alive HTTP/1.1 GETs over N connections
    /// (plain TCP); prints requests, errors, req/s, p50/p99.
    #[command(hide = true)]
    Load {
        /// Target address.
        #[arg(long)]
        target: std::net::SocketAddr,
        /// Host header.
        #[arg(long, default_value = "localhost")]
        host: String,
        /// Path.
        #[arg(long, default_value = "/")]
        path: String,
        /// Connections.
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// Requests in all.
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
        /// Send `Connection: close`: a new connection for every request.
        #[arg(long)]
        close: bool,
    },
    /// Benchmark helper: run the test-kit origin (TLS, ALPN h2 + http/1.1) in its own process.
    /// Writes ca.pem/cert.pem/key.pem into DIR, prints `listening ADDR`, serves until killed.
    #[command(hide = true)]
    Origin {
        /// Directory for the generated certificates.
        #[arg(long)]
        dir: PathBuf,
        /// SETTINGS_MAX_CONCURRENT_STREAMS.
        #[arg(long, default_value_t = 128)]
        max_streams: u32,
        /// Offer only http/1.1.
        #[arg(long)]
        h1_only: bool,
    },
}

fn init_logging(default: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cmd = cli.cmd.unwrap_or(Cmd::Run);
    // `run` and `check` read the configuration first (a bad one: one line, exit 2); `run`
    // sizes the runtime from it (`workers`), the other commands take one worker per core.
    let cfg = match cmd {
        Cmd::Run | Cmd::Check => {
            match Config::load(cli.config.as_deref()).and_then(Config::validate) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    let (workers, sharded) = match (&cmd, &cfg) {
        (Cmd::Run, Some(c)) => (c.raw.workers, c.shards.is_some()),
        _ => (0, false),
    };
    let rt = match runtime(workers, sharded) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("muxgate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cmd {
        Cmd::Check => {
            if let Some(v) = cfg {
                match toml_string(&v.raw) {
                    Ok(s) => print!("{s}"),
                    Err(e) => eprintln!("muxgate: {e}"),
                }
            }
            ExitCode::SUCCESS
        }
        Cmd::Run => {
            let Some(cfg) = cfg else {
                return ExitCode::from(2);
            };
            init_logging("info", cfg.raw.log_format == "json");
            raise_nofile(
                cfg.raw.client.max_connections as u64 * 2
                    + cfg.raw.admin.max_connections as u64
                    + 1024,
            );
            rt.block_on(run(cfg, cli.config))
        }
        Cmd::Load {
            target,
            host,
            path,
            connections,
            requests,
            close,
        } => {
            init_logging("warn", false);
            raise_nofile(connections as u64 * 2 + 256);
            let spec = muxgate::testkit::load::LoadSpec {
                close,
                target,
                tls: None,
                host,
                path,
                connections,
                requests,
            };
            let r = rt.block_on(muxgate::testkit::load::run(spec));
            println!(
                "requests {} errors {} rps {:.0} p50_ms {:.2} p99_ms {:.2}",
                r.requests,
                r.errors,
                r.rps(),
                r.quantile(0.5).as_secs_f64() * 1e3,
                r.quantile(0.99).as_secs_f64() * 1e3
            );
            if r.errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Cmd::Origin {
            dir,
            max_streams,
            h1_only,
        } => {
            init_logging("warn", false);
            raise_nofile(65_536);
            match rt.block_on(run_origin(dir, max_streams, h1_only)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("muxgate origin: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Demo {
            clients,
            requests,
            body_size,
            max_streams,
            direct,
            min_connections,
            cache,
            goaway_every,
            serve,
            listen,
        } => {
            init_logging("warn", false);
            raise_nofile(clients as u64 * 4 + 256);
            let opts = DemoOpts {
                clients,
                requests,
                body_size,
                max_streams,
                direct,
                min_connections,
                cache,
                goaway_every,
                serve: serve.then_some(listen),
            };
            match rt.block_on(demo::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("muxgate demo: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// The multi-threaded runtime with `workers` worker threads; 0 means one per core (tokio's
/// default, which also honours `TOKIO_WORKER_THREADS`). With `sharded` (thread-per-core) the
/// requests run on the shard threads ([`muxgate::shard`]); this thread's runtime only accepts
/// connections, serves the admin listener and runs the timers of the pools and the resolver.
fn runtime(workers: usize, sharded: bool) -> std::io::Result<tokio::runtime::Runtime> {
    if sharded {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if workers > 0 {
        b.worker_threads(workers);
    }
    b.build()
}

/// Raises the open-file soft limit to the hard limit; warns if that is below `wanted`
/// (each client connection costs a descriptor, plus origin connections).
fn raise_nofile(wanted: u64) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < wanted => tracing::warn!(
            limit = n,
            wanted,
            "open-file limit is low for the configured connection limits"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

fn toml_string(c: &Config) -> Result<String, String> {
    let body = toml::to_string(c).map_err(|e| e.to_string())?;
    Ok(format!(
        "# effective configuration (defaults, file, MUXGATE_* environment)\n{body}"
    ))
}

async fn run(cfg: muxgate::config::ValidConfig, path: Option<PathBuf>) -> ExitCode {
    // Handlers first: a SIGTERM right after "listening" must drain, not kill.
    let stop = signal_future();
    let mut hup = hangup_signal();
    let gw = match Gateway::start(cfg).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("muxgate: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(http = ?gw.http_addrs, tls = ?gw.tls_addrs, admin = ?gw.admin_addr, "muxgate listening");
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(()) = hup.recv() => reload(&gw, path.as_deref()),
        }
    }
    tracing::info!("shutting down: draining in-flight requests");
    if gw.shutdown().await {
        tracing::info!("drained");
    } else {
        tracing::warn!("drain timeout reached with requests in flight");
    }
    ExitCode::SUCCESS
}

/// SIGHUP: re-read and validate the configuration, then swap it in; on any error keep running
/// the old one. Either way one log line says what happened.
fn reload(gw: &Gateway, path: Option<&std::path::Path>) {
    let cfg = match Config::load(path).and_then(Config::validate) {
        Ok(c) => c,
        Err(e) => {
            gw.metrics()
                .config_reloads_total
                .get_or_create(&vec![("result", "error".into())])
                .inc();
            tracing::error!(error = %e, "reload refused; the running configuration stays");
            return;
        }
    };
    match gw.reload(cfg) {
        Ok(r) => {
            if !r.needs_restart.is_empty() {
                tracing::warn!(keys = ?r.needs_restart, "reload: these changes take effect only after a restart");
            }
            tracing::info!(kept = ?r.kept, fresh = ?r.fresh, retired = ?r.retired, "configuration reloaded");
        }
        Err(e) => tracing::error!(error = %e, "reload refused; the running configuration stays"),
    }
}

/// SIGHUP deliveries, one `()` each; never yields where there is no SIGHUP.
fn hangup_signal() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        // A burst of SIGHUPs while a reload runs collapses into one more.
                        let _ = tx.try_send(());
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the SIGHUP handler; reload disabled")
            }
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

async fn run_origin(dir: PathBuf, max_streams: u32, h1_only: bool) -> Result<(), String> {
    use muxgate::testkit::{origin::Origin, pki::Pki};
    let pki = Pki::localhost()?;
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    for (name, text) in [
        ("ca.pem", &pki.ca_pem),
        ("cert.pem", &pki.cert_pem),
        ("key.pem", &pki.key_pem),
    ] {
        std::fs::write(dir.join(name), text).map_err(|e| e.to_string())?;
    }
    let b = if h1_only {
        Origin::h1_tls()
    } else {
        Origin::h2_or_h1()
    };
    let origin = b.max_streams(max_streams).start(&pki).await?;
    println!("listening {}", origin.addr);
    wait_for_signal().await;
    Ok(())
}

async fn wait_for_signal() {
    signal_future().await
}

/// Installs the SIGTERM and SIGINT handlers now; the returned future ends at the first signal.
fn signal_future() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut t), Some(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {}
                        _ = i.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async move {
        let _ = tokio::signal::ctrl_c().await;
    }
}
