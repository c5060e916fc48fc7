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
//! [`io::ErrorKind::Unsupported`](std::io::ErrorKind::Unsupported) error.
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

mod list;
#[cfg(target_os = "linux")]
mod netlink;
#[cfg(target_os = "linux")]
mod procfs;

pub use list::{sockets, tcp_census};

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
