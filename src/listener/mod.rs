//! [`Listener`]: a tokio `TcpListener` that applies socket options, registers every
//! connection, caps how many live at once, and never spins on accept errors.
//!
//! Accept errors are handled the way HAProxy handles them:
//!
//! - per-connection errors (`ECONNABORTED`, `ECONNRESET`, `ECONNREFUSED`, `EPROTO`,
//!   `EPERM`, `ETIMEDOUT`, …) skip that connection at once;
//! - resource exhaustion (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) stops accepting
//!   until one of the listener's own connections closes, with no busy loop. A fallback
//!   retry after one second covers descriptors held by something else;
//! - anything else is returned.
//!
//! With a [connection cap](Listener::max_connections) the listener does not let
//! idle connections lock new clients out: at the cap, and at `EMFILE`, it evicts the
//! oldest idle connections, up to a [batch](Listener::eviction_batch) at a time,
//! and past a [share of the cap](Listener::pressure) it shrinks their idle clocks
//! first (see [`capacity`]). Connections with work in flight are never evicted: when
//! only those fill the cap, it stops accepting and lets the kernel's listen backlog
//! hold the rest; it resumes when a connection closes.
//!
//! With a [per-client cap](Listener::max_connections_per_ip) (nginx's
//! `limit_conn`), a client that already holds its share is refused at accept: with an
//! HTTP 503 and `Connection: close` when the listener [speaks plain
//! HTTP](Listener::http_refusal) (`serve()` says so, unless an acceptor such as
//! TLS runs first) and the client's first bytes are an HTTP/1 request; else with a
//! reset, as for an HTTP/2 client with prior knowledge, or beyond 64 refusals being
//! answered at once (a flood from one client then holds no descriptors). IPv6
//! clients are grouped by a prefix, /64 by default: one host usually owns a /64.
//! Refusals are counted in the [registry's snapshot](crate::registry::Snapshot::refused_per_ip).
//!
//! Behind a balancer, the listener reads a [PROXY protocol](ProxyProtocol) header
//! before anything else (off the accept loop, under its own deadline), and the client
//! it names is the connection's peer everywhere, the per-client cap included.
//!
//! # Example
//!
//! ```no_run
//! use std::num::NonZeroUsize;
//! use conn_hygiene::{Listener, Policy, SocketOptions};
//!
//! # async fn dox() -> std::io::Result<()> {
//! let mut listener = Listener::bind(
//!     "127.0.0.1:8080",
//!     SocketOptions::new().nodelay(true),
//!     Policy::default(),
//! )?
//! .max_connections(NonZeroUsize::new(10_000).unwrap());
//! let (stream, peer) = listener.accept().await?;
//! println!("connection {} from {peer}", stream.conn().id());
//! # Ok(()) }
//! ```

#[cfg(feature = "axum")]
mod axum;
pub mod capacity;
mod per_ip;
mod proxy;

use capacity::Full;
pub use capacity::{EVICTION_BATCH, Pressure};

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::options::SocketOptions;
use crate::policy::Policy;
use crate::registry::Registry;
use crate::stream::{HygieneStream, TcpIo};

/// A network of trusted balancers, for [`ProxyProtocol::from_trusted`] (the `ipnet`
/// crate's type: `"10.0.0.0/24".parse()`).
pub use ipnet::IpNet;
pub use proxy::{DEFAULT_HEADER_TIMEOUT, ProxyProtocol};

/// How long to wait for one of our own connections to close after running out of
/// descriptors, before trying again anyway (they may be held elsewhere).
const EXHAUSTED_RETRY: Duration = Duration::from_secs(1);

/// A listener whose connections are [`HygieneStream`]s. See the [module docs](self).
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    options: SocketOptions,
    policy: Policy,
    registry: Registry,
    max_connections: Option<NonZeroUsize>,
    eviction_batch: Option<NonZeroUsize>,
    // A client accepted at the cap, waiting for room.
    waiting: Option<(TcpStream, SocketAddr)>,
    // The soft descriptor limit, read once: pressure on the capacity.
    descriptor_limit: Option<u64>,
    per_ip: per_ip::PerIp,
    proxy: Option<ProxyProtocol>,
    // Connections reading their PROXY protocol header.
    headers: JoinSet<Option<proxy::Proxied>>,
}

