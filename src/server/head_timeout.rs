//! `client.header_timeout` for HTTP/1.1 client connections, with one timer per connection.
//!
//! The clock starts when the connection opens or when its last response is done, and stops
//! when a complete request head reaches the proxy; past the timeout the connection is closed.
//! That bounds a client that dribbles its head (slowloris) and is also the keep-alive idle
//! timeout.
//!
//! hyper's own `header_read_timeout` does the same, but it allocates a timer for every request
//! and registers it in tokio's timer wheel whenever it waits for the next head: 1,428 of the
//! gateway's 43,736 instructions per request (3.3 %, `bench/callgrind.sh`, 200 keep-alive
//! clients). Here a request costs a reference count, two counter updates and a clock read;
//! the connection's one timer is moved only when it fires (once per timeout, or never on a busy connection whose
//! requests keep coming: it then re-arms from the last idle moment).
//!
//! The same timer enforces `client.send_timeout`: [`SendWatch`] wraps the connection's I/O and
//! notes when a write to the client blocks (the client stopped reading and the socket buffers
//! are full) and when one goes through again. A response whose writes stay blocked for the
//! timeout ends the connection, which drops the response body and with it the upstream stream
//! or connection the response held (nginx `send_timeout`, HAProxy `timeout client`). A write
//! that goes through costs one atomic load; a clock read happens only when writes start to block.
//!
//! It also says when an idle keep-alive connection may give its HTTP state back
//! (`client.idle_release_after`, [`Expiry::Release`]): idle that long, its last request had no
//! body (so hyper is not draining one) and its writes went through (so hyper holds no unsent
//! bytes). [`SendWatch::fill`] then waits on the bare socket and [`SendWatch`] replays what it
//! read to the connection's next parser.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When the connection was last idle; shared by the connection's requests and its deadline.
/// All of it is used from the connection's task (the service, the response body and the
/// deadline are polled by it), so relaxed ordering suffices.
#[derive(Debug)]
pub struct HeadClock {
    base: Instant,
    /// Nanoseconds after `base` at which the connection last became idle.
    idle_since: AtomicU64,
    /// Requests whose response is not done yet (one, or more while pipelined responses end).
    in_flight: AtomicU32,
    /// 0 while writes to the client go through; else 1 + nanoseconds after `base` at which
    /// they started to block ([`SendWatch`]).
    blocked_since: AtomicU64,
    /// The last request came without a body: once its response is written, hyper's state
    /// holds nothing a fresh parser would not rebuild ([`Expiry::Release`]).
    releasable: AtomicBool,
    /// `releasable` turned true, or a response head became due before the timer's deadline:
    /// [`HeadClock::expired`] looks at its deadline again the next time the task polls it.
    recheck: AtomicBool,
    /// 0 while no request waits for its origin's response head; else 1 + nanoseconds after
    /// `base` at which that wait ends (`response_header_timeout`, [`HeadClock::response_within`]).
    response_due: AtomicU64,
    /// `response_due` passed: the waiting request gives up (set by the timer's task).
    response_fired: AtomicBool,
    /// Nanoseconds after `base` the timer is set for while [`HeadClock::expired`] holds it
    /// armed; `u64::MAX` before it is first armed (a due time earlier than this needs a look).
    armed_for: AtomicU64,
}

/// Which limit [`HeadClock::expired`] found passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// `client.header_timeout`: idle, or reading a head, for too long.
    Header,
    /// `client.send_timeout`: a response's writes to the client blocked for too long.
    Send,
    /// Not a close: idle for `client.idle_release_after`, the connection may give its HTTP
    /// state back.
    Release,
}

impl Expiry {
    /// The `reason` label of `muxgate_downstream_connections_closed_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Expiry::Header => "header_timeout",
            Expiry::Send => "send_timeout",
            Expiry::Release => "idle_release",
        }
    }
}

impl HeadClock {
    /// A clock for a connection that opens now (idle from now).
    pub fn new() -> Arc<HeadClock> {
        Arc::new(HeadClock {
            base: Instant::now(),
            idle_since: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            blocked_since: AtomicU64::new(0),
            releasable: AtomicBool::new(false),
            recheck: AtomicBool::new(false),
            response_due: AtomicU64::new(0),
            response_fired: AtomicBool::new(false),
            armed_for: AtomicU64::new(u64::MAX),
        })
    }

