//! [`IdleClock`]: a tunnel's idle clock, judged from the bytes it moved rather than a
//! clock read per message.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use tokio::task::coop::unconstrained;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::conn::Conn;

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
///
/// The timer's waker marks the look due and wakes the connection's reader, which the
/// relay's read registers at every wait anyway: between looks, a wait asks one flag.
#[derive(Debug, Default)]
pub(crate) struct IdleClock {
    // Boxed: every stream carries the clock, and few become tunnels.
    look: Option<Box<Look>>,
}

#[derive(Debug)]
struct Look {
    /// Fires at the next look.
    timer: Pin<Box<Sleep>>,
    due: Arc<Due>,
    /// The count at the last look that found it changed (or at the clock's start).
    moved: u64,
    /// That look's time: no payload has moved since.
    quiet_since: Instant,
}

/// The timer's waker.
#[derive(Debug)]
struct Due {
    due: AtomicBool,
    conn: Conn,
}

impl Wake for Due {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Marked before the reader is woken: a reader registered before it asks the
        // flag sees the mark, or is woken after it.
        self.due.store(true, Ordering::Release);
        self.conn.wake_reader();
    }
}

impl IdleClock {
    /// Whether the tunnel has moved nothing for `timeout`. The relay's read asks at
    /// each wait, registered as the connection's reader first (the looks wake it).
    /// The first call starts the clock.
    #[inline]
    pub(crate) fn idle(&mut self, conn: &Conn, timeout: Duration) -> bool {
        match &self.look {
            Some(look) if !look.due.due.load(Ordering::Acquire) => false,
            _ => self.look(conn, timeout),
        }
    }

    /// A look: compares the count, and arms the timer for the next one.
    #[cold]
    fn look(&mut self, conn: &Conn, timeout: Duration) -> bool {
        let mut now = Instant::now();
        let look = self.look.get_or_insert_with(|| {
            Box::new(Look {
                timer: Box::pin(sleep_until(now)),
                due: Arc::new(Due {
                    due: AtomicBool::new(false),
                    conn: conn.clone(),
                }),
                moved: conn.tunnel_moved(),
                quiet_since: now,
            })
        });
        let waker = Waker::from(look.due.clone());
        loop {
            look.due.due.store(false, Ordering::Relaxed);
            let moved = conn.tunnel_moved();
            if moved != look.moved {
                // Payload moved since the last look: the quiet starts now at the
                // earliest.
                look.moved = moved;
                look.quiet_since = now;
            }
            let idle_at = look.quiet_since + timeout;
            if now >= idle_at {
                return true;
            }
            look.timer
                .as_mut()
                .reset(idle_at.min(now + timeout / LOOKS));
            // Unconstrained: out of the task's coop budget a sleep would answer
            // `Pending` without arming.
            let timer = Pin::new(&mut unconstrained(look.timer.as_mut()))
                .poll(&mut Context::from_waker(&waker));
            if timer.is_pending() {
                return false;
            }
            // Already due (the time moved on while we looked): look again.
            now = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;

    fn conn() -> Conn {
        Conn::new(1, "192.0.2.7:1".parse().unwrap(), crate::Policy::default())
    }

    /// Waits as a relay's read does: registered as the reader, it asks the clock.
    async fn until_idle(conn: &Conn, clock: &mut IdleClock, timeout: Duration) {
        std::future::poll_fn(|cx| {
            conn.register_reader(cx.waker());
            if clock.idle(conn, timeout) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Waits as a relay's read does, with payload at `moves` (offsets from the start),
    /// and returns when the clock found the tunnel idle.
    async fn idle_after(timeout: Duration, moves: &[Duration]) -> Duration {
        let conn = conn();
        let mut clock = IdleClock::default();
        let start = Instant::now();
        let mut moves = moves.iter().peekable();
        loop {
            let wait = until_idle(&conn, &mut clock, timeout);
            let Some(&&next) = moves.peek() else {
                let fired = tokio::time::timeout(timeout * 2, wait).await;
                fired.expect("the clock fires");
                return start.elapsed();
            };
            tokio::select! {
                () = wait => return start.elapsed(),
                () = tokio::time::sleep_until(start + next) => {
                    conn.add_read(1);
                    moves.next();
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn closes_within_an_eighth_of_the_timeout_after_the_last_payload() {
        let timeout = Duration::from_secs(8);
        let ms = Duration::from_millis;
        // Nothing moves: exactly the timeout.
        assert_eq!(idle_after(timeout, &[]).await, timeout);
        for last in [ms(1), ms(999), ms(1000), ms(1001), ms(7_500), ms(20_000)] {
            // Payload every half second until `last`, then nothing.
            let moves: Vec<_> = (0..)
                .map(|i| ms(500) * i)
                .take_while(|&m| m < last)
                .chain([last])
                .collect();
            let quiet = idle_after(timeout, &moves).await - last;
            assert!(
                quiet >= timeout && quiet <= timeout + timeout / LOOKS,
                "last payload at {last:?}: idle after {quiet:?} of quiet"
            );
        }
    }

    /// On real threads: the looks' wakeups (the timer fires on either worker) race the
    /// reader's waits, and payload moves from another task. Every clock must find its
    /// tunnel idle, never before the timeout after the last payload, and none may
    /// stay stuck for a lost wakeup.
    #[test]
    fn no_look_is_lost_across_threads() {
        const TUNNELS: u32 = 200;
        let timeout = Duration::from_millis(40);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let tunnels = (0..TUNNELS).map(|i| {
                tokio::spawn(async move {
                    let conn = conn();
                    let start = Instant::now();
                    let last = Arc::new(std::sync::Mutex::new(start));
                    let mover = {
                        let (conn, last) = (conn.clone(), last.clone());
                        tokio::spawn(async move {
                            for _ in 0..i % 7 {
                                tokio::time::sleep(Duration::from_millis(u64::from(i % 13) + 5))
                                    .await;
                                // Stamped before it moves: the clock may see it at once.
                                *last.lock().unwrap() = Instant::now();
                                conn.add_read(1);
                            }
                        })
                    };
                    let mut clock = IdleClock::default();
                    let wait = until_idle(&conn, &mut clock, timeout);
                    let found = tokio::time::timeout(Duration::from_secs(10), wait).await;
                    let quiet = last.lock().unwrap().elapsed();
                    mover.await.unwrap();
                    (i, found.is_ok(), quiet)
                })
            });
            for tunnel in tunnels.collect::<Vec<_>>() {
                let (i, found, quiet) = tunnel.await.unwrap();
                assert!(found, "tunnel {i}: the clock never found it idle");
                assert!(
                    quiet >= timeout,
                    "tunnel {i}: idle after {quiet:?} of quiet"
                );
            }
        });
    }
}