/// What one turn of the accept loop brought.
enum Arrival {
    /// A connection served as it is (`client` is the socket's peer).
    Direct(TcpStream, SocketAddr),
    /// A connection whose PROXY protocol header was read.
    Proxied(proxy::Proxied),
    /// A connection now reading its header, or one closed without a header.
    Nothing,
    /// A connection waiting at the cap of `max` live ones, for up to `batch` idle
    /// ones to be evicted.
    AtCap { max: usize, batch: usize },
}

impl Listener {
    /// Binds `addr` with [`bind`](crate::options::bind) (SO_REUSEADDR before bind, the backlog
    /// and buffer sizes of `options`).
    ///
    /// # Errors
    ///
    /// `options` fail [`SocketOptions::validate`], or the bind or a required socket
    /// option failed.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    ///
    /// `addr` is anything `std::net::ToSocketAddrs` takes (`"0.0.0.0:3000"`, a
    /// `SocketAddr`, `("localhost", 3000)`); each resolved address is tried in turn, as
    /// `std::net::TcpListener::bind` does. A host name is resolved on the calling
    /// thread (a blocking lookup): pass an address to avoid it.
    ///
    /// ```no_run
    /// # async fn dox() -> std::io::Result<()> {
    /// use conn_hygiene::{Listener, Policy, SocketOptions};
    ///
    /// let listener = Listener::bind("0.0.0.0:3000", SocketOptions::new(), Policy::default())?;
    /// # Ok(()) }
    /// ```
    pub fn bind(
        addr: impl ToSocketAddrs,
        options: SocketOptions,
        policy: Policy,
    ) -> io::Result<Self> {
        let mut last_error = None;
        for addr in addr.to_socket_addrs()? {
            match crate::options::bind(addr, options) {
                Ok(inner) => return Self::from_tokio(inner, options, policy),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind")))
    }

    /// [`bind`](Self::bind) with the default [`SocketOptions`] and [`Policy`]: the
    /// short form, as `tokio::net::TcpListener::bind(addr)`.
    ///
    /// # Errors
    ///
    /// As [`bind`](Self::bind).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    ///
    /// ```no_run
    /// # async fn dox() -> std::io::Result<()> {
    /// let listener = conn_hygiene::Listener::bind_with_defaults("127.0.0.1:3000")?;
    /// # Ok(()) }
    /// ```
    pub fn bind_with_defaults(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Self::bind(addr, SocketOptions::new(), Policy::default())
    }

    /// Wraps a bound tokio listener. `options` apply to every accepted stream.
    ///
    /// # Errors
    ///
    /// `options` fail [`SocketOptions::validate`]: a value the kernel would refuse
    /// fails here, not on every accepted connection. The error's kind is
    /// [`io::ErrorKind::InvalidInput`] and its message names the option.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use conn_hygiene::{Listener, Policy, SocketOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let tokio_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let options = SocketOptions::new().keepalive_time(Duration::from_millis(500));
    /// let err = Listener::from_tokio(tokio_listener, options, Policy::default()).unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    /// # Ok(()) }
    /// ```
    pub fn from_tokio(
        inner: TcpListener,
        options: SocketOptions,
        policy: Policy,
    ) -> io::Result<Self> {
        options.validate()?;
        Ok(Listener {
            inner,
            options,
            policy,
            registry: Registry::new(),
            max_connections: None,
            eviction_batch: Some(EVICTION_BATCH),
            waiting: None,
            descriptor_limit: descriptor_limit(),
            per_ip: per_ip::PerIp::default(),
            proxy: None,
            headers: JoinSet::new(),
        })
    }

    /// Accept no more than `max` live connections from one client: an IPv4 address,
    /// or an IPv6 [prefix](Self::ipv6_prefix). Excess connections are refused at
    /// accept (see the [module docs](self)).
    #[must_use]
    pub fn max_connections_per_ip(mut self, max: NonZeroUsize) -> Self {
        self.per_ip.max = Some(max);
        self
    }

    /// Renamed to [`max_connections_per_ip`](Self::max_connections_per_ip).
    #[must_use]
    #[deprecated(since = "0.2.0", note = "renamed to `max_connections_per_ip`")]
    pub fn with_max_connections_per_ip(self, max: NonZeroUsize) -> Self {
        self.max_connections_per_ip(max)
    }

    /// How many leading bits of an IPv6 address name one client for the per-client
    /// cap. Defaults to 64. A value above 128 is taken as 128 (each address is its own
    /// client): this builder returns no error, so it clamps.
    #[must_use]
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.per_ip.ipv6_prefix = bits.min(128);
        self
    }

    /// Renamed to [`ipv6_prefix`](Self::ipv6_prefix).
    #[must_use]
    #[deprecated(since = "0.2.0", note = "renamed to `ipv6_prefix`")]
    pub fn with_ipv6_prefix(self, bits: u8) -> Self {
        self.ipv6_prefix(bits)
    }

    /// Whether the listener's connections speak plain HTTP, so that a refused one whose
    /// first bytes are an HTTP/1 request gets an HTTP 503 with `Connection: close`
    /// rather than a reset (an HTTP/2 client is reset). `serve()` sets it, except with
    /// an acceptor (`Serve::with_acceptor`): the bytes of a TLS
    /// connection are not plain HTTP. Defaults to `false`.
    #[must_use]
    pub fn http_refusal(mut self, http: bool) -> Self {
        self.per_ip.http = http;
        self
    }

    /// Renamed to [`http_refusal`](Self::http_refusal).
    #[must_use]
    #[deprecated(since = "0.2.0", note = "renamed to `http_refusal`")]
    pub fn with_http_refusal(self, http: bool) -> Self {
        self.http_refusal(http)
    }

    /// Accept no more than `max` live connections. At the cap the oldest idle
    /// connections are evicted to admit new ones (see
    /// [`eviction_batch`](Self::eviction_batch)); when none is idle, the
    /// kernel backlog holds the rest until a connection closes. `max` is also the
    /// scale of the [pressure](Self::pressure). Leave room under the process's
    /// descriptor limit (`RLIMIT_NOFILE`) for the listener, logs and outbound
    /// connections; at the limit (`EMFILE`) the listener evicts as at the cap.
    #[must_use]
    pub fn max_connections(mut self, max: NonZeroUsize) -> Self {
        self.max_connections = Some(max);
        self.registry.load().set_max(Some(max));
        self
    }

    /// How many idle connections one eviction closes at most, at the
    /// [cap](Self::max_connections) or at `EMFILE`: [`EVICTION_BATCH`] (32,
    /// nginx's) by default; `None` never evicts (the backlog holds new clients until a
    /// connection closes on its own).
    ///
    /// Idle, quiet, and evicted oldest first (by accept; by the end of the last request
    /// where idleness is judged by requests, as over TLS). Quiet: no request began on
    /// it for 100 ms, between two looks of the eviction (a balancer reuses its most
    /// recently used pooled connection first, and a request may be on its way); a
    /// connection busy that way is evicted only when no other is idle, and a client at
    /// the cap may wait 100 ms for the first look to ripen. Idle: an HTTP/1 keep-alive connection
    /// between requests with no byte since its last answer, a connection silent for a
    /// second since accept, an HTTP/2 connection with no request in flight under
    /// `serve()` (under `axum::serve` or tonic an idle HTTP/2 connection is not
    /// evicted, since nothing there can send its GOAWAY: use `serve()`). Never a
    /// request in flight, a request head arriving (bytes read, or waiting unread in the
    /// socket), or a tunnel (WebSocket, CONNECT), whose own clocks bound them.
    ///
    /// An evicted HTTP/1 or silent connection is closed by its own server: the stream
    /// reports the end of reading, the server flushes what it wrote and closes with a
    /// lingering close (our FIN, then what the client sends is discarded until its
    /// FIN), so the client gets our FIN, never a reset. An HTTP/2 one gets GOAWAY. A
    /// connection still open a second later (a client that ignores GOAWAY, an owner
    /// that does not read) has its socket shut down (FIN), unless a request or a head
    /// began on it meanwhile: then it is served, and no longer evicted. The lingering
    /// close of an evicted connection waits 200 ms at most for the client's FIN.
    ///
    /// HTTP allows a server to close an idle persistent connection at any time
    /// (RFC 9112 §9.6), and nginx does so when its connections run out; a client
    /// that trusts an advertised `Keep-Alive: timeout=N` may still send into the
    /// close of a connection evicted, or idle-timed-out under pressure, before N:
    /// at capacity, clients must retry an idempotent request on a new connection
    /// (most do) and must not rely on the header. A client accepted at the cap waits in the listener for the room,
    /// looking again every 100 ms while no connection is idle. Under plain `axum::serve` (no `HygieneLayer`)
    /// no request is counted, so only silent connections can be told idle and
    /// evicted. Evictions are counted in [`Registry::evicted`], the [`Snapshot`](crate::Snapshot),
    /// the shutdown report and the metrics, and logged at warn once a second (target
    /// `conn_hygiene::accept`), as nginx logs "worker_connections are not enough,
    /// reusing connections". Envoy has no eviction: at its overload threshold it stops
    /// accepting.
    #[must_use]
    pub fn eviction_batch(mut self, batch: impl Into<Option<NonZeroUsize>>) -> Self {
        self.eviction_batch = batch.into();
        self
    }

    /// Pressure before the cap ([`Pressure::default`]: from 80 % of the cap, clocks
    /// shrink toward 5 s); `None` turns it off. Past the pressure's share of the
    /// [cap](Self::max_connections), or of the descriptor limit, the idle and
    /// first-byte clocks shrink linearly toward its floor, reached at the cap (Envoy's
    /// scaled timers, its overload manager's `reduce_timeouts`), including the clocks
    /// already running. With a cap set, every request begun meanwhile also retires its
    /// connection after its answer: `Connection: close` on HTTP/1, GOAWAY on HTTP/2
    /// under `serve()` (under `axum::serve` an HTTP/2 connection is not retired: nothing
    /// sends its GOAWAY); a WebSocket or CONNECT upgrade is not retired. Without a cap
    /// pressure is still on, from the descriptor limit (`RLIMIT_NOFILE`) alone, and only
    /// shrinks the clocks: clients told to close would reconnect at once, saving no
    /// descriptor. The soft limit is often 1,024 (systemd's default, which Rust does
    /// not raise): raise it (`LimitNOFILE=`), as the listener says once at bind when
    /// the soft limit is below the hard one. nginx has no such stage: its keep-alive
    /// timeout stays whole until its connections run out. The cost: one atomic load when an idle clock is armed, one
    /// per request, and a little arithmetic per accept and close.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::num::NonZeroUsize;
    /// use std::time::Duration;
    /// use conn_hygiene::listener::Pressure;
    ///
    /// let listener = conn_hygiene::Listener::bind_with_defaults("127.0.0.1:0")?
    ///     .max_connections(NonZeroUsize::new(10_000).unwrap())
    ///     .pressure(Pressure::new(0.9, Duration::from_secs(10))?);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn pressure(self, pressure: impl Into<Option<Pressure>>) -> Self {
        self.registry.load().set_pressure(pressure.into());
        self
    }

