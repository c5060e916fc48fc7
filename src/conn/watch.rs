//! Kernel-level detection of the peer's FIN or RST without reading (the FIN watch).

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(super) use epoll::{FIN_SEEN_WITHOUT_READING, peer_gone};
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(super) use reading::{FIN_SEEN_WITHOUT_READING, peer_gone};

/// `EPOLLRDHUP` reports the peer's FIN while unread bytes wait.
#[cfg(any(target_os = "linux", target_os = "android"))]
mod epoll {
    use super::super::reason::PeerGone;
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    pub(crate) const FIN_SEEN_WITHOUT_READING: bool = true;

    pub(crate) async fn peer_gone(socket: &TcpStream) -> PeerGone {
        // `PRIORITY` interest matches tokio's READ_CLOSED bit (EPOLLRDHUP) but not plain
        // READABLE, so unread bytes in the buffer do not wake this waiter, and it clears
        // no readiness: the real reader keeps its edge. `ready()` waits in tokio's waiter
        // list, not in the single reader-waker slot of `poll_read_ready`, so it takes no
        // wakeup from the reader either. READ_CLOSED and ERROR are never cleared once set.
        match socket.ready(Interest::PRIORITY | Interest::ERROR).await {
            Ok(ready) if ready.is_error() => PeerGone::Reset,
            Ok(_) => PeerGone::Fin,
            // The runtime is shutting down: treat it as our own close.
            Err(_) => PeerGone::LocalClose,
        }
    }
}

/// Without `EPOLLRDHUP` the peer's FIN is seen only when the application reads it.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod reading {
    use super::super::reason::PeerGone;
    use tokio::net::TcpStream;

    pub(crate) const FIN_SEEN_WITHOUT_READING: bool = false;

    pub(crate) async fn peer_gone(_socket: &TcpStream) -> PeerGone {
        std::future::pending().await
    }
}
