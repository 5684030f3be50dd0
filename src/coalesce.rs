//! Write coalescing for the task that drives a multiplexed HTTP/2 connection to an origin.
//!
//! Each stream's task hands its frames to the connection and wakes the connection's task, and
//! tokio runs a task woken that way next, before the other runnable tasks. The connection then
//! wrote one TLS record, one `writev`, for nearly every stream: 0.49 upstream writes per
//! proxied request at 200 clients (`bench/syscalls.sh`), each of them waking the origin. An
//! event loop (nghttpx, HAProxy) instead writes once per turn, after every ready client has
//! been read.
//!
//! [`Coalesce`] does the same here: when its task is polled it first re-queues the task
//! behind the tasks already runnable and returns; the next poll drives the connection, which
//! then finds all their frames and writes them together. Nothing waits for a timer: under
//! light load the run queue is empty and the connection runs at once.
//!
//! Measured with `bench/syscalls.sh` (200 keep-alive clients, 100,000 requests), the build
//! without it and the build with it alternating, 3 runs each: system calls per request
//! 2.89–2.97 → 2.59–2.62, gateway CPU per 1,000 requests median 25.5 → 23.7 ms (runs
//! 23.7–26.3 and 23.0–27.1: the machine is shared and noisy).
//!
//! Not used for HTTP/2 client connections (hyper's server): there `bench/h2load.sh` showed no
//! gain beyond its noise (TLS 43,041 and 46,847 req/s with it, 50,192 without).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Polls `inner` only on every second poll; the first re-queues the task (see the module).
#[derive(Debug)]
pub struct Coalesce<F> {
    inner: F,
    deferred: bool,
}

/// Wraps a connection future so its writes are coalesced (see the module).
pub fn coalesce<F: Future + Unpin>(inner: F) -> Coalesce<F> {
    Coalesce {
        inner,
        deferred: false,
    }
}

impl<F: Future + Unpin> Future for Coalesce<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if !self.deferred {
            // A task that wakes itself while it runs is queued behind the runnable ones (not
            // in tokio's "run next" slot). Wakers `inner` registered earlier stay registered.
            self.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.deferred = false;
        Pin::new(&mut self.inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::{Arc, Mutex};

    fn log() -> Arc<Mutex<Vec<&'static str>>> {
        Arc::new(Mutex::new(Vec::new()))
    }

    fn push(l: &Arc<Mutex<Vec<&'static str>>>, what: &'static str) {
        l.lock().unwrap_or_else(|p| p.into_inner()).push(what);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_connection_runs_after_the_tasks_already_runnable() {
        for coalesced in [false, true] {
            let l = log();
            let (l1, l2) = (l.clone(), l.clone());
            let conn = poll_fn(move |_| {
                push(&l1, "connection");
                Poll::Ready(())
            });
            // Spawned first, so without coalescing it runs first.
            let a = if coalesced {
                tokio::spawn(coalesce(conn))
            } else {
                tokio::spawn(conn)
            };
            let b = tokio::spawn(async move { push(&l2, "stream") });
            a.await.unwrap_or_else(|e| panic!("{e}"));
            b.await.unwrap_or_else(|e| panic!("{e}"));
            let got = l.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let want = if coalesced {
                ["stream", "connection"]
            } else {
                ["connection", "stream"]
            };
            assert_eq!(got, want, "coalesced: {coalesced}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_wake_costs_at_most_two_polls_and_never_spins() {
        let polls = Arc::new(Mutex::new(0u32));
        let p = polls.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let conn = poll_fn(move |cx| {
            *p.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            loop {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(())) => continue,
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        });
        let task = tokio::spawn(coalesce(conn));
        for _ in 0..10 {
            tx.send(()).unwrap_or_else(|e| panic!("{e}"));
            // Let the task run until it is idle again.
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
        }
        // Idle: the inner future was polled once per message (plus the first poll), not in
        // a loop.
        let n = *polls.lock().unwrap_or_else(|e| e.into_inner());
        assert!((10..=11).contains(&n), "inner polls: {n}");
        drop(tx);
        task.await.unwrap_or_else(|e| panic!("{e}"));
    }
}
