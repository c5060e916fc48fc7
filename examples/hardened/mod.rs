//! The hand-hardened peer of the benchmark: what a careful user writes today instead
//! of conn-hygiene, from hyper-util and tower-http alone. It bounds the request head
//! (`header_read_timeout` on a `TokioTimer`), probes idle HTTP/2 connections with
//! keep-alive PINGs, bounds each request with tower-http's `TimeoutLayer`, and drains
//! with hyper-util's `GracefulShutdown`. It protects less than the crate (no FIN
//! detection, no body or write stall clock, no rate floors, no idle bound on HTTP/1
//! keep-alive, no drain deadline of its own): `benches/load` measures its cost beside
//! the crate's.

use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower_http::timeout::TimeoutLayer;

/// The request head must arrive within this (hyper's own default once a timer is set).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A quiet HTTP/2 connection is PINGed this often…
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// …and closed when a PING is not answered within this.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// A handler that has not answered within this gets `408 Request Timeout`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `signal`, then stops accepting and waits for the
/// connections in flight to finish (hyper-util's graceful shutdown has no deadline).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    signal: impl Future<Output = ()>,
) {
    let app = app.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        REQUEST_TIMEOUT,
    ));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let mut signal = pin!(signal);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // EMFILE and the like: back off a little, as axum::serve does.
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A peer's error ends only its own connection.
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
