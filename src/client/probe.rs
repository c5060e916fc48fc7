//! The reuse probe: may an idle pooled connection carry another request?

use std::io;
use std::mem::MaybeUninit;

use socket2::SockRef;

use crate::conn::{Abandon, Conn, PeerGone};

/// What [`probe`] found out about an idle pooled connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Probe {
    /// Open, and nothing unread: safe to reuse.
    Reusable,
    /// The peer sent FIN or RST, or the connection closed on our side.
    PeerGone(PeerGone),
    /// The connection was abandoned (a clock expired, a drain deadline passed).
    Abandoned(Abandon),
    /// Bytes wait unread on the idle connection: a late or unsolicited response.
    /// Reusing it would pair the next request with the wrong answer.
    Unread,
}

impl Probe {
    /// Whether the connection may carry another request.
    pub fn is_reusable(self) -> bool {
        self == Probe::Reusable
    }
}

/// Checks, without blocking and without consuming a byte, whether an idle pooled
/// connection may be reused.
///
/// Cost: no system call when the answer is already known: the connection was
/// abandoned or closed, the peer's FIN or RST was seen by the stream, by a pending
/// [`Conn::peer_closed`] or by an earlier probe, or (Linux) the runtime's reactor has
/// already received `EPOLLRDHUP` for the socket. Otherwise one `recv(MSG_PEEK)` of one
/// byte on the non-blocking socket: `0` means FIN, `EAGAIN` an open connection.
/// What it finds is recorded on the [`Conn`], so the next probe is free.
///
/// A peer's FIN that arrives after unread bytes is not visible to the peek, but such
/// a connection is [`Probe::Unread`], not reusable, anyway. A [`Conn`] without a
/// socket ([`Conn::new`]) reports only what its stream has seen.
pub fn probe(conn: &Conn) -> Probe {
    if let Some(reason) = conn.abandoned() {
        return Probe::Abandoned(reason);
    }
    if let Some(gone) = conn.peer_gone() {
        return Probe::PeerGone(gone);
    }
    let Some(socket) = conn.socket() else {
        return Probe::Reusable;
    };
    if let Some(gone) = sys::seen_by_reactor(&socket) {
        conn.record_peer(gone);
        return Probe::PeerGone(gone);
    }
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    loop {
        return match SockRef::from(&*socket).peek(&mut byte) {
            Ok(0) => {
                conn.record_peer(PeerGone::Fin);
                Probe::PeerGone(PeerGone::Fin)
            }
            Ok(_) => Probe::Unread,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Probe::Reusable,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // ECONNRESET, ETIMEDOUT (keepalive or TCP_USER_TIMEOUT expiry), EPIPE.
            Err(_) => {
                conn.record_peer(PeerGone::Reset);
                Probe::PeerGone(PeerGone::Reset)
            }
        };
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod sys {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use crate::conn::PeerGone;

    /// What the reactor already knows, read with one poll and no system call.
    pub(super) fn seen_by_reactor(socket: &TcpStream) -> Option<PeerGone> {
        // `PRIORITY` covers tokio's READ_CLOSED bit (EPOLLRDHUP) and not plain
        // READABLE; the waiter registered by this single poll is removed on drop, and
        // it clears no readiness, so the stream's reader keeps its edge.
        let ready = pin!(socket.ready(Interest::PRIORITY | Interest::ERROR));
        match ready.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(ready)) if ready.is_error() => Some(PeerGone::Reset),
            Poll::Ready(Ok(ready)) if ready.is_read_closed() => Some(PeerGone::Fin),
            // Urgent data alone, or nothing known yet: ask the kernel.
            Poll::Ready(Ok(_)) | Poll::Pending => None,
            // The runtime is shutting down: treat it as our own close.
            Poll::Ready(Err(_)) => Some(PeerGone::LocalClose),
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod sys {
    use tokio::net::TcpStream;

    use crate::conn::PeerGone;

    /// Without `EPOLLRDHUP` the reactor does not report a FIN apart from readability.
    pub(super) fn seen_by_reactor(_socket: &TcpStream) -> Option<PeerGone> {
        None
    }
}
