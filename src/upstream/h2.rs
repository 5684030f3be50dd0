//! The multiplexed HTTP/2 pool of one origin: at most `max_connections` TLS connections, each
//! carrying up to the peer's SETTINGS_MAX_CONCURRENT_STREAMS streams.
//!
//! # State
//! Per connection ([`Slot`]): streams in flight (counted by us — hyper's `SendRequest` stays
//! "ready" while saturated and would queue without bound), the peer's current stream limit
//! (published by the connection's driver task), and `closed` (the dispatch task ended: GOAWAY
//! received, error, or PING timeout — no new streams, in-flight ones finish).
//! Per pool: one dial in flight at most (`dialing`), a FIFO of waiters bounded by `max_pending`.
//!
//! # Rules
//! - A request takes a stream on the least-loaded open connection with room.
//! - One more connection is dialled only when none has room (or fewer than `min_connections`
//!   are open), never more than one at a time: a cold burst of 1,000 requests waits for one dial.
//! - A released stream slot is handed straight to the oldest waiter (no thundering herd).
//! - The first connection's ALPN decides: if the origin chose http/1.1, the connection is given to
//!   the HTTP/1.1 pool and every waiter is told to go there.
//!
//! The connection is driven with the `h2` crate directly (not hyper's dispatcher), so the pool
//! knows exactly what reached the origin: `send_request` failing means the stream was never
//! sent; a stream failing with the peer's GOAWAY error lies above its last-stream-id
//! (RFC 9113 §6.8: "not processed"); REFUSED_STREAM means no application processing (§8.7).
//!
//! # Addresses that disappear (DNS)
//! Each connection remembers the address it dialled. When the origin's re-resolution no longer
//! lists it, [`H2Pool::retire_stale`] retires the connection exactly like `max_connection_age`
//! does (make before break): a replacement is dialled to a current address, and once it is up
//! the old connection takes no new streams and closes when its in-flight streams finish. Until
//! then (or if every dial fails) the old connection keeps serving, so a DNS change costs no
//! request. [`H2Pool::drain_all`] closes every connection for new streams at once.
//!
//! # Tunnels
//! An RFC 8441 WebSocket tunnel ([`super::upgrade`]) takes its stream with [`H2Pool::acquire`]
//! like a request and holds the [`H2Lease`] until the tunnel ends: it counts against the
//! connection's stream limit for its whole life (hazard: long-lived tunnels can fill the pool
//! and make requests queue; `max_upgraded` bounds them). The slot is freed when the tunnel's
//! I/O object is dropped, however the tunnel ended.
//!
//! # Race window
//! The pool learns of a GOAWAY when the next `send_request` on that connection fails; that
//! request was never sent and is retried elsewhere, so the window costs a retry, never an error
//! or a duplicate. A waiter may time out after a slot was handed to it: the lease is then
//! dropped inside the channel and its `Drop` releases the slot again. A dial that read the
//! addresses just before a re-resolution changed them adds a connection to an old address after
//! `retire_stale` ran; the next refresh (every `resolve_interval`) retires it.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Ping, PingPong, RecvStream, SendStream};
use http::{HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::connect::Connector;
use super::h1::H1Pool;
use super::{BoxError, ConnStats, CountedIo, UpBody};
use crate::config::ValidOrigin;
use crate::error::Error;
use crate::metrics::OriginMetrics;

/// Ceiling on streams per connection when the peer advertises no limit.
const MAX_STREAMS_CAP: usize = 1000;

/// What the connection's driver task shares with the pool. Kept apart from [`H2Conn`] so the
/// driver holds no `SendRequest`: dropping the last `H2Conn` is what closes the connection.
struct ConnCtl {
    max_streams: AtomicUsize,
    closed: AtomicBool,
    /// The connection's protocol failure is counted (see [`H2Conn::first_protocol_error`]).
    protocol_counted: AtomicBool,
    resets: Mutex<ResetBudget>,
}

/// How fast the gateway may reset streams on one connection (token bucket). Clients that
/// abandon requests in bulk would otherwise make the gateway send a reset flood, which origins
/// (and h2 itself) treat as a rapid-reset attack and answer by closing the connection everyone
/// shares (CVE-2023-44487 seen from the client side). Past the budget an abandoned stream is
/// read to its end in the background instead (bounded by `DRAIN_LIMIT`/`DRAIN_TIME`).
struct ResetBudget {
    tokens: f64,
    last: Instant,
    /// Sustained resets per second (`reset_rate`).
    rate: f64,
    /// Burst (`reset_burst`).
    burst: f64,
}
/// Most bytes read from an abandoned stream instead of resetting it.
const DRAIN_LIMIT: usize = 4 << 20;
/// Longest time an abandoned stream is read instead of being reset.
const DRAIN_TIME: Duration = Duration::from_secs(5);

impl ConnCtl {
    /// Takes a reset from the budget; false means "drain instead".
    fn try_reset(&self) -> bool {
        let mut b = self.resets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * b.rate;
        b.tokens = (b.tokens + refill).min(b.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Reads an abandoned stream to its end (bounded) so it closes without a reset.
async fn drain(mut recv: RecvStream) {
    let body = async {
        let mut total = 0;
        while let Some(Ok(d)) = recv.data().await {
            total += d.len();
            let _ = recv.flow_control().release_capacity(d.len());
            if total > DRAIN_LIMIT {
                return;
            }
        }
        let _ = recv.trailers().await;
    };
    let _ = tokio::time::timeout(DRAIN_TIME, body).await;
}

/// A response not yet received. Dropped early (client gone, timeout), it resets the stream
/// while the connection's reset budget allows, and otherwise lets it finish in the background.
pub struct PendingResponse {
    fut: Option<ResponseFuture>,
    ctl: Arc<ConnCtl>,
}

impl Future for PendingResponse {
    type Output = Result<http::Response<RecvStream>, h2::Error>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(fut) = self.fut.as_mut() else {
            return std::task::Poll::Ready(Err(h2::Error::from(h2::Reason::INTERNAL_ERROR)));
        };
        let r = Pin::new(fut).poll(cx);
        if r.is_ready() {
            self.fut = None;
        }
        r
    }
}

impl Drop for PendingResponse {
    fn drop(&mut self) {
        let Some(fut) = self.fut.take() else { return };
        if self.ctl.try_reset() {
            return;
        }
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                if let Ok(resp) = fut.await {
                    drain(resp.into_body()).await;
                }
            })
            .await;
        });
    }
}

