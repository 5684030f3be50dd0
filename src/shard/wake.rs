//! Cross-shard wake-ups, coalesced.
//!
//! Waking a task that belongs to another shard costs a system call: tokio's current-thread
//! scheduler puts the task on its runtime's inject queue and writes the I/O driver's eventfd,
//! whether the thread sleeps or not. With one origin connection on shard A serving clients on
//! both shards, every response for a client of shard B woke one task of B that way, and the
//! gateway made 4.3 system calls per request at 50 keep-alive clients against 2.6 when each
//! client's origin connection was on its own shard (`bench/syscalls.sh`).
//!
//! Each shard runs a relay task ([`Relay::run`]). A task whose future is wrapped in
//! [`Relayed`] gives the futures it polls a waker that, called on the task's own shard, wakes
//! the task directly, and called anywhere else queues the task on its shard's relay. Only the
//! first task queued while that relay is not yet due leads to a wake-up of the relay task (one
//! system call), which then wakes every queued task locally. Called on another shard, even
//! that wake-up waits: the calling shard's own relay sends it once the tasks runnable there
//! now have run, so a burst of requests from clients of shard B to a connection of shard A,
//! or of responses back, costs one wake-up per burst, not one per stream. A relay that found
//! tasks queued lately looks again after the tasks runnable on its shard have run, for as long
//! as the shard stays busy (it stays due meanwhile), so while cross-shard traffic lasts no
//! wake-up is needed at all; when the shard runs out of work, or [`QUIET_LOOKS`] looks in a
//! row find nothing, the relay waits to be woken and the shard can sleep.
//!
//! The counters `muxgate_shard_relayed_wakes_total{shard}` (tasks woken through the relay) and
//! `muxgate_shard_relay_runs_total{shard}` (relay runs that woke at least one) show the
//! coalescing: their ratio is the mean batch.
//!
//! Measured at 50 keep-alive clients (one origin connection): `bench/syscalls.sh` 4.1–4.6 →
//! 3.4–3.8 system calls per request with the relay, 3.2 with the [`anchor`] too;
//! `bench/compare.sh` (`compare-2026-11-27-1404.md`) CPU per request −22 %, 0.85× → 1.03× the
//! best peer's req/s.
//!
//! Tried and not kept (session 20, counters in a throw-away build, `bench/syscalls.sh` at 50
//! clients): 78–80 % of the relay wake-ups a shard holds back are for a shard that is parked
//! then, and a queued task ran 220–330 µs after it was queued. Two changes, using the
//! runtime's park hooks: send the wake-up at once when the receiving shard is parked, and have
//! a shard about to park take its relay's queue itself. The first left that delay at ~220 µs
//! (the woken shard runs the I/O work it finds first) and raised parks from 15,000 to 39,000
//! and context switches from 0.34 to 0.51 per request; neither change moved req/s beyond the
//! machine's spread in `bench/compare.sh` (`close-c50`, `ka-c50`, three runs).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use prometheus_client::metrics::counter::Counter;

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// The relay of the shard this thread runs (none outside shard threads).
    static HOME: RefCell<Option<Arc<Relay>>> = const { RefCell::new(None) };
    /// Its id, for the check on every wake (0: none).
    static HOME_ID: Cell<usize> = const { Cell::new(0) };
    /// Other shards' relays this shard has queued tasks on and still has to wake up.
    static OUTBOX: RefCell<Vec<Arc<Relay>>> = const { RefCell::new(Vec::new()) };
    /// Polls of [`Relayed`] tasks on this thread: whether the shard is busy.
    static POLLS: Cell<u64> = const { Cell::new(0) };
}

/// Looks in a row that found nothing queued after which a busy relay stops looking on every
/// pass and waits to be woken up again.
const QUIET_LOOKS: u32 = 8;

/// One shard's queue of tasks woken from other threads.
pub struct Relay {
    id: usize,
    state: Mutex<State>,
    relayed: Counter,
    runs: Counter,
}

#[derive(Default)]
struct State {
    queue: Vec<Waker>,
    /// The relay task has been woken (or a wake-up is on its way from another shard's
    /// outbox) and has not run since.
    due: bool,
    /// This shard's outbox has relays to wake up: the relay task is woken to send them.
    flush: bool,
    /// The relay task's waker (set on its first run).
    task: Option<Waker>,
}

