//! The paths a real service has besides request/response, served the three ways the
//! crate offers, with real clients: WebSockets (tokio-tungstenite), SSE, a busy
//! handler, a slowloris first request, the drain with a WebSocket open, and HTTP/2
//! (hyper's client) with a stalled stream beside a healthy one, a client that only
//! PINGs, and a preface split across writes.
//!
//! | serving mode | what it claims |
//! | --- | --- |
//! | `serve()` | every clock, tunnels, the drain deadline, GOAWAY on idle HTTP/2 |
//! | `axum::serve` + `HygieneLayer` | every clock and tunnels; the drain deadline through `BoundedShutdown`; an idle HTTP/2 connection is reset rather than sent GOAWAY |
//! | `axum::serve`, crate listener, no layer | only the clocks that need no request boundaries (first byte, write stall), with a warning; the drain deadline through `BoundedShutdown` |
//!
//! Timeouts are a few hundred milliseconds, bounds generous; the tests assert on what
//! the client receives and on the kernel's socket table. Results print with
//! `cargo test --all-features --test it -- --nocapture paths::`.
#![cfg(all(feature = "axum", feature = "testing"))]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use conn_hygiene::census::TcpState;
use conn_hygiene::testing::http1::Response;
use conn_hygiene::testing::wait_for_socket;
use conn_hygiene::{Policy, policy::PolicyBuilder};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;

/// The bound on anything that should happen "soon": only a broken server reaches it.
const GENEROUS: Duration = Duration::from_secs(10);
/// The clocks under test.
const CLOCK: Duration = Duration::from_millis(300);

use crate::support::client;
use crate::support::server::{MODES, Mode, Server};

fn clocks() -> PolicyBuilder {
    Policy::builder()
        .header_timeout(Some(CLOCK))
        .idle_timeout(Some(CLOCK))
        .body_stall_timeout(Some(CLOCK))
        .write_stall_timeout(Some(CLOCK))
        .half_close(conn_hygiene::HalfClose::AllowFor(CLOCK))
}

type WsClient = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Opens a WebSocket; returns it with its local address.
async fn ws_connect(server: SocketAddr, kind: &str) -> (WsClient, SocketAddr) {
    let tcp = TcpStream::connect(server).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let (socket, response) =
        tokio_tungstenite::client_async(format!("ws://{server}/ws/{kind}"), tcp)
            .await
            .expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    (socket, local)
}

async fn ws_round_trip(socket: &mut WsClient, text: &str) -> Result<(), String> {
    socket
        .send(tungstenite::Message::text(text))
        .await
        .map_err(|e| format!("send: {e}"))?;
    match tokio::time::timeout(GENEROUS, socket.next()).await {
        Ok(Some(Ok(tungstenite::Message::Text(echoed)))) if echoed.as_str() == text => Ok(()),
        other => Err(format!("no echo: {other:?}")),
    }
}

/// The kernel's state of the server's end of the connection from `client`.
async fn server_side(server: SocketAddr, client: SocketAddr) -> Option<TcpState> {
    wait_for_socket(server, client, Duration::ZERO, |_| true)
        .await
        .unwrap_or_else(|state| state)
}

async fn assert_server_let_go(server: SocketAddr, client: SocketAddr, what: &str) {
    if let Err(state) = wait_for_socket(server, client, GENEROUS, |s| s.is_none()).await {
        panic!("{what}: the server's end is still {state:?} after {GENEROUS:?}");
    }
}

// ---------------------------------------------------------------------------------
// WebSockets
// ---------------------------------------------------------------------------------

/// An echo every 100 ms for 5 × the head and idle clocks: the tunnel is not HTTP, so
/// neither clock applies to it.
#[tokio::test]
async fn busy_websocket_outlives_the_head_and_idle_clocks() {
    for mode in MODES {
        let server = Server::start(mode, clocks().build().unwrap()).await;
        let (mut socket, client) = ws_connect(server.addr, "echo").await;
        let started = Instant::now();
        let mut echoes = 0;
        while started.elapsed() < CLOCK * 5 {
            ws_round_trip(&mut socket, &format!("m{echoes}"))
                .await
                .unwrap_or_else(|e| panic!("{mode:?}: echo {echoes}: {e}"));
            echoes += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            server_side(server.addr, client).await,
            Some(TcpState::Established),
            "{mode:?}"
        );
        eprintln!(
            "{mode:?}: busy WebSocket: {echoes} echoes over {:?}",
            started.elapsed()
        );
    }
}

