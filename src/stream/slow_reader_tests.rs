//! The write clocks against a model of the kernel's send side: a slow reader is
//! judged by what it acknowledged, not by when its writer was woken.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::HygieneStream;
use crate::conn::{Abandon, Conn};
use crate::policy::Policy;
use crate::rate::{PeerProgress, Sample};

/// The send buffer: a writer woken at a third drained waits for 9 KB, nine seconds
/// at 1 KB/s, beyond the floor's 5 s grace.
const BUFFER: u64 = 27 * 1024;
const TICK: Duration = Duration::from_millis(100);

/// A kernel's send side as its writer sees it: a buffer the peer drains at `rate`
/// bytes per second, writable again, once full, only after a third of it drained
/// (Linux's `sk_stream_wspace() >= sk_stream_min_wspace()`), and the count of bytes
/// the peer acknowledged. For the first `outage`, nothing is acknowledged and the
/// kernel retransmits: the network, not the peer, is at fault.
#[derive(Debug, Default)]
struct Kernel {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    queued: u64,
    acked: u64,
    full: bool,
    writer: Option<Waker>,
    retransmitting_since: Option<Instant>,
    // What the peer sent, read once.
    inbound: &'static [u8],
}

impl Kernel {
    fn start(rate: u64, outage: Duration) -> Arc<Kernel> {
        let kernel = Arc::new(Kernel::default());
        let start = Instant::now();
        if !outage.is_zero() {
            kernel.state.lock().unwrap().retransmitting_since = Some(start);
        }
        let weak = Arc::downgrade(&kernel);
        tokio::spawn(async move {
            let mut carry = 0;
            loop {
                tokio::time::sleep(TICK).await;
                let Some(kernel) = weak.upgrade() else { return };
                let mut state = kernel.state.lock().unwrap();
                if start.elapsed() < outage {
                    continue;
                }
                state.retransmitting_since = None;
                carry += rate;
                let drained = (carry / 10).min(state.queued);
                carry -= drained * 10;
                state.queued -= drained;
                state.acked += drained;
                if state.full && BUFFER - state.queued >= BUFFER / 3 {
                    state.full = false;
                    if let Some(writer) = state.writer.take() {
                        writer.wake();
                    }
                }
            }
        });
        kernel
    }
}

impl PeerProgress for Kernel {
    fn sample(&self) -> Option<Sample> {
        let state = self.state.lock().unwrap();
        Some(Sample {
            acked: state.acked,
            retransmitting_for: state
                .retransmitting_since
                .map_or(Duration::ZERO, |since| since.elapsed()),
            queued: state.queued > 0,
        })
    }
}

/// The socket over the model.
#[derive(Debug)]
struct Socket(Arc<Kernel>);

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.0.state.lock().unwrap();
        let room = BUFFER - state.queued;
        if state.full || room == 0 {
            state.full = true;
            state.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(buf.len() as u64);
        state.queued += n;
        Poll::Ready(Ok(n as usize))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut state = self.0.state.lock().unwrap();
        if state.inbound.is_empty() {
            // Nothing more comes: only a clock ends the read.
            return Poll::Pending;
        }
        buf.put_slice(std::mem::take(&mut state.inbound));
        Poll::Ready(Ok(()))
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    cut: Option<Abandon>,
    acked: u64,
    after: Duration,
}

/// Sends 80 KB to a reader at `rate` bytes per second under `policy`, the write
/// clocks judging by the kernel's acknowledged bytes (`kernel`) or, as before, by
/// completed writes alone.
async fn send(policy: Policy, rate: u64, outage: Duration, kernel: bool) -> Outcome {
    let model = Kernel::start(rate, outage);
    let conn = Conn::new(1, "127.0.0.1:1".parse().unwrap(), policy);
    conn.mark_http();
    let mut stream = HygieneStream::new(Socket(model.clone()), conn.clone());
    if kernel {
        stream = stream.with_progress(model.clone());
    }
    let started = Instant::now();
    let result = stream.write_all(&[b'x'; 80_000]).await;
    assert_eq!(result.is_err(), conn.abandoned().is_some(), "{result:?}");
    let acked = model.state.lock().unwrap().acked;
    Outcome {
        cut: conn.abandoned(),
        acked,
        after: started.elapsed(),
    }
}

fn floor_only() -> Policy {
    Policy::builder().write_stall_timeout(None).build().unwrap()
}

fn stall_only(stall: Duration) -> Policy {
    Policy::builder()
        .min_send_rate(None)
        .write_stall_timeout(Some(stall))
        .build()
        .unwrap()
}

