//! A listener's load, as its connections read it: how far the pressure before the cap
//! has shrunk their idle clocks ([`Pressure`]). The listener (`listener::capacity`)
//! writes it; a connection reads one atomic when it arms an idle clock.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::policy::ConfigError;

/// Pressure before the cap: where the idle clocks begin to shrink, and how far.
///
/// Past the share, with a cap set ([`Listener::max_connections`](crate::Listener::max_connections)),
/// answers also retire their connections. Without one, pressure comes from the
/// descriptor limit alone and only shrinks the clocks (see
/// [`Listener::pressure`](crate::Listener::pressure)).
///
/// The default, `share` 0.8 and `floor` 5 s, starts shrinking with a fifth of the
/// cap still free: enough headroom that a burst of new clients meets short clocks
/// before it meets evictions. At the cap the idle clock is the floor: 5 s is longer
/// than a browser or a pooled client takes between two requests of one page or one
/// batch, and short enough that a cap full of idle sockets turns over within
/// seconds. nginx has no such stage (its `keepalive_timeout` stays 75 s until its
/// connections run out); Envoy's overload manager scales its idle timers between
/// thresholds the operator sets, with no default.
///
/// ```
/// use std::time::Duration;
/// use conn_hygiene::listener::Pressure;
///
/// let pressure = Pressure::new(0.9, Duration::from_secs(2)).unwrap();
/// assert_eq!(pressure.share(), 0.9);
/// let err = Pressure::new(0.0, Duration::from_secs(2)).unwrap_err();
/// assert_eq!(err.field(), "pressure.share");
/// let err = Pressure::new(0.8, Duration::ZERO).unwrap_err();
/// assert_eq!(err.field(), "pressure.floor");
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pressure {
    share: f64,
    floor: Duration,
}

impl Pressure {
    /// The default share of the cap where pressure begins: 80 %.
    pub const DEFAULT_SHARE: f64 = 0.8;
    /// The default floor of the shrunk clocks: 5 s.
    pub const DEFAULT_FLOOR: Duration = Duration::from_secs(5);

    /// Pressure from `share` of the cap (or of the descriptor limit) on, shrinking the
    /// idle and first-byte clocks toward `floor` (a clock already shorter keeps its
    /// length).
    ///
    /// # Errors
    ///
    /// `share` outside (0, 1] (field `pressure.share`), or a zero `floor` (field
    /// `pressure.floor`).
    pub fn new(share: f64, floor: Duration) -> Result<Pressure, ConfigError> {
        if !(share > 0.0 && share <= 1.0) {
            return Err(ConfigError::new(
                "pressure.share",
                "must be above 0 and at most 1",
            ));
        }
        if floor.is_zero() {
            return Err(ConfigError::new("pressure.floor", "must not be zero"));
        }
        Ok(Pressure { share, floor })
    }

    /// The share of the cap where pressure begins.
    pub fn share(&self) -> f64 {
        self.share
    }

    /// What the idle clocks shrink toward, reached at the cap.
    pub fn floor(&self) -> Duration {
        self.floor
    }

    /// How much of each clock above the floor is left at `level` (live connections
    /// over the cap): 1 below the share, 0 at the cap.
    fn left(&self, level: f64) -> f64 {
        if level <= self.share {
            return 1.0;
        }
        if self.share >= 1.0 {
            return 0.0;
        }
        (1.0 - (level - self.share) / (1.0 - self.share)).clamp(0.0, 1.0)
    }
}

impl Default for Pressure {
    fn default() -> Self {
        Pressure {
            share: Pressure::DEFAULT_SHARE,
            floor: Pressure::DEFAULT_FLOOR,
        }
    }
}

/// The whole of a clock, in [`Load::left`]'s units.
const WHOLE: u32 = 1024;

/// A listener's load, shared by its registry and every connection: the connections
/// read how much of their idle clocks is left, one atomic load when a clock is armed.
#[derive(Debug)]
pub(crate) struct Load {
    // How much of each clock above the floor is left, in 1/1024ths.
    left: AtomicU32,
    floor_ms: AtomicU64,
    // The pressure's share of the cap, as `f64` bits; 0 when pressure is off.
    share: AtomicU64,
    max: AtomicUsize,
    // The descriptor of the last connection accepted, and the live connections then:
    // descriptors are allocated lowest first, so it tracks how many are open, less
    // the connections closed since. 0 without a descriptor limit.
    descriptor: AtomicU64,
    descriptor_limit: AtomicU64,
    live_at_descriptor: AtomicUsize,
    evicted: AtomicU64,
    // When the last eviction was logged at warn, in ms after `started`, plus one.
    warned_at: AtomicU64,
    // The same, for the pauses at `EMFILE`.
    warned_exhausted_at: AtomicU64,
    // Warned that connections served without the layer cannot be evicted.
    warned_no_layer: AtomicBool,
    started: Instant,
}

impl Default for Load {
    fn default() -> Self {
        let pressure = Pressure::default();
        Load {
            left: AtomicU32::new(WHOLE),
            floor_ms: AtomicU64::new(pressure.floor.as_millis() as u64),
            share: AtomicU64::new(pressure.share.to_bits()),
            max: AtomicUsize::new(0),
            descriptor: AtomicU64::new(0),
            descriptor_limit: AtomicU64::new(0),
            live_at_descriptor: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            warned_at: AtomicU64::new(0),
            warned_exhausted_at: AtomicU64::new(0),
            warned_no_layer: AtomicBool::new(false),
            started: Instant::now(),
        }
    }
}

