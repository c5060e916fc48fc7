//! [`serve`]: HTTP/1 and HTTP/2 serving with every clock wired in and a drain deadline.
//!
//! `serve(listener, service)` accepts from a [`Listener`], runs each connection on
//! hyper-util's auto (HTTP/1 + HTTP/2) builder under [`Conn::supervise`](crate::Conn::supervise), and wraps the
//! service in [`HygieneLayer`](crate::HygieneLayer)'s service. hyper gets a timer and
//! no header timeout of its own: the stream's request-head clock starts at a head's
//! first byte, whereas hyper's would also cut idle keep-alive connections. On Linux and
//! Android, where the crate sees the peer's FIN without reading, hyper also gets
//! `half_close(true)`, so the crate's half-close policy decides, not hyper; elsewhere
//! only a read sees the FIN, and hyper keeps its default of closing when it reads one. Protocol sniffing is bounded by the first-byte
//! clock. A request head larger than [`max_head_bytes`](ServeSettingsBuilder::max_head_bytes)
//! ([`MAX_HEAD_BYTES`], hyper's default, unless set) gets 431.
//!
//! # Settings
//!
//! The server's settings are built apart, as a [`Policy`](crate::Policy) is, into
//! [`ServeSettings`], and given with [`Serve::settings`]: [`http1_only`](ServeSettingsBuilder::http1_only)
//! or [`http2_only`](ServeSettingsBuilder::http2_only), [`max_head_bytes`](ServeSettingsBuilder::max_head_bytes),
//! the [`handshake_timeout`](ServeSettingsBuilder::handshake_timeout) of an acceptor,
//! and the HTTP/2 settings [`http2_max_concurrent_streams`](ServeSettingsBuilder::http2_max_concurrent_streams),
//! [`http2_max_pending_accept_reset_streams`](ServeSettingsBuilder::http2_max_pending_accept_reset_streams),
//! [`http2_max_local_error_reset_streams`](ServeSettingsBuilder::http2_max_local_error_reset_streams),
//! [`http2_max_send_buf_size`](ServeSettingsBuilder::http2_max_send_buf_size),
//! [`http2_initial_stream_window_size`](ServeSettingsBuilder::http2_initial_stream_window_size),
//! [`http2_initial_connection_window_size`](ServeSettingsBuilder::http2_initial_connection_window_size),
//! [`http2_max_frame_size`](ServeSettingsBuilder::http2_max_frame_size),
//! [`http2_max_header_list_size`](ServeSettingsBuilder::http2_max_header_list_size),
//! [`http2_flood_budget`](ServeSettingsBuilder::http2_flood_budget) and
//! [`http2_keep_alive`](ServeSettingsBuilder::http2_keep_alive). Setters rather than
//! access to hyper-util's builder keep the crate's settings of hyper (its timer,
//! `half_close`, no header timeout) out of reach. An invalid value fails where the
//! settings are built, with a [`ConfigError`](crate::ConfigError) naming the setting,
//! before a socket is served: the server itself cannot fail at start for a setting.
//! The HTTP/2 defaults are never looser than hyper's: 128 streams per connection
//! (nginx's; hyper's is 200), h2's 20 resets before accept, hyper's 1024 resets for
//! the peer's errors, and 64 KiB of queued response per stream (hyper's is 400 KiB),
//! which caps a connection's queued responses at 8 MiB:
//!
//! ```
//! use conn_hygiene::serve::ServeSettings;
//!
//! let error = ServeSettings::builder()
//!     .http2_max_frame_size(1024)
//!     .build()
//!     .unwrap_err();
//! assert_eq!(error.field(), "http2_max_frame_size");
//! ```
//!
//! # TLS and other acceptors
//!
//! [`Serve::with_acceptor`] runs a handshake on every accepted connection before
//! HTTP, inside the connection's supervised task: the stream's first-byte and idle
//! clocks bound a silent or stalled client, a client that leaves mid-handshake is
//! released per the half-close policy, [`ServeSettingsBuilder::handshake_timeout`] bounds the whole
//! handshake, and the drain deadline and the [`ShutdownReport`] cover TLS connections
//! as any other. The acceptor may return the protocol negotiated by ALPN
//! ([`Protocol::from_alpn`]); the connection is then served with it, without sniffing.
//! The crate depends on no TLS library: an acceptor is any async function from the
//! [`HygieneStream`] to an `AsyncRead + AsyncWrite`. See
//! [`with_acceptor`](Serve::with_acceptor) for tokio-rustls, and
//! `examples/tls_server.rs`.
//!
//! # Connection info
//!
//! Handlers find the connection's [`Conn`] with [`Conn::current`]: HTTP/1 handlers run
//! in the connection's task, and HTTP/2 handlers are called and polled with it as the
//! current connection (axum handlers extract it, feature `axum`). Its
//! [`peer_addr`](Conn::peer_addr) is the client's address. For handlers that extract
//! axum's `ConnectInfo<SocketAddr>`, opt in with `Serve::connect_info` (feature
//! `axum`), as with `into_make_service_with_connect_info` under `axum::serve`: it costs one
//! extensions insert per request, about 800 instructions of a keep-alive `GET /`
//! through an axum `Router` (callgrind, `cargo bench --bench load -- instructions`).
//! Without it such a handler gets axum's 500 for a missing extension.
//!
//! Any Tower service of [`ServeRequest`] whose response body has a `Default` works:
//! tonic's `Routes` (gRPC) too, whose body is `tonic::body::Body`; see the `grpc`
//! module (feature `tonic`).
//!
//! A connection recycled by [request count](crate::Policy::max_requests) or
//! [age](crate::Policy::max_connection_age) retires through hyper's graceful shutdown
//! (HTTP/1 closes after the answer in flight, HTTP/2 gets GOAWAY). The listener answers
//! a client over its [per-client cap](crate::Listener::max_connections_per_ip)
//! with a 503 when its first bytes are an HTTP/1 request, and resets an HTTP/2
//! prior-knowledge client, any client behind an acceptor (TLS), and every client
//! beyond 64 refusals at once.
//!
//! An idle HTTP/2 connection is sent GOAWAY when its idle clock expires, and reset
//! only if it is still open a [linger bound](crate::Policy::linger_timeout) later.
//! [`ServeSettingsBuilder::http2_keep_alive`] adds server PINGs that find dead HTTP/2 peers.
//!
//! # HTTP/2 under attack
//!
//! Every connection's I/O passes through a guard after the acceptor, so over TLS it
//! sees the decrypted frames as it does h2c. On top of hyper's and h2's own defences
//! (rapid reset before accept, CONTINUATION floods, HPACK bombs, MadeYouReset):
//!
//! - a [`FloodBudget`] per connection ([`http2_flood_budget`](ServeSettingsBuilder::http2_flood_budget)):
//!   PING, SETTINGS, PRIORITY, WINDOW_UPDATE, RST_STREAM, empty and unknown frames are
//!   paid from a budget that only work refills; resetting most of 500 requests within
//!   a second of sending them is a flood too. Past it: GOAWAY `ENHANCE_YOUR_CALM` and
//!   close;
//! - a response the client's flow-control window keeps from moving (zero-window
//!   hoarding, CVE-2019-9517) for the policy's
//!   [`write_stall_timeout`](crate::policy::PolicyBuilder::write_stall_timeout) closes the
//!   connection the same way, as a blocked socket write would. hyper does not poll a
//!   response body while its stream has no window, and h2 offers no way to reset one
//!   stream from outside, so the whole connection goes;
//! - after a GOAWAY with an error code, the guard's or h2's, the connection is reset
//!   if the client has not closed within [`ERROR_LINGER`] (1 s), instead of holding
//!   its descriptor through the lingering close.
//!
//! Memory per connection is bounded by the stream limit: at most 128 streams, each
//! with at most 64 KiB queued by h2 ([`HTTP2_SEND_CAP_PER_CONN`], 8 MiB), plus what
//! each response body holds before hyper polls it (an app that builds a 64 KiB body
//! whole holds 8 MiB more per connection until the stall clock closes it). The guard
//! needs `serve()`'s hold on the I/O: under `axum::serve` only hyper's defaults apply.
//!
//! # Graceful shutdown
//!
//! On the signal given to [`Serve::with_graceful_shutdown`], in phases:
//!
//! 1. **deregistration**, for the policy's
//!    [`deregister_delay`](crate::policy::PolicyBuilder::deregister_delay) (none by default): the
//!    [`Readiness`] flag turns unready, so a health endpoint answers 503 and balancers
//!    withdraw the server, while it keeps accepting and serving. Every connection, old
//!    or newly accepted, retires after its next answer: HTTP/1 answers carry
//!    `Connection: close` (the balancer closes its pooled connection itself), HTTP/2
//!    connections get GOAWAY, tunnels (WebSockets) are told through
//!    [`Conn::draining`](crate::Conn::draining). Idle HTTP/1 connections are not
//!    closed in this phase: a balancer may be sending on them;
//! 2. **drain**, within the policy's
//!    [`drain_timeout`](crate::policy::PolicyBuilder::drain_timeout): the listener is closed, so the
//!    port refuses new connections; in-flight answers go out with `Connection: close`;
//!    an idle HTTP/1 connection is closed once nothing has arrived on it for 100 ms
//!    (the least likely moment for a request to be on its way); at the deadline
//!    whatever is left is reset;
//! 3. the [`ShutdownReport`] gives each phase's duration and counts, and for each
//!    connection forced, what held it.
//!
//! Behind a load balancer set the deregistration delay to the time the balancer
//! takes to withdraw the server; see the [deployment guide](crate::deploy).
//!
//! # Example
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use conn_hygiene::{Listener, Policy, SocketOptions};
//!
//! # async fn dox() -> std::io::Result<()> {
//! let listener = Listener::bind(
//!     "127.0.0.1:3000",
//!     SocketOptions::new(),
//!     Policy::default(),
//! )?;
//! let app = Router::new().route("/", get(|| async { "ok" }));
//! let report = conn_hygiene::serve(listener, app)
//!     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap() })
//!     .await?;
//! println!("shutdown: {report}");
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::Service;

