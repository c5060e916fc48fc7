//! The clock-evasion matrix: for each clock and protocol, the ways a peer can try to
//! hold a connection without doing work, each on real loopback sockets. Every attempt
//! must be cut within its clock plus a small bound, and not before its clock (a cut
//! for another reason, such as a protocol error, would prove nothing).
//!
//! Work is request bytes (HTTP/1), header blocks and DATA of a request (HTTP/2), and
//! tunnel payload. The dodges: every HTTP/2 frame type that does no work, CRLFs
//! between requests, a chunked body of chunk extensions or trailers and no data,
//! `Expect: 100-continue` and then nothing, a head trickled a byte at a time inside
//! the clock, and a TLS client that handshakes and then sends nothing or only records
//! that carry no data (TLS 1.3 KeyUpdate messages, which rustls sends on request).
//!
//! Each row runs on `serve()` and, in plaintext, on `axum::serve` with
//! `HygieneLayer` (`axum::serve` over the crate's listener has no TLS). The rows run
//! concurrently, each against a server of its own; `--nocapture` prints each row's
//! time to cut, measured from the moment the dodge began (after the last work).
//!
//! A cut is the first of: the connection closed (FIN or RST), a GOAWAY, or, where a
//! clock fails one HTTP/2 request only (body stall, body rate), that stream's end.
//! Rows whose client never reads watch the server's socket in the kernel instead.
//!
//! Its own test binary, not a module of `tests/it`: it installs a global tracing
//! subscriber.
#![cfg(all(feature = "axum", feature = "testing"))]

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use conn_hygiene::testing::wait_for_socket;
use conn_hygiene::{MinRate, Policy};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

#[path = "support/mod.rs"]
mod support;
use h2frames::{
    CANCEL, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PREFACE, RST_STREAM, SETTINGS,
    SETTINGS_INITIAL_WINDOW_SIZE, frame, ping, priority, rst_stream, settings, window_update,
};
use support::h2frames;
use support::server::{Mode, Server, Shutdown};
use support::tls;

/// The first-byte, head, body-stall, write-stall clocks and the body rate floor's
/// grace.
const CLOCK: Duration = Duration::from_millis(400);
const IDLE: Duration = Duration::from_millis(600);
const TUNNEL_IDLE: Duration = Duration::from_millis(500);
/// How long an idle HTTP/2 connection told to go away may linger. Under
/// `axum::serve` nothing sends the GOAWAY: the connection is reset after it.
const LINGER: Duration = Duration::from_millis(200);
/// The small bound: a cut later than its clock by more than this fails the row.
const LATE: Duration = Duration::from_millis(300);
/// A cut earlier than its clock by more than this was not the clock's.
const EARLY: Duration = Duration::from_millis(250);
/// A dodge repeats itself at this fraction of its clock: just inside it.
const INSIDE: f64 = 0.7;
/// Only a broken server gets here.
const GENEROUS: Duration = Duration::from_secs(8);

// ---------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2c,
    TlsH1,
    TlsH2,
}

impl Proto {
    fn tls(self) -> bool {
        matches!(self, Proto::TlsH1 | Proto::TlsH2)
    }

    fn h2(self) -> bool {
        matches!(self, Proto::H2c | Proto::TlsH2)
    }
}

/// The clock a row attacks; each row's server runs that clock short and the others
/// at their defaults (tens of seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    FirstByte,
    Head,
    Idle,
    BodyStall,
    WriteStall,
    TunnelIdle,
    BodyRate,
    SendRate,
}

impl Clock {
    /// Whether the clock fails one HTTP/2 request rather than the connection.
    fn cuts_streams(self) -> bool {
        matches!(self, Clock::BodyStall | Clock::BodyRate)
    }

    fn limit(self) -> Duration {
        match self {
            Clock::Idle => IDLE,
            Clock::TunnelIdle => TUNNEL_IDLE,
            _ => CLOCK,
        }
    }

    fn policy(self) -> Policy {
        let b = Policy::builder().linger_timeout(LINGER);
        let b = match self {
            Clock::FirstByte => b.first_byte_timeout(Some(CLOCK)),
            Clock::Head => b.header_timeout(Some(CLOCK)),
            Clock::Idle => b.idle_timeout(Some(IDLE)),
            Clock::BodyStall => b.body_stall_timeout(Some(CLOCK)),
            Clock::WriteStall => b.write_stall_timeout(Some(CLOCK)),
            Clock::TunnelIdle => b.tunnel_idle_timeout(Some(TUNNEL_IDLE)),
            Clock::SendRate => b
                .write_stall_timeout(None)
                .min_send_rate(Some(MinRate::new(64 * 1024, CLOCK))),
            Clock::BodyRate => b
                .body_stall_timeout(None)
                .min_body_rate(Some(MinRate::new(1024, CLOCK))),
        };
        b.build().unwrap()
    }
}

