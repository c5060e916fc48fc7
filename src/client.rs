//! Outbound hygiene: pooled client connections that never sit in CLOSE_WAIT.
//!
//! The seed's incident is outbound: server A keeps a pool of connections to server B,
//! B closes an idle one (its keep-alive timeout, a restart, an error path), and A's
//! socket sits in CLOSE_WAIT until somebody reuses or drops it. Two cases:
//!
//! - **hyper-util's legacy [`Client`]**. hyper's HTTP/1 connection task keeps a read
//!   pending while the connection idles in the pool, reads the server's FIN and drops
//!   the socket at once (measured on loopback, 50 connections closed together:
//!   p50 0.6 to 1 ms, p99 under 1.5 ms from the server's FIN to the client's close,
//!   with or without this module). What
//!   [`HygieneConnector`] adds is the rest: [`SocketOptions`] on every connection
//!   (TCP keepalive and `TCP_USER_TIMEOUT` are what find a peer that vanished without
//!   a FIN), the [`Conn`] handle in every response's extensions, `tracing` events
//!   when a pooled connection's peer leaves, and, with [`KeepAliveLayer`], eviction
//!   before the server's announced `Keep-Alive: timeout=N`, so a request is never
//!   written onto a connection the server is closing at that very moment (the reuse
//!   race of [hyper#2136]).
//! - **Any other pool** (bb8, deadpool, a `Vec`) holding raw streams: nobody reads an
//!   idle connection, so the FIN goes unnoticed. Open connections with [`connect`],
//!   evict at once when [`Conn::peer_closed`] resolves, and run [`probe`] before
//!   reuse. See [Generic pools](#generic-pools).
//!
//! # hyper-util's `Client`
//!
//! ```no_run
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Empty};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use conn_hygiene::{Conn, SocketOptions};
//! use conn_hygiene::client::{HygieneConnector, KeepAliveLayer};
//! use tower::{Service, ServiceBuilder};
//!
//! # async fn dox() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let options = SocketOptions::new()
//!     .with_nodelay(true)
//!     .with_keepalive_time(Duration::from_secs(30))
//!     .with_tcp_user_timeout(Duration::from_secs(30));
//! let client = Client::builder(TokioExecutor::new())
//!     .build::<_, Empty<Bytes>>(HygieneConnector::new(options));
//! // Evict idle connections a second before the server's `Keep-Alive: timeout=N`.
//! let mut client = ServiceBuilder::new().layer(KeepAliveLayer::new()).service(client);
//!
//! let request = http::Request::get("http://127.0.0.1:8080/").body(Empty::new())?;
//! let response = client.call(request).await?;
//! let conn = response.extensions().get::<Conn>().cloned();
//! let body = response.into_body().collect().await?.to_bytes();
//! println!("{} bytes over {conn:?}", body.len());
//! # Ok(()) }
//! ```
//!
//! # Generic pools
//!
//! A pool of [`HygieneStream`]s from [`connect`] gets two tools:
//!
//! - [`Conn::peer_closed`]: a future that resolves when the peer sends FIN or RST,
//!   without reading a byte. Wait on it for each idle connection and evict at once:
//!   the socket leaves CLOSE_WAIT as soon as the pool drops the stream.
//! - [`probe`]: a non-blocking check to run before reuse. It consumes no bytes. It
//!   makes no system call when the answer is already known (a `peer_closed` waiter,
//!   the stream itself or the runtime's reactor saw the FIN); otherwise it makes one
//!   `recv(MSG_PEEK)` of one byte on the non-blocking socket.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::sync::{Arc, Mutex};
//! use conn_hygiene::{HygieneStream, SocketOptions, TcpIo};
//! use conn_hygiene::client::{self, client_policy};
//!
//! #[derive(Clone, Default)]
//! struct Pool {
//!     idle: Arc<Mutex<Vec<HygieneStream<TcpIo>>>>,
//! }
//!
//! impl Pool {
//!     fn check_in(&self, stream: HygieneStream<TcpIo>) {
//!         let conn = stream.conn().clone();
//!         self.idle.lock().unwrap().push(stream);
//!         // Evict as soon as the peer leaves. The waiter holds only a `Conn`, which
//!         // never keeps the socket open; it ends when the stream is dropped.
//!         let pool = self.clone();
//!         tokio::spawn(async move {
//!             let _gone = conn.peer_closed().await;
//!             pool.idle.lock().unwrap().retain(|s| s.conn().id() != conn.id());
//!         });
//!     }
//!
//!     async fn check_out(&self, addr: SocketAddr) -> std::io::Result<HygieneStream<TcpIo>> {
//!         while let Some(stream) = self.idle.lock().unwrap().pop() {
//!             if client::probe(stream.conn()).is_reusable() {
//!                 return Ok(stream);
//!             }
//!             // Dropped here: closed at once.
//!         }
//!         client::connect(addr, &SocketOptions::new(), client_policy().into()).await
//!     }
//! }
//! ```
//!
//! With bb8 the probe goes in `ManageConnection::has_broken`
//! (`!client::probe(conn.conn()).is_reusable()`); with deadpool in
//! `Manager::recycle`.
//!
//! # Tracing
//!
//! Target `conn_hygiene::client`, level `debug`, inside the connection's `conn` span:
//!
//! | `event` | when | other fields |
//! | --- | --- | --- |
//! | `connect` | the connector or [`connect`] opened a connection | |
//! | `peer_closed` | the peer of a connector's connection sent FIN or RST | `how` (`fin`, `rst`), `awaiting_response`, `idle_ms` |
//! | `keep_alive_evict` | an idle connection is evicted before the server's keep-alive timeout | `keep_alive_ms`, `idle_ms` |
//!
//! An eviction abandons the connection, so `conn_hygiene::abandon` follows with
//! `reason = "idle_timeout"`.
//!
//! [`Client`]: hyper_util::client::legacy::Client
//! [hyper#2136]: https://github.com/hyperium/hyper/issues/2136

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use http::{Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, Sleep, sleep_until};
use tower::{Layer, Service};

