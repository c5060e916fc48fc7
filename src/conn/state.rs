//! A connection's shared state: the state bits, which only ever get set, and the
//! counters that the stream, the layer, `serve()`, recycling and supervision write.
//!
//! The bits of the serving mode (`AXUM`, `NO_LAYER`) and what follows from them
//! ([`Flags::lacks_request_boundaries`], `Conn::retires_gracefully`) stay here
//! although they are knowledge of the server above: they share the one state word that
//! the stream reads with a single load on every read (`runs_head_clock`), and moving
//! them to the layer would split that word and change when a reader sees them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::handoff::Handoff;
use super::in_flight::InFlight;
use super::load::Load;
use super::reason::{Cuts, PeerGone};
use crate::policy::Policy;

// State bits. They only ever get set, so readers never miss a transition.
pub(super) const PEER_FIN: u32 = 1 << 0;
pub(super) const PEER_RST: u32 = 1 << 1;
pub(super) const ABANDONED: u32 = 1 << 2;
pub(super) const CLOSED: u32 = 1 << 3;
pub(super) const DRAINING: u32 = 1 << 4;
pub(super) const FIRST_BYTE: u32 = 1 << 5;
pub(super) const LINGERING: u32 = 1 << 6;
// Set and cleared by the stream while a write is pending.
pub(super) const WRITE_BLOCKED: u32 = 1 << 7;
// The connection speaks HTTP: the stream runs the request-head clock.
pub(super) const HTTP: u32 = 1 << 8;
// The connection speaks HTTP/2: requests are frames, so there is no head clock.
pub(super) const HTTP2: u32 = 1 << 10;
// The connection left HTTP after a 101 or a CONNECT: only the tunnel clocks apply.
pub(super) const TUNNEL: u32 = 1 << 11;
// Served by `axum::serve` or tonic's `Server`, where request boundaries are known only
// through the layer, which the application may not have installed. Every other mode
// declares the layer (`serve()`, `Hygiene::for_conn`) or does not speak HTTP.
pub(super) const AXUM: u32 = 1 << 12;
// Under a foreign server, a request reached it uncounted: the layer is missing, and
// no clock that needs request boundaries runs.
pub(super) const NO_LAYER: u32 = 1 << 13;
// The connection is being recycled (request count or age): its grace runs.
pub(super) const RECYCLED: u32 = 1 << 15;
// The stream follows the HTTP/2 frames (plaintext past the preface), so it sees which
// bytes are activity; without it (TLS) idleness is judged by requests.
pub(super) const H2_FRAMES_SEEN: u32 = 1 << 16;
// The stream carries bytes it cannot read (TLS under `serve()`'s acceptor): a record
// that holds no request (a KeyUpdate, an empty record, CRLFs) cannot be told from one
// that does, so idleness is judged by requests, over HTTP/1 as over HTTP/2.
pub(super) const SEALED: u32 = 1 << 17;
// Evicted to make room at the listener's capacity: the stream's reader, waiting with
// nothing in flight, ends reading, and the server closes (see `listener::capacity`).
// Set by the evictor; cleared when a request or head began before the eviction took effect.
pub(super) const EVICTED: u32 = 1 << 18;
// The eviction took effect: the reader ended reading, or the socket was shut down.
// The end of reading that follows is ours, not the peer's: only this mutes peer
// reports, so a request begun on an evicted connection before then keeps them.
pub(super) const EVICTION_SHUT: u32 = 1 << 19;

pub(super) struct Shared {
    pub(super) id: u64,
    pub(super) peer: SocketAddr,
    pub(super) policy: Policy,
    pub(super) started: Instant,
    pub(super) state: AtomicU32,
    pub(super) abandon: AtomicU8,
    // Requests in flight, and the overrides of the clocks they set.
    pub(super) in_flight: InFlight,
    // Requests begun so far: the stream tells a new request head from the last one.
    pub(super) requests: AtomicU32,
    pub(super) body_waiting: AtomicU32,
    // When the current body wait began, in nanoseconds after `started`.
    pub(super) body_wait_since: AtomicU64,
    // When the last request ended, in nanoseconds after `started`, where idleness is
    // judged by requests (`Flags::idle_by_requests`).
    pub(super) idle_by_requests_since: AtomicU64,
    // Plaintext moved above a sealed connection's TLS, either way: a tunnel's idle
    // clock counts it, not records.
    pub(super) payload: AtomicU64,
    pub(super) bytes_read: AtomicU64,
    pub(super) bytes_written: AtomicU64,
    // Live `Supervised` futures whose task has not ended: while there is one, it
    // enforces the half-close policy, and the layer stands down.
    pub(super) supervisors: AtomicU32,
    pub(super) changed: Notify,
    // The stream's waiting reader: woken when a clock starts or the connection is
    // abandoned from outside.
    pub(super) reader: AtomicWaker,
    // Where the end of the last request reaches a reader that need not be woken by it.
    pub(super) handoff: Handoff,
    // Weak, so that a handle kept by a user never holds the socket open.
    pub(super) socket: Option<Weak<TcpStream>>,
    pub(super) span: tracing::Span,
    // The policy's maximum age with this connection's jitter.
    pub(super) max_age: Option<Duration>,
    // The listener's tally of cuts, once registered.
    pub(super) cuts: OnceLock<Arc<Cuts>>,
    // The listener's record that the layer counted a request on one of its
    // connections, once registered.
    pub(super) listener_layer: OnceLock<Arc<AtomicBool>>,
    // The listener's load, once registered: it scales the idle clocks under pressure.
    pub(super) load: OnceLock<Arc<Load>>,
    // Bytes read when the last request ended: more since means a head is arriving.
    pub(super) idle_bytes: AtomicU64,
    // The eviction's last look: the requests begun then (high half) and when, in ms
    // after the listener's load began, plus one (low half; 0: never looked).
    pub(super) eviction_look: AtomicU64,
    // The balancer that passed the peer on with a PROXY protocol header.
    pub(super) proxied_by: OnceLock<SocketAddr>,
}

