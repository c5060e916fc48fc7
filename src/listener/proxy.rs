//! The PROXY protocol (HAProxy's specification, v1 text and v2 binary): a balancer in
//! front (HAProxy `send-proxy`/`send-proxy-v2`, nginx `proxy_protocol on`, an AWS
//! NLB) names the real client in a header before the connection's first byte.
//!
//! The header is read exactly, never past its end: the client's first bytes stay in
//! the socket for the server. Each header is read off the accept loop, under its own
//! deadline, so that a silent connection delays no other. See
//! [`ProxyProtocol`] for what is accepted and from whom.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult};
use socket2::SockRef;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The default [header deadline](ProxyProtocol::with_header_timeout): a balancer sends
/// the header with the connection's first segment, so a few seconds cover a slow
/// network; HAProxy's own `timeout client` for it is of the same order.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest v1 header, CRLF included (the specification's 107 bytes).
const V1_MAX: usize = 107;

/// The longest v2 header: 16 bytes, then a 16-bit length.
const V2_MAX: usize = 16 + u16::MAX as usize;

/// Where a [`Listener`](crate::Listener) expects a PROXY protocol header, and how long
/// it waits for one.
///
/// - [`required`](Self::required): every connection starts with a header, v1 or v2.
///   Use it when only the balancer can reach the port.
/// - [`from_trusted`](Self::from_trusted): connections from the balancers' addresses
///   start with a header; any other connection is served as a direct client, its
///   first bytes unread by the listener. A client cannot forge its address either
///   way: a header is believed only from a trusted peer.
///
/// A connection that should send a header and does not is closed (reset): at once
/// when what it sends is not a valid header (a direct HTTP request included), at the
/// [header deadline](Self::with_header_timeout) when it is silent. A v2 `LOCAL`
/// header (a balancer's health check) and a v1 `UNKNOWN` or v2 unspecified or UNIX
/// address keep the socket's peer as the client. v2 TLVs are ignored.
///
/// The client's address becomes the connection's [`peer_addr`](crate::Conn::peer_addr),
/// the address the listener returns (axum's `ConnectInfo<SocketAddr>`), the key of
/// the [per-client cap](crate::Listener::max_connections_per_ip), and the `peer`
/// of the connection's span; the balancer stays in
/// [`Conn::proxied_by`](crate::Conn::proxied_by). Connections reading their header
/// count against the [connection cap](crate::Listener::max_connections).
///
/// ```no_run
/// use conn_hygiene::Listener;
/// use conn_hygiene::listener::ProxyProtocol;
///
/// # async fn dox() -> std::io::Result<()> {
/// let balancers = ["10.0.0.0/24".parse().unwrap()];
/// let listener = Listener::bind_with_defaults("0.0.0.0:8080")?
///     .proxy_protocol(ProxyProtocol::from_trusted(balancers))?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ProxyProtocol {
    // `None`: required from every peer.
    trusted: Option<Vec<IpNet>>,
    header_timeout: Duration,
}

impl ProxyProtocol {
    /// Every connection must start with a header.
    pub fn required() -> Self {
        ProxyProtocol {
            trusted: None,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }

    /// Connections from these networks (a balancer's address is a `/32` or `/128`)
    /// must start with a header; others are served as direct clients. An empty list
    /// fails [`Listener::proxy_protocol`](crate::Listener::proxy_protocol).
    pub fn from_trusted(balancers: impl IntoIterator<Item = IpNet>) -> Self {
        ProxyProtocol {
            trusted: Some(balancers.into_iter().map(|net| net.trunc()).collect()),
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }

    /// How long a connection may take to send its whole header, from accept.
    /// Defaults to [`DEFAULT_HEADER_TIMEOUT`]. Zero fails
    /// [`Listener::proxy_protocol`](crate::Listener::proxy_protocol).
    ///
    /// It cannot be turned off: until its header is read a connection is not
    /// registered and none of the [`Policy`](crate::Policy)'s clocks runs, so this
    /// deadline is all that bounds a silent one. Those clocks (the first byte's
    /// included) start once the header is read.
    #[must_use]
    pub fn with_header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// The header deadline.
    pub fn header_timeout(&self) -> Duration {
        self.header_timeout
    }

    /// The error names the setting at fault.
    pub(super) fn validate(&self) -> io::Result<()> {
        let invalid = |message| Err(io::Error::new(io::ErrorKind::InvalidInput, message));
        if self.header_timeout.is_zero() {
            return invalid("proxy_protocol.header_timeout must be above zero");
        }
        if self.trusted.as_ref().is_some_and(Vec::is_empty) {
            return invalid("proxy_protocol.trusted lists no balancer (use `required`)");
        }
        Ok(())
    }

    /// Whether a connection from `peer` must start with a header.
    pub(super) fn expects_header(&self, peer: SocketAddr) -> bool {
        let ip = peer.ip().to_canonical();
        self.trusted
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|net| net.contains(&ip)))
    }
}

