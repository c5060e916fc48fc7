//! Kernel TCP state census: how many sockets sit in each TCP state, for a
//! port, a process or the whole host.
//!
//! This is the classic ops one-liner
//! `netstat -n | awk '/^tcp/ {++S[$NF]} END {for(a in S) print a, S[a]}'`
//! as an API. A growing `CLOSE_WAIT` count means some code never closes
//! sockets its peer already closed; only the application can fix that.
//!
//! ```
//! use conn_hygiene::census::{Filter, TcpState, tcp_census};
//!
//! let census = tcp_census(Filter::Port(8080))?;
//! print!("{census}"); // "ESTABLISHED 3\nLISTEN 1\n", like the awk script
//! if census.get(TcpState::CloseWait) > 100 {
//!     eprintln!("something on :8080 is not closing its sockets");
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Platform
//!
//! Linux only: the sockets come from a `NETLINK_SOCK_DIAG` (`inet_diag`)
//! dump, as `ss` gets them, with [`Filter::Port`] applied in the kernel: on
//! a host with tens of thousands of sockets a port's census costs a few
//! milliseconds, not the tens to hundreds a walk of `/proc/net/tcp` takes.
//! Where netlink is unavailable (a sandbox denying it, a kernel without
//! `inet_diag`) the census reads `/proc/net/tcp` and `/proc/net/tcp6`
//! through the `procfs` crate instead, with the same results. A
//! [`Filter::Pid`] census of a process in another network namespace reads
//! that process's `/proc/N/net/tcp*`, since a netlink dump sees only the
//! caller's namespace. Elsewhere every function returns an
//! [`io::ErrorKind::Unsupported`] error.
//!
//! # Blocking
//!
//! Every function here blocks its thread: a netlink dump (`sendmsg`/`recvmsg`) or
//! reads of `/proc` files, typically a few milliseconds and more on a host with very
//! many sockets. From async code, run it on tokio's blocking pool so no worker thread
//! stalls:
//!
//! ```
//! use conn_hygiene::census::{Filter, tcp_census};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let census = tokio::task::spawn_blocking(|| tcp_census(Filter::Port(8080)))
//!     .await
//!     .expect("the census does not panic")?;
//! # let _ = census;
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// A TCP state as the kernel reports it (`include/net/tcp_states.h`).
///
/// [`as_str`](Self::as_str) gives netstat's spelling, which is also its serialized
/// form with feature `serde` (`"CLOSE_WAIT"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "SCREAMING_SNAKE_CASE"))]
#[non_exhaustive]
pub enum TcpState {
    /// Open, data can flow both ways.
    Established,
    /// We sent a SYN (`connect`) and wait for the SYN-ACK.
    SynSent,
    /// A SYN arrived on a listener; the handshake is not finished.
    SynRecv,
    /// We closed first; our FIN is not acknowledged yet.
    FinWait1,
    /// We closed first, the peer acknowledged and has not closed yet.
    FinWait2,
    /// We closed first and both FINs are done; the kernel keeps the 4-tuple
    /// for 60 s.
    TimeWait,
    /// Closed (an unconnected or just-reset socket).
    Close,
    /// The peer closed (sent FIN) and this side has not: the application's bug.
    CloseWait,
    /// The peer closed, then we did; waiting for the ACK of our FIN.
    LastAck,
    /// A listening socket.
    Listen,
    /// Both sides closed at once.
    Closing,
    /// A request socket (half-open connection) in newer kernels.
    NewSynRecv,
}

impl TcpState {
    /// Every state, in kernel order.
    pub const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    /// The state's name as `netstat` prints it.
    ///
    /// ```
    /// use conn_hygiene::census::TcpState;
    ///
    /// assert_eq!(TcpState::CloseWait.as_str(), "CLOSE_WAIT");
    /// assert_eq!(TcpState::FinWait2.as_str(), "FIN_WAIT2");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which sockets a census counts.
///
/// ```
/// use conn_hygiene::census::Filter;
///
/// let mine = Filter::Pid(std::process::id());
/// let web = Filter::Port(443);
/// # let _ = (mine, web, Filter::All);
/// ```
///
/// With feature `serde`: `"all"`, `{"port": 443}` or `{"pid": 1234}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Filter {
    /// Every TCP socket in this process's network namespace.
    All,
    /// Sockets with this port as their local *or* remote port, like
    /// `ss -tan '( sport = :P or dport = :P )'`: a server's listener and
    /// accepted sockets, and clients connected to it.
    Port(u16),
    /// Sockets open in this process (its `/proc/N/fd`), read from the
    /// process's own network namespace. `TIME_WAIT` sockets belong to no
    /// process, so they never match.
    Pid(u32),
}

