//! HygieneStream on real loopback sockets, judged by the kernel's view (Linux only).
#![cfg(all(feature = "testing", target_os = "linux"))]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use conn_hygiene::census::TcpState;
use conn_hygiene::testing::{Side, port_census, wait_for_census};
use conn_hygiene::{HalfClose, Listener, Policy, SocketOptions, conn::Abandon, conn::PeerGone};
use procfs::FromRead;
use procfs::process::Stat;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GENEROUS: Duration = Duration::from_secs(10);

fn policy(half_close: HalfClose) -> Policy {
    Policy::builder().half_close(half_close).build().unwrap()
}

async fn listener(policy: Policy) -> (Listener, SocketAddr) {
    let listener = Listener::bind("127.0.0.1:0", SocketOptions::new(), policy).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn server_side_gone(c: &conn_hygiene::census::Census) -> bool {
    // Only the listening socket is left on the server's side of the port.
    c.total() == c.get(TcpState::Listen)
}

/// A server task that never reads: the peer's FIN must still end it within the grace.
async fn never_reading_server_sees_fin(unread: usize) {
    let grace = Duration::from_millis(300);
    let (mut listener, addr) = listener(policy(HalfClose::AllowFor(grace))).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let conn = stream.conn().clone();
    let task = tokio::spawn(conn.supervise(async move {
        let _held = stream;
        std::future::pending::<()>().await
    }));
    client.write_all(&vec![b'x'; unread]).await.unwrap();
    client.shutdown().await.unwrap();

    // Within the grace the socket sits in CLOSE_WAIT (the peer may still read)...
    let census = wait_for_census(addr.port(), Side::Local, GENEROUS, |c| {
        c.get(TcpState::CloseWait) == 1
    })
    .await
    .expect("server socket reaches CLOSE_WAIT");
    assert_eq!(census.get(TcpState::CloseWait), 1);
    // ...and after it the connection is abandoned and the socket is gone.
    let result = tokio::time::timeout(GENEROUS, task).await.unwrap().unwrap();
    assert_eq!(result.unwrap_err().reason(), Abandon::HalfCloseGrace);
    wait_for_census(addr.port(), Side::Local, GENEROUS, server_side_gone)
        .await
        .expect("server socket released after the grace");
    assert_eq!(conn.peer_gone(), Some(PeerGone::Fin));
    // The abandoned close is a reset: the client's next read says so.
    let mut rest = Vec::new();
    let read = client.read_to_end(&mut rest).await;
    assert!(
        matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "client should see a reset, got {read:?}"
    );
}

#[tokio::test]
async fn fin_to_a_server_that_never_reads_is_released_after_the_grace() {
    never_reading_server_sees_fin(5).await;
}

#[tokio::test]
async fn fin_behind_64_kib_unread_is_released_after_the_grace() {
    never_reading_server_sees_fin(64 * 1024).await;
}

#[tokio::test]
async fn abort_policy_releases_at_once_and_leaves_no_time_wait() {
    let (mut listener, addr) = listener(policy(HalfClose::Abort)).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let conn = stream.conn().clone();
    let task = tokio::spawn(conn.supervise(async move {
        let _held = stream;
        std::future::pending::<()>().await
    }));
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    client.shutdown().await.unwrap();
    let result = tokio::time::timeout(GENEROUS, task).await.unwrap().unwrap();
    assert_eq!(result.unwrap_err().reason(), Abandon::PeerFin);
    let census = wait_for_census(addr.port(), Side::Either, GENEROUS, |c| {
        c.total() == c.get(TcpState::Listen)
    })
    .await
    .expect("no state left on either side");
    assert_eq!(census.get(TcpState::TimeWait), 0);
}

#[tokio::test]
async fn rst_with_unread_data_is_reported_as_reset() {
    let (mut listener, addr) = listener(policy(HalfClose::Allow)).await;
    let client = TcpStream::connect(addr).await.unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let conn = stream.conn().clone();
    let task = tokio::spawn(conn.supervise(async move {
        let _held = stream;
        std::future::pending::<()>().await
    }));
    let mut client = client;
    client.write_all(&[b'y'; 4096]).await.unwrap();
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    let gone = tokio::time::timeout(GENEROUS, conn.peer_closed())
        .await
        .unwrap();
    assert_eq!(gone, PeerGone::Reset);
    let result = tokio::time::timeout(GENEROUS, task).await.unwrap().unwrap();
    assert_eq!(result.unwrap_err().reason(), Abandon::PeerReset);
    wait_for_census(addr.port(), Side::Local, GENEROUS, server_side_gone)
        .await
        .expect("server socket released after the reset");
}

#[tokio::test]
async fn write_stall_against_a_client_that_never_reads() {
    let policy = Policy::builder()
        .write_stall_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let (mut listener, addr) = listener(policy).await;
    let client = tiny_window_client(addr);
    let client = TcpStream::connect_std_later(client).await;
    let (mut stream, _) = listener.accept().await.unwrap();
    let chunk = vec![b'z'; 64 * 1024];
    let error = tokio::time::timeout(GENEROUS, async {
        loop {
            if let Err(e) = stream.write_all(&chunk).await {
                return e;
            }
        }
    })
    .await
    .expect("the write stall clock fires");
    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    assert!(error.to_string().contains("write_stall"), "{error}");
    assert_eq!(stream.conn().abandoned(), Some(Abandon::WriteStallTimeout));
    drop(stream);
    wait_for_census(addr.port(), Side::Local, GENEROUS, server_side_gone)
        .await
        .expect("server socket released after the write stall");
    drop(client);
}

/// A client socket with a tiny receive window that never reads.
fn tiny_window_client(addr: SocketAddr) -> socket2::Socket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket
}

