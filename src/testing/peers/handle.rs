//! A running peer: what it received, how its connection ended, and closing it.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::kind::{End, PeerKind};
use super::script::{CloseMode, Script, drive};
use super::wire::Progress;
use crate::census::TcpState;
use crate::testing::http1::Head;
use crate::testing::kernel::{socket_state, wait_for_socket};

/// What a peer received and how its connection ended. See [`PeerHandle::response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerResponse {
    bytes: Vec<u8>,
    end: End,
    ended_at: Option<Instant>,
}

impl PeerResponse {
    /// Every byte received, in order (a never-reading peer receives none).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How the connection ended.
    pub fn end(&self) -> End {
        self.end
    }

    /// When the peer saw the end; `None` while [`End::Open`].
    pub fn ended_at(&self) -> Option<Instant> {
        self.ended_at
    }

    /// The status code of the first HTTP/1 response received, if its head arrived
    /// whole.
    pub fn status(&self) -> Option<u16> {
        Some(self.head()?.status())
    }

    /// The bytes after the first response's head (raw: chunked framing is kept, and a
    /// pipelined second response follows the first). For the body without its
    /// framing, parse [`bytes`](Self::bytes) with [`http1::Response`].
    ///
    /// [`http1::Response`]: crate::testing::http1::Response
    pub fn body(&self) -> &[u8] {
        self.head()
            .map_or(&[], |head| &self.bytes[head.wire_len()..])
    }

    fn head(&self) -> Option<Head<'_>> {
        Head::parse(&self.bytes).ok().flatten()
    }

    /// The bytes received, as text (invalid UTF-8 replaced), for messages and
    /// `contains` checks.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// A running abrupt peer. Dropping it closes the socket. See [`Peer`].
///
/// [`Peer`]: crate::testing::Peer
#[must_use = "dropping the handle closes the peer's socket"]
pub struct PeerHandle {
    kind: PeerKind,
    local: SocketAddr,
    server: SocketAddr,
    progress: watch::Receiver<Progress>,
    close: Option<oneshot::Sender<CloseMode>>,
    task: JoinHandle<()>,
}

impl fmt::Debug for PeerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let progress = self.progress.borrow();
        f.debug_struct("PeerHandle")
            .field("kind", &self.kind)
            .field("local", &self.local)
            .field("server", &self.server)
            .field("received", &progress.received.len())
            .field("settled", &progress.settled)
            .field("end", &progress.end)
            .finish_non_exhaustive()
    }
}

impl Drop for PeerHandle {
    fn drop(&mut self) {
        // Dropping the task drops the socket: a close, as when a test ends.
        self.task.abort();
    }
}

impl PeerHandle {
    /// Plays `script` on `stream` in a task of its own.
    pub(super) fn spawn(
        kind: PeerKind,
        local: SocketAddr,
        server: SocketAddr,
        stream: TcpStream,
        script: Script,
    ) -> PeerHandle {
        let (progress, watcher) = watch::channel(Progress::default());
        let (close, close_rx) = oneshot::channel();
        let task = tokio::spawn(drive(stream, script, progress, close_rx));
        PeerHandle {
            kind,
            local,
            server,
            progress: watcher,
            close: Some(close),
            task,
        }
    }

    /// The kind of misbehaviour.
    pub fn kind(&self) -> PeerKind {
        self.kind
    }

    /// The peer's own address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The peer's own port: the remote port of the server's socket for this
    /// connection, to find it in a census.
    pub fn local_port(&self) -> u16 {
        self.local.port()
    }

    /// The server's address, as this connection reached it (the server end's own
    /// address in the kernel's table).
    pub fn server_addr(&self) -> SocketAddr {
        self.server
    }

    /// The kernel's state of the server's end of this connection; `None` once the
    /// kernel has no such socket (it was reset, or closed and past TIME_WAIT).
    ///
    /// It names this one connection: no other socket on the host, even one with the
    /// server's port number, is mistaken for it.
    ///
    /// # Errors
    ///
    /// The kernel's socket tables could not be read.
    pub fn server_side(&self) -> io::Result<Option<TcpState>> {
        socket_state(self.server, self.local)
    }

