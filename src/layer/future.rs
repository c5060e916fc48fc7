//! The response future: the handler raced against the peer's departure.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Response, StatusCode};
use pin_project_lite::pin_project;

use super::RequestKind;
use super::body::ResponseBody;
use crate::conn::{Abandon, Conn, RequestGuard};
use crate::supervise::{CLIENT_CLOSED_REQUEST, enforce, record_cancel};

/// An HTTP/1 answer's connection headers: `Connection: close` when the connection is
/// retiring, else the idle timeout as `Keep-Alive: timeout=N`.
fn connection_headers(conn: &Conn, headers: &mut http::HeaderMap) {
    if conn.is_draining() {
        // A connection asked to drain retires after this answer, under any server:
        // hyper honours the header and closes once it is sent.
        headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    } else if let Some(value) = conn.policy().keep_alive_value() {
        // Appended without looking for the handler's own `Connection` header: one
        // lookup less per answer, and `Keep-Alive` beside `close` is ignored (RFC 9112).
        headers.append(KEEP_ALIVE, value.clone());
    }
}

const KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");

pin_project! {
    /// The future of [`Hygiene`](super::Hygiene).
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        request: Option<(RequestGuard, RequestKind)>,
        // Armed only once the handler has returned Pending: fast handlers pay nothing.
        watch: Option<Pin<Box<dyn Future<Output = Abandon> + Send>>>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, request: Option<(RequestGuard, RequestKind)>) -> Self {
        ResponseFuture {
            inner,
            request,
            watch: None,
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field(
                "conn",
                &self.request.as_ref().map(|(guard, _)| guard.conn()),
            )
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let polled = match this.request.as_mut() {
            // An HTTP/2 handler, in a task of its own: it finds its connection with
            // `Conn::current`, and limits it sets end with its own request.
            Some((guard, RequestKind::Http2)) => {
                let _entered = guard.enter();
                this.inner.as_mut().poll(cx)
            }
            _ => this.inner.as_mut().poll(cx),
        };
        if let Poll::Ready(result) = polled {
            let request = this.request.take();
            let Some((guard, kind)) = request else {
                return Poll::Ready(
                    result.map(|res| res.map(|body| ResponseBody::new(body, None))),
                );
            };
            return Poll::Ready(result.map(|mut response| {
                let conn = guard.conn();
                if kind.tunnels(response.status()) {
                    crate::tunnel::watch(conn);
                } else {
                    if conn
                        .policy()
                        .max_requests()
                        .is_some_and(|max| conn.requests() >= max)
                    {
                        crate::recycle::retire(conn, "max_requests");
                    }
                    if !matches!(kind, RequestKind::Http2) {
                        connection_headers(conn, response.headers_mut());
                    }
                }
                response.map(|body| ResponseBody::new(body, Some(guard)))
            }));
        }
        let Some((guard, _)) = this.request else {
            return Poll::Pending;
        };
        let conn = guard.conn();
        if conn.is_supervised() {
            // The connection's task already enforces the policy and drops this future.
            return Poll::Pending;
        }
        let watch = this
            .watch
            .get_or_insert_with(|| Box::pin(enforce(conn.clone())));
        let reason = ready!(watch.as_mut().poll(cx));
        record_cancel(conn, reason);
        conn.abandon(reason);
        this.request.take();
        let mut response = Response::new(ResponseBody::new(B::default(), None));
        *response.status_mut() =
            StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST);
        Poll::Ready(Ok(response))
    }
}