/// One HTTP/2 connection as the pool sees it.
pub struct H2Conn {
    /// Pool-unique id, logged as the upstream connection id.
    pub id: u64,
    /// Shared by the requests that use the connection, which send on it under the lock:
    /// a clone per request cost two more locks of h2's stream state (and `ready` a third).
    sender: Mutex<SendRequest<Bytes>>,
    ctl: Arc<ConnCtl>,
    created: Instant,
    resumed: Option<bool>,
    served: AtomicU64,
    /// Dropped with the last handle (pool slot or lease): tells the driver that no new stream
    /// can start, so it closes the connection once what is left drains (see `RETIRE_GRACE`).
    _retire: oneshot::Sender<()>,
    /// The address dialled (`None` in memory).
    peer: Option<SocketAddr>,
    /// The shard whose runtime drives it (see [`crate::shard`]).
    home: Option<usize>,
}

/// How long a connection nobody holds any more (its pool was dropped, or it left the pool) may
/// keep running for what is still on it: background drains of abandoned streams, bounded by
/// `DRAIN_TIME`. Without this bound, streams h2 keeps queued locally (a peer that advertised
/// SETTINGS_MAX_CONCURRENT_STREAMS = 0 and then went silent, with keepalive PINGs off) kept the
/// connection open for ever after the pool was gone (fuzz_upstream_frames,
/// crash-7d910302-conn-open-after-pool-drop).
const RETIRE_GRACE: Duration = Duration::from_secs(10);

impl H2Conn {
    /// Opens a stream for `head` and starts sending `body` (`None`: END_STREAM with the headers).
    /// An error here means nothing was sent; the body comes back with it.
    pub fn start(
        &self,
        head: Request<()>,
        body: Option<UpBody>,
    ) -> Result<(PendingResponse, Option<PumpGuard>), (h2::Error, Option<UpBody>)> {
        let (response, stream) = match self.open(head, body.is_none()) {
            Ok(x) => x,
            Err(e) => return Err((e, body)),
        };
        let pump = body.map(|body| {
            let body_failed = Arc::new(AtomicBool::new(false));
            PumpGuard {
                task: tokio::spawn(pump(body, stream, body_failed.clone())),
                body_failed,
            }
        });
        Ok((response, pump))
    }

    /// Opens a stream (its HEADERS end the stream when `end_of_stream`). An error here means
    /// nothing was sent.
    fn open(
        &self,
        head: Request<()>,
        end_of_stream: bool,
    ) -> Result<(PendingResponse, SendStream<Bytes>), h2::Error> {
        let mut sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        let (response, stream) = sender.send_request(head, end_of_stream)?;
        // When this stream reached the origin's SETTINGS_MAX_CONCURRENT_STREAMS (h2 queues
        // every new stream until its connection task runs), h2 makes the sender refuse the
        // next request until the stream opens: a fresh clone starts clear, so the shared
        // sender never waits. (`poll_ready` itself takes one lock of h2's state.)
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if sender.poll_ready(&mut cx).is_pending() {
            *sender = sender.clone();
        }
        let response = PendingResponse {
            fut: Some(response),
            ctl: self.ctl.clone(),
        };
        Ok((response, stream))
    }

    /// Whether the origin advertised `SETTINGS_ENABLE_CONNECT_PROTOCOL = 1` on this connection
    /// (RFC 8441 §3: "a client MUST NOT send a CONNECT request with the :protocol pseudo-header
    /// unless the server has sent this setting"). Known once the peer's SETTINGS were read,
    /// which the pool waits for before publishing a connection.
    pub fn extended_connect(&self) -> bool {
        self.sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_extended_connect_protocol_enabled()
    }

    /// Opens a stream for an extended CONNECT (RFC 8441 §4) and keeps its send half open: the
    /// caller owns the returned `SendStream` for the tunnel's life. An error here means nothing
    /// was sent.
    pub fn start_tunnel(
        &self,
        head: Request<()>,
    ) -> Result<(PendingResponse, SendStream<Bytes>), h2::Error> {
        self.open(head, false)
    }

