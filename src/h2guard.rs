//! Guards for HTTP/2 client connections, in front of hyper's HTTP/2 server:
//!
//! - [`sniff_preface`] and [`Prefixed`]: h2c with prior knowledge (RFC 9113 §3.3) on plain
//!   listeners — read just enough to tell the HTTP/2 connection preface from an HTTP/1.1
//!   request line, then hand the bytes read back to whichever server takes the connection.
//! - [`FrameMeter`] (pure) and [`Guarded`] (the I/O wrapper): count the frames a client sends and
//!   close the connection with GOAWAY(ENHANCE_YOUR_CALM) when it floods.
//!
//! Why a wrapper: h2 0.4 already bounds the CONTINUATION flood (a frame count derived from
//! the header list size, then GOAWAY(ENHANCE_YOUR_CALM)), oversized header lists and rapid reset
//! of streams not yet accepted (`max_pending_accept_reset_streams`). It bounds PING and SETTINGS
//! floods only in memory: it answers one frame at a time and stops reading until the ACK is
//! written ("We always ACK before reading more frames"), so a client that reads its ACKs can
//! keep a core busy forever and is never disconnected. PRIORITY frames and empty DATA frames
//! are ignored at no memory cost but also without limit (CVE-2019-9516/9518), and a client that
//! resets every stream just after the gateway accepted it is not counted at all. The meter
//! counts those frame types against two token buckets per connection.
//!
//! WINDOW_UPDATE frames are cheap for h2 as well and unlimited, but a client sends them in
//! proportion to what it receives, so they are counted against what the gateway sent (as
//! Envoy's `max_inbound_window_update_frames_per_data_frame_sent` does): at most
//! `WINDOW_UPDATE_BURST + 2 × (streams opened + h2_max_window_updates_per_data_frame × DATA
//! frames sent)` over the connection's life. The write side parses the gateway's own frame
//! headers to count its DATA frames.
//!
//! How the connection ends: once a bucket is empty, the reader passes the rest of the offending
//! frame and then reports end of stream at that frame boundary. h2 treats that as the peer
//! closing: it fails the connection's streams (cancelling their upstream streams), flushes what
//! it has queued and shuts the writer down; [`Guarded::poll_shutdown`] first writes
//! GOAWAY(last client stream, ENHANCE_YOUR_CALM) (RFC 9113 §6.8, §7) at that frame boundary.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// RFC 9113 §3.4: the client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113 §6) and flags the meter looks at.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
/// WINDOW_UPDATE frames a client may send before it has received anything (a client enlarges
/// the connection window at start, some also each stream's).
pub const WINDOW_UPDATE_BURST: u64 = 100;
const END_STREAM: u8 = 0x1;
/// RFC 9113 §7: "The endpoint detected that its peer is exhibiting a behavior that might be
/// generating excessive load."
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Which limit a client crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    /// PING, SETTINGS, PRIORITY or empty non-final DATA frames past
    /// `client.h2_max_control_frames_per_sec`.
    Control,
    /// RST_STREAM frames past `client.h2_max_resets_per_sec`.
    Reset,
    /// WINDOW_UPDATE frames past what the DATA the gateway sent can justify
    /// (`client.h2_max_window_updates_per_data_frame`).
    WindowUpdate,
}

impl Flood {
    /// Label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Flood::Control => "h2_control_flood",
            Flood::Reset => "h2_reset_flood",
            Flood::WindowUpdate => "h2_window_update_flood",
        }
    }
}

/// A token bucket: `rate` tokens per second, holding at most `rate`.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    rate: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(rate),
            rate: f64::from(rate),
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The `[client]` limits the meter enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `client.h2_max_control_frames_per_sec`.
    pub control_per_sec: u32,
    /// `client.h2_max_resets_per_sec`.
    pub resets_per_sec: u32,
    /// `client.h2_max_window_updates_per_data_frame` (0: no limit).
    pub window_updates_per_data: u32,
}

/// Walks a byte stream of frames (RFC 9113 §4.1) piece by piece, however it is split, keeping
/// only the 9-byte frame headers.
#[derive(Debug, Clone, Default)]
struct FrameWalker {
    header: [u8; 9],
    header_len: usize,
    payload_left: usize,
}

impl FrameWalker {
    /// Consumes the start of `bytes` up to the end of the current header or payload; returns
    /// how many bytes that was and the frame header if one just completed.
    fn step(&mut self, bytes: &[u8]) -> (usize, Option<[u8; 9]>) {
        if self.payload_left > 0 {
            let n = self.payload_left.min(bytes.len());
            self.payload_left -= n;
            return (n, None);
        }
        let n = (9 - self.header_len).min(bytes.len());
        self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
        self.header_len += n;
        if self.header_len < 9 {
            return (n, None);
        }
        self.header_len = 0;
        let h = self.header;
        self.payload_left = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        (n, Some(h))
    }

