//! The PROXY protocol at the listener, on real loopback sockets, with headers written
//! by the test: the client a header names is the peer under the three serving modes,
//! over HTTP/1 and HTTP/2, the per-client cap counts it, rejections are counted, a connection without a valid header is reset (at once
//! when malformed, at the deadline when silent, as the kernel reports), and silent
//! connections do not hold up the accept loop. Through real HAProxy: `tests/deploy.rs`.
#![cfg(all(feature = "axum", feature = "testing", target_os = "linux"))]

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use conn_hygiene::listener::ProxyProtocol;
use conn_hygiene::testing::{socket_state, wait_for_socket};
use conn_hygiene::{Listener, Policy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::server::{Mode, Server};

/// A bound for things that normally take milliseconds; only a failure waits it out.
const GENEROUS: Duration = Duration::from_secs(5);

/// The serving modes as handlers see the peer (the shared app's `GET /ip`):
/// `serve()`'s `ConnectInfo<SocketAddr>`, and `axum::serve`'s `ConnectInfo<Conn>` with
/// `HygieneLayer` and without it (axum gives `ConnectInfo<SocketAddr>` for its own
/// listener only).
const MODES: [Mode; 3] = [Mode::Serve, Mode::AxumLayer, Mode::AxumConnectInfoAlone];

/// The shared app served in `mode` by a listener that reads PROXY headers as `proxy`
/// says.
async fn start(mode: Mode, proxy: ProxyProtocol) -> Server {
    start_tuned(mode, proxy, |listener| listener).await
}

/// [`start`], the listener changed by `tune` before the PROXY protocol is set.
async fn start_tuned(
    mode: Mode,
    proxy: ProxyProtocol,
    tune: impl FnOnce(Listener) -> Listener + 'static,
) -> Server {
    Server::builder(mode, Policy::default())
        .tune(move |listener| tune(listener).proxy_protocol(proxy).unwrap())
        .configure(|serve| serve.connect_info(true))
        .start()
        .await
}

fn v1(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        client.ip(),
        server.ip(),
        client.port(),
        server.port()
    )
    .into_bytes()
}

fn v2(command: u8, client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    ppp::v2::Builder::with_addresses(0x20 | command, ppp::v2::Protocol::Stream, (client, server))
        .build()
        .unwrap()
}

/// Connects from `source` (port chosen by the kernel).
async fn connect_from(source: IpAddr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(server).await.unwrap()
}

