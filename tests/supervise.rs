//! `Conn::supervise` over part of a connection's life (a TLS handshake, say): once the
//! supervised task has ended, or its future was dropped, the layer enforces the
//! half-close policy again for the requests that follow.
#![cfg(feature = "hyper")]

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use conn_hygiene::layer::Hygiene;
use conn_hygiene::{Abandon, Conn, HalfClose, Listener, Policy, SocketOptions};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const GENEROUS: Duration = Duration::from_secs(10);

/// What ran under `supervise` before the HTTP requests.
enum Before {
    /// A short task that finished, as a handshake does.
    Finished,
    /// A `Supervised` polled once and dropped before its task ended.
    Dropped,
}

/// Supervises `before` on an accepted connection, then serves HTTP/1 on it through
/// the layer, with a handler that never returns; the client sends a request, then
/// FIN. Returns why the connection was abandoned.
async fn stuck_handler_after(before: Before) -> Abandon {
    let policy = Policy::builder()
        .half_close(HalfClose::Abort)
        .build()
        .unwrap();
    let mut listener =
        Listener::bind("127.0.0.1:0".parse().unwrap(), SocketOptions::new(), policy).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let conn = stream.conn().clone();
    match before {
        Before::Finished => conn.supervise(async {}).await.expect("finished"),
        Before::Dropped => {
            let mut early = Box::pin(conn.supervise(std::future::pending::<()>()));
            let polled = tokio::time::timeout(Duration::ZERO, &mut early).await;
            assert!(polled.is_err(), "still pending");
        }
    }
    let app = Router::new().route("/", get(std::future::pending::<&'static str>));
    let service = TowerToHyperService::new(Hygiene::for_conn(app, conn.clone()));
    tokio::spawn(
        hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(TokioIo::new(stream), service),
    );

    client
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    wait_until(&conn, |conn| conn.in_flight() == 1).await;
    client.shutdown().await.unwrap();
    tokio::time::timeout(GENEROUS, conn.wait_abandoned())
        .await
        .expect("the stuck handler was never released: the layer stood down")
}

async fn wait_until(conn: &Conn, done: impl Fn(&Conn) -> bool) {
    tokio::time::timeout(GENEROUS, async {
        while !done(conn) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("condition never held");
}

#[tokio::test]
async fn layer_enforces_again_after_a_supervised_handshake() {
    assert_eq!(
        stuck_handler_after(Before::Finished).await,
        Abandon::PeerFin
    );
}

#[tokio::test]
async fn layer_enforces_again_after_a_dropped_supervised() {
    assert_eq!(stuck_handler_after(Before::Dropped).await, Abandon::PeerFin);
}
