//! Every clock of `HygieneStream`, on paused time over `tokio::io::duplex`.
//!
//! No real sleeps: time moves only through `tokio::time::advance` (or the paused
//! runtime's auto-advance when every task waits), and the stream is hand-polled from
//! mock tasks so that each assertion says exactly when an operation is pending, woken
//! or finished. All durations are whole milliseconds, so deadlines fall on timer ticks
//! and "1 ms before" / "exactly at" are both observable.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use conn_hygiene::{
    Conn, HalfClose, HygieneStream, Policy, conn::Abandon, conn::PeerGone, conn::Phase,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::time::{Instant, advance};
use tokio_test::task::{self, Spawn};
use tokio_test::{assert_pending, assert_ready};

const FIRST_BYTE: Duration = Duration::from_millis(100);
const IDLE: Duration = Duration::from_millis(1_000);
const BODY_STALL: Duration = Duration::from_millis(300);
const WRITE_STALL: Duration = Duration::from_millis(400);
const LINGER: Duration = Duration::from_millis(200);
const HEADER: Duration = Duration::from_millis(600);
const GRACE: Duration = Duration::from_millis(500);
const MS: Duration = Duration::from_millis(1);

fn peer_addr() -> SocketAddr {
    "192.0.2.7:40000".parse().unwrap()
}

/// Distinct values for every clock, so a wrong clock firing shows as a wrong time.
fn policy() -> conn_hygiene::policy::PolicyBuilder {
    Policy::builder()
        .first_byte_timeout(Some(FIRST_BYTE))
        .header_timeout(Some(HEADER))
        .idle_timeout(Some(IDLE))
        .body_stall_timeout(Some(BODY_STALL))
        .write_stall_timeout(Some(WRITE_STALL))
        .linger_timeout(LINGER)
        .half_close(HalfClose::AllowFor(GRACE))
}

/// A stream over one end of a duplex pipe, the peer's end, and two mock tasks: one
/// polls reads (and shutdown), the other writes, so their wakers are told apart.
struct Fixture {
    stream: HygieneStream<DuplexStream>,
    peer: Option<DuplexStream>,
    conn: Conn,
    reader: Spawn<()>,
    writer: Spawn<()>,
    /// Guards a test holds for the stream's life (a request, a body wait).
    held: Vec<Box<dyn std::any::Any>>,
}

impl Fixture {
    fn new(policy: conn_hygiene::policy::PolicyBuilder) -> Fixture {
        Fixture::with_buffer(policy, 4096)
    }

    fn with_buffer(policy: conn_hygiene::policy::PolicyBuilder, max_buf: usize) -> Fixture {
        let (io, peer) = tokio::io::duplex(max_buf);
        let conn = Conn::new(1, peer_addr(), policy.build().unwrap());
        Fixture {
            stream: HygieneStream::new(io, conn.clone()),
            peer: Some(peer),
            conn,
            reader: task::spawn(()),
            writer: task::spawn(()),
            held: Vec::new(),
        }
    }

    /// Polls one read of up to 256 bytes from the reader task.
    fn poll_read(&mut self) -> Poll<io::Result<Vec<u8>>> {
        let mut buf = [0u8; 256];
        let mut rb = ReadBuf::new(&mut buf);
        let stream = &mut self.stream;
        let poll = self
            .reader
            .enter(|cx, _| Pin::new(stream).poll_read(cx, &mut rb));
        poll.map_ok(|()| rb.filled().to_vec())
    }

    /// Polls one write of `data` from the writer task.
    fn poll_write(&mut self, data: &[u8]) -> Poll<io::Result<usize>> {
        let stream = &mut self.stream;
        self.writer
            .enter(|cx, _| Pin::new(stream).poll_write(cx, data))
    }

    fn poll_flush(&mut self) -> Poll<io::Result<()>> {
        let stream = &mut self.stream;
        self.writer.enter(|cx, _| Pin::new(stream).poll_flush(cx))
    }

    /// Polls the (lingering) shutdown from the reader task: lingering is a read.
    fn poll_shutdown(&mut self) -> Poll<io::Result<()>> {
        let stream = &mut self.stream;
        self.reader
            .enter(|cx, _| Pin::new(stream).poll_shutdown(cx))
    }

    fn peer(&mut self) -> &mut DuplexStream {
        self.peer.as_mut().expect("peer end still open")
    }

    /// The peer sends `data`; the pipe has room for it.
    async fn peer_send(&mut self, data: &[u8]) {
        self.peer().write_all(data).await.unwrap();
    }

    /// The stream reads, and gets exactly `expected`, at once.
    fn read_exactly(&mut self, expected: &[u8]) {
        let got = assert_ready!(self.poll_read()).expect("read succeeds");
        assert_eq!(got, expected);
    }

    /// The first byte arrives and is read, so the first-byte clock is done.
    async fn first_byte(&mut self) {
        self.peer_send(b"x").await;
        self.read_exactly(b"x");
    }
}

/// Asserts that `poll` is a `TimedOut` error naming `phase`.
#[track_caller]
fn assert_timed_out<T: std::fmt::Debug>(poll: Poll<io::Result<T>>, phase: &str) {
    let err = assert_ready!(poll).expect_err("the clock should have expired");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(
        err.to_string().contains(phase),
        "{err:?} should name {phase}"
    );
}

