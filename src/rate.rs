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
//! A reader is judged by what it received, not by when its writer was woken. Linux
//! reports a socket writable again only once about a third of its send buffer has
//! drained, so a reader slower than a few kilobytes per second completes no write for
//! longer than the grace while it reads all along. On Linux, for a TCP transport (TLS
//! included: the stream sits below it), the response floor and the write-stall clock
//! therefore count the bytes the peer acknowledged (`TCP_INFO`, read through
//! `NETLINK_SOCK_DIAG` when a clock is about to fire, never per write), and the time
//! the kernel spends retransmitting to a silent peer (loss recovery, a retransmission
//! timeout's back-off) is the network's, forgiven up to the write-stall timeout per
//! response (per connection on HTTP/2, where the floor is per connection). Elsewhere,
//! the bytes the socket took stand in.
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

/// The longest timeout accepted: longer ones would overflow deadlines, and a clock
/// that long is better disabled. The policy's clocks and the floors' grace share it.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

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
        if self.grace > MAX_TIMEOUT {
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

/// The peer's progress as its kernel saw it, when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Bytes the peer has acknowledged since the connection began, selectively
    /// acknowledged ones included.
    pub(crate) acked: u64,
    /// How long the kernel has been retransmitting (a retransmission timeout's
    /// back-off, or loss recovery: `Duration::MAX` when the start is unknown); zero
    /// when it is not. That time is the network's, not the peer's.
    pub(crate) retransmitting_for: Duration,
    /// Bytes we wrote are still in the kernel, unsent or unacknowledged.
    pub(crate) queued: bool,
}

/// Where the write-side clocks learn what the peer has taken: on Linux, the TCP
/// socket's `TCP_INFO`. Asked only when a clock is about to fire.
pub(crate) trait PeerProgress: Send + Sync + std::fmt::Debug {
    /// The kernel's view now, or `None` where it cannot be had.
    fn sample(&self) -> Option<Sample>;
}

/// The most time forgiven to a network the kernel is retransmitting into, per
/// measure: the write-stall timeout, or a minute without one. A peer that vanished
/// mid-response is then cut at most this long after the clock that would have cut it.
pub(crate) fn network_bound(write_stall: Option<Duration>) -> Duration {
    write_stall.unwrap_or(Duration::from_secs(60))
}

/// How far apart the kernel is asked while it retransmits into silence.
const RECHECK: Duration = Duration::from_secs(1);

/// What the kernel last said of the peer's reading, kept between the samples of one
/// measure (a response on HTTP/1, a floor on HTTP/2).
///
/// A writer is woken when its socket turns writable, and Linux says so only once a
/// third of the send buffer has drained: on a link slower than a few kilobytes per
/// second, no write completes for longer than the floor's grace while the peer reads
/// all along. So the clocks judge the peer by the bytes it acknowledged, and they do
/// so lazily: a deadline computed from the last sample fires, the kernel is asked,
/// and if the peer kept up (or the network, not the peer, stalled) the deadline moves
/// and is armed again. A peer that keeps up is asked about once per deadline, which
/// grows with the bytes it earns.
#[derive(Debug, Default)]
pub(crate) struct Acked(Option<Box<Kernel>>);

/// What [`Acked`] keeps once the kernel was asked.
#[derive(Debug, Default, Clone, Copy)]
struct Kernel {
    // Bytes acknowledged at the last sample; `None` without a kernel view (then the
    // bytes the socket took stand in).
    bytes: Option<u64>,
    // When a sample last showed the peer had taken more: the stall clock restarts.
    progressed_at: Option<Instant>,
    sampled_at: Option<Instant>,
    // Time forgiven to the network in this measure, at most the bound.
    excused: Duration,
    // The idle clock waits for the last answer's delivery until then.
    idle_held_until: Option<Instant>,
}

impl Acked {
    /// A new measure begins: its forgiveness starts from zero, and where the kernel
    /// can be asked, the count starts from what it says now.
    pub(crate) fn restart(&mut self, progress: Option<&dyn PeerProgress>) {
        match (progress, &mut self.0) {
            (Some(progress), _) => self.kernel().restart(progress),
            (None, Some(kernel)) => kernel.excused = Duration::ZERO,
            (None, None) => {}
        }
    }

    /// See [`Kernel::refresh`]; nothing without a kernel to ask.
    pub(crate) fn refresh(&mut self, progress: Option<&dyn PeerProgress>, age: Duration) {
        if let Some(progress) = progress {
            self.kernel().refresh(progress, age);
        }
    }

    /// The byte count the floor measures: acknowledged bytes where the kernel was
    /// asked, else `taken`, the bytes the socket accepted.
    pub(crate) fn bytes(&self, taken: u64) -> u64 {
        self.0.as_ref().and_then(|k| k.bytes).unwrap_or(taken)
    }

    /// Time forgiven to the network so far in this measure.
    pub(crate) fn excused(&self) -> Duration {
        self.0.as_ref().map_or(Duration::ZERO, |k| k.excused)
    }