/// A connection's state bits as read at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flags(pub(super) u32);

impl Flags {
    pub(crate) fn first_byte_seen(self) -> bool {
        self.0 & FIRST_BYTE != 0
    }

    pub(crate) fn is_http2(self) -> bool {
        self.0 & HTTP2 != 0
    }

    pub(crate) fn is_tunnel(self) -> bool {
        self.0 & TUNNEL != 0
    }

    pub(crate) fn is_draining(self) -> bool {
        self.0 & DRAINING != 0
    }

    /// Evicted at the listener's capacity (see `listener::capacity`).
    pub(crate) fn is_evicted(self) -> bool {
        self.0 & EVICTED != 0
    }

    /// HTTP with request boundaries known, not HTTP/2 and not a tunnel.
    pub(crate) fn runs_head_clock(self) -> bool {
        self.0 & (HTTP | HTTP2 | TUNNEL | NO_LAYER) == HTTP
    }

    /// HTTP/1 with request boundaries known, past the first byte, whose idleness is
    /// judged by bytes (not sealed): `runs_head_clock`, `!idle_by_requests` and
    /// `first_byte_seen` in one test, read at every wait.
    pub(crate) fn is_plain_http1_past_first_byte(self) -> bool {
        self.0 & (HTTP | HTTP2 | TUNNEL | NO_LAYER | SEALED | FIRST_BYTE) == HTTP | FIRST_BYTE
    }

    /// Whether idleness is judged by requests rather than bytes: the stream cannot
    /// tell which bytes are work (TLS, or HTTP/2 whose frames it does not follow).
    pub(crate) fn idle_by_requests(self) -> bool {
        self.0 & SEALED != 0 || self.0 & (HTTP2 | H2_FRAMES_SEEN) == HTTP2
    }

    /// Whether the stream carries bytes it cannot read (TLS under `serve()`).
    pub(crate) fn is_sealed(self) -> bool {
        self.0 & SEALED != 0
    }

    /// Served by a foreign server with the layer's handle (`ConnectInfo<Conn>`) and
    /// no request counted yet: the one mode where the layer may be missing.
    pub(crate) fn may_lack_layer(self) -> bool {
        self.0 & (AXUM | HTTP | NO_LAYER) == AXUM | HTTP
    }

    /// Served by `axum::serve` or tonic's `Server` without the layer's handle, or the
    /// layer was found missing.
    pub(crate) fn lacks_request_boundaries(self) -> bool {
        self.0 & NO_LAYER != 0 || self.0 & (AXUM | HTTP) == AXUM
    }
}

pub(super) fn gone_from_state(state: u32) -> Option<PeerGone> {
    if state & PEER_RST != 0 {
        Some(PeerGone::Reset)
    } else if state & PEER_FIN != 0 {
        Some(PeerGone::Fin)
    } else if state & CLOSED != 0 {
        Some(PeerGone::LocalClose)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    /// `is_plain_http1_past_first_byte` is the conjunction it stands for, state by state.
    #[test]
    fn plain_http1_past_first_byte_is_its_three_questions() {
        use super::*;
        let bits = [
            HTTP,
            HTTP2,
            TUNNEL,
            NO_LAYER,
            SEALED,
            FIRST_BYTE,
            AXUM,
            H2_FRAMES_SEEN,
        ];
        for set in 0..1u32 << bits.len() {
            let state = (0..bits.len())
                .filter(|i| set & (1 << i) != 0)
                .fold(0, |state, i| state | bits[i]);
            let flags = Flags(state);
            assert_eq!(
                flags.is_plain_http1_past_first_byte(),
                flags.runs_head_clock() && !flags.idle_by_requests() && flags.first_byte_seen(),
                "{state:#x}"
            );
        }
    }
}