impl Relay {
    /// A relay counting into `relayed` (tasks woken through it) and `runs` (its runs that
    /// woke at least one task).
    pub fn new(relayed: Counter, runs: Counter) -> Arc<Relay> {
        Arc::new(Relay {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(State::default()),
            relayed,
            runs,
        })
    }

    /// Makes the calling thread this relay's home: [`Relayed`] futures first polled on this
    /// thread use it. Called once by the shard thread, before its runtime starts.
    pub fn enter(self: &Arc<Self>) {
        HOME.with(|h| *h.borrow_mut() = Some(self.clone()));
        HOME_ID.with(|h| h.set(self.id));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned queue of wakers is still a queue.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The relay task: spawn it on the shard's runtime (on the thread that called
    /// [`Relay::enter`]). Never ends; it goes with the runtime.
    pub async fn run(self: Arc<Self>) {
        let mut batch = Vec::new();
        let mut outbox = Vec::new();
        let (mut polls, mut empty) = (0, QUIET_LOOKS);
        std::future::poll_fn(|cx| {
            let now = POLLS.with(|p| p.get());
            let busy = std::mem::replace(&mut polls, now) != now;
            let again = {
                let mut st = self.lock();
                if !st.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                    st.task = Some(cx.waker().clone());
                }
                st.flush = false;
                std::mem::swap(&mut st.queue, &mut batch);
                empty = if batch.is_empty() { empty + 1 } else { 0 };
                // Look again after the tasks runnable now (below), staying due, while tasks
                // come in or the shard is busy and some came in lately: nobody then needs to
                // wake the relay up. Otherwise the shard may sleep, and the next task queued
                // wakes it.
                st.due = empty == 0 || (busy && empty <= QUIET_LOOKS);
                st.due
            };
            if !batch.is_empty() {
                self.runs.inc();
                self.relayed.inc_by(batch.len() as u64);
            }
            for w in batch.drain(..) {
                w.wake();
            }
            OUTBOX.with(|o| std::mem::swap(&mut *o.borrow_mut(), &mut outbox));
            for relay in outbox.drain(..) {
                relay.wake_task();
            }
            if again {
                cx.waker().wake_by_ref();
            }
            Poll::<()>::Pending
        })
        .await
    }

    /// Queues `task` (a task of this relay's shard, woken from another thread); true if the
    /// relay task must now be woken up (it was not due).
    fn queue(&self, task: &Waker) -> bool {
        let mut st = self.lock();
        st.queue.push(task.clone());
        !std::mem::replace(&mut st.due, true)
    }

    /// Wakes the relay task up (None before its first run, which takes the queue anyway).
    fn wake_task(&self) {
        let task = self.lock().task.clone();
        if let Some(t) = task {
            t.wake();
        }
    }

    /// Has the relay task (of the calling thread's shard) send the outbox once the tasks
    /// runnable now have run.
    fn flush_soon(&self) {
        let first = !std::mem::replace(&mut self.lock().flush, true);
        if first {
            self.wake_task();
        }
    }
}

/// Queues `task` on `relay` (another shard's, or any relay when called outside shards).
fn relay_wake(relay: &Arc<Relay>, task: &Waker) {
    if !relay.queue(task) {
        return;
    }
    // `try_*`: a wake may come from anywhere, a thread's teardown included; whatever cannot be
    // deferred wakes the relay now.
    let deferred = HOME
        .try_with(|h| {
            let Ok(guard) = h.try_borrow() else {
                return false;
            };
            let Some(home) = guard.as_ref() else {
                return false;
            };
            let queued = OUTBOX
                .try_with(|o| {
                    o.try_borrow_mut()
                        .map(|mut o| o.push(relay.clone()))
                        .is_ok()
                })
                .unwrap_or(false);
            if queued {
                home.flush_soon();
            }
            queued
        })
        .unwrap_or(false);
    if !deferred {
        relay.wake_task();
    }
}

