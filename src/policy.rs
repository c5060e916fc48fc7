//! Every timeout of a connection's life, the half-close policy and the close behaviour.
//!
//! A [`Policy`] is built once, validated, and shared by every connection of a listener
//! or server. Each phase of a connection has its own clock; a clock set to `None` never
//! fires.
//!
//! | phase | field | default | nginx | HAProxy | Kestrel | Go `net/http` |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | connect to first byte (TLS, sniff) | [`first_byte_timeout`](PolicyBuilder::first_byte_timeout) | 10 s | `client_header_timeout` 60 s | `timeout http-request` | — | `ReadHeaderTimeout` (none) |
//! | request head | [`header_timeout`](PolicyBuilder::header_timeout) | 30 s | `client_header_timeout` 60 s | `timeout http-request` | `RequestHeadersTimeout` 30 s | `ReadHeaderTimeout` (none) |
//! | idle between requests | [`idle_timeout`](PolicyBuilder::idle_timeout) | 60 s | `keepalive_timeout` 75 s | `timeout http-keep-alive` | `KeepAliveTimeout` 130 s | `IdleTimeout` (none) |
//! | request body stalled | [`body_stall_timeout`](PolicyBuilder::body_stall_timeout) | 60 s | `client_body_timeout` 60 s | `timeout client` (none; 30–50 s usual) | none (the floor) | `ReadTimeout` (none) |
//! | upgraded tunnel (WebSocket, CONNECT) idle | [`tunnel_idle_timeout`](PolicyBuilder::tunnel_idle_timeout) | 1 h | `proxy_read_timeout` 60 s | `timeout tunnel` | — | — |
//! | write stalled (peer not reading) | [`write_stall_timeout`](PolicyBuilder::write_stall_timeout) | 60 s | `send_timeout` 60 s | `timeout client` (none; 30–50 s usual) | none (the floor) | `WriteTimeout` (none) |
//! | peer half-closed | [`half_close`](PolicyBuilder::half_close) | `AllowFor(10 s)` | — | `timeout client-fin` | — | — |
//! | lingering after our close | [`linger_timeout`](PolicyBuilder::linger_timeout) | 5 s | `lingering_timeout` 5 s | — | — | — |
//! | unready but serving at shutdown | [`deregister_delay`](PolicyBuilder::deregister_delay) | none | — | `grace` (none) | — | — |
//! | draining at shutdown | [`drain_timeout`](PolicyBuilder::drain_timeout) | 30 s | `worker_shutdown_timeout` (none) | `hard-stop-after` (none) | `ShutdownTimeout` 30 s | `Shutdown(ctx)` (none) |
//! | request body slower than a floor (time a handler waits for body bytes) | [`min_body_rate`](PolicyBuilder::min_body_rate) | 240 B/s after 5 s | — (`client_body_timeout` is a gap) | — | `MinRequestBodyDataRate` 240 B/s after 5 s | — |
//! | response read slower than a floor (time a write waits on the peer) | [`min_send_rate`](PolicyBuilder::min_send_rate) | 240 B/s after 5 s | — (`send_timeout` is a gap) | — | `MinResponseDataRate` 240 B/s after 5 s | — |
//! | requests per connection | [`max_requests`](PolicyBuilder::max_requests) | none | `keepalive_requests` 1000 | — | — | — |
//! | connection age (±10 % jitter) | [`max_connection_age`](PolicyBuilder::max_connection_age) | none | `keepalive_time` 1 h | — | — | — (gRPC: `MAX_CONNECTION_AGE` ±10 %) |
//! | recycled connection's grace | [`recycle_grace`](PolicyBuilder::recycle_grace) | 30 s | — | — | — | — (gRPC: `MAX_CONNECTION_AGE_GRACE`) |
//! | `Keep-Alive: timeout=N` advertised (the idle timeout) | [`advertise_keep_alive`](PolicyBuilder::advertise_keep_alive) | on | on (`keepalive_timeout`'s 2nd value) | — | — | — |
//!
//! The limits that live beside the policy, with the same comparison:
//!
//! | what | where | default | nginx | HAProxy | Kestrel | Go `net/http` |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | request head size (431 beyond) | `Serve::max_head_bytes` (feature `hyper`) | 408 KiB (hyper's) | `large_client_header_buffers` 4 × 8 KiB | `tune.bufsize` 16 KiB | `MaxRequestHeadersTotalSize` 32 KiB | `MaxHeaderBytes` 1 MiB |
//! | connections per client IP (IPv6 per /64) | [`Listener::max_connections_per_ip`](crate::Listener::max_connections_per_ip) | none | `limit_conn` | `sc_conn_cur` + `tcp-request connection reject` | — | — |
//! | per-request override of the body and write clocks and floors | [`RequestLimits`](crate::limits::RequestLimits), `RequestLimitsLayer` (feature `hyper`) | — | per `location` | per backend | per-request features | `ResponseController.SetReadDeadline` |
//!
//! The stall clocks wait 60 s, nginx's value, rather than 30 s: on a link with 15 %
//! loss, connections served without the crate went silent for 25 to 106 s while the
//! kernel backed off retransmitting, and the attackers the stall clocks would catch are
//! cut sooner by the floors (slow body, slow read) and the head clock (slowloris). The
//! write-stall clock, on Linux, also forgives the time the kernel spends retransmitting,
//! up to another 60 s: a peer that vanished mid-answer, with no keepalive and no
//! `TCP_USER_TIMEOUT`, is found within 2 min of its last acknowledgement (sooner with
//! [`SocketOptions::tcp_user_timeout`](crate::SocketOptions::tcp_user_timeout));
//! an idle one by the idle clock.
//!
//! The rate floors measure only time spent waiting on the peer (see
//! [`rate`](crate::rate)), so a slow handler or a rare server-sent event is never cut,
//! and tunnels have none; they can be changed per request
//! ([`RequestLimits`](crate::limits::RequestLimits)). The response floor judges what the peer
//! received, not when the writer was woken: Linux reports a socket writable only once a
//! third of its send buffer has drained (about 9 KB), so a meter crediting completed
//! writes saw nothing for the whole grace from any reader slower than about 2 KB/s, and
//! cut them. On Linux the floor and the write-stall clock count the bytes the peer's TCP
//! acknowledged (`TCP_INFO`, read through `NETLINK_SOCK_DIAG` only when a clock is about
//! to fire), over plain TCP, TLS and HTTP/2 alike; the time the kernel spends
//! retransmitting is the network's, forgiven up to the write-stall timeout per response
//! (per connection on HTTP/2); and the idle clock waits while the last answer is still
//! draining to a peer that acknowledges it. Elsewhere the bytes the socket took stand in.
//!
//! Measured with these defaults: 80 KB downloads at 8 kbit/s (about 1 KB/s) with 2 %
//! loss, over HTTP/1.1 (curl) and HTTP/2 (nghttp), all complete, as do 16 kbit/s with
//! 5 % loss and a 30 KB upload at 8 kbit/s; a reader taking 100 B/s and one that never
//! reads are cut at about 14 s, slowloris at the head clock, a 10 B/s body at the floor
//! (`cargo test --all-features --test it -- --ignored --nocapture slow_link::`, as root).
//! Under slowhttptest's three slow modes (50 connections each; 2 s head clock, 500 B/s
//! floors after 2 s, the write-stall clock at 30 s so that the floor does the cutting),
//! `serve()` held 0 attacking connections 9 s in, in each mode, and plain `axum::serve`
//! all 50 (`cargo test --all-features --test it -- --ignored --nocapture slowhttptest::`).
//! With the default floors, `demo_server` with 2 s clocks held 0 of 200 slow-body
//! uploads 9 s in, where `--raw` held all 200.
//!
//! Recycling is graceful: the last HTTP/1 answer carries `Connection: close`, HTTP/2
//! gets GOAWAY (under `serve()`), and the connection is reset if it is still open a
//! [grace](PolicyBuilder::recycle_grace) later. Tunnels are not recycled.
//!
//! There is deliberately no clock while a handler is busy: a handler's deadline is the
//! handler's business (for example tower's `TimeoutLayer`).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use conn_hygiene::{HalfClose, Policy};
//!
//! let policy = Policy::builder()
//!     .idle_timeout(Some(Duration::from_secs(30)))
//!     .half_close(HalfClose::AllowFor(Duration::from_secs(2)))
//!     .build()
//!     .expect("valid policy");
//! assert_eq!(policy.idle_timeout(), Some(Duration::from_secs(30)));
//!
//! // Invalid values fail when the policy is built, naming the field.
//! let err = Policy::builder().idle_timeout(Some(Duration::ZERO)).build().unwrap_err();
//! assert_eq!(err.field(), "idle_timeout");
//! ```

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::rate::{MAX_TIMEOUT, MinRate};

