//! A TCP transport whose socket the per-connection watch can share.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Whether a short read shows the receive buffer drained, and a short write the send
/// buffer full, so that the readiness can be cleared without another syscall: only
/// with the edge-triggered selectors (epoll, kqueue). The list is the one tokio keeps
/// in `PollEvented::poll_read`/`poll_write` (tokio issue 5866), `cfg` for `cfg`.
const SHORT_IO_CLEARS_READINESS: bool = cfg!(all(
    not(mio_unsupported_force_poll_poll),
    any(
        // epoll
        target_os = "android",
        target_os = "illumos",
        target_os = "linux",
        target_os = "redox",
        // kqueue
        target_os = "dragonfly",
        target_os = "freebsd",
        target_os = "ios",
        target_os = "macos",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "tvos",
        target_os = "visionos",
        target_os = "watchos",
    )
));

/// A tokio [`TcpStream`] behind an `Arc`, so that [`Conn::peer_closed`] can wait on the
/// socket's readiness while the application owns the stream.
///
/// It reads and writes exactly as tokio's own `TcpStream` does, including tokio's
/// rule that on epoll and kqueue a short read or write means the kernel buffer is
/// drained or full: no extra syscall per operation. A short vectored write is not
/// taken as a full buffer (it may have stopped at `IOV_MAX` slices), as in tokio.
///
/// [`Conn::peer_closed`]: crate::Conn::peer_closed
#[derive(Debug)]
pub struct TcpIo {
    socket: Arc<TcpStream>,
}

impl TcpIo {
    pub(crate) fn new(socket: TcpStream) -> Self {
        TcpIo {
            socket: Arc::new(socket),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<TcpStream> {
        &self.socket
    }

    /// The underlying tokio stream.
    pub fn get_ref(&self) -> &TcpStream {
        &self.socket
    }

    // Runs one non-blocking operation under `interest`. Where the selector is
    // edge-triggered, a transfer short of `clears_below` bytes is reported to tokio as
    // WouldBlock so that it clears the readiness, as tokio's `poll_read`/`poll_write`
    // do; the count is kept aside.
    fn poll_io(
        &self,
        cx: &mut Context<'_>,
        interest: Interest,
        clears_below: Option<usize>,
        mut op: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let clears_below = clears_below.filter(|_| SHORT_IO_CLEARS_READINESS);
        loop {
            match interest {
                Interest::READABLE => ready!(self.socket.poll_read_ready(cx))?,
                _ => ready!(self.socket.poll_write_ready(cx))?,
            }
            let mut short = None;
            let result = self.socket.try_io(interest, || {
                let n = op(&self.socket)?;
                if n > 0 && clears_below.is_some_and(|len| n < len) {
                    short = Some(n);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match (result, short) {
                (cleared, Some(n)) => {
                    // The WouldBlock that cleared the readiness holds no allocation:
                    // forgotten rather than dropped (a call per short read).
                    std::mem::forget(cleared);
                    return Poll::Ready(Ok(n));
                }
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (result, None) => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncRead for TcpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // `try_read_buf` reads into the unfilled part without zeroing it first.
        let len = Some(buf.remaining());
        ready!(self.poll_io(cx, Interest::READABLE, len, |s| s.try_read_buf(buf)))?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TcpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, Interest::WRITABLE, Some(buf.len()), |s| {
            s.try_write(buf)
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // tokio never clears on a short `writev`: it may have stopped at `IOV_MAX`
        // slices with room left in the buffer, and then no edge would come to wake us.
        self.poll_io(cx, Interest::WRITABLE, None, |s| s.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(SockRef::from(&*self.socket).shutdown(std::net::Shutdown::Write))
    }
}
