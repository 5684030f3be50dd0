//! Configuration: figment layering (built-in defaults → TOML file → `MUXGATE_` environment) into
//! serde structs, then [`Config::validate`], which returns a [`ValidConfig`] that can no longer be
//! invalid (parsed URLs, loaded certificate paths checked, limits in range).
//!
//! Does not open sockets or read certificates' contents beyond checking the files exist; the
//! server and upstream modules do that.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configuration error: one line naming the key and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `origins.0.url`; empty when the error is about the whole file.
    pub key: String,
    /// Why the value is refused.
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys and reasons can echo the operator's (or an attacker's) bytes; control characters
        // are escaped so the error stays one log line.
        if self.key.is_empty() {
            write!(f, "config error: {}", OneLine(&self.reason))
        } else {
            write!(
                f,
                "config error: key `{}`: {}",
                OneLine(&self.key),
                OneLine(&self.reason)
            )
        }
    }
}

/// Displays a string with control characters escaped (`\r`, `\n`, `\u{1b}`).
struct OneLine<'a>(&'a str);

impl std::fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            if c.is_control() {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

fn err(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A duration written as a human string (`"90s"`, `"5m"`, `"250ms"`) or whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        let d = match Raw::deserialize(d)? {
            Raw::Secs(s) => Duration::from_secs(s),
            Raw::Text(t) => humantime::parse_duration(t.trim())
                .map_err(|e| serde::de::Error::custom(format!("invalid duration {t:?}: {e}")))?,
        };
        // A deadline is now + the duration: far larger values would overflow the clock.
        if d > MAX_DURATION {
            return Err(serde::de::Error::custom(
                "invalid duration: more than 100 years",
            ));
        }
        Ok(HumanDuration(d))
    }
}

/// The largest duration a key accepts.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A size in bytes written as an integer or a string with a unit (`"256MiB"`, `"64KiB"`, `"1GB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"123"`, `"64KiB"`, `"1.5MB"`, `"2 GiB"`; units are case-insensitive.
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num.parse().map_err(|_| {
            format!("invalid size {text:?}: expected a number with an optional unit")
        })?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            other => return Err(format!("invalid size {text:?}: unknown unit {other:?}")),
        };
        let bytes = num * mult as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("invalid size {text:?}: out of range"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// The `[client]` HTTP/2 keys.
fn validate_client_h2(c: &ClientLimits) -> Result<(), ConfigError> {
    if c.h2_max_concurrent_streams == 0 {
        return Err(err(
            "client.h2_max_concurrent_streams",
            "must be at least 1 (0 would refuse every request)",
        ));
    }
    if c.h2_max_resets_per_sec < c.h2_max_concurrent_streams {
        return Err(err(
            "client.h2_max_resets_per_sec",
            "must be at least client.h2_max_concurrent_streams, or a client cancelling all its \
             streams at once would be cut off",
        ));
    }
    if c.h2_max_control_frames_per_sec < 10 {
        return Err(err(
            "client.h2_max_control_frames_per_sec",
            "must be at least 10: browsers send several SETTINGS/PING/PRIORITY frames at start",
        ));
    }
    // RFC 9113 §6.9.1: a window may not exceed 2^31-1; below the 65,535 default an h2 peer
    // would need a SETTINGS round trip before it may send anything useful.
    for (key, v) in [
        ("client.h2_stream_window", c.h2_stream_window.0),
        ("client.h2_connection_window", c.h2_connection_window.0),
    ] {
        if !(65_535..=(1 << 31) - 1).contains(&v) {
            return Err(err(key, "must be between 65535 bytes and 2GiB-1"));
        }
    }
    if c.h2_max_send_buf_size.0 < 16 * 1024 || c.h2_max_send_buf_size.0 > 64 * 1024 * 1024 {
        return Err(err(
            "client.h2_max_send_buf_size",
            "must be between 16KiB (one frame) and 64MiB",
        ));
    }
    if !c.h2_keepalive_interval.0.is_zero() && c.h2_keepalive_timeout.0.is_zero() {
        return Err(err(
            "client.h2_keepalive_timeout",
            "must be more than 0s while h2_keepalive_interval is on",
        ));
    }
    // The header list limit is max_header_size (see server.rs); HPACK sizes count 32 bytes per
    // field (RFC 9113 §6.5.2), so it must fit u32.
    if c.max_header_size.0 > u64::from(u32::MAX / 4) {
        return Err(err("client.max_header_size", "must be below 1GiB"));
    }
    Ok(())
}

fn secs(s: u64) -> HumanDuration {
    HumanDuration(Duration::from_secs(s))
}

/// The whole configuration as written by the operator (before validation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Plain HTTP listeners. Default: `["127.0.0.1:8080"]`.
    pub listen: Vec<String>,
    /// TLS listeners (client TLS terminated here). Default: none.
    pub listen_tls: Vec<TlsListen>,
    /// Admin listener (`/healthz`, `/metrics`, `/pool`).
    pub admin: Admin,
    /// Limits on client (downstream) connections.
    pub client: ClientLimits,
    /// Origins, matched by Host header in order of specificity (exact, `*.suffix`, `*`).
    pub origins: Vec<Origin>,
    /// The response cache.
    pub cache: CacheConfig,
    /// How origin host names are resolved.
    pub dns: DnsConfig,
    /// Log output: `"text"` (default) or `"json"`.
    pub log_format: String,
    /// Bind client listeners with `SO_REUSEPORT`, so a new muxgate can start on the same
    /// ports beside a running one (zero-downtime upgrade: start the new one, then SIGTERM the
    /// old one, which stops accepting and drains). Default `true` (as HAProxy). With `false`,
    /// a second instance on the same port fails to start with "address in use".
    pub reuse_port: bool,
    /// Runtime worker threads (`work-stealing`) or shards (`thread-per-core`). `0` (default):
    /// one per core. Read at start only.
    pub workers: usize,
    /// How work is spread over the threads: `thread-per-core` (default; one single-threaded
    /// runtime per shard, each origin connection driven by one shard; see [`crate::shard`]) or
    /// `work-stealing` (one tokio runtime whose workers share every task). Read at start only.
    pub runtime: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec!["127.0.0.1:8080".into()],
            listen_tls: Vec::new(),
            admin: Admin::default(),
            client: ClientLimits::default(),
            origins: Vec::new(),
            cache: CacheConfig::default(),
            dns: DnsConfig::default(),
            log_format: "text".into(),
            reuse_port: true,
            workers: 0,
            runtime: "thread-per-core".into(),
        }
    }
}

