//! Closing a connection when its stream is dropped: at once, reset, or after a
//! lingering close run by a small task of its own.

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use crate::conn::{Abandon, Conn, PeerGone};
use crate::rate::Tail;
use crate::registry::Registration;

/// Ties the connection's closed state, its registry entry and its socket to the
/// stream's life, and closes them well when the stream is dropped.
#[derive(Debug)]
pub(super) struct Lifetime {
    pub(super) conn: Conn,
    registration: Option<Registration>,
    // The TCP socket, if the transport is one: the close hands it to the linger task.
    socket: Option<Arc<TcpStream>>,
    // Our FIN went out: `poll_shutdown` succeeded.
    pub(super) write_shut: bool,
    // The application read the peer's FIN: nothing unread can follow it.
    pub(super) read_eof: bool,
    // `into_inner` gave the transport away: the socket is no longer ours to close.
    detached: bool,
}

impl Lifetime {
    pub(super) fn new(conn: Conn, socket: Option<Arc<TcpStream>>) -> Self {
        Lifetime {
            conn,
            registration: None,
            socket,
            write_shut: false,
            read_eof: false,
            detached: false,
        }
    }

    /// The TCP socket, if the transport is one.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(super) fn socket(&self) -> Option<&Arc<TcpStream>> {
        self.socket.as_ref()
    }

    pub(super) fn set_registration(&mut self, registration: Registration) {
        self.registration = Some(registration);
    }

    /// Whether this is the first report, on the stream's listener, that the layer is
    /// missing (always, for a stream outside a listener).
    pub(super) fn first_missing_layer_report(&self) -> bool {
        self.registration
            .as_ref()
            .is_none_or(Registration::first_missing_layer_report)
    }

    pub(super) fn detach(&mut self) {
        self.detached = true;
    }

    /// Whether dropping the stream now needs a lingering close: we sent FIN, the
    /// application did not read the peer's, and the close is neither a reset nor
    /// someone else's business.
    fn lingers(&self) -> bool {
        self.write_shut
            && !self.read_eof
            && !self.detached
            && self.socket.is_some()
            && self.conn.abandoned().is_none()
            && !self.conn.policy().reset_on_close()
    }
}

impl Drop for Lifetime {
    fn drop(&mut self) {
        if self.lingers()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // The task owns the socket and the registry entry until the linger ends;
            // its own `Lifetime`, never shut down, then closes at once.
            let rest = Lifetime {
                conn: self.conn.clone(),
                registration: self.registration.take(),
                socket: self.socket.take(),
                write_shut: false,
                read_eof: false,
                detached: false,
            };
            self.conn.set_lingering();
            let span = self.conn.span().clone();
            runtime.spawn(linger(rest).instrument(span));
            return;
        }
        if !self.detached && self.conn.policy().reset_on_close() {
            self.conn.set_zero_linger();
        }
        // The socket first, so that whoever sees the connection closed finds the
        // descriptor closed too; the registry entry goes with the fields, after.
        drop(self.socket.take());
        self.conn.mark_closed();
    }
}

/// Reads and discards until the peer's FIN, an error, the linger bound (then an RST)
/// or an abandonment from outside (a drain deadline), then closes the connection.
/// The bound waits while our last bytes are still in the kernel on their way to a peer
/// that keeps taking them (see `Tail`).
async fn linger(life: Lifetime) {
    let Some(socket) = life.socket.as_deref() else {
        return;
    };
    let conn = &life.conn;
    let hold = conn.policy().linger_timeout();
    let mut deadline = Instant::now() + hold;
    let mut tail = Tail::new(hold);
    let mut discarded = 0;
    let outcome = {
        let discard = discard(socket, &mut discarded);
        tokio::pin!(discard);
        loop {
            tokio::select! {
                biased;
                _ = conn.wait_abandoned() => break "abandoned",
                outcome = &mut discard => break outcome,
                () = sleep_until(deadline) => {
                    if delivering(socket, conn, &mut tail) {
                        deadline = Instant::now() + hold;
                        continue;
                    }
                    conn.abandon(Abandon::LingerTimeout);
                    break "timeout";
                }
            }
        }
    };
    if outcome == "peer_fin" {
        conn.record_peer(PeerGone::Fin);
    }
    tracing::debug!(
        target: "conn_hygiene::linger",
        parent: conn.span(),
        outcome,
        discarded,
        "lingering close finished"
    );
}

/// Whether the kernel still holds our bytes for a peer that keeps taking them (see
/// `Tail`).
#[cfg(target_os = "linux")]
fn delivering(socket: &TcpStream, conn: &Conn, tail: &mut Tail) -> bool {
    use crate::rate::PeerProgress;
    let policy = conn.policy();
    socket.sample().is_some_and(|sample| {
        tail.still_delivering(
            sample,
            Instant::now(),
            policy.write_stall_timeout(),
            conn.min_send_rate(),
        )
    })
}

/// Without a kernel view, the linger bound is what it says.
#[cfg(not(target_os = "linux"))]
fn delivering(_: &TcpStream, _: &Conn, _: &mut Tail) -> bool {
    false
}

/// Reads and throws away until the peer's FIN (`peer_fin`) or an error (`error`).
async fn discard(socket: &TcpStream, discarded: &mut u64) -> &'static str {
    loop {
        if socket.readable().await.is_err() {
            return "error";
        }
        match read_and_drop(socket) {
            Ok(0) => return "peer_fin",
            Ok(n) => *discarded += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return "error",
        }
    }
}

/// One non-blocking read. The scratch buffer lives on the stack for the call, not in
/// the task: a lingering connection costs no buffer while it waits.
fn read_and_drop(socket: &TcpStream) -> std::io::Result<usize> {
    let mut scratch = [0u8; 4096];
    socket.try_read(&mut scratch)
}