    /// Inside a frame's payload.
    fn in_payload(&self) -> bool {
        self.payload_left > 0
    }
}

/// Parses the client's byte stream into frame headers (RFC 9113 §4.1) and counts them. Pure:
/// bytes and `now` in, a verdict out.
#[derive(Debug, Clone)]
pub struct FrameMeter {
    /// Preface bytes still to skip (0 once past it).
    preface_left: usize,
    /// The client's frames.
    walker: FrameWalker,
    control: Bucket,
    resets: Bucket,
    /// Highest client stream id seen on HEADERS (the GOAWAY's last-stream-id).
    max_stream: u32,
    /// HEADERS frames received (streams opened, trailers included).
    headers: u64,
    /// WINDOW_UPDATE frames received.
    window_updates: u64,
    /// Allowed WINDOW_UPDATE frames per DATA frame sent (0: no limit).
    window_updates_per_data: u64,
    /// The gateway's own frames, walked as they are written.
    sent: FrameWalker,
    /// DATA frames among them.
    data_sent: u64,
    /// Set when a limit is crossed; the stream ends after the current frame.
    tripped: Option<Flood>,
    /// The offending frame has been passed through entirely.
    done: bool,
}

impl FrameMeter {
    /// A meter for a connection whose first bytes are the client preface.
    pub fn new(limits: Limits, now: Instant) -> FrameMeter {
        FrameMeter {
            preface_left: PREFACE.len(),
            walker: FrameWalker::default(),
            control: Bucket::new(limits.control_per_sec, now),
            resets: Bucket::new(limits.resets_per_sec, now),
            max_stream: 0,
            headers: 0,
            window_updates: 0,
            window_updates_per_data: u64::from(limits.window_updates_per_data),
            sent: FrameWalker::default(),
            data_sent: 0,
            tripped: None,
            done: false,
        }
    }

    /// The limit crossed, if any.
    pub fn tripped(&self) -> Option<Flood> {
        self.tripped
    }

    /// The offending frame has been passed on: report end of stream from now on.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Highest stream id the client opened.
    pub fn max_stream(&self) -> u32 {
        self.max_stream
    }

    /// Feeds the next bytes the client sent; returns how many of them to pass on. Fewer than
    /// `bytes.len()` (or [`FrameMeter::done`]) means: end the stream after those.
    pub fn feed(&mut self, bytes: &[u8], now: Instant) -> usize {
        let mut i = 0;
        while i < bytes.len() && !self.done {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len() - i);
                self.preface_left -= n;
                i += n;
                continue;
            }
            let in_payload = self.walker.in_payload();
            let (n, header) = self.walker.step(&bytes[i..]);
            i += n;
            match header {
                Some(h) => self.on_header(h, now),
                // The offending frame's payload has been passed on.
                None if in_payload && !self.walker.in_payload() && self.tripped.is_some() => {
                    self.done = true;
                }
                None => {}
            }
        }
        i
    }

    fn on_header(&mut self, h: [u8; 9], now: Instant) {
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let verdict = match kind {
            HEADERS => {
                self.max_stream = self.max_stream.max(stream);
                self.headers += 1;
                None
            }
            WINDOW_UPDATE if self.window_updates_per_data > 0 => {
                self.window_updates += 1;
                let allowed = WINDOW_UPDATE_BURST.saturating_add(2u64.saturating_mul(
                    self.headers.saturating_add(
                        self.window_updates_per_data.saturating_mul(self.data_sent),
                    ),
                ));
                (self.window_updates > allowed).then_some(Flood::WindowUpdate)
            }
            PING | SETTINGS | PRIORITY => (!self.control.take(now)).then_some(Flood::Control),
            // CVE-2019-9518: empty frames cost a wake-up each and carry nothing.
            DATA if len == 0 && flags & END_STREAM == 0 => {
                (!self.control.take(now)).then_some(Flood::Control)
            }
            RST_STREAM => (!self.resets.take(now)).then_some(Flood::Reset),
            _ => None,
        };
        if self.tripped.is_none() {
            self.tripped = verdict;
        }
        if self.tripped.is_some() && !self.walker.in_payload() {
            self.done = true;
        }
    }

    /// Feeds bytes the gateway wrote to the client (its frames, from the first byte on).
    pub fn feed_sent(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() {
            let (n, header) = self.sent.step(&bytes[i..]);
            i += n;
            if header.is_some_and(|h| h[3] == DATA) {
                self.data_sent += 1;
            }
        }
    }

    /// DATA frames the gateway has sent.
    pub fn data_frames_sent(&self) -> u64 {
        self.data_sent
    }

    /// GOAWAY(last-stream-id, ENHANCE_YOUR_CALM) with a short debug text (RFC 9113 §6.8).
    pub fn goaway(&self) -> Vec<u8> {
        let debug = self.tripped.map_or("", Flood::as_str).as_bytes();
        let len = 8 + debug.len();
        let mut f = Vec::with_capacity(9 + len);
        f.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        f.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&(self.max_stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        f.extend_from_slice(debug);
        f
    }
}