/// `[cache]`: a shared HTTP cache (RFC 9111) in front of the origins. Strict by default:
/// only what the origin marks storable is stored, stale only where the origin allows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Cache responses. Default false.
    pub enabled: bool,
    /// Total size (bodies + headers). Default `"256MiB"`.
    pub max_size: ByteSize,
    /// Larger responses stream through uncached. Default `"8MiB"`.
    pub max_object_size: ByteSize,
    /// Key template: `$scheme`, `$host` (required), `$uri`, `$args`, `$request_uri`.
    /// Default `"$scheme://$host$request_uri"`.
    pub key: String,
    /// Lifetime per status (`"200"`, `"404"`, `"any"`) for responses without explicit
    /// freshness, like nginx's `proxy_cache_valid`. Default: none.
    pub valid: std::collections::BTreeMap<String, HumanDuration>,
    /// nginx's `proxy_cache_use_stale` words. Default: none (only RFC 5861 windows).
    pub use_stale: Vec<String>,
    /// With `use_stale = ["updating"]`: serve stale at once and refresh in the background.
    /// Default false.
    pub background_update: bool,
    /// Collapse concurrent misses for one key into one origin request. Default true.
    pub lock: bool,
    /// How long a collapsed request waits before going to the origin itself. Default `"5s"`.
    pub lock_timeout: HumanDuration,
    /// Revalidate stale entries with If-None-Match / If-Modified-Since. Default true.
    pub revalidate: bool,
    /// Methods served from the cache. Default `["GET", "HEAD"]`.
    pub methods: Vec<String>,
    /// Response fields whose caching meaning is ignored (`Cache-Control`, `Expires`,
    /// `Set-Cookie`, …), like nginx's `proxy_ignore_headers`. Default: none.
    pub ignore_headers: Vec<String>,
    /// A targeted cache-control field (RFC 9213) that takes precedence over
    /// `CDN-Cache-Control` and `Cache-Control`; `""` disables. Default `"muxgate-cache-control"`.
    pub targeted_field: String,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: false,
            max_size: ByteSize(256 << 20),
            max_object_size: ByteSize(8 << 20),
            key: "$scheme://$host$request_uri".into(),
            valid: Default::default(),
            use_stale: Vec::new(),
            background_update: false,
            lock: true,
            lock_timeout: secs(5),
            revalidate: true,
            methods: vec!["GET".into(), "HEAD".into()],
            ignore_headers: Vec::new(),
            targeted_field: "muxgate-cache-control".into(),
        }
    }
}

/// `[dns]`: where origin host names are looked up. Each origin re-resolves its names every
/// `resolve_interval`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// A file in hosts(5) format used instead of the system resolver, re-read on every
    /// resolution (no TTL). Default: none (the system resolver, getaddrinfo).
    pub hosts_file: Option<PathBuf>,
}

/// One TLS listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListen {
    /// Address to bind, e.g. `"0.0.0.0:8443"`. Required.
    pub listen: String,
    /// PEM certificate chain (leaf first). Required.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Required.
    pub key: PathBuf,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// Address of the admin listener; empty string disables it. Default: `"127.0.0.1:9901"`.
    pub listen: String,
    /// Open admin connections at most; past it new ones are closed at accept. Default: 64.
    pub max_connections: usize,
}

/// Upper bound of `admin.max_connections` (a scrape endpoint, not a traffic listener; also keeps
/// the value within what a tokio semaphore holds).
pub const MAX_ADMIN_CONNECTIONS: usize = 100_000;

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: "127.0.0.1:9901".into(),
            max_connections: 64,
        }
    }
}

