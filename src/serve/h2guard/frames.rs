//! Walks one direction of an HTTP/2 connection frame by frame, however the bytes are
//! split, and reports each frame's header and the few payload bytes the guard reads
//! (a WINDOW_UPDATE's increment, a GOAWAY's error code, SETTINGS entries).

pub(super) const DATA: u8 = 0x0;
pub(super) const HEADERS: u8 = 0x1;
pub(super) const RST_STREAM: u8 = 0x3;
pub(super) const SETTINGS: u8 = 0x4;
pub(super) const GOAWAY: u8 = 0x7;
pub(super) const WINDOW_UPDATE: u8 = 0x8;
pub(super) const CONTINUATION: u8 = 0x9;

pub(super) const END_STREAM: u8 = 0x1;
/// SETTINGS and PING acknowledgements.
pub(super) const ACK: u8 = 0x1;

pub(super) const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

/// A frame's 9-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) len: u32,
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) stream: u32,
}

impl Header {
    fn parse(bytes: &[u8; 9]) -> Header {
        Header {
            len: u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]),
            kind: bytes[3],
            flags: bytes[4],
            stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
        }
    }

    pub(super) fn end_stream(&self) -> bool {
        matches!(self.kind, DATA | HEADERS) && self.flags & END_STREAM != 0
    }

    /// How many leading payload bytes the guard reads: a WINDOW_UPDATE's increment,
    /// a GOAWAY's last stream and error code.
    fn wanted_prefix(&self) -> usize {
        let want = match self.kind {
            WINDOW_UPDATE => 4,
            GOAWAY => 8,
            _ => 0,
        };
        want.min(self.len as usize)
    }
}

/// What the walker found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    /// A frame's header arrived (its payload follows).
    Frame(Header),
    /// The leading payload bytes of a WINDOW_UPDATE or GOAWAY, as far as the frame has
    /// them (`len` of the 8).
    Prefix(Header, [u8; 8], usize),
    /// One SETTINGS entry (not of an acknowledgement).
    Setting(u16, u32),
}

/// The walker's position: inside a header, or inside a payload.
#[derive(Debug, Default)]
pub(super) struct Walker {
    header: [u8; 9],
    have: u8,
    current: Option<Header>,
    payload_left: u32,
    // The prefix or SETTINGS entry being collected from the payload.
    scratch: [u8; 8],
    scratch_have: u8,
}

impl Walker {
    /// Whether the bytes so far end exactly at a frame's end.
    pub(super) fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// How many bytes are left of the frame (or header) under way; 0 at a boundary.
    pub(super) fn left_in_frame(&self) -> usize {
        if self.have > 0 {
            9 - usize::from(self.have)
        } else {
            self.payload_left as usize
        }
    }

