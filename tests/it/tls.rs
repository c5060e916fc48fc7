//! TLS over `HygieneStream` on real loopback sockets, judged by the kernel's view.
//!
//! The TLS layer (tokio-rustls) wraps the crate's stream, so the handshake reads
//! through the stream's clocks: a silent client meets the first-byte clock, a client
//! that stalls mid-handshake meets the idle clock, and a client that leaves
//! mid-handshake is released at once (Rocket issue 2118: unbounded TLS handshakes
//! piled up CLOSE_WAIT sockets).
#![cfg(feature = "testing")]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conn_hygiene::census::{Census, TcpState};
use conn_hygiene::testing::{Side, wait_for_census};
use conn_hygiene::{
    Conn, HalfClose, HygieneStream, Listener, Policy, SocketOptions, conn::Abandon, conn::PeerGone,
    policy::PolicyBuilder, stream::TcpIo, supervise::Abandoned,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const GENEROUS: Duration = Duration::from_secs(10);

/// A self-signed certificate for `localhost`, the server config that presents it and
/// a client config that trusts it.
fn tls_configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("generate a self-signed certificate");
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let server = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.into())
        .expect("server config");
    let mut roots = RootCertStore::empty();
    roots.add(cert).expect("trust the certificate");
    let client = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// The first `len` bytes of a real ClientHello, captured from a rustls client writing
/// into memory.
fn partial_client_hello(client: Arc<ClientConfig>, len: usize) -> Vec<u8> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut session = ClientConnection::new(client, name).expect("client session");
    let mut hello = Vec::new();
    while session.wants_write() {
        session
            .write_tls(&mut hello)
            .expect("write the ClientHello");
    }
    // A TLS handshake record, with more bytes announced than we send.
    assert_eq!(hello[0], 0x16, "handshake record");
    assert!(hello.len() > len, "ClientHello is {} bytes", hello.len());
    hello.truncate(len);
    hello
}

fn tls_policy(configure: impl FnOnce(PolicyBuilder) -> PolicyBuilder) -> Policy {
    configure(Policy::builder()).build().expect("valid policy")
}

fn listener(policy: Policy) -> (Listener, SocketAddr) {
    let listener = Listener::bind("127.0.0.1:0", SocketOptions::new(), policy).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn server_side_gone(c: &Census) -> bool {
    // Only the listening socket is left on the server's side of the port.
    c.total() == c.get(TcpState::Listen)
}

/// Waits until the server's side of `port` holds only the listener, and returns how
/// long after `since` that was.
async fn released_after(port: u16, since: Instant) -> Duration {
    match wait_for_census(port, Side::Local, GENEROUS, server_side_gone).await {
        Ok(_) => since.elapsed(),
        Err(census) => panic!("server socket still there after {GENEROUS:?}:\n{census}"),
    }
}

type HandshakeTask = JoinHandle<Result<io::Result<TlsStream<HygieneStream<TcpIo>>>, Abandoned>>;

/// Accepts one connection and runs only the TLS handshake over it, supervised.
async fn accept_handshake(listener: &mut Listener, acceptor: TlsAcceptor) -> (Conn, HandshakeTask) {
    let (stream, _) = listener.accept().await.unwrap();
    let conn = stream.conn().clone();
    let task = tokio::spawn(conn.supervise(async move { acceptor.accept(stream).await }));
    (conn, task)
}

#[tokio::test]
async fn tls_client_gets_its_answer_through_the_hygiene_stream() {
    let (server_config, client_config) = tls_configs();
    let (mut listener, addr) = listener(Policy::default());
    let acceptor = TlsAcceptor::from(server_config);

    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let conn = stream.conn().clone();
        let served = conn
            .supervise(async move {
                // TLS over the hygiene stream: the handshake reads through its clocks.
                let tls = acceptor.accept(stream).await?;
                let mut tls = BufReader::new(tls);
                let mut line = String::new();
                tls.read_line(&mut line).await?;
                let answer = format!("hello, {}\n", line.trim_end());
                tls.get_mut().write_all(answer.as_bytes()).await?;
                // close_notify and our FIN; dropping the stream then lingers on the TCP
                // socket underneath until the client's FIN.
                tls.get_mut().shutdown().await?;
                io::Result::Ok(line)
            })
            .await;
        (conn, served)
    });

    let connector = TlsConnector::from(client_config);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(b"tls over hygiene\n").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer)
        .await
        .expect("answer ends with close_notify");
    assert_eq!(answer, "hello, tls over hygiene\n");
    tls.shutdown().await.unwrap();
    drop(tls);

    let (conn, served) = tokio::time::timeout(GENEROUS, server)
        .await
        .unwrap()
        .unwrap();
    let line = served
        .expect("not abandoned")
        .expect("served without error");
    assert_eq!(line, "tls over hygiene\n");
    tokio::time::timeout(GENEROUS, conn.closed())
        .await
        .expect("the lingering close ends");
    assert_eq!(conn.abandoned(), None);
    assert_eq!(
        conn.peer_gone(),
        Some(PeerGone::Fin),
        "linger saw the peer's FIN"
    );
    let (read, written) = conn.bytes();
    assert!(
        read > 17 && written > 24,
        "ciphertext counted: {read} in, {written} out"
    );
    // A graceful close on both ends: nothing stuck, no reset needed.
    let census = wait_for_census(addr.port(), Side::Either, GENEROUS, |c| {
        c.get(TcpState::CloseWait) == 0 && c.get(TcpState::Established) == 0
    })
    .await
    .expect("both ends closed");
    assert_eq!(census.get(TcpState::CloseWait), 0);
}