/// What happens after the peer half-closes (sends FIN) while the connection is open.
///
/// Defaults to `AllowFor(10 s)`: long enough for a client that half-closes after its
/// request (`curl -T`, `nc -N`, some proxies) to get its answer from a normal handler,
/// short enough that a stuck handler cannot pin a CLOSE_WAIT socket for long. An RST
/// always abandons the connection at once, whatever the policy. The policy is
/// enforced by [`Conn::supervise`](crate::Conn::supervise) (and `Abort` by the
/// stream's own read of the FIN too).
///
/// # Proxies
///
/// A TCP proxy (`tokio::io::copy_bidirectional` between two
/// [`HygieneStream`](crate::HygieneStream)s) forwards a FIN as a shutdown of the other
/// side and keeps copying the other direction, which may run for a long time after
/// the FIN (a download after the request, an upload after a banner). Run the copy
/// under `supervise` of both connections with `AllowFor(grace)`: the grace bounds a
/// half-closed connection on which nothing moves any more, not the transfer. `Allow`
/// never abandons on a FIN, so only the other clocks (idle, write stall) bound the
/// connection after it; `Abort` breaks half-close protocols.
///
/// The grace is one of inactivity: a peer that pauses reading after its FIN for longer
/// than the grace is cut, even under a longer `write_stall_timeout`, so make the grace
/// at least the write-stall timeout. And when the relay ends in anything but success
/// (a clock, the grace, a reset, a copy error), abandon both connections: a side
/// already shut down would otherwise close with a lingering close that reads and
/// discards the rest of its peer's transfer, which the peer then takes for delivered.
/// `examples/tcp_proxy.rs` is a whole proxy that does both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HalfClose {
    /// Cancel the work in flight and reset the connection as soon as the FIN arrives.
    Abort,
    /// The peer may half-close and still read the answer, for as long as that takes.
    ///
    /// A stuck handler then keeps the socket in CLOSE_WAIT until it returns: pair this
    /// with a handler deadline.
    Allow,
    /// The peer may half-close; after its FIN the connection is abandoned once a whole
    /// grace passes with no byte moving in either direction (HAProxy's
    /// `timeout client-fin`, an inactivity timeout). A stuck handler is released
    /// exactly one grace after the FIN; while the answer (or, through a proxy, the
    /// other direction) keeps moving, the grace restarts, and the connection goes
    /// within two graces of the last byte.
    AllowFor(Duration),
}

