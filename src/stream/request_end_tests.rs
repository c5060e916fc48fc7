//! The idle clock after an HTTP/1 request ends: it runs from the request's end, and the
//! end does not cost the connection's task a poll (the reader arms its clock while the
//! request is in flight, and finds the end itself).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready, task};

use super::HygieneStream;
use crate::conn::load::Load;
use crate::conn::{Abandon, Conn};
use crate::policy::Policy;

const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
const IDLE: Duration = Duration::from_secs(5);

/// When the server reads again after a request head, against the request's run.
#[derive(Debug, Clone, Copy)]
enum Order {
    /// hyper's for a keep-alive `GET`: it calls the service, writes the answer, and
    /// reads again after the request ended.
    ReadsAfter,
    /// It reads once more, then has the layer count the request.
    ReadsFirst,
    /// The layer counts the request, then the server reads while it runs (as hyper
    /// does when a clock wakes it during the request, or for a request's body).
    CountsFirst,
}

/// A server's connection task: polled only when woken.
struct Task {
    t: task::Spawn<()>,
    stream: HygieneStream<DuplexStream>,
    // Kept open: the peer's end of the pipe.
    peer: DuplexStream,
    conn: Conn,
}

impl Task {
    /// A keep-alive connection waiting for its next request, whose head then comes
    /// and is read by the server, which reads again and has the layer count the
    /// request in `order`.
    async fn with_request(policy: Policy, order: Order) -> (Task, crate::conn::RequestGuard) {
        let (io, peer) = tokio::io::duplex(1024);
        let conn = Conn::new(1, "127.0.0.1:1".parse().unwrap(), policy);
        conn.mark_http();
        conn.mark_first_byte();
        let mut task = Task {
            t: task::spawn(()),
            stream: HygieneStream::new(io, conn.clone()),
            peer,
            conn,
        };
        assert_pending!(task.read());
        task.peer.write_all(HEAD).await.unwrap();
        assert!(task.t.is_woken());
        assert_eq!(assert_ready!(task.read()).unwrap(), HEAD.len());
        if let Order::ReadsFirst = order {
            assert_pending!(task.read());
        }
        let request = task.conn.begin_request();
        if let Order::CountsFirst = order {
            assert_pending!(task.read());
        }
        (task, request)
    }

    /// The request ends; the server reads again at once if `order` says it does.
    fn end(&mut self, request: crate::conn::RequestGuard, order: Order) -> bool {
        drop(request);
        let woken = self.t.is_woken();
        if let Order::ReadsAfter = order {
            assert_pending!(self.read());
        }
        woken
    }

    fn read(&mut self) -> Poll<io::Result<usize>> {
        let mut buf = [0u8; 64];
        let mut buf = ReadBuf::new(&mut buf);
        let stream = &mut self.stream;
        self.t
            .enter(|cx, _| Pin::new(stream).poll_read(cx, &mut buf))
            .map(|done| done.map(|()| buf.filled().len()))
    }

