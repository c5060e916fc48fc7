//! Per-request overrides of the body and send clocks: [`RequestLimits`].
//!
//! A route may need other bounds than the policy's: an upload route that accepts slow
//! mobile clients, a long download to slow readers. A handler calls
//! [`Conn::set_request_limits`](crate::Conn::set_request_limits); a route takes
//! `RequestLimitsLayer` (feature `hyper`). The override covers the body-stall clock,
//! the request-body rate floor, the write-stall clock and the response rate floor, and
//! ends with the request, when its response body has been sent (Kestrel's per-request
//! `IHttpMinRequestBodyDataRateFeature`, Go's `ResponseController.SetReadDeadline`).
//!
//! Over HTTP/1 a connection carries one request at a time, so the override is that
//! request's. Over HTTP/2 the streams share the connection's socket and clocks: while
//! the overriding request is in flight, its limits apply to every stream of the
//! connection, and they end when that request ends, even if other streams go on (see
//! [`Conn::set_request_limits`](crate::Conn::set_request_limits)).
//!
//! # Example
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # fn dox() {
//! use std::time::Duration;
//! use axum::{Router, routing::post};
//! use conn_hygiene::{MinRate, limits::RequestLimits, limits::RequestLimitsLayer};
//!
//! let slow_uploads = RequestLimits::builder()
//!     .min_body_rate(MinRate::new(16, Duration::from_secs(30)))
//!     .body_stall_timeout(Duration::from_secs(120))
//!     .build()
//!     .expect("valid limits");
//! let app: Router = Router::new()
//!     .route("/upload", post(|body: axum::body::Bytes| async move { body.len().to_string() })
//!         .layer(RequestLimitsLayer::new(slow_uploads)))
//!     .route("/", post(|| async { "ok" }));
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::policy::{ConfigError, check_timeout};
use crate::rate::MinRate;

/// Overrides of the body and send clocks for one request, built by
/// [`RequestLimits::builder`]. Each setting left alone keeps the policy's value;
/// `None` turns that clock off for the request.
///
/// As in [`Policy`](crate::Policy), a zero timeout, rate or grace is an error when the
/// limits are built, not a way to turn a clock off: off is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct RequestLimits {
    body_stall: Option<Option<Duration>>,
    min_body_rate: Option<Option<MinRate>>,
    write_stall: Option<Option<Duration>>,
    min_send_rate: Option<Option<MinRate>>,
}

impl RequestLimits {
    /// Overrides nothing: every clock keeps the policy's value.
    pub const fn new() -> Self {
        RequestLimits {
            body_stall: None,
            min_body_rate: None,
            write_stall: None,
            min_send_rate: None,
        }
    }

    /// A builder whose [`build`](RequestLimitsBuilder::build) checks every value.
    ///
    /// ```
    /// use std::time::Duration;
    /// use conn_hygiene::limits::RequestLimits;
    ///
    /// let long_download = RequestLimits::builder()
    ///     .min_send_rate(None)
    ///     .write_stall_timeout(Duration::from_secs(300))
    ///     .build()
    ///     .expect("valid limits");
    /// let error = RequestLimits::builder()
    ///     .body_stall_timeout(Duration::ZERO)
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(error.field(), "body_stall_timeout");
    /// # let _ = long_download;
    /// ```
    pub const fn builder() -> RequestLimitsBuilder {
        RequestLimitsBuilder {
            limits: RequestLimits::new(),
        }
    }

    /// The body-stall clock for this request; `None` turns it off, and so does zero.
    #[deprecated(
        since = "0.2.0",
        note = "renamed to `RequestLimits::builder().body_stall_timeout(..).build()`, where zero is an error and `None` is off"
    )]
    pub const fn with_body_stall_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.body_stall = Some(zero_timeout_is_off(timeout));
        self
    }

    /// The request-body rate floor for this request; `None` turns it off, and so does a
    /// zero rate or grace.
    #[deprecated(
        since = "0.2.0",
        note = "renamed to `RequestLimits::builder().min_body_rate(..).build()`, where a zero rate is an error and `None` is off"
    )]
    pub const fn with_min_body_rate(mut self, floor: Option<MinRate>) -> Self {
        self.min_body_rate = Some(zero_rate_is_off(floor));
        self
    }

    /// The write-stall clock while this request's response is sent; `None` turns it
    /// off, and so does zero.
    #[deprecated(
        since = "0.2.0",
        note = "renamed to `RequestLimits::builder().write_stall_timeout(..).build()`, where zero is an error and `None` is off"
    )]
    pub const fn with_write_stall_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.write_stall = Some(zero_timeout_is_off(timeout));
        self
    }

    /// The response rate floor while this request's response is sent; `None` turns it
    /// off, and so does a zero rate or grace.
    #[deprecated(
        since = "0.2.0",
        note = "renamed to `RequestLimits::builder().min_send_rate(..).build()`, where a zero rate is an error and `None` is off"
    )]
    pub const fn with_min_send_rate(mut self, floor: Option<MinRate>) -> Self {
        self.min_send_rate = Some(zero_rate_is_off(floor));
        self
    }
}

