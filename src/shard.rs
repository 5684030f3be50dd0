//! Thread-per-core mode (`runtime = "thread-per-core"`, the default).
//!
//! With one tokio runtime whose workers steal each other's tasks, a client's task and the task
//! of the origin connection that carries its stream often run on different cores; every request
//! then moves h2's stream store and the tasks' wakers between caches. bench/compare.sh measured
//! one single-threaded process per core at 12–26 % less CPU per request than one process with a
//! worker per core. This module gives one process the same shape:
//!
//! - N shard threads, each running a single-threaded runtime;
//! - each shard accepts on its own socket per listener, all bound to the listener's address
//!   with `SO_REUSEPORT`, so the kernel spreads new connections and none moves between threads
//!   ([`Shards::listen`]); with `reuse_port = false` the one socket is accepted on the main
//!   runtime, which hands each connection to the shard with the fewest open ones (ties: round
//!   robin, [`Shards::dispatch`]);
//! - each origin keeps one pool (its limits and the rule "a new connection only when every open
//!   one is full" hold per origin, as with one runtime), but every origin connection is driven
//!   by one shard (its *home*): a new HTTP/2 connection is dialled on the shard that is home to
//!   the fewest, and a request takes a stream on a connection of its own shard when one has
//!   room ([`Placement`]); an HTTP/1.1 request takes an idle connection of its own shard first.
//!   Once the load needs as many connections as there are shards, a client's task and the
//!   origin connection carrying its requests run on the same thread; until then, wakes that
//!   cross shards are coalesced per shard ([`wake`]);
//! - the cache, the metrics, the admin listener, the configuration and the origins' TLS session
//!   stores stay shared (one per process).

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::server::{self, ServerCtx};

pub mod wake;

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The shard the calling thread belongs to; `None` outside shard threads (the main runtime,
/// tests, `runtime = "work-stealing"`).
pub fn current() -> Option<usize> {
    INDEX.with(|c| c.get())
}

/// Where origin connections run: the shards' runtimes (`runtime = "thread-per-core"`), or
/// nowhere in particular (the default: the caller's runtime).
#[derive(Clone, Default)]
pub struct Placement(Option<Arc<[Handle]>>);

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Placement({} shards)", self.shards())
    }
}

impl Placement {
    /// Number of shards (0: none).
    pub fn shards(&self) -> usize {
        self.0.as_ref().map_or(0, |h| h.len())
    }

    /// Runs `fut` on shard `home`'s runtime, or on the caller's runtime without shards.
    pub fn spawn<F>(&self, home: Option<usize>, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match (&self.0, home) {
            (Some(handles), Some(i)) if i < handles.len() => {
                handles[i].spawn(fut);
            }
            _ => {
                tokio::spawn(fut);
            }
        }
    }

    /// The shard that should be home to the next connection, given how many live ones each
    /// shard is home to now (`homes` yields each live connection's home): the one with the
    /// fewest, ties going to the calling shard, then the next ones in order. `None` without
    /// shards.
    pub fn next_home(&self, homes: impl Iterator<Item = Option<usize>>) -> Option<usize> {
        let n = self.shards();
        if n == 0 {
            return None;
        }
        let mut counts = vec![0usize; n];
        for h in homes.flatten() {
            if let Some(c) = counts.get_mut(h) {
                *c += 1;
            }
        }
        Some(least_loaded(n, current().unwrap_or(0), |i| counts[i]))
    }
}

impl Drop for ShardRuntimes {
    /// Runtimes never started (the gateway failed to start): dropped without blocking, as
    /// this may run inside the caller's runtime.
    fn drop(&mut self) {
        for rt in self.runtimes.drain(..) {
            rt.shutdown_background();
        }
    }
}

/// Shard runtimes built but not running yet: their handles go into the origin pools (which
/// the shard threads' context needs), then [`ShardRuntimes::start`] starts the threads.
pub struct ShardRuntimes {
    runtimes: Vec<tokio::runtime::Runtime>,
}

impl ShardRuntimes {
    /// Builds `n` (at least 1) single-threaded runtimes.
    pub fn build(n: usize) -> std::io::Result<ShardRuntimes> {
        let runtimes = (0..n.max(1))
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            })
            .collect::<Result<_, _>>()?;
        Ok(ShardRuntimes { runtimes })
    }

    /// Where origin connections of these shards run.
    pub fn placement(&self) -> Placement {
        Placement(Some(
            self.runtimes.iter().map(|r| r.handle().clone()).collect(),
        ))
    }

    /// Starts one thread per runtime (`muxgate-shard-0`, …) serving connections with `ctx`.
    pub fn start(mut self, ctx: Arc<ServerCtx>) -> std::io::Result<Arc<Shards>> {
        let placement = self.placement();
        let runtimes = std::mem::take(&mut self.runtimes);
        let mut lanes = Vec::with_capacity(runtimes.len());
        for (i, rt) in runtimes.into_iter().enumerate() {
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
            let label = vec![("shard", i.to_string())];
            let relay = wake::Relay::new(
                ctx.metrics
                    .shard_relayed_wakes
                    .get_or_create(&label)
                    .clone(),
                ctx.metrics.shard_relay_runs.get_or_create(&label).clone(),
            );
            let (ctx, count) = (ctx.clone(), open.clone());
            std::thread::Builder::new()
                .name(format!("muxgate-shard-{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(Some(i)));
                    relay.enter();
                    rt.block_on(async move {
                        tokio::spawn(relay.run());
                        tokio::spawn(wake::anchor());
                        serve(rx, ctx, count).await;
                    });
                })?;
            lanes.push(Lane { tx, open });
        }
        Ok(Arc::new(Shards {
            lanes,
            next: AtomicUsize::new(0),
            placement,
        }))
    }
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
pub struct Open {
    n: AtomicUsize,
    gauge: Gauge,
}

