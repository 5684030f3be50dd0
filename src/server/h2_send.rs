//! `client.send_timeout` for HTTP/2 clients: a response stream that cannot be sent for that long
//! is abandoned, which releases the upstream stream (or HTTP/1.1 connection) it holds.
//!
//! An HTTP/2 client can stall one response without stalling its connection: it withholds the
//! stream's WINDOW_UPDATE (or the connection's), or stops reading the socket, while answering
//! PINGs. hyper then holds the response's next chunk until flow control lets it go and stops
//! polling the body, so the upstream stream behind it stays open, and its origin connection's
//! stream slot taken, for as long as the client likes: 128 such streams per connection, and
//! many connections, would push the origin pool to its limits for everyone. nginx's
//! `send_timeout` and Envoy's `stream_idle_timeout` bound the same wait per stream.
//!
//! How: the response body is wrapped in [`Guarded`], which hands hyper chunks of at most
//! [`PIECE`] (16 KiB). hyper polls the body for the next chunk only once the previous one has
//! (nearly) gone out, so when the wrapper hands out a chunk and the response is not complete,
//! the stream is waiting for the client until hyper polls it again; the wrapper records the
//! connection's tick at that moment. The connection's task runs
//! [`SendClock::expire`], which advances the tick every quarter of the timeout (only while the
//! connection has response bodies alive) and takes away the body of every stream that has
//! waited for at least four whole ticks, so between 1× and 1.25× the timeout. Dropping the body
//! cancels its upstream stream. If the client opens its window later, hyper sends what it had
//! buffered and then finds the body failed: it resets the stream (RST_STREAM INTERNAL_ERROR).
//! hyper cannot reset a stream it is waiting to send on, and keeps up to a [`PIECE`] for it:
//! if a given-up stream is still held four ticks (a whole timeout) later, `expire` returns and
//! the server closes the connection (GOAWAY, then a few seconds for the other streams).
//!
//! A client that accepts 16 KiB at least once per timeout (a slow but steady reader: 273 bytes
//! a second at the default 60 s) is never cut. A
//! response whose last chunk is in hyper's hands holds nothing upstream and is not timed.
//! Cost per stream: one allocation, a lock to register, and an uncontended lock per poll; the
//! tick is an atomic, so no clock is read per chunk.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

/// Whole ticks a stream may wait; a tick is a quarter of the timeout.
const TICKS: u64 = 4;

/// How long [`SendClock::expire`] waits before acting on a given-up stream that still looks
/// held, so that a stream the client let through in the same instant is released first.
const SETTLE: Duration = Duration::from_millis(100);

/// Largest chunk handed to hyper at once: one default DATA frame. hyper polls the body again
/// only once the previous chunk has (nearly) left, so the time between two polls is the time
/// the client takes to accept at most this much, whatever the origin's chunk size (up to
/// 64 KiB frames from an HTTP/2 origin): the timeout then measures a stall, not a slow reader.
pub const PIECE: usize = 16 * 1024;

/// One connection's clock, shared by its response bodies.
pub struct SendClock<B> {
    shared: Arc<Shared<B>>,
    period: Duration,
}

struct Shared<B> {
    /// Advanced by [`SendClock::expire`] every period while bodies are alive.
    tick: AtomicU64,
    /// The connection's bodies; entries of finished ones are pruned each tick, and by
    /// [`SendClock::guard`] whenever the list has doubled since the last prune (a busy
    /// connection with a long timeout would otherwise pile them up between ticks).
    streams: Mutex<Streams<B>>,
    /// A body registered while none was alive: the clock starts ticking.
    added: Notify,
}

struct Streams<B> {
    list: Vec<Weak<Slot<B>>>,
    /// Length after the last prune.
    pruned: usize,
}

impl<B> Streams<B> {
    fn prune(&mut self) {
        self.list.retain(|w| w.strong_count() > 0);
        self.pruned = self.list.len();
    }
}

struct Slot<B> {
    /// `tick + 1` when the body last handed out a chunk and has not been polled since; 0 while
    /// it is not waiting for the client.
    since: AtomicU64,
    /// The response body and the rest of a chunk larger than [`PIECE`]; `None` once the clock
    /// took them away (both are freed then, not when hyper next looks).
    held: Mutex<Option<Held<B>>>,
}

