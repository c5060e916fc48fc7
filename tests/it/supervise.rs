//! `Conn::supervise` over part of a connection's life (a TLS handshake, say): once the
//! supervised task has ended, or its future was dropped, the layer enforces the
//! half-close policy again for the requests that follow.
#![cfg(feature = "hyper")]

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use conn_hygiene::layer::Hygiene;
use conn_hygiene::{Conn, HalfClose, Listener, Policy, SocketOptions, conn::Abandon};
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
    let mut listener = Listener::bind("127.0.0.1:0", SocketOptions::new(), policy).unwrap();
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

/// Supervised tasks that wake themselves constantly, on a multi-thread runtime, while
/// their peers send FIN at staggered times: every one is released by the half-close
/// grace, none stays parked with a lost enforcement wakeup. (The exact interleaving that
/// lost one is pinned down by the unit tests in `supervise.rs`; this runs the whole
/// path.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_supervised_tasks_are_all_released_by_the_grace() {
    const CONNECTIONS: usize = 40;
    let policy = Policy::builder()
        .half_close(HalfClose::AllowFor(Duration::from_millis(50)))
        .build()
        .unwrap();
    let mut listener = Listener::bind("127.0.0.1:0", SocketOptions::new(), policy).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(TcpStream::connect(addr).await.unwrap());
        let (stream, _) = listener.accept().await.unwrap();
        let conn = stream.conn().clone();
        tasks.push(tokio::spawn(conn.supervise(async move {
            let _stream = stream;
            // Busy (polled again and again) through the FIN, then parked for good: only
            // the grace timer's wakeup can end it.
            let busy_until = tokio::time::Instant::now() + Duration::from_millis(40);
            while tokio::time::Instant::now() < busy_until {
                tokio::task::yield_now().await;
            }
            std::future::pending::<()>().await
        })));
    }
    for (i, mut client) in clients.into_iter().enumerate() {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis((i % 20) as u64)).await;
            client.shutdown().await.unwrap();
            // Kept open: only our side's enforcement may end the connection.
            tokio::time::sleep(GENEROUS).await;
        });
    }
    for task in tasks {
        let result = tokio::time::timeout(GENEROUS, task)
            .await
            .expect("a supervised task was never released")
            .unwrap();
        assert_eq!(result.unwrap_err().reason(), Abandon::HalfCloseGrace);
    }
}