/// The way a row tries to hold its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dodge {
    /// Connects (and handshakes) and sends nothing.
    Silent,
    /// A request head (HTTP/2: a HEADERS frame) a byte at a time.
    TrickledHead,
    /// HTTP/1: CRLFs between requests.
    Crlf,
    /// An HTTP/2 frame that does no work, repeated.
    Frame(Noise),
    /// A chunked body whose first chunk-size line grows by extension bytes.
    ChunkExtensions,
    /// A chunked body with no data: the last chunk, then trailers a byte at a time.
    TrickledTrailers,
    /// `Expect: 100-continue` and then nothing.
    Expect100,
    /// HTTP/2: a request whose body never comes (its handler waits).
    OpenBody,
    /// HTTP/2: a header block the server refuses (no `:path`), then silence. Under
    /// `axum::serve` it runs on a listener whose layer has counted a request (on
    /// another connection): on a listener that has never seen its layer, an uncounted
    /// header block is all the crate has to tell a missing layer by, and the idle clock
    /// stands down a period at a time until the layer is seen.
    RefusedHead,
    /// TLS 1.3 KeyUpdate messages: records that carry no application data.
    KeyUpdate,
    /// A large answer never read.
    NeverRead,
    /// A large answer read a little at a time, often enough that no write waits for
    /// the write-stall clock.
    SlowRead,
}

/// HTTP/2 frames that do no work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Noise {
    Ping,
    Settings,
    WindowUpdate,
    Priority,
    RstStream,
    Unknown,
    EmptyData,
    /// DATA that carries data, on a stream whose request has ended (after a GET).
    StaleData,
}

/// The work done before the dodge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Before {
    /// None: the dodge starts at the connection.
    Nothing,
    /// `GET /`, answered.
    Get,
    /// A request whose handler reads the body, with the head sent (and, for
    /// chunked bodies, the start of the body).
    Upload,
    /// An HTTP/1 upgrade to an echo tunnel, answered with 101.
    Tunnel,
    /// `GET /big/...`, not read.
    Big,
}

#[derive(Debug, Clone, Copy)]
struct Row {
    clock: Clock,
    proto: Proto,
    before: Before,
    dodge: Dodge,
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dodge = match self.dodge {
            Dodge::Frame(noise) => format!("{noise:?}"),
            dodge => format!("{dodge:?}"),
        };
        write!(
            f,
            "{:<10} {:<6} {:<7} {dodge}",
            format!("{:?}", self.clock),
            format!("{:?}", self.proto),
            format!("{:?}", self.before),
        )
    }
}

