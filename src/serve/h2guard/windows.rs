//! The client's flow-control windows as the server's frames spend them: which
//! responses are under way and which of them cannot move because the client keeps its
//! window shut (zero-window hoarding, CVE-2019-9517).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// RFC 9113's initial window, until the client's SETTINGS say otherwise.
const DEFAULT_WINDOW: i64 = 65_535;

#[derive(Debug)]
struct Stream {
    opened_at: Instant,
    window: i64,
    /// The response's HEADERS went out and its end has not.
    responding: bool,
}

impl Stream {
    /// A response under way that its own window holds.
    fn held(&self) -> bool {
        self.responding && self.window <= 0
    }
}

/// The send side of one connection's flow control. Counts are kept as frames pass, so
/// that each frame costs one lookup whatever the number of streams: in a B-tree, as
/// stream ids are the client's to choose and a B-tree needs no hashing (SipHash was a
/// tenth of an HTTP/2 request's cost here) to stay immune to chosen keys.
#[derive(Debug)]
pub(super) struct SendWindows {
    initial: i64,
    connection: i64,
    streams: BTreeMap<u32, Stream>,
    /// Streams with a response under way.
    responding: usize,
    /// Of those, the ones whose own window is used up.
    held: usize,
    /// Since when some response has been unable to send.
    blocked_since: Option<Instant>,
}

impl Default for SendWindows {
    fn default() -> Self {
        SendWindows {
            initial: DEFAULT_WINDOW,
            connection: DEFAULT_WINDOW,
            streams: BTreeMap::new(),
            responding: 0,
            held: 0,
            blocked_since: None,
        }
    }
}

impl SendWindows {
    /// The client opened `stream` with a request.
    pub(super) fn opened(&mut self, stream: u32, now: Instant) {
        let window = self.initial;
        self.streams.entry(stream).or_insert(Stream {
            opened_at: now,
            window,
            responding: false,
        });
    }

    /// Changes `stream` (if open) with `change`, keeping the counts.
    fn change(&mut self, stream: u32, change: impl FnOnce(&mut Stream)) {
        if let Some(s) = self.streams.get_mut(&stream) {
            let (responding, held) = (s.responding, s.held());
            change(s);
            self.responding = self.responding + usize::from(s.responding) - usize::from(responding);
            self.held = self.held + usize::from(s.held()) - usize::from(held);
        }
    }

    /// The stream ended on the server's side, or was reset by either side; how long
    /// it had been open, if it was.
    pub(super) fn closed(&mut self, stream: u32, now: Instant) -> Option<Duration> {
        let removed = self.streams.remove(&stream);
        if let Some(s) = &removed {
            self.responding -= usize::from(s.responding);
            self.held -= usize::from(s.held());
        }
        self.update(now);
        removed.map(|s| now.saturating_duration_since(s.opened_at))
    }

    /// The server sent a response's HEADERS (not its end).
    pub(super) fn responding(&mut self, stream: u32, now: Instant) {
        self.change(stream, |s| s.responding = true);
        self.update(now);
    }

    /// The server sent `len` bytes of DATA on `stream`.
    pub(super) fn sent(&mut self, stream: u32, len: u32, now: Instant) {
        self.connection -= i64::from(len);
        self.change(stream, |s| s.window -= i64::from(len));
        self.update(now);
    }

    /// A WINDOW_UPDATE from the client (`stream` 0: the connection's).
    pub(super) fn window_update(&mut self, stream: u32, increment: u32, now: Instant) {
        let increment = i64::from(increment & 0x7fff_ffff);
        if stream == 0 {
            self.connection += increment;
        } else {
            self.change(stream, |s| s.window += increment);
        }
        self.update(now);
    }

    /// The client's SETTINGS_INITIAL_WINDOW_SIZE, which moves every stream's window.
    pub(super) fn initial_window(&mut self, size: u32, now: Instant) {
        let delta = i64::from(size) - self.initial;
        self.initial = i64::from(size);
        for s in self.streams.values_mut() {
            s.window += delta;
        }
        self.held = self.streams.values().filter(|s| s.held()).count();
        self.update(now);
    }

    /// Whether some response under way cannot send: its window, or the connection's,
    /// is used up.
    fn blocked(&self) -> bool {
        self.held > 0 || (self.connection <= 0 && self.responding > 0)
    }

    fn update(&mut self, now: Instant) {
        if !self.blocked() {
            self.blocked_since = None;
        } else if self.blocked_since.is_none() {
            self.blocked_since = Some(now);
        }
    }

    /// Since when a response has been held by the client's window, if one is.
    pub(super) fn blocked_since(&self) -> Option<Instant> {
        self.blocked_since
    }

    /// How many streams the client has open, for logs and tests.
    pub(super) fn open(&self) -> usize {
        self.streams.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_window_blocks_a_response_until_updated() {
        let now = Instant::now();
        let mut windows = SendWindows::default();
        windows.initial_window(0, now);
        windows.opened(1, now);
        assert_eq!(windows.blocked_since(), None, "no response yet");
        windows.responding(1, now);
        assert_eq!(windows.blocked_since(), Some(now));
        let later = now + Duration::from_secs(1);
        windows.window_update(1, 100, later);
        assert_eq!(windows.blocked_since(), None);
        windows.sent(1, 100, later);
        assert_eq!(windows.blocked_since(), Some(later));
        windows.closed(1, later);
        assert_eq!(windows.blocked_since(), None);
        assert_eq!(windows.open(), 0);
    }

    #[test]
    fn the_connection_window_blocks_every_response() {
        let now = Instant::now();
        let mut windows = SendWindows::default();
        windows.opened(1, now);
        windows.responding(1, now);
        windows.sent(1, 65_535, now);
        assert_eq!(windows.blocked_since(), Some(now));
        // The stream's window opens, the connection's stays shut.
        windows.window_update(1, 1 << 20, now);
        assert_eq!(windows.blocked_since(), Some(now));
        windows.window_update(0, 1, now);
        assert_eq!(windows.blocked_since(), None);
    }
}