/// Asserts that `poll` is a `ConnectionAborted` error.
#[track_caller]
fn assert_aborted<T: std::fmt::Debug>(poll: Poll<io::Result<T>>) {
    let err = assert_ready!(poll).expect_err("an abandoned stream must fail");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{err}");
}

// ---------------------------------------------------------------------------------
// Every clock: the operation it guards fails exactly at its deadline
// ---------------------------------------------------------------------------------

/// What a clock guards: a pending read, or a pending write (to a peer that never reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guarded {
    Read,
    Write,
}

/// One row: a clock, the phase its setup reaches, the operation it guards, and how
/// long it allows.
struct ClockRow {
    clock: &'static str,
    /// The phase the connection reports once set up (not checked for a head, which
    /// the stream's phase does not track between its bytes).
    phase: Option<Phase>,
    guarded: Guarded,
    limit: Duration,
    abandon: Abandon,
}

const CLOCK_ROWS: [ClockRow; 5] = [
    ClockRow {
        clock: "first_byte",
        phase: Some(Phase::FirstByte),
        guarded: Guarded::Read,
        limit: FIRST_BYTE,
        abandon: Abandon::FirstByteTimeout,
    },
    ClockRow {
        clock: "idle",
        phase: Some(Phase::Idle),
        guarded: Guarded::Read,
        limit: IDLE,
        abandon: Abandon::IdleTimeout,
    },
    ClockRow {
        clock: "header",
        phase: None,
        guarded: Guarded::Read,
        limit: HEADER,
        abandon: Abandon::HeaderTimeout,
    },
    ClockRow {
        clock: "body_stall",
        phase: Some(Phase::BodyWait),
        guarded: Guarded::Read,
        limit: BODY_STALL,
        abandon: Abandon::BodyStallTimeout,
    },
    ClockRow {
        clock: "write_stall",
        phase: Some(Phase::WriteStall),
        guarded: Guarded::Write,
        limit: WRITE_STALL,
        abandon: Abandon::WriteStallTimeout,
    },
];

impl ClockRow {
    /// A fresh stream brought into this clock's phase, with its operation pending;
    /// returns the stream and when the clock started.
    async fn enter(&self) -> (Fixture, Instant) {
        let mut f = Fixture::with_buffer(policy(), 16);
        match self.clock {
            // Nothing arrives.
            "first_byte" => {}
            // The first byte, then no bytes moving.
            "idle" => f.first_byte().await,
            // On an HTTP connection a request head trickles in, a byte every third of
            // the clock (well inside the idle window): slowloris.
            "header" => {
                f.conn.mark_http();
                f.first_byte().await;
                let head_began = Instant::now();
                for byte in [b'E', b'T'] {
                    assert_pending!(f.poll_read());
                    advance(HEADER / 3).await;
                    f.peer_send(&[byte]).await;
                    f.read_exactly(&[byte]);
                }
                assert_pending!(f.poll_read());
                return (f, head_began);
            }
            // A handler waits for body bytes that never come. A read pends under the
            // idle clock first, arming a sleep at +IDLE that must be pulled earlier.
            "body_stall" => {
                f.first_byte().await;
                assert_pending!(f.poll_read());
                advance(10 * MS).await;
                f.held.push(Box::new(f.conn.begin_request()));
                f.held.push(Box::new(f.conn.begin_body_wait()));
            }
            // The peer never reads: the pipe fills.
            "write_stall" => {
                assert_eq!(assert_ready!(f.poll_write(&[1; 16])).unwrap(), 16);
            }
            other => unreachable!("no setup for {other}"),
        }
        let since = Instant::now();
        assert_pending!(f.poll(self.guarded));
        (f, since)
    }
}

impl Fixture {
    /// Polls the guarded operation: a read, or a write of 8 bytes.
    fn poll(&mut self, guarded: Guarded) -> Poll<io::Result<()>> {
        match guarded {
            Guarded::Read => self.poll_read().map_ok(drop),
            Guarded::Write => self.poll_write(&[2; 8]).map_ok(drop),
        }
    }

    /// Whether the guarded operation's task was woken.
    fn woken(&self, guarded: Guarded) -> bool {
        match guarded {
            Guarded::Read => self.reader.is_woken(),
            Guarded::Write => self.writer.is_woken(),
        }
    }
}

/// The guarded operation is still pending 1 ms before `deadline` (the connection not
/// abandoned); at `deadline` the clock wakes its task and it fails with `TimedOut`
/// naming `clock`.
async fn expires_at(f: &mut Fixture, guarded: Guarded, deadline: Instant, clock: &str) {
    advance(deadline - MS - Instant::now()).await;
    assert_pending!(f.poll(guarded), "{clock}");
    assert_eq!(f.conn.abandoned(), None, "{clock}: abandoned early");
    advance(MS).await;
    assert!(f.woken(guarded), "{clock}: the clock wakes the task");
    assert_timed_out(f.poll(guarded), clock);
}