    /// `wait` (a request's wait for its origin's response head), given up after `limit`
    /// (`response_header_timeout`): `None` then. The connection's one timer enforces it,
    /// moved only when it was set for later than the wait's end, instead of a timer per
    /// request registered in tokio's wheel and removed again (~480 instructions per request,
    /// `bench/callgrind.sh`). Must be polled by the connection's task, inside the connection's
    /// poll (the proxy's request future is), like [`HeadClock::set_releasable`]: the task's
    /// `select!` then polls [`HeadClock::expired`] after it. One wait at a time per connection
    /// (hyper serves an HTTP/1.1 connection's requests one after another).
    pub async fn response_within<F: Future>(
        &self,
        limit: Duration,
        mut wait: Pin<&mut F>,
    ) -> Option<F::Output> {
        let due = self
            .nanos_since_base()
            .saturating_add(limit.as_nanos().min(u128::from(u64::MAX)) as u64)
            .min(u64::MAX - 2);
        self.response_fired.store(false, Ordering::Relaxed);
        self.response_due.store(due + 1, Ordering::Relaxed);
        if due < self.armed_for.load(Ordering::Relaxed) {
            self.recheck.store(true, Ordering::Relaxed);
        }
        let _done = ResponseWait(self);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = wait.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            if self.response_fired.load(Ordering::Relaxed) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    fn nanos_since_base(&self) -> u64 {
        self.base.elapsed().as_nanos().min(u128::from(u64::MAX - 1)) as u64
    }

    /// A write to the client went through.
    fn write_moved(&self) {
        if self.blocked_since.load(Ordering::Relaxed) != 0 {
            self.blocked_since.store(0, Ordering::Relaxed);
            if self.in_flight.load(Ordering::Relaxed) == 0 {
                // The end of the last response was still being written (hyper is done with a
                // response once it has buffered its end): the connection is idle from now.
                self.idle_since
                    .store(self.nanos_since_base(), Ordering::Relaxed);
            }
        }
    }

    /// A write to the client could not go through (`cx` is the connection task's context).
    fn write_blocked(&self, cx: &Context<'_>) {
        if self.blocked_since.load(Ordering::Relaxed) == 0 {
            self.blocked_since
                .store(self.nanos_since_base() + 1, Ordering::Relaxed);
            // `expired` must see it and move its timer earlier; it may already have been
            // polled in this pass of the connection's `select!`.
            cx.waker().wake_by_ref();
        }
    }

    /// A complete request head arrived: the clock stops until the returned guard (carried by
    /// the response body) is dropped.
    pub fn request(self: &Arc<HeadClock>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Whether the request just read (its head complete) came without a body: with one, hyper
    /// may still be reading or draining it after the response, and the connection is not
    /// released when it falls idle.
    pub fn set_releasable(&self, bodiless: bool) {
        // A plain load first: on a connection of GETs the flag does not change.
        if self.releasable.load(Ordering::Relaxed) != bodiless {
            self.releasable.store(bodiless, Ordering::Relaxed);
            // Called from the service, inside the connection's poll; the connection's `select!`
            // polls `expired` after it (`biased`), so no wake is needed.
            self.recheck.store(bodiless, Ordering::Relaxed);
        }
    }

    /// Resolves once the connection has been idle, or reading a head, for `header` (then
    /// [`Expiry::Header`]), or writes to the client have been blocked for `send` (then
    /// [`Expiry::Send`]; that includes the end of a response hyper has buffered but could not
    /// write), or, when `release` is not zero, it has been idle for `release` after a request
    /// without a body (then [`Expiry::Release`]; the caller calls
    /// [`set_releasable`](Self::set_releasable)`(false)` before it waits again).
    ///
    /// Polled with the connection every time its task wakes, it polls its timer only until the
    /// timer holds the task's waker, once it has fired, or when writes start to block (a
    /// connection's task keeps its waker for its life; polling the `Sleep` each time cost ~200
    /// instructions per request, `bench/callgrind.sh`).
    pub async fn expired(&self, header: Duration, send: Duration, release: Duration) -> Expiry {
        let release_check = if release.is_zero() {
            header
        } else {
            release.min(header)
        };
        let sleep = tokio::time::sleep_until(self.base + header);
        tokio::pin!(sleep);
        let mut armed = false;
        let mut seen_blocked = 0;
        let limits = Limits {
            header,
            send,
            release: release_check,
        };
        std::future::poll_fn(|cx| {
            let blocked = self.blocked_since.load(Ordering::Relaxed);
            // The deadline only ever needs to move earlier when writes start to block; every
            // other change (a response ends, writes go through again) moves it later, which
            // is done when the timer fires.
            if armed
                && !sleep.is_elapsed()
                && (blocked == 0 || blocked == seen_blocked)
                && !self.recheck.load(Ordering::Relaxed)
            {
                return Poll::Pending;
            }
            seen_blocked = blocked;
            self.rearm(cx, sleep.as_mut(), &mut armed, blocked, &limits)
        })
        .await
    }

    /// [`HeadClock::expired`] past its fast path: what is due next, and its timer set for it.
    /// Out of line, so the fast path stays small enough to inline into the connection's loop.
    #[cold]
    #[inline(never)]
    fn rearm(
        &self,
        cx: &mut Context<'_>,
        mut sleep: Pin<&mut tokio::time::Sleep>,
        armed: &mut bool,
        blocked: u64,
        l: &Limits,
    ) -> Poll<Expiry> {
        self.recheck.store(false, Ordering::Relaxed);
        loop {
            let now = Instant::now();
            let response = self.response_due.load(Ordering::Relaxed);
            let response = (response != 0).then(|| self.base + Duration::from_nanos(response - 1));
            if response.is_some_and(|r| r <= now) {
                // The waiting request gives up when the connection is polled again.
                self.response_due.store(0, Ordering::Relaxed);
                self.response_fired.store(true, Ordering::Relaxed);
                cx.waker().wake_by_ref();
                continue;
            }
            let (due, why) = if blocked != 0 {
                let since = Duration::from_nanos(blocked - 1);
                (self.base + since + l.send, Expiry::Send)
            } else if self.in_flight.load(Ordering::Relaxed) > 0 {
                // A response is in progress: no head is due before it ends. With releases on,
                // look again after `release` (once a second on a busy connection), so one
                // that falls idle is released about on time.
                (now + l.release, Expiry::Header)
            } else {
                let idle =
                    self.base + Duration::from_nanos(self.idle_since.load(Ordering::Relaxed));
                if l.release < l.header && self.releasable.load(Ordering::Relaxed) {
                    (idle + l.release, Expiry::Release)
                } else {
                    (idle + l.header, Expiry::Header)
                }
            };
            if due <= now {
                self.armed_for.store(u64::MAX, Ordering::Relaxed);
                return Poll::Ready(why);
            }
            let due = response.map_or(due, |r| r.min(due));
            sleep.as_mut().reset(due);
            self.armed_for.store(
                due.saturating_duration_since(self.base)
                    .as_nanos()
                    .min(u128::from(u64::MAX)) as u64,
                Ordering::Relaxed,
            );
            // Outside tokio's cooperative budget: a `Sleep` polled with the budget spent
            // returns `Pending` without registering the waker, and the fast path above would
            // then never poll it again.
            *armed = std::pin::pin!(tokio::task::unconstrained(sleep.as_mut()))
                .poll(cx)
                .is_pending();
            if *armed {
                return Poll::Pending;
            }
        }
    }
}

/// The limits [`HeadClock::expired`] enforces (`release`: when to look at an idle connection
/// for release, `header` when releases are off).
struct Limits {
    header: Duration,
    send: Duration,
    release: Duration,
}

/// Ends a [`HeadClock::response_within`] wait, whichever way it ends.
struct ResponseWait<'a>(&'a HeadClock);

impl Drop for ResponseWait<'_> {
    fn drop(&mut self) {
        self.0.response_due.store(0, Ordering::Relaxed);
        self.0.response_fired.store(false, Ordering::Relaxed);
    }
}

