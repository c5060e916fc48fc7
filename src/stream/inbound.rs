//! What received bytes mean for the clocks: an HTTP/2 client preface split across
//! reads, HTTP/2 frames that keep a connection alive without doing work, and CRLFs
//! between HTTP/1 requests.

use crate::conn::Conn;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types that are not activity for the idle clock (Go's http2 server says the same
// of PING): a peer that only sends these does no work on the connection.
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;

/// Follows the received byte stream just far enough to tell activity from keep-alive
/// noise. It sees plaintext only: under TLS every byte is activity here, and the
/// stream judges an HTTP/2 connection's idleness by its requests instead (idle from
/// the end of the last request, whatever bytes come).
#[derive(Debug)]
pub(super) enum Inbound {
    /// Matching the HTTP/2 preface: this many bytes so far.
    Preface(u8),
    /// HTTP/2 frames after the preface.
    Frames(Frames),
    /// Anything else: every byte is activity.
    Opaque,
}

impl Default for Inbound {
    fn default() -> Self {
        Inbound::Preface(0)
    }
}

impl Inbound {
    /// Whether HTTP/2 frames are followed: a plaintext connection past the preface.
    pub(super) fn sees_frames(&self) -> bool {
        matches!(self, Inbound::Frames(_))
    }

    /// Takes newly received bytes and says whether they are activity. Completing the
    /// preface marks the connection as HTTP/2.
    #[inline]
    pub(super) fn feed(&mut self, conn: &Conn, bytes: &[u8]) -> bool {
        // HTTP/1, TLS and raw protocols are decided at their first bytes: the common
        // case stays a single comparison on the read path.
        match self {
            Inbound::Opaque => true,
            _ => self.feed_sniffed(conn, bytes),
        }
    }

    #[inline(never)]
    fn feed_sniffed(&mut self, conn: &Conn, bytes: &[u8]) -> bool {
        match self {
            Inbound::Opaque => true,
            Inbound::Frames(frames) => frames.feed(bytes),
            Inbound::Preface(matched) => {
                let want = &PREFACE[usize::from(*matched)..];
                let n = bytes.len().min(want.len());
                if bytes[..n] != want[..n] {
                    *self = Inbound::Opaque;
                } else if n < want.len() {
                    *matched += n as u8;
                } else {
                    conn.mark_http2_frames_seen();
                    let mut frames = Frames::default();
                    frames.feed(&bytes[n..]);
                    *self = Inbound::Frames(frames);
                }
                true
            }
        }
    }
}

/// Walks HTTP/2 frame headers (9 bytes: length, type, flags, stream id) and skips
/// their payloads.
#[derive(Debug, Default)]
pub(super) struct Frames {
    header: [u8; 9],
    have: u8,
    payload_left: u32,
    // The payload being skipped belongs to a frame that is not activity.
    control: bool,
}

impl Frames {
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut active = false;
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = bytes.len().min(self.payload_left as usize);
                active |= !self.control;
                self.payload_left -= n as u32;
                bytes = &bytes[n..];
                continue;
            }
            if self.have == 0
                && let [l0, l1, l2, kind, _, _, _, _, _, ..] = *bytes
            {
                // A whole frame header in this read: no copy.
                self.start_frame([l0, l1, l2], kind);
                active |= !self.control;
                bytes = &bytes[9..];
                continue;
            }
            let have = usize::from(self.have);
            let n = bytes.len().min(9 - have);
            self.header[have..have + n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            self.have += n as u8;
            if self.have == 9 {
                let [l0, l1, l2, kind, ..] = self.header;
                self.have = 0;
                self.start_frame([l0, l1, l2], kind);
                active |= !self.control;
            }
        }
        active
    }

    /// A frame header has arrived: its payload is skipped next.
    fn start_frame(&mut self, length: [u8; 3], kind: u8) {
        let [l0, l1, l2] = length;
        self.payload_left = u32::from_be_bytes([0, l0, l1, l2]);
        self.control = matches!(kind, SETTINGS | PING | WINDOW_UPDATE);
    }
}

/// Bytes that only hold CRLFs, which RFC 9112 §2.2 lets a client send before a
/// request line: they start no request head and are not activity.
pub(super) fn only_crlf(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == b'\r' || b == b'\n')
}

/// Follows a request head's end (an empty line) across reads: `matched` counts the
/// bytes of `\r\n\r\n` seen so far and reaches 4 at the end.
#[inline(never)]
pub(super) fn scan_head_end(matched: &mut u8, bytes: &[u8]) {
    const END: &[u8; 4] = b"\r\n\r\n";
    for &b in bytes {
        if *matched == 4 {
            return;
        }
        *matched = if b == END[usize::from(*matched)] {
            *matched + 1
        } else {
            u8::from(b == b'\r')
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    fn conn() -> Conn {
        Conn::new(1, "127.0.0.1:1".parse().unwrap(), Policy::default())
    }

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 1];
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn a_preface_split_anywhere_is_recognised() {
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(SETTINGS, &[0; 6]));
        for split in 1..stream.len() {
            let conn = conn();
            let mut inbound = Inbound::default();
            inbound.feed(&conn, &stream[..split]);
            inbound.feed(&conn, &stream[split..]);
            assert!(conn.is_http2(), "split at {split}");
            assert!(matches!(inbound, Inbound::Frames(_)), "split at {split}");
        }
    }

    #[test]
    fn http1_and_tls_are_opaque() {
        for first in [
            &b"GET / HTTP/1.1\r\n"[..],
            &[0x16, 0x03, 0x01],
            b"P",
            b"PRI * HTTP/1.1",
        ] {
            let conn = conn();
            let mut inbound = Inbound::default();
            assert!(inbound.feed(&conn, first));
            assert!(!conn.is_http2());
            if first.len() > 1 {
                assert!(matches!(inbound, Inbound::Opaque), "{first:?}");
            }
        }
    }

    #[test]
    fn control_frames_are_not_activity_whatever_the_reads() {
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.extend(frame(PING, &[7; 8]));
            idle.extend(frame(SETTINGS, &[]));
            idle.extend(frame(WINDOW_UPDATE, &[0, 0, 1, 0]));
        }
        let headers = frame(0x1, &[0x82; 20]);
        for chunk in [1, 2, 5, 9, 10, 17, idle.len()] {
            let mut frames = Frames::default();
            for piece in idle.chunks(chunk) {
                assert!(!frames.feed(piece), "chunks of {chunk}");
            }
            // A HEADERS frame after them is activity, in any split.
            let active = headers.chunks(chunk).any(|piece| frames.feed(piece));
            assert!(active, "chunks of {chunk}");
        }
    }

    #[test]
    fn head_end_is_found_across_reads() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in 1..head.len() {
            let mut matched = 0;
            scan_head_end(&mut matched, &head[..split]);
            assert!(matched < 4, "split at {split}");
            scan_head_end(&mut matched, &head[split..]);
            assert_eq!(matched, 4, "split at {split}");
        }
        let mut matched = 0;
        scan_head_end(&mut matched, b"GET / HTTP/1.1\r\nHost: x\r\n\r");
        scan_head_end(&mut matched, b"X");
        assert_eq!(matched, 0);
    }

    #[test]
    fn crlf_noise() {
        assert!(only_crlf(b"\r\n\r\n"));
        assert!(!only_crlf(b"\r\nG"));
    }
}
