//! The per-connection handle shared by the stream, the Tower layer and handlers.
//!
//! A [`Conn`] is a cheap clone of one connection's shared state: its id and peer, the
//! phase it is in, whether the peer has gone, and the counters the layer sets (requests
//! in flight, a handler waiting for body bytes). Holding a `Conn` never keeps the
//! socket open.
//!
//! # Example
//!
//! A handler that stops work when its client leaves:
//!
//! ```no_run
//! use conn_hygiene::{Conn, conn::PeerGone};
//!
//! async fn long_job(conn: Conn) -> &'static str {
//!     tokio::select! {
//!         gone = conn.peer_closed() => {
//!             tracing::info!(?gone, "client left, stopping");
//!             "cancelled"
//!         }
//!         _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => "done",
//!     }
//! }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::limits::{Overrides, RequestLimits};
use crate::policy::Policy;
use crate::rate::MinRate;

mod current;
mod guards;
mod handoff;
mod in_flight;
pub(crate) mod load;
mod reason;
mod state;
#[cfg(test)]
mod tests;
mod watch;

use current::ENTERED;
pub(crate) use guards::Supervision;
pub use guards::{BodyWaitGuard, RequestGuard};
use in_flight::InFlight;
use load::Load;
pub(crate) use reason::Cuts;
pub use reason::{Abandon, PeerGone, Phase};
pub(crate) use state::Flags;
#[cfg(feature = "hyper")]
use state::SEALED;
use state::{
    ABANDONED, AXUM, CLOSED, DRAINING, EVICTED, EVICTION_SHUT, FIRST_BYTE, H2_FRAMES_SEEN, HTTP,
    HTTP2, LINGERING, NO_LAYER, PEER_FIN, PEER_RST, RECYCLED, Shared, TUNNEL, WRITE_BLOCKED,
    gone_from_state,
};

/// How long the owner of an abandoned connection has to notice, at its next read or
/// write, before the socket is shut down under it.
pub(crate) const NOTICE: Duration = Duration::from_secs(1);

/// A cheap, cloneable handle to one connection. See the [module docs](self).
#[derive(Clone)]
pub struct Conn {
    shared: Arc<Shared>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .field("phase", &self.phase())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// A handle for a connection whose socket the crate cannot watch directly (a
    /// transport other than TCP, or a test double). The peer's FIN is then seen only
    /// when the application reads it.
    pub fn new(id: u64, peer: SocketAddr, policy: Policy) -> Conn {
        Conn::build(id, peer, policy, None)
    }

    pub(crate) fn for_tcp(
        id: u64,
        peer: SocketAddr,
        policy: Policy,
        socket: &Arc<TcpStream>,
    ) -> Conn {
        Conn::build(id, peer, policy, Some(Arc::downgrade(socket)))
    }

    fn build(id: u64, peer: SocketAddr, policy: Policy, socket: Option<Weak<TcpStream>>) -> Conn {
        let span = tracing::info_span!(
            target: "conn_hygiene::conn",
            "conn",
            id,
            %peer,
            proxied_by = tracing::field::Empty
        );
        Conn {
            shared: Arc::new(Shared {
                id,
                peer,
                started: Instant::now(),
                state: AtomicU32::new(0),
                abandon: AtomicU8::new(0),
                in_flight: InFlight::new(),
                requests: AtomicU32::new(0),
                body_waiting: AtomicU32::new(0),
                body_wait_since: AtomicU64::new(0),
                idle_by_requests_since: AtomicU64::new(0),
                payload: AtomicU64::new(0),
                bytes_read: AtomicU64::new(0),
                bytes_written: AtomicU64::new(0),
                supervisors: AtomicU32::new(0),
                changed: Notify::new(),
                reader: AtomicWaker::new(),
                handoff: handoff::Handoff::new(),
                socket,
                span,
                max_age: policy
                    .max_connection_age()
                    .map(|age| crate::policy::jittered(age, id)),
                policy,
                cuts: OnceLock::new(),
                listener_layer: OnceLock::new(),
                load: OnceLock::new(),
                idle_bytes: AtomicU64::new(0),
                eviction_look: AtomicU64::new(0),
                proxied_by: OnceLock::new(),
            }),
        }
    }

