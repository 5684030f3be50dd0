//! Shutdown's wake-up for the client and admin listeners and client connections: a flag,
//! and the waker of every task that waits for it, kept in one list per shard.
//!
//! A `watch` receiver per connection did the same at ~500 instructions per connection: the
//! receiver's clone and drop, and the registration of its `changed()` future with the
//! channel's `Notify` (an intrusive list under a lock, `bench/callgrind.sh` with `--close`).
//! Here a connection stores its task's waker once, in its own shard's list (no lock shared
//! between cores), and takes it out when it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Lists the wakers are spread over: a shard's connections use list `shard % LISTS`, other
/// threads' the last one.
const LISTS: usize = 8;

/// Set once, at shutdown; wakes every [`StopWait`] registered.
#[derive(Debug, Default)]
pub struct StopSignal {
    stopped: AtomicBool,
    lists: [Mutex<Slots>; LISTS],
}

/// Wakers in slots reused through a free list.
#[derive(Debug, Default)]
struct Slots {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl StopSignal {
    /// A signal not given yet.
    pub fn new() -> StopSignal {
        StopSignal::default()
    }

    /// Gives the signal: every wait registered or polled from now on resolves.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for list in &self.lists {
            let wakers: Vec<Waker> = lock(list)
                .wakers
                .iter_mut()
                .filter_map(Option::take)
                .collect();
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    /// Whether the signal was given.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Resolves once the signal is given. It keeps the waker of the task that polled it first
    /// (a connection's or listener's task keeps its waker for its life); polled again after
    /// that, it looks at the flag only: a connection's `select!` polls it every time the task
    /// wakes.
    pub fn wait(&self) -> StopWait<'_> {
        StopWait {
            signal: self,
            slot: None,
        }
    }
}

fn lock(list: &Mutex<Slots>) -> MutexGuard<'_, Slots> {
    list.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`StopSignal::wait`]'s future; its drop takes the waker out again.
#[derive(Debug)]
pub struct StopWait<'a> {
    signal: &'a StopSignal,
    /// The list and slot holding the waker, once registered.
    slot: Option<(usize, usize)>,
}

impl Future for StopWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.stopped() {
            return Poll::Ready(());
        }
        if self.slot.is_none() {
            let at = crate::shard::current().map_or(LISTS - 1, |s| s % LISTS);
            let mut slots = lock(&self.signal.lists[at]);
            let waker = Some(cx.waker().clone());
            let i = match slots.free.pop() {
                Some(i) => {
                    slots.wakers[i] = waker;
                    i
                }
                None => {
                    slots.wakers.push(waker);
                    slots.wakers.len() - 1
                }
            };
            drop(slots);
            self.slot = Some((at, i));
            // `stop` may have emptied the lists between the look above and the registration.
            if self.signal.stopped() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl Drop for StopWait<'_> {
    fn drop(&mut self) {
        if let Some((at, i)) = self.slot {
            let mut slots = lock(&self.signal.lists[at]);
            if let Some(w) = slots.wakers.get_mut(i) {
                *w = None;
                slots.free.push(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// Every waiting task wakes at the signal, whether it registered before it or polls after
    /// it; waits that ended give their slots back for later ones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_wait_ends_at_the_signal_and_slots_are_reused() {
        let signal = Arc::new(StopSignal::new());
        // Registered, then dropped before the signal: their slots are reused.
        for _ in 0..3 {
            let w = signal.wait();
            tokio::pin!(w);
            let polled = std::future::poll_fn(|cx| Poll::Ready(w.as_mut().poll(cx))).await;
            assert!(polled.is_pending());
        }
        assert_eq!(lock(&signal.lists[LISTS - 1]).wakers.len(), 1);
        let mut waiting = Vec::new();
        for _ in 0..50 {
            let s = signal.clone();
            waiting.push(tokio::spawn(async move { s.wait().await }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            waiting.iter().all(|t| !t.is_finished()),
            "ended before the signal"
        );
        signal.stop();
        for t in waiting {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("a wait outlived the signal")
                .expect("task");
        }
        // After the signal, a new wait ends at once.
        tokio::time::timeout(Duration::from_secs(1), signal.wait())
            .await
            .expect("a wait after the signal");
    }
}
