//! Hostile HTTP/2 clients against `serve()`, over h2c and over TLS, written frame by
//! frame (`support/h2frames.rs`), with a legitimate hyper client on another connection
//! that must keep being served. Each attack is closed within a bound, memory stays
//! bounded, and the kernel shows the server's socket gone.
#![cfg(all(feature = "axum", feature = "testing"))]

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use bytes::Bytes;
use conn_hygiene::serve::{Accepted, Protocol, Serve};
use conn_hygiene::testing::wait_for_socket;
use conn_hygiene::{Listener, Policy, SocketOptions};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[path = "support/h2frames.rs"]
mod h2frames;
#[path = "support/tls.rs"]
mod tls;
use h2frames::*;

/// The bound on anything that should happen "soon": only a broken server reaches it.
const GENEROUS: Duration = Duration::from_secs(10);

/// The size of `GET /big`'s body, as in the zero-window row.
const BIG: usize = 64 * 1024;

/// A byte stream to the server: TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Stream = Pin<Box<dyn Io>>;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    H2c,
    Tls,
}

/// Handlers held open by the attacks, counted while they run.
#[derive(Clone, Default)]
struct Held(Arc<AtomicUsize>);

struct Holding(Arc<AtomicUsize>);

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn hold(State(held): State<Held>) -> &'static str {
    held.0.fetch_add(1, Ordering::SeqCst);
    let _holding = Holding(held.0.clone());
    tokio::time::sleep(Duration::from_secs(60)).await;
    "held"
}

fn app(held: Held) -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/hold", get(hold))
        .route("/big", get(|| async { vec![b'x'; BIG] }))
        .route(
            "/upload",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .with_state(held)
}

type AppServe = Serve<Router, std::future::Pending<()>>;

/// A test's hold on [`MEMORY`].
#[allow(dead_code)] // held, never read
enum Gate {
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
    Alone(tokio::sync::RwLockWriteGuard<'static, ()>),
}

/// Memory tests measure this process's RSS: they run alone, the others together.
static MEMORY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

struct Server {
    _gate: Gate,
    addr: SocketAddr,
    transport: Transport,
    cert: CertificateDer<'static>,
    held: Held,
}

impl Server {
    /// `serve()` of `app()` on `transport`, with `policy` and `configure`d settings.
    async fn start(
        transport: Transport,
        policy: Policy,
        configure: impl FnOnce(AppServe) -> AppServe,
    ) -> Server {
        Server::start_gated(
            Gate::Shared(MEMORY.read().await),
            transport,
            policy,
            configure,
        )
    }

    /// As [`start`](Self::start), with no other test's server running meanwhile.
    async fn start_alone(transport: Transport, policy: Policy) -> Server {
        Server::start_gated(Gate::Alone(MEMORY.write().await), transport, policy, |s| s)
    }

    fn start_gated(
        gate: Gate,
        transport: Transport,
        policy: Policy,
        configure: impl FnOnce(AppServe) -> AppServe,
    ) -> Server {
        let listener = Listener::bind("127.0.0.1:0", SocketOptions::new(), policy).unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Held::default();
        let (config, cert) = tls::server_config();
        let serve = configure(conn_hygiene::serve(listener, app(held.clone())));
        match transport {
            Transport::H2c => {
                tokio::spawn(serve.into_future());
            }
            Transport::Tls => {
                let tls = TlsAcceptor::from(config);
                let serve = serve.with_acceptor(move |stream| {
                    let tls = tls.clone();
                    async move {
                        let stream = tls.accept(stream).await?;
                        let protocol = Protocol::from_alpn(stream.get_ref().1.alpn_protocol());
                        Ok(Accepted::new(stream).with_protocol(protocol))
                    }
                });
                tokio::spawn(serve.into_future());
            }
        }
        Server {
            _gate: gate,
            addr,
            transport,
            cert,
            held,
        }
    }

    /// A connection speaking HTTP/2 (h2c prior knowledge, or TLS with ALPN `h2`),
    /// and its local address.
    async fn connect(&self) -> (Stream, SocketAddr) {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let local = tcp.local_addr().unwrap();
        match self.transport {
            Transport::H2c => (Box::pin(tcp), local),
            Transport::Tls => {
                let connector = TlsConnector::from(tls::client_config(self.cert.clone(), b"h2"));
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
        let server = Server::start(transport, Policy::default(), |s| s).await;
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
            requests.extend(request(1 + 2 * i, "GET", "/hold", true));
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
            while server.held.0.load(Ordering::SeqCst) < LIMIT as usize {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            held.is_ok(),
            "{transport:?}: {} held",
            server.held.0.load(Ordering::SeqCst)
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
    let server = Server::start(transport, Policy::default(), |s| s).await;
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

#[tokio::test]
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
        let server = Server::start(transport, Policy::default(), |s| s).await;
        let (mut attacker, local, _) = server.attacker(&[]).await;
        let mut seen = Vec::new();
        let mut ended = Ending::StillOpen;
        for i in 0..2000u32 {
            let stream = 1 + 2 * i;
            if send(&mut attacker, &request(stream, "GET", "/hold", true))
                .await
                .is_err()
            {
                break;
            }
            // Accepted: the handler runs.
            tokio::time::sleep(Duration::from_millis(1)).await;
            if send(&mut attacker, &rst_stream(stream, CANCEL))
                .await
                .is_err()
            {
                break;
            }
            if i % 50 == 49 {
                ended = ending(&mut attacker, Duration::from_millis(1), &mut seen).await;
                if ended != Ending::StillOpen {
                    break;
                }
            }
        }
        if ended == Ending::StillOpen {
            ended = ending(&mut attacker, GENEROUS, &mut seen).await;
        }
        assert_eq!(ended, Ending::GoAway(ENHANCE_YOUR_CALM), "{transport:?}");
        server
            .assert_socket_gone(
                local,
                conn_hygiene::serve::ERROR_LINGER + Duration::from_secs(3),
            )
            .await;
        server.assert_legit_client_served().await;
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
    let server = Server::start(transport, Policy::default(), |s| s).await;
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
        attack.extend(request(stream, "POST", "/upload", false));
        attack.extend(window_update(stream, 0x7fff_ffff));
        attack.extend(window_update(stream, 0x7fff_ffff));
    }
    for transport in TRANSPORTS {
        assert_error_goaway(transport, "MadeYouReset", &attack, None).await;
    }
}

/// CONTINUATION flood (CVE-2024-27316): a header block that never ends.
#[tokio::test]
async fn continuation_flood_gets_goaway_and_the_fd_goes() {
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
    for transport in TRANSPORTS {
        assert_error_goaway(transport, "CONTINUATION", &attack, None).await;
    }
}

/// Empty DATA frames (CVE-2019-9518): two in a row are a flood (Envoy's bound).
#[tokio::test]
async fn empty_data_frames_are_closed() {
    let mut attack = request(1, "POST", "/upload", false);
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
        let server = Server::start(transport, Policy::default(), |s| s).await;
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
/// for `GET /big`, on several connections. The stream limit bounds what is held
/// (`streams × (body + send buffer)`), and the stall clock closes each connection with
/// GOAWAY `ENHANCE_YOUR_CALM` at the write-stall timeout, as a blocked socket would be.
#[tokio::test]
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
                requests.extend(request(1 + 2 * i, "GET", "/big", true));
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
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(4),
            "{transport:?}: closed after {took:?}"
        );
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
                requests.extend(request(1 + 2 * i, "POST", "/upload", false));
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
