//! The socket listing over `NETLINK_SOCK_DIAG`: one `inet_diag` dump per
//! address family, as `ss -tan` does. The kernel walks its hash tables
//! once a dump and skips empty buckets, where a `/proc/net/tcp` read is
//! formatted as text and re-seeks through the table on every read call.

use super::{SocketEntry, TcpState};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};
use std::io;
use std::net::SocketAddr as Inet;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once opening a sock_diag socket was refused (a sandbox without
/// netlink, a kernel without `NETLINK_SOCK_DIAG`): procfs from then on.
static UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// Every TCP state `/proc/net/tcp` lists, `TCP_ESTABLISHED` (1) to
/// `TCP_NEW_SYN_RECV` (12); not `TCP_BOUND_INACTIVE` (13), bound
/// sockets that neither listen nor connect, which procfs does not show.
const STATES: u32 = ((1 << 13) - 1) & !1;

/// Room for the kernel's largest dump datagram (32 KiB), with margin.
const RECV_BUF: usize = 64 * 1024;

/// Every TCP socket in this thread's network namespace, IPv4 then IPv6;
/// with `port`, only those with it as local or remote port (the kernel
/// filters, so a busy host's other sockets are never copied out).
pub(super) fn dump(port: Option<u16>) -> io::Result<Vec<SocketEntry>> {
    if UNAVAILABLE.load(Ordering::Relaxed) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "NETLINK_SOCK_DIAG unavailable",
        ));
    }
    let socket = open().inspect_err(|e| {
        // Not for a transient failure such as EMFILE.
        if matches!(
            e.raw_os_error(),
            Some(libc::EPERM | libc::EACCES | libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT)
        ) {
            UNAVAILABLE.store(true, Ordering::Relaxed);
        }
    })?;
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(RECV_BUF);
    let filter = port.map(port_bytecode);
    let filter = filter.as_deref();
    dump_family(&socket, 1, AF_INET, filter, &mut buf, &mut out)?;
    match dump_family(&socket, 2, AF_INET6, filter, &mut buf, &mut out) {
        // A kernel without IPv6 has no AF_INET6 handler: no IPv6 sockets.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        other => other?,
    }
    Ok(out)
}

fn open() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

fn dump_family(
    socket: &Socket,
    seq: u32,
    family: u8,
    bytecode: Option<&[u8]>,
    buf: &mut Vec<u8>,
    out: &mut Vec<SocketEntry>,
) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::from_bits_retain(STATES),
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    if let Some(code) = bytecode {
        // The crate has no type for the request's attributes: append an
        // `INET_DIAG_REQ_BYTECODE` attribute and fix up `nlmsg_len`.
        let attr_len = 4 + code.len();
        bytes.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        bytes.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        bytes.extend_from_slice(code);
        let total = bytes.len() as u32;
        bytes[..4].copy_from_slice(&total.to_ne_bytes());
    }
    socket.send(&bytes, 0)?;

    loop {
        buf.clear();
        // MSG_TRUNC: the datagram's real length, to catch a truncation.
        let n = socket.recv(buf, libc::MSG_TRUNC)?;
        if n > buf.len() {
            return Err(invalid("truncated sock_diag datagram"));
        }
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(rest)
                .map_err(|e| invalid(format!("sock_diag reply: {e}")))?;
            let len = msg.header.length as usize;
            if len == 0 || len > rest.len() {
                return Err(invalid("bad netlink message length"));
            }
            // Messages are 4-byte aligned; the last one may lack padding.
            rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
            if msg.header.sequence_number != seq {
                continue;
            }
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let h = &r.header;
                    if let Some(state) = tcp_state(h.state) {
                        let id = &h.socket_id;
                        out.push(SocketEntry {
                            local: Inet::new(id.source_address, id.source_port),
                            remote: Inet::new(id.destination_address, id.destination_port),
                            state,
                            inode: u64::from(h.inode),
                        });
                    }
                }
                NetlinkPayload::Done(done) if done.code < 0 => {
                    return Err(io::Error::from_raw_os_error(-done.code));
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                _ => {}
            }
        }
    }
}

