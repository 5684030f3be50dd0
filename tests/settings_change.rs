//! An origin changes SETTINGS_MAX_CONCURRENT_STREAMS in the middle of a connection
//! (RFC 9113 §6.5.2): the pool follows the new limit on the same connection.
//!
//! The origin is a raw HTTP/2 peer (`support::h2raw`) on one connection (`max_connections = 1`):
//! it advertises a first limit, answers every request after [`DELAY`] (per stream, so several
//! are in flight), and after its `after`-th request sends a second SETTINGS frame with the new
//! limit. It watches the streams the gateway opens:
//!
//! - Until it sends the change, no more than the first limit are open at once.
//! - The gateway's SETTINGS ACK for the change (its second ACK: ACKs come in order, §6.5.3)
//!   says the gateway applied the new limit. From then on the gateway may not open a stream
//!   unless that keeps it within the new limit (§5.1.2), counting the streams still open from
//!   before: streams opened after the ACK are never more than the new limit at once, and none
//!   of them is opened while that would put the total above it.
//!
//! The origin counts a stream closed just before it writes the response's END_STREAM, before
//! the gateway can know of it, so its count is never above the gateway's own.
//!
//! On the gateway side a sampler watches the pool's own count (`in_flight` against
//! `max_streams`, from [`muxgate::upstream::OriginPool::stats`]): once the count is within the
//! current limit it stays there — a released slot is never handed on above a lowered limit.

mod support;

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use muxgate::testkit::pki::{Pki, PkiFiles};
use muxgate::upstream::OriginPool;
use muxgate::Gateway;
use support::h2raw::*;
use support::proxy_kit::bounded;
use support::*;
use tokio::task::{JoinHandle, JoinSet};

/// The origin's name in the gateway config.
const NAME: &str = "settings";
/// The Host the clients send.
const HOST: &str = "settings.test";
/// How long the origin takes to answer each request.
const DELAY: Duration = Duration::from_millis(200);
/// Concurrent client requests per test.
const REQUESTS: usize = 60;

/// One connection, no PINGs, and time enough to queue behind a limit of 2.
const CONFIG: &str = "max_connections = 1\nkeepalive_interval = \"0s\"\n\
                      pending_timeout = \"30s\"\nresponse_header_timeout = \"30s\"\n";

/// What the origin advertises: `initial`, then `changed` after its `after`-th request.
#[derive(Debug, Clone, Copy)]
struct Plan {
    initial: u32,
    changed: u32,
    after: u64,
}

/// What the origin saw on its connection.
#[derive(Debug, Default)]
struct Seen {
    /// Request HEADERS received.
    requests: u64,
    /// Streams open now (request received, response not yet written).
    open: HashSet<u32>,
    /// Most streams open at once, overall.
    max_open: usize,
    /// Most streams open at once before the changed SETTINGS was sent.
    max_open_before_change: usize,
    /// The changed SETTINGS was sent.
    change_sent: bool,
    /// SETTINGS ACKs received from the gateway.
    acks: u64,
    /// The gateway's ACK for the changed SETTINGS arrived.
    change_acked: bool,
    /// Streams open when that ACK arrived.
    open_at_ack: usize,
    /// Streams opened after that ACK and still open.
    new_open: HashSet<u32>,
    /// Streams opened after that ACK, in all.
    opened_after_ack: u64,
    /// Most streams opened after the ACK open at once.
    max_new_open: usize,
    /// Most streams open in all (old and new) right after a stream was opened after the ACK.
    max_total_at_new_open: usize,
    /// RST_STREAM frames received.
    resets: u64,
    /// Frames the script did not expect (should stay empty).
    oddities: Vec<String>,
}

impl Seen {
    /// A request's HEADERS arrived on `id`; returns whether to send the changed SETTINGS now.
    fn opened(&mut self, id: u32, plan: Plan) -> bool {
        self.requests += 1;
        if !self.open.insert(id) {
            self.oddities
                .push(format!("HEADERS again on open stream {id}"));
        }
        let n = self.open.len();
        self.max_open = self.max_open.max(n);
        if !self.change_sent {
            self.max_open_before_change = self.max_open_before_change.max(n);
        }
        if self.change_acked {
            self.new_open.insert(id);
            self.opened_after_ack += 1;
            self.max_new_open = self.max_new_open.max(self.new_open.len());
            self.max_total_at_new_open = self.max_total_at_new_open.max(n);
        }
        if !self.change_sent && self.requests == plan.after {
            self.change_sent = true;
            return true;
        }
        false
    }

    /// The response on `id` is about to be written (or the gateway reset the stream).
    fn closed(&mut self, id: u32) {
        self.open.remove(&id);
        self.new_open.remove(&id);
    }