/// Held while a request's response is not done; its drop restarts the clock.
#[derive(Debug)]
pub struct Busy(Arc<HeadClock>);

impl Drop for Busy {
    fn drop(&mut self) {
        let c = &self.0;
        if c.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            c.idle_since.store(c.nanos_since_base(), Ordering::Relaxed);
        }
    }
}

/// A response body that holds its request's [`Busy`]: hyper drops the body as soon as it has
/// written its end (or gives up on it), which is when the next head may start.
pub struct Tracked<B> {
    inner: B,
    _busy: Busy,
}

impl<B> Tracked<B> {
    /// `inner`, keeping the connection busy until it is dropped.
    pub fn new(inner: B, busy: Busy) -> Tracked<B> {
        Tracked { inner, _busy: busy }
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client connection's I/O, reporting to its [`HeadClock`] whether writes go through; reads
/// return what [`SendWatch::fill`] or [`SendWatch::replay`] set aside first.
pub struct SendWatch<S> {
    inner: S,
    clock: Arc<HeadClock>,
    replay: Bytes,
}

/// Most bytes [`SendWatch::fill`] reads at once: a typical request head, read again by the
/// parser from memory.
const FILL_MAX: usize = 4096;

impl<S> SendWatch<S> {
    /// `inner`, whose writes `clock` watches.
    pub fn new(inner: S, clock: Arc<HeadClock>) -> SendWatch<S> {
        SendWatch {
            inner,
            clock,
            replay: Bytes::new(),
        }
    }

    /// Reads will return `data` first (before anything set aside earlier and not read yet).
    pub fn replay(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        self.replay = if self.replay.is_empty() {
            data
        } else {
            let mut b = BytesMut::with_capacity(data.len() + self.replay.len());
            b.extend_from_slice(&data);
            b.extend_from_slice(&self.replay);
            b.freeze()
        };
    }

    /// Waits until the client sends something, without a buffer of its own in the meantime,
    /// and sets it aside for the next read (up to [`FILL_MAX`] bytes). `Ok(0)`: the client
    /// closed its side.
    pub async fn fill(&mut self) -> io::Result<usize>
    where
        S: AsyncRead + Unpin,
    {
        std::future::poll_fn(|cx| {
            let mut tmp = [0u8; FILL_MAX];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    let got = Bytes::copy_from_slice(rb.filled());
                    let rest = std::mem::take(&mut self.replay);
                    self.replay = got;
                    self.replay(rest);
                    Poll::Ready(Ok(n))
                }
            }
        })
        .await
    }