fn rows() -> Vec<Row> {
    use Before::*;
    use Clock::*;
    use Dodge::*;
    use Proto::*;
    let row = |clock, proto, before, dodge| Row {
        clock,
        proto,
        before,
        dodge,
    };
    let noises = [
        Noise::Ping,
        Noise::Settings,
        Noise::WindowUpdate,
        Noise::Priority,
        Noise::RstStream,
        Noise::Unknown,
        Noise::EmptyData,
        Noise::StaleData,
    ];
    let mut rows = vec![
        // First byte: nothing at all (a TLS client that never says hello).
        row(FirstByte, H1, Nothing, Silent),
        row(FirstByte, TlsH1, Nothing, Silent),
        // Head: a head trickled inside the clock; a TLS client silent after its
        // handshake (the head clock runs from its first bytes).
        row(Head, H1, Nothing, TrickledHead),
        row(Head, TlsH1, Nothing, TrickledHead),
        row(Head, TlsH1, Nothing, Silent),
        row(Head, TlsH1, Nothing, KeyUpdate),
        // Idle, HTTP/1: after an answer, silence or CRLFs or empty TLS records.
        row(Idle, H1, Get, Silent),
        row(Idle, H1, Get, Crlf),
        row(Idle, TlsH1, Get, Silent),
        row(Idle, TlsH1, Get, Crlf),
        row(Idle, TlsH1, Get, KeyUpdate),
        // Idle, HTTP/2 (no head clock there: a trickled header block is idle).
        row(Idle, H2c, Nothing, Silent),
        row(Idle, H2c, Nothing, TrickledHead),
        row(Idle, H2c, Get, Silent),
        row(Idle, H2c, Get, TrickledHead),
        row(Idle, H2c, Nothing, RefusedHead),
        row(Idle, TlsH2, Nothing, Silent),
        row(Idle, TlsH2, Nothing, KeyUpdate),
        row(Idle, TlsH2, Get, Silent),
        row(Idle, TlsH2, Get, TrickledHead),
        row(Idle, TlsH2, Get, KeyUpdate),
        // Body stall.
        row(BodyStall, H1, Upload, Silent),
        row(BodyStall, H1, Upload, ChunkExtensions),
        row(BodyStall, H1, Upload, TrickledTrailers),
        row(BodyStall, H1, Upload, Expect100),
        row(BodyStall, TlsH1, Upload, ChunkExtensions),
        row(BodyStall, TlsH1, Upload, Expect100),
        row(BodyStall, TlsH1, Upload, KeyUpdate),
        row(BodyStall, H2c, Upload, OpenBody),
        row(BodyStall, TlsH2, Upload, OpenBody),
        row(BodyStall, TlsH2, Upload, KeyUpdate),
        // The body rate floor: bytes that are no body.
        row(BodyRate, H1, Upload, ChunkExtensions),
        row(BodyRate, H1, Upload, TrickledTrailers),
        row(BodyRate, H1, Upload, Expect100),
        row(BodyRate, TlsH1, Upload, ChunkExtensions),
        row(BodyRate, H2c, Upload, OpenBody),
        row(BodyRate, H2c, Upload, Frame(Noise::EmptyData)),
        row(BodyRate, TlsH2, Upload, Frame(Noise::EmptyData)),
        // Write stall: a reader that never reads.
        row(WriteStall, H1, Big, NeverRead),
        row(WriteStall, H2c, Big, NeverRead),
        row(WriteStall, TlsH1, Big, NeverRead),
        row(WriteStall, TlsH2, Big, NeverRead),
        // The response rate floor: a reader that takes a little, often.
        row(SendRate, H1, Big, SlowRead),
        row(SendRate, H2c, Big, SlowRead),
        row(SendRate, TlsH1, Big, SlowRead),
        row(SendRate, TlsH2, Big, SlowRead),
        // Tunnel idle.
        row(TunnelIdle, H1, Tunnel, Silent),
        row(TunnelIdle, TlsH1, Tunnel, Silent),
        row(TunnelIdle, TlsH1, Tunnel, KeyUpdate),
    ];
    for proto in [H2c, TlsH2] {
        for noise in noises {
            rows.push(row(Idle, proto, Get, Frame(noise)));
            // Before any request, an RST_STREAM or DATA names an idle stream: a
            // protocol error, answered with GOAWAY at once.
            if !matches!(
                noise,
                Noise::RstStream | Noise::EmptyData | Noise::StaleData
            ) {
                rows.push(row(Idle, proto, Nothing, Frame(noise)));
            }
            // During an upload, RST_STREAM cancels the request: no dodge.
            // During an upload, data is the upload's progress.
            if !matches!(noise, Noise::RstStream | Noise::StaleData) {
                rows.push(row(BodyStall, proto, Upload, Frame(noise)));
            }
        }
    }
    rows
}

