//! Abrupt peers: clients that misbehave on purpose, on real sockets.
//!
//! Each constructor of [`Peer`] names one misbehaviour; the builder tunes it and
//! [`Peer::start`] connects and plays it in a background task. The returned
//! [`PeerHandle`] says when the misbehaviour began ([`PeerHandle::settled`]), what the
//! server sent back and how the connection ended ([`PeerHandle::response`]), and lets
//! the test end the connection itself ([`PeerHandle::close`], [`PeerHandle::reset`]).
//! Dropping the handle closes the socket.

use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use socket2::SockRef;

use super::kernel::{socket_state, wait_for_socket};
use crate::census::TcpState;
use tokio::io::Interest;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};

/// The request most peers send unless told otherwise: `GET {path}`.
fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

/// The head a slowloris peer starts with; it never sends the blank line that ends it.
fn slowloris_head(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n").into_bytes()
}

/// What a slowloris peer keeps sending after its head, one byte at a time, forever.
const SLOWLORIS_FILLER: &[u8] = b"X-Slowloris: 1\r\n";

/// Bytes that no HTTP server can parse: a TLS record header, then binary noise.
const GARBAGE: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xff\xfe\x00\x00\
\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\
\x90\x91\x92\x93\x94\x95\x96\x97\x98\x99\x9a\x9b\x9c\x9d\x9e\x9f\
\r\n\r\n\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\r\n\r\n";

/// The receive buffer a never-reading peer asks for, before `connect` so that the
/// window it advertises is small from the handshake on. The kernel doubles it and
/// applies its own minimum (on Linux `SO_RCVBUF`, in bytes, at least 2304).
const NEVER_READ_RECV_BUFFER: u32 = 4096;

/// The misbehaviour a [`Peer`] plays. See the constructor of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeerKind {
    /// [`Peer::fin_after_request`].
    FinAfterRequest,
    /// [`Peer::fin_mid_body`].
    FinMidBody,
    /// [`Peer::rst_mid_request`].
    RstMidRequest,
    /// [`Peer::slowloris`].
    Slowloris,
    /// [`Peer::slow_body`].
    SlowBody,
    /// [`Peer::stalled_body`].
    StalledBody,
    /// [`Peer::silent_connect`].
    SilentConnect,
    /// [`Peer::never_read`].
    NeverRead,
    /// [`Peer::pipelined_then_fin`].
    PipelinedThenFin,
    /// [`Peer::garbage`].
    Garbage,
    /// [`Peer::idle_keep_alive`].
    IdleKeepAlive,
    /// [`Peer::vanish`].
    Vanish,
}

impl PeerKind {
    /// Whether the kind builds its bytes from a request head with a body
    /// ([`Peer::path`], [`Peer::content_length`], [`Peer::body_sent`]).
    fn has_body(self) -> bool {
        matches!(
            self,
            PeerKind::FinMidBody
                | PeerKind::RstMidRequest
                | PeerKind::SlowBody
                | PeerKind::StalledBody
        )
    }
}

/// Installs packet drop for a [`Peer::vanish`] connection; see [`Peer::blackhole`].
type Blackhole = Box<dyn FnOnce(SocketAddr, SocketAddr) -> io::Result<()> + Send>;

/// A builder for one abrupt peer. Start with a constructor, tune it, then
/// [`start`](Self::start) it. See the [module docs](super).
///
/// Options that do not apply to a kind are ignored; each constructor lists the ones
/// that do.
#[must_use = "a peer does nothing until started"]
pub struct Peer {
    kind: PeerKind,
    addr: SocketAddr,
    request: Option<Vec<u8>>,
    path: String,
    content_length: usize,
    body_sent: usize,
    interval: Duration,
    pause: Duration,
    repeat: usize,
    recv_buffer: Option<u32>,
    blackhole: Option<Blackhole>,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("kind", &self.kind)
            .field("addr", &self.addr)
            .field("request_len", &self.request.as_ref().map(Vec::len))
            .field("path", &self.path)
            .field("content_length", &self.content_length)
            .field("body_sent", &self.body_sent)
            .field("interval", &self.interval)
            .field("pause", &self.pause)
            .field("repeat", &self.repeat)
            .field("recv_buffer", &self.recv_buffer)
            .field("blackhole", &self.blackhole.is_some())
            .finish_non_exhaustive()
    }
}

impl Peer {
    fn new(kind: PeerKind, addr: SocketAddr) -> Peer {
        Peer {
            kind,
            addr,
            request: None,
            path: "/".to_owned(),
            content_length: 1000,
            body_sent: 10,
            interval: Duration::from_millis(100),
            pause: Duration::ZERO,
            repeat: 2,
            recv_buffer: (kind == PeerKind::NeverRead).then_some(NEVER_READ_RECV_BUFFER),
            blackhole: None,
        }
    }

