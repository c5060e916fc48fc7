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
//! Linux only: the sockets come from `/proc/net/tcp` and `/proc/net/tcp6`
//! (read through the `procfs` crate). Elsewhere every function returns an
//! [`io::ErrorKind::Unsupported`] error.

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// A TCP state as the kernel reports it (`include/net/tcp_states.h`).
///
/// [`as_str`](Self::as_str) gives netstat's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    fn matches_addrs(self, local: SocketAddr, remote: SocketAddr) -> bool {
        match self {
            Filter::Port(p) => local.port() == p || remote.port() == p,
            Filter::All | Filter::Pid(_) => true,
        }
    }
}

/// One TCP socket from the kernel's table.
#[derive(Debug, Clone, PartialEq, Eq)]
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

    pub(super) fn sockets(filter: Filter) -> io::Result<Vec<SocketEntry>> {
        let entries = match filter {
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
                // The process's own tables: it may live in another network namespace.
                let mut all = proc.tcp().map_err(to_io)?;
                all.extend(optional(proc.tcp6())?);
                all.retain(|e| e.inode != 0 && inodes.contains(&e.inode));
                all
            }
            Filter::All | Filter::Port(_) => {
                let mut all = procfs::net::tcp().map_err(to_io)?;
                all.extend(optional(procfs::net::tcp6())?);
                all
            }
        };
        Ok(entries
            .into_iter()
            .filter(|e| filter.matches_addrs(e.local_address, e.remote_address))
            .map(entry)
            .collect())
    }

    // `/proc/net/tcp6` is absent when IPv6 is disabled: no IPv6 sockets then.
    fn optional(table: procfs::ProcResult<Vec<TcpNetEntry>>) -> io::Result<Vec<TcpNetEntry>> {
        match table {
            Err(ProcError::NotFound(_)) => Ok(Vec::new()),
            other => other.map_err(to_io),
        }
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
