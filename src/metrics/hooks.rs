//! The crate's recording points, one call each next to a tracing event, and the
//! names they record under. It knows only the vocabulary ([`Phase`]'s and
//! [`Abandon`]'s names), so the connection's code below the registry can call it.
//!
//! [`Phase`]: crate::Phase
//! [`Abandon`]: crate::Abandon

use ::metrics::counter;

use crate::conn::{Abandon, PeerGone};

/// `conn_hygiene_connections_accepted_total`: connections accepted.
pub const ACCEPTED: &str = "conn_hygiene_connections_accepted_total";
/// `conn_hygiene_accept_paused_total`: accept paused, out of descriptors or memory.
pub const ACCEPT_PAUSED: &str = "conn_hygiene_accept_paused_total";
/// `conn_hygiene_connections_refused_total`: connections refused at the per-client cap.
pub const REFUSED: &str = "conn_hygiene_connections_refused_total";
/// `conn_hygiene_proxy_header_rejected_total{reason}`: connections reset for want of a
/// valid PROXY protocol header: `malformed`, `silent` (at the deadline) or `closed`.
pub const PROXY_HEADER_REJECTED: &str = "conn_hygiene_proxy_header_rejected_total";
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
/// [`record`](super::record)).
pub const CONNECTIONS: &str = "conn_hygiene_connections";
/// `conn_hygiene_connections_oldest_seconds{phase}`: age of the oldest live connection
/// per phase, 0 without one (gauge, set by [`record`](super::record)).
pub const OLDEST: &str = "conn_hygiene_connections_oldest_seconds";
/// `conn_hygiene_connections_half_closed_busy`: live connections whose peer left
/// while a handler is busy, the CLOSE_WAIT risk (gauge, set by [`record`](super::record)).
pub const HALF_CLOSED_BUSY: &str = "conn_hygiene_connections_half_closed_busy";

pub(crate) fn accepted() {
    counter!(ACCEPTED).increment(1);
}

pub(crate) fn accept_paused() {
    counter!(ACCEPT_PAUSED).increment(1);
}

pub(crate) fn refused() {
    counter!(REFUSED).increment(1);
}

pub(crate) fn proxy_header_rejected(reason: &'static str) {
    counter!(PROXY_HEADER_REJECTED, "reason" => reason).increment(1);
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
