//! The builder of a peer: its kind, its options, and [`Peer::start`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpSocket;

use super::handle::PeerHandle;
use super::kind::PeerKind;
use super::script::{GARBAGE, Script, get_request, post_head, slowloris_head};
use super::wire::write_all;

/// The receive buffer a never-reading peer asks for, before `connect` so that the
/// window it advertises is small from the handshake on. The kernel doubles it and
/// applies its own minimum (on Linux `SO_RCVBUF`, in bytes, at least 2304).
const NEVER_READ_RECV_BUFFER: u32 = 4096;

/// Installs packet drop for a [`Peer::vanish`] connection; see [`Peer::blackhole`].
pub(super) type Blackhole = Box<dyn FnOnce(SocketAddr, SocketAddr) -> io::Result<()> + Send>;

/// A builder for one abrupt peer. Start with a constructor, tune it, then
/// [`start`](Self::start) it. See the [module docs](crate::testing).
///
/// Options that do not apply to a kind are ignored; each constructor lists the ones
/// that do.
#[must_use = "a peer does nothing until started"]
pub struct Peer {
    pub(super) kind: PeerKind,
    pub(super) addr: SocketAddr,
    pub(super) request: Option<Vec<u8>>,
    pub(super) path: String,
    pub(super) content_length: usize,
    pub(super) body_sent: usize,
    pub(super) interval: Duration,
    pub(super) pause: Duration,
    pub(super) repeat: usize,
    pub(super) recv_buffer: Option<u32>,
    pub(super) blackhole: Option<Blackhole>,
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
    /// [`End::Dropped`]: crate::testing::End::Dropped
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
    /// [`End::Eof`]: crate::testing::End::Eof
    /// [`End::Reset`]: crate::testing::End::Reset
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
        Ok(PeerHandle::spawn(kind, local, server, stream, script))
    }
}

impl Script {
    /// What a peer does, resolved from its builder.
    pub(super) fn from_peer(peer: Peer) -> (Script, Option<Blackhole>) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn vanish_without_a_blackhole_says_what_it_needs() {
        let addr = "127.0.0.1:9".parse().unwrap();
        let error = Peer::vanish(addr).start().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::Unsupported);
        assert!(error.to_string().contains("network namespace"), "{error}");
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
}