use crate::conn::{Abandon, Conn};
use crate::layer::{Hygiene, RequestBody};
use crate::listener::Listener;
use crate::registry::Registry;
use crate::stream::{HygieneStream, Payload, TcpIo};

mod accept;
mod config;
mod graceful;
mod h2guard;
mod readiness;
mod shutdown;

pub use accept::{AcceptFn, Accepted, Acceptor, Plain, Protocol};
use config::{Builders, HttpConfig, Retire};
pub use config::{
    HTTP2_MAX_CONCURRENT_STREAMS, HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS,
    HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS, HTTP2_MAX_SEND_BUF, HTTP2_SEND_CAP_PER_CONN,
    MAX_HEAD_BYTES, ServeSettings, ServeSettingsBuilder,
};
#[allow(deprecated)]
pub use graceful::{BoundedShutdown, GracefulShutdown};
use h2guard::H2Guard;
pub use h2guard::{ERROR_LINGER, FloodBudget};
pub use readiness::{Readiness, Stage};
use shutdown::{Deregistering, drain, retire};
pub use shutdown::{ForcedConnection, ShutdownReport};

/// The request type a service served by [`serve`] receives.
pub type ServeRequest = Request<RequestBody<Incoming>>;

/// How long an [acceptor](Serve::with_acceptor)'s handshake may take by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `service` on `listener` until the process ends; add a shutdown signal with
/// [`Serve::with_graceful_shutdown`]. See the [module docs](self).
pub fn serve<S, B>(listener: Listener, service: S) -> Serve<S, std::future::Pending<()>>
where
    S: Service<ServeRequest, Response = Response<B>> + Clone + Send + 'static,
{
    Serve {
        listener,
        service,
        signal: std::future::pending(),
        acceptor: Arc::new(Plain),
        handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        http: HttpConfig::default(),
        deregister_delay: None,
        drain_timeout: None,
        readiness: Readiness::new(),
        connect_info: false,
    }
}