    /// Sends a whole request, then FIN (`shutdown(Write)`), and reads the answer until
    /// the server closes.
    ///
    /// A legitimate half-closing client (`nc -N`, some proxies) does exactly this, and
    /// so does a client that gave up on a request whose handler never answers.
    /// Settles when the FIN is sent. Options: [`request`](Self::request) (defaults to
    /// `GET` [`path`](Self::path)), [`pause`](Self::pause) before the FIN.
    ///
    /// ```no_run
    /// use conn_hygiene::testing::{End, Peer};
    ///
    /// # async fn dox(addr: std::net::SocketAddr) -> std::io::Result<()> {
    /// let peer = Peer::fin_after_request(addr)
    ///     .request(&b"GET /sleep/200 HTTP/1.1\r\nHost: x\r\n\r\n"[..])
    ///     .start()
    ///     .await?;
    /// let answer = peer.response().await;
    /// assert_eq!(answer.status(), Some(200));
    /// assert_eq!(answer.end(), End::Eof);
    /// # Ok(()) }
    /// ```
    pub fn fin_after_request(addr: SocketAddr) -> Peer {
        Peer::new(PeerKind::FinAfterRequest, addr)
    }

    /// Sends a request head announcing `Content-Length: N`, part of the body, then FIN,
    /// and reads until the server closes.
    ///
    /// Settles when the FIN is sent. Options: [`path`](Self::path) (`POST`, defaults
    /// to `/`), [`content_length`](Self::content_length) (defaults to 1000),
    /// [`body_sent`](Self::body_sent) (defaults to 10), [`pause`](Self::pause) before
    /// the FIN, or [`request`](Self::request) for the exact bytes sent before the FIN.
    ///
    /// ```no_run
    /// use conn_hygiene::testing::Peer;
    ///
    /// # async fn dox(addr: std::net::SocketAddr) -> std::io::Result<()> {
    /// let peer = Peer::fin_mid_body(addr)
    ///     .path("/upload")
    ///     .content_length(1 << 20)
    ///     .body_sent(4096)
    ///     .start()
    ///     .await?;
    /// println!("the server ended it with {:?}", peer.response().await.end());
    /// # Ok(()) }
    /// ```
    pub fn fin_mid_body(addr: SocketAddr) -> Peer {
        Peer::new(PeerKind::FinMidBody, addr)
    }

    /// Sends a partial request (a head announcing `Content-Length: N` and part of the
    /// body), then resets the connection: `SO_LINGER` zero and close, so the kernel
    /// sends RST.
    ///
    /// Settles just before the reset; the response then ends with [`End::Dropped`].
    /// Options: as [`fin_mid_body`](Self::fin_mid_body), with [`pause`](Self::pause)
    /// before the reset (give the server time to start the handler).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use conn_hygiene::testing::Peer;
    ///
    /// # async fn dox(addr: std::net::SocketAddr) -> std::io::Result<()> {
    /// let peer = Peer::rst_mid_request(addr)
    ///     .path("/echo")
    ///     .pause(Duration::from_millis(100))
    ///     .start()
    ///     .await?;
    /// let reset_at = peer.settled().await;
    /// # let _ = reset_at;
    /// # Ok(()) }
    /// ```
    pub fn rst_mid_request(addr: SocketAddr) -> Peer {
        Peer::new(PeerKind::RstMidRequest, addr)
    }

    /// Sends a request head one byte every [`interval`](Self::interval), and never
    /// ends it: after the head it keeps sending `X-Slowloris: 1` header lines, byte by
    /// byte, until the server closes. Reads whatever the server answers meanwhile.
    ///
    /// Settles when the first byte is sent (a server's head clock starts there).
    /// Options: [`interval`](Self::interval) (defaults to 100 ms),
    /// [`request`](Self::request) for the head's start (without the blank line that
    /// would end it; defaults to `GET` [`path`](Self::path) with a `Host`).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use conn_hygiene::testing::Peer;
    ///
    /// # async fn dox(addr: std::net::SocketAddr) -> std::io::Result<()> {
    /// let peer = Peer::slowloris(addr)
    ///     .interval(Duration::from_millis(50))
    ///     .start()
    ///     .await?;
    /// let answer = peer.response().await; // the server's header timeout ended it
    /// # let _ = answer;
    /// # Ok(()) }
    /// ```
    pub fn slowloris(addr: SocketAddr) -> Peer {
        Peer::new(PeerKind::Slowloris, addr)
    }

    /// Sends a request head announcing `Content-Length: N`, then the body one byte
    /// every [`interval`](Self::interval), reading the answer meanwhile and until the
    /// server closes.
    ///
    /// Settles when the head is sent. Options: [`path`](Self::path) (`POST`, defaults
    /// to `/`), [`content_length`](Self::content_length) (defaults to 1000),
    /// [`interval`](Self::interval) (defaults to 100 ms), or
    /// [`request`](Self::request) for the exact head.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use conn_hygiene::testing::Peer;
    ///
    /// # async fn dox(addr: std::net::SocketAddr) -> std::io::Result<()> {
    /// let peer = Peer::slow_body(addr)
    ///     .path("/echo")
    ///     .content_length(20)
    ///     .interval(Duration::from_millis(200))
    ///     .start()
    ///     .await?;
    /// assert_eq!(peer.response().await.status(), Some(200));
    /// # Ok(()) }
    /// ```
    pub fn slow_body(addr: SocketAddr) -> Peer {
        Peer::new(PeerKind::SlowBody, addr)
    }

