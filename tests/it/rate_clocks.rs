//! The response rate floor and the request overrides at their boundaries, on paused
//! time: a `HygieneStream` over a
//! small in-memory pipe whose far end reads only when told, so a write is pending
//! exactly when the test says. Only time spent with a write pending is measured; the
//! floor allows `max(grace, bytes / rate)` of it, counting bytes from the first wait
//! (the bytes that filled the buffer before it are no evidence of the peer's rate).

use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use conn_hygiene::{Conn, HygieneStream, MinRate, Policy, conn::Abandon, limits::RequestLimits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::time::{Instant, advance};
use tokio_test::task::{self, Spawn};
use tokio_test::{assert_pending, assert_ready};

/// The pipe holds this many bytes: a write beyond it is pending until the peer reads.
const PIPE: usize = 64;
const MS: Duration = Duration::from_millis(1);
/// 100 B/s after 1 s.
const FLOOR: MinRate = MinRate::new(100, Duration::from_secs(1));

struct Fixture {
    stream: HygieneStream<DuplexStream>,
    peer: DuplexStream,
    conn: Conn,
    writer: Spawn<()>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_write_stall(None)
    }

    /// The floor, with the policy's write-stall clock set to `timeout`.
    fn with_write_stall(timeout: Option<Duration>) -> Fixture {
        let policy = Policy::builder()
            .write_stall_timeout(timeout)
            .min_send_rate(Some(FLOOR))
            .build()
            .unwrap();
        let (io, peer) = tokio::io::duplex(PIPE);
        let conn = Conn::new(1, "192.0.2.7:40000".parse().unwrap(), policy);
        Fixture {
            stream: HygieneStream::new(io, conn.clone()),
            peer,
            conn,
            writer: task::spawn(()),
        }
    }

    fn poll_write(&mut self, data: &[u8]) -> Poll<io::Result<usize>> {
        let stream = &mut self.stream;
        self.writer
            .enter(|cx, _| Pin::new(stream).poll_write(cx, data))
    }

    /// Fills the pipe, then starts a write that stays pending.
    fn fill_and_block(&mut self) {
        while let Poll::Ready(written) = self.poll_write(&[b'x'; PIPE]) {
            written.unwrap();
        }
    }

    /// Fills the pipe and blocks a write, which the floor then cuts exactly its grace
    /// later, not a millisecond before. `case` names the caller's case in messages.
    async fn assert_blocked_write_cut_at_the_grace(&mut self, case: &str) {
        self.fill_and_block();
        let blocked = Instant::now();
        advance(FLOOR.grace() - MS).await;
        assert_pending!(self.poll_write(b"x"));
        assert_eq!(self.conn.abandoned(), None, "{case}: cut before the grace");
        advance(MS).await;
        assert!(self.writer.is_woken(), "{case}");
        assert_cut(self.poll_write(b"x"), &self.conn);
        assert_eq!(blocked.elapsed(), FLOOR.grace(), "{case}");
    }

    async fn peer_reads(&mut self, n: usize) {
        let mut buf = vec![0u8; n];
        self.peer.read_exact(&mut buf).await.unwrap();
    }
}

#[track_caller]
fn assert_cut(poll: Poll<io::Result<usize>>, conn: &Conn) {
    let error = assert_ready!(poll).expect_err("the floor should have cut the write");
    assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    assert!(error.to_string().contains("min_send_rate"), "{error}");
    assert_eq!(conn.abandoned(), Some(Abandon::MinSendRate));
}

/// A peer that never reads: the write is cut exactly the grace after it began to wait.
#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_reading_is_cut_at_the_grace() {
    let mut f = Fixture::new();
    f.assert_blocked_write_cut_at_the_grace("a silent peer")
        .await;
}

/// Waits add up across writes, and time with no write pending (a handler producing
/// slowly) is not measured: 0.5 s blocked, 10 s of nothing, then the second wait gets
/// what is left of `max(1 s, 128 B / 100 B/s = 1.28 s)`: 0.78 s. The first 64 bytes,
/// written before any wait, do not count.
#[tokio::test(start_paused = true)]
async fn only_time_blocked_on_the_peer_counts() {
    let mut f = Fixture::new();
    f.fill_and_block();
    advance(Duration::from_millis(500)).await;
    f.peer_reads(PIPE).await;
    assert_eq!(assert_ready!(f.poll_write(&[b'y'; PIPE])).unwrap(), PIPE);
    // The handler is slow: nothing is written for 10 s, many times the grace.
    advance(Duration::from_secs(10)).await;
    f.peer_reads(PIPE).await;
    f.fill_and_block();
    assert_eq!(f.conn.bytes().1, 3 * PIPE as u64);
    let blocked = Instant::now();
    let left = Duration::from_millis(1280 - 500);
    advance(left - MS).await;
    assert_pending!(f.poll_write(b"x"));
    advance(MS).await;
    assert_cut(f.poll_write(b"x"), &f.conn);
    assert_eq!(blocked.elapsed(), left);
}