impl Default for HalfClose {
    fn default() -> Self {
        HalfClose::AllowFor(Duration::from_secs(10))
    }
}

impl HalfClose {
    /// The grace after the peer's FIN: zero for `Abort`, `None` for `Allow`.
    pub fn grace(self) -> Option<Duration> {
        match self {
            HalfClose::Abort => Some(Duration::ZERO),
            HalfClose::Allow => None,
            HalfClose::AllowFor(grace) => Some(grace),
        }
    }
}

/// The validated timeouts and close behaviour of connections. Build one with
/// [`Policy::builder`]; [`Policy::default`] gives the defaults of the
/// [module table](self).
///
/// A policy is a cheap handle: its settings are shared, so a clone per listener,
/// connection or client costs a reference count, and every constructor of the crate
/// takes a `Policy` by value.
#[derive(Clone, PartialEq, Eq)]
pub struct Policy {
    settings: Arc<Settings>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.settings.fmt(f)
    }
}

/// What a [`Policy`] shares between its clones.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    first_byte: Option<Duration>,
    header: Option<Duration>,
    idle: Option<Duration>,
    body_stall: Option<Duration>,
    write_stall: Option<Duration>,
    tunnel_idle: Option<Duration>,
    half_close: HalfClose,
    linger: Duration,
    deregister: Option<Duration>,
    drain: Duration,
    reset_on_close: bool,
    min_body_rate: Option<MinRate>,
    min_send_rate: Option<MinRate>,
    max_requests: Option<u32>,
    max_age: Option<Duration>,
    recycle_grace: Duration,
    keep_alive: bool,
    // `Keep-Alive: timeout=N`, computed once per policy rather than per response.
    #[cfg(feature = "hyper")]
    keep_alive_value: Option<http::HeaderValue>,
}

impl Default for Policy {
    fn default() -> Self {
        PolicyBuilder::new().unchecked()
    }
}

impl Policy {
    /// Starts a builder holding the defaults.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::new()
    }

    /// From accept (or connect) to the first byte received: a silent client, before a
    /// TLS handshake or a protocol sniff. A handshake that trickles in is bounded by the
    /// request-head clock under `serve()`, or elsewhere by a deadline
    /// around the handshake (see the stream's TLS notes).
    pub fn first_byte_timeout(&self) -> Option<Duration> {
        self.settings.first_byte
    }

    /// From the first byte of a request to the end of its head (HTTP servers only).
    pub fn header_timeout(&self) -> Option<Duration> {
        self.settings.header
    }

    /// No request in flight and no bytes moving.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.settings.idle
    }

    /// No request-body progress while the handler waits for body bytes.
    pub fn body_stall_timeout(&self) -> Option<Duration> {
        self.settings.body_stall
    }

    /// A write stays pending (the peer does not read) for this long.
    pub fn write_stall_timeout(&self) -> Option<Duration> {
        self.settings.write_stall
    }

    /// No bytes moving in either direction through a tunnel: a connection upgraded by
    /// a `101 Switching Protocols` (WebSocket) or a `CONNECT`. The request-head, idle
    /// and body-stall clocks do not apply to tunnels; the write-stall clock and the
    /// half-close policy do. A quiet tunnel is cut between this timeout and an eighth
    /// of it more after its last byte (see the [setter](PolicyBuilder::tunnel_idle_timeout)).
    pub fn tunnel_idle_timeout(&self) -> Option<Duration> {
        self.settings.tunnel_idle
    }

    /// The policy after the peer's FIN.
    pub fn half_close(&self) -> HalfClose {
        self.settings.half_close
    }

    /// How long a lingering close reads and discards, waiting for the peer's FIN, after
    /// a stream that was shut down is dropped. At the bound the connection is reset.
    pub fn linger_timeout(&self) -> Duration {
        self.settings.linger
    }

    /// How long a server stays unready but serving after its shutdown signal, before
    /// it closes its listener; `None`: it closes at the signal.
    pub fn deregister_delay(&self) -> Option<Duration> {
        self.settings.deregister
    }

    /// The shutdown deadline: connections still open after it are reset.
    pub fn drain_timeout(&self) -> Duration {
        self.settings.drain
    }

    /// Whether every close resets the connection instead of lingering.
    pub fn reset_on_close(&self) -> bool {
        self.settings.reset_on_close
    }

    /// The request-body rate floor, measured while a handler waits for body bytes.
    pub fn min_body_rate(&self) -> Option<MinRate> {
        self.settings.min_body_rate
    }

    /// The response rate floor, measured while a write is pending because the peer
    /// does not read.
    pub fn min_send_rate(&self) -> Option<MinRate> {
        self.settings.min_send_rate
    }

    /// Requests after which a connection is recycled.
    pub fn max_requests(&self) -> Option<u32> {
        self.settings.max_requests
    }

    /// The age after which a connection is recycled, before its ±10 % jitter.
    pub fn max_connection_age(&self) -> Option<Duration> {
        self.settings.max_age
    }

    /// How long a recycled connection may take to finish before it is reset.
    pub fn recycle_grace(&self) -> Duration {
        self.settings.recycle_grace
    }

    /// Whether HTTP/1 responses advertise `Keep-Alive: timeout=N` (N the idle timeout
    /// in whole seconds) while an idle timeout is set.
    pub fn advertise_keep_alive(&self) -> bool {
        self.settings.keep_alive
    }

    /// The `Keep-Alive` header value to advertise, if any.
    #[cfg(feature = "hyper")]
    pub(crate) fn keep_alive_value(&self) -> Option<&http::HeaderValue> {
        self.settings.keep_alive_value.as_ref()
    }
}

