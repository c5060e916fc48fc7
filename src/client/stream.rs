//! The connection the connector yields: hyper's I/O over a [`HygieneStream`], which
//! reports the peer leaving and runs the keep-alive eviction clock.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep, sleep_until};

use super::keep_alive::{Evictor, Shared};
use crate::conn::{Abandon, Conn, PeerGone};
use crate::stream::{HygieneStream, TcpIo};

/// A connection made by [`HygieneConnector`]: the [`HygieneStream`] with hyper's I/O
/// traits and hyper-util's `Connection`.
///
/// It emits the `peer_closed` event when the peer leaves, and runs the eviction clock
/// of [`KeepAliveLayer`].
///
/// [`HygieneConnector`]: super::HygieneConnector
/// [`KeepAliveLayer`]: super::KeepAliveLayer
#[derive(Debug)]
pub struct ClientStream {
    io: TokioIo<Tracked>,
}

impl ClientStream {
    pub(super) fn new(stream: HygieneStream<TcpIo>) -> Self {
        let now = Instant::now();
        ClientStream {
            io: TokioIo::new(Tracked {
                stream,
                shared: Arc::new(Shared::default()),
                exchange: 0,
                sent: false,
                last_read: now,
                last_io: now,
                evict_timer: None,
                reported: false,
            }),
        }
    }

    /// The connection's handle.
    pub fn conn(&self) -> &Conn {
        self.io.inner().stream.conn()
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &HygieneStream<TcpIo> {
        &self.io.inner().stream
    }

    /// The wrapped stream, mutably. Bytes moved through it bypass the eviction clock.
    pub fn get_mut(&mut self) -> &mut HygieneStream<TcpIo> {
        &mut self.io.inner_mut().stream
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> HygieneStream<TcpIo> {
        self.io.into_inner().stream
    }
}

impl Connection for ClientStream {
    fn connected(&self) -> Connected {
        let tracked = self.io.inner();
        // tokio's `TcpStream` gives hyper-util's own `HttpInfo` (local and peer address).
        tracked
            .stream
            .get_ref()
            .get_ref()
            .connected()
            .extra(tracked.stream.conn().clone())
            .extra(Evictor(Arc::downgrade(&tracked.shared)))
    }
}

impl hyper::rt::Read for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        hyper::rt::Read::poll_read(Pin::new(&mut self.io), cx, buf)
    }
}

impl hyper::rt::Write for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        hyper::rt::Write::poll_write(Pin::new(&mut self.io), cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        hyper::rt::Write::poll_write_vectored(Pin::new(&mut self.io), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.io)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        hyper::rt::Write::poll_flush(Pin::new(&mut self.io), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        hyper::rt::Write::poll_shutdown(Pin::new(&mut self.io), cx)
    }
}

/// The tokio-level half of [`ClientStream`]: notices the peer leaving and runs the
/// keep-alive eviction clock in the connection's own task.
#[derive(Debug)]
struct Tracked {
    stream: HygieneStream<TcpIo>,
    shared: Arc<Shared>,
    // Requests written so far: a write after a read starts the next one.
    exchange: u64,
    sent: bool,
    last_read: Instant,
    last_io: Instant,
    evict_timer: Option<Pin<Box<Sleep>>>,
    reported: bool,
}

impl Tracked {
    fn peer_left(&mut self) {
        let conn = self.stream.conn();
        let how = match conn.peer_gone() {
            Some(PeerGone::Fin) => "fin",
            Some(PeerGone::Reset) => "rst",
            _ => return,
        };
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        tracing::debug!(
            target: "conn_hygiene::client",
            parent: conn.span(),
            event = "peer_closed",
            how,
            awaiting_response = self.sent,
            idle_ms = self.last_io.elapsed().as_millis() as u64,
            "pooled connection closed by the peer"
        );
    }

    /// Runs the keep-alive eviction clock while a read is pending. `Some` when the
    /// connection is evicted now.
    fn poll_evict(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let mut evict = self.shared.lock();
        if !evict
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            evict.waker = Some(cx.waker().clone());
        }
        let armed = evict.armed?;
        if armed.exchange != self.exchange || self.sent {
            // Another request went out since that response: the server's keep-alive
            // clock restarts with the next response, which arms again.
            evict.armed = None;
            return None;
        }
        // The server's clock starts when it has sent the response's last byte.
        let deadline = self.last_read + armed.after;
        let timer = self
            .evict_timer
            .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        evict.armed = None;
        drop(evict);
        let conn = self.stream.conn();
        tracing::debug!(
            target: "conn_hygiene::client",
            parent: conn.span(),
            event = "keep_alive_evict",
            keep_alive_ms = armed.keep_alive.as_millis() as u64,
            idle_ms = self.last_io.elapsed().as_millis() as u64,
            "evicting idle connection before the server's keep-alive timeout"
        );
        // Reset (zero linger): the server is about to drop it anyway. A request that
        // hyper-util handed this connection but hyper has not written yet is returned
        // as canceled and retried on another connection.
        conn.abandon(Abandon::IdleTimeout);
        Some(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "conn_hygiene: evicted before the server's keep-alive timeout",
        ))
    }

    fn wrote(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.last_io = Instant::now();
        if !self.sent {
            self.sent = true;
            self.exchange += 1;
            self.shared.exchange.store(self.exchange, Ordering::Release);
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let now = Instant::now();
                    this.last_read = now;
                    this.last_io = now;
                    this.sent = false;
                } else if buf.remaining() > 0 {
                    this.peer_left();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                this.peer_left();
                Poll::Ready(Err(e))
            }
            Poll::Pending => match this.poll_evict(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.stream).poll_write(cx, buf))?;
        self.wrote(n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, bufs))?;
        self.wrote(n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