/// Each clock: its guarded operation is still pending 1 ms before the deadline (the
/// connection not abandoned), and exactly at `limit` after the clock began the clock
/// wakes it and it fails with `TimedOut` naming the clock; the connection is abandoned
/// for that clock and closed.
#[tokio::test(start_paused = true)]
async fn each_clock_fails_its_pending_operation_exactly_at_its_deadline() {
    for row in CLOCK_ROWS {
        let (mut f, since) = row.enter().await;
        if let Some(phase) = row.phase {
            assert_eq!(f.conn.phase(), phase, "{}", row.clock);
        }
        expires_at(&mut f, row.guarded, since + row.limit, row.clock).await;
        assert_eq!(f.conn.abandoned(), Some(row.abandon), "{}", row.clock);
        assert_eq!(f.conn.phase(), Phase::Closed, "{}", row.clock);
        assert_eq!(Instant::now() - since, row.limit, "{}", row.clock);
    }
}

// ---------------------------------------------------------------------------------
// First byte
// ---------------------------------------------------------------------------------

/// One byte 1 ms before the first-byte deadline ends that clock: no timeout after the
/// deadline, and the next clock (idle) counts from that byte (the reader waits again
/// at once).
#[tokio::test(start_paused = true)]
async fn a_byte_just_before_the_first_byte_deadline_is_in_time() {
    let mut f = Fixture::new(policy());
    let start = Instant::now();
    assert_pending!(f.poll_read());
    advance(FIRST_BYTE - MS).await;
    f.peer_send(b"x").await;
    assert!(f.reader.is_woken());
    f.read_exactly(b"x");
    assert_eq!(f.conn.phase(), Phase::Idle);
    let byte_at = Instant::now();
    assert_eq!(byte_at - start, FIRST_BYTE - MS);

    assert_pending!(f.poll_read());
    advance(FIRST_BYTE * 3).await;
    assert_pending!(f.poll_read());
    assert_eq!(f.conn.abandoned(), None);
    // The idle clock runs from the byte.
    expires_at(&mut f, Guarded::Read, byte_at + IDLE, "idle").await;
    assert_eq!(f.conn.abandoned(), Some(Abandon::IdleTimeout));
}

/// With `first_byte_timeout(None)` a silent connection still has the idle clock (no
/// request in flight, no bytes moving): a peer that connects and never sends cannot
/// hold the connection forever.
#[tokio::test(start_paused = true)]
async fn without_a_first_byte_clock_a_silent_peer_falls_to_the_idle_clock() {
    let mut f = Fixture::new(policy().first_byte_timeout(None));
    assert_pending!(f.poll_read());
    expires_at(&mut f, Guarded::Read, Instant::now() + IDLE, "idle").await;
    assert_eq!(f.conn.abandoned(), Some(Abandon::IdleTimeout));
}

// ---------------------------------------------------------------------------------
// Idle
// ---------------------------------------------------------------------------------

/// A read at idle-1ms pushes the idle deadline: the old deadline passes without a
/// timeout, and the clock fires exactly `idle_timeout` after the last progress.
#[tokio::test(start_paused = true)]
async fn read_progress_pushes_the_idle_deadline() {
    let mut f = Fixture::new(policy());
    f.first_byte().await;
    assert_pending!(f.poll_read());
    advance(IDLE - MS).await;
    f.peer_send(b"y").await;
    f.read_exactly(b"y");
    let progress = Instant::now();

    assert_pending!(f.poll_read());
    // The original deadline passes: the armed sleep may fire early and re-arm, but the
    // read stays pending.
    advance(MS).await;
    assert_pending!(f.poll_read());
    expires_at(&mut f, Guarded::Read, progress + IDLE, "idle").await;
    assert_eq!(Instant::now() - progress, IDLE);
}

/// A write is progress too: it pushes the idle deadline of a pending read, which then
/// fires exactly `idle_timeout` after the write.
#[tokio::test(start_paused = true)]
async fn write_progress_pushes_the_idle_deadline() {
    let mut f = Fixture::new(policy());
    f.first_byte().await;
    assert_pending!(f.poll_read());
    advance(IDLE - MS).await;
    assert_eq!(assert_ready!(f.poll_write(b"response")).unwrap(), 8);
    let progress = Instant::now();

    advance(MS).await;
    assert_pending!(f.poll_read());
    expires_at(&mut f, Guarded::Read, Instant::now() + IDLE - MS, "idle").await;
    assert_eq!(Instant::now() - progress, IDLE);
}

/// The idle clock counts from when the reader begins waiting (or from the last write
/// while it waits), not from the last byte read: an application that reads a message
/// and works on it before reading again is not idle meanwhile. Here the next read
/// starts 2× idle after the last byte and still gets a full idle period.
#[tokio::test(start_paused = true)]
async fn idle_counts_from_when_the_reader_begins_waiting() {
    let mut f = Fixture::new(policy());
    f.first_byte().await;
    advance(IDLE * 2).await;
    assert_pending!(f.poll_read());
    let waiting = Instant::now();
    expires_at(&mut f, Guarded::Read, Instant::now() + IDLE, "idle").await;
    assert_eq!(Instant::now() - waiting, IDLE);
}

// ---------------------------------------------------------------------------------
// Request head (HTTP connections only)
// ---------------------------------------------------------------------------------

/// Without `mark_http` there is no request-head clock: the same trickle lives on, and
/// only the idle clock ends it.
#[tokio::test(start_paused = true)]
async fn no_header_clock_unless_the_connection_is_http() {
    let mut f = Fixture::new(policy());
    f.first_byte().await;
    for byte in 0..10u8 {
        assert_pending!(f.poll_read());
        advance(HEADER / 3).await;
        f.peer_send(&[byte]).await;
        f.read_exactly(&[byte]);
    }
    assert_eq!(f.conn.abandoned(), None);
}