    /// Sends a request head announcing `Content-Length: N` and part of the body, then
    /// stays silent with the connection open, reading until the server closes.
    ///
    /// Settles when the part is sent (a server's body-stall clock runs from there).
    /// Options: as [`fin_mid_body`](Self::fin_mid_body).
    ///
    /// ```no_run
    /// use conn_hygiene::testing::Peer;
    ///
    /// # async fn dox(addr: std::net::SocketAddr) -> std::io::Result<()> {
    /// let peer = Peer::stalled_body(addr)
    ///     .path("/echo")
    ///     .content_length(1000)
    ///     .body_sent(10)
    ///     .start()
    ///     .await?;
    /// let stalled_at = peer.settled().await;
    /// # let _ = stalled_at;
    /// # Ok(()) }
    /// ```
    pub fn stalled_body(addr: SocketAddr) -> Peer {
        Peer::new(PeerKind::StalledBody, addr)
    }

    /// Connects and sends nothing, reading until the server closes.
    ///
    /// Settles once connected. No options.
    ///
    /// ```no_run
    /// use conn_hygiene::testing::Peer;
    ///
    /// # async fn dox(addr: std::net::SocketAddr) -> std::io::Result<()> {
    /// let peer = Peer::silent_connect(addr).start().await?;
    /// println!("closed with {:?}", peer.response().await.end());
    /// # Ok(()) }
    /// ```
    pub fn silent_connect(addr: SocketAddr) -> Peer {
        Peer::new(PeerKind::SilentConnect, addr)
    }

    /// Asks for a tiny receive buffer before connecting, sends a request, and never
    /// reads: once the answer fills both sides' buffers the server's writes stall.
    ///
    /// The peer still notices, without reading, when the server closes or resets:
    /// its response then has no bytes and ends with [`End::Eof`] or [`End::Reset`].
    /// Settles when the request is sent. Options: [`request`](Self::request) (use one
    /// whose answer is far larger than the buffers; defaults to `GET`
    /// [`path`](Self::path)),
    /// [`recv_buffer_size`](Self::recv_buffer_size) (defaults to 4096).
    ///
    /// ```no_run
    /// use conn_hygiene::testing::{End, Peer};
    ///
    /// # async fn dox(addr: std::net::SocketAddr) -> std::io::Result<()> {
    /// let peer = Peer::never_read(addr)
    ///     .request(&b"GET /big/50000000 HTTP/1.1\r\nHost: x\r\n\r\n"[..])
    ///     .start()
    ///     .await?;
    /// // A server with a write-stall timeout resets the connection.
    /// assert_eq!(peer.response().await.end(), End::Reset);
    /// # Ok(()) }
    /// ```
    pub fn never_read(addr: SocketAddr) -> Peer {
        Peer::new(PeerKind::NeverRead, addr)
    }

    /// Sends [`repeat`](Self::repeat) copies of a request in one write (HTTP/1.1
    /// pipelining), then FIN, and reads until the server closes.
    ///
    /// Settles when the FIN is sent. Options: [`request`](Self::request) (defaults to
    /// `GET` [`path`](Self::path)), [`repeat`](Self::repeat) (defaults to 2),
    /// [`pause`](Self::pause) before the FIN. For different requests, give them all,
    /// concatenated, to `request` and set `repeat(1)`.
    ///
    /// ```no_run
    /// use conn_hygiene::testing::Peer;
    ///
    /// # async fn dox(addr: std::net::SocketAddr) -> std::io::Result<()> {
    /// let peer = Peer::pipelined_then_fin(addr)
    ///     .request(&b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"[..])
    ///     .repeat(1)
    ///     .start()
    ///     .await?;
    /// # let _ = peer;
    /// # Ok(()) }
    /// ```
    pub fn pipelined_then_fin(addr: SocketAddr) -> Peer {
        Peer::new(PeerKind::PipelinedThenFin, addr)
    }

    /// Sends bytes no HTTP server can parse, keeps the connection open, and reads
    /// until the server closes.
    ///
    /// Settles when the bytes are sent. Options: [`request`](Self::request) for other
    /// garbage (an oversized head, for example).
    ///
    /// ```no_run
    /// use conn_hygiene::testing::Peer;
    ///
    /// # async fn dox(addr: std::net::SocketAddr) -> std::io::Result<()> {
    /// let answer = Peer::garbage(addr).start().await?.response().await;
    /// assert!(matches!(answer.status(), Some(400) | None));
    /// # Ok(()) }
    /// ```
    pub fn garbage(addr: SocketAddr) -> Peer {
        Peer::new(PeerKind::Garbage, addr)
    }

    /// Sends one whole request, reads its whole answer (by `Content-Length` or chunked
    /// framing), then stays silent with the connection open, reading until the server
    /// closes.
    ///
    /// Settles when the answer has been read (a server's idle clock runs from there).
    /// Options: [`request`](Self::request) (defaults to `GET` [`path`](Self::path)).
    ///
    /// ```no_run
    /// use conn_hygiene::testing::Peer;
    ///
    /// # async fn dox(addr: std::net::SocketAddr) -> std::io::Result<()> {
    /// let peer = Peer::idle_keep_alive(addr).start().await?;
    /// let idle_since = peer.settled().await;
    /// let answer = peer.response().await;
    /// println!("{:?} after {:?} idle", answer.end(), answer.ended_at().map(|t| t - idle_since.unwrap()));
    /// # Ok(()) }
    /// ```
    pub fn idle_keep_alive(addr: SocketAddr) -> Peer {
        Peer::new(PeerKind::IdleKeepAlive, addr)
    }