    /// Read a [PROXY protocol](ProxyProtocol) header, v1 or v2, before anything else on
    /// the connections `proxy` names, and take the client it names as the peer.
    ///
    /// # Errors
    ///
    /// `proxy`'s header deadline is zero, or its list of trusted balancers is empty:
    /// [`io::ErrorKind::InvalidInput`], naming the setting.
    pub fn proxy_protocol(mut self, proxy: ProxyProtocol) -> io::Result<Self> {
        proxy.validate()?;
        self.proxy = Some(proxy);
        Ok(self)
    }

    /// Renamed to [`max_connections`](Self::max_connections).
    #[must_use]
    #[deprecated(since = "0.2.0", note = "renamed to `max_connections`")]
    pub fn with_max_connections(self, max: NonZeroUsize) -> Self {
        self.max_connections(max)
    }

    /// The live connections.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The policy of every accepted connection.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The bound address.
    ///
    /// # Errors
    ///
    /// As `getsockname(2)`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The wrapped tokio listener.
    pub fn get_ref(&self) -> &TcpListener {
        &self.inner
    }

    /// Accepts the next connection, applies the socket options and registers it.
    ///
    /// # Errors
    ///
    /// Only errors of the listening socket itself (`EBADF`, `EINVAL`, …): connection
    /// errors and resource exhaustion are handled inside. A connection whose required
    /// socket option fails is logged and closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: no connection is lost when the future is dropped.
    pub async fn accept(&mut self) -> io::Result<(HygieneStream<TcpIo>, SocketAddr)> {
        loop {
            // Connections reading their header hold descriptors: they count against
            // the cap.
            let reading = self.headers.len();
            let arrival = match self.waiting.take() {
                Some((socket, peer)) => self.arrive(socket, peer),
                None => {
                    // Without eviction the kernel backlog holds new clients at the cap.
                    let slots = match (self.max_connections, self.eviction_batch) {
                        (Some(max), None) => Some(max.get().saturating_sub(reading)),
                        _ => None,
                    };
                    let accept = accept_socket(
                        &self.inner,
                        &self.registry,
                        slots,
                        self.eviction_batch,
                        self.options,
                    );
                    tokio::select! {
                        Some(read) = self.headers.join_next(), if reading > 0 => {
                            match read {
                                Ok(Some(proxied)) => Arrival::Proxied(proxied),
                                _ => Arrival::Nothing,
                            }
                        }
                        accepted = accept, if slots != Some(0) => {
                            let (socket, peer) = accepted?;
                            self.arrive(socket, peer)
                        }
                    }
                }
            };
            let (socket, peer, balancer) = match arrival {
                Arrival::Direct(socket, peer) => (socket, peer, None),
                Arrival::Proxied(p) => (p.socket, p.client, Some(p.balancer)),
                Arrival::AtCap { max, batch } => {
                    // A client waits at the cap (in `self`, so that this future stays
                    // cancel safe): idle connections make room for it, or a header
                    // being read ends, which frees its slot or brings its client in.
                    tokio::select! {
                        () = capacity::make_room(&self.registry, batch, max) => continue,
                        Some(read) = self.headers.join_next(), if !self.headers.is_empty() => {
                            match read {
                                Ok(Some(p)) => (p.socket, p.client, Some(p.balancer)),
                                _ => continue,
                            }
                        }
                    }
                }
                Arrival::Nothing => continue,
            };
            if let Some(accepted) = self.admit(socket, peer, balancer) {
                return Ok(accepted);
            }
        }
    }

