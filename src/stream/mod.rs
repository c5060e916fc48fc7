//! [`HygieneStream`]: an I/O wrapper that bounds every stream-level phase and closes well.
//!
//! The stream enforces the clocks it can see from reads and writes:
//!
//! - **first byte**: from accept to the first byte received;
//! - **idle**: no request in flight (as the Tower layer counts them) and no work
//!   arriving. Work is an allow-list: request bytes on HTTP/1 (not CRLFs between
//!   requests), whole header blocks and a request's DATA that carries data on HTTP/2
//!   (not PING, SETTINGS, WINDOW_UPDATE, PRIORITY, RST_STREAM, GOAWAY, unknown frame
//!   types, empty DATA, or DATA after its request ended). Where the stream cannot read the bytes (TLS under `serve()`, which
//!   declares it), idleness is judged by requests: idle from the end of the last one,
//!   whatever records arrive;
//! - **body stall**: the handler waits for body bytes (the layer says so) and none
//!   reach it, from when it began waiting (bytes that are no body, such as chunk
//!   extensions, do not count);
//! - **write stall**: a write or flush stays pending because the peer does not read;
//! - **tunnel idle**: no payload in either direction (over TLS under `serve()`,
//!   plaintext payload, not records), judged from the bytes counted, every eighth of
//!   its timeout (see [`Policy::tunnel_idle_timeout`](crate::Policy::tunnel_idle_timeout)).
//!
//! Only the serving mode switches a clock off, never what the peer sends or what the
//! server writes first: `serve()` and `Hygiene::for_conn` declare the layer; under
//! `axum::serve` or tonic's `Server` the layer may be missing until it has counted a
//! request on the listener (see `HygieneLayer`, feature `hyper`).
//!
//! and one floor: the [response rate](crate::Policy::min_send_rate), measured over the
//! time writes stay pending because the peer does not read (not in tunnels). On Linux
//! both judge the peer by the bytes it acknowledged, as the kernel reports them (see
//! [`rate`](crate::rate)), and the idle clock waits while our last answer is still in
//! the kernel on its way to a peer that acknowledges it.
//!
//! No read clock runs while a handler is busy, so a read timeout never turns into a
//! handler deadline. A clock that expires abandons the connection (zero linger, so the
//! close sends RST) and the pending operation fails with [`io::ErrorKind::TimedOut`],
//! naming the phase. The clock is read once per wait (when a read or write first
//! returns pending), not once per operation (in a tunnel, not even once per wait),
//! and the timer is re-armed lazily when it fires.
//!
//! # Closing
//!
//! [`shutdown()`](tokio::io::AsyncWriteExt::shutdown) is a half-close, exactly as on
//! tokio's `TcpStream`: it flushes and sends our FIN (`shutdown(Write)`). It does not
//! read: everything the peer sends afterwards stays readable, so a client of a
//! half-close protocol (write the request, shut down, read the reply) and a proxy
//! under `tokio::io::copy_bidirectional` (which shuts one side down when the other
//! direction ends) lose nothing.
//!
//! The close happens when the stream is dropped:
//!
//! - **after a shutdown, with the peer's FIN not yet read**: a lingering close (nginx's
//!   `lingering_close`). A small tokio task takes over the socket and reads and
//!   discards until the peer's FIN, an error, or the
//!   [linger bound](crate::Policy::linger_timeout), after which the connection is
//!   abandoned with [`Abandon::LingerTimeout`] (zero linger, so an RST). Unread
//!   request bytes then do not turn the close into an RST that destroys the response
//!   in flight. Until it ends the connection stays in its listener's registry (so the
//!   drain waits for it) in [`Phase::Lingering`](crate::conn::Phase::Lingering), and
//!   [`Conn::is_closed`] is false; an abandonment (a drain deadline) ends it at once,
//!   with an RST. hyper shuts a connection down once and then drops it, so the HTTP
//!   connections served through the crate close this way;
//! - **after the application read the peer's FIN**, or **without a shutdown**: at once.
//!   Nothing unread can follow a FIN; a stream dropped without a shutdown is closed
//!   as it is (the kernel sends an RST if bytes are left unread);
//! - **abandoned**, or under [`reset_on_close`](crate::policy::PolicyBuilder::reset_on_close):
//!   at once, with an RST;
//! - **outside a tokio runtime**: at once;
//! - **a transport other than TCP** ([`HygieneStream::new`]): at once; the crate
//!   cannot read it after the drop.
//!
//! Nothing blocks: the crate never sets a positive `SO_LINGER`, and the lingering
//! task is bounded. [`into_inner`](HygieneStream::into_inner) hands the transport
//! over instead: its close is then the caller's.
//!
//! The peer's FIN, seen while the application is not reading, is the business of
//! [`Conn::peer_closed`] and of [`Conn::supervise`](crate::Conn::supervise).
//!
//! # Example
//!
//! A line-echo server whose connections cannot outstay their welcome:
//!
//! ```no_run
//! use conn_hygiene::{Listener, Policy, SocketOptions};
//! use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
//!
//! # async fn dox() -> std::io::Result<()> {
//! let mut listener = Listener::bind(
//!     "127.0.0.1:7000",
//!     SocketOptions::new(),
//!     Policy::default(),
//! )?;
//! loop {
//!     let (stream, _peer) = listener.accept().await?;
//!     let conn = stream.conn().clone();
//!     tokio::spawn(conn.supervise(async move {
//!         let mut lines = BufReader::new(stream);
//!         let mut line = String::new();
//!         while lines.read_line(&mut line).await? > 0 {
//!             lines.get_mut().write_all(line.as_bytes()).await?;
//!             line.clear();
//!         }
//!         lines.get_mut().shutdown().await
//!     }));
//! }
//! # }
//! ```

#![doc = include_str!("tls.md")]

mod clock;
mod close;
mod inbound;
mod payload;
mod request_end;
#[cfg(test)]
mod request_end_tests;
#[cfg(test)]
mod slow_reader_tests;
mod tcp;
#[cfg(target_os = "linux")]
mod tcp_info;
mod tunnel_idle;

#[cfg(feature = "hyper")]
pub(crate) use payload::Payload;
pub use tcp::TcpIo;

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
#[cfg(test)]
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::conn::{Abandon, Conn, Flags, PeerGone};
use crate::policy::{HalfClose, Policy};
use crate::rate::{Acked, Meter, MinRate, PeerProgress, earliest, network_bound};
use crate::registry::Registration;
pub(crate) use clock::Clock;
use close::Lifetime;
use inbound::{Inbound, Work, only_crlf, scan_head_end};
use request_end::{covers_request_end, idle_start, unmarked_as_it_ended, wait_busy};
use tunnel_idle::IdleClock;

