//! Serving an axum app through `conn_hygiene::serve` (and through plain `axum::serve`
//! with the crate's listener and layer), attacked by the testing kit's abrupt peers on
//! real loopback sockets, and judged by the kernel's view of the server's port.
//!
//! Timeouts are short (a few hundred milliseconds) and bounds generous: the tests
//! assert on states and on "within [timeout - slack, timeout + bound]", never on exact
//! durations. The measured release times are printed (`--nocapture` shows them):
//!
//! ```text
//! cargo test --all-features --test it -- --nocapture serve:: 2>&1 | grep released
//! ```
#![cfg(all(feature = "axum", feature = "testing"))]

use std::io;
use std::time::Duration;

use axum::body::Bytes;
use conn_hygiene::census::{Filter, TcpState, sockets};
use conn_hygiene::testing::http1::{Framing, Head, Response};
use conn_hygiene::testing::{End, Peer, PeerHandle, PeerResponse, wait_for_socket};
use conn_hygiene::{HalfClose, Policy, policy::PolicyBuilder};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::app::EARLY_ANSWER;
use crate::support::client::{get_request, post_request};
use crate::support::server::{Mode, Server, Shutdown};

/// The bound on anything that should happen "soon": only a broken server reaches it.
const GENEROUS: Duration = Duration::from_secs(10);
/// How much earlier than its timeout a release may be seen: the peer's clock starts a
/// little after the server's (connect returns after the server's accept queue has the
/// connection, a write returns before the server reads it).
const SLACK: Duration = Duration::from_millis(100);
/// How much later than its timeout a release may be seen. Generous: each poll of the
/// kernel's table reads the whole host's TCP table, which takes half a second in a
/// debug build on a host with tens of thousands of sockets (other jobs on a CI machine).
const LATE: Duration = Duration::from_millis(4000);
/// The timeout under test in the phase-clock tests.
const CLOCK: Duration = Duration::from_millis(400);
/// The bound on a release that involves no timeout (an RST, a FIN under `Abort`).
const PROMPT: Duration = Duration::from_millis(1000);

// ---------------------------------------------------------------------------------
// The app (the demo server's routes) and the servers
// ---------------------------------------------------------------------------------

fn policy() -> PolicyBuilder {
    Policy::builder()
}

// ---------------------------------------------------------------------------------
// The kernel's view
// ---------------------------------------------------------------------------------

/// Waits until the kernel has no socket left for the server's end of `peer`'s
/// connection (an abandoned connection is reset, so it leaves no TIME_WAIT behind),
/// and returns how long after `since` that was.
///
/// These tests follow each connection by its two addresses rather than counting the
/// server's port: on a shared host another process's leftover sockets can carry the
/// same port number (seen here: CLOSE_WAIT sockets of a closed server elsewhere whose
/// port the kernel handed to one of these listeners).
async fn released_after(peer: &PeerHandle, since: Instant, what: &str) -> Duration {
    if let Err(state) = peer.wait_server_side(GENEROUS, |s| s.is_none()).await {
        panic!("{what}: the server's end is still {state:?} after {GENEROUS:?}");
    }
    since.elapsed()
}

/// The kernel's state of the server's end of `peer`'s connection, now.
async fn server_side_now(peer: &PeerHandle) -> Option<TcpState> {
    match peer.wait_server_side(Duration::ZERO, |_| true).await {
        Ok(state) | Err(state) => state,
    }
}

