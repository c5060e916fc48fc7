//! gRPC with [tonic]: the crate's clocks, FIN detection and drain under a gRPC server.
//!
//! Two ways to serve, both with [`HygieneLayer`](crate::HygieneLayer) finding each
//! request's [`Conn`]:
//!
//! - **[`serve()`](crate::serve()) with tonic's [`Routes`] as the service**
//!   (recommended). Every clock runs, an idle connection is sent GOAWAY (PINGs are
//!   not activity; see [Idle](#idle)), a connection past its
//!   [maximum age](crate::Policy::max_connection_age) (±10 % jitter, gRPC's
//!   `MAX_CONNECTION_AGE`) retires by GOAWAY and is reset if it outlives the
//!   [grace](crate::Policy::recycle_grace), and graceful shutdown has a deadline and a
//!   [`ShutdownReport`](crate::ShutdownReport).
//!   tonic's `Server` settings do not apply there: its `grpc-timeout` header
//!   enforcement, concurrency limit and load shedding are layers you add yourself,
//!   and its HTTP/2 window and stream limits are hyper's defaults.
//! - **tonic's own `Server`** over [`Listener::into_incoming`]:
//!   `Server::builder().layer(HygieneLayer::new())…serve_with_incoming(incoming)`.
//!   The stream's clocks, FIN detection and cancel-on-disconnect work, but an idle
//!   HTTP/2 connection is reset at its idle timeout plus the linger bound instead of
//!   being sent GOAWAY first, a connection past its maximum age gets no GOAWAY and is
//!   reset after the recycle grace. `into_incoming` says so in a `conn_hygiene::grpc`
//!   warning when the policy has an idle timeout or a maximum age. tonic's graceful
//!   shutdown waits for open streams with no deadline: give it a
//!   [`BoundedShutdown`](crate::serve::BoundedShutdown)'s `signal(..)` and await
//!   its `run(server)` for a deadline and a report.
//!
//! # Idle
//!
//! A connection is idle while no RPC is in flight (a streaming RPC is in flight until
//! its response ends). What restarts the idle clock depends on whether the crate sees
//! the HTTP/2 frames:
//!
//! - **plaintext (h2c)**: any frame but PING, SETTINGS and WINDOW_UPDATE;
//! - **TLS**: the frames are ciphertext to the crate, so nothing received restarts it:
//!   the clock runs from the end of the last RPC (or the connection's start), as gRPC's
//!   `MAX_CONNECTION_IDLE` does, once the connection is known to speak HTTP/2 (at its
//!   first RPC at the latest; until then every byte counts).
//!
//! An open RPC stops the idle clock, so a client that vanishes without a FIN or RST
//! (a cut network, a host that lost power) holds a `Watch` open for ever: nothing is
//! written to it, and nothing is read. Find such peers with server PINGs
//! ([`ServeSettingsBuilder::http2_keep_alive`](crate::serve::ServeSettingsBuilder::http2_keep_alive): no answer
//! within the timeout closes the connection) or with TCP keepalive
//! ([`SocketOptions::keepalive_time`](crate::SocketOptions::keepalive_time),
//! or `TCP_USER_TIMEOUT`); `examples/grpc_server.rs` takes `--http2-keepalive` and
//! `--tcp-keepalive`.
//!
//! Under tonic's `Server` the IO's [`Connected`] impl has tonic put a
//! [`GrpcConnectInfo`] in every request's extensions. Under either server the layer
//! adds the [`Conn`] and tonic's [`TcpConnectInfo`] to each HTTP/2 request, so
//! `request.remote_addr()` works as with tonic's own listener (its `local_addr()` is
//! `None` under `serve()`).
//!
//! # Example: `serve()` with tonic's routes
//!
//! ```no_run
//! # async fn dox() -> std::io::Result<()> {
//! use std::time::Duration;
//! use conn_hygiene::{Listener, Policy, SocketOptions};
//!
//! let policy = Policy::builder()
//!     .idle_timeout(Some(Duration::from_secs(300)))
//!     .drain_timeout(Duration::from_secs(10))
//!     .build()
//!     .expect("valid policy");
//! // tonic's own server sets TCP_NODELAY on accepted streams; so should this one.
//! let options = SocketOptions::new().nodelay(true);
//! let listener = Listener::bind("127.0.0.1:50051", options, policy)?;
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! let routes = tonic::service::Routes::new(health);
//! let report = conn_hygiene::serve(listener, routes)
//!     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap() })
//!     .await?;
//! println!("shutdown: {report}");
//! # Ok(()) }
//! ```
//!
//! # Example: tonic's `Server` on the crate's listener
//!
//! ```no_run
//! # async fn dox() -> Result<(), Box<dyn std::error::Error>> {
//! use conn_hygiene::{HygieneLayer, Listener, Policy, SocketOptions};
//!
//! let listener = Listener::bind(
//!     "127.0.0.1:50051",
//!     SocketOptions::new().nodelay(true),
//!     Policy::default(),
//! )?;
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! tonic::transport::Server::builder()
//!     .layer(HygieneLayer::new())
//!     .add_service(health)
//!     .serve_with_incoming(listener.into_incoming())
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! A handler reaches the connection through the request's extensions:
//!
//! ```
//! use conn_hygiene::Conn;
//! use conn_hygiene::grpc::GrpcConnectInfo;
//!
//! fn log_peer<T>(request: &tonic::Request<T>) {
//!     // Under either server, with the layer.
//!     if let Some(conn) = request.extensions().get::<Conn>() {
//!         tracing::info!(id = conn.id(), peer = %conn.peer_addr(), phase = %conn.phase());
//!     }
//!     // Under tonic's `Server`, with or without the layer.
//!     if let Some(info) = request.extensions().get::<GrpcConnectInfo>() {
//!         tracing::info!(peer = %info.remote_addr(), local = ?info.local_addr());
//!     }
//! }
//! ```
//!
//! [tonic]: https://docs.rs/tonic
//! [`Routes`]: https://docs.rs/tonic/0.14/tonic/service/struct.Routes.html

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::conn::Conn;
use crate::listener::Listener;
use crate::registry::Registry;
use crate::stream::{HygieneStream, TcpIo};

