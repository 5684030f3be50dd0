//! An origin's `read_timeout`: how long a response body may go without data while the gateway
//! waits for it (nginx `proxy_read_timeout`, HAProxy `timeout server`). An origin that stalls
//! mid-body would otherwise hold the client, and on HTTP/2 its stream slot, for as long as the
//! connection stays alive, which keep-alive PINGs do not bound: the origin answers them.
//!
//! The clock runs only while the body is polled and has nothing: a client that reads slowly
//! (the body is not polled) never makes it fire, and data waiting in the gateway is taken
//! before the clock is looked at. A body that always has data costs one flag; the timer is
//! allocated when the body first waits and reset each time it starts waiting again.
//!
//! On the benchmark paths (`bench/callgrind.sh`, 1 KiB over either pool) the first poll of a
//! body already has its data, so no timer is ever armed: the clock costs ~100 instructions per
//! request (a reference count and the flag checks).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::metrics::OriginMetrics;

/// One origin's limit, shared by its responses.
pub struct ReadLimit {
    timeout: Duration,
    origin: String,
    metrics: OriginMetrics,
}

impl ReadLimit {
    /// `timeout` for `origin`'s response bodies; a timeout counts in `metrics` as
    /// `kind="timeout"`.
    pub fn new(timeout: Duration, origin: &str, metrics: OriginMetrics) -> Arc<ReadLimit> {
        Arc::new(ReadLimit {
            timeout,
            origin: origin.to_string(),
            metrics,
        })
    }
}

/// The clock of one response body.
pub struct ReadTimer {
    limit: Arc<ReadLimit>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The body's last poll found nothing: the clock is running.
    waiting: bool,
    /// The timeout fired (reported once).
    fired: bool,
}

impl ReadTimer {
    /// A stopped clock.
    pub fn new(limit: Arc<ReadLimit>) -> ReadTimer {
        ReadTimer {
            limit,
            sleep: None,
            waiting: false,
            fired: false,
        }
    }

    /// The timeout has fired: the body is failed and must not be polled again.
    pub fn fired(&self) -> bool {
        self.fired
    }

    /// The body had a frame (or ended): the clock stops.
    pub fn moved(&mut self) {
        self.waiting = false;
    }

    /// The body has nothing now: starts the clock if it was stopped. `Ready` once it has run
    /// for the timeout (counted and logged the first time); otherwise `cx` is woken then.
    pub fn waiting(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired {
            return Poll::Ready(());
        }
        if !self.waiting {
            self.waiting = true;
            let due = Instant::now() + self.limit.timeout;
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(due),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(due))),
            }
        }
        let Some(sleep) = &mut self.sleep else {
            return Poll::Pending;
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.fired = true;
        self.limit.metrics.error("timeout");
        tracing::warn!(
            origin = %self.limit.origin,
            timeout = ?self.limit.timeout,
            "origin response body stalled past read_timeout: response cut"
        );
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(timeout: Duration) -> Arc<ReadLimit> {
        let metrics = crate::metrics::Metrics::new();
        ReadLimit::new(timeout, "app", metrics.origin("app"))
    }

    /// Polls `timer.waiting` until it is ready; the virtual time it took.
    async fn until_fired(timer: &mut ReadTimer) -> Duration {
        let start = Instant::now();
        std::future::poll_fn(|cx| timer.waiting(cx)).await;
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waiting_for_the_timeout_fires() {
        let mut t = ReadTimer::new(limit(Duration::from_secs(60)));
        assert_eq!(until_fired(&mut t).await, Duration::from_secs(60));
        // Once fired it stays fired, without counting again.
        assert!(std::future::poll_fn(|cx| Poll::Ready(t.waiting(cx).is_ready())).await);
    }

    #[tokio::test(start_paused = true)]
    async fn data_restarts_the_clock() {
        let mut t = ReadTimer::new(limit(Duration::from_secs(60)));
        for _ in 0..3 {
            // Waits 50 s, then a frame.
            let pending = std::future::poll_fn(|cx| Poll::Ready(t.waiting(cx).is_pending()));
            assert!(pending.await);
            tokio::time::sleep(Duration::from_secs(50)).await;
            t.moved();
        }
        // Time spent not waiting (the body not polled: a slow client) does not count.
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(until_fired(&mut t).await, Duration::from_secs(60));
    }
}
