//! The `muxgate` binary as a child process: a config file in a scratch directory, JSON logs
//! parsed for the bound addresses, stderr collected for assertions, signals, bounded waits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A new empty directory under the system temp dir.
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "muxgate-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    /// Writes `text` to `name` inside the directory (replacing it) and returns its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
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

/// A running `muxgate run -c CONFIG` (killed on drop).
pub struct Gw {
    pub child: Child,
    /// Plain listeners from the "muxgate listening" line.
    pub http: Vec<SocketAddr>,
    /// Admin listener.
    pub admin: Option<SocketAddr>,
    /// Every stderr line so far.
    pub lines: Arc<Mutex<Vec<String>>>,
}

/// Every `127.0.0.1:PORT` in `text`, in order.
fn loopback_addrs(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("127.0.0.1:") {
        let tail = &rest[i + "127.0.0.1:".len()..];
        let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(a) = format!("127.0.0.1:{digits}").parse() {
            out.push(a);
        }
        rest = tail;
    }
    out
}

/// The JSON field `name` of a log line, as raw text (enough for the Debug-formatted fields).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":\"");
    let start = line.find(&key)? + key.len();
    let end = line[start..].find('"')? + start;
    Some(&line[start..end])
}

impl Gw {
    /// Starts the binary with `config` (which must set `log_format = "json"`), waits for its
    /// "muxgate listening" line.
    pub async fn start(config: &std::path::Path) -> Gw {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_muxgate"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("MUXGATE_") {
                cmd.env_remove(&k);
            }
        }
        cmd.arg("run")
            .arg("-c")
            .arg(config)
            .env("RUST_LOG", "info,muxgate::access=off")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn muxgate");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut r = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if l.contains("muxgate listening") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(l.clone());
                    }
                }
                sink.lock().unwrap().push(l);
            }
        });
        let line = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("muxgate did not log that it is listening within 30s")
            .expect("muxgate exited before listening");
        let http = field(&line, "http").map(loopback_addrs).unwrap_or_default();
        let admin = field(&line, "admin").and_then(|a| loopback_addrs(a).first().copied());
        Gw {
            child,
            http,
            admin,
            lines,
        }
    }

    /// Sends signal `sig` ("HUP", "TERM") with kill(1).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("pid").to_string();
        let st = std::process::Command::new("kill")
            .args(["-s", sig, &pid])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -s {sig} {pid}: {st:?}");
    }

    /// Whether some stderr line contains every needle.
    pub fn logged(&self, needles: &[&str]) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    }

    /// Waits for the process to exit (bounded) and returns its exit code.
    pub async fn wait(&mut self, limit: Duration) -> Option<i32> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("muxgate did not exit in time")
            .expect("wait")
            .code()
    }
}
