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
//! use conn_hygiene::Registry;
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

/// `conn_hygiene_connections_accepted_total`: connections accepted.
pub const ACCEPTED: &str = "conn_hygiene_connections_accepted_total";
/// `conn_hygiene_accept_paused_total`: accept paused, out of descriptors or memory.
pub const ACCEPT_PAUSED: &str = "conn_hygiene_accept_paused_total";
/// `conn_hygiene_connections_refused_total`: connections refused at the per-client cap.
pub const REFUSED: &str = "conn_hygiene_connections_refused_total";
/// `conn_hygiene_connections_abandoned_total{reason}`: connections reset.
pub const ABANDONED: &str = "conn_hygiene_connections_abandoned_total";
/// `conn_hygiene_peer_closed_total{event}`: the peer's FIN (`fin`) or RST (`rst`).
pub const PEER_CLOSED: &str = "conn_hygiene_peer_closed_total";
/// `conn_hygiene_handlers_cancelled_total{reason}`: handlers cancelled (nginx's 499).
pub const CANCELLED: &str = "conn_hygiene_handlers_cancelled_total";
/// `conn_hygiene_connections_recycled_total{why}`: connections recycled.
pub const RECYCLED: &str = "conn_hygiene_connections_recycled_total";
/// `conn_hygiene_drains_total`: graceful shutdowns that ran their drain.
pub const DRAINS: &str = "conn_hygiene_drains_total";
/// `conn_hygiene_drain_connections_total{outcome}`: connections at the drain,
/// `drained` on their own or `forced` at the deadline.
pub const DRAIN_CONNECTIONS: &str = "conn_hygiene_drain_connections_total";
/// `conn_hygiene_drain_duration_seconds`: how long each drain took.
pub const DRAIN_DURATION: &str = "conn_hygiene_drain_duration_seconds";
/// `conn_hygiene_deregistration_connections_total{outcome}`: connections `accepted`
/// or `retired` during a deregistration phase.
pub const DEREGISTRATION_CONNECTIONS: &str = "conn_hygiene_deregistration_connections_total";
/// `conn_hygiene_deregistration_duration_seconds`: how long each deregistration
/// phase took.
pub const DEREGISTRATION_DURATION: &str = "conn_hygiene_deregistration_duration_seconds";
/// `conn_hygiene_connections_evicted_total{reason,phase}`: idle connections evicted to
/// admit new ones, `reason` `max_connections` (the cap) or `descriptors` (`EMFILE`),
/// `phase` `idle` or `first_byte`.
pub const EVICTED: &str = "conn_hygiene_connections_evicted_total";
/// `conn_hygiene_connections{phase}`: live connections per phase (gauge, set by
/// [`record`]).
pub const CONNECTIONS: &str = "conn_hygiene_connections";
/// `conn_hygiene_connections_oldest_seconds{phase}`: age of the oldest live connection
/// per phase, 0 without one (gauge, set by [`record`]).
pub const OLDEST: &str = "conn_hygiene_connections_oldest_seconds";
/// `conn_hygiene_connections_half_closed_busy`: live connections whose peer left
/// while a handler is busy, the CLOSE_WAIT risk (gauge, set by [`record`]).
pub const HALF_CLOSED_BUSY: &str = "conn_hygiene_connections_half_closed_busy";

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
/// let registry = conn_hygiene::Registry::new();
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

/// The crate's recording points, one call each next to a tracing event.
pub(crate) mod hooks {
    use ::metrics::counter;

    use super::*;
    use crate::conn::{Abandon, PeerGone};

    pub(crate) fn accepted() {
        counter!(ACCEPTED).increment(1);
    }

    pub(crate) fn accept_paused() {
        counter!(ACCEPT_PAUSED).increment(1);
    }

    pub(crate) fn refused() {
        counter!(REFUSED).increment(1);
    }

    pub(crate) fn abandoned(reason: Abandon) {
        counter!(ABANDONED, "reason" => reason.as_str()).increment(1);
    }

    pub(crate) fn peer_closed(gone: PeerGone) {
        let event = match gone {
            PeerGone::Fin => "fin",
            PeerGone::Reset => "rst",
            PeerGone::LocalClose => return,
        };
        counter!(PEER_CLOSED, "event" => event).increment(1);
    }

    pub(crate) fn cancelled(reason: Abandon, handlers: u32) {
        counter!(CANCELLED, "reason" => reason.as_str()).increment(u64::from(handlers));
    }

    pub(crate) fn recycled(why: &'static str) {
        counter!(RECYCLED, "why" => why).increment(1);
    }

    pub(crate) fn evicted(reason: &'static str, phase: &'static str) {
        counter!(EVICTED, "reason" => reason, "phase" => phase).increment(1);
    }

    #[cfg(feature = "hyper")]
    pub(crate) fn shutdown(report: &crate::serve::ShutdownReport) {
        if !report.deregistration_elapsed().is_zero() {
            ::metrics::histogram!(DEREGISTRATION_DURATION).record(report.deregistration_elapsed());
            counter!(DEREGISTRATION_CONNECTIONS, "outcome" => "accepted")
                .increment(report.accepted_while_deregistering() as u64);
            counter!(DEREGISTRATION_CONNECTIONS, "outcome" => "retired")
                .increment(report.retired_while_deregistering() as u64);
        }
        counter!(DRAINS).increment(1);
        counter!(DRAIN_CONNECTIONS, "outcome" => "drained").increment(report.drained() as u64);
        counter!(DRAIN_CONNECTIONS, "outcome" => "forced").increment(report.forced().len() as u64);
        ::metrics::histogram!(DRAIN_DURATION).record(report.drain_elapsed());
    }
}