impl Settings {
    /// Derives the precomputed values from the settings.
    #[cfg(not(feature = "hyper"))]
    fn finish(self) -> Policy {
        Policy {
            settings: Arc::new(self),
        }
    }

    /// Derives the precomputed values from the settings.
    #[cfg(feature = "hyper")]
    fn finish(mut self) -> Policy {
        {
            // Whole seconds, rounded down, so a client that honours it retires the
            // connection no later than the server would. Under a second there is
            // nothing true to say (`timeout=0` tells a client nothing useful).
            let secs = self
                .idle
                .filter(|_| self.keep_alive)
                .map(|idle| idle.as_secs());
            self.keep_alive_value = secs.filter(|&secs| secs > 0).map(keep_alive_value);
        }
        Policy {
            settings: Arc::new(self),
        }
    }
}

/// `timeout=N`, as a static header value: every HTTP/1 answer carries a clone, which
/// then costs no reference count to take and drop. Each N is built once per process
/// and kept, a few bytes per idle timeout in use.
#[cfg(feature = "hyper")]
fn keep_alive_value(secs: u64) -> http::HeaderValue {
    static BUILT: std::sync::Mutex<std::collections::BTreeMap<u64, &'static str>> =
        std::sync::Mutex::new(std::collections::BTreeMap::new());
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let text = built
        .entry(secs)
        .or_insert_with(|| Box::leak(format!("timeout={secs}").into_boxed_str()));
    http::HeaderValue::from_static(text)
}

/// Builds a [`Policy`]; [`build`](PolicyBuilder::build) checks every field.
///
/// Defaults that depend on another field follow it when it is set: the default
/// half-close grace (10 s) shrinks to a shorter idle timeout, and the default idle
/// timeout (60 s) grows to a longer half-close grace. Only values set explicitly can
/// contradict each other.
///
/// ```
/// use std::time::Duration;
/// use conn_hygiene::{HalfClose, Policy};
///
/// let secs = Duration::from_secs;
/// let policy = Policy::builder().idle_timeout(Some(secs(3))).build().unwrap();
/// assert_eq!(policy.half_close(), HalfClose::AllowFor(secs(3)));
///
/// let err = Policy::builder()
///     .idle_timeout(Some(secs(3)))
///     .half_close(HalfClose::AllowFor(secs(5)))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.field(), "half_close");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct PolicyBuilder {
    settings: Settings,
    // Which of the two interdependent fields the user set: a default yields to them.
    idle_set: bool,
    half_close_set: bool,
}

impl Default for PolicyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyBuilder {
    /// A builder holding the defaults.
    pub fn new() -> Self {
        PolicyBuilder {
            settings: Settings {
                first_byte: Some(Duration::from_secs(10)),
                header: Some(Duration::from_secs(30)),
                idle: Some(Duration::from_secs(60)),
                body_stall: Some(Duration::from_secs(60)),
                write_stall: Some(Duration::from_secs(60)),
                tunnel_idle: Some(Duration::from_secs(60 * 60)),
                half_close: HalfClose::default(),
                linger: Duration::from_secs(5),
                deregister: None,
                drain: Duration::from_secs(30),
                reset_on_close: false,
                min_body_rate: Some(MinRate::KESTREL),
                min_send_rate: Some(MinRate::KESTREL),
                max_requests: None,
                max_age: None,
                recycle_grace: Duration::from_secs(30),
                keep_alive: true,
                #[cfg(feature = "hyper")]
                keep_alive_value: None,
            },
            idle_set: false,
            half_close_set: false,
        }
    }