/// A request beginning (the layer parsed a head) ends that head's clock; after the
/// request, idle counts from the last progress, and the next request's first byte
/// starts a fresh head clock.
#[tokio::test(start_paused = true)]
async fn a_request_ends_its_head_clock_and_the_next_head_starts_a_new_one() {
    let mut f = Fixture::new(policy());
    f.conn.mark_http();
    f.first_byte().await;
    let request = f.conn.begin_request();
    advance(HEADER * 2).await;
    assert_eq!(assert_ready!(f.poll_write(b"200")).unwrap(), 3);
    drop(request);
    let answered = Instant::now();

    // Between requests: the idle clock, not the old head's.
    assert_pending!(f.poll_read());
    advance(HEADER).await;
    assert_pending!(f.poll_read());
    assert_eq!(f.conn.abandoned(), None);
    f.peer_send(b"G").await;
    f.read_exactly(b"G");
    let head_began = Instant::now();
    assert!(head_began - answered < IDLE);

    assert_pending!(f.poll_read());
    expires_at(&mut f, Guarded::Read, Instant::now() + HEADER, "header").await;
    assert_eq!(Instant::now() - head_began, HEADER);
}

// ---------------------------------------------------------------------------------
// Busy handler: no read clock
// ---------------------------------------------------------------------------------

/// While a request is in flight no read clock runs: a pending read survives 10× the
/// idle timeout. When the last request ends, the idle clock starts from that moment.
#[tokio::test(start_paused = true)]
async fn no_read_clock_while_a_handler_is_busy() {
    let mut f = Fixture::new(policy());
    f.first_byte().await;
    let guard = f.conn.begin_request();
    assert_eq!(f.conn.phase(), Phase::Busy);
    assert_eq!(f.conn.in_flight(), 1);
    assert_pending!(f.poll_read());
    advance(IDLE * 10).await;
    assert_pending!(f.poll_read());
    assert_eq!(f.conn.abandoned(), None);

    drop(guard);
    let ended = Instant::now();
    assert_eq!(f.conn.phase(), Phase::Idle);
    assert_pending!(f.poll_read());
    expires_at(&mut f, Guarded::Read, Instant::now() + IDLE, "idle").await;
    assert_eq!(Instant::now() - ended, IDLE);
    assert_eq!(f.conn.abandoned(), Some(Abandon::IdleTimeout));
}

/// A handler that writes its response keeps the idle clock fresh: after the guard
/// drops, idle counts from the response's last write, not from the request's bytes.
#[tokio::test(start_paused = true)]
async fn after_a_request_idle_counts_from_the_last_write() {
    let mut f = Fixture::new(policy());
    f.first_byte().await;
    let guard = f.conn.begin_request();
    advance(IDLE * 3).await;
    assert_eq!(assert_ready!(f.poll_write(b"done")).unwrap(), 4);
    let wrote = Instant::now();
    drop(guard);

    assert_pending!(f.poll_read());
    expires_at(&mut f, Guarded::Read, Instant::now() + IDLE, "idle").await;
    assert_eq!(Instant::now() - wrote, IDLE);
}

/// Ending the last request wakes a read left pending while the handler was busy, so
/// its idle clock starts then (hyper keeps a read pending while the handler runs).
#[tokio::test(start_paused = true)]
async fn ending_the_last_request_wakes_a_pending_read() {
    let (io, mut peer) = tokio::io::duplex(4096);
    let conn = Conn::new(1, peer_addr(), policy().build().unwrap());
    let mut stream = HygieneStream::new(io, conn.clone());
    peer.write_all(b"GET").await.unwrap();
    let mut head = [0u8; 3];
    stream.read_exact(&mut head).await.unwrap();

    let guard = conn.begin_request();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        stream.read(&mut buf).await
    });
    tokio::task::yield_now().await; // the read is now pending, with no clock
    advance(IDLE / 2).await;
    let ended = Instant::now();
    drop(guard);
    // Auto-advance lets time run; the idle deadline is `IDLE` after the request ended.
    let read = tokio::time::timeout(IDLE * 10, reader)
        .await
        .expect("the idle clock must fire after the last request ends")
        .unwrap();
    assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
    assert_eq!(Instant::now() - ended, IDLE);
    drop(peer);
}

/// A handler starting to wait for the body wakes a read left pending while it was
/// busy, so the body-stall clock runs.
#[tokio::test(start_paused = true)]
async fn beginning_a_body_wait_wakes_a_pending_read() {
    let (io, mut peer) = tokio::io::duplex(4096);
    let conn = Conn::new(1, peer_addr(), policy().build().unwrap());
    let mut stream = HygieneStream::new(io, conn.clone());
    peer.write_all(b"POST").await.unwrap();
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await.unwrap();

    let _request = conn.begin_request();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        stream.read(&mut buf).await
    });
    tokio::task::yield_now().await; // pending, busy: no clock
    let _body = conn.begin_body_wait();
    let waited = Instant::now();
    let read = tokio::time::timeout(BODY_STALL * 10, reader)
        .await
        .expect("the body-stall clock must fire")
        .unwrap();
    assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
    assert_eq!(Instant::now() - waited, BODY_STALL);
    drop(peer);
}

