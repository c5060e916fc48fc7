//! A small axum app for attacks: `GET /` answers "ok", `POST /echo` reads the whole
//! body and returns it, `GET /big/{bytes}` streams that many bytes in 64 KiB chunks.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::routing::{get, post};

pub(crate) fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/echo", post(|body: Bytes| async move { body }))
        .route(
            "/big/{bytes}",
            get(|Path(bytes): Path<usize>| async move {
                const CHUNK: usize = 64 * 1024;
                let chunks = (0..bytes.div_ceil(CHUNK)).map(move |i| {
                    let len = CHUNK.min(bytes - i * CHUNK);
                    Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; len]))
                });
                Body::from_stream(futures_util::stream::iter(chunks))
            }),
        )
}
