//! Upgraded connections (WebSocket, `CONNECT`): once HTTP hands the socket to a relay,
//! the half-close policy and the drain deadline are enforced by a task of their own,
//! and the stream runs the tunnel's idle clock ([`IdleClock`]).

use std::time::Duration;

use tokio::time::Instant;

use crate::conn::Conn;

/// Turns `conn` into a tunnel and watches it until it closes: the peer's departure
/// under the half-close policy, or an abandonment (a tunnel clock, the drain
/// deadline), resets it.
#[cfg(feature = "hyper")]
pub(crate) fn watch(conn: &Conn) {
    use crate::supervise::enforce;
    conn.mark_tunnel();
    let conn = conn.clone();
    tokio::spawn(async move {
        let reason = tokio::select! {
            reason = enforce(conn.clone()) => reason,
            () = conn.closed() => return,
        };
        // A relay parked in a read is woken by the abandonment; one that does not touch
        // the socket is not, so the kernel's side is shut down for it.
        conn.force_close(reason).await;
    });
}

/// Looks per timeout: a tunnel closes at most `timeout / LOOKS` after its timeout.
pub(crate) const LOOKS: u32 = 8;

/// A tunnel's idle clock, at no cost per message: no clock read, no timer touched.
///
/// The payload the tunnel has moved either way ([`Conn::tunnel_moved`], a count the
/// stream keeps anyway) is compared at looks at most `timeout / LOOKS` apart; the
/// tunnel is idle at the first look that finds the count unchanged for a whole
/// timeout. So it closes no sooner than the timeout after its last payload, and at
/// most `timeout / LOOKS` later (as HAProxy's `timeout tunnel`, restarted by every
/// transfer, with a coarser end). The looks run while the relay waits in a read, as
/// the other read clocks do.
#[derive(Debug, Default)]
pub(crate) struct IdleClock {
    // Boxed: every stream carries the clock, and few become tunnels.
    look: Option<Box<Look>>,
}

#[derive(Debug)]
struct Look {
    /// When to look next.
    at: Instant,
    /// The count at the last look that found it changed (or at the clock's start).
    moved: u64,
    /// That look's time: no payload has moved since.
    quiet_since: Instant,
}

impl IdleClock {
    /// When to look next. The first call (the tunnel's first wait) starts the clock,
    /// the one time it reads the time outside a look.
    #[inline]
    pub(crate) fn next_look(&mut self, conn: &Conn, timeout: Duration) -> Instant {
        match &self.look {
            Some(look) => look.at,
            None => self.start(conn, timeout),
        }
    }

    #[cold]
    fn start(&mut self, conn: &Conn, timeout: Duration) -> Instant {
        let now = Instant::now();
        let at = now + timeout / LOOKS;
        self.look = Some(Box::new(Look {
            at,
            moved: conn.tunnel_moved(),
            quiet_since: now,
        }));
        at
    }

    /// Looks at the count at `now`, a look being due: whether the tunnel has moved
    /// nothing for `timeout`. If it has, the next look is set.
    #[cold]
    pub(crate) fn idle(&mut self, conn: &Conn, timeout: Duration, now: Instant) -> bool {
        let Some(look) = self.look.as_mut() else {
            self.start(conn, timeout);
            return false;
        };
        let moved = conn.tunnel_moved();
        if moved != look.moved {
            // Payload moved since the last look: the quiet starts now at the earliest.
            look.moved = moved;
            look.quiet_since = now;
        }
        let idle_at = look.quiet_since + timeout;
        if now >= idle_at {
            return true;
        }
        look.at = idle_at.min(now + timeout / LOOKS);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Conn {
        Conn::new(1, "192.0.2.7:1".parse().unwrap(), crate::Policy::default())
    }

    /// Walks the clock as a waiting reader does, with payload at `moves` (offsets from
    /// the start), and returns when it found the tunnel idle.
    fn idle_after(timeout: Duration, moves: &[Duration]) -> Duration {
        let conn = conn();
        let mut clock = IdleClock::default();
        let start = Instant::now();
        let mut at = clock.next_look(&conn, timeout);
        let mut moves = moves.iter().peekable();
        loop {
            // The payload that moved before this look.
            while moves.next_if(|&&m| start + m < at).is_some() {
                conn.add_read(1);
            }
            if clock.idle(&conn, timeout, at) {
                return at - start;
            }
            let next = clock.next_look(&conn, timeout);
            assert!(next > at, "the looks move on");
            assert!(
                next - at <= timeout / LOOKS,
                "looks at most an eighth apart"
            );
            at = next;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn closes_within_an_eighth_of_the_timeout_after_the_last_payload() {
        let timeout = Duration::from_secs(8);
        let ms = Duration::from_millis;
        // Nothing moves: exactly the timeout.
        assert_eq!(idle_after(timeout, &[]), timeout);
        for last in [ms(1), ms(999), ms(1000), ms(1001), ms(7_500), ms(20_000)] {
            // Payload every half second until `last`, then nothing.
            let moves: Vec<_> = (0..)
                .map(|i| ms(500) * i)
                .take_while(|&m| m < last)
                .chain([last])
                .collect();
            let quiet = idle_after(timeout, &moves) - last;
            assert!(
                quiet >= timeout && quiet <= timeout + timeout / LOOKS,
                "last payload at {last:?}: idle after {quiet:?} of quiet"
            );
        }
    }
}
