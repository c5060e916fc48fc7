//! HTTPS through `serve()` with an acceptor (tokio-rustls) on real loopback sockets:
//! HTTP/1.1 and HTTP/2 chosen by ALPN, a stuck handler released on the client's FIN,
//! and the drain deadline and its report with a TLS connection open. Handlers also
//! see the peer's address as `ConnectInfo<SocketAddr>`.
#![cfg(feature = "axum")]

use std::time::{Duration, Instant};

use bytes::Bytes;
use conn_hygiene::serve::ServeSettings;
use conn_hygiene::{HalfClose, Listener, Policy};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

use crate::support::refusal;
use crate::support::server::{Mode, Server};
use refusal::assert_reset_without_an_answer;

/// The bound on anything that should happen "soon": only a broken server reaches it.
const GENEROUS: Duration = Duration::from_secs(10);

/// How long `GET /slow` takes to answer.
const SLOW: Duration = Duration::from_millis(2500);

/// The fixture under `serve()` over TLS, with `ConnectInfo<SocketAddr>`, `drain` as
/// the drain deadline and `handshake` as the handshake timeout.
async fn start_with(
    policy: Policy,
    drain: Duration,
    handshake: Duration,
    tune: impl FnOnce(Listener) -> Listener + 'static,
) -> Server {
    Server::builder(Mode::Serve, policy)
        .tune(tune)
        .tls()
        .configure(move |serve| {
            let settings = ServeSettings::builder()
                .handshake_timeout(handshake)
                .build()
                .unwrap();
            // The fixture's drain overrides each test's policy (a policy cannot be
            // rebuilt with another field): the one deprecated override kept.
            #[allow(deprecated)]
            serve
                .connect_info(true)
                .settings(settings)
                .drain_timeout(drain)
        })
        .start()
        .await
}

async fn start(policy: Policy, drain: Duration) -> Server {
    start_with(policy, drain, GENEROUS, |listener| listener).await
}

fn request(path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("https://localhost{path}"))
        .body(Empty::new())
        .unwrap()
}

async fn body_of(response: http::Response<hyper::body::Incoming>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn https_http1_by_alpn_answers_with_the_peer_address() {
    let server = start(Policy::default(), GENEROUS).await;
    let tls = server.connect_tls(b"http/1.1").await;
    let local = tls.get_ref().0.local_addr().unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request("/peer")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_11);
    assert_eq!(body_of(response).await, local.to_string());
    drop(sender);
    let report = server.shutdown().await;
    assert!(report.forced().is_empty(), "{report}");
}

