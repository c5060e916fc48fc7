//! The HTTP/2 guard: `serve()` wraps every connection's I/O after the acceptor (so over
//! TLS it sees the decrypted frames) and follows both directions frame by frame. It
//! closes what hyper and h2 leave open:
//!
//! - **floods** that cost the server a little each, forever: PING, SETTINGS, PRIORITY,
//!   WINDOW_UPDATE, resets of accepted streams, empty and unknown frames, paid from a
//!   [`FloodBudget`] that only work refills;
//! - **flow-control starvation** (CVE-2019-9517): a response (or the connection) whose
//!   window the client keeps shut for the policy's
//!   [`write_stall_timeout`](crate::policy::PolicyBuilder::write_stall_timeout), as a blocked
//!   socket write would be, or opens by so little that the DATA it lets through falls
//!   below the policy's [`min_send_rate`](crate::policy::PolicyBuilder::min_send_rate) while
//!   held (trickled WINDOW_UPDATEs);
//! - **error GOAWAYs that hold the descriptor**: after a GOAWAY with an error code (the
//!   guard's, or h2's for a protocol error) nothing is in flight to protect, so the
//!   connection is reset if the client has not closed within [`ERROR_LINGER`].
//!
//! The guard answers with GOAWAY `ENHANCE_YOUR_CALM` and closes. hyper has no way to
//! send a GOAWAY with a chosen code, so the guard writes the frame itself, between two
//! of h2's frames: it lets h2's frame under way finish (a write is cut at the frame's
//! end), writes its GOAWAY, and from then on fails h2's reads and writes, so no byte
//! of h2's follows. The client sees well-formed frames and a final GOAWAY, as from h2.
//! It cannot reset one stream: h2 would keep sending on it, and hyper does not poll a
//! response body while its stream has no window, so a body wrapper cannot act either.

mod budget;
mod frames;
mod windows;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub use budget::FloodBudget;
use budget::{Budget, Flood};
use frames::{Event, Header, Walker};
use windows::{Clocks, SendWindows};

use super::accept::Protocol;
use crate::conn::{Abandon, Conn};

/// How long a connection may stay open after a GOAWAY with an error code before it is
/// reset: long enough for the GOAWAY to reach the client and its frames in flight to
/// arrive, short enough that a reconnecting flood cannot pile up descriptors (the
/// lingering close would keep each for the policy's linger bound, 5 s by default).
pub const ERROR_LINGER: Duration = Duration::from_secs(1);

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The time for one batch of frames, read at the first frame that needs it: most
/// frames (a request's HEADERS aside) need none, and a clock read costs more than the
/// frame's bookkeeping.
#[derive(Debug, Default)]
pub(super) struct Now(Option<Instant>);

impl Now {
    /// A batch whose time is `now` already.
    #[cfg(test)]
    pub(super) fn at(now: Instant) -> Self {
        Now(Some(now))
    }