/// The future of [`serve`]: resolves with the [`ShutdownReport`] after a graceful
/// shutdown. `A` is the [acceptor](Self::with_acceptor).
#[must_use = "futures do nothing unless awaited"]
pub struct Serve<S, G, A = Plain> {
    listener: Listener,
    service: S,
    signal: G,
    acceptor: Arc<A>,
    handshake_timeout: Duration,
    http: HttpConfig,
    // Overrides of the policy's, set through the deprecated setters only.
    deregister_delay: Option<Duration>,
    drain_timeout: Option<Duration>,
    readiness: Readiness,
    connect_info: bool,
}

impl<S, G, A> fmt::Debug for Serve<S, G, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("http", &self.http)
            .field("deregister_delay", &self.deregister_delay)
            .field("drain_timeout", &self.drain_timeout)
            .field("readiness", &self.readiness)
            .field("connect_info", &self.connect_info)
            .finish_non_exhaustive()
    }
}

impl<S, G, A> Serve<S, G, A> {
    /// Shuts down gracefully when `signal` completes: the deregistration phase, then
    /// the drain, within its deadline. See [Graceful shutdown](self#graceful-shutdown).
    pub fn with_graceful_shutdown<G2>(self, signal: G2) -> Serve<S, G2, A>
    where
        G2: Future<Output = ()> + Send + 'static,
    {
        Serve {
            listener: self.listener,
            service: self.service,
            signal,
            acceptor: self.acceptor,
            handshake_timeout: self.handshake_timeout,
            http: self.http,
            deregister_delay: self.deregister_delay,
            drain_timeout: self.drain_timeout,
            readiness: self.readiness,
            connect_info: self.connect_info,
        }
    }