/// Limits applied to every client connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientLimits {
    /// Open client connections at most; further connections are closed at accept. Default 10000.
    pub max_connections: usize,
    /// Time allowed to receive a complete request header block. On a keep-alive connection the
    /// clock starts when the previous response is done, so this is also the keep-alive idle
    /// timeout. Default `"30s"`.
    pub header_timeout: HumanDuration,
    /// TLS handshake time allowed for a client. Default `"10s"`.
    pub tls_handshake_timeout: HumanDuration,
    /// How long a response may wait for the client before it is given up, which releases the
    /// upstream stream it holds. HTTP/1.1: writes blocked (the client does not read) → the
    /// connection is closed; timed between two writes, not over the whole response. HTTP/2: a
    /// stream waiting for the client to accept its next 16 KiB (window withheld or socket not
    /// read) → the stream is given up, the connection stays. Default `"60s"`.
    pub send_timeout: HumanDuration,
    /// HTTP/1.1 clients: a keep-alive connection idle this long gives its HTTP state back (the
    /// parser's read and write buffers, ~8 KiB of memory) and waits on the bare socket; its next
    /// request builds the state again (one extra read, a few allocations). `"0s"` = never.
    /// Default `"1s"`.
    pub idle_release_after: HumanDuration,
    /// HTTP/1.1 clients: a client that closes its connection while its request waits for the
    /// origin cancels the request (its upstream stream is reset). The parser then reads the
    /// socket while every request is in flight, into a second 8 KiB buffer (the first is held
    /// by the request's head until the origin answers). `false`: the request runs until the
    /// origin answers, like nginx's `proxy_ignore_client_abort on`, and a client that shuts
    /// only its sending side after a request still gets the response; a busy connection holds
    /// 8 KiB less and each request allocates 8 KiB less (bench/heap.sh). Default true.
    pub abort_on_close: bool,
    /// Largest request header block (request line + fields). Default `"64KiB"` → 431 past it.
    pub max_header_size: ByteSize,
    /// Most request header fields. Default 100 → 431 past it.
    pub max_headers: usize,
    /// Largest request body; 0 means unlimited. Default `"0"` → 413 past it.
    pub max_body_size: ByteSize,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish. Default `"30s"`.
    pub drain_timeout: HumanDuration,
    /// Plain listeners also accept HTTP/2 with prior knowledge (h2c, RFC 9113 §3.3): a
    /// connection starting with the HTTP/2 preface is served as HTTP/2. `Upgrade: h2c` is never
    /// honoured. Default false.
    pub h2c: bool,
    /// HTTP/2 clients: SETTINGS_MAX_CONCURRENT_STREAMS; streams past it are refused with
    /// RST_STREAM(REFUSED_STREAM). Default 128.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 clients: streams the client may reset before the gateway accepted them (rapid
    /// reset, CVE-2023-44487); past it GOAWAY(ENHANCE_YOUR_CALM). Default 20.
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2 clients: streams the client may make the gateway reset with a stream error
    /// ("MadeYouReset", CVE-2025-8671); past it GOAWAY(ENHANCE_YOUR_CALM). Default 1024.
    pub h2_max_local_error_reset_streams: usize,
    /// HTTP/2 clients: RST_STREAM frames a client may send per second (token bucket, burst the
    /// same); past it GOAWAY(ENHANCE_YOUR_CALM). Catches rapid reset of streams the gateway had
    /// already accepted. At least `h2_max_concurrent_streams`, so a client can cancel every
    /// stream at once. Default 256.
    pub h2_max_resets_per_sec: u32,
    /// HTTP/2 clients: PING, SETTINGS, PRIORITY and empty non-final DATA frames a client may send
    /// per second (token bucket, burst the same); past it GOAWAY(ENHANCE_YOUR_CALM)
    /// (CVE-2019-9512/9515/9516/9518 floods). Default 100.
    pub h2_max_control_frames_per_sec: u32,
    /// HTTP/2 clients: WINDOW_UPDATE frames a client may send per DATA frame the gateway sent
    /// it (over the connection's life, plus 2 per stream and a burst of 100); past it
    /// GOAWAY(ENHANCE_YOUR_CALM). A client only needs them for what it receives; a flood of them
    /// costs a core like a PING flood. `0` = no limit. Default 10.
    pub h2_max_window_updates_per_data_frame: u32,
    /// HTTP/2 clients: send a PING after this long without frames from the client, and close
    /// the connection if the PING is not answered within `h2_keepalive_timeout`. `"0s"` = off.
    /// Default `"60s"`.
    pub h2_keepalive_interval: HumanDuration,
    /// HTTP/2 clients: how long a keep-alive PING may go unanswered. Default `"20s"`.
    pub h2_keepalive_timeout: HumanDuration,
    /// HTTP/2 clients: initial stream receive window (request bodies). Default `"256KiB"`.
    pub h2_stream_window: ByteSize,
    /// HTTP/2 clients: initial connection receive window. Default `"1MiB"`.
    pub h2_connection_window: ByteSize,
    /// HTTP/2 clients: bytes buffered per stream for sending (responses) before backpressure
    /// reaches the origin. Default `"400KiB"` (hyper's default).
    pub h2_max_send_buf_size: ByteSize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_connections: 10_000,
            header_timeout: secs(30),
            tls_handshake_timeout: secs(10),
            send_timeout: secs(60),
            idle_release_after: secs(1),
            abort_on_close: true,
            max_header_size: ByteSize(64 * 1024),
            max_headers: 100,
            max_body_size: ByteSize(0),
            drain_timeout: secs(30),
            h2c: false,
            h2_max_concurrent_streams: 128,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 1024,
            h2_max_resets_per_sec: 256,
            h2_max_control_frames_per_sec: 100,
            h2_max_window_updates_per_data_frame: 10,
            h2_keepalive_interval: secs(60),
            h2_keepalive_timeout: secs(20),
            h2_stream_window: ByteSize(256 * 1024),
            h2_connection_window: ByteSize(1024 * 1024),
            h2_max_send_buf_size: ByteSize(400 * 1024),
        }
    }
}

