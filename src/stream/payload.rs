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
/// that a message costs its tunnel's idle clock nothing (see `tunnel_idle::IdleClock`).
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

#[cfg(all(test, feature = "hyper"))]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    use super::*;
    use crate::conn::Abandon;
    use crate::stream::HygieneStream;
    use crate::{HalfClose, Policy};

    /// A sealed tunnel's idle clock counts the plaintext above its TLS, both ways, and
    /// not the bytes below it (records that carry none): payload every 4 s holds a
    /// 5 s clock for a minute; bytes below only do not, and the cut comes between the
    /// timeout and an eighth of it more after the last payload.
    #[tokio::test(start_paused = true)]
    async fn a_sealed_tunnel_counts_plaintext_not_records() {
        let timeout = Duration::from_secs(5);
        let policy = Policy::builder()
            .half_close(HalfClose::AllowFor(Duration::from_secs(1)))
            .tunnel_idle_timeout(Some(timeout))
            .build()
            .unwrap();
        let (io, mut peer) = tokio::io::duplex(1024);
        let conn = Conn::new(1, "127.0.0.1:1".parse().unwrap(), policy);
        conn.mark_http();
        conn.mark_sealed();
        // The TLS would sit between the two: here the plaintext is the bytes.
        let mut sealed = Payload::new(HygieneStream::new(io, conn.clone()), Some(conn.clone()));
        conn.mark_tunnel();
        let mut buf = [0u8; 16];
        let mut last = Instant::now();
        for round in 0..15 {
            if round % 2 == 0 {
                peer.write_all(b"in").await.unwrap();
                assert_eq!(sealed.read(&mut buf).await.unwrap(), 2);
            } else {
                sealed.write_all(b"out").await.unwrap();
            }
            last = Instant::now();
            let waited = tokio::time::timeout(Duration::from_secs(4), sealed.read(&mut buf)).await;
            assert!(waited.is_err(), "round {round}: no clock fires: {waited:?}");
        }
        // Records only (bytes below the plaintext, both ways, as the TLS reads and
        // writes them): no activity.
        let mut record = [0u8; 1];
        while conn.abandoned().is_none() {
            assert!(
                last.elapsed() < timeout * 2,
                "the tunnel idle clock never fired"
            );
            peer.write_all(b"r").await.unwrap();
            if sealed.io.read(&mut record).await.is_err()
                || sealed.io.write_all(b"r").await.is_err()
            {
                break;
            }
            peer.read_exact(&mut record).await.unwrap();
            // The TLS waits for its next record.
            let waited = tokio::time::timeout(Duration::from_secs(1), sealed.io.read(&mut record));
            if let Ok(read) = waited.await {
                let error = read.expect_err("no record was sent");
                assert_eq!(error.kind(), io::ErrorKind::TimedOut);
            }
        }
        let took = last.elapsed();
        assert_eq!(conn.abandoned(), Some(Abandon::TunnelIdleTimeout));
        assert!(
            took >= timeout && took <= timeout + timeout / 8,
            "cut {took:?} after the last payload"
        );
    }
}
