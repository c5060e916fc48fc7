//! Request builders: hyper's HTTP/1 client for a whole answer, and raw request bytes
//! for peers that write by hand.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An answer: its status, headers and body (as text).
pub(crate) type Answer = (u16, http::HeaderMap, String);

/// `GET path` on an open HTTP/1 connection: the whole answer, or what failed.
pub(crate) async fn send_get(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
) -> Result<Answer, String> {
    let request = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        headers,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

/// An HTTP/1 connection to `addr`, its connection task spawned.
pub(crate) async fn connect_http1(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (sender, connection) = handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// `GET path` on a fresh HTTP/1 connection to `addr`.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Result<Answer, String> {
    send_get(&mut connect_http1(addr).await?, path).await
}

/// The bytes of `GET path` over HTTP/1.1.
pub(crate) fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

/// The bytes of `POST path` over HTTP/1.1 with a body of `body_len` bytes of `p`.
pub(crate) fn post_request(path: &str, body_len: usize) -> Vec<u8> {
    let mut request =
        format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {body_len}\r\n\r\n")
            .into_bytes();
    request.resize(request.len() + body_len, b'p');
    request
}

/// Writes `GET path` on an open connection and reads one HTTP/1 answer into `buf`,
/// within 10 s.
#[cfg(feature = "testing")]
pub(crate) async fn get_on<'b>(
    stream: &mut TcpStream,
    path: &str,
    buf: &'b mut Vec<u8>,
) -> conn_hygiene::testing::http1::Response<'b> {
    use tokio::io::AsyncWriteExt;
    stream.write_all(&get_request(path)).await.unwrap();
    let within = std::time::Duration::from_secs(10);
    tokio::time::timeout(
        within,
        conn_hygiene::testing::http1::Response::read(stream, buf),
    )
    .await
    .expect("an answer in time")
    .expect("a whole answer")
}