    /// Waits until `accept` holds for [`server_side`](Self::server_side), polling the
    /// kernel as [`wait_for_socket`] does.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use conn_hygiene::census::TcpState;
    /// use conn_hygiene::testing::Peer;
    ///
    /// # async fn dox(addr: std::net::SocketAddr) -> std::io::Result<()> {
    /// let peer = Peer::fin_after_request(addr).path("/stuck").start().await?;
    /// // The server must not leave its end in CLOSE_WAIT for more than five seconds.
    /// let state = peer
    ///     .wait_server_side(Duration::from_secs(5), |s| s != Some(TcpState::CloseWait))
    ///     .await;
    /// assert!(state.is_ok(), "still {state:?}");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// `Err` carries the last state when `accept` never held.
    ///
    /// # Panics
    ///
    /// When the kernel's socket tables cannot be read.
    pub async fn wait_server_side(
        &self,
        within: Duration,
        accept: impl FnMut(Option<TcpState>) -> bool,
    ) -> Result<Option<TcpState>, Option<TcpState>> {
        wait_for_socket(self.server, self.local, within, accept).await
    }

    /// Waits until the peer begins the misbehaviour it was built for, and returns when
    /// that happened (each constructor says when). `None` if the connection ended
    /// first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn settled(&self) -> Option<Instant> {
        let mut progress = self.progress.clone();
        // The sender goes away without an end only if the task was aborted.
        let _ = progress
            .wait_for(|p| p.settled.is_some() || p.end.is_some())
            .await;
        progress.borrow().settled
    }

    /// Waits until the connection ends, and returns what the peer received.
    ///
    /// A peer that only ever waits (a silent or never-reading one, against a server
    /// with no timeout) never ends: bound this with
    /// [`response_within`](Self::response_within) or `tokio::time::timeout`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the bytes keep accumulating in the background.
    pub async fn response(&self) -> PeerResponse {
        let mut progress = self.progress.clone();
        // The sender goes away without an end only if the task was aborted.
        let _ = progress.wait_for(|p| p.end.is_some()).await;
        snapshot(&progress.borrow(), End::Dropped)
    }

    /// As [`response`](Self::response), but gives up after `within` and then reports
    /// what was received so far, with [`End::Open`].
    pub async fn response_within(&self, within: Duration) -> PeerResponse {
        match tokio::time::timeout(within, self.response()).await {
            Ok(response) => response,
            Err(_) => snapshot(&self.progress.borrow(), End::Open),
        }
    }

    /// Closes the socket (FIN, or RST if unread bytes are left in its receive buffer,
    /// as the kernel does) and waits until it is closed.
    pub async fn close(mut self) {
        self.finish(CloseMode::Close).await;
    }

    /// Resets the connection (`SO_LINGER` zero, then close) and waits until the socket
    /// is closed.
    pub async fn reset(mut self) {
        self.finish(CloseMode::Reset).await;
    }

    async fn finish(&mut self, mode: CloseMode) {
        if let Some(close) = self.close.take() {
            // The task may have finished already: then the socket is closed.
            let _ = close.send(mode);
        }
        let _ = (&mut self.task).await;
    }
}

fn snapshot(progress: &Progress, otherwise: End) -> PeerResponse {
    PeerResponse {
        bytes: progress.received.clone(),
        end: progress.end.unwrap_or(otherwise),
        ended_at: progress.ended_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_body_of_a_response() {
        let response = PeerResponse {
            bytes: b"HTTP/1.1 431 Request Header Fields Too Large\r\nx: y\r\n\r\nhi".to_vec(),
            end: End::Eof,
            ended_at: None,
        };
        assert_eq!(response.status(), Some(431));
        assert_eq!(response.body(), b"hi");
        let none = PeerResponse {
            bytes: Vec::new(),
            end: End::Reset,
            ended_at: None,
        };
        assert_eq!(none.status(), None);
        assert_eq!(none.body(), b"");
    }
}