use crate::conn::{Abandon, Conn, PeerGone};
use crate::options::SocketOptions;
use crate::policy::Policy;
use crate::stream::{HygieneStream, TcpIo};

type BoxError = Box<dyn StdError + Send + Sync>;

/// The policy [`HygieneConnector`] uses unless given another, and a good one for
/// [`connect`]: [`Policy::default`] with the first-byte and idle clocks off.
///
/// A client's stream cannot tell a slow response from an idle connection (no layer
/// counts its requests in flight), so its idle clock would cut slow responses short,
/// and the first-byte clock would bound the first response's latency. Pool idle
/// limits belong to the pool (hyper-util's `pool_idle_timeout`) and to
/// [`KeepAliveLayer`]. The write-stall clock stays on: a server that stops reading
/// our request is abandoned after 30 s.
pub fn client_policy() -> Policy {
    Policy::builder()
        .first_byte_timeout(None)
        .idle_timeout(None)
        .build()
        .unwrap_or_default()
}

/// Opens a TCP connection to `addr` for a pool of raw streams.
///
/// `options` are set on the socket before it connects, so the buffer sizes shape the
/// TCP window; the returned stream's [`conn`](HygieneStream::conn) watches the
/// socket for the peer's FIN or RST without reading.
///
/// # Errors
///
/// The socket could not be created or connected, or a required option failed (see
/// [`SocketOptions`]).
pub async fn connect(
    addr: SocketAddr,
    options: &SocketOptions,
    policy: Policy,
) -> io::Result<HygieneStream<TcpIo>> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    options.apply_to_socket(SockRef::from(&socket))?;
    let stream = socket.connect(addr).await?;
    Ok(wrap(stream, addr, policy))
}

fn wrap(stream: TcpStream, peer: SocketAddr, policy: Policy) -> HygieneStream<TcpIo> {
    let stream = HygieneStream::tcp(stream, peer, policy);
    tracing::debug!(
        target: "conn_hygiene::client",
        parent: stream.conn().span(),
        event = "connect",
        "connected"
    );
    stream
}

/// What [`probe`] found out about an idle pooled connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Probe {
    /// Open, and nothing unread: safe to reuse.
    Reusable,
    /// The peer sent FIN or RST, or the connection closed on our side.
    PeerGone(PeerGone),
    /// The connection was abandoned (a clock expired, a drain deadline passed).
    Abandoned(Abandon),
    /// Bytes wait unread on the idle connection: a late or unsolicited response.
    /// Reusing it would pair the next request with the wrong answer.
    Unread,
}