    /// When the stall clock of a wait that began at `since` started: the wait's
    /// start, or the last sample that showed progress.
    pub(crate) fn stalled_since(&self, since: Instant) -> Instant {
        match self.0.as_ref().and_then(|k| k.progressed_at) {
            Some(at) => at.max(since),
            None => since,
        }
    }

    /// When the kernel was last asked, if it was.
    pub(crate) fn sampled_at(&self) -> Option<Instant> {
        self.0.as_ref().and_then(|k| k.sampled_at)
    }

    /// Until when the idle clock is held (see [`hold_idle`](Self::hold_idle)).
    pub(crate) fn idle_held_until(&self) -> Option<Instant> {
        self.0.as_ref().and_then(|k| k.idle_held_until)
    }

    /// See [`Kernel::resample`].
    pub(crate) fn resample(
        &mut self,
        progress: &dyn PeerProgress,
        now: Instant,
        bound: Duration,
    ) -> bool {
        self.kernel().resample(progress, now, bound)
    }

    /// See [`Kernel::hold_idle`].
    pub(crate) fn hold_idle(
        &mut self,
        progress: &dyn PeerProgress,
        now: Instant,
        hold: Duration,
        floor: Option<MinRate>,
    ) -> bool {
        self.kernel().hold_idle(progress, now, hold, floor)
    }

    /// The kernel's view, made at the first question: a stream that never waits on
    /// a slow peer carries one pointer, not the view.
    fn kernel(&mut self) -> &mut Kernel {
        self.0.get_or_insert_default()
    }
}

impl Kernel {
    /// A new measure begins: its forgiveness starts from zero, and where the kernel
    /// can be asked, the count starts from what it says now (not from an older
    /// sample, which would credit bytes read during an earlier response).
    fn restart(&mut self, progress: &dyn PeerProgress) {
        self.excused = Duration::ZERO;
        self.resample(progress, Instant::now(), Duration::ZERO);
    }

    /// A wait begins with no measure spanning the waits (no floor runs): the kernel
    /// is asked again if its last word is older than `age` (the stall timeout), so
    /// that the stall clock compares with a recent count without a question per wait.
    fn refresh(&mut self, progress: &dyn PeerProgress, age: Duration) {
        let now = Instant::now();
        if self.sampled_at.is_none_or(|at| now - at >= age) {
            self.restart(progress);
        }
    }

    /// As the idle clock is about to fire at `now`: whether the kernel still holds
    /// bytes of ours for a peer that keeps taking them, at `floor` at least (any
    /// progress without one) since the last look. The last answer is then still being
    /// delivered, the connection is not idle, and the idle clock is held until `hold`
    /// from now. A slow reader whose answer fitted in the send buffer, so that no write
    /// ever waited on it, is not held for.
    fn hold_idle(
        &mut self,
        progress: &dyn PeerProgress,
        now: Instant,
        hold: Duration,
        floor: Option<MinRate>,
    ) -> bool {
        let (before, looked) = (self.bytes, self.sampled_at.map(|at| now - at));
        let Some(sample) = self.look(progress, now) else {
            return false;
        };
        let kept_up = match (before, looked) {
            (Some(before), Some(looked)) => {
                let taken = sample.acked.saturating_sub(before);
                let owed = floor.map_or(0, |floor| {
                    let bytes = u128::from(floor.bytes_per_sec()) * looked.as_millis() / 1000;
                    u64::try_from(bytes).unwrap_or(u64::MAX)
                });
                taken > 0 && taken >= owed
            }
            // The first look: what came before is unknown; one hold is given.
            _ => true,
        };
        let delivering = sample.queued && kept_up;
        if delivering {
            self.idle_held_until = Some(now + hold);
        }
        delivering
    }

    /// Asks the kernel again, as a clock is about to fire at `now`: records the
    /// peer's progress, and forgives up to `bound` in all to a network the kernel is
    /// retransmitting into. Returns whether the sample was had; the caller then
    /// computes its deadline again.
    fn resample(&mut self, progress: &dyn PeerProgress, now: Instant, bound: Duration) -> bool {
        let previous = self.sampled_at;
        let Some(sample) = self.look(progress, now) else {
            return false;
        };
        if !sample.retransmitting_for.is_zero() && self.excused < bound {
            // The silence since the last look, as far as the kernel has been
            // retransmitting through it; at least a recheck's worth, so that the
            // kernel is asked again shortly rather than the clock cut at once.
            let looked = previous.map_or(Duration::MAX, |at| now - at);
            let silence = sample.retransmitting_for.min(looked).max(RECHECK);
            self.excused = (self.excused + silence).min(bound);
        }
        true
    }

    /// Asks the kernel and records the peer's progress.
    fn look(&mut self, progress: &dyn PeerProgress, now: Instant) -> Option<Sample> {
        let Some(sample) = progress.sample() else {
            self.bytes = None;
            return None;
        };
        tracing::trace!(
            target: "conn_hygiene::timeout",
            acked = sample.acked,
            before = self.bytes,
            retransmitting_ms = sample.retransmitting_for.as_millis(),
            queued = sample.queued,
            excused_ms = self.excused.as_millis(),
            "asked the kernel"
        );
        if self.bytes.is_some_and(|bytes| sample.acked > bytes) {
            self.progressed_at = Some(now);
        }
        self.bytes = Some(sample.acked);
        self.sampled_at = Some(now);
        Some(sample)
    }
}

