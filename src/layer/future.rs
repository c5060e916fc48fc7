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

/// Why a watched request's connection was abandoned.
struct Watched {
    reason: Abandon,
    // The supervisor counted the request among those it cancelled.
    recorded: bool,
}

/// Guards a request whose future the supervisor of its connection, if there is one,
/// does not drop: an HTTP/2 stream's, polled in a task of its own, or any request on a
/// connection with no supervisor. While a supervisor runs, the request waits for it to
/// end (it may end without abandoning the connection: a supervised handshake); then it
/// enforces the policy itself.
async fn watch(conn: Conn) -> Watched {
    if conn.is_supervised() {
        conn.unsupervised().await;
        if let Some(reason) = conn.abandoned() {
            // The supervisor abandoned the connection, and recorded its cancels.
            return Watched {
                reason,
                recorded: true,
            };
        }
    }
    Watched {
        reason: enforce(conn).await,
        recorded: false,
    }
}

pin_project! {
    /// The future of [`Hygiene`](super::Hygiene).
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        request: Option<(RequestGuard, RequestKind)>,
        // Armed only once the handler has returned Pending: fast handlers pay nothing.
        watch: Option<Pin<Box<dyn Future<Output = Watched> + Send>>>,
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
        let Some((guard, kind)) = this.request else {
            return Poll::Pending;
        };
        let conn = guard.conn();
        if conn.is_supervised() && !matches!(kind, RequestKind::Http2) {
            // An HTTP/1 handler runs in the connection's task, which its supervisor
            // drops on abandonment.
            return Poll::Pending;
        }
        let watch = this
            .watch
            .get_or_insert_with(|| Box::pin(watch(conn.clone())));
        let Watched { reason, recorded } = ready!(watch.as_mut().poll(cx));
        if !recorded {
            record_cancel(conn, reason);
        }
        conn.abandon(reason);
        this.request.take();
        let mut response = Response::new(ResponseBody::new(B::default(), None));
        *response.status_mut() =
            StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST);
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::Response;
    use tokio_test::{assert_pending, assert_ready, task};

    use super::{RequestKind, ResponseFuture};
    use crate::conn::{Abandon, Conn, PeerGone};
    use crate::{HalfClose, Policy};

    /// How the connection's supervisor ends while an HTTP/2 stream's handler waits.
    #[derive(Debug, Clone, Copy)]
    enum End {
        /// Its task finished (a supervised handshake).
        Finished,
        /// Its future was dropped before its task finished.
        Dropped,
        /// It abandoned the connection (the peer's FIN under `HalfClose::Abort`).
        Abandoned,
    }

    /// Issue 20, item 5: an HTTP/2 stream's response future, polled in the stream's own
    /// task while a supervisor guards the connection, is woken when the supervisor
    /// ends, and from then on guards its request itself: the peer's FIN (policy
    /// `Abort`) ends the stuck handler with a 499 at once, not whenever it would have
    /// woken on its own (here never).
    #[tokio::test(start_paused = true)]
    async fn a_stream_polled_outside_its_supervisor_is_guarded_once_it_ends() {
        for end in [End::Finished, End::Dropped, End::Abandoned] {
            let policy = Policy::builder()
                .half_close(HalfClose::Abort)
                .build()
                .unwrap();
            let conn = Conn::new(1, "192.0.2.7:40000".parse().unwrap(), policy);
            let (finish, finished) = tokio::sync::oneshot::channel::<()>();
            let mut supervisor = task::spawn(conn.supervise(finished));
            assert_pending!(supervisor.poll());
            let handler = std::future::pending::<Result<Response<String>, Infallible>>();
            let request = Some((conn.begin_request(), RequestKind::Http2));
            let mut stream = task::spawn(ResponseFuture::new(handler, request));
            assert_pending!(stream.poll());
            match end {
                End::Finished => {
                    finish.send(()).unwrap();
                    assert!(assert_ready!(supervisor.poll()).is_ok());
                }
                End::Dropped => drop(supervisor),
                End::Abandoned => {
                    conn.record_peer(PeerGone::Fin);
                    let abandoned = assert_ready!(supervisor.poll()).unwrap_err();
                    assert_eq!(abandoned.reason(), Abandon::PeerFin);
                }
            }
            conn.record_peer(PeerGone::Fin);
            assert!(
                stream.is_woken(),
                "{end:?}: the stream's handler stayed unguarded"
            );
            let answer = assert_ready!(stream.poll()).unwrap();
            assert_eq!(answer.status(), 499, "{end:?}");
            assert_eq!(conn.abandoned(), Some(Abandon::PeerFin), "{end:?}");
            assert_eq!(conn.in_flight(), 0, "{end:?}");
        }
    }
}