/// Runs every row in both modes (TLS rows on `serve()` only), prints the table, and
/// fails with every row that was not cut in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_dodge_holds_a_clock() {
    let warnings = warnings();
    let mut runs = Vec::new();
    // `EVASION_ROWS=text` runs the rows whose line contains it.
    let only = std::env::var("EVASION_ROWS").unwrap_or_default();
    for row in rows() {
        for mode in [Mode::Serve, Mode::AxumLayer] {
            if !format!("{mode:?} {row}").contains(&only) {
                continue;
            }
            if mode == Mode::AxumLayer && row.proto.tls() {
                continue;
            }
            runs.push(async move { (mode, row, run(mode, row).await) });
        }
    }
    let mut results = futures_util::future::join_all(runs).await;
    // A cut outside its bounds on a loaded machine (a pause of the whole process
    // delays every row at once), or a row whose set-up broke there (a TLS handshake
    // slower than the 400 ms clocks), is tried again, alone, up to twice. A held
    // clock is not: eight seconds is no scheduling delay.
    let mut tries = Vec::new();
    for (mode, row, outcome) in &mut results {
        let mut tried = 1;
        while tried < 3
            && row.known_hold().is_none()
            && matches!(outcome, Outcome::Cut(..) | Outcome::Broken(..))
            && outcome.verdict(*mode, row).is_err()
        {
            *outcome = run(*mode, *row).await;
            tried += 1;
        }
        tries.push(tried);
    }
    let mut failed = Vec::new();
    println!(
        "{:<9} {:<10} {:<6} {:<7} {:<18} {:>8}  verdict",
        "mode", "clock", "proto", "before", "dodge", "cut"
    );
    for ((mode, row, outcome), tried) in results.iter().zip(tries) {
        let verdict = outcome.verdict(*mode, row);
        let shown = match (&verdict, row.known_hold()) {
            (Ok(how), _) => how.clone(),
            (Err(_), Some(known)) => format!("KNOWN HOLD: {known}"),
            (Err(why), None) => format!("FAILED: {why}"),
        };
        let retried = if tried > 1 {
            format!(" (try {tried})")
        } else {
            String::new()
        };
        println!(
            "{:<9} {row:<44} {:>8}  {shown}{retried}",
            format!("{mode:?}"),
            outcome.shown(),
        );
        if let (Err(why), None) = (verdict, row.known_hold()) {
            failed.push(format!("{mode:?} {row}: {why}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} rows held or cut wrongly:\n{}",
        failed.len(),
        failed.join("\n")
    );
    // Every server here has the layer: none may say it is missing.
    assert_eq!(
        warnings.load(Ordering::SeqCst),
        0,
        "a false 'HygieneLayer is missing'"
    );
}

// ---------------------------------------------------------------------------------
// One row
// ---------------------------------------------------------------------------------

#[derive(Debug)]
enum Outcome {
    /// Cut this long after the dodge began, by what.
    Cut(Duration, &'static str),
    /// Not cut within the generous bound.
    Held,
    /// The row could not run as written (a setup step failed).
    Broken(String),
}

impl Outcome {
    fn shown(&self) -> String {
        match self {
            Outcome::Cut(after, _) => format!("{} ms", after.as_millis()),
            Outcome::Held => "held".to_owned(),
            Outcome::Broken(_) => "broken".to_owned(),
        }
    }

    fn verdict(&self, mode: Mode, row: &Row) -> Result<String, String> {
        let limit = row.clock.limit();
        // Without a GOAWAY (axum::serve), an idle HTTP/2 connection lingers first.
        let linger = if mode == Mode::AxumLayer && row.proto.h2() && row.clock == Clock::Idle {
            LINGER
        } else {
            Duration::ZERO
        };
        match self {
            Outcome::Cut(after, how) if *after > limit + linger + LATE => {
                Err(format!("{how} only after {after:?} (clock {limit:?})"))
            }
            Outcome::Cut(after, how) if *after + EARLY < limit => Err(format!(
                "{how} after {after:?}, before the clock ({limit:?})"
            )),
            Outcome::Cut(_, how) => Ok(how.to_string()),
            Outcome::Held => Err(format!("held for {GENEROUS:?}")),
            Outcome::Broken(why) => Err(format!("broken: {why}")),
        }
    }
}

impl Row {
    /// Why the row is known to hold its clock, where the fix is another rule's: it
    /// runs and prints, and fails nothing.
    fn known_hold(&self) -> Option<&'static str> {
        (self.clock == Clock::SendRate).then_some(
            "not cut within the floor's grace; probably because the floor credits \
             bytes the server's kernel accepted, not bytes the peer acknowledged \
             (judge the peer by what the kernel saw: TCP_INFO); not investigated here",
        )
    }

    /// Whether the clock starts at the connection rather than after the work: the
    /// first-byte clock; over TLS, the head clock, whose head is the ClientHello, and
    /// the idle clock before any request.
    fn clock_starts_at_connect(&self) -> bool {
        self.clock == Clock::FirstByte
            || (self.proto.tls() && self.clock == Clock::Head)
            || (self.proto.tls() && self.clock == Clock::Idle && self.before == Before::Nothing)
    }
}

async fn run(mode: Mode, row: Row) -> Outcome {
    let server = start(mode, row.proto.tls(), row.clock.policy()).await;
    if row.dodge == Dodge::RefusedHead
        && let Err(e) = count_a_request(&server).await
    {
        return Outcome::Broken(format!("the request before: {e}"));
    }
    match attempt(&server, row).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Broken(e.to_string()),
    }
}

async fn attempt(server: &Server, row: Row) -> io::Result<Outcome> {
    let connected = Instant::now();
    // A client that never says hello: no handshake.
    let handshake = row.clock != Clock::FirstByte;
    let never_reads = matches!(row.dodge, Dodge::NeverRead | Dodge::SlowRead);
    let mut client = Client::connect(server, row.proto, handshake, never_reads).await?;
    let mut start = if row.clock_starts_at_connect() {
        connected
    } else {
        Instant::now()
    };
    if row.proto.h2() && handshake {
        let settings = if never_reads {
            huge_windows()
        } else {
            frame(SETTINGS, 0, 0, &[])
        };
        client
            .send(&[PREFACE.as_slice(), &settings].concat())
            .await?;
    }
    // The work before the dodge.
    match row.before {
        Before::Nothing => {}
        Before::Get => {
            client
                .send(&request(row.proto, "GET", "/", 1, true))
                .await?;
            client.answered().await?;
            start = Instant::now();
        }
        Before::Upload => {
            let head = upload_head(row);
            client.send(&head).await?;
            start = Instant::now();
        }
        Before::Tunnel => {
            client.send(b"GET /tunnel HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n").await?;
            client.answered().await?;
            start = Instant::now();
        }
        Before::Big => {
            client
                .send(&request(row.proto, "GET", "/big/67108864", 1, true))
                .await?;
            start = Instant::now();
            if row.dodge == Dodge::SlowRead {
                return client.slow_read(start).await;
            }
            return Ok(client.never_read(server, start).await);
        }
    }
    // The dodge.
    if row.dodge == Dodge::RefusedHead {
        client.send(&refused_head()).await?;
    }
    let period = row.clock.limit().mul_f64(INSIDE);
    let mut trickle = match row.dodge {
        // A second request after a GET: stream 3.
        Dodge::TrickledHead if row.proto.h2() => {
            let stream = if row.before == Before::Get { 3 } else { 1 };
            request(row.proto, "GET", "/", stream, true)
        }
        Dodge::TrickledHead => {
            b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: aaaaaaaaaaaaaaaa\r\n\r\n".to_vec()
        }
        Dodge::TrickledTrailers => b"0\r\nX-Trailer: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n".to_vec(),
        Dodge::ChunkExtensions => b";aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_vec(),
        _ => Vec::new(),
    }
    .into_iter();
    let trickling = matches!(
        row.dodge,
        Dodge::TrickledHead | Dodge::TrickledTrailers | Dodge::ChunkExtensions
    );
    let mut next = Instant::now() + if trickling { Duration::ZERO } else { period };
    let ends = start + GENEROUS;
    loop {
        tokio::select! {
            cut = client.cut(row.clock.cuts_streams()) => {
                let how = cut?;
                return Ok(Outcome::Cut(Instant::now() - start, how));
            }
            () = tokio::time::sleep_until(next) => {
                next += period;
                let noise = match row.dodge {
                    Dodge::Crlf => b"\r\n".to_vec(),
                    Dodge::Frame(noise) => noise.frame(),
                    Dodge::KeyUpdate => {
                        client.key_update()?;
                        if client.send(&[]).await.is_err() {
                            continue;
                        }
                        Vec::new()
                    }
                    _ if trickling => trickle.next().map(|b| vec![b]).unwrap_or_default(),
                    _ => Vec::new(),
                };
                if !noise.is_empty() && client.send(&noise).await.is_err() {
                    // The server is gone: the read side says how.
                    continue;
                }
            }
            () = tokio::time::sleep_until(ends) => return Ok(Outcome::Held),
        }
    }
}

/// The head of a request whose handler reads its body, and any body bytes that
/// precede the dodge.
fn upload_head(row: Row) -> Vec<u8> {
    if row.proto.h2() {
        return request(row.proto, "POST", "/echo", 1, false);
    }
    match row.dodge {
        Dodge::ChunkExtensions => b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5".to_vec(),
        Dodge::TrickledTrailers => b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        Dodge::Expect100 => b"POST /echo HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n".to_vec(),
        _ => b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n".to_vec(),
    }
}

// ---------------------------------------------------------------------------------
// HTTP/2 frames, written by hand
// ---------------------------------------------------------------------------------

/// SETTINGS with the largest stream window, and the largest connection window: the
/// server's writes are held back by the socket only, never by flow control.
fn huge_windows() -> Vec<u8> {
    let max = 0x7fff_ffffu32;
    let windows = settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, max)]);
    [windows, window_update(0, max - 65_535)].concat()
}