pin_project! {
    /// An `AsyncRead + AsyncWrite` wrapper enforcing the stream-level phases of one
    /// connection and closing it well. See the [module docs](self).
    #[derive(Debug)]
    pub struct HygieneStream<S> {
        // Declared before `life`, so dropped first: `life` then holds the stream's
        // last reference to the socket and decides how it closes.
        #[pin]
        io: S,
        // A test's stand-in for the kernel (see `peer_progress`); nothing otherwise.
        progress: Injected,
        life: Lifetime,
        read_clock: Clock,
        write_clock: Clock,
        // Once the connection is a tunnel, its idle clock.
        tunnel_idle: IdleClock,
        // When the reader began waiting for bytes that have not come; `None` while
        // bytes flow. The clock is read once per wait, not once per operation.
        read_waiting_since: Option<Instant>,
        // A request was in flight during the current wait: when it ends, idle starts.
        waited_busy: bool,
        // The reader's mark stands in the connection's handoff: the clock it armed fires
        // in time for the end of a request, which then need not wake it (see
        // `covers_request_end`).
        marked: bool,
        // When the current request head began, and the request count it belongs to.
        head: Option<(Instant, u32)>,
        // How much of the current request head's end (`\r\n\r\n`) has arrived: a
        // complete head that the layer never counted means the layer is missing.
        head_end: u8,
        // A clock expired with that head whole and uncounted: the server has been let
        // run once since (see `defer_expiry`).
        head_uncounted: bool,
        inbound: Inbound,
        write_blocked_since: Option<Instant>,
        // The pending operation that began the write wait was a write (not a flush).
        blocked_on_write: bool,
        // Time spent with a write pending, against the response rate floor.
        send_meter: Meter,
        // What `send_meter` measures: the response (the request count on HTTP/1) and
        // the floor it runs under (see `FloorKey`); `None` while no floor runs.
        send_measured: Option<FloorKey>,
        acked: Acked,
    }
}

impl HygieneStream<TcpIo> {
    /// Wraps an accepted or connected TCP stream under `policy`.
    ///
    /// The returned stream's [`conn`](Self::conn) watches the socket for the peer's
    /// FIN or RST without reading.
    pub fn tcp(socket: TcpStream, peer: SocketAddr, policy: Policy) -> Self {
        let io = TcpIo::new(socket);
        let shared = io.shared().clone();
        let conn = Conn::for_tcp(crate::registry::next_id(), peer, policy, &shared);
        HygieneStream::with_lifetime(io, Lifetime::new(conn, Some(shared)))
    }
}

impl<S> HygieneStream<S> {
    /// Wraps any transport. Its clocks start now.
    ///
    /// The crate cannot read such a transport once the stream is dropped, so its close
    /// is never a lingering one: dropping the stream closes the transport at once.
    pub fn new(io: S, conn: Conn) -> Self {
        HygieneStream::with_lifetime(io, Lifetime::new(conn, None))
    }

    fn with_lifetime(io: S, life: Lifetime) -> Self {
        HygieneStream {
            io,
            progress: Injected::default(),
            life,
            read_clock: Clock::default(),
            write_clock: Clock::default(),
            tunnel_idle: IdleClock::default(),
            read_waiting_since: None,
            waited_busy: false,
            marked: false,
            head: None,
            head_end: 0,
            head_uncounted: false,
            inbound: Inbound::default(),
            write_blocked_since: None,
            blocked_on_write: false,
            send_meter: Meter::default(),
            send_measured: None,
            acked: Acked::default(),
        }
    }

    /// Judges the peer's reading by `progress` rather than the TCP socket's.
    #[cfg(test)]
    pub(crate) fn with_progress(mut self, progress: Arc<dyn PeerProgress>) -> Self {
        self.progress = Some(progress);
        self
    }

    pub(crate) fn with_registration(mut self, registration: Registration) -> Self {
        self.life.set_registration(registration);
        self
    }

    /// The connection's handle.
    pub fn conn(&self) -> &Conn {
        &self.life.conn
    }

    /// The wrapped transport.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The wrapped transport, mutably. Bytes moved through it bypass the clocks.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// The wrapped transport, pinned.
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut S> {
        self.project().io
    }

    /// Unwraps the transport. The connection counts as closed from here on, and
    /// leaves its listener's registry; closing the transport is the caller's business
    /// (no lingering close, no reset).
    pub fn into_inner(mut self) -> S {
        self.life.detach();
        self.io
    }
}

/// Abandons the connection for an expired clock and returns the error for the caller.
fn expired(conn: &Conn, reason: Abandon) -> io::Error {
    tracing::info!(
        target: "conn_hygiene::timeout",
        parent: conn.span(),
        phase = conn.phase().as_str(),
        reason = reason.as_str(),
        "connection timed out"
    );
    conn.abandon(reason);
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("conn_hygiene: {reason} expired"),
    )
}

// Inlined: every read and write asks, and the answer is almost always no.
#[inline]
fn aborted(conn: &Conn) -> Option<io::Error> {
    conn.abandoned().map(aborted_error)
}

#[cold]
fn aborted_error(reason: Abandon) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("conn_hygiene: connection abandoned ({reason})"),
    )
}

/// The peer reset the connection, or the kernel gave up on it (keepalive or
/// `TCP_USER_TIMEOUT` expiry gives ETIMEDOUT with an OS code; the crate's own clock
/// timeouts carry none).
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    ) || e.raw_os_error() == Some(libc::ETIMEDOUT)
}