fn fraction(value: f64) -> u32 {
    (value.clamp(0.0, 1.0) * f64::from(WHOLE)).round() as u32
}

impl Load {
    pub(crate) fn set_max(&self, max: Option<NonZeroUsize>) {
        self.max
            .store(max.map_or(0, NonZeroUsize::get), Ordering::Relaxed);
    }

    pub(crate) fn set_pressure(&self, pressure: Option<Pressure>) {
        let (share, floor) = pressure.map_or((0, 0), |p| {
            (p.share.to_bits(), p.floor.as_millis().max(1) as u64)
        });
        self.share.store(share, Ordering::Relaxed);
        self.floor_ms.store(floor, Ordering::Relaxed);
    }

    /// `timeout` shrunk toward the floor by the pressure now.
    #[inline]
    pub(crate) fn scale(&self, timeout: Duration) -> Duration {
        let left = self.left.load(Ordering::Relaxed);
        if left >= WHOLE {
            return timeout;
        }
        let floor = Duration::from_millis(self.floor_ms.load(Ordering::Relaxed));
        match timeout.checked_sub(floor) {
            Some(above) => floor + above * left / WHOLE,
            None => timeout,
        }
    }

    /// Whether the listener is under pressure: its clocks shrink.
    #[inline]
    pub(crate) fn is_pressed(&self) -> bool {
        self.left.load(Ordering::Relaxed) < WHOLE
    }

    /// Whether answers retire their connections now: under pressure, with a cap set.
    /// Without one, the descriptor limit's pressure only shrinks the clocks: clients
    /// retired would reconnect at once, saving no descriptor.
    #[inline]
    pub(crate) fn retires(&self) -> bool {
        self.is_pressed() && self.max.load(Ordering::Relaxed) != 0
    }

    /// Notes the descriptor of a connection just accepted, the `live` connections with
    /// it, under a soft limit of `limit` descriptors.
    pub(crate) fn note_descriptor(&self, descriptor: u64, live: usize, limit: Option<u64>) {
        let Some(limit) = limit.filter(|limit| *limit > 0) else {
            return;
        };
        self.descriptor_limit.store(limit, Ordering::Relaxed);
        self.descriptor
            .store(descriptor.min(limit), Ordering::Relaxed);
        self.live_at_descriptor.store(live, Ordering::Relaxed);
    }

    /// Out of descriptors with `live` connections: as full as at the cap.
    pub(crate) fn note_exhausted(&self, live: usize) {
        let limit = self.descriptor_limit.load(Ordering::Relaxed).max(1);
        self.note_descriptor(limit, live, Some(limit));
    }

    /// The share of the descriptor limit in use with `live` connections.
    fn descriptors_used(&self, live: usize) -> f64 {
        let limit = self.descriptor_limit.load(Ordering::Relaxed);
        if limit == 0 {
            return 0.0;
        }
        let closed = self
            .live_at_descriptor
            .load(Ordering::Relaxed)
            .saturating_sub(live);
        let open = self
            .descriptor
            .load(Ordering::Relaxed)
            .saturating_sub(closed as u64);
        open as f64 / limit as f64
    }

    /// Recomputes the pressure with `live` connections; returns whether it tightened
    /// the clocks by another sixteenth (those already armed should be read again).
    pub(crate) fn update(&self, live: usize) -> bool {
        let share = self.share.load(Ordering::Relaxed);
        if share == 0 {
            return false;
        }
        let max = self.max.load(Ordering::Relaxed);
        let by_cap = if max == 0 {
            0.0
        } else {
            live as f64 / max as f64
        };
        let by_descriptors = self.descriptors_used(live);
        let pressure = Pressure {
            share: f64::from_bits(share),
            floor: Duration::ZERO,
        };
        let left = fraction(pressure.left(by_cap.max(by_descriptors)));
        let before = self.left.swap(left, Ordering::Relaxed);
        const STEP: u32 = WHOLE / 16;
        left / STEP < before / STEP
    }

    /// Milliseconds since the load began (wrapping after 49 days): the eviction's
    /// clock, read once per scan.
    pub(crate) fn millis(&self) -> u32 {
        self.started.elapsed().as_millis() as u32
    }

    /// Evictions so far.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Counts `evicted` more evictions.
    pub(crate) fn count_evicted(&self, evicted: usize) {
        self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
    }

    /// Whether this is the first warning that connections served without the layer
    /// cannot be evicted.
    pub(crate) fn first_warning_without_layer(&self) -> bool {
        !self.warned_no_layer.swap(true, Ordering::Relaxed)
    }

    /// Whether this eviction burst is the first for a second: logged at warn then, at
    /// debug otherwise.
    pub(crate) fn first_of_burst(&self) -> bool {
        self.first_for_a_second(&self.warned_at)
    }

    /// Whether this pause at `EMFILE` is the first for a second: logged at warn then,
    /// at debug otherwise (the retries come every 100 ms while evictions make room).
    pub(crate) fn first_exhaustion_of_burst(&self) -> bool {
        self.first_for_a_second(&self.warned_exhausted_at)
    }

    /// Whether `last` (ms after `started`, plus one) is a second old or unset; if so,
    /// it becomes now.
    fn first_for_a_second(&self, last_at: &AtomicU64) -> bool {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = last_at.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= 1000)
            && last_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}