/// A WebSocket quiet for 4 × the idle clock still echoes: the tunnel idle clock (1 h by
/// default) applies, not the HTTP idle clock.
#[tokio::test]
async fn quiet_websocket_is_not_cut_by_the_http_idle_clock() {
    for mode in MODES {
        let server = Server::start(mode, clocks().build().unwrap()).await;
        let (mut socket, _) = ws_connect(server.addr, "echo").await;
        tokio::time::sleep(CLOCK * 4).await;
        ws_round_trip(&mut socket, "after the quiet")
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
    }
}

/// The tunnel idle clock cuts a quiet WebSocket where the layer sees the upgrade.
/// Without the layer nothing sees it, and no such clock runs (the refusal the crate
/// documents and warns about).
#[tokio::test]
async fn quiet_websocket_is_cut_by_the_tunnel_idle_clock() {
    for mode in MODES {
        let policy = clocks()
            .tunnel_idle_timeout(Some(CLOCK * 2))
            .build()
            .unwrap();
        let server = Server::start(mode, policy).await;
        let (mut socket, client) = ws_connect(server.addr, "echo").await;
        ws_round_trip(&mut socket, "hello").await.unwrap();
        let quiet = Instant::now();
        if mode == Mode::AxumPlain {
            tokio::time::sleep(CLOCK * 4).await;
            ws_round_trip(&mut socket, "still here")
                .await
                .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
            continue;
        }
        let end = tokio::time::timeout(GENEROUS, socket.next()).await;
        let took = quiet.elapsed();
        assert!(
            matches!(end, Ok(None | Some(Err(_)))),
            "{mode:?}: the tunnel ended with {end:?}"
        );
        assert!(
            took >= CLOCK * 2 - Duration::from_millis(50),
            "{mode:?}: cut after {took:?}"
        );
        assert_server_let_go(server.addr, client, "quiet tunnel").await;
        eprintln!("{mode:?}: quiet WebSocket cut by the tunnel idle clock after {took:?}");
    }
}

/// The peer half-closes a tunnel and goes silent: the half-close grace still holds.
#[tokio::test]
async fn half_closed_websocket_is_released_after_the_grace() {
    for mode in [Mode::Serve, Mode::AxumLayer] {
        let server = Server::start(mode, clocks().build().unwrap()).await;
        // The relay is stuck: it never touches the socket again.
        let (mut socket, client) = ws_connect(server.addr, "stuck").await;
        socket.get_mut().shutdown().await.unwrap();
        let fin = Instant::now();
        tokio::time::sleep(CLOCK / 2).await;
        assert_eq!(
            server_side(server.addr, client).await,
            Some(TcpState::CloseWait),
            "{mode:?}: within the grace the half-closed tunnel is kept"
        );
        assert_server_let_go(server.addr, client, "half-closed tunnel").await;
        let took = fin.elapsed();
        assert!(
            took >= CLOCK - Duration::from_millis(50),
            "{mode:?}: {took:?}"
        );
        eprintln!("{mode:?}: half-closed stuck WebSocket released after {took:?}");
    }
}