/// The read clock that runs now, if any, and what its expiry means.
// Inlined: it runs at every wait, and the call's own cost is a third of it.
#[inline(always)]
fn read_deadline(
    conn: &Conn,
    flags: Flags,
    idle_timeout: Option<Option<Duration>>,
    waiting_since: &mut Option<Instant>,
    head: Option<(Instant, u32)>,
) -> Option<(Instant, Abandon)> {
    // Stamped by the reader before any wait with no request in flight; a busy wait
    // (no clock runs on it, and the next idle wait starts afresh) reads the clock only
    // if a clock below turns out to need it.
    let mut waiting_since = || *waiting_since.get_or_insert_with(Instant::now);
    // Read by the caller where it needs it too, else here where a clock needs it.
    let idle_timeout = || idle_timeout.unwrap_or_else(|| conn.idle_timeout());
    let policy = conn.policy();
    if !flags.first_byte_seen()
        && let Some(timeout) = conn.first_byte_timeout()
    {
        return Some((conn.started() + timeout, Abandon::FirstByteTimeout));
    }
    if let Some(since) = conn.body_wait_since() {
        // From when the handler began waiting: bytes that reach the socket but no
        // body (chunk extensions, an empty chunk's line) are not the body's progress.
        let timeout = conn.body_stall_timeout()?;
        return Some((since + timeout, Abandon::BodyStallTimeout));
    }
    if conn.in_flight() > 0 || flags.lacks_request_boundaries() {
        // A handler is busy, or may be: its deadline is its own business.
        return None;
    }
    let idle = if flags.is_http2() && flags.is_draining() {
        // Told to go away: the linger bound to close.
        Some(waiting_since() + policy.linger_timeout())
    } else if flags.idle_by_requests() {
        // Bytes unseen (TLS, or HTTP/2 frames not followed): a PING or a KeyUpdate is
        // bytes like any other, so idleness is judged by requests, as gRPC's
        // MAX_CONNECTION_IDLE is.
        idle_timeout().map(|timeout| conn.idle_by_requests_since() + timeout)
    } else {
        idle_timeout().map(|timeout| waiting_since() + timeout)
    };
    let idle = idle.map(|deadline| (deadline, Abandon::IdleTimeout));
    // A head in progress: bytes came since the last request began.
    let head = head
        .filter(|&(_, requests)| requests == conn.requests() && flags.runs_head_clock())
        .and_then(|(since, _)| Some((since + policy.header_timeout()?, Abandon::HeaderTimeout)));
    match (idle, head) {
        (Some(idle), Some(head)) => Some(if head.0 < idle.0 { head } else { idle }),
        (idle, head) => idle.or(head),
    }
}

/// A tunnel's wait for bytes: its idle clock only (no HTTP clock applies), and the
/// abandonment its watcher decides from outside (the half-close policy, a drain).
/// Nothing here reads the time, except the idle clock's looks (see [`IdleClock`]).
// Inlined into the generic reader (another crate's code): every message waits here.
#[inline]
fn poll_tunnel_wait(
    conn: &Conn,
    cx: &mut Context<'_>,
    idle: &mut IdleClock,
) -> Poll<io::Result<()>> {
    // Registered before the checks, so that an abandonment or a look due in between
    // wakes it.
    conn.register_reader(cx.waker());
    if let Some(e) = aborted(conn) {
        return Poll::Ready(Err(e));
    }
    match conn.policy().tunnel_idle_timeout() {
        Some(timeout) if idle.idle(conn, timeout) => {
            Poll::Ready(Err(expired(conn, Abandon::TunnelIdleTimeout)))
        }
        _ => Poll::Pending,
    }
}

/// What an expired read clock leads to, when it is not an abandonment.
enum Deferred {
    /// The layer turned out to be missing: the clock would have been a handler
    /// deadline.
    NoLayer,
    /// A whole HTTP/1 head is uncounted: the server runs once more before it is
    /// judged (hyper reads the socket again before it calls the service).
    HeadUncounted,
    /// The layer may be missing, and a request may be running: the clock stands down
    /// for a period and asks again.
    LayerUnknown,
    /// An idle HTTP/2 connection is asked to go away (GOAWAY) before it is reset.
    GoAway,
}

/// Whether an expired clock is deferred rather than enforced.
///
/// The serving mode says whether the layer counts requests: `serve()` and a service
/// wrapped with `Hygiene::for_conn` always have it. Only a foreign server
/// (`axum::serve`, tonic's `Server`) may lack it, and only for some requests: a route
/// added after `.layer(..)` is outside the layer, so the evidence is per connection.
/// On HTTP/1 it is sound: a whole head (`uncounted_head.0`) that the server had read,
/// and still had not counted after it ran once more (`uncounted_head.1`; the layer,
/// when present, counts the head as soon as the server polls its service, which hyper
/// does right after reading again), means the layer is missing for that connection,
/// whatever its earlier requests or other connections of the listener showed; its
/// head and idle clocks then stop for good. A head that ends just as its clock
/// expires is counted in that run, and clocks go on. On HTTP/2 a
/// whole header block is weaker evidence (the server may have refused it): the idle
/// clock stands down one period at a time, and only until the layer has counted a
/// request on one of the listener's connections. Nothing the peer sends before a
/// request, and nothing the server writes (HTTP/2 SETTINGS, a TLS ServerHello),
/// switches a clock off.
#[cold]
fn defer_expiry(
    conn: &Conn,
    reason: Abandon,
    uncounted_head: (bool, bool),
    inbound: &Inbound,
) -> Option<Deferred> {
    let flags = conn.flags();
    match reason {
        Abandon::HeaderTimeout | Abandon::IdleTimeout
            if !flags.is_http2() && uncounted_head.0 && flags.may_lack_layer() =>
        {
            Some(if uncounted_head.1 {
                Deferred::NoLayer
            } else {
                Deferred::HeadUncounted
            })
        }
        Abandon::IdleTimeout
            if flags.is_http2()
                && !flags.is_draining()
                && inbound.saw_request_head()
                && flags.may_lack_layer()
                && conn.requests() == 0
                && !conn.listener_has_layer() =>
        {
            Some(Deferred::LayerUnknown)
        }
        Abandon::IdleTimeout if flags.is_http2() && !flags.is_draining() => Some(Deferred::GoAway),
        _ => None,
    }
}

/// Warns, once per listener, that the clocks needing request boundaries are off.
#[cold]
fn report_missing_layer(life: &Lifetime) {
    if life.first_missing_layer_report() {
        tracing::warn!(
            target: "conn_hygiene::layer",
            parent: life.conn.span(),
            "HygieneLayer is missing: the request-head, idle and body-stall clocks are off \
             on the connections it does not serve. Serve with conn_hygiene::serve(), or \
             make .layer(HygieneLayer::new()) wrap the whole service (routes added after \
             .layer(..) are outside it) and serve \
             app.into_make_service_with_connect_info::<Conn>()"
        );
    }
}

