//! The deregistration phase of `conn_hygiene::serve`'s shutdown, on real loopback
//! sockets: unready but still serving, every connection retiring after one more answer,
//! then the listener closes.
//!
//! Bounds are generous and assertions are on what the client sees and on the server's
//! stage, not on exact durations.
#![cfg(feature = "axum")]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use conn_hygiene::Policy;
use conn_hygiene::serve::{Readiness, ShutdownReport, Stage};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support;
use crate::support::server::Mode;

const GENEROUS: Duration = Duration::from_secs(10);
/// The deregistration delay under test.
const DELAY: Duration = Duration::from_millis(1500);
/// How much earlier than the delay its end may be seen from outside.
const SLACK: Duration = Duration::from_millis(100);

/// The fixture under `serve()` with a deregistration delay, its readiness at
/// `/healthz`.
struct Server {
    server: support::server::Server,
    readiness: Readiness,
    addr: SocketAddr,
}

impl Server {
    async fn start(delay: Duration) -> Server {
        Server::start_with(delay, false).await
    }

    /// Over TLS if `tls`, the protocol chosen by ALPN.
    async fn start_with(delay: Duration, tls: bool) -> Server {
        let readiness = Readiness::new();
        // 0: no deregistration phase.
        let policy = Policy::builder()
            .deregister_delay(Some(delay).filter(|delay| !delay.is_zero()))
            .build()
            .unwrap();
        let mut builder = support::server::Server::builder(Mode::Serve, policy)
            .routes({
                let readiness = readiness.clone();
                move |app| app.route_service("/healthz", readiness)
            })
            .configure({
                let readiness = readiness.clone();
                move |serve| serve.with_readiness(readiness)
            });
        if tls {
            builder = builder.tls();
        }
        let server = builder.start().await;
        Server {
            addr: server.addr,
            server,
            readiness,
        }
    }

    /// Sends the shutdown signal and waits until the server is unready.
    async fn shutdown(&mut self) -> Instant {
        let signalled = Instant::now();
        self.server.signal();
        tokio::time::timeout(GENEROUS, self.readiness.unready())
            .await
            .expect("unready after the signal");
        signalled
    }

    async fn report(self) -> ShutdownReport {
        self.server.shutdown().await
    }
}

/// An HTTP/1 client connection.
struct Client {
    sender: http1::SendRequest<Empty<Bytes>>,
    connection: JoinHandle<()>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Client { sender, connection }
    }

    /// `GET path`: the status, and whether the answer carries `Connection: close`.
    async fn get(&mut self, path: &str) -> (u16, bool) {
        self.sender.ready().await.expect("the connection is open");
        let request = http::Request::get(path)
            .header(http::header::HOST, "localhost")
            .body(Empty::new())
            .unwrap();
        let response = tokio::time::timeout(GENEROUS, self.sender.send_request(request))
            .await
            .expect("an answer in time")
            .expect("an answer");
        let close = response
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v == "close");
        let status = response.status().as_u16();
        response.into_body().collect().await.expect("the body");
        (status, close)
    }

    /// Waits until the server has closed the connection.
    async fn closed(self) {
        tokio::time::timeout(GENEROUS, self.connection)
            .await
            .expect("the server closes the connection")
            .unwrap();
    }
}

