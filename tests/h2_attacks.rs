//! Hostile HTTP/2 clients against `serve()`, over h2c and over TLS, written frame by
//! frame (`support/h2frames.rs`), with a legitimate hyper client on another connection
//! that must keep being served. Each attack is closed within a bound, memory stays
//! bounded, and the kernel shows the server's socket gone.
//!
//! Its own test binary, not a module of `tests/it`: it measures the process's memory
//! (RSS), which other tests would move.
#![cfg(all(feature = "axum", feature = "testing"))]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use conn_hygiene::Policy;
use conn_hygiene::testing::wait_for_socket;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

#[path = "support/mod.rs"]
mod support;
use h2frames::*;
use support::h2frames;
use support::server::{Mode, Shutdown};
use support::tls;

/// The bound on anything that should happen "soon": only a broken server reaches it.
const GENEROUS: Duration = Duration::from_secs(10);

/// The size of `GET /block/{BIG}`'s body, as in the zero-window row.
const BIG: usize = 64 * 1024;

/// The size of `GET /block/{DOWNLOAD}`'s body: a healthy client's multi-stream download.
const DOWNLOAD: usize = 2 << 20;

/// A byte stream to the server: TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Stream = Pin<Box<dyn Io>>;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    /// `serve()`, HTTP/2 with prior knowledge.
    H2c,
    /// `serve()` behind a TLS acceptor, ALPN `h2`.
    Tls,
    /// `axum::serve` over the crate's listener with `HygieneLayer`, h2c: hyper's own
    /// HTTP/2 settings, and no guard (it needs `serve()`'s hold on the I/O).
    AxumServe,
    /// Plain `axum::serve` on a tokio listener, h2c: no hygiene at all (for the
    /// README's comparison).
    Raw,
}

/// `GET /block/{BIG}`: [`BIG`] bytes in one piece.
fn big_path() -> String {
    format!("/block/{BIG}")
}

/// A test's hold on [`MEMORY`].
#[allow(dead_code)] // held, never read
enum Gate {
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
    Alone(tokio::sync::RwLockWriteGuard<'static, ()>),
}

/// Memory tests measure this process's RSS: they run alone, the others together.
static MEMORY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The fixture in the `transport`'s way, with this test's hold on [`MEMORY`].
struct Server {
    _gate: Gate,
    fixture: support::server::Server,
    addr: SocketAddr,
    transport: Transport,
}

impl Server {
    /// The fixture on `transport` under `policy`.
    async fn start(transport: Transport, policy: Policy) -> Server {
        Server::start_gated(Gate::Shared(MEMORY.read().await), transport, policy).await
    }

    /// As [`start`](Self::start), with no other test's server running meanwhile.
    async fn start_alone(transport: Transport, policy: Policy) -> Server {
        Server::start_gated(Gate::Alone(MEMORY.write().await), transport, policy).await
    }

    async fn start_gated(gate: Gate, transport: Transport, policy: Policy) -> Server {
        let mode = match transport {
            Transport::H2c | Transport::Tls => Mode::Serve,
            Transport::AxumServe => Mode::AxumLayer,
            Transport::Raw => Mode::AxumTokio,
        };
        let mut fixture = support::server::Server::builder(mode, policy).shutdown(Shutdown::Axum);
        if transport == Transport::Tls {
            fixture = fixture.tls();
        }
        let fixture = fixture.start().await;
        Server {
            _gate: gate,
            addr: fixture.addr,
            fixture,
            transport,
        }
    }

    /// A connection speaking HTTP/2 (h2c prior knowledge, or TLS with ALPN `h2`),
    /// and its local address.
    async fn connect(&self) -> (Stream, SocketAddr) {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let local = tcp.local_addr().unwrap();
        match self.transport {
            Transport::H2c | Transport::AxumServe | Transport::Raw => (Box::pin(tcp), local),
            Transport::Tls => {
                let cert = self.fixture.cert.clone().expect("a TLS server");
                let connector = TlsConnector::from(tls::client_config(cert, b"h2"));
                let name = ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await.expect("TLS handshake");
                (Box::pin(tls), local)
            }
        }
    }

