//! The client's flow-control windows as the server's frames spend them: which
//! responses are under way and which of them the client keeps from moving
//! (zero-window hoarding, CVE-2019-9517).
//!
//! Each response, and the connection as a whole, has its own [`Hold`]: a window shut
//! for the policy's write-stall timeout in one stretch is cut, as a blocked socket
//! write would be; and across a hold's stretches, the DATA the client let through
//! must keep up with the policy's response floor, so that trickled WINDOW_UPDATEs of
//! a few bytes cannot keep a response pinned. A hold ends when the response closes,
//! or when its window opens with the floor kept (a healthy client that reads as fast
//! as it can hits window 0 many times a second: each time starts afresh).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::MinRate;

/// RFC 9113's initial window, until the client's SETTINGS say otherwise.
const DEFAULT_WINDOW: i64 = 65_535;

/// The key of the connection's own window among the holds (stream 0 is the
/// connection's in HTTP/2).
const CONNECTION: u32 = 0;

/// What the client owes: the policy's clocks, fixed for the connection (a request's
/// override must not relax the clock of the other streams).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Clocks {
    /// The longest a window may stay shut in one stretch.
    pub(super) stall: Option<Duration>,
    /// The floor the DATA sent during a hold must keep up with.
    pub(super) floor: Option<MinRate>,
}

/// A response (or the connection) the client's window held at least once since it
/// last kept up.
///
/// Its bytes count from the last WINDOW_UPDATE before it began: when a window shuts,
/// the client has that much of ours to read before it can grant more, so a client on a
/// slow link that takes half a minute to read its 64 KiB window (2 KB/s) is judged by
/// them, not cut at the floor's grace. Bytes before that update were paid for by it.
#[derive(Debug, Clone, Copy)]
struct Hold {
    /// Since when the window has been shut, if it is now.
    shut_since: Option<Instant>,
    /// How long the window was shut in earlier stretches of this hold.
    shut_before: Duration,
    /// DATA bytes sent during this hold.
    sent: u64,
}

impl Hold {
    /// When the client has owed too long, if the window is shut now.
    fn deadline(&self, clocks: Clocks) -> Option<Instant> {
        let since = self.shut_since?;
        let stall = clocks.stall.map(|stall| since + stall);
        let floor = clocks
            .floor
            .map(|floor| since + floor.allowance(self.sent).saturating_sub(self.shut_before));
        match (stall, floor) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the DATA sent kept up with the floor (no grace) for the time shut.
    fn kept_up(&self, clocks: Clocks) -> bool {
        clocks.floor.is_none_or(|floor| {
            MinRate::new(floor.bytes_per_sec(), Duration::ZERO).allowance(self.sent)
                >= self.shut_before
        })
    }
}

/// One window (a stream's or the connection's) and its hold.
#[derive(Debug)]
struct Window {
    window: i64,
    /// DATA bytes sent since the client last granted more.
    unanswered: u64,
    hold: Option<Hold>,
    /// The hold's deadline as filed in [`SendWindows::deadlines`].
    filed: Option<Instant>,
}

impl Window {
    fn new(window: i64) -> Self {
        Window {
            window,
            unanswered: 0,
            hold: None,
            filed: None,
        }
    }

    /// Follows whether the window is `shut` now; the hold's new deadline.
    fn follow(&mut self, shut: bool, now: Instant, clocks: Clocks) -> Option<Instant> {
        match (&mut self.hold, shut) {
            (None, true) => {
                self.hold = Some(Hold {
                    shut_since: Some(now),
                    shut_before: Duration::ZERO,
                    sent: self.unanswered,
                });
            }
            (Some(hold), true) => {
                hold.shut_since.get_or_insert(now);
            }
            (Some(hold), false) => {
                if let Some(since) = hold.shut_since.take() {
                    hold.shut_before += now.saturating_duration_since(since);
                    if hold.kept_up(clocks) {
                        self.hold = None;
                    }
                }
            }
            (None, false) => {}
        }
        self.hold.and_then(|hold| hold.deadline(clocks))
    }

    fn sent(&mut self, len: u32) {
        self.window -= i64::from(len);
        self.unanswered += u64::from(len);
        if let Some(hold) = &mut self.hold {
            hold.sent += u64::from(len);
        }
    }