impl<S: AsyncRead> AsyncRead for HygieneStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if let Some(e) = aborted(&this.life.conn) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        match this.io.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let conn = &this.life.conn;
                let bytes = &buf.filled()[before..];
                if !bytes.is_empty() {
                    conn.add_read(bytes.len());
                    let flags = conn.flags();
                    if !flags.first_byte_seen() {
                        conn.mark_first_byte();
                        if flags.lacks_request_boundaries() {
                            report_missing_layer(this.life);
                        }
                    }
                    // Only work is activity: not HTTP/2 frames that do none, nor DATA
                    // for a stream whose request has ended (see `Inbound`).
                    let mut active = match this.inbound.feed(conn, bytes) {
                        Work::Request => true,
                        Work::Body => conn.in_flight() > 0,
                        Work::None => false,
                    };
                    if flags.runs_head_clock() && conn.in_flight() == 0 {
                        let requests = conn.requests();
                        let in_head = matches!(*this.head, Some((_, r)) if r == requests);
                        let mut head_bytes = bytes;
                        if !in_head && only_crlf(bytes) {
                            // CRLFs between requests keep an idle connection idle.
                            active = false;
                        } else if !in_head {
                            // Bytes between requests start a request head, after the
                            // empty lines before it (no head's end).
                            *this.head = Some((Instant::now(), requests));
                            (*this.head_end, *this.head_uncounted) = (0, false);
                            let start = bytes.iter().position(|b| !b"\r\n".contains(b));
                            head_bytes = &bytes[start.unwrap_or(bytes.len())..];
                        }
                        // Under a foreign server a whole head the layer did not
                        // count shows it missing (see `defer_expiry`).
                        if active && flags.may_lack_layer() {
                            scan_head_end(this.head_end, head_bytes);
                        }
                    }
                    if active {
                        *this.read_waiting_since = None;
                        if flags.is_plain_http1_past_first_byte() && conn.ended_since_mark() {
                            // The end the handoff holds came before these bytes: the
                            // next wait starts after them, not at that end.
                            *this.marked = false;
                            conn.unmark_reader();
                        }
                        if *this.waited_busy && conn.in_flight() == 0 {
                            // With nothing in flight, these bytes begin the next wait:
                            // the end of the last request is behind it.
                            *this.waited_busy = false;
                        }
                    }
                } else if buf.remaining() > 0 {
                    this.life.read_eof = true;
                    conn.record_peer(PeerGone::Fin);
                    // An evicted connection's end of reading is our own shutdown's.
                    if conn.policy().half_close() == HalfClose::Abort && !conn.eviction_shut() {
                        conn.abandon(Abandon::PeerFin);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                if is_reset(&e) {
                    this.life.conn.record_peer(PeerGone::Reset);
                    this.life.conn.abandon(Abandon::PeerReset);
                }
                Poll::Ready(Err(e))
            }
            Poll::Pending => loop {
                let conn = &this.life.conn;
                let flags = conn.flags();
                if flags.is_tunnel() {
                    // A wait from before the upgrade is no tunnel's: a stamp left would
                    // make every write read the clock.
                    *this.read_waiting_since = None;
                    return poll_tunnel_wait(conn, cx, this.tunnel_idle);
                }
                let busy = conn.in_flight() > 0;
                let ended_in_wait = !busy && std::mem::take(this.waited_busy);
                if !busy
                    && flags.is_plain_http1_past_first_byte()
                    && (ended_in_wait
                        || this.read_waiting_since.is_none()
                        || conn.ended_since_mark())
                {
                    // The request in flight ended during this wait, or an idle wait
                    // begins after bytes, or a request this reader never saw in flight
                    // began and ended during its wait (the server read again before it
                    // called the service): idle starts at the end of the last request
                    // if it ended since (the handoff holds its time), or now.
                    *this.marked = false;
                    *this.read_waiting_since =
                        idle_start(conn.take_request_end(), *this.read_waiting_since);
                } else if ended_in_wait {
                    // The request in flight ended during this wait: idle starts now.
                    *this.read_waiting_since = None;
                }
                *this.waited_busy |= busy;
                if !busy {
                    // The idle wait starts (or goes on): one clock read per wait. A
                    // busy wait's is taken, if ever, where a clock needs it.
                    this.read_waiting_since.get_or_insert_with(Instant::now);
                }
                let head = *this.head;
                // No clock runs while a request is in flight (or may be): the end of the
                // last request or the start of a body wait may start one, and an
                // abandonment ends the wait; each wakes this reader. On HTTP/1 a
                // request may begin during any wait, from bytes the server read before
                // it (a head whose end came with this wait's last read, a pipelined
                // request), and its body wait then starts this stream's body-stall
                // clock: the server reads again only when this reader is woken. (An
                // HTTP/2 body's clock is its own.) Registered before the state is read
                // again, so that a change in between is not missed.
                let registered =
                    busy || flags.runs_head_clock() || flags.lacks_request_boundaries();
                let flags = if registered {
                    conn.register_reader(cx.waker());
                    conn.flags()
                } else {
                    flags
                };
                if flags.is_evicted()
                    && !flags.is_draining()
                    && !busy
                    && !conn.read_since_idle()
                    && !matches!(head, Some((_, r)) if r == conn.requests())
                {
                    // Evicted at capacity (not sent away with a GOAWAY, which drains),
                    // and nothing read since the last answer (a head may be arriving in
                    // pieces): the end of reading, in the server's own task, so it
                    // flushes what it wrote and closes. Not the peer's FIN: the close
                    // lingers (our FIN, then discard until theirs), so bytes racing the
                    // eviction meet no reset.
                    conn.mark_eviction_shut();
                    return Poll::Ready(Ok(()));
                }
                // Whether the clock armed below fires in time for the end of a request
                // (see `covers_request_end`), which then need not wake the reader. The idle timeout is
                // read once for it, so that the mark names the one the clock was armed
                // with.
                let covers = covers_request_end(flags);
                let idle_timeout = covers.then(|| conn.idle_timeout());
                let mut deadline =
                    read_deadline(conn, flags, idle_timeout, this.read_waiting_since, head);
                if deadline.is_none() && !registered {
                    // No clock runs although none was expected (no idle timeout, say):
                    // registered, then checked again. While a clock runs, its timer
                    // wakes the reader.
                    conn.register_reader(cx.waker());
                    let flags = conn.flags();
                    deadline =
                        read_deadline(conn, flags, idle_timeout, this.read_waiting_since, head);
                }
                let idle_timeout = idle_timeout.flatten();
                let Some((deadline, reason)) = deadline else {
                    if let (true, Some(timeout)) = (busy && covers, idle_timeout) {
                        // Any time before the end: the last head's, or now.
                        let since = head.map_or_else(Instant::now, |(began, _)| began);
                        match wait_busy(
                            &mut *this.read_clock,
                            this.marked,
                            cx,
                            conn,
                            since,
                            timeout,
                        ) {
                            Some(()) => return Poll::Pending,
                            None => continue,
                        }
                    }
                    if std::mem::take(this.marked) && unmarked_as_it_ended(conn) {
                        continue;
                    }
                    return Poll::Pending;
                };
                if busy && std::mem::take(this.marked) && unmarked_as_it_ended(conn) {
                    // Another clock runs (a body wait's), and the request ended meanwhile.
                    continue;
                }
                let deadline = match (reason, this.acked.idle_held_until()) {
                    (Abandon::IdleTimeout, Some(held)) => deadline.max(held),
                    _ => deadline,
                };
                if this.read_clock.poll_until(cx, deadline).is_pending() {
                    if covers && !busy {
                        *this.marked = true;
                        if let Some(end) = conn.mark_reader_or_take_end(idle_timeout) {
                            // A request ended since this wait looked (its guard dropped
                            // on another thread), and left its time: idle from then.
                            *this.read_waiting_since = idle_start(end, *this.read_waiting_since);
                            continue;
                        }
                    } else if std::mem::take(this.marked) {
                        conn.unmark_reader();
                    }
                    return Poll::Pending;
                }
                if reason == Abandon::IdleTimeout
                    && let Some(kernel) = peer_progress(this.life, this.progress)
                {
                    // The last answer may still be on its way to a peer that takes
                    // it (a slow link drains a send buffer for a minute): not idle.
                    let policy = conn.policy();
                    let hold = policy.idle_timeout().unwrap_or(policy.linger_timeout());
                    let floor = conn.min_send_rate();
                    if this.acked.hold_idle(kernel, Instant::now(), hold, floor) {
                        continue;
                    }
                }
                let whole =
                    *this.head_end == 4 && matches!(head, Some((_, r)) if r == conn.requests());
                let uncounted_head = (whole, *this.head_uncounted);
                match defer_expiry(conn, reason, uncounted_head, this.inbound) {
                    None => return Poll::Ready(Err(expired(conn, reason))),
                    Some(Deferred::HeadUncounted) => {
                        *this.head_uncounted = true;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    Some(Deferred::NoLayer) => {
                        if conn.mark_no_layer() {
                            report_missing_layer(this.life);
                        }
                    }
                    Some(Deferred::LayerUnknown) => {
                        report_missing_layer(this.life);
                        *this.read_waiting_since = Some(Instant::now());
                    }
                    Some(Deferred::GoAway) => {
                        tracing::info!(
                            target: "conn_hygiene::timeout",
                            parent: conn.span(),
                            phase = conn.phase().as_str(),
                            reason = reason.as_str(),
                            "idle HTTP/2 connection: going away"
                        );
                        conn.start_draining();
                        *this.read_waiting_since = Some(Instant::now());
                    }
                }
            },
        }
    }
}