/// `INET_DIAG_REQ_BYTECODE`, the request attribute holding a filter.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// Filter ops (`enum` in `linux/inet_diag.h`): ports in host order.
const BC_JMP: u8 = 1;
const BC_S_GE: u8 = 2;
const BC_S_LE: u8 = 3;
const BC_D_GE: u8 = 4;
const BC_D_LE: u8 = 5;

/// An `inet_diag` filter program for `sport = :P or dport = :P`, laid
/// out as `ss` compiles it: each 4-byte op is `{code, yes, no}` (jumps
/// relative to the op), a port comparison carries the port in the
/// `no` field of a second op, a jump exactly to the end accepts and
/// one 4 bytes past it rejects. `>=` and `<=` rather than the newer
/// `S_EQ`/`D_EQ` ops, which older kernels reject.
fn port_bytecode(port: u16) -> Vec<u8> {
    let ops: [(u8, u8, u16); 9] = [
        // 0: sport >= P, else to 20 (the dport test).
        (BC_S_GE, 8, 20),
        (0, 0, port),
        // 8: sport <= P, else to 20.
        (BC_S_LE, 8, 12),
        (0, 0, port),
        // 16: sport matched; JMP always takes `no`: to 36, accept.
        (BC_JMP, 4, 20),
        // 20: dport >= P, else to 40, reject.
        (BC_D_GE, 8, 20),
        (0, 0, port),
        // 28: dport <= P: to 36, accept; else to 40, reject.
        (BC_D_LE, 8, 12),
        (0, 0, port),
    ];
    ops.iter()
        .flat_map(|&(code, yes, no)| {
            let [a, b] = no.to_ne_bytes();
            [code, yes, a, b]
        })
        .collect()
}

fn tcp_state(s: u8) -> Option<TcpState> {
    TcpState::ALL.get(usize::from(s).checked_sub(1)?).copied()
}

fn invalid(msg: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super as diag;
    use super::super::procfs::proc_tables;
    use crate::census::{SocketEntry, TcpState};
    use std::net::{TcpListener, TcpStream};

    fn sorted(mut v: Vec<SocketEntry>) -> Vec<SocketEntry> {
        v.sort_by_key(|e| (e.local, e.remote, e.inode));
        v
    }

    /// The kernel accepts the port filter and applies it: the dump holds
    /// exactly the port's sockets, as procfs lists them. Skipped where
    /// netlink is unavailable (the procfs fallback then serves).
    #[test]
    fn port_dump_is_filtered_in_the_kernel() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let other = TcpListener::bind("[::1]:0").ok();

        let dump = match diag::dump(Some(addr.port())) {
            Ok(d) => sorted(d),
            Err(e) => return eprintln!("no NETLINK_SOCK_DIAG here ({e}): skipped"),
        };
        let mut expected = proc_tables(::procfs::net::tcp(), ::procfs::net::tcp6()).unwrap();
        expected.retain(|e| e.local.port() == addr.port() || e.remote.port() == addr.port());
        assert_eq!(dump, sorted(expected));
        assert_eq!(dump.len(), 3, "{dump:?}");
        assert!(dump.iter().all(|e| e.inode != 0));
        assert!(
            dump.iter()
                .any(|e| e.state == TcpState::Listen && e.local == addr)
        );
        assert!(dump.iter().any(|e| e.local == client.local_addr().unwrap()));

        // Unfiltered: both families, the other listener too.
        let all = diag::dump(None).unwrap();
        assert!(all.len() >= dump.len());
        if let Some(other) = other {
            let v6 = other.local_addr().unwrap();
            assert!(
                all.iter()
                    .any(|e| e.local == v6 && e.state == TcpState::Listen)
            );
        }
    }
}