impl Filter {
    // The kernel tables are read on Linux only.
    #[cfg(target_os = "linux")]
    fn matches_addrs(self, local: SocketAddr, remote: SocketAddr) -> bool {
        match self {
            Filter::Port(p) => local.port() == p || remote.port() == p,
            Filter::All | Filter::Pid(_) => true,
        }
    }
}

/// One TCP socket from the kernel's table.
///
/// With feature `serde`:
/// `{"local": "127.0.0.1:8080", "remote": "127.0.0.1:50412", "state": "CLOSE_WAIT",
/// "inode": 123456}`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct SocketEntry {
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port (`0.0.0.0:0` or `[::]:0` for a listener).
    pub remote: SocketAddr,
    /// Kernel state.
    pub state: TcpState,
    /// Socket inode, as in `/proc/N/fd/* -> socket:[inode]`; 0 when no process
    /// owns the socket (`TIME_WAIT`, orphans).
    pub inode: u64,
}

/// Socket counts per [`TcpState`].
///
/// Build one with [`tcp_census`], or collect it from states:
///
/// ```
/// use conn_hygiene::census::{Census, TcpState};
///
/// let census: Census = [TcpState::Established, TcpState::Listen, TcpState::Established]
///     .into_iter()
///     .collect();
/// assert_eq!(census.get(TcpState::Established), 2);
/// assert_eq!(census.total(), 3);
/// assert_eq!(census.to_string(), "ESTABLISHED 2\nLISTEN 1\n");
/// ```
///
/// With feature `serde` it serializes as a map of the non-empty states to their
/// counts, in [`iter`](Self::iter) order: `{"ESTABLISHED": 2, "LISTEN": 1}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    counts: [usize; TcpState::ALL.len()],
}

impl Census {
    /// Sockets in `state`.
    pub fn get(&self, state: TcpState) -> usize {
        self.counts[state as usize]
    }

    /// All counted sockets.
    pub fn total(&self) -> usize {
        self.counts.iter().sum()
    }

    /// States with at least one socket, by count descending, ties by name.
    ///
    /// ```
    /// use conn_hygiene::census::{Census, TcpState};
    ///
    /// let census: Census = [TcpState::TimeWait, TcpState::CloseWait].into_iter().collect();
    /// let order: Vec<_> = census.iter().collect();
    /// assert_eq!(order, [(TcpState::CloseWait, 1), (TcpState::TimeWait, 1)]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (TcpState, usize)> + use<> {
        let mut rows: Vec<_> = TcpState::ALL
            .into_iter()
            .map(|s| (s, self.get(s)))
            .filter(|&(_, n)| n > 0)
            .collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.as_str().cmp(b.0.as_str())));
        rows.into_iter()
    }
}

impl Extend<TcpState> for Census {
    fn extend<I: IntoIterator<Item = TcpState>>(&mut self, states: I) {
        for s in states {
            self.counts[s as usize] += 1;
        }
    }
}