/// The default floor (240 B/s after 5 s): a reader at 1 KB/s sees its writer woken
/// every nine seconds and is never cut; readers at 100 B/s, or with a closed window,
/// are, at the grace.
#[tokio::test(start_paused = true)]
async fn the_floor_judges_acknowledged_bytes() {
    let none = Duration::ZERO;
    let fast = send(floor_only(), 1000, none, true).await;
    assert_eq!(fast.cut, None, "{fast:?}");
    // The model is the bug: judged by completed writes, the same reader is cut.
    let before = send(floor_only(), 1000, none, false).await;
    assert_eq!(before.cut, Some(Abandon::MinSendRate), "{before:?}");
    assert_eq!(before.after, Duration::from_secs(5));

    let slow = send(floor_only(), 100, none, true).await;
    assert_eq!(slow.cut, Some(Abandon::MinSendRate), "{slow:?}");
    assert!(slow.acked <= 1000, "{slow:?}");
    assert_eq!(slow.after, Duration::from_secs(5), "at the grace");
    let closed = send(floor_only(), 0, none, true).await;
    assert_eq!(closed.cut, Some(Abandon::MinSendRate), "{closed:?}");
    assert_eq!(closed.acked, 0);
}

/// The stall clock (3 s here, a third of the writer's nine-second sleep) likewise.
#[tokio::test(start_paused = true)]
async fn the_stall_clock_judges_acknowledged_bytes() {
    let (stall, none) = (Duration::from_secs(3), Duration::ZERO);
    let reading = send(stall_only(stall), 1000, none, true).await;
    assert_eq!(reading.cut, None, "{reading:?}");
    let before = send(stall_only(stall), 1000, none, false).await;
    assert_eq!(before.cut, Some(Abandon::WriteStallTimeout), "{before:?}");
    let closed = send(stall_only(stall), 0, none, true).await;
    assert_eq!(closed.cut, Some(Abandon::WriteStallTimeout), "{closed:?}");
    assert_eq!(closed.after, stall, "{closed:?}");
}

/// Time the kernel spends retransmitting is the network's: a reader behind 20 s of
/// loss right after the response began, at the floor's grace, then at 1 KB/s, is
/// not cut; one behind an outage with no end (a vanished peer) is, once the network
/// has been forgiven the write-stall timeout.
#[tokio::test(start_paused = true)]
async fn the_network_is_not_the_peer_up_to_a_bound() {
    let default = Policy::default();
    let stall = default.write_stall_timeout().unwrap();
    let lossy = send(default.clone(), 1000, Duration::from_secs(20), true).await;
    assert!(lossy.acked >= 80_000 - BUFFER, "{lossy:?}");
    assert_eq!(lossy.cut, None, "{lossy:?}");
    let gone = send(default, 1000, Duration::MAX, true).await;
    assert_eq!(gone.cut, Some(Abandon::MinSendRate), "{gone:?}");
    let grace = Duration::from_secs(5);
    assert!(
        gone.after >= grace + stall && gone.after <= grace + stall + Duration::from_secs(2),
        "{gone:?}"
    );
    // Without the kernel's view, the outage is the peer's: cut at the grace.
    let before = send(Policy::default(), 1000, Duration::from_secs(20), false).await;
    assert_eq!(before.cut, Some(Abandon::MinSendRate), "{before:?}");
    assert_eq!(before.after, grace);
}

/// The idle clock does not start while the last answer is still in the kernel on
/// its way to a peer that takes it: 20 KB written at once drain at 1 KB/s for 20 s,
/// past a 10 s idle timeout. A peer that takes nothing, or less than the response
/// floor, is cut one timeout later.
#[tokio::test(start_paused = true)]
async fn an_answer_still_draining_is_not_idle() {
    use tokio::io::AsyncReadExt;
    async fn idle_cut_after(rate: u64, kernel: bool) -> Duration {
        let policy = Policy::builder()
            .first_byte_timeout(None)
            .idle_timeout(Some(Duration::from_secs(10)))
            .build()
            .unwrap();
        let model = Kernel::start(rate, Duration::ZERO);
        let conn = Conn::new(1, "127.0.0.1:1".parse().unwrap(), policy);
        conn.mark_http();
        let mut stream = HygieneStream::new(Socket(model.clone()), conn.clone());
        if kernel {
            stream = stream.with_progress(model.clone());
        }
        // A CRLF between requests: the idle clock runs from the first wait on.
        model.state.lock().unwrap().inbound = b"\r\n";
        let mut buf = [0; 16];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 2);
        let started = Instant::now();
        let request = conn.begin_request();
        stream.write_all(&[b'x'; 20_000]).await.unwrap();
        drop(request);
        let error = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(conn.abandoned(), Some(Abandon::IdleTimeout));
        started.elapsed()
    }
    let draining = idle_cut_after(1000, true).await;
    assert!(draining >= Duration::from_secs(20), "{draining:?}");
    assert!(draining <= Duration::from_secs(30), "{draining:?}");
    assert_eq!(idle_cut_after(1000, false).await, Duration::from_secs(10));
    assert_eq!(idle_cut_after(0, true).await, Duration::from_secs(20));
    // A reader below the response floor (240 B/s) is not held for past one look.
    assert_eq!(idle_cut_after(100, true).await, Duration::from_secs(20));
}