trait ConnectStd {
    async fn connect_std_later(socket: socket2::Socket) -> TcpStream;
}

impl ConnectStd for TcpStream {
    async fn connect_std_later(socket: socket2::Socket) -> TcpStream {
        let std: std::net::TcpStream = socket.into();
        std.set_nonblocking(true).unwrap();
        TcpStream::from_std(std).unwrap()
    }
}

/// The server answers without reading all of the request, then closes. With a
/// lingering close the client gets the whole answer; with a plain close the unread
/// request bytes turn the close into an RST that destroys the answer in flight.
#[tokio::test]
async fn lingering_close_delivers_what_a_plain_close_destroys() {
    const ANSWER: usize = 4 * 1024 * 1024;
    async fn run(linger: bool) -> io::Result<usize> {
        let (mut listener, addr) = listener(Policy::default()).await;
        let client = tokio::spawn(async move {
            let mut client = TcpStream::connect(addr).await.unwrap();
            // More request than the server will read: it stays unread in its buffer.
            client.write_all(&vec![b'r'; 256 * 1024]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut got = Vec::new();
            let result = client.read_to_end(&mut got).await;
            result.map(|_| got.len())
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 16];
        stream.read_exact(&mut head).await.unwrap();
        stream.write_all(&vec![b'a'; ANSWER]).await.unwrap();
        if linger {
            stream.shutdown().await.unwrap();
            drop(stream);
        } else {
            drop(stream.into_inner());
        }
        client.await.unwrap()
    }
    let lingered = run(true).await;
    assert_eq!(
        lingered.unwrap(),
        ANSWER,
        "lingering close delivers everything"
    );
    let plain = run(false).await;
    eprintln!("plain close: {plain:?}");
    match plain {
        Ok(n) => assert!(n < ANSWER, "a plain close delivered all {n} bytes"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
    }
}

#[tokio::test]
async fn idle_connection_is_reset_after_the_idle_timeout() {
    let policy = Policy::builder()
        .idle_timeout(Some(Duration::from_millis(300)))
        .half_close(HalfClose::Abort)
        .build()
        .unwrap();
    let (mut listener, addr) = listener(policy).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"hi").await.unwrap();
    let (mut stream, _) = listener.accept().await.unwrap();
    let mut buf = [0u8; 2];
    stream.read_exact(&mut buf).await.unwrap();
    let error = tokio::time::timeout(GENEROUS, stream.read(&mut buf))
        .await
        .expect("idle clock fires")
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    drop(stream);
    let census = port_census(addr.port(), Side::Either).unwrap();
    assert_eq!(census.get(TcpState::TimeWait), 0, "{census}");
    wait_for_census(addr.port(), Side::Local, GENEROUS, server_side_gone)
        .await
        .expect("server socket released");
}

/// Unread data must neither look like a FIN nor make the watcher spin.
#[tokio::test]
async fn unread_data_is_not_a_fin_and_costs_no_cpu() {
    let (mut listener, addr) = listener(Policy::default()).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    client.write_all(&[b'd'; 8192]).await.unwrap();
    let conn = stream.conn().clone();
    let cpu_before = cpu_ticks();
    let waited = tokio::time::timeout(Duration::from_millis(600), conn.peer_closed()).await;
    let cpu_used = cpu_ticks() - cpu_before;
    assert!(waited.is_err(), "data without FIN was taken for {waited:?}");
    assert_eq!(conn.peer_gone(), None);
    // A spinning watcher would burn the whole 600 ms; allow 100 ms of scheduler noise.
    assert!(cpu_used < 10, "watcher used {cpu_used} ticks of CPU");
    // The FIN behind the unread data is then seen, and the data is all still there.
    client.shutdown().await.unwrap();
    let gone = tokio::time::timeout(GENEROUS, conn.peer_closed())
        .await
        .unwrap();
    assert_eq!(gone, PeerGone::Fin);
    let mut stream = stream;
    let mut all = Vec::new();
    stream.read_to_end(&mut all).await.unwrap();
    assert_eq!(
        all,
        vec![b'd'; 8192],
        "the watcher took or reordered no byte"
    );
}

/// The watcher and the reader wait on the same socket in different tasks: every
/// chunk must still wake the reader (a watcher that stole the reader's waker or
/// cleared its readiness would hang this test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_never_steals_the_readers_wakeup() {
    const ROUNDS: usize = 200;
    let (mut listener, addr) = listener(Policy::default()).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (mut stream, _) = listener.accept().await.unwrap();
    let conn = stream.conn().clone();
    let watchers: Vec<_> = (0..4)
        .map(|_| {
            let conn = conn.clone();
            tokio::spawn(async move { conn.peer_closed().await })
        })
        .collect();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < ROUNDS * 4 {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "EOF after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let mut sent = Vec::new();
    for round in 0..ROUNDS {
        let chunk = (round as u32).to_be_bytes();
        client.write_all(&chunk).await.unwrap();
        sent.extend_from_slice(&chunk);
        tokio::task::yield_now().await;
    }
    let got = tokio::time::timeout(GENEROUS, reader)
        .await
        .expect("the reader was never left without a wakeup")
        .unwrap();
    assert_eq!(got, sent);
    client.shutdown().await.unwrap();
    for watcher in watchers {
        let gone = tokio::time::timeout(GENEROUS, watcher)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(gone, PeerGone::Fin | PeerGone::LocalClose),
            "{gone:?}"
        );
    }
}

/// A waiter never keeps the socket open after the stream is dropped.
#[tokio::test]
async fn a_waiting_handle_does_not_hold_the_socket() {
    let (mut listener, addr) = listener(Policy::default()).await;
    let _client = TcpStream::connect(addr).await.unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let conn = stream.conn().clone();
    let waiter = tokio::spawn({
        let conn = conn.clone();
        async move { conn.peer_closed().await }
    });
    tokio::task::yield_now().await;
    drop(stream);
    let gone = tokio::time::timeout(GENEROUS, waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone, PeerGone::LocalClose);
    assert!(conn.is_closed());
    // A closed fd sends our FIN: the server side moves on from ESTABLISHED even though
    // the client never closes (other tests run in this process, so fd counts would race).
    wait_for_census(addr.port(), Side::Local, GENEROUS, |c| {
        c.get(TcpState::FinWait2) == 1 && c.get(TcpState::Established) == 0
    })
    .await
    .expect("the server's socket is closed");
}

fn cpu_ticks() -> u64 {
    // This thread only: the test runtime is current-thread, and other tests run
    // concurrently in this process.
    let stat = Stat::from_file("/proc/thread-self/stat").expect("read /proc/thread-self/stat");
    stat.utime + stat.stime
}