    fn note<T>(&self, p: Poll<T>, cx: &Context<'_>) -> Poll<T> {
        match p {
            Poll::Pending => self.clock.write_blocked(cx),
            Poll::Ready(_) => self.clock.write_moved(),
        }
        p
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.replay.is_empty() {
            let n = buf.remaining().min(self.replay.len());
            buf.put_slice(&self.replay[..n]);
            if n == self.replay.len() {
                // Not `advance`: an empty slice still holds its allocation.
                self.replay = Bytes::new();
            } else {
                self.replay.advance(n);
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendWatch<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(p, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(p, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(p, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection is closing (TLS: close_notify may still be queued): never released.
        self.clock.set_releasable(false);
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);
    const SEND: Duration = Duration::from_secs(5);

    /// Polls `expired` until it resolves; the virtual time it took.
    async fn time_to_expiry(clock: &Arc<HeadClock>) -> Duration {
        let start = Instant::now();
        assert_eq!(clock.expired(T, SEND, Duration::ZERO).await, Expiry::Header);
        start.elapsed()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Runs `script` beside `expired` on one task (as the connection's I/O and its deadline
    /// run): the expiry and the virtual time it came at. `script` must outlast it.
    async fn expiry_beside(
        clock: &Arc<HeadClock>,
        script: impl Future<Output = ()>,
    ) -> (Expiry, Duration) {
        beside(clock, Duration::ZERO, script).await
    }

    /// [`expiry_beside`] with releases after `release` (zero: none).
    async fn beside(
        clock: &Arc<HeadClock>,
        release: Duration,
        script: impl Future<Output = ()>,
    ) -> (Expiry, Duration) {
        let start = Instant::now();
        tokio::select! {
            e = clock.expired(T, SEND, release) => (e, start.elapsed()),
            () = script => panic!("the script ended before the connection expired"),
        }
    }

    /// A write from the task that polls `expired` blocks (`true`) or goes through.
    async fn write(clock: &Arc<HeadClock>, blocks: bool) {
        std::future::poll_fn(|cx| {
            if blocks {
                clock.write_blocked(cx);
            } else {
                clock.write_moved();
            }
            Poll::Ready(())
        })
        .await;
    }

    /// A request's wait for its origin's response head ends after its limit, on the
    /// connection's one timer: moved earlier when the wait ends before the timer's deadline,
    /// set again for the wait when it fires first; a wait that ends in time leaves nothing
    /// behind, and the connection itself does not expire. Polled as the server does: the
    /// request (inside the connection) before the clock, in one task.
    #[tokio::test(start_paused = true)]
    async fn a_response_wait_ends_on_the_connections_timer() {
        for release in [Duration::ZERO, secs(1)] {
            let clock = HeadClock::new();
            let script = async {
                let _busy = clock.request();
                let quick = std::pin::pin!(tokio::time::sleep(secs(1)));
                let quick = clock.response_within(secs(45), quick).await;
                assert_eq!(quick, Some(()), "release {release:?}");
                let mut waited = Vec::new();
                // Before the timer's deadline (moved), then past it (set again when it fires).
                for limit in [secs(5), secs(45), secs(2)] {
                    let t = Instant::now();
                    let never = std::pin::pin!(std::future::pending::<()>());
                    assert_eq!(clock.response_within(limit, never).await, None);
                    waited.push(t.elapsed());
                }
                waited
            };
            tokio::pin!(script);
            let expired = clock.expired(T, SEND, release);
            tokio::pin!(expired);
            let waited = tokio::select! {
                biased;
                w = &mut script => w,
                e = &mut expired => panic!("release {release:?}: the connection expired: {e:?}"),
            };
            for (w, limit) in waited.into_iter().zip([secs(5), secs(45), secs(2)]) {
                // The timer's resolution is a millisecond.
                assert!(
                    w >= limit && w <= limit + Duration::from_millis(2),
                    "release {release:?}: waited {w:?} for {limit:?}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_blocked_past_the_send_timeout_expires() {
        let clock = HeadClock::new();
        let script = async {
            tokio::time::sleep(secs(2)).await;
            let _busy = clock.request();
            write(&clock, false).await;
            tokio::time::sleep(secs(8)).await;
            write(&clock, true).await; // at 10 s, the client stops reading
            tokio::time::sleep(secs(3600)).await;
        };
        assert_eq!(
            expiry_beside(&clock, script).await,
            (Expiry::Send, secs(15))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn writes_that_go_through_again_restart_the_send_clock() {
        let clock = HeadClock::new();
        let script = async {
            let busy = clock.request();
            for _ in 0..3 {
                // Blocked for 4 s of every 10 (a slow reader), for 30 s in all.
                tokio::time::sleep(secs(6)).await;
                write(&clock, true).await;
                tokio::time::sleep(secs(4)).await;
                write(&clock, false).await;
            }
            tokio::time::sleep(secs(10)).await;
            drop(busy); // at 40 s
            tokio::time::sleep(secs(3600)).await;
        };
        // No send timeout; idle from 40 s.
        assert_eq!(
            expiry_beside(&clock, script).await,
            (Expiry::Header, secs(70))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_a_response_blocked_past_the_send_timeout_expires() {
        let clock = HeadClock::new();
        let script = async {
            drop(clock.request());
            write(&clock, true).await; // the response's last bytes, never read
            tokio::time::sleep(secs(3600)).await;
        };
        assert_eq!(expiry_beside(&clock, script).await, (Expiry::Send, SEND));
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_clock_starts_when_the_end_of_a_response_is_written() {
        let clock = HeadClock::new();
        let script = async {
            drop(clock.request());
            for _ in 0..3 {
                // The end of the response trickles out: blocked 4 s of every 5, for 15 s.
                write(&clock, true).await;
                tokio::time::sleep(secs(4)).await;
                write(&clock, false).await;
                tokio::time::sleep(secs(1)).await;
            }
            tokio::time::sleep(secs(3600)).await;
        };
        // Idle from the last write that went through, at 14 s.
        assert_eq!(
            expiry_beside(&clock, script).await,
            (Expiry::Header, secs(14) + T)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_read_while_writes_are_blocked_keeps_the_send_deadline() {
        let clock = HeadClock::new();
        let script = async {
            drop(clock.request());
            write(&clock, true).await; // at 0 s
            tokio::time::sleep(secs(2)).await;
            let _busy = clock.request(); // a pipelined request at 2 s
            tokio::time::sleep(secs(3600)).await;
        };
        assert_eq!(expiry_beside(&clock, script).await, (Expiry::Send, SEND));
    }

    const RELEASE: Duration = Duration::from_secs(1);

    /// Like [`expiry_beside`], with releases after [`RELEASE`].
    async fn release_beside(
        clock: &Arc<HeadClock>,
        script: impl Future<Output = ()>,
    ) -> (Expiry, Duration) {
        beside(clock, RELEASE, script).await
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_after_a_bodiless_request_is_released() {
        let clock = HeadClock::new();
        let script = async {
            tokio::time::sleep(secs(2)).await;
            let busy = clock.request();
            clock.set_releasable(true);
            // Busy for 10 s (the deadline is looked at again every second meanwhile).
            tokio::time::sleep(secs(10)).await;
            drop(busy); // idle from 12 s
            tokio::time::sleep(secs(3600)).await;
        };
        assert_eq!(
            release_beside(&clock, script).await,
            (Expiry::Release, secs(12) + RELEASE)
        );
        // Released once: the connection waits on for its header timeout.
        clock.set_releasable(false);
        assert_eq!(
            clock.expired(T, SEND, RELEASE).await,
            Expiry::Header,
            "not released twice"
        );
        assert_eq!(tokio::time::Instant::now() - clock.base, secs(12) + T);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_with_a_body_or_a_blocked_write_is_not_released() {
        let clock = HeadClock::new();
        let script = async {
            let busy = clock.request();
            clock.set_releasable(false); // a body: hyper may still drain it
            drop(busy);
            tokio::time::sleep(secs(3600)).await;
        };
        assert_eq!(release_beside(&clock, script).await, (Expiry::Header, T));

        let clock = HeadClock::new();
        let script = async {
            drop(clock.request());
            clock.set_releasable(true);
            write(&clock, true).await; // the response's end is not written yet
            tokio::time::sleep(secs(3600)).await;
        };
        assert_eq!(release_beside(&clock, script).await, (Expiry::Send, SEND));
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_period_past_the_header_timeout_never_releases() {
        let clock = HeadClock::new();
        drop(clock.request());
        clock.set_releasable(true);
        assert_eq!(clock.expired(T, SEND, T * 2).await, Expiry::Header);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_at_the_timeout() {
        let clock = HeadClock::new();
        assert_eq!(time_to_expiry(&clock).await, T);
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_restarts_when_a_response_ends() {
        let clock = HeadClock::new();
        let c = clock.clone();
        let requests = tokio::spawn(async move {
            // A request at 10 s whose response takes 50 s (past the timeout), then one at 70 s
            // answered at once.
            tokio::time::sleep(Duration::from_secs(10)).await;
            let busy = c.request();
            tokio::time::sleep(Duration::from_secs(50)).await;
            drop(busy);
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(c.request());
        });
        // Idle again at 70 s: expires at 100 s, not at 30 s (busy) nor at 90 s (from 60 s).
        assert_eq!(time_to_expiry(&clock).await, Duration::from_secs(100));
        requests.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_requests_keep_it_busy_until_the_last_ends() {
        let clock = HeadClock::new();
        let (a, b) = (clock.request(), clock.request());
        let c = clock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(40)).await;
            drop(a);
            tokio::time::sleep(Duration::from_secs(20)).await;
            drop(b);
            drop(c);
        });
        // Idle from 60 s.
        assert_eq!(time_to_expiry(&clock).await, Duration::from_secs(90));
    }
}
