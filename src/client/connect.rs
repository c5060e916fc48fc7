//! Opening a connection for a pool of raw streams, and the policy of client streams.

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};

use crate::options::SocketOptions;
use crate::policy::Policy;
use crate::stream::{HygieneStream, TcpIo};

/// The policy [`HygieneConnector`] uses unless given another, and a good one for
/// [`connect`]: [`Policy::default`] with the first-byte and idle clocks off.
///
/// A client's stream cannot tell a slow response from an idle connection (no layer
/// counts its requests in flight), so its idle clock would cut slow responses short,
/// and the first-byte clock would bound the first response's latency. Pool idle
/// limits belong to the pool (hyper-util's `pool_idle_timeout`) and to
/// [`KeepAliveLayer`]. The write-stall clock stays on: a server that stops reading
/// our request is abandoned after 30 s.
///
/// [`HygieneConnector`]: super::HygieneConnector
/// [`KeepAliveLayer`]: super::KeepAliveLayer
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
    options: SocketOptions,
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

/// Wraps a connected client stream, and traces the `connect` event.
pub(super) fn wrap(stream: TcpStream, peer: SocketAddr, policy: Policy) -> HygieneStream<TcpIo> {
    let stream = HygieneStream::tcp(stream, peer, policy);
    tracing::debug!(
        target: "conn_hygiene::client",
        parent: stream.conn().span(),
        event = "connect",
        "connected"
    );
    stream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_policy_has_no_idle_or_first_byte_clock() {
        let policy = client_policy();
        assert_eq!(policy.idle_timeout(), None);
        assert_eq!(policy.first_byte_timeout(), None);
        assert!(policy.write_stall_timeout().is_some());
    }
}