/// A request: HTTP/1 bytes, or an HTTP/2 HEADERS frame on `stream` whose header
/// block is HPACK with static-table indexes and literals (no Huffman, no dynamic
/// table), ending the stream when `end`.
fn request(proto: Proto, method: &str, path: &str, stream: u32, end: bool) -> Vec<u8> {
    if !proto.h2() {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        if method == "POST" {
            head.push_str("Content-Length: 10\r\n");
        }
        head.push_str("\r\n");
        return head.into_bytes();
    }
    let mut block = vec![
        if method == "GET" { 0x82 } else { 0x83 },
        if proto.tls() { 0x87 } else { 0x86 },
    ];
    // :path, a literal without indexing (name index 4).
    block.extend_from_slice(&[0x04, path.len() as u8]);
    block.extend_from_slice(path.as_bytes());
    // :authority, likewise (name index 1).
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    let flags = END_HEADERS | if end { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &block)
}

/// A HEADERS frame on stream 1 whose block has `:method GET` and `:scheme http` but
/// no `:path`: a malformed request, which the server resets unanswered.
fn refused_head() -> Vec<u8> {
    frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x82, 0x86])
}

impl Noise {
    /// The frame, on stream 1 where it names one: closed after a GET, open during an
    /// upload.
    fn frame(self) -> Vec<u8> {
        match self {
            Noise::Ping => ping(0x0707_0707_0707_0707),
            Noise::Settings => settings(&[]),
            Noise::WindowUpdate => window_update(0, 1),
            Noise::Priority => priority(1, 0),
            Noise::RstStream => rst_stream(1, CANCEL),
            Noise::Unknown => frame(0x20, 0, 0, &[1, 2, 3, 4]),
            Noise::EmptyData => frame(DATA, 0, 1, &[]),
            Noise::StaleData => frame(DATA, 0, 1, b"x"),
        }
    }
}