/// Shared between a [`Guarded`] stream and the task serving it: tells the task a flood was
/// detected so it can bound the time left to the connection.
#[derive(Debug, Default)]
pub struct Alarm {
    flood: OnceLock<Flood>,
    notify: Notify,
}

impl Alarm {
    /// Resolves once the connection's meter tripped.
    pub async fn wait(&self) {
        loop {
            let n = self.notify.notified();
            if self.flood.get().is_some() {
                return;
            }
            n.await;
        }
    }

    /// The limit the connection crossed, if any.
    pub fn flood(&self) -> Option<Flood> {
        self.flood.get().copied()
    }

    fn raise(&self, f: Flood) {
        let _ = self.flood.set(f);
        self.notify.notify_waiters();
    }
}

/// A client stream with a [`FrameMeter`] on its read side (see the module docs).
pub struct Guarded<S> {
    inner: S,
    meter: FrameMeter,
    alarm: Arc<Alarm>,
    /// GOAWAY bytes still to write on shutdown (`None`: not tripped or already written).
    goaway: Option<(Vec<u8>, usize)>,
}

impl<S> Guarded<S> {
    /// Wraps `inner`, whose first bytes are the client preface.
    pub fn new(inner: S, limits: Limits) -> (Guarded<S>, Arc<Alarm>) {
        let alarm = Arc::new(Alarm::default());
        let g = Guarded {
            inner,
            meter: FrameMeter::new(limits, Instant::now()),
            alarm: alarm.clone(),
            goaway: None,
        };
        (g, alarm)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.meter.done() {
            // End of stream at a frame boundary: h2 closes as if the client had.
            return Poll::Ready(Ok(()));
        }
        let start = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[start..];
        let pass = this.meter.feed(new, Instant::now());
        if pass < new.len() {
            // The rest is never looked at: the connection is ending.
            buf.set_filled(start + pass);
        }
        if let Some(f) = this.meter.tripped() {
            if this.alarm.flood().is_none() {
                this.goaway = Some((this.meter.goaway(), 0));
                this.alarm.raise(f);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.meter.feed_sent(&buf[..n.min(buf.len())]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        // The first `n` bytes across the slices were written.
        let mut left = n;
        for b in bufs {
            if left == 0 {
                break;
            }
            let k = left.min(b.len());
            this.meter.feed_sent(&b[..k]);
            left -= k;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // h2 shuts down only after flushing every frame it queued, so this is a frame boundary.
        if let Some((bytes, written)) = this.goaway.as_mut() {
            while *written < bytes.len() {
                let n = std::task::ready!(
                    Pin::new(&mut this.inner).poll_write(cx, &bytes[*written..])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            std::task::ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
            this.goaway = None;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Bytes already read from `inner` are served first (the sniffed start of a plain connection).
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `prefix` is what was read from `inner` so far.
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reads from a plain connection until its first bytes either are the HTTP/2 preface
/// (RFC 9113 §3.3 prior knowledge) or cannot be. Returns whether they are, and the bytes read
/// (to be replayed with [`Prefixed`]). An HTTP/1.1 request line differs at its first byte
/// (no method is `PRI`… except the preface itself), so HTTP/1.1 clients cost one read.
pub async fn sniff_preface<S: AsyncRead + Unpin>(
    io: &mut S,
    wait: Duration,
) -> io::Result<(bool, Vec<u8>)> {
    let mut got = Vec::with_capacity(PREFACE.len());
    let read = async {
        let mut chunk = [0u8; 24];
        while got.len() < PREFACE.len() {
            let n = io.read(&mut chunk[..PREFACE.len() - got.len()]).await?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            if !PREFACE.starts_with(&got) {
                break;
            }
        }
        io::Result::Ok(())
    };
    match tokio::time::timeout(wait, read).await {
        Ok(r) => r?,
        Err(_) => return Err(io::ErrorKind::TimedOut.into()),
    }
    Ok((got.as_slice() == PREFACE, got))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(control_per_sec: u32, resets_per_sec: u32) -> Limits {
        Limits {
            control_per_sec,
            resets_per_sec,
            window_updates_per_data: 10,
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn ping_flood_trips_after_the_burst_at_a_frame_boundary() {
        let now = Instant::now();
        let mut m = FrameMeter::new(limits(10, 100), now);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(HEADERS, 0x4, 5, &[0x82]));
        for _ in 0..20 {
            bytes.extend(frame(PING, 0, 0, &[0; 8]));
        }
        // Byte by byte: frame headers split across reads are handled.
        let mut passed = 0;
        for b in &bytes {
            passed += m.feed(std::slice::from_ref(b), now);
            if m.done() {
                break;
            }
        }
        assert_eq!(m.tripped(), Some(Flood::Control));
        // Preface + HEADERS (10) + 11 PINGs: the 11th is passed whole, then the stream ends.
        assert_eq!(passed, 24 + 10 + 11 * 17);
        assert_eq!(m.max_stream(), 5);
        let g = m.goaway();
        assert_eq!(g[3], GOAWAY);
        assert_eq!(&g[9..13], &5u32.to_be_bytes());
        assert_eq!(&g[13..17], &ENHANCE_YOUR_CALM.to_be_bytes());
    }

    #[test]
    fn tokens_refill_with_time() {
        let t0 = Instant::now();
        let mut m = FrameMeter::new(limits(10, 10), t0);
        m.feed(PREFACE, t0);
        let ping = frame(PING, 0, 0, &[0; 8]);
        for s in 0..100u64 {
            // 5 per second against 10 per second: never trips.
            let now = t0 + Duration::from_millis(200 * s);
            assert_eq!(m.feed(&ping, now), ping.len());
        }
        assert_eq!(m.tripped(), None);
    }

    #[test]
    fn resets_and_empty_data_count() {
        let now = Instant::now();
        let mut m = FrameMeter::new(limits(10, 3), now);
        m.feed(PREFACE, now);
        for id in [1u32, 3, 5] {
            m.feed(&frame(RST_STREAM, 0, id, &[0, 0, 0, 8]), now);
        }
        assert_eq!(m.tripped(), None);
        let rst = frame(RST_STREAM, 0, 7, &[0, 0, 0, 8]);
        // A whole frame in one read: all of it passes, then done.
        assert_eq!(m.feed(&rst, now), rst.len());
        assert_eq!(m.tripped(), Some(Flood::Reset));
        assert!(m.done());

        let mut m = FrameMeter::new(limits(10, 3), now);
        m.feed(PREFACE, now);
        let mut bytes = Vec::new();
        for _ in 0..11 {
            bytes.extend(frame(DATA, 0, 1, &[]));
        }
        bytes.extend(frame(DATA, END_STREAM, 1, &[]));
        assert_eq!(m.feed(&bytes, now), 11 * 9);
        assert_eq!(m.tripped(), Some(Flood::Control));
    }

    fn window_update(stream: u32) -> Vec<u8> {
        frame(WINDOW_UPDATE, 0, stream, &1u32.to_be_bytes())
    }

    #[test]
    fn window_updates_are_bounded_by_the_data_sent() {
        let now = Instant::now();
        let mut m = FrameMeter::new(limits(100, 100), now);
        m.feed(PREFACE, now);
        // Two streams: allowance 100 + 2 * 2 = 104 before anything was sent.
        m.feed(&frame(HEADERS, 0x5, 1, &[0x82]), now);
        m.feed(&frame(HEADERS, 0x5, 3, &[0x82]), now);
        for _ in 0..104 {
            m.feed(&window_update(0), now);
        }
        assert_eq!(m.tripped(), None);
        // The gateway sends 5 DATA frames (written in odd pieces): +2 * 10 * 5 = 100 more.
        let mut sent = Vec::new();
        for _ in 0..5 {
            sent.extend(frame(DATA, 0, 1, &[7; 1000]));
        }
        sent.extend(frame(HEADERS, 0x4, 3, &[0x88]));
        for piece in sent.chunks(333) {
            m.feed_sent(piece);
        }
        assert_eq!(m.data_frames_sent(), 5);
        for _ in 0..100 {
            m.feed(&window_update(1), now);
        }
        assert_eq!(m.tripped(), None);
        let wu = window_update(0);
        assert_eq!(m.feed(&wu, now), wu.len());
        assert_eq!(m.tripped(), Some(Flood::WindowUpdate));
        assert!(m.done());
        assert_eq!(m.goaway()[17..], *b"h2_window_update_flood");
    }

    #[test]
    fn window_updates_are_unlimited_with_zero() {
        let now = Instant::now();
        let mut m = FrameMeter::new(
            Limits {
                window_updates_per_data: 0,
                ..limits(100, 100)
            },
            now,
        );
        m.feed(PREFACE, now);
        for _ in 0..10_000 {
            m.feed(&window_update(0), now);
        }
        assert_eq!(m.tripped(), None);
    }
}