    /// Sends a request, then vanishes: no FIN, no RST, no byte ever again, as a host
    /// that lost power or a path through a dead NAT.
    ///
    /// A socket cannot do that by itself: packets must be dropped between the two
    /// ends (a network namespace and a firewall rule, which need root). The kit does
    /// not fake it: without a [`blackhole`](Self::blackhole) hook,
    /// [`start`](Self::start) fails with [`io::ErrorKind::Unsupported`]. With one, the
    /// peer connects, sends its request, calls the hook, then holds its socket open
    /// and silent until [`close`](PeerHandle::close)d, and never reads.
    ///
    /// Settles when the hook has returned. Options: [`request`](Self::request)
    /// (defaults to `GET` [`path`](Self::path)), [`blackhole`](Self::blackhole).
    ///
    /// ```no_run
    /// use conn_hygiene::testing::Peer;
    ///
    /// # async fn dox(addr: std::net::SocketAddr) -> std::io::Result<()> {
    /// let peer = Peer::vanish(addr)
    ///     .blackhole(|local, remote| {
    ///         // Install a rule dropping every packet between `local` and `remote`,
    ///         // for example with nft(8) inside a network namespace.
    ///         # let _ = (local, remote);
    ///         Ok(())
    ///     })
    ///     .start()
    ///     .await?;
    /// # let _ = peer;
    /// # Ok(()) }
    /// ```
    pub fn vanish(addr: SocketAddr) -> Peer {
        Peer::new(PeerKind::Vanish, addr)
    }

    /// The bytes sent in full before the peer's misbehaviour; each constructor says
    /// what they are for its kind and what the default is.
    pub fn request(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.request = Some(bytes.into());
        self
    }

    /// The path of the request a peer builds when no [`request`](Self::request) is
    /// given: a `GET` for most kinds, a `POST` for the body kinds
    /// ([`fin_mid_body`](Self::fin_mid_body), [`rst_mid_request`](Self::rst_mid_request),
    /// [`slow_body`](Self::slow_body), [`stalled_body`](Self::stalled_body)). Defaults
    /// to `/`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The `Content-Length` the body kinds announce, in bytes. Defaults to 1000.
    pub fn content_length(mut self, bytes: usize) -> Self {
        self.content_length = bytes;
        self
    }

    /// How many body bytes [`fin_mid_body`](Self::fin_mid_body),
    /// [`rst_mid_request`](Self::rst_mid_request) and
    /// [`stalled_body`](Self::stalled_body) send; capped at the content length.
    /// Defaults to 10.
    pub fn body_sent(mut self, bytes: usize) -> Self {
        self.body_sent = bytes;
        self
    }

    /// The pace of [`slowloris`](Self::slowloris) and [`slow_body`](Self::slow_body):
    /// one byte per interval. Defaults to 100 ms.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long to wait between the last byte sent and the FIN or RST of the kinds
    /// that end with one. Defaults to zero.
    pub fn pause(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    /// How many copies of the request [`pipelined_then_fin`](Self::pipelined_then_fin)
    /// sends. Defaults to 2.
    pub fn repeat(mut self, copies: usize) -> Self {
        self.repeat = copies;
        self
    }

    /// `SO_RCVBUF`, in bytes, set before connecting (the kernel doubles it and
    /// clamps it). Defaults to 4096 for [`never_read`](Self::never_read) and to the
    /// system default for the others.
    pub fn recv_buffer_size(mut self, bytes: u32) -> Self {
        self.recv_buffer = Some(bytes);
        self
    }

    /// The hook that makes a [`vanish`](Self::vanish) peer vanish: called with the
    /// peer's local address and the server's address once the request is sent, it
    /// must drop every packet between them in both directions (and is responsible for
    /// removing that rule later). It runs on the task that calls
    /// [`start`](Self::start), so it should be quick; an error from it fails `start`.
    pub fn blackhole(
        mut self,
        hook: impl FnOnce(SocketAddr, SocketAddr) -> io::Result<()> + Send + 'static,
    ) -> Self {
        self.blackhole = Some(Box::new(hook));
        self
    }

    /// The kind of misbehaviour.
    pub fn kind(&self) -> PeerKind {
        self.kind
    }

    /// Connects to the server and starts misbehaving in a background task.
    ///
    /// # Errors
    ///
    /// The socket could not be created or connected, a socket option failed, the
    /// [`vanish`](Self::vanish) peer has no [`blackhole`](Self::blackhole) hook
    /// (`Unsupported`), or the hook failed.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start(self) -> io::Result<PeerHandle> {
        if self.kind == PeerKind::Vanish && self.blackhole.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "Peer::vanish needs packets dropped between the peer and the server \
                 (a network namespace and a firewall rule, as root); pass a hook with \
                 Peer::blackhole: the kit does not fake a vanishing peer",
            ));
        }
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(bytes) = self.recv_buffer {
            socket.set_recv_buffer_size(bytes)?;
        }
        let stream = socket.connect(self.addr).await?;
        let local = stream.local_addr()?;
        let server = stream.peer_addr()?;
        let kind = self.kind;
        let (script, blackhole) = Script::from_peer(self);
        if let Some(hook) = blackhole {
            write_all(&stream, &script.bytes)
                .await
                .map_err(|end| end.into_error("sending the request"))?;
            hook(local, script.remote)?;
        }
        let (progress, watcher) = watch::channel(Progress::default());
        let (close, close_rx) = oneshot::channel();
        let task = tokio::spawn(drive(stream, script, progress, close_rx));
        Ok(PeerHandle {
            kind,
            local,
            server,
            progress: watcher,
            close: Some(close),
            task,
        })
    }
}