// ---------------------------------------------------------------------------------
// Body stall
// ---------------------------------------------------------------------------------

/// Body bytes the handler receives keep the body-stall clock alive: each ends its
/// wait (the layer drops the guard) and the next wait starts a new clock. Bytes that
/// reach the socket while the handler goes on waiting (chunk extensions, an empty
/// chunk's size line) are no body: they do not move the clock.
#[tokio::test(start_paused = true)]
async fn body_bytes_keep_the_body_stall_clock_alive() {
    let mut f = Fixture::new(policy());
    f.first_byte().await;
    let _request = f.conn.begin_request();
    let mut body = f.conn.begin_body_wait();
    for chunk in 0..5u8 {
        assert_pending!(f.poll_read());
        advance(BODY_STALL - MS).await;
        f.peer_send(&[chunk]).await;
        f.read_exactly(&[chunk]);
        // Delivered to the handler as body: a new wait.
        drop(body);
        body = f.conn.begin_body_wait();
    }
    let last = Instant::now();
    assert_pending!(f.poll_read());
    advance(BODY_STALL / 2).await;
    // Bytes that are not body: the handler still waits.
    f.peer_send(b";ext").await;
    f.read_exactly(b";ext");
    assert_pending!(f.poll_read());
    expires_at(
        &mut f,
        Guarded::Read,
        Instant::now() + BODY_STALL / 2,
        "body_stall",
    )
    .await;
    assert_eq!(Instant::now() - last, BODY_STALL);
}

