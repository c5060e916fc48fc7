//! What received bytes mean for the clocks: an HTTP/2 client preface split across
//! reads, HTTP/2 frames that keep a connection alive without doing work, and CRLFs
//! between HTTP/1 requests.

use crate::conn::Conn;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// The frame types that do work (RFC 9113 §6): a request's header block and its body.
// Every other type (SETTINGS, PING, WINDOW_UPDATE, PRIORITY, RST_STREAM, GOAWAY, and
// the unknown types a receiver must ignore) is not activity for the idle clock: a
// peer that sends only these holds the connection without using it. RST_STREAM
// cancels work rather than doing it, so it does not count either.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
// Frame flags (RFC 9113 §6.1, §6.2).
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;

/// What newly received bytes are, for the idle clock; the greater wins in a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Work {
    /// No work: HTTP/2 frames that do none.
    None,
    /// HTTP/2 request body (DATA that carries data): work while a request is in
    /// flight, and nothing after it (its stream is closed).
    Body,
    /// Request bytes: HTTP/1 (or anything the stream cannot read), the HTTP/2 preface,
    /// a whole HTTP/2 header block.
    Request,
}

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
    /// Whether a whole HTTP/2 request header block has arrived: a request reached
    /// the server, if the server accepted it.
    pub(super) fn saw_request_head(&self) -> bool {
        matches!(self, Inbound::Frames(frames) if frames.heads > 0)
    }

    /// Takes newly received bytes and says what work they are. Completing the
    /// preface marks the connection as HTTP/2.
    #[inline]
    pub(super) fn feed(&mut self, conn: &Conn, bytes: &[u8]) -> Work {
        // HTTP/1, TLS and raw protocols are decided at their first bytes: the common
        // case stays a single comparison on the read path.
        match self {
            Inbound::Opaque => Work::Request,
            _ => self.feed_sniffed(conn, bytes),
        }
    }

    #[inline(never)]
    fn feed_sniffed(&mut self, conn: &Conn, bytes: &[u8]) -> Work {
        match self {
            Inbound::Opaque => Work::Request,
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
                Work::Request
            }
        }
    }
}

/// Walks HTTP/2 frame headers (9 bytes: length, type, flags, stream id) and skips
/// their payloads, telling work from noise: a header block counts once it is whole
/// (the frame that ends it has fully arrived), so a block trickled a byte at a time
/// is no activity until it ends; a DATA frame counts when it carries data, not when
/// it is empty or only padding.
#[derive(Debug, Default)]
pub(super) struct Frames {
    header: [u8; 9],
    have: u8,
    payload_left: u32,
    // What the payload being skipped is worth.
    worth: Worth,
    // Header blocks ended so far (saturating).
    heads: u8,
}

/// What a frame's payload is worth to the idle clock.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Worth {
    /// Not work.
    #[default]
    Noise,
    /// Request body bytes: every one is activity.
    Data,
    /// A padded DATA frame: its first byte, the padding length, says whether it
    /// carries data.
    PaddedData,
    /// The frame that ends a header block: activity once its last byte arrives.
    HeadEnd,
}

impl Frames {
    fn feed(&mut self, mut bytes: &[u8]) -> Work {
        let mut work = Work::None;
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = bytes.len().min(self.payload_left as usize);
                work = work.max(self.skip_payload(bytes[0], n));
                bytes = &bytes[n..];
                continue;
            }
            if self.have == 0
                && let [l0, l1, l2, kind, flags, _, _, _, _, ..] = *bytes
            {
                // A whole frame header in this read: no copy.
                work = work.max(self.start_frame([l0, l1, l2], kind, flags));
                bytes = &bytes[9..];
                continue;
            }
            let have = usize::from(self.have);
            let n = bytes.len().min(9 - have);
            self.header[have..have + n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            self.have += n as u8;
            if self.have == 9 {
                let [l0, l1, l2, kind, flags, ..] = self.header;
                self.have = 0;
                work = work.max(self.start_frame([l0, l1, l2], kind, flags));
            }
        }
        work
    }

    /// A frame header has arrived: its payload is skipped next. Returns the frame's
    /// work so far (an empty frame that ends a header block is a request).
    fn start_frame(&mut self, length: [u8; 3], kind: u8, flags: u8) -> Work {
        let [l0, l1, l2] = length;
        self.payload_left = u32::from_be_bytes([0, l0, l1, l2]);
        self.worth = match kind {
            DATA if flags & PADDED != 0 => Worth::PaddedData,
            DATA => Worth::Data,
            HEADERS | CONTINUATION if flags & END_HEADERS != 0 => Worth::HeadEnd,
            _ => Worth::Noise,
        };
        if self.worth == Worth::HeadEnd && self.head_ended() {
            Work::Request
        } else {
            Work::None
        }
    }

    /// Whether the header block's last byte has arrived; counts it if so.
    fn head_ended(&mut self) -> bool {
        let ended = self.payload_left == 0;
        if ended {
            self.heads = self.heads.saturating_add(1);
        }
        ended
    }

    /// Skips `n` payload bytes, the first of them `first`; returns their work.
    fn skip_payload(&mut self, first: u8, n: usize) -> Work {
        let left = self.payload_left;
        self.payload_left -= n as u32;
        match self.worth {
            Worth::Noise => Work::None,
            Worth::Data => Work::Body,
            Worth::PaddedData => {
                // The padding length, then the data, then the padding.
                let data = left - 1 > u32::from(first);
                self.worth = if data { Worth::Data } else { Worth::Noise };
                if data { Work::Body } else { Work::None }
            }
            Worth::HeadEnd => {
                if self.head_ended() {
                    Work::Request
                } else {
                    Work::None
                }
            }
        }
    }
}