/// A tunnel has no floor.
#[tokio::test(start_paused = true)]
async fn a_tunnel_has_no_send_floor() {
    let mut f = Fixture::new();
    f.conn.mark_tunnel();
    f.fill_and_block();
    advance(Duration::from_secs(60)).await;
    assert_pending!(f.poll_write(b"x"));
    assert_eq!(f.conn.abandoned(), None);
}

/// A request's override turns the floor off for as long as the request is in flight;
/// the next wait after it ends runs under the policy's floor again.
#[tokio::test(start_paused = true)]
async fn a_request_override_ends_with_the_request() {
    let mut f = Fixture::new();
    let request = f.conn.begin_request();
    f.conn.set_request_limits(
        RequestLimits::builder()
            .min_send_rate(None)
            .build()
            .unwrap(),
    );
    f.fill_and_block();
    advance(Duration::from_secs(60)).await;
    assert_pending!(f.poll_write(b"x"));
    assert_eq!(f.conn.abandoned(), None);
    // The long download ends; the wait under way kept no deadline, the next one has.
    drop(request);
    f.peer_reads(PIPE).await;
    // The 60 s were not measured: the next wait gets the grace.
    f.assert_blocked_write_cut_at_the_grace("after the override")
        .await;
}

/// The documented long export (`with_min_send_rate(None)` and a long write-stall
/// clock), or a relaxed floor of 16 B/s, over a reader that is below the policy's
/// floor: the waits measured under the override are not charged
/// to the next response on the connection, which gets the whole grace. The policy's
/// write-stall clock is on, so waits are timed even while the floor is off.
#[tokio::test(start_paused = true)]
async fn a_relaxed_floor_is_not_charged_to_the_next_response() {
    let overrides = [
        RequestLimits::builder()
            .min_send_rate(None)
            .write_stall_timeout(Some(Duration::from_secs(300)))
            .build()
            .unwrap(),
        RequestLimits::builder()
            .min_send_rate(Some(MinRate::new(16, Duration::from_secs(5))))
            .build()
            .unwrap(),
    ];
    for limits in overrides {
        let mut f = Fixture::with_write_stall(Some(Duration::from_secs(30)));
        let export = f.conn.begin_request();
        f.conn.set_request_limits(limits);
        // 60 s of waiting on a reader at 32 B/s (64 bytes every 2 s): twice the relaxed
        // floor, a third of the policy's.
        for _ in 0..30 {
            f.fill_and_block();
            advance(Duration::from_secs(2)).await;
            assert_pending!(f.poll_write(b"x"));
            f.peer_reads(PIPE).await;
        }
        assert_eq!(f.conn.abandoned(), None, "{limits:?}");
        drop(export);
        // The next request on the connection: its response waits from here on.
        let _next = f.conn.begin_request();
        f.assert_blocked_write_cut_at_the_grace(&format!("{limits:?}"))
            .await;
    }
}

/// On HTTP/1 the floor is measured per response: one that waited 0.9 s of its 1 s
/// grace leaves the next response the whole grace.
#[tokio::test(start_paused = true)]
async fn each_http1_response_gets_its_own_grace() {
    let mut f = Fixture::new();
    f.conn.mark_http();
    let first = f.conn.begin_request();
    f.fill_and_block();
    advance(Duration::from_millis(900)).await;
    assert_pending!(f.poll_write(b"x"));
    f.peer_reads(PIPE).await;
    drop(first);
    let _second = f.conn.begin_request();
    f.assert_blocked_write_cut_at_the_grace("the second response")
        .await;
}

