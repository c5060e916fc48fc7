//! HTTP/1 responses as a test reads them off a socket: status, headers and body,
//! framed by `Content-Length`, by chunked transfer coding, or by the connection's end.
//!
//! The one response parser of the kit, its tests, benches and examples, on `httparse`.
//! It works on bytes already read, so it fits any way of reading:
//!
//! - [`Response::parse`]: is there a whole response at the start of these bytes?
//!   `Ok(None)` asks for more.
//! - [`Response::parse_to_eof`]: the bytes are all that the connection sent before it
//!   closed, so a body framed by the close ends with them.
//! - [`Response::read`]: reads from an [`AsyncRead`] until a whole response is there.
//! - [`Head::parse`]: the head alone, for a response whose body never came whole.
//!
//! A parsed response borrows the bytes it came from (only a chunked body is copied,
//! to remove the framing); [`Response::into_owned`] detaches it.
//!
//! ```
//! use conn_hygiene::testing::http1::Response;
//!
//! let bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n";
//! let first = Response::parse(bytes)?.expect("a whole response");
//! assert_eq!(first.status(), 200);
//! assert_eq!(first.body(), b"ok");
//! assert!(first.keep_alive());
//! // Pipelined responses follow one another.
//! let second = Response::parse(&bytes[first.wire_len()..])?.expect("another one");
//! assert_eq!(second.status(), 204);
//! // Half a response: read more.
//! assert!(Response::parse(&bytes[..20])?.is_none());
//! # Ok::<(), conn_hygiene::testing::http1::Error>(())
//! ```
//!
//! A response to `HEAD` has no body whatever its headers announce: read its
//! [`Head`] instead.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::mem::MaybeUninit;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most header lines a head may have (hyper's default limit too).
pub const MAX_HEADERS: usize = 100;

/// A response that could not be parsed.
///
/// ```
/// use conn_hygiene::testing::http1::{Error, Response};
///
/// let cut = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort";
/// assert_eq!(Response::parse_to_eof(cut), Err(Error::Truncated));
/// // In a function returning `io::Result`, `?` turns it into `UnexpectedEof`.
/// let error = std::io::Error::from(Error::Truncated);
/// assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not an HTTP/1 response, or its framing is broken; says what.
    Invalid(String),
    /// The connection ended before the response did.
    Truncated,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(what) => write!(f, "invalid HTTP/1 response: {what}"),
            Error::Truncated => f.write_str("the connection ended mid-response"),
        }
    }
}

impl std::error::Error for Error {}

/// `InvalidData`, or `UnexpectedEof` for [`Error::Truncated`].
impl From<Error> for io::Error {
    fn from(error: Error) -> io::Error {
        let kind = match error {
            Error::Invalid(_) => io::ErrorKind::InvalidData,
            Error::Truncated => io::ErrorKind::UnexpectedEof,
        };
        io::Error::new(kind, error)
    }
}

fn invalid(what: impl fmt::Display) -> Error {
    Error::Invalid(what.to_string())
}

/// How a response's body ends (RFC 9112, section 6.3).
///
/// ```
/// use conn_hygiene::testing::http1::{Framing, Head};
///
/// let head = Head::parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")?;
/// assert_eq!(head.map(|h| h.framing()), Some(Framing::Chunked));
/// # Ok::<(), conn_hygiene::testing::http1::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Framing {
    /// No body: status 1xx, 204 or 304.
    Empty,
    /// `Content-Length` bytes.
    Length(usize),
    /// Chunked transfer coding, ended by a zero-size chunk and the trailer section.
    Chunked,
    /// Everything until the server closes the connection.
    Close,
}

/// The head of an HTTP/1 response: status line and header section.
///
/// ```
/// use conn_hygiene::testing::http1::{Framing, Head};
///
/// let bytes = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 33\r\n\r\nno body yet";
/// let head = Head::parse(bytes)?.expect("a whole head");
/// assert_eq!((head.version(), head.status()), (1, 503));
/// assert_eq!(head.reason(), "Service Unavailable");
/// assert_eq!(head.header("connection"), Some("close"));
/// assert_eq!(head.framing(), Framing::Length(33));
/// assert!(!head.keep_alive());
/// assert_eq!(&bytes[head.wire_len()..], b"no body yet");
/// # Ok::<(), conn_hygiene::testing::http1::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head<'b> {
    bytes: Cow<'b, [u8]>,
    version: u8,
    status: u16,
    framing: Framing,
    persistent: bool,
}