/// One origin: where requests for some hosts go, and how its connections are pooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Origin {
    /// Name used in metrics and logs. Required, unique.
    pub name: String,
    /// Host patterns: exact names, `"*.example.com"`, or `"*"`. Required.
    pub hosts: Vec<String>,
    /// `https://host:port` (TLS, ALPN h2 then http/1.1) or `http://host:port` (cleartext HTTP/1.1).
    pub url: String,
    /// Addresses (`host:port`) to spread connections over instead of the URL's host and port; the
    /// URL still gives the scheme, SNI and default Host. A server failing to connect or handshake
    /// is ejected for `server_backoff`, doubling per failure up to `server_backoff_max`.
    /// Default: none.
    pub servers: Vec<String>,
    /// Host names (of the URL or `servers`) are resolved at start and again this often (or after
    /// the resolver's TTL, if shorter); connections to addresses no longer listed drain. A failed
    /// resolution keeps the last good addresses. Must be > 0. Default `"30s"`.
    pub resolve_interval: HumanDuration,
    /// First ejection time of a failing server. Default `"1s"`.
    pub server_backoff: HumanDuration,
    /// Longest ejection time. Default `"30s"`.
    pub server_backoff_max: HumanDuration,
    /// Extra PEM CA bundle trusted in addition to the system roots.
    pub tls_ca: Option<PathBuf>,
    /// SNI and verified name; default: the URL's host.
    pub tls_server_name: Option<String>,
    /// Verify the origin's certificate. Default true; false logs a warning at start.
    pub tls_verify: bool,
    /// ALPN protocols offered, in order. Default `["h2", "http/1.1"]`.
    pub alpn: Vec<String>,
    /// Rewrite the Host / `:authority` sent to the origin; default: keep the client's.
    pub host_header: Option<String>,
    /// Use the `[cache]` for this origin (when it is enabled). Default true.
    pub cache: bool,
    /// HTTP/2: connections kept open even when one would do. Default 1.
    pub min_connections: usize,
    /// HTTP/2: connections at most. Default 16.
    pub max_connections: usize,
    /// HTTP/2: concurrent streams assumed before the origin's SETTINGS arrive. Default 100.
    pub initial_max_streams: usize,
    /// HTTP/1.1 pool: connections at most (busy + idle). Default 1024.
    pub h1_max_connections: usize,
    /// HTTP/1.1 pool: idle keep-alive connections kept at most. Default 256.
    pub h1_max_idle: usize,
    /// Requests waiting for a connection or stream at most; past it 503. Default 4096.
    pub max_pending: usize,
    /// How long a request may wait for a connection or stream; then 503. Default `"10s"`.
    pub pending_timeout: HumanDuration,
    /// TCP connect timeout. Default `"5s"`.
    pub connect_timeout: HumanDuration,
    /// TLS handshake timeout. Default `"10s"`.
    pub tls_handshake_timeout: HumanDuration,
    /// Time from sending a request to the origin's response header; then 504. Default `"60s"`.
    pub response_header_timeout: HumanDuration,
    /// How long a response body may go without data while the gateway waits for it; then the
    /// response is cut (nginx `proxy_read_timeout`). Default `"60s"`.
    pub read_timeout: HumanDuration,
    /// Close an upstream connection idle this long. Default `"90s"`.
    pub idle_timeout: HumanDuration,
    /// HTTP/2: rotate a connection after this long (±10 % jitter): a replacement is opened
    /// (resuming the TLS session) before the old one stops taking streams; `"0s"` disables.
    /// Default `"1h"`.
    pub max_connection_age: HumanDuration,
    /// HTTP/2 PING interval; `"0s"` disables. Default `"30s"`.
    pub keepalive_interval: HumanDuration,
    /// HTTP/2 PING answer timeout; the connection is closed past it. Default `"10s"`.
    pub keepalive_timeout: HumanDuration,
    /// HTTP/2: streams the gateway may reset per second on one connection when clients abandon
    /// requests; past the budget abandoned streams are read to their end (up to 4 MiB / 5 s)
    /// instead, so a flood of client aborts never looks like a rapid-reset attack to the
    /// origin. Default 20.
    pub reset_rate: u32,
    /// HTTP/2: resets allowed in a burst on one connection. Default 10.
    pub reset_burst: u32,
    /// HTTP/2 per-stream receive window. Default `"2MiB"`.
    pub stream_window: ByteSize,
    /// HTTP/2 per-connection receive window. Default `"16MiB"`.
    pub connection_window: ByteSize,
    /// Request bodies up to this size are buffered so a request the origin never processed can be
    /// retried on another connection. Default `"64KiB"`.
    pub retry_buffer: ByteSize,
    /// Also retry idempotent requests that may have reached the origin (connection reset
    /// mid-request), once. Default false.
    pub retry_idempotent: bool,
    /// Upgraded connections (WebSocket and other `Upgrade`s): close a tunnel after this long
    /// with no byte in either direction. Default `"300s"`.
    pub upgrade_idle_timeout: HumanDuration,
    /// Upgraded connections open to this origin at most; past it an upgrade request gets 503.
    /// Default 10000.
    pub max_upgraded: usize,
}