#[tokio::test]
async fn https_http2_by_alpn_answers_with_the_peer_address() {
    let server = start(Policy::default(), GENEROUS).await;
    let tls = server.connect_tls(b"h2").await;
    let local = tls.get_ref().0.local_addr().unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    for _ in 0..3 {
        let response = sender.send_request(request("/peer")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(body_of(response).await, local.to_string());
    }
    drop(sender);
    let report = server.shutdown().await;
    assert!(report.forced().is_empty(), "{report}");
}

#[tokio::test]
async fn a_stuck_https_handler_is_released_on_the_clients_fin() {
    let policy = Policy::builder()
        .half_close(HalfClose::Abort)
        .build()
        .unwrap();
    let server = start(policy, GENEROUS).await;
    let mut tls = server.connect_tls(b"http/1.1").await;
    tls.write_all(b"GET /stuck HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    server.wait_stuck(1).await;
    // A FIN on the TCP socket, without TLS's close_notify: a client that just left.
    let fin = Instant::now();
    tls.get_mut().0.shutdown().await.unwrap();
    server.wait_stuck(0).await;
    eprintln!(
        "stuck HTTPS handler released {:?} after the FIN",
        fin.elapsed()
    );
    let report = server.shutdown().await;
    assert!(report.forced().is_empty(), "{report}");
}

#[tokio::test]
async fn the_drain_deadline_resets_an_open_https_connection_and_reports_it() {
    const DRAIN: Duration = Duration::from_millis(500);
    let server = start(Policy::default(), DRAIN).await;
    let tls = server.connect_tls(b"h2").await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let client = tokio::spawn(connection);
    let pending = tokio::spawn(async move { sender.send_request(request("/stuck")).await });
    server.wait_stuck(1).await;
    let state = server.state.clone();
    let started = Instant::now();
    let report = server.shutdown().await;
    let elapsed = started.elapsed();
    eprintln!("shutdown: {report} ({elapsed:?})");
    assert!(
        elapsed >= DRAIN && elapsed < DRAIN + GENEROUS,
        "{elapsed:?}"
    );
    assert_eq!(report.forced().len(), 1, "{report}");
    assert_eq!(report.forced()[0].held_by(), "busy handler", "{report}");
    assert_eq!(state.stuck(), 0, "the handler was dropped");
    // The client sees its connection end.
    let answer = tokio::time::timeout(GENEROUS, pending)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.is_err(), "{answer:?}");
    let _ = tokio::time::timeout(GENEROUS, client).await.unwrap();
}

/// A client trickling its ClientHello a byte at a time keeps the idle clock alive; the
/// handshake deadline closes it.
#[tokio::test]
async fn the_handshake_deadline_closes_a_trickling_client() {
    const HANDSHAKE: Duration = Duration::from_millis(500);
    let server = start_with(Policy::default(), GENEROUS, HANDSHAKE, |listener| listener).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    // A TLS handshake record header announcing more bytes than will come soon.
    let mut hello = vec![0x16, 0x03, 0x01, 0x02, 0x00];
    hello.extend(std::iter::repeat_n(0u8, 64));
    let mut closed = false;
    for byte in hello {
        if tcp.write_all(&[byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0; 64];
        match tokio::time::timeout(
            Duration::from_millis(1),
            tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    eprintln!("trickling handshake closed after {elapsed:?}");
    assert!(closed, "still open after {elapsed:?}");
    assert!(
        elapsed >= HANDSHAKE - Duration::from_millis(100),
        "{elapsed:?}"
    );
    assert!(elapsed < HANDSHAKE + Duration::from_secs(3), "{elapsed:?}");
    let report = server.shutdown().await;
    assert!(report.forced().is_empty(), "{report}");
    // Reset, and counted by its reason.
    assert_eq!(
        report
            .cuts()
            .get(&conn_hygiene::conn::Abandon::HandshakeTimeout),
        Some(&1),
        "{report}"
    );
}

/// A client over the per-client cap of a TLS listener is reset: a plaintext HTTP 503
/// would be garbage to a TLS client.
#[tokio::test]
async fn a_tls_client_over_the_per_ip_cap_is_reset_without_plaintext() {
    let server = start_with(Policy::default(), GENEROUS, GENEROUS, |listener| {
        listener.max_connections_per_ip(std::num::NonZeroUsize::new(1).unwrap())
    })
    .await;
    let _first = server.connect_tls(b"http/1.1").await;
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    // What a TLS client sends first: a handshake record.
    let hello = [0x16, 0x03, 0x01, 0x00, 0x05];
    assert_reset_without_an_answer(&mut second, &hello, GENEROUS, "a TLS client").await;
}

/// An HTTP/2 client over `tls` that PINGs every 200 ms, streams or not (gRPC's
/// keep-alive while idle), and its connection task.
async fn pinging_http2_client(
    tls: TlsStream<TcpStream>,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    JoinHandle<hyper::Result<()>>,
) {
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(200))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    (sender, tokio::spawn(connection))
}

/// Under TLS the stream cannot see HTTP/2 frames, so it judges idleness by requests:
/// a connection that PINGs every 200 ms with no stream open is told to go away (GOAWAY)
/// at its idle timeout (not reset): the kernel's view of the server's port has no live
/// server socket within a second more.
#[cfg(feature = "testing")]
#[tokio::test]
async fn a_pinging_idle_https_http2_connection_gets_goaway_at_its_idle_timeout() {
    use conn_hygiene::census::TcpState;
    use conn_hygiene::testing::{Side, wait_for_census};

    const IDLE: Duration = Duration::from_secs(1);
    let policy = Policy::builder().idle_timeout(Some(IDLE)).build().unwrap();
    let server = start(policy, GENEROUS).await;
    let tls = server.connect_tls(b"h2").await;
    let (mut sender, connection) = pinging_http2_client(tls).await;
    // One request: the connection is known to be HTTP/2 from it on.
    let response = sender.send_request(request("/peer")).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    body_of(response).await;
    let idle = Instant::now();
    let census = wait_for_census(server.addr.port(), Side::Local, GENEROUS, |c| {
        c.total() == c.get(TcpState::Listen) + c.get(TcpState::TimeWait)
    })
    .await;
    let elapsed = idle.elapsed();
    eprintln!("PINGing idle HTTPS/2 connection closed after {elapsed:?}: {census:?}");
    census.expect("the server closes the idle connection");
    assert!(elapsed >= IDLE - Duration::from_millis(100), "{elapsed:?}");
    // GOAWAY, the PING round trip and the close: well within another second.
    assert!(elapsed < IDLE + Duration::from_secs(2), "{elapsed:?}");
    // The client's connection ended on the GOAWAY (NO_ERROR), not on a reset, which
    // would be an error. (hyper's client answers the GOAWAY and closes at once, so
    // the server's second GOAWAY meets a closed socket and the client's kernel resets:
    // TIME_WAIT proves nothing here.)
    let ended = tokio::time::timeout(GENEROUS, connection)
        .await
        .unwrap()
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    let report = server.shutdown().await;
    assert!(report.forced().is_empty(), "{report}");
}

/// The control: a request in flight longer than the idle timeout (a slow handler) on a
/// PINGing HTTPS/2 connection is answered, and the connection is not cut under it.
#[tokio::test]
async fn a_slow_https_http2_request_outlives_the_idle_timeout() {
    const IDLE: Duration = Duration::from_secs(1);
    let policy = Policy::builder().idle_timeout(Some(IDLE)).build().unwrap();
    let server = start(policy, GENEROUS).await;
    let tls = server.connect_tls(b"h2").await;
    let (mut sender, connection) = pinging_http2_client(tls).await;
    let response = sender.send_request(request("/peer")).await.unwrap();
    body_of(response).await;
    // Idle most of a timeout, then a request that takes 2.5 timeouts.
    tokio::time::sleep(IDLE * 3 / 4).await;
    let started = Instant::now();
    let response = sender
        .send_request(request(&format!("/slow/{}", SLOW.as_millis())))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(body_of(response).await, "slept");
    assert!(started.elapsed() >= SLOW, "{:?}", started.elapsed());
    assert!(!connection.is_finished(), "the connection was cut");
    // Idle from the end of the request: then closed, cleanly.
    let ended = tokio::time::timeout(GENEROUS, connection)
        .await
        .unwrap()
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    let report = server.shutdown().await;
    assert!(report.forced().is_empty(), "{report}");
}