    /// Runs `accept` on every accepted connection before HTTP: a TLS handshake,
    /// typically. It gets the [`HygieneStream`] and returns the I/O to serve HTTP on,
    /// as an [`Accepted`] that may name the protocol negotiated by ALPN
    /// ([`Protocol::from_alpn`]); without one, the protocol is sniffed.
    ///
    /// The handshake runs inside the connection's supervised task: the stream's
    /// first-byte and idle clocks bound a silent or stalled client, a client that
    /// leaves is released per the half-close policy, the drain deadline covers it,
    /// and the whole handshake is bounded by
    /// [`handshake_timeout`](ServeSettingsBuilder::handshake_timeout).
    /// A failed or late handshake closes the connection (traced at debug level,
    /// target `conn_hygiene::serve`).
    ///
    /// The stream below the acceptor sees its bytes only as records it cannot read,
    /// so it does not take them as work: the idle clock runs from the end of the last
    /// request (over HTTP/1 as over HTTP/2), the request-head clock from the first
    /// bytes after it, and a tunnel's idle clock counts the plaintext payload above
    /// the acceptor. A record that carries no request (a TLS KeyUpdate, an empty
    /// record) therefore holds no clock.
    ///
    /// # Example: HTTPS with tokio-rustls
    ///
    /// ```no_run
    /// # #[cfg(feature = "axum")]
    /// # async fn dox(config: std::sync::Arc<tokio_rustls::rustls::ServerConfig>) -> std::io::Result<()> {
    /// use axum::{Router, routing::get};
    /// use conn_hygiene::serve::{Accepted, Protocol};
    /// use conn_hygiene::{Listener, Policy, SocketOptions};
    ///
    /// // `config.alpn_protocols` should list `h2` and `http/1.1`.
    /// let tls = tokio_rustls::TlsAcceptor::from(config);
    /// let listener = Listener::bind("0.0.0.0:8443", SocketOptions::new(), Policy::default())?;
    /// let app = Router::new().route("/", get(|| async { "ok" }));
    /// conn_hygiene::serve(listener, app)
    ///     .with_acceptor(move |stream| {
    ///         let tls = tls.clone();
    ///         async move {
    ///             let stream = tls.accept(stream).await?;
    ///             let protocol = Protocol::from_alpn(stream.get_ref().1.alpn_protocol());
    ///             Ok(Accepted::new(stream).with_protocol(protocol))
    ///         }
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn with_acceptor<F, Fut, Io>(self, accept: F) -> Serve<S, G, AcceptFn<F>>
    where
        F: Fn(HygieneStream<TcpIo>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<Accepted<Io>>> + Send + 'static,
        Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Serve {
            listener: self.listener,
            service: self.service,
            signal: self.signal,
            acceptor: Arc::new(AcceptFn::new(accept)),
            handshake_timeout: self.handshake_timeout,
            http: self.http,
            deregister_delay: self.deregister_delay,
            drain_timeout: self.drain_timeout,
            readiness: self.readiness,
            connect_info: self.connect_info,
        }
    }

    /// Serves with `settings`, checked when they were built: the protocols, the head
    /// size, the HTTP/2 limits and the handshake timeout. See [Settings](self#settings).
    pub fn settings(mut self, settings: ServeSettings) -> Self {
        self.http = settings.http;
        self.handshake_timeout = settings.handshake_timeout;
        self
    }

