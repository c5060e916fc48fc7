//! The guard on an in-memory pipe, on paused time: where its GOAWAY goes in h2's byte
//! stream, and when the stall clock fires.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::frames::frame;
use super::*;
use crate::{MinRate, Policy};

const GOAWAY_CALM: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0xb];

/// A guarded server end (HTTP/2 known, as by ALPN) and the client's end.
fn pipe(write_stall: Duration) -> (H2Guard<DuplexStream>, DuplexStream) {
    let (guard, client, _) = pipe_of(write_stall);
    (guard, client)
}

/// [`pipe`], and the connection.
fn pipe_of(write_stall: Duration) -> (H2Guard<DuplexStream>, DuplexStream, Conn) {
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
    (guard, client, conn)
}

/// A `GET` opening `stream`.
fn get(stream: u32) -> Vec<u8> {
    frame(frames::HEADERS, 0x5, stream, &[0x82, 0x86, 0x84])
}

/// A WINDOW_UPDATE of `increment` on `stream` (0: the connection).
fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(frames::WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// The client sends `bytes` and the guard reads all of them.
async fn feed<W: AsyncWrite + Unpin>(
    guard: &mut H2Guard<DuplexStream>,
    client: &mut W,
    bytes: &[u8],
) -> io::Result<()> {
    client.write_all(bytes).await?;
    let mut read = 0;
    while read < bytes.len() {
        read += read_some(guard).await?;
    }
    Ok(())
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

/// A healthy client downloading four staggered 4 MiB responses at 1.2 MB/s each, with
/// RFC 9113's 64 KiB stream windows: some stream is at window 0 nearly all the time,
/// none for long. Each stream's hold is its own.
#[tokio::test(start_paused = true)]
async fn a_healthy_multi_stream_download_is_not_cut() {
    const STEP: Duration = Duration::from_millis(10);
    const READ_PER_STEP: i64 = 12_000;
    const BODY: i64 = 4 << 20;
    const FRAME: i64 = 16_384;
    const DOWNLOADS: usize = 4;
    struct Download {
        stream: u32,
        window: i64,
        left: i64,
        buffered: i64,
        unacked: i64,
    }
    let (mut guard, client) = pipe(Duration::from_secs(1));
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let drain =
        tokio::spawn(
            async move { tokio::io::copy(&mut from_server, &mut tokio::io::sink()).await },
        );
    // Stream 1, and a large connection window: the stream windows bind.
    let mut hello = hello(65_535);
    hello.extend(window_update(0, 1 << 24));
    feed(&mut guard, &mut to_server, &hello).await.unwrap();
    let mut downloads: Vec<Download> = Vec::new();
    let mut step = 0u32;
    let mut done = 0;
    while done < DOWNLOADS {
        // A new download every half second.
        if step.is_multiple_of(50) && downloads.len() < DOWNLOADS {
            let stream = 1 + 2 * downloads.len() as u32;
            if stream > 1 {
                feed(&mut guard, &mut to_server, &get(stream))
                    .await
                    .unwrap();
            }
            guard
                .write_all(&frame(frames::HEADERS, 0x4, stream, &[0x88]))
                .await
                .unwrap();
            downloads.push(Download {
                stream,
                window: 65_535,
                left: BODY,
                buffered: 0,
                unacked: 0,
            });
        }
        // The client reads, and grants what it read once it is half its window.
        let mut updates = Vec::new();
        for d in &mut downloads {
            let read = d.buffered.min(READ_PER_STEP);
            d.buffered -= read;
            d.unacked += read;
            if d.unacked >= 32_768 && d.left > 0 {
                updates.extend(window_update(d.stream, d.unacked as u32));
                d.window += d.unacked;
                d.unacked = 0;
            }
        }
        if !updates.is_empty() {
            feed(&mut guard, &mut to_server, &updates).await.unwrap();
        }
        // The server sends what the windows allow.
        for d in &mut downloads {
            while d.left > 0 && d.window > 0 {
                let n = FRAME.min(d.window).min(d.left);
                let end = u8::from(n == d.left);
                let data = frame(frames::DATA, end, d.stream, &vec![0; n as usize]);
                let at = STEP * step;
                guard
                    .write_all(&data)
                    .await
                    .unwrap_or_else(|e| panic!("cut at {at:?}: {e}"));
                d.window -= n;
                d.left -= n;
                d.buffered += n;
                done += usize::from(d.left == 0);
            }
        }
        assert!(guard.calm().is_none(), "cut at {:?}", STEP * step);
        tokio::time::sleep(STEP).await;
        step += 1;
    }
    assert!(STEP * step >= Duration::from_secs(3), "{:?}", STEP * step);
    drop(guard);
    drain.await.unwrap().unwrap();
}

/// Streams refused at the stream limit earn no flood budget: only a request the
/// server answers is work.
#[tokio::test(start_paused = true)]
async fn refused_streams_earn_no_budget() {
    let (mut guard, mut client) = pipe(Duration::from_secs(30));
    feed(&mut guard, &mut client, &hello(65_535)).await.unwrap();
    // 128 streams answered and held open: the stream limit.
    let mut opening = Vec::new();
    for stream in (3..=255).step_by(2) {
        opening.extend(get(stream));
    }
    feed(&mut guard, &mut client, &opening).await.unwrap();
    for stream in (1..=255).step_by(2) {
        guard
            .write_all(&frame(frames::HEADERS, 0x4, stream, &[0x88]))
            .await
            .unwrap();
    }
    let mut pings = Vec::new();
    for _ in 0..99 {
        pings.extend(frame(0x6, 0, 0, &[0; 8]));
    }
    for round in 0..300 {
        let stream = 257 + 2 * round;
        let attack = [get(stream), pings.clone()].concat();
        // The guard decides as it reads, and closes at its next read or write.
        let fed = feed(&mut guard, &mut client, &attack).await;
        if fed.is_err() || guard.calm().is_some() {
            assert!(round <= 11, "closed only after {round} rounds");
            assert_eq!(guard.calm().unwrap().why, Abandon::Http2Flood);
            return;
        }
        // h2 refuses the stream: the limit is reached.
        let refused = frame(frames::RST_STREAM, 0, stream, &7u32.to_be_bytes());
        guard.write_all(&refused).await.unwrap();
    }
    panic!("{} PINGs and the connection is still open", 300 * 99);
}

/// WINDOW_UPDATEs of one byte, each before the stall timeout: the DATA they let
/// through falls below the response floor (240 B/s after 5 s), which cuts.
#[tokio::test(start_paused = true)]
async fn trickled_window_updates_are_cut_by_the_floor() {
    let (mut guard, mut client) = pipe(Duration::from_secs(1));
    let streams = [1, 3, 5, 7];
    feed(
        &mut guard,
        &mut client,
        &[hello(0), get(3), get(5), get(7)].concat(),
    )
    .await
    .unwrap();
    for stream in streams {
        guard
            .write_all(&frame(frames::HEADERS, 0x4, stream, &[0x88]))
            .await
            .unwrap();
    }
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let mut trickle = window_update(0, 1);
        for stream in streams {
            trickle.extend(window_update(stream, 1));
        }
        if let Err(closed) = feed(&mut guard, &mut client, &trickle).await {
            assert_eq!(closed.kind(), io::ErrorKind::ConnectionAborted);
            break;
        }
        for stream in streams {
            guard
                .write_all(&frame(frames::DATA, 0, stream, b"x"))
                .await
                .unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(8), "still open");
    }
    let took = start.elapsed();
    assert!(
        took >= MinRate::KESTREL.grace(),
        "cut within the grace: {took:?}"
    );
    assert_eq!(guard.calm().unwrap().why, Abandon::WriteStallTimeout);
}

/// One request's override of the write stall (a slow export route) does not relax
/// the clock of the responses the client holds: the guard keeps the policy's.
#[tokio::test(start_paused = true)]
async fn a_requests_override_does_not_relax_the_hold() {
    let (mut guard, mut client, conn) = pipe_of(Duration::from_secs(1));
    let _request = conn.begin_request();
    conn.set_request_limits(
        crate::limits::RequestLimits::builder()
            .write_stall_timeout(Some(Duration::from_secs(60)))
            .build()
            .unwrap(),
    );
    feed(&mut guard, &mut client, &hello(0)).await.unwrap();
    guard
        .write_all(&frame(frames::HEADERS, 0x4, 1, &[0x88]))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(2), read_some(&mut guard))
        .await
        .expect("closed at the policy's stall timeout");
    assert_eq!(closed.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
}

/// A WINDOW_UPDATE shorter than its 4 bytes (h2's to refuse) opens nothing: the
/// guard does not read the increment from the bytes of an earlier frame.
#[tokio::test(start_paused = true)]
async fn a_short_window_update_opens_nothing() {
    let (mut guard, mut client) = pipe(Duration::from_secs(1));
    feed(&mut guard, &mut client, &hello(0)).await.unwrap();
    guard
        .write_all(&frame(frames::HEADERS, 0x4, 1, &[0x88]))
        .await
        .unwrap();
    let mut updates = window_update(3, 0xffff);
    updates.extend(frame(frames::WINDOW_UPDATE, 0, 1, &[0, 0]));
    feed(&mut guard, &mut client, &updates).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(2), read_some(&mut guard))
        .await
        .expect("still held: closed at the stall timeout");
    assert_eq!(closed.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
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

/// After the server's GOAWAY, h2 ignores the streams a client opens above its
/// last-stream id (no reset, no answer): the guard does not keep them either, or a
/// client could grow its store for as long as a drain lasts.
#[tokio::test(start_paused = true)]
async fn streams_opened_after_our_goaway_are_not_kept() {
    let conn = Conn::new(1, "127.0.0.1:1".parse().unwrap(), Policy::default());
    let (server, mut client) = tokio::io::duplex(1 << 20);
    let mut guard = H2Guard::new(server, &conn, Some(Protocol::Http2), None);
    let open = |guard: &H2Guard<DuplexStream>| match &guard.state {
        State::Watching(watch) => watch.windows.open(),
        _ => panic!("the guard watches HTTP/2"),
    };
    feed(&mut guard, &mut client, &hello(65_535)).await.unwrap();
    assert_eq!(open(&guard), 1);
    // hyper's graceful shutdown: GOAWAY(NO_ERROR) naming stream 1 as the last.
    let goaway = frame(frames::GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]);
    guard.write_all(&goaway).await.unwrap();
    let ignored: Vec<u8> = (1..=1000).flat_map(|i| get(1 + 2 * i)).collect();
    feed(&mut guard, &mut client, &ignored).await.unwrap();
    assert_eq!(open(&guard), 1, "only stream 1 is h2's");
}