#[tokio::test]
async fn silent_client_is_closed_by_the_first_byte_clock() {
    let first_byte = Duration::from_millis(300);
    let (server_config, _) = tls_configs();
    let (mut listener, addr) = listener(tls_policy(|b| b.first_byte_timeout(Some(first_byte))));
    let since = Instant::now();
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (conn, task) = accept_handshake(&mut listener, TlsAcceptor::from(server_config)).await;

    let handshake = tokio::time::timeout(GENEROUS, task).await.unwrap().unwrap();
    let err = handshake
        .expect("the stream's clock ends the handshake, not the supervisor")
        .expect_err("no handshake without a ClientHello");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert_eq!(conn.abandoned(), Some(Abandon::FirstByteTimeout));

    let released = released_after(addr.port(), since).await;
    println!(
        "silent TLS client: server socket released {released:?} after connect (first_byte_timeout {first_byte:?})"
    );
    assert!(released >= first_byte, "released after {released:?}");
    // The abandoned close is a reset.
    let mut rest = Vec::new();
    let read = client.read_to_end(&mut rest).await;
    assert!(
        matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "client should see a reset, got {read:?}"
    );
}

#[tokio::test]
async fn handshake_stalled_mid_client_hello_is_closed_by_the_idle_clock() {
    let idle = Duration::from_millis(400);
    let (server_config, client_config) = tls_configs();
    // The first-byte clock is long: only the idle clock can end this handshake.
    let (mut listener, addr) = listener(tls_policy(|b| {
        b.first_byte_timeout(Some(GENEROUS))
            .idle_timeout(Some(idle))
            .half_close(HalfClose::AllowFor(idle))
    }));
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (conn, task) = accept_handshake(&mut listener, TlsAcceptor::from(server_config)).await;
    client
        .write_all(&partial_client_hello(client_config, 50))
        .await
        .unwrap();
    let since = Instant::now();

    let handshake = tokio::time::timeout(GENEROUS, task).await.unwrap().unwrap();
    let err = handshake
        .expect("the stream's clock ends the handshake, not the supervisor")
        .expect_err("no handshake from half a ClientHello");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert_eq!(conn.abandoned(), Some(Abandon::IdleTimeout));
    assert_eq!(conn.bytes().0, 50, "the partial ClientHello was read");

    let released = released_after(addr.port(), since).await;
    println!(
        "stalled TLS handshake: server socket released {released:?} after the last byte (idle_timeout {idle:?})"
    );
    assert!(released >= idle, "released after {released:?}");
    let mut rest = Vec::new();
    let read = client.read_to_end(&mut rest).await;
    assert!(
        matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "client should see a reset, got {read:?}"
    );
}