    /// Deprecated: set [`handshake_timeout`](ServeSettingsBuilder::handshake_timeout) in
    /// [`ServeSettings`], which checks it when built, and pass them to
    /// [`settings`](Self::settings).
    #[deprecated(
        since = "0.2.0",
        note = "set `handshake_timeout` on `ServeSettings::builder()`, checked by `build()`, and pass the settings to `Serve::settings`"
    )]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Deprecated: set [`http1_only`](ServeSettingsBuilder::http1_only) in
    /// [`ServeSettings`], which checks it when built, and pass them to
    /// [`settings`](Self::settings).
    #[deprecated(
        since = "0.2.0",
        note = "set `http1_only` on `ServeSettings::builder()`, checked by `build()`, and pass the settings to `Serve::settings`"
    )]
    pub fn http1_only(mut self) -> Self {
        self.http.only(Protocol::Http1);
        self
    }

    /// Deprecated: set [`http2_only`](ServeSettingsBuilder::http2_only) in
    /// [`ServeSettings`], which checks it when built, and pass them to
    /// [`settings`](Self::settings).
    #[deprecated(
        since = "0.2.0",
        note = "set `http2_only` on `ServeSettings::builder()`, checked by `build()`, and pass the settings to `Serve::settings`"
    )]
    pub fn http2_only(mut self) -> Self {
        self.http.only(Protocol::Http2);
        self
    }

    /// Deprecated: set [`max_head_bytes`](ServeSettingsBuilder::max_head_bytes) in
    /// [`ServeSettings`], which checks it when built, and pass them to
    /// [`settings`](Self::settings).
    #[deprecated(
        since = "0.2.0",
        note = "set `max_head_bytes` on `ServeSettings::builder()`, checked by `build()`, and pass the settings to `Serve::settings`"
    )]
    pub fn max_head_bytes(mut self, bytes: usize) -> Self {
        self.http.max_head_bytes = bytes;
        self
    }

    /// Deprecated: set [`http2_max_concurrent_streams`](ServeSettingsBuilder::http2_max_concurrent_streams) in
    /// [`ServeSettings`], which checks it when built, and pass them to
    /// [`settings`](Self::settings).
    #[deprecated(
        since = "0.2.0",
        note = "set `http2_max_concurrent_streams` on `ServeSettings::builder()`, checked by `build()`, and pass the settings to `Serve::settings`"
    )]
    pub fn http2_max_concurrent_streams(mut self, max: impl Into<Option<u32>>) -> Self {
        self.http.max_concurrent_streams = max.into();
        self
    }

    /// Deprecated: set [`http2_max_pending_accept_reset_streams`](ServeSettingsBuilder::http2_max_pending_accept_reset_streams) in
    /// [`ServeSettings`], which checks it when built, and pass them to
    /// [`settings`](Self::settings).
    #[deprecated(
        since = "0.2.0",
        note = "set `http2_max_pending_accept_reset_streams` on `ServeSettings::builder()`, checked by `build()`, and pass the settings to `Serve::settings`"
    )]
    pub fn http2_max_pending_accept_reset_streams(mut self, max: impl Into<Option<usize>>) -> Self {
        self.http.max_pending_accept_reset_streams = max.into();
        self
    }

    /// Deprecated: set [`http2_max_local_error_reset_streams`](ServeSettingsBuilder::http2_max_local_error_reset_streams) in
    /// [`ServeSettings`], which checks it when built, and pass them to
    /// [`settings`](Self::settings).
    #[deprecated(
        since = "0.2.0",
        note = "set `http2_max_local_error_reset_streams` on `ServeSettings::builder()`, checked by `build()`, and pass the settings to `Serve::settings`"
    )]
    pub fn http2_max_local_error_reset_streams(mut self, max: impl Into<Option<usize>>) -> Self {
        self.http.max_local_error_reset_streams = max.into();
        self
    }

    /// Deprecated: set [`http2_max_send_buf_size`](ServeSettingsBuilder::http2_max_send_buf_size) in
    /// [`ServeSettings`], which checks it when built, and pass them to
    /// [`settings`](Self::settings).
    #[deprecated(
        since = "0.2.0",
        note = "set `http2_max_send_buf_size` on `ServeSettings::builder()`, checked by `build()`, and pass the settings to `Serve::settings`"
    )]
    pub fn http2_max_send_buf_size(mut self, bytes: u32) -> Self {
        self.http.max_send_buf_size = bytes;
        self
    }

    /// Deprecated: set [`http2_initial_stream_window_size`](ServeSettingsBuilder::http2_initial_stream_window_size) in
    /// [`ServeSettings`], which checks it when built, and pass them to
    /// [`settings`](Self::settings).
    #[deprecated(
        since = "0.2.0",
        note = "set `http2_initial_stream_window_size` on `ServeSettings::builder()`, checked by `build()`, and pass the settings to `Serve::settings`"
    )]
    pub fn http2_initial_stream_window_size(mut self, bytes: u32) -> Self {
        self.http.initial_stream_window_size = Some(bytes);
        self
    }

    /// Deprecated: set [`http2_initial_connection_window_size`](ServeSettingsBuilder::http2_initial_connection_window_size) in
    /// [`ServeSettings`], which checks it when built, and pass them to
    /// [`settings`](Self::settings).
    #[deprecated(
        since = "0.2.0",
        note = "set `http2_initial_connection_window_size` on `ServeSettings::builder()`, checked by `build()`, and pass the settings to `Serve::settings`"
    )]
    pub fn http2_initial_connection_window_size(mut self, bytes: u32) -> Self {
        self.http.initial_connection_window_size = Some(bytes);
        self
    }

    /// Deprecated: set [`http2_max_frame_size`](ServeSettingsBuilder::http2_max_frame_size) in
    /// [`ServeSettings`], which checks it when built, and pass them to
    /// [`settings`](Self::settings).
    #[deprecated(
        since = "0.2.0",
        note = "set `http2_max_frame_size` on `ServeSettings::builder()`, checked by `build()`, and pass the settings to `Serve::settings`"
    )]
    pub fn http2_max_frame_size(mut self, bytes: u32) -> Self {
        self.http.max_frame_size = Some(bytes);
        self
    }

    /// Deprecated: set [`http2_max_header_list_size`](ServeSettingsBuilder::http2_max_header_list_size) in
    /// [`ServeSettings`], which checks it when built, and pass them to
    /// [`settings`](Self::settings).
    #[deprecated(
        since = "0.2.0",
        note = "set `http2_max_header_list_size` on `ServeSettings::builder()`, checked by `build()`, and pass the settings to `Serve::settings`"
    )]
    pub fn http2_max_header_list_size(mut self, bytes: u32) -> Self {
        self.http.max_header_list_size = Some(bytes);
        self
    }

    /// Deprecated: set [`http2_flood_budget`](ServeSettingsBuilder::http2_flood_budget) in
    /// [`ServeSettings`], which checks it when built, and pass them to
    /// [`settings`](Self::settings).
    #[deprecated(
        since = "0.2.0",
        note = "set `http2_flood_budget` on `ServeSettings::builder()`, checked by `build()`, and pass the settings to `Serve::settings`"
    )]
    pub fn http2_flood_budget(mut self, budget: impl Into<Option<FloodBudget>>) -> Self {
        self.http.flood_budget = budget.into();
        self
    }

    /// Overrides the policy's [`deregister_delay`](crate::policy::PolicyBuilder::deregister_delay)
    /// for this server.
    #[deprecated(
        since = "0.2.0",
        note = "set `deregister_delay` on the listener's `Policy`, its one home"
    )]
    pub fn deregister_delay(mut self, delay: Duration) -> Self {
        self.deregister_delay = Some(delay);
        self
    }

    /// Overrides the policy's [`drain_timeout`](crate::policy::PolicyBuilder::drain_timeout)
    /// for this server.
    #[deprecated(
        since = "0.2.0",
        note = "set `drain_timeout` on the listener's `Policy`, its one home"
    )]
    pub fn drain_timeout(mut self, deadline: Duration) -> Self {
        self.drain_timeout = Some(deadline);
        self
    }

    /// Uses `readiness` as the server's readiness flag, so that a health endpoint
    /// built before the server (typically `route_service("/healthz", readiness.clone())`)
    /// reports the server's stage. By default the server has a flag of its own; see
    /// [`readiness`](Self::readiness).
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// The server's readiness flag: ready until the shutdown signal.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Deprecated: set [`http2_keep_alive`](ServeSettingsBuilder::http2_keep_alive) in
    /// [`ServeSettings`], which checks it when built, and pass them to
    /// [`settings`](Self::settings).
    #[deprecated(
        since = "0.2.0",
        note = "set `http2_keep_alive` on `ServeSettings::builder()`, checked by `build()`, and pass the settings to `Serve::settings`"
    )]
    pub fn http2_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.http.keep_alive = Some((interval, timeout));
        self
    }

    /// Gives every request the peer's address as axum's `ConnectInfo<SocketAddr>`
    /// (feature `axum`), as `into_make_service_with_connect_info::<SocketAddr>()` does
    /// under `axum::serve`. Off by default: it costs an extensions insert per request
    /// (see [Connection info](self#connection-info)); a handler can extract the crate's
    /// [`Conn`] and read [`peer_addr`](Conn::peer_addr) instead, at no cost.
    ///
    /// ```no_run
    /// # async fn dox() -> std::io::Result<()> {
    /// use std::net::SocketAddr;
    ///
    /// use axum::{Router, extract::ConnectInfo, routing::get};
    /// use conn_hygiene::{Listener, Policy, SocketOptions};
    ///
    /// let listener = Listener::bind("127.0.0.1:3000", SocketOptions::new(), Policy::default())?;
    /// let app = Router::new().route(
    ///     "/",
    ///     get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    /// );
    /// conn_hygiene::serve(listener, app).connect_info(true).await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "axum")]
    pub fn connect_info(mut self, on: bool) -> Self {
        self.connect_info = on;
        self
    }

    /// Renamed to [`connect_info`](Self::connect_info)`(true)`.
    #[cfg(feature = "axum")]
    #[deprecated(since = "0.2.0", note = "renamed to `connect_info(true)`")]
    pub fn with_connect_info(self) -> Self {
        self.connect_info(true)
    }

    /// The listener's live connections, for a census while serving.
    pub fn registry(&self) -> Registry {
        self.listener.registry().clone()
    }
}