    /// A WINDOW_UPDATE of `increment`.
    fn granted(&mut self, increment: i64) {
        self.window += increment;
        self.unanswered = 0;
    }
}

#[derive(Debug)]
struct Stream {
    opened_at: Instant,
    window: Window,
    /// The response's HEADERS went out and its end has not.
    responding: bool,
}

/// The send side of one connection's flow control. Counts are kept as frames pass, so
/// that each frame costs O(log streams) whatever the number of streams: in B-trees, as
/// stream ids are the client's to choose and a B-tree needs no hashing (SipHash was a
/// tenth of an HTTP/2 request's cost here) to stay immune to chosen keys.
#[derive(Debug)]
pub(super) struct SendWindows {
    clocks: Clocks,
    initial: i64,
    connection: Window,
    streams: BTreeMap<u32, Stream>,
    /// Streams with a response under way.
    responding: usize,
    /// The deadline of every shut window's hold, earliest first.
    deadlines: BTreeSet<(Instant, u32)>,
}

impl SendWindows {
    pub(super) fn new(clocks: Clocks) -> Self {
        SendWindows {
            clocks,
            initial: DEFAULT_WINDOW,
            connection: Window::new(DEFAULT_WINDOW),
            streams: BTreeMap::new(),
            responding: 0,
            deadlines: BTreeSet::new(),
        }
    }

    /// The client opened `stream` with a request.
    pub(super) fn opened(&mut self, stream: u32, now: Instant) {
        let window = self.initial;
        self.streams.entry(stream).or_insert(Stream {
            opened_at: now,
            window: Window::new(window),
            responding: false,
        });
    }

    /// Follows whether `stream`'s window holds its response.
    fn follow_stream(&mut self, stream: u32, now: Instant) {
        if let Some(s) = self.streams.get_mut(&stream) {
            let shut = s.responding && s.window.window <= 0;
            file(
                &mut self.deadlines,
                stream,
                &mut s.window,
                shut,
                now,
                self.clocks,
            );
        }
    }

    /// Follows whether the connection's window holds the responses under way.
    fn follow_connection(&mut self, now: Instant) {
        let shut = self.responding > 0 && self.connection.window <= 0;
        let clocks = self.clocks;
        file(
            &mut self.deadlines,
            CONNECTION,
            &mut self.connection,
            shut,
            now,
            clocks,
        );
    }

    /// The stream ended on the server's side, or was reset by either side; how long
    /// it had been open, if it was.
    pub(super) fn closed(&mut self, stream: u32, now: Instant) -> Option<Duration> {
        let removed = self.streams.remove(&stream);
        if let Some(s) = &removed {
            self.responding -= usize::from(s.responding);
            if let Some(filed) = s.window.filed {
                self.deadlines.remove(&(filed, stream));
            }
        }
        self.follow_connection(now);
        removed.map(|s| now.saturating_duration_since(s.opened_at))
    }

    /// The server sent HEADERS on `stream`, its last frame if `end`; whether they
    /// were the first answer to the client's request (not trailers, nor a stream
    /// already gone).
    pub(super) fn answered(&mut self, stream: u32, end: bool, now: Instant) -> bool {
        let Some(s) = self.streams.get_mut(&stream) else {
            return false;
        };
        let first = !s.responding;
        if end {
            self.closed(stream, now);
        } else if first {
            s.responding = true;
            self.responding += 1;
            self.follow_stream(stream, now);
            self.follow_connection(now);
        }
        first
    }

    /// The server sent `len` bytes of DATA on `stream`.
    pub(super) fn sent(&mut self, stream: u32, len: u32, now: Instant) {
        self.connection.sent(len);
        if let Some(s) = self.streams.get_mut(&stream) {
            s.window.sent(len);
        }
        self.follow_stream(stream, now);
        self.follow_connection(now);
    }

    /// A WINDOW_UPDATE from the client (`stream` 0: the connection's).
    pub(super) fn window_update(&mut self, stream: u32, increment: u32, now: Instant) {
        let increment = i64::from(increment & 0x7fff_ffff);
        if stream == CONNECTION {
            self.connection.granted(increment);
            self.follow_connection(now);
        } else if let Some(s) = self.streams.get_mut(&stream) {
            s.window.granted(increment);
            self.follow_stream(stream, now);
        }
    }

    /// The client's SETTINGS_INITIAL_WINDOW_SIZE, which moves every stream's window.
    pub(super) fn initial_window(&mut self, size: u32, now: Instant) {
        let delta = i64::from(size) - self.initial;
        self.initial = i64::from(size);
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            if let Some(s) = self.streams.get_mut(&id) {
                s.window.window += delta;
            }
            self.follow_stream(id, now);
        }
    }

    /// When the response (or connection) held longest has owed the client's reading
    /// too long, if one is held.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// How many streams the client has open, for logs and tests.
    pub(super) fn open(&self) -> usize {
        self.streams.len()
    }
}