/// Where the write clocks learn what the peer acknowledged: the TCP socket's
/// `TCP_INFO`, on Linux; nowhere else (the bytes the socket took stand in).
fn peer_progress<'a>(life: &'a Lifetime, injected: &'a Injected) -> Option<&'a dyn PeerProgress> {
    #[cfg(test)]
    if let Some(injected) = injected {
        return Some(&**injected);
    }
    #[cfg(not(test))]
    let () = *injected;
    #[cfg(target_os = "linux")]
    return life.socket().map(|socket| &**socket as &dyn PeerProgress);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = life;
        None
    }
}

/// A test's stand-in for the kernel: nothing, and no bytes, outside tests.
#[cfg(test)]
type Injected = Option<Arc<dyn PeerProgress>>;
#[cfg(not(test))]
type Injected = ();

/// The meter of the response being sent under `floor`, started afresh for a new one.
///
/// The floor is per response, as Kestrel's `MinResponseDataRate` is per request: on
/// HTTP/1 a new request starts a new measure, and so does a change of floor (a request's
/// override beginning or ending), so that time measured under one floor, or under none,
/// is never charged against another. HTTP/2 responses share the socket: one measure
/// per floor.
fn send_meter<'m>(
    meter: &'m mut Meter,
    measured: &mut Option<FloorKey>,
    acked: &mut Acked,
    progress: Option<&dyn PeerProgress>,
    conn: &Conn,
    floor: MinRate,
) -> &'m mut Meter {
    let response = if conn.is_http2() { 0 } else { conn.requests() };
    let grace = u32::try_from(floor.grace().as_millis()).unwrap_or(u32::MAX);
    let key = (response, floor.bytes_per_sec(), grace);
    if *measured != Some(key) {
        *measured = Some(key);
        *meter = Meter::default();
        acked.restart(progress);
    }
    meter
}

/// A response and its floor: the request count, the rate, and the grace in whole
/// milliseconds. Twelve bytes rather than a `MinRate`'s 24: every stream carries one.
type FloorKey = (u32, u32, u32);

/// Counts `n` bytes written.
#[inline(always)]
fn count_written(conn: &Conn, read_waiting_since: &mut Option<Instant>, n: usize) {
    if n > 0 {
        // Bytes moving out keep a waiting reader's idle clock from running; on an idle
        // HTTP/2 connection they are control frames. Also after the end of a request
        // that the reader has not looked at yet: it starts the idle wait at the later
        // of the end and the last write.
        if conn.in_flight() == 0
            && !conn.is_http2()
            && (read_waiting_since.is_some() || conn.ended_since_mark())
        {
            *read_waiting_since = Some(Instant::now());
        }
        conn.add_written(n);
    }
}

