//! Restarting on one host without refusing a connection: the new process takes over
//! the *same* listening socket while the old one drains.
//!
//! # Why an inherited socket and not `SO_REUSEPORT`
//!
//! With `SO_REUSEPORT` the old and the new process each have a listening socket of
//! their own, and the kernel spreads new connections over both. When the old process
//! closes its socket, the connections waiting in that socket's accept queue are reset
//! (Linux migrates them only with `net.ipv4.tcp_migrate_req = 1`, off by default), and
//! however carefully it first accepts until `EAGAIN`, a connection can land in the
//! queue between the last `accept` and the `close`. An inherited socket has one accept
//! queue: the old process stops accepting and drops its descriptor, the socket stays
//! open in the new process, and nothing waiting in it is lost.
//!
//! # How the socket is passed
//!
//! Taking a socket from a descriptor number (systemd's `LISTEN_FDS`, fd 3 on) needs
//! `unsafe` (`FromRawFd`), which this crate forbids. Standard input needs none: std
//! lends it as a [`BorrowedFd`](std::os::fd::BorrowedFd), which is duplicated into an
//! owned descriptor. So the listening socket is passed as standard input, as inetd's
//! "wait" services get theirs, and [`stdin_listener`] takes it:
//!
//! - under **systemd**, a socket unit holds the port and every service instance that
//!   names it gets the same socket on stdin (`StandardInput=socket`, which systemd
//!   allows with `Accept=no` when the unit has a single socket). `systemctl restart`
//!   refuses nothing but pauses while the old process drains; two instances
//!   (`app@blue`, `app@green`) can overlap instead, as long as the socket unit's
//!   `Service=` is not one of them (it would start the stopped one again). The
//!   deployment guide (`conn_hygiene::deploy`, feature `hyper`) has the units, untested
//!   here for want of systemd;
//! - any other supervisor binds the socket once and hands it to each child as its
//!   standard input (in Rust: `Command::stdin(Stdio::from(OwnedFd::from(listener)))`).
//!
//! The old process's shutdown then works as usual: the deregistration phase of
//! `serve()` (`Policy::deregister_delay`) retires its keep-alive connections one
//! answer at a time while both processes accept, and closing its listener refuses
//! nothing, because the new process still holds the socket.
//!
//! # Example
//!
//! ```no_run
//! # async fn dox() -> std::io::Result<()> {
//! use conn_hygiene::{Listener, Policy, SocketOptions};
//!
//! let listener = Listener::from_tokio(
//!     conn_hygiene::takeover::stdin_listener()?,
//!     SocketOptions::new(),
//!     Policy::default(),
//! )?;
//! # Ok(()) }
//! ```

use std::io;
use std::os::fd::AsFd;

use socket2::{SockRef, Type};
use tokio::net::TcpListener;

/// The listening TCP socket passed as standard input, as a Tokio listener.
///
/// The descriptor is duplicated (close-on-exec), so standard input stays open: the
/// socket lives on in this process until it exits, which costs nothing, as the old
/// process accepts no more once its listener is dropped.
///
/// # Errors
///
/// `InvalidInput` if standard input is not a listening stream socket (a terminal, a
/// pipe, a connected socket); the error of `dup` or of making it non-blocking.
///
/// # Panics
///
/// Outside a Tokio runtime, like [`TcpListener::from_std`].
pub fn stdin_listener() -> io::Result<TcpListener> {
    let stdin = io::stdin();
    let socket = SockRef::from(&stdin);
    // `getsockopt` on anything that is not a socket fails with ENOTSOCK.
    let listening = socket.r#type().ok() == Some(Type::STREAM)
        && socket.is_listener().unwrap_or(false)
        && socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some();
    if !listening {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "standard input is not a listening TCP socket",
        ));
    }
    let listener = std::net::TcpListener::from(stdin.as_fd().try_clone_to_owned()?);
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}