/// Asserts that within `within` no socket of this process on `port` (either end) is
/// in CLOSE_WAIT. A CLOSE_WAIT socket always belongs to the process that has not yet
/// closed it, so this misses none of ours and sees no other process's.
async fn assert_no_close_wait_here(port: u16, within: Duration) {
    let start = Instant::now();
    loop {
        let stuck: Vec<_> = tokio::task::spawn_blocking(move || {
            sockets(Filter::Pid(std::process::id()))
                .expect("read the kernel's socket tables")
                .into_iter()
                .filter(|s| s.state == TcpState::CloseWait)
                .filter(|s| s.local.port() == port || s.remote.port() == port)
                .collect()
        })
        .await
        .unwrap();
        if stuck.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < within,
            "CLOSE_WAIT sockets on port {port} after {within:?}: {stuck:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// When the server let go of a peer's connection, counted from the start of a phase.
struct Release {
    /// Until the kernel's table showed no server-side socket on the port. The table is
    /// polled, and each read of it takes a while on a host with many sockets: this is
    /// an upper bound.
    census: Duration,
    /// Until the peer saw the connection end (the server's RST or FIN arriving): the
    /// closer measure of when the server acted.
    peer: Duration,
    answer: PeerResponse,
}

async fn release_of(peer: &PeerHandle, since: Instant, what: &str) -> Release {
    let census = released_after(peer, since, what).await;
    let answer = peer.response_within(GENEROUS).await;
    let ended = answer
        .ended_at()
        .unwrap_or_else(|| panic!("{what}: the peer's connection is still open"));
    Release {
        census,
        peer: ended.saturating_duration_since(since),
        answer,
    }
}

/// Prints a measured release and checks it against its timeout: not (much) before it,
/// not long after it.
fn assert_released_on_time(what: &str, release: &Release, timeout: Duration) {
    eprintln!(
        "{what}: timeout {} ms; the peer saw {:?} after {} ms; the server's socket left \
         the kernel's table after {} ms",
        timeout.as_millis(),
        release.answer.end(),
        release.peer.as_millis(),
        release.census.as_millis(),
    );
    assert!(
        release.peer + SLACK >= timeout && release.census + SLACK >= timeout,
        "{what}: released after {:?} (census {:?}), before its timeout {timeout:?}",
        release.peer,
        release.census
    );
    assert!(
        release.census <= timeout + LATE,
        "{what}: released after {:?}, long after its timeout {timeout:?}",
        release.census
    );
}

/// Prints a measured release and checks that it was prompt: no timeout involved.
fn assert_released_promptly(what: &str, release: &Release) {
    eprintln!(
        "{what}: no timeout; the peer saw {:?} after {} ms; the server's socket left the \
         kernel's table after {} ms",
        release.answer.end(),
        release.peer.as_millis(),
        release.census.as_millis(),
    );
    assert!(release.peer <= PROMPT, "{what}: {:?}", release.peer);
    assert!(release.census <= LATE, "{what}: {:?}", release.census);
}

/// The states of the server's sockets on `port` that still belong to this process,
/// for the connection from the peer on `peer_port`. TIME_WAIT and orphaned FIN_WAIT
/// sockets belong to no process: the application has let them go.
async fn held_by_server(port: u16, peer_port: u16) -> Vec<TcpState> {
    // Off the runtime's thread: the server under test runs on it.
    tokio::task::spawn_blocking(move || {
        sockets(Filter::Pid(std::process::id()))
            .expect("read the kernel's socket tables")
            .into_iter()
            .filter(|s| s.local.port() == port && s.remote.port() == peer_port)
            .map(|s| s.state)
            .collect()
    })
    .await
    .unwrap()
}

/// Waits until the server's process holds no socket for the peer on `peer_port`.
async fn wait_let_go(port: u16, peer_port: u16, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let held = held_by_server(port, peer_port).await;
        if held.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "the server still holds the connection from :{peer_port}: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------
// 1. hyper's blind spots: the peer's FIN while nothing reads the socket
// ---------------------------------------------------------------------------------

/// Where hyper stops reading the socket, so its own FIN detection never runs.
#[derive(Debug, Clone, Copy)]
enum BlindSpot {
    /// `GET /stuck` then FIN: hyper runs with `half_close(true)`, so it does not treat
    /// the FIN as a disconnect.
    StuckGet,
    /// `POST /stuck` with 64 KiB of body then FIN: the handler has no body extractor;
    /// most of the body sits unread in the kernel's buffer.
    UnreadLargeBody,
    /// `POST /stuck` with a 5-byte body then FIN: no body extractor, and the body fits
    /// in hyper's first read (read by hyper, consumed by nobody).
    NoBodyExtractor,
    /// `GET /stuck` and `GET /` pipelined in one write, then FIN.
    Pipelined,
    /// `POST /hold` with a body the handler holds without reading, then FIN.
    HeldBody,
}

impl BlindSpot {
    fn request(self) -> Vec<u8> {
        match self {
            BlindSpot::StuckGet => get_request("/stuck"),
            BlindSpot::UnreadLargeBody => post_request("/stuck", 64 * 1024),
            BlindSpot::NoBodyExtractor => post_request("/stuck", 5),
            BlindSpot::Pipelined => [get_request("/stuck"), get_request("/")].concat(),
            BlindSpot::HeldBody => post_request("/hold", 1000),
        }
    }
}

/// Under `AllowFor(grace)`: the socket is in CLOSE_WAIT within the grace (the peer
/// may still read), and gone after it, with the handler cancelled.
async fn fin_released_after_the_grace(spot: BlindSpot) {
    let grace = Duration::from_millis(1000);
    let server = Server::start(
        Mode::Serve,
        policy()
            .half_close(HalfClose::AllowFor(grace))
            .build()
            .unwrap(),
    )
    .await;
    let peer = Peer::pipelined_then_fin(server.addr)
        .request(spot.request())
        .repeat(1)
        .start()
        .await
        .unwrap();
    let fin = peer.settled().await.expect("FIN sent");
    server.wait_stuck(1).await;

    let state = peer
        .wait_server_side(GENEROUS, |s| s != Some(TcpState::Established))
        .await;
    // Seen before the release, which comes at the grace (asserted below): within it.
    assert_eq!(state, Ok(Some(TcpState::CloseWait)), "{spot:?}");
    eprintln!(
        "FIN {spot:?}, AllowFor: CLOSE_WAIT seen {} ms after the FIN",
        fin.elapsed().as_millis()
    );

    let release = release_of(&peer, fin, &format!("{spot:?}")).await;
    assert_released_on_time(&format!("FIN {spot:?}, AllowFor"), &release, grace);
    assert_eq!(release.answer.end(), End::Reset, "{spot:?}");
    assert_no_close_wait_here(server.addr.port(), Duration::ZERO).await;
    server.wait_stuck(0).await;
}

/// Under `Abort`: gone promptly after the FIN.
async fn fin_released_at_once_with_abort(spot: BlindSpot) {
    let server = Server::start(
        Mode::Serve,
        policy().half_close(HalfClose::Abort).build().unwrap(),
    )
    .await;
    let peer = Peer::pipelined_then_fin(server.addr)
        .request(spot.request())
        .repeat(1)
        .start()
        .await
        .unwrap();
    let fin = peer.settled().await.expect("FIN sent");
    let release = release_of(&peer, fin, &format!("{spot:?}")).await;
    assert_released_promptly(&format!("FIN {spot:?}, Abort"), &release);
    assert_eq!(release.answer.end(), End::Reset, "{spot:?}");
    assert_no_close_wait_here(server.addr.port(), Duration::ZERO).await;
    server.wait_stuck(0).await;
}

#[tokio::test]
async fn fin_on_stuck_get_is_released_after_the_grace() {
    fin_released_after_the_grace(BlindSpot::StuckGet).await;
}

#[tokio::test]
async fn fin_on_stuck_get_is_released_at_once_with_abort() {
    fin_released_at_once_with_abort(BlindSpot::StuckGet).await;
}

#[tokio::test]
async fn fin_behind_an_unread_large_body_is_released_after_the_grace() {
    fin_released_after_the_grace(BlindSpot::UnreadLargeBody).await;
}

#[tokio::test]
async fn fin_behind_an_unread_large_body_is_released_at_once_with_abort() {
    fin_released_at_once_with_abort(BlindSpot::UnreadLargeBody).await;
}

#[tokio::test]
async fn fin_to_a_handler_without_body_extractor_is_released_after_the_grace() {
    fin_released_after_the_grace(BlindSpot::NoBodyExtractor).await;
}

#[tokio::test]
async fn fin_to_a_handler_without_body_extractor_is_released_at_once_with_abort() {
    fin_released_at_once_with_abort(BlindSpot::NoBodyExtractor).await;
}

#[tokio::test]
async fn fin_after_pipelined_requests_is_released_after_the_grace() {
    fin_released_after_the_grace(BlindSpot::Pipelined).await;
}

#[tokio::test]
async fn fin_after_pipelined_requests_is_released_at_once_with_abort() {
    fin_released_at_once_with_abort(BlindSpot::Pipelined).await;
}

#[tokio::test]
async fn fin_to_a_handler_holding_the_body_is_released_after_the_grace() {
    fin_released_after_the_grace(BlindSpot::HeldBody).await;
}

#[tokio::test]
async fn fin_to_a_handler_holding_the_body_is_released_at_once_with_abort() {
    fin_released_at_once_with_abort(BlindSpot::HeldBody).await;
}

/// The problem this crate exists for: plain `axum::serve` on a tokio listener leaves
/// the same socket in CLOSE_WAIT for as long as the handler is stuck.
#[tokio::test]
async fn without_hygiene_plain_axum_keeps_close_wait() {
    const HELD: Duration = Duration::from_secs(2);
    let server = Server::start(Mode::AxumTokio, Policy::default()).await;
    let peer = Peer::pipelined_then_fin(server.addr)
        .request(BlindSpot::UnreadLargeBody.request())
        .repeat(1)
        .start()
        .await
        .unwrap();
    peer.settled().await.expect("FIN sent");
    server.wait_stuck(1).await;
    let state = peer
        .wait_server_side(GENEROUS, |s| s == Some(TcpState::CloseWait))
        .await;
    assert_eq!(state, Ok(Some(TcpState::CloseWait)));
    let since = Instant::now();
    while since.elapsed() < HELD {
        let state = server_side_now(&peer).await;
        assert_eq!(
            state,
            Some(TcpState::CloseWait),
            "plain axum let go of the socket after {:?}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.state.stuck(), 1, "the handler is still running");
    eprintln!(
        "plain axum::serve: CLOSE_WAIT held for {} ms and counting",
        since.elapsed().as_millis()
    );
    // Clean up: let the handler return, then close our end.
    server.state.release();
    server.wait_stuck(0).await;
    peer.close().await;
}

// ---------------------------------------------------------------------------------
// 2. A legitimate half-closing client still gets its answer
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn half_closing_client_gets_the_whole_answer() {
    let policy = policy()
        .half_close(HalfClose::AllowFor(Duration::from_secs(2)))
        .build()
        .unwrap();
    let server = Server::start(Mode::Serve, policy).await;
    let peer = Peer::fin_after_request(server.addr)
        .request(get_request("/slow/200"))
        .start()
        .await
        .unwrap();
    let answer = peer.response_within(GENEROUS).await;
    assert_eq!(answer.status(), Some(200), "{}", answer.text());
    assert_eq!(answer.body(), b"slept", "{}", answer.text());
    assert_eq!(answer.end(), End::Eof, "a graceful close after the answer");
    assert_no_close_wait_here(server.addr.port(), GENEROUS).await;
    wait_let_go(server.addr.port(), peer.local_port(), GENEROUS).await;
}

/// The same with an upload: the body, then FIN, then the echoed answer.
#[tokio::test]
async fn half_closing_uploader_gets_the_whole_answer() {
    let policy = policy()
        .half_close(HalfClose::AllowFor(Duration::from_secs(2)))
        .build()
        .unwrap();
    let server = Server::start(Mode::Serve, policy).await;
    let peer = Peer::fin_after_request(server.addr)
        .request(post_request("/echo", 3000))
        .start()
        .await
        .unwrap();
    let answer = peer.response_within(GENEROUS).await;
    assert_eq!(answer.status(), Some(200), "{}", answer.text());
    assert_eq!(answer.body(), vec![b'p'; 3000]);
    assert_eq!(answer.end(), End::Eof);
}

/// An early answer: the handler answers a large POST at once without reading its
/// body, and hyper closes the connection with the body unread. The lingering close
/// (run when hyper drops the stream it shut down) reads the rest, so the close is not
/// an RST that destroys the answer in flight: the client gets every byte.
async fn early_answer_with_an_unread_body_is_delivered(mode: Mode) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: usize = 8 * 1024 * 1024;
    let server = Server::builder(mode, policy().build().unwrap())
        .shutdown(Shutdown::Axum)
        .start()
        .await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    let (mut reader, mut writer) = client.split();
    let upload = async {
        // Fails once the server has closed: the unread rest is the server's to drop.
        let _ = writer.write_all(&post_request("/early", BODY)).await;
    };
    let answer = async {
        let mut answer = Vec::new();
        reader.read_to_end(&mut answer).await.map(|_| answer)
    };
    let ((), answer) = tokio::time::timeout(GENEROUS, async { tokio::join!(upload, answer) })
        .await
        .expect("the answer ends");
    let answer = answer.expect("the answer is not reset");
    let head = Head::parse(&answer)
        .expect("an HTTP/1 answer")
        .expect("a whole head");
    println!(
        "early answer: {} of {EARLY_ANSWER} body bytes with {BODY} request bytes unread",
        answer.len() - head.wire_len()
    );
    let response = Response::parse_to_eof(&answer).expect("the whole answer");
    assert_eq!(response.status(), 200);
    assert_eq!(response.head().framing(), Framing::Length(EARLY_ANSWER));
    assert_eq!(
        response.wire_len(),
        answer.len(),
        "nothing after the answer"
    );
    assert!(response.body().iter().all(|&b| b == b'e'));
    drop(client);
    let state = wait_for_socket(server.addr, client_addr, GENEROUS, |s| {
        !matches!(s, Some(TcpState::CloseWait | TcpState::Established))
    })
    .await;
    assert!(state.is_ok(), "the server's end: {state:?}");
}

#[tokio::test]
async fn early_answer_with_an_unread_body_is_delivered_by_serve() {
    early_answer_with_an_unread_body_is_delivered(Mode::Serve).await;
}

#[tokio::test]
async fn early_answer_with_an_unread_body_is_delivered_by_axum_serve_with_the_layer() {
    early_answer_with_an_unread_body_is_delivered(Mode::AxumLayer).await;
}

/// A slow but steady upload is not a stalled one: each byte comes well within the
/// body-stall timeout, and the whole body takes longer than it.
#[tokio::test]
async fn slow_but_steady_body_is_not_cut() {
    let server = Server::start(
        Mode::Serve,
        policy().body_stall_timeout(Some(CLOCK)).build().unwrap(),
    )
    .await;
    let peer = Peer::slow_body(server.addr)
        .path("/echo")
        .content_length(8)
        .interval(CLOCK / 4)
        .start()
        .await
        .unwrap();
    let answer = peer.response_within(Duration::from_secs(2)).await;
    assert_eq!(answer.status(), Some(200), "{}", answer.text());
    assert_eq!(answer.body(), b"bbbbbbbb");
    assert_eq!(answer.end(), End::Open, "kept alive");
    assert_eq!(server_side_now(&peer).await, Some(TcpState::Established));
}

// ---------------------------------------------------------------------------------
// 3. Every phase clock releases its socket within its timeout
// ---------------------------------------------------------------------------------

/// The phase clocks, each with the peer that runs into it.
#[derive(Debug, Clone, Copy)]
enum Clock {
    /// A slowloris head (a byte every 50 ms).
    Header,
    /// A connection that never sends.
    FirstByte,
    /// A kept-alive connection after its answer.
    Idle,
    /// 10 bytes of a 1000-byte body to `/echo`, then nothing.
    BodyStall,
    /// A client that never reads a 50 MB answer.
    WriteStall,
}

impl Clock {
    /// The clock at `CLOCK`, the rest at their defaults.
    fn policy(self) -> Policy {
        let clock = Some(CLOCK);
        match self {
            Clock::Header => policy().header_timeout(clock),
            Clock::FirstByte => policy().first_byte_timeout(clock),
            // No grace after the idle client's FIN: the clock, not the FIN, cuts.
            Clock::Idle => policy().idle_timeout(clock).half_close(HalfClose::Abort),
            Clock::BodyStall => policy().body_stall_timeout(clock),
            Clock::WriteStall => policy().write_stall_timeout(clock),
        }
        .build()
        .unwrap()
    }

    /// The peer; its `settled()` is when the clock starts.
    fn peer(self, addr: std::net::SocketAddr) -> Peer {
        match self {
            Clock::Header => Peer::slowloris(addr).interval(Duration::from_millis(50)),
            Clock::FirstByte => Peer::silent_connect(addr),
            Clock::Idle => Peer::idle_keep_alive(addr),
            Clock::BodyStall => Peer::stalled_body(addr)
                .path("/echo")
                .content_length(1000)
                .body_sent(10),
            // The write stall begins once the answer has filled both sides' buffers, a
            // few milliseconds after the request: the bound covers that.
            Clock::WriteStall => Peer::never_read(addr).request(get_request("/big/50000000")),
        }
    }
}

/// Each phase clock cuts its peer with a reset within its timeout (judged by the
/// kernel's table and by the peer); the idle peer had its answer first.
#[tokio::test]
async fn each_phase_clock_cuts_its_peer_on_time() {
    for clock in [
        Clock::Header,
        Clock::FirstByte,
        Clock::Idle,
        Clock::BodyStall,
        Clock::WriteStall,
    ] {
        let server = Server::start(Mode::Serve, clock.policy()).await;
        let peer = clock.peer(server.addr).start().await.unwrap();
        let settled = peer.settled().await.expect("the peer reached its phase");
        let what = format!("{clock:?}");
        let release = release_of(&peer, settled, &what).await;
        assert_released_on_time(&what, &release, CLOCK);
        assert_eq!(
            release.answer.end(),
            End::Reset,
            "{what}: {}",
            release.answer.text()
        );
        if let Clock::Idle = clock {
            assert_eq!(release.answer.status(), Some(200));
        }
    }
}

// ---------------------------------------------------------------------------------
// 4. Bad input
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn garbage_gets_400_or_a_close_and_leaves_nothing_behind() {
    let server = Server::start(Mode::Serve, Policy::default()).await;
    let peer = Peer::garbage(server.addr).start().await.unwrap();
    let answer = peer.response_within(GENEROUS).await;
    eprintln!(
        "garbage: status {:?}, ended with {:?}",
        answer.status(),
        answer.end()
    );
    assert!(
        matches!(answer.status(), Some(400) | None),
        "{}",
        answer.text()
    );
    assert!(
        matches!(answer.end(), End::Eof | End::Reset),
        "{:?}",
        answer.end()
    );
    assert_no_close_wait_here(server.addr.port(), GENEROUS).await;
    wait_let_go(server.addr.port(), peer.local_port(), GENEROUS).await;
    // The server still serves.
    let ok = Peer::fin_after_request(server.addr).start().await.unwrap();
    assert_eq!(ok.response_within(GENEROUS).await.status(), Some(200));
}

/// Sends a request whose head carries one header of `size` bytes; returns the answer.
async fn big_header(size: usize) -> (Option<u16>, End) {
    // Should hyper accept the head, the idle clock ends the kept-alive connection.
    let policy = policy()
        .idle_timeout(Some(Duration::from_secs(1)))
        .half_close(HalfClose::AllowFor(Duration::from_millis(500)))
        .build()
        .unwrap();
    let server = Server::start(Mode::Serve, policy).await;
    let mut head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    head.resize(head.len() + size, b'h');
    head.extend_from_slice(b"\r\n\r\n");
    let peer = Peer::garbage(server.addr)
        .request(head)
        .start()
        .await
        .unwrap();
    let answer = peer.response_within(GENEROUS).await;
    eprintln!(
        "{} KiB header: status {:?}, ended with {:?}",
        size / 1024,
        answer.status(),
        answer.end()
    );
    assert!(
        matches!(answer.end(), End::Eof | End::Reset),
        "{:?}",
        answer.end()
    );
    assert_no_close_wait_here(server.addr.port(), GENEROUS).await;
    wait_let_go(server.addr.port(), peer.local_port(), GENEROUS).await;
    (answer.status(), answer.end())
}

/// A head within `serve`'s default limit (`MAX_HEAD_BYTES`, hyper's 408 KiB) gets a
/// normal answer (a large cookie or JWT); the connection then ends by the idle clock,
/// leaving nothing behind.
#[tokio::test]
async fn a_header_within_the_limit_is_answered_and_leaves_nothing_behind() {
    const { assert!(200 * 1024 < conn_hygiene::serve::MAX_HEAD_BYTES) };
    let (status, _) = big_header(200 * 1024).await;
    assert_eq!(status, Some(200));
}

/// A 500 KiB header is past the limit: 431 or a close, and nothing left behind.
#[tokio::test]
async fn oversized_head_gets_431_or_a_close_and_leaves_nothing_behind() {
    const { assert!(500 * 1024 > conn_hygiene::serve::MAX_HEAD_BYTES) };
    let (status, _) = big_header(500 * 1024).await;
    assert!(matches!(status, Some(431) | None), "{status:?}");
}

#[tokio::test]
async fn rst_mid_request_leaves_nothing_behind() {
    let server = Server::start(Mode::Serve, Policy::default()).await;
    let peer = Peer::rst_mid_request(server.addr)
        .path("/echo")
        .pause(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let reset = peer.settled().await.expect("reset sent");
    let release = release_of(&peer, reset, "RST mid-request").await;
    assert_released_promptly("RST mid-request", &release);
    assert_eq!(release.answer.end(), End::Dropped);
}

// ---------------------------------------------------------------------------------
// 5. Shutdown with a deadline
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_drains_busy_closes_idle_and_resets_stuck_at_the_deadline() {
    const DRAIN: Duration = Duration::from_millis(1500);
    let mut server =
        Server::start(Mode::Serve, policy().drain_timeout(DRAIN).build().unwrap()).await;
    let port = server.addr.port();

    let idle = Peer::idle_keep_alive(server.addr).start().await.unwrap();
    idle.settled().await.expect("idle peer answered");
    let stuck = Peer::idle_keep_alive(server.addr)
        .request(get_request("/stuck"))
        .start()
        .await
        .unwrap();
    server.wait_stuck(1).await;
    let busy = Peer::idle_keep_alive(server.addr)
        .request(get_request("/slow/800"))
        .start()
        .await
        .unwrap();
    // The busy handler is running.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let signalled = Instant::now();
    server.signal();

    // The port refuses new connections right away.
    let refused = loop {
        match TcpStream::connect(server.addr).await {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break signalled.elapsed(),
            // Connected, or queued in the backlog just before the listener closed (which
            // resets it): only a short while after the signal is that acceptable.
            other => {
                assert!(
                    signalled.elapsed() < Duration::from_millis(500),
                    "the port still takes connections {:?} after the signal: {other:?}",
                    signalled.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    eprintln!(
        "shutdown: port refuses connections {} ms after the signal",
        refused.as_millis()
    );

    // Idle keep-alive connections close at once, gracefully.
    let idle_answer = idle.response_within(GENEROUS).await;
    assert_eq!(idle_answer.end(), End::Eof);
    let idle_closed = idle_answer.ended_at().unwrap() - signalled;
    wait_let_go(port, idle.local_port(), GENEROUS).await;
    let idle_let_go = signalled.elapsed();
    eprintln!(
        "shutdown: idle connection closed {} ms after the signal, let go by {} ms",
        idle_closed.as_millis(),
        idle_let_go.as_millis()
    );
    assert!(idle_closed < DRAIN / 3, "idle closed after {idle_closed:?}");
    assert!(idle_let_go < DRAIN, "idle let go after {idle_let_go:?}");

    // The busy request's answer is delivered.
    let busy_answer = busy.response_within(GENEROUS).await;
    assert_eq!(busy_answer.status(), Some(200), "{}", busy_answer.text());
    assert_eq!(busy_answer.body(), b"slept");
    assert_eq!(busy_answer.end(), End::Eof);

    // The stuck one is reset at the deadline.
    let stuck_answer = stuck.response_within(GENEROUS).await;
    assert_eq!(stuck_answer.end(), End::Reset, "{}", stuck_answer.text());
    let stuck_reset = stuck_answer.ended_at().unwrap() - signalled;
    eprintln!(
        "shutdown: stuck connection reset {} ms after the signal (deadline {} ms)",
        stuck_reset.as_millis(),
        DRAIN.as_millis()
    );
    assert!(
        stuck_reset + SLACK >= DRAIN,
        "reset before the deadline: {stuck_reset:?}"
    );
    assert!(
        stuck_reset <= DRAIN + LATE,
        "reset long after the deadline: {stuck_reset:?}"
    );

    // serve returns by the deadline, and says what happened.
    let state = server.state.clone();
    let report = server.shutdown().await;
    let returned = signalled.elapsed();
    eprintln!(
        "shutdown: serve returned after {} ms: {report}",
        returned.as_millis()
    );
    assert!(returned <= DRAIN + LATE, "{returned:?}");
    assert_eq!(report.drained(), 2, "{report}");
    assert_eq!(report.forced().len(), 1, "{report}");
    assert_eq!(report.forced()[0].held_by(), "busy handler", "{report}");
    assert_eq!(
        report.forced()[0].peer().port(),
        stuck.local_port(),
        "{report}"
    );
    assert_no_close_wait_here(port, GENEROUS).await;
    state.wait_stuck(0).await;
}

// ---------------------------------------------------------------------------------
// 6. Plain axum::serve with the crate's listener and layer
// ---------------------------------------------------------------------------------

async fn axum_serve_with_layer_releases_a_stuck_fin(half_close: HalfClose) {
    let policy = policy().half_close(half_close).build().unwrap();
    let grace = half_close.grace().unwrap();
    let server = Server::builder(Mode::AxumLayer, policy)
        .shutdown(Shutdown::Axum)
        .start()
        .await;
    let peer = Peer::pipelined_then_fin(server.addr)
        .request(BlindSpot::UnreadLargeBody.request())
        .repeat(1)
        .start()
        .await
        .unwrap();
    let fin = peer.settled().await.expect("FIN sent");
    server.wait_stuck(1).await;
    let what = format!("axum::serve + HygieneLayer, FIN, {half_close:?}");
    let release = release_of(&peer, fin, &what).await;
    match half_close {
        HalfClose::Abort => assert_released_promptly(&what, &release),
        _ => assert_released_on_time(&what, &release, grace),
    }
    // The layer's 499 is for the logs: the client only sees the reset.
    assert_eq!(release.answer.end(), End::Reset);
    assert_eq!(release.answer.status(), None, "{}", release.answer.text());
    // The layer cancelled the handler.
    server.wait_stuck(0).await;
    assert_no_close_wait_here(server.addr.port(), GENEROUS).await;
}

#[tokio::test]
async fn axum_serve_with_the_layer_releases_a_stuck_fin_after_the_grace() {
    axum_serve_with_layer_releases_a_stuck_fin(HalfClose::AllowFor(Duration::from_millis(500)))
        .await;
}

#[tokio::test]
async fn axum_serve_with_the_layer_releases_a_stuck_fin_at_once_with_abort() {
    axum_serve_with_layer_releases_a_stuck_fin(HalfClose::Abort).await;
}

// ---------------------------------------------------------------------------------
// 7. HTTP/2
// ---------------------------------------------------------------------------------

/// h2c with prior knowledge: a stuck request, then the client closes the TCP
/// connection. The server side is released and the handler cancelled.
#[tokio::test]
async fn h2_stuck_request_then_client_closes_is_released() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let grace = Duration::from_millis(500);
    let server = Server::start(
        Mode::Serve,
        policy()
            .half_close(HalfClose::AllowFor(grace))
            .build()
            .unwrap(),
    )
    .await;
    // hyper's HTTP/2 client runs the connection in a task of its own, which owns the
    // socket: keep a duplicate descriptor to close the TCP connection from outside.
    let tcp = TcpStream::connect(server.addr)
        .await
        .unwrap()
        .into_std()
        .unwrap();
    let client = tcp.local_addr().unwrap();
    let control = tcp.try_clone().unwrap();
    let tcp = TcpStream::from_std(tcp).unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/stuck", server.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::spawn(sender.send_request(request));
    server.wait_stuck(1).await;

    // The client closes the TCP connection (FIN), and its h2 connection ends.
    let closed = Instant::now();
    control.shutdown(std::net::Shutdown::Both).unwrap();
    drop(control);
    let answered = tokio::time::timeout(GENEROUS, response)
        .await
        .expect("the client's request ends with its connection")
        .unwrap();
    assert!(answered.is_err(), "a stuck handler answered: {answered:?}");
    let _ = tokio::time::timeout(GENEROUS, connection).await;

    if let Err(state) = wait_for_socket(server.addr, client, GENEROUS, |s| s.is_none()).await {
        panic!("h2: the server's end is still {state:?} after {GENEROUS:?}");
    }
    let took = closed.elapsed();
    eprintln!(
        "h2 stuck request, client closed: server released its socket after {} ms",
        took.as_millis()
    );
    assert!(took <= grace + LATE, "{took:?}");
    server.wait_stuck(0).await;
    assert_no_close_wait_here(server.addr.port(), GENEROUS).await;
}
