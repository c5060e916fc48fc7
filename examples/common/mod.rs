//! The routes shared by the demo server and the before/after comparison.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::routing::get;
use futures_util::stream;

/// `GET /` ok; `GET|POST /stuck` never answer; `GET /sleep/{ms}`; `POST /echo`;
/// `GET /big/{bytes}` streamed.
pub(crate) fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/stuck",
            get(std::future::pending::<&'static str>).post(std::future::pending::<&'static str>),
        )
        .route(
            "/sleep/{ms}",
            get(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "slept"
            }),
        )
        .route(
            "/echo",
            axum::routing::post(|body: Bytes| async move { body }),
        )
        .route(
            "/big/{bytes}",
            get(|Path(bytes): Path<u64>| async move {
                const CHUNK: u64 = 64 * 1024;
                let chunks = stream::iter((0..bytes.div_ceil(CHUNK)).map(move |i| {
                    let len = CHUNK.min(bytes - i * CHUNK) as usize;
                    Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; len]))
                }));
                Body::from_stream(chunks)
            }),
        )
}
