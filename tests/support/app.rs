//! A small axum app for attacks: `GET /` answers "ok", `POST /echo` reads the whole
//! body and returns it, `GET /big/{bytes}` streams that many bytes (`support/big.rs`).

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};

pub(crate) fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/echo", post(|body: Bytes| async move { body }))
        .route("/big/{bytes}", get(super::big::big))
}