/// How the connection of a peer ended, as the peer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum End {
    /// The server closed its side gracefully (FIN): a read returned end of file.
    Eof,
    /// The server reset the connection (RST): a read or write failed with
    /// `ConnectionReset`, `ConnectionAborted` or `BrokenPipe`.
    Reset,
    /// Still open when asked ([`PeerHandle::response_within`]).
    Open,
    /// This peer ended the connection itself before the server did:
    /// [`PeerHandle::close`], [`PeerHandle::reset`] or the scripted RST of
    /// [`Peer::rst_mid_request`].
    Dropped,
    /// Another I/O error.
    Error(io::ErrorKind),
}

impl End {
    fn of(error: &io::Error) -> End {
        match error.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => End::Reset,
            kind => End::Error(kind),
        }
    }

    fn into_error(self, what: &str) -> io::Error {
        let kind = match self {
            End::Reset => io::ErrorKind::ConnectionReset,
            End::Eof => io::ErrorKind::UnexpectedEof,
            End::Error(kind) => kind,
            End::Open | End::Dropped => io::ErrorKind::Other,
        };
        io::Error::new(kind, format!("{what}: connection ended ({self:?})"))
    }
}

/// What a peer received and how its connection ended. See [`PeerHandle::response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerResponse {
    bytes: Vec<u8>,
    end: End,
    ended_at: Option<Instant>,
}

impl PeerResponse {
    /// Every byte received, in order (a never-reading peer receives none).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How the connection ended.
    pub fn end(&self) -> End {
        self.end
    }

    /// When the peer saw the end; `None` while [`End::Open`].
    pub fn ended_at(&self) -> Option<Instant> {
        self.ended_at
    }

    /// The status code of the first HTTP/1 response received, if any.
    pub fn status(&self) -> Option<u16> {
        let rest = self.bytes.strip_prefix(b"HTTP/1.")?;
        let code = rest.get(2..5)?;
        std::str::from_utf8(code).ok()?.parse().ok()
    }

    /// The bytes after the first response's head (raw: chunked framing is kept, and a
    /// pipelined second response follows the first).
    pub fn body(&self) -> &[u8] {
        match find(&self.bytes, b"\r\n\r\n") {
            Some(at) => &self.bytes[at + 4..],
            None => &[],
        }
    }

    /// The bytes received, as text (invalid UTF-8 replaced), for messages and
    /// `contains` checks.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// A running abrupt peer. Dropping it closes the socket. See [`Peer`].
#[must_use = "dropping the handle closes the peer's socket"]
pub struct PeerHandle {
    kind: PeerKind,
    local: SocketAddr,
    server: SocketAddr,
    progress: watch::Receiver<Progress>,
    close: Option<oneshot::Sender<CloseMode>>,
    task: JoinHandle<()>,
}

impl fmt::Debug for PeerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let progress = self.progress.borrow();
        f.debug_struct("PeerHandle")
            .field("kind", &self.kind)
            .field("local", &self.local)
            .field("server", &self.server)
            .field("received", &progress.received.len())
            .field("settled", &progress.settled)
            .field("end", &progress.end)
            .finish_non_exhaustive()
    }
}

impl Drop for PeerHandle {
    fn drop(&mut self) {
        // Dropping the task drops the socket: a close, as when a test ends.
        self.task.abort();
    }
}

impl PeerHandle {
    /// The kind of misbehaviour.
    pub fn kind(&self) -> PeerKind {
        self.kind
    }

    /// The peer's own address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The peer's own port: the remote port of the server's socket for this
    /// connection, to find it in a census.
    pub fn local_port(&self) -> u16 {
        self.local.port()
    }

    /// The server's address, as this connection reached it (the server end's own
    /// address in the kernel's table).
    pub fn server_addr(&self) -> SocketAddr {
        self.server
    }

    /// The kernel's state of the server's end of this connection; `None` once the
    /// kernel has no such socket (it was reset, or closed and past TIME_WAIT).
    ///
    /// It names this one connection: no other socket on the host, even one with the
    /// server's port number, is mistaken for it.
    ///
    /// # Errors
    ///
    /// The kernel's socket tables could not be read.
    pub fn server_side(&self) -> io::Result<Option<TcpState>> {
        socket_state(self.server, self.local)
    }