impl Probe {
    /// Whether the connection may carry another request.
    pub fn is_reusable(self) -> bool {
        self == Probe::Reusable
    }
}

/// Checks, without blocking and without consuming a byte, whether an idle pooled
/// connection may be reused.
///
/// Cost: no system call when the answer is already known: the connection was
/// abandoned or closed, the peer's FIN or RST was seen by the stream, by a pending
/// [`Conn::peer_closed`] or by an earlier probe, or (Linux) the runtime's reactor has
/// already received `EPOLLRDHUP` for the socket. Otherwise one `recv(MSG_PEEK)` of one
/// byte on the non-blocking socket: `0` means FIN, `EAGAIN` an open connection.
/// What it finds is recorded on the [`Conn`], so the next probe is free.
///
/// A peer's FIN that arrives after unread bytes is not visible to the peek, but such
/// a connection is [`Probe::Unread`], not reusable, anyway. A [`Conn`] without a
/// socket ([`Conn::new`]) reports only what its stream has seen.
pub fn probe(conn: &Conn) -> Probe {
    if let Some(reason) = conn.abandoned() {
        return Probe::Abandoned(reason);
    }
    if let Some(gone) = conn.peer_gone() {
        return Probe::PeerGone(gone);
    }
    let Some(socket) = conn.socket() else {
        return Probe::Reusable;
    };
    if let Some(gone) = sys::seen_by_reactor(&socket) {
        conn.record_peer(gone);
        return Probe::PeerGone(gone);
    }
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    loop {
        return match SockRef::from(&*socket).peek(&mut byte) {
            Ok(0) => {
                conn.record_peer(PeerGone::Fin);
                Probe::PeerGone(PeerGone::Fin)
            }
            Ok(_) => Probe::Unread,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Probe::Reusable,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // ECONNRESET, ETIMEDOUT (keepalive or TCP_USER_TIMEOUT expiry), EPIPE.
            Err(_) => {
                conn.record_peer(PeerGone::Reset);
                Probe::PeerGone(PeerGone::Reset)
            }
        };
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod sys {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use crate::conn::PeerGone;

    /// What the reactor already knows, read with one poll and no system call.
    pub(super) fn seen_by_reactor(socket: &TcpStream) -> Option<PeerGone> {
        // `PRIORITY` covers tokio's READ_CLOSED bit (EPOLLRDHUP) and not plain
        // READABLE; the waiter registered by this single poll is removed on drop, and
        // it clears no readiness, so the stream's reader keeps its edge.
        let ready = pin!(socket.ready(Interest::PRIORITY | Interest::ERROR));
        match ready.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(ready)) if ready.is_error() => Some(PeerGone::Reset),
            Poll::Ready(Ok(ready)) if ready.is_read_closed() => Some(PeerGone::Fin),
            // Urgent data alone, or nothing known yet: ask the kernel.
            Poll::Ready(Ok(_)) | Poll::Pending => None,
            // The runtime is shutting down: treat it as our own close.
            Poll::Ready(Err(_)) => Some(PeerGone::LocalClose),
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod sys {
    use tokio::net::TcpStream;

    use crate::conn::PeerGone;

    /// Without `EPOLLRDHUP` the reactor does not report a FIN apart from readability.
    pub(super) fn seen_by_reactor(_socket: &TcpStream) -> Option<PeerGone> {
        None
    }
}

/// A connector for hyper-util's legacy `Client`: wraps a connector that yields TCP
/// streams (by default hyper-util's `HttpConnector`), applies [`SocketOptions`] to
/// each connection and returns it as a [`ClientStream`].
///
/// Every response then carries the connection's [`Conn`] (and hyper-util's
/// `HttpInfo`) in its extensions. See the [module docs](self).
///
/// `SO_SNDBUF` and `SO_RCVBUF` are set after the connection is made; to shape the TCP
/// window, set them on the `HttpConnector` instead (`set_send_buffer_size`,
/// `set_recv_buffer_size`), which sets them before connecting.
#[derive(Debug, Clone)]
pub struct HygieneConnector<C = HttpConnector> {
    inner: C,
    options: Arc<SocketOptions>,
    policy: Policy,
}

impl HygieneConnector {
    /// Wraps a default `HttpConnector` (plain `http://` only), with `options` and
    /// [`client_policy`].
    pub fn new(options: SocketOptions) -> Self {
        Self::with_connector(HttpConnector::new(), options)
    }
}

impl<C> HygieneConnector<C> {
    /// Wraps `inner`, any connector that yields `TokioIo<TcpStream>` (an
    /// `HttpConnector` with its own resolver or settings), with `options` and
    /// [`client_policy`].
    pub fn with_connector(inner: C, options: SocketOptions) -> Self {
        HygieneConnector {
            inner,
            options: Arc::new(options),
            policy: client_policy(),
        }
    }

    /// Sets the policy of the connections' streams. Defaults to [`client_policy`].
    #[must_use]
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The options applied to each connection.
    pub fn options(&self) -> &SocketOptions {
        &self.options
    }

    /// The policy of the connections' streams.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The wrapped connector.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// The wrapped connector, mutably.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Unwraps the connector.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<C> Service<Uri> for HygieneConnector<C>
where
    C: Service<Uri, Response = TokioIo<TcpStream>>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = ClientStream;
    type Error = ConnectError;
    type Future = future::ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| ConnectError::new("connect error", e))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let options = Arc::clone(&self.options);
        let policy = self.policy.clone();
        future::ConnectFuture::new(async move {
            // A value the kernel would refuse fails before the connect.
            options
                .validate()
                .map_err(|e| ConnectError::new("socket option error", e))?;
            let stream = connecting
                .await
                .map_err(|e| ConnectError::new("connect error", e))?
                .into_inner();
            options
                .apply_to_stream(&stream)
                .map_err(|e| ConnectError::new("socket option error", e))?;
            let peer = stream
                .peer_addr()
                .map_err(|e| ConnectError::new("connect error", e))?;
            Ok(ClientStream::new(wrap(stream, peer, policy)))
        })
    }
}

/// [`HygieneConnector`] failed to connect.
///
/// The cause (hyper-util's `ConnectError`, or a [`SocketOptionError`]) comes through
/// [`source`](StdError::source).
///
/// [`SocketOptionError`]: crate::SocketOptionError
#[derive(Debug)]
pub struct ConnectError {
    message: &'static str,
    source: BoxError,
}

impl ConnectError {
    fn new(message: &'static str, source: impl Into<BoxError>) -> Self {
        ConnectError {
            message,
            source: source.into(),
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)
    }
}

impl StdError for ConnectError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// A connection made by [`HygieneConnector`]: the [`HygieneStream`] with hyper's I/O
/// traits and hyper-util's `Connection`.
///
/// It emits the `peer_closed` event when the peer leaves, and runs the eviction clock
/// of [`KeepAliveLayer`].
#[derive(Debug)]
pub struct ClientStream {
    io: TokioIo<Tracked>,
}

impl ClientStream {
    fn new(stream: HygieneStream<TcpIo>) -> Self {
        let now = Instant::now();
        ClientStream {
            io: TokioIo::new(Tracked {
                stream,
                shared: Arc::new(Shared::default()),
                exchange: 0,
                sent: false,
                last_read: now,
                last_io: now,
                evict_timer: None,
                reported: false,
            }),
        }
    }

    /// The connection's handle.
    pub fn conn(&self) -> &Conn {
        self.io.inner().stream.conn()
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &HygieneStream<TcpIo> {
        &self.io.inner().stream
    }

    /// The wrapped stream, mutably. Bytes moved through it bypass the eviction clock.
    pub fn get_mut(&mut self) -> &mut HygieneStream<TcpIo> {
        &mut self.io.inner_mut().stream
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> HygieneStream<TcpIo> {
        self.io.into_inner().stream
    }
}

impl Connection for ClientStream {
    fn connected(&self) -> Connected {
        let tracked = self.io.inner();
        // tokio's `TcpStream` gives hyper-util's own `HttpInfo` (local and peer address).
        tracked
            .stream
            .get_ref()
            .get_ref()
            .connected()
            .extra(tracked.stream.conn().clone())
            .extra(Evictor(Arc::downgrade(&tracked.shared)))
    }
}

impl hyper::rt::Read for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        hyper::rt::Read::poll_read(Pin::new(&mut self.io), cx, buf)
    }
}

impl hyper::rt::Write for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        hyper::rt::Write::poll_write(Pin::new(&mut self.io), cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        hyper::rt::Write::poll_write_vectored(Pin::new(&mut self.io), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.io)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        hyper::rt::Write::poll_flush(Pin::new(&mut self.io), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        hyper::rt::Write::poll_shutdown(Pin::new(&mut self.io), cx)
    }
}

/// The tokio-level half of [`ClientStream`]: notices the peer leaving and runs the
/// keep-alive eviction clock in the connection's own task.
#[derive(Debug)]
struct Tracked {
    stream: HygieneStream<TcpIo>,
    shared: Arc<Shared>,
    // Requests written so far: a write after a read starts the next one.
    exchange: u64,
    sent: bool,
    last_read: Instant,
    last_io: Instant,
    evict_timer: Option<Pin<Box<Sleep>>>,
    reported: bool,
}

/// What [`KeepAliveLayer`] and the connection's task share.
#[derive(Debug, Default)]
struct Shared {
    exchange: AtomicU64,
    evict: Mutex<Evict>,
}

#[derive(Debug, Default)]
struct Evict {
    armed: Option<Armed>,
    // The connection task's waker, from its last pending read: arming wakes it so
    // that it starts the clock.
    waker: Option<Waker>,
}

#[derive(Debug, Clone, Copy)]
struct Armed {
    exchange: u64,
    after: Duration,
    keep_alive: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Evict> {
        self.evict.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn arm(&self, armed: Armed) {
        let mut evict = self.lock();
        evict.armed = Some(armed);
        let waker = evict.waker.take();
        drop(evict);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Tracked {
    fn peer_left(&mut self) {
        let conn = self.stream.conn();
        let how = match conn.peer_gone() {
            Some(PeerGone::Fin) => "fin",
            Some(PeerGone::Reset) => "rst",
            _ => return,
        };
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        tracing::debug!(
            target: "conn_hygiene::client",
            parent: conn.span(),
            event = "peer_closed",
            how,
            awaiting_response = self.sent,
            idle_ms = self.last_io.elapsed().as_millis() as u64,
            "pooled connection closed by the peer"
        );
    }

    /// Runs the keep-alive eviction clock while a read is pending. `Some` when the
    /// connection is evicted now.
    fn poll_evict(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let mut evict = self.shared.lock();
        if !evict
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            evict.waker = Some(cx.waker().clone());
        }
        let armed = evict.armed?;
        if armed.exchange != self.exchange || self.sent {
            // Another request went out since that response: the server's keep-alive
            // clock restarts with the next response, which arms again.
            evict.armed = None;
            return None;
        }
        // The server's clock starts when it has sent the response's last byte.
        let deadline = self.last_read + armed.after;
        let timer = self
            .evict_timer
            .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        evict.armed = None;
        drop(evict);
        let conn = self.stream.conn();
        tracing::debug!(
            target: "conn_hygiene::client",
            parent: conn.span(),
            event = "keep_alive_evict",
            keep_alive_ms = armed.keep_alive.as_millis() as u64,
            idle_ms = self.last_io.elapsed().as_millis() as u64,
            "evicting idle connection before the server's keep-alive timeout"
        );
        // Reset (zero linger): the server is about to drop it anyway. A request that
        // hyper-util handed this connection but hyper has not written yet is returned
        // as canceled and retried on another connection.
        conn.abandon(Abandon::IdleTimeout);
        Some(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "conn_hygiene: evicted before the server's keep-alive timeout",
        ))
    }

    fn wrote(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.last_io = Instant::now();
        if !self.sent {
            self.sent = true;
            self.exchange += 1;
            self.shared.exchange.store(self.exchange, Ordering::Release);
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let now = Instant::now();
                    this.last_read = now;
                    this.last_io = now;
                    this.sent = false;
                } else if buf.remaining() > 0 {
                    this.peer_left();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                this.peer_left();
                Poll::Ready(Err(e))
            }
            Poll::Pending => match this.poll_evict(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.stream).poll_write(cx, buf))?;
        self.wrote(n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, bufs))?;
        self.wrote(n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Rides in each connection's `Connected` extras, so [`KeepAliveLayer`] finds the
/// connection behind a response. Weak: a response kept around does not keep the
/// connection's state alive.
#[derive(Clone)]
struct Evictor(Weak<Shared>);

/// A Tower layer for hyper-util's `Client` built with [`HygieneConnector`]: reads the
/// server's `Keep-Alive: timeout=N` from each HTTP/1 response and evicts the
/// connection when it has idled for `N` minus a margin, before the server closes it.
///
/// Without the margin, a request written just as the server's timer fires meets the
/// server's FIN and fails with "connection closed before message completed"; hyper
/// cannot retry it because it was already sent ([hyper#2136]).
///
/// The clock starts at the response's last byte (the layer wraps the body to see its
/// end) and stops when another request goes out on the connection. The eviction runs
/// in the connection's task and resets the connection: hyper-util drops it from the
/// pool, and a request it had handed that connection but not yet written is canceled
/// and retried on another one (hyper-util's `retry_canceled_requests`, on by default).
///
/// Limits: the layer sees only responses that come through it, over connections from
/// [`HygieneConnector`] (others pass through untouched). A server that closes idle
/// connections without announcing it is covered by hyper reading the FIN at once, not
/// by this layer; for a known fixed server timeout, hyper-util's `pool_idle_timeout`
/// below it does the same job for every server.
///
/// [hyper#2136]: https://github.com/hyperium/hyper/issues/2136
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct KeepAliveLayer {
    margin: Duration,
}

impl Default for KeepAliveLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl KeepAliveLayer {
    /// A layer with a margin of 1 s.
    pub const fn new() -> Self {
        KeepAliveLayer {
            margin: Duration::from_secs(1),
        }
    }

    /// How long before the server's timeout to evict. Capped at half the server's
    /// timeout, so `timeout=1` evicts after 500 ms. Defaults to 1 s.
    pub const fn with_margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }
}

impl<S> Layer<S> for KeepAliveLayer {
    type Service = KeepAlive<S>;

    fn layer(&self, inner: S) -> KeepAlive<S> {
        KeepAlive {
            inner,
            margin: self.margin,
        }
    }
}

/// The service of [`KeepAliveLayer`].
#[derive(Debug, Clone)]
pub struct KeepAlive<S> {
    inner: S,
    margin: Duration,
}

impl<S> KeepAlive<S> {
    /// Wraps `inner` with the default margin of 1 s.
    pub fn new(inner: S) -> Self {
        KeepAliveLayer::new().layer(inner)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, R> Service<Request<B>> for KeepAlive<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: Body,
{
    type Response = Response<KeepAliveBody<R>>;
    type Error = S::Error;
    type Future = future::ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        future::ResponseFuture::new(self.inner.call(request), self.margin)
    }
}

/// Arms the eviction clock of one response's connection when dropped.
#[derive(Debug)]
struct Arm {
    shared: Weak<Shared>,
    armed: Armed,
}

impl Drop for Arm {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.arm(self.armed);
        }
    }
}

fn arm_for<R>(response: &Response<R>, margin: Duration) -> Option<Arm> {
    if !matches!(response.version(), Version::HTTP_11 | Version::HTTP_10) {
        return None;
    }
    let keep_alive = response
        .headers()
        .get_all("keep-alive")
        .iter()
        .find_map(|value| keep_alive_timeout(value.to_str().ok()?))?;
    let Evictor(shared) = response.extensions().get::<Evictor>()?;
    let exchange = shared.upgrade()?.exchange.load(Ordering::Acquire);
    Some(Arm {
        shared: shared.clone(),
        armed: Armed {
            exchange,
            after: evict_after(keep_alive, margin),
            keep_alive,
        },
    })
}

/// How long a connection may idle when the server allows `keep_alive`: `margin`
/// less, capped at half of it.
fn evict_after(keep_alive: Duration, margin: Duration) -> Duration {
    keep_alive.saturating_sub(margin.min(keep_alive / 2))
}

/// The longest `Keep-Alive: timeout` honoured: a day.
const MAX_KEEP_ALIVE_SECS: u64 = 24 * 60 * 60;

/// The `timeout` parameter of a `Keep-Alive` header value, in whole seconds
/// (`timeout=5, max=100`).
fn keep_alive_timeout(value: &str) -> Option<Duration> {
    value.split(',').find_map(|param| {
        let (name, seconds) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("timeout") {
            return None;
        }
        let seconds = seconds.trim().trim_matches('"').parse::<u64>().ok()?;
        // Bounded, so that a hostile value cannot overflow an `Instant` later.
        Some(Duration::from_secs(seconds.min(MAX_KEEP_ALIVE_SECS)))
    })
}

pin_project! {
    /// The response body of [`KeepAlive`]: the inner body, unchanged, that arms the
    /// connection's eviction clock when it ends (or is dropped).
    #[derive(Debug)]
    pub struct KeepAliveBody<B> {
        #[pin]
        inner: B,
        arm: Option<Arm>,
    }
}

impl<B> KeepAliveBody<B> {
    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Unwraps the body. The connection's eviction clock is armed now.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for KeepAliveBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            // Dropping the arm arms the clock.
            None => drop(this.arm.take()),
            Some(Ok(_)) if this.inner.is_end_stream() => drop(this.arm.take()),
            Some(Ok(_)) => {}
            // A broken response: hyper closes the connection itself.
            Some(Err(_)) => {
                if let Some(arm) = this.arm.as_mut() {
                    arm.shared = Weak::new();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The futures of [`HygieneConnector`] and [`KeepAlive`].
pub mod future {
    use super::*;

    /// The future of [`HygieneConnector`]'s `call`.
    #[must_use = "futures do nothing unless polled"]
    pub struct ConnectFuture {
        inner: Pin<Box<dyn Future<Output = Result<ClientStream, ConnectError>> + Send>>,
    }

    impl ConnectFuture {
        pub(super) fn new(
            inner: impl Future<Output = Result<ClientStream, ConnectError>> + Send + 'static,
        ) -> Self {
            ConnectFuture {
                inner: Box::pin(inner),
            }
        }
    }

    impl fmt::Debug for ConnectFuture {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ConnectFuture").finish_non_exhaustive()
        }
    }

    impl Future for ConnectFuture {
        type Output = Result<ClientStream, ConnectError>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            self.inner.as_mut().poll(cx)
        }
    }

    pin_project! {
        /// The future of [`KeepAlive`]'s `call`.
        #[derive(Debug)]
        #[must_use = "futures do nothing unless polled"]
        pub struct ResponseFuture<F> {
            #[pin]
            inner: F,
            margin: Duration,
        }
    }

    impl<F> ResponseFuture<F> {
        pub(super) fn new(inner: F, margin: Duration) -> Self {
            ResponseFuture { inner, margin }
        }
    }

    impl<F, R, E> Future for ResponseFuture<F>
    where
        F: Future<Output = Result<Response<R>, E>>,
        R: Body,
    {
        type Output = Result<Response<KeepAliveBody<R>>, E>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            let response = ready!(this.inner.poll(cx))?;
            let arm = arm_for(&response, *this.margin);
            Poll::Ready(Ok(response.map(|inner| {
                let mut body = KeepAliveBody { inner, arm };
                if body.inner.is_end_stream() {
                    // No body to wait for (204, HEAD, `content-length: 0`).
                    drop(body.arm.take());
                }
                body
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keep_alive_timeout() {
        let secs = |v| keep_alive_timeout(v).map(|d| d.as_secs());
        assert_eq!(
            secs("timeout=18446744073709551615"),
            Some(MAX_KEEP_ALIVE_SECS)
        );
        assert_eq!(secs("timeout=5, max=100"), Some(5));
        assert_eq!(secs("max=100, Timeout = 15"), Some(15));
        assert_eq!(secs("timeout=\"7\""), Some(7));
        assert_eq!(secs("max=100"), None);
        assert_eq!(secs("timeout=soon"), None);
        assert_eq!(secs(""), None);
    }

    #[test]
    fn margin_is_capped_at_half_the_timeout() {
        let after = |timeout, margin| {
            evict_after(Duration::from_secs(timeout), Duration::from_secs(margin))
        };
        assert_eq!(after(5, 1), Duration::from_secs(4));
        assert_eq!(after(1, 1), Duration::from_millis(500));
        assert_eq!(after(0, 1), Duration::ZERO);
    }

    #[test]
    fn client_policy_has_no_idle_or_first_byte_clock() {
        let policy = client_policy();
        assert_eq!(policy.idle_timeout(), None);
        assert_eq!(policy.first_byte_timeout(), None);
        assert!(policy.write_stall_timeout().is_some());
    }
}
