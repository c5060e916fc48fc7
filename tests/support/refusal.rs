//! A refused client's view: it sends its first bytes and is reset without a byte back.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `first` on `stream`, then asserts that the server resets the connection
/// within `within` without sending anything: `client` names the client in messages.
pub(crate) async fn assert_reset_without_an_answer(
    stream: &mut TcpStream,
    first: &[u8],
    within: Duration,
    client: &str,
) {
    stream.write_all(first).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut answer))
        .await
        .expect("the refusal is prompt");
    assert!(
        answer.is_empty(),
        "{client} was sent {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset),
        "{client}"
    );
}
