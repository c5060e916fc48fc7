//! Handlers take the connection's handle as an axum extractor, through `serve` and
//! through plain `axum::serve`.
#![cfg(all(feature = "axum", feature = "testing"))]

use conn_hygiene::Policy;
use conn_hygiene::testing::http1::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::server::{Mode, Server};

/// Sends one `GET /whoami`; returns the answer's status and body.
async fn get_whoami(addr: std::net::SocketAddr) -> (u16, String) {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    let response = Response::parse_to_eof(&answer).expect("a whole answer");
    let body = String::from_utf8_lossy(response.body()).into_owned();
    (response.status(), body)
}

/// The body of a successful `GET /whoami`.
async fn whoami(addr: std::net::SocketAddr) -> String {
    let (status, body) = get_whoami(addr).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn the_extractor_finds_the_handle_under_serve() {
    let server = Server::start(Mode::Serve, Policy::default()).await;
    let body = whoami(server.addr).await;
    let (id, in_flight) = body.split_once(' ').unwrap();
    assert!(id.parse::<u64>().unwrap() > 0);
    assert_eq!(in_flight, "1", "the handler's own request is in flight");
}

#[tokio::test]
async fn the_extractor_finds_the_handle_under_plain_axum_serve() {
    let server = Server::start(Mode::AxumLayer, Policy::default()).await;
    let body = whoami(server.addr).await;
    assert_eq!(body.split_once(' ').unwrap().1, "1");
}

#[tokio::test]
async fn without_the_crate_the_extractor_rejects() {
    let server = Server::start(Mode::AxumTokio, Policy::default()).await;
    let (status, body) = get_whoami(server.addr).await;
    assert_eq!(status, 500, "{body}");
}