    /// From accept to the first byte. `None` disables it. Defaults to 10 s.
    pub fn first_byte_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.settings.first_byte = timeout.into();
        self
    }

    /// From a request's first byte to the end of its head. `None` disables it.
    /// Defaults to 30 s.
    pub fn header_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.settings.header = timeout.into();
        self
    }

    /// No request in flight and no bytes moving. `None` disables it. Defaults to 60 s,
    /// or to the half-close grace if that is set longer.
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.settings.idle = timeout.into();
        self.idle_set = true;
        self
    }

    /// No body progress while the handler waits for the body. `None` disables it.
    /// Defaults to 60 s, nginx's `client_body_timeout`: a sender on a lossy link can
    /// go silent for tens of seconds while its kernel backs off retransmitting (25 to
    /// 106 s were seen at 15 % loss), and a slow body is the floor's to cut.
    pub fn body_stall_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.settings.body_stall = timeout.into();
        self
    }

    /// No write progress because the peer does not read. `None` disables it.
    /// Defaults to 60 s, nginx's `send_timeout`.
    ///
    /// Where the kernel can be asked (TCP on Linux), progress is the bytes the peer
    /// acknowledged, read from `TCP_INFO` when the clock would fire; and time the
    /// kernel spends retransmitting to a silent peer (the network's fault, not the
    /// peer's) is forgiven, up to this timeout again per response (per connection on
    /// HTTP/2). A peer that vanished mid-response is therefore cut at most twice this
    /// timeout after it last acknowledged anything (2 min by default), sooner with `TCP_USER_TIMEOUT`
    /// ([`SocketOptions::tcp_user_timeout`](crate::SocketOptions::tcp_user_timeout)).
    pub fn write_stall_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.settings.write_stall = timeout.into();
        self
    }

    /// No bytes moving through an upgraded connection (WebSocket, `CONNECT`). `None`
    /// disables it. Defaults to 1 h (HAProxy's `timeout tunnel`); a WebSocket
    /// service that pings its clients can set it a little above the ping interval.
    ///
    /// Its precision is an eighth of the timeout: a quiet tunnel is cut no sooner than
    /// the timeout after its last byte (over TLS under `serve()`, its last plaintext
    /// byte) and no later than 9/8 of it, plus the timer's own lateness. In exchange
    /// a message costs the clock nothing: the bytes moved are counted anyway and
    /// compared every eighth of the timeout while the relay waits in a read, where a
    /// per-message deadline would read the time at every message.
    pub fn tunnel_idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.settings.tunnel_idle = timeout.into();
        self
    }

    /// The policy after the peer's FIN. Defaults to `AllowFor(10 s)`, or to
    /// `AllowFor` the idle timeout if that is set shorter.
    pub fn half_close(mut self, half_close: HalfClose) -> Self {
        self.settings.half_close = half_close;
        self.half_close_set = true;
        self
    }

    /// The bound of a lingering close. Defaults to 5 s (nginx's `lingering_timeout`).
    pub fn linger_timeout(mut self, timeout: Duration) -> Self {
        self.settings.linger = timeout;
        self
    }

    /// How long the server stays up after the shutdown signal, unready but accepting
    /// and serving, before it closes its listener: the time a load balancer or
    /// Kubernetes needs to stop sending it traffic. Meanwhile every connection retires
    /// after its next answer. `None` (the default): the listener closes at the signal.
    ///
    /// Behind HAProxy set at least `inter` × `fall` of the server's health check plus
    /// one `inter`; under Kubernetes, the readiness probe's `periodSeconds` ×
    /// `failureThreshold` plus a few seconds for the endpoint change to reach every
    /// proxy. See the deployment guide (the `deploy` module, feature `hyper`). Both
    /// `serve()` and `serve::BoundedShutdown` (around
    /// `axum::serve` or tonic) read it from the listener's policy.
    pub fn deregister_delay(mut self, delay: impl Into<Option<Duration>>) -> Self {
        self.settings.deregister = delay.into();
        self
    }

    /// The shutdown deadline: how long in-flight work may take after the listener
    /// closes before what is left is reset. Defaults to 30 s (Kubernetes' default grace
    /// period). Both `serve()` and `serve::BoundedShutdown`
    /// read it from the listener's policy: this is its only home.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.settings.drain = timeout;
        self
    }

    /// Reset every close instead of lingering, like HAProxy's `option nolinger`: a
    /// dropped stream's socket closes at once with an RST. `shutdown()` is still a
    /// half-close (our FIN). Defaults to `false`.
    ///
    /// It frees kernel state at once (no FIN_WAIT, no TIME_WAIT), but an RST makes the
    /// peer's kernel discard data it has received and not yet handed to the
    /// application: the end of a response can be lost. Use it only where the protocol
    /// tolerates that, or when the machine is short of sockets.
    pub fn reset_on_close(mut self, reset: bool) -> Self {
        self.settings.reset_on_close = reset;
        self
    }

    /// The request-body rate floor. `None` disables it. Defaults to 240 B/s after 5 s
    /// (Kestrel's `MinRequestBodyDataRate`).
    ///
    /// Only time a handler spends waiting for body bytes is measured, so a handler
    /// that reads its body slowly is not cut. Over HTTP/2 each request body has its own
    /// measure and a slow one fails alone; over HTTP/1 the connection is abandoned
    /// (`min_body_rate`). Not applied to tunnels. A route whose client sends its body
    /// as rare messages (a client-streaming RPC) turns it off for its requests with
    /// [`RequestLimits`](crate::limits::RequestLimits), as ASP.NET Core does for gRPC streams.
    pub fn min_body_rate(mut self, floor: impl Into<Option<MinRate>>) -> Self {
        self.settings.min_body_rate = floor.into();
        self
    }

    /// The response rate floor. `None` disables it. Defaults to 240 B/s after 5 s
    /// (Kestrel's `MinResponseDataRate`, Pingora's `min_send_rate`).
    ///
    /// Only time a write stays pending because the peer does not read is measured, so
    /// a response that is produced slowly (server-sent events) is not cut. A connection
    /// below the floor is abandoned (`min_send_rate`). Not applied to tunnels. Over
    /// HTTP/2 it measures the connection's socket, not each stream: a stream held back
    /// only by its own flow-control window is not measured.
    pub fn min_send_rate(mut self, floor: impl Into<Option<MinRate>>) -> Self {
        self.settings.min_send_rate = floor.into();
        self
    }

    /// Recycle a connection after this many requests: the last answer carries
    /// `Connection: close` (HTTP/1), or GOAWAY follows it (HTTP/2). `None` disables
    /// it. Defaults to `None` (nginx's `keepalive_requests` is 1000).
    pub fn max_requests(mut self, max: impl Into<Option<u32>>) -> Self {
        self.settings.max_requests = max.into();
        self
    }

    /// Recycle a connection once it is this old, give or take 10 % chosen per
    /// connection, so that connections opened together do not all close together
    /// (gRPC's `MAX_CONNECTION_AGE`). `None` disables it. Defaults to `None` (nginx's
    /// `keepalive_time` is 1 h).
    pub fn max_connection_age(mut self, age: impl Into<Option<Duration>>) -> Self {
        self.settings.max_age = age.into();
        self
    }

    /// How long a recycled connection may take to finish what is in flight before it
    /// is reset (`recycle_grace`; gRPC's `MAX_CONNECTION_AGE_GRACE`). Defaults to 30 s.
    pub fn recycle_grace(mut self, grace: Duration) -> Self {
        self.settings.recycle_grace = grace;
        self
    }

    /// Advertise `Keep-Alive: timeout=N` on HTTP/1 responses while an idle timeout is
    /// set, so that clients which honour it (undici, this crate's
    /// `client::KeepAliveLayer`) retire a pooled connection before the server
    /// closes it. `N` is the idle timeout in whole seconds, rounded down; an idle
    /// timeout under a second is not advertised. Defaults to `true`.
    pub fn advertise_keep_alive(mut self, advertise: bool) -> Self {
        self.settings.keep_alive = advertise;
        self
    }

    /// Checks every field and returns the policy.
    ///
    /// # Errors
    ///
    /// A zero timeout or deregistration delay (use `None` to disable it), a zero
    /// `AllowFor` grace (use
    /// `Abort`), a zero linger or drain bound, any of them over a year, or a
    /// half-close grace set longer than an idle timeout also set; a rate floor of zero
    /// bytes per second or with a zero grace (use `None` to disable it), `max_requests`
    /// of zero, a zero `max_connection_age` or `recycle_grace`. The error names the
    /// field.
    pub fn build(mut self) -> Result<Policy, ConfigError> {
        self.derive_defaults();
        let p = &self.settings;
        let clocks = [
            ("first_byte_timeout", p.first_byte),
            ("header_timeout", p.header),
            ("idle_timeout", p.idle),
            ("body_stall_timeout", p.body_stall),
            ("write_stall_timeout", p.write_stall),
            ("tunnel_idle_timeout", p.tunnel_idle),
        ];
        let clocks = clocks
            .into_iter()
            .chain([("deregister_delay", p.deregister)]);
        for (field, value) in clocks {
            if let Some(timeout) = value {
                check_timeout(field, timeout)?;
            }
        }
        let bounds = [
            ("half_close", p.half_close.grace().unwrap_or_default()),
            ("linger_timeout", p.linger),
            ("drain_timeout", p.drain),
        ];
        for (field, value) in bounds {
            if value > MAX_TIMEOUT {
                return Err(ConfigError::new(field, "must be at most a year"));
            }
        }
        if p.half_close == HalfClose::AllowFor(Duration::ZERO) {
            return Err(ConfigError::new(
                "half_close",
                "AllowFor grace must be greater than zero (use HalfClose::Abort)",
            ));
        }
        if let (HalfClose::AllowFor(grace), Some(idle)) = (p.half_close, p.idle)
            && grace > idle
        {
            return Err(ConfigError::new(
                "half_close",
                "grace must not exceed idle_timeout",
            ));
        }
        if p.linger.is_zero() {
            return Err(ConfigError::new(
                "linger_timeout",
                "must be greater than zero (use reset_on_close for no linger)",
            ));
        }
        if p.drain.is_zero() {
            return Err(ConfigError::new(
                "drain_timeout",
                "must be greater than zero",
            ));
        }
        check_floors_and_recycling(p)?;
        Ok(self.settings.finish())
    }

    fn unchecked(self) -> Policy {
        self.settings.finish()
    }

    // A user who changes one clock need not learn about the other: the default of the
    // grace-idle pair yields to the value set. (Both set and contradicting: `build`
    // rejects them.)
    fn derive_defaults(&mut self) {
        let p = &mut self.settings;
        let (HalfClose::AllowFor(grace), Some(idle)) = (p.half_close, p.idle) else {
            return;
        };
        match (self.half_close_set, self.idle_set) {
            (false, true) => p.half_close = HalfClose::AllowFor(grace.min(idle)),
            // Capped, so that an over-long grace is reported as the grace.
            (true, false) => p.idle = Some(idle.max(grace.min(MAX_TIMEOUT))),
            _ => {}
        }
    }
}

