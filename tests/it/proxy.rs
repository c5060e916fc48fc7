//! `examples/tcp_proxy.rs` on real loopback sockets: every byte arrives both ways,
//! whichever side finishes first, and the proxy leaves no socket in CLOSE_WAIT. When
//! one side fails after a forwarded half-close, the other is reset, never told that
//! a truncated transfer was complete.
//!
//! `cargo test --all-features --test it -- --nocapture proxy::` prints the byte counts.
#![cfg(all(feature = "client", feature = "testing"))]

#[allow(dead_code)]
#[path = "../../examples/tcp_proxy.rs"]
mod tcp_proxy;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use conn_hygiene::census::TcpState;
use conn_hygiene::testing::{Side, assert_no_close_wait, wait_for_socket};
use conn_hygiene::{HalfClose, Listener, Policy, SocketOptions, policy::PolicyBuilder};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GENEROUS: Duration = Duration::from_secs(20);
const MIB: usize = 1024 * 1024;

/// Byte `i` of a direction's stream: an irregular pattern, so a lost, repeated or
/// reordered chunk shows.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect()
}

/// Starts the example's proxy in front of `upstream` with the half-close policy
/// `half_close`; returns its address. `small_buffers`: the proxy's outbound sockets
/// get a small send buffer, so its writes to a slow upstream stall soon.
fn proxy(half_close: HalfClose, upstream: SocketAddr, small_buffers: bool) -> SocketAddr {
    proxy_with(
        Policy::builder().half_close(half_close),
        upstream,
        small_buffers,
    )
}

/// [`proxy`] with the whole policy given.
fn proxy_with(policy: PolicyBuilder, upstream: SocketAddr, small_buffers: bool) -> SocketAddr {
    let mut upstream = tcp_proxy::Upstream::new(upstream, &policy).unwrap();
    if small_buffers {
        upstream.options = upstream.options.send_buffer_size(16 * 1024);
    }
    let listener =
        Listener::bind("127.0.0.1:0", SocketOptions::new(), policy.build().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tcp_proxy::serve(listener, upstream));
    addr
}

/// Which socket buffer to make small.
#[derive(Clone, Copy)]
enum Buffer {
    Send,
    Recv,
}

/// An 8 KiB socket buffer (the kernel doubles it), so a transfer backs up at once.
fn small_buffer(socket: &socket2::Socket, buffer: Buffer) {
    match buffer {
        Buffer::Send => socket.set_send_buffer_size(8 * 1024).unwrap(),
        Buffer::Recv => socket.set_recv_buffer_size(8 * 1024).unwrap(),
    }
}

/// A loopback listener whose accepted sockets inherit a small `buffer`.
fn small_buffer_listener(buffer: Buffer) -> TcpListener {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    small_buffer(&socket, buffer);
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(8).unwrap();
    socket.set_nonblocking(true).unwrap();
    TcpListener::from_std(socket.into()).unwrap()
}

/// A client of `addr` with a small `buffer`.
fn small_buffer_client(addr: SocketAddr, buffer: Buffer) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    small_buffer(&socket, buffer);
    socket.connect(&addr.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    TcpStream::from_std(socket.into()).unwrap()
}

/// Closes `socket` with an RST: zero linger.
fn reset(socket: TcpStream) {
    socket2::SockRef::from(&socket)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(socket);
}

