//! Random operation sequences against `HygieneStream` over `tokio::io::duplex`, on a
//! paused-time current-thread runtime, checked step by step against a model.
//!
//! Each case picks a policy (random clocks, some disabled), a pipe size, and a sequence
//! of operations: the peer writes, reads, half-closes or resets; the stream reads,
//! writes or shuts down; the layer begins or ends a request or a body wait; time
//! advances (so clocks expire). Every operation is one hand-poll, so a blocked
//! operation is observed as `Pending` and simply retried by a later step.
//!
//! The model predicts the outcome of every poll: which bytes a read returns, when a
//! pending read or write must fail with `TimedOut` (not earlier, not later), that a
//! shutdown is a half-close (our FIN at once, reads go on, writes fail). Its clocks are the stream's: first byte from accept; request
//! head (HTTP only) from the head's first byte until a request begins; idle from when
//! the reader began waiting (bytes written meanwhile move that on), and on HTTP/1 from
//! the end of the last request if a read waited while it ran or bytes came since the
//! last wait (the stream learns the end's time when it next looks); body stall from
//! when the handler began waiting for the body (bytes that reach the socket meanwhile
//! are not body until the handler's wait ends); write stall from when a write first
//! pended.
//!
//! The connection is wrapped directly ([`HygieneStream::new`]), a serving mode that
//! declares the layer: its clocks are never switched off, whatever the peer sends,
//! whatever the stream writes first and whether or not requests are counted. (Only a
//! foreign server, `axum::serve` or tonic's, may lack the layer; that mode has tests
//! of its own.) An `AdvanceToDeadline` step lands 1 ms
//! before, on, or 1 ms after one of those deadlines and retries what is pending, so
//! the boundaries are hit exactly. On top of that, after every step:
//!
//! - the bytes the stream read are a prefix of what the peer wrote, and the bytes the
//!   peer read a prefix of what the stream wrote (no loss, duplication or reordering);
//! - once the connection is abandoned, it stays abandoned for the same reason, its
//!   phase is `Closed`, and every read and write fails (no resurrection);
//! - the connection's counters match the bytes moved.
//!
//! At the end, whatever happened, a shutdown then reads to the peer's FIN return
//! exactly the bytes the peer sent (unless the connection was abandoned), and the
//! drop closes the connection at once: a transport without a socket never lingers.
//! A second property runs plain byte traffic with a shutdown at a random point and
//! no clocks, so that the reads after it are many.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use conn_hygiene::conn::{BodyWaitGuard, RequestGuard};
use conn_hygiene::{
    Conn, HalfClose, HygieneStream, Policy, conn::Abandon, conn::PeerGone, conn::Phase,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::time::Instant;
use tokio_test::task::{self, Spawn};

#[derive(Debug, Clone)]
enum Op {
    PeerWrite(usize),
    PeerRead(usize),
    /// The peer shuts down its write side (FIN); it can still read.
    PeerHalfClose,
    /// The peer drops its end entirely.
    PeerReset,
    StreamRead(usize),
    StreamWrite(usize),
    StreamShutdown,
    BeginRequest,
    EndRequest,
    BeginBodyWait,
    EndBodyWait,
    /// Milliseconds.
    Advance(u64),
    /// To 1 ms before, exactly at, or 1 ms after one of the deadlines the model knows
    /// of (`pick` chooses which), so that clock boundaries are hit exactly.
    AdvanceToDeadline {
        pick: usize,
        offset_ms: i8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // Closing operations are rare, so that most cases spend a while open and the
    // clocks get a chance to fire.
    prop_oneof![
        12 => (1usize..=48).prop_map(Op::PeerWrite),
        12 => (1usize..=48).prop_map(Op::PeerRead),
        1 => Just(Op::PeerHalfClose),
        1 => Just(Op::PeerReset),
        16 => (1usize..=48).prop_map(Op::StreamRead),
        12 => (1usize..=48).prop_map(Op::StreamWrite),
        1 => Just(Op::StreamShutdown),
        4 => Just(Op::BeginRequest),
        4 => Just(Op::EndRequest),
        4 => Just(Op::BeginBodyWait),
        4 => Just(Op::EndBodyWait),
        6 => (0u64..=20).prop_map(Op::Advance),
        10 => (20u64..=1_500).prop_map(Op::Advance),
        8 => (0usize..8, -1i8..=1)
            .prop_map(|(pick, offset_ms)| Op::AdvanceToDeadline { pick, offset_ms }),
    ]
}

#[derive(Debug, Clone)]
struct Setup {
    max_buf: usize,
    /// Whether this case drives requests and body waits, as the layer does. Without
    /// them the clocks run all the same: the mode, not the traffic, says the layer
    /// is there.
    layer: bool,
    /// Whether the connection is marked HTTP (the request-head clock runs).
    http: bool,
    first_byte: Option<u64>,
    header: Option<u64>,
    idle: Option<u64>,
    body_stall: Option<u64>,
    write_stall: Option<u64>,
    linger: u64,
    half_close: HalfClose,
    reset_on_close: bool,
}

fn clock(range: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = Option<u64>> {
    prop_oneof![1 => Just(None), 4 => range.prop_map(Some)]
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        (1usize..=64, any::<bool>(), any::<bool>()),
        // Always set: what a silent peer meets with no first-byte clock is disputed
        // (see the ignored test in `stream_clocks.rs`), and the model takes no side.
        (200u64..=2_000).prop_map(Some),
        clock(50..=1_500),
        clock(100..=2_000),
        clock(50..=1_000),
        clock(50..=1_000),
        10u64..=500,
        prop_oneof![
            Just(HalfClose::Abort),
            Just(HalfClose::Allow),
            // Only `Conn::supervise` runs the grace; to the stream it is `Allow`.
            Just(HalfClose::AllowFor(Duration::from_millis(1))),
        ],
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(
                (max_buf, layer, http),
                first_byte,
                header,
                idle,
                body_stall,
                write_stall,
                linger,
                half_close,
                reset,
            )| {
                Setup {
                    max_buf,
                    layer,
                    http,
                    first_byte,
                    header,
                    idle,
                    body_stall,
                    write_stall,
                    linger,
                    half_close,
                    reset_on_close: reset,
                }
            },
        )
}

impl Setup {
    fn policy(&self) -> Policy {
        let ms = |v: Option<u64>| v.map(Duration::from_millis);
        Policy::builder()
            .first_byte_timeout(ms(self.first_byte))
            .header_timeout(ms(self.header))
            .idle_timeout(ms(self.idle))
            .body_stall_timeout(ms(self.body_stall))
            .write_stall_timeout(ms(self.write_stall))
            .linger_timeout(Duration::from_millis(self.linger))
            .half_close(self.half_close)
            .reset_on_close(self.reset_on_close)
            // The rate floors have their own paused-time tests (tests/it/rate_clocks.rs);
            // this model covers the clocks above.
            .min_send_rate(None)
            .min_body_rate(None)
            .build()
            .expect("valid policy")
    }
}

/// Byte `i` of a direction's stream: an irregular pattern, so a lost, repeated or
/// reordered chunk shows.
fn pattern(seed: u8, i: usize) -> u8 {
    ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed
}

/// The system under test and the model of what it must do.
struct Case {
    setup: Setup,
    stream: Option<HygieneStream<DuplexStream>>,
    peer: Option<DuplexStream>,
    conn: Conn,
    stream_task: Spawn<()>,
    writer_task: Spawn<()>,
    peer_reader: Spawn<()>,
    peer_writer: Spawn<()>,
    requests: Vec<RequestGuard>,
    body_waits: Vec<BodyWaitGuard>,

    // Model.
    start: Instant,
    peer_written: Vec<u8>,
    stream_read: Vec<u8>,
    stream_written: Vec<u8>,
    peer_read: Vec<u8>,
    peer_write_closed: bool,
    peer_dropped: bool,
    /// The stream's write side was shut down: the peer reads EOF after the data.
    stream_write_closed: bool,
    first_byte: bool,
    eof_seen: bool,
    /// When the stream's reader began waiting for bytes that have not come (`None`
    /// while bytes flow). The idle and body-stall clocks count from it; bytes
    /// written while it waits with no request in flight move it to then, and the end
    /// of a request that was in flight during the wait restarts it.
    read_waiting_since: Option<Instant>,
    /// A request was in flight at a pending read of the current wait.
    waited_busy: bool,
    body_since: Instant,
    write_blocked_since: Option<Instant>,
    abandoned: Option<Abandon>,
    /// The size of the stream's read or write left pending, which its task retries
    /// when woken.
    pending_read: Option<usize>,
    pending_write: Option<usize>,
    /// When the current request head began, and the request count it belongs to.
    head: Option<(Instant, u32)>,
    requests_begun: u32,
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl Case {
    fn new(setup: Setup) -> Case {
        let (io, peer) = tokio::io::duplex(setup.max_buf);
        let addr: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        let conn = Conn::new(7, addr, setup.policy());
        if setup.http {
            conn.mark_http();
        }
        let stream = HygieneStream::new(io, conn.clone());
        let now = Instant::now();
        Case {
            setup,
            stream: Some(stream),
            peer: Some(peer),
            conn,
            stream_task: task::spawn(()),
            writer_task: task::spawn(()),
            peer_reader: task::spawn(()),
            peer_writer: task::spawn(()),
            requests: Vec::new(),
            body_waits: Vec::new(),
            start: now,
            peer_written: Vec::new(),
            stream_read: Vec::new(),
            stream_written: Vec::new(),
            peer_read: Vec::new(),
            peer_write_closed: false,
            peer_dropped: false,
            stream_write_closed: false,
            first_byte: false,
            eof_seen: false,
            read_waiting_since: None,
            waited_busy: false,
            body_since: now,
            write_blocked_since: None,
            abandoned: None,
            pending_read: None,
            pending_write: None,
            head: None,
            requests_begun: 0,
        }
    }

    /// Bytes the peer wrote that the stream has not consumed yet.
    fn to_stream(&self) -> usize {
        self.peer_written.len() - self.stream_read.len()
    }

    /// Bytes the stream wrote that the peer has not read yet.
    fn to_peer(&self) -> usize {
        self.stream_written.len() - self.peer_read.len()
    }

    /// The read clock running now for a reader waiting since `since`, as
    /// `HygieneStream` defines it.
    fn read_deadline(&self, since: Instant) -> Option<(Instant, Abandon)> {
        let s = &self.setup;
        if !self.first_byte {
            return s
                .first_byte
                .map(|t| (self.start + ms(t), Abandon::FirstByteTimeout));
        }
        if !self.body_waits.is_empty() {
            return s
                .body_stall
                .map(|t| (self.body_since + ms(t), Abandon::BodyStallTimeout));
        }
        if !self.requests.is_empty() {
            return None;
        }
        let idle = s.idle.map(|t| (since + ms(t), Abandon::IdleTimeout));
        let head = match self.head {
            Some((since, requests)) if requests == self.requests_begun => {
                s.header.map(|t| (since + ms(t), Abandon::HeaderTimeout))
            }
            _ => None,
        };
        match (idle, head) {
            // On a tie, idle wins.
            (Some(i), Some(h)) => Some(if h.0 < i.0 { h } else { i }),
            (i, h) => i.or(h),
        }
    }

    /// Every deadline that could matter now, including the idle deadline while a
    /// handler is busy (where no clock must run).
    fn deadlines(&self) -> Vec<Instant> {
        let s = &self.setup;
        let mut all = Vec::new();
        let since = self.read_waiting_since.unwrap_or_else(Instant::now);
        all.extend(self.read_deadline(since).map(|(d, _)| d));
        all.extend(s.idle.map(|t| since + ms(t)));
        all.extend(s.first_byte.map(|t| self.start + ms(t)));
        if let (Some((since, _)), Some(t)) = (self.head, s.header) {
            all.push(since + ms(t));
        }
        if let (Some(since), Some(t)) = (self.write_blocked_since, s.write_stall) {
            all.push(since + ms(t));
        }
        all
    }

    /// Advances to a deadline, then retries what is pending, as the stream's task
    /// would when woken.
    async fn advance_to_deadline(
        &mut self,
        pick: usize,
        offset_ms: i8,
    ) -> Result<(), TestCaseError> {
        let deadlines = self.deadlines();
        if deadlines.is_empty() {
            return Ok(());
        }
        let deadline = deadlines[pick % deadlines.len()];
        let target = match offset_ms {
            -1 => deadline - ms(1),
            0 => deadline,
            _ => deadline + ms(1),
        };
        let now = Instant::now();
        if target > now {
            tokio::time::advance(target - now).await;
        }
        if let Some(n) = self.pending_read {
            self.stream_read(n)?;
        }
        if let Some(n) = self.pending_write {
            self.stream_write(n)?;
        }
        Ok(())
    }

    fn abandon(&mut self, reason: Abandon) {
        self.abandoned.get_or_insert(reason);
    }

    async fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::PeerWrite(n) => self.peer_write(n)?,
            Op::PeerRead(n) => self.peer_read(n)?,
            Op::PeerHalfClose => {
                if !self.peer_write_closed {
                    let peer = self.peer.as_mut().unwrap();
                    let poll = self
                        .peer_writer
                        .enter(|cx, _| Pin::new(peer).poll_shutdown(cx));
                    prop_assert!(matches!(poll, Poll::Ready(Ok(()))), "{poll:?}");
                    self.peer_write_closed = true;
                }
            }
            Op::PeerReset => {
                if !self.peer_dropped {
                    self.peer = None;
                    self.peer_dropped = true;
                    self.peer_write_closed = true;
                }
            }
            Op::StreamRead(n) => self.stream_read(n)?,
            Op::StreamWrite(n) => self.stream_write(n)?,
            Op::StreamShutdown => self.stream_shutdown()?,
            Op::BeginRequest | Op::BeginBodyWait if !self.setup.layer => {}
            Op::BeginRequest => {
                self.requests_begun += 1;
                self.requests.push(self.conn.begin_request());
            }
            Op::EndRequest => {
                let ended = self.requests.pop().is_some() && self.requests.is_empty();
                if ended
                    && self.setup.http
                    && self.first_byte
                    && (std::mem::take(&mut self.waited_busy) || self.read_waiting_since.is_none())
                {
                    // HTTP/1: the idle clock starts at the end of the last request, if
                    // a read waited while it ran or bytes came since the last wait,
                    // whenever the reader looks next.
                    self.read_waiting_since = Some(Instant::now());
                }
            }
            Op::BeginBodyWait => {
                if self.body_waits.is_empty() {
                    self.body_since = Instant::now();
                }
                self.body_waits.push(self.conn.begin_body_wait());
            }
            Op::EndBodyWait => drop(self.body_waits.pop()),
            Op::Advance(v) => tokio::time::advance(ms(v)).await,
            Op::AdvanceToDeadline { pick, offset_ms } => {
                self.advance_to_deadline(pick, offset_ms).await?;
            }
        }
        self.check_invariants()
    }

    fn peer_write(&mut self, n: usize) -> Result<(), TestCaseError> {
        if self.peer_dropped {
            return Ok(());
        }
        let start = self.peer_written.len();
        let data: Vec<u8> = (start..start + n).map(|i| pattern(0xA5, i)).collect();
        let peer = self.peer.as_mut().unwrap();
        let poll = self
            .peer_writer
            .enter(|cx, _| Pin::new(peer).poll_write(cx, &data));
        if self.peer_write_closed {
            prop_assert!(
                matches!(&poll, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe),
                "write after the peer's own shutdown: {poll:?}"
            );
            return Ok(());
        }
        let room = self.setup.max_buf - self.to_stream();
        match poll {
            Poll::Ready(Ok(k)) => {
                prop_assert_eq!(k, n.min(room));
                self.peer_written.extend_from_slice(&data[..k]);
            }
            Poll::Pending => prop_assert_eq!(room, 0, "peer write pending with room"),
            Poll::Ready(Err(e)) => prop_assert!(false, "peer write failed: {e}"),
        }
        Ok(())
    }

    fn peer_read(&mut self, n: usize) -> Result<(), TestCaseError> {
        if self.peer_dropped {
            return Ok(());
        }
        let mut buf = vec![0u8; n];
        let mut rb = ReadBuf::new(&mut buf);
        let peer = self.peer.as_mut().unwrap();
        let poll = self
            .peer_reader
            .enter(|cx, _| Pin::new(peer).poll_read(cx, &mut rb));
        let waiting = self.to_peer();
        match poll {
            Poll::Ready(Ok(())) => {
                let got = rb.filled();
                if waiting > 0 {
                    prop_assert_eq!(got.len(), n.min(waiting));
                } else {
                    prop_assert!(got.is_empty());
                    prop_assert!(self.stream_write_closed, "peer read EOF before our FIN");
                }
                self.peer_read.extend_from_slice(got);
            }
            Poll::Pending => {
                prop_assert_eq!(waiting, 0, "peer read pending with data waiting");
                prop_assert!(!self.stream_write_closed, "peer missed our FIN");
            }
            Poll::Ready(Err(e)) => prop_assert!(false, "peer read failed: {e}"),
        }
        Ok(())
    }

    fn stream_read(&mut self, n: usize) -> Result<(), TestCaseError> {
        let mut buf = vec![0u8; n];
        let mut rb = ReadBuf::new(&mut buf);
        let stream = Pin::new(self.stream.as_mut().unwrap());
        let poll = self
            .stream_task
            .enter(|cx, _| stream.poll_read(cx, &mut rb));
        self.pending_read = poll.is_pending().then_some(n);
        let now = Instant::now();
        if self.abandoned.is_some() {
            prop_assert!(
                matches!(&poll, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionAborted),
                "read after abandonment: {poll:?}"
            );
            return Ok(());
        }
        let waiting = self.to_stream();
        if waiting > 0 {
            prop_assert!(matches!(poll, Poll::Ready(Ok(()))), "{poll:?}");
            let got = rb.filled();
            prop_assert_eq!(got.len(), n.min(waiting));
            self.stream_read.extend_from_slice(got);
            self.first_byte = true;
            let mut active = true;
            if self.setup.http && self.requests.is_empty() {
                let in_head = matches!(self.head, Some((_, r)) if r == self.requests_begun);
                if !in_head && got.iter().all(|&b| b == b'\r' || b == b'\n') {
                    // CRLFs between requests are neither a head nor activity.
                    active = false;
                } else if !in_head {
                    // Bytes between requests start a request head.
                    self.head = Some((now, self.requests_begun));
                }
            }
            if active {
                self.read_waiting_since = None;
            }
        } else if self.peer_write_closed {
            prop_assert!(matches!(poll, Poll::Ready(Ok(()))), "{poll:?}");
            prop_assert!(rb.filled().is_empty());
            self.eof_seen = true;
            if self.setup.half_close == HalfClose::Abort {
                self.abandon(Abandon::PeerFin);
            }
        } else {
            let busy = !self.requests.is_empty();
            if !busy && std::mem::take(&mut self.waited_busy) {
                self.read_waiting_since = None;
            }
            self.waited_busy |= busy;
            let since = *self.read_waiting_since.get_or_insert(now);
            match self.read_deadline(since) {
                Some((deadline, reason)) if now >= deadline => {
                    prop_assert!(
                        matches!(&poll, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::TimedOut),
                        "{reason} due {:?} ago, read gave {poll:?}",
                        now - deadline
                    );
                    self.abandon(reason);
                }
                deadline => prop_assert!(
                    poll.is_pending(),
                    "read should pend (deadline {:?}), got {poll:?}",
                    deadline.map(|(d, r)| (d - self.start, r))
                ),
            }
        }
        Ok(())
    }

    fn stream_write(&mut self, n: usize) -> Result<(), TestCaseError> {
        let start = self.stream_written.len();
        let data: Vec<u8> = (start..start + n).map(|i| pattern(0x3C, i)).collect();
        let stream = Pin::new(self.stream.as_mut().unwrap());
        let poll = self.writer_task.enter(|cx, _| stream.poll_write(cx, &data));
        self.pending_write = poll.is_pending().then_some(n);
        let now = Instant::now();
        if self.abandoned.is_some() {
            prop_assert!(
                matches!(&poll, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionAborted),
                "write after abandonment: {poll:?}"
            );
            return Ok(());
        }
        if self.peer_dropped || self.stream_write_closed {
            prop_assert!(
                matches!(&poll, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe),
                "write to a dropped peer or after our shutdown: {poll:?}"
            );
            return Ok(());
        }
        let room = self.setup.max_buf - self.to_peer();
        if room > 0 {
            prop_assert!(matches!(poll, Poll::Ready(Ok(_))), "{poll:?}");
            let Poll::Ready(Ok(k)) = poll else {
                unreachable!()
            };
            prop_assert_eq!(k, n.min(room));
            self.stream_written.extend_from_slice(&data[..k]);
            if k > 0 && self.read_waiting_since.is_some() && self.requests.is_empty() {
                self.read_waiting_since = Some(now);
            }
            self.write_blocked_since = None;
            return Ok(());
        }
        let Some(stall) = self.setup.write_stall else {
            prop_assert!(poll.is_pending(), "{poll:?}");
            return Ok(());
        };
        let since = *self.write_blocked_since.get_or_insert(now);
        if now >= since + ms(stall) {
            prop_assert!(
                matches!(&poll, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::TimedOut),
                "write stalled since {:?}, got {poll:?}",
                now - since
            );
            self.abandon(Abandon::WriteStallTimeout);
        } else {
            prop_assert!(poll.is_pending(), "{poll:?}");
            prop_assert_eq!(self.conn.phase(), Phase::WriteStall);
        }
        Ok(())
    }

    /// A half-close: our FIN at once, unless the connection was abandoned (then
    /// nothing: the drop resets). Never pending, and never reads.
    fn stream_shutdown(&mut self) -> Result<(), TestCaseError> {
        let stream = Pin::new(self.stream.as_mut().unwrap());
        let poll = self.stream_task.enter(|cx, _| stream.poll_shutdown(cx));
        prop_assert!(matches!(poll, Poll::Ready(Ok(()))), "shutdown: {poll:?}");
        if self.abandoned.is_none() && !self.stream_write_closed {
            self.stream_write_closed = true;
            self.write_blocked_since = None;
        }
        prop_assert_ne!(self.conn.phase(), Phase::Lingering);
        Ok(())
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        prop_assert!(self.peer_written.starts_with(&self.stream_read));
        prop_assert!(self.stream_written.starts_with(&self.peer_read));
        let expected_read: Vec<u8> = (0..self.stream_read.len())
            .map(|i| pattern(0xA5, i))
            .collect();
        prop_assert_eq!(&self.stream_read, &expected_read);
        prop_assert_eq!(self.conn.abandoned(), self.abandoned);
        if self.abandoned.is_some() {
            prop_assert_eq!(self.conn.phase(), Phase::Closed);
        }
        prop_assert_eq!(
            self.conn.bytes(),
            (
                self.stream_read.len() as u64,
                self.stream_written.len() as u64
            )
        );
        prop_assert_eq!(self.conn.in_flight() as usize, self.requests.len());
        if self.eof_seen {
            prop_assert_eq!(self.conn.peer_gone(), Some(PeerGone::Fin));
        }
        Ok(())
    }

    /// Whatever state the case is in: a shutdown, then reads until the peer's FIN
    /// (the peer half-closes once it has sent everything) return exactly the bytes
    /// the peer sent, unless the connection was abandoned; then the drop closes it at
    /// once.
    async fn finish(&mut self) -> Result<(), TestCaseError> {
        self.stream_shutdown()?;
        while self.abandoned.is_none() && !self.eof_seen {
            if self.to_stream() == 0 && !self.peer_write_closed {
                let peer = self.peer.as_mut().unwrap();
                let poll = self
                    .peer_writer
                    .enter(|cx, _| Pin::new(peer).poll_shutdown(cx));
                prop_assert!(matches!(poll, Poll::Ready(Ok(()))), "{poll:?}");
                self.peer_write_closed = true;
            }
            self.stream_read(64)?;
            self.check_invariants()?;
        }
        if self.abandoned.is_none() {
            prop_assert_eq!(&self.stream_read, &self.peer_written);
        }
        self.stream = None;
        prop_assert!(self.conn.is_closed());
        prop_assert_eq!(self.conn.phase(), Phase::Closed);
        Ok(())
    }
}

fn run(setup: Setup, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    // Unconstrained: hand-polled duplex operations must not run out of coop budget and
    // pend for a reason the model does not know about.
    rt.block_on(tokio::task::unconstrained(async move {
        let mut case = Case::new(setup);
        for op in &ops {
            case.step(op).await?;
        }
        case.finish().await
    }))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any interleaving of peer, stream, layer and clock events keeps the byte streams
    /// intact, fires each clock exactly at its deadline, never resurrects an abandoned
    /// connection, and ends closed.
    #[test]
    fn stream_state_machine_matches_the_model(
        setup in setup(),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        run(setup, ops)?;
    }
}

fn traffic() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..=48).prop_map(Op::PeerWrite),
        4 => (1usize..=48).prop_map(Op::StreamRead),
        1 => (1usize..=48).prop_map(Op::StreamWrite),
        1 => (1usize..=48).prop_map(Op::PeerRead),
        1 => Just(Op::PeerHalfClose),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Shutdown, at any point of a byte exchange, then reads: the stream reads exactly
    /// the bytes the peer sent, before and after our FIN, none lost to a linger.
    #[test]
    fn shutdown_then_reads_return_exactly_what_the_peer_sent(
        max_buf in 1usize..=64,
        reset_on_close in any::<bool>(),
        mut ops in prop::collection::vec(traffic(), 0..200),
        at in any::<prop::sample::Index>(),
    ) {
        let at = at.index(ops.len() + 1);
        ops.insert(at, Op::StreamShutdown);
        let setup = Setup {
            max_buf,
            layer: false,
            http: false,
            first_byte: None,
            header: None,
            idle: None,
            body_stall: None,
            write_stall: None,
            linger: 100,
            half_close: HalfClose::Allow,
            reset_on_close,
        };
        run(setup, ops)?;
    }
}