    /// Where an accepted socket goes: to wait at the cap for idle connections to make
    /// room, to read its PROXY protocol header, or straight in.
    fn arrive(&mut self, socket: TcpStream, peer: SocketAddr) -> Arrival {
        if let (Some(max), Some(batch)) = (self.max_connections, self.eviction_batch) {
            let max = max.get().saturating_sub(self.headers.len());
            // A client at its own cap is refused (by `admit`) rather than let evict
            // others' idle connections first. (Behind a PROXY header the client is
            // not known yet: such a connection waits at the cap before its header.)
            let proxied = self.proxy.as_ref().is_some_and(|p| p.expects_header(peer));
            if self.registry.len() >= max && !proxied && self.per_ip.is_full(&self.registry, peer) {
                return Arrival::Direct(socket, peer);
            }
            if self.registry.len() >= max {
                self.waiting = Some((socket, peer));
                return Arrival::AtCap {
                    max,
                    batch: batch.get(),
                };
            }
        }
        match &self.proxy {
            Some(proxy) if proxy.expects_header(peer) => {
                let timeout = proxy.header_timeout();
                self.headers
                    .spawn(proxy::read_header(socket, peer, timeout));
                Arrival::Nothing
            }
            _ => Arrival::Direct(socket, peer),
        }
    }

