//! Rate floors, connection recycling, `Keep-Alive: timeout=N`, the per-client cap and
//! per-request overrides, on real loopback sockets with real clients, under `serve()`
//! and `axum::serve` + `HygieneLayer` (the matrix of `tests/it/paths.rs`).
//!
//! Floors and clocks are a few hundred milliseconds, bounds generous; the tests assert
//! on what the client receives, on why the crate abandoned a connection, and on the
//! kernel's socket table.
#![cfg(all(feature = "axum", feature = "testing"))]

use std::io;
use std::num::NonZeroUsize;
use std::time::Duration;

use axum::body::Bytes;
use conn_hygiene::testing::http1::Response;
use conn_hygiene::testing::wait_for_socket;
use conn_hygiene::{
    Conn, Listener, MinRate, Policy, SocketOptions, conn::Abandon, policy::PolicyBuilder,
    registry::Registry,
};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// The bound on anything that should happen "soon": only a broken server reaches it.
use crate::support::client;
use crate::support::refusal;
use crate::support::server::{Mode, Server, ServerBuilder};
use refusal::assert_reset_without_an_answer;

const GENEROUS: Duration = Duration::from_secs(10);
/// The floor under test: 1000 B/s after 500 ms of waiting.
const FLOOR: MinRate = MinRate::new(1000, Duration::from_millis(500));

/// The modes with request boundaries, which rate floors need.
const MODES: [Mode; 2] = [Mode::Serve, Mode::AxumLayer];

/// A server with a small send buffer, so that what the kernel holds does not hide a
/// slow reader.
fn server(mode: Mode, policy: Policy) -> ServerBuilder {
    Server::builder(mode, policy).options(SocketOptions::new().send_buffer_size(16 * 1024))
}

fn floors() -> PolicyBuilder {
    Policy::builder()
        .body_stall_timeout(Some(Duration::from_secs(5)))
        .min_body_rate(Some(FLOOR))
        .min_send_rate(Some(FLOOR))
}

/// Waits for the server to abandon `conn`, and says why.
async fn abandoned(conn: &Conn, what: &str) -> Abandon {
    tokio::time::timeout(GENEROUS, conn.wait_abandoned())
        .await
        .unwrap_or_else(|_| panic!("{what}: never abandoned"))
}

