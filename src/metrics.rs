//! Metric definitions: every name of the DESIGN.md contract is registered here and nowhere else.
//! Hot paths hold per-origin handles ([`OriginMetrics`]) so a request touches atomics, not the
//! family maps.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label set: a few `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

fn histogram() -> Histogram {
    // 0.5 ms .. ~33 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// All metrics of one gateway instance (tests run several in one process).
pub struct Metrics {
    registry: Registry,
    /// The `cache_requests_total` series of every status the cache reports.
    cache_status: Series,
    /// The `downstream_connections_total` series of every client protocol.
    downstream_protocol: Series,
    /// `muxgate_downstream_connections_total{protocol}`
    pub downstream_connections_total: Family<Labels, Counter>,
    /// `muxgate_downstream_connections_open`
    pub downstream_connections_open: Gauge,
    /// `muxgate_shard_connections_open{shard}` (extension, `runtime = "thread-per-core"`):
    /// client connections each shard thread serves now.
    pub shard_connections_open: Family<Labels, Gauge>,
    /// `muxgate_shard_relayed_wakes_total{shard}` (extension): tasks of the shard woken from
    /// another thread, through its relay (`shard::wake`).
    pub shard_relayed_wakes: Family<Labels, Counter>,
    /// `muxgate_shard_relay_runs_total{shard}` (extension): relay runs that woke at least one
    /// task; relayed wakes over runs is the mean batch.
    pub shard_relay_runs: Family<Labels, Counter>,
    /// `muxgate_downstream_connections_released` (extension: idle HTTP/1.1 keep-alive client
    /// connections holding no HTTP state, `client.idle_release_after`)
    pub downstream_connections_released: Gauge,
    /// `muxgate_downstream_connection_releases_total` (extension: how often an idle HTTP/1.1
    /// client connection gave its HTTP state back; each costs a new parser on its next request)
    pub downstream_releases_total: Counter,
    /// `muxgate_downstream_connections_refused_total{reason}` (extension: over the limit, TLS failure)
    pub downstream_refused_total: Family<Labels, Counter>,
    /// `muxgate_accept_errors_total{listener}` (extension: `accept` calls that failed, e.g. out
    /// of file descriptors; `listener` is `client` or `admin`)
    pub accept_errors_total: Family<Labels, Counter>,
    /// `muxgate_downstream_connections_closed_total{reason}` (extension: HTTP/1.1 client
    /// connections closed by `client.header_timeout`, `header_timeout`, or by
    /// `client.send_timeout`, `send_timeout` (also HTTP/2 clients that kept a stream given up
    /// at `client.send_timeout` blocked one more timeout); HTTP/2 client
    /// connections the gateway closed with a GOAWAY error, e.g. `h2_control_flood`,
    /// `h2_reset_flood`, `h2_window_update_flood`, `h2_enhance_your_calm`, `h2_protocol_error`)
    pub downstream_closed_total: Family<Labels, Counter>,
    /// `muxgate_downstream_streams_closed_total{reason}` (extension: HTTP/2 client streams the
    /// gateway gave up, `send_timeout`: blocked by the client's flow control or socket past
    /// `client.send_timeout`)
    pub downstream_streams_closed_total: Family<Labels, Counter>,
    /// `muxgate_upstream_connections_total{origin,protocol}`
    pub upstream_connections_total: Family<Labels, Counter>,
    /// `muxgate_upstream_connections_open{origin,protocol}`
    pub upstream_connections_open: Family<Labels, Gauge>,
    /// `muxgate_upstream_tls_handshakes_total{origin,resumed}`
    pub upstream_tls_handshakes_total: Family<Labels, Counter>,
    /// `muxgate_upstream_streams_active{origin}`
    pub upstream_streams_active: Family<Labels, Gauge>,
    /// `muxgate_upstream_retries_total{origin,reason}`
    pub upstream_retries_total: Family<Labels, Counter>,
    /// `muxgate_upstream_errors_total{origin,kind}`
    pub upstream_errors_total: Family<Labels, Counter>,
    /// `muxgate_requests_total{origin,status}`
    pub requests_total: Family<Labels, Counter>,
    /// `muxgate_request_duration_seconds{origin}`
    pub request_duration_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// `muxgate_cache_requests_total{status}`
    pub cache_requests_total: Family<Labels, Counter>,
    /// `muxgate_dns_resolutions_total{origin,result}` (extension): re-resolutions of origin host
    /// names, `result` = `ok` or `error` (failed or empty answer; the last good addresses stay).
    pub dns_resolutions_total: Family<Labels, Counter>,
    /// `muxgate_upgraded_open{origin,via}` (extension): upgraded connections (WebSocket…) open,
    /// `via` = `h2` (RFC 8441 stream) or `http/1.1` (dedicated connection).
    pub upgraded_open: Family<Labels, Gauge>,
    /// `muxgate_upgraded_total{origin,via}` (extension): upgraded connections opened.
    pub upgraded_total: Family<Labels, Counter>,
    /// `muxgate_cache_entries` (extension): stored keys.
    pub cache_entries: Gauge,
    /// `muxgate_cache_size_bytes` (extension): weighed size of the store.
    pub cache_size_bytes: Gauge,
    /// `muxgate_config_reloads_total{result="ok"|"error"}` (extension): SIGHUP reloads.
    pub config_reloads_total: Family<Labels, Counter>,
}

/// The series of a one-label counter family for a known set of label values, created up front
/// so that counting one is an atomic increment (no label vector to allocate and hash, no lock,
/// as `Family::get_or_create` needs on every call). Other values fall back to the family.
#[derive(Default)]
struct Series {
    label: &'static str,
    known: Vec<(&'static str, Counter)>,
}

impl Series {
    fn new(family: &Family<Labels, Counter>, label: &'static str, values: &[&'static str]) -> Self {
        let known = values
            .iter()
            .map(|&v| {
                (
                    v,
                    family.get_or_create(&vec![(label, v.to_string())]).clone(),
                )
            })
            .collect();
        Series { label, known }
    }

    fn inc(&self, family: &Family<Labels, Counter>, value: &'static str) {
        match self.known.iter().find(|(v, _)| *v == value) {
            Some((_, c)) => {
                c.inc();
            }
            None => {
                family
                    .get_or_create(&vec![(self.label, value.to_string())])
                    .inc();
            }
        }
    }
}

/// What `X-Cache-Status` and `muxgate_cache_requests_total{status}` report.
pub const CACHE_STATUSES: [&str; 7] = [
    "HIT",
    "MISS",
    "EXPIRED",
    "STALE",
    "UPDATING",
    "REVALIDATED",
    "BYPASS",
];

/// What `muxgate_downstream_connections_total{protocol}` reports.
pub const DOWNSTREAM_PROTOCOLS: [&str; 4] = ["http/1.1", "http/1.1+tls", "h2", "h2c"];

impl Metrics {
    /// Counts one accepted client connection speaking `protocol`.
    pub fn downstream_connection(&self, protocol: &'static str) {
        self.downstream_protocol
            .inc(&self.downstream_connections_total, protocol);
    }

    /// Counts one connection closed at accept (`limit`, `admin_limit`, `tls`, `tls_timeout`).
    pub fn downstream_refused(&self, reason: &'static str) {
        self.downstream_refused_total
            .get_or_create(&vec![("reason", reason.into())])
            .inc();
    }

    /// Counts one failed `accept` on the `client` or `admin` listener.
    pub fn accept_error(&self, listener: &'static str) {
        self.accept_errors_total
            .get_or_create(&vec![("listener", listener.into())])
            .inc();
    }

    /// Counts one request the cache answered with `status`.
    pub fn cache_request(&self, status: &'static str) {
        self.cache_status.inc(&self.cache_requests_total, status);
    }

    /// Registers every family.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("muxgate");
        let m = Metrics {
            downstream_connections_total: Family::default(),
            downstream_connections_open: Gauge::default(),
            downstream_connections_released: Gauge::default(),
            downstream_releases_total: Counter::default(),
            shard_connections_open: Family::default(),
            shard_relayed_wakes: Family::default(),
            shard_relay_runs: Family::default(),
            downstream_refused_total: Family::default(),
            accept_errors_total: Family::default(),
            downstream_closed_total: Family::default(),
            downstream_streams_closed_total: Family::default(),
            upstream_connections_total: Family::default(),
            upstream_connections_open: Family::default(),
            upstream_tls_handshakes_total: Family::default(),
            upstream_streams_active: Family::default(),
            upstream_retries_total: Family::default(),
            upstream_errors_total: Family::default(),
            requests_total: Family::default(),
            request_duration_seconds: Family::new_with_constructor(histogram),
            cache_requests_total: Family::default(),
            dns_resolutions_total: Family::default(),
            upgraded_open: Family::default(),
            upgraded_total: Family::default(),
            cache_entries: Gauge::default(),
            cache_size_bytes: Gauge::default(),
            config_reloads_total: Family::default(),
            registry: Registry::default(),
            cache_status: Series::default(),
            downstream_protocol: Series::default(),
        };
        registry.register(
            "downstream_connections",
            "Client connections accepted",
            m.downstream_connections_total.clone(),
        );
        registry.register(
            "downstream_connections_open",
            "Client connections open",
            m.downstream_connections_open.clone(),
        );
        registry.register(
            "downstream_connections_released",
            "Idle HTTP/1.1 keep-alive client connections that gave their HTTP state back (client.idle_release_after)",
            m.downstream_connections_released.clone(),
        );
        registry.register(
            "downstream_connection_releases",
            "Times an idle HTTP/1.1 keep-alive client connection gave its HTTP state back",
            m.downstream_releases_total.clone(),
        );
        registry.register(
            "shard_connections_open",
            "Client connections open per shard thread (runtime = thread-per-core)",
            m.shard_connections_open.clone(),
        );
        registry.register(
            "shard_relayed_wakes",
            "Tasks of a shard woken from another thread through the shard's relay",
            m.shard_relayed_wakes.clone(),
        );
        registry.register(
            "shard_relay_runs",
            "Relay runs of a shard that woke at least one task",
            m.shard_relay_runs.clone(),
        );
        registry.register(
            "downstream_connections_refused",
            "Client connections closed at accept (limit) or TLS failure; admin connections past admin.max_connections (admin_limit)",
            m.downstream_refused_total.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accept calls on a listener (e.g. out of file descriptors)",
            m.accept_errors_total.clone(),
        );
        registry.register(
            "downstream_connections_closed",
            "Client connections the gateway closed: HTTP/1.1 timeouts, HTTP/2 GOAWAY errors",
            m.downstream_closed_total.clone(),
        );
        registry.register(
            "downstream_streams_closed",
            "HTTP/2 client streams the gateway gave up: send_timeout",
            m.downstream_streams_closed_total.clone(),
        );
        registry.register(
            "upstream_connections",
            "Origin connections opened",
            m.upstream_connections_total.clone(),
        );
        registry.register(
            "upstream_connections_open",
            "Origin connections open",
            m.upstream_connections_open.clone(),
        );
        registry.register(
            "upstream_tls_handshakes",
            "Origin TLS handshakes by kind",
            m.upstream_tls_handshakes_total.clone(),
        );
        registry.register(
            "upstream_streams_active",
            "Requests in flight to the origin",
            m.upstream_streams_active.clone(),
        );
        registry.register(
            "upstream_retries",
            "Requests retried on another origin connection",
            m.upstream_retries_total.clone(),
        );
        registry.register(
            "upstream_errors",
            "Origin failures by kind",
            m.upstream_errors_total.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by origin and status",
            m.requests_total.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head",
            m.request_duration_seconds.clone(),
        );
        registry.register(
            "cache_requests",
            "Cache lookups by X-Cache-Status",
            m.cache_requests_total.clone(),
        );
        registry.register(
            "dns_resolutions",
            "Resolutions of origin host names, by result (ok, error)",
            m.dns_resolutions_total.clone(),
        );
        registry.register(
            "upgraded_open",
            "Upgraded connections (WebSocket and other Upgrades) open, by origin and carrier",
            m.upgraded_open.clone(),
        );
        registry.register(
            "upgraded",
            "Upgraded connections opened, by origin and carrier",
            m.upgraded_total.clone(),
        );
        registry.register(
            "cache_entries",
            "Keys in the response cache",
            m.cache_entries.clone(),
        );
        registry.register(
            "cache_size_bytes",
            "Weighed size of the response cache",
            m.cache_size_bytes.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            m.config_reloads_total.clone(),
        );
        let cache_status = Series::new(&m.cache_requests_total, "status", &CACHE_STATUSES);
        let downstream_protocol = Series::new(
            &m.downstream_connections_total,
            "protocol",
            &DOWNSTREAM_PROTOCOLS,
        );
        Arc::new(Metrics {
            registry,
            cache_status,
            downstream_protocol,
            ..m
        })
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Pre-resolved handles for one origin.
    pub fn origin(self: &Arc<Self>, origin: &str) -> OriginMetrics {
        // `get_or_create` returns a read guard on the family: take each handle in its own
        // statement, or a second call on the same family deadlocks on the write lock.
        let labels = |k: &'static str, v: &str| -> Labels {
            vec![("origin", origin.to_string()), (k, v.to_string())]
        };
        let counter = |f: &Family<Labels, Counter>, l: Labels| f.get_or_create(&l).clone();
        let gauge = |f: &Family<Labels, Gauge>, l: Labels| f.get_or_create(&l).clone();
        let conns_h2 = counter(&self.upstream_connections_total, labels("protocol", "h2"));
        let conns_h1 = counter(
            &self.upstream_connections_total,
            labels("protocol", "http/1.1"),
        );
        let open_h2 = gauge(&self.upstream_connections_open, labels("protocol", "h2"));
        let open_h1 = gauge(
            &self.upstream_connections_open,
            labels("protocol", "http/1.1"),
        );
        let handshakes_full = counter(
            &self.upstream_tls_handshakes_total,
            labels("resumed", "false"),
        );
        let handshakes_resumed = counter(
            &self.upstream_tls_handshakes_total,
            labels("resumed", "true"),
        );
        let only = vec![("origin", origin.to_string())];
        let streams_active = gauge(&self.upstream_streams_active, only.clone());
        let duration = self.request_duration_seconds.get_or_create(&only).clone();
        let upgraded_open_h2 = gauge(&self.upgraded_open, labels("via", "h2"));
        let upgraded_open_h1 = gauge(&self.upgraded_open, labels("via", "http/1.1"));
        let upgraded_h2 = counter(&self.upgraded_total, labels("via", "h2"));
        let upgraded_h1 = counter(&self.upgraded_total, labels("via", "http/1.1"));
        OriginMetrics {
            upgraded_open_h2,
            upgraded_open_h1,
            upgraded_h2,
            upgraded_h1,
            name: origin.to_string(),
            conns_h2,
            conns_h1,
            open_h2,
            open_h1,
            handshakes_full,
            handshakes_resumed,
            streams_active,
            duration,
            by_status: (100..600).map(|_| std::sync::OnceLock::new()).collect(),
            all: self.clone(),
        }
    }
}