impl<'b> Head<'b> {
    /// The head at the start of `buf`; `Ok(None)` until its blank line has arrived.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`]: not an HTTP/1 status line and header section, more than
    /// [`MAX_HEADERS`] header lines, or a `Content-Length` that is no number or that
    /// disagrees with another.
    pub fn parse(buf: &'b [u8]) -> Result<Option<Head<'b>>, Error> {
        with_head(buf, |response, len| {
            let version = response.version.unwrap_or_default();
            let status = response.code.unwrap_or_default();
            let mut length = None;
            let mut chunked = None;
            let (mut close, mut keep_alive) = (false, false);
            for header in response.headers.iter() {
                let value = || {
                    std::str::from_utf8(header.value)
                        .map_err(|_| invalid(format_args!("{} is not UTF-8", header.name)))
                };
                if header.name.eq_ignore_ascii_case("content-length") {
                    // A list of equal values is one length (RFC 9110, section 8.6).
                    for item in value()?.split(',') {
                        let item: usize = item.trim().parse().map_err(|_| {
                            invalid(format_args!("content-length {:?}", value().unwrap_or("")))
                        })?;
                        if length.is_some_and(|l| l != item) {
                            return Err(invalid("content-length values disagree"));
                        }
                        length = Some(item);
                    }
                } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                    // Only a final `chunked` coding frames the body.
                    let last = value()?.rsplit(',').next().unwrap_or("").trim();
                    chunked = Some(last.eq_ignore_ascii_case("chunked"));
                } else if header.name.eq_ignore_ascii_case("connection") {
                    for token in value()?.split(',').map(str::trim) {
                        close |= token.eq_ignore_ascii_case("close");
                        keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                    }
                }
            }
            let framing = match (status, chunked, length) {
                (100..=199 | 204 | 304, _, _) => Framing::Empty,
                // Transfer-Encoding overrides Content-Length.
                (_, Some(true), _) => Framing::Chunked,
                (_, Some(false), _) => Framing::Close,
                (_, None, Some(length)) => Framing::Length(length),
                (_, None, None) => Framing::Close,
            };
            Ok(Head {
                bytes: Cow::Borrowed(&buf[..len]),
                version,
                status,
                framing,
                persistent: !close && (version >= 1 || keep_alive),
            })
        })
    }

    /// The minor version: 1 for `HTTP/1.1`, 0 for `HTTP/1.0`.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The reason phrase (`OK`, `Not Found`), possibly empty.
    pub fn reason(&self) -> &str {
        with_head(&self.bytes, |response, _| Ok(response.reason.unwrap_or("")))
            .ok()
            .flatten()
            .unwrap_or("")
    }

    /// The value of the first header line named `name` (any case), without the
    /// surrounding whitespace; `None` when there is none or it is not UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        let value = with_head(&self.bytes, |response, _| {
            Ok(response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value))
        })
        .ok()
        .flatten()
        .flatten()?;
        std::str::from_utf8(value).ok().map(str::trim)
    }

    /// How the body that follows ends.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Whether the connection may carry another request after this response: its
    /// `Connection` header and version allow it (HTTP/1.1 unless `close`, HTTP/1.0
    /// with `keep-alive`), and the body does not end with the connection.
    pub fn keep_alive(&self) -> bool {
        self.persistent && self.framing != Framing::Close
    }

    /// The bytes of the head, its blank line included.
    pub fn wire_len(&self) -> usize {
        self.bytes.len()
    }

    /// The head, detached from the bytes it was parsed from.
    pub fn into_owned(self) -> Head<'static> {
        Head {
            bytes: Cow::Owned(self.bytes.into_owned()),
            ..self
        }
    }
}

/// A whole HTTP/1 response: its [`Head`] and its body, without the framing.
///
/// ```
/// use conn_hygiene::testing::http1::Response;
///
/// let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n1\r\n!\r\n0\r\n\r\n";
/// let response = Response::parse(chunked)?.expect("a whole response");
/// assert_eq!(response.body(), b"ok!");
/// assert_eq!(response.wire_len(), chunked.len());
///
/// // Framed by the close: whole only once the connection has ended.
/// let until_eof = b"HTTP/1.0 200 OK\r\n\r\nall of it";
/// assert!(Response::parse(until_eof)?.is_none());
/// let response = Response::parse_to_eof(until_eof)?;
/// assert_eq!(response.body(), b"all of it");
/// assert!(!response.keep_alive());
/// # Ok::<(), conn_hygiene::testing::http1::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response<'b> {
    head: Head<'b>,
    body: Cow<'b, [u8]>,
    wire_len: usize,
}