/// Uploads `total` bytes to `path`, `chunk` bytes every `every`, over a raw socket; then
/// reads the answer. Returns the body of a 200 answer (or the error that ended the
/// upload) and the server's handle of the connection.
async fn trickle(
    server: &Server,
    path: &str,
    total: usize,
    chunk: usize,
    every: Duration,
) -> (Result<Vec<u8>, String>, Conn) {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {total}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let conn = server.conn_of(tcp.local_addr().unwrap()).await;
    let mut sent = 0;
    while sent < total {
        tokio::time::sleep(every).await;
        let n = chunk.min(total - sent);
        if let Err(error) = tcp.write_all(&vec![b'a'; n]).await {
            return (Err(format!("write after {sent} bytes: {error}")), conn);
        }
        sent += n;
        if conn.abandoned().is_some() {
            return (Err(format!("abandoned after {sent} bytes")), conn);
        }
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(GENEROUS, tcp.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let body = match read {
        Ok(Ok(_)) => match Response::parse_to_eof(&answer) {
            Ok(response) if response.status() == 200 => Ok(response.body().to_vec()),
            Ok(_) => Err(format!("answer {text:?}")),
            Err(error) => Err(format!("{error}; got {text:?}")),
        },
        Ok(Err(error)) => Err(format!("read: {error}; got {text:?}")),
        Err(_) => Err(format!("no end of answer; got {text:?}")),
    };
    (body, conn)
}

// ---------------------------------------------------------------------------------
// The request-body floor
// ---------------------------------------------------------------------------------

/// An upload at 100 B/s, above the body-stall clock's reach (a chunk every 100 ms),
/// is cut by the 1000 B/s floor soon after its grace.
#[tokio::test]
async fn trickled_upload_is_cut_by_the_body_floor() {
    for mode in MODES {
        let server = server(mode, floors().build().unwrap()).start().await;
        let started = Instant::now();
        let (answer, conn) =
            trickle(&server, "/echo", 10_000, 10, Duration::from_millis(100)).await;
        assert!(answer.is_err(), "{mode:?}: {answer:?}");
        assert_eq!(
            abandoned(&conn, "trickle").await,
            Abandon::MinBodyRate,
            "{mode:?}"
        );
        // The listener counts the cut, for the shutdown report.
        assert_eq!(
            server.registry.cuts().get(&Abandon::MinBodyRate),
            Some(&1),
            "{mode:?}"
        );
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(4),
            "{mode:?}: cut after {took:?}"
        );
        eprintln!("{mode:?}: trickled upload cut after {took:?}: {answer:?}");
    }
}

/// An upload steadily 3 × above the floor, for 4 × its grace, is never cut.
#[tokio::test]
async fn steady_upload_above_the_floor_completes() {
    for mode in MODES {
        let server = server(mode, floors().build().unwrap()).start().await;
        let (answer, conn) = trickle(&server, "/echo", 6000, 300, Duration::from_millis(100)).await;
        let answer = answer.unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(answer, vec![b'a'; 6000], "{mode:?}");
        assert_eq!(conn.abandoned(), None, "{mode:?}");
    }
}

/// The same trickle on two routes: the one with `RequestLimitsLayer` (10 B/s after
/// 5 s) takes it; the other route's floor (the policy's) cuts it.
#[tokio::test]
async fn a_route_override_lets_a_slow_upload_through() {
    for mode in MODES {
        let server = server(mode, floors().build().unwrap()).start().await;
        let (upload, upload_conn) =
            trickle(&server, "/upload", 200, 10, Duration::from_millis(100)).await;
        let upload = upload.unwrap_or_else(|e| panic!("{mode:?}: /upload: {e}"));
        assert_eq!(upload, vec![b'a'; 200], "{mode:?}");
        assert_eq!(upload_conn.abandoned(), None, "{mode:?}");
        let (echo, echo_conn) =
            trickle(&server, "/echo", 200, 10, Duration::from_millis(100)).await;
        assert!(echo.is_err(), "{mode:?}: /echo took the trickle: {echo:?}");
        assert_eq!(
            abandoned(&echo_conn, "/echo").await,
            Abandon::MinBodyRate,
            "{mode:?}"
        );
    }
}

// ---------------------------------------------------------------------------------
// The response floor
// ---------------------------------------------------------------------------------

/// A client that reads 1 kB every 100 ms (10 kB/s) through a small window, below a
/// 100 kB/s floor, is cut by the floor: the write-stall clock is off, and the reader
/// never stops reading.
#[tokio::test]
async fn slow_reader_is_cut_by_the_send_floor() {
    for mode in MODES {
        let policy = floors()
            .write_stall_timeout(None)
            .min_send_rate(Some(MinRate::new(100_000, Duration::from_millis(500))))
            .build()
            .unwrap();
        let server = server(mode, policy).start().await;
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut tcp = socket.connect(server.addr).await.unwrap();
        tcp.write_all(b"GET /big/50000000 HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let conn = server.conn_of(tcp.local_addr().unwrap()).await;
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut total = 0usize;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        });
        assert_eq!(
            abandoned(&conn, "slow reader").await,
            Abandon::MinSendRate,
            "{mode:?}"
        );
        assert_eq!(
            server.registry.cuts().get(&Abandon::MinSendRate),
            Some(&1),
            "{mode:?}"
        );
        let read = tokio::time::timeout(GENEROUS, reader)
            .await
            .unwrap()
            .unwrap();
        assert!(read < 50_000_000, "{mode:?}: read {read}");
    }
}

