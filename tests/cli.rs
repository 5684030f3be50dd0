//! The `muxgate` binary (DESIGN.md "CLI"): `check` exits 2 with exactly one stderr line naming
//! the offending key, exits 0 and prints the effective configuration for a good file (which can
//! be checked again as is), honours `MUXGATE_*` overrides, and `run` exits 0 on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_muxgate");

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "muxgate-cli-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A command for the binary with no `MUXGATE_*` or `RUST_LOG` leaking in from the environment.
fn muxgate() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MUXGATE_") {
            c.env_remove(&k);
        }
    }
    c.env_remove("RUST_LOG").kill_on_drop(true);
    c
}

async fn run(mut cmd: Command) -> Output {
    tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("muxgate did not exit within 20s")
        .expect("spawn muxgate")
}

async fn check(path: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = muxgate();
    cmd.arg("check").arg("-c").arg(path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd).await
}

/// Asserts exit code 2, nothing on stdout and exactly one stderr line containing every `needle`.
fn assert_refused(out: &Output, needles: &[&str], case: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{case}: stderr {stderr:?}");
    assert!(
        out.stdout.is_empty(),
        "{case}: stdout {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{case}: stderr is not one line: {stderr:?}");
    for n in needles {
        assert!(lines[0].contains(n), "{case}: {n:?} not in {:?}", lines[0]);
    }
}

const ORIGIN: &str =
    "[[origins]]\nname = \"app\"\nhosts = [\"*\"]\nurl = \"https://127.0.0.1:8443\"\n";

#[tokio::test]
async fn check_refuses_bad_configs_with_one_line_naming_the_key() {
    let dir = Scratch::new();
    let cases: &[(&str, String, &[&str])] = &[
        ("unknown top-level key", format!("bogus_key = 1\n{ORIGIN}"), &["bogus_key"]),
        (
            "unknown nested key",
            "[admin]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n".into(),
            &["bogus", "admin"],
        ),
        (
            "unknown origin key",
            format!("{ORIGIN}colour = \"red\"\n"),
            &["colour", "origins"],
        ),
        ("bad listen address", "listen = [\"nope\"]\n".into(), &["listen.0"]),
        (
            "bad admin address",
            "[admin]\nlisten = \"localhost\"\n".into(),
            &["admin.listen"],
        ),
        (
            "missing listener certificate",
            "[[listen_tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n"
                .into(),
            &["listen_tls.0.cert"],
        ),
        (
            "missing origin CA file",
            format!("{ORIGIN}tls_ca = \"/nonexistent/ca.pem\"\n"),
            &["origins.0.tls_ca"],
        ),
        (
            "unparsable origin duration",
            format!("{ORIGIN}connect_timeout = \"5 parsecs\"\n"),
            &["origins.0.connect_timeout"],
        ),
        (
            "unparsable client duration",
            "[client]\nheader_timeout = \"soon\"\n".into(),
            &["client.header_timeout"],
        ),
        (
            "unparsable size",
            "[client]\nmax_body_size = \"12 parsecs\"\n".into(),
            &["client.max_body_size"],
        ),
        ("TOML syntax error", "listen = [\n".into(), &["config"]),
        ("absurd worker count", "workers = 5000\n".into(), &["workers"]),
        (
            "unknown runtime",
            "runtime = \"fibers\"\n".into(),
            &["runtime", "thread-per-core"],
        ),
    ];
    for (i, (case, text, needles)) in cases.iter().enumerate() {
        let path = dir.file(&format!("bad{i}.toml"), text);
        let out = check(&path, &[]).await;
        assert_refused(&out, needles, case);
    }
}

#[tokio::test]
async fn check_refuses_a_missing_config_file() {
    let dir = Scratch::new();
    let path = dir.0.join("does-not-exist.toml");
    let out = check(&path, &[]).await;
    assert_refused(&out, &["does-not-exist.toml"], "missing file");
}

#[tokio::test]
async fn check_accepts_the_design_minimal_config_and_prints_it() {
    let dir = Scratch::new();
    let ca = dir.file(
        "ca.pem",
        &muxgate::testkit::pki::Pki::localhost().expect("pki").ca_pem,
    );
    let minimal = format!(
        "listen = [\"127.0.0.1:8080\"]\n\n[admin]\nlisten = \"127.0.0.1:9901\"\n\n\
         [[origins]]\nname = \"app\"\nhosts = [\"*\"]\nurl = \"https://127.0.0.1:8443\"\n\
         tls_ca = {:?}\n",
        ca.display().to_string()
    );
    for (name, text) in [
        ("with-ca.toml", minimal),
        (
            "without-ca.toml",
            format!("listen = [\"127.0.0.1:8080\"]\n{ORIGIN}"),
        ),
    ] {
        let path = dir.file(name, &text);
        let out = check(&path, &[]).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        assert!(stderr.is_empty(), "{name}: stderr {stderr:?}");
        assert!(
            stdout.contains("https://127.0.0.1:8443"),
            "{name}: {stdout}"
        );
        assert!(stdout.contains("127.0.0.1:8080"), "{name}: {stdout}");

        // The printed effective configuration is itself a valid configuration.
        let again = dir.file(&format!("effective-{name}"), &stdout);
        let out = check(&again, &[]).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: effective config refused: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            stdout,
            "{name}: not stable"
        );
    }
}

