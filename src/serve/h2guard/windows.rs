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

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::Now;
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

/// The client's open streams, in the order it opened them. A client opens streams with
/// ever higher ids, so a new one goes at the back and a lookup is a binary search,
/// with no hashing (SipHash was a tenth of an HTTP/2 request's cost here) and nothing
/// a client can steer by choosing ids. A closed stream leaves a gap, dropped once it
/// reaches the front or once gaps outnumber open streams, so each close costs O(1)
/// amortised and the slots never exceed twice the open streams (plus a few).
#[derive(Debug, Default)]
struct Streams {
    slots: VecDeque<(u32, Option<Stream>)>,
    open: usize,
}

impl Streams {
    /// Gaps kept beyond the open streams before they are swept out.
    const SLACK: usize = 16;

    #[inline]
    fn index(&self, id: u32) -> Result<usize, usize> {
        // Clients number their streams 1, 3, 5, …: unless gaps were swept out, the
        // slot is where that numbering puts it.
        if let Some(&(first, _)) = self.slots.front()
            && let Some(step) = id.checked_sub(first)
        {
            let guess = (step / 2) as usize;
            if self.slots.get(guess).is_some_and(|&(slot, _)| slot == id) {
                return Ok(guess);
            }
        }
        self.slots.binary_search_by_key(&id, |&(slot, _)| slot)
    }

    /// Adds `id` unless it is there already.
    fn open(&mut self, id: u32, stream: Stream) {
        if self.slots.back().is_none_or(|&(last, _)| last < id) {
            self.slots.push_back((id, Some(stream)));
            self.open += 1;
            return;
        }
        // Not a new client stream (the guard opens only those): kept in order all the same.
        match self.index(id) {
            Ok(i) if self.slots[i].1.is_some() => {}
            Ok(i) => {
                self.slots[i].1 = Some(stream);
                self.open += 1;
            }
            Err(i) => {
                self.slots.insert(i, (id, Some(stream)));
                self.open += 1;
            }
        }
    }

    #[inline]
    fn get_mut(&mut self, id: u32) -> Option<&mut Stream> {
        let i = self.index(id).ok()?;
        self.slots[i].1.as_mut()
    }

    fn remove(&mut self, id: u32) -> Option<Stream> {
        let i = self.index(id).ok()?;
        let stream = self.slots[i].1.take()?;
        self.open -= 1;
        while self.slots.front().is_some_and(|(_, s)| s.is_none()) {
            self.slots.pop_front();
        }
        if self.slots.len() > 2 * self.open + Self::SLACK {
            self.slots.retain(|(_, s)| s.is_some());
        }
        Some(stream)
    }

    fn ids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter(|(_, s)| s.is_some())
            .map(|&(id, _)| id)
            .collect()
    }
}