    /// A SETTINGS ACK arrived. The first answers the server preface, the second the change.
    fn settings_ack(&mut self) {
        self.acks += 1;
        match self.acks {
            1 => {}
            2 if self.change_sent => {
                self.change_acked = true;
                self.open_at_ack = self.open.len();
            }
            n => self.oddities.push(format!(
                "SETTINGS ACK #{n} (change sent: {})",
                self.change_sent
            )),
        }
    }
}

fn lock(seen: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

/// The origin's side of one connection: SETTINGS with `plan.initial`, then every request is
/// answered `200 ok` after [`DELAY`], and after the `plan.after`-th request a SETTINGS frame
/// with `plan.changed` goes out. SETTINGS and PINGs from the gateway are ACKed at once.
async fn serve(p: Peer, plan: Plan, seen: Arc<Mutex<Seen>>) -> io::Result<()> {
    let Peer { mut r, w } = p;
    r.preface().await?;
    let w = Arc::new(tokio::sync::Mutex::new(w));
    w.lock()
        .await
        .send(&settings(&[(
            SETTINGS_MAX_CONCURRENT_STREAMS,
            plan.initial,
        )]))
        .await?;
    let mut answers: JoinSet<io::Result<()>> = JoinSet::new();
    loop {
        let f = r.frame().await?;
        match f.kind {
            SETTINGS if f.flags & ACK == 0 => {
                w.lock().await.send(&frame(SETTINGS, ACK, 0, &[])).await?;
            }
            SETTINGS => lock(&seen).settings_ack(),
            PING if f.flags & ACK == 0 => {
                w.lock()
                    .await
                    .send(&frame(PING, ACK, 0, &f.payload))
                    .await?;
            }
            RST_STREAM => {
                let mut s = lock(&seen);
                s.resets += 1;
                s.closed(f.stream);
            }
            HEADERS => {
                let id = f.stream;
                if f.flags & END_HEADERS == 0 || f.flags & END_STREAM == 0 {
                    lock(&seen)
                        .oddities
                        .push(format!("request HEADERS flags {:#x} on {id}", f.flags));
                }
                let change = lock(&seen).opened(id, plan);
                if change {
                    w.lock()
                        .await
                        .send(&settings(&[(
                            SETTINGS_MAX_CONCURRENT_STREAMS,
                            plan.changed,
                        )]))
                        .await?;
                }
                let (w, seen) = (w.clone(), seen.clone());
                answers.spawn(async move {
                    tokio::time::sleep(DELAY).await;
                    let mut w = w.lock().await;
                    lock(&seen).closed(id);
                    w.ok(id, b"ok\n").await
                });
            }
            _ => {}
        }
        while let Some(done) = answers.try_join_next() {
            if let Ok(Err(e)) = done {
                return Err(e);
            }
        }
    }
}

/// What the sampler saw of the pool.
#[derive(Debug, Default)]
struct PoolSeen {
    samples: u64,
    /// Most connections at once.
    max_conns: usize,
    /// Samples `(in_flight, max_streams)` that show a slot handed out above the current limit:
    /// `in_flight` above `max_streams` after it had been within that limit, or growing while
    /// above it.
    over_limit: Vec<(usize, usize)>,
    /// Longest stretch with `in_flight` above `max_streams`. After a lowered limit that lasts
    /// until enough of the streams open from before have ended: about [`DELAY`], or twice that
    /// for a slot leased just before the change whose stream h2 could open only after them. A
    /// pool that handed released slots on to waiters regardless of the limit would stay above
    /// it for the rest of the run (seconds).
    longest_over: Duration,
    /// Most streams in flight while the pool's limit was `plan.changed`.
    max_in_flight_at_changed: usize,
    /// Most streams in flight while the pool's limit was `plan.initial`.
    max_in_flight_at_initial: usize,
}

/// Samples `pool.stats()` every 2 ms until `stop`.
fn sample_pool(pool: Arc<OriginPool>, plan: Plan, stop: Arc<AtomicBool>) -> JoinHandle<PoolSeen> {
    tokio::spawn(async move {
        let mut seen = PoolSeen::default();
        let (mut settled, mut last_max, mut last_in_flight) = (true, usize::MAX, 0);
        let mut over_since: Option<Instant> = None;
        while !stop.load(Ordering::SeqCst) {
            let stats = pool.stats();
            let now = Instant::now();
            seen.samples += 1;
            seen.max_conns = seen.max_conns.max(stats.len());
            if let Some(c) = stats.first() {
                // The pool reads the limit under its lock when it hands out a slot, so once a
                // sample shows a limit, no later slot was handed out under an older one.
                let same_limit = c.max_streams == last_max;
                if c.max_streams < last_max {
                    // A lowered limit: the streams already open may exceed it for a while.
                    settled = false;
                }
                if c.in_flight <= c.max_streams {
                    settled = true;
                    over_since = None;
                } else {
                    let since = *over_since.get_or_insert(now);
                    seen.longest_over = seen.longest_over.max(now - since);
                    if settled || (same_limit && c.in_flight > last_in_flight) {
                        seen.over_limit.push((c.in_flight, c.max_streams));
                    }
                }
                if c.max_streams == plan.changed as usize {
                    seen.max_in_flight_at_changed = seen.max_in_flight_at_changed.max(c.in_flight);
                }
                if c.max_streams == plan.initial as usize {
                    seen.max_in_flight_at_initial = seen.max_in_flight_at_initial.max(c.in_flight);
                }
                (last_max, last_in_flight) = (c.max_streams, c.in_flight);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen
    })
}

/// The raw origin and a gateway in front of it.
struct Setup {
    gw: Gateway,
    origin: RawOrigin,
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    _files: PkiFiles,
}

async fn setup(plan: Plan) -> Setup {
    init();
    let pki = Pki::localhost().expect("pki");
    let files = pki.write().expect("pki files");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let origin = raw_origin(&pki, move |n, p| {
        let s = s.clone();
        async move {
            if n != 1 {
                // Only one connection is expected; serve others alike but keep them apart.
                return serve(p, plan, Arc::new(Mutex::new(Seen::default()))).await;
            }
            serve(p, plan, s).await
        }
    })
    .await;
    let url = format!("https://localhost:{}", origin.addr.port());
    let toml = gateway_toml(
        "",
        &origin_toml(NAME, &[HOST], &url, Some(&files.ca), CONFIG),
    );
    let gw = start_gateway(&toml).await;
    let addr = gw.http_addrs[0];
    Setup {
        gw,
        origin,
        addr,
        seen,
        _files: files,
    }
}

/// Everything a run produced.
struct Run {
    elapsed: Duration,
    pool: PoolSeen,
    stats: Vec<muxgate::upstream::ConnStats>,
}

/// Sends [`REQUESTS`] concurrent GETs (one client connection each) through the gateway and
/// checks what holds for either direction of change: every answer is `200 ok`, one connection
/// carried them all, each request reached the origin once, the initial limit held until the
/// change was sent, the gateway ACKed both SETTINGS frames, and the pool never handed out a
/// slot above its current limit.
async fn run(s: &Setup, plan: Plan) -> Run {
    let pool = s.gw.origin(NAME).expect("origin pool").clone();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_pool(pool.clone(), plan, stop.clone());
    let t0 = Instant::now();
    let responses = get_concurrent(s.addr, HOST, "/", REQUESTS).await;
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    let pool_seen = sampler.await.expect("sampler");
    for r in &responses {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "ok\n");
    }
    assert_eq!(responses.len(), REQUESTS);
    assert!(
        wait_until(Duration::from_secs(3), || pool
            .stats()
            .iter()
            .all(|c| c.in_flight == 0))
        .await,
        "{:?}",
        pool.stats()
    );
    let stats = pool.stats();
    let seen = lock(&s.seen);
    eprintln!(
        "{plan:?}: {elapsed:?}; origin: {} requests, max open {} (before the change {}), \
         {} open at the ACK, {} opened after it, at most {} of them at once, at most {} in all \
         when one opened, {} resets; pool: {} samples, max in flight {} at the initial limit, \
         {} at the changed limit, longest above the limit {:?}; stats {stats:?}",
        seen.requests,
        seen.max_open,
        seen.max_open_before_change,
        seen.open_at_ack,
        seen.opened_after_ack,
        seen.max_new_open,
        seen.max_total_at_new_open,
        seen.resets,
        pool_seen.samples,
        pool_seen.max_in_flight_at_initial,
        pool_seen.max_in_flight_at_changed,
        pool_seen.longest_over,
    );
    assert!(seen.oddities.is_empty(), "{:?}", seen.oddities);
    assert_eq!(
        s.origin.connections(),
        1,
        "one connection carries everything"
    );
    assert_eq!(pool_seen.max_conns, 1);
    assert_eq!(
        seen.requests, REQUESTS as u64,
        "every request reaches the origin exactly once"
    );
    assert_eq!(seen.resets, 0, "no stream was reset");
    assert!(seen.open.is_empty(), "{:?}", seen.open);
    assert!(seen.change_sent);
    assert_eq!(
        seen.acks, 2,
        "the gateway ACKs the preface SETTINGS and the change"
    );
    assert!(seen.change_acked);
    assert!(
        seen.max_open_before_change <= plan.initial as usize,
        "{} streams open under a limit of {}",
        seen.max_open_before_change,
        plan.initial
    );
    assert!(
        seen.max_open <= plan.initial.max(plan.changed) as usize,
        "{} streams open at once",
        seen.max_open
    );
    assert!(
        pool_seen.over_limit.is_empty(),
        "the pool handed out slots above its limit: (in_flight, max_streams) = {:?}",
        pool_seen.over_limit
    );
    assert!(
        pool_seen.longest_over < DELAY * 3,
        "the pool stayed above its lowered limit for {:?}: released slots were handed on",
        pool_seen.longest_over
    );
    assert!(pool_seen.samples > 100, "{} samples", pool_seen.samples);
    Run {
        elapsed,
        pool: pool_seen,
        stats,
    }
}

/// The origin lowers its limit from 8 to 2 after 20 requests, with 60 in flight or queued: every
/// request still gets its 200 on the same connection; before the change the origin never sees
/// more than 8 streams; once the gateway ACKed the new SETTINGS, the streams it opens are never
/// more than 2 at once, and are opened only when that keeps the total (with the streams still
/// open from before) within 2; the pool reports `max_streams == 2` at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowered_max_concurrent_streams_is_honoured_mid_connection() {
    let _serial = serial().await;
    bounded(60, async {
        let plan = Plan {
            initial: 8,
            changed: 2,
            after: 20,
        };
        let s = setup(plan).await;
        let run = run(&s, plan).await;
        let seen = lock(&s.seen);
        assert_eq!(
            seen.max_open_before_change, 8,
            "the burst should fill the first limit (else the test proves little)"
        );
        assert!(
            seen.opened_after_ack >= 30,
            "only {} streams were opened after the ACK",
            seen.opened_after_ack
        );
        assert!(
            seen.max_new_open <= 2,
            "{} streams opened after the ACK of MAX_CONCURRENT_STREAMS = 2 were open at once",
            seen.max_new_open
        );
        assert!(
            seen.max_total_at_new_open <= 2,
            "a stream was opened after the ACK while {} were open (limit 2)",
            seen.max_total_at_new_open
        );
        assert_eq!(seen.max_new_open, 2, "the lowered limit's room is used");
        assert_eq!(run.stats.len(), 1, "{:?}", run.stats);
        assert_eq!(run.stats[0].max_streams, 2, "{:?}", run.stats);
        assert!(!run.stats[0].draining, "{:?}", run.stats);
        assert_eq!(run.stats[0].served, REQUESTS as u64, "{:?}", run.stats);
        assert_eq!(run.pool.max_in_flight_at_initial, 8);
        // The streams opened after the ACK ran 2 at a time, each for DELAY.
        let rounds = u32::try_from(seen.opened_after_ack.div_ceil(2)).expect("rounds");
        assert!(
            run.elapsed >= DELAY * rounds,
            "{:?}: faster than the lowered limit allows ({rounds} rounds)",
            run.elapsed
        );
    })
    .await;
}

/// The origin raises its limit from 2 to 8 after 6 requests, with 60 in flight or queued: the
/// queued requests use the new room on the same connection (the origin sees more than 2 streams
/// at once after the change, at most 8), every request gets its 200, the pool reports
/// `max_streams == 8`, and the whole run takes well under the 6 s that 60 requests need at 2 at
/// a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raised_max_concurrent_streams_is_used_mid_connection() {
    let _serial = serial().await;
    bounded(60, async {
        let plan = Plan {
            initial: 2,
            changed: 8,
            after: 6,
        };
        let s = setup(plan).await;
        let run = run(&s, plan).await;
        let seen = lock(&s.seen);
        assert_eq!(seen.max_open_before_change, 2);
        assert!(
            seen.max_new_open > 2,
            "after the raise to 8 the origin never saw more than {} new streams at once",
            seen.max_new_open
        );
        assert!(
            seen.max_open > 2 && seen.max_open <= 8,
            "max open {}",
            seen.max_open
        );
        assert!(seen.max_total_at_new_open <= 8);
        assert_eq!(run.stats.len(), 1, "{:?}", run.stats);
        assert_eq!(run.stats[0].max_streams, 8, "{:?}", run.stats);
        assert_eq!(run.stats[0].served, REQUESTS as u64, "{:?}", run.stats);
        assert!(run.pool.max_in_flight_at_changed > 2);
        assert!(run.pool.max_in_flight_at_initial <= 2);
        // Serial at the old limit: 60 / 2 rounds of DELAY = 6 s. With the raise after 3 rounds
        // the rest takes about 54 / 8 rounds: some 2 s in all.
        let serial_at_old = DELAY * (REQUESTS as u32).div_ceil(plan.initial);
        assert!(
            run.elapsed < serial_at_old / 2,
            "{:?}: the raised limit was not used (serial at 2: {serial_at_old:?})",
            run.elapsed
        );
    })
    .await;
}
