//! The HTTP/1.1 keep-alive pool of one origin: used for `http://` origins and for `https://`
//! origins whose ALPN chose http/1.1.
//!
//! # State
//! Idle connections in a LIFO stack (the most recently used is the most likely to be alive and
//! warm), at most `h1_max_idle`; a semaphore caps open connections (busy + idle) at
//! `h1_max_connections`; each connection owns one permit, so the cap is exact.
//! A connection is exclusive while a request is on it and goes back to the stack only after its
//! response body was read to the end; a request waiting at the cap is woken when one goes back
//! (or when a connection closes and frees its permit).
//!
//! A connection is not reused (dropped when it would go back idle, and culled from the idle
//! stack by [`H1Pool::drop_stale`]) once the origin's name no longer resolves to the address it
//! dialled, or after [`H1Pool::drain_all`]. The check costs one atomic load per return: the
//! address lists are consulted only when the connector's generation moved.
//!
//! # Race window
//! An idle connection may be closed by the origin just as it is taken. hyper then hands the
//! request back unsent and the caller retries on another connection; a request that was written
//! before the close is only retried when the origin opted in (`retry_idempotent`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::connect::{Connected, Connector};
use super::{ConnStats, CountedIo, UpBody};
use crate::config::ValidOrigin;
use crate::error::Error;
use crate::metrics::OriginMetrics;

/// One HTTP/1.1 connection (boxed in the pool: it moves between the idle stack, the lease and
/// the response's guard on every request, and a pointer moves cheaper than its ~150 bytes).
pub struct H1Conn {
    /// Pool-unique id.
    pub id: u64,
    sender: http1::SendRequest<UpBody>,
    _permit: OwnedSemaphorePermit,
    created: Instant,
    resumed: Option<bool>,
    served: u64,
    /// The address dialled (`None` in memory).
    peer: Option<SocketAddr>,
    /// The connector's address generation at which `peer` was last known to be current.
    checked: u64,
    /// `drain_all` count when the connection opened; an older one is not reused.
    epoch: u64,
    /// The shard whose runtime drives it (see [`crate::shard`]).
    home: Option<usize>,
}

impl H1Conn {
    /// The connection's sender (exclusive while leased).
    pub fn sender(&mut self) -> &mut http1::SendRequest<UpBody> {
        &mut self.sender
    }
}

struct Idle {
    conn: Box<H1Conn>,
    since: Instant,
}

struct Shared {
    origin: String,
    idle: Mutex<Vec<Idle>>,
    permits: Arc<Semaphore>,
    /// Signalled when a connection goes back to the idle stack.
    returned: Notify,
    waiting: AtomicUsize,
    /// Times `drain_all` was called.
    drained: AtomicU64,
    connector: Arc<Connector>,
    metrics: OriginMetrics,
    next_id: Arc<AtomicU64>,
    max_connections: usize,
    max_idle: usize,
    max_pending: usize,
    pending_timeout: Duration,
    idle_timeout: Duration,
}

/// An exclusive connection; returned to the idle stack on drop if [`H1Lease::reusable`] was set.
pub struct H1Lease {
    shared: Arc<Shared>,
    conn: Option<Box<H1Conn>>,
    reusable: bool,
}

impl H1Lease {
    /// The leased connection.
    pub fn conn(&mut self) -> Option<&mut H1Conn> {
        self.conn.as_deref_mut()
    }

    /// The connection id.
    pub fn id(&self) -> u64 {
        self.conn.as_ref().map_or(0, |c| c.id)
    }

    /// The response was read to the end: the connection may serve another request.
    pub fn set_reusable(&mut self) {
        self.reusable = true;
    }
}

impl Drop for H1Lease {
    fn drop(&mut self) {
        self.shared.metrics.streams_active.dec();
        if let Some(conn) = self.conn.take() {
            let mut conn = conn;
            if self.reusable && !conn.sender.is_closed() && self.shared.wanted(&mut conn) {
                self.shared.put_idle(conn);
            }
        }
    }
}