/// Serving fails at once, before accepting, with [`io::ErrorKind::InvalidInput`] when
/// an HTTP setting is invalid; the message names the setting.
impl<S, B, G, A> IntoFuture for Serve<S, G, A>
where
    S: Service<ServeRequest, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Default + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    G: Future<Output = ()> + Send + 'static,
    A: Acceptor,
{
    type Output = io::Result<ShutdownReport>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let Serve {
                listener,
                service,
                signal,
                acceptor,
                handshake_timeout,
                http,
                deregister_delay,
                drain_timeout,
                readiness,
                connect_info,
            } = self;
            // Settings given through `settings` are valid already; the deprecated
            // setters' are checked here.
            http.validate()?;
            // A client over its connection cap gets a 503 rather than a reset, unless an
            // acceptor (TLS) stands between the socket and HTTP.
            let plain = is_plain::<A>();
            let mut listener = listener.http_refusal(plain);
            let registry = listener.registry().clone();
            let policy = listener.policy();
            let drain_timeout = drain_timeout.unwrap_or(policy.drain_timeout());
            let deregister_delay = deregister_delay
                .or(policy.deregister_delay())
                .unwrap_or_default();
            let builders = Arc::new(http.builders());
            let mut signal = pin!(signal);
            // From the shutdown signal on: the deregistration phase, still accepting.
            let mut deregistering: Option<Deregistering> = None;
            loop {
                let accepted = tokio::select! {
                    biased;
                    () = &mut signal, if deregistering.is_none() => {
                        deregistering = Some(Deregistering::start(&registry, &readiness, deregister_delay));
                        continue;
                    }
                    () = async { deregistering.as_mut().unwrap().ended().await }, if deregistering.is_some() => break,
                    accepted = listener.accept() => accepted,
                };
                let (stream, _) = accepted?;
                let conn = stream.conn().clone();
                conn.mark_http();
                if !plain {
                    // The acceptor's bytes (TLS) hide which are requests.
                    conn.mark_sealed();
                }
                let service = TowerToHyperService::new(Hygiene::for_served_conn(
                    service.clone(),
                    conn.clone(),
                    connect_info,
                ));
                // HTTP/1 handlers run inside this task: `Conn::current()` finds the handle.
                // Boxed: the connection's future (three ways of serving, the handshake)
                // is large, and the wrappers and `spawn` would otherwise copy it whole.
                let task = conn
                    .clone()
                    .supervise(conn.clone().scope(Box::pin(connection_task(
                        stream,
                        conn,
                        service,
                        builders.clone(),
                        acceptor.clone(),
                        handshake_timeout,
                        readiness.clone(),
                    ))));
                tokio::spawn(task);
            }
            let deregistration = deregistering.map(|phase| phase.finish(&registry));
            // Closing the listening socket makes the port refuse new connections (unless
            // another process holds the same socket: see `takeover`).
            drop(listener);
            Ok(drain(
                &registry,
                &readiness,
                drain_timeout,
                deregistration.unwrap_or_default(),
            )
            .await)
        })
    }
}

