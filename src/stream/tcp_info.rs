//! What the peer has taken of our bytes, as our kernel saw it: `TCP_INFO`.
//!
//! Read through `NETLINK_SOCK_DIAG` (an `inet_diag` lookup of this one socket by its
//! addresses, with the `INET_DIAG_INFO` extension), as `ss -ti` does: the kernel
//! answers with the same `struct tcp_info` that `getsockopt(TCP_INFO)` fills, and
//! the crate keeps `#![forbid(unsafe_code)]`, which rules out a raw `getsockopt`
//! (neither socket2, rustix nor nix wraps `TCP_INFO`). A lookup is eight system calls
//! (the socket's two addresses; a netlink socket opened, bound, connected, asked,
//! answered and closed), made when a response first waits on its peer and when a
//! clock is about to fire, never per write.

use std::io;
use std::net::SocketAddr as Inet;
use std::time::Duration;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::nlas::{Nla, TcpInfo};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};
use tokio::net::TcpStream;

use crate::rate::{PeerProgress, Sample};

/// `TCP_CA_Recovery` and `TCP_CA_Loss`: fast recovery, or retransmission after a
/// timeout.
const CA_RECOVERY: u8 = 3;

impl PeerProgress for TcpStream {
    fn sample(&self) -> Option<Sample> {
        let (local, peer) = (self.local_addr().ok()?, self.peer_addr().ok()?);
        let info = lookup(local, peer)
            .inspect_err(|e| {
                tracing::debug!(
                    target: "conn_hygiene::timeout",
                    error = %e,
                    "TCP_INFO unavailable: the write clocks count the bytes the socket took"
                );
            })
            .ok()?;
        Some(sample(&info))
    }
}

/// The fields the write clocks judge by.
fn sample(info: &TcpInfo) -> Sample {
    // Loss recovery and retransmission timeouts are the network's doing. In recovery
    // the peer's ACKs (SACKs) keep coming while the hole is repaired, so how long it
    // has lasted is unknown: the whole time since the last look is the network's. A
    // retransmission timeout's back-off (`retransmits`, reset by the next ACK of new
    // data) has lasted since the last ACK. Zero-window probes are neither: they leave
    // both alone, and the peer answers them.
    let retransmitting_for = if info.ca_state >= CA_RECOVERY {
        Duration::MAX
    } else if info.retransmits > 0 {
        Duration::from_millis(u64::from(info.last_ack_recv))
    } else {
        Duration::ZERO
    };
    // What the peer's TCP holds: the bytes below the first hole, and the segments
    // selectively acknowledged above it (full-sized, as the sender cuts them).
    let sacked = u64::from(info.sacked) * u64::from(info.snd_mss);
    Sample {
        acked: info.bytes_acked.saturating_add(sacked),
        retransmitting_for,
        queued: info.unacked > 0 || info.notsent_bytes > 0,
    }
}

/// The `tcp_info` of the socket from `local` to `peer`, in this thread's network
/// namespace.
fn lookup(local: Inet, peer: Inet) -> io::Result<TcpInfo> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: if local.is_ipv4() { AF_INET } else { AF_INET6 },
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states: StateFlags::all(),
            socket_id: SocketId {
                source_port: local.port(),
                destination_port: peer.port(),
                source_address: local.ip(),
                destination_address: peer.ip(),
                interface_id: 0,
                // "No cookie": the addresses alone name the socket.
                cookie: [0xff; 8],
            },
        })
        .into(),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    let mut buf = Vec::with_capacity(4096);
    socket.recv(&mut buf, 0)?;
    let reply = NetlinkMessage::<SockDiagMessage>::deserialize(&buf).map_err(invalid)?;
    match reply.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => response
            .nlas
            .into_iter()
            .find_map(|nla| match nla {
                Nla::TcpInfo(info) => Some(info),
                _ => None,
            })
            .ok_or_else(|| invalid("no INET_DIAG_INFO in the reply")),
        NetlinkPayload::Error(e) => Err(e.to_io()),
        _ => Err(invalid("unexpected sock_diag reply")),
    }
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A `struct tcp_info` as the kernel lays it out (`linux/tcp.h`), zeroed but for
    /// the fields given: `(offset, bytes)`.
    fn info(fields: &[(usize, &[u8])]) -> TcpInfo {
        let mut raw = [0u8; 512];
        for (offset, bytes) in fields {
            raw[*offset..offset + bytes.len()].copy_from_slice(bytes);
        }
        TcpInfo::parse(&raw).unwrap()
    }

    /// Which kernel states are the network's, and what counts as received.
    #[test]
    fn the_network_is_loss_recovery_and_retransmission_timeouts() {
        const CA_STATE: usize = 1;
        const RETRANSMITS: usize = 2;
        const PROBES: usize = 3;
        const SND_MSS: usize = 16;
        const SACKED: usize = 28;
        const LAST_ACK_RECV: usize = 56;
        const BYTES_ACKED: usize = 120;
        let acked = 5000u64.to_ne_bytes();
        let mss = 1000u32.to_ne_bytes();
        let last_ack = 3000u32.to_ne_bytes();
        let open = sample(&info(&[(BYTES_ACKED, &acked), (LAST_ACK_RECV, &last_ack)]));
        assert_eq!(open.acked, 5000);
        assert_eq!(open.retransmitting_for, Duration::ZERO);
        // A zero window: the kernel probes, the peer answers; not the network.
        let probing = sample(&info(&[(PROBES, &[3]), (LAST_ACK_RECV, &last_ack)]));
        assert_eq!(probing.retransmitting_for, Duration::ZERO);
        // A retransmission timeout: silent since the last ACK.
        let rto = sample(&info(&[(RETRANSMITS, &[2]), (LAST_ACK_RECV, &last_ack)]));
        assert_eq!(rto.retransmitting_for, Duration::from_secs(3));
        // Loss recovery, two segments selectively acknowledged above a hole.
        let recovery = sample(&info(&[
            (CA_STATE, &[CA_RECOVERY]),
            (BYTES_ACKED, &acked),
            (SND_MSS, &mss),
            (SACKED, &2u32.to_ne_bytes()),
        ]));
        assert_eq!(recovery.retransmitting_for, Duration::MAX);
        assert_eq!(recovery.acked, 7000);
    }

    /// The kernel's count of acknowledged bytes follows what the peer received.
    #[tokio::test]
    async fn acked_bytes_follow_the_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (mut server, client) = (accepted.unwrap().0, client.unwrap());
        let before = server.sample().expect("TCP_INFO through sock_diag");
        assert_eq!(before.acked, 0);
        assert_eq!(before.retransmitting_for, Duration::ZERO);
        server.write_all(&[7; 5000]).await.unwrap();
        let mut acked = 0;
        for _ in 0..100 {
            acked = server.sample().unwrap().acked;
            if acked == 5000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(acked, 5000, "loopback acknowledges at once");
        drop(client);
    }
}