    /// Takes the client's slot and registers the connection; `None` when the client
    /// is refused. `peer` is the client: the header's when a `balancer` sent one.
    fn admit(
        &self,
        socket: TcpStream,
        peer: SocketAddr,
        balancer: Option<SocketAddr>,
    ) -> Option<(HygieneStream<TcpIo>, SocketAddr)> {
        // Last before the registration, which releases the client's slot: nothing in
        // between can fail and leak it.
        let (socket, client) = self.per_ip.admit(&self.registry, socket, peer).ok()?;
        #[cfg(unix)]
        self.registry.load().note_descriptor(
            std::os::fd::AsRawFd::as_raw_fd(&socket) as u64,
            self.registry.len() + 1,
            self.descriptor_limit,
        );
        let stream = HygieneStream::tcp(socket, peer, self.policy.clone());
        if let Some(balancer) = balancer {
            stream.conn().set_proxied_by(balancer);
        }
        let mut registration = self.registry.register(stream.conn());
        if let Some(client) = client {
            registration = registration.with_client(client);
        }
        tracing::debug!(
            target: "conn_hygiene::accept",
            id = stream.conn().id(),
            %peer,
            live = self.registry.len(),
            "accepted"
        );
        #[cfg(feature = "metrics")]
        crate::metrics::hooks::accepted();
        crate::recycle::watch_age(stream.conn());
        Some((stream.with_registration(registration), peer))
    }
}