    /// Wraps a response body from this connection (its drop obeys the reset budget).
    pub fn body(&self, recv: RecvStream, headers: &HeaderMap) -> H2Body {
        // A stream that ended with its head (HEAD, 204 and 304 responses may still declare a
        // length) is over from the start: `is_end_stream` must say so, or hyper would frame
        // the response as one with content (an empty DATA frame after the HEADERS for an h2
        // client, which h2 rejects as a content-length underflow).
        let recv = (!recv.is_end_stream()).then_some(recv);
        H2Body {
            recv,
            data_done: false,
            length: headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            received: 0,
            ctl: self.ctl.clone(),
        }
    }

    /// Marks the connection unusable for new streams (its dispatch task has ended).
    pub fn mark_closed(&self) {
        self.ctl.closed.store(true, Ordering::Release);
    }

    fn is_closed(&self) -> bool {
        self.ctl.closed.load(Ordering::Acquire)
    }

    /// True the first time it is asked: the caller counts the connection's protocol failure in
    /// `muxgate_upstream_errors_total{kind="protocol"}`. Both the connection's driver (when
    /// the connection ends on an error h2 detected) and a stream that h2 failed with that
    /// error (its GOAWAY) ask, because either can see it without the other: h2 fails the
    /// streams before it writes GOAWAY, and writing it can fail or never finish. One failure,
    /// one count, however many streams it takes down.
    pub fn first_protocol_error(&self) -> bool {
        !self.ctl.protocol_counted.swap(true, Ordering::AcqRel)
    }

    fn max_streams(&self) -> usize {
        self.ctl.max_streams.load(Ordering::Acquire)
    }
}

struct Slot {
    conn: Arc<H2Conn>,
    in_flight: usize,
    idle_since: Instant,
    /// When `max_connection_age` (with jitter) retires this connection.
    expires: Option<Instant>,
    /// Past its age or near the end of its stream ids (`due_to_retire`): serves only until
    /// its replacement is up, then closes for new streams.
    retiring: bool,
}

impl Slot {
    fn has_room(&self) -> bool {
        !self.conn.is_closed() && self.in_flight < self.conn.max_streams()
    }

    fn usable(&self) -> bool {
        !self.retiring && !self.conn.is_closed()
    }
}

/// What a waiter receives.
enum Handoff {
    Lease(H2Lease),
    UseH1,
    Fail(Error),
}

/// Result of [`H2Pool::acquire`].
pub enum Acquired {
    /// A stream slot on a connection.
    Lease(H2Lease),
    /// The origin negotiated http/1.1: use the HTTP/1.1 pool.
    UseH1,
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    dialing: bool,
    waiters: VecDeque<oneshot::Sender<Handoff>>,
}

impl State {
    /// Open connections that take new streams (not closed, not retiring).
    fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.usable()).count()
    }

    /// Where the next stream goes. The first `min` usable connections share load evenly
    /// (least loaded: a multi-process origin serves each connection on its own core); beyond
    /// them, first fit in age order, so connections opened for a burst fall idle when it ends
    /// and `idle_timeout` closes them. Retiring connections serve only when nothing else can.
    /// With shards, a connection at home on `prefer` (the caller's shard) goes first by these
    /// rules, then any other: the request and the connection then run on the same thread.
    fn pick(&self, min: usize, prefer: Option<usize>) -> Option<usize> {
        let local = match prefer {
            Some(_) => self.pick_live(min, |s| s.conn.home == prefer),
            None => None,
        };
        local.or_else(|| self.pick_live(min, |_| true)).or_else(|| {
            (0..self.slots.len())
                .filter(|&i| self.slots[i].retiring && self.slots[i].has_room())
                .min_by_key(|&i| self.slots[i].in_flight)
        })
    }

    /// [`State::pick`] among the usable connections that pass `ok`.
    fn pick_live(&self, min: usize, ok: impl Fn(&Slot) -> bool) -> Option<usize> {
        // Runs under the pool lock on every request: iterators only, no allocation.
        let usable = || (0..self.slots.len()).filter(|&i| self.slots[i].usable());
        let fits = |i: &usize| ok(&self.slots[*i]) && self.slots[*i].has_room();
        usable()
            .take(min)
            .filter(fits)
            .min_by_key(|&i| self.slots[i].in_flight)
            .or_else(|| usable().skip(min).find(fits))
    }

    fn pop_waiter(&mut self) -> Option<oneshot::Sender<Handoff>> {
        while let Some(tx) = self.waiters.pop_front() {
            if !tx.is_closed() {
                return Some(tx);
            }
        }
        None
    }

    fn remove_finished(&mut self) {
        self.slots
            .retain(|s| !(s.conn.is_closed() && s.in_flight == 0));
    }
}

struct Shared {
    origin: String,
    state: Mutex<State>,
    connector: Arc<Connector>,
    h1: H1Pool,
    use_h1: Arc<AtomicBool>,
    metrics: OriginMetrics,
    next_id: Arc<AtomicU64>,
    min_connections: usize,
    max_connections: usize,
    max_pending: usize,
    /// Where dials (and so connections) run.
    placement: crate::shard::Placement,
    pending_timeout: Duration,
    idle_timeout: Duration,
    max_age: Option<Duration>,
    builder: h2::client::Builder,
    keepalive: Option<(Duration, Duration)>,
    initial_max_streams: usize,
    reset_rate: f64,
    reset_burst: f64,
}