/// A request head whose end came with the last read: the server dispatches it
/// without reading again, and its handler's body wait must wake the reader that is
/// waiting under the head clock, or the body-stall clock would wait for the head
/// clock (hyper reads again only when woken).
#[tokio::test(start_paused = true)]
async fn a_body_wait_that_begins_during_a_head_wait_wakes_the_reader() {
    let mut f = Fixture::new(policy());
    f.conn.mark_http();
    f.peer_send(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n")
        .await;
    assert_ready!(f.poll_read()).unwrap();
    // The server reads once more before it dispatches: the head clock runs.
    assert_pending!(f.poll_read());
    let _request = f.conn.begin_request();
    let _body = f.conn.begin_body_wait();
    let since = Instant::now();
    assert!(
        f.reader.is_woken(),
        "the reader must learn of the body wait"
    );
    assert_pending!(f.poll_read());
    advance(BODY_STALL).await;
    assert_timed_out(f.poll_read(), "body_stall");
    assert_eq!(Instant::now() - since, BODY_STALL);
}

/// When the handler stops waiting for the body (guard dropped, request still in
/// flight), the read clock stops again.
#[tokio::test(start_paused = true)]
async fn body_stall_clock_stops_when_the_body_wait_ends() {
    let mut f = Fixture::new(policy());
    f.first_byte().await;
    let _request = f.conn.begin_request();
    let body = f.conn.begin_body_wait();
    assert_pending!(f.poll_read());
    advance(BODY_STALL - MS).await;
    drop(body);
    assert_eq!(f.conn.phase(), Phase::Busy);
    advance(BODY_STALL * 10).await;
    assert_pending!(f.poll_read());
    assert_eq!(f.conn.abandoned(), None);
}

// ---------------------------------------------------------------------------------
// Write stall
// ---------------------------------------------------------------------------------

/// A writer that flushes between its pending writes (TLS does: a flush that returns
/// at once, as TCP's always does) does not restart the write-stall clock: nothing
/// moved.
#[tokio::test(start_paused = true)]
async fn a_flush_between_pending_writes_does_not_restart_the_write_stall() {
    let mut f = Fixture::with_buffer(policy(), 16);
    assert_eq!(assert_ready!(f.poll_write(&[1; 16])).unwrap(), 16);
    let since = Instant::now();
    assert_pending!(f.poll_write(&[2; 8]));
    for _ in 0..4 {
        advance(WRITE_STALL / 5).await;
        assert_ready!(f.poll_flush()).unwrap();
        assert_pending!(f.poll_write(&[2; 8]));
    }
    advance(WRITE_STALL / 5).await;
    assert_timed_out(f.poll_write(&[2; 8]), "write_stall");
    assert_eq!(Instant::now() - since, WRITE_STALL);
}

/// The peer reading a few bytes is progress: the blocked write completes, and the
/// stall clock of the next blocked write starts from then.
#[tokio::test(start_paused = true)]
async fn peer_reading_resets_the_write_stall_clock() {
    let mut f = Fixture::with_buffer(policy(), 16);
    assert_eq!(assert_ready!(f.poll_write(&[1; 16])).unwrap(), 16);
    assert_pending!(f.poll_write(&[2; 8]));
    advance(WRITE_STALL - MS).await;

    let mut some = [0u8; 4];
    f.peer().read_exact(&mut some).await.unwrap();
    assert!(f.writer.is_woken(), "the peer's read wakes the writer");
    assert_eq!(assert_ready!(f.poll_write(&[2; 8])).unwrap(), 4);
    assert_ne!(f.conn.phase(), Phase::WriteStall);
    let progress = Instant::now();

    assert_pending!(f.poll_write(&[3; 8]));
    advance(MS).await; // the first stall's deadline passes harmlessly
    assert_pending!(f.poll_write(&[3; 8]));
    expires_at(
        &mut f,
        Guarded::Write,
        Instant::now() + WRITE_STALL - MS,
        "write_stall",
    )
    .await;
    assert_eq!(Instant::now() - progress, WRITE_STALL);
}

/// A blocked write that then fails (the peer went away) leaves `Phase::WriteStall`:
/// the registry and the drain report must not blame a slow reader for a dead peer.
#[tokio::test(start_paused = true)]
async fn a_failed_write_is_not_a_write_stall() {
    let mut f = Fixture::with_buffer(policy(), 16);
    f.first_byte().await;
    assert_eq!(assert_ready!(f.poll_write(&[1; 16])).unwrap(), 16);
    assert_pending!(f.poll_write(&[2; 8]));
    assert_eq!(f.conn.phase(), Phase::WriteStall);
    drop(f.peer.take());
    let err = assert_ready!(f.poll_write(&[2; 8])).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    assert_ne!(
        f.conn.phase(),
        Phase::WriteStall,
        "no write is pending any more"
    );
}

// ---------------------------------------------------------------------------------
// Shutdown: a half-close. The lingering close on drop needs a TCP socket: see
// `tests/it/close.rs`.
// ---------------------------------------------------------------------------------

/// Shutdown sends our FIN at once and reads nothing: what the peer sends afterwards
/// is the application's to read, clocks and all. A second shutdown does nothing.
#[tokio::test(start_paused = true)]
async fn shutdown_is_a_half_close() {
    let mut f = Fixture::new(policy());
    f.first_byte().await;
    f.peer_send(b"before").await;
    assert_ready!(f.poll_shutdown()).unwrap();
    assert_ne!(f.conn.phase(), Phase::Lingering);
    let mut eof = Vec::new();
    f.peer().read_to_end(&mut eof).await.unwrap();
    assert!(eof.is_empty(), "the peer sees our FIN at once");
    f.read_exactly(b"before");
    f.peer_send(b"after").await;
    f.read_exactly(b"after");
    assert_eq!(f.conn.bytes().0, 1 + 6 + 5, "read, not discarded");
    assert_ready!(f.poll_shutdown()).unwrap();
    // The read clocks still run after our FIN.
    assert_pending!(f.poll_read());
    advance(IDLE).await;
    assert_timed_out(f.poll_read(), "idle");
}

/// A transport without a socket (`Conn::new`) cannot be read after the drop: a
/// shut-down stream with bytes unread closes at once, without lingering.
#[tokio::test(start_paused = true)]
async fn a_transport_without_a_socket_closes_at_once() {
    let mut f = Fixture::new(policy());
    f.first_byte().await;
    f.peer_send(b"unread").await;
    assert_ready!(f.poll_shutdown()).unwrap();
    drop(f.stream);
    assert!(f.conn.is_closed());
    assert_eq!(f.conn.phase(), Phase::Closed);
    assert_eq!(f.conn.abandoned(), None);
}

/// `reset_on_close(true)`: shutdown is still a half-close, and nothing lingers or is
/// abandoned. (The reset itself needs a socket: see `tests/it/close.rs`.)
#[tokio::test(start_paused = true)]
async fn reset_on_close_does_not_linger() {
    let mut f = Fixture::new(policy().reset_on_close(true));
    f.first_byte().await;
    assert_ready!(f.poll_shutdown()).unwrap();
    assert_ne!(f.conn.phase(), Phase::Lingering);
    assert_eq!(f.conn.abandoned(), None);
    let mut eof = Vec::new();
    f.peer().read_to_end(&mut eof).await.unwrap();
    assert!(eof.is_empty(), "our FIN");
    drop(f.stream);
    assert!(f.conn.is_closed());
}

// ---------------------------------------------------------------------------------
// Half-close policy, enforced by `Conn::supervise`
// ---------------------------------------------------------------------------------

/// A connection task that reads until EOF and then holds the stream without finishing
/// (a handler still working after the peer's FIN).
async fn task_that_outlives_the_fin(mut stream: HygieneStream<DuplexStream>) -> io::Result<()> {
    let mut buf = [0u8; 64];
    while stream.read(&mut buf).await? > 0 {}
    std::future::pending::<()>().await;
    drop(stream);
    Ok(())
}

fn supervised(
    half_close: HalfClose,
) -> (
    Conn,
    DuplexStream,
    Spawn<conn_hygiene::supervise::Supervised<impl Future<Output = io::Result<()>>>>,
) {
    let (io, peer) = tokio::io::duplex(4096);
    let conn = Conn::new(
        1,
        peer_addr(),
        policy().half_close(half_close).build().unwrap(),
    );
    let stream = HygieneStream::new(io, conn.clone());
    let task = task::spawn(conn.supervise(task_that_outlives_the_fin(stream)));
    (conn, peer, task)
}

/// `AllowFor(g)`: after the stream reads the peer's EOF, the supervised task is
/// abandoned with `HalfCloseGrace` exactly `g` later (still pending 1 ms before).
#[tokio::test(start_paused = true)]
async fn half_close_grace_abandons_exactly_after_the_grace() {
    let (conn, mut peer, mut task) = supervised(HalfClose::AllowFor(GRACE));
    assert_pending!(task.poll());
    advance(FIRST_BYTE / 2).await; // time before the FIN does not count
    peer.shutdown().await.unwrap(); // half-close: the peer can still read
    assert!(task.is_woken());
    assert_pending!(task.poll());
    let fin_at = Instant::now();
    assert_eq!(conn.peer_gone(), Some(PeerGone::Fin));
    assert_eq!(conn.phase(), Phase::HalfClosed);

    advance(GRACE - MS).await;
    assert_pending!(task.poll());
    assert_eq!(conn.abandoned(), None);
    advance(MS).await;
    assert!(task.is_woken());
    let err = assert_ready!(task.poll()).unwrap_err();
    assert_eq!(err.reason(), Abandon::HalfCloseGrace);
    assert_eq!(Instant::now() - fin_at, GRACE);
    assert_eq!(conn.abandoned(), Some(Abandon::HalfCloseGrace));
}

/// `AllowFor(g)` is an inactivity grace: while the task keeps writing after the
/// peer's FIN (a download, or a proxy's other direction) the grace restarts; once
/// nothing moves for a whole grace the task is abandoned, within two graces of the
/// last byte.
#[tokio::test(start_paused = true)]
async fn half_close_grace_restarts_while_bytes_move() {
    let (io, mut peer) = tokio::io::duplex(1 << 20);
    let conn = Conn::new(1, peer_addr(), policy().build().unwrap());
    let mut stream = HygieneStream::new(io, conn.clone());
    let mut task = task::spawn(conn.supervise(async move {
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        // Ten graces' worth of answer, a byte every half grace.
        for _ in 0..20 {
            tokio::time::sleep(GRACE / 2).await;
            stream.write_all(b"w").await?;
        }
        std::future::pending::<()>().await;
        io::Result::Ok(())
    }));
    peer.shutdown().await.unwrap();
    assert_pending!(task.poll());
    let fin_at = Instant::now();
    for _ in 0..20 {
        advance(GRACE / 2).await;
        assert_pending!(task.poll());
    }
    assert_eq!(conn.abandoned(), None, "bytes moved within every grace");
    let last_byte = Instant::now();
    assert_eq!(last_byte - fin_at, GRACE * 10);
    let mut answer = [0u8; 20];
    peer.read_exact(&mut answer).await.unwrap();
    let err = loop {
        advance(MS * 10).await;
        if let Poll::Ready(result) = task.poll() {
            break result.unwrap_err();
        }
        assert!(
            Instant::now() - last_byte <= GRACE * 2,
            "not abandoned in time"
        );
    };
    assert_eq!(err.reason(), Abandon::HalfCloseGrace);
    let abandoned_after = Instant::now() - last_byte;
    assert!(
        abandoned_after >= GRACE && abandoned_after <= GRACE * 2,
        "abandoned {abandoned_after:?} after the last byte"
    );
}

/// `AllowFor(g)`: a task that finishes within the grace is not abandoned.
#[tokio::test(start_paused = true)]
async fn half_close_grace_lets_a_task_finish_in_time() {
    let (io, mut peer) = tokio::io::duplex(4096);
    let conn = Conn::new(1, peer_addr(), policy().build().unwrap());
    let mut stream = HygieneStream::new(io, conn.clone());
    let mut task = task::spawn(conn.supervise(async move {
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        tokio::time::sleep(GRACE - MS).await;
        stream.write_all(b"answer").await?;
        stream.shutdown().await
    }));
    peer.shutdown().await.unwrap();
    assert_pending!(task.poll());
    advance(GRACE - MS).await;
    assert_ready!(task.poll()).unwrap().unwrap();
    assert_eq!(conn.abandoned(), None);
    let mut answer = Vec::new();
    peer.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"answer");
}

