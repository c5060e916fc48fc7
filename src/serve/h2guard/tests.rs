//! The guard on an in-memory pipe, on paused time: where its GOAWAY goes in h2's byte
//! stream, and when the stall clock fires.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::frames::frame;
use super::*;
use crate::Policy;

const GOAWAY_CALM: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0xb];

/// A guarded server end (HTTP/2 known, as by ALPN) and the client's end.
fn pipe(write_stall: Duration) -> (H2Guard<DuplexStream>, DuplexStream) {
    let policy = Policy::builder()
        .write_stall_timeout(write_stall)
        .build()
        .unwrap();
    let conn = Conn::new(1, "127.0.0.1:1".parse().unwrap(), policy);
    let (server, client) = tokio::io::duplex(1 << 20);
    let guard = H2Guard::new(
        server,
        &conn,
        Some(Protocol::Http2),
        Some(FloodBudget::default()),
    );
    (guard, client)
}

/// The client's preface, SETTINGS with `window`, and a request on stream 1.
fn hello(window: u32) -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    let mut setting = frames::SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    setting.extend_from_slice(&window.to_be_bytes());
    bytes.extend(frame(frames::SETTINGS, 0, 0, &setting));
    bytes.extend(frame(frames::HEADERS, 0x5, 1, &[0x82, 0x86, 0x84]));
    bytes
}

async fn read_some(guard: &mut H2Guard<DuplexStream>) -> io::Result<usize> {
    let mut buf = [0u8; 4096];
    guard.read(&mut buf).await
}

#[tokio::test(start_paused = true)]
async fn a_response_held_by_a_zero_window_closes_at_the_write_stall_timeout() {
    let (mut guard, mut client) = pipe(Duration::from_secs(1));
    client.write_all(&hello(0)).await.unwrap();
    read_some(&mut guard).await.unwrap();
    // The response's HEADERS go out; its DATA cannot.
    let headers = frame(frames::HEADERS, 0x4, 1, &[0x88]);
    guard.write_all(&headers).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(990), read_some(&mut guard)).await;
    assert!(early.is_err(), "nothing before the timeout: {early:?}");
    let closed = tokio::time::timeout(Duration::from_millis(20), read_some(&mut guard))
        .await
        .expect("closed at the timeout");
    assert_eq!(closed.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
    let mut received = Vec::new();
    client.read_to_end(&mut received).await.unwrap();
    assert_eq!(received, [headers, GOAWAY_CALM.to_vec()].concat());
}

#[tokio::test(start_paused = true)]
async fn a_window_update_stops_the_stall_clock() {
    let (mut guard, mut client) = pipe(Duration::from_secs(1));
    client.write_all(&hello(0)).await.unwrap();
    read_some(&mut guard).await.unwrap();
    guard
        .write_all(&frame(frames::HEADERS, 0x4, 1, &[0x88]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    client
        .write_all(&frame(frames::WINDOW_UPDATE, 0, 1, &[0, 0, 1, 0]))
        .await
        .unwrap();
    read_some(&mut guard).await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_secs(5), read_some(&mut guard)).await;
    assert!(quiet.is_err(), "the window opened: no close ({quiet:?})");
}

/// Decided while h2 is halfway through a frame: the frame is finished (h2's write is
/// cut at its end), then comes the GOAWAY, and nothing of h2's after it.
#[tokio::test(start_paused = true)]
async fn the_goaway_waits_for_the_frame_under_way() {
    let (mut guard, mut client) = pipe(Duration::from_secs(30));
    client.write_all(&hello(65_535)).await.unwrap();
    read_some(&mut guard).await.unwrap();
    let data = frame(frames::DATA, 0, 1, &[b'x'; 10]);
    guard.write_all(&data[..12]).await.unwrap();
    // A PING flood: past the budget.
    let mut flood = Vec::new();
    for _ in 0..1001 {
        flood.extend(frame(0x6, 0, 0, &[0; 8]));
    }
    client.write_all(&flood).await.unwrap();
    while guard.calm().is_none() {
        read_some(&mut guard).await.unwrap();
    }
    // Mid-frame: the guard waits for h2.
    let waiting = tokio::time::timeout(Duration::from_millis(10), read_some(&mut guard)).await;
    assert!(waiting.is_err(), "{waiting:?}");
    // h2 goes on: its write is cut at the frame's end...
    let mut rest = data[12..].to_vec();
    rest.extend(frame(0x6, 0x1, 0, &[0; 8]));
    assert_eq!(guard.write(&rest).await.unwrap(), data.len() - 12);
    // ...and its next one fails after the GOAWAY.
    let refused = guard.write(&rest[data.len() - 12..]).await;
    assert_eq!(
        refused.unwrap_err().kind(),
        io::ErrorKind::ConnectionAborted
    );
    drop(guard);
    let mut received = Vec::new();
    client.read_to_end(&mut received).await.unwrap();
    assert_eq!(received, [data, GOAWAY_CALM.to_vec()].concat());
}

#[tokio::test]
async fn http1_passes_through_untouched() {
    let conn = Conn::new(1, "127.0.0.1:1".parse().unwrap(), Policy::default());
    let (server, mut client) = tokio::io::duplex(1 << 16);
    let mut guard = H2Guard::new(server, &conn, None, Some(FloodBudget::default()));
    client.write_all(b"PRI / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = guard.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"PRI / HTTP/1.1\r\n\r\n");
    assert!(matches!(guard.state, State::Off));
}