impl Default for Origin {
    fn default() -> Self {
        Origin {
            name: String::new(),
            hosts: Vec::new(),
            url: String::new(),
            servers: Vec::new(),
            resolve_interval: secs(30),
            server_backoff: secs(1),
            server_backoff_max: secs(30),
            tls_ca: None,
            tls_server_name: None,
            tls_verify: true,
            alpn: vec!["h2".into(), "http/1.1".into()],
            host_header: None,
            cache: true,
            min_connections: 1,
            max_connections: 16,
            initial_max_streams: 100,
            h1_max_connections: 1024,
            h1_max_idle: 256,
            max_pending: 4096,
            pending_timeout: secs(10),
            connect_timeout: secs(5),
            tls_handshake_timeout: secs(10),
            response_header_timeout: secs(60),
            read_timeout: secs(60),
            idle_timeout: secs(90),
            max_connection_age: secs(3600),
            keepalive_interval: secs(30),
            keepalive_timeout: secs(10),
            reset_rate: 20,
            reset_burst: 10,
            stream_window: ByteSize(2 << 20),
            connection_window: ByteSize(16 << 20),
            retry_buffer: ByteSize(64 << 10),
            retry_idempotent: false,
            upgrade_idle_timeout: secs(300),
            max_upgraded: 10_000,
        }
    }
}

/// Origin URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Cleartext HTTP/1.1.
    Http,
    /// TLS with ALPN.
    Https,
}

/// A TLS listener with its address parsed and files checked.
#[derive(Debug, Clone)]
pub struct ValidTlsListen {
    /// Bind address.
    pub addr: SocketAddr,
    /// Certificate chain file.
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
}

/// An origin after validation.
#[derive(Debug, Clone)]
pub struct ValidOrigin {
    /// The operator's settings.
    pub raw: Origin,
    /// Scheme from the URL.
    pub scheme: Scheme,
    /// Host from the URL (name or IP literal, without brackets).
    pub host: String,
    /// Port from the URL (default 443 / 80).
    pub port: u16,
    /// Where to connect: `servers`, or the URL's host and port.
    pub servers: Vec<(String, u16)>,
    /// `[dns] hosts_file`: resolve names from this file instead of the system resolver.
    pub hosts_file: Option<PathBuf>,
    /// Where the pool's connections run: set by `Gateway::start` with
    /// `runtime = "thread-per-core"` (the shard runtimes); empty otherwise.
    pub placement: crate::shard::Placement,
}

/// A configuration that passed [`Config::validate`].
#[derive(Debug, Clone)]
pub struct ValidConfig {
    /// The operator's settings, as loaded.
    pub raw: Config,
    /// Plain listeners.
    pub listen: Vec<SocketAddr>,
    /// TLS listeners.
    pub listen_tls: Vec<ValidTlsListen>,
    /// Admin listener, if enabled.
    pub admin: Option<SocketAddr>,
    /// Origins in configuration order.
    pub origins: Vec<ValidOrigin>,
    /// Shard threads to start: `workers` (or one per core) with `runtime = "thread-per-core"`;
    /// `None` with `runtime = "work-stealing"`.
    pub shards: Option<usize>,
}