/// A drain with a WebSocket open: the handler sees `Conn::draining` and closes with
/// 1001; one that ignores the drain is reset at the deadline, and the report names it
/// as a tunnel. Without the layer the handler has no `Conn` to hear the drain from, so
/// both are reset at the deadline.
#[tokio::test]
async fn drain_tells_tunnels_and_forces_the_deaf_one() {
    const DEADLINE: Duration = Duration::from_millis(800);
    for mode in MODES {
        let policy = clocks()
            .idle_timeout(Some(GENEROUS))
            .drain_timeout(DEADLINE)
            .build()
            .unwrap();
        let server = Server::start(mode, policy).await;
        let (mut polite, polite_client) = ws_connect(server.addr, "echo").await;
        let (mut deaf, deaf_client) = ws_connect(server.addr, "deaf").await;
        ws_round_trip(&mut polite, "hello").await.unwrap();
        ws_round_trip(&mut deaf, "hello").await.unwrap();
        let addr = server.addr;
        let started = Instant::now();
        let shutdown = tokio::spawn(server.shutdown());
        let goodbye = tokio::time::timeout(GENEROUS, polite.next()).await;
        let told = matches!(
            &goodbye,
            Ok(Some(Ok(tungstenite::Message::Close(Some(frame))))) if u16::from(frame.code) == 1001
        );
        let report = shutdown.await.unwrap();
        let elapsed = started.elapsed();
        eprintln!(
            "{mode:?}: drain with WebSockets: {report} (told: {told}, returned after {elapsed:?})"
        );
        let expected_forced = if mode == Mode::AxumPlain { 2 } else { 1 };
        assert_eq!(told, mode != Mode::AxumPlain, "{mode:?}: {goodbye:?}");
        assert_eq!(report.forced().len(), expected_forced, "{mode:?}: {report}");
        // Without the layer nothing sees the upgrade: the crate knows them as idle.
        let held_by = if mode == Mode::AxumPlain {
            "idle"
        } else {
            "tunnel"
        };
        assert!(
            report
                .forced()
                .iter()
                .all(|forced| forced.held_by() == held_by),
            "{mode:?}: {report}"
        );
        assert!(
            report.elapsed() < DEADLINE + Duration::from_millis(500),
            "{mode:?}: {report}"
        );
        assert!(
            elapsed < DEADLINE + Duration::from_secs(3),
            "{mode:?}: {elapsed:?}"
        );
        assert_server_let_go(addr, deaf_client, "deaf tunnel").await;
        // The polite one closed first: its end may wait in FIN_WAIT2 or TIME_WAIT.
        let closed = |state: Option<TcpState>| {
            !matches!(state, Some(TcpState::Established | TcpState::CloseWait))
        };
        if let Err(state) = wait_for_socket(addr, polite_client, GENEROUS, closed).await {
            panic!("{mode:?}: the polite tunnel's server end is still {state:?}");
        }
    }
}

// ---------------------------------------------------------------------------------
// Busy handlers and SSE: never cut
// ---------------------------------------------------------------------------------

/// `GET path` on a fresh connection: the status and the body.
async fn get_status(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let (status, _, body) = client::get(addr, path).await?;
    Ok((status, body))
}

/// A handler busy for 4 × the idle and head clocks answers in every mode, and on the
/// connection's first request even where the layer is missing but `ConnectInfo<Conn>`
/// marked the connection as HTTP.
#[tokio::test]
async fn busy_handler_answers_in_every_mode() {
    for mode in MODES.into_iter().chain([Mode::AxumConnectInfoAlone]) {
        let server = Server::start(mode, clocks().build().unwrap()).await;
        let path = format!("/slow/{}", (CLOCK * 4).as_millis());
        let answer = get_status(server.addr, &path).await;
        assert_eq!(answer, Ok((200, "slept".to_string())), "{mode:?}");
    }
}

/// Server-sent events 1.5 × the idle and write-stall clocks apart complete.
#[tokio::test]
async fn rare_server_sent_events_complete_in_every_mode() {
    for mode in MODES {
        let server = Server::start(mode, clocks().build().unwrap()).await;
        let path = format!("/sse/4/{}", (CLOCK * 3 / 2).as_millis());
        let (status, body) = get_status(server.addr, &path)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(status, 200, "{mode:?}");
        assert_eq!(
            body, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n",
            "{mode:?}"
        );
    }
}