/// One accepted connection's task: the acceptor's handshake, bounded by
/// `handshake_timeout`, then HTTP/1, HTTP/2 or either until the connection ends or is
/// retired.
async fn connection_task<S, B, A>(
    stream: HygieneStream<TcpIo>,
    conn: Conn,
    service: TowerToHyperService<Hygiene<S>>,
    builders: Arc<Builders>,
    acceptor: Arc<A>,
    handshake_timeout: Duration,
    readiness: Readiness,
) where
    S: Service<ServeRequest, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Default + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    A: Acceptor,
{
    let plain = is_plain::<A>();
    let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
    let accepted = match handshake.await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(error)) => {
            tracing::debug!(target: "conn_hygiene::serve", parent: conn.span(), %error, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(target: "conn_hygiene::serve", parent: conn.span(), error = "handshake timed out", "handshake failed");
            conn.abandon(Abandon::HandshakeTimeout);
            return;
        }
    };
    let protocol = builders.protocol(accepted.protocol());
    // Over a sealed transport a tunnel's idle clock counts plaintext, and
    // the guard sees the decrypted HTTP/2 frames.
    let sealed = (!plain).then(|| conn.clone());
    let io = TokioIo::new(H2Guard::new(
        Payload::new(accepted.into_inner(), sealed),
        &conn,
        protocol,
        builders.flood_budget,
    ));
    let result = match protocol {
        Some(Protocol::Http1) => {
            let connection = builders.http1.serve_connection(io, service).with_upgrades();
            run(connection, &conn, &readiness).await
        }
        Some(Protocol::Http2) => {
            // Known before the preface (ALPN, `http2_only`), which the
            // sniffer never sees under TLS: a drain then sends GOAWAY at
            // once (hyper holds it until the preface has come).
            conn.mark_http2();
            run(
                builders.http2.serve_connection(io, service),
                &conn,
                &readiness,
            )
            .await
        }
        None => {
            let connection = builders.auto.serve_connection_with_upgrades(io, service);
            run(connection, &conn, &readiness).await
        }
    };
    if let Err(error) = result {
        tracing::debug!(target: "conn_hygiene::serve", parent: conn.span(), %error, "connection error");
    }
}