/// A stream slot on one connection; dropping it frees the slot (or hands it to a waiter).
pub struct H2Lease {
    shared: Arc<Shared>,
    conn: Arc<H2Conn>,
    armed: bool,
}

impl H2Lease {
    fn new(shared: &Arc<Shared>, conn: &Arc<H2Conn>) -> H2Lease {
        shared.metrics.streams_active.inc();
        conn.served.fetch_add(1, Ordering::Relaxed);
        H2Lease {
            shared: shared.clone(),
            conn: conn.clone(),
            armed: true,
        }
    }

    /// The connection this slot is on.
    pub fn conn(&self) -> &Arc<H2Conn> {
        &self.conn
    }
}

impl H2Lease {
    /// Ends the stream of a tunnel (RFC 8441) that may still be open, with the manners of
    /// [`H2Body`]: a stream closed both ways needs nothing; if only the origin's half is open,
    /// a reset is sent while the connection's reset budget allows; otherwise our half is ended
    /// (END_STREAM) and the origin's is read to its end in the background (bounded), so mass
    /// client aborts do not become a reset flood on the shared connection. The slot is held
    /// until the stream is really done.
    pub fn end_tunnel(self, mut send: SendStream<Bytes>, recv: RecvStream, sent_end: bool) {
        if recv.is_end_stream() {
            if !sent_end {
                // The origin already closed its half: END_STREAM closes the stream cleanly.
                let _ = send.send_data(Bytes::new(), true);
            }
            return;
        }
        if self.conn.ctl.try_reset() {
            // Dropping both halves of an open stream makes h2 reset it (CANCEL).
            return;
        }
        if !sent_end {
            let _ = send.send_data(Bytes::new(), true);
        }
        tokio::spawn(async move {
            drain(recv).await;
            drop(send);
            drop(self);
        });
    }
}

impl Drop for H2Lease {
    fn drop(&mut self) {
        self.shared.metrics.streams_active.dec();
        if self.armed {
            self.shared.release(&self.conn);
        }
    }
}

/// The pool handle (cheap to clone).
#[derive(Clone)]
pub struct H2Pool {
    shared: Arc<Shared>,
}

impl H2Pool {
    /// Creates the pool and its idle reaper.
    pub fn new(
        o: &ValidOrigin,
        connector: Arc<Connector>,
        h1: H1Pool,
        use_h1: Arc<AtomicBool>,
        metrics: OriginMetrics,
        next_id: Arc<AtomicU64>,
    ) -> H2Pool {
        let r = &o.raw;
        let mut builder = h2::client::Builder::new();
        builder
            .initial_max_send_streams(r.initial_max_streams)
            .initial_window_size(r.stream_window.0 as u32)
            .initial_connection_window_size(r.connection_window.0 as u32)
            .max_frame_size(64 * 1024)
            .max_send_buffer_size(1024 * 1024)
            .max_header_list_size(256 * 1024)
            .enable_push(false);
        let keepalive = (!r.keepalive_interval.0.is_zero())
            .then_some((r.keepalive_interval.0, r.keepalive_timeout.0));
        let shared = Arc::new(Shared {
            origin: r.name.clone(),
            state: Mutex::new(State::default()),
            connector,
            h1,
            use_h1,
            metrics,
            next_id,
            min_connections: r.min_connections,
            max_connections: r.max_connections,
            max_pending: r.max_pending,
            placement: o.placement.clone(),
            pending_timeout: r.pending_timeout.0,
            idle_timeout: r.idle_timeout.0,
            max_age: (!r.max_connection_age.0.is_zero()).then_some(r.max_connection_age.0),
            builder,
            keepalive,
            initial_max_streams: r.initial_max_streams,
            reset_rate: f64::from(r.reset_rate),
            reset_burst: f64::from(r.reset_burst),
        });
        tokio::spawn(reaper(Arc::downgrade(&shared)));
        H2Pool { shared }
    }

    /// Takes a stream slot, dialling or waiting as the rules above say.
    pub async fn acquire(&self) -> Result<Acquired, Error> {
        let s = &self.shared;
        let rx = {
            let mut st = s.lock();
            st.remove_finished();
            if let Some(i) = st.pick(s.min_connections, crate::shard::current()) {
                st.slots[i].in_flight += 1;
                let lease = H2Lease::new(s, &st.slots[i].conn);
                if st.live() < s.min_connections {
                    s.maybe_dial(&mut st);
                }
                return Ok(Acquired::Lease(lease));
            }
            s.maybe_dial(&mut st);
            if st.waiters.len() >= s.max_pending {
                st.waiters.retain(|w| !w.is_closed());
                if st.waiters.len() >= s.max_pending {
                    return Err(Error::QueueFull);
                }
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(tx);
            rx
        };
        match tokio::time::timeout(s.pending_timeout, rx).await {
            Ok(Ok(Handoff::Lease(l))) => Ok(Acquired::Lease(l)),
            Ok(Ok(Handoff::UseH1)) => Ok(Acquired::UseH1),
            Ok(Ok(Handoff::Fail(e))) => Err(e),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::PendingTimeout),
        }
    }