    /// Waits until `accept` holds for [`server_side`](Self::server_side), polling the
    /// kernel as [`wait_for_socket`] does.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use conn_hygiene::census::TcpState;
    /// use conn_hygiene::testing::Peer;
    ///
    /// # async fn dox(addr: std::net::SocketAddr) -> std::io::Result<()> {
    /// let peer = Peer::fin_after_request(addr).path("/stuck").start().await?;
    /// // The server must not leave its end in CLOSE_WAIT for more than five seconds.
    /// let state = peer
    ///     .wait_server_side(Duration::from_secs(5), |s| s != Some(TcpState::CloseWait))
    ///     .await;
    /// assert!(state.is_ok(), "still {state:?}");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// `Err` carries the last state when `accept` never held.
    ///
    /// # Panics
    ///
    /// When the kernel's socket tables cannot be read.
    pub async fn wait_server_side(
        &self,
        within: Duration,
        accept: impl FnMut(Option<TcpState>) -> bool,
    ) -> Result<Option<TcpState>, Option<TcpState>> {
        wait_for_socket(self.server, self.local, within, accept).await
    }

    /// Waits until the peer begins the misbehaviour it was built for, and returns when
    /// that happened (each constructor says when). `None` if the connection ended
    /// first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn settled(&self) -> Option<Instant> {
        let mut progress = self.progress.clone();
        // The sender goes away without an end only if the task was aborted.
        let _ = progress
            .wait_for(|p| p.settled.is_some() || p.end.is_some())
            .await;
        progress.borrow().settled
    }

    /// Waits until the connection ends, and returns what the peer received.
    ///
    /// A peer that only ever waits (a silent or never-reading one, against a server
    /// with no timeout) never ends: bound this with
    /// [`response_within`](Self::response_within) or `tokio::time::timeout`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the bytes keep accumulating in the background.
    pub async fn response(&self) -> PeerResponse {
        let mut progress = self.progress.clone();
        // The sender goes away without an end only if the task was aborted.
        let _ = progress.wait_for(|p| p.end.is_some()).await;
        snapshot(&progress.borrow(), End::Dropped)
    }

    /// As [`response`](Self::response), but gives up after `within` and then reports
    /// what was received so far, with [`End::Open`].
    pub async fn response_within(&self, within: Duration) -> PeerResponse {
        match tokio::time::timeout(within, self.response()).await {
            Ok(response) => response,
            Err(_) => snapshot(&self.progress.borrow(), End::Open),
        }
    }

    /// Closes the socket (FIN, or RST if unread bytes are left in its receive buffer,
    /// as the kernel does) and waits until it is closed.
    pub async fn close(mut self) {
        self.finish(CloseMode::Close).await;
    }

    /// Resets the connection (`SO_LINGER` zero, then close) and waits until the socket
    /// is closed.
    pub async fn reset(mut self) {
        self.finish(CloseMode::Reset).await;
    }

    async fn finish(&mut self, mode: CloseMode) {
        if let Some(close) = self.close.take() {
            // The task may have finished already: then the socket is closed.
            let _ = close.send(mode);
        }
        let _ = (&mut self.task).await;
    }
}

fn snapshot(progress: &Progress, otherwise: End) -> PeerResponse {
    PeerResponse {
        bytes: progress.received.clone(),
        end: progress.end.unwrap_or(otherwise),
        ended_at: progress.ended_at,
    }
}

#[derive(Debug, Default)]
struct Progress {
    received: Vec<u8>,
    settled: Option<Instant>,
    end: Option<End>,
    ended_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseMode {
    Close,
    Reset,
}

/// What a peer does, resolved from its builder.
struct Script {
    kind: PeerKind,
    remote: SocketAddr,
    bytes: Vec<u8>,
    // The paced bytes of a slow body: one per interval after `bytes`.
    paced: usize,
    interval: Duration,
    pause: Duration,
}

impl Script {
    fn from_peer(peer: Peer) -> (Script, Option<Blackhole>) {
        let kind = peer.kind;
        let body_sent = peer.body_sent.min(peer.content_length);
        let bytes = match (peer.request, kind) {
            (Some(bytes), PeerKind::PipelinedThenFin) => bytes.repeat(peer.repeat),
            (Some(bytes), _) => bytes,
            (None, PeerKind::Slowloris) => slowloris_head(&peer.path),
            (None, PeerKind::Garbage) => GARBAGE.to_vec(),
            (None, PeerKind::PipelinedThenFin) => get_request(&peer.path).repeat(peer.repeat),
            (None, PeerKind::SlowBody) => post_head(&peer.path, peer.content_length),
            (None, kind) if kind.has_body() => {
                let mut bytes = post_head(&peer.path, peer.content_length);
                bytes.resize(bytes.len() + body_sent, b'b');
                bytes
            }
            (None, _) => get_request(&peer.path),
        };
        let script = Script {
            kind,
            remote: peer.addr,
            bytes,
            paced: peer.content_length,
            interval: peer.interval,
            pause: peer.pause,
        };
        (script, peer.blackhole)
    }

    /// Plays the script until the connection ends.
    async fn run(&self, s: &TcpStream, p: &watch::Sender<Progress>) -> Outcome {
        match self.run_inner(s, p).await {
            Ok(outcome) | Err(outcome) => outcome,
        }
    }

