//! Body wrappers: the request body tells the stream when the handler waits for bytes;
//! the response body keeps its request in flight until it ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::conn::{BodyWaitGuard, Conn, RequestGuard};

pin_project! {
    /// A request body that runs the body-stall clock while the handler waits for it.
    #[derive(Debug)]
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        conn: Option<Conn>,
        waiting: Option<BodyWaitGuard>,
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn new(inner: B, conn: Option<Conn>) -> Self {
        RequestBody {
            inner,
            conn,
            waiting: None,
        }
    }

    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for RequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if polled.is_pending() {
            if this.waiting.is_none()
                && let Some(conn) = this.conn
            {
                *this.waiting = Some(conn.begin_body_wait());
            }
        } else {
            *this.waiting = None;
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
