//! [`Payload`]: a sealed connection's plaintext, above its TLS, where a tunnel's
//! payload can be told from records that carry none.

#![cfg_attr(not(feature = "hyper"), allow(dead_code))]

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::Conn;

pin_project! {
    /// Wraps the transport `serve()` runs HTTP over. For a sealed connection (`conn`
    /// given: TLS over the hygiene stream, which sees only records) it counts the
    /// plaintext that moves, for a tunnel's idle clock; otherwise it only passes
    /// through.
    #[derive(Debug)]
    pub(crate) struct Payload<Io> {
        #[pin]
        io: Io,
        sealed: Option<Conn>,
    }
}

impl<Io> Payload<Io> {
    pub(crate) fn new(io: Io, sealed: Option<Conn>) -> Self {
        Payload { io, sealed }
    }
}

/// Counts `n` bytes of plaintext on a sealed connection: a count, not a clock read, so
/// that a message costs its tunnel's idle clock nothing (see `tunnel::IdleClock`).
#[inline]
fn count(sealed: Option<&Conn>, n: usize) {
    if let Some(conn) = sealed {
        conn.add_payload(n);
    }
}

impl<Io: AsyncRead> Payload<Io> {
    // Out of line, so that the plaintext call below inlines into the server's I/O.
    #[inline(never)]
    fn poll_read_sealed(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.io.poll_read(cx, buf);
        count(this.sealed.as_ref(), buf.filled().len() - before);
        result
    }
}

impl<Io: AsyncRead> AsyncRead for Payload<Io> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.sealed.is_none() {
            // Plaintext: nothing to count, a plain call (every request's read path).
            return self.project().io.poll_read(cx, buf);
        }
        self.poll_read_sealed(cx, buf)
    }
}

impl<Io: AsyncWrite> AsyncWrite for Payload<Io> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            count(this.sealed.as_ref(), n);
        }
        result
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.io.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            count(this.sealed.as_ref(), n);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