impl FromIterator<TcpState> for Census {
    fn from_iter<I: IntoIterator<Item = TcpState>>(states: I) -> Self {
        let mut census = Census::default();
        census.extend(states);
        census
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Census {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Census {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let counts = std::collections::BTreeMap::<TcpState, usize>::deserialize(deserializer)?;
        let mut census = Census::default();
        for (state, n) in counts {
            census.counts[state as usize] += n;
        }
        Ok(census)
    }
}

/// One `STATE COUNT` line per non-empty state, in [`Census::iter`] order.
impl fmt::Display for Census {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.iter()
            .try_for_each(|(state, n)| writeln!(f, "{state} {n}"))
    }
}

/// Counts TCP sockets (IPv4 and IPv6) per state.
///
/// ```
/// use conn_hygiene::census::{Filter, tcp_census};
///
/// let host = tcp_census(Filter::All)?;
/// println!("{} TCP sockets on this host", host.total());
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Blocking
///
/// Makes blocking syscalls on the caller's thread: from async code, call it through
/// `tokio::task::spawn_blocking` (see the [module docs](self#blocking)).
///
/// # Errors
///
/// Reading procfs failed (for [`Filter::Pid`]: `NotFound` if there is no such
/// process, `PermissionDenied` for another user's process), or
/// `Unsupported` when not on Linux.
pub fn tcp_census(filter: Filter) -> io::Result<Census> {
    Ok(sockets(filter)?.into_iter().map(|s| s.state).collect())
}

/// Lists TCP sockets (IPv4 and IPv6) matching `filter`, in table order.
///
/// ```
/// use conn_hygiene::census::{Filter, TcpState, sockets};
///
/// for s in sockets(Filter::Pid(std::process::id()))? {
///     if s.state == TcpState::CloseWait {
///         println!("{} -> {} was closed by the peer", s.local, s.remote);
///     }
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Blocking
///
/// As [`tcp_census`]: run it with `tokio::task::spawn_blocking` from async code.
///
/// # Errors
///
/// As [`tcp_census`].
pub fn sockets(filter: Filter) -> io::Result<Vec<SocketEntry>> {
    sys::sockets(filter)
}

#[cfg(target_os = "linux")]
mod sys {
    use super::{Filter, SocketEntry, TcpState};
    use procfs::ProcError;
    use procfs::net::{TcpNetEntry, TcpState as Kernel};
    use procfs::process::{FDTarget, Process};
    use std::collections::HashSet;
    use std::io;
    use std::os::unix::fs::MetadataExt;

    pub(super) fn sockets(filter: Filter) -> io::Result<Vec<SocketEntry>> {
        let mut entries = match filter {
            Filter::Pid(pid) => {
                let pid = i32::try_from(pid)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
                let proc = Process::new(pid).map_err(to_io)?;
                let inodes: HashSet<u64> = proc
                    .fd()
                    .map_err(to_io)?
                    // An fd closed while we list the directory is not an error.
                    .filter_map(Result::ok)
                    .filter_map(|fd| match fd.target {
                        FDTarget::Socket(inode) => Some(inode),
                        _ => None,
                    })
                    .collect();
                // A netlink dump sees our network namespace only; a process in
                // another one is read from its own `/proc/N/net/tcp*` tables.
                let mut all = match same_netns(pid).then(|| diag::dump(None)) {
                    Some(Ok(all)) => all,
                    Some(Err(e)) => {
                        tracing::debug!("inet_diag dump failed, reading procfs: {e}");
                        proc_tables(proc.tcp(), proc.tcp6())?
                    }
                    None => proc_tables(proc.tcp(), proc.tcp6())?,
                };
                all.retain(|e| e.inode != 0 && inodes.contains(&e.inode));
                all
            }
            Filter::All | Filter::Port(_) => match diag::dump(match filter {
                Filter::Port(p) => Some(p),
                _ => None,
            }) {
                Ok(all) => all,
                Err(e) => {
                    tracing::debug!("inet_diag dump failed, reading procfs: {e}");
                    proc_tables(procfs::net::tcp(), procfs::net::tcp6())?
                }
            },
        };
        entries.retain(|e| filter.matches_addrs(e.local, e.remote));
        Ok(entries)
    }

    /// Whether process `pid` shares this thread's network namespace (the one a
    /// netlink socket opened here dumps). `false` when either is unreadable.
    fn same_netns(pid: i32) -> bool {
        let ns = |path: &str| std::fs::metadata(path).map(|m| (m.dev(), m.ino()));
        match (
            ns(&format!("/proc/{pid}/ns/net")),
            ns("/proc/thread-self/ns/net"),
        ) {
            (Ok(theirs), Ok(ours)) => theirs == ours,
            _ => false,
        }
    }