/// How far ahead [`anchor`] keeps a timer set.
pub const ANCHOR: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps a timer set at most [`ANCHOR`] ahead on the calling runtime, for as long as the
/// runtime runs. Spawn one per runtime.
///
/// tokio's timer driver wakes its runtime's I/O driver (a write to its eventfd, a system call)
/// whenever a timer is set earlier than the driver's next planned wake-up, or while none is
/// planned, and that even on the runtime's own thread, where nothing sleeps. Every request sets
/// and clears a timer or two (hyper's header read timeout, the response header timeout), so
/// whenever the previous ones were already gone when the driver last planned, each request
/// cost one such write (`perf record -e syscalls:sys_enter_write`: 61 % of the gateway's
/// writes at 50 clients came from there). With a timer always due within [`ANCHOR`], every
/// plan has a wake-up earlier than those timers, and setting them costs no system call; the
/// anchor itself costs two wake-ups a second.
pub async fn anchor() {
    loop {
        tokio::time::sleep(ANCHOR).await;
    }
}

/// The waker a [`Relayed`] future hands down.
struct RelayWaker {
    task: Waker,
    relay: Arc<Relay>,
}

impl Wake for RelayWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if HOME_ID.try_with(|h| h.get()).unwrap_or(0) == self.relay.id {
            self.task.wake_by_ref();
        } else {
            relay_wake(&self.relay, &self.task);
        }
    }
}

/// A future whose wake-ups from other threads go through its shard's relay (see the module).
/// Outside shard threads it is its inner future, unchanged.
pub struct Relayed<F> {
    inner: F,
    /// Resolved on the first poll: the thread that runs the task is its shard.
    relay: Option<Option<Arc<Relay>>>,
    /// The task's waker and the relay waker made for it (a task's waker rarely changes).
    waker: Option<(Waker, Waker)>,
}

/// Wraps `inner` (see [`Relayed`]).
pub fn relayed<F: Future + Unpin>(inner: F) -> Relayed<F> {
    Relayed {
        inner,
        relay: None,
        waker: None,
    }
}

