//! `serve()`'s settings: invalid values fail when the settings are built, naming the
//! setting, before any socket is served; on real loopback sockets the head limit gives 431, HTTP/1-only and HTTP/2-only serving,
//! and `ConnectInfo<SocketAddr>` for axum handlers.
#![cfg(all(feature = "axum", feature = "testing"))]

use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use conn_hygiene::serve::{FloodBudget, ServeSettings, ServeSettingsBuilder};
use conn_hygiene::testing::http1::Response;
use conn_hygiene::{Conn, Listener, Policy, SocketOptions};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GENEROUS: Duration = Duration::from_secs(10);

use crate::support::app::app;
use crate::support::server::{AppServe, Mode, Server};

/// A change to the settings.
type Configure = fn(ServeSettingsBuilder) -> ServeSettingsBuilder;

/// The settings `configure` makes, which must be valid.
fn settings(configure: Configure) -> ServeSettings {
    configure(ServeSettings::builder())
        .build()
        .expect("valid settings")
}

fn listener() -> Listener {
    Listener::bind("127.0.0.1:0", SocketOptions::new(), Policy::default()).unwrap()
}

/// The fixture under `serve()` configured by `configure`.
async fn start(configure: impl FnOnce(AppServe) -> AppServe + 'static) -> Server {
    Server::builder(Mode::Serve, Policy::default())
        .configure(configure)
        .start()
        .await
}

/// Sends `request` on a fresh connection and reads one HTTP/1 response within
/// `GENEROUS`; returns its status, or else what came back.
async fn raw(addr: SocketAddr, request: &[u8]) -> Result<u16, String> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer (431) and close before it read everything: ignore errors.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(GENEROUS, Response::read(&mut stream, &mut answer)).await;
    match read {
        Ok(Ok(response)) => Ok(response.status()),
        Ok(Err(error)) => Err(format!("{error}: {:?}", String::from_utf8_lossy(&answer))),
        Err(_) => Err(format!(
            "no whole answer: {:?}",
            String::from_utf8_lossy(&answer)
        )),
    }
}

/// Every invalid setting fails where the settings are built, with a `ConfigError`
/// naming it: no listener is bound, no server started.
#[test]
fn invalid_settings_fail_when_built_naming_the_setting() {
    let cases: [(Configure, &str); 13] = [
        (|s| s.max_head_bytes(100), "max_head_bytes"),
        (|s| s.http2_max_frame_size(1024), "http2_max_frame_size"),
        (
            |s| s.http2_initial_connection_window_size(u32::MAX),
            "http2_initial_connection_window_size",
        ),
        (
            |s| s.http2_initial_stream_window_size(u32::MAX),
            "http2_initial_stream_window_size",
        ),
        (
            |s| s.http2_keep_alive(Duration::ZERO, Duration::from_secs(1)),
            "http2_keep_alive",
        ),
        (|s| s.http1_only().http2_only(), "http1_only/http2_only"),
        (
            |s| s.http2_max_concurrent_streams(0),
            "http2_max_concurrent_streams",
        ),
        (
            |s| s.http2_max_pending_accept_reset_streams(0),
            "http2_max_pending_accept_reset_streams",
        ),
        (
            |s| s.http2_max_local_error_reset_streams(0),
            "http2_max_local_error_reset_streams",
        ),
        (|s| s.http2_max_send_buf_size(0), "http2_max_send_buf_size"),
        (
            |s| {
                let mut budget = FloodBudget::default();
                budget.burst = 0;
                s.http2_flood_budget(budget)
            },
            "http2_flood_budget.burst",
        ),
        (|s| s.handshake_timeout(Duration::ZERO), "handshake_timeout"),
        (|s| s.handshake_timeout(Duration::MAX), "handshake_timeout"),
    ];
    for (configure, setting) in cases {
        let error = configure(ServeSettings::builder()).build().unwrap_err();
        assert_eq!(error.field(), setting, "{error}");
        assert!(error.to_string().contains(setting), "{error}");
    }
}

/// The deprecated setters on `Serve` still fail at start, before accepting, with
/// `InvalidInput` naming the setting.
#[tokio::test]
#[allow(deprecated)]
async fn deprecated_setters_still_fail_at_start_naming_the_setting() {
    type Deprecated = fn(AppServe) -> AppServe;
    let cases: [(Deprecated, &str); 2] = [
        (|s| s.max_head_bytes(100), "max_head_bytes"),
        (|s| s.http1_only().http2_only(), "http1_only/http2_only"),
    ];
    for (configure, setting) in cases {
        let listener = listener();
        let served = tokio::time::timeout(
            GENEROUS,
            configure(conn_hygiene::serve(listener, app())).into_future(),
        )
        .await
        .expect("fails at once");
        let error = served.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
        assert!(error.to_string().contains(setting), "{error}");
    }
}

#[tokio::test]
async fn a_head_over_a_configured_limit_gets_431() {
    let server = start(|s| s.settings(settings(|s| s.max_head_bytes(16 * 1024)))).await;
    let addr = server.addr;
    let within = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "h".repeat(8 * 1024)
    );
    assert_eq!(raw(addr, within.as_bytes()).await, Ok(200));
    let over = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "h".repeat(32 * 1024)
    );
    assert_eq!(raw(addr, over.as_bytes()).await, Ok(431));
}