/// Per-origin metric handles.
#[derive(Clone)]
pub struct OriginMetrics {
    name: String,
    /// Connections opened, h2.
    pub conns_h2: Counter,
    /// Connections opened, HTTP/1.1.
    pub conns_h1: Counter,
    /// Open h2 connections.
    pub open_h2: Gauge,
    /// Open HTTP/1.1 connections.
    pub open_h1: Gauge,
    /// Full TLS handshakes.
    pub handshakes_full: Counter,
    /// Resumed TLS handshakes.
    pub handshakes_resumed: Counter,
    /// Requests in flight.
    pub streams_active: Gauge,
    /// Request duration.
    pub duration: Histogram,
    /// `requests_total{origin,status}` handles for statuses 100..=599, resolved on first use:
    /// the family lookup (label allocation, hashing, a lock) cost ~1,300 instructions per
    /// request in bench/callgrind.sh.
    by_status: Arc<[std::sync::OnceLock<Counter>]>,
    /// Upgraded connections open over an h2 stream (RFC 8441).
    pub upgraded_open_h2: Gauge,
    /// Upgraded connections open over a dedicated HTTP/1.1 connection.
    pub upgraded_open_h1: Gauge,
    /// Upgraded connections opened over an h2 stream.
    pub upgraded_h2: Counter,
    /// Upgraded connections opened over a dedicated HTTP/1.1 connection.
    pub upgraded_h1: Counter,
    all: Arc<Metrics>,
}