/// Follows whether `window` (of `key`) is shut, and keeps its hold's deadline filed.
fn file(
    deadlines: &mut BTreeSet<(Instant, u32)>,
    key: u32,
    window: &mut Window,
    shut: bool,
    now: Instant,
    clocks: Clocks,
) {
    let deadline = window.follow(shut, now, clocks);
    if deadline != window.filed {
        if let Some(old) = window.filed {
            deadlines.remove(&(old, key));
        }
        if let Some(new) = deadline {
            deadlines.insert((new, key));
        }
        window.filed = deadline;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn windows() -> SendWindows {
        with_stall(SECOND)
    }

    fn with_stall(stall: Duration) -> SendWindows {
        SendWindows::new(Clocks {
            stall: Some(stall),
            floor: Some(MinRate::KESTREL),
        })
    }

    #[test]
    fn a_zero_window_holds_a_response_until_updated() {
        let now = Instant::now();
        let mut windows = windows();
        windows.initial_window(0, now);
        windows.opened(1, now);
        assert_eq!(windows.deadline(), None, "no response yet");
        assert!(windows.answered(1, false, now));
        assert_eq!(windows.deadline(), Some(now + SECOND));
        let later = now + SECOND / 2;
        windows.window_update(1, 100_000, later);
        assert_eq!(windows.deadline(), None);
        windows.sent(1, 100_000, later);
        assert_eq!(windows.deadline(), Some(later + SECOND));
        assert!(!windows.answered(1, true, later), "trailers");
        assert_eq!(windows.deadline(), None);
        assert_eq!(windows.open(), 0);
    }

    #[test]
    fn the_connection_window_holds_every_response() {
        let now = Instant::now();
        let mut windows = windows();
        windows.opened(1, now);
        windows.answered(1, false, now);
        windows.sent(1, 65_535, now);
        assert_eq!(windows.deadline(), Some(now + SECOND));
        // The stream's window opens, the connection's stays shut.
        windows.window_update(1, 1 << 20, now);
        assert_eq!(windows.deadline(), Some(now + SECOND));
        windows.window_update(0, 1 << 20, now);
        assert_eq!(windows.deadline(), None);
    }

    /// Each stream has its own clock: streams taking turns at window 0 (as a healthy
    /// client's do, many times a second) never add up to one long hold.
    #[test]
    fn streams_taking_turns_at_zero_are_not_one_hold() {
        let start = Instant::now();
        let mut windows = windows();
        for stream in [1, 3] {
            windows.opened(stream, start);
            windows.answered(stream, false, start);
        }
        windows.window_update(0, 1 << 30, start);
        windows.sent(1, 65_535, start);
        for step in 1..40 {
            let now = start + SECOND / 4 * step;
            // The held one is updated, the other one runs dry.
            let (updated, dry) = if step % 2 == 1 { (1, 3) } else { (3, 1) };
            windows.sent(dry, 65_535, now);
            windows.window_update(updated, 65_535, now);
            assert_eq!(windows.deadline(), Some(now + SECOND), "step {step}");
        }
    }

    /// A client on a slow link reads its 64 KiB window in half a minute: the stall
    /// timeout judges it, not the floor's grace.
    #[test]
    fn a_slow_reader_is_judged_by_the_window_it_read() {
        let start = Instant::now();
        let stall = SECOND * 60;
        let mut windows = with_stall(stall);
        windows.window_update(CONNECTION, 1 << 30, start);
        windows.opened(1, start);
        windows.answered(1, false, start);
        let mut now = start;
        windows.sent(1, 65_535, now);
        for _ in 0..10 {
            assert_eq!(windows.deadline(), Some(now + stall));
            now += SECOND * 30;
            windows.window_update(1, 32_768, now);
            assert_eq!(windows.deadline(), None);
            windows.sent(1, 32_768, now);
        }
    }

    /// Trickled WINDOW_UPDATEs open the window for a moment, but the DATA they let
    /// through falls short of the floor: the hold goes on across them.
    #[test]
    fn trickled_updates_do_not_end_a_hold() {
        let start = Instant::now();
        let stall = SECOND * 10;
        let mut windows = with_stall(stall);
        windows.initial_window(0, start);
        windows.window_update(CONNECTION, 1 << 30, start);
        windows.opened(1, start);
        windows.answered(1, false, start);
        let mut now = start;
        for _ in 0..5 {
            now += SECOND * 7 / 10;
            windows.window_update(1, 1, now);
            windows.sent(1, 1, now);
        }
        // 3.5 s held, 5 bytes: the floor's grace (5 s) ends 1.5 s from now, before
        // the stall timeout.
        assert_eq!(windows.deadline(), Some(start + MinRate::KESTREL.grace()));
        // A client that reads its fill keeps up with the floor...
        windows.window_update(1, 65_535, now);
        assert_eq!(windows.deadline(), None, "the window is open");
        windows.sent(1, 65_535, now);
        assert_eq!(windows.deadline(), Some(now + stall));
        // ...and its next update ends the hold.
        windows.window_update(1, 65_535, now);
        assert_eq!(windows.deadline(), None);
    }
}
