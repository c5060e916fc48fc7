//! The vocabulary every layer speaks: the phase a connection is in ([`Phase`]), why it
//! was cut ([`Abandon`]), how its peer left ([`PeerGone`]), and a listener's tally of
//! cuts ([`Cuts`]). It depends on nothing else in the crate.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// How the peer left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeerGone {
    /// The peer shut down its write side (FIN). It may still read.
    Fin,
    /// The peer reset the connection (RST), or the kernel gave up on it (keepalive or
    /// `TCP_USER_TIMEOUT` expiry).
    Reset,
    /// The connection was closed on our side before the peer left.
    LocalClose,
}

/// The phase a connection is in. Each phase has its own clock in [`Policy`](crate::Policy).
///
/// With feature `serde` it serializes as its [name](Self::as_str), `"body_wait"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Phase {
    /// Accepted, no byte received yet (before a TLS handshake or protocol sniff).
    FirstByte,
    /// No request in flight.
    Idle,
    /// Reading a request head (HTTP).
    ReadingHead,
    /// A handler is running and not waiting for body bytes.
    Busy,
    /// A handler waits for request-body bytes.
    BodyWait,
    /// Upgraded (WebSocket, CONNECT): bytes are relayed, no HTTP clock applies.
    Tunnel,
    /// A write is pending because the peer does not read.
    WriteStall,
    /// The peer sent FIN while the connection is open.
    HalfClosed,
    /// Shutting down: finishing in-flight work.
    Draining,
    /// The stream was dropped after our FIN; reading and discarding until the peer's
    /// (the lingering close).
    Lingering,
    /// Abandoned or closed.
    Closed,
}

impl Phase {
    /// Every phase, in order. A new phase also breaks the match of
    /// [`as_str`](Self::as_str) just below: add it here too.
    #[cfg_attr(
        not(any(feature = "metrics", all(test, feature = "serde"))),
        allow(dead_code)
    )]
    pub(crate) const ALL: [Phase; 11] = [
        Phase::FirstByte,
        Phase::Idle,
        Phase::ReadingHead,
        Phase::Busy,
        Phase::BodyWait,
        Phase::Tunnel,
        Phase::WriteStall,
        Phase::HalfClosed,
        Phase::Draining,
        Phase::Lingering,
        Phase::Closed,
    ];

    /// A short lowercase name, used in tracing fields and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::FirstByte => "first_byte",
            Phase::Idle => "idle",
            Phase::ReadingHead => "reading_head",
            Phase::Busy => "busy",
            Phase::BodyWait => "body_wait",
            Phase::Tunnel => "tunnel",
            Phase::WriteStall => "write_stall",
            Phase::HalfClosed => "half_closed",
            Phase::Draining => "draining",
            Phase::Lingering => "lingering",
            Phase::Closed => "closed",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection was abandoned (closed with a reset instead of a graceful close).
///
/// With feature `serde` it serializes as its [name](Self::as_str), `"idle_timeout"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Abandon {
    /// The peer sent FIN and the half-close policy is `Abort`.
    PeerFin,
    /// The peer reset the connection.
    PeerReset,
    /// The half-close grace passed.
    HalfCloseGrace,
    /// No first byte in time.
    FirstByteTimeout,
    /// The request head did not complete in time.
    HeaderTimeout,
    /// Idle for too long.
    IdleTimeout,
    /// The request body stalled.
    BodyStallTimeout,
    /// A write stalled: the peer does not read.
    WriteStallTimeout,
    /// No bytes moved through a tunnel (an upgraded connection) for too long.
    TunnelIdleTimeout,
    /// The peer did not close within the lingering bound.
    LingerTimeout,
    /// The shutdown deadline passed.
    DrainDeadline,
    /// The request body came slower than the [floor](crate::Policy::min_body_rate).
    MinBodyRate,
    /// The peer read the response slower than the [floor](crate::Policy::min_send_rate).
    MinSendRate,
    /// A recycled connection (request count or age) did not finish within its
    /// [grace](crate::Policy::recycle_grace).
    RecycleGrace,
    /// An acceptor's handshake (TLS) did not finish within `ServeSettingsBuilder::handshake_timeout`
    /// (feature `hyper`).
    HandshakeTimeout,
    /// An HTTP/2 client spent its flood budget (`ServeSettingsBuilder::http2_flood_budget`, feature
    /// `hyper`): it got GOAWAY `ENHANCE_YOUR_CALM` and did not close in time.
    Http2Flood,
}

impl Abandon {
    pub(crate) const ALL: [Abandon; 16] = [
        Abandon::PeerFin,
        Abandon::PeerReset,
        Abandon::HalfCloseGrace,
        Abandon::FirstByteTimeout,
        Abandon::HeaderTimeout,
        Abandon::IdleTimeout,
        Abandon::BodyStallTimeout,
        Abandon::WriteStallTimeout,
        Abandon::TunnelIdleTimeout,
        Abandon::LingerTimeout,
        Abandon::DrainDeadline,
        Abandon::MinBodyRate,
        Abandon::MinSendRate,
        Abandon::RecycleGrace,
        Abandon::HandshakeTimeout,
        Abandon::Http2Flood,
    ];

    /// A short lowercase name, used in tracing fields and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Abandon::PeerFin => "peer_fin",
            Abandon::PeerReset => "peer_reset",
            Abandon::HalfCloseGrace => "half_close_grace",
            Abandon::FirstByteTimeout => "first_byte_timeout",
            Abandon::HeaderTimeout => "header_timeout",
            Abandon::IdleTimeout => "idle_timeout",
            Abandon::BodyStallTimeout => "body_stall_timeout",
            Abandon::WriteStallTimeout => "write_stall_timeout",
            Abandon::TunnelIdleTimeout => "tunnel_idle_timeout",
            Abandon::LingerTimeout => "linger_timeout",
            Abandon::DrainDeadline => "drain_deadline",
            Abandon::MinBodyRate => "min_body_rate",
            Abandon::MinSendRate => "min_send_rate",
            Abandon::RecycleGrace => "recycle_grace",
            Abandon::HandshakeTimeout => "handshake_timeout",
            Abandon::Http2Flood => "http2_flood",
        }
    }

    /// Its position in [`Abandon::ALL`].
    pub(crate) fn index(self) -> usize {
        Abandon::ALL.iter().position(|a| *a == self).unwrap_or(0)
    }

    pub(super) fn code(self) -> u8 {
        self.index() as u8 + 1
    }

    pub(super) fn from_code(code: u8) -> Option<Abandon> {
        Abandon::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

impl fmt::Display for Abandon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Connections abandoned and HTTP/2 streams cut, by reason, over a listener's life.
#[derive(Default)]
pub(crate) struct Cuts([AtomicU64; Abandon::ALL.len()]);

impl Cuts {
    pub(crate) fn count(&self, reason: Abandon) {
        self.0[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Each reason counted at least once, with its count.
    pub(crate) fn counted(&self) -> BTreeMap<Abandon, u64> {
        Abandon::ALL
            .iter()
            .zip(&self.0)
            .map(|(reason, count)| (*reason, count.load(Ordering::Relaxed)))
            .filter(|(_, count)| *count > 0)
            .collect()
    }
}