    /// The connection's id, unique within its listener.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The peer's address: the client's, as a [PROXY protocol
    /// header](crate::listener::ProxyProtocol) names it when a balancer sent one.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// The balancer's address (the socket's peer) when the peer's address came from
    /// a [PROXY protocol header](crate::listener::ProxyProtocol); `None` for a direct connection.
    pub fn proxied_by(&self) -> Option<SocketAddr> {
        self.shared.proxied_by.get().copied()
    }

    pub(crate) fn set_proxied_by(&self, balancer: SocketAddr) {
        if self.shared.proxied_by.set(balancer).is_ok() {
            self.shared
                .span
                .record("proxied_by", tracing::field::display(balancer));
        }
    }

    /// The policy this connection runs under.
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// How long ago the connection was accepted.
    pub fn age(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// The connection's tracing span (fields `id`, `peer` and, behind a balancer,
    /// `proxied_by`).
    pub fn span(&self) -> &tracing::Span {
        &self.shared.span
    }

    /// Requests in flight, as counted by the Tower layer.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.shared.in_flight.count()
    }

    /// Bytes read from and written to the socket so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.shared.bytes_read.load(Ordering::Relaxed),
            self.shared.bytes_written.load(Ordering::Relaxed),
        )
    }

    /// The phase the connection is in now.
    pub fn phase(&self) -> Phase {
        let state = self.state();
        if state & (ABANDONED | CLOSED) != 0 {
            Phase::Closed
        } else if state & LINGERING != 0 {
            Phase::Lingering
        } else if state & WRITE_BLOCKED != 0 {
            Phase::WriteStall
        } else if state & PEER_FIN != 0 {
            Phase::HalfClosed
        } else if state & TUNNEL != 0 {
            Phase::Tunnel
        } else if state & FIRST_BYTE == 0 {
            Phase::FirstByte
        } else if self.shared.body_waiting.load(Ordering::Relaxed) > 0 {
            Phase::BodyWait
        } else if self.in_flight() > 0 {
            Phase::Busy
        } else if state & DRAINING != 0 {
            Phase::Draining
        } else {
            Phase::Idle
        }
    }

    /// How the peer left, if it has: a non-blocking check.
    ///
    /// It makes no syscall: it reports what the stream or a pending
    /// [`peer_closed`](Self::peer_closed) has already seen.
    pub fn peer_gone(&self) -> Option<PeerGone> {
        gone_from_state(self.state())
    }

    /// Waits until the peer sends FIN or RST, without reading a byte.
    ///
    /// On Linux the kernel reports the peer's FIN (`EPOLLRDHUP`) even while unread
    /// bytes sit in the receive buffer, so this resolves while a handler is busy and
    /// nobody reads the socket. Any number of tasks may wait at once; none of them
    /// takes a wakeup from the reader. It resolves with [`PeerGone::LocalClose`] when
    /// the connection closes on our side first.
    ///
    /// While it waits it holds the socket; when the stream closes it is woken and lets
    /// go at its next poll. So run it in a task (or `select!` it), rather than keeping
    /// it unpolled in a pool's entry.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future loses nothing.
    pub async fn peer_closed(&self) -> PeerGone {
        if let Some(gone) = self.peer_gone() {
            return gone;
        }
        let socket = self.shared.socket.as_ref().and_then(Weak::upgrade);
        let Some(socket) = socket else {
            return gone_from_state(self.wait_for(PEER_FIN | PEER_RST | CLOSED).await)
                .unwrap_or(PeerGone::LocalClose);
        };
        tokio::select! {
            // The stream's close wakes this branch, which drops the socket reference, so
            // a polled waiter does not keep the file descriptor open.
            state = self.wait_for(PEER_FIN | PEER_RST | CLOSED) => {
                gone_from_state(state).unwrap_or(PeerGone::LocalClose)
            }
            gone = watch::peer_gone(&socket) => {
                self.record_peer(gone);
                // Our own shutdown at an eviction: nothing to enforce.
                if self.eviction_shut() { PeerGone::LocalClose } else { gone }
            }
        }
    }

    /// Why the connection was abandoned, if it was.
    #[inline]
    pub fn abandoned(&self) -> Option<Abandon> {
        Abandon::from_code(self.shared.abandon.load(Ordering::Acquire))
    }

    /// Waits until the connection is abandoned, and says why.
    pub async fn wait_abandoned(&self) -> Abandon {
        self.wait_for(ABANDONED).await;
        self.abandoned().unwrap_or(Abandon::DrainDeadline)
    }

    /// Abandons the connection: the socket is set to zero linger, so its close sends an
    /// RST and leaves no FIN_WAIT or TIME_WAIT state, and the stream's next read or
    /// write fails with `ConnectionAborted`. A task under [`supervise`](Self::supervise)
    /// is dropped at once, and so is a lingering close; any other task learns of it at
    /// its stream's next operation. The first reason given wins.
    pub fn abandon(&self, reason: Abandon) {
        if self
            .shared
            .abandon
            .compare_exchange(0, reason.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let phase = self.phase();
        self.set_zero_linger();
        self.set(ABANDONED);
        self.count_cut(reason);
        // A reader parked with no clock learns of it now, not at its next wakeup.
        self.shared.reader.wake();
        tracing::info!(
            target: "conn_hygiene::abandon",
            parent: &self.shared.span,
            reason = reason.as_str(),
            phase = phase.as_str(),
            in_flight = self.in_flight(),
            "connection abandoned, resetting"
        );
        #[cfg(feature = "metrics")]
        crate::metrics::hooks::abandoned(reason);
    }

    /// Asks the connection to retire gracefully: finish what is in flight, then close.
    ///
    /// Under `serve()` hyper's graceful shutdown runs on it: an answer in flight goes
    /// out with `Connection: close`, an idle HTTP/1 connection closes at a quiet moment
    /// (nothing read for 100 ms, so as not to race a request on its way), an HTTP/2
    /// connection gets GOAWAY. With the layer, under any server, the next HTTP/1 answer
    /// carries `Connection: close`. A tunnel's relay sees it through
    /// [`draining`](Self::draining). During `serve()`'s own shutdown an idle HTTP/1
    /// connection is kept through the deregistration phase, and closed at a quiet
    /// moment of the drain.
    pub fn start_draining(&self) {
        self.set(DRAINING);
    }

    /// Waits until the connection is asked to drain.
    pub async fn draining(&self) {
        self.wait_for(DRAINING).await;
    }

    /// Whether the connection is draining.
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.flags().is_draining()
    }

    /// Whether the connection has closed on our side: the stream was dropped and its
    /// lingering close, if it has one, ended.
    pub fn is_closed(&self) -> bool {
        self.state() & CLOSED != 0
    }

    /// Waits until the connection has closed on our side, as [`is_closed`](Self::is_closed).
    pub async fn closed(&self) {
        self.wait_for(CLOSED).await;
    }

    /// When the handler began waiting for body bytes, if it is waiting.
    #[inline]
    pub(crate) fn body_wait_since(&self) -> Option<Instant> {
        if self.shared.body_waiting.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let since = self.shared.body_wait_since.load(Ordering::Relaxed);
        Some(self.shared.started + Duration::from_nanos(since))
    }

    /// Overrides the body and send clocks for the request in flight (see
    /// [`RequestLimits`]); a handler calls it, or a route's
    /// `RequestLimitsLayer` (feature `hyper`). The overrides end with the request,
    /// when its response body has been sent (or the request is dropped).
    ///
    /// Over HTTP/2 the connection's streams share one socket and one set of clocks:
    /// while the overriding request is in flight, its limits apply to every stream of
    /// the connection, and they end when it ends, whatever other streams are still in
    /// flight. That holds for limits set from the handler (or a route's layer) as it
    /// is called or polled; limits set from elsewhere, such as a task the handler
    /// spawned, end only when no request is in flight.
    ///
    /// Ignored while no request is in flight, as under `axum::serve` without
    /// `HygieneLayer`: nothing would end the override. Set from another task while the
    /// last request ends, it either applies to that request and ends with it, or is
    /// ignored: it never outlives the requests in flight when it took effect.
    ///
    /// A body or write wait already under way keeps its deadline; the next one uses
    /// the new values.
    ///
    /// ```no_run
    /// # #[cfg(feature = "axum")]
    /// # fn dox() {
    /// use conn_hygiene::{Conn, limits::RequestLimits};
    ///
    /// // A long export to slow readers: no response floor, a generous write stall.
    /// async fn export(conn: Conn) -> &'static str {
    ///     conn.set_request_limits(
    ///         RequestLimits::builder()
    ///             .min_send_rate(None)
    ///             .write_stall_timeout(Some(std::time::Duration::from_secs(300)))
    ///             .build()
    ///             .expect("valid limits"),
    ///     );
    ///     "a large body"
    /// }
    /// # }
    /// ```
    pub fn set_request_limits(&self, limits: RequestLimits) {
        // Ignored with no request in flight: the layer counts none (`axum::serve`
        // without it), or the request has ended.
        self.shared.in_flight.set(limits, || {
            // Called from an HTTP/2 request's handler: the override is that request's.
            ENTERED.with(|entered| {
                let mut ours = entered.take();
                let counts = match &mut ours {
                    Some((conn, counted))
                        if !*counted && Arc::ptr_eq(&conn.shared, &self.shared) =>
                    {
                        *counted = true;
                        true
                    }
                    _ => false,
                };
                entered.set(ours);
                counts
            })
        });
    }

    /// The body-stall clock now: the request's override, or the policy's.
    pub(crate) fn body_stall_timeout(&self) -> Option<Duration> {
        self.overridden(Overrides::body_stall)
            .unwrap_or_else(|| self.policy().body_stall_timeout())
    }

    /// The write-stall clock now: the request's override, or the policy's.
    pub(crate) fn write_stall_timeout(&self) -> Option<Duration> {
        self.overridden(Overrides::write_stall)
            .unwrap_or_else(|| self.policy().write_stall_timeout())
    }

    /// The request-body rate floor now; none in a tunnel.
    #[cfg(feature = "hyper")]
    pub(crate) fn min_body_rate(&self) -> Option<MinRate> {
        if self.is_tunnel() {
            return None;
        }
        self.overridden(Overrides::min_body_rate)
            .unwrap_or_else(|| self.policy().min_body_rate())
    }

    /// The response rate floor now; none in a tunnel.
    pub(crate) fn min_send_rate(&self) -> Option<MinRate> {
        if self.is_tunnel() {
            return None;
        }
        self.overridden(Overrides::min_send_rate)
            .unwrap_or_else(|| self.policy().min_send_rate())
    }

    fn overridden<T>(&self, get: fn(&Overrides) -> Option<T>) -> Option<T> {
        get(self.shared.in_flight.overrides()?)
    }

    /// When this connection is to be recycled for its age, jitter included.
    pub(crate) fn recycle_at(&self) -> Option<Instant> {
        Some(self.shared.started + self.shared.max_age?)
    }

    /// Marks the connection as recycled; returns whether this call did.
    pub(crate) fn mark_recycled(&self) -> bool {
        self.shared.state.fetch_or(RECYCLED, Ordering::AcqRel) & RECYCLED == 0
    }

    /// When the connection last became idle by its requests (the end of the last
    /// one, or the start), where idleness is judged by requests
    /// ([`Flags::idle_by_requests`]).
    pub(crate) fn idle_by_requests_since(&self) -> Instant {
        let since = self.shared.idle_by_requests_since.load(Ordering::Relaxed);
        self.shared.started + Duration::from_nanos(since)
    }

    /// Requests begun on this connection so far.
    #[inline]
    pub(crate) fn requests(&self) -> u32 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Marks the connection as HTTP, so the stream runs the request-head clock.
    pub fn mark_http(&self) {
        // Called per request by the layer: a load is cheaper than a read-modify-write.
        if self.state() & HTTP == 0 {
            self.shared.state.fetch_or(HTTP, Ordering::Relaxed);
        }
    }

    /// Marks the connection as HTTP/2 (`serve()` when ALPN or `http2_only` says so, or
    /// the layer at its first HTTP/2 request; the preface sniffer uses
    /// [`mark_http2_frames_seen`](Self::mark_http2_frames_seen)): frames between
    /// requests, such as pings, do not start a request-head clock.
    #[cfg(any(feature = "hyper", test))]
    pub(crate) fn mark_http2(&self) {
        if self.state() & HTTP2 == 0 {
            self.shared.state.fetch_or(HTTP2, Ordering::Relaxed);
        }
    }

    /// Marks the connection as HTTP/2 whose frames the stream follows (the preface
    /// read in plaintext): its idle clock needs no request-end times.
    pub(crate) fn mark_http2_frames_seen(&self) {
        self.shared
            .state
            .fetch_or(HTTP2 | H2_FRAMES_SEEN, Ordering::Relaxed);
    }

    /// Marks the connection as one whose bytes the stream cannot read (TLS over it):
    /// its idle clock is judged by requests. `serve()` declares it for an acceptor.
    #[cfg(feature = "hyper")]
    pub(crate) fn mark_sealed(&self) {
        self.shared.state.fetch_or(SEALED, Ordering::Relaxed);
    }

    /// Whether the connection is known to speak HTTP/2.
    pub(crate) fn is_http2(&self) -> bool {
        self.flags().is_http2()
    }

    /// Marks the connection as a tunnel: after a `101 Switching Protocols` or a
    /// successful `CONNECT` it no longer speaks HTTP, so the request-head, idle and
    /// body-stall clocks stop and the [tunnel idle
    /// clock](crate::Policy::tunnel_idle_timeout) starts. The layer calls it.
    pub fn mark_tunnel(&self) {
        if self.shared.state.fetch_or(TUNNEL, Ordering::AcqRel) & TUNNEL == 0 {
            tracing::debug!(
                target: "conn_hygiene::tunnel",
                parent: &self.shared.span,
                requests = self.requests(),
                "connection became a tunnel"
            );
            self.shared.changed.notify_waiters();
            // The reader's clock changes: let it re-arm.
            self.shared.reader.wake();
        }
    }

    /// Counts `n` bytes of plaintext moved above a sealed connection's TLS: its
    /// `Payload` is the counter's only writer.
    #[inline]
    pub(crate) fn add_payload(&self, n: usize) {
        add(&self.shared.payload, n);
    }

    /// The payload moved so far, either way, as a tunnel's idle clock counts it: the
    /// socket's bytes, or over TLS (sealed) the plaintext above it, so that records
    /// that carry none are no activity.
    pub(crate) fn tunnel_moved(&self) -> u64 {
        if self.flags().is_sealed() {
            self.shared.payload.load(Ordering::Relaxed)
        } else {
            let (read, written) = self.bytes();
            read + written
        }
    }

    /// Whether the connection became a tunnel (see [`mark_tunnel`](Self::mark_tunnel)).
    pub fn is_tunnel(&self) -> bool {
        self.flags().is_tunnel()
    }

    /// Marks the connection as served by a server other than `serve()` (`axum::serve`,
    /// tonic's `Server`), where only the layer knows where requests begin and end.
    #[cfg(any(feature = "axum", feature = "tonic"))]
    pub(crate) fn mark_foreign_server(&self) {
        self.shared.state.fetch_or(AXUM, Ordering::Relaxed);
    }

    /// Whether recycling can retire this connection gracefully. Under `axum::serve` or
    /// tonic's `Server` nothing sends HTTP/2's GOAWAY, and without the layer nothing
    /// adds `Connection: close`: the recycle grace ends in a reset.
    pub(crate) fn retires_gracefully(&self) -> bool {
        let flags = self.flags();
        flags.0 & AXUM == 0 || !(flags.is_http2() || flags.lacks_request_boundaries())
    }

    /// Records that the layer is missing on an HTTP connection; returns whether this
    /// call recorded it.
    pub(crate) fn mark_no_layer(&self) -> bool {
        self.shared.state.fetch_or(NO_LAYER, Ordering::Relaxed) & NO_LAYER == 0
    }

    /// Whether a supervisor enforces the half-close policy now.
    #[cfg(feature = "hyper")]
    pub(crate) fn is_supervised(&self) -> bool {
        self.shared.supervisors.load(Ordering::Relaxed) > 0
    }

    /// Waits until no supervisor enforces the half-close policy.
    #[cfg(feature = "hyper")]
    pub(crate) async fn unsupervised(&self) {
        self.wait_until(|| (!self.is_supervised()).then_some(()))
            .await;
    }

    pub(crate) fn socket(&self) -> Option<Arc<TcpStream>> {
        self.shared.socket.as_ref().and_then(Weak::upgrade)
    }

    pub(crate) fn started(&self) -> Instant {
        self.shared.started
    }

    // The stream is the only writer of the byte counters (see `add`).
    #[inline]
    pub(crate) fn add_read(&self, n: usize) {
        add(&self.shared.bytes_read, n);
    }

    pub(crate) fn add_written(&self, n: usize) {
        add(&self.shared.bytes_written, n);
    }

    pub(crate) fn mark_first_byte(&self) {
        self.shared.state.fetch_or(FIRST_BYTE, Ordering::Relaxed);
    }

    pub(crate) fn set_write_blocked(&self, blocked: bool) {
        if blocked {
            self.shared.state.fetch_or(WRITE_BLOCKED, Ordering::Relaxed);
        } else {
            self.shared
                .state
                .fetch_and(!WRITE_BLOCKED, Ordering::Relaxed);
        }
    }

    // Inlined: a tunnel's reader registers at every message.
    #[inline]
    pub(crate) fn register_reader(&self, waker: &std::task::Waker) {
        self.shared.reader.register(waker);
    }

    /// The waiting reader armed its clock with `idle_timeout`: the end of a request
    /// need not wake it unless the idle timeout is shorter then (see `handoff`).
    /// Returns whether a request ended since the reader's last mark.
    #[inline]
    pub(crate) fn mark_reader(&self, idle_timeout: Option<Duration>) -> bool {
        self.shared.handoff.mark(idle_timeout)
    }

    /// The reader takes its mark back: the end of a request wakes it again. Returns
    /// whether a request ended since the mark.
    #[inline]
    pub(crate) fn unmark_reader(&self) -> bool {
        self.shared.handoff.unmark()
    }

    /// The reader marks (see [`mark_reader`](Self::mark_reader)), unless a request
    /// ended since it last looked: then `Some` of the end's time, if stamped.
    #[inline]
    pub(crate) fn mark_reader_or_take_end(
        &self,
        idle_timeout: Option<Duration>,
    ) -> Option<Option<Instant>> {
        self.shared.handoff.mark_or_take_end(idle_timeout)
    }

    /// Whether a request ended since the reader's last mark.
    #[inline]
    pub(crate) fn ended_since_mark(&self) -> bool {
        self.shared.handoff.ended()
    }

    /// The reader takes its mark back, and learns when the last request ended if it
    /// ended while the mark stood.
    #[inline]
    pub(crate) fn take_request_end(&self) -> Option<Instant> {
        self.shared.handoff.take_end()
    }

    /// Makes the socket's close send an RST. Best effort: on failure the close is
    /// graceful instead.
    pub(crate) fn set_zero_linger(&self) {
        if let Some(socket) = self.socket() {
            let _ = SockRef::from(&*socket).set_linger(Some(Duration::ZERO));
        }
    }

    /// Shuts the socket down both ways under an owner that does not close it: the
    /// kernel then releases the connection (no CLOSE_WAIT), and the owner's next
    /// operation fails.
    pub(crate) fn shut_down_socket(&self) {
        if let Some(socket) = self.socket() {
            let _ = SockRef::from(&*socket).shutdown(std::net::Shutdown::Both);
        }
    }

    /// Abandons the connection from outside its task, and makes sure it closes: an
    /// owner that is neither supervised nor parked in a read (a tunnel's relay, an
    /// idle connection under `axum::serve` whose reader waits on a clock) learns of the
    /// abandonment only at its next operation, so after a [`NOTICE`] the socket is
    /// shut down under it.
    pub(crate) async fn force_close(&self, reason: Abandon) {
        self.abandon(reason);
        if tokio::time::timeout(NOTICE, self.closed()).await.is_err() {
            self.shut_down_socket();
        }
    }

    /// Counts the connection's cuts in `cuts`, its listener's tally.
    pub(crate) fn count_cuts_in(&self, cuts: &Arc<Cuts>) {
        let _ = self.shared.cuts.set(cuts.clone());
    }

    /// Records in `layer`, its listener's record, when the layer counts the
    /// connection's first request.
    pub(crate) fn report_layer_to(&self, layer: &Arc<AtomicBool>) {
        let _ = self.shared.listener_layer.set(layer.clone());
        if self.requests() > 0 {
            layer.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the layer has counted a request on this connection's listener: an
    /// HTTP/2 header block the server did not count is then refused, not unserved.
    pub(crate) fn listener_has_layer(&self) -> bool {
        self.shared
            .listener_layer
            .get()
            .is_some_and(|layer| layer.load(Ordering::Relaxed))
    }

    /// Counts a cut in the listener's tally: the connection abandoned, or one HTTP/2
    /// stream failed by a clock or a floor.
    pub(crate) fn count_cut(&self, reason: Abandon) {
        if let Some(cuts) = self.shared.cuts.get() {
            cuts.count(reason);
        }
    }

    pub(crate) fn set_lingering(&self) {
        self.set(LINGERING);
    }

    pub(crate) fn mark_closed(&self) {
        self.set(CLOSED);
    }

    /// Scales the connection's idle clocks by `load`, its listener's.
    pub(crate) fn follow_load(&self, load: &Arc<Load>) {
        let _ = self.shared.load.set(load.clone());
    }

    /// The idle clock now: the policy's, shrunk under the listener's pressure.
    #[inline]
    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        self.under_load(self.policy().idle_timeout())
    }

    /// The first-byte clock now: the policy's, shrunk under the listener's pressure.
    #[inline]
    pub(crate) fn first_byte_timeout(&self) -> Option<Duration> {
        self.under_load(self.policy().first_byte_timeout())
    }

    #[inline]
    fn under_load(&self, timeout: Option<Duration>) -> Option<Duration> {
        let timeout = timeout?;
        Some(
            self.shared
                .load
                .get()
                .map_or(timeout, |load| load.scale(timeout)),
        )
    }

    /// Marks the connection evicted; returns whether this call did.
    pub(crate) fn mark_evicted(&self) -> bool {
        self.shared.state.fetch_or(EVICTED, Ordering::AcqRel) & EVICTED == 0
    }

    /// Takes an eviction back before it was carried out.
    pub(crate) fn unmark_evicted(&self) {
        self.shared.state.fetch_and(!EVICTED, Ordering::AcqRel);
    }

    /// Whether the connection was evicted to make room at capacity.
    pub(crate) fn is_evicted(&self) -> bool {
        self.flags().is_evicted()
    }

    /// Records that the eviction takes effect now (the end of reading, or the socket
    /// shut down): what the peer does from now on answers our close.
    pub(crate) fn mark_eviction_shut(&self) {
        self.set(EVICTION_SHUT);
    }

    /// Whether the eviction took effect (see [`mark_eviction_shut`](Self::mark_eviction_shut)).
    pub(crate) fn eviction_shut(&self) -> bool {
        self.state() & EVICTION_SHUT != 0
    }

    /// Records the eviction's look at `now` (ms, from the listener's load); returns
    /// the requests begun and the time at the look before (`None`: never looked).
    /// Costs the requests nothing: the evictor compares counts, not clocks.
    pub(crate) fn look_for_eviction(&self, now: u32) -> (u32, Option<(u32, u32)>) {
        let requests = self.requests();
        let look = u64::from(requests) << 32 | u64::from(now.wrapping_add(1).max(1));
        let before = self.shared.eviction_look.load(Ordering::Relaxed);
        let before = (before != 0).then(|| ((before >> 32) as u32, (before as u32) - 1));
        // Kept while the count stands: the quiet is measured from the first look.
        if before.is_none_or(|(count, _)| count != requests) {
            self.shared.eviction_look.store(look, Ordering::Relaxed);
        }
        (requests, before)
    }

    /// Whether bytes arrived since the last request ended (or since accept): the head
    /// of the next request, or what a client sends before its first.
    pub(crate) fn read_since_idle(&self) -> bool {
        self.shared.bytes_read.load(Ordering::Relaxed)
            != self.shared.idle_bytes.load(Ordering::Relaxed)
    }

    /// Wakes the stream's waiting reader, so that it reads its clock again.
    pub(crate) fn wake_reader(&self) {
        self.shared.reader.wake();
    }

    /// Records how the peer left; the first report of each kind emits one event.
    pub(crate) fn record_peer(&self, gone: PeerGone) {
        let bit = match gone {
            PeerGone::Fin => PEER_FIN,
            PeerGone::Reset => PEER_RST,
            PeerGone::LocalClose => return,
        };
        let phase = self.phase();
        if self.eviction_shut() {
            // The end of reading that our own shutdown caused, not the peer's.
            return;
        }
        let before = self.shared.state.fetch_or(bit, Ordering::AcqRel);
        if before & bit != 0 {
            return;
        }
        self.shared.changed.notify_waiters();
        #[cfg(feature = "metrics")]
        crate::metrics::hooks::peer_closed(gone);
        match gone {
            PeerGone::Fin => tracing::debug!(
                target: "conn_hygiene::peer",
                parent: &self.shared.span,
                event = "fin",
                phase = phase.as_str(),
                in_flight = self.in_flight(),
                "peer sent FIN"
            ),
            _ => tracing::debug!(
                target: "conn_hygiene::peer",
                parent: &self.shared.span,
                event = "rst",
                phase = phase.as_str(),
                in_flight = self.in_flight(),
                "peer reset the connection"
            ),
        }
    }

    /// The state bits, read once, for code that asks several questions of them.
    #[inline]
    pub(crate) fn flags(&self) -> Flags {
        Flags(self.state())
    }

    // Inlined, as `flags`: the stream asks at every read.
    #[inline]
    fn state(&self) -> u32 {
        self.shared.state.load(Ordering::Acquire)
    }

    fn set(&self, bit: u32) {
        if self.shared.state.fetch_or(bit, Ordering::AcqRel) & bit == 0 {
            self.shared.changed.notify_waiters();
        }
    }

    async fn wait_for(&self, mask: u32) -> u32 {
        self.wait_until(|| {
            let state = self.state();
            (state & mask != 0).then_some(state)
        })
        .await
    }

    /// Waits until `ready` returns something, checking it after each change the
    /// connection announces (`changed`).
    async fn wait_until<T>(&self, mut ready: impl FnMut() -> Option<T>) -> T {
        loop {
            let notified = self.shared.changed.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a change between the two is not missed.
            notified.as_mut().enable();
            if let Some(done) = ready() {
                return done;
            }
            notified.await;
        }
    }
}

/// Adds `n` to a counter with a single writer: a load and a store are enough, and
/// cheaper than an atomic read-modify-write on every operation.
#[inline]
fn add(counter: &AtomicU64, n: usize) {
    counter.store(
        counter.load(Ordering::Relaxed) + n as u64,
        Ordering::Relaxed,
    );
}

/// Whether the peer's FIN is seen while nobody reads the socket: where it is not, only
/// a read sees it, and `serve()` leaves hyper's own FIN handling on.
#[cfg_attr(not(feature = "hyper"), allow(dead_code))]
pub(crate) const FIN_SEEN_WITHOUT_READING: bool = watch::FIN_SEEN_WITHOUT_READING;
