//! `TcpIo` on real loopback sockets: readiness is cleared exactly where tokio clears it.

use std::io::IoSlice;
use std::time::Duration;

use conn_hygiene::{HygieneStream, Policy, stream::TcpIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Linux's `IOV_MAX`: one `writev` takes at most this many slices.
const IOV_MAX: usize = 1024;

async fn pair() -> (TcpIo, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (socket, peer) = accepted.unwrap();
    let io = HygieneStream::tcp(socket, peer, Policy::default()).into_inner();
    (io, client.unwrap())
}

/// A `writev` of more slices than `IOV_MAX` writes only the first `IOV_MAX`, with room
/// left in the send buffer. Taking that short write for a full buffer cleared the
/// readiness, and the next write waited for an edge that never came.
#[tokio::test]
async fn vectored_write_over_iov_max_slices_completes() {
    let (mut io, mut peer) = pair().await;
    let data: Vec<u8> = (0..3 * IOV_MAX).map(|i| i as u8).collect();
    let mut written = 0;
    let mut calls = 0;
    tokio::time::timeout(Duration::from_secs(5), async {
        while written < data.len() {
            let slices: Vec<IoSlice<'_>> = data[written..].chunks(1).map(IoSlice::new).collect();
            let n = io.write_vectored(&slices).await.unwrap();
            assert!(n > 0);
            written += n;
            calls += 1;
        }
    })
    .await
    .expect("the write after a short writev never woke");
    assert!(calls > 1, "one writev took {} slices", data.len());

    let mut received = vec![0; data.len()];
    peer.read_exact(&mut received).await.unwrap();
    assert_eq!(received, data);
}

/// Short reads and writes still complete (on Linux they clear the readiness, and the
/// next operation waits for the next edge).
#[tokio::test]
async fn short_reads_and_writes_complete() {
    let (mut io, mut peer) = pair().await;
    peer.write_all(b"hello").await.unwrap();
    let mut buf = [0; 64];
    let n = io.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"hello");
    peer.write_all(b" again").await.unwrap();
    let n = io.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b" again");
    io.write_all(b"answer").await.unwrap();
    let mut answer = [0; 6];
    peer.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"answer");
}
