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

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
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
}

impl HeadClock {
    /// A clock for a connection that opens now (idle from now).
    pub fn new() -> Arc<HeadClock> {
        Arc::new(HeadClock {
            base: Instant::now(),
            idle_since: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
        })
    }

    /// A complete request head arrived: the clock stops until the returned guard (carried by
    /// the response body) is dropped.
    pub fn request(self: &Arc<HeadClock>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Resolves once the connection has been idle, or reading a head, for `timeout`.
    ///
    /// Polled with the connection every time its task wakes, it polls its timer only until the
    /// timer holds the task's waker and once it has fired ([`super::poll_armed`]; polling the
    /// `Sleep` each time cost ~200 instructions per request, `bench/callgrind.sh`).
    pub async fn expired(&self, timeout: Duration) {
        let sleep = tokio::time::sleep_until(self.base + timeout);
        tokio::pin!(sleep);
        loop {
            super::poll_armed(sleep.as_mut(), |s| s.is_elapsed()).await;
            let now = Instant::now();
            let due = if self.in_flight.load(Ordering::Relaxed) > 0 {
                // A response is in progress: nothing can expire before it ends.
                now + timeout
            } else {
                let since = Duration::from_nanos(self.idle_since.load(Ordering::Relaxed));
                self.base + since + timeout
            };
            if due <= now {
                return;
            }
            sleep.as_mut().reset(due);
        }
    }
}

/// Held while a request's response is not done; its drop restarts the clock.
#[derive(Debug)]
pub struct Busy(Arc<HeadClock>);

impl Drop for Busy {
    fn drop(&mut self) {
        let c = &self.0;
        if c.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            let since = c.base.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
            c.idle_since.store(since, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    /// Polls `expired` until it resolves; the virtual time it took.
    async fn time_to_expiry(clock: &Arc<HeadClock>) -> Duration {
        let start = Instant::now();
        clock.expired(T).await;
        start.elapsed()
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