// The deprecated setters' meaning of zero, kept for their callers.
const fn zero_timeout_is_off(timeout: Option<Duration>) -> Option<Duration> {
    match timeout {
        Some(timeout) if timeout.is_zero() => None,
        other => other,
    }
}

const fn zero_rate_is_off(floor: Option<MinRate>) -> Option<MinRate> {
    match floor {
        Some(floor) if floor.bytes_per_sec() == 0 || floor.grace().is_zero() => None,
        other => other,
    }
}

/// Builds [`RequestLimits`]; see [`RequestLimits::builder`]. Setters are named after
/// their setting, as [`PolicyBuilder`](crate::policy::PolicyBuilder)'s are.
#[derive(Debug, Clone, Copy, Default)]
#[must_use]
pub struct RequestLimitsBuilder {
    limits: RequestLimits,
}

impl RequestLimitsBuilder {
    /// The body-stall clock for this request; `None` turns it off.
    pub fn body_stall_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.limits.body_stall = Some(timeout.into());
        self
    }

    /// The request-body rate floor for this request; `None` turns it off. Its grace
    /// counts in whole milliseconds, rounded up.
    pub fn min_body_rate(mut self, floor: impl Into<Option<MinRate>>) -> Self {
        self.limits.min_body_rate = Some(floor.into());
        self
    }

    /// The write-stall clock while this request's response is sent; `None` turns it
    /// off.
    pub fn write_stall_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.limits.write_stall = Some(timeout.into());
        self
    }

    /// The response rate floor while this request's response is sent; `None` turns it
    /// off. Its grace counts in whole milliseconds, rounded up.
    pub fn min_send_rate(mut self, floor: impl Into<Option<MinRate>>) -> Self {
        self.limits.min_send_rate = Some(floor.into());
        self
    }

    /// Checks every value set and returns the limits.
    ///
    /// # Errors
    ///
    /// A zero timeout or one over a year, a rate floor of zero bytes per second, or
    /// with a zero grace or one over a year (use `None` to turn a clock off). The error
    /// names the setting.
    pub fn build(self) -> Result<RequestLimits, ConfigError> {
        let l = &self.limits;
        for (field, timeout) in [
            ("body_stall_timeout", l.body_stall),
            ("write_stall_timeout", l.write_stall),
        ] {
            if let Some(Some(timeout)) = timeout {
                check_timeout(field, timeout)?;
            }
        }
        for (field, floor) in [
            ("min_body_rate", l.min_body_rate),
            ("min_send_rate", l.min_send_rate),
        ] {
            if let Some(Some(floor)) = floor {
                floor
                    .check()
                    .map_err(|reason| ConfigError::new(field, reason))?;
            }
        }
        Ok(self.limits)
    }
}

// Each override is one word: 0 keeps the policy's value, 1 turns the clock off, and
// anything else is the value (a timeout in nanoseconds + 2, or a rate in the high half
// with its grace in milliseconds in the low half).
const INHERIT: u64 = 0;
const OFF: u64 = 1;

fn encode_timeout(setting: Option<Option<Duration>>) -> u64 {
    match setting {
        None => INHERIT,
        Some(None) => OFF,
        Some(Some(timeout)) => {
            u64::try_from(timeout.as_nanos()).map_or(u64::MAX, |n| n.saturating_add(2))
        }
    }
}

fn encode_rate(setting: Option<Option<MinRate>>) -> u64 {
    match setting {
        None => INHERIT,
        Some(None) => OFF,
        Some(Some(floor)) => {
            // Whole milliseconds, rounded up: a grace truncated to 0 would cut at once.
            let grace = floor.grace().as_nanos().div_ceil(1_000_000);
            let grace = u32::try_from(grace).unwrap_or(u32::MAX);
            (u64::from(floor.bytes_per_sec()) << 32) | u64::from(grace)
        }
    }
}

/// What an override word says: `None` to keep the policy's value.
fn decode_timeout(word: u64) -> Option<Option<Duration>> {
    match word {
        INHERIT => None,
        OFF => Some(None),
        nanos => Some(Some(Duration::from_nanos(nanos - 2))),
    }
}

fn decode_rate(word: u64) -> Option<Option<MinRate>> {
    match word {
        INHERIT => None,
        OFF => Some(None),
        packed => Some(Some(MinRate::new(
            (packed >> 32) as u32,
            Duration::from_millis(packed & u64::from(u32::MAX)),
        ))),
    }
}

/// A connection's current overrides, shared by the stream, the request bodies and the
/// handlers.
#[derive(Debug, Default)]
pub(crate) struct Overrides {
    body_stall: AtomicU64,
    min_body_rate: AtomicU64,
    write_stall: AtomicU64,
    min_send_rate: AtomicU64,
}