/// Whether the acceptor is the plain one: HTTP over the TCP stream itself, no TLS.
fn is_plain<A: Acceptor>() -> bool {
    std::any::TypeId::of::<A>() == std::any::TypeId::of::<Plain>()
}

/// [`retire`]'s future, boxed: it exists only once a drain has begun.
type Retirement<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Serves one connection until it ends, retiring it gracefully when asked to.
///
/// The drain is seen as a flag checked after each poll, not as a future raced beside
/// the connection: every wakeup of a busy connection would poll that future. The
/// connection's supervisor ([`Conn::supervise`]) wakes this task on every change of the
/// connection's state, the start of a drain included; only then does the retirement's
/// own future (which may wait for the listener to close and a quiet moment) exist.
async fn run<C, E>(
    connection: C,
    conn: &Conn,
    readiness: &Readiness,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    C: Retire<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connection = pin!(connection);
    // The retirement, and whether the connection was known to be HTTP/2 when it began.
    let mut retiring: Option<(Retirement<'_>, bool)> = None;
    let mut retired = false;
    let result = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        if retired || (retiring.is_none() && !conn.is_draining()) {
            return Poll::Pending;
        }
        // `retire` chooses its way by the protocol, which may be learnt after it began:
        // an h2c preface read, or a first HTTP/2 request, in the poll above. Choose again.
        let http2 = conn.is_http2();
        if retiring
            .as_ref()
            .is_some_and(|&(_, began_http2)| began_http2 != http2)
        {
            retiring = None;
        }
        let (retirement, _) =
            retiring.get_or_insert_with(|| (Box::pin(retire(conn, readiness)), http2));
        ready!(retirement.as_mut().poll(cx));
        retiring = None;
        retired = true;
        connection.as_mut().retire();
        connection.as_mut().poll(cx)
    })
    .await;
    result.map_err(Into::into)
}

/// hyper's `half_close`: on where the crate sees the peer's FIN without reading. Where
/// it does not, hyper's default (off: a FIN that hyper reads closes the connection) is
/// the only thing that notices a client leaving a busy HTTP/1 handler.
fn http1_half_close() -> bool {
    crate::conn::FIN_SEEN_WITHOUT_READING
}

#[cfg(test)]
mod tests {
    use super::http1_half_close;

    /// hyper's half-close is on only where the crate sees a FIN without reading; a busy
    /// HTTP/1 handler elsewhere would otherwise be blind to the client leaving.
    #[test]
    fn hyper_half_close_only_where_the_fin_is_seen_unread() {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert!(http1_half_close());
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        assert!(!http1_half_close());
    }
}