impl Open {
    /// One more connection.
    pub fn inc(&self) {
        self.n.fetch_add(1, Ordering::AcqRel);
        self.gauge.inc();
    }

    /// One fewer.
    pub fn dec(&self) {
        self.n.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// The shard threads and the way into them. Dropping every handle ends the threads once
/// their queues are empty; connections still open then are closed.
pub struct Shards {
    lanes: Vec<Lane>,
    next: AtomicUsize,
    placement: Placement,
}

impl Shards {
    /// Serves `listener` with an accept loop on every shard: one socket per shard, all bound
    /// to the listener's address with `SO_REUSEPORT`, so the kernel spreads new connections
    /// over the shards and none is handed from thread to thread. `listener` (bound with
    /// `SO_REUSEPORT`) becomes shard 0's; `more` binds another socket for each further shard.
    pub async fn listen<B, F>(
        &self,
        listener: tokio::net::TcpListener,
        mut more: B,
        tls: Option<TlsAcceptor>,
        ctx: &Arc<ServerCtx>,
    ) -> Result<(), String>
    where
        B: FnMut() -> F,
        F: std::future::Future<Output = Result<tokio::net::TcpListener, String>>,
    {
        let mut sockets = vec![listener];
        for _ in 1..self.lanes.len() {
            sockets.push(more().await?);
        }
        for (i, l) in sockets.into_iter().enumerate() {
            // Moved to the shard's runtime: out of this runtime's reactor, into the shard's.
            let l = l
                .into_std()
                .map_err(|e| format!("listener for shard {i}: {e}"))?;
            let (tls, ctx) = (tls.clone(), ctx.clone());
            let open = self.lanes[i].open.clone();
            self.placement.spawn(Some(i), async move {
                match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => {
                        server::accept_loop(l, tls, ctx, server::Accepted::Serve(Some(open))).await
                    }
                    Err(e) => {
                        tracing::error!(shard = i, error = %e, "shard cannot take its listener")
                    }
                }
            });
        }
        Ok(())
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
        let pick = least_loaded(self.lanes.len(), start, |i| {
            self.lanes[i].open.n.load(Ordering::Relaxed)
        });
        let lane = &self.lanes[pick];
        lane.open.inc();
        lane.tx.send(job).map_err(|e| {
            lane.open.dec();
            e.0
        })
    }
}

/// The index in `0..n` with the smallest `count`, scanning from `start` (mod `n`) so that ties
/// rotate; 0 when `n` is 0.
pub fn least_loaded(n: usize, start: usize, count: impl Fn(usize) -> usize) -> usize {
    if n == 0 {
        return 0;
    }
    (0..n)
        .map(|k| (start + k) % n)
        .min_by_key(|&i| count(i))
        .unwrap_or(0)
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

    fn ll(counts: &[usize], start: usize) -> usize {
        least_loaded(counts.len(), start, |i| counts[i])
    }

    #[test]
    fn least_loaded_picks_the_smallest_and_rotates_ties() {
        assert_eq!(ll(&[3, 1, 2], 0), 1);
        assert_eq!(ll(&[3, 1, 2], 2), 1);
        assert_eq!(ll(&[0, 0], 0), 0);
        assert_eq!(ll(&[0, 0], 1), 1);
        assert_eq!(ll(&[0, 0, 0], 5), 2);
        assert_eq!(ll(&[4], 7), 0);
        assert_eq!(ll(&[], 3), 0);
        // Equal counts after a hand-out: successive starts spread the next ones.
        let picks: Vec<usize> = (0..4).map(|s| ll(&[2, 2], s)).collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }

    #[test]
    fn outside_a_shard_thread_there_is_no_index() {
        assert_eq!(current(), None);
        let seen = std::thread::spawn(|| {
            INDEX.with(|c| c.set(Some(3)));
            current()
        })
        .join()
        .ok();
        assert_eq!(seen, Some(Some(3)));
        assert_eq!(current(), None);
    }

    #[test]
    fn next_home_is_the_shard_home_to_the_fewest() {
        let none = Placement::default();
        assert_eq!(none.next_home([Some(0)].into_iter()), None);
        let rts = ShardRuntimes::build(3).unwrap();
        let p = rts.placement();
        assert_eq!(p.shards(), 3);
        // Outside a shard, ties start at shard 0.
        assert_eq!(p.next_home(std::iter::empty()), Some(0));
        assert_eq!(p.next_home([Some(0)].into_iter()), Some(1));
        assert_eq!(p.next_home([Some(0), Some(1)].into_iter()), Some(2));
        assert_eq!(
            p.next_home([Some(0), Some(2), Some(1), Some(0)].into_iter()),
            Some(1)
        );
        // Connections with no home (dialled outside the shards) and stray indexes count for none.
        assert_eq!(p.next_home([None, Some(7), Some(0)].into_iter()), Some(1));
        // From a shard thread, ties go to that shard.
        let p2 = p.clone();
        let seen = std::thread::spawn(move || {
            INDEX.with(|c| c.set(Some(2)));
            p2.next_home([Some(1)].into_iter())
        })
        .join()
        .ok();
        assert_eq!(seen, Some(Some(2)));
    }
}