/// Our last bytes on their way to the peer during a lingering close, judged as the
/// write clocks judge a response: while the kernel still holds them, the peer must
/// keep acknowledging, with no pause as long as the write-stall timeout (the network
/// bound without one) and at the response floor on average, less the time the kernel
/// spent retransmitting (the network's, up to the same bound). The linger bound itself
/// is for the peer's FIN once everything is delivered: on a slow link the tail of a
/// `Connection: close` answer drains for far longer than it.
#[derive(Debug, Default)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) struct Tail {
    // How far apart the kernel is asked: the floor allows one such gap beyond its own
    // allowance, since acknowledgements on a slow, deep-queued link come in bursts.
    look_every: Duration,
    // The first look: when, and the bytes acknowledged then.
    first: Option<(Instant, u64)>,
    // The last look that showed progress.
    progressed: Option<(Instant, u64)>,
    // The last look, and the time forgiven to a network the kernel was retransmitting
    // into since the first (at most the network bound, as for the write clocks).
    looked: Option<Instant>,
    excused: Duration,
}

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
impl Tail {
    /// A tail whose delivery the kernel is asked about every `look_every`.
    pub(crate) fn new(look_every: Duration) -> Self {
        Tail {
            look_every,
            ..Tail::default()
        }
    }

    /// Whether the close should wait on, given the kernel's `sample` at `now`.
    pub(crate) fn still_delivering(
        &mut self,
        sample: Sample,
        now: Instant,
        stall: Option<Duration>,
        floor: Option<MinRate>,
    ) -> bool {
        if !sample.queued {
            return false;
        }
        let bound = network_bound(stall);
        if let Some(looked) = self.looked {
            let silence = sample.retransmitting_for.min(now - looked);
            self.excused = (self.excused + silence).min(bound);
        }
        self.looked = Some(now);
        let (first_at, first) = *self.first.get_or_insert((now, sample.acked));
        let (progressed_at, acked) = self.progressed.get_or_insert((now, sample.acked));
        if sample.acked > *acked {
            (*progressed_at, *acked) = (now, sample.acked);
        }
        let paused = now - *progressed_at >= bound + self.excused;
        let taken = sample.acked - first;
        let behind = floor.is_some_and(|floor| {
            now - first_at > floor.allowance(taken) + self.look_every + self.excused
        });
        tracing::trace!(
            target: "conn_hygiene::linger",
            acked = sample.acked,
            taken,
            retransmitting_ms = sample.retransmitting_for.as_millis(),
            excused_ms = self.excused.as_millis(),
            paused,
            behind,
            "asked the kernel of the tail"
        );
        !paused && !behind
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

    fn tail_sample(acked: u64, queued: bool) -> Sample {
        Sample {
            acked,
            retransmitting_for: Duration::ZERO,
            queued,
        }
    }

    /// Looks every 5 s (the linger bound) at a peer whose acknowledged byte counts are
    /// `acked`, under a 60 s stall clock and `floor`; the look that ends it.
    fn tail_ends_at(acked: &[u64], floor: Option<MinRate>) -> Option<usize> {
        let start = Instant::now();
        let mut tail = Tail::new(Duration::from_secs(5));
        acked.iter().enumerate().find_map(|(i, &acked)| {
            let now = start + Duration::from_secs(5 * (i as u64 + 1));
            let stall = Some(Duration::from_secs(60));
            let sample = tail_sample(acked, true);
            (!tail.still_delivering(sample, now, stall, floor)).then_some(i)
        })
    }

    #[test]
    fn a_slow_reader_keeps_the_tail_going_through_a_pause() {
        // ~1 KB/s, with looks that saw no progress (a slow link's ACKs come in bursts),
        // one of them the first after the first look.
        let acked = [0, 0, 8_688, 8_688, 13_032, 17_376, 17_376, 26_064];
        assert_eq!(tail_ends_at(&acked, Some(MinRate::KESTREL)), None);
        // Delivered: the linger bound applies again.
        let mut tail = Tail::default();
        let now = Instant::now();
        assert!(!tail.still_delivering(tail_sample(99, false), now, None, None));
    }

    #[test]
    fn a_peer_that_stops_taking_the_tail_is_cut() {
        // Never reads: under the floor once its 5 s grace and one look more have
        // passed, 15 s after the first look; without a floor, at the 60 s stall bound.
        assert_eq!(tail_ends_at(&[4_000; 20], Some(MinRate::KESTREL)), Some(3));
        assert_eq!(tail_ends_at(&[4_000; 20], None), Some(12));
        // Trickles a byte a look: under 240 B/s once the grace has passed.
        let trickle: Vec<u64> = (0..20).collect();
        assert_eq!(tail_ends_at(&trickle, Some(MinRate::KESTREL)), Some(3));
    }
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
