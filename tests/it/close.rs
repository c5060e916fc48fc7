//! Closing on real loopback sockets: `shutdown()` is a half-close (FIN) after which the
//! application reads on, and the lingering close runs when a shut-down stream is
//! dropped. Judged by the bytes received and the kernel's view.
//!
//! The test of the linger's bound runs on paused time: with real sockets the paused
//! clock moves only when every task waits, so the bound is hit exactly. The others
//! run on real time with bounds far longer than they take.
#![cfg(all(feature = "client", feature = "testing"))]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use conn_hygiene::census::TcpState;
use conn_hygiene::client::{self, client_policy};
use conn_hygiene::testing::wait_for_socket;
use conn_hygiene::{
    HalfClose, HygieneStream, Listener, Policy, SocketOptions, conn::Abandon, conn::PeerGone,
    conn::Phase, stream::TcpIo,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const GENEROUS: Duration = Duration::from_secs(10);
const LINGER: Duration = Duration::from_millis(700);
const REPLY: usize = 1024 * 1024;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect()
}

fn policy() -> conn_hygiene::policy::PolicyBuilder {
    Policy::builder().linger_timeout(LINGER)
}

async fn listener(policy: Policy) -> (Listener, SocketAddr) {
    let listener = Listener::bind("127.0.0.1:0", SocketOptions::new(), policy).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A server connection from the crate's listener and its raw client.
async fn pair(policy: Policy) -> (Listener, HygieneStream<TcpIo>, TcpStream) {
    let (mut listener, addr) = listener(policy).await;
    let client = TcpStream::connect(addr).await.unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    (listener, stream, client)
}

// ---------------------------------------------------------------------------------
// shutdown() is a half-close
// ---------------------------------------------------------------------------------

/// A half-close protocol's client on `client::connect`: write the request, shut down,
/// read the whole reply. The server reads to EOF before it answers, so it answers
/// only because our FIN went out; the reply arrives in full after our shutdown.
#[tokio::test]
async fn connect_client_writes_shuts_down_and_reads_the_full_reply() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    let reply = pattern(0x5A, REPLY);
    let expected = reply.clone();
    let server = tokio::spawn(async move {
        let (mut socket, _) = server.accept().await.unwrap();
        let mut request = Vec::new();
        socket.read_to_end(&mut request).await.unwrap();
        socket.write_all(&reply).await.unwrap();
        socket.shutdown().await.unwrap();
        request
    });
    let mut stream = client::connect(addr, SocketOptions::new(), client_policy())
        .await
        .unwrap();
    let conn = stream.conn().clone();
    stream.write_all(b"the whole request").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_ne!(conn.phase(), Phase::Lingering, "shutdown does not linger");
    let mut got = Vec::new();
    tokio::time::timeout(GENEROUS, stream.read_to_end(&mut got))
        .await
        .expect("the reply ends")
        .unwrap();
    println!(
        "client read {} of {REPLY} reply bytes after its shutdown",
        got.len()
    );
    assert_eq!(got.len(), REPLY);
    assert!(got == expected, "the reply arrives intact");
    assert_eq!(server.await.unwrap(), b"the whole request");
    // Read to EOF and shut down: the drop closes at once.
    drop(stream);
    assert!(conn.is_closed());
    assert_eq!(conn.abandoned(), None);
}

/// A raw-listener server under `supervise` gets the client's FIN, then answers in
/// full; the client reads the whole answer.
#[tokio::test]
async fn supervised_server_answers_in_full_after_the_clients_fin() {
    let (mut listener, addr) =
        listener(policy().half_close(HalfClose::Allow).build().unwrap()).await;
    let reply = pattern(0x6B, REPLY);
    let expected = reply.clone();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let conn = stream.conn().clone();
        let served = conn
            .supervise(async move {
                let mut request = Vec::new();
                stream.read_to_end(&mut request).await?;
                stream.write_all(&reply).await?;
                stream.shutdown().await?;
                io::Result::Ok(request)
            })
            .await;
        (served, conn)
    });
    let mut client = TcpStream::connect(addr).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    client.write_all(b"request, then FIN").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(GENEROUS, client.read_to_end(&mut got))
        .await
        .expect("the answer ends")
        .unwrap();
    println!(
        "server answered {} of {REPLY} bytes after the client's FIN",
        got.len()
    );
    assert_eq!(got.len(), REPLY);
    assert!(got == expected, "the answer arrives intact");
    let (served, conn) = server.await.unwrap();
    assert_eq!(served.unwrap().unwrap(), b"request, then FIN");
    assert_eq!(conn.peer_gone(), Some(PeerGone::Fin));
    assert!(conn.is_closed(), "read to EOF: closed at once");
    drop(client);
    let state = wait_for_socket(addr, client_addr, GENEROUS, |s| {
        s != Some(TcpState::CloseWait)
    })
    .await;
    assert!(state.is_ok(), "server side: {state:?}");
}

