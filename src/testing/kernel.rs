//! Assertions on the kernel's view of sockets.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::census::{Census, Filter, TcpState, sockets};

/// Which end of a connection a port names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Sockets whose local port is the port: the server side of a listener's port.
    Local,
    /// Sockets whose remote port is the port: the clients of a server on that port.
    Remote,
    /// Both.
    Either,
}

/// The census of TCP states of the sockets on `port`, seen from `side`.
///
/// # Errors
///
/// The kernel's socket tables could not be read.
pub fn port_census(port: u16, side: Side) -> io::Result<Census> {
    let entries = sockets(Filter::Port(port))?;
    Ok(entries
        .into_iter()
        .filter(|e| match side {
            Side::Local => e.local.port() == port,
            Side::Remote => e.remote.port() == port,
            Side::Either => true,
        })
        .map(|e| e.state)
        .collect())
}

/// Polls the census of `port` every 10 ms until `accept` holds or `within` passes.
///
/// A census is a kernel dump (netlink, filtered by port; `/proc/net/tcp` where netlink
/// is not available, which walks the whole table): each read runs on tokio's blocking
/// pool, so it never stalls the runtime (and a server under test on it), and the pause
/// between polls grows to the time a read took, so polling never takes more than half
/// a CPU.
///
/// The census counts every socket on the port number, whoever owns it: on a shared
/// host a socket of another process may use the same port number (a closed server's
/// leftovers, or a client's). [`wait_for_socket`] follows one connection instead.
///
/// # Errors
///
/// `Err` carries the last census when `accept` never held.
///
/// # Panics
///
/// When the kernel's socket tables cannot be read: a test that cannot see the kernel
/// must fail, not pass.
pub async fn wait_for_census(
    port: u16,
    side: Side,
    within: Duration,
    accept: impl FnMut(&Census) -> bool,
) -> Result<Census, Census> {
    poll_kernel(within, move || port_census(port, side), accept).await
}

/// The kernel's state of the one TCP socket whose own address is `local` and whose
/// peer is `remote`; `None` when the kernel has no such socket (never was, or gone:
/// reset, or closed and past TIME_WAIT).
///
/// Unlike a port census this names one connection, so no other socket on the host
/// can be mistaken for it. IPv4-mapped IPv6 addresses match their IPv4 form.
///
/// ```no_run
/// use conn_hygiene::census::TcpState;
/// use conn_hygiene::testing::socket_state;
///
/// # fn dox(server: std::net::SocketAddr, client: std::net::SocketAddr) -> std::io::Result<()> {
/// // The server's end of the connection from `client`.
/// if socket_state(server, client)? == Some(TcpState::CloseWait) {
///     eprintln!("the client left and the server has not closed");
/// }
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// The kernel's socket tables could not be read.
pub fn socket_state(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<TcpState>> {
    let canonical = |a: SocketAddr| (a.ip().to_canonical(), a.port());
    let states = sockets(Filter::Port(local.port()))?
        .into_iter()
        .filter(|e| {
            canonical(e.local) == canonical(local) && canonical(e.remote) == canonical(remote)
        })
        .map(|e| e.state);
    // A TIME_WAIT entry may linger beside a new connection that reused its addresses.
    Ok(states.min_by_key(|s| *s == TcpState::TimeWait))
}

/// Polls [`socket_state`] every 10 ms (or longer, as [`wait_for_census`]) until
/// `accept` holds or `within` passes.
///
/// # Errors
///
/// `Err` carries the last state when `accept` never held.
///
/// # Panics
///
/// When the kernel's socket tables cannot be read.
pub async fn wait_for_socket(
    local: SocketAddr,
    remote: SocketAddr,
    within: Duration,
    mut accept: impl FnMut(Option<TcpState>) -> bool,
) -> Result<Option<TcpState>, Option<TcpState>> {
    poll_kernel(
        within,
        move || socket_state(local, remote),
        move |s: &Option<TcpState>| accept(*s),
    )
    .await
}

async fn poll_kernel<T: Send + 'static>(
    within: Duration,
    read: impl Fn() -> io::Result<T> + Clone + Send + 'static,
    mut accept: impl FnMut(&T) -> bool,
) -> Result<T, T> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let started = std::time::Instant::now();
        // Off the runtime's threads: a slow read must not delay the server under test,
        // which often runs on the same runtime.
        let value = tokio::task::spawn_blocking(read.clone())
            .await
            .expect("the kernel read does not panic")
            .expect("read the kernel's TCP socket tables");
        if accept(&value) {
            return Ok(value);
        }
        if std::time::Instant::now() >= deadline {
            return Err(value);
        }
        tokio::time::sleep(started.elapsed().max(Duration::from_millis(10))).await;
    }
}

/// Asserts that within `within` no socket on `port` (seen from `side`) is in
/// CLOSE_WAIT.
///
/// # Panics
///
/// With the port's census, if a CLOSE_WAIT socket is still there.
pub async fn assert_no_close_wait(port: u16, side: Side, within: Duration) {
    if let Err(census) =
        wait_for_census(port, side, within, |c| c.get(TcpState::CloseWait) == 0).await
    {
        panic!("CLOSE_WAIT sockets on port {port} after {within:?}:\n{census}");
    }
}

/// How many file descriptors this process has open.
///
/// # Panics
///
/// When `/proc/self/fd` cannot be read.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}