impl<F: Future + Unpin> Future for Relayed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let relay = this
            .relay
            .get_or_insert_with(|| HOME.with(|h| h.borrow().clone()));
        let Some(relay) = relay else {
            return Pin::new(&mut this.inner).poll(cx);
        };
        POLLS.with(|p| p.set(p.get().wrapping_add(1)));
        let waker = match &this.waker {
            Some((task, w)) if task.will_wake(cx.waker()) => w,
            _ => {
                let w = Waker::from(Arc::new(RelayWaker {
                    task: cx.waker().clone(),
                    relay: relay.clone(),
                }));
                &this.waker.insert((cx.waker().clone(), w)).1
            }
        };
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A future that is pending until `flag` is set, and sends its waker on first poll.
    fn waiting(
        flag: Arc<std::sync::atomic::AtomicBool>,
        wakers: mpsc::Sender<Waker>,
        registered: Arc<AtomicUsize>,
    ) -> impl Future<Output = ()> + Unpin {
        let mut sent = false;
        std::future::poll_fn(move |cx| {
            if flag.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            if !sent {
                sent = true;
                let _ = wakers.send(cx.waker().clone());
                registered.fetch_add(1, Ordering::AcqRel);
            }
            Poll::Pending
        })
    }

    /// A shard-like thread: a current-thread runtime with a relay entered and running.
    fn shard(relay: Arc<Relay>) -> tokio::runtime::Runtime {
        relay.enter();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(relay.run());
        rt
    }

    #[test]
    fn wakes_from_another_thread_cost_the_shard_one_relay_run() {
        let relay = Relay::new(Counter::default(), Counter::default());
        let (relayed, runs) = (relay.relayed.clone(), relay.runs.clone());
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (wtx, wrx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (blocked_tx, blocked_rx) = mpsc::channel::<()>();
        let f = flag.clone();
        let registered = Arc::new(AtomicUsize::new(0));
        let shard_thread = std::thread::spawn(move || {
            let rt = shard(relay);
            rt.block_on(async move {
                let tasks = spawn_ten(&f, &wtx, &registered);
                // Let the ten register their wakers, then keep the thread busy (blocked) while
                // the other thread wakes them all.
                while registered.load(Ordering::Acquire) < 10 {
                    tokio::task::yield_now().await;
                }
                // From here to the first await the runtime runs nothing else: a wake sent
                // after this message cannot be relayed before all ten are queued.
                blocked_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                for t in tasks {
                    t.await.unwrap();
                }
            });
        });
        let wakers: Vec<Waker> = (0..10).map(|_| wrx.recv().unwrap()).collect();
        // Not before the shard thread is past its yield loop: a wake during one of its yields
        // let the relay run early, once for some of the ten and again for the rest.
        blocked_rx.recv().unwrap();
        flag.store(true, Ordering::Release);
        for w in &wakers {
            w.wake_by_ref();
        }
        go_tx.send(()).unwrap();
        shard_thread.join().unwrap();
        assert_eq!(relayed.get(), 10, "every task woken through the relay");
        assert_eq!(runs.get(), 1, "one relay run for the ten wakes");
    }

    async fn relayed_task(f: impl Future<Output = ()> + Unpin) {
        relayed(f).await
    }

    /// Ten relayed tasks on the calling runtime, each [`waiting`] for `flag`.
    fn spawn_ten(
        flag: &Arc<std::sync::atomic::AtomicBool>,
        wakers: &mpsc::Sender<Waker>,
        registered: &Arc<AtomicUsize>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..10)
            .map(|_| {
                let w = waiting(flag.clone(), wakers.clone(), registered.clone());
                tokio::spawn(relayed_task(w))
            })
            .collect()
    }

    #[test]
    fn wakes_on_the_tasks_own_shard_skip_the_relay() {
        let relay = Relay::new(Counter::default(), Counter::default());
        let relayed_count = relay.relayed.clone();
        let rt = shard(relay);
        rt.block_on(async {
            let t = tokio::spawn(relayed_task(Box::pin(async {
                for _ in 0..5 {
                    tokio::task::yield_now().await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            })));
            t.await.unwrap();
        });
        assert_eq!(relayed_count.get(), 0);
    }

    /// Wakes from a task of another shard are deferred to that shard's relay, which sends
    /// one wake-up for the burst after its runnable tasks have run; every task still wakes.
    #[test]
    fn wakes_from_another_shard_arrive_in_one_wake_up() {
        let (a, b) = (
            Relay::new(Counter::default(), Counter::default()),
            Relay::new(Counter::default(), Counter::default()),
        );
        let (relayed, runs) = (b.relayed.clone(), b.runs.clone());
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let registered = Arc::new(AtomicUsize::new(0));
        let (wtx, wrx) = mpsc::channel();
        let (f, r) = (flag.clone(), registered.clone());
        // Shard b: ten tasks waiting for the flag.
        let shard_b = std::thread::spawn(move || {
            let rt = shard(b);
            rt.block_on(async move {
                for t in spawn_ten(&f, &wtx, &r) {
                    t.await.unwrap();
                }
            });
        });
        let wakers: Vec<Waker> = (0..10).map(|_| wrx.recv().unwrap()).collect();
        while registered.load(Ordering::Acquire) < 10 {
            std::thread::yield_now();
        }
        // Shard a: one task sets the flag and wakes all ten.
        let shard_a = std::thread::spawn(move || {
            let rt = shard(a);
            rt.block_on(async move {
                tokio::spawn(async move {
                    flag.store(true, Ordering::Release);
                    for w in &wakers {
                        w.wake_by_ref();
                    }
                })
                .await
                .unwrap();
            });
        });
        shard_a.join().unwrap();
        shard_b.join().unwrap();
        assert_eq!(relayed.get(), 10);
        assert_eq!(runs.get(), 1, "one relay run for the burst");
    }

    #[test]
    fn outside_a_shard_the_future_is_unchanged() {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
            let waker_from = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(5));
                let _ = tx.send(7);
            });
            let mut f = relayed(rx);
            assert_eq!(rt.block_on(&mut f).unwrap(), 7);
            assert!(matches!(f.relay, Some(None)));
            waker_from.join().unwrap();
        })
        .join()
        .unwrap();
    }
}