impl Config {
    /// Loads defaults, then `path` (if given), then `MUXGATE_*` environment variables.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = path {
            if !p.exists() {
                return Err(err(
                    "",
                    format!("config file {} does not exist", p.display()),
                ));
            }
            fig = fig.merge(Toml::file(p));
        }
        fig = fig.merge(Env::prefixed("MUXGATE_").split("__").lowercase(true));
        fig.extract().map_err(figment_error)
    }

    /// Parses TOML text over the defaults (no environment): used by tests and the fuzz target.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(figment_error)
    }

    /// Checks every value and combination; returns a config that can be run as is.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        let listen = self
            .listen
            .iter()
            .enumerate()
            .map(|(i, a)| parse_addr(&format!("listen.{i}"), a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut listen_tls = Vec::new();
        for (i, l) in self.listen_tls.iter().enumerate() {
            let k = format!("listen_tls.{i}");
            listen_tls.push(ValidTlsListen {
                addr: parse_addr(&format!("{k}.listen"), &l.listen)?,
                cert: existing_file(&format!("{k}.cert"), &l.cert)?,
                key: existing_file(&format!("{k}.key"), &l.key)?,
            });
        }
        if listen.is_empty() && listen_tls.is_empty() {
            return Err(err("listen", "no listener: set `listen` or `listen_tls`"));
        }
        let admin = if self.admin.listen.trim().is_empty() {
            None
        } else {
            Some(parse_addr("admin.listen", &self.admin.listen)?)
        };
        if self.admin.max_connections == 0 {
            return Err(err("admin.max_connections", "must be at least 1"));
        }
        if self.admin.max_connections > MAX_ADMIN_CONNECTIONS {
            return Err(err(
                "admin.max_connections",
                format!("must be at most {MAX_ADMIN_CONNECTIONS}"),
            ));
        }
        let c = &self.client;
        if c.max_connections == 0 {
            return Err(err("client.max_connections", "must be at least 1"));
        }
        if c.send_timeout.0.is_zero() {
            return Err(err("client.send_timeout", "must be greater than zero"));
        }
        if c.max_header_size.0 < 1024 {
            return Err(err("client.max_header_size", "must be at least 1KiB"));
        }
        if c.max_headers == 0 {
            return Err(err("client.max_headers", "must be at least 1"));
        }
        // 0 would make h2 answer a client's first such reset with GOAWAY.
        for (key, v) in [
            (
                "client.h2_max_pending_accept_reset_streams",
                c.h2_max_pending_accept_reset_streams,
            ),
            (
                "client.h2_max_local_error_reset_streams",
                c.h2_max_local_error_reset_streams,
            ),
        ] {
            if v == 0 {
                return Err(err(key, "must be at least 1"));
            }
        }
        validate_client_h2(c)?;
        crate::cache::key::validate_template(&self.cache.key).map_err(|r| err("cache.key", r))?;
        crate::cache::policy_config(&self.cache)?;
        if self.cache.max_object_size.0 > self.cache.max_size.0 {
            return Err(err(
                "cache.max_object_size",
                "must not exceed cache.max_size",
            ));
        }
        for (j, m) in self.cache.methods.iter().enumerate() {
            if !matches!(m.as_str(), "GET" | "HEAD") {
                return Err(err(
                    format!("cache.methods.{j}"),
                    "only GET and HEAD can be cached",
                ));
            }
        }
        for (j, h) in self.cache.ignore_headers.iter().enumerate() {
            http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| err(format!("cache.ignore_headers.{j}"), "not a header name"))?;
        }
        if !self.cache.targeted_field.is_empty() {
            http::HeaderName::from_bytes(self.cache.targeted_field.as_bytes())
                .map_err(|_| err("cache.targeted_field", "not a header name"))?;
        }
        if let Some(p) = &self.dns.hosts_file {
            // Checked here so a typo is caught by `muxgate check`; a file that becomes
            // unreadable later only makes re-resolution keep the last good addresses.
            existing_file("dns.hosts_file", p)?;
        }
        if self.workers > 1024 {
            return Err(err("workers", "must be at most 1024 (0 = one per core)"));
        }
        let shards = match self.runtime.as_str() {
            "work-stealing" => None,
            "thread-per-core" if self.workers > 0 => Some(self.workers),
            "thread-per-core" => Some(std::thread::available_parallelism().map_or(1, |n| n.get())),
            _ => {
                return Err(err(
                    "runtime",
                    "must be \"work-stealing\" or \"thread-per-core\"",
                ))
            }
        };
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(err("log_format", "must be \"text\" or \"json\""));
        }
        let mut origins = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, o) in self.origins.iter().enumerate() {
            let mut v = validate_origin(&format!("origins.{i}"), o)?;
            v.hosts_file = self.dns.hosts_file.clone();
            if !names.insert(o.name.clone()) {
                return Err(err(
                    format!("origins.{i}.name"),
                    format!("duplicate origin name {:?}", o.name),
                ));
            }
            origins.push(v);
        }
        Ok(ValidConfig {
            listen,
            listen_tls,
            admin,
            origins,
            shards,
            raw: self,
        })
    }
}