/// Sends `header` and `GET /ip` with `Connection: close`; the answer's status and body.
async fn get_ip(stream: &mut TcpStream, header: &[u8]) -> (u16, String) {
    let mut request = header.to_vec();
    request.extend_from_slice(b"GET /ip HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(GENEROUS, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("an answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn the_headers_client_is_the_peer_under_every_serving_mode() {
    for mode in MODES {
        let server = start(mode, ProxyProtocol::required()).await;
        let server_addr = server.addr;
        for (version, header) in [
            ("v1", v1(addr("192.0.2.7:51000"), server_addr)),
            ("v2", v2(1, addr("192.0.2.7:51000"), server_addr)),
        ] {
            let mut stream = TcpStream::connect(server_addr).await.unwrap();
            let balancer = stream.local_addr().unwrap();
            let (status, body) = get_ip(&mut stream, &header).await;
            assert_eq!(status, 200, "{mode:?} {version}");
            assert_eq!(
                body,
                format!("192.0.2.7:51000 Some({balancer})"),
                "{mode:?} {version}"
            );
        }
    }
}

#[tokio::test]
async fn a_local_health_check_keeps_the_sockets_peer() {
    let server = start(Mode::Serve, ProxyProtocol::required()).await;
    let server_addr = server.addr;
    let mut stream = TcpStream::connect(server_addr).await.unwrap();
    let peer = stream.local_addr().unwrap();
    let (status, body) = get_ip(&mut stream, &v2(0, addr("192.0.2.7:1"), server_addr)).await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("{peer} Some({peer})"));
}

#[tokio::test]
async fn the_per_client_cap_counts_the_headers_client() {
    let cap = NonZeroUsize::new(1).unwrap();
    let server = start_tuned(Mode::Serve, ProxyProtocol::required(), move |listener| {
        listener.max_connections_per_ip(cap)
    })
    .await;
    let (server_addr, registry) = (server.addr, &server.registry);
    // One client holds its slot on an open keep-alive connection.
    let mut held = TcpStream::connect(server_addr).await.unwrap();
    held.write_all(&v1(addr("192.0.2.1:1000"), server_addr))
        .await
        .unwrap();
    held.write_all(b"GET /ip HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    held.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // The same client through the same balancer is over its cap; another is not.
    let mut again = TcpStream::connect(server_addr).await.unwrap();
    let (status, _) = get_ip(&mut again, &v1(addr("192.0.2.1:1001"), server_addr)).await;
    assert_eq!(status, 503, "the second connection of 192.0.2.1");
    let mut other = TcpStream::connect(server_addr).await.unwrap();
    let (status, body) = get_ip(&mut other, &v1(addr("192.0.2.2:1000"), server_addr)).await;
    assert_eq!(status, 200, "another client behind the same balancer");
    assert!(body.starts_with("192.0.2.2:1000 "), "{body}");
    assert_eq!(registry.snapshot().refused_per_ip(), 1);
}

#[tokio::test]
async fn only_trusted_balancers_are_read_and_others_are_direct() {
    let trusted = ProxyProtocol::from_trusted(["127.0.0.9/32".parse().unwrap()]);
    let server = start(Mode::Serve, trusted).await;
    let server_addr = server.addr;
    // A direct client's header is not believed: its bytes reach HTTP, which refuses.
    let mut direct = connect_from("127.0.0.1".parse().unwrap(), server_addr).await;
    let (status, _) = get_ip(&mut direct, &v1(addr("192.0.2.7:1"), server_addr)).await;
    assert_eq!(status, 400, "a forged header from an untrusted peer");
    let mut direct = connect_from("127.0.0.1".parse().unwrap(), server_addr).await;
    let me = direct.local_addr().unwrap();
    let (status, body) = get_ip(&mut direct, b"").await;
    assert_eq!((status, body), (200, format!("{me} None")));
    let mut balancer = connect_from("127.0.0.9".parse().unwrap(), server_addr).await;
    let by = balancer.local_addr().unwrap();
    let (status, body) = get_ip(&mut balancer, &v1(addr("192.0.2.7:1"), server_addr)).await;
    assert_eq!((status, body), (200, format!("192.0.2.7:1 Some({by})")));
}

/// Reads until EOF or an error: `Ok(bytes)` on EOF, the error otherwise.
async fn read_until_closed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut got = Vec::new();
    tokio::time::timeout(GENEROUS * 4, stream.read_to_end(&mut got))
        .await
        .expect("the server closed the connection")
        .map(|_| got)
}

#[tokio::test]
async fn a_request_without_a_header_is_reset_at_once() {
    let server = start(
        Mode::Serve,
        ProxyProtocol::required().with_header_timeout(Duration::from_secs(30)),
    )
    .await;
    let (server_addr, registry) = (server.addr, &server.registry);
    for opening in [
        &b"GET /ip HTTP/1.1\r\nhost: x\r\n\r\n"[..],
        b"PROXY TCP4 192.0.2.7 127.0.0.1 1 80 extra\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x2f\x11\0\x0c",
    ] {
        let mut stream = TcpStream::connect(server_addr).await.unwrap();
        let client = stream.local_addr().unwrap();
        let started = Instant::now();
        stream.write_all(opening).await.unwrap();
        let read = read_until_closed(&mut stream).await;
        let took = started.elapsed();
        println!(
            "proxy_protocol: malformed {:?} closed after {took:?}",
            String::from_utf8_lossy(&opening[..12])
        );
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "the client sees a reset: {read:?}"
        );
        // Far below the 30 s deadline: the header was judged, not waited out.
        assert!(took < GENEROUS, "{took:?}");
        assert_eq!(
            socket_state(server_addr, client).unwrap(),
            None,
            "no socket left"
        );
    }
    assert_eq!(registry.len(), 0);
}

#[tokio::test]
async fn a_silent_connection_is_reset_at_the_deadline() {
    let deadline = Duration::from_millis(500);
    let server = start(
        Mode::Serve,
        ProxyProtocol::required().with_header_timeout(deadline),
    )
    .await;
    let server_addr = server.addr;
    let mut stream = TcpStream::connect(server_addr).await.unwrap();
    let client = stream.local_addr().unwrap();
    let started = Instant::now();
    let read = read_until_closed(&mut stream).await;
    let took = started.elapsed();
    println!("proxy_protocol: silent closed after {took:?} (deadline {deadline:?})");
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
    assert!(took >= deadline - Duration::from_millis(50), "{took:?}");
    wait_for_socket(server_addr, client, GENEROUS, |state| state.is_none())
        .await
        .expect("the server's socket is gone");
}

