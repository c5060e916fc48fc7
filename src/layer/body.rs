//! Body wrappers: the request body tells the stream when the handler waits for bytes;
//! the response body keeps its request in flight until it ends.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::conn::{Abandon, BodyWaitGuard, Conn, RequestGuard};
use crate::stream::Clock;

/// The error type of [`RequestBody`]: the inner body's error, or a
/// [`BodyStallError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An HTTP/2 request body stalled for longer than the
/// [body-stall timeout](crate::Policy::body_stall_timeout): that request fails, and its
/// connection and the connection's other streams go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyStallError {
    _priv: (),
}

impl fmt::Display for BodyStallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("conn_hygiene: body_stall_timeout expired")
    }
}

impl std::error::Error for BodyStallError {}

pin_project! {
    /// A request body that runs the body-stall clock while the handler waits for it.
    ///
    /// Over HTTP/1 the clock is the connection's: a stalled body ends the connection,
    /// which cannot carry another request before this body is read. Over HTTP/2 each
    /// body has a clock of its own, and a stall fails only its own request, with a
    /// [`BodyStallError`].
    #[derive(Debug)]
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        stall: Stall,
    }
}

#[derive(Debug)]
enum Stall {
    /// No connection handle: no clock.
    Off,
    /// HTTP/1: the stream's clock runs while the guard lives.
    Connection {
        conn: Conn,
        waiting: Option<BodyWaitGuard>,
    },
    /// HTTP/2: this body's own clock.
    Stream {
        conn: Conn,
        timeout: Duration,
        waiting_since: Option<Instant>,
        clock: Clock,
    },
    /// The stream clock expired: the body is over.
    Expired,
}

impl<B> RequestBody<B> {
    pub(crate) fn new(inner: B, conn: Option<Conn>, http2: bool) -> Self {
        let stall = match conn {
            None => Stall::Off,
            Some(conn) if http2 => match conn.policy().body_stall_timeout() {
                Some(timeout) => Stall::Stream {
                    conn,
                    timeout,
                    waiting_since: None,
                    clock: Clock::default(),
                },
                None => Stall::Off,
            },
            Some(conn) => Stall::Connection {
                conn,
                waiting: None,
            },
        };
        RequestBody { inner, stall }
    }

    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if matches!(this.stall, Stall::Expired) {
            return Poll::Ready(None);
        }
        let polled = this.inner.poll_frame(cx);
        match this.stall {
            Stall::Off | Stall::Expired => {}
            Stall::Connection { conn, waiting } => {
                if polled.is_pending() {
                    if waiting.is_none() {
                        *waiting = Some(conn.begin_body_wait());
                    }
                } else {
                    *waiting = None;
                }
            }
            Stall::Stream {
                conn,
                timeout,
                waiting_since,
                clock,
            } => {
                if polled.is_ready() {
                    *waiting_since = None;
                } else {
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    if clock.poll_until(cx, since + *timeout).is_ready() {
                        tracing::info!(
                            target: "conn_hygiene::timeout",
                            parent: conn.span(),
                            phase = "body_wait",
                            reason = Abandon::BodyStallTimeout.as_str(),
                            "HTTP/2 request body stalled: failing its request"
                        );
                        *this.stall = Stall::Expired;
                        return Poll::Ready(Some(Err(Box::new(BodyStallError { _priv: () }))));
                    }
                }
            }
        }
        polled.map(|frame| frame.map(|result| result.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.stall, Stall::Expired) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A response body that keeps its request counted in flight until it ends.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<RequestGuard>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, in_flight: Option<RequestGuard>) -> Self {
        ResponseBody { inner, in_flight }
    }
}

impl<B: Default> Default for ResponseBody<B> {
    fn default() -> Self {
        ResponseBody::new(B::default(), None)
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            *this.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