    /// Takes the next bytes of the direction, reporting frames through `on`.
    pub(super) fn feed(&mut self, mut bytes: &[u8], on: &mut impl FnMut(Event)) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = bytes.len().min(self.payload_left as usize);
                self.payload(&bytes[..n], on);
                self.payload_left -= n as u32;
                bytes = &bytes[n..];
                continue;
            }
            let header = match bytes.split_first_chunk::<9>() {
                // A whole header at hand (nearly always): read in place.
                Some((header, rest)) if self.have == 0 => {
                    bytes = rest;
                    Header::parse(header)
                }
                _ => {
                    let have = usize::from(self.have);
                    let n = bytes.len().min(9 - have);
                    self.header[have..have + n].copy_from_slice(&bytes[..n]);
                    self.have += n as u8;
                    bytes = &bytes[n..];
                    if self.have < 9 {
                        continue;
                    }
                    self.have = 0;
                    Header::parse(&self.header)
                }
            };
            on(Event::Frame(header));
            if header.kind == SETTINGS || header.wanted_prefix() > 0 {
                self.current = Some(header);
                self.payload_left = header.len;
                self.scratch_have = 0;
            } else {
                // Nothing to read in this payload (nearly every frame): skipped at once.
                self.current = None;
                let n = bytes.len().min(header.len as usize);
                bytes = &bytes[n..];
                self.payload_left = header.len - n as u32;
            }
        }
    }

    #[inline]
    fn payload(&mut self, bytes: &[u8], on: &mut impl FnMut(Event)) {
        let Some(header) = self.current else { return };
        self.payload_prefix(header, bytes, on);
    }

    /// The payload bytes the guard reads: SETTINGS entries, a prefix.
    fn payload_prefix(&mut self, header: Header, bytes: &[u8], on: &mut impl FnMut(Event)) {
        if header.kind == SETTINGS {
            if header.flags & ACK != 0 {
                return;
            }
            for &byte in bytes {
                self.scratch[usize::from(self.scratch_have)] = byte;
                self.scratch_have += 1;
                if self.scratch_have == 6 {
                    self.scratch_have = 0;
                    let s = self.scratch;
                    on(Event::Setting(
                        u16::from_be_bytes([s[0], s[1]]),
                        u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                    ));
                }
            }
            return;
        }
        let want = header.wanted_prefix();
        let have = usize::from(self.scratch_have);
        if have >= want {
            return;
        }
        let n = bytes.len().min(want - have);
        self.scratch[have..have + n].copy_from_slice(&bytes[..n]);
        self.scratch_have += n as u8;
        if usize::from(self.scratch_have) == want {
            on(Event::Prefix(header, self.scratch, want));
        }
    }
}

/// One frame's bytes, for tests.
#[cfg(test)]
pub(super) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(bytes: &[u8], chunk: usize) -> (Vec<Event>, Walker) {
        let mut walker = Walker::default();
        let mut events = Vec::new();
        for piece in bytes.chunks(chunk) {
            walker.feed(piece, &mut |e| events.push(e));
        }
        (events, walker)
    }

    #[test]
    fn every_split_gives_the_same_events() {
        let mut bytes = frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        bytes.extend(frame(HEADERS, 0x5, 1, &[0x82; 11]));
        bytes.extend(frame(WINDOW_UPDATE, 0, 1, &[0, 1, 0, 0]));
        bytes.extend(frame(DATA, 0x1, 1, &[b'x'; 40]));
        bytes.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0xb, b'd', b'b']));
        let (whole, walker) = walk(&bytes, bytes.len());
        assert!(walker.at_boundary());
        assert!(whole.contains(&Event::Setting(SETTINGS_INITIAL_WINDOW_SIZE, 0)));
        assert!(whole.contains(&Event::Setting(3, 100)));
        let prefixes: Vec<_> = whole
            .iter()
            .filter_map(|e| match e {
                Event::Prefix(h, bytes, n) => Some((h.kind, bytes[..*n].to_vec())),
                _ => None,
            })
            .collect();
        assert_eq!(
            prefixes,
            [
                (WINDOW_UPDATE, vec![0, 1, 0, 0]),
                (GOAWAY, vec![0, 0, 0, 1, 0, 0, 0, 0xb])
            ]
        );
        assert_eq!(
            whole
                .iter()
                .filter(|e| matches!(e, Event::Frame(_)))
                .count(),
            5
        );
        for chunk in 1..bytes.len() {
            let (events, walker) = walk(&bytes, chunk);
            assert_eq!(events, whole, "chunks of {chunk}");
            assert!(walker.at_boundary(), "chunks of {chunk}");
        }
    }

    #[test]
    fn the_rest_of_a_frame_is_known_midway() {
        let bytes = frame(DATA, 0, 1, &[0; 20]);
        let mut walker = Walker::default();
        walker.feed(&bytes[..4], &mut |_| {});
        assert_eq!(walker.left_in_frame(), 5);
        walker.feed(&bytes[4..15], &mut |_| {});
        assert_eq!(walker.left_in_frame(), 14);
        walker.feed(&bytes[15..], &mut |_| {});
        assert!(walker.at_boundary());
        assert_eq!(walker.left_in_frame(), 0);
    }
}