/// The model itself sees every outcome: a fixed sequence through each clock.
#[test]
fn model_walks_through_every_clock() {
    let setup = Setup {
        max_buf: 8,
        layer: true,
        http: false,
        first_byte: Some(100),
        header: Some(600),
        idle: Some(1_000),
        body_stall: Some(300),
        write_stall: Some(400),
        linger: 200,
        half_close: HalfClose::Allow,
        reset_on_close: false,
    };
    let ops = vec![
        Op::PeerWrite(4),
        Op::StreamRead(4),
        Op::BeginRequest,
        Op::BeginBodyWait,
        Op::StreamRead(4),
        Op::Advance(299),
        Op::StreamRead(4),
        Op::PeerWrite(2),
        Op::StreamRead(4),
        Op::EndBodyWait,
        Op::StreamWrite(8),
        Op::StreamWrite(8),
        Op::Advance(399),
        Op::StreamWrite(8),
        Op::PeerRead(3),
        Op::StreamWrite(8),
        Op::EndRequest,
        Op::StreamRead(4),
        Op::Advance(1_000),
        Op::StreamRead(4),
        Op::StreamWrite(1),
        Op::PeerRead(64),
        Op::PeerWrite(3),
        Op::StreamShutdown,
    ];
    run(setup, ops).unwrap();
}

/// The model's request-head clock: a head starts at its first byte, a request ends
/// it (the idle clock takes over), and the next head's bytes start a new one.
#[test]
fn model_walks_through_request_heads() {
    let setup = Setup {
        max_buf: 64,
        layer: true,
        http: true,
        first_byte: Some(100),
        header: Some(300),
        idle: Some(1_000),
        body_stall: None,
        write_stall: None,
        linger: 50,
        half_close: HalfClose::Allow,
        reset_on_close: false,
    };
    let ops = vec![
        Op::PeerWrite(4),
        Op::StreamRead(2),
        Op::Advance(200),
        Op::StreamRead(2),
        Op::BeginRequest,
        Op::Advance(100),
        Op::StreamRead(2),
        Op::EndRequest,
        // The old head's deadline has passed; only the idle clock runs.
        Op::StreamRead(2),
        Op::Advance(600),
        Op::StreamRead(2),
        Op::PeerWrite(1),
        Op::StreamRead(2),
        Op::AdvanceToDeadline {
            pick: 0,
            offset_ms: -1,
        },
        Op::AdvanceToDeadline {
            pick: 0,
            offset_ms: 0,
        },
        Op::StreamShutdown,
    ];
    run(setup, ops).unwrap();
}