/// After our shutdown the stream reads on: what the peer sends then is the
/// application's, not the linger's.
#[tokio::test]
async fn reads_after_shutdown_get_what_the_peer_sends() {
    let (_listener, mut stream, mut client) = pair(policy().build().unwrap()).await;
    stream.shutdown().await.unwrap();
    let mut eof = Vec::new();
    client.read_to_end(&mut eof).await.unwrap();
    assert!(eof.is_empty(), "the client sees our FIN at once");
    let data = pattern(0x7C, 256 * 1024);
    client.write_all(&data).await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    assert!(
        got == data,
        "{} of {} bytes after shutdown",
        got.len(),
        data.len()
    );
    assert_eq!(stream.conn().bytes().0, data.len() as u64);
}

// ---------------------------------------------------------------------------------
// The lingering close, when a shut-down stream is dropped
// ---------------------------------------------------------------------------------

/// Dropped after a shutdown with the peer's FIN unread: the connection lingers in its
/// registry (phase `Lingering`, not closed) while the peer keeps sending, then gives
/// up exactly `linger_timeout` after the drop with `LingerTimeout`, an RST.
#[tokio::test(start_paused = true)]
async fn linger_gives_up_on_a_peer_that_never_closes() {
    let (listener, mut stream, mut client) = pair(policy().build().unwrap()).await;
    let (server, client_addr) = (listener.local_addr().unwrap(), client.local_addr().unwrap());
    let conn = stream.conn().clone();
    let registry = listener.registry().clone();
    stream.shutdown().await.unwrap();
    drop(stream);
    let dropped = Instant::now();
    assert!(!conn.is_closed());
    assert_eq!(conn.phase(), Phase::Lingering);
    assert_eq!(
        registry.len(),
        1,
        "the registry still sees the lingering connection"
    );
    // The peer keeps sending: each byte is discarded, none ends the linger.
    for _ in 0..6 {
        tokio::time::sleep(LINGER / 8).await;
        client.write_all(&[9; 1024]).await.unwrap();
        assert!(!conn.is_closed());
    }
    conn.closed().await;
    assert_eq!(Instant::now() - dropped, LINGER);
    assert_eq!(conn.abandoned(), Some(Abandon::LingerTimeout));
    assert_eq!(conn.phase(), Phase::Closed);
    assert!(registry.is_empty());
    assert_eq!(conn.bytes().0, 0, "discarded bytes are not reads");
    // The RST leaves the server no state: no FIN_WAIT, no TIME_WAIT.
    let state = wait_for_socket(server, client_addr, GENEROUS, |s| s.is_none()).await;
    assert!(state.is_ok(), "the server's end after the reset: {state:?}");
}

/// The peer's FIN ends the linger, gracefully, and is recorded. Real time, with a
/// linger far longer than the test may take.
#[tokio::test]
async fn linger_ends_when_the_peer_closes() {
    let policy = policy().linger_timeout(GENEROUS * 6).build().unwrap();
    let (listener, mut stream, mut client) = pair(policy).await;
    let conn = stream.conn().clone();
    stream.shutdown().await.unwrap();
    drop(stream);
    client.write_all(b"unread").await.unwrap();
    client.shutdown().await.unwrap();
    tokio::time::timeout(GENEROUS, conn.closed())
        .await
        .expect("the peer's FIN ends the linger");
    assert_eq!(conn.abandoned(), None);
    assert_eq!(conn.peer_gone(), Some(PeerGone::Fin));
    assert!(listener.registry().is_empty());
}