fn validate_origin(k: &str, o: &Origin) -> Result<ValidOrigin, ConfigError> {
    if o.name.is_empty() {
        return Err(err(format!("{k}.name"), "required"));
    }
    if !o
        .name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(err(
            format!("{k}.name"),
            "only letters, digits, '-', '_' and '.' are allowed",
        ));
    }
    if o.hosts.is_empty() {
        return Err(err(
            format!("{k}.hosts"),
            "at least one host pattern is required",
        ));
    }
    for (j, h) in o.hosts.iter().enumerate() {
        crate::route::HostPattern::parse(h).map_err(|r| err(format!("{k}.hosts.{j}"), r))?;
    }
    let (scheme, host, port) = parse_origin_url(&o.url).map_err(|r| err(format!("{k}.url"), r))?;
    if let Some(ca) = &o.tls_ca {
        existing_file(&format!("{k}.tls_ca"), ca)?;
    }
    if let Some(sni) = &o.tls_server_name {
        rustls_pki_types::ServerName::try_from(sni.as_str()).map_err(|_| {
            err(
                format!("{k}.tls_server_name"),
                "not a valid DNS name or IP address",
            )
        })?;
    }
    if o.alpn.is_empty() || o.alpn.iter().any(|p| p != "h2" && p != "http/1.1") {
        return Err(err(
            format!("{k}.alpn"),
            "must list \"h2\" and/or \"http/1.1\"",
        ));
    }
    if let Some(h) = &o.host_header {
        http::uri::Authority::try_from(h.as_str())
            .map_err(|_| err(format!("{k}.host_header"), "not a valid host[:port]"))?;
    }
    if o.max_connections == 0 {
        return Err(err(format!("{k}.max_connections"), "must be at least 1"));
    }
    if o.min_connections > o.max_connections {
        return Err(err(
            format!("{k}.min_connections"),
            "must not exceed max_connections",
        ));
    }
    if o.initial_max_streams == 0 {
        return Err(err(
            format!("{k}.initial_max_streams"),
            "must be at least 1",
        ));
    }
    if o.h1_max_connections == 0 {
        return Err(err(format!("{k}.h1_max_connections"), "must be at least 1"));
    }
    if o.max_upgraded == 0 {
        // 0 would answer every Upgrade with 503; `max_upgraded` is a limit, not a switch.
        return Err(err(format!("{k}.max_upgraded"), "must be at least 1"));
    }
    for (key, d) in [
        ("connect_timeout", o.connect_timeout),
        ("tls_handshake_timeout", o.tls_handshake_timeout),
        ("response_header_timeout", o.response_header_timeout),
        ("read_timeout", o.read_timeout),
        ("pending_timeout", o.pending_timeout),
        ("idle_timeout", o.idle_timeout),
        ("keepalive_timeout", o.keepalive_timeout),
        ("resolve_interval", o.resolve_interval),
        ("upgrade_idle_timeout", o.upgrade_idle_timeout),
    ] {
        if d.0.is_zero() {
            return Err(err(format!("{k}.{key}"), "must be greater than zero"));
        }
    }
    for (key, w) in [
        ("stream_window", o.stream_window),
        ("connection_window", o.connection_window),
    ] {
        if w.0 < 65_535 || w.0 > (1 << 31) - 1 {
            return Err(err(
                format!("{k}.{key}"),
                "must be between 65535 and 2147483647 bytes (RFC 9113 §6.9.1)",
            ));
        }
    }
    let mut servers = Vec::new();
    for (j, a) in o.servers.iter().enumerate() {
        let auth = http::uri::Authority::try_from(a.trim())
            .ok()
            .filter(|a| a.port_u16().is_some() && !a.host().is_empty() && !a.as_str().contains('@'))
            .ok_or_else(|| {
                err(
                    format!("{k}.servers.{j}"),
                    format!("invalid server {a:?}: expected host:port"),
                )
            })?;
        let h = auth
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        servers.push((h, auth.port_u16().unwrap_or(port)));
    }
    if servers.is_empty() {
        servers.push((host.clone(), port));
    }
    if o.server_backoff.0.is_zero() || o.server_backoff_max.0 < o.server_backoff.0 {
        return Err(err(
            format!("{k}.server_backoff"),
            "must be > 0 and not above server_backoff_max",
        ));
    }
    Ok(ValidOrigin {
        raw: o.clone(),
        scheme,
        host,
        port,
        servers,
        hosts_file: None,
        placement: Default::default(),
    })
}

/// Parses an origin URL: `http(s)://host[:port]` with no path, query or credentials.
pub fn parse_origin_url(url: &str) -> Result<(Scheme, String, u16), String> {
    if url.is_empty() {
        return Err("required".into());
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let scheme = match uri.scheme_str() {
        Some("https") => Scheme::Https,
        Some("http") => Scheme::Http,
        _ => return Err(format!("invalid URL {url:?}: scheme must be http or https")),
    };
    let auth = uri
        .authority()
        .ok_or_else(|| format!("invalid URL {url:?}: no host"))?;
    if auth.as_str().contains('@') {
        return Err(format!("invalid URL {url:?}: credentials are not allowed"));
    }
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        return Err(format!(
            "invalid URL {url:?}: a path or query is not supported"
        ));
    }
    let host = auth
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(format!("invalid URL {url:?}: no host"));
    }
    let port = auth.port_u16().unwrap_or(match scheme {
        Scheme::Https => 443,
        Scheme::Http => 80,
    });
    Ok((scheme, host, port))
}

fn parse_addr(key: &str, a: &str) -> Result<SocketAddr, ConfigError> {
    a.trim().parse().map_err(|_| {
        err(
            key,
            format!("invalid address {a:?}: expected ip:port, e.g. 127.0.0.1:8080"),
        )
    })
}

fn existing_file(key: &str, p: &Path) -> Result<PathBuf, ConfigError> {
    if p.is_file() {
        Ok(p.to_path_buf())
    } else {
        Err(err(
            key,
            format!("file {} does not exist or is not a file", p.display()),
        ))
    }
}