    /// Sockets from the procfs tables, IPv4 then IPv6.
    fn proc_tables(
        tcp: procfs::ProcResult<Vec<TcpNetEntry>>,
        tcp6: procfs::ProcResult<Vec<TcpNetEntry>>,
    ) -> io::Result<Vec<SocketEntry>> {
        let mut all = tcp.map_err(to_io)?;
        // `/proc/net/tcp6` is absent when IPv6 is disabled: no IPv6 sockets then.
        match tcp6 {
            Err(ProcError::NotFound(_)) => {}
            other => all.extend(other.map_err(to_io)?),
        }
        Ok(all.into_iter().map(entry).collect())
    }

    fn entry(e: TcpNetEntry) -> SocketEntry {
        SocketEntry {
            local: e.local_address,
            remote: e.remote_address,
            state: state(&e.state),
            inode: e.inode,
        }
    }

    fn state(s: &Kernel) -> TcpState {
        match s {
            Kernel::Established => TcpState::Established,
            Kernel::SynSent => TcpState::SynSent,
            Kernel::SynRecv => TcpState::SynRecv,
            Kernel::FinWait1 => TcpState::FinWait1,
            Kernel::FinWait2 => TcpState::FinWait2,
            Kernel::TimeWait => TcpState::TimeWait,
            Kernel::Close => TcpState::Close,
            Kernel::CloseWait => TcpState::CloseWait,
            Kernel::LastAck => TcpState::LastAck,
            Kernel::Listen => TcpState::Listen,
            Kernel::Closing => TcpState::Closing,
            Kernel::NewSynRecv => TcpState::NewSynRecv,
        }
    }

    fn to_io(e: ProcError) -> io::Error {
        let kind = match &e {
            ProcError::PermissionDenied(_) => io::ErrorKind::PermissionDenied,
            ProcError::NotFound(_) => io::ErrorKind::NotFound,
            ProcError::Incomplete(_) => io::ErrorKind::UnexpectedEof,
            ProcError::Io(inner, _) => inner.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }

    /// The socket listing over `NETLINK_SOCK_DIAG`: one `inet_diag` dump per
    /// address family, as `ss -tan` does. The kernel walks its hash tables
    /// once a dump and skips empty buckets, where a `/proc/net/tcp` read is
    /// formatted as text and re-seeks through the table on every read call.
    mod diag {
        use super::super::{SocketEntry, TcpState};
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
    }

    #[cfg(test)]
    mod tests {
        use super::{diag, proc_tables};
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
            let mut expected = proc_tables(procfs::net::tcp(), procfs::net::tcp6()).unwrap();
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
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use super::{Filter, SocketEntry};
    use std::io;

    pub(super) fn sockets(_: Filter) -> io::Result<Vec<SocketEntry>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "tcp census needs Linux procfs",
        ))
    }
}

#[cfg(all(test, feature = "serde"))]
mod serde_tests {
    use super::*;

    #[test]
    fn a_census_is_a_map_of_netstat_names() {
        let census: Census = [TcpState::CloseWait, TcpState::Listen, TcpState::CloseWait]
            .into_iter()
            .collect();
        let text = serde_json::to_string(&census).unwrap();
        assert_eq!(text, r#"{"CLOSE_WAIT":2,"LISTEN":1}"#);
        assert_eq!(serde_json::from_str::<Census>(&text).unwrap(), census);
        for state in TcpState::ALL {
            let json = serde_json::to_value(state).unwrap();
            assert_eq!(json, state.as_str());
            assert_eq!(serde_json::from_value::<TcpState>(json).unwrap(), state);
        }
    }

    #[test]
    fn a_socket_entry_and_a_filter_round_trip() {
        let entry = SocketEntry {
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: "127.0.0.1:50412".parse().unwrap(),
            state: TcpState::FinWait2,
            inode: 123_456,
        };
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "local": "127.0.0.1:8080",
                "remote": "127.0.0.1:50412",
                "state": "FIN_WAIT2",
                "inode": 123456,
            })
        );
        assert_eq!(serde_json::from_value::<SocketEntry>(json).unwrap(), entry);
        for (filter, json) in [
            (Filter::All, serde_json::json!("all")),
            (Filter::Port(443), serde_json::json!({"port": 443})),
            (Filter::Pid(12), serde_json::json!({"pid": 12})),
        ] {
            assert_eq!(serde_json::to_value(filter).unwrap(), json);
            assert_eq!(serde_json::from_value::<Filter>(json).unwrap(), filter);
        }
    }
}
