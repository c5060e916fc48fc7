//! The flood budget of one HTTP/2 connection: frames that cost the server work but do
//! none for the client (PING, SETTINGS, PRIORITY, WINDOW_UPDATE, RST_STREAM, empty and
//! unknown frames) are paid from a budget that only work refills.

use std::time::Duration;

use tokio::time::Instant;

/// The thresholds of the HTTP/2 flood budget
/// ([`ServeSettingsBuilder::http2_flood_budget`](crate::serve::ServeSettingsBuilder::http2_flood_budget)), per
/// connection. The defaults, and where they come from:
///
/// | threshold | default | anchor |
/// | --- | --- | --- |
/// | [`burst`](Self::burst) | 1000 frames | Envoy's `max_outbound_control_frames` (1000): each PING or SETTINGS makes the server queue an acknowledgement |
/// | [`per_second`](Self::per_second) | 10 frames/s | a keep-alive PING every few seconds (gRPC's minimum is 10 s) never runs out |
/// | [`per_request`](Self::per_request) | 100 frames | Envoy's `max_inbound_priority_frames_per_stream` (100) |
/// | [`per_data_frame`](Self::per_data_frame) | 10 frames | Envoy's `max_inbound_window_update_frames_per_data_frame_sent` (10) |
/// | [`max_consecutive_empty_frames`](Self::max_consecutive_empty_frames) | 1 | Envoy's `max_consecutive_inbound_frames_with_empty_payload` (1) |
/// | [`resets_judged_after`](Self::resets_judged_after) | 500 requests | Envoy's `premature_reset_total_stream_count` (500): past it, a client that reset more than half its requests prematurely is flooding |
/// | [`premature_reset`](Self::premature_reset) | 1 s | Envoy's `premature_reset_min_stream_lifetime_seconds` (1 s) |
///
/// A connection starts with `burst` frames in its budget; every overhead frame costs
/// one; the budget refills by `per_second` each second, by `per_request` for each
/// request the server answers (a refused stream earns nothing) and by `per_data_frame` for each DATA frame the server sends, up to
/// `burst`. Below zero the connection gets GOAWAY `ENHANCE_YOUR_CALM` and is closed,
/// as nginx does at "http2 flood detected". A PING flood at 25,000 frames/s is closed
/// within 50 ms; a browser or gRPC client never comes near.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FloodBudget {
    /// The most overhead frames in a row with no work between them.
    pub burst: u32,
    /// Overhead frames allowed per second of the connection's life.
    pub per_second: u32,
    /// Overhead frames each request earns once the server answers it.
    pub per_request: u32,
    /// Overhead frames each DATA frame sent by the server earns (the client's
    /// WINDOW_UPDATEs and PINGs for it).
    pub per_data_frame: u32,
    /// Empty frames (DATA, HEADERS or CONTINUATION without payload or END_STREAM) in
    /// a row allowed.
    pub max_consecutive_empty_frames: u32,
    /// Requests after which a client that reset more than half of them prematurely
    /// is judged to flood (the rapid reset of accepted streams, CVE-2023-44487).
    pub resets_judged_after: u32,
    /// A reset this soon after the stream's request is premature. A client that
    /// cancels later (a deadline, a user leaving) pays only the frame.
    pub premature_reset: Duration,
}

impl Default for FloodBudget {
    fn default() -> Self {
        FloodBudget {
            burst: 1000,
            per_second: 10,
            per_request: 100,
            per_data_frame: 10,
            max_consecutive_empty_frames: 1,
            resets_judged_after: 500,
            premature_reset: Duration::from_secs(1),
        }
    }
}

impl FloodBudget {
    /// The default budget.
    pub fn new() -> Self {
        FloodBudget::default()
    }

    /// Checks the thresholds; the error names the one at fault.
    pub(crate) fn validate(&self) -> Result<(), crate::policy::ConfigError> {
        for (field, value) in [
            ("http2_flood_budget.burst", self.burst),
            (
                "http2_flood_budget.resets_judged_after",
                self.resets_judged_after,
            ),
        ] {
            if value == 0 {
                return Err(crate::policy::ConfigError::new(
                    field,
                    "0 closes every connection; None turns the budget off",
                ));
            }
        }
        Ok(())
    }
}

/// Why a connection was judged to flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flood {
    /// Overhead frames beyond the budget.
    Overhead,
    /// More than `max_consecutive_empty_frames` empty frames in a row.
    EmptyFrames,
    /// More than half of at least `resets_judged_after` requests reset prematurely by
    /// the client.
    Resets,
}

impl Flood {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Flood::Overhead => "overhead frames beyond the budget",
            Flood::EmptyFrames => "consecutive empty frames",
            Flood::Resets => "most requests reset by the client as soon as sent",
        }
    }
}

/// One connection's account.
#[derive(Debug)]
pub(super) struct Budget {
    limits: FloodBudget,
    /// What is left, in frames (fractions from the per-second refill).
    left: f64,
    refilled_at: Instant,
    empty_run: u32,
    requests: u64,
    resets: u64,
}