    /// Retires connections whose address the origin's name no longer resolves to (see the
    /// module doc): a replacement is dialled, then they drain. Returns how many were retired.
    pub fn retire_stale(&self) -> usize {
        let s = &self.shared;
        let mut st = s.lock();
        let mut n = 0;
        for slot in st.slots.iter_mut() {
            if !slot.retiring && !slot.conn.is_closed() && !s.connector.is_current(slot.conn.peer) {
                slot.retiring = true;
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(origin = %s.origin, connections = n, "origin address gone: draining its connections");
            st.remove_finished();
            s.maybe_dial(&mut st);
        }
        n
    }

    /// Closes every connection for new streams; each closes once its in-flight streams are
    /// done. Requests that come later dial new connections.
    pub fn drain_all(&self) {
        let s = &self.shared;
        let waiting = {
            let mut st = s.lock();
            for slot in &st.slots {
                slot.conn.mark_closed();
            }
            st.remove_finished();
            !st.waiters.is_empty()
        };
        if waiting {
            // Queued requests must not wait for a slot on a connection that took its last.
            s.distribute();
        }
    }

    /// A snapshot of every connection, for `/pool` and tests.
    pub fn stats(&self) -> Vec<ConnStats> {
        let st = self.shared.lock();
        st.slots
            .iter()
            .map(|s| ConnStats {
                id: s.conn.id,
                protocol: "h2",
                in_flight: s.in_flight,
                max_streams: s.conn.max_streams(),
                draining: s.conn.is_closed(),
                age: s.conn.created.elapsed(),
                served: s.conn.served.load(Ordering::Relaxed),
                resumed: s.conn.resumed,
                peer: s.conn.peer,
                shard: s.conn.home,
            })
            .collect()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module; the state stays
        // consistent enough to continue (counts only), so recover the guard.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Dials one more connection unless one is being dialled or the pool is full. With shards
    /// the dial (and so the connection's driver) runs on the shard home to the fewest live
    /// connections, so each shard gets connections of its own as the load grows.
    fn maybe_dial(self: &Arc<Self>, st: &mut State) {
        if st.dialing || st.live() >= self.max_connections {
            return;
        }
        st.dialing = true;
        let home = self
            .placement
            .next_home(st.slots.iter().filter(|s| s.usable()).map(|s| s.conn.home));
        self.placement.spawn(home, dial(self.clone()));
    }

    /// Frees a slot or hands it to the oldest live waiter.
    fn release(self: &Arc<Self>, conn: &Arc<H2Conn>) {
        loop {
            let tx = {
                let mut st = self.lock();
                let Some(i) = st.slots.iter().position(|s| s.conn.id == conn.id) else {
                    return;
                };
                // Hand over only if the slot would still be within the (possibly lowered) limit.
                let within = st.slots[i].in_flight <= conn.max_streams();
                match (within && !conn.is_closed())
                    .then(|| st.pop_waiter())
                    .flatten()
                {
                    Some(tx) => tx,
                    None => {
                        let slot = &mut st.slots[i];
                        slot.in_flight = slot.in_flight.saturating_sub(1);
                        if slot.in_flight == 0 {
                            slot.idle_since = Instant::now();
                        }
                        st.remove_finished();
                        return;
                    }
                }
            };
            match tx.send(Handoff::Lease(H2Lease::new(self, conn))) {
                Ok(()) => return,
                Err(Handoff::Lease(mut l)) => l.armed = false,
                Err(_) => {}
            }
        }
    }

    /// Gives free slots on `conn` to waiters (after a dial or a raised stream limit).
    fn distribute(self: &Arc<Self>) {
        loop {
            let (tx, conn) = {
                let mut st = self.lock();
                // Waiters that gave up must not cause a dial.
                st.waiters.retain(|w| !w.is_closed());
                let Some(i) = st.pick(self.min_connections, None) else {
                    if !st.waiters.is_empty() {
                        self.maybe_dial(&mut st);
                    }
                    return;
                };
                let Some(tx) = st.pop_waiter() else { return };
                st.slots[i].in_flight += 1;
                (tx, st.slots[i].conn.clone())
            };
            if let Err(Handoff::Lease(l)) = tx.send(Handoff::Lease(H2Lease::new(self, &conn))) {
                // The waiter gave up: its drop releases the slot (maybe to the next waiter).
                drop(l);
            }
        }
    }

    fn fail_waiters(&self, make: impl Fn() -> Handoff) {
        let waiters: Vec<_> = self.lock().waiters.drain(..).collect();
        for tx in waiters {
            let _ = tx.send(make());
        }
    }
}

async fn dial(shared: Arc<Shared>) {
    let result = match connect(&shared).await {
        Ok(Some((conn, settled))) => {
            // Publish the connection only once the peer's SETTINGS were processed: before that
            // h2 assumes `initial_max_streams`, and a burst above the real limit would be
            // refused. By then TLS 1.3 session tickets (sent before any application data) are
            // in too, so the next dial can resume. Costs one round trip per new connection.
            match tokio::time::timeout(Duration::from_secs(2), settled).await {
                Ok(Ok(())) => Ok(Some(conn)),
                // The driver ended first: garbage, a protocol error or a close.
                Ok(Err(_)) => Err(Error::Protocol(
                    "origin closed or broke the HTTP/2 connection before its SETTINGS".into(),
                )),
                // A slow peer: use the connection with the assumed limit.
                Err(_) => Ok(Some(conn)),
            }
        }
        other => other.map(|_| None),
    };
    let failed_all = {
        let mut st = shared.lock();
        st.dialing = false;
        match &result {
            Ok(Some(conn)) => {
                // The replacement is up: retiring connections take no new streams from now on.
                for slot in st.slots.iter().filter(|s| s.retiring) {
                    slot.conn.mark_closed();
                }
                st.slots.push(Slot {
                    conn: conn.clone(),
                    in_flight: 0,
                    idle_since: Instant::now(),
                    expires: shared
                        .max_age
                        .map(|a| Instant::now() + jittered(a, conn.id)),
                    retiring: false,
                });
                false
            }
            Ok(None) => true,
            // Waiters that can still be served by a live connection keep waiting.
            Err(_) => st.live() == 0,
        }
    };
    match result {
        Ok(Some(_)) => shared.distribute(),
        Ok(None) => shared.fail_waiters(|| Handoff::UseH1),
        Err(e) => {
            if let Some(kind) = e.kind() {
                shared.metrics.error(kind);
            }
            tracing::warn!(origin = %shared.origin, error = %e, "origin dial failed");
            if failed_all {
                shared.fail_waiters(|| Handoff::Fail(e.clone()));
            }
        }
    }
}

/// Dials and handshakes; `Ok(None)` when ALPN chose http/1.1 (connection given to the h1 pool).
/// The receiver fires once the driver has processed the peer's first bytes (its SETTINGS).
async fn connect(
    shared: &Arc<Shared>,
) -> Result<Option<(Arc<H2Conn>, oneshot::Receiver<()>)>, Error> {
    let c = shared.connector.connect().await?;
    if !c.h2 {
        tracing::info!(origin = %shared.origin, "origin negotiated http/1.1: using the keep-alive pool");
        shared.use_h1.store(true, Ordering::Release);
        shared.h1.adopt(c).await;
        return Ok(None);
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    shared.metrics.conns_h2.inc();
    let mut io = CountedIo::new(c.io, shared.metrics.open_h2.clone());
    let read_any = io.read_any();
    let overrun = io.watch_flow_control_resets();
    let (settled_tx, settled_rx) = oneshot::channel();
    let mut settled_tx = Some(settled_tx);
    let (sender, mut conn) = shared
        .builder
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| Error::Protocol(format!("HTTP/2 handshake: {e}")))?;
    let ping = conn.ping_pong();
    let ctl = Arc::new(ConnCtl {
        max_streams: AtomicUsize::new(shared.initial_max_streams),
        closed: AtomicBool::new(false),
        protocol_counted: AtomicBool::new(false),
        resets: Mutex::new(ResetBudget {
            tokens: shared.reset_burst,
            last: Instant::now(),
            rate: shared.reset_rate,
            burst: shared.reset_burst,
        }),
    });
    let (retire_tx, retire_rx) = oneshot::channel::<()>();
    let h2c = Arc::new(H2Conn {
        id,
        _retire: retire_tx,
        sender: Mutex::new(sender),
        ctl: ctl.clone(),
        created: Instant::now(),
        resumed: c.resumed,
        served: AtomicU64::new(0),
        peer: c.peer,
        // The driver is spawned below, on this (the dial's) runtime.
        home: crate::shard::current(),
    });
    tracing::debug!(origin = %shared.origin, conn = id, resumed = ?c.resumed, peer = ?c.peer, "h2 connection open");
    let weak = Arc::downgrade(shared);
    let origin = shared.origin.clone();
    let keepalive = shared.keepalive;
    tokio::spawn(async move {
        let mut last = ctl.max_streams.load(Ordering::Relaxed);
        // Coalesced: the streams already runnable hand over their frames first, then one
        // write carries them all (see `crate::coalesce`).
        // Relayed: streams of clients on other shards wake it through this shard's relay.
        let drive = crate::shard::wake::relayed(crate::coalesce::coalesce(poll_fn(|cx| {
            let r = Pin::new(&mut conn).poll(cx);
            if overrun.load(Ordering::Acquire) {
                // h2 just reset a stream for the origin's flow-control violation (see
                // `super::rst_watch`): made a connection error (RFC 9113 §6.9.1), so the
                // origin's further DATA is not read.
                return std::task::Poll::Ready(Err(h2::Error::from(
                    h2::Reason::FLOW_CONTROL_ERROR,
                )));
            }
            if settled_tx.is_some() && r.is_pending() && read_any.load(Ordering::Acquire) {
                if let Some(tx) = settled_tx.take() {
                    ctl.max_streams.store(
                        conn.max_concurrent_send_streams().min(MAX_STREAMS_CAP),
                        Ordering::Release,
                    );
                    let _ = tx.send(());
                }
            }
            let now = conn.max_concurrent_send_streams().min(MAX_STREAMS_CAP);
            if now != last {
                last = now;
                ctl.max_streams.store(now, Ordering::Release);
                if let Some(s) = weak.upgrade() {
                    s.distribute();
                }
            }
            r
        })));
        tokio::pin!(drive);
        let ended = tokio::select! {
            r = &mut drive => Some(r),
            why = keepalive_loop(ping, keepalive) => {
                tracing::warn!(%origin, conn = id, reason = why, "h2 connection dead: closing it");
                None
            }
            _ = retire_rx => {
                // Nobody can start a stream on it any more; h2 closes it by itself once its
                // streams are done, unless some can never finish.
                let r = tokio::time::timeout(RETIRE_GRACE, &mut drive).await;
                if r.is_err() {
                    tracing::debug!(%origin, conn = id, "h2 connection retired: closing it after the grace period");
                }
                r.ok()
            }
        };
        let violated = match ended {
            _ if overrun.load(Ordering::Acquire) => {
                tracing::warn!(%origin, conn = id, "origin broke flow control on a stream (DATA past its window, or a window past 2^31-1): closing the connection");
                true
            }
            Some(Ok(())) => {
                tracing::debug!(%origin, conn = id, "h2 connection closed");
                false
            }
            Some(Err(e)) => {
                tracing::warn!(%origin, conn = id, error = %e, "h2 connection failed");
                // A connection error the gateway detected (it sent GOAWAY): the origin broke
                // the protocol. Counted once per connection, even if no request failed.
                e.is_go_away() && e.is_library()
            }
            None => false,
        };
        if violated && !ctl.protocol_counted.swap(true, Ordering::AcqRel) {
            if let Some(s) = weak.upgrade() {
                s.metrics.error("protocol");
            }
        }
        // Dropping the connection here fails its remaining streams (as a reset).
        ctl.closed.store(true, Ordering::Release);
        if let Some(s) = weak.upgrade() {
            // Its streams have all failed with it: the slot goes now, even if some of their
            // bodies are still held (their leases find no slot when they end).
            s.lock().slots.retain(|slot| slot.conn.id != id);
            // Waiters may need a new connection now.
            s.distribute();
        }
    });
    Ok(Some((h2c, settled_rx)))
}

/// `age` ± 10 %, varied per connection so a pool's connections do not all rotate at once.
fn jittered(age: Duration, id: u64) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(id);
    let unit = (h.finish() % 2001) as f64 / 1000.0 - 1.0; // -1.0 ..= 1.0
    age.mul_f64(1.0 + 0.1 * unit)
}

/// Closes connections idle longer than `idle_timeout`; starts the rotation of connections
/// past `max_connection_age` (a replacement is dialled first; see `dial`).
async fn reaper(weak: Weak<Shared>) {
    let period = match weak.upgrade() {
        Some(s) => {
            let base = s.max_age.map_or(s.idle_timeout, |a| a.min(s.idle_timeout));
            (base / 4).clamp(Duration::from_millis(20), Duration::from_secs(5))
        }
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(s) = weak.upgrade() else { return };
        let mut st = s.lock();
        let timeout = s.idle_timeout;
        let now = Instant::now();
        st.slots
            .retain(|slot| !(slot.in_flight == 0 && slot.idle_since.elapsed() >= timeout));
        let mut retiring = false;
        for slot in st.slots.iter_mut() {
            let served = slot.conn.served.load(Ordering::Relaxed);
            if !slot.retiring && !slot.conn.is_closed() && due_to_retire(slot.expires, served, now)
            {
                if served >= STREAM_ID_BUDGET {
                    tracing::info!(origin = %s.origin, upstream_conn = slot.conn.id, served,
                        "origin connection nearly out of stream ids: replacing it");
                }
                slot.retiring = true;
                retiring = true;
            }
        }
        st.remove_finished();
        if retiring {
            s.maybe_dial(&mut st);
        }
    }
}

/// Streams a connection may start before it is replaced. A client has 2^30 stream ids (odd,
/// below 2^31; RFC 9113 §5.1.1), after which h2 refuses every new request on it; the margin
/// covers the requests started between two passes of the reaper (at most 5 s apart) at any
/// rate this gateway reaches.
const STREAM_ID_BUDGET: u64 = (1 << 30) - (1 << 24);

/// Whether a connection is due to be replaced: past its `max_connection_age`, or near the end
/// of its stream ids (`served` counts its leases, one per stream it started).
fn due_to_retire(expires: Option<Instant>, served: u64, now: Instant) -> bool {
    expires.is_some_and(|e| now >= e) || served >= STREAM_ID_BUDGET
}

/// PINGs the peer every `interval`; returns when an answer takes longer than `timeout`
/// (a peer that keeps TCP open but stopped answering). Never returns without keepalive.
async fn keepalive_loop(
    ping: Option<PingPong>,
    keepalive: Option<(Duration, Duration)>,
) -> &'static str {
    let (Some(mut ping), Some((interval, timeout))) = (ping, keepalive) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        if ping.send_ping(Ping::opaque()).is_err() {
            // Connection gone: let the driver report it.
            return std::future::pending().await;
        }
        match tokio::time::timeout(timeout, poll_fn(|cx| ping.poll_pong(cx))).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return "PING timeout",
        }
    }
}