struct Held<B> {
    body: B,
    rest: Bytes,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<B> SendClock<B> {
    /// A clock for `timeout`.
    pub fn new(timeout: Duration) -> SendClock<B> {
        SendClock {
            shared: Arc::new(Shared {
                tick: AtomicU64::new(0),
                streams: Mutex::new(Streams {
                    list: Vec::new(),
                    pruned: 0,
                }),
                added: Notify::new(),
            }),
            period: (timeout / TICKS as u32).max(Duration::from_millis(1)),
        }
    }

    /// Wraps a response body of this connection.
    pub fn guard(&self, body: B) -> Guarded<B> {
        let slot = Arc::new(Slot {
            since: AtomicU64::new(0),
            held: Mutex::new(Some(Held {
                body,
                rest: Bytes::new(),
            })),
        });
        let was_empty = {
            let mut streams = lock(&self.shared.streams);
            if streams.list.len() >= (2 * streams.pruned).max(64) {
                streams.prune();
            }
            streams.list.push(Arc::downgrade(&slot));
            streams.list.len() == 1
        };
        if was_empty {
            // A permit if the clock is not waiting yet: it cannot miss this.
            self.shared.added.notify_one();
        }
        Guarded {
            slot,
            shared: self.shared.clone(),
        }
    }

    /// Runs the clock for the connection's life (a `select!` branch beside the connection);
    /// calls `expired` once for each body taken away. Returns only when a stream it gave up
    /// is still held by hyper a whole timeout later: the client never let it be reset, and
    /// hyper keeps up to a [`PIECE`] for it, so the caller closes the connection.
    pub async fn expire(&self, mut expired: impl FnMut()) {
        // Streams given up, with the tick at which they were.
        let mut given_up: Vec<(Weak<Slot<B>>, u64)> = Vec::new();
        loop {
            if lock(&self.shared.streams).list.is_empty() {
                self.shared.added.notified().await;
                continue;
            }
            tokio::time::sleep(self.period).await;
            let now = self.shared.tick.fetch_add(1, Ordering::AcqRel) + 1;
            // The live bodies, taken out of the list's lock: a slot is looked at (and a body
            // dropped, if hyper let go of it meanwhile) with no lock but its own held.
            let live: Vec<Arc<Slot<B>>> = {
                let mut streams = lock(&self.shared.streams);
                streams.prune();
                streams.list.iter().filter_map(Weak::upgrade).collect()
            };
            let mut taken = 0;
            for slot in &live {
                // Waiting since tick `since - 1`: whole ticks waited are `now - since`. Read
                // again under the body's lock: a poll running on another thread may just have
                // handed out a chunk (and set a newer tick).
                let waited = |since: u64| since != 0 && now.saturating_sub(since) >= TICKS;
                if !waited(slot.since.load(Ordering::Acquire)) {
                    continue;
                }
                let gone = {
                    let mut held = lock(&slot.held);
                    if waited(slot.since.load(Ordering::Acquire)) {
                        held.take()
                    } else {
                        None
                    }
                };
                if let Some(gone) = gone {
                    // Dropped outside the lock: cancels the upstream stream.
                    drop(gone);
                    taken += 1;
                    given_up.push((Arc::downgrade(slot), now));
                }
            }
            drop(live);
            for _ in 0..taken {
                expired();
            }
            let overdue = |given_up: &mut Vec<(Weak<Slot<B>>, u64)>| {
                given_up.retain(|(w, _)| w.strong_count() > 0);
                given_up
                    .iter()
                    .any(|(_, at)| now.saturating_sub(*at) >= TICKS)
            };
            // Looked at again a moment later: a client that opened the window just before
            // this tick is not closed because hyper's stream task has not run yet.
            if overdue(&mut given_up) {
                tokio::time::sleep(SETTLE.min(self.period)).await;
                if overdue(&mut given_up) {
                    return;
                }
            }
        }
    }
}

/// A response body timed by its connection's [`SendClock`].
pub struct Guarded<B> {
    slot: Arc<Slot<B>>,
    shared: Arc<Shared<B>>,
}

/// The error a body taken away by the clock ends with.
#[derive(Debug)]
pub struct SendTimedOut;

impl std::fmt::Display for SendTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("response blocked by the client past client.send_timeout")
    }
}

impl std::error::Error for SendTimedOut {}

