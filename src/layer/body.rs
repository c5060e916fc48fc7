//! Body wrappers: the request body tells the stream when the handler waits for bytes
//! and measures its rate; the response body keeps its request in flight until it ends.

use http_body::{Body, Frame, SizeHint};
use hyper::body::Buf;
use pin_project_lite::pin_project;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::time::Instant;

use crate::conn::{Abandon, BodyWaitGuard, Conn, RequestGuard};
use crate::rate::{Meter, earliest};
use crate::stream::Clock;

/// The error type of [`RequestBody`]: the inner body's error, a [`BodyStallError`] or
/// a [`BodyRateError`].
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

/// A request body came slower than its [rate floor](crate::Policy::min_body_rate):
/// that request fails. Over HTTP/2 its connection and the connection's other streams go
/// on; over HTTP/1 the connection is abandoned (`min_body_rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRateError {
    _priv: (),
}

impl fmt::Display for BodyRateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("conn_hygiene: min_body_rate not met")
    }
}

impl std::error::Error for BodyRateError {}

pin_project! {
    /// A request body that runs the body-stall clock and the body rate floor while the
    /// handler waits for it.
    ///
    /// Over HTTP/1 the stall clock is the connection's: a stalled body ends the
    /// connection, which cannot carry another request before this body is read. Over
    /// HTTP/2 each body has a clock of its own, and a stall fails only its own request,
    /// with a [`BodyStallError`]. The rate floor is measured per body; below it, the
    /// request fails with a [`BodyRateError`], and over HTTP/1 the connection is
    /// abandoned.
    ///
    /// A body failed so stays failed: every later poll returns the error again, and
    /// [`is_end_stream`](Body::is_end_stream) is false, so code that logs the error and
    /// reads on never takes a truncated upload for a whole one.
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
    /// The clocks of this body.
    On(Clocks),
    /// A clock expired: the body failed, and every later poll fails again, so that a
    /// handler reading on never takes a truncated body for a whole one.
    Failed(Abandon),
}

/// One body's clocks. What a wait needs is allocated at the first wait: a body that is
/// never waited for (a GET's) costs no allocation and stays small to move.
#[derive(Debug)]
struct Clocks {
    conn: Conn,
    // HTTP/2: the stall clock is this body's own; HTTP/1: the stream's, run while
    // `waiting` lives.
    http2: bool,
    // The body of a tunnel (an HTTP/2 CONNECT stream) has no floor.
    tunnel: bool,
    waiting: Option<BodyWaitGuard>,
    measure: Option<Box<Measure>>,
}

/// The waits of one body, measured from its first.
#[derive(Debug, Default)]
struct Measure {
    // When the current wait began.
    since: Option<Instant>,
    bytes: u64,
    meter: Meter,
    clock: Clock,
}