/// A slowloris on a connection's first request: a byte every 50 ms, never a whole
/// head. Cut by the head clock where the crate knows request boundaries (`serve()`,
/// and `axum::serve` with the layer: `ConnectInfo<Conn>` marks the connection as HTTP
/// before its first byte).
#[tokio::test]
async fn slowloris_first_request_is_cut_where_claimed() {
    for mode in [Mode::Serve, Mode::AxumLayer] {
        let policy = clocks().idle_timeout(Some(GENEROUS)).build().unwrap();
        let server = Server::start(mode, policy).await;
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let client = tcp.local_addr().unwrap();
        let started = Instant::now();
        let mut cut = None;
        for byte in b"GET / HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain([b'a'; 200].iter())
        {
            if tcp.write_all(&[*byte]).await.is_err() {
                cut = Some(started.elapsed());
                break;
            }
            if server_side(server.addr, client).await.is_none() {
                cut = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cut = cut.unwrap_or_else(|| panic!("{mode:?}: slowloris never cut"));
        assert!(
            cut >= CLOCK - Duration::from_millis(50),
            "{mode:?}: cut after {cut:?}"
        );
        assert!(
            cut < CLOCK + Duration::from_secs(3),
            "{mode:?}: cut after {cut:?}"
        );
        eprintln!("{mode:?}: slowloris first request cut after {cut:?}");
    }
}

/// A handler retires its connection: the answer carries `Connection: close` and the
/// server closes the connection after it, under `serve()` and under `axum::serve` with
/// the layer.
#[tokio::test]
async fn a_retired_connection_closes_after_its_answer() {
    for mode in [Mode::Serve, Mode::AxumLayer] {
        let server =
            Server::start(mode, clocks().idle_timeout(Some(GENEROUS)).build().unwrap()).await;
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET /retire HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(GENEROUS, tcp.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{mode:?}: the server kept the connection open"))
            .unwrap();
        let answer = Response::parse_to_eof(&answer).expect("a whole answer");
        assert_eq!(
            answer.header("connection"),
            Some("close"),
            "{mode:?}: {answer:?}"
        );
        assert_eq!(answer.body(), b"bye", "{mode:?}");
    }
}

/// Without the layer the crate cannot tell a handler from an idle connection, so it
/// says so: one warning per listener.
#[tokio::test]
async fn axum_serve_without_the_layer_warns_once() {
    for mode in [Mode::AxumPlain, Mode::AxumConnectInfoAlone] {
        let (logs, _guard) = Logs::capture();
        let server = Server::start(mode, clocks().build().unwrap()).await;
        for _ in 0..3 {
            let path = format!("/slow/{}", (CLOCK * 2).as_millis());
            assert_eq!(
                get_status(server.addr, &path).await,
                Ok((200, "slept".into()))
            );
        }
        let text = logs.text();
        assert_eq!(
            text.matches("HygieneLayer is missing").count(),
            1,
            "{mode:?}: {text}"
        );
    }
}

/// Routes added after `.layer(HygieneLayer::new())` are outside the layer: their
/// requests are never counted. Each connection's own uncounted request head shows
/// the layer missing for it, whatever requests the layer counted on other
/// connections: a handler outside it, busy for 4 × the head and idle clocks, answers
/// before and after a layered request (it was reset at the head clock once the
/// listener had seen one), and after one on its own connection; the warning names
/// the pitfall.
#[tokio::test]
async fn a_route_outside_the_layer_answers_after_layered_requests() {
    let (logs, _guard) = Logs::capture();
    let server = Server::start(Mode::AxumLayerThenRoutes, clocks().build().unwrap()).await;
    let outside = format!("/outside/slow/{}", (CLOCK * 4).as_millis());
    let slept = Ok((200, "slept".to_string()));
    assert_eq!(get_status(server.addr, &outside).await, slept, "before");
    assert_eq!(get_status(server.addr, "/").await, Ok((200, "ok".into())));
    assert_eq!(get_status(server.addr, &outside).await, slept, "after");
    assert_eq!(get_status(server.addr, &outside).await, slept, "again");
    // On one connection: a layered request, then one outside the layer.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    for path in ["/", outside.as_str()] {
        let request = http::Request::get(path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await;
        let response = response.unwrap_or_else(|e| panic!("{path} after a layered one: {e}"));
        assert_eq!(response.status(), 200, "{path}");
        response.into_body().collect().await.unwrap();
    }
    let text = logs.text();
    assert_eq!(text.matches("HygieneLayer is missing").count(), 1, "{text}");
    assert!(text.contains("routes added after"), "{text}");
}

#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    /// The logs of this thread's tracing events, until the guard drops.
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (logs, guard)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

// ---------------------------------------------------------------------------------
// HTTP/2
// ---------------------------------------------------------------------------------

type H2Sender = hyper::client::conn::http2::SendRequest<BoxBody>;
type BoxBody = http_body_util::combinators::BoxBody<Bytes, io::Error>;

async fn h2_connect(
    addr: SocketAddr,
    ping_every: Option<Duration>,
) -> (H2Sender, JoinHandle<hyper::Result<()>>, SocketAddr) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    if let Some(every) = ping_every {
        builder
            .keep_alive_interval(every)
            .keep_alive_timeout(GENEROUS)
            .keep_alive_while_idle(true);
    }
    let (sender, connection) = builder.handshake(TokioIo::new(tcp)).await.unwrap();
    (sender, tokio::spawn(connection), local)
}

fn h2_get(addr: SocketAddr, path: &str) -> http::Request<BoxBody> {
    http::Request::get(format!("http://{addr}{path}"))
        .body(Empty::new().map_err(|never| match never {}).boxed())
        .unwrap()
}

/// An HTTP/2 (h2c) handler busy for 4 × the idle clock answers in every mode: its
/// request is counted where the layer is, and where `ConnectInfo<Conn>` comes without
/// the layer, the request that reached the server uncounted makes the idle clock stand
/// down rather than cut it (the server's SETTINGS, written first, no longer decide).
#[tokio::test]
async fn h2_busy_handler_answers_in_every_mode() {
    for mode in MODES.into_iter().chain([Mode::AxumConnectInfoAlone]) {
        // A short linger: an idle clock that fired would reset the connection soon.
        let policy = clocks().linger_timeout(CLOCK / 2).build().unwrap();
        let server = Server::start(mode, policy).await;
        let (mut sender, _connection, _) = h2_connect(server.addr, None).await;
        let path = format!("/slow/{}", (CLOCK * 4).as_millis());
        let answer = sender.send_request(h2_get(server.addr, &path)).await;
        let answer = answer.unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(answer.status(), 200, "{mode:?}");
    }
}

/// Two streams on one connection, one of which stalls its upload: the stalled stream
/// fails on its own, the healthy one answers, and the connection serves on.
#[tokio::test]
async fn h2_stalled_stream_fails_alone() {
    for mode in [Mode::Serve, Mode::AxumLayer] {
        let server = Server::start(mode, clocks().build().unwrap()).await;
        let (mut sender, connection, client) = h2_connect(server.addr, None).await;
        let mut healthy_sender = sender.clone();
        // An upload that sends one chunk, then nothing, and never ends.
        let (chunks, stalled_body) = tokio::sync::mpsc::channel::<Bytes>(1);
        chunks.send(Bytes::from_static(b"first")).await.unwrap();
        let frames = futures_util::stream::unfold(stalled_body, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, io::Error>(hyper::body::Frame::data(chunk)), rx))
        });
        let upload = http::Request::post(format!("http://{}/echo", server.addr))
            .body(BodyExt::boxed(StreamBody::new(frames)))
            .unwrap();
        let stalled = tokio::spawn(async move {
            let started = Instant::now();
            let answer = sender.send_request(upload).await;
            (answer, started.elapsed())
        });
        let healthy = h2_get(server.addr, &format!("/slow/{}", (CLOCK * 2).as_millis()));
        let healthy = healthy_sender
            .send_request(healthy)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: the healthy stream failed: {e}"));
        assert_eq!(healthy.status(), 200, "{mode:?}");
        let (stalled, took) = tokio::time::timeout(GENEROUS, stalled)
            .await
            .unwrap()
            .unwrap();
        match &stalled {
            Ok(response) => assert!(response.status().is_client_error(), "{mode:?}: {stalled:?}"),
            Err(error) => assert!(
                !error.is_closed(),
                "{mode:?}: the connection closed: {error}"
            ),
        }
        assert!(
            took >= CLOCK - Duration::from_millis(50),
            "{mode:?}: {took:?}"
        );
        assert!(
            took < CLOCK * 2,
            "{mode:?}: the stall was cut after {took:?}"
        );
        let mut sender = healthy_sender;
        // The connection serves on.
        let after = sender.send_request(h2_get(server.addr, "/")).await;
        assert_eq!(
            after.map(|r| r.status().as_u16()).ok(),
            Some(200),
            "{mode:?}"
        );
        assert!(!connection.is_finished(), "{mode:?}");
        assert_eq!(
            server_side(server.addr, client).await,
            Some(TcpState::Established),
            "{mode:?}"
        );
        drop(chunks);
        eprintln!("{mode:?}: h2 stalled stream failed alone after {took:?}: {stalled:?}");
    }
}

