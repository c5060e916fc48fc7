//! Socket I/O of a running peer, recorded in its [`Progress`].

use std::io;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Duration, Instant, sleep_until};

use super::handle::End;

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
        if response_complete(&p.borrow().received) {
            return Ok(());
        }
        read_some(s, p).await?;
    }
}

fn response_complete(buf: &[u8]) -> bool {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let body = &buf[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.get(9..12))
        .and_then(|code| code.parse::<u16>().ok());
    if matches!(status, Some(100..=199 | 204 | 304)) {
        return true;
    }
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim() {
            "content-length" => {
                return value
                    .trim()
                    .parse::<usize>()
                    .is_ok_and(|len| body.len() >= len);
            }
            "transfer-encoding" if value.contains("chunked") => return chunked_complete(body),
            _ => {}
        }
    }
    // Delimited by the close: complete only at end of file.
    false
}

fn chunked_complete(mut body: &[u8]) -> bool {
    loop {
        let Some(line_end) = find(body, b"\r\n") else {
            return false;
        };
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|line| line.split(';').next())
            .and_then(|size| usize::from_str_radix(size.trim(), 16).ok());
        let Some(size) = size else {
            return false;
        };
        body = &body[line_end + 2..];
        if size == 0 {
            // Trailers, if any, end with an empty line.
            return body.starts_with(b"\r\n") || find(body, b"\r\n\r\n").is_some();
        }
        if body.len() < size + 2 {
            return false;
        }
        body = &body[size + 2..];
    }
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_decides_when_a_response_is_complete() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
        assert!(!response_complete(&head[..]));
        assert!(!response_complete(&[&head[..], b"slep"].concat()));
        assert!(response_complete(&[&head[..], b"slept"].concat()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(!response_complete(
            &[&chunked[..], b"3\r\nabc\r\n"].concat()
        ));
        assert!(response_complete(
            &[&chunked[..], b"3\r\nabc\r\n0\r\n\r\n"].concat()
        ));
        assert!(response_complete(b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert!(!response_complete(b"HTTP/1.0 200 OK\r\n\r\nuntil eof"));
    }
}