/// A connection whose header was read.
#[derive(Debug)]
pub(super) struct Proxied {
    pub(super) socket: TcpStream,
    /// The client, as the header names it (the socket's peer for `LOCAL`).
    pub(super) client: SocketAddr,
    /// The socket's peer: the balancer.
    pub(super) balancer: SocketAddr,
}

/// Why a connection was closed without being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejected {
    Malformed,
    Silent,
    Closed,
}

impl Rejected {
    fn as_str(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::Silent => "silent",
            Rejected::Closed => "closed",
        }
    }
}

/// Reads the header of a connection from `balancer` within `timeout`; closes the
/// connection and returns `None` when there is no valid one.
pub(super) async fn read_header(
    mut socket: TcpStream,
    balancer: SocketAddr,
    timeout: Duration,
) -> Option<Proxied> {
    let read = tokio::time::timeout(timeout, read_exact_header(&mut socket)).await;
    let rejected = match read {
        Ok(Ok(source)) => {
            return Some(Proxied {
                socket,
                client: source.unwrap_or(balancer),
                balancer,
            });
        }
        Ok(Err(rejected)) => rejected,
        Err(_) => Rejected::Silent,
    };
    tracing::debug!(
        target: "conn_hygiene::accept",
        peer = %balancer,
        reason = rejected.as_str(),
        "connection closed: no valid PROXY protocol header"
    );
    #[cfg(feature = "metrics")]
    crate::metrics::hooks::proxy_header_rejected(rejected.as_str());
    // A reset: nothing is owed to a peer that did not speak the protocol, and no
    // socket state outlives the descriptor.
    let _ = SockRef::from(&socket).set_linger(Some(Duration::ZERO));
    None
}

/// Reads the header and nothing after it: peeks what has arrived, and consumes up to
/// the header's end once it is known, or all of it while the header is incomplete
/// (those bytes are the header's). `Some(source)` when the header names the client.
async fn read_exact_header(socket: &mut TcpStream) -> Result<Option<SocketAddr>, Rejected> {
    let mut header = Vec::with_capacity(V1_MAX);
    let mut peeked = [0u8; V1_MAX];
    loop {
        let n = socket
            .peek(&mut peeked)
            .await
            .map_err(|_| Rejected::Closed)?;
        if n == 0 {
            return Err(Rejected::Closed);
        }
        let seen = header.len();
        header.extend_from_slice(&peeked[..n]);
        let take = match parse(&header) {
            Parsed::Header { len, source } => {
                header.truncate(len);
                socket
                    .read_exact(&mut header[seen..])
                    .await
                    .map_err(|_| Rejected::Closed)?;
                return Ok(source);
            }
            Parsed::Incomplete if header.len() < V2_MAX => n,
            Parsed::Incomplete | Parsed::Malformed => return Err(Rejected::Malformed),
        };
        socket
            .read_exact(&mut header[seen..seen + take])
            .await
            .map_err(|_| Rejected::Closed)?;
    }
}

/// What the bytes a connection opened with amount to.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A whole header of `len` bytes; `source` is `None` when the header keeps the
    /// socket's peer (v2 `LOCAL`, v1 `UNKNOWN`, unspecified or UNIX addresses).
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// A header's beginning.
    Incomplete,
    /// Not a header, whatever follows.
    Malformed,
}

fn parse(mut bytes: &[u8]) -> Parsed {
    // v1 is a line: judged once whole, as ppp judges a partial line's last field as
    // if it were complete (`... 51000 ` would be a missing port, not a beginning).
    let v1 = b"PROXY ";
    if bytes.starts_with(v1) || v1.starts_with(bytes) {
        match bytes.iter().position(|&b| b == b'\n') {
            Some(end) => bytes = &bytes[..=end],
            None if bytes.len() < V1_MAX => return Parsed::Incomplete,
            None => return Parsed::Malformed,
        }
    }
    let parsed = HeaderResult::parse(bytes);
    if parsed.is_incomplete() {
        return Parsed::Incomplete;
    }
    match parsed {
        HeaderResult::V1(Ok(header)) => Parsed::Header {
            len: header.header.len(),
            source: match header.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Unknown => None,
            },
        },
        HeaderResult::V2(Ok(header)) => Parsed::Header {
            len: header.len(),
            source: match (header.command, header.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                // Canonical: a dual-stack balancer sends IPv4 clients as `::ffff:a.b.c.d`,
                // which a v1 header (or the per-client key) shows as `a.b.c.d`.
                (_, ppp::v2::Addresses::IPv6(a)) => Some(SocketAddr::new(
                    std::net::IpAddr::V6(a.source_address).to_canonical(),
                    a.source_port,
                )),
                (_, ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_)) => None,
            },
        },
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Parsed::Malformed,
    }
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
