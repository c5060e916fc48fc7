//! Assertions on the kernel's view of sockets.

use std::io;
use std::time::Duration;

use crate::census::{Census, Filter, sockets};

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
    mut accept: impl FnMut(&Census) -> bool,
) -> Result<Census, Census> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let census = port_census(port, side).expect("read the kernel's TCP socket tables");
        if accept(&census) {
            return Ok(census);
        }
        if std::time::Instant::now() >= deadline {
            return Err(census);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts that within `within` no socket on `port` (seen from `side`) is in
/// CLOSE_WAIT.
///
/// # Panics
///
/// With the port's census, if a CLOSE_WAIT socket is still there.
pub async fn assert_no_close_wait(port: u16, side: Side, within: Duration) {
    use crate::census::TcpState;
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