impl Overrides {
    /// Merges `limits` in: settings left alone keep earlier overrides.
    pub(crate) fn set(&self, limits: RequestLimits) {
        let words = [
            (&self.body_stall, encode_timeout(limits.body_stall)),
            (&self.min_body_rate, encode_rate(limits.min_body_rate)),
            (&self.write_stall, encode_timeout(limits.write_stall)),
            (&self.min_send_rate, encode_rate(limits.min_send_rate)),
        ];
        for (slot, word) in words {
            if word != INHERIT {
                slot.store(word, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn clear(&self) {
        for slot in [
            &self.body_stall,
            &self.min_body_rate,
            &self.write_stall,
            &self.min_send_rate,
        ] {
            slot.store(INHERIT, Ordering::Relaxed);
        }
    }

    pub(crate) fn body_stall(&self) -> Option<Option<Duration>> {
        decode_timeout(self.body_stall.load(Ordering::Relaxed))
    }

    // Read by the request body, which needs feature `hyper`.
    #[cfg_attr(not(feature = "hyper"), allow(dead_code))]
    pub(crate) fn min_body_rate(&self) -> Option<Option<MinRate>> {
        decode_rate(self.min_body_rate.load(Ordering::Relaxed))
    }

    pub(crate) fn write_stall(&self) -> Option<Option<Duration>> {
        decode_timeout(self.write_stall.load(Ordering::Relaxed))
    }

    pub(crate) fn min_send_rate(&self) -> Option<Option<MinRate>> {
        decode_rate(self.min_send_rate.load(Ordering::Relaxed))
    }
}

#[cfg(feature = "hyper")]
pub use crate::layer::limits::{ApplyLimits, RequestLimitsLayer};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_round_trip_and_merge() {
        let overrides = Overrides::default();
        assert_eq!(overrides.body_stall(), None);
        let floor = MinRate::new(16, Duration::from_secs(30));
        overrides.set(
            RequestLimits::builder()
                .min_body_rate(Some(floor))
                .write_stall_timeout(None)
                .build()
                .unwrap(),
        );
        overrides.set(
            RequestLimits::builder()
                .body_stall_timeout(Some(Duration::from_secs(9)))
                .build()
                .unwrap(),
        );
        assert_eq!(overrides.min_body_rate(), Some(Some(floor)));
        assert_eq!(overrides.write_stall(), Some(None));
        assert_eq!(overrides.body_stall(), Some(Some(Duration::from_secs(9))));
        assert_eq!(overrides.min_send_rate(), None);
        overrides.set(
            RequestLimits::builder()
                .min_send_rate(None)
                .build()
                .unwrap(),
        );
        assert_eq!(overrides.min_send_rate(), Some(None), "None is off");
        // A grace under a millisecond rounds up, rather than down to a floor that cuts
        // at the first wait.
        let brief = MinRate::new(100, Duration::from_micros(300));
        overrides.set(
            RequestLimits::builder()
                .min_send_rate(Some(brief))
                .build()
                .unwrap(),
        );
        assert_eq!(
            overrides.min_send_rate(),
            Some(Some(MinRate::new(100, Duration::from_millis(1))))
        );
        let odd = MinRate::new(100, Duration::from_micros(1500));
        overrides.set(
            RequestLimits::builder()
                .min_body_rate(Some(odd))
                .build()
                .unwrap(),
        );
        assert_eq!(
            overrides.min_body_rate(),
            Some(Some(MinRate::new(100, Duration::from_millis(2))))
        );
        overrides.clear();
        assert_eq!(overrides.min_body_rate(), None);
    }

    /// Off is `None`: a zero clock or floor is an error naming its setting, as in
    /// `Policy`, where before it silently turned the clock off.
    #[test]
    fn zero_is_an_error_naming_the_setting() {
        type Set = fn(RequestLimitsBuilder) -> RequestLimitsBuilder;
        let zero_floor = MinRate::new(0, Duration::from_secs(1));
        let cases: [(Set, &str); 6] = [
            (
                |b| b.body_stall_timeout(Duration::ZERO),
                "body_stall_timeout",
            ),
            (
                |b| b.write_stall_timeout(Duration::ZERO),
                "write_stall_timeout",
            ),
            (
                |b| b.body_stall_timeout(Duration::MAX),
                "body_stall_timeout",
            ),
            (
                |b| b.min_body_rate(MinRate::new(0, Duration::from_secs(1))),
                "min_body_rate",
            ),
            (
                |b| b.min_send_rate(MinRate::new(0, Duration::from_secs(1))),
                "min_send_rate",
            ),
            (
                |b| b.min_send_rate(MinRate::new(10, Duration::ZERO)),
                "min_send_rate",
            ),
        ];
        for (set, field) in cases {
            let error = set(RequestLimits::builder()).build().unwrap_err();
            assert_eq!(error.field(), field, "{error}");
        }
        // The deprecated setters keep their meaning: zero is off.
        #[allow(deprecated)]
        let old = RequestLimits::new()
            .with_body_stall_timeout(Some(Duration::ZERO))
            .with_min_send_rate(Some(zero_floor));
        let new = RequestLimits::builder()
            .body_stall_timeout(None)
            .min_send_rate(None)
            .build()
            .unwrap();
        assert_eq!(old, new);
    }
}