#[tokio::test]
async fn fin_mid_handshake_is_released_at_once_under_abort() {
    let (server_config, client_config) = tls_configs();
    let (mut listener, addr) = listener(tls_policy(|b| b.half_close(HalfClose::Abort)));
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (conn, task) = accept_handshake(&mut listener, TlsAcceptor::from(server_config)).await;
    client
        .write_all(&partial_client_hello(client_config, 50))
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    let since = Instant::now();

    let handshake = tokio::time::timeout(GENEROUS, task).await.unwrap().unwrap();
    // Either the handshake read the EOF (rustls: unexpected end of the handshake) or the
    // supervisor saw the FIN first and dropped it: both abandon with the peer's FIN.
    match handshake {
        Ok(Ok(_)) => panic!("a handshake completed from half a ClientHello"),
        Ok(Err(e)) => println!("FIN mid-handshake: handshake failed: {e}"),
        Err(abandoned) => {
            assert_eq!(abandoned.reason(), Abandon::PeerFin);
            println!("FIN mid-handshake: supervisor abandoned it: {abandoned}");
        }
    }
    assert_eq!(conn.abandoned(), Some(Abandon::PeerFin));
    assert_eq!(conn.peer_gone(), Some(PeerGone::Fin));

    let released = released_after(addr.port(), since).await;
    println!("FIN mid-handshake: server socket released {released:?} after the FIN");
    // No CLOSE_WAIT, and the reset leaves no TIME_WAIT on either side.
    let census = wait_for_census(addr.port(), Side::Either, GENEROUS, |c| {
        c.get(TcpState::CloseWait) == 0 && c.get(TcpState::TimeWait) == 0
    })
    .await
    .expect("no CLOSE_WAIT or TIME_WAIT left");
    assert_eq!(census.get(TcpState::CloseWait), 0);
    assert!(released < GENEROUS / 2, "released after {released:?}");
}

/// The stream's clocks see ciphertext bytes: a client that trickles its ClientHello a
/// byte at a time keeps the idle clock from ever firing, and the first-byte clock has
/// stopped at the first byte. Only a deadline around the whole handshake bounds it.
/// This test pins that behaviour down, so that a change to it is noticed.
#[tokio::test]
async fn trickled_handshake_outlives_the_idle_clock_so_bound_it_with_a_deadline() {
    let idle = Duration::from_millis(300);
    let drip = Duration::from_millis(100);
    let deadline = Duration::from_millis(1200);
    let (server_config, client_config) = tls_configs();
    let (mut listener, addr) = listener(tls_policy(|b| {
        b.first_byte_timeout(Some(idle))
            .idle_timeout(Some(idle))
            .half_close(HalfClose::AllowFor(idle))
    }));
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let conn = stream.conn().clone();
    let acceptor = TlsAcceptor::from(server_config);
    let mut server =
        tokio::spawn(conn.supervise(async move {
            tokio::time::timeout(deadline, acceptor.accept(stream)).await
        }));
    let hello = partial_client_hello(client_config, 100);
    let mut bytes = hello.iter();
    let server = loop {
        tokio::select! {
            result = &mut server => break result,
            () = tokio::time::sleep(drip) => {
                let byte = bytes.next().expect("ClientHello lasts longer than the deadline");
                client.write_all(&[*byte]).await.unwrap();
            }
        }
    };
    let handshake = server.unwrap().expect("not abandoned by the supervisor");
    assert!(
        handshake.is_err(),
        "the handshake deadline fired, not a stream clock: {handshake:?}"
    );
    assert_eq!(
        conn.abandoned(),
        None,
        "no stream clock fired in {deadline:?}"
    );
    let read = conn.bytes().0;
    assert!(read >= 8, "the client trickled {read} bytes");
    // The stream was dropped without being abandoned: a graceful close (FIN).
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    drop(client);
    let census = wait_for_census(addr.port(), Side::Either, GENEROUS, |c| {
        c.get(TcpState::CloseWait) == 0 && c.get(TcpState::Established) == 0
    })
    .await
    .expect("both ends closed");
    assert_eq!(census.get(TcpState::CloseWait), 0);
}