/// Accepts the next socket below `slots` live connections, with the socket options
/// applied; handles connection errors and resource exhaustion inside.
async fn accept_socket(
    inner: &TcpListener,
    registry: &Registry,
    slots: Option<usize>,
    eviction_batch: Option<NonZeroUsize>,
    options: SocketOptions,
) -> io::Result<(TcpStream, SocketAddr)> {
    loop {
        if let Some(slots) = slots {
            registry.wait_below(slots).await;
        }
        // Read before accepting, so a close during the error handling is not missed.
        let releases = registry.releases();
        let (socket, peer) = match inner.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                recover(registry, eviction_batch, e, releases).await?;
                continue;
            }
        };
        if let Err(e) = options.apply_to_stream(&socket) {
            tracing::warn!(
                target: "conn_hygiene::accept",
                %peer,
                error = %e,
                "closing accepted connection: required socket option failed"
            );
            continue;
        }
        return Ok((socket, peer));
    }
}

/// Waits out a recoverable accept error, or returns it.
async fn recover(
    registry: &Registry,
    eviction_batch: Option<NonZeroUsize>,
    error: io::Error,
    releases: u64,
) -> io::Result<()> {
    match AcceptError::classify(&error) {
        AcceptError::Connection => {
            tracing::debug!(target: "conn_hygiene::accept", %error, "accept skipped");
            Ok(())
        }
        AcceptError::Exhausted => {
            if registry.load().first_exhaustion_of_burst() {
                tracing::warn!(
                    target: "conn_hygiene::accept",
                    %error,
                    live = registry.len(),
                    "accept paused: out of resources until a connection closes"
                );
            } else {
                tracing::debug!(target: "conn_hygiene::accept", %error, "accept paused");
            }
            #[cfg(feature = "metrics")]
            crate::metrics::hooks::accept_paused();
            let mut retry = EXHAUSTED_RETRY;
            if let Some(batch) = eviction_batch
                && matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
            {
                // As full as at the cap: idle connections make room, and the next look
                // for them comes sooner, while there are some (the descriptors may be
                // held elsewhere).
                registry.load().note_exhausted(registry.len());
                let load = registry.load();
                let evicted = capacity::evict(registry, load, batch.get(), Full::Descriptors);
                if evicted.count > 0 || evicted.settling {
                    retry = capacity::RETRY;
                }
            }
            tokio::select! {
                () = registry.released_since(releases) => {}
                () = tokio::time::sleep(retry) => {}
            }
            Ok(())
        }
        AcceptError::Fatal => Err(error),
    }
}

/// The process's soft descriptor limit, if it has one. Says so once, at info, when
/// the soft limit is below the hard one: Rust's std does not raise it (Go does), and
/// the systemd default of 1,024 puts the listener under pressure near 800 connections.
fn descriptor_limit() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        static TOLD: std::sync::Once = std::sync::Once::new();
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if let Some(soft) = limit.current
            && limit.maximum.is_none_or(|hard| soft < hard)
        {
            TOLD.call_once(|| {
                tracing::info!(
                    target: "conn_hygiene::accept",
                    soft,
                    hard = limit.maximum,
                    "the descriptor limit (RLIMIT_NOFILE) is below its hard limit: \
                     raise it (LimitNOFILE=, ulimit -n) for more connections; near it \
                     the idle clocks shrink (see Listener::pressure)"
                );
            });
        }
        limit.current
    }
    #[cfg(not(target_os = "linux"))]
    None
}

enum AcceptError {
    Connection,
    Exhausted,
    Fatal,
}

impl AcceptError {
    fn classify(error: &io::Error) -> AcceptError {
        match error.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                AcceptError::Exhausted
            }
            Some(
                libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::ECONNREFUSED
                | libc::EPROTO
                | libc::EPERM
                | libc::ETIMEDOUT
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH,
            ) => AcceptError::Connection,
            _ => match error.kind() {
                io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionRefused
                | io::ErrorKind::Interrupted
                | io::ErrorKind::WouldBlock => AcceptError::Connection,
                io::ErrorKind::OutOfMemory => AcceptError::Exhausted,
                _ => AcceptError::Fatal,
            },
        }
    }
}