    async fn run_inner(
        &self,
        s: &TcpStream,
        p: &watch::Sender<Progress>,
    ) -> Result<Outcome, Outcome> {
        let ended = |end: End| Outcome::Ended(end);
        match self.kind {
            PeerKind::FinAfterRequest | PeerKind::FinMidBody | PeerKind::PipelinedThenFin => {
                send(s, p, &self.bytes).await.map_err(ended)?;
                sleep(self.pause).await;
                SockRef::from(s)
                    .shutdown(Shutdown::Write)
                    .map_err(|e| ended(End::of(&e)))?;
                settle(p);
                Ok(ended(read_to_end(s, p).await))
            }
            PeerKind::RstMidRequest => {
                send(s, p, &self.bytes).await.map_err(ended)?;
                sleep(self.pause).await;
                settle(p);
                Ok(Outcome::ResetHere)
            }
            PeerKind::Slowloris => {
                let endless = self.bytes.iter().chain(SLOWLORIS_FILLER.iter().cycle());
                pace(s, p, endless, self.interval, true)
                    .await
                    .map_err(ended)?;
                unreachable!("an endless head only ends with the connection")
            }
            PeerKind::SlowBody => {
                send(s, p, &self.bytes).await.map_err(ended)?;
                settle(p);
                let body = std::iter::repeat_n(&b'b', self.paced);
                pace(s, p, body, self.interval, false)
                    .await
                    .map_err(ended)?;
                Ok(ended(read_to_end(s, p).await))
            }
            PeerKind::StalledBody | PeerKind::Garbage => {
                send(s, p, &self.bytes).await.map_err(ended)?;
                settle(p);
                Ok(ended(read_to_end(s, p).await))
            }
            PeerKind::SilentConnect => {
                settle(p);
                Ok(ended(read_to_end(s, p).await))
            }
            PeerKind::NeverRead => {
                send(s, p, &self.bytes).await.map_err(ended)?;
                settle(p);
                Ok(ended(wait_closed_unread(s).await))
            }
            PeerKind::IdleKeepAlive => {
                send(s, p, &self.bytes).await.map_err(ended)?;
                read_one_response(s, p).await.map_err(ended)?;
                settle(p);
                Ok(ended(read_to_end(s, p).await))
            }
            PeerKind::Vanish => {
                // The request went out and the hook ran before the task started.
                settle(p);
                Ok(ended(wait_closed_unread(s).await))
            }
        }
    }
}

fn post_head(path: &str, content_length: usize) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {content_length}\r\n\r\n")
        .into_bytes()
}

enum Outcome {
    Ended(End),
    ResetHere,
}

/// Owns the socket: plays the script, or closes when told to.
async fn drive(
    stream: TcpStream,
    script: Script,
    progress: watch::Sender<Progress>,
    close: oneshot::Receiver<CloseMode>,
) {
    let outcome = tokio::select! {
        biased;
        mode = close => match mode {
            Ok(CloseMode::Reset) => Outcome::ResetHere,
            // A dropped sender means the handle is going away: close.
            Ok(CloseMode::Close) | Err(_) => Outcome::Ended(End::Dropped),
        },
        outcome = script.run(&stream, &progress) => outcome,
    };
    let end = match outcome {
        Outcome::Ended(end) => end,
        Outcome::ResetHere => {
            // Zero linger: the close below sends RST and keeps no state. Never a
            // positive linger, which would block the thread on close.
            let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            End::Dropped
        }
    };
    // The server ended it (or we do): close our side too, as a real client would.
    drop(stream);
    progress.send_modify(|p| {
        p.end = Some(end);
        p.ended_at = Some(Instant::now());
    });
}

fn settle(p: &watch::Sender<Progress>) {
    p.send_if_modified(|p| {
        if p.settled.is_some() {
            return false;
        }
        p.settled = Some(Instant::now());
        true
    });
}

async fn write_all(s: &TcpStream, mut buf: &[u8]) -> Result<(), End> {
    while !buf.is_empty() {
        s.writable().await.map_err(|e| End::of(&e))?;
        match s.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(End::of(&e)),
        }
    }
    Ok(())
}

/// As [`write_all`], keeping what the server sent if the write fails.
async fn send(s: &TcpStream, p: &watch::Sender<Progress>, bytes: &[u8]) -> Result<(), End> {
    match write_all(s, bytes).await {
        Ok(()) => Ok(()),
        Err(end) => Err(drain_after_write_error(s, p, end)),
    }
}

/// Reads once (waiting for bytes) into the progress. `Err` when the connection ended.
async fn read_some(s: &TcpStream, p: &watch::Sender<Progress>) -> Result<usize, End> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        s.readable().await.map_err(|e| End::of(&e))?;
        match s.try_read(&mut buf) {
            Ok(0) => return Err(End::Eof),
            Ok(n) => {
                p.send_modify(|p| p.received.extend_from_slice(&buf[..n]));
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(End::of(&e)),
        }
    }
}

async fn read_to_end(s: &TcpStream, p: &watch::Sender<Progress>) -> End {
    loop {
        if let Err(end) = read_some(s, p).await {
            return end;
        }
    }
}

/// After a failed write, keeps what the server sent before it went away.
fn drain_after_write_error(s: &TcpStream, p: &watch::Sender<Progress>, end: End) -> End {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => return end,
            Ok(n) => p.send_modify(|p| p.received.extend_from_slice(&buf[..n])),
            Err(_) => return end,
        }
    }
}