/// A peer that floods while we linger is drained (its 4 MiB go through, read and
/// thrown away, not counted as reads), then its FIN ends the linger gracefully.
#[tokio::test]
async fn linger_discards_what_the_peer_sends() {
    let policy = policy().linger_timeout(GENEROUS * 6).build().unwrap();
    let (_listener, mut stream, mut client) = pair(policy).await;
    let conn = stream.conn().clone();
    stream.shutdown().await.unwrap();
    drop(stream);
    let flood = pattern(1, 4 * 1024 * 1024);
    tokio::time::timeout(GENEROUS, client.write_all(&flood))
        .await
        .expect("the linger drains the flood")
        .unwrap();
    assert!(!conn.is_closed(), "the linger still runs");
    client.shutdown().await.unwrap();
    tokio::time::timeout(GENEROUS, conn.closed())
        .await
        .expect("the peer's FIN ends the linger");
    assert_eq!(conn.abandoned(), None);
    assert_eq!(conn.bytes().0, 0, "discarded bytes are not reads");
}

/// No linger once the application read the peer's FIN, nor without a shutdown: the
/// drop closes at once.
#[tokio::test]
async fn no_linger_after_eof_or_without_shutdown() {
    let (_listener, mut stream, mut client) = pair(policy().build().unwrap()).await;
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    stream.shutdown().await.unwrap();
    let conn = stream.conn().clone();
    drop(stream);
    assert!(conn.is_closed(), "EOF read: nothing unread can follow");

    let (_listener, stream, _client) = pair(policy().build().unwrap()).await;
    let conn = stream.conn().clone();
    drop(stream);
    assert!(conn.is_closed(), "no shutdown: closed at once");
    assert_eq!(conn.abandoned(), None);
}

/// An abandoned connection and `reset_on_close` reset at once on drop: no linger, no
/// TIME_WAIT. Under `reset_on_close` the shutdown is still our FIN.
#[tokio::test]
async fn abandoned_and_reset_on_close_reset_at_once() {
    for reset_on_close in [false, true] {
        let policy = policy().reset_on_close(reset_on_close).build().unwrap();
        let (listener, mut stream, mut client) = pair(policy).await;
        let addr = listener.local_addr().unwrap();
        let client_addr = client.local_addr().unwrap();
        let conn = stream.conn().clone();
        client.write_all(b"unread").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut eof = [0u8; 1];
        assert_eq!(client.read(&mut eof).await.unwrap(), 0, "our FIN");
        if !reset_on_close {
            conn.abandon(Abandon::DrainDeadline);
        }
        drop(stream);
        assert!(
            conn.is_closed(),
            "reset_on_close={reset_on_close}: closed at once"
        );
        assert!(listener.registry().is_empty());
        let state = wait_for_socket(addr, client_addr, GENEROUS, |s| s.is_none()).await;
        assert!(state.is_ok(), "reset: no state left, got {state:?}");
        // The client's end got the RST too: the kernel dropped it, though it is open.
        let state = wait_for_socket(client_addr, addr, GENEROUS, |s| s.is_none()).await;
        assert!(state.is_ok(), "the client's end: {state:?}");
        assert!(
            client.write_all(&[0; 64]).await.is_err(),
            "the client sees the reset"
        );
    }
}

/// An abandonment (a drain deadline) during the linger ends it at once with an RST.
#[tokio::test]
async fn abandon_ends_the_linger() {
    let (listener, mut stream, _client) =
        pair(policy().linger_timeout(GENEROUS * 6).build().unwrap()).await;
    let conn = stream.conn().clone();
    stream.shutdown().await.unwrap();
    drop(stream);
    assert_eq!(conn.phase(), Phase::Lingering);
    conn.abandon(Abandon::DrainDeadline);
    tokio::time::timeout(GENEROUS, conn.closed())
        .await
        .expect("the linger ends");
    assert!(listener.registry().is_empty());
}

/// Outside a runtime nothing can linger: the drop closes at once.
#[test]
fn drop_outside_a_runtime_closes_at_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_listener, mut stream, _client) = rt.block_on(pair(policy().build().unwrap()));
    rt.block_on(stream.shutdown()).unwrap();
    let conn = stream.conn().clone();
    std::thread::spawn(move || drop(stream)).join().unwrap();
    assert!(conn.is_closed());
}