    /// A hostile client past the preface: the server's SETTINGS read and acknowledged.
    async fn attacker(&self, settings_list: &[(u16, u32)]) -> (Stream, SocketAddr, Frame) {
        let (mut stream, local) = self.connect().await;
        send(&mut stream, &hello(settings_list)).await.unwrap();
        let settings = tokio::time::timeout(GENEROUS, read_frame(&mut stream))
            .await
            .expect("the server's SETTINGS in time")
            .expect("the server's SETTINGS");
        assert_eq!(settings.kind, SETTINGS);
        send(&mut stream, &settings_ack()).await.unwrap();
        (stream, local, settings)
    }

    /// A legitimate hyper client on its own connection: `GET /` answers "ok".
    async fn assert_legit_client_served(&self) {
        let (stream, _) = self.connect().await;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("the legitimate client's handshake");
        tokio::spawn(connection);
        for _ in 0..3 {
            let request = http::Request::get("http://localhost/")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = tokio::time::timeout(GENEROUS, sender.send_request(request))
                .await
                .expect("the legitimate client answered in time")
                .expect("the legitimate client answered");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
    }

    /// The server's socket for the client at `local` is gone within `within`.
    async fn assert_socket_gone(&self, local: SocketAddr, within: Duration) {
        let gone = wait_for_socket(self.addr, local, within, |state| state.is_none()).await;
        assert!(
            gone.is_ok(),
            "the server's socket after {within:?}: {gone:?}"
        );
    }
}

const TRANSPORTS: [Transport; 2] = [Transport::H2c, Transport::Tls];

/// The stream limit is on by default (128, nginx's; hyper's plain default is 200 and
/// `None` would be none), advertised in the server's first SETTINGS and enforced: the
/// stream past it is refused, its siblings live.
#[tokio::test]
async fn the_default_stream_limit_is_advertised_and_enforced() {
    const LIMIT: u32 = conn_hygiene::serve::HTTP2_MAX_CONCURRENT_STREAMS;
    assert_eq!(LIMIT, 128);
    for transport in TRANSPORTS {
        let server = Server::start(transport, Policy::default()).await;
        let (mut attacker, _, settings) = server.attacker(&[]).await;
        assert!(
            settings
                .settings()
                .contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, LIMIT)),
            "{transport:?}: {:?}",
            settings.settings()
        );
        let mut requests = Vec::new();
        for i in 0..=LIMIT {
            requests.extend(request(1 + 2 * i, "GET", "/stuck", true));
        }
        send(&mut attacker, &requests).await.unwrap();
        let excess = 1 + 2 * LIMIT;
        let refused = tokio::time::timeout(GENEROUS, async {
            loop {
                let frame = read_frame(&mut attacker)
                    .await
                    .expect("the server's frames");
                if frame.kind == RST_STREAM {
                    return frame;
                }
            }
        })
        .await
        .expect("a reset in time");
        assert_eq!(refused.stream, excess, "{transport:?}");
        assert_eq!(refused.error_code(), Some(REFUSED_STREAM), "{transport:?}");
        // The streams under the limit are being served.
        let held = tokio::time::timeout(GENEROUS, async {
            while server.fixture.state.stuck() < LIMIT as usize {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            held.is_ok(),
            "{transport:?}: {} held",
            server.fixture.state.stuck()
        );
        server.assert_legit_client_served().await;
    }
}

/// Sends `frames` `times` times as fast as the socket takes them, until an error (the
/// server closed); reading is left to the caller.
async fn flood<W: AsyncWrite + Unpin>(stream: &mut W, frames: &[u8], times: usize) {
    let mut burst = Vec::new();
    for _ in 0..100 {
        burst.extend_from_slice(frames);
    }
    for _ in 0..times.div_ceil(100) {
        if send(stream, &burst).await.is_err() {
            return;
        }
    }
}

/// A flood from one connection (the attacker reads what the server sends, as a real
/// one would to keep its window open): GOAWAY `ENHANCE_YOUR_CALM` within a second,
/// the server's socket gone soon after even though the attacker keeps its own open,
/// and a legitimate client served meanwhile.
async fn assert_flood_closed(transport: Transport, name: &str, frames: Vec<u8>, times: usize) {
    let server = Server::start(transport, Policy::default()).await;
    let (attacker, local, _) = server.attacker(&[]).await;
    let (mut reader, mut writer) = tokio::io::split(attacker);
    let reading = tokio::spawn(async move {
        let mut seen = Vec::new();
        let ending = ending(&mut reader, GENEROUS, &mut seen).await;
        (ending, reader)
    });
    let flooding = tokio::spawn(async move {
        flood(&mut writer, &frames, times).await;
        writer
    });
    let started = std::time::Instant::now();
    let (ending, _reader) = reading.await.unwrap();
    assert_eq!(
        ending,
        Ending::GoAway(ENHANCE_YOUR_CALM),
        "{transport:?} {name}"
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "{transport:?} {name}: {took:?}"
    );
    // The attacker keeps its socket open: the server's is gone within the error linger.
    let _writer = flooding.await.unwrap();
    server
        .assert_socket_gone(
            local,
            conn_hygiene::serve::ERROR_LINGER + Duration::from_secs(3),
        )
        .await;
    server.assert_legit_client_served().await;
}

/// On a multi-thread runtime: the guard's wakeups (the GOAWAY decided in a read, sent
/// from a write) hold whichever thread polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_with_acks_read_is_closed() {
    for transport in TRANSPORTS {
        assert_flood_closed(transport, "PING", ping(7), 100_000).await;
    }
}

#[tokio::test]
async fn settings_flood_is_closed() {
    for transport in TRANSPORTS {
        assert_flood_closed(transport, "SETTINGS", settings(&[]), 100_000).await;
    }
}

#[tokio::test]
async fn priority_and_window_update_floods_are_closed() {
    for transport in TRANSPORTS {
        assert_flood_closed(transport, "PRIORITY", priority(3, 1), 100_000).await;
        assert_flood_closed(transport, "WINDOW_UPDATE", window_update(0, 1), 100_000).await;
    }
}

/// Rapid reset of accepted streams: each stream is reset after its HEADERS were read
/// (the server has accepted it; h2's pending-accept limit does not see it).
#[tokio::test]
async fn rapid_reset_of_accepted_streams_is_closed() {
    for transport in TRANSPORTS {
        let server = Server::start(transport, Policy::default()).await;
        let outcome = rapid_reset_accepted(&server, GENEROUS).await;
        assert_eq!(
            outcome.ending,
            Ending::GoAway(ENHANCE_YOUR_CALM),
            "{transport:?}"
        );
        assert!(outcome.socket_gone, "{transport:?}");
        server.assert_legit_client_served().await;
    }
}

/// Up to 2000 streams, each reset 1 ms after its HEADERS (accepted: its handler runs),
/// while the server's answers are read for `watch`.
async fn rapid_reset_accepted(server: &Server, watch: Duration) -> Outcome {
    let (attacker, local, _) = server.attacker(&[]).await;
    let (mut reader, mut writer) = tokio::io::split(attacker);
    let started = std::time::Instant::now();
    let reading = tokio::spawn(async move {
        let mut seen = Vec::new();
        let ended = ending(&mut reader, watch, &mut seen).await;
        (ended, started.elapsed(), reader)
    });
    for i in 0..2000u32 {
        let stream = 1 + 2 * i;
        if reading.is_finished()
            || send(&mut writer, &request(stream, "GET", "/stuck", true))
                .await
                .is_err()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        if send(&mut writer, &rst_stream(stream, CANCEL))
            .await
            .is_err()
        {
            break;
        }
    }
    let (ending, after, _reader) = reading.await.unwrap();
    let gone = wait_for_socket(
        server.addr,
        local,
        after_error_goaway() + Duration::from_secs(1),
        |s| s.is_none(),
    )
    .await;
    Outcome {
        ending,
        after,
        socket_gone: gone.is_ok(),
    }
}

/// The server's socket for an attacker that keeps its own open after an error GOAWAY:
/// gone within the error linger (the lingering close would hold it 5 s).
fn after_error_goaway() -> Duration {
    conn_hygiene::serve::ERROR_LINGER + Duration::from_millis(1500)
}

/// Sends `attack` once, reads until the server's GOAWAY, and checks its code (`None`:
/// any error code), then that the server's socket is gone soon although the attacker
/// keeps its own open, and that a legitimate client is served.
async fn assert_error_goaway(transport: Transport, name: &str, attack: &[u8], code: Option<u32>) {
    let server = Server::start(transport, Policy::default()).await;
    let (attacker, local, _) = server.attacker(&[]).await;
    let (mut reader, mut writer) = tokio::io::split(attacker);
    // Written from its own task: the server may stop reading before it is all sent.
    let attack = attack.to_vec();
    let writing = tokio::spawn(async move {
        let _ = send(&mut writer, &attack).await;
        writer
    });
    let mut seen = Vec::new();
    let ended = ending(&mut reader, GENEROUS, &mut seen).await;
    match (ended, code) {
        (Ending::GoAway(got), Some(code)) => assert_eq!(got, code, "{transport:?} {name}"),
        (Ending::GoAway(got), None) => assert_ne!(got, NO_ERROR, "{transport:?} {name}"),
        (other, _) => panic!("{transport:?} {name}: {other:?}"),
    }
    let _writer = writing.await.unwrap();
    server.assert_socket_gone(local, after_error_goaway()).await;
    server.assert_legit_client_served().await;
}

/// Rapid reset (CVE-2023-44487) before the server accepts the streams: h2's own
/// GOAWAY, and the fd released at once after it.
#[tokio::test]
async fn rapid_reset_before_accept_gets_h2s_goaway_and_the_fd_goes() {
    let mut attack = Vec::new();
    for i in 0..200u32 {
        attack.extend(request(1 + 2 * i, "GET", "/", true));
        attack.extend(rst_stream(1 + 2 * i, CANCEL));
    }
    for transport in TRANSPORTS {
        assert_error_goaway(transport, "rapid reset", &attack, Some(ENHANCE_YOUR_CALM)).await;
    }
}

/// MadeYouReset (CVE-2025-8671): every stream's window overflowed, so that the server
/// resets it; h2's local reset limit sends GOAWAY.
#[tokio::test]
async fn made_you_reset_gets_goaway_and_the_fd_goes() {
    let mut attack = Vec::new();
    for i in 0..1100u32 {
        let stream = 1 + 2 * i;
        attack.extend(request(stream, "POST", "/count", false));
        attack.extend(window_update(stream, 0x7fff_ffff));
        attack.extend(window_update(stream, 0x7fff_ffff));
    }
    for transport in TRANSPORTS {
        assert_error_goaway(transport, "MadeYouReset", &attack, None).await;
    }
}

/// A header block that never ends: 200 CONTINUATION frames of 40-byte fields.
fn continuation_flood() -> Vec<u8> {
    let mut attack = frame(HEADERS, 0, 1, &request_block("GET", "/"));
    let mut junk = Vec::new();
    for i in 0..400 {
        // `x-N: v` literals without indexing, 40 bytes each.
        let name = format!("x-{i:05}");
        junk.push(0x00);
        junk.push(name.len() as u8);
        junk.extend_from_slice(name.as_bytes());
        junk.push(30);
        junk.extend_from_slice(&[b'v'; 30]);
    }
    for _ in 0..200 {
        attack.extend(frame(CONTINUATION, 0, 1, &junk));
    }
    attack
}

/// CONTINUATION flood (CVE-2024-27316): a header block that never ends.
#[tokio::test]
async fn continuation_flood_gets_goaway_and_the_fd_goes() {
    let attack = continuation_flood();
    for transport in TRANSPORTS {
        assert_error_goaway(transport, "CONTINUATION", &attack, None).await;
    }
}

/// Empty DATA frames (CVE-2019-9518): two in a row are a flood (Envoy's bound).
#[tokio::test]
async fn empty_data_frames_are_closed() {
    let mut attack = request(1, "POST", "/count", false);
    for _ in 0..1000 {
        attack.extend(frame(DATA, 0, 1, &[]));
    }
    for transport in TRANSPORTS {
        assert_error_goaway(transport, "empty DATA", &attack, Some(ENHANCE_YOUR_CALM)).await;
    }
}

/// HPACK bomb: one large header inserted into the dynamic table, then referenced a
/// thousand times (4 MB decoded from 5 KB).
#[tokio::test]
async fn hpack_bomb_is_refused() {
    let mut block = request_block("GET", "/");
    // Literal with incremental indexing, new name `x-bomb`, a 4000-byte value.
    block.extend([0x40, 6]);
    block.extend_from_slice(b"x-bomb");
    block.extend([0x7f, 0xa1, 0x1e]);
    block.extend_from_slice(&[b'a'; 4000]);
    block.extend(std::iter::repeat_n(0xbe, 1000));
    let attack = frame(HEADERS, END_HEADERS | END_STREAM, 1, &block);
    for transport in TRANSPORTS {
        let server = Server::start(transport, Policy::default()).await;
        let (mut attacker, _, _) = server.attacker(&[]).await;
        send(&mut attacker, &attack).await.unwrap();
        // h2 refuses the stream (431 or a reset) or the connection (GOAWAY); no 200.
        let refused = tokio::time::timeout(GENEROUS, async {
            loop {
                match read_frame(&mut attacker).await {
                    Ok(f) if f.kind == GOAWAY || f.kind == RST_STREAM => return true,
                    // A response HEADERS: `:status 431` is static index 14? No: literal.
                    Ok(f) if f.kind == HEADERS => return !f.payload.starts_with(&[0x88]),
                    Ok(_) => {}
                    Err(_) => return true,
                }
            }
        })
        .await
        .expect("an answer in time");
        assert!(refused, "{transport:?}: the bomb was served");
        server.assert_legit_client_served().await;
    }
}

/// This process's resident memory, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn one_second_clocks() -> Policy {
    Policy::builder()
        .write_stall_timeout(Duration::from_secs(1))
        .body_stall_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// Zero-window hoarding (CVE-2019-9517): the client's window is 0, every stream asks
/// for `GET /block/{BIG}`, on several connections. The stream limit bounds what is held
/// (`streams × (body + send buffer)`), and the stall clock closes each connection with
/// GOAWAY `ENHANCE_YOUR_CALM` at the write-stall timeout, as a blocked socket would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_readers_are_closed_and_memory_stays_bounded() {
    const CONNS: usize = 4;
    const LIMIT: usize = conn_hygiene::serve::HTTP2_MAX_CONCURRENT_STREAMS as usize;
    for transport in TRANSPORTS {
        let server = Server::start_alone(transport, one_second_clocks()).await;
        let before = rss();
        let mut attackers = Vec::new();
        for _ in 0..CONNS {
            let (mut attacker, local, _) =
                server.attacker(&[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
            let mut requests = Vec::new();
            for i in 0..LIMIT as u32 {
                requests.extend(request(1 + 2 * i, "GET", &big_path(), true));
            }
            send(&mut attacker, &requests).await.unwrap();
            attackers.push((attacker, local));
        }
        let started = std::time::Instant::now();
        let mut peak = 0;
        for (attacker, local) in &mut attackers {
            let mut seen = Vec::new();
            let ended = ending(attacker, GENEROUS, &mut seen).await;
            peak = peak.max(rss().saturating_sub(before));
            let responses = seen.iter().filter(|f| f.kind == HEADERS).count();
            assert_eq!(responses, LIMIT, "{transport:?}: every stream was answered");
            assert!(
                !seen.iter().any(|f| f.kind == DATA),
                "{transport:?}: no window, no DATA"
            );
            assert_eq!(ended, Ending::GoAway(ENHANCE_YOUR_CALM), "{transport:?}");
            server
                .assert_socket_gone(*local, after_error_goaway())
                .await;
        }
        // The clocks are 1 s and run together; the bound (a noisy 2-core CI machine)
        // only tells them from never.
        let took = started.elapsed();
        assert!(took < GENEROUS, "{transport:?}: closed after {took:?}");
        // The documented cap: streams × (body + send buffer) per connection.
        let cap = (CONNS * LIMIT * (BIG + conn_hygiene::serve::HTTP2_MAX_SEND_BUF as usize)) as u64;
        eprintln!(
            "{transport:?}: RSS +{} KiB at most (cap {} KiB)",
            peak >> 10,
            cap >> 10
        );
        assert!(peak < cap, "{transport:?}: RSS +{peak} over {cap}");
        server.assert_legit_client_served().await;
    }
}

/// Stream hoarding: bodiless POSTs on every stream the server allows, on several
/// connections. Past the limit streams are refused; the body-stall clock cuts each
/// accepted one; the live streams never exceed connections × limit.
/// A healthy hyper client with RFC 9113's 64 KiB stream windows downloads four
/// staggered 2 MiB responses, reading each at about 1.2 MB/s: some stream is at window
/// 0 nearly all the time, none for long, and none is cut by the 1 s stall clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_multi_stream_download_is_not_cut() {
    const RATE: f64 = 1.2e6;
    let server = Server::start(Transport::H2c, one_second_clocks()).await;
    let (stream, _) = server.connect().await;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(1 << 20)
        .handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let started = std::time::Instant::now();
    let mut downloads = tokio::task::JoinSet::new();
    for i in 0..4u32 {
        let mut sender = sender.clone();
        downloads.spawn(async move {
            tokio::time::sleep(Duration::from_millis(500) * i).await;
            let request = http::Request::get(format!("http://localhost/block/{DOWNLOAD}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await?;
            let mut body = response.into_body();
            let begun = tokio::time::Instant::now();
            let mut received = 0usize;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    received += data.len();
                }
                // Read no faster than the rate: h2 grants window as we read.
                let due = Duration::from_secs_f64(received as f64 / RATE);
                tokio::time::sleep_until(begun + due).await;
            }
            Ok::<_, hyper::Error>(received)
        });
    }
    while let Some(download) = downloads.join_next().await {
        let received = download.unwrap().expect("the download completed");
        assert_eq!(received, DOWNLOAD);
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "{took:?}: 3 stall timeouts at least"
    );
}

#[tokio::test]
async fn hoarded_streams_are_bounded_and_cut() {
    const CONNS: usize = 4;
    const LIMIT: u32 = conn_hygiene::serve::HTTP2_MAX_CONCURRENT_STREAMS;
    for transport in TRANSPORTS {
        let server = Server::start_alone(transport, one_second_clocks()).await;
        let before = rss();
        let mut attackers = Vec::new();
        for _ in 0..CONNS {
            let (mut attacker, _, _) = server.attacker(&[]).await;
            let mut requests = Vec::new();
            for i in 0..2 * LIMIT {
                requests.extend(request(1 + 2 * i, "POST", "/count", false));
            }
            send(&mut attacker, &requests).await.unwrap();
            attackers.push(attacker);
        }
        let mut peak = 0;
        for attacker in &mut attackers {
            // Every stream ends: refused past the limit, cut by the body clock below it.
            let mut refused = 0;
            let mut cut = 0;
            let ended = tokio::time::timeout(GENEROUS, async {
                while refused + cut < 2 * LIMIT {
                    let frame = read_frame(attacker).await.expect("the server's frames");
                    match (frame.kind, frame.error_code()) {
                        (RST_STREAM, Some(REFUSED_STREAM)) => refused += 1,
                        (RST_STREAM, _) => cut += 1,
                        (HEADERS | DATA, _) if frame.flags & END_STREAM != 0 => cut += 1,
                        _ => {}
                    }
                }
            })
            .await;
            peak = peak.max(rss().saturating_sub(before));
            assert!(ended.is_ok(), "{transport:?}: {refused} refused, {cut} cut");
            assert_eq!(refused, LIMIT, "{transport:?}");
        }
        eprintln!("{transport:?}: RSS +{} KiB at most", peak >> 10);
        assert!(peak < 32 << 20, "{transport:?}: RSS +{peak}");
        server.assert_legit_client_served().await;
    }
}

/// A PING flood whose acknowledgements are never read: the server's writes block, and
/// the write-stall clock resets the connection, in every serving mode (under
/// `serve()` the flood budget may close it first).
#[tokio::test]
async fn ping_flood_with_acks_unread_is_reset() {
    for transport in [Transport::H2c, Transport::Tls, Transport::AxumServe] {
        let server = Server::start(transport, one_second_clocks()).await;
        let (attacker, local, _) = server.attacker(&[]).await;
        let (_reader, mut writer) = tokio::io::split(attacker);
        let flooding = tokio::spawn(async move {
            flood(&mut writer, &ping(7), 10_000_000).await;
            writer
        });
        server.assert_socket_gone(local, GENEROUS).await;
        server.assert_legit_client_served().await;
        flooding.abort();
    }
}

/// How an attack ended on one server, for the README's table.
#[derive(Debug)]
struct Outcome {
    /// What the attacker saw first: GOAWAY and its code, or the connection's end.
    ending: Ending,
    /// When that came.
    after: Duration,
    /// Whether the server's socket was gone 3 s after the attack ended or stalled.
    socket_gone: bool,
}

/// Runs one attack on one connection: `attack` written once (or `repeat` times from
/// its own task) while the answers are read for `watch`.
async fn attack_once(
    server: &Server,
    settings_list: &[(u16, u32)],
    attack: Vec<u8>,
    repeat: usize,
    watch: Duration,
) -> Outcome {
    let (stream, local, _) = server.attacker(settings_list).await;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let writing = tokio::spawn(async move {
        flood(&mut writer, &attack, repeat * 100).await;
        writer
    });
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    let ending = ending(&mut reader, watch, &mut seen).await;
    let after = started.elapsed();
    let gone = wait_for_socket(server.addr, local, Duration::from_secs(3), |s| s.is_none()).await;
    writing.abort();
    Outcome {
        ending,
        after,
        socket_gone: gone.is_ok(),
    }
}

/// The README's attack table: each attack on `serve()` (h2c, 2 s clocks as in the
/// issue) and on plain `axum::serve` (`--raw`), printed; every attack is closed on
/// `serve()`. Opt-in: it takes a minute.
#[tokio::test]
#[ignore = "measurement for the README: a minute of attacks"]
async fn attack_table() {
    let clocks = || {
        Policy::builder()
            .write_stall_timeout(Duration::from_secs(2))
            .body_stall_timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let watch = Duration::from_secs(10);
    let mut rapid_before = Vec::new();
    for i in 0..200u32 {
        rapid_before.extend(request(1 + 2 * i, "GET", "/", true));
        rapid_before.extend(rst_stream(1 + 2 * i, CANCEL));
    }
    let mut made_you_reset = Vec::new();
    for i in 0..1100u32 {
        made_you_reset.extend(request(1 + 2 * i, "POST", "/count", false));
        made_you_reset.extend(window_update(1 + 2 * i, 0x7fff_ffff));
        made_you_reset.extend(window_update(1 + 2 * i, 0x7fff_ffff));
    }
    let mut empty = request(1, "POST", "/count", false);
    for _ in 0..1000 {
        empty.extend(frame(DATA, 0, 1, &[]));
    }
    let rows: Vec<(&str, Vec<u8>, usize)> = vec![
        ("CONTINUATION flood", continuation_flood(), 1),
        ("rapid reset before accept", rapid_before, 1),
        ("MadeYouReset", made_you_reset, 1),
        ("PING flood, ACKs read", ping(1), 1000),
        ("SETTINGS flood", settings(&[]), 1000),
        ("PRIORITY flood", priority(3, 1), 1000),
        ("WINDOW_UPDATE flood", window_update(0, 1), 1000),
        ("empty DATA frames", empty, 1),
    ];
    // H2_ATTACK_TABLE=h2c or raw: one mode per process, so that RSS is its own.
    let modes: &[Transport] = match std::env::var("H2_ATTACK_TABLE").as_deref() {
        Ok("h2c") => &[Transport::H2c],
        Ok("raw") => &[Transport::Raw],
        _ => &[Transport::H2c, Transport::Raw],
    };
    let modes = modes.iter().copied();
    let mut hygiene_open = Vec::new();
    for (name, attack, repeat) in rows {
        for transport in modes.clone() {
            let server = Server::start(transport, clocks()).await;
            let outcome = attack_once(&server, &[], attack.clone(), repeat, watch).await;
            println!(
                "| {name} | {transport:?} | {:?} after {:?}, server socket gone 3 s later: {} |",
                outcome.ending, outcome.after, outcome.socket_gone
            );
            if transport == Transport::H2c && outcome.ending == Ending::StillOpen {
                hygiene_open.push(name);
            }
        }
    }
    for transport in modes.clone() {
        let server = Server::start(transport, clocks()).await;
        let outcome = rapid_reset_accepted(&server, watch).await;
        println!(
            "| rapid reset of accepted streams | {transport:?} | {:?} after {:?}, server socket gone soon after: {} |",
            outcome.ending, outcome.after, outcome.socket_gone
        );
        if transport == Transport::H2c && outcome.ending == Ending::StillOpen {
            hygiene_open.push("rapid reset of accepted streams");
        }
    }
    // The memory rows: 10 zero-window connections, 20 hoarding ones; each connection
    // read by its own task, RSS sampled meanwhile.
    for transport in modes.clone() {
        let server = Server::start_alone(transport, clocks()).await;
        let zero = [(SETTINGS_INITIAL_WINDOW_SIZE, 0)];
        let outcome = memory_row(&server, 10, &zero, "GET", &big_path(), watch).await;
        println!(
            "| zero-window reader, 10 conns × 300 GET /big | {transport:?} | {} streams answered, {} refused, RSS +{} MiB at most, {} of 10 closed within {watch:?} |",
            outcome.answered,
            outcome.refused,
            outcome.peak >> 20,
            outcome.closed
        );
        if transport == Transport::H2c && outcome.closed < 10 {
            hygiene_open.push("zero-window reader");
        }
    }
    for transport in modes.clone() {
        let server = Server::start_alone(transport, clocks()).await;
        let outcome = memory_row(&server, 20, &[], "POST", "/count", Duration::from_secs(5)).await;
        println!(
            "| stream hoarding, 20 conns × 300 bodiless POSTs | {transport:?} | {} streams accepted, {} refused, {} cut within 5 s, RSS +{} MiB at most |",
            20 * 300 - outcome.refused,
            outcome.refused,
            outcome.cut,
            outcome.peak >> 20
        );
    }
    assert!(
        hygiene_open.is_empty(),
        "left open by serve(): {hygiene_open:?}"
    );
}

/// What a memory row's connections saw.
#[derive(Debug, Default)]
struct MemoryOutcome {
    answered: usize,
    refused: usize,
    cut: usize,
    closed: usize,
    peak: u64,
}

/// `conns` connections with `settings_list`, each opening 300 streams of `method
/// path` (a GET ends its stream, a POST never sends its body), read by their own
/// tasks for `watch`; RSS sampled every 50 ms.
async fn memory_row(
    server: &Server,
    conns: usize,
    settings_list: &[(u16, u32)],
    method: &str,
    path: &str,
    watch: Duration,
) -> MemoryOutcome {
    let before = rss();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampling = tokio::spawn({
        let peak = peak.clone();
        async move {
            loop {
                peak.fetch_max(rss().saturating_sub(before), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let mut readers = Vec::new();
    for _ in 0..conns {
        let (mut attacker, _, _) = server.attacker(settings_list).await;
        let mut requests = Vec::new();
        for i in 0..300u32 {
            requests.extend(request(1 + 2 * i, method, path, method == "GET"));
        }
        send(&mut attacker, &requests).await.unwrap();
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let ended = ending(&mut attacker, watch, &mut seen).await;
            (ended, seen, attacker)
        }));
    }
    let mut outcome = MemoryOutcome::default();
    let mut held = Vec::new();
    for reader in readers {
        let (ended, seen, attacker) = reader.await.unwrap();
        held.push(attacker);
        outcome.closed += usize::from(ended != Ending::StillOpen);
        for frame in &seen {
            match (frame.kind, frame.error_code()) {
                (RST_STREAM, Some(REFUSED_STREAM)) => outcome.refused += 1,
                (RST_STREAM, _) => outcome.cut += 1,
                (HEADERS, _) => outcome.answered += 1,
                _ => {}
            }
        }
    }
    sampling.abort();
    outcome.peak = peak.load(Ordering::Relaxed);
    outcome
}