/// Bytes that only hold CRLFs, which RFC 9112 §2.2 lets a client send before a
/// request line: they start no request head and are not activity.
#[inline]
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

    const SETTINGS: u8 = 0x4;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        flagged(kind, 0, payload)
    }

    fn flagged(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
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
            assert_eq!(inbound.feed(&conn, first), Work::Request);
            assert!(!conn.is_http2());
            if first.len() > 1 {
                assert!(matches!(inbound, Inbound::Opaque), "{first:?}");
            }
        }
    }

    /// Every frame that does no work, in every split of the reads.
    #[test]
    fn only_work_is_activity_whatever_the_reads() {
        let noise = [
            frame(0x6, &[7; 8]),                     // PING
            frame(SETTINGS, &[]),                    // SETTINGS ack
            frame(SETTINGS, &[0; 6]),                // SETTINGS
            frame(0x8, &[0, 0, 1, 0]),               // WINDOW_UPDATE
            frame(0x2, &[0, 0, 0, 3, 7]),            // PRIORITY
            frame(0x3, &[0, 0, 0, 8]),               // RST_STREAM
            frame(0x7, &[0; 8]),                     // GOAWAY
            frame(0x20, &[1, 2, 3]),                 // an unknown type
            frame(0x20, &[]),                        // an empty unknown type
            frame(DATA, &[]),                        // empty DATA
            flagged(DATA, PADDED, &[4, 0, 0, 0, 0]), // DATA of padding only
            flagged(DATA, PADDED, &[0]),             // DATA of a padding length only
            frame(HEADERS, &[0x82; 20]),             // a header block not yet ended
            frame(CONTINUATION, &[0x82; 3]),         // ... nor by this
        ]
        .concat();
        let work = [
            (
                flagged(CONTINUATION, END_HEADERS, &[0x82; 5]),
                Work::Request,
            ),
            (flagged(HEADERS, END_HEADERS, &[0x82; 20]), Work::Request),
            (flagged(HEADERS, END_HEADERS, &[]), Work::Request),
            (frame(DATA, b"x"), Work::Body),
            (flagged(DATA, PADDED, &[2, b'x', 0, 0]), Work::Body),
        ];
        for chunk in [1, 2, 5, 9, 10, 17, noise.len()] {
            let mut frames = Frames::default();
            for piece in noise.chunks(chunk) {
                assert_eq!(frames.feed(piece), Work::None, "chunks of {chunk}");
            }
            for (frame, expected) in &work {
                let done = frame
                    .chunks(chunk)
                    .map(|piece| frames.feed(piece))
                    .fold(Work::None, Work::max);
                assert_eq!(done, *expected, "{frame:?} in chunks of {chunk}");
                assert_eq!(frames.feed(&noise), Work::None, "noise after {frame:?}");
            }
        }
    }

    /// A header block is activity when its last byte arrives, not before: a block
    /// trickled a byte at a time does not hold the idle clock.
    #[test]
    fn a_header_block_counts_when_whole() {
        let block = flagged(HEADERS, END_HEADERS, &[0x82; 20]);
        let mut frames = Frames::default();
        let (last, head) = block.split_last().unwrap();
        for byte in head {
            assert_eq!(frames.feed(std::slice::from_ref(byte)), Work::None);
        }
        assert_eq!(frames.feed(&[*last]), Work::Request);
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