impl<B> RequestBody<B> {
    pub(crate) fn new(inner: B, conn: Option<Conn>, http2: bool, tunnel: bool) -> Self {
        let stall = match conn {
            None => Stall::Off,
            Some(conn) => Stall::On(Clocks {
                conn,
                http2,
                tunnel,
                waiting: None,
                measure: None,
            }),
        };
        RequestBody { inner, stall }
    }

    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl Clocks {
    /// The handler waits: arms the clocks that run, and says which expired.
    fn wait(&mut self, cx: &mut Context<'_>) -> Option<Abandon> {
        let stall = if self.http2 {
            self.conn.body_stall_timeout()
        } else {
            None
        };
        let floor = if self.tunnel {
            None
        } else {
            self.conn.min_body_rate()
        };
        if stall.is_none() && floor.is_none() {
            // Only the stream's clock (HTTP/1), if any.
            if !self.http2 && self.waiting.is_none() {
                self.waiting = Some(self.conn.begin_body_wait());
            }
            return None;
        }
        let measure = self.measure.get_or_insert_with(Box::default);
        // One clock read per wait, shared with the stream's body-stall clock.
        let since = *measure.since.get_or_insert_with(Instant::now);
        if !self.http2 && self.waiting.is_none() {
            self.waiting = Some(self.conn.begin_body_wait_at(since));
        }
        let stall = stall.map(|timeout| (since + timeout, Abandon::BodyStallTimeout));
        let floor = floor.map(|floor| {
            let deadline = measure.meter.deadline(floor, measure.bytes, since);
            (deadline, Abandon::MinBodyRate)
        });
        let (deadline, reason) = earliest(stall, floor)?;
        measure
            .clock
            .poll_until(cx, deadline)
            .is_ready()
            .then_some(reason)
    }

    /// The wait ended: bytes (or the end) arrived.
    fn progress(&mut self, bytes: usize) {
        self.waiting = None;
        if let Some(measure) = &mut self.measure {
            measure.bytes += bytes as u64;
            if let Some(since) = measure.since.take() {
                measure.meter.stop(since, Instant::now());
            }
        }
    }

    /// Fails the request for `reason`; over HTTP/1 the connection goes with it.
    fn expire(&self, reason: Abandon) {
        tracing::info!(
            target: "conn_hygiene::timeout",
            parent: self.conn.span(),
            phase = "body_wait",
            reason = reason.as_str(),
            "request body too slow: failing its request"
        );
        if self.http2 {
            self.conn.count_cut(reason);
        } else {
            self.conn.abandon(reason);
        }
    }
}

/// The error a body failed by `reason` returns, each time it is polled (boxing these
/// empty errors allocates nothing).
fn failure(reason: Abandon) -> BoxError {
    match reason {
        Abandon::MinBodyRate => Box::new(BodyRateError { _priv: () }),
        _ => Box::new(BodyStallError { _priv: () }),
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
        let clocks = match this.stall {
            Stall::Failed(reason) => {
                // Each error again spends the task's budget, as a read does: a handler
                // that logs it and reads on yields to the runtime rather than spin.
                ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
                return Poll::Ready(Some(Err(failure(*reason))));
            }
            Stall::Off => {
                return this
                    .inner
                    .poll_frame(cx)
                    .map(|frame| frame.map(|result| result.map_err(Into::into)));
            }
            Stall::On(clocks) => clocks,
        };
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                let bytes = match &frame {
                    Some(Ok(frame)) => frame.data_ref().map_or(0, Buf::remaining),
                    _ => 0,
                };
                clocks.progress(bytes);
                Poll::Ready(frame.map(|result| result.map_err(Into::into)))
            }
            Poll::Pending => match clocks.wait(cx) {
                None => Poll::Pending,
                Some(reason) => {
                    clocks.expire(reason);
                    *this.stall = Stall::Failed(reason);
                    Poll::Ready(Some(Err(failure(reason))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        !matches!(self.stall, Stall::Failed(_)) && self.inner.is_end_stream()
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

    #[inline]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MinRate, Policy, limits::RequestLimits};
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tokio::time::advance;
    use tokio_test::{assert_pending, assert_ready, task};

    const MS: Duration = Duration::from_millis(1);

    type Chunks = http_body_util::StreamBody<
        futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::convert::Infallible>>,
    >;

    /// A body whose chunks the test sends, under a 100 B/s floor after 1 s and no
    /// stall clock.
    fn body(http2: bool, tunnel: bool) -> (RequestBody<Chunks>, mpsc::Sender<Bytes>, Conn) {
        let policy = Policy::builder()
            .body_stall_timeout(None)
            .min_body_rate(Some(MinRate::new(100, Duration::from_secs(1))))
            .build()
            .unwrap();
        let conn = Conn::new(1, "192.0.2.7:40000".parse().unwrap(), policy);
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok(Frame::data(chunk)), rx))
        });
        let inner = http_body_util::StreamBody::new(futures_util::StreamExt::boxed(frames));
        (
            RequestBody::new(inner, Some(conn.clone()), http2, tunnel),
            tx,
            conn,
        )
    }

    type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

    fn poll(t: &mut task::Spawn<()>, body: &mut RequestBody<Chunks>) -> Polled {
        t.enter(|cx, _| Pin::new(&mut *body).poll_frame(cx))
    }

    /// 50 bytes after 0.5 s of waiting, then 10 s of handler work that is not measured:
    /// the next wait is cut 0.5 s in, when the 1 s grace is used up. Over HTTP/2 the
    /// request fails alone; over HTTP/1 the connection goes with it.
    #[tokio::test(start_paused = true)]
    async fn the_body_floor_counts_only_waiting_time() {
        for http2 in [true, false] {
            let (mut body, tx, conn) = body(http2, false);
            let mut t = task::spawn(());
            assert_pending!(poll(&mut t, &mut body));
            advance(Duration::from_millis(500)).await;
            tx.send(Bytes::from(vec![b'a'; 50])).await.unwrap();
            let frame = assert_ready!(poll(&mut t, &mut body)).unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap().len(), 50);
            // The handler works for 10 s without asking for more.
            advance(Duration::from_secs(10)).await;
            assert_pending!(poll(&mut t, &mut body));
            advance(Duration::from_millis(500) - MS).await;
            assert_pending!(poll(&mut t, &mut body));
            advance(MS).await;
            assert!(t.is_woken());
            let error = assert_ready!(poll(&mut t, &mut body)).unwrap().unwrap_err();
            assert!(error.is::<BodyRateError>(), "{error}");
            let expected = (!http2).then_some(Abandon::MinBodyRate);
            assert_eq!(conn.abandoned(), expected, "http2: {http2}");
        }
    }

