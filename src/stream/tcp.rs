//! A TCP transport whose socket the per-connection watch can share.

use std::io::{self, IoSlice, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

// A write to a reset socket must fail with EPIPE, not raise SIGPIPE, even in a process
// that did not ignore the signal (as std's own TcpStream does).
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = 0;

/// A tokio [`TcpStream`] behind an `Arc`, so that [`Conn::peer_closed`] can wait on the
/// socket's readiness while the application owns the stream.
///
/// It reads and writes exactly as tokio's own `TcpStream` does, including tokio's
/// rule that a short read or write means the kernel buffer is drained: no extra
/// syscall per operation.
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

    // Runs one non-blocking syscall under `interest`. A short transfer is reported to
    // tokio as WouldBlock so that it clears the readiness, exactly as tokio's
    // `poll_read`/`poll_write` do for edge-triggered epoll; the count is kept aside.
    fn poll_io(
        &self,
        cx: &mut Context<'_>,
        interest: Interest,
        len: usize,
        mut op: impl FnMut(&socket2::Socket) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            match interest {
                Interest::READABLE => ready!(self.socket.poll_read_ready(cx))?,
                _ => ready!(self.socket.poll_write_ready(cx))?,
            }
            let mut short = None;
            let result = self.socket.try_io(interest, || {
                let n = op(&SockRef::from(&*self.socket))?;
                if n > 0 && n < len {
                    short = Some(n);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match (result, short) {
                (_, Some(n)) => return Poll::Ready(Ok(n)),
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
        let dst = buf.initialize_unfilled();
        let len = dst.len();
        let n = ready!(self.poll_io(cx, Interest::READABLE, len, |s| {
            let mut s = s;
            s.read(dst)
        }))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TcpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, Interest::WRITABLE, buf.len(), |s| {
            s.send_with_flags(buf, SEND_FLAGS)
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.poll_io(cx, Interest::WRITABLE, len, |s| {
            s.send_vectored_with_flags(bufs, SEND_FLAGS)
        })
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