/// A request's override of the body-stall clock reaches the stream's clock (HTTP/1's
/// body stall is the connection's): 2 s instead of the policy's 300 ms.
#[tokio::test(start_paused = true)]
async fn a_request_override_reaches_the_streams_body_stall_clock() {
    let policy = Policy::builder()
        .body_stall_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let (io, mut peer) = tokio::io::duplex(PIPE);
    let conn = Conn::new(1, "192.0.2.7:40000".parse().unwrap(), policy);
    let mut stream = HygieneStream::new(io, conn.clone());
    let mut reader = task::spawn(());
    let mut poll_read = |stream: &mut HygieneStream<DuplexStream>| {
        let mut buf = [0u8; 16];
        let mut buf = ReadBuf::new(&mut buf);
        reader.enter(|cx, _| Pin::new(stream).poll_read(cx, &mut buf))
    };
    peer.write_all(b"x").await.unwrap();
    assert_ready!(poll_read(&mut stream)).unwrap();
    let _request = conn.begin_request();
    conn.set_request_limits(
        RequestLimits::builder()
            .body_stall_timeout(Some(Duration::from_secs(2)))
            .build()
            .unwrap(),
    );
    let _waiting = conn.begin_body_wait();
    assert_pending!(poll_read(&mut stream));
    advance(Duration::from_secs(2) - MS).await;
    assert_pending!(poll_read(&mut stream));
    advance(MS).await;
    let error = assert_ready!(poll_read(&mut stream)).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    assert_eq!(conn.abandoned(), Some(Abandon::BodyStallTimeout));
}

/// HTTP/2 requests through the layer, on the fixture's connection.
#[cfg(feature = "hyper")]
mod http2 {
    use super::*;
    use std::convert::Infallible;
    use std::future::Future;
    use std::task::Context;

    use bytes::Bytes;
    use conn_hygiene::layer::{Hygiene, RequestBody, ResponseBody};
    use conn_hygiene::limits::RequestLimitsLayer;
    use http_body_util::Empty;
    use tower::{Layer, Service};

    type Request = http::Request<RequestBody<Empty<Bytes>>>;
    type Response = http::Response<Empty<Bytes>>;

    /// Answers at once; with `limits`, sets them as its future is polled.
    #[derive(Clone)]
    struct Handler {
        limits: Option<RequestLimits>,
    }

    impl Service<Request> for Handler {
        type Response = Response;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request) -> Self::Future {
            let limits = self.limits;
            Box::pin(async move {
                if let Some(limits) = limits {
                    let conn = request.extensions().get::<Conn>().expect("the handle");
                    conn.set_request_limits(limits);
                }
                Ok(http::Response::new(Empty::new()))
            })
        }
    }

    /// One HTTP/2 request to `service` on `conn`: its answer, whose body keeps the
    /// request in flight until dropped.
    async fn call<S>(service: S, conn: &Conn) -> http::Response<ResponseBody<Empty<Bytes>>>
    where
        S: Service<Request, Response = Response, Error = Infallible>,
    {
        let request = http::Request::builder()
            .version(http::Version::HTTP_2)
            .body(Empty::new())
            .unwrap();
        let answer = Hygiene::for_conn(service, conn.clone()).call(request).await;
        answer.unwrap_or_else(|never| match never {})
    }

    /// Two overlapping streams: a long one (a `Watch`, an SSE stream) and an export
    /// that turns the send floor off, from its handler or from its route's layer. The
    /// override ends when the export ends, although the long stream is still in
    /// flight: the next wait runs under the policy's floor.
    #[tokio::test(start_paused = true)]
    async fn an_override_ends_with_its_own_request() {
        let relaxed = RequestLimits::builder()
            .min_send_rate(None)
            .build()
            .unwrap();
        for by_layer in [false, true] {
            let mut f = Fixture::new();
            let watch = call(Handler { limits: None }, &f.conn).await;
            let export = if by_layer {
                let route = RequestLimitsLayer::new(relaxed).layer(Handler { limits: None });
                call(route, &f.conn).await
            } else {
                call(
                    Handler {
                        limits: Some(relaxed),
                    },
                    &f.conn,
                )
                .await
            };
            assert_eq!(f.conn.in_flight(), 2);
            f.fill_and_block();
            advance(Duration::from_secs(60)).await;
            assert_pending!(f.poll_write(b"x"));
            assert_eq!(f.conn.abandoned(), None, "by layer: {by_layer}");
            drop(export);
            assert_eq!(f.conn.in_flight(), 1);
            f.peer_reads(PIPE).await;
            f.assert_blocked_write_cut_at_the_grace(&format!("by layer: {by_layer}"))
                .await;
            drop(watch);
        }
    }
}
