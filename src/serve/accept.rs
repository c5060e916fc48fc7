//! Acceptors: what runs between TCP accept and HTTP, such as a TLS handshake.
//!
//! [`Serve::with_acceptor`](super::Serve::with_acceptor) takes an async function from
//! the accepted [`HygieneStream`] to any `AsyncRead + AsyncWrite` (a TLS stream, for
//! instance). It runs inside the connection's supervised task, so the handshake reads
//! through the stream's clocks (first byte, idle), FIN detection watches the TCP
//! socket underneath, the drain deadline covers it, and the whole handshake is bounded
//! by [`ServeSettingsBuilder::handshake_timeout`](super::ServeSettingsBuilder::handshake_timeout). What it returns,
//! an [`Accepted`], may name the protocol negotiated by ALPN; the server then serves
//! that protocol without sniffing.

use std::fmt;
use std::future::{Future, Ready};
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::stream::{HygieneStream, TcpIo};

/// An HTTP version a connection is served with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1 (and 1.0).
    Http1,
    /// HTTP/2.
    Http2,
}

impl Protocol {
    /// The protocol an ALPN identifier names: `h2` is HTTP/2, `http/1.1` and
    /// `http/1.0` are HTTP/1; anything else, or no ALPN, is `None` (the server then
    /// sniffs the first bytes).
    ///
    /// ```
    /// use conn_hygiene::serve::Protocol;
    ///
    /// assert_eq!(Protocol::from_alpn(Some(b"h2")), Some(Protocol::Http2));
    /// assert_eq!(Protocol::from_alpn(Some(b"http/1.1")), Some(Protocol::Http1));
    /// assert_eq!(Protocol::from_alpn(None), None);
    /// ```
    pub fn from_alpn(alpn: Option<&[u8]>) -> Option<Protocol> {
        match alpn? {
            b"h2" => Some(Protocol::Http2),
            b"http/1.1" | b"http/1.0" => Some(Protocol::Http1),
            _ => None,
        }
    }
}

/// A connection an acceptor made ready for HTTP: its I/O and, when known, the
/// protocol to serve it with.
#[derive(Debug)]
pub struct Accepted<Io> {
    io: Io,
    protocol: Option<Protocol>,
}

impl<Io> Accepted<Io> {
    /// `io`, with its protocol found by sniffing its first bytes.
    pub fn new(io: Io) -> Self {
        Accepted { io, protocol: None }
    }

    /// Serves the connection with `protocol` (typically from
    /// [`Protocol::from_alpn`]); `None` sniffs. A server restricted with
    /// [`http1_only`](super::ServeSettingsBuilder::http1_only) or
    /// [`http2_only`](super::ServeSettingsBuilder::http2_only) serves its protocol regardless.
    #[must_use]
    pub fn with_protocol(mut self, protocol: Option<Protocol>) -> Self {
        self.protocol = protocol;
        self
    }

    /// The protocol to serve with, if known.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    /// The I/O.
    pub fn into_inner(self) -> Io {
        self.io
    }
}

/// Turns an accepted TCP stream into the I/O that HTTP is served on. Implemented by
/// [`Plain`] and, through [`Serve::with_acceptor`](super::Serve::with_acceptor), by
/// async functions ([`AcceptFn`]).
pub trait Acceptor: Send + Sync + 'static {
    /// The I/O HTTP is served on.
    type Io: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    /// The handshake.
    type Future: Future<Output = io::Result<Accepted<Self::Io>>> + Send + 'static;

    /// Starts the handshake on `stream`.
    fn accept(&self, stream: HygieneStream<TcpIo>) -> Self::Future;
}

/// The default acceptor: HTTP over the TCP stream itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Acceptor for Plain {
    type Io = HygieneStream<TcpIo>;
    type Future = Ready<io::Result<Accepted<HygieneStream<TcpIo>>>>;

    fn accept(&self, stream: HygieneStream<TcpIo>) -> Self::Future {
        std::future::ready(Ok(Accepted::new(stream)))
    }
}

/// An acceptor made of an async function; see
/// [`Serve::with_acceptor`](super::Serve::with_acceptor).
#[derive(Clone)]
pub struct AcceptFn<F> {
    f: F,
}

impl<F> AcceptFn<F> {
    pub(super) fn new(f: F) -> Self {
        AcceptFn { f }
    }
}

impl<F> fmt::Debug for AcceptFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcceptFn").finish_non_exhaustive()
    }
}

impl<F, Fut, Io> Acceptor for AcceptFn<F>
where
    F: Fn(HygieneStream<TcpIo>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<Accepted<Io>>> + Send + 'static,
    Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Io = Io;
    type Future = Fut;

    fn accept(&self, stream: HygieneStream<TcpIo>) -> Fut {
        (self.f)(stream)
    }
}
