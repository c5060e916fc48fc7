//! The listing itself: netlink's `inet_diag` dump where the kernel allows it, procfs
//! otherwise and for a process in another network namespace; `Unsupported` off Linux.

use std::io;

use super::{Census, Filter, SocketEntry};

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
/// `tokio::task::spawn_blocking` (see the [module docs](crate::census#blocking)).
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
    use super::super::netlink as diag;
    use super::super::procfs::{proc_tables, to_io};
    use super::super::{Filter, SocketEntry};
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
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use super::super::{Filter, SocketEntry};
    use std::io;

    pub(super) fn sockets(_: Filter) -> io::Result<Vec<SocketEntry>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "tcp census needs Linux procfs",
        ))
    }
}