    /// Issue 20, item 4: a handler (or framework) that logs the error and reads on sees
    /// the error again, never a clean end that would make a truncated upload look
    /// whole; `is_end_stream` never says it ended either.
    #[tokio::test(start_paused = true)]
    async fn a_failed_body_keeps_failing() {
        for (http2, stall) in [(true, true), (true, false), (false, false)] {
            let (mut body, _tx, conn) = body(http2, false);
            let _request = conn.begin_request();
            if stall {
                conn.set_request_limits(
                    RequestLimits::builder()
                        .min_body_rate(None)
                        .body_stall_timeout(Some(Duration::from_secs(1)))
                        .build()
                        .unwrap(),
                );
                // The override is read at the first wait.
                assert_pending!(poll(&mut task::spawn(()), &mut body));
            }
            let (mut errors, mut said_ended) = (Vec::new(), 0);
            let end = loop {
                match body.frame().await {
                    Some(Err(error)) if errors.len() < 3 => {
                        errors.push(error.to_string());
                        said_ended += usize::from(body.is_end_stream());
                    }
                    other => break other.map(|frame| frame.map(|_| ())),
                }
            };
            let case = format!("http2: {http2}, stall: {stall}");
            assert_eq!(errors.len(), 3, "{case}: a clean end after {errors:?}");
            assert_eq!(said_ended, 0, "{case}: a failed body said it ended");
            assert!(end.is_some_and(|again| again.is_err()), "{case}");
            let expected = if stall {
                BodyStallError { _priv: () }.to_string()
            } else {
                BodyRateError { _priv: () }.to_string()
            };
            assert!(errors.iter().all(|e| *e == expected), "{case}: {errors:?}");
        }
    }

    /// A handler that logs the error of a failed body and reads on, in a loop, lets
    /// the runtime's other tasks run: each error spends the task's coop budget (it
    /// spun on its worker thread for good).
    #[tokio::test(start_paused = true)]
    async fn a_reader_spinning_on_a_failed_body_yields() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let (mut body, _tx, _conn) = body(true, false);
        let first = body.frame().await.expect("a frame");
        assert!(first.is_err(), "the floor fails the body");
        let other_ran = Arc::new(AtomicBool::new(false));
        tokio::spawn({
            let other_ran = other_ran.clone();
            async move { other_ran.store(true, SeqCst) }
        });
        let mut errors = 0_u32;
        while !other_ran.load(SeqCst) && errors < 100_000 {
            let again = body.frame().await.expect("a frame");
            assert!(again.is_err(), "a failed body keeps failing");
            errors += 1;
        }
        assert!(
            other_ran.load(SeqCst),
            "the reader never yielded in {errors} errors"
        );
        assert!(errors <= 1_000, "yielded only after {errors} errors");
    }

    /// An HTTP/2 CONNECT stream's body is a tunnel: no floor.
    #[tokio::test(start_paused = true)]
    async fn a_tunnel_body_has_no_floor() {
        let (mut body, _tx, conn) = body(true, true);
        let mut t = task::spawn(());
        assert_pending!(poll(&mut t, &mut body));
        advance(Duration::from_secs(60)).await;
        assert_pending!(poll(&mut t, &mut body));
        assert_eq!(conn.abandoned(), None);
    }

    /// A route's override (10 B/s after 5 s) lets a 20 B/s upload through where the
    /// policy's floor would have cut it at 1 s.
    #[tokio::test(start_paused = true)]
    async fn a_request_override_relaxes_the_floor() {
        let (mut body, tx, conn) = body(true, false);
        let _request = conn.begin_request();
        conn.set_request_limits(
            RequestLimits::builder()
                .min_body_rate(Some(MinRate::new(10, Duration::from_secs(5))))
                .build()
                .unwrap(),
        );
        let mut t = task::spawn(());
        for _ in 0..20 {
            assert_pending!(poll(&mut t, &mut body));
            advance(Duration::from_millis(500)).await;
            tx.send(Bytes::from_static(b"0123456789")).await.unwrap();
            assert_ready!(poll(&mut t, &mut body)).unwrap().unwrap();
        }
        drop(tx);
        let end = body.frame().await;
        assert!(end.is_none(), "{end:?}");
        assert_eq!(conn.abandoned(), None);
    }
}