#[tokio::test]
async fn check_accepts_the_documented_example_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/muxgate.toml");
    let out = check(&path, &[]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn environment_overrides_the_file() {
    let dir = Scratch::new();
    let path = dir.file(
        "env.toml",
        &format!("listen = [\"127.0.0.1:8080\"]\n{ORIGIN}"),
    );
    let out = check(&path, &[("MUXGATE_ADMIN__LISTEN", "127.0.0.1:19901")]).await;
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("127.0.0.1:19901"), "{stdout}");

    let out = check(&path, &[("MUXGATE_ADMIN__LISTEN", "nope")]).await;
    assert_refused(&out, &["admin.listen"], "bad env override");
}

#[tokio::test]
async fn run_refuses_a_bad_config_with_exit_2() {
    let dir = Scratch::new();
    let path = dir.file("bad.toml", "listen = [\"nope\"]\n");
    let mut cmd = muxgate();
    cmd.arg("-c").arg(&path);
    let out = run(cmd).await;
    assert_refused(&out, &["listen.0"], "run with a bad config");
}

/// Starts `muxgate run` on an ephemeral port, waits for its "listening" log line, waits `grace`,
/// sends SIGTERM and returns the exit status.
#[cfg(unix)]
async fn run_then_sigterm(dir: &Scratch, grace: Duration) -> std::process::ExitStatus {
    run_then_sigterm_with(dir, "", grace, |_| ()).await
}

/// As [`run_then_sigterm`], with `top` prepended to the config and `inspect` called with the
/// child's pid once it listens.
#[cfg(unix)]
async fn run_then_sigterm_with(
    dir: &Scratch,
    top: &str,
    grace: Duration,
    inspect: impl FnOnce(u32),
) -> std::process::ExitStatus {
    let path = dir.file(
        "run.toml",
        &format!("{top}\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"\"\n"),
    );
    let mut cmd = muxgate();
    cmd.arg("run")
        .arg("-c")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let listening = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("listening") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(listening, "muxgate never logged that it is listening");
    inspect(child.id().expect("pid"));
    tokio::time::sleep(grace).await;
    let pid = libc::pid_t::try_from(child.id().expect("pid")).expect("pid range");
    // SAFETY: kill(2) on our own child's pid; no memory is shared.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("muxgate did not exit within 10s of SIGTERM")
        .expect("wait")
}

/// Threads of `pid` whose name starts with `prefix`. A thread that was just created carries
/// its parent's name until it first runs, which on a loaded machine can take a while: read
/// again (for up to 5 s) until the count is `want`.
#[cfg(target_os = "linux")]
fn threads_named(pid: u32, prefix: &str, want: usize) -> usize {
    let count = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("/proc/PID/task")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim().starts_with(prefix))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = count();
        if n == want || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Threads of `pid` whose name is tokio's worker-thread name.
#[cfg(target_os = "linux")]
fn runtime_workers(pid: u32, want: usize) -> usize {
    threads_named(pid, "tokio-rt-worker", want)
}

/// The default runtime (`thread-per-core`): `workers` shard threads (one per core by default),
/// each with its own single-threaded runtime, and no work-stealing workers.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn thread_per_core_starts_one_shard_thread_per_worker() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (top, want) in [
        ("workers = 3", 3),
        ("runtime = \"thread-per-core\"", cores),
        ("", cores),
    ] {
        let dir = Scratch::new();
        let mut seen = None;
        let status = run_then_sigterm_with(&dir, top, Duration::from_millis(100), |pid| {
            seen = Some((
                threads_named(pid, "muxgate-shard-", want),
                runtime_workers(pid, 0),
            ));
        })
        .await;
        assert_eq!(seen, Some((want, 0)), "config {top:?}");
        assert_eq!(status.code(), Some(0), "{status:?}");
    }
}

/// `runtime = "work-stealing"`: `workers` sets the runtime's worker threads; 0 (the default)
/// means one per core; no shard threads.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn work_stealing_starts_the_configured_number_of_workers() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ws = "runtime = \"work-stealing\"";
    for (workers, want) in [("workers = 1", 1), ("workers = 3", 3), ("", cores)] {
        let dir = Scratch::new();
        let mut seen = None;
        let top = format!("{ws}\n{workers}");
        let status = run_then_sigterm_with(&dir, &top, Duration::from_millis(100), |pid| {
            seen = Some(runtime_workers(pid, want));
            assert_eq!(threads_named(pid, "muxgate-shard-", 0), 0);
        })
        .await;
        assert_eq!(seen, Some(want), "config {top:?}");
        assert_eq!(status.code(), Some(0), "{status:?}");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn run_exits_0_on_sigterm() {
    let dir = Scratch::new();
    let status = run_then_sigterm(&dir, Duration::from_millis(300)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// A supervisor may send SIGTERM as soon as the gateway says it is listening. `run` logs
/// "muxgate listening" before `wait_for_signal` installs the SIGTERM handler (src/main.rs), so a
/// SIGTERM in that window kills the process by the default action (exit by signal 15: no drain,
/// no exit 0). The window is short: it shows under CPU load (with three busy loops running, two
/// runs of this test in five failed), rarely on an idle machine.
#[cfg(unix)]
#[tokio::test]
async fn run_exits_0_on_sigterm_right_after_listening() {
    let dir = Scratch::new();
    for round in 1..=10 {
        let status = run_then_sigterm(&dir, Duration::ZERO).await;
        assert_eq!(status.code(), Some(0), "round {round}: {status:?}");
    }
}

/// `muxgate --version` prints the name and the crate version and exits 0.
#[tokio::test]
async fn version_is_printed() {
    let mut cmd = muxgate();
    cmd.arg("--version");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!("muxgate {}", env!("CARGO_PKG_VERSION")),
        "{text:?}"
    );
}