/// Server-sent events 400 ms apart under a floor with a 100 ms grace complete: no
/// write ever waits on the peer, so no time is measured.
#[tokio::test]
async fn rare_server_sent_events_are_never_cut_by_the_floor() {
    for mode in MODES {
        let policy = floors()
            .min_send_rate(Some(MinRate::new(1000, Duration::from_millis(100))))
            .build()
            .unwrap();
        let server = server(mode, policy).start().await;
        let (status, _, body) = client::get(server.addr, "/sse/4/400").await.unwrap();
        assert_eq!(status, 200, "{mode:?}");
        assert_eq!(
            body, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n",
            "{mode:?}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Recycling and Keep-Alive
// ---------------------------------------------------------------------------------

/// `max_requests(3)` on HTTP/1: answers 1 and 2 advertise `Keep-Alive: timeout=30`,
/// the 3rd carries `Connection: close`, and the server closes the connection after
/// it. No request is lost.
#[tokio::test]
async fn http1_connection_is_recycled_after_max_requests() {
    for mode in MODES {
        let policy = Policy::builder()
            .idle_timeout(Some(Duration::from_secs(30)))
            .max_requests(Some(3))
            .build()
            .unwrap();
        let server = server(mode, policy).start().await;
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        let connection = tokio::spawn(connection);
        for i in 1..=3 {
            let (status, headers, body) = client::send_get(&mut sender, "/").await.unwrap();
            assert_eq!((status, body.as_str()), (200, "ok"), "{mode:?} #{i}");
            let keep_alive = headers.get("keep-alive").map(|v| v.to_str().unwrap());
            let close = headers.get("connection").map(|v| v.to_str().unwrap());
            if i < 3 {
                assert_eq!(keep_alive, Some("timeout=30"), "{mode:?} #{i}");
                assert_eq!(close, None, "{mode:?} #{i}");
            } else {
                assert_eq!(close, Some("close"), "{mode:?} #{i}");
                assert_eq!(keep_alive, None, "{mode:?} #{i}");
            }
        }
        let ended = tokio::time::timeout(GENEROUS, connection).await;
        assert!(ended.is_ok(), "{mode:?}: the connection stayed open");
    }
}

/// `max_requests(3)` on HTTP/2: three streams answer, then under `serve()` GOAWAY
/// ends the connection cleanly. `axum::serve` offers no hook to send GOAWAY, so with
/// the layer the connection is reset at the end of its grace (500 ms here).
#[tokio::test]
async fn http2_connection_is_recycled_after_max_requests() {
    for mode in MODES {
        let policy = Policy::builder()
            .max_requests(Some(3))
            .recycle_grace(Duration::from_millis(500))
            .build()
            .unwrap();
        let server = server(mode, policy).start().await;
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let client = tcp.local_addr().unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        let conn = server.conn_of(client).await;
        for i in 1..=3 {
            let request = http::Request::get(format!("http://{}/", server.addr))
                .body(Empty::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), 200, "{mode:?} #{i}");
        }
        let ended = tokio::time::timeout(GENEROUS, connection)
            .await
            .unwrap_or_else(|_| panic!("{mode:?}: the connection stayed open"));
        match mode {
            Mode::Serve => {
                assert!(matches!(ended, Ok(Ok(()))), "a clean end: {ended:?}");
                assert_eq!(conn.abandoned(), None);
            }
            Mode::AxumLayer => assert!(conn.abandoned().is_some(), "{ended:?}"),
            other => unreachable!("{other:?} is not among this file's modes"),
        }
    }
}

/// `max_connection_age(300 ms)` under `serve()`: an idle keep-alive connection is
/// retired (long before its 30 s idle clock); a busy one is reset at the end of its
/// grace, with its own reason.
#[tokio::test]
async fn old_connections_are_retired_then_forced_after_the_grace() {
    let policy = Policy::builder()
        .idle_timeout(Some(Duration::from_secs(30)))
        .max_connection_age(Some(Duration::from_millis(300)))
        .recycle_grace(Duration::from_millis(600))
        .build()
        .unwrap();
    let server = server(Mode::Serve, policy).start().await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let (status, ..) = client::send_get(&mut sender, "/").await.unwrap();
    assert_eq!(status, 200);
    let started = Instant::now();
    let retired = tokio::time::timeout(GENEROUS, connection).await;
    assert!(retired.is_ok(), "the idle connection is retired");
    eprintln!(
        "idle connection retired {:?} after its answer",
        started.elapsed()
    );

    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /slow/60000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let conn = server.conn_of(tcp.local_addr().unwrap()).await;
    assert_eq!(abandoned(&conn, "busy").await, Abandon::RecycleGrace);
    // 300 ms ± 10 %, then 600 ms.
    assert!(conn.age() >= Duration::from_millis(800), "{:?}", conn.age());
}

// ---------------------------------------------------------------------------------
// The per-client cap
// ---------------------------------------------------------------------------------

async fn wait_live(registry: &Registry, live: usize) {
    let deadline = Instant::now() + GENEROUS;
    while registry.len() != live {
        assert!(
            Instant::now() < deadline,
            "{} live, not {live}",
            registry.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Two connections per client under `serve()`: the third gets a 503 with
/// `Connection: close`, is counted, and a slot freed lets the next one in.
#[tokio::test]
async fn per_ip_cap_answers_503_over_http() {
    let policy = Policy::default();
    let server = server(Mode::Serve, policy)
        .tune(|listener| listener.max_connections_per_ip(NonZeroUsize::new(2).unwrap()))
        .start()
        .await;
    let first = TcpStream::connect(server.addr).await.unwrap();
    let _second = TcpStream::connect(server.addr).await.unwrap();
    wait_live(&server.registry, 2).await;
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(GENEROUS, third.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let refusal = Response::parse_to_eof(&answer).expect("a whole answer");
    assert_eq!(refusal.status(), 503, "{refusal:?}");
    assert_eq!(refusal.header("connection"), Some("close"), "{refusal:?}");
    assert!(!refusal.keep_alive());
    assert_eq!(server.registry.snapshot().refused_per_ip(), 1);
    assert!(
        server
            .registry
            .snapshot()
            .to_string()
            .contains("refused_per_ip 1")
    );
    drop(first);
    wait_live(&server.registry, 1).await;
    let (status, ..) = client::get(server.addr, "/").await.unwrap();
    assert_eq!(status, 200);
}

/// An HTTP/2 client with prior knowledge over the cap under `serve()` is reset, not
/// sent an HTTP/1 503 it cannot read; the server keeps no socket of it.
#[tokio::test]
async fn per_ip_cap_resets_an_http2_client() {
    let server = server(Mode::Serve, Policy::default())
        .tune(|listener| listener.max_connections_per_ip(NonZeroUsize::new(1).unwrap()))
        .start()
        .await;
    let _first = TcpStream::connect(server.addr).await.unwrap();
    wait_live(&server.registry, 1).await;
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    let client = second.local_addr().unwrap();
    // The preface, then an empty SETTINGS frame, as hyper's client sends them.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    assert_reset_without_an_answer(&mut second, preface, GENEROUS, "an HTTP/2 client").await;
    assert_eq!(server.registry.snapshot().refused_per_ip(), 1);
    let gone = wait_for_socket(server.addr, client, GENEROUS, |state| state.is_none()).await;
    assert!(gone.is_ok(), "the server's socket: {gone:?}");
}

/// One connection per client on `::1` with a plain listener: the second is reset.
#[tokio::test]
async fn per_ip_cap_resets_over_ipv6() {
    let Ok(listener) = Listener::bind("[::1]:0", SocketOptions::new(), Policy::default()) else {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    };
    let mut listener = listener.max_connections_per_ip(NonZeroUsize::new(1).unwrap());
    let addr = listener.local_addr().unwrap();
    let registry = listener.registry().clone();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            held.push(stream);
        }
    });
    let _first = TcpStream::connect(addr).await.unwrap();
    wait_live(&registry, 1).await;
    let mut second = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(GENEROUS, second.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
    assert_eq!(registry.refused_per_ip(), 1);
    assert_eq!(registry.len(), 1);
    server.abort();
}

// ---------------------------------------------------------------------------------
// HTTP/2: the body floor per stream
// ---------------------------------------------------------------------------------

type BoxBody = http_body_util::combinators::BoxBody<Bytes, io::Error>;

/// Two streams on one HTTP/2 connection, one of which trickles its upload at 100 B/s:
/// the trickling stream fails on its own (the floor, 1000 B/s, is per stream), the
/// other answers, and the connection serves on.
#[tokio::test]
async fn http2_trickling_stream_fails_alone() {
    for mode in MODES {
        let server = server(mode, floors().build().unwrap()).start().await;
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let client = tcp.local_addr().unwrap();
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, BoxBody>(TokioIo::new(tcp))
            .await
            .unwrap();
        let connection = tokio::spawn(connection);
        let conn = server.conn_of(client).await;
        let upload = trickling_upload(&server, "/echo");
        let mut trickling_sender = sender.clone();
        let trickling = tokio::spawn(async move {
            let started = Instant::now();
            let answer = trickling_sender.send_request(upload).await;
            (
                answer.map(|response| response.status().as_u16()),
                started.elapsed(),
            )
        });
        let mut sender = sender;
        let healthy = http::Request::get(format!("http://{}/slow/300", server.addr))
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .unwrap();
        let healthy = sender.send_request(healthy).await.unwrap();
        assert_eq!(healthy.status(), 200, "{mode:?}");
        let (answer, took) = tokio::time::timeout(GENEROUS, trickling)
            .await
            .unwrap()
            .unwrap();
        match &answer {
            Ok(status) => assert!((400..500).contains(status), "{mode:?}: {answer:?}"),
            Err(error) => assert!(!error.is_closed(), "{mode:?}: connection closed: {error}"),
        }
        assert!(
            took < Duration::from_secs(4),
            "{mode:?}: cut after {took:?}"
        );
        let after = http::Request::get(format!("http://{}/", server.addr))
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .unwrap();
        let after = sender.send_request(after).await.unwrap();
        assert_eq!(after.status(), 200, "{mode:?}");
        assert!(!connection.is_finished(), "{mode:?}");
        assert_eq!(conn.abandoned(), None, "{mode:?}");
        // The stream's cut is counted, though no connection was abandoned.
        assert_eq!(
            server.registry.cuts().get(&Abandon::MinBodyRate),
            Some(&1),
            "{mode:?}"
        );
        eprintln!("{mode:?}: trickling HTTP/2 stream failed alone after {took:?}: {answer:?}");
    }
}

/// An HTTP/2 upload of 10 bytes every 100 ms to `path`, for far longer than a test.
fn trickling_upload(server: &Server, path: &str) -> http::Request<BoxBody> {
    let frames = futures_util::stream::unfold(0u32, |i| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let chunk = Bytes::from_static(b"0123456789");
        (i < 1000).then(|| (Ok::<_, io::Error>(hyper::body::Frame::data(chunk)), i + 1))
    });
    http::Request::post(format!("http://{}{path}", server.addr))
        .body(BodyExt::boxed(http_body_util::StreamBody::new(frames)))
        .unwrap()
}

/// Issue 20, item 4, through a real server: a handler that logs the floor's error and
/// reads on sees it again, never a clean end that would make the truncated upload look
/// whole.
#[tokio::test]
async fn http2_failed_body_keeps_failing_for_a_handler_that_reads_on() {
    for mode in MODES {
        let server = server(mode, floors().build().unwrap()).start().await;
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake::<_, BoxBody>(TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(connection);
        let answer = tokio::time::timeout(GENEROUS, async {
            let response = sender
                .send_request(trickling_upload(&server, "/read-on"))
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{mode:?}");
            response.into_body().collect().await.unwrap().to_bytes()
        })
        .await
        .unwrap_or_else(|_| panic!("{mode:?}: no answer"));
        assert_eq!(
            String::from_utf8_lossy(&answer),
            "errors=3, then an error",
            "{mode:?}"
        );
    }
}

/// The crate's own pooled client honours `Keep-Alive: timeout=3` from `serve()`: it
/// evicts the idle connection (a reset, a margin of 1 s before), so the server's idle
/// clock never has to close it under a request in flight.
#[cfg(feature = "client")]
#[tokio::test]
async fn the_crates_client_retires_a_pooled_connection_before_the_server_does() {
    use conn_hygiene::client::{HygieneConnector, KeepAliveLayer};
    use tower::{Service, ServiceBuilder};

    let policy = Policy::builder()
        .idle_timeout(Some(Duration::from_secs(3)))
        .half_close(conn_hygiene::HalfClose::AllowFor(Duration::from_secs(1)))
        .build()
        .unwrap();
    let server = server(Mode::Serve, policy).start().await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, Empty<Bytes>>(HygieneConnector::new(SocketOptions::new()));
    let mut client = ServiceBuilder::new()
        .layer(KeepAliveLayer::new())
        .service(client);
    let request = http::Request::get(format!("http://{}/", server.addr))
        .body(Empty::new())
        .unwrap();
    let response = client.call(request).await.unwrap();
    assert_eq!(response.headers().get("keep-alive").unwrap(), "timeout=3");
    response.into_body().collect().await.unwrap();
    let connections = server.registry.connections();
    assert_eq!(connections.len(), 1);
    let conn = &connections[0];
    tokio::time::timeout(GENEROUS, conn.closed())
        .await
        .expect("the connection closes");
    assert_eq!(
        conn.abandoned(),
        Some(Abandon::PeerReset),
        "the client evicted it, not the server's idle clock"
    );
}