/// A client that only PINGs (every 100 ms) is idle: `serve()` sends GOAWAY at the idle
/// timeout and the client's connection ends cleanly; with the layer under
/// `axum::serve` the connection is reset a linger bound later.
#[tokio::test]
async fn h2_pings_do_not_keep_an_idle_connection() {
    for mode in [Mode::Serve, Mode::AxumLayer] {
        let policy = clocks()
            .linger_timeout(CLOCK)
            .half_close(conn_hygiene::HalfClose::AllowFor(CLOCK))
            .build()
            .unwrap();
        let server = Server::start(mode, policy).await;
        let (mut sender, connection, client) =
            h2_connect(server.addr, Some(Duration::from_millis(100))).await;
        let answer = sender.send_request(h2_get(server.addr, "/")).await.unwrap();
        assert_eq!(answer.status(), 200);
        let idle = Instant::now();
        let ended = tokio::time::timeout(GENEROUS, connection)
            .await
            .unwrap_or_else(|_| panic!("{mode:?}: PINGs kept an idle connection open"))
            .unwrap();
        let took = idle.elapsed();
        assert!(
            took >= CLOCK - Duration::from_millis(50),
            "{mode:?}: {took:?}"
        );
        if mode == Mode::Serve {
            assert!(
                ended.is_ok(),
                "{mode:?}: no orderly close (GOAWAY): {ended:?}"
            );
        }
        assert_server_let_go(server.addr, client, "pinging idle h2").await;
        eprintln!("{mode:?}: pinging idle h2 connection closed after {took:?}: {ended:?}");
    }
}

