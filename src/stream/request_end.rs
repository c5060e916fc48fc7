//! How the stream's reader meets the end of an HTTP/1 request without a wakeup: the
//! clock it arms while it waits fires in time for the end, which leaves its time in
//! the connection's handoff (`conn::handoff`) for the reader's next look.

use std::task::Context;
use std::time::Duration;

use tokio::time::Instant;

use super::Clock;
use crate::conn::{Conn, Flags};

/// Whether the clock a waiting reader arms fires in time for the end of a request in
/// flight, or of one that begins and ends between two of its reads, so that the end
/// need not wake it (see `conn::handoff`): on HTTP/1 with request boundaries, after
/// the first byte, where idleness is judged by bytes (not over TLS). The end stops the
/// request's head clock (which only makes the next deadline later), and starts the
/// idle clock: at the end, whose time the reader finds in the handoff when it looks
/// (if it saw the request in flight, or bytes came since its last wait), or from the
/// start of the wait it is in. An idle wait's clock is armed at or before that; a
/// reader that sees a request in flight arms its clock at the idle timeout after the
/// request's head began, which is before the end. Pressure that shortens the idle
/// timeout after the mark makes the end wake the reader.
#[inline]
pub(super) fn covers_request_end(flags: Flags) -> bool {
    flags.is_plain_http1_past_first_byte()
}

/// A wait while an HTTP/1 request is in flight, with no clock to run: the reader's
/// clock is armed at the idle timeout after `since` (a time before the request's end),
/// and marked, so that the end need not wake it (see `covers_request_end`). `None`
/// when the reader is to look again now: the request ended meanwhile.
#[inline(never)]
pub(super) fn wait_busy(
    clock: &mut Clock,
    marked: &mut bool,
    cx: &mut Context<'_>,
    conn: &Conn,
    since: Instant,
    timeout: Duration,
) -> Option<()> {
    if clock.poll_until(cx, since + timeout).is_pending() {
        *marked = true;
        if conn.mark_reader(Some(timeout)) && conn.in_flight() == 0 {
            // The request ended as the mark went up: seen now.
            *marked = false;
            conn.unmark_reader();
            return None;
        }
        return Some(());
    }
    // The request outlasted the clock: its end wakes the reader.
    if std::mem::take(marked) && unmarked_as_it_ended(conn) {
        return None;
    }
    Some(())
}

/// Takes the reader's mark back (the end of a request wakes it again); whether the
/// request in flight ended meanwhile, so that the reader looks again now.
#[inline]
pub(super) fn unmarked_as_it_ended(conn: &Conn) -> bool {
    conn.unmark_reader() && conn.in_flight() == 0
}

/// Where the idle wait starts after a request ended: at its `end`, or at the start the
/// reader has if later (a write after the end moved it, see `count_written`); from now
/// if the end left no time (the start the reader has may be older than the request).
#[inline]
pub(super) fn idle_start(end: Option<Instant>, since: Option<Instant>) -> Option<Instant> {
    end.map(|end| since.map_or(end, |since| since.max(end)))
}