/// Hands out the next piece of `data`, keeping the rest in `rest`.
fn piece(rest: &mut Bytes, mut data: Bytes) -> Bytes {
    if data.len() > PIECE {
        *rest = data.split_off(PIECE);
    }
    data
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: From<SendTimedOut>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let Guarded { slot, shared } = self.get_mut();
        slot.since.store(0, Ordering::Release);
        let mut held = lock(&slot.held);
        let Some(Held { body, rest }) = held.as_mut() else {
            return Poll::Ready(Some(Err(SendTimedOut.into())));
        };
        let r = if rest.is_empty() {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(piece(rest, data))))),
                    Err(f) => Poll::Ready(Some(Ok(f))),
                },
                other => return other,
            }
        } else {
            let data = std::mem::take(rest);
            Poll::Ready(Some(Ok(Frame::data(piece(rest, data)))))
        };
        if !rest.is_empty() || !body.is_end_stream() {
            let tick = shared.tick.load(Ordering::Acquire);
            slot.since.store(tick + 1, Ordering::Release);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        // A body taken away is not complete: its next poll fails (and hyper resets the stream).
        lock(&self.slot.held)
            .as_ref()
            .is_some_and(|h| h.rest.is_empty() && h.body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held = lock(&self.slot.held);
        let Some(h) = held.as_ref() else {
            return SizeHint::default();
        };
        let inner = h.body.size_hint();
        let rest = h.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::BoxError;
    use http_body_util::BodyExt;
    use tokio::task::JoinHandle;

    /// `n` one-byte chunks; complete (`is_end_stream`) once all are out, as a Content-Length
    /// body is.
    struct Chunks(usize);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if self.0 == 0 {
                return Poll::Ready(None);
            }
            self.0 -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }

        fn is_end_stream(&self) -> bool {
            self.0 == 0
        }
    }

    /// Runs the clock in the background; returns how many bodies it took.
    fn run(clock: &Arc<SendClock<Chunks>>) -> Arc<AtomicU64> {
        let taken = Arc::new(AtomicU64::new(0));
        let (c, t) = (clock.clone(), taken.clone());
        tokio::spawn(async move {
            c.expire(|| {
                t.fetch_add(1, Ordering::AcqRel);
            })
            .await
        });
        taken
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_not_polled_again_is_taken_after_the_timeout() {
        let clock = Arc::new(SendClock::new(Duration::from_secs(4)));
        let taken = run(&clock);
        let mut body = clock.guard(Chunks(3));
        assert!(body.frame().await.is_some());
        // 3.5 s: under the timeout.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(taken.load(Ordering::Acquire), 0);
        // By 1.25 × the timeout it is gone.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert_eq!(taken.load(Ordering::Acquire), 1);
        let next = body.frame().await;
        assert!(matches!(next, Some(Err(e)) if e.is::<SendTimedOut>()));
        // Not complete: hyper must not end the stream as if it were.
        assert!(!body.is_end_stream());
    }

    #[tokio::test(start_paused = true)]
    async fn finished_bodies_do_not_pile_up_between_ticks() {
        let clock = SendClock::new(Duration::from_secs(60));
        let live: Vec<_> = (0..10).map(|_| clock.guard(Chunks(1))).collect();
        for _ in 0..10_000 {
            drop(clock.guard(Chunks(1)));
        }
        let len = lock(&clock.shared.streams).list.len();
        assert!(
            len <= 2 * live.len() + 64,
            "{len} entries for 10 live bodies"
        );
    }

    /// One chunk of `n` bytes.
    struct Big(Option<Bytes>);

    impl Body for Big {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_none()
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_chunk_is_handed_out_in_pieces_each_timed() {
        let clock = Arc::new(SendClock::new(Duration::from_secs(4)));
        let taken = Arc::new(AtomicU64::new(0));
        let (c, t) = (clock.clone(), taken.clone());
        tokio::spawn(async move {
            c.expire(|| {
                t.fetch_add(1, Ordering::AcqRel);
            })
            .await
        });
        let data: Bytes = (0..40_000u32).map(|i| i as u8).collect();
        let mut body = clock.guard(Big(Some(data.clone())));
        assert_eq!(body.size_hint().exact(), Some(40_000));
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while let Some(f) = body.frame().await {
            let d = f.unwrap().into_data().unwrap();
            sizes.push(d.len());
            got.extend_from_slice(&d);
            if !body.is_end_stream() {
                assert_eq!(body.size_hint().exact(), Some((40_000 - got.len()) as u64));
                // Waiting for the client after each piece but the last, each under the timeout.
                tokio::time::sleep(Duration::from_millis(3900)).await;
            }
        }
        assert_eq!(sizes, [PIECE, PIECE, 40_000 - 2 * PIECE]);
        assert_eq!(got, data);
        assert_eq!(taken.load(Ordering::Acquire), 0);

        // The clock takes the body while a piece is still held back: the rest is not sent.
        let mut body = clock.guard(Big(Some(data)));
        assert!(body.frame().await.is_some());
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(taken.load(Ordering::Acquire), 1);
        assert!(matches!(body.frame().await, Some(Err(e)) if e.is::<SendTimedOut>()));
    }

    /// Runs the clock in the background; returns the count of bodies taken and the task,
    /// which ends when the clock asks for the connection to be closed.
    fn run_to_end(clock: &Arc<SendClock<Chunks>>) -> (Arc<AtomicU64>, JoinHandle<()>) {
        let taken = Arc::new(AtomicU64::new(0));
        let (c, t) = (clock.clone(), taken.clone());
        let task = tokio::spawn(async move {
            c.expire(|| {
                t.fetch_add(1, Ordering::AcqRel);
            })
            .await
        });
        (taken, task)
    }

    /// Sleeps until `secs` after `start` (paused time).
    async fn at(start: tokio::time::Instant, secs: f64) {
        tokio::time::sleep_until(start + Duration::from_secs_f64(secs)).await;
    }

    /// Timeout 4 s, so a tick every second: a body that handed out a chunk at 0 s has waited 4
    /// whole ticks at the 5th (5 s) and is given up; `expire` returns when hyper still holds it
    /// 4 ticks later (9 s) and again after the settling pause (9.1 s).
    #[tokio::test(start_paused = true)]
    async fn a_given_up_stream_still_held_a_timeout_later_ends_the_clock() {
        let start = tokio::time::Instant::now();
        let clock = Arc::new(SendClock::new(Duration::from_secs(4)));
        let (taken, task) = run_to_end(&clock);
        let mut held = clock.guard(Chunks(3));
        assert!(held.frame().await.is_some());
        at(start, 4.9).await;
        assert_eq!(taken.load(Ordering::Acquire), 0);
        at(start, 5.05).await;
        assert_eq!(taken.load(Ordering::Acquire), 1);
        at(start, 9.05).await;
        assert!(!task.is_finished(), "ended before the settling pause");
        at(start, 9.2).await;
        assert!(task.is_finished(), "still running with the stream held");
        drop(held);
    }

    /// A given-up stream that hyper lets go of (the client opened its window, hyper reset the
    /// stream) does not end the clock, even when it goes during the settling pause.
    #[tokio::test(start_paused = true)]
    async fn a_given_up_stream_released_in_time_keeps_the_connection() {
        for release_at in [6.5, 9.05] {
            let start = tokio::time::Instant::now();
            let clock = Arc::new(SendClock::new(Duration::from_secs(4)));
            let (taken, task) = run_to_end(&clock);
            // A body waiting on its origin (never polled, so never timed) keeps the clock
            // ticking after `held` goes, as on a connection with other streams.
            let _other = clock.guard(Chunks(3));
            let mut held = clock.guard(Chunks(3));
            assert!(held.frame().await.is_some());
            at(start, release_at).await;
            assert_eq!(taken.load(Ordering::Acquire), 1);
            drop(held);
            at(start, 30.0).await;
            assert!(
                !task.is_finished(),
                "released at {release_at} s, still closed"
            );
            task.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_polled_within_each_timeout_is_kept() {
        let clock = Arc::new(SendClock::new(Duration::from_secs(4)));
        let taken = run(&clock);
        let mut body = clock.guard(Chunks(5));
        for _ in 0..5 {
            assert!(matches!(body.frame().await, Some(Ok(_))));
            tokio::time::sleep(Duration::from_millis(3900)).await;
        }
        assert_eq!(taken.load(Ordering::Acquire), 0);
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waiting_on_its_origin_or_done_is_not_timed() {
        let clock = Arc::new(SendClock::new(Duration::from_secs(1)));
        let taken = run(&clock);
        // Never polled (hyper has not started it): not waiting for the client.
        let _idle = clock.guard(Chunks(2));
        // Its last chunk handed out: nothing upstream left to release.
        let mut done = clock.guard(Chunks(1));
        assert!(done.frame().await.is_some());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(taken.load(Ordering::Acquire), 0);
        // Dropped bodies leave the table; the clock then stops ticking.
        drop((_idle, done));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(lock(&clock.shared.streams).list.is_empty());
    }
}