impl Budget {
    pub(super) fn new(limits: FloodBudget, now: Instant) -> Self {
        Budget {
            limits,
            left: f64::from(limits.burst),
            refilled_at: now,
            empty_run: 0,
            requests: 0,
            resets: 0,
        }
    }

    fn earn(&mut self, frames: f64) {
        self.left = (self.left + frames).min(f64::from(self.limits.burst));
    }

    /// A frame that carried something: a request, payload.
    pub(super) fn not_empty(&mut self) {
        self.empty_run = 0;
    }

    /// The client opened a stream with a request.
    pub(super) fn opened(&mut self) {
        self.requests += 1;
    }

    /// The server answered a request: work done, which earns overhead.
    pub(super) fn answered(&mut self) {
        self.earn(f64::from(self.limits.per_request));
    }

    pub(super) fn data_sent(&mut self) {
        self.earn(f64::from(self.limits.per_data_frame));
    }

    /// A frame that did no work.
    pub(super) fn overhead(&mut self, now: Instant) -> Result<(), Flood> {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.refilled_at = now;
        self.earn(elapsed.as_secs_f64() * f64::from(self.limits.per_second));
        self.left -= 1.0;
        if self.left < 0.0 {
            return Err(Flood::Overhead);
        }
        Ok(())
    }

    /// An empty frame without END_STREAM; it is overhead too.
    pub(super) fn empty(&mut self, now: Instant) -> Result<(), Flood> {
        self.empty_run += 1;
        if self.empty_run > self.limits.max_consecutive_empty_frames {
            return Err(Flood::EmptyFrames);
        }
        self.overhead(now)
    }

    /// The client reset one of its own streams, open for `age` (if still open); it is
    /// overhead too.
    pub(super) fn reset_by_peer(
        &mut self,
        age: Option<Duration>,
        now: Instant,
    ) -> Result<(), Flood> {
        if age.is_some_and(|age| age < self.limits.premature_reset) {
            self.resets += 1;
        }
        if self.requests >= u64::from(self.limits.resets_judged_after)
            && self.resets * 2 > self.requests
        {
            return Err(Flood::Resets);
        }
        self.overhead(now)
    }

    /// Overhead frames left, for logs.
    pub(super) fn left(&self) -> f64 {
        self.left
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn budget() -> (Budget, Instant) {
        let now = Instant::now();
        (Budget::new(FloodBudget::default(), now), now)
    }

    #[test]
    fn a_ping_flood_runs_out_after_the_burst() {
        let (mut budget, now) = budget();
        for i in 0..1000 {
            assert_eq!(budget.overhead(now), Ok(()), "frame {i}");
        }
        assert_eq!(budget.overhead(now), Err(Flood::Overhead));
    }

    #[test]
    fn keep_alive_pings_never_run_out() {
        let (mut budget, mut now) = budget();
        // A PING every second for a day, never a request.
        for _ in 0..86_400 {
            now += SECOND;
            assert_eq!(budget.overhead(now), Ok(()));
        }
    }

    #[test]
    fn work_earns_overhead() {
        let (mut budget, now) = budget();
        for _ in 0..1000 {
            budget.overhead(now).unwrap();
        }
        budget.opened();
        budget.answered();
        for _ in 0..100 {
            budget.overhead(now).unwrap();
        }
        budget.data_sent();
        for _ in 0..10 {
            budget.overhead(now).unwrap();
        }
        assert_eq!(budget.overhead(now), Err(Flood::Overhead));
        // The budget never holds more than the burst.
        for _ in 0..1000 {
            budget.answered();
        }
        assert_eq!(budget.left(), 1000.0);
    }

    #[test]
    fn resetting_most_requests_is_a_flood_once_judged() {
        let (mut budget, now) = budget();
        let soon = Some(Duration::from_millis(5));
        for _ in 0..499 {
            budget.opened();
            budget.reset_by_peer(soon, now).unwrap();
        }
        budget.opened();
        assert_eq!(budget.reset_by_peer(soon, now), Err(Flood::Resets));
        // A client that cancels a third of its requests is fine...
        let (mut budget, now) = self::budget();
        for i in 0..3000 {
            budget.opened();
            budget.answered();
            if i % 3 == 0 {
                budget.reset_by_peer(soon, now).unwrap();
            }
        }
        // ...and so is one that cancels every request after a second (deadlines).
        let (mut budget, now) = self::budget();
        for _ in 0..3000 {
            budget.opened();
            budget.answered();
            budget.reset_by_peer(Some(SECOND), now).unwrap();
        }
    }

    #[test]
    fn empty_frames_in_a_row() {
        let (mut budget, now) = budget();
        budget.empty(now).unwrap();
        budget.not_empty();
        budget.empty(now).unwrap();
        assert_eq!(budget.empty(now), Err(Flood::EmptyFrames));
    }

    #[test]
    fn zero_thresholds_name_their_field() {
        let mut limits = FloodBudget::new();
        limits.burst = 0;
        assert_eq!(
            limits.validate().unwrap_err().field(),
            "http2_flood_budget.burst"
        );
        FloodBudget::new().validate().unwrap();
    }
}