/// Whether `error` is how TCP reports the peer's RST: `ConnectionReset`, or
/// `BrokenPipe` when the socket had the peer's FIN already (Linux sets EPIPE for an
/// RST in CLOSE_WAIT) or reported the reset before.
fn is_reset(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// Writes `data` and shuts down; returns how many bytes the kernel took, and the
/// first error.
async fn write_counted<W: AsyncWrite + Unpin>(
    writer: &mut W,
    data: &[u8],
) -> (usize, io::Result<()>) {
    let mut sent = 0;
    while sent < data.len() {
        match writer.write(&data[sent..]).await {
            Ok(0) => return (sent, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => sent += n,
            Err(error) => return (sent, Err(error)),
        }
    }
    (sent, writer.shutdown().await)
}

/// A closed socket of the proxy: gone, or in TIME_WAIT after its own FIN went first.
fn closed(state: Option<TcpState>) -> bool {
    matches!(state, None | Some(TcpState::TimeWait))
}

/// Both of the proxy's sockets of one connection close, and none of its ports holds a
/// CLOSE_WAIT socket.
async fn assert_proxy_closed(
    proxy: SocketAddr,
    client: SocketAddr,
    outbound: SocketAddr,
    upstream: SocketAddr,
) {
    let inbound = wait_for_socket(proxy, client, GENEROUS, closed).await;
    assert!(inbound.is_ok(), "proxy's inbound socket: {inbound:?}");
    let outbound = wait_for_socket(outbound, upstream, GENEROUS, closed).await;
    assert!(outbound.is_ok(), "proxy's outbound socket: {outbound:?}");
    assert_no_close_wait(proxy.port(), Side::Local, GENEROUS).await;
    assert_no_close_wait(upstream.port(), Side::Remote, GENEROUS).await;
}

/// 1 MiB each way through the proxy. `client_first`: the client sends everything and
/// shuts down before the upstream answers; otherwise the upstream does, and the
/// client answers after reading the upstream's FIN.
async fn one_mib_each_way(client_first: bool) {
    let up_data = pattern(0x11, MIB);
    let down_data = pattern(0x22, MIB);
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let proxy_addr = proxy(
        HalfClose::AllowFor(Duration::from_secs(2)),
        upstream_addr,
        false,
    );

    let down = down_data.clone();
    let server = tokio::spawn(async move {
        let (mut socket, outbound) = upstream.accept().await.unwrap();
        let mut got = Vec::new();
        if client_first {
            socket.read_to_end(&mut got).await.unwrap();
            socket.write_all(&down).await.unwrap();
            socket.shutdown().await.unwrap();
        } else {
            socket.write_all(&down).await.unwrap();
            socket.shutdown().await.unwrap();
            socket.read_to_end(&mut got).await.unwrap();
        }
        (got, outbound)
    });
    let mut client = TcpStream::connect(proxy_addr).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    let mut got = Vec::new();
    if client_first {
        client.write_all(&up_data).await.unwrap();
        client.shutdown().await.unwrap();
        client.read_to_end(&mut got).await.unwrap();
    } else {
        client.read_to_end(&mut got).await.unwrap();
        client.write_all(&up_data).await.unwrap();
        client.shutdown().await.unwrap();
    }
    let (upstream_got, outbound_addr) = tokio::time::timeout(GENEROUS, server)
        .await
        .expect("the upstream finishes")
        .unwrap();
    let first = if client_first { "client" } else { "upstream" };
    println!(
        "{first} first: client -> upstream {} of {MIB} bytes, upstream -> client {} of {MIB} bytes",
        upstream_got.len(),
        got.len()
    );
    assert_eq!(upstream_got.len(), MIB);
    assert!(upstream_got == up_data, "the upload arrives intact");
    assert_eq!(got.len(), MIB);
    assert!(got == down_data, "the download arrives intact");
    assert_proxy_closed(proxy_addr, client_addr, outbound_addr, upstream_addr).await;
}

#[tokio::test]
async fn copy_bidirectional_one_mib_each_way_client_finishes_first() {
    one_mib_each_way(true).await;
}

#[tokio::test]
async fn copy_bidirectional_one_mib_each_way_upstream_finishes_first() {
    one_mib_each_way(false).await;
}

/// The scenario: the upstream sends a banner and half-closes, then reads the
/// client's 4 MiB upload slowly through small socket buffers. The proxy forwards the
/// FIN to the client and keeps forwarding the upload: every byte arrives. Under
/// `AllowFor` the grace after the upstream's FIN restarts while the upload moves.
async fn banner_then_slow_upload(half_close: HalfClose) {
    const UPLOAD: usize = 4 * MIB;
    const BANNER: &[u8] = b"220 ready, then half-closed\r\n";
    let upload = pattern(0x33, UPLOAD);
    // A small window, so the upload crawls.
    let upstream = small_buffer_listener(Buffer::Recv);
    let upstream_addr = upstream.local_addr().unwrap();
    let proxy_addr = proxy(half_close, upstream_addr, true);

    let server = tokio::spawn(async move {
        let (mut socket, outbound) = upstream.accept().await.unwrap();
        socket.write_all(BANNER).await.unwrap();
        socket.shutdown().await.unwrap();
        // Busy elsewhere for a while: the proxy's writes to us stall, the client's
        // upload piles up in the proxy's receive buffer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut got = Vec::with_capacity(UPLOAD);
        let mut buf = [0u8; 4096];
        let mut reads = 0u32;
        loop {
            let n = socket.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            reads += 1;
            if reads.is_multiple_of(4) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        (got, outbound)
    });
    let mut client = small_buffer_client(proxy_addr, Buffer::Send);
    let client_addr = client.local_addr().unwrap();
    let mut banner = vec![0u8; BANNER.len()];
    client.read_exact(&mut banner).await.unwrap();
    assert_eq!(banner, BANNER);
    let (mut reader, mut writer) = client.split();
    let read_rest = async {
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.map(|_| rest)
    };
    let write_upload = async {
        writer.write_all(&upload).await?;
        writer.shutdown().await
    };
    let (rest, written) =
        tokio::time::timeout(GENEROUS, async { tokio::join!(read_rest, write_upload) })
            .await
            .expect("the upload finishes");
    assert!(
        rest.unwrap().is_empty(),
        "the proxy forwarded the upstream's FIN"
    );
    written.unwrap();
    let (got, outbound_addr) = tokio::time::timeout(GENEROUS, server)
        .await
        .expect("the upstream reads everything")
        .unwrap();
    println!(
        "banner then slow upload ({half_close:?}): upstream received {} of {UPLOAD} bytes",
        got.len()
    );
    assert_eq!(got.len(), UPLOAD);
    assert!(got == upload, "the upload arrives intact");
    assert_proxy_closed(proxy_addr, client_addr, outbound_addr, upstream_addr).await;
}

#[tokio::test]
async fn upload_after_the_upstream_half_closed_arrives_in_full_allow() {
    banner_then_slow_upload(HalfClose::Allow).await;
}

#[tokio::test]
async fn upload_after_the_upstream_half_closed_arrives_in_full_allow_for() {
    banner_then_slow_upload(HalfClose::AllowFor(Duration::from_millis(500))).await;
}

/// Both of the proxy's sockets of one connection were reset: gone at once, not in
/// TIME_WAIT as after a graceful close of ours, and no CLOSE_WAIT on its ports.
async fn assert_proxy_reset(
    proxy: SocketAddr,
    client: SocketAddr,
    outbound: SocketAddr,
    upstream: SocketAddr,
) {
    let inbound = wait_for_socket(proxy, client, GENEROUS, |s| s.is_none()).await;
    assert!(inbound.is_ok(), "proxy's inbound socket: {inbound:?}");
    let outbound = wait_for_socket(outbound, upstream, GENEROUS, |s| s.is_none()).await;
    assert!(outbound.is_ok(), "proxy's outbound socket: {outbound:?}");
    assert_no_close_wait(proxy.port(), Side::Local, GENEROUS).await;
    assert_no_close_wait(upstream.port(), Side::Remote, GENEROUS).await;
}

/// How the upstream of [`upstream_fails_mid_upload`] lets the proxy down.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// It resets the connection: the copy's write fails (or the supervisor sees
    /// the RST first).
    Resets,
    /// It stops reading and keeps the connection: the proxy abandons it, by the
    /// half-close grace or the write-stall clock.
    StopsReading,
}

/// The banner case gone wrong: the upstream sends its banner and half-closes, reads
/// part of the client's upload, then fails. Its FIN had reached the client, so the
/// proxy's inbound stream was shut down: dropped as it was, it would linger, swallow
/// the rest of the upload and close gracefully at the client's FIN, and the client
/// would believe its upload delivered. The proxy resets the client instead.
async fn upstream_fails_mid_upload(policy: PolicyBuilder, failure: Failure) {
    const UPLOAD: usize = 4 * MIB;
    const READ_BEFORE_FAILING: usize = 64 * 1024;
    const BANNER: &[u8] = b"220 ready, then half-closed\r\n";
    let upload = pattern(0x44, UPLOAD);
    let upstream = small_buffer_listener(Buffer::Recv);
    let upstream_addr = upstream.local_addr().unwrap();
    let proxy_addr = proxy_with(policy.clone(), upstream_addr, true);

    let server = tokio::spawn(async move {
        let (mut socket, outbound) = upstream.accept().await.unwrap();
        socket.write_all(BANNER).await.unwrap();
        socket.shutdown().await.unwrap();
        let mut got = 0;
        let mut buf = [0u8; 4096];
        while got < READ_BEFORE_FAILING {
            match socket.read(&mut buf).await.unwrap() {
                0 => break,
                n => got += n,
            }
        }
        // A socket that stops reading is handed back, unread, to live on until the end.
        let kept = match failure {
            Failure::Resets => {
                reset(socket);
                None
            }
            Failure::StopsReading => Some(socket),
        };
        (got, outbound, kept)
    });
    let mut client = small_buffer_client(proxy_addr, Buffer::Send);
    let client_addr = client.local_addr().unwrap();
    // The upstream's banner and FIN first: the proxy has shut the inbound side down.
    let mut banner = Vec::new();
    client.read_to_end(&mut banner).await.unwrap();
    assert_eq!(banner, BANNER);
    let (sent, written) = tokio::time::timeout(GENEROUS, write_counted(&mut client, &upload))
        .await
        .expect("the upload ends");
    // Had the whole upload been taken, the close that follows must still say so.
    let after = match &written {
        Ok(()) => Some(client.read(&mut [0u8; 1]).await),
        Err(_) => None,
    };
    let (upstream_got, outbound_addr, _kept) = tokio::time::timeout(GENEROUS, server)
        .await
        .expect("the upstream fails")
        .unwrap();
    println!(
        "upstream {failure:?} mid-upload ({:?}, write stall {:?}): client sent {sent} of \
         {UPLOAD} bytes, upstream received {upstream_got}; client's upload: {written:?}, \
         read after it: {after:?}",
        policy.clone().build().unwrap().half_close(),
        policy.build().unwrap().write_stall_timeout(),
    );
    assert!(upstream_got < UPLOAD);
    let error = match (written, after) {
        (Err(error), _) | (Ok(()), Some(Err(error))) => error,
        (Ok(()), after) => panic!("the client saw its upload succeed, then {after:?}"),
    };
    assert!(is_reset(&error), "the client is reset: {error:?}");
    assert_proxy_reset(proxy_addr, client_addr, outbound_addr, upstream_addr).await;
}

#[tokio::test]
async fn upstream_reset_after_its_half_close_resets_the_client_allow() {
    let policy = Policy::builder().half_close(HalfClose::Allow);
    upstream_fails_mid_upload(policy, Failure::Resets).await;
}

#[tokio::test]
async fn upstream_reset_after_its_half_close_resets_the_client_allow_for() {
    let policy = Policy::builder().half_close(HalfClose::AllowFor(Duration::from_millis(500)));
    upstream_fails_mid_upload(policy, Failure::Resets).await;
}

/// Nothing moves on the upstream's connection after its FIN: the grace passes, the
/// supervisor abandons the upstream (write stall is 30 s), and the client is reset.
#[tokio::test]
async fn upstream_past_its_half_close_grace_resets_the_client() {
    let policy = Policy::builder().half_close(HalfClose::AllowFor(Duration::from_millis(500)));
    upstream_fails_mid_upload(policy, Failure::StopsReading).await;
}

/// No grace: the proxy's write to the upstream stalls, its clock abandons the
/// upstream, and the client is reset.
#[tokio::test]
async fn upstream_write_stall_after_its_half_close_resets_the_client() {
    let policy = Policy::builder()
        .half_close(HalfClose::Allow)
        .write_stall_timeout(Some(Duration::from_millis(500)));
    upstream_fails_mid_upload(policy, Failure::StopsReading).await;
}

/// The mirror case: the client sends its request and half-closes, reads part of the
/// download, then resets. The proxy had forwarded the client's FIN, so its outbound
/// stream was shut down and would linger, swallowing the rest of the download: the
/// proxy resets the upstream instead.
async fn client_resets_mid_download(half_close: HalfClose) {
    const DOWNLOAD: usize = 8 * MIB;
    const READ_BEFORE_RESET: usize = 64 * 1024;
    const REQUEST: &[u8] = b"GET everything\r\n";
    let download = pattern(0x55, DOWNLOAD);
    // Small buffers along the download's way, so most of it is still to send when
    // the client resets.
    let upstream = small_buffer_listener(Buffer::Send);
    let upstream_addr = upstream.local_addr().unwrap();
    let proxy_addr = proxy(half_close, upstream_addr, false);

    let server = tokio::spawn(async move {
        let (mut socket, outbound) = upstream.accept().await.unwrap();
        let mut request = Vec::new();
        socket.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, REQUEST, "the client's request and FIN arrive");
        let (sent, written) = write_counted(&mut socket, &download).await;
        let after = match &written {
            Ok(()) => Some(socket.read(&mut [0u8; 1]).await),
            Err(_) => None,
        };
        (sent, written, after, outbound)
    });
    let mut client = small_buffer_client(proxy_addr, Buffer::Recv);
    let client_addr = client.local_addr().unwrap();
    client.write_all(REQUEST).await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = 0;
    let mut buf = [0u8; 4096];
    while got < READ_BEFORE_RESET {
        match client.read(&mut buf).await.unwrap() {
            0 => break,
            n => got += n,
        }
    }
    reset(client);
    let (sent, written, after, outbound_addr) = tokio::time::timeout(GENEROUS, server)
        .await
        .expect("the download ends")
        .unwrap();
    println!(
        "client resets mid-download ({half_close:?}): upstream sent {sent} of {DOWNLOAD} bytes, \
         client received {got} before its reset; upstream's download: {written:?}, \
         read after it: {after:?}"
    );
    assert!(got < DOWNLOAD);
    let error = match (written, after) {
        (Err(error), _) | (Ok(()), Some(Err(error))) => error,
        (Ok(()), after) => panic!("the upstream saw its download succeed, then {after:?}"),
    };
    assert!(is_reset(&error), "the upstream is reset: {error:?}");
    assert_proxy_reset(proxy_addr, client_addr, outbound_addr, upstream_addr).await;
}

#[tokio::test]
async fn client_reset_after_its_half_close_resets_the_upstream_allow() {
    client_resets_mid_download(HalfClose::Allow).await;
}

#[tokio::test]
async fn client_reset_after_its_half_close_resets_the_upstream_allow_for() {
    client_resets_mid_download(HalfClose::AllowFor(Duration::from_millis(500))).await;
}