// ---------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------

/// A plaintext or TLS client socket.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

struct Client {
    io: Io,
    local: SocketAddr,
    h2: bool,
    received: Vec<u8>,
    // HTTP/2: how far `received` has been walked frame by frame.
    walked: usize,
}

impl Client {
    /// Connects, and handshakes if TLS and `handshake`. A client that will never read
    /// asks for a small receive buffer, so that the server's writes block soon.
    async fn connect(
        server: &Server,
        proto: Proto,
        handshake: bool,
        never_reads: bool,
    ) -> io::Result<Client> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        if never_reads {
            socket.set_recv_buffer_size(4096)?;
        }
        let tcp = socket.connect(server.addr).await?;
        let local = tcp.local_addr()?;
        let io = match (&server.cert, proto.tls() && handshake) {
            (Some(cert), true) => {
                let alpn: &[u8] = if proto.h2() { b"h2" } else { b"http/1.1" };
                let connector = TlsConnector::from(tls::client_config(cert.clone(), alpn));
                let name = ServerName::try_from("localhost").unwrap();
                Io::Tls(Box::new(connector.connect(name, tcp).await?))
            }
            _ => Io::Plain(tcp),
        };
        Ok(Client {
            io,
            local,
            h2: proto.h2(),
            received: Vec::new(),
            walked: 0,
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Queues a TLS 1.3 KeyUpdate, a record with no application data; the next
    /// flush sends it.
    fn key_update(&mut self) -> io::Result<()> {
        let Io::Tls(tls) = &mut self.io else {
            return Err(io::Error::other("KeyUpdate needs TLS"));
        };
        tls.get_mut()
            .1
            .refresh_traffic_keys()
            .map_err(io::Error::other)
    }

    /// Reads until the first answer is complete: a 1xx-free HTTP/1 response head with
    /// its body ("ok" or the 101's nothing), or the end of stream 1.
    async fn answered(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + GENEROUS;
        loop {
            if self.h2 {
                if self.walk_frames().stream_ended {
                    return Ok(());
                }
            } else if let Some(end) = find(&self.received, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.received[..end]);
                if head.starts_with("HTTP/1.1 101") || self.received[end + 4..].ends_with(b"ok") {
                    return Ok(());
                }
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.io.read(&mut buf))
                .await
                .map_err(|_| io::Error::other("no answer"))??;
            if n == 0 {
                return Err(io::Error::other("closed before the answer"));
            }
            self.received.extend_from_slice(&buf[..n]);
        }
    }

    /// Reads until the server cuts: the connection ends, or (HTTP/2) a GOAWAY or,
    /// with `streams`, the end of stream 1 arrives. Cancel-safe: bytes read stay in
    /// `received`.
    async fn cut(&mut self, streams: bool) -> io::Result<&'static str> {
        loop {
            if self.h2 {
                let walked = self.walk_frames();
                if walked.goaway {
                    return Ok("GOAWAY");
                }
                if streams && walked.stream_ended {
                    return Ok("stream ended");
                }
            }
            let mut buf = [0u8; 4096];
            match self.io.read(&mut buf).await {
                Ok(0) => return Ok("FIN"),
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok("RST"),
                Err(e) => return Err(e),
            }
        }
    }