/// Sends `bytes` one per `interval`, reading meanwhile; settles when the first byte
/// is sent if `settle_first`. `Err` when the connection ended.
async fn pace<'a>(
    s: &TcpStream,
    p: &watch::Sender<Progress>,
    bytes: impl Iterator<Item = &'a u8>,
    interval: Duration,
    settle_first: bool,
) -> Result<(), End> {
    let mut next = Instant::now();
    for (i, byte) in bytes.enumerate() {
        loop {
            tokio::select! {
                biased;
                read = read_some(s, p) => { read?; }
                () = sleep_until(next) => break,
            }
        }
        send(s, p, std::slice::from_ref(byte)).await?;
        if settle_first && i == 0 {
            settle(p);
        }
        next = Instant::now() + interval;
    }
    Ok(())
}

/// Waits, without reading a byte, until the server closes or resets.
async fn wait_closed_unread(s: &TcpStream) -> End {
    loop {
        let ready = match s.ready(Interest::READABLE).await {
            Ok(ready) => ready,
            Err(e) => return End::of(&e),
        };
        if ready.is_read_closed() || ready.is_error() {
            return match s.take_error() {
                Ok(Some(e)) => End::of(&e),
                _ if ready.is_error() => End::Reset,
                _ => End::Eof,
            };
        }
        // Bytes this peer will never read: clear the readiness and wait for the next
        // event. The closed and error bits are never cleared, so none is missed.
        let _ = s.try_io(Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
}

/// Reads until one whole HTTP/1 response has arrived.
async fn read_one_response(s: &TcpStream, p: &watch::Sender<Progress>) -> Result<(), End> {
    loop {
        if response_complete(&p.borrow().received) {
            return Ok(());
        }
        read_some(s, p).await?;
    }
}

fn response_complete(buf: &[u8]) -> bool {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let body = &buf[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.get(9..12))
        .and_then(|code| code.parse::<u16>().ok());
    if matches!(status, Some(100..=199 | 204 | 304)) {
        return true;
    }
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim() {
            "content-length" => {
                return value
                    .trim()
                    .parse::<usize>()
                    .is_ok_and(|len| body.len() >= len);
            }
            "transfer-encoding" if value.contains("chunked") => return chunked_complete(body),
            _ => {}
        }
    }
    // Delimited by the close: complete only at end of file.
    false
}

fn chunked_complete(mut body: &[u8]) -> bool {
    loop {
        let Some(line_end) = find(body, b"\r\n") else {
            return false;
        };
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|line| line.split(';').next())
            .and_then(|size| usize::from_str_radix(size.trim(), 16).ok());
        let Some(size) = size else {
            return false;
        };
        body = &body[line_end + 2..];
        if size == 0 {
            // Trailers, if any, end with an empty line.
            return body.starts_with(b"\r\n") || find(body, b"\r\n\r\n").is_some();
        }
        if body.len() < size + 2 {
            return false;
        }
        body = &body[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_decides_when_a_response_is_complete() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
        assert!(!response_complete(&head[..]));
        assert!(!response_complete(&[&head[..], b"slep"].concat()));
        assert!(response_complete(&[&head[..], b"slept"].concat()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(!response_complete(
            &[&chunked[..], b"3\r\nabc\r\n"].concat()
        ));
        assert!(response_complete(
            &[&chunked[..], b"3\r\nabc\r\n0\r\n\r\n"].concat()
        ));
        assert!(response_complete(b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert!(!response_complete(b"HTTP/1.0 200 OK\r\n\r\nuntil eof"));
    }

    #[test]
    fn status_and_body_of_a_response() {
        let response = PeerResponse {
            bytes: b"HTTP/1.1 431 Request Header Fields Too Large\r\nx: y\r\n\r\nhi".to_vec(),
            end: End::Eof,
            ended_at: None,
        };
        assert_eq!(response.status(), Some(431));
        assert_eq!(response.body(), b"hi");
        let none = PeerResponse {
            bytes: Vec::new(),
            end: End::Reset,
            ended_at: None,
        };
        assert_eq!(none.status(), None);
        assert_eq!(none.body(), b"");
    }

    #[test]
    fn body_kinds_send_a_head_and_part_of_the_body() {
        let addr = "127.0.0.1:9".parse().unwrap();
        let (script, _) = Script::from_peer(
            Peer::stalled_body(addr)
                .path("/echo")
                .content_length(8)
                .body_sent(3),
        );
        assert_eq!(
            script.bytes,
            b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 8\r\n\r\nbbb"
        );
        let (script, _) = Script::from_peer(Peer::pipelined_then_fin(addr).repeat(3));
        assert_eq!(script.bytes, get_request("/").repeat(3));
        let (script, _) = Script::from_peer(Peer::pipelined_then_fin(addr).path("/stuck"));
        assert_eq!(script.bytes, get_request("/stuck").repeat(2));
        let (script, _) = Script::from_peer(Peer::slowloris(addr).path("/a"));
        assert_eq!(script.bytes, b"GET /a HTTP/1.1\r\nHost: localhost\r\n");
    }

    #[tokio::test]
    async fn vanish_without_a_blackhole_says_what_it_needs() {
        let addr = "127.0.0.1:9".parse().unwrap();
        let error = Peer::vanish(addr).start().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::Unsupported);
        assert!(error.to_string().contains("network namespace"), "{error}");
    }
}
