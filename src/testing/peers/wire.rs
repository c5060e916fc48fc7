//! Socket I/O of a running peer, recorded in its [`Progress`].

use std::io;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Duration, Instant, sleep_until};

use super::kind::End;
use crate::testing::http1::Response;

/// What a running peer has seen so far: written by its task, watched by its handle.
#[derive(Debug, Default)]
pub(super) struct Progress {
    pub(super) received: Vec<u8>,
    pub(super) settled: Option<Instant>,
    pub(super) end: Option<End>,
    pub(super) ended_at: Option<Instant>,
}

/// Records the moment the peer began its misbehaviour (the first call only).
pub(super) fn settle(p: &watch::Sender<Progress>) {
    p.send_if_modified(|p| {
        if p.settled.is_some() {
            return false;
        }
        p.settled = Some(Instant::now());
        true
    });
}

pub(super) async fn write_all(s: &TcpStream, mut buf: &[u8]) -> Result<(), End> {
    while !buf.is_empty() {
        s.writable().await.map_err(|e| End::of(&e))?;
        match s.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(End::of(&e)),
        }
    }
    Ok(())
}

/// As [`write_all`], keeping what the server sent if the write fails.
pub(super) async fn send(
    s: &TcpStream,
    p: &watch::Sender<Progress>,
    bytes: &[u8],
) -> Result<(), End> {
    match write_all(s, bytes).await {
        Ok(()) => Ok(()),
        Err(end) => Err(drain_after_write_error(s, p, end)),
    }
}

/// Reads once (waiting for bytes) into the progress. `Err` when the connection ended.
async fn read_some(s: &TcpStream, p: &watch::Sender<Progress>) -> Result<usize, End> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        s.readable().await.map_err(|e| End::of(&e))?;
        match s.try_read(&mut buf) {
            Ok(0) => return Err(End::Eof),
            Ok(n) => {
                p.send_modify(|p| p.received.extend_from_slice(&buf[..n]));
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(End::of(&e)),
        }
    }
}

pub(super) async fn read_to_end(s: &TcpStream, p: &watch::Sender<Progress>) -> End {
    loop {
        if let Err(end) = read_some(s, p).await {
            return end;
        }
    }
}

/// After a failed write, keeps what the server sent before it went away.
fn drain_after_write_error(s: &TcpStream, p: &watch::Sender<Progress>, end: End) -> End {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => return end,
            Ok(n) => p.send_modify(|p| p.received.extend_from_slice(&buf[..n])),
            Err(_) => return end,
        }
    }
}

/// Sends `bytes` one per `interval`, reading meanwhile; settles when the first byte
/// is sent if `settle_first`. `Err` when the connection ended.
pub(super) async fn pace<'a>(
    s: &TcpStream,
    p: &watch::Sender<Progress>,
    bytes: impl Iterator<Item = &'a u8>,
    interval: Duration,
    settle_first: bool,
) -> Result<(), End> {
    let mut next = Instant::now();
    for (i, byte) in bytes.enumerate() {
        loop {
            tokio::select! {
                biased;
                read = read_some(s, p) => { read?; }
                () = sleep_until(next) => break,
            }
        }
        send(s, p, std::slice::from_ref(byte)).await?;
        if settle_first && i == 0 {
            settle(p);
        }
        next = Instant::now() + interval;
    }
    Ok(())
}

/// Waits, without reading a byte, until the server closes or resets.
pub(super) async fn wait_closed_unread(s: &TcpStream) -> End {
    loop {
        let ready = match s.ready(Interest::READABLE).await {
            Ok(ready) => ready,
            Err(e) => return End::of(&e),
        };
        if ready.is_read_closed() || ready.is_error() {
            return match s.take_error() {
                Ok(Some(e)) => End::of(&e),
                _ if ready.is_error() => End::Reset,
                _ => End::Eof,
            };
        }
        // Bytes this peer will never read: clear the readiness and wait for the next
        // event. The closed and error bits are never cleared, so none is missed.
        let _ = s.try_io(Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
}

/// Reads until one whole HTTP/1 response has arrived.
pub(super) async fn read_one_response(
    s: &TcpStream,
    p: &watch::Sender<Progress>,
) -> Result<(), End> {
    loop {
        // An invalid answer is never whole: the peer reads on until the connection ends.
        if matches!(Response::parse(&p.borrow().received), Ok(Some(_))) {
            return Ok(());
        }
        read_some(s, p).await?;
    }
}
