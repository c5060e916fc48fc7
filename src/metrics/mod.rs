//! Metrics through the [`metrics` facade](::metrics): counters, gauges and histograms
//! for any exporter (Prometheus, StatsD, OpenTelemetry, …) installed as the global
//! recorder.
//!
//! The crate records its counters and histograms where it emits the matching tracing
//! events: on accept, on abandonment, on the peer's FIN or RST, when handlers are
//! cancelled, on recycling and at shutdown. Nothing is recorded per read, per write or
//! per request. The names, kinds and labels are listed in the [crate
//! docs](crate#metrics).
//!
//! Live connections by phase are gauges read from a [`Registry`]'s [`Snapshot`]: a
//! connection's phase is derived from its state when asked, so keeping a gauge per
//! phase up to date on every change would cost the hot path. Set them when metrics are
//! collected instead: [`record`] right before a Prometheus scrape is rendered, or
//! [`report_every`] for a push exporter.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use conn_hygiene::registry::Registry;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! conn_hygiene::metrics::describe();
//! let registry = Registry::new(); // usually `listener.registry().clone()`
//! // On each scrape, before rendering:
//! conn_hygiene::metrics::record(&registry.snapshot());
//! // Or, for a push exporter, every 10 s until aborted:
//! let reporter = conn_hygiene::metrics::report_every(registry, Duration::from_secs(10));
//! reporter.abort();
//! # }
//! ```

use std::time::Duration;

use ::metrics::{Label, Unit, describe_counter, describe_gauge, describe_histogram, gauge};

use crate::conn::Phase;
use crate::registry::{Registry, Snapshot};

pub(crate) mod hooks;

pub use hooks::{
    ABANDONED, ACCEPT_PAUSED, ACCEPTED, CANCELLED, CONNECTIONS, DEREGISTRATION_CONNECTIONS,
    DEREGISTRATION_DURATION, DRAIN_CONNECTIONS, DRAIN_DURATION, DRAINS, EVICTED, HALF_CLOSED_BUSY,
    OLDEST, PEER_CLOSED, PROXY_HEADER_REJECTED, RECYCLED, REFUSED,
};

/// Registers every metric's description and unit with the installed recorder, for
/// exporters that print them (Prometheus's `# HELP`). Optional; call it once, after
/// installing the recorder.
pub fn describe() {
    describe_counter!(ACCEPTED, Unit::Count, "Connections accepted.");
    describe_counter!(
        ACCEPT_PAUSED,
        Unit::Count,
        "Times accepting paused: out of descriptors or memory."
    );
    describe_counter!(
        REFUSED,
        Unit::Count,
        "Connections refused at the per-client cap."
    );
    describe_counter!(
        PROXY_HEADER_REJECTED,
        Unit::Count,
        "Connections closed without a valid PROXY protocol header, by reason."
    );
    describe_counter!(
        ABANDONED,
        Unit::Count,
        "Connections reset (abandoned), by reason."
    );
    describe_counter!(
        PEER_CLOSED,
        Unit::Count,
        "Peers that sent FIN (event=fin) or RST (event=rst)."
    );
    describe_counter!(
        CANCELLED,
        Unit::Count,
        "Handlers cancelled by an abandonment (nginx's 499), by reason."
    );
    describe_counter!(RECYCLED, Unit::Count, "Connections recycled, by why.");
    describe_counter!(
        EVICTED,
        Unit::Count,
        "Idle connections evicted at capacity, by reason and phase."
    );
    describe_counter!(DRAINS, Unit::Count, "Graceful shutdowns that drained.");
    describe_counter!(
        DRAIN_CONNECTIONS,
        Unit::Count,
        "Connections at the drain: drained on their own, or forced at the deadline."
    );
    describe_histogram!(DRAIN_DURATION, Unit::Seconds, "Drain durations.");
    describe_counter!(
        DEREGISTRATION_CONNECTIONS,
        Unit::Count,
        "Connections accepted or retired during the deregistration phase."
    );
    describe_histogram!(
        DEREGISTRATION_DURATION,
        Unit::Seconds,
        "Deregistration phase durations."
    );
    describe_gauge!(CONNECTIONS, Unit::Count, "Live connections, by phase.");
    describe_gauge!(
        OLDEST,
        Unit::Seconds,
        "Age of the oldest live connection, by phase."
    );
    describe_gauge!(
        HALF_CLOSED_BUSY,
        Unit::Count,
        "Live connections whose peer left while a handler is busy."
    );
}

/// Sets the phase gauges from `snapshot`: every phase is set, to 0 when it has no
/// connection, so a phase that emptied does not keep its last value.
///
/// With several listeners, give each its own label with [`record_labeled`]: their
/// snapshots would overwrite each other's gauges here.
pub fn record(snapshot: &Snapshot) {
    record_labeled(snapshot, &[]);
}

/// [`record`], with `labels` added to every gauge.
///
/// ```
/// use metrics::Label;
///
/// let registry = conn_hygiene::registry::Registry::new();
/// let labels = [Label::new("listener", "public")];
/// conn_hygiene::metrics::record_labeled(&registry.snapshot(), &labels);
/// ```
pub fn record_labeled(snapshot: &Snapshot, labels: &[Label]) {
    let by_phase = snapshot.by_phase();
    for phase in Phase::ALL {
        let (count, oldest) = by_phase.get(&phase).copied().unwrap_or_default();
        let mut with_phase = labels.to_vec();
        with_phase.push(Label::from_static_parts("phase", phase.as_str()));
        gauge!(CONNECTIONS, with_phase.clone()).set(count as f64);
        gauge!(OLDEST, with_phase).set(oldest.as_secs_f64());
    }
    gauge!(HALF_CLOSED_BUSY, labels.to_vec()).set(snapshot.half_closed_busy() as f64);
}

/// Calls [`record`] with `registry`'s snapshot every `every`, until the returned
/// task is aborted: for push exporters, which read the gauges on their own schedule.
///
/// # Panics
///
/// Outside a tokio runtime, or if `every` is zero.
#[must_use = "the task runs until aborted: keep the handle to stop it"]
pub fn report_every(registry: Registry, every: Duration) -> tokio::task::JoinHandle<()> {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::spawn(async move {
        loop {
            interval.tick().await;
            record(&registry.snapshot());
        }
    })
}