/// Owns a request-body pump; dropping it (attempt failed or timed out, response done or
/// dropped) aborts the pump, so its `SendStream` goes away and h2 resets the stream instead of
/// keeping it open for ever against an origin that grants no window.
pub struct PumpGuard {
    task: tokio::task::JoinHandle<()>,
    body_failed: Arc<AtomicBool>,
}

impl PumpGuard {
    /// The client's body failed and the pump reset the stream (the origin is not to blame).
    pub fn body_failed(&self) -> bool {
        self.body_failed.load(Ordering::Acquire)
    }
}

impl Drop for PumpGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends a request body on `stream` with HTTP/2 flow control (never more than the peer's window
/// in memory), then END_STREAM or trailers. Stops if the peer resets the stream; resets it
/// with CANCEL if the client's body fails.
async fn pump(mut body: UpBody, mut stream: SendStream<Bytes>, body_failed: Arc<AtomicBool>) {
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = poll_fn(|cx| stream.poll_reset(cx)) => return,
        };
        match frame {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(_)) => {
                body_failed.store(true, Ordering::Release);
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    while !data.is_empty() {
                        stream.reserve_capacity(data.len());
                        let n = match poll_fn(|cx| stream.poll_capacity(cx)).await {
                            Some(Ok(n)) if n > 0 => n,
                            Some(Ok(_)) => continue,
                            _ => return,
                        };
                        let chunk = data.split_to(n.min(data.len()));
                        if stream.send_data(chunk, false).is_err() {
                            return;
                        }
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = stream.send_trailers(trailers);
                        return;
                    }
                }
            },
        }
    }
}

