//! The socket listing from procfs (`/proc/net/tcp`, `/proc/N/net/tcp6`): the fallback
//! where netlink is unavailable, and the tables of a process in another network
//! namespace.

use std::io;

use ::procfs::ProcError;
use ::procfs::net::{TcpNetEntry, TcpState as Kernel};

use super::{SocketEntry, TcpState};

/// Sockets from the procfs tables, IPv4 then IPv6.
pub(super) fn proc_tables(
    tcp: ::procfs::ProcResult<Vec<TcpNetEntry>>,
    tcp6: ::procfs::ProcResult<Vec<TcpNetEntry>>,
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

pub(super) fn to_io(e: ProcError) -> io::Error {
    let kind = match &e {
        ProcError::PermissionDenied(_) => io::ErrorKind::PermissionDenied,
        ProcError::NotFound(_) => io::ErrorKind::NotFound,
        ProcError::Incomplete(_) => io::ErrorKind::UnexpectedEof,
        ProcError::Io(inner, _) => inner.kind(),
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, e)
}