/// How long [`Incoming`] waits before accepting again after the listening socket
/// itself failed: tonic logs the error and asks for the next connection at once.
const FATAL_RETRY: Duration = Duration::from_secs(1);

/// What tonic puts in a request's extensions for a connection of the crate's
/// [`Listener`]: the connection's [`Conn`] and its addresses.
///
/// Only tonic's `Server` inserts it (it asks the IO's [`Connected`] impl); under
/// `serve()` a handler finds the [`Conn`] itself in the extensions instead.
///
/// ```
/// use conn_hygiene::grpc::GrpcConnectInfo;
///
/// fn peer_of<T>(request: &tonic::Request<T>) -> Option<std::net::SocketAddr> {
///     request.extensions().get::<GrpcConnectInfo>().map(GrpcConnectInfo::remote_addr)
/// }
/// ```
#[derive(Debug, Clone)]
pub struct GrpcConnectInfo {
    conn: Conn,
    local_addr: Option<SocketAddr>,
}

impl GrpcConnectInfo {
    /// The connection's handle.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.peer_addr()
    }

    /// The local address the connection was accepted on; `None` if the socket could
    /// not say.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }
}

/// tonic asks for it once per connection, as it accepts: the connection then counts
/// as HTTP, so the request-head and idle clocks run. Without the layer (a request
/// reaches the server uncounted, on a listener where the layer never counted one),
/// the clocks that need request boundaries stand down with a warning instead of
/// becoming handler deadlines.
impl Connected for HygieneStream<TcpIo> {
    type ConnectInfo = GrpcConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let conn = self.conn();
        conn.mark_http();
        GrpcConnectInfo {
            conn: conn.clone(),
            local_addr: self.get_ref().shared().local_addr().ok(),
        }
    }
}

/// The [`Conn`] that tonic's server put in the extensions, if it did.
pub(crate) fn conn_of(extensions: &http::Extensions) -> Option<Conn> {
    extensions
        .get::<GrpcConnectInfo>()
        .map(|info| info.conn.clone())
}

/// Adds tonic's [`TcpConnectInfo`] to a gRPC request that lacks it (under `serve()`),
/// so that `tonic::Request::remote_addr` works; its `local_addr` is then `None`. Other
/// requests are left alone: an extension insert per request is not free.
pub(crate) fn insert_tcp_connect_info<B>(req: &mut http::Request<B>, conn: &Conn) {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    let extensions = req.extensions_mut();
    if !grpc || extensions.get::<TcpConnectInfo>().is_some() {
        return;
    }
    let local_addr = extensions
        .get::<GrpcConnectInfo>()
        .and_then(GrpcConnectInfo::local_addr);
    extensions.insert(TcpConnectInfo {
        local_addr,
        remote_addr: Some(conn.peer_addr()),
    });
}

