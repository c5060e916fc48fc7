//! `examples/tcp_proxy.rs` on real loopback sockets: every byte arrives both ways,
//! whichever side finishes first, and the proxy leaves no socket in CLOSE_WAIT.
//!
//! `cargo test --all-features --test proxy -- --nocapture` prints the byte counts.
#![cfg(all(feature = "client", feature = "testing"))]

#[allow(dead_code)]
#[path = "../examples/tcp_proxy.rs"]
mod tcp_proxy;

use std::net::SocketAddr;
use std::time::Duration;

use conn_hygiene::census::TcpState;
use conn_hygiene::testing::{Side, assert_no_close_wait, wait_for_socket};
use conn_hygiene::{HalfClose, Listener, Policy, SocketOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// Starts the example's proxy in front of `upstream`; returns its address.
/// `small_buffers`: the proxy's outbound sockets get a small send buffer, so its
/// writes to a slow upstream stall soon.
fn proxy(half_close: HalfClose, upstream: SocketAddr, small_buffers: bool) -> SocketAddr {
    let policy = Policy::builder().half_close(half_close);
    let mut upstream = tcp_proxy::Upstream::new(upstream, &policy).unwrap();
    if small_buffers {
        upstream.options = upstream.options.with_send_buffer_size(16 * 1024);
    }
    let listener =
        Listener::bind("127.0.0.1:0", SocketOptions::new(), policy.build().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tcp_proxy::serve(listener, upstream));
    addr
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
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // Inherited by the accepted socket: a small window, so the upload crawls.
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(8).unwrap();
    socket.set_nonblocking(true).unwrap();
    let upstream = TcpListener::from_std(socket.into()).unwrap();
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
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_send_buffer_size(8 * 1024).unwrap();
    socket.connect(&proxy_addr.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    let mut client = TcpStream::from_std(socket.into()).unwrap();
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