#[tokio::test]
async fn connect_info_gives_handlers_the_peer_address() {
    let server = start(|s| s.connect_info(true)).await;
    let addr = server.addr;
    answers_the_peer_address(addr, "/peer").await;
}

/// Without `connect_info` a `ConnectInfo` handler fails as under `axum::serve`
/// without `into_make_service_with_connect_info` (a 500), while the `Conn` extractor
/// gives the address at no cost, over both protocols.
#[tokio::test]
async fn without_connect_info_the_conn_extractor_gives_the_peer_address() {
    let server = start(|s| s).await;
    let addr = server.addr;
    let (_, status, _) = h1_get(addr, "/peer").await;
    assert_eq!(status, 500);
    answers_the_peer_address(addr, "/conn").await;
}

/// Under `serve()` a handler, and a service's own `call` (where middleware such as
/// `RequestLimitsLayer` looks), find `Conn::current()`, over HTTP/1 (the connection's
/// task) and HTTP/2 (each stream's task) alike.
#[tokio::test]
async fn conn_current_is_found_in_calls_and_handlers() {
    let server = start(|s| s).await;
    answers_the_peer_address(server.addr, "/current").await;

    let listener = listener();
    let addr = listener.local_addr().unwrap();
    let in_call = tower::service_fn(|_: conn_hygiene::serve::ServeRequest| {
        let found = Conn::current().map(|conn| conn.peer_addr().to_string());
        async move { Ok::<_, std::convert::Infallible>(http::Response::new(found.unwrap_or_default())) }
    });
    tokio::spawn(conn_hygiene::serve(listener, in_call).into_future());
    answers_the_peer_address(addr, "/").await;
}

/// Under `axum::serve` with the layer, an HTTP/2 handler (run in a task of the stream's
/// own) finds its connection with `Conn::current()` as well; an HTTP/1 one has none
/// there (no connection task of the crate's), and finds it as an extractor.
#[tokio::test]
async fn conn_current_under_axum_serve_is_found_by_http2_handlers() {
    let server = Server::start(Mode::AxumLayer, Policy::default()).await;
    let addr = server.addr;
    let (local, body) = h2_get(addr, "/current").await.expect("HTTP/2 served");
    assert_eq!(body, local.to_string(), "HTTP/2 /current");
    let (local, status, body) = h1_get(addr, "/conn").await;
    assert_eq!((status, body), (200, local.to_string()), "HTTP/1 /conn");
}

/// `GET path` answers 200 with the client's own address, over HTTP/1 and over HTTP/2
/// (prior knowledge).
async fn answers_the_peer_address(addr: SocketAddr, path: &str) {
    let (local, status, body) = h1_get(addr, path).await;
    assert_eq!((status, body), (200, local.to_string()), "HTTP/1 {path}");
    let (local, body) = h2_get(addr, path).await.expect("HTTP/2 served");
    assert_eq!(body, local.to_string(), "HTTP/2 {path}");
}

/// A GET over HTTP/1 on a fresh connection: the client's address, the status and the
/// body.
async fn h1_get(addr: SocketAddr, path: &str) -> (SocketAddr, u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(GENEROUS, stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let response = Response::parse_to_eof(&answer).expect("a whole answer");
    let body = String::from_utf8_lossy(response.body()).into_owned();
    (local, response.status(), body)
}

/// A GET over HTTP/2 with prior knowledge; the client's address and the body.
async fn h2_get(addr: SocketAddr, path: &str) -> Result<(SocketAddr, String), hyper::Error> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(format!("http://localhost{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(GENEROUS, sender.send_request(request))
        .await
        .expect("an answer or an error")?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok((local, String::from_utf8(body.to_vec()).unwrap()))
}

#[tokio::test]
async fn http1_only_refuses_http2_and_serves_http1() {
    let server = start(|s| s.settings(settings(|s| s.http1_only()))).await;
    let addr = server.addr;
    assert!(h2_get(addr, "/").await.is_err());
    assert_eq!(
        raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await,
        Ok(200)
    );
}

#[tokio::test]
async fn http2_only_refuses_http1_and_serves_http2() {
    let server = start(|s| {
        s.settings(settings(|s| {
            s.http2_only().http2_max_concurrent_streams(10)
        }))
    })
    .await;
    let addr = server.addr;
    let answer = raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.is_err(), "{answer:?}");
    let (_, body) = h2_get(addr, "/").await.expect("HTTP/2 served");
    assert_eq!(body, "ok");
}

/// A GET over HTTP/2 with one `size`-byte header; the status, or the error.
async fn h2_big_header(addr: SocketAddr, size: usize) -> Result<u16, hyper::Error> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get("http://localhost/")
        .header("x-big", "h".repeat(size))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(GENEROUS, sender.send_request(request))
        .await
        .expect("an answer or an error")?;
    Ok(response.status().as_u16())
}

#[tokio::test]
async fn http2_header_lists_follow_their_own_limit() {
    // hyper's default, 16 KiB: a 32 KiB header is refused (431 or a stream error).
    let server = start(|s| s).await;
    let addr = server.addr;
    let refused = h2_big_header(addr, 32 * 1024).await;
    assert!(!matches!(refused, Ok(200)), "{refused:?}");
    let server = start(|s| s.settings(settings(|s| s.http2_max_header_list_size(64 * 1024)))).await;
    let addr = server.addr;
    assert_eq!(h2_big_header(addr, 32 * 1024).await.unwrap(), 200);
}