/// The rate floors and the recycling settings.
fn check_floors_and_recycling(p: &Settings) -> Result<(), ConfigError> {
    let floors = [
        ("min_body_rate", p.min_body_rate),
        ("min_send_rate", p.min_send_rate),
    ];
    for (field, floor) in floors {
        if let Some(floor) = floor {
            floor
                .check()
                .map_err(|reason| ConfigError::new(field, reason))?;
        }
    }
    if p.max_requests == Some(0) {
        return Err(ConfigError::new(
            "max_requests",
            "must be greater than zero (use None to disable)",
        ));
    }
    if let Some(age) = p.max_age {
        check_timeout("max_connection_age", age)?;
    }
    if p.recycle_grace.is_zero() || p.recycle_grace > MAX_TIMEOUT {
        return Err(ConfigError::new(
            "recycle_grace",
            "must be greater than zero and at most a year",
        ));
    }
    Ok(())
}

/// A clock that `None` turns off: zero is an error rather than "off", and so is a
/// value over a year.
pub(crate) fn check_timeout(field: &'static str, timeout: Duration) -> Result<(), ConfigError> {
    if timeout.is_zero() {
        return Err(ConfigError::new(
            field,
            "must be greater than zero (use None to disable)",
        ));
    }
    if timeout > MAX_TIMEOUT {
        return Err(ConfigError::new(
            field,
            "must be at most a year (use None to disable)",
        ));
    }
    Ok(())
}