impl<'b> Response<'b> {
    /// The response at the start of `buf`; `Ok(None)` until all of it has arrived.
    /// A body framed by the connection's end is never whole here: see
    /// [`parse_to_eof`](Self::parse_to_eof).
    ///
    /// An interim (1xx) response is a response of its own, with no body: parse again
    /// after its [`wire_len`](Self::wire_len) for the final one.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`]: as [`Head::parse`], or a malformed chunked body.
    pub fn parse(buf: &'b [u8]) -> Result<Option<Response<'b>>, Error> {
        Self::parse_inner(buf, false)
    }

    /// The first response in `buf`, which holds every byte the connection delivered
    /// before it ended: a body framed by the end is the rest of `buf`. Bytes after a
    /// response framed otherwise are left alone (see [`wire_len`](Self::wire_len)).
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] when `buf` ends before the response does (no bytes at
    /// all, half a head, a short body); [`Error::Invalid`] as [`parse`](Self::parse).
    pub fn parse_to_eof(buf: &'b [u8]) -> Result<Response<'b>, Error> {
        Self::parse_inner(buf, true)?.ok_or(Error::Truncated)
    }

    fn parse_inner(buf: &'b [u8], eof: bool) -> Result<Option<Response<'b>>, Error> {
        let Some(head) = Head::parse(buf)? else {
            return Ok(None);
        };
        let rest = &buf[head.wire_len()..];
        let framed = match head.framing {
            Framing::Empty => Some((Cow::Borrowed(&rest[..0]), 0)),
            Framing::Length(length) => {
                (rest.len() >= length).then(|| (Cow::Borrowed(&rest[..length]), length))
            }
            Framing::Chunked => dechunk(rest)?.map(|(body, len)| (Cow::Owned(body), len)),
            Framing::Close => eof.then_some((Cow::Borrowed(rest), rest.len())),
        };
        Ok(framed.map(|(body, body_len)| Response {
            wire_len: head.wire_len() + body_len,
            head,
            body,
        }))
    }

    /// Reads from `io` into `buf` until `buf` starts with a whole response, and
    /// returns it. At the end of the stream a body framed by the end is whole.
    ///
    /// `buf` may already hold the start of the response, read earlier; bytes read past
    /// the response (a pipelined next one) stay in it: remove the first
    /// [`wire_len`](Self::wire_len) bytes before reading the next response.
    ///
    /// ```
    /// use conn_hygiene::testing::http1::Response;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// // Any `AsyncRead`: a `TcpStream`, or here bytes in memory.
    /// let mut io: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
    /// let mut buf = Vec::new();
    /// let response = Response::read(&mut io, &mut buf).await?;
    /// assert_eq!((response.status(), response.body()), (200, &b"hello"[..]));
    /// let used = response.wire_len();
    /// buf.drain(..used);
    /// assert_eq!(Response::read(&mut io, &mut buf).await?.status(), 404);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// A read failed; `InvalidData` for an invalid response ([`Error::Invalid`]),
    /// `UnexpectedEof` when the stream ended mid-response or before it
    /// ([`Error::Truncated`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: what was read is in `buf`, and a new call goes on from there.
    pub async fn read<R>(io: &mut R, buf: &'b mut Vec<u8>) -> io::Result<Response<'b>>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        // Parsed again once whole: a borrow returned from inside the loop would keep
        // `buf` borrowed for the reads of later iterations.
        while Response::parse(buf)?.is_none() {
            buf.reserve(4096);
            if io.read_buf(buf).await? == 0 {
                let buf: &'b [u8] = buf;
                return Ok(Response::parse_to_eof(buf)?);
            }
        }
        let buf: &'b [u8] = buf;
        Ok(Response::parse(buf)?.expect("whole, as parsed above"))
    }

    /// The head.
    pub fn head(&self) -> &Head<'b> {
        &self.head
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.head.status
    }

    /// As [`Head::header`].
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The body, without its framing (chunk sizes and trailers removed).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// As [`Head::keep_alive`].
    pub fn keep_alive(&self) -> bool {
        self.head.keep_alive()
    }

    /// The bytes of the whole response: where the next one starts.
    pub fn wire_len(&self) -> usize {
        self.wire_len
    }

    /// The response, detached from the bytes it was parsed from.
    pub fn into_owned(self) -> Response<'static> {
        Response {
            head: self.head.into_owned(),
            body: Cow::Owned(self.body.into_owned()),
            wire_len: self.wire_len,
        }
    }
}

/// Runs `f` on the head at the start of `buf` and its length; `Ok(None)` while the
/// head is incomplete.
fn with_head<'b, T>(
    buf: &'b [u8],
    f: impl FnOnce(&httparse::Response<'_, 'b>, usize) -> Result<T, Error>,
) -> Result<Option<T>, Error> {
    // Uninitialised: no 3 KiB of headers to zero for each parse of a load bench.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => f(&response, len).map(Some),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(invalid(e)),
    }
}