    pub(super) fn get(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// An I/O that follows the HTTP/2 frames passing through it. Not HTTP/2 (no preface):
/// it passes bytes through untouched.
#[derive(Debug)]
pub(super) struct H2Guard<IO> {
    io: IO,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Not known yet: this many bytes of the preface matched.
    Preface(u8, Settings),
    /// Not HTTP/2.
    Off,
    /// HTTP/2 frames.
    Watching(Box<Watch>),
}

/// What the guard needs to start watching.
#[derive(Debug)]
struct Settings {
    conn: Conn,
    budget: Option<FloodBudget>,
}

impl<IO> H2Guard<IO> {
    /// Guards `io` of `conn`, served with `protocol` when known (ALPN, `http2_only`);
    /// `budget` `None` turns the flood budget off.
    pub(super) fn new(
        io: IO,
        conn: &Conn,
        protocol: Option<Protocol>,
        budget: Option<FloodBudget>,
    ) -> Self {
        let settings = Settings {
            conn: conn.clone(),
            budget,
        };
        let state = match protocol {
            Some(Protocol::Http1) => State::Off,
            // h2 may write its SETTINGS before the preface arrives: follow from the start.
            Some(Protocol::Http2) => State::Watching(Box::new(Watch::new(settings, 0))),
            None => State::Preface(0, settings),
        };
        H2Guard { io, state }
    }
}

/// Both directions of an HTTP/2 connection.
#[derive(Debug)]
struct Watch {
    conn: Conn,
    /// Bytes of the client's preface still to skip.
    preface_left: u8,
    inbound: Walker,
    outbound: Walker,
    budget: Option<Budget>,
    windows: SendWindows,
    /// The highest stream the client opened.
    highest: u32,
    stall: Option<Pin<Box<Sleep>>>,
    /// The deadline the timer is set for.
    stall_deadline: Option<Instant>,
    /// The guard's own GOAWAY, once it decided to close.
    calm: Option<Calm>,
    /// A GOAWAY with an error code went out: the connection is on its way out.
    error_sent: bool,
    /// The lowest last-stream id of the GOAWAYs the server sent (none: `u32::MAX`).
    /// h2 ignores the streams a client opens above it, without a reset: they are
    /// counted as opened, but never followed (nothing would close them).
    goaway_last: u32,
}

#[derive(Debug)]
struct Calm {
    goaway: Vec<u8>,
    written: usize,
    flushed: bool,
    why: Abandon,
}

impl Watch {
    fn new(settings: Settings, preface_matched: u8) -> Self {
        let now = Instant::now();
        // The policy's clocks, not a request's override: one request to a route with a
        // long clock must not relax it for every stream the client holds.
        let policy = settings.conn.policy();
        let clocks = Clocks {
            stall: policy.write_stall_timeout(),
            floor: policy.min_send_rate(),
        };
        Watch {
            budget: settings.budget.map(|limits| Budget::new(limits, now)),
            conn: settings.conn,
            preface_left: PREFACE.len() as u8 - preface_matched,
            inbound: Walker::default(),
            outbound: Walker::default(),
            windows: SendWindows::new(clocks),
            highest: 0,
            stall: None,
            stall_deadline: None,
            calm: None,
            error_sent: false,
            goaway_last: u32::MAX,
        }
    }

    /// Takes bytes from the client.
    fn received(&mut self, mut bytes: &[u8]) {
        if self.preface_left > 0 {
            let n = bytes.len().min(usize::from(self.preface_left));
            self.preface_left -= n as u8;
            bytes = &bytes[n..];
        }
        let mut now = Now::default();
        let mut inbound = std::mem::take(&mut self.inbound);
        let mut flood = None;
        inbound.feed(bytes, &mut |event| {
            if flood.is_none()
                && let Err(found) = self.on_inbound(event, &mut now)
            {
                flood = Some(found);
            }
        });
        self.inbound = inbound;
        if let Some(flood) = flood {
            self.calm_down(Abandon::Http2Flood, flood.as_str());
        }
        self.arm_stall();
    }

    fn on_inbound(&mut self, event: Event, now: &mut Now) -> Result<(), Flood> {
        let header = match event {
            Event::Frame(header) => header,
            Event::Setting(frames::SETTINGS_INITIAL_WINDOW_SIZE, size) => {
                self.windows.initial_window(size, now);
                return Ok(());
            }
            Event::Setting(..) => return Ok(()),
            Event::Prefix(header, bytes, len) => {
                // A shorter WINDOW_UPDATE is h2's to refuse (FRAME_SIZE_ERROR).
                if header.kind == frames::WINDOW_UPDATE && len == 4 {
                    let increment = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                    self.windows.window_update(header.stream, increment, now);
                }
                return Ok(());
            }
        };
        let opens = self.track_request(header, now);
        let own_reset = header.kind == frames::RST_STREAM
            && header.stream % 2 == 1
            && header.stream <= self.highest;
        let age = if own_reset {
            self.windows
                .closed(header.stream, now)
                .map(|opened| now.get().saturating_duration_since(opened))
        } else {
            None
        };
        let Some(budget) = self.budget.as_mut() else {
            return Ok(());
        };
        let empty = header.len == 0 && !header.end_stream();
        match header.kind {
            frames::HEADERS | frames::DATA | frames::CONTINUATION if empty => {
                budget.empty(now.get())
            }
            frames::HEADERS | frames::DATA | frames::CONTINUATION => {
                budget.not_empty();
                if opens {
                    // Counted for the reset judgement; it earns only once answered
                    // (a stream h2 refuses does no work).
                    budget.opened();
                }
                Ok(())
            }
            frames::RST_STREAM if own_reset => budget.reset_by_peer(age, now.get()),
            _ => budget.overhead(now.get()),
        }
    }

    /// Follows a HEADERS frame that opens a stream; whether it did.
    fn track_request(&mut self, header: Header, now: &mut Now) -> bool {
        let opens = header.kind == frames::HEADERS
            && header.stream % 2 == 1
            && header.stream > self.highest;
        if opens {
            self.highest = header.stream;
            if header.stream <= self.goaway_last {
                self.windows.opened(header.stream, now);
            }
        }
        opens
    }

    /// Takes bytes the server wrote.
    fn sent(&mut self, bytes: &[u8]) {
        self.sent_slices(&[io::IoSlice::new(bytes)], bytes.len());
    }

    /// Takes the first `written` bytes of `bufs`, which the server wrote.
    fn sent_slices(&mut self, bufs: &[io::IoSlice<'_>], mut written: usize) {
        let mut now = Now::default();
        let mut outbound = std::mem::take(&mut self.outbound);
        for slice in bufs {
            if written == 0 {
                break;
            }
            let n = written.min(slice.len());
            outbound.feed(&slice[..n], &mut |event| self.on_outbound(event, &mut now));
            written -= n;
        }
        self.outbound = outbound;
        self.arm_stall();
    }

    fn on_outbound(&mut self, event: Event, now: &mut Now) {
        match event {
            Event::Frame(header) => match header.kind {
                frames::DATA => {
                    if let Some(budget) = self.budget.as_mut() {
                        budget.data_sent();
                    }
                    self.windows
                        .sent(header.stream, header.len, header.end_stream(), now);
                }
                frames::HEADERS => {
                    let first = self
                        .windows
                        .answered(header.stream, header.end_stream(), now);
                    if first && let Some(budget) = self.budget.as_mut() {
                        budget.answered();
                    }
                }
                frames::RST_STREAM => {
                    self.windows.closed(header.stream, now);
                }
                _ => {}
            },
            Event::Prefix(header, bytes, len) if header.kind == frames::GOAWAY && len == 8 => {
                let last = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                self.goaway_last = self.goaway_last.min(last & 0x7fff_ffff);
                let code = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
                if code != 0 && !self.error_sent {
                    self.error_sent = true;
                    error_linger(&self.conn, Abandon::LingerTimeout);
                }
            }
            _ => {}
        }
    }

    /// Decides to close: GOAWAY `ENHANCE_YOUR_CALM` at the next frame boundary.
    fn calm_down(&mut self, why: Abandon, detail: &str) {
        if self.calm.is_some() {
            return;
        }
        tracing::info!(
            target: "conn_hygiene::http2",
            parent: self.conn.span(),
            reason = why.as_str(),
            detail,
            streams = self.windows.open(),
            budget_left = self.budget.as_ref().map(Budget::left),
            "closing HTTP/2 connection with GOAWAY ENHANCE_YOUR_CALM"
        );
        let mut goaway = vec![0, 0, 8, frames::GOAWAY, 0, 0, 0, 0, 0];
        goaway.extend_from_slice(&self.highest.to_be_bytes());
        goaway.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        self.calm = Some(Calm {
            goaway,
            written: 0,
            flushed: false,
            why,
        });
        self.stall = None;
    }

    /// Keeps the stall timer at the earliest deadline of the responses held.
    fn arm_stall(&mut self) {
        let deadline = self.windows.deadline().filter(|_| self.calm.is_none());
        if deadline == self.stall_deadline {
            return;
        }
        self.stall_deadline = deadline;
        match (deadline, self.stall.as_mut()) {
            (None, _) => self.stall = None,
            (Some(deadline), Some(sleep)) => sleep.as_mut().reset(deadline),
            (Some(deadline), None) => {
                self.stall = Some(Box::pin(tokio::time::sleep_until(deadline)));
            }
        }
    }

    /// Polls the stall timer, registering the task's waker; whether it fired (the
    /// connection is then closing).
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(sleep) = self.stall.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            self.stall = None;
            self.calm_down(
                Abandon::WriteStallTimeout,
                "a response held by the client's flow-control window",
            );
            return true;
        }
        false
    }

    /// After frames went by: the stall timer (maybe new) is registered with this
    /// task, and a decision to close is acted on at the next poll.
    fn after_frames(&mut self, cx: &mut Context<'_>) {
        if self.poll_stall(cx) || self.calm.is_some() {
            cx.waker().wake_by_ref();
        }
    }

    /// Writes the guard's GOAWAY once h2's frame under way is out; ready when written
    /// and flushed.
    fn poll_calm<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.outbound.at_boundary() {
            // h2 finishes its frame first: its writes are cut at the frame's end. No
            // waker is registered here: h2's next write wakes us. If h2 never finishes
            // the frame (its socket write is blocked), the hygiene stream's write stall
            // clock beneath cuts the connection.
            return Poll::Pending;
        }
        let Some(calm) = self.calm.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while calm.written < calm.goaway.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &calm.goaway[calm.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            calm.written += n;
        }
        if !calm.flushed {
            ready!(Pin::new(&mut *io).poll_flush(cx))?;
            calm.flushed = true;
            error_linger(&self.conn, calm.why);
        }
        // Our FIN after the GOAWAY, as h2 does after its own: the stream then runs a
        // lingering close, which `error_linger` bounds.
        ready!(Pin::new(&mut *io).poll_shutdown(cx))?;
        Poll::Ready(Ok(()))
    }

