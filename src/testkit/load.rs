//! A small HTTP/1.1 load client on hyper: N keep-alive connections (plain or TLS) started at
//! once, each sending its share of requests one after another, reading every body to the end.
//! Reports requests, errors, status counts and latency percentiles.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// What to send.
#[derive(Clone)]
pub struct LoadSpec {
    /// Where to connect.
    pub target: SocketAddr,
    /// TLS to the target (config and server name), or cleartext.
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// Host header.
    pub host: String,
    /// Request path.
    pub path: String,
    /// Concurrent connections.
    pub connections: usize,
    /// Requests in all (spread over the connections).
    pub requests: usize,
    /// Send `Connection: close`: a new connection for every request.
    pub close: bool,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Requests answered (any status).
    pub requests: u64,
    /// Transport or protocol failures.
    pub errors: u64,
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Body bytes received.
    pub bytes: u64,
    latencies: Vec<Duration>,
}

impl LoadReport {
    /// Requests per second over the run.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q` (0..=1).
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
    }

    /// Answers with status 200.
    pub fn ok(&self) -> u64 {
        self.statuses.get(&200).copied().unwrap_or(0)
    }
}

/// Runs the load; every connection starts at the same instant.
pub async fn run(spec: LoadSpec) -> LoadReport {
    let conns = spec.connections.max(1);
    let barrier = Arc::new(Barrier::new(conns));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for i in 0..conns {
        let share = spec.requests / conns + usize::from(i < spec.requests % conns);
        let (spec, barrier) = (spec.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            one_connection(&spec, share).await
        }));
    }
    let mut report = LoadReport::default();
    for t in tasks {
        if let Ok(r) = t.await {
            report.requests += r.requests;
            report.errors += r.errors;
            report.bytes += r.bytes;
            for (k, v) in r.statuses {
                *report.statuses.entry(k).or_default() += v;
            }
            report.latencies.extend(r.latencies);
        }
    }
    report.elapsed = start.elapsed();
    report.latencies.sort_unstable();
    report
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(spec: &LoadSpec) -> Result<Sender, String> {
    let tcp = TcpStream::connect(spec.target)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let sender = match &spec.tls {
        None => {
            let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(c);
            s
        }
        Some((cfg, name)) => {
            let tls = TlsConnector::from(cfg.clone())
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| e.to_string())?;
            let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(c);
            s
        }
    };
    Ok(sender)
}

async fn one_connection(spec: &LoadSpec, n: usize) -> LoadReport {
    let mut r = LoadReport::default();
    let mut sender: Option<Sender> = None;
    for _ in 0..n {
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match connect(spec).await {
                Ok(s) => sender = Some(s),
                Err(_) => {
                    r.errors += 1;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let mut req = Request::get(spec.path.as_str()).header(header::HOST, spec.host.as_str());
        if spec.close {
            req = req.header(header::CONNECTION, "close");
        }
        let req = req.body(Empty::new());
        let Ok(req) = req else {
            r.errors += 1;
            continue;
        };
        let t0 = Instant::now();
        let res = async {
            s.ready().await.map_err(|e| e.to_string())?;
            let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body.len() as u64))
        }
        .await;
        match res {
            Ok((status, len)) => {
                if spec.close {
                    sender = None;
                }
                r.latencies.push(t0.elapsed());
                r.requests += 1;
                r.bytes += len;
                *r.statuses.entry(status).or_default() += 1;
            }
            Err(_) => {
                r.errors += 1;
                sender = None;
            }
        }
    }
    r
}