#[tokio::test]
async fn deregistration_keeps_serving_and_retires_each_connection_after_one_answer() {
    let mut server = Server::start(DELAY).await;
    // A balancer's pooled connection, idle when the signal comes.
    let mut pooled = Client::connect(server.addr).await;
    assert_eq!(pooled.get("/").await, (200, false));
    assert_eq!(
        Client::connect(server.addr).await.get("/healthz").await,
        (200, false)
    );

    let signalled = server.shutdown().await;
    assert_eq!(server.readiness.stage(), Stage::Deregistering);

    // The idle pooled connection is not closed under the balancer: it carries one more
    // answer, with `Connection: close`, and then the server closes it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pooled.get("/").await, (200, true));
    pooled.closed().await;

    // New connections are still accepted: the health check fails, traffic is served,
    // and each connection retires after its answer.
    let mut checker = Client::connect(server.addr).await;
    assert_eq!(checker.get("/healthz").await, (503, true));
    checker.closed().await;
    let mut late = Client::connect(server.addr).await;
    assert_eq!(late.get("/").await, (200, true));
    late.closed().await;
    assert!(
        signalled.elapsed() < DELAY,
        "the test took too long to see the phase: {:?}",
        signalled.elapsed()
    );

    // Then the listener closes.
    let refused = loop {
        match TcpStream::connect(server.addr).await {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break signalled.elapsed(),
            _ => {
                assert!(
                    signalled.elapsed() < DELAY + GENEROUS,
                    "the port never closed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(refused + SLACK >= DELAY, "refused after {refused:?}");

    let report = server.report().await;
    eprintln!("deregistration: port refused after {refused:?}; {report}");
    assert!(report.deregistration_elapsed() + SLACK >= DELAY, "{report}");
    // The checker, the late client and the probes for the closed port.
    assert!(report.accepted_while_deregistering() >= 2, "{report}");
    assert!(report.retired_while_deregistering() >= 3, "{report}");
    assert!(report.forced().is_empty(), "{report}");
    assert!(report.to_string().contains("deregistered in"), "{report}");
}

#[tokio::test]
async fn deregistration_sends_goaway_to_http2_at_once() {
    let mut server = Server::start(DELAY).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let request = || {
        http::Request::get(format!("http://{}/", server.addr))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let response = sender.send_request(request()).await.unwrap();
    assert_eq!(response.status(), 200);

    server.shutdown().await;
    // GOAWAY ends the client's connection while the server still deregisters.
    tokio::time::timeout(GENEROUS, connection)
        .await
        .expect("GOAWAY closes the HTTP/2 connection")
        .unwrap()
        .unwrap();
    assert_eq!(
        server.readiness.stage(),
        Stage::Deregistering,
        "the GOAWAY came only when the phase ended"
    );
    let report = server.report().await;
    assert_eq!(report.retired_while_deregistering(), 1, "{report}");
}

/// Opens HTTP/2 on `io` with the client preface and an empty SETTINGS frame after a
/// pause, then reads the server's frames until a GOAWAY.
async fn goaway_after_a_late_preface(mut io: impl AsyncRead + AsyncWrite + Unpin) {
    // The server has accepted the connection and waits for its first bytes meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    loop {
        // Length (24 bits), type, flags, stream id.
        let mut header = [0; 9];
        io.read_exact(&mut header)
            .await
            .expect("a GOAWAY before the server closes");
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
        let mut payload = vec![0; length as usize];
        io.read_exact(&mut payload).await.unwrap();
        if header[3] == 0x7 {
            return;
        }
    }
}

/// `io` was accepted while `server` deregisters: it gets GOAWAY within the phase, not
/// at the drain, and the shutdown forces nothing.
async fn goaway_within_the_phase(server: Server, io: impl AsyncRead + AsyncWrite + Unpin) {
    tokio::time::timeout(GENEROUS, goaway_after_a_late_preface(io))
        .await
        .expect("a GOAWAY in time");
    assert_eq!(
        server.readiness.stage(),
        Stage::Deregistering,
        "the GOAWAY came only with the drain"
    );
    let report = server.report().await;
    assert!(report.accepted_while_deregistering() >= 1, "{report}");
    assert!(report.forced().is_empty(), "{report}");
}

#[tokio::test]
async fn deregistration_sends_goaway_to_h2c_accepted_during_the_phase_before_its_preface() {
    let mut server = Server::start(DELAY).await;
    server.shutdown().await;
    // Prior knowledge: nothing says HTTP/2 until the preface arrives.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    goaway_within_the_phase(server, stream).await;
}

#[tokio::test]
async fn deregistration_sends_goaway_to_tls_h2_accepted_during_the_phase_before_its_preface() {
    let mut server = Server::start_with(DELAY, true).await;
    server.shutdown().await;
    // ALPN says HTTP/2; the server's sniffer sees only ciphertext.
    let stream = server.server.connect_tls(b"h2").await;
    goaway_within_the_phase(server, stream).await;
}

#[tokio::test]
async fn without_a_delay_the_listener_closes_at_the_signal() {
    let mut server = Server::start(Duration::ZERO).await;
    let mut idle = Client::connect(server.addr).await;
    assert_eq!(idle.get("/").await, (200, false));
    server.shutdown().await;
    // The idle connection is closed once quiet, within the drain.
    idle.closed().await;
    let readiness = server.readiness.clone();
    let report = server.report().await;
    assert_eq!(report.deregistration_elapsed(), Duration::ZERO, "{report}");
    assert_eq!(report.drained(), 1, "{report}");
    assert!(!report.to_string().contains("deregistered"), "{report}");
    assert_eq!(readiness.stage(), Stage::Stopped);
}
