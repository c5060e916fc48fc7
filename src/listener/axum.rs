//! `axum::serve` support: the listener serves axum apps unchanged, and handlers reach
//! the connection's [`Conn`] through `ConnectInfo`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;

use super::Listener;
use crate::conn::Conn;
use crate::stream::{HygieneStream, TcpIo};

impl axum::serve::Listener for Listener {
    type Io = HygieneStream<TcpIo>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match Listener::accept(self).await {
                Ok(accepted) => {
                    // Request boundaries come from the layer, which finds the handle
                    // through `ConnectInfo<Conn>`; without it the clocks that need them
                    // stay off (see `Connected` below).
                    accepted.0.conn().mark_foreign_server();
                    return accepted;
                }
                Err(error) => {
                    // The listening socket itself failed; axum's contract is to log
                    // and retry, so do it without spinning.
                    tracing::error!(target: "conn_hygiene::accept", %error, "accept failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Listener::local_addr(self)
    }
}

/// `app.into_make_service_with_connect_info::<Conn>()` gives every request the
/// connection's handle as `ConnectInfo<Conn>`, where [`HygieneLayer`] finds it.
///
/// axum asks for it before the connection's first byte is read, so the connection
/// counts as HTTP from its first byte: the request-head clock covers the first
/// request too. Should the layer turn out to be missing for a connection (its first
/// request reaches the server and is not counted, as a route added after `.layer(..)`
/// is not), the clocks that need request boundaries stand down there, with a warning,
/// rather than become handler deadlines; see
/// [the layer's docs](crate::layer#without-the-layer).
///
/// [`HygieneLayer`]: crate::HygieneLayer
impl Connected<IncomingStream<'_, Listener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        let conn = stream.io().conn();
        conn.mark_http();
        conn.clone()
    }
}

/// A handler argument `conn: Conn`: the connection's handle, found as
/// [`Conn::current`], or in the request's extensions (`Conn`, or `ConnectInfo<Conn>`
/// with plain `axum::serve`). Rejects with 500 when the request did not come through
/// the crate.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Conn {
    type Rejection = (http::StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let extensions = &parts.extensions;
        extensions
            .get::<Conn>()
            .cloned()
            .or_else(|| {
                extensions
                    .get::<axum::extract::ConnectInfo<Conn>>()
                    .map(|info| info.0.clone())
            })
            .or_else(Conn::current)
            .ok_or((
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "no connection handle: serve through conn_hygiene",
            ))
    }
}