impl<S: AsyncRead + AsyncWrite> HygieneStream<S> {
    /// Accounts a write's outcome. A write or flush that completes with no write wait
    /// under way (every one, while the peer reads) only counts its bytes: the clocks
    /// and the floor are for the writes that stay pending (`finish_write`).
    #[inline(always)]
    fn after_write<T>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
        is_write: bool,
        progress: impl FnOnce(&T) -> usize,
    ) -> Poll<io::Result<T>> {
        let written = match &result {
            Poll::Ready(Ok(value)) => Some(progress(value)),
            _ => None,
        };
        if let Some(n) = written
            && self.write_blocked_since.is_none()
        {
            let this = self.project();
            count_written(&this.life.conn, this.read_waiting_since, n);
            return result;
        }
        self.finish_write(cx, result, is_write, written.unwrap_or(0))
    }

    /// Accounts a write's outcome (`written` bytes, if it completed) and runs the
    /// write-stall clock while it is pending.
    // Out of line: the writes that complete at once (`after_write`) need none of it.
    #[inline(never)]
    fn finish_write<T>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
        is_write: bool,
        written: usize,
    ) -> Poll<io::Result<T>> {
        let this = self.project();
        // A wait ends when the operation that pended completes: a flush that returns
        // at once (TCP's does nothing) ends no write's wait, or a writer that flushes
        // between its pending writes (TLS does) would restart the clock each time.
        let ends_wait = match &result {
            Poll::Pending => false,
            Poll::Ready(Ok(_)) => is_write || !*this.blocked_on_write,
            Poll::Ready(Err(_)) => true,
        };
        if ends_wait && let Some(since) = this.write_blocked_since.take() {
            this.life.conn.set_write_blocked(false);
            // The clock is read when a wait ends, not per write. A wait under no floor
            // (turned off by a request's override) counts against none.
            if this.send_measured.is_some() {
                this.send_meter.stop(since, Instant::now());
            }
        }
        match result {
            Poll::Ready(Ok(value)) => {
                count_written(&this.life.conn, this.read_waiting_since, written);
                Poll::Ready(Ok(value))
            }
            Poll::Ready(Err(e)) => {
                if is_reset(&e) {
                    this.life.conn.record_peer(PeerGone::Reset);
                }
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                let conn = &this.life.conn;
                let stall = conn.write_stall_timeout();
                let floor = conn.min_send_rate();
                if stall.is_none() && floor.is_none() {
                    return Poll::Pending;
                }
                let kernel = peer_progress(this.life, this.progress);
                let since = match *this.write_blocked_since {
                    Some(since) => since,
                    None => {
                        conn.set_write_blocked(true);
                        *this.blocked_on_write = is_write;
                        if let (None, Some(stall)) = (floor, stall) {
                            this.acked.refresh(kernel, stall);
                        }
                        *this.write_blocked_since.insert(Instant::now())
                    }
                };
                let mut floor = floor.map(|floor| {
                    let meter = send_meter(
                        this.send_meter,
                        this.send_measured,
                        this.acked,
                        kernel,
                        conn,
                        floor,
                    );
                    (floor, meter)
                });
                if floor.is_none() {
                    *this.send_measured = None;
                }
                // Deadlines from the kernel's last word. The kernel is asked again as
                // one passes, and, with a stall clock, a quarter of its timeout after
                // its last word, so that a peer is cut at most that long after its last
                // acknowledged byte. The peer is cut when a fresh word (or none to be
                // had) still puts the deadline in the past.
                let bound = network_bound(conn.write_stall_timeout());
                let look_every = stall.map(|timeout| timeout / 4);
                let (mut fresh, mut can_ask) = (false, kernel.is_some());
                loop {
                    let acked = &*this.acked;
                    let excused = acked.excused();
                    let stall = stall.map(|timeout| {
                        let deadline = acked.stalled_since(since) + timeout + excused;
                        (deadline, Abandon::WriteStallTimeout)
                    });
                    let floor = floor.as_mut().map(|(floor, meter)| {
                        let bytes = acked.bytes(conn.bytes().1);
                        let deadline = meter.deadline(*floor, bytes, since) + excused;
                        (deadline, Abandon::MinSendRate)
                    });
                    let Some((deadline, reason)) = earliest(stall, floor) else {
                        return Poll::Pending;
                    };
                    let now = Instant::now();
                    let look_due = |every: std::time::Duration| {
                        acked.sampled_at().is_some_and(|at| at + every <= now)
                    };
                    if can_ask && !fresh && (deadline <= now || look_every.is_some_and(look_due)) {
                        fresh = kernel.is_some_and(|k| this.acked.resample(k, now, bound));
                        can_ask = fresh;
                        continue;
                    }
                    if deadline <= now {
                        return Poll::Ready(Err(expired(conn, reason)));
                    }
                    let next_look = look_every.zip(acked.sampled_at()).map(|(e, at)| at + e);
                    let wake = next_look
                        .filter(|_| can_ask)
                        .map_or(deadline, |at| at.min(deadline));
                    fresh = false;
                    ready!(this.write_clock.poll_until(cx, wake));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite> AsyncWrite for HygieneStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = aborted(&self.life.conn) {
            return Poll::Ready(Err(e));
        }
        let result = self.as_mut().project().io.poll_write(cx, buf);
        self.after_write(cx, result, true, |n| *n)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = aborted(&self.life.conn) {
            return Poll::Ready(Err(e));
        }
        let result = self.as_mut().project().io.poll_write_vectored(cx, bufs);
        self.after_write(cx, result, true, |n| *n)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = aborted(&self.life.conn) {
            return Poll::Ready(Err(e));
        }
        let result = self.as_mut().project().io.poll_flush(cx);
        self.after_write(cx, result, false, |_| 0)
    }

    /// A half-close: sends our FIN (the transport's own shutdown, which flushes first),
    /// exactly as tokio's `TcpStream` does. Everything the peer sends afterwards stays
    /// readable. The lingering close runs later, when the stream is dropped; see the
    /// [module docs](self#closing).
    ///
    /// A second call, or a call on an abandoned connection (which closes with an RST
    /// when dropped), does nothing.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.life.write_shut || self.life.conn.abandoned().is_some() {
            return Poll::Ready(Ok(()));
        }
        let result = self.as_mut().project().io.poll_shutdown(cx);
        ready!(self.as_mut().finish_write(cx, result, false, 0))?;
        self.as_mut().project().life.write_shut = true;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Phase;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A stream over an in-memory pipe, its peer's end, and its handle, marked HTTP.
    fn http_stream(policy: Policy) -> (HygieneStream<DuplexStream>, DuplexStream, Conn) {
        let (io, peer) = tokio::io::duplex(1024);
        let conn = Conn::new(1, "127.0.0.1:1".parse().unwrap(), policy);
        conn.mark_http();
        (HygieneStream::new(io, conn.clone()), peer, conn)
    }

    /// Bytes between HTTP/2 requests (pings, settings) do not start a request-head
    /// clock.
    #[tokio::test(start_paused = true)]
    async fn http2_frames_between_requests_start_no_head_clock() {
        let policy = Policy::builder()
            .header_timeout(Some(Duration::from_secs(1)))
            .idle_timeout(None)
            .build()
            .unwrap();
        let (mut stream, mut peer, conn) = http_stream(policy);
        conn.mark_http2();
        let mut buf = [0u8; 16];
        // A ping every 2 s for 20 s: twice the idle timeout, 20 × the head timeout.
        for _ in 0..10 {
            peer.write_all(b"ping").await.unwrap();
            assert_eq!(stream.read(&mut buf).await.unwrap(), 4);
            let waited = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
            assert!(
                waited.is_err(),
                "no clock may fire between pings: {waited:?}"
            );
        }
        assert_eq!(conn.abandoned(), None);
        assert!(!conn.is_draining());
        // HTTP/1 in the same situation: the bytes start a head, which times out.
        let policy = Policy::builder()
            .header_timeout(Some(Duration::from_secs(1)))
            .build()
            .unwrap();
        let (mut stream, mut peer, conn) = http_stream(policy);
        peer.write_all(b"GET").await.unwrap();
        assert_eq!(stream.read(&mut buf).await.unwrap(), 3);
        let error = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(conn.abandoned(), Some(Abandon::HeaderTimeout));
    }

    /// An HTTP/2 connection whose frames the stream cannot see (TLS: opaque bytes) is
    /// judged idle by its requests: bytes every 200 ms with none in flight (PINGs) do
    /// not restart its idle clock (1 s), which runs from the end of the last request,
    /// as gRPC's MAX_CONNECTION_IDLE does. The server writes first, as hyper's
    /// SETTINGS and a TLS ServerHello do: that switches no clock off. Returns when it
    /// was told to go away.
    async fn unseen_http2_goes_away_after<F>(requests: impl FnOnce(Conn) -> F) -> Duration
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let policy = Policy::builder()
            .idle_timeout(Some(Duration::from_secs(1)))
            .build()
            .unwrap();
        let (mut stream, mut peer, conn) = http_stream(policy);
        conn.mark_http2();
        let started = Instant::now();
        stream.write_all(b"settings").await.unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 16];
            while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if peer.write_all(b"ping").await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(requests(conn.clone()));
        while !conn.is_draining() {
            assert!(started.elapsed() < Duration::from_secs(10), "no GOAWAY");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(conn.abandoned(), None, "GOAWAY, not a reset");
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn unseen_http2_frames_are_not_activity_requests_are() {
        let within = |elapsed: Duration, expected: Duration| {
            assert!(
                elapsed >= expected && elapsed <= expected + Duration::from_millis(10),
                "{elapsed:?}, expected {expected:?}"
            );
        };
        // Bytes only: 1 s after the start.
        within(
            unseen_http2_goes_away_after(|_| async {}).await,
            Duration::from_secs(1),
        );
        // A request in flight from 0.5 s to 3 s: 1 s after it ended.
        let slow = unseen_http2_goes_away_after(|conn| async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let request = conn.begin_request();
            tokio::time::sleep(Duration::from_millis(2500)).await;
            drop(request);
        });
        within(slow.await, Duration::from_secs(4));
        // A request begun and ended between two reads, unseen by the reader: 1 s after
        // it ended all the same.
        let quick = unseen_http2_goes_away_after(|conn| async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(conn.begin_request());
        });
        within(quick.await, Duration::from_millis(1500));
    }

    /// The serving mode, not the traffic, says whether the layer counts requests. A
    /// mode that declares it (`serve()`) keeps its clocks whatever the server wrote
    /// first and whatever arrived; under a foreign server, only a whole request that
    /// reached it uncounted turns them off.
    #[tokio::test(start_paused = true)]
    async fn only_an_uncounted_request_under_a_foreign_server_stops_the_clocks() {
        let policy = Policy::builder()
            .header_timeout(Some(Duration::from_secs(1)))
            .idle_timeout(Some(Duration::from_secs(5)))
            .build()
            .unwrap();
        let head = &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..];
        // (foreign server, what the peer sends, what the clock does)
        let cases: [(bool, &[u8], Option<Abandon>); 6] = [
            (false, b"", Some(Abandon::IdleTimeout)),
            (false, b"GET / HT", Some(Abandon::HeaderTimeout)),
            (false, head, Some(Abandon::HeaderTimeout)),
            (true, b"GET / HT", Some(Abandon::HeaderTimeout)),
            // Empty lines before a head are no head's end.
            (true, b"\r\n\r\nGET / HT", Some(Abandon::HeaderTimeout)),
            (true, head, None),
        ];
        for (foreign, sent, expected) in cases {
            let (mut stream, mut peer, conn) = http_stream(policy.clone());
            if foreign {
                #[cfg(any(feature = "axum", feature = "tonic"))]
                conn.mark_foreign_server();
                #[cfg(not(any(feature = "axum", feature = "tonic")))]
                continue;
            }
            conn.mark_first_byte();
            // The server writes first (a TLS ServerHello, HTTP/2 SETTINGS).
            stream.write_all(b"hello").await.unwrap();
            peer.write_all(sent).await.unwrap();
            let mut buf = [0u8; 64];
            if !sent.is_empty() {
                assert_eq!(stream.read(&mut buf).await.unwrap(), sent.len());
            }
            let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await;
            let case = (foreign, String::from_utf8_lossy(sent));
            match expected {
                Some(reason) => {
                    let error = read.expect("a clock fires").unwrap_err();
                    assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{case:?}");
                    assert_eq!(conn.abandoned(), Some(reason), "{case:?}");
                }
                None => {
                    assert!(read.is_err(), "no clock: {case:?}");
                    assert!(conn.flags().lacks_request_boundaries(), "{case:?}");
                }
            }
        }
    }

    /// A whole head (here the first) that ends just as its clock expires, under a foreign server
    /// with the layer: hyper reads the socket again before it calls the service, so
    /// the clock finds the head uncounted. The server runs once more before it is
    /// judged: the layer counts the head then, and the clocks stay on (a peer timing
    /// its head's end switched them off). Where nothing counts it, the layer is
    /// missing for that connection.
    #[cfg(any(feature = "axum", feature = "tonic"))]
    #[tokio::test(start_paused = true)]
    async fn a_head_ending_as_its_clock_expires_is_judged_after_the_server_runs() {
        use tokio_test::{assert_pending, assert_ready, task};
        let policy = Policy::builder()
            .header_timeout(Some(Duration::from_secs(1)))
            .idle_timeout(Some(Duration::from_secs(5)))
            .build()
            .unwrap();
        for layer in [true, false] {
            let (mut stream, mut peer, conn) = http_stream(policy.clone());
            conn.mark_foreign_server();
            let mut t = task::spawn(());
            let mut buf = [0u8; 64];
            let mut read = |t: &mut task::Spawn<()>, stream: &mut HygieneStream<DuplexStream>| {
                let mut buf = ReadBuf::new(&mut buf);
                t.enter(|cx, _| Pin::new(stream).poll_read(cx, &mut buf))
                    .map(|done| done.map(|()| buf.filled().len()))
            };
            peer.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            assert_eq!(assert_ready!(read(&mut t, &mut stream)).unwrap(), 25);
            assert_pending!(read(&mut t, &mut stream));
            // The head's end comes as the clock expires, before the server reads it.
            tokio::time::advance(Duration::from_millis(1001)).await;
            peer.write_all(b"\r\n").await.unwrap();
            assert_eq!(assert_ready!(read(&mut t, &mut stream)).unwrap(), 2);
            // hyper reads again before it polls the service.
            assert_pending!(read(&mut t, &mut stream));
            assert!(t.is_woken(), "the server runs on");
            let request = layer.then(|| conn.begin_request());
            assert_pending!(read(&mut t, &mut stream));
            assert_eq!(conn.abandoned(), None, "layer: {layer}");
            assert_eq!(
                conn.flags().lacks_request_boundaries(),
                !layer,
                "layer: {layer}"
            );
            if layer {
                // The clocks are on: idle 5 s after the request ends.
                drop(request);
                assert_pending!(read(&mut t, &mut stream));
                tokio::time::advance(Duration::from_secs(5)).await;
                let error = assert_ready!(read(&mut t, &mut stream)).unwrap_err();
                assert_eq!(error.kind(), io::ErrorKind::TimedOut);
                assert_eq!(conn.abandoned(), Some(Abandon::IdleTimeout));
            }
        }
    }

    /// HTTP/2 under a foreign server whose layer has not been seen: a connection that
    /// sent no request goes away at the idle timeout (its SETTINGS, and ours, are no
    /// request); one whose header block reached the server uncounted may be running
    /// it without the layer, so its idle clock stands down, a period at a time.
    #[cfg(any(feature = "axum", feature = "tonic"))]
    #[tokio::test(start_paused = true)]
    async fn foreign_http2_defers_only_for_an_uncounted_request() {
        let policy = Policy::builder()
            .idle_timeout(Some(Duration::from_secs(1)))
            .build()
            .unwrap();
        let settings = [0, 0, 0, 4, 0, 0, 0, 0, 0];
        let headers = [0, 0, 1, 1, 5, 0, 0, 0, 1, 0x82];
        for (sent, goes_away) in [(&settings[..], true), (&headers[..], false)] {
            let (mut stream, mut peer, conn) = http_stream(policy.clone());
            conn.mark_foreign_server();
            stream.write_all(&settings).await.unwrap();
            let wire = [&inbound::PREFACE[..], sent].concat();
            peer.write_all(&wire).await.unwrap();
            let mut buf = [0u8; 64];
            assert_eq!(stream.read(&mut buf).await.unwrap(), wire.len());
            assert!(conn.is_http2());
            let read =
                tokio::time::timeout(Duration::from_millis(3500), stream.read(&mut buf)).await;
            assert!(read.is_err(), "no reset within 3.5 s: {read:?}");
            assert_eq!(conn.is_draining(), goes_away, "{sent:?}");
            assert_eq!(conn.abandoned(), None);
        }
    }

    /// CRLFs between HTTP/1 requests (RFC 9112 §2.2) start no head clock and keep an
    /// idle connection idle: the idle clock runs on from before them.
    #[tokio::test(start_paused = true)]
    async fn crlf_between_requests_is_neither_a_head_nor_activity() {
        let policy = Policy::builder()
            .header_timeout(Some(Duration::from_secs(1)))
            .idle_timeout(Some(Duration::from_secs(10)))
            .build()
            .unwrap();
        let (mut stream, mut peer, conn) = http_stream(policy);
        let mut buf = [0u8; 16];
        let started = Instant::now();
        for _ in 0..6 {
            peer.write_all(b"\r\n").await.unwrap();
            assert_eq!(stream.read(&mut buf).await.unwrap(), 2);
            let waited = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
            assert!(waited.is_err(), "no head clock: {waited:?}");
        }
        // The idle clock kept running from the first wait: 10 s after it, not after the
        // last CRLF.
        let error = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(conn.abandoned(), Some(Abandon::IdleTimeout));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    /// A tunnel runs its own idle clock, on bytes in either direction, and no HTTP one.
    /// The clock is looked at coarsely (no clock read per message): the cut comes no
    /// sooner than its timeout after the last payload, in or out, and at most an
    /// eighth of it later.
    #[tokio::test(start_paused = true)]
    async fn a_tunnel_runs_the_tunnel_idle_clock_only() {
        let timeout = Duration::from_secs(5);
        let policy = Policy::builder()
            .header_timeout(Some(Duration::from_secs(1)))
            .idle_timeout(Some(Duration::from_secs(1)))
            .half_close(HalfClose::AllowFor(Duration::from_secs(1)))
            .tunnel_idle_timeout(Some(timeout))
            .build()
            .unwrap();
        for last_in in [false, true] {
            let (mut stream, mut peer, conn) = http_stream(policy.clone());
            conn.mark_tunnel();
            assert_eq!(conn.phase(), Phase::Tunnel);
            let mut buf = [0u8; 16];
            // Bytes in every 4.9 s, then bytes out, then in again: past the head and
            // idle clocks, within the tunnel's, for six of its timeouts.
            for round in 0..6 {
                if (2..4).contains(&round) {
                    stream.write_all(b"pong").await.unwrap();
                } else {
                    peer.write_all(b"frame").await.unwrap();
                    assert_eq!(stream.read(&mut buf).await.unwrap(), 5);
                }
                let waited =
                    tokio::time::timeout(Duration::from_millis(4900), stream.read(&mut buf)).await;
                assert!(waited.is_err(), "round {round}: no clock fires: {waited:?}");
            }
            if last_in {
                peer.write_all(b"frame").await.unwrap();
                assert_eq!(stream.read(&mut buf).await.unwrap(), 5);
            } else {
                stream.write_all(b"pong").await.unwrap();
            }
            let quiet = Instant::now();
            let error = tokio::time::timeout(timeout * 2, stream.read(&mut buf))
                .await
                .expect("the tunnel idle clock fires")
                .unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::TimedOut);
            assert_eq!(conn.abandoned(), Some(Abandon::TunnelIdleTimeout));
            let took = quiet.elapsed();
            assert!(
                took >= timeout && took <= timeout + timeout / 8,
                "last payload {}: cut {took:?} after it",
                if last_in { "in" } else { "out" }
            );
        }
    }
}
