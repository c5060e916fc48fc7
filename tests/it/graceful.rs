//! `BoundedShutdown`: the drain deadline and the report for `axum::serve` over the
//! crate's listener, with and without the layer, over HTTP/1 and HTTP/2, on real
//! loopback sockets. Plain `axum::serve` with its own graceful shutdown is the
//! contrast: it waits for a stuck handler forever.
//!
//! Results print with `cargo test --all-features --test it -- --nocapture graceful::`.
#![cfg(all(feature = "axum", feature = "testing"))]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use conn_hygiene::Policy;
use conn_hygiene::census::TcpState;
use conn_hygiene::serve::Readiness;
use conn_hygiene::testing::wait_for_socket;
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const GENEROUS: Duration = Duration::from_secs(10);
/// The drain deadline under test.
const DEADLINE: Duration = Duration::from_millis(600);
/// The notice an owner that is not supervised gets before its socket is shut down
/// (`conn::NOTICE`), with room for a loaded machine.
const NOTICE: Duration = Duration::from_secs(2);

use crate::support::client;
use crate::support::server::{Mode, Server, Shutdown};

/// `axum::serve` over the crate's listener: with the layer and without, through
/// `BoundedShutdown`, and with axum's own graceful shutdown alone.
const MODES: [(Mode, Shutdown); 3] = [
    (Mode::AxumLayer, Shutdown::Crate),
    (Mode::AxumPlain, Shutdown::Crate),
    (Mode::AxumPlain, Shutdown::Axum),
];

