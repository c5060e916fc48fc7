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
//! With a [connection cap](Listener::max_connections) the listener stops
//! accepting at the cap and lets the kernel's listen backlog hold the rest; it resumes
//! when a connection closes.
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
mod per_ip;
mod proxy;

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

    /// Accept no more than `max` live connections; the kernel backlog holds the rest.
    #[must_use]
    pub fn max_connections(mut self, max: NonZeroUsize) -> Self {
        self.max_connections = Some(max);
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
            let slots = self
                .max_connections
                .map(|max| max.get().saturating_sub(self.headers.len()));
            let arrival = tokio::select! {
                Some(read) = self.headers.join_next(), if !self.headers.is_empty() => {
                    match read {
                        Ok(Some(proxied)) => Arrival::Proxied(proxied),
                        _ => Arrival::Nothing,
                    }
                }
                accepted = accept_socket(&self.inner, &self.registry, slots, self.options), if slots != Some(0) => {
                    let (socket, peer) = accepted?;
                    match &self.proxy {
                        Some(proxy) if proxy.expects_header(peer) => {
                            let timeout = proxy.header_timeout();
                            self.headers.spawn(proxy::read_header(socket, peer, timeout));
                            Arrival::Nothing
                        }
                        _ => Arrival::Direct(socket, peer),
                    }
                }
            };
            let (socket, peer, balancer) = match arrival {
                Arrival::Direct(socket, peer) => (socket, peer, None),
                Arrival::Proxied(p) => (p.socket, p.client, Some(p.balancer)),
                Arrival::Nothing => continue,
            };
            if let Some(accepted) = self.admit(socket, peer, balancer) {
                return Ok(accepted);
            }
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
                recover(registry, e, releases).await?;
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
async fn recover(registry: &Registry, error: io::Error, releases: u64) -> io::Result<()> {
    match AcceptError::classify(&error) {
        AcceptError::Connection => {
            tracing::debug!(target: "conn_hygiene::accept", %error, "accept skipped");
            Ok(())
        }
        AcceptError::Exhausted => {
            tracing::warn!(
                target: "conn_hygiene::accept",
                %error,
                live = registry.len(),
                "accept paused: out of resources until a connection closes"
            );
            #[cfg(feature = "metrics")]
            crate::metrics::hooks::accept_paused();
            tokio::select! {
                () = registry.released_since(releases) => {}
                () = tokio::time::sleep(EXHAUSTED_RETRY) => {}
            }
            Ok(())
        }
        AcceptError::Fatal => Err(error),
    }
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
