//! Thread-per-core mode (`runtime = "thread-per-core"`).
//!
//! With one tokio runtime whose workers steal each other's tasks, a client's task and the task
//! of the origin connection that carries its stream often run on different cores; every request
//! then moves h2's stream store and the tasks' wakers between caches. bench/compare.sh measured
//! one single-threaded process per core at 12–26 % less CPU per request than one process with a
//! worker per core. This module gives one process the same shape:
//!
//! - N shard threads, each running a single-threaded runtime;
//! - the listeners' accept loops stay on the main runtime and hand every accepted connection to
//!   the shard with the fewest open client connections (ties: round robin), so the split stays
//!   even, which keeps the origin connection count at what the load needs;
//! - each origin pool has one sub-pool per shard ([`crate::upstream::OriginPool`]), picked by
//!   [`current`] and dialled from the shard's own tasks, so a client's task and its origin
//!   connection run on the same thread;
//! - the cache, the metrics, the admin listener, the configuration and the origins' TLS session
//!   stores stay shared (one per process).

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::server::{self, ServerCtx};

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The shard the calling thread belongs to; 0 outside shard threads (the main runtime, tests,
/// `runtime = "work-stealing"`).
pub fn current() -> usize {
    INDEX.with(|c| c.get())
}

/// An accepted client connection on its way to a shard.
pub struct Job {
    /// The socket (non-blocking, not registered with any runtime).
    pub stream: std::net::TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener's TLS acceptor (`None`: plain).
    pub tls: Option<TlsAcceptor>,
}

struct Lane {
    tx: mpsc::UnboundedSender<Job>,
    /// Client connections this shard serves now (also `muxgate_shard_connections_open`).
    open: Arc<Open>,
}

/// A shard's count of open client connections, and its gauge.
struct Open {
    n: AtomicUsize,
    gauge: Gauge,
}

impl Open {
    fn inc(&self) {
        self.n.fetch_add(1, Ordering::AcqRel);
        self.gauge.inc();
    }

    fn dec(&self) {
        self.n.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// The shard threads and the way into them. Dropping every handle ends the threads once
/// their queues are empty; connections still open then are closed.
pub struct Shards {
    lanes: Vec<Lane>,
    next: AtomicUsize,
}

impl Shards {
    /// Starts `n` shard threads (`muxgate-shard-0`, …) serving connections with `ctx`.
    pub fn start(n: usize, ctx: Arc<ServerCtx>) -> std::io::Result<Arc<Shards>> {
        let mut lanes = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, rx) = mpsc::unbounded_channel();
            let gauge = ctx
                .metrics
                .shard_connections_open
                .get_or_create(&vec![("shard", i.to_string())])
                .clone();
            let open = Arc::new(Open {
                n: AtomicUsize::new(0),
                gauge,
            });
            let (ctx, count) = (ctx.clone(), open.clone());
            std::thread::Builder::new()
                .name(format!("muxgate-shard-{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(i));
                    rt.block_on(serve(rx, ctx, count));
                })?;
            lanes.push(Lane { tx, open });
        }
        Ok(Arc::new(Shards {
            lanes,
            next: AtomicUsize::new(0),
        }))
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Always false: there is at least one shard.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Client connections each shard serves now.
    pub fn open(&self) -> Vec<usize> {
        self.lanes
            .iter()
            .map(|l| l.open.n.load(Ordering::Relaxed))
            .collect()
    }

    /// Hands `job` to the least loaded shard; gives it back if that shard has stopped.
    pub fn dispatch(&self, job: Job) -> Result<(), Job> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let counts: Vec<usize> = self.open();
        let pick = least_loaded(&counts, start);
        let lane = &self.lanes[pick];
        lane.open.inc();
        lane.tx.send(job).map_err(|e| {
            lane.open.dec();
            e.0
        })
    }
}

/// The index of the smallest count, scanning from `start` (mod len) so that ties rotate.
/// `counts` must not be empty.
pub fn least_loaded(counts: &[usize], start: usize) -> usize {
    let n = counts.len().max(1);
    let mut best = start % n;
    for k in 1..n {
        let i = (start + k) % n;
        if counts.get(i) < counts.get(best) {
            best = i;
        }
    }
    best
}

/// A shard's loop: serve each connection handed over until every sender is gone.
async fn serve(mut rx: mpsc::UnboundedReceiver<Job>, ctx: Arc<ServerCtx>, open: Arc<Open>) {
    while let Some(job) = rx.recv().await {
        match tokio::net::TcpStream::from_std(job.stream) {
            Ok(stream) => {
                let open = open.clone();
                server::spawn_conn(&ctx, stream, job.peer, job.tls, move || open.dec());
            }
            Err(e) => {
                open.dec();
                ctx.open.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(error = %e, peer = %job.peer, "shard cannot take a client connection");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_loaded_picks_the_smallest_and_rotates_ties() {
        assert_eq!(least_loaded(&[3, 1, 2], 0), 1);
        assert_eq!(least_loaded(&[3, 1, 2], 2), 1);
        assert_eq!(least_loaded(&[0, 0], 0), 0);
        assert_eq!(least_loaded(&[0, 0], 1), 1);
        assert_eq!(least_loaded(&[0, 0, 0], 5), 2);
        assert_eq!(least_loaded(&[4], 7), 0);
        // Equal counts after a hand-out: successive starts spread the next ones.
        let picks: Vec<usize> = (0..4).map(|s| least_loaded(&[2, 2], s)).collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }

    #[test]
    fn outside_a_shard_thread_the_index_is_zero() {
        assert_eq!(current(), 0);
        let seen = std::thread::spawn(|| {
            INDEX.with(|c| c.set(3));
            current()
        })
        .join()
        .ok();
        assert_eq!(seen, Some(3));
        assert_eq!(current(), 0);
    }
}