/// `Abort`: the peer's EOF abandons the connection at once with `PeerFin`.
#[tokio::test(start_paused = true)]
async fn half_close_abort_abandons_at_once() {
    let (conn, peer, mut task) = supervised(HalfClose::Abort);
    assert_pending!(task.poll());
    drop(peer);
    let err = assert_ready!(task.poll()).unwrap_err();
    assert_eq!(err.reason(), Abandon::PeerFin);
    assert_eq!(conn.abandoned(), Some(Abandon::PeerFin));
}

/// `Abort` is enforced by the stream itself too: reading the peer's EOF abandons the
/// connection at once, with no supervisor involved.
#[tokio::test(start_paused = true)]
async fn half_close_abort_is_enforced_by_the_read() {
    let mut f = Fixture::new(policy().half_close(HalfClose::Abort));
    f.first_byte().await;
    f.peer().shutdown().await.unwrap();
    assert!(assert_ready!(f.poll_read()).unwrap().is_empty(), "EOF");
    assert_eq!(f.conn.abandoned(), Some(Abandon::PeerFin));
    assert_aborted(f.poll_read());
}

/// `AllowFor` leaves the stream open after the peer's EOF: the grace is the
/// supervisor's business, and the answer can still be written.
#[tokio::test(start_paused = true)]
async fn half_close_allow_for_keeps_the_stream_writable() {
    let mut f = Fixture::new(policy());
    f.first_byte().await;
    f.peer().shutdown().await.unwrap();
    assert!(assert_ready!(f.poll_read()).unwrap().is_empty(), "EOF");
    assert_eq!(f.conn.abandoned(), None);
    assert_eq!(f.conn.phase(), Phase::HalfClosed);
    assert_eq!(assert_ready!(f.poll_write(b"answer")).unwrap(), 6);
    // Our close does not linger: the peer's FIN is already in.
    assert_ready!(f.poll_shutdown()).unwrap();
    let mut answer = Vec::new();
    f.peer().read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"answer");
}

