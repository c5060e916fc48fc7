//! The per-client connection cap, checked at accept (nginx's `limit_conn`).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::registry::Registry;

/// The answer to a refused HTTP connection.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    connection: close\r\n\
    retry-after: 1\r\n\
    content-type: text/plain\r\n\
    content-length: 33\r\n\r\n\
    too many connections from client\n";

/// How long a refused HTTP connection may take to read its 503 before it is reset.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
pub(super) struct PerIp {
    pub(super) max: Option<NonZeroUsize>,
    pub(super) ipv6_prefix: u8,
    pub(super) http: bool,
}

impl Default for PerIp {
    fn default() -> Self {
        PerIp {
            max: None,
            ipv6_prefix: 64,
            http: false,
        }
    }
}

/// The connection was refused: its client is at the cap.
pub(super) struct Refused;

impl PerIp {
    /// Takes a slot for `peer`'s client, or refuses the connection. Returns the socket
    /// with the client key its registration must release, if the cap is on.
    pub(super) fn admit(
        &self,
        registry: &Registry,
        socket: TcpStream,
        peer: SocketAddr,
    ) -> Result<(TcpStream, Option<IpAddr>), Refused> {
        let Some(max) = self.max else {
            return Ok((socket, None));
        };
        let client = client_key(peer.ip(), self.ipv6_prefix);
        match registry.reserve_ip(client, max.get()) {
            Ok(()) => Ok((socket, Some(client))),
            Err(live) => {
                tracing::info!(
                    target: "conn_hygiene::accept",
                    %peer,
                    %client,
                    live,
                    limit = max.get(),
                    refused = registry.refused_per_ip(),
                    "connection refused: per-client limit"
                );
                #[cfg(feature = "metrics")]
                crate::metrics::hooks::refused();
                refuse(socket, self.http);
                Err(Refused)
            }
        }
    }
}

/// The client an address belongs to: an IPv4 address (IPv4-mapped IPv6 included), or
/// the first `prefix` bits of an IPv6 address.
pub(super) fn client_key(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(prefix.min(128)))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        },
    }
}

/// Refuses a connection: an HTTP 503 then a lingering close, off the accept loop; or a
/// reset.
fn refuse(socket: TcpStream, http: bool) {
    let reset = |socket: &TcpStream| {
        let _ = SockRef::from(socket).set_linger(Some(Duration::ZERO));
    };
    if !http {
        reset(&socket);
        return;
    }
    tokio::spawn(async move {
        let mut socket = socket;
        let answered = tokio::time::timeout(REFUSAL_LINGER, async {
            socket.write_all(REFUSAL).await?;
            socket.shutdown().await?;
            // Read the request to the peer's FIN, so that closing over unread bytes does
            // not turn into an RST that destroys the 503.
            let mut scratch = [0u8; 1024];
            while socket.read(&mut scratch).await? > 0 {}
            std::io::Result::Ok(())
        })
        .await;
        if !matches!(answered, Ok(Ok(()))) {
            reset(&socket);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_addresses_and_ipv6_prefixes() {
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(client_key(v4, 64), v4);
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(client_key(mapped, 64), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a, 64), client_key(b, 64));
        assert_ne!(client_key(a, 64), client_key(c, 64));
        assert_eq!(client_key(a, 64).to_string(), "2001:db8:1:2::");
        assert_eq!(client_key(a, 128), a);
        assert_eq!(client_key(a, 0).to_string(), "::");
        assert_eq!(client_key(c, 48), client_key(a, 48));
    }

    #[test]
    fn the_refusal_is_a_well_formed_answer() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