    fn closed_error(&self) -> io::Error {
        let why = self.calm.as_ref().map_or("", |calm| calm.why.as_str());
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("HTTP/2 connection closed with GOAWAY ENHANCE_YOUR_CALM ({why})"),
        )
    }
}

/// After a GOAWAY with an error code: resets the connection if it is still open
/// [`ERROR_LINGER`] later (within the policy's own linger bound); counts the cut
/// either way.
fn error_linger(conn: &Conn, why: Abandon) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let conn = conn.clone();
    let bound = ERROR_LINGER.min(conn.policy().linger_timeout());
    runtime.spawn(async move {
        tokio::select! {
            () = conn.closed() => {
                if why != Abandon::LingerTimeout {
                    conn.count_cut(why);
                }
            }
            () = tokio::time::sleep(bound) => conn.abandon(why),
        }
    });
}

#[cfg(test)]
impl<IO> H2Guard<IO> {
    fn calm(&self) -> Option<&Calm> {
        match &self.state {
            State::Watching(watch) => watch.calm.as_ref(),
            _ => None,
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> H2Guard<IO> {
    /// Whether the bytes just read complete the preface (then the guard watches), or
    /// rule it out.
    fn sniff(&mut self, bytes: &[u8]) {
        let State::Preface(matched, _) = &mut self.state else {
            return;
        };
        let want = &PREFACE[usize::from(*matched)..];
        let n = bytes.len().min(want.len());
        if bytes[..n] != want[..n] {
            self.state = State::Off;
        } else if n < want.len() {
            *matched += n as u8;
        } else {
            let State::Preface(matched, settings) = std::mem::replace(&mut self.state, State::Off)
            else {
                unreachable!()
            };
            let mut watch = Watch::new(settings, matched);
            watch.received(bytes);
            self.state = State::Watching(Box::new(watch));
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> H2Guard<IO> {
    // The guard's own work, out of line: the pass-through calls above stay small
    // enough to inline into the server's I/O.
    #[inline(never)]
    fn poll_read_guarded(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Nearly every read has no stall timer to poll and no GOAWAY of the guard's
        // to send.
        if let State::Watching(watch) = &mut self.state
            && (watch.stall.is_some() || watch.calm.is_some())
        {
            watch.poll_stall(cx);
            if watch.calm.is_some() {
                ready!(watch.poll_calm(&mut self.io, cx))?;
                return Poll::Ready(Err(watch.closed_error()));
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        self.follow_read(&buf.filled()[before..], cx);
        Poll::Ready(Ok(()))
    }

    /// Follows the bytes just read.
    #[inline(never)]
    fn follow_read(&mut self, bytes: &[u8], cx: &mut Context<'_>) {
        match &mut self.state {
            State::Off => {}
            State::Preface(..) => self.sniff(bytes),
            State::Watching(watch) => {
                watch.received(bytes);
                watch.after_frames(cx);
            }
        }
    }

    #[inline(never)]
    fn poll_write_guarded(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let watch = match &mut self.state {
            State::Off => return Pin::new(&mut self.io).poll_write(cx, buf),
            State::Preface(..) => {
                // The server writes first: not HTTP/2 (hyper reads the whole preface
                // before it answers HTTP/2).
                self.state = State::Off;
                return Pin::new(&mut self.io).poll_write(cx, buf);
            }
            State::Watching(watch) => watch,
        };
        let mut buf = buf;
        if watch.calm.is_some() {
            if watch.outbound.at_boundary() {
                ready!(watch.poll_calm(&mut self.io, cx))?;
                return Poll::Ready(Err(watch.closed_error()));
            }
            buf = &buf[..buf.len().min(watch.outbound.left_in_frame())];
        }
        let n = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
        watch.sent(&buf[..n]);
        watch.after_frames(cx);
        Poll::Ready(Ok(n))
    }

    #[inline(never)]
    fn poll_write_vectored_guarded(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let watch = match &mut self.state {
            State::Off => return Pin::new(&mut self.io).poll_write_vectored(cx, bufs),
            State::Watching(watch) if watch.calm.is_none() => watch,
            // Rare paths: one slice at a time, through `poll_write`.
            _ => {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &b[..]);
                return self.poll_write_guarded(cx, first);
            }
        };
        let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs))?;
        watch.sent_slices(bufs, written);
        watch.after_frames(cx);
        Poll::Ready(Ok(written))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for H2Guard<IO> {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let State::Off = this.state {
            // Not HTTP/2 (every HTTP/1 read after the first): a plain call.
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        this.poll_read_guarded(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for H2Guard<IO> {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let State::Off = this.state {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        this.poll_write_guarded(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let State::Off = this.state {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        this.poll_write_vectored_guarded(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let State::Watching(watch) = &mut this.state
            && watch.calm.is_some()
            && watch.outbound.at_boundary()
        {
            ready!(watch.poll_calm(&mut this.io, cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