/// A response body read from an h2 stream: gives back flow-control credit as data is handed on
/// (so a slow client slows the origin), then yields trailers.
///
/// Dropped after all `Content-Length` bytes arrived but before the origin's END_STREAM (hyper
/// stops reading a body at its declared length), it waits for that END_STREAM in the
/// background instead of resetting the stream: a reset per response would look like a
/// rapid-reset attack to the origin (and trips h2's own limit on locally reset streams).
pub struct H2Body {
    recv: Option<RecvStream>,
    data_done: bool,
    length: Option<u64>,
    received: u64,
    ctl: Arc<ConnCtl>,
}

impl Drop for H2Body {
    fn drop(&mut self) {
        let Some(recv) = self.recv.take() else {
            return;
        };
        if recv.is_end_stream() {
            return;
        }
        let complete = self.length.is_some_and(|n| self.received >= n);
        if !complete && self.ctl.try_reset() {
            // Abandoned mid-body (client gone): reset it, within the connection's budget.
            return;
        }
        let mut recv = recv;
        if complete && finish_buffered(&mut recv) {
            return;
        }
        // Complete by length (only END_STREAM missing), or out of reset budget: read the rest.
        tokio::spawn(drain(recv));
    }
}

/// Consumes what is already buffered on a stream whose body is complete: usually the origin's
/// END_STREAM (an empty DATA frame or trailers) came in with the last DATA frame, and checking
/// without waiting saves spawning a drain task per response (~2,000 instructions per request
/// in bench/callgrind.sh). True if the stream reached its end.
fn finish_buffered(recv: &mut RecvStream) -> bool {
    use std::task::Poll;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        match recv.poll_data(&mut cx) {
            // Only empty frames are expected here; anything else goes to the bounded drain.
            Poll::Ready(Some(Ok(d))) if d.is_empty() => continue,
            Poll::Ready(None) => {
                return matches!(recv.poll_trailers(&mut cx), Poll::Ready(Ok(_)));
            }
            Poll::Ready(Some(Ok(d))) => {
                let _ = recv.flow_control().release_capacity(d.len());
                return false;
            }
            Poll::Ready(Some(Err(_))) => return true,
            Poll::Pending => return false,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = self.as_mut().get_mut();
        let Some(recv) = this.recv.as_mut() else {
            return Poll::Ready(None);
        };
        if !this.data_done {
            match recv.poll_data(cx) {
                Poll::Ready(Some(Ok(d))) => {
                    let _ = recv.flow_control().release_capacity(d.len());
                    this.received += d.len() as u64;
                    // The declared length complete and END_STREAM already in (the usual last
                    // DATA frame): done with the stream now, so what follows (hyper asks
                    // `is_end_stream` twice, then the drop) takes no lock of h2's state.
                    if this.length.is_some_and(|n| this.received >= n) && recv.is_end_stream() {
                        this.recv = None;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => this.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.recv {
            None => true,
            // Bytes still due by `Content-Length`: not the end (h2 fails a stream that ends
            // short; one that ended with its head has no `recv`), told without taking the
            // connection's stream lock, as asking h2 does. hyper asks several times per
            // response.
            Some(_) if self.length.is_some_and(|n| self.received < n) => false,
            Some(r) => r.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_retire_by_age_or_before_their_stream_ids_run_out() {
        let now = Instant::now();
        assert!(!due_to_retire(None, 0, now));
        assert!(!due_to_retire(
            Some(now + Duration::from_secs(1)),
            STREAM_ID_BUDGET - 1,
            now
        ));
        assert!(due_to_retire(Some(now), 0, now));
        assert!(due_to_retire(None, STREAM_ID_BUDGET, now));
        // The margin outlasts a reaper period (5 s at most) at a million requests a second,
        // and the budget stays below the 2^30 ids a client has.
        let margin = (1u64 << 30) - STREAM_ID_BUDGET;
        assert!(margin > 5 * 1_000_000, "{margin}");
    }
}
