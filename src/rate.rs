//! Minimum data rates: a floor in bytes per second that a trickling peer must beat.
//!
//! The stall clocks restart on any progress, so a peer that sends or reads a few bytes
//! now and then is never cut by them. A [`MinRate`] bounds the rate instead, as
//! Kestrel's `MinRequestBodyDataRate` / `MinResponseDataRate` and Pingora's
//! `min_send_rate` do: once the measured time passes the grace, the bytes moved must
//! keep up with `bytes_per_sec` × that time.
//!
//! Only time spent waiting on the peer is measured: for the request body, while the
//! handler waits for body bytes; for the response, while a write is pending because
//! the peer does not read. A slow handler, or a server-sent-event stream that writes
//! rarely, spends no time waiting on its peer and is never cut. Tunnels (WebSocket,
//! `CONNECT`) have no floor.
//!
//! Bytes count from the first wait on, so that filling the kernel's send buffer does
//! not buy a slow reader minutes of allowance. The clock is read when a wait starts and
//! when it ends; the rate is computed then, never per read or write.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use conn_hygiene::{MinRate, Policy};
//!
//! // An upload service that accepts slow mobile clients: 100 B/s after 10 s.
//! let policy = Policy::builder()
//!     .min_body_rate(Some(MinRate::new(100, Duration::from_secs(10))))
//!     .build()
//!     .expect("valid policy");
//! assert_eq!(policy.min_body_rate().unwrap().bytes_per_sec(), 100);
//! ```

use std::time::Duration;

use tokio::time::Instant;

/// A data-rate floor: `bytes_per_sec`, enforced once the time measured passes `grace`.
///
/// The floor allows `max(grace, bytes / bytes_per_sec)` of waiting: a peer that has
/// moved 2400 bytes under a 240 B/s floor may have kept us waiting for 10 s in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MinRate {
    bytes_per_sec: u32,
    grace: Duration,
}

impl MinRate {
    /// Kestrel's default for request bodies and responses: 240 bytes/s after 5 s.
    pub const KESTREL: MinRate = MinRate::new(240, Duration::from_secs(5));

    /// A floor of `bytes_per_sec` after `grace`. A policy rejects a zero rate or grace
    /// when it is built.
    pub const fn new(bytes_per_sec: u32, grace: Duration) -> Self {
        MinRate {
            bytes_per_sec,
            grace,
        }
    }

    /// The floor, in bytes per second.
    pub const fn bytes_per_sec(self) -> u32 {
        self.bytes_per_sec
    }

    /// The measured time before the floor applies.
    pub const fn grace(self) -> Duration {
        self.grace
    }

    /// How much waiting `bytes` have earned: the grace, or the time the floor allows
    /// for them, whichever is longer.
    pub(crate) fn allowance(self, bytes: u64) -> Duration {
        let rate = u128::from(self.bytes_per_sec.max(1));
        let nanos = u128::from(bytes) * 1_000_000_000 / rate;
        // Saturates: a huge byte count has earned more waiting than any deadline needs.
        let earned = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.grace.max(earned)
    }

    /// Whether the floor is usable: a zero rate or grace would cut at once.
    pub(crate) fn check(self) -> Result<(), &'static str> {
        if self.bytes_per_sec == 0 {
            return Err("bytes_per_sec must be greater than zero (use None to disable)");
        }
        if self.grace.is_zero() {
            return Err("grace must be greater than zero");
        }
        if self.grace > crate::policy::MAX_TIMEOUT {
            return Err("grace must be at most a year");
        }
        Ok(())
    }
}

/// The waiting time measured so far against a floor, and the byte count it started
/// from. Its owner keeps the start of the current wait (it already has it for its stall
/// clock) and the running byte count.
///
/// Bytes count from the first wait on: what moved before the peer first made us wait
/// says nothing of its rate. On the send side it matters most: the first writes only
/// fill the kernel's send buffer (hundreds of kilobytes on Linux), which would earn a
/// slow reader minutes of allowance; once the buffer is full, a write completes only as
/// fast as the peer reads.
///
/// Two words, as every stream carries one: nanoseconds waited (saturating), and the
/// byte count where counting starts, [`UNSET`] before the first wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meter {
    waited: u64,
    base: u64,
}

/// A meter's base before its first wait.
const UNSET: u64 = u64::MAX;

impl Default for Meter {
    fn default() -> Self {
        Meter {
            waited: 0,
            base: UNSET,
        }
    }
}

impl Meter {
    /// Adds a wait that began at `since` and ended at `now`.
    pub(crate) fn stop(&mut self, since: Instant, now: Instant) {
        let nanos = now.saturating_duration_since(since).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        self.waited = self.waited.saturating_add(nanos);
    }

    /// When a wait that began at `since` breaks `floor`, with `total` bytes moved so
    /// far (the first call fixes where counting starts).
    pub(crate) fn deadline(&mut self, floor: MinRate, total: u64, since: Instant) -> Instant {
        if self.base == UNSET {
            self.base = total;
        }
        let bytes = total.saturating_sub(self.base);
        since
            + floor
                .allowance(bytes)
                .saturating_sub(Duration::from_nanos(self.waited))
    }
}

/// The earlier of two optional deadlines, each with what its expiry means.
pub(crate) fn earliest<T>(
    a: Option<(Instant, T)>,
    b: Option<(Instant, T)>,
) -> Option<(Instant, T)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowance_is_the_grace_or_the_time_earned() {
        let floor = MinRate::new(240, Duration::from_secs(5));
        assert_eq!(floor.allowance(0), Duration::from_secs(5));
        assert_eq!(floor.allowance(1200), Duration::from_secs(5));
        assert_eq!(floor.allowance(2400), Duration::from_secs(10));
        assert_eq!(floor.allowance(u64::MAX), Duration::from_nanos(u64::MAX));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_add_up_and_only_waits_count() {
        let floor = MinRate::new(100, Duration::from_secs(2));
        let mut meter = Meter::default();
        let start = Instant::now();
        // A first wait of 1.5 s, from 0 bytes, then 10 s of handler time that is not
        // measured.
        assert_eq!(meter.deadline(floor, 0, start), start + floor.grace());
        meter.stop(start, start + Duration::from_millis(1500));
        let since = start + Duration::from_millis(11_500);
        // With 100 bytes moved, 1 s of waiting was earned, below the 2 s grace: 0.5 s
        // of grace is left.
        assert_eq!(
            meter.deadline(floor, 100, since),
            since + Duration::from_millis(500)
        );
        // 1000 bytes earned 10 s.
        assert_eq!(
            meter.deadline(floor, 1000, since),
            since + Duration::from_millis(8500)
        );
        // Over budget: the deadline is the wait's start.
        meter.stop(since, since + Duration::from_secs(20));
        assert_eq!(meter.deadline(floor, 1000, since), since);
    }

    #[test]
    fn zero_rate_or_grace_is_rejected() {
        assert!(MinRate::new(0, Duration::from_secs(1)).check().is_err());
        assert!(MinRate::new(1, Duration::ZERO).check().is_err());
        assert!(MinRate::KESTREL.check().is_ok());
    }
}
