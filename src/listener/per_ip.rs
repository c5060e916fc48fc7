//! The per-client connection cap, checked at accept (nginx's `limit_conn`).

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// The HTTP/2 connection preface (RFC 9113 §3.4): a client that opens with it (prior
/// knowledge) cannot read an HTTP/1 answer.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a refused HTTP connection may take to send its first bytes and read its
/// 503 before it is reset.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// At most this many refused connections of one listener are answered at once; beyond
/// it they are reset at once, so that a flood from one client holds no descriptors.
const MAX_REFUSALS: usize = 64;

#[derive(Debug)]
pub(super) struct PerIp {
    pub(super) max: Option<NonZeroUsize>,
    pub(super) ipv6_prefix: u8,
    pub(super) http: bool,
    // Refusals being answered now.
    answering: Arc<AtomicUsize>,
}

impl Default for PerIp {
    fn default() -> Self {
        PerIp {
            max: None,
            ipv6_prefix: 64,
            http: false,
            answering: Arc::default(),
        }
    }
}

/// The connection was refused: its client is at the cap.
pub(super) struct Refused;

impl PerIp {
    /// Whether `peer` is at its cap: `admit` would refuse it. Reserves nothing.
    pub(super) fn is_full(&self, registry: &Registry, peer: SocketAddr) -> bool {
        self.max.is_some_and(|max| {
            registry.ip_is_full(client_key(peer.ip(), self.ipv6_prefix), max.get())
        })
    }

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
                self.refuse(socket);
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

impl PerIp {
    /// Refuses a connection: off the accept loop, an HTTP 503 then a lingering close
    /// when the client speaks HTTP/1; else a reset.
    fn refuse(&self, socket: TcpStream) {
        let answering = self
            .http
            .then(|| Answering::take(&self.answering))
            .flatten();
        let Some(answering) = answering else {
            reset(&socket);
            return;
        };
        tokio::spawn(async move {
            let _answering = answering;
            let mut socket = socket;
            let answered = tokio::time::timeout(REFUSAL_LINGER, async {
                if !speaks_http1(&mut socket).await? {
                    return Ok(false);
                }
                socket.write_all(REFUSAL).await?;
                socket.shutdown().await?;
                // Read the request to the peer's FIN, so that closing over unread bytes
                // does not turn into an RST that destroys the 503.
                let mut scratch = [0u8; 1024];
                while socket.read(&mut scratch).await? > 0 {}
                io::Result::Ok(true)
            })
            .await;
            if !matches!(answered, Ok(Ok(true))) {
                reset(&socket);
            }
        });
    }
}

/// Makes the socket's close send an RST.
fn reset(socket: &TcpStream) {
    let _ = SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

/// Reads the client's first bytes until they tell an HTTP/1 request from the HTTP/2
/// preface. `false` for the preface, or a close before it is told.
async fn speaks_http1(socket: &mut TcpStream) -> io::Result<bool> {
    let mut head = [0u8; H2_PREFACE.len()];
    let mut len = 0;
    while len < head.len() {
        let n = socket.read(&mut head[len..]).await?;
        if n == 0 {
            return Ok(false);
        }
        len += n;
        if !H2_PREFACE.starts_with(&head[..len]) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One refusal being answered, of at most [`MAX_REFUSALS`].
struct Answering(Arc<AtomicUsize>);

impl Answering {
    fn take(answering: &Arc<AtomicUsize>) -> Option<Answering> {
        let taken = answering.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_REFUSALS).then_some(n + 1)
        });
        taken.ok().map(|_| Answering(answering.clone()))
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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
    fn refusals_answered_at_once_are_bounded() {
        let answering = Arc::default();
        let held: Vec<_> = (0..MAX_REFUSALS)
            .map(|_| Answering::take(&answering).expect("below the bound"))
            .collect();
        assert!(Answering::take(&answering).is_none(), "beyond the bound");
        drop(held);
        assert!(Answering::take(&answering).is_some());
    }

    #[test]
    fn the_refusal_is_a_well_formed_answer() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