    /// Polls the reader whenever it is woken, at once, while `time` passes a
    /// millisecond at a time; returns the time from now to the read's failure, if it failed within.
    async fn run_for(&mut self, time: Duration) -> Option<(Duration, io::Error)> {
        let start = Instant::now();
        loop {
            if self.t.is_woken() {
                match self.read() {
                    Poll::Pending => {}
                    Poll::Ready(Err(e)) => return Some((start.elapsed(), e)),
                    Poll::Ready(Ok(n)) => panic!("read {n} bytes, none were sent"),
                }
            }
            if start.elapsed() >= time {
                return None;
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
    }
}

impl Task {
    /// Runs until the idle clock cuts the connection (within a minute): how long that
    /// took from now.
    async fn until_idle_cut(&mut self) -> Duration {
        let (after, error) = self
            .run_for(Duration::from_secs(60))
            .await
            .expect("the idle clock fires");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(self.conn.abandoned(), Some(Abandon::IdleTimeout));
        after
    }
}

fn policy(idle: Duration) -> Policy {
    Policy::builder()
        .header_timeout(Some(Duration::from_secs(1)))
        .idle_timeout(Some(idle))
        .build()
        .unwrap()
}

/// Runs a request of `lasts` and returns how long after its end the idle clock fired,
/// and whether the end woke the reader.
async fn idle_after(lasts: Duration, order: Order, policy: Policy) -> (Duration, bool) {
    let (mut task, request) = Task::with_request(policy, order).await;
    assert!(
        task.run_for(lasts).await.is_none(),
        "no clock fires while a request is in flight"
    );
    let woken_at_end = task.end(request, order);
    (task.until_idle_cut().await, woken_at_end)
}

/// A request that ends at once, as a keep-alive `GET` does, or (seen in flight by the
/// reader) shorter than the idle timeout: the idle clock fires exactly the idle
/// timeout after its end, and the end costs the task no poll (the clock the reader
/// armed fires in time).
#[tokio::test(start_paused = true)]
async fn a_short_request_ends_without_a_wakeup_and_idles_from_its_end() {
    for (lasts, order) in [
        (Duration::ZERO, Order::ReadsAfter),
        (Duration::ZERO, Order::ReadsFirst),
        (Duration::ZERO, Order::CountsFirst),
        (Duration::from_secs(1), Order::CountsFirst),
        // Shorter than the head clock (1 s), which would wake the reader in flight.
        (Duration::from_millis(500), Order::ReadsFirst),
    ] {
        let (after, woken) = idle_after(lasts, order, policy(IDLE)).await;
        let case = (lasts, order);
        assert_eq!(after, IDLE, "the idle clock runs from the end: {case:?}");
        assert!(!woken, "the end of the request woke the reader: {case:?}");
    }
}

/// A request that outlasts the idle timeout: the clock the reader armed fires during
/// it and finds it in flight; the idle clock fires exactly the idle timeout after
/// its end.
#[tokio::test(start_paused = true)]
async fn a_long_request_idles_from_its_end() {
    for (lasts, order) in [
        (IDLE - Duration::from_millis(1), Order::ReadsAfter),
        (IDLE - Duration::from_millis(1), Order::CountsFirst),
        // The reader waited idle from the head, before the request was counted: the
        // idle clock it armed then is too early; it runs from the end all the same.
        (IDLE - Duration::from_millis(1), Order::ReadsFirst),
        (IDLE, Order::ReadsAfter),
        (IDLE, Order::CountsFirst),
        (IDLE, Order::ReadsFirst),
        (Duration::from_secs(7), Order::ReadsAfter),
        (Duration::from_secs(7), Order::CountsFirst),
        (Duration::from_secs(7), Order::ReadsFirst),
    ] {
        let (after, _) = idle_after(lasts, order, policy(IDLE)).await;
        assert_eq!(after, IDLE, "request of {lasts:?}, {order:?}");
    }
}

/// Pressure that rises while a request runs shortens the idle clock after it: the end
/// wakes the reader, whose clock was armed with the longer idle timeout.
#[tokio::test(start_paused = true)]
async fn pressure_during_a_request_shortens_the_idle_clock_after_it() {
    let idle = Duration::from_secs(20);
    let floor = crate::listener::Pressure::DEFAULT_FLOOR;
    for (lasts, order) in [
        (Duration::ZERO, Order::ReadsAfter),
        (Duration::ZERO, Order::ReadsFirst),
        (Duration::from_secs(2), Order::CountsFirst),
    ] {
        let (mut task, request) = Task::with_request(policy(idle), order).await;
        let load = Arc::new(Load::default());
        load.set_max(std::num::NonZeroUsize::new(10));
        task.conn.follow_load(&load);
        assert!(task.run_for(lasts / 2).await.is_none());
        // At the cap: the idle clock is the pressure's floor.
        assert!(load.update(10));
        assert_eq!(task.conn.idle_timeout(), Some(floor));
        assert!(task.run_for(lasts / 2).await.is_none());
        task.end(request, order);
        let after = task.until_idle_cut().await;
        assert_eq!(after, floor, "from the request's end: {order:?}");
    }
}

/// Bytes that come after a request ended unseen (its end left its time for the
/// reader) start the next wait after them: the idle clock runs from that wait, not
/// from the request's end.
#[tokio::test(start_paused = true)]
async fn bytes_after_an_unseen_end_restart_the_idle_wait() {
    let policy = Policy::builder()
        .header_timeout(Some(Duration::from_secs(30)))
        .idle_timeout(Some(IDLE))
        .build()
        .unwrap();
    let (mut task, request) = Task::with_request(policy, Order::ReadsFirst).await;
    assert!(
        !task.end(request, Order::ReadsFirst),
        "the end woke the reader"
    );
    assert!(task.run_for(Duration::from_secs(2)).await.is_none());
    // The next request's first byte.
    task.peer.write_all(b"G").await.unwrap();
    assert!(task.t.is_woken());
    assert_eq!(assert_ready!(task.read()).unwrap(), 1);
    assert_pending!(task.read());
    let after = task.until_idle_cut().await;
    assert_eq!(
        after, IDLE,
        "from the wait after the byte, not the end before it"
    );
}

/// Bytes the server writes after a request ended, before the reader looks again (a
/// server that answers, then reads): they keep the idle clock from running, as bytes
/// out do while the reader waits, so it runs from the last of them, not from the end.
#[tokio::test(start_paused = true)]
async fn writes_after_an_unseen_end_move_the_idle_start() {
    for order in [Order::ReadsAfter, Order::CountsFirst, Order::ReadsFirst] {
        let (mut task, request) = Task::with_request(policy(IDLE), order).await;
        drop(request);
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(1)).await;
            let stream = &mut task.stream;
            let written = task
                .t
                .enter(|cx, _| tokio::io::AsyncWrite::poll_write(Pin::new(stream), cx, b"x"));
            assert!(matches!(written, Poll::Ready(Ok(1))), "{written:?}");
        }
        assert_pending!(task.read());
        let after = task.until_idle_cut().await;
        assert_eq!(after, IDLE, "from the last byte written: {order:?}");
    }
}