fn policy() -> Policy {
    Policy::builder().drain_timeout(DEADLINE).build().unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

type ResponseFuture = std::pin::Pin<
    Box<dyn Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>> + Send>,
>;

/// Opens a connection and sends `GET path` on it without waiting for the answer;
/// returns the client's address and a task that ends with the answer's status, or
/// the error that ended the connection.
async fn request(
    addr: SocketAddr,
    protocol: Protocol,
    path: &str,
) -> (SocketAddr, JoinHandle<Result<u16, String>>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let io = TokioIo::new(tcp);
    let request = http::Request::get(format!("http://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    // The request is sent at once; its answer is awaited in a task of its own.
    let response: ResponseFuture = match protocol {
        Protocol::Http1 => {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            Box::pin(sender.send_request(request))
        }
        Protocol::Http2 => {
            let (mut sender, connection) =
                http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(connection);
            Box::pin(sender.send_request(request))
        }
    };
    let answer = tokio::spawn(async move {
        let response = response.await.map_err(|e| e.to_string())?;
        Ok(response.status().as_u16())
    });
    (local, answer)
}

/// A handler that never returns: with `BoundedShutdown` the server returns its report
/// by the deadline (plus the notice where nothing supervises the handler), the client
/// is told (its request fails), and the kernel holds nothing of the connection. Plain
/// `axum::serve` is still waiting at twice that.
#[tokio::test]
async fn a_stuck_handler_is_reset_at_the_drain_deadline() {
    for protocol in [Protocol::Http1, Protocol::Http2] {
        for (mode, shutdown) in MODES {
            let mut server = Server::builder(mode, policy())
                .shutdown(shutdown)
                .start()
                .await;
            let (ok_client, ok) = request(server.addr, protocol, "/").await;
            assert_eq!(ok.await.unwrap(), Ok(200), "{mode:?} {protocol:?}");
            let (stuck_client, stuck) = request(server.addr, protocol, "/stuck").await;
            // The handler is running before the signal.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let signalled = Instant::now();
            let bound = DEADLINE + NOTICE;
            let report = server.stopped(bound * 2).await;
            let elapsed = signalled.elapsed();
            let mode = (mode, shutdown);
            if shutdown == Shutdown::Axum {
                assert!(
                    report.is_none(),
                    "{protocol:?}: plain axum::serve returned: {report:?}"
                );
                assert!(
                    !stuck.is_finished(),
                    "{protocol:?}: plain axum::serve told the client"
                );
                eprintln!(
                    "{mode:?} {protocol:?}: still waiting for the stuck handler after {elapsed:?}"
                );
                continue;
            }
            let report = report
                .unwrap_or_else(|| panic!("{mode:?} {protocol:?}: no report after {elapsed:?}"))
                .unwrap()
                .expect("a report")
                .to_string();
            eprintln!("{mode:?} {protocol:?}: {report}, returned after {elapsed:?}");
            assert!(elapsed < bound, "{mode:?} {protocol:?}: {elapsed:?}");
            assert!(
                report.contains("forced=1"),
                "{mode:?} {protocol:?}: {report}"
            );
            if mode.0 == Mode::AxumLayer {
                assert!(
                    report.contains("held by busy handler"),
                    "{protocol:?}: {report}"
                );
            }
            let answer = tokio::time::timeout(GENEROUS, stuck)
                .await
                .expect("the client is told")
                .unwrap();
            assert!(answer.is_err(), "{mode:?} {protocol:?}: {answer:?}");
            for client in [ok_client, stuck_client] {
                let released = |state: Option<TcpState>| {
                    !matches!(state, Some(TcpState::Established | TcpState::CloseWait))
                };
                if let Err(state) = wait_for_socket(server.addr, client, GENEROUS, released).await {
                    panic!("{mode:?} {protocol:?}: the server's end is still {state:?}");
                }
            }
        }
    }
}

/// `GET path` on an open HTTP/1 connection: the status, and whether the answer
/// carries `Connection: close`.
async fn http1_get(tcp: &mut TcpStream, path: &str) -> (u16, bool) {
    let mut buf = Vec::new();
    let response = client::get_on(tcp, path, &mut buf).await;
    let close = response.header("connection") == Some("close");
    (response.status(), close)
}

/// The deregistration phase under `axum::serve` + layer: on the signal the readiness
/// endpoint answers 503 while the server still serves, a pooled connection and one
/// opened during the phase are each answered once with `Connection: close` and then
/// closed, and after the delay the listener closes.
#[tokio::test]
async fn deregistration_under_axum_serve_retires_every_connection_after_one_answer() {
    const DELAY: Duration = Duration::from_millis(1500);
    let readiness = Readiness::new();
    let policy = Policy::builder()
        .drain_timeout(DEADLINE)
        .deregister_delay(Some(DELAY))
        .build()
        .unwrap();
    let mut server = Server::builder(Mode::AxumLayer, policy)
        .routes({
            let readiness = readiness.clone();
            move |app| app.route_service("/healthz", readiness)
        })
        .graceful({
            let readiness = readiness.clone();
            move |shutdown| shutdown.with_readiness(readiness)
        })
        .start()
        .await;
    let addr = server.addr;

    let mut pooled = TcpStream::connect(addr).await.unwrap();
    assert_eq!(http1_get(&mut pooled, "/").await, (200, false));
    let mut health = TcpStream::connect(addr).await.unwrap();
    assert_eq!(http1_get(&mut health, "/healthz").await, (200, false));

    let signalled = Instant::now();
    server.signal();
    tokio::time::timeout(GENEROUS, readiness.unready())
        .await
        .expect("unready after the signal");
    assert_eq!(http1_get(&mut health, "/healthz").await, (503, true));
    assert_eq!(http1_get(&mut pooled, "/").await, (200, true));
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    assert_eq!(http1_get(&mut fresh, "/").await, (200, true));
    assert!(
        signalled.elapsed() < DELAY,
        "the checks ran within the phase"
    );
    // Each is closed after its answer; the client closes too, as a real one does
    // (the server's lingering close waits for that).
    for (name, mut tcp) in [("pooled", pooled), ("fresh", fresh), ("health", health)] {
        let mut rest = Vec::new();
        tokio::time::timeout(GENEROUS, tcp.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("{name}: the server closes after its answer"))
            .unwrap();
        assert!(rest.is_empty(), "{name}: {rest:?}");
    }

    let report = server.shutdown().await;
    eprintln!("axum::serve + layer, deregistration {DELAY:?}: {report}");
    assert!(report.deregistration_elapsed() >= DELAY, "{report}");
    assert_eq!(report.accepted_while_deregistering(), 1, "{report}");
    assert!(report.retired_while_deregistering() >= 3, "{report}");
    assert!(report.forced().is_empty(), "{report}");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed after the phase"
    );
}