/// The client preface in two writes: the bytes before the split do not start a
/// request-head clock.
#[tokio::test]
async fn h2_preface_split_across_writes_starts_no_head_clock() {
    let policy = clocks().idle_timeout(Some(GENEROUS)).build().unwrap();
    let server = Server::start(Mode::Serve, policy).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let client = tcp.local_addr().unwrap();
    tcp.write_all(b"PRI * HT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tcp.write_all(b"TP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    // The server's SETTINGS arrive; then nothing happens for 3 × the head clock.
    let mut header = [0u8; 9];
    tcp.read_exact(&mut header).await.unwrap();
    assert_eq!(header[3], 0x4, "the server's first frame is SETTINGS");
    tokio::time::sleep(CLOCK * 3).await;
    assert_eq!(
        server_side(server.addr, client).await,
        Some(TcpState::Established)
    );
}

/// A load check with a real HTTP/2 load generator: h2load, 10 streams at a time on
/// each of 4 connections. Every request succeeds under `serve()` and under
/// `axum::serve` with the layer. Needs `h2load` (Debian's `nghttp2-client`), which
/// `.ci/run` installs; run it with `cargo test --all-features --test it -- --ignored paths::`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs h2load (nghttp2-client); .ci/run installs it and runs the ignored tests"]
async fn h2load_multiplexed_load_all_succeeds() {
    const REQUESTS: usize = 20_000;
    for mode in [Mode::Serve, Mode::AxumLayer] {
        let server = Server::start(mode, clocks().build().unwrap()).await;
        let output = tokio::process::Command::new("h2load")
            .args(["-n", &REQUESTS.to_string(), "-c", "4", "-m", "10"])
            .arg(format!("http://{}/", server.addr))
            .output()
            .await
            .expect("h2load runs: install nghttp2-client (apt-get install nghttp2-client)");
        let report = String::from_utf8_lossy(&output.stdout);
        let summary = report
            .lines()
            .find(|line| line.starts_with("requests:"))
            .unwrap_or_else(|| panic!("{mode:?}: no summary from h2load:\n{report}"));
        eprintln!("{mode:?}: h2load {summary}");
        assert!(
            summary.contains(&format!("{REQUESTS} succeeded, 0 failed, 0 errored")),
            "{mode:?}: {summary}"
        );
        let report = server.shutdown().await;
        assert!(report.forced().is_empty(), "{mode:?}: {report}");
    }
}

/// `serve().http2_keep_alive(..)`: a peer that stops answering PINGs (here: one that
/// never reads a frame after the handshake) is closed after the keep-alive timeout,
/// although no idle clock would end it yet. Without the setting it stays.
#[tokio::test]
async fn h2_keep_alive_pings_find_a_dead_peer() {
    for keep_alive in [true, false] {
        let policy = clocks().idle_timeout(Some(GENEROUS)).build().unwrap();
        let mut server = Server::builder(Mode::Serve, policy);
        if keep_alive {
            server = server.configure(|serve| {
                let settings = conn_hygiene::serve::ServeSettings::builder()
                    .http2_keep_alive(CLOCK, CLOCK)
                    .build()
                    .unwrap();
                serve.settings(settings)
            });
        }
        let server = server.start().await;
        let addr = server.addr;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let client = tcp.local_addr().unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let started = Instant::now();
        // The peer answers nothing: its PING ACKs never come. It reads only to see the
        // server close (its FIN).
        if keep_alive {
            let mut frames = Vec::new();
            tokio::time::timeout(GENEROUS, tcp.read_to_end(&mut frames))
                .await
                .expect("the server closes a peer that does not answer PINGs")
                .unwrap();
            let took = started.elapsed();
            assert!(took >= CLOCK, "{took:?}");
            eprintln!("h2 keep-alive: a peer that never answers PINGs closed after {took:?}");
        } else {
            tokio::time::sleep(CLOCK * 4).await;
            assert_eq!(server_side(addr, client).await, Some(TcpState::Established));
        }
    }
}