/// The data of the chunked body at the start of `buf`, and the length of its framing
/// through the trailer section; `Ok(None)` while incomplete.
fn dechunk(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, Error> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (line, size) = match httparse::parse_chunk_size(&buf[at..]) {
            Ok(httparse::Status::Complete(parsed)) => parsed,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::InvalidChunkSize) => return Err(invalid("bad chunk size")),
        };
        at += line;
        if size == 0 {
            let mut trailers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            return match httparse::parse_headers(&buf[at..], &mut trailers) {
                Ok(httparse::Status::Complete((len, _))) => Ok(Some((body, at + len))),
                Ok(httparse::Status::Partial) => Ok(None),
                Err(e) => Err(invalid(format_args!("trailers: {e}"))),
            };
        }
        let size = usize::try_from(size).map_err(|_| invalid("chunk size"))?;
        let Some(chunk) = buf
            .get(at..)
            .and_then(|rest| rest.get(..size.saturating_add(2)))
        else {
            return Ok(None);
        };
        let (data, end) = chunk.split_at(size);
        if end != b"\r\n" {
            return Err(invalid("chunk data longer than its size"));
        }
        body.extend_from_slice(data);
        at += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(buf: &[u8]) -> Option<Response<'_>> {
        Response::parse(buf).unwrap()
    }

    #[test]
    fn framing_decides_when_a_response_is_complete() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
        assert!(whole(&head[..]).is_none());
        assert!(whole(&[&head[..], b"slep"].concat()).is_none());
        let done = [&head[..], b"slept"].concat();
        assert_eq!(whole(&done).unwrap().body(), b"slept");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(whole(&[&chunked[..], b"3\r\nabc\r\n"].concat()).is_none());
        assert!(whole(&[&chunked[..], b"3\r\nabc\r\n0\r\n"].concat()).is_none());
        let done = [&chunked[..], b"3;ext=1\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n"].concat();
        let response = whole(&done).unwrap();
        assert_eq!(
            (response.body(), response.wire_len()),
            (&b"abc"[..], done.len())
        );
        assert_eq!(
            whole(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap().body(),
            b""
        );
        assert_eq!(
            whole(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap().status(),
            100
        );
        assert!(whole(b"HTTP/1.0 200 OK\r\n\r\nuntil eof").is_none());
    }

    #[test]
    fn the_end_of_the_connection_ends_a_body_framed_by_it() {
        let response = Response::parse_to_eof(b"HTTP/1.1 200 OK\r\n\r\nrest").unwrap();
        assert_eq!(response.head().framing(), Framing::Close);
        assert_eq!(response.body(), b"rest");
        assert!(!response.keep_alive());
        let truncated = [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
        ];
        for bytes in truncated {
            assert_eq!(Response::parse_to_eof(bytes), Err(Error::Truncated));
        }
    }

    #[test]
    fn connection_reuse_follows_version_and_connection_header() {
        let keep_alive = |head: &[u8]| Head::parse(head).unwrap().unwrap().keep_alive();
        assert!(keep_alive(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!keep_alive(
            b"HTTP/1.1 200 OK\r\nConnection: Close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!keep_alive(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(keep_alive(
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!keep_alive(b"HTTP/1.1 200 OK\r\n\r\n"));
    }

    #[test]
    fn transfer_encoding_overrides_content_length() {
        let head = |bytes: &[u8]| Head::parse(bytes).unwrap().unwrap().framing();
        assert_eq!(
            head(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
            ),
            Framing::Chunked
        );
        assert_eq!(
            head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n"),
            Framing::Close
        );
        assert_eq!(
            head(b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n"),
            Framing::Length(3)
        );
        assert_eq!(
            head(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 3\r\n\r\n"),
            Framing::Empty
        );
    }

    #[test]
    fn malformed_responses_are_invalid() {
        let invalid = [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: five\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nabc\r\n",
        ];
        for bytes in invalid {
            let error = Response::parse(bytes).unwrap_err();
            assert!(matches!(error, Error::Invalid(_)), "{bytes:?}: {error}");
            assert_eq!(io::Error::from(error).kind(), io::ErrorKind::InvalidData);
        }
    }

    #[test]
    fn head_fields_and_owned_copies() {
        let bytes =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nx-a:  spaced \r\n\r\nhi".to_vec();
        let head = Head::parse(&bytes).unwrap().unwrap().into_owned();
        drop(bytes);
        assert_eq!(head.status(), 431);
        assert_eq!(head.reason(), "Request Header Fields Too Large");
        assert_eq!(head.header("X-A"), Some("spaced"));
        assert_eq!(head.header("x-b"), None);
    }

    #[tokio::test]
    async fn read_keeps_what_follows_and_reports_a_cut() {
        let mut io: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\ncut";
        let mut buf = Vec::new();
        let first = Response::read(&mut io, &mut buf).await.unwrap();
        assert_eq!(first.body(), b"ok");
        let used = first.wire_len();
        buf.drain(..used);
        let error = Response::read(&mut io, &mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
