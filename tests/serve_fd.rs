//! No file descriptor leaks and no panics in `conn_hygiene::serve` under abuse.
//!
//! Its own test binary with a single test: file descriptors are counted for the whole
//! process (`/proc/self/fd`), so no other test may open or close sockets meanwhile.
#![cfg(all(feature = "axum", feature = "testing"))]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conn_hygiene::census::{Filter, TcpState, sockets};
use conn_hygiene::testing::{End, Peer, PeerHandle, open_fds};
use conn_hygiene::{HalfClose, Policy};

#[path = "support/mod.rs"]
mod support;
use support::client::get_request;
use support::server::{Mode, Server};

const GENEROUS: Duration = Duration::from_secs(10);
const ROUNDS: usize = 5;

fn big_head(size: usize) -> Vec<u8> {
    let mut head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    head.resize(head.len() + size, b'h');
    head.extend_from_slice(b"\r\n\r\n");
    head
}

/// One of every abrupt peer the server must survive without keeping a descriptor.
async fn abuse(addr: SocketAddr) -> Vec<PeerHandle> {
    let builders = [
        Peer::garbage(addr),
        Peer::garbage(addr).request(big_head(512 * 1024)),
        Peer::garbage(addr).request(big_head(200 * 1024)),
        Peer::rst_mid_request(addr)
            .path("/echo")
            .pause(Duration::from_millis(50)),
        Peer::fin_after_request(addr).request(get_request("/stuck")),
        Peer::pipelined_then_fin(addr)
            .request([get_request("/stuck"), get_request("/")].concat())
            .repeat(1),
        Peer::fin_mid_body(addr).path("/echo"),
        Peer::stalled_body(addr).path("/echo"),
        Peer::slowloris(addr).interval(Duration::from_millis(20)),
        Peer::silent_connect(addr),
        Peer::idle_keep_alive(addr),
        Peer::never_read(addr).request(get_request("/big/8388608")),
    ];
    let mut peers = Vec::new();
    for builder in builders {
        peers.push(builder.start().await.expect("peer connects"));
    }
    peers
}

/// Panics anywhere in the process, the server's connection tasks included (tokio
/// catches those, so they would otherwise go unnoticed).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        report(info);
    }));
}

#[tokio::test]
async fn abuse_leaks_no_descriptor_and_panics_nowhere() {
    count_panics();
    let clock = Some(Duration::from_millis(300));
    let policy = Policy::builder()
        .first_byte_timeout(clock)
        .header_timeout(clock)
        .idle_timeout(clock)
        .body_stall_timeout(clock)
        .write_stall_timeout(clock)
        .half_close(HalfClose::Abort)
        .build()
        .unwrap();
    let server = Server::start(Mode::Serve, policy).await;
    let addr = server.addr;

    // Warm up (the runtime's blocking pool, lazily opened files), then count.
    let warm = Peer::idle_keep_alive(addr).start().await.unwrap();
    assert_eq!(warm.response_within(GENEROUS).await.end(), End::Reset);
    drop(warm);
    settle_server(addr).await;
    let before = open_fds();

    let mut kinds = 0;
    for round in 0..ROUNDS {
        let peers = abuse(addr).await;
        kinds = peers.len();
        for peer in &peers {
            let answer = peer.response_within(GENEROUS).await;
            assert!(
                matches!(answer.end(), End::Eof | End::Reset | End::Dropped),
                "round {round}, {:?}: {:?} {:?}",
                peer.kind(),
                answer.end(),
                answer.status()
            );
        }
        drop(peers);
        settle_server(addr).await;
    }

    let after = settled_fds(before).await;
    eprintln!(
        "descriptors: {before} before, {after} after {ROUNDS} rounds of {kinds} abrupt peers"
    );
    assert_eq!(after, before, "file descriptors leaked");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
    // The server still serves.
    let ok = Peer::fin_after_request(addr).start().await.unwrap();
    assert_eq!(ok.response_within(GENEROUS).await.status(), Some(200));
    assert!(server.is_running(), "the server is still serving");
}

/// Waits until this process holds no socket on the server's port but the listener:
/// every connection, server end and peer end, is closed. (TIME_WAIT sockets belong to
/// no process and hold no descriptor. Only this process's sockets are looked at: on a
/// shared host another process's may carry the same port number.)
async fn settle_server(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + GENEROUS;
    loop {
        let port = addr.port();
        let held: Vec<_> = tokio::task::spawn_blocking(move || {
            sockets(Filter::Pid(std::process::id()))
                .expect("read the kernel's socket tables")
                .into_iter()
                .filter(|s| s.local.port() == port || s.remote.port() == port)
                .filter(|s| s.state != TcpState::Listen)
                .collect()
        })
        .await
        .unwrap();
        if held.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sockets still held on port {port}: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The descriptor count once it stops moving (a closed socket's descriptor goes away
/// when its task is dropped, a moment after the kernel's table says so).
async fn settled_fds(expected: usize) -> usize {
    let deadline = tokio::time::Instant::now() + GENEROUS;
    loop {
        let now = open_fds();
        if now == expected || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