/// The send side of one connection's flow control. Counts are kept as frames pass, so
/// that each frame costs O(log streams) whatever the number of streams. The deadlines
/// are in a B-tree, which needs no hashing either; only held windows are filed there.
#[derive(Debug)]
pub(super) struct SendWindows {
    clocks: Clocks,
    initial: i64,
    connection: Window,
    streams: Streams,
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
            streams: Streams::default(),
            responding: 0,
            deadlines: BTreeSet::new(),
        }
    }

    /// The client opened `stream` with a request.
    pub(super) fn opened(&mut self, stream: u32, now: &mut Now) {
        let s = Stream {
            opened_at: now.get(),
            window: Window::new(self.initial),
            responding: false,
        };
        self.streams.open(stream, s);
    }

    /// Follows whether `stream`'s window holds its response.
    fn follow_stream(&mut self, stream: u32, now: &mut Now) {
        if let Some(s) = self.streams.get_mut(stream) {
            follow_stream(&mut self.deadlines, stream, s, now, &self.clocks);
        }
    }

    /// Follows whether the connection's window holds the responses under way.
    fn follow_connection(&mut self, now: &mut Now) {
        let shut = self.responding > 0 && self.connection.window <= 0;
        file(
            &mut self.deadlines,
            CONNECTION,
            &mut self.connection,
            shut,
            now,
            &self.clocks,
        );
    }

    /// The stream ended on the server's side, or was reset by either side; when it
    /// was opened, if it was open.
    pub(super) fn closed(&mut self, stream: u32, now: &mut Now) -> Option<Instant> {
        let removed = self.streams.remove(stream);
        if let Some(s) = &removed {
            self.responding -= usize::from(s.responding);
            if let Some(filed) = s.window.filed {
                self.deadlines.remove(&(filed, stream));
            }
        }
        self.follow_connection(now);
        removed.map(|s| s.opened_at)
    }

    /// The server sent HEADERS on `stream`, its last frame if `end`; whether they
    /// were the first answer to the client's request (not trailers, nor a stream
    /// already gone).
    pub(super) fn answered(&mut self, stream: u32, end: bool, now: &mut Now) -> bool {
        let Some(s) = self.streams.get_mut(stream) else {
            return false;
        };
        let first = !s.responding;
        if end {
            self.closed(stream, now);
        } else if first {
            s.responding = true;
            self.responding += 1;
            follow_stream(&mut self.deadlines, stream, s, now, &self.clocks);
            self.follow_connection(now);
        }
        first
    }

    /// The server sent `len` bytes of DATA on `stream`, its last frame if `end`.
    pub(super) fn sent(&mut self, stream: u32, len: u32, end: bool, now: &mut Now) {
        self.connection.sent(len);
        if end {
            // The stream's own window matters no more.
            self.closed(stream, now);
            return;
        }
        if let Some(s) = self.streams.get_mut(stream) {
            s.window.sent(len);
            follow_stream(&mut self.deadlines, stream, s, now, &self.clocks);
        }
        self.follow_connection(now);
    }

    /// A WINDOW_UPDATE from the client (`stream` 0: the connection's).
    pub(super) fn window_update(&mut self, stream: u32, increment: u32, now: &mut Now) {
        let increment = i64::from(increment & 0x7fff_ffff);
        if stream == CONNECTION {
            self.connection.granted(increment);
            self.follow_connection(now);
        } else if let Some(s) = self.streams.get_mut(stream) {
            s.window.granted(increment);
            follow_stream(&mut self.deadlines, stream, s, now, &self.clocks);
        }
    }

    /// The client's SETTINGS_INITIAL_WINDOW_SIZE, which moves every stream's window.
    pub(super) fn initial_window(&mut self, size: u32, now: &mut Now) {
        let delta = i64::from(size) - self.initial;
        self.initial = i64::from(size);
        for id in self.streams.ids() {
            if let Some(s) = self.streams.get_mut(id) {
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
        self.streams.open
    }
}

/// Follows whether `stream`'s window holds its response `s`.
fn follow_stream(
    deadlines: &mut BTreeSet<(Instant, u32)>,
    stream: u32,
    s: &mut Stream,
    now: &mut Now,
    clocks: &Clocks,
) {
    let shut = s.responding && s.window.window <= 0;
    file(deadlines, stream, &mut s.window, shut, now, clocks);
}

/// Follows whether `window` (of `key`) is shut, and keeps its hold's deadline filed.
/// An open window with no hold (nearly every frame) has nothing to follow: a window
/// without a hold has no deadline filed.
#[inline]
fn file(
    deadlines: &mut BTreeSet<(Instant, u32)>,
    key: u32,
    window: &mut Window,
    shut: bool,
    now: &mut Now,
    clocks: &Clocks,
) {
    if !shut && window.hold.is_none() {
        debug_assert_eq!(window.filed, None);
        return;
    }
    refile(deadlines, key, window, shut, now.get(), *clocks);
}

#[inline(never)]
fn refile(
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

    fn stream(opened_at: Instant) -> Stream {
        Stream {
            opened_at,
            window: Window::new(DEFAULT_WINDOW),
            responding: false,
        }
    }

    /// The streams answer lookups as a map would, whatever the order streams close in,
    /// and hold no more slots than twice the open streams (plus the slack), even behind
    /// one stream that stays open from the start.
    #[test]
    fn streams_are_a_map_in_bounded_slots() {
        let now = Instant::now();
        let mut streams = Streams::default();
        let mut model = std::collections::BTreeSet::new();
        // A small deterministic generator: the order of closes varies, ids only grow.
        let mut seed = 0x2545_f491_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        streams.open(1, stream(now));
        model.insert(1);
        let mut id = 1;
        for _ in 0..20_000 {
            if next() % 3 != 0 || model.len() < 2 {
                id += 2;
                streams.open(id, stream(now));
                model.insert(id);
            } else {
                // Close one at random, never stream 1.
                let open: Vec<u32> = model.iter().copied().filter(|&s| s != 1).collect();
                let victim = open[next() as usize % open.len()];
                assert!(streams.remove(victim).is_some(), "stream {victim}");
                model.remove(&victim);
                assert!(streams.remove(victim).is_none(), "stream {victim} twice");
            }
            assert_eq!(streams.open, model.len());
            assert!(streams.slots.len() <= 2 * model.len() + Streams::SLACK);
        }
        for probe in 0..=id + 2 {
            assert_eq!(
                streams.get_mut(probe).is_some(),
                model.contains(&probe),
                "stream {probe}"
            );
        }
        assert_eq!(streams.ids(), model.iter().copied().collect::<Vec<_>>());
        // A stream opened again (not by the guard) is not counted twice; one below the
        // highest still finds its place.
        streams.open(1, stream(now));
        streams.open(0, stream(now));
        assert_eq!(streams.open, model.len() + 1);
        assert!(streams.get_mut(0).is_some());
    }

    #[test]
    fn a_zero_window_holds_a_response_until_updated() {
        let now = Instant::now();
        let mut windows = windows();
        windows.initial_window(0, &mut Now::at(now));
        windows.opened(1, &mut Now::at(now));
        assert_eq!(windows.deadline(), None, "no response yet");
        assert!(windows.answered(1, false, &mut Now::at(now)));
        assert_eq!(windows.deadline(), Some(now + SECOND));
        let later = now + SECOND / 2;
        windows.window_update(1, 100_000, &mut Now::at(later));
        assert_eq!(windows.deadline(), None);
        windows.sent(1, 100_000, false, &mut Now::at(later));
        assert_eq!(windows.deadline(), Some(later + SECOND));
        assert!(!windows.answered(1, true, &mut Now::at(later)), "trailers");
        assert_eq!(windows.deadline(), None);
        assert_eq!(windows.open(), 0);
    }

    #[test]
    fn the_connection_window_holds_every_response() {
        let now = Instant::now();
        let mut windows = windows();
        windows.opened(1, &mut Now::at(now));
        windows.answered(1, false, &mut Now::at(now));
        windows.sent(1, 65_535, false, &mut Now::at(now));
        assert_eq!(windows.deadline(), Some(now + SECOND));
        // The stream's window opens, the connection's stays shut.
        windows.window_update(1, 1 << 20, &mut Now::at(now));
        assert_eq!(windows.deadline(), Some(now + SECOND));
        windows.window_update(0, 1 << 20, &mut Now::at(now));
        assert_eq!(windows.deadline(), None);
    }

    /// Each stream has its own clock: streams taking turns at window 0 (as a healthy
    /// client's do, many times a second) never add up to one long hold.
    #[test]
    fn streams_taking_turns_at_zero_are_not_one_hold() {
        let start = Instant::now();
        let mut windows = windows();
        for stream in [1, 3] {
            windows.opened(stream, &mut Now::at(start));
            windows.answered(stream, false, &mut Now::at(start));
        }
        windows.window_update(0, 1 << 30, &mut Now::at(start));
        windows.sent(1, 65_535, false, &mut Now::at(start));
        for step in 1..40 {
            let now = start + SECOND / 4 * step;
            // The held one is updated, the other one runs dry.
            let (updated, dry) = if step % 2 == 1 { (1, 3) } else { (3, 1) };
            windows.sent(dry, 65_535, false, &mut Now::at(now));
            windows.window_update(updated, 65_535, &mut Now::at(now));
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
        windows.window_update(CONNECTION, 1 << 30, &mut Now::at(start));
        windows.opened(1, &mut Now::at(start));
        windows.answered(1, false, &mut Now::at(start));
        let mut now = start;
        windows.sent(1, 65_535, false, &mut Now::at(now));
        for _ in 0..10 {
            assert_eq!(windows.deadline(), Some(now + stall));
            now += SECOND * 30;
            windows.window_update(1, 32_768, &mut Now::at(now));
            assert_eq!(windows.deadline(), None);
            windows.sent(1, 32_768, false, &mut Now::at(now));
        }
    }

    /// Trickled WINDOW_UPDATEs open the window for a moment, but the DATA they let
    /// through falls short of the floor: the hold goes on across them.
    #[test]
    fn trickled_updates_do_not_end_a_hold() {
        let start = Instant::now();
        let stall = SECOND * 10;
        let mut windows = with_stall(stall);
        windows.initial_window(0, &mut Now::at(start));
        windows.window_update(CONNECTION, 1 << 30, &mut Now::at(start));
        windows.opened(1, &mut Now::at(start));
        windows.answered(1, false, &mut Now::at(start));
        let mut now = start;
        for _ in 0..5 {
            now += SECOND * 7 / 10;
            windows.window_update(1, 1, &mut Now::at(now));
            windows.sent(1, 1, false, &mut Now::at(now));
        }
        // 3.5 s held, 5 bytes: the floor's grace (5 s) ends 1.5 s from now, before
        // the stall timeout.
        assert_eq!(windows.deadline(), Some(start + MinRate::KESTREL.grace()));
        // A client that reads its fill keeps up with the floor...
        windows.window_update(1, 65_535, &mut Now::at(now));
        assert_eq!(windows.deadline(), None, "the window is open");
        windows.sent(1, 65_535, false, &mut Now::at(now));
        assert_eq!(windows.deadline(), Some(now + stall));
        // ...and its next update ends the hold.
        windows.window_update(1, 65_535, &mut Now::at(now));
        assert_eq!(windows.deadline(), None);
    }
}