/// `Allow`: after the peer's EOF nothing abandons the task, however long it takes,
/// until an explicit abandonment (a drain deadline), which resolves it with that
/// reason.
#[tokio::test(start_paused = true)]
async fn half_close_allow_waits_for_an_explicit_abandon() {
    let (conn, mut peer, mut task) = supervised(HalfClose::Allow);
    assert_pending!(task.poll());
    peer.shutdown().await.unwrap();
    assert_pending!(task.poll());
    assert_eq!(conn.peer_gone(), Some(PeerGone::Fin));
    advance(Duration::from_secs(3600)).await;
    assert_pending!(task.poll());
    assert_eq!(conn.abandoned(), None);

    conn.abandon(Abandon::DrainDeadline);
    assert!(task.is_woken());
    let err = assert_ready!(task.poll()).unwrap_err();
    assert_eq!(err.reason(), Abandon::DrainDeadline);
}

// ---------------------------------------------------------------------------------
// Abandoned streams
// ---------------------------------------------------------------------------------

/// Once abandoned from outside (a drain deadline), the stream's next read, write and
/// flush fail with `ConnectionAborted` naming the reason, even with data waiting; its
/// shutdown closes at once without lingering.
#[tokio::test(start_paused = true)]
async fn an_abandoned_stream_fails_reads_and_writes() {
    let mut f = Fixture::new(policy());
    f.first_byte().await;
    f.peer_send(b"waiting").await;
    f.conn.abandon(Abandon::DrainDeadline);
    let err = assert_ready!(f.poll_read()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert!(err.to_string().contains("drain_deadline"), "{err}");
    assert_aborted(f.poll_write(b"late"));
    assert_aborted(f.poll_flush());
    assert_ready!(f.poll_shutdown()).unwrap();
    assert_eq!(f.conn.phase(), Phase::Closed);
    // The first reason wins.
    f.conn.abandon(Abandon::IdleTimeout);
    assert_eq!(f.conn.abandoned(), Some(Abandon::DrainDeadline));
}

/// After a clock expired the error does not repeat as `TimedOut` and nothing resumes:
/// every later read and write fails with `ConnectionAborted`.
#[tokio::test(start_paused = true)]
async fn a_timed_out_stream_stays_failed() {
    let mut f = Fixture::new(policy());
    assert_pending!(f.poll_read());
    advance(FIRST_BYTE).await;
    assert_timed_out(f.poll_read(), "first_byte");
    f.peer_send(b"too late").await;
    for _ in 0..3 {
        assert_aborted(f.poll_read());
        assert_aborted(f.poll_write(b"no"));
    }
}

// ---------------------------------------------------------------------------------
// Timer efficiency
// ---------------------------------------------------------------------------------

/// Many reads, each well inside the idle window, never time out, and the idle clock
/// still fires exactly `idle_timeout` after the last one.
#[tokio::test(start_paused = true)]
async fn many_reads_inside_the_idle_window_then_expiry_on_time() {
    let mut f = Fixture::new(policy());
    f.first_byte().await;
    for i in 0..2_000u32 {
        assert_pending!(f.poll_read());
        // Whole milliseconds, so the deadline falls on a timer tick.
        advance(IDLE / 4).await;
        let byte = [i as u8];
        f.peer_send(&byte).await;
        f.read_exactly(&byte);
    }
    let last = Instant::now();
    assert_pending!(f.poll_read());
    expires_at(&mut f, Guarded::Read, Instant::now() + IDLE, "idle").await;
    assert_eq!(Instant::now() - last, IDLE);
}

/// Progress the pending read does not see (writes) moves its deadline lazily: the
/// armed sleep fires at most about once per idle period (it re-arms to the latest
/// deadline), never once per write, and the read never times out while writes flow.
#[tokio::test(start_paused = true)]
async fn writes_move_the_idle_deadline_with_few_timer_wakeups() {
    let mut f = Fixture::with_buffer(policy(), 1 << 20);
    f.first_byte().await;
    assert_pending!(f.poll_read());
    let writes = 1_000u32;
    let mut wakeups = 0u32;
    for _ in 0..writes {
        advance(IDLE / 10).await;
        assert_eq!(assert_ready!(f.poll_write(b"w")).unwrap(), 1);
        if f.reader.is_woken() {
            wakeups += 1;
            assert_pending!(f.poll_read());
        }
    }
    // 1 000 writes over 100 idle periods: one early fire per period at most.
    let periods = writes / 10;
    assert!(
        wakeups <= periods + 1,
        "{wakeups} timer wakeups for {writes} writes"
    );
    assert_eq!(f.conn.abandoned(), None);
    let last = Instant::now();
    advance(IDLE - MS).await;
    if f.reader.is_woken() {
        assert_pending!(f.poll_read());
    }
    advance(MS).await;
    assert!(f.reader.is_woken());
    assert_timed_out(f.poll_read(), "idle");
    assert_eq!(Instant::now() - last, IDLE);
}