/// Counts a request in `waiting` (bounded by `max_pending`) until dropped.
struct WaitGuard<'a>(&'a AtomicUsize);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The pool handle (cheap to clone).
#[derive(Clone)]
pub struct H1Pool {
    shared: Arc<Shared>,
}

impl H1Pool {
    /// Creates the pool and its idle reaper.
    pub fn new(
        o: &ValidOrigin,
        connector: Arc<Connector>,
        metrics: OriginMetrics,
        next_id: Arc<AtomicU64>,
    ) -> H1Pool {
        let r = &o.raw;
        let shared = Arc::new(Shared {
            origin: r.name.clone(),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(r.h1_max_connections)),
            returned: Notify::new(),
            waiting: AtomicUsize::new(0),
            drained: AtomicU64::new(0),
            connector,
            metrics,
            next_id,
            max_connections: r.h1_max_connections,
            max_idle: r.h1_max_idle,
            max_pending: r.max_pending,
            pending_timeout: r.pending_timeout.0,
            idle_timeout: r.idle_timeout.0,
        });
        tokio::spawn(reaper(Arc::downgrade(&shared)));
        H1Pool { shared }
    }

    /// Takes an idle connection (most recent first) or dials a new one within the cap.
    pub async fn acquire(&self) -> Result<H1Lease, Error> {
        let s = &self.shared;
        let deadline = Instant::now() + s.pending_timeout;
        let mut waiting: Option<WaitGuard<'_>> = None;
        // The common case first: an idle connection, without registering as a waiter (a
        // registration locks the `Notify`'s list twice).
        if let Some(c) = s.pop_idle() {
            return Ok(s.lease(c));
        }
        loop {
            // Register for "a connection went idle" before looking, so a return between the
            // look and the wait is not missed.
            let returned = s.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(c) = s.pop_idle() {
                return Ok(s.lease(c));
            }
            let permit = match s.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    if waiting.is_none() {
                        if s.waiting.fetch_add(1, Ordering::AcqRel) >= s.max_pending {
                            s.waiting.fetch_sub(1, Ordering::AcqRel);
                            return Err(Error::QueueFull);
                        }
                        waiting = Some(WaitGuard(&s.waiting));
                    }
                    // At the cap: wait for a connection to come back idle (taken in the next
                    // round) or to close (its permit lets us dial).
                    tokio::select! {
                        p = s.permits.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => return Err(Error::ShuttingDown),
                        },
                        _ = &mut returned => continue,
                        _ = tokio::time::sleep_until(deadline) => return Err(Error::PendingTimeout),
                    }
                }
            };
            // A connection may have come back while we waited for the permit.
            if let Some(c) = s.pop_idle() {
                return Ok(s.lease(c));
            }
            drop(waiting.take());
            let c = s.connector.connect().await.inspect_err(|e| {
                if let Some(kind) = e.kind() {
                    s.metrics.error(kind);
                }
            })?;
            let conn = s.handshake(c, permit).await?;
            return Ok(s.lease(conn));
        }
    }

    /// Takes over a connection dialled by the HTTP/2 pool whose ALPN chose http/1.1.
    pub async fn adopt(&self, c: Connected) {
        let s = &self.shared;
        let Ok(permit) = s.permits.clone().try_acquire_owned() else {
            return;
        };
        if let Ok(conn) = s.handshake(c, permit).await {
            s.put_idle(conn);
        }
    }

    /// Closes idle connections to addresses the origin's name no longer resolves to (busy ones
    /// are closed instead of going back idle). Returns how many were closed.
    pub fn drop_stale(&self) -> usize {
        let s = &self.shared;
        let gone: Vec<Idle> = {
            let mut idle = s.lock();
            let (keep, gone) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|i| s.connector.is_current(i.conn.peer));
            *idle = keep;
            gone
        };
        // Dropped outside the lock: closing a connection need not hold up other requests.
        gone.len()
    }

    /// Closes every idle connection and keeps busy ones from being reused; later requests dial
    /// new ones.
    pub fn drain_all(&self) {
        let s = &self.shared;
        s.drained.fetch_add(1, Ordering::AcqRel);
        let gone = std::mem::take(&mut *s.lock());
        drop(gone);
    }

    /// A snapshot of the idle connections (busy ones are exclusive and not listed).
    pub fn stats(&self) -> Vec<ConnStats> {
        self.shared
            .lock()
            .iter()
            .map(|i| ConnStats {
                id: i.conn.id,
                protocol: "http/1.1",
                in_flight: 0,
                max_streams: 1,
                draining: false,
                age: i.conn.created.elapsed(),
                served: i.conn.served,
                resumed: i.conn.resumed,
                peer: i.conn.peer,
                shard: i.conn.home,
            })
            .collect()
    }

    /// The origin's name.
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// Open connections (busy + idle).
    pub fn open(&self) -> usize {
        self.shared.max_connections - self.shared.permits.available_permits()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lease(self: &Arc<Self>, mut conn: Box<H1Conn>) -> H1Lease {
        self.metrics.streams_active.inc();
        conn.served += 1;
        H1Lease {
            shared: self.clone(),
            conn: Some(conn),
            reusable: false,
        }
    }

    /// The most recently returned idle connection that is still good; with shards, the most
    /// recent one at home on the caller's shard first (its driver then runs on this thread).
    fn pop_idle(&self) -> Option<Box<H1Conn>> {
        let here = crate::shard::current();
        let mut idle = self.lock();
        loop {
            let local = here.and_then(|_| idle.iter().rposition(|i| i.conn.home == here));
            let mut i = match local {
                Some(at) => idle.remove(at),
                None => idle.pop()?,
            };
            if !i.conn.sender.is_closed()
                && i.since.elapsed() < self.idle_timeout
                && self.wanted(&mut i.conn)
            {
                return Some(i.conn);
            }
        }
    }

    /// Whether `conn` may serve another request: not drained by `drain_all`, and its address
    /// still current. Consults the address lists only when their generation moved.
    fn wanted(&self, conn: &mut H1Conn) -> bool {
        if conn.epoch != self.drained.load(Ordering::Acquire) {
            return false;
        }
        let generation = self.connector.generation();
        if conn.checked != generation {
            if !self.connector.is_current(conn.peer) {
                return false;
            }
            conn.checked = generation;
        }
        true
    }

    fn put_idle(&self, conn: Box<H1Conn>) {
        {
            let mut idle = self.lock();
            if idle.len() >= self.max_idle {
                return;
            }
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        // Wake one request waiting at `h1_max_connections`.
        self.returned.notify_one();
    }

    async fn handshake(
        &self,
        c: Connected,
        permit: OwnedSemaphorePermit,
    ) -> Result<Box<H1Conn>, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Read before the handshake: a drain during it is then noticed at the first return.
        let epoch = self.drained.load(Ordering::Acquire);
        let peer = c.peer;
        self.metrics.conns_h1.inc();
        let io = CountedIo::new(c.io, self.metrics.open_h1.clone());
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, UpBody>(TokioIo::new(io))
            .await
            .map_err(|e| Error::Protocol(format!("HTTP/1.1 handshake: {e}")))?;
        let origin = self.origin.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::shard::wake::relayed(conn).await {
                tracing::debug!(%origin, conn = id, error = %e, "http/1.1 connection ended");
            }
        });
        Ok(Box::new(H1Conn {
            id,
            sender,
            _permit: permit,
            created: Instant::now(),
            resumed: c.resumed,
            served: 0,
            peer,
            // Never checked: the address may be from a list replaced during the dial.
            checked: u64::MAX,
            epoch,
            // Its driver was spawned above, on this runtime.
            home: crate::shard::current(),
        }))
    }
}

/// Closes idle connections past `idle_timeout`.
async fn reaper(weak: Weak<Shared>) {
    let period = match weak.upgrade() {
        Some(s) => (s.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(s) = weak.upgrade() else { return };
        let timeout = s.idle_timeout;
        s.lock()
            .retain(|i| !i.conn.sender.is_closed() && i.since.elapsed() < timeout);
    }
}