/// 100 connections that never send a header do not delay one that does: the headers
/// are read off the accept loop. They are not registered while they read. On two
/// worker threads, as a stress of the hand-off from header readers to the loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_hold_up_the_accept_loop() {
    let server = start(
        Mode::Serve,
        ProxyProtocol::required().with_header_timeout(Duration::from_secs(30)),
    )
    .await;
    let (server_addr, registry) = (server.addr, &server.registry);
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(server_addr).await.unwrap());
    }
    // The accept loop has taken them all before the good one connects; reading their
    // header, they are not registered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(registry.len(), 0);
    let started = Instant::now();
    let mut good = TcpStream::connect(server_addr).await.unwrap();
    let (status, body) = get_ip(&mut good, &v1(addr("192.0.2.7:1"), server_addr)).await;
    let took = started.elapsed();
    println!("proxy_protocol: a good connection behind 100 silent ones answered in {took:?}");
    assert_eq!(status, 200);
    assert!(body.starts_with("192.0.2.7:1 "), "{body}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(
        registry.len() <= 1,
        "only the answered connection is registered"
    );
    // The silent ones are still open, waiting for their header.
    let mut byte = [0u8; 1];
    for stream in &mut silent {
        assert!(stream.try_read(&mut byte).is_err(), "still open and quiet");
    }
}

/// Connections reading their header hold descriptors: they count against the
/// connection cap, and a new one waits in the backlog until one of them is done.
#[tokio::test]
async fn connections_reading_their_header_count_against_the_cap() {
    let deadline = Duration::from_millis(500);
    let cap = NonZeroUsize::new(2).unwrap();
    let proxy = ProxyProtocol::required().with_header_timeout(deadline);
    let server = start_tuned(Mode::Serve, proxy, move |listener| {
        listener.max_connections(cap)
    })
    .await;
    let server_addr = server.addr;
    let _silent = [
        TcpStream::connect(server_addr).await.unwrap(),
        TcpStream::connect(server_addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut good = TcpStream::connect(server_addr).await.unwrap();
    let (status, _) = get_ip(&mut good, &v1(addr("192.0.2.7:1"), server_addr)).await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert!(
        took >= deadline - Duration::from_millis(200),
        "accepted before a slot was free: {took:?}"
    );
}

#[test]
fn a_zero_header_deadline_fails_at_build_with_its_name() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let listener = Listener::bind_with_defaults("127.0.0.1:0").unwrap();
    let error = listener
        .proxy_protocol(ProxyProtocol::required().with_header_timeout(Duration::ZERO))
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("header_timeout"), "{error}");
}

/// Each connection closed without a valid header counts once, by reason.
#[cfg(feature = "metrics")]
#[test]
fn rejected_headers_are_counted_by_reason() {
    use crate::support::metrics::{counter, recorded};

    let metrics = recorded(async {
        let deadline = Duration::from_millis(300);
        let server = start(
            Mode::Serve,
            ProxyProtocol::required().with_header_timeout(deadline),
        )
        .await;
        let server_addr = server.addr;
        let mut malformed = TcpStream::connect(server_addr).await.unwrap();
        malformed
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut silent = TcpStream::connect(server_addr).await.unwrap();
        drop(TcpStream::connect(server_addr).await.unwrap());
        assert!(read_until_closed(&mut malformed).await.is_err());
        assert!(read_until_closed(&mut silent).await.is_err());
    });
    let count = |reason| {
        counter(
            &metrics,
            "conn_hygiene_proxy_header_rejected_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(count("malformed"), 1);
    assert_eq!(count("silent"), 1);
    assert_eq!(count("closed"), 1);
}

/// HTTP/2 with prior knowledge after the header: the header is read before the
/// protocol is told, and the handler sees the header's client under every mode.
#[tokio::test]
async fn http2_after_the_header_sees_the_headers_client() {
    use http_body_util::{BodyExt, Empty};
    use hyper::client::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    for mode in MODES {
        let server = start(mode, ProxyProtocol::required()).await;
        let server_addr = server.addr;
        let mut stream = TcpStream::connect(server_addr).await.unwrap();
        let balancer = stream.local_addr().unwrap();
        stream
            .write_all(&v2(1, addr("192.0.2.7:51000"), server_addr))
            .await
            .unwrap();
        let (mut sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = http::Request::get(format!("http://{server_addr}/ip"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = tokio::time::timeout(GENEROUS, sender.send_request(request))
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(response.status(), 200, "{mode:?}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("192.0.2.7:51000 Some({balancer})"),
            "{mode:?}"
        );
    }
}