impl OriginMetrics {
    /// Counts one upstream error by kind.
    pub fn error(&self, kind: &'static str) {
        self.all
            .upstream_errors_total
            .get_or_create(&vec![("origin", self.name.clone()), ("kind", kind.into())])
            .inc();
    }

    /// Counts one retry by reason.
    pub fn retry(&self, reason: &'static str) {
        self.all
            .upstream_retries_total
            .get_or_create(&vec![
                ("origin", self.name.clone()),
                ("reason", reason.into()),
            ])
            .inc();
    }

    /// Counts one resolution of an origin host name (`ok`: a non-empty answer).
    pub fn dns(&self, ok: bool) {
        self.all
            .dns_resolutions_total
            .get_or_create(&vec![
                ("origin", self.name.clone()),
                ("result", if ok { "ok" } else { "error" }.into()),
            ])
            .inc();
    }

    /// Counts one answered request.
    pub fn request(&self, status: u16) {
        let slot = usize::from(status)
            .checked_sub(100)
            .and_then(|i| self.by_status.get(i));
        if let Some(slot) = slot {
            slot.get_or_init(|| self.status_counter(status)).inc();
            return;
        }
        self.status_counter(status).inc();
    }

    fn status_counter(&self, status: u16) -> Counter {
        self.all
            .requests_total
            .get_or_create(&vec![
                ("origin", self.name.clone()),
                ("status", status.to_string()),
            ])
            .clone()
    }
}