fn figment_error(e: figment::Error) -> ConfigError {
    let key = e.path.join(".");
    let mut reason = e.kind.to_string();
    if let Some(src) = &e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
        reason.push_str(&format!(" (in {src})"));
    }
    // A TOML syntax error carries its position in the message; keep it on one line.
    let reason = reason.replace(['\n', '\r'], " ").trim().to_string();
    ConfigError { key, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_design_config_loads() {
        let c = Config::from_toml(
            r#"
listen = ["127.0.0.1:8080"]
[admin]
listen = "127.0.0.1:9901"
[[origins]]
name = "app"
hosts = ["*"]
url = "https://127.0.0.1:8443"
"#,
        )
        .and_then(Config::validate);
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.origins[0].port, 8443);
        assert_eq!(c.origins[0].scheme, Scheme::Https);
        assert_eq!(c.origins[0].raw.max_connections, 16);
    }

    #[test]
    fn unknown_key_names_key() {
        let e = Config::from_toml("[admin]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(e.key.contains("admin"), "{e}");
    }

    #[test]
    fn control_characters_in_an_unknown_key_stay_on_one_line() {
        let e = Config::from_toml("\"\\rigins\\n]\" = 1\n").unwrap_err();
        let s = e.to_string();
        assert!(!s.contains(['\n', '\r']), "{s:?}");
        assert!(s.contains("\\rigins\\n]"), "{s:?}");
    }

    #[test]
    fn bad_duration_names_key() {
        let e = Config::from_toml(
            "[[origins]]\nname=\"a\"\nhosts=[\"*\"]\nurl=\"http://x\"\nconnect_timeout=\"5 parsecs\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "origins.0.connect_timeout", "{e}");
        assert!(!e.to_string().contains('\n'));
        // Durations that would overflow a deadline are refused, as text or as seconds.
        for v in ["\"1000000000y\"", "9223372036854775807"] {
            let e = Config::from_toml(&format!(
                "[[origins]]\nname=\"a\"\nhosts=[\"*\"]\nurl=\"http://x\"\nread_timeout={v}\n"
            ))
            .unwrap_err();
            assert_eq!(e.key, "origins.0.read_timeout", "{e}");
            assert!(e.to_string().contains("more than 100 years"), "{e}");
        }
        let e = Config::from_toml("[client]\nsend_timeout = \"200y\"\n").unwrap_err();
        assert_eq!(e.key, "client.send_timeout", "{e}");
    }

    #[test]
    fn bad_address_and_missing_cert() {
        let e = Config::from_toml("listen=[\"nope\"]")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "listen.0");
        let e = Config::from_toml("[[listen_tls]]\nlisten=\"127.0.0.1:0\"\ncert=\"/nonexistent.pem\"\nkey=\"/nonexistent.key\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "listen_tls.0.cert");
        let e = Config::from_toml("[admin]\nmax_connections = 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "admin.max_connections", "{e}");
        let e = Config::from_toml("[admin]\nmax_connections = 9223372036854775807\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "admin.max_connections", "{e}");
    }

    #[test]
    fn dns_keys() {
        let base = "[[origins]]\nname=\"a\"\nhosts=[\"*\"]\nurl=\"https://app.test\"\n";
        let c = Config::from_toml(base).unwrap().validate().unwrap();
        assert_eq!(c.origins[0].raw.resolve_interval.0, Duration::from_secs(30));
        assert_eq!(c.origins[0].hosts_file, None);
        let e = Config::from_toml(&format!("{base}resolve_interval = \"0s\"\n"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "origins.0.resolve_interval", "{e}");
        let e = Config::from_toml(&format!(
            "[dns]\nhosts_file = \"/nonexistent/hosts\"\n{base}"
        ))
        .unwrap()
        .validate()
        .unwrap_err();
        assert_eq!(e.key, "dns.hosts_file", "{e}");
        let e = Config::from_toml(&format!("{base}max_upgraded = 0\n"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "origins.0.max_upgraded", "{e}");
        let e = Config::from_toml("[dns]\nbogus = 1\n").unwrap_err();
        assert!(e.key.contains("dns"), "{e}");
    }

    #[test]
    fn client_h2_keys_are_validated() {
        let base = "listen=[\"127.0.0.1:0\"]\n[client]\n";
        let ok = Config::from_toml(&format!(
            "{base}h2c = true\nh2_max_concurrent_streams = 64\n"
        ))
        .and_then(Config::validate)
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(ok.raw.client.h2c);
        assert_eq!(ok.raw.client.h2_max_resets_per_sec, 256);
        for (extra, key) in [
            (
                "h2_max_concurrent_streams = 0",
                "client.h2_max_concurrent_streams",
            ),
            (
                "h2_max_concurrent_streams = 500",
                "client.h2_max_resets_per_sec",
            ),
            (
                "h2_max_control_frames_per_sec = 1",
                "client.h2_max_control_frames_per_sec",
            ),
            (
                "h2_max_pending_accept_reset_streams = 0",
                "client.h2_max_pending_accept_reset_streams",
            ),
            (
                "h2_max_local_error_reset_streams = 0",
                "client.h2_max_local_error_reset_streams",
            ),
            ("h2_stream_window = \"1KiB\"", "client.h2_stream_window"),
            (
                "h2_connection_window = \"4GiB\"",
                "client.h2_connection_window",
            ),
            (
                "h2_max_send_buf_size = \"1KiB\"",
                "client.h2_max_send_buf_size",
            ),
            (
                "h2_keepalive_timeout = \"0s\"",
                "client.h2_keepalive_timeout",
            ),
        ] {
            let e = Config::from_toml(&format!("{base}{extra}\n"))
                .and_then(Config::validate)
                .unwrap_err();
            assert_eq!(e.key, key, "{extra}: {e}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("256MiB"), Ok(ByteSize(256 << 20)));
        assert_eq!(ByteSize::parse("1kb"), Ok(ByteSize(1000)));
        assert_eq!(ByteSize::parse("17"), Ok(ByteSize(17)));
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("").is_err());
    }

    #[test]
    fn origin_url_rules() {
        assert_eq!(
            parse_origin_url("http://a.b").unwrap(),
            (Scheme::Http, "a.b".into(), 80)
        );
        assert_eq!(
            parse_origin_url("https://[::1]:9").unwrap(),
            (Scheme::Https, "::1".into(), 9)
        );
        assert!(parse_origin_url("ftp://a").is_err());
        assert!(parse_origin_url("https://a/path").is_err());
        assert!(parse_origin_url("https://u:p@a").is_err());
    }
}
