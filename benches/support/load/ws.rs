//! A WebSocket client (tokio-tungstenite) for the demo server's `GET /ws` echo.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

/// A small text message, the same every time, so every round costs the same.
pub(crate) const MESSAGE: &str = "conn-hygiene ws!";

/// The server's WebSocket read buffer (`demo_server --ws-read-buffer`). tungstenite
/// zeroes it before every read; at its default 128 KiB that memset is glibc's
/// `rep stosb`, each byte of which callgrind counts as an instruction (97 % of the
/// count per message). 1 KiB stays under glibc's 2 KiB `rep stosb` threshold.
pub(crate) const SERVER_READ_BUFFER: &str = "1024";

/// Generous: the server may run under callgrind.
const STEP: Duration = Duration::from_secs(60);

/// Opens one WebSocket, sends `messages` messages one at a time, each after the echo
/// of the one before, then closes it and waits for the server's close.
pub(crate) fn echo(addr: SocketAddr, messages: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // As the HTTP/1 client: no Nagle delay on the small frames.
        tcp.set_nodelay(true).expect("nodelay");
        let (mut socket, response) = timeout(
            STEP,
            tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp),
        )
        .await
        .expect("WebSocket handshake timed out")
        .expect("WebSocket handshake");
        assert_eq!(response.status(), 101);
        for i in 0..messages {
            timeout(STEP, socket.send(Message::text(MESSAGE)))
                .await
                .expect("send timed out")
                .expect("send");
            match timeout(STEP, socket.next()).await {
                Ok(Some(Ok(Message::Text(echoed)))) if echoed.as_str() == MESSAGE => {}
                other => panic!("message {i}: no echo: {other:?}"),
            }
        }
        timeout(STEP, socket.close(None))
            .await
            .expect("close timed out")
            .expect("close");
        // The server's close frame, then the end of the stream; nothing else is due.
        for _ in 0..2 {
            match timeout(STEP, socket.next()).await {
                Ok(Some(Ok(Message::Close(_)))) => {}
                Ok(None | Some(Err(_))) => return,
                other => panic!("after close: {other:?}"),
            }
        }
        panic!("the WebSocket did not end after the close handshake");
    });
}
