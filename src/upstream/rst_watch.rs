//! Watches the bytes the gateway writes on an HTTP/2 origin connection for an RST_STREAM with
//! FLOW_CONTROL_ERROR (RFC 9113 §6.4, §7).
//!
//! h2 answers an origin that sends DATA past a stream's window with a stream error: it resets
//! that stream (FLOW_CONTROL_ERROR) and then discards the stream's further DATA while giving
//! the connection window back for it (h2 0.4 `Recv::ignore_data`). An origin that keeps
//! flooding therefore costs the gateway CPU for as long as it likes, and is cut off only if it
//! also outruns the connection window before the gateway's WINDOW_UPDATE, a race. RFC 9113
//! §6.9.1 lets the receiver treat the overrun as a connection error instead; h2 has no option
//! for that, and its public API does not say which streams it reset or why. The reset frame
//! itself is the one reliable sign. h2 sends FLOW_CONTROL_ERROR on a stream for that overrun
//! and for a WINDOW_UPDATE that takes the stream's send window past 2^31-1 (RFC 9113 §6.9.1),
//! both the origin's violations; the gateway's own resets are CANCEL. So when h2 writes one,
//! the pool closes the connection (see `h2::connect`).
//!
//! [`RstWatch`] is pure bookkeeping over the written byte stream — the 24-byte client preface,
//! then frames (9-byte header, payload) — fed in arbitrary pieces, exactly as the transport
//! accepted them. Per write it looks at frame headers only and skips payloads; a request's
//! HEADERS and DATA cost a few comparisons.

/// Length of the client connection preface (RFC 9113 §3.4) written before the first frame.
const PREFACE_LEN: u32 = 24;
/// Frame header length (RFC 9113 §4.1).
const HEADER_LEN: usize = 9;
/// RST_STREAM frame type (RFC 9113 §6.4).
const RST_STREAM: u8 = 0x3;
/// FLOW_CONTROL_ERROR (RFC 9113 §7).
const FLOW_CONTROL_ERROR: u32 = 0x3;

/// Finds RST_STREAM(FLOW_CONTROL_ERROR) frames in a client-side HTTP/2 byte stream.
#[derive(Debug, Clone)]
pub struct RstWatch {
    /// Bytes still to pass before the next frame header (the preface, then each payload).
    skip: u32,
    /// The frame header being collected, and an RST_STREAM's 4-byte error code after it.
    head: [u8; HEADER_LEN + 4],
    /// How many bytes of `head` are filled.
    have: usize,
}

impl Default for RstWatch {
    fn default() -> Self {
        RstWatch::new()
    }
}

impl RstWatch {
    /// A watch positioned at the start of a client connection (before the preface).
    pub fn new() -> RstWatch {
        RstWatch {
            skip: PREFACE_LEN,
            head: [0; HEADER_LEN + 4],
            have: 0,
        }
    }

    /// Passes the next written bytes; true if they completed an RST_STREAM whose error code is
    /// FLOW_CONTROL_ERROR.
    pub fn feed(&mut self, mut buf: &[u8]) -> bool {
        let mut found = false;
        while !buf.is_empty() {
            if self.skip > 0 {
                let n = buf.len().min(self.skip as usize);
                self.skip -= n as u32;
                buf = &buf[n..];
                continue;
            }
            // Collect the header, plus the error code when the header says RST_STREAM.
            let want = if self.have >= HEADER_LEN && self.is_rst() {
                HEADER_LEN + 4
            } else {
                HEADER_LEN
            };
            let n = buf.len().min(want - self.have);
            self.head[self.have..self.have + n].copy_from_slice(&buf[..n]);
            self.have += n;
            buf = &buf[n..];
            if self.have < want {
                continue;
            }
            let len = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]);
            if want == HEADER_LEN && self.is_rst() {
                // The error code follows (a well-formed RST_STREAM has exactly 4 bytes).
                continue;
            }
            if want == HEADER_LEN + 4 {
                let code =
                    u32::from_be_bytes([self.head[9], self.head[10], self.head[11], self.head[12]]);
                found |= code == FLOW_CONTROL_ERROR;
                self.skip = len - 4;
            } else {
                self.skip = len;
            }
            self.have = 0;
        }
        found
    }

    /// Whether the collected header is an RST_STREAM with the 4-byte payload RFC 9113 §6.4
    /// requires (anything else is skipped by its length).
    fn is_rst(&self) -> bool {
        self.head[3] == RST_STREAM && self.head[..3] == [0, 0, 4]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ty: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.push(ty);
        f.push(flags);
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Preface, SETTINGS, HEADERS, DATA, WINDOW_UPDATE, then `tail`.
    fn connection(tail: &[Vec<u8>]) -> Vec<u8> {
        let mut s = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        s.extend(frame(0x4, 0, 0, &[0, 4, 0, 0, 0, 3]));
        // A HEADERS block that contains the bytes of an RST_STREAM frame must not fool it.
        let fake = frame(RST_STREAM, 0, 1, &3u32.to_be_bytes());
        s.extend(frame(0x1, 0x4, 1, &fake));
        s.extend(frame(0x0, 0x1, 1, &[b'x'; 300]));
        s.extend(frame(0x8, 0, 0, &65_535u32.to_be_bytes()));
        for f in tail {
            s.extend_from_slice(f);
        }
        s
    }

    fn rst(code: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, 3, &code.to_be_bytes())
    }

    #[test]
    fn finds_the_flow_control_reset_at_every_split_point() {
        let s = connection(&[rst(8), rst(FLOW_CONTROL_ERROR), frame(0x6, 0, 0, &[0; 8])]);
        for cut in 0..=s.len() {
            let mut w = RstWatch::new();
            let (a, b) = s.split_at(cut);
            assert_eq!(w.feed(a) as u8 + w.feed(b) as u8, 1, "split at {cut}");
        }
        // One byte at a time.
        let mut w = RstWatch::new();
        assert_eq!(
            s.iter().filter(|b| w.feed(std::slice::from_ref(b))).count(),
            1
        );
    }

    #[test]
    fn other_resets_and_payload_bytes_are_not_a_match() {
        let s = connection(&[
            rst(0x8),
            rst(0x7),
            frame(0x7, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 3]),
        ]);
        for cut in 0..=s.len() {
            let mut w = RstWatch::new();
            let (a, b) = s.split_at(cut);
            assert!(!w.feed(a) && !w.feed(b), "split at {cut}");
        }
    }

    #[test]
    fn stays_in_step_after_a_match() {
        let mut w = RstWatch::new();
        let s = connection(&[rst(FLOW_CONTROL_ERROR)]);
        assert!(w.feed(&s));
        assert!(!w.feed(&frame(0x0, 0, 5, &[3; 40])));
        assert!(w.feed(&rst(FLOW_CONTROL_ERROR)));
        assert!(!w.feed(&rst(0)));
    }

    #[test]
    fn a_reset_of_the_wrong_length_is_skipped_by_its_length() {
        let mut w = RstWatch::new();
        let odd = frame(RST_STREAM, 0, 1, &[0, 0, 0, 3, 0, 0]);
        assert!(!w.feed(&connection(&[odd])));
        assert!(w.feed(&rst(FLOW_CONTROL_ERROR)));
    }
}