/// An invalid setting, found when its configuration was built: a [`Policy`] field, a
/// [`RequestLimits`](crate::limits::RequestLimits) override, or one of `serve()`'s
/// HTTP settings (feature `hyper`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    reason: &'static str,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: &'static str) -> Self {
        ConfigError { field, reason }
    }

    /// The name of the offending setting, as its setter spells it.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// As an I/O error (where a server reports its settings at start), of kind
/// [`InvalidInput`](std::io::ErrorKind::InvalidInput).
impl From<ConfigError> for std::io::Error {
    fn from(error: ConfigError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, error)
    }
}

/// The jitter band: ±10 % of the maximum age.
const JITTER: f64 = 0.1;

/// `age` give or take 10 %, chosen per connection from its id with a per-process key,
/// so that neither the connections of one server nor those of a fleet line up.
pub(crate) fn jittered(age: Duration, id: u64) -> Duration {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    let hash = KEY.get_or_init(RandomState::new).hash_one(id);
    let unit = hash as f64 / u64::MAX as f64;
    age.mul_f64(1.0 - JITTER + 2.0 * JITTER * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_band_and_spreads() {
        let age = Duration::from_secs(3600);
        let ages: Vec<Duration> = (0..1000).map(|id| jittered(age, id)).collect();
        let low = age.mul_f64(0.9);
        let high = age.mul_f64(1.1);
        assert!(
            ages.iter().all(|a| (low..=high).contains(a)),
            "within ±10 %"
        );
        let min = ages.iter().min().unwrap();
        let max = ages.iter().max().unwrap();
        // 1000 draws spread over most of the 12-minute band.
        assert!(*max - *min > Duration::from_secs(600), "{min:?}..{max:?}");
        assert_eq!(jittered(age, 7), jittered(age, 7), "stable per connection");
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Policy::builder().build().unwrap(), Policy::default());
    }

    #[test]
    fn zero_clock_names_its_field() {
        type Set = fn(PolicyBuilder) -> PolicyBuilder;
        let cases: [(&str, Set); 7] = [
            ("deregister_delay", |b| b.deregister_delay(Duration::ZERO)),
            ("deregister_delay", |b| b.deregister_delay(Duration::MAX)),
            ("first_byte_timeout", |b| {
                b.first_byte_timeout(Some(Duration::ZERO))
            }),
            ("header_timeout", |b| b.header_timeout(Some(Duration::ZERO))),
            ("idle_timeout", |b| b.idle_timeout(Some(Duration::ZERO))),
            ("body_stall_timeout", |b| {
                b.body_stall_timeout(Some(Duration::ZERO))
            }),
            ("write_stall_timeout", |b| {
                b.write_stall_timeout(Some(Duration::ZERO))
            }),
        ];
        for (field, set) in cases {
            let err = set(Policy::builder()).build().unwrap_err();
            assert_eq!(err.field(), field);
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn grace_longer_than_idle_is_rejected() {
        let err = Policy::builder()
            .idle_timeout(Some(Duration::from_secs(5)))
            .half_close(HalfClose::AllowFor(Duration::from_secs(6)))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "half_close");
        let ok = Policy::builder()
            .idle_timeout(None)
            .half_close(HalfClose::AllowFor(Duration::from_secs(600)))
            .build();
        assert!(ok.is_ok());
    }

    #[test]
    fn default_grace_follows_a_shorter_idle_timeout() {
        let secs = Duration::from_secs;
        let short = Policy::builder()
            .idle_timeout(Some(secs(3)))
            .build()
            .unwrap();
        assert_eq!(short.half_close(), HalfClose::AllowFor(secs(3)));
        assert_eq!(short.idle_timeout(), Some(secs(3)));
        // A longer idle timeout leaves the default grace alone.
        let long = Policy::builder()
            .idle_timeout(Some(secs(90)))
            .build()
            .unwrap();
        assert_eq!(long.half_close(), HalfClose::default());
        // A zero idle timeout is still its own error, not the grace's.
        let zero = Policy::builder().idle_timeout(Some(Duration::ZERO)).build();
        assert_eq!(zero.unwrap_err().field(), "idle_timeout");
    }

    #[test]
    fn default_idle_follows_a_longer_grace() {
        let secs = Duration::from_secs;
        let policy = Policy::builder()
            .half_close(HalfClose::AllowFor(secs(120)))
            .build()
            .unwrap();
        assert_eq!(policy.idle_timeout(), Some(secs(120)));
        let shorter = Policy::builder()
            .half_close(HalfClose::AllowFor(secs(2)))
            .build()
            .unwrap();
        assert_eq!(shorter.idle_timeout(), Policy::default().idle_timeout());
        let huge = Policy::builder()
            .half_close(HalfClose::AllowFor(Duration::MAX))
            .build();
        assert_eq!(huge.unwrap_err().field(), "half_close");
    }

    #[test]
    fn explicit_grace_longer_than_explicit_idle_names_the_grace() {
        let err = Policy::builder()
            .half_close(HalfClose::AllowFor(Duration::from_secs(6)))
            .idle_timeout(Some(Duration::from_secs(5)))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "half_close");
        assert!(err.to_string().contains("idle_timeout"), "{err}");
    }

    #[test]
    fn timeouts_over_a_year_are_rejected() {
        let huge = Duration::MAX;
        let idle = Policy::builder().idle_timeout(Some(huge)).build();
        assert_eq!(idle.unwrap_err().field(), "idle_timeout");
        let drain = Policy::builder().drain_timeout(huge).build();
        assert_eq!(drain.unwrap_err().field(), "drain_timeout");
        let grace = Policy::builder()
            .idle_timeout(None)
            .half_close(HalfClose::AllowFor(huge))
            .build();
        assert_eq!(grace.unwrap_err().field(), "half_close");
    }

    #[test]
    fn floors_and_recycling_name_their_field() {
        let zero_rate = Policy::builder()
            .min_body_rate(Some(MinRate::new(0, Duration::from_secs(1))))
            .build();
        assert_eq!(zero_rate.unwrap_err().field(), "min_body_rate");
        let zero_grace = Policy::builder()
            .min_send_rate(Some(MinRate::new(10, Duration::ZERO)))
            .build();
        assert_eq!(zero_grace.unwrap_err().field(), "min_send_rate");
        let requests = Policy::builder().max_requests(Some(0)).build();
        assert_eq!(requests.unwrap_err().field(), "max_requests");
        let age = Policy::builder()
            .max_connection_age(Some(Duration::ZERO))
            .build();
        assert_eq!(age.unwrap_err().field(), "max_connection_age");
        let grace = Policy::builder().recycle_grace(Duration::ZERO).build();
        assert_eq!(grace.unwrap_err().field(), "recycle_grace");
        let off = Policy::builder()
            .min_body_rate(None)
            .min_send_rate(None)
            .build()
            .unwrap();
        assert_eq!(off.min_body_rate(), None);
        assert_eq!(Policy::default().min_body_rate(), Some(MinRate::KESTREL));
    }

    #[cfg(feature = "hyper")]
    #[test]
    fn keep_alive_value_follows_the_idle_timeout() {
        let policy = Policy::builder()
            .idle_timeout(Some(Duration::from_millis(12_500)))
            .build()
            .unwrap();
        assert_eq!(policy.keep_alive_value().unwrap(), "timeout=12");
        // Under a second: `timeout=1` would outlast the server, `timeout=0` says nothing.
        let sub_second = Policy::builder()
            .idle_timeout(Some(Duration::from_millis(500)))
            .build()
            .unwrap();
        assert_eq!(sub_second.keep_alive_value(), None);
        let one = Policy::builder()
            .idle_timeout(Some(Duration::from_millis(1999)))
            .build()
            .unwrap();
        assert_eq!(one.keep_alive_value().unwrap(), "timeout=1");
        let off = Policy::builder()
            .advertise_keep_alive(false)
            .build()
            .unwrap();
        assert_eq!(off.keep_alive_value(), None);
        let no_idle = Policy::builder()
            .idle_timeout(None)
            .half_close(HalfClose::Abort)
            .build()
            .unwrap();
        assert_eq!(no_idle.keep_alive_value(), None);
        // One static text per timeout, shared by the policies that use it.
        let again = Policy::builder()
            .idle_timeout(Some(Duration::from_secs(12)))
            .build()
            .unwrap();
        let (a, b) = (policy.keep_alive_value(), again.keep_alive_value());
        assert_eq!(
            a.map(|v| v.as_bytes().as_ptr()),
            b.map(|v| v.as_bytes().as_ptr())
        );
    }

    #[test]
    fn zero_bounds_are_rejected() {
        let zero_grace = Policy::builder()
            .half_close(HalfClose::AllowFor(Duration::ZERO))
            .build();
        assert_eq!(zero_grace.unwrap_err().field(), "half_close");
        let linger = Policy::builder().linger_timeout(Duration::ZERO).build();
        assert_eq!(linger.unwrap_err().field(), "linger_timeout");
        let drain = Policy::builder().drain_timeout(Duration::ZERO).build();
        assert_eq!(drain.unwrap_err().field(), "drain_timeout");
    }
}
