//! A hostile HTTP/2 client's toolkit: frames encoded by hand (any frame, valid or not)
//! and a reader of the server's frames, over any socket.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const PRIORITY: u8 = 0x2;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;
pub(crate) const CONTINUATION: u8 = 0x9;

pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;

pub(crate) const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub(crate) const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub(crate) const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

pub(crate) const NO_ERROR: u32 = 0x0;
pub(crate) const PROTOCOL_ERROR: u32 = 0x1;
pub(crate) const CANCEL: u32 = 0x8;
pub(crate) const REFUSED_STREAM: u32 = 0x7;
pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame: a 9-byte header and its payload.
pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The preface and a SETTINGS frame with `settings`.
pub(crate) fn hello(settings_list: &[(u16, u32)]) -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(settings(settings_list));
    bytes
}

pub(crate) fn settings(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for &(id, value) in settings {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

pub(crate) fn settings_ack() -> Vec<u8> {
    frame(SETTINGS, ACK, 0, &[])
}

pub(crate) fn ping(opaque: u64) -> Vec<u8> {
    frame(PING, 0, 0, &opaque.to_be_bytes())
}

pub(crate) fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub(crate) fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// A PRIORITY frame making `stream` depend on `on`, weight 16.
pub(crate) fn priority(stream: u32, on: u32) -> Vec<u8> {
    let mut payload = on.to_be_bytes().to_vec();
    payload.push(15);
    frame(PRIORITY, 0, stream, &payload)
}

/// An HPACK block for `method` (`GET` or `POST`) of `path` on `localhost`, without
/// Huffman coding or table insertions, so that any split into frames is valid.
pub(crate) fn request_block(method: &str, path: &str) -> Vec<u8> {
    let mut block = vec![
        if method == "POST" { 0x83 } else { 0x82 }, // :method (static 2/3)
        0x86,                                       // :scheme http (static 6)
        0x01,                                       // :authority, literal not indexed
        9,
    ];
    block.extend_from_slice(b"localhost");
    block.push(0x04); // :path, literal not indexed
    block.push(path.len() as u8);
    block.extend_from_slice(path.as_bytes());
    block
}

/// A request's HEADERS frame; `end_stream` for a request without a body.
pub(crate) fn request(stream: u32, method: &str, path: &str, end_stream: bool) -> Vec<u8> {
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &request_block(method, path))
}

/// A frame received from the server.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) stream: u32,
    pub(crate) payload: Vec<u8>,
}

impl Frame {
    /// The error code of a GOAWAY or RST_STREAM frame.
    pub(crate) fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            GOAWAY => 4,
            RST_STREAM => 0,
            _ => return None,
        };
        let code = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes(code.try_into().unwrap()))
    }

    /// The settings of a SETTINGS frame.
    pub(crate) fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|s| {
                (
                    u16::from_be_bytes([s[0], s[1]]),
                    u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                )
            })
            .collect()
    }
}

/// Reads one frame.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Frame> {
    let mut header = [0u8; 9];
    reader.read_exact(&mut header).await?;
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0; len];
    reader.read_exact(&mut payload).await?;
    Ok(Frame {
        kind: header[3],
        flags: header[4],
        stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// How the server ended the connection, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// A GOAWAY with this code (the connection may stay open after it).
    GoAway(u32),
    /// EOF or a reset without a GOAWAY.
    Closed(io::ErrorKind),
    /// Nothing within the bound.
    StillOpen,
}

/// Reads the server's frames until a GOAWAY, the connection's end, or `within`;
/// `seen` gets every frame read.
pub(crate) async fn ending<R: AsyncRead + Unpin>(
    reader: &mut R,
    within: Duration,
    seen: &mut Vec<Frame>,
) -> Ending {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, read_frame(reader)).await {
            Err(_) => return Ending::StillOpen,
            Ok(Err(error)) => return Ending::Closed(error.kind()),
            Ok(Ok(frame)) if frame.kind == GOAWAY => {
                let code = frame.error_code().unwrap_or(u32::MAX);
                seen.push(frame);
                return Ending::GoAway(code);
            }
            Ok(Ok(frame)) => seen.push(frame),
        }
    }
}

/// Writes `bytes`, ignoring a server that has gone already.
pub(crate) async fn send<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}
