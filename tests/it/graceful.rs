//! `GracefulShutdown`: the drain deadline and the report for `axum::serve` over the
//! crate's listener, with and without the layer, over HTTP/1 and HTTP/2, on real
//! loopback sockets. Plain `axum::serve` with its own graceful shutdown is the
//! contrast: it waits for a stuck handler forever.
//!
//! Results print with `cargo test --all-features --test it -- --nocapture graceful::`.
#![cfg(all(feature = "axum", feature = "testing"))]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use conn_hygiene::census::TcpState;
use conn_hygiene::serve::GracefulShutdown;
use conn_hygiene::testing::{http1, wait_for_socket};
use conn_hygiene::{Conn, HygieneLayer, Listener, Policy, SocketOptions};
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const GENEROUS: Duration = Duration::from_secs(10);
/// The drain deadline under test.
const DEADLINE: Duration = Duration::from_millis(600);
/// The notice an owner that is not supervised gets before its socket is shut down
/// (`conn::NOTICE`), with room for a loaded machine.
const NOTICE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `axum::serve` + `HygieneLayer`, shut down through `GracefulShutdown`.
    WithLayer,
    /// `axum::serve` over the crate's listener, no layer, through `GracefulShutdown`.
    NoLayer,
    /// `axum::serve` over the crate's listener with its own graceful shutdown only.
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/stuck", get(std::future::pending::<&'static str>))
}

struct Server {
    addr: SocketAddr,
    signal: Option<oneshot::Sender<()>>,
    /// The report, or `None` for plain `axum::serve`, when it has shut down.
    task: JoinHandle<Option<String>>,
}

impl Server {
    fn start(mode: Mode) -> Server {
        let policy = Policy::builder().drain_timeout(DEADLINE).build().unwrap();
        let listener = Listener::bind("127.0.0.1:0", SocketOptions::new(), policy).unwrap();
        let addr = listener.local_addr().unwrap();
        let (signal, signalled) = oneshot::channel::<()>();
        let signalled = async move {
            let _ = signalled.await;
        };
        let shutdown = GracefulShutdown::new(&listener);
        let task = match mode {
            Mode::WithLayer => {
                let app = app()
                    .layer(HygieneLayer::new())
                    .into_make_service_with_connect_info::<Conn>();
                let serving =
                    axum::serve(listener, app).with_graceful_shutdown(shutdown.signal(signalled));
                tokio::spawn(async move { Some(shutdown.run(serving).await.unwrap().to_string()) })
            }
            Mode::NoLayer => {
                let serving =
                    axum::serve(listener, app()).with_graceful_shutdown(shutdown.signal(signalled));
                tokio::spawn(async move { Some(shutdown.run(serving).await.unwrap().to_string()) })
            }
            Mode::Plain => {
                let serving = axum::serve(listener, app()).with_graceful_shutdown(signalled);
                tokio::spawn(async move {
                    serving.await.unwrap();
                    None
                })
            }
        };
        Server {
            addr,
            signal: Some(signal),
            task,
        }
    }
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

/// A handler that never returns: with `GracefulShutdown` the server returns its report
/// by the deadline (plus the notice where nothing supervises the handler), the client
/// is told (its request fails), and the kernel holds nothing of the connection. Plain
/// `axum::serve` is still waiting at twice that.
#[tokio::test]
async fn a_stuck_handler_is_reset_at_the_drain_deadline() {
    for protocol in [Protocol::Http1, Protocol::Http2] {
        for mode in [Mode::WithLayer, Mode::NoLayer, Mode::Plain] {
            let mut server = Server::start(mode);
            let (ok_client, ok) = request(server.addr, protocol, "/").await;
            assert_eq!(ok.await.unwrap(), Ok(200), "{mode:?} {protocol:?}");
            let (stuck_client, stuck) = request(server.addr, protocol, "/stuck").await;
            // The handler is running before the signal.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let signalled = Instant::now();
            let _ = server.signal.take().unwrap().send(());
            let bound = DEADLINE + NOTICE;
            let report = tokio::time::timeout(bound * 2, &mut server.task).await;
            let elapsed = signalled.elapsed();
            if mode == Mode::Plain {
                assert!(
                    report.is_err(),
                    "{protocol:?}: plain axum::serve returned: {report:?}"
                );
                assert!(
                    !stuck.is_finished(),
                    "{protocol:?}: plain axum::serve told the client"
                );
                eprintln!(
                    "{mode:?} {protocol:?}: still waiting for the stuck handler after {elapsed:?}"
                );
                server.task.abort();
                continue;
            }
            let report = report
                .unwrap_or_else(|_| panic!("{mode:?} {protocol:?}: no report after {elapsed:?}"))
                .unwrap()
                .expect("a report");
            eprintln!("{mode:?} {protocol:?}: {report}, returned after {elapsed:?}");
            assert!(elapsed < bound, "{mode:?} {protocol:?}: {elapsed:?}");
            assert!(
                report.contains("forced=1"),
                "{mode:?} {protocol:?}: {report}"
            );
            if mode == Mode::WithLayer {
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
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let response = tokio::time::timeout(GENEROUS, http1::Response::read(tcp, &mut buf))
        .await
        .expect("an answer in time")
        .expect("an answer");
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
    let policy = Policy::builder().drain_timeout(DEADLINE).build().unwrap();
    let listener = Listener::bind("127.0.0.1:0", SocketOptions::new(), policy).unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = GracefulShutdown::new(&listener).deregister_delay(DELAY);
    let readiness = shutdown.readiness();
    let app = app()
        .route_service("/healthz", shutdown.readiness())
        .layer(HygieneLayer::new())
        .into_make_service_with_connect_info::<Conn>();
    let (signal, signalled) = oneshot::channel::<()>();
    let serving = axum::serve(listener, app).with_graceful_shutdown(shutdown.signal(async {
        let _ = signalled.await;
    }));
    let server = tokio::spawn(async move { shutdown.run(serving).await.unwrap() });

    let mut pooled = TcpStream::connect(addr).await.unwrap();
    assert_eq!(http1_get(&mut pooled, "/").await, (200, false));
    let mut health = TcpStream::connect(addr).await.unwrap();
    assert_eq!(http1_get(&mut health, "/healthz").await, (200, false));

    let signalled = Instant::now();
    signal.send(()).unwrap();
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

    let report = tokio::time::timeout(GENEROUS, server)
        .await
        .expect("a report")
        .unwrap();
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