    /// Walks the HTTP/2 frames received since the last walk.
    fn walk_frames(&mut self) -> Walked {
        let mut walked = Walked::default();
        while let [l0, l1, l2, kind, flags, s0, s1, s2, s3, ..] = self.received[self.walked..] {
            let len = u32::from_be_bytes([0, l0, l1, l2]) as usize;
            if self.received.len() - self.walked < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff;
            walked.goaway |= kind == GOAWAY;
            walked.stream_ended |= stream == 1
                && (kind == RST_STREAM
                    || (matches!(kind, DATA | HEADERS) && flags & END_STREAM != 0));
            self.walked += 9 + len;
        }
        walked
    }

    /// Reads 512 bytes every 0.7 × the write-stall clock, until the server cuts.
    async fn slow_read(mut self, start: Instant) -> io::Result<Outcome> {
        let mut buf = [0u8; 512];
        while start.elapsed() < GENEROUS {
            tokio::time::sleep(CLOCK.mul_f64(INSIDE)).await;
            match self.io.read(&mut buf).await {
                Ok(0) => return Ok(Outcome::Cut(start.elapsed(), "FIN")),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok(Outcome::Cut(start.elapsed(), "RST"));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Outcome::Held)
    }

    /// Never reads: waits for the server's socket to go, in the kernel.
    async fn never_read(self, server: &Server, start: Instant) -> Outcome {
        let gone =
            wait_for_socket(server.addr, self.local, GENEROUS, |state| state.is_none()).await;
        let after = Instant::now() - start;
        drop(self);
        match gone {
            Ok(_) => Outcome::Cut(after, "socket gone"),
            Err(_) => Outcome::Held,
        }
    }
}

#[derive(Default)]
struct Walked {
    goaway: bool,
    stream_ended: bool,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------

/// The fixture in `mode` (`Serve` or `AxumLayer`), over TLS if `tls` (`Serve` only).
async fn start(mode: Mode, tls: bool, policy: Policy) -> Server {
    let mut server = Server::builder(mode, policy).shutdown(Shutdown::Axum);
    if tls {
        server = server.tls();
    }
    server.start().await
}

/// One request, answered, on a connection of its own: the layer has then counted a
/// request on this listener.
async fn count_a_request(server: &Server) -> io::Result<()> {
    let mut client = Client::connect(server, Proto::H1, true, false).await?;
    client
        .send(&request(Proto::H1, "GET", "/", 1, true))
        .await?;
    client.answered().await
}

// ---------------------------------------------------------------------------------
// Warnings
// ---------------------------------------------------------------------------------

/// Counts the crate's "HygieneLayer is missing" warnings, process-wide.
fn warnings() -> Arc<AtomicUsize> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    static COUNT: std::sync::OnceLock<Arc<AtomicUsize>> = std::sync::OnceLock::new();
    COUNT
        .get_or_init(|| {
            let count = Arc::new(AtomicUsize::new(0));
            // `EVASION_LOG=filter` also prints the server's events.
            let log = std::env::var("EVASION_LOG").ok().map(|filter| {
                tracing_subscriber::fmt::layer()
                    .with_filter(tracing_subscriber::EnvFilter::new(filter))
            });
            let subscriber = tracing_subscriber::registry()
                .with(MissingLayer(count.clone()))
                .with(log);
            tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
            count
        })
        .clone()
}

struct MissingLayer(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for MissingLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() == "conn_hygiene::layer" && *meta.level() == tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