impl Listener {
    /// The listener as tonic's incoming stream, for
    /// `Server::serve_with_incoming(_shutdown)`. See the [module docs](self).
    ///
    /// If the policy has an idle timeout (the default does) or a maximum connection
    /// age, it warns once (target `conn_hygiene::grpc`): tonic's `Server` cannot send
    /// GOAWAY for the crate, so those connections are reset instead; serve tonic's
    /// `Routes` with [`serve()`](crate::serve()) for GOAWAY.
    ///
    /// ```no_run
    /// use conn_hygiene::{HygieneLayer, Listener, Policy, SocketOptions};
    ///
    /// # async fn dox() -> Result<(), Box<dyn std::error::Error>> {
    /// let listener = Listener::bind(
    ///     "127.0.0.1:50051",
    ///     SocketOptions::new().nodelay(true),
    ///     Policy::default(),
    /// )?;
    /// let incoming = listener.into_incoming();
    /// // The registry outlives the listener: a census while tonic serves.
    /// let registry = incoming.registry().clone();
    /// tokio::spawn(async move {
    ///     loop {
    ///         tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    ///         println!("{} live gRPC connections", registry.len());
    ///     }
    /// });
    /// let (_reporter, health) = tonic_health::server::health_reporter();
    /// tonic::transport::Server::builder()
    ///     .layer(HygieneLayer::new())
    ///     .add_service(health)
    ///     .serve_with_incoming_shutdown(incoming, async {
    ///         tokio::signal::ctrl_c().await.unwrap();
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn into_incoming(self) -> Incoming {
        warn_no_goaway(self.policy());
        let registry = self.registry().clone();
        Incoming {
            registry,
            accepting: Box::pin(accept(self, false)),
        }
    }
}

/// Says, once per listener (`into_incoming` takes it), that tonic's `Server` turns
/// the GOAWAYs of the idle clock and of recycling into resets: its connections are out
/// of the crate's reach.
fn warn_no_goaway(policy: &crate::Policy) {
    let idle = policy.idle_timeout();
    let max_age = policy.max_connection_age();
    if idle.is_none() && max_age.is_none() {
        return;
    }
    tracing::warn!(
        target: "conn_hygiene::grpc",
        idle_timeout = ?idle,
        max_connection_age = ?max_age,
        "tonic's Server cannot send GOAWAY for conn_hygiene: idle connections are reset \
         at the idle timeout plus the linger bound, and connections past their maximum \
         age after the recycle grace, instead of being sent GOAWAY first. Serve tonic's \
         routes with conn_hygiene::serve(listener, Routes) for GOAWAY"
    );
}

type Accepting = Pin<Box<dyn Future<Output = (Listener, io::Result<HygieneStream<TcpIo>>)> + Send>>;

/// The crate's [`Listener`] as a stream of connections, the shape tonic's
/// `Server::serve_with_incoming` takes. Made by [`Listener::into_incoming`].
///
/// Dropping it closes the listening socket: tonic drops it when its shutdown signal
/// fires, so the port refuses new connections at once.
#[must_use = "streams do nothing unless polled"]
pub struct Incoming {
    registry: Registry,
    // Owns the listener between accepts and hands it back with each connection.
    accepting: Accepting,
}

impl Incoming {
    /// The listener's live connections, for a census while serving.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("live", &self.registry.len())
            .finish_non_exhaustive()
    }
}

async fn accept(
    mut listener: Listener,
    failed: bool,
) -> (Listener, io::Result<HygieneStream<TcpIo>>) {
    if failed {
        tokio::time::sleep(FATAL_RETRY).await;
    }
    let accepted = listener.accept().await.map(|(stream, _peer)| {
        // Request boundaries come from the layer only, as under `axum::serve`.
        stream.conn().mark_foreign_server();
        stream
    });
    (listener, accepted)
}

impl Stream for Incoming {
    type Item = io::Result<HygieneStream<TcpIo>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let (listener, accepted) = ready!(self.accepting.as_mut().poll(cx));
        // Only errors of the listening socket itself reach here: back off before the
        // next accept rather than spin.
        self.accepting = Box::pin(accept(listener, accepted.is_err()));
        Poll::Ready(Some(accepted))
    }
}
