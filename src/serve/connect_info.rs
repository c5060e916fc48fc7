//! `ConnectInfo<SocketAddr>` for axum handlers under `serve()`, when asked for.
//!
//! axum's `ConnectInfo` extractor reads the request's extensions, which axum's own
//! `serve` fills only for `into_make_service_with_connect_info`. Under the crate's
//! `serve()`, [`Serve::with_connect_info`](super::Serve::with_connect_info) is that
//! opt-in: each request then pays one extensions insert, about 800 instructions of a
//! keep-alive `GET /` through an axum `Router` (callgrind), mostly the map growing past
//! the entries axum puts there. Handlers that need only the address can extract the
//! crate's `Conn` and call `peer_addr()`, which costs nothing per request.

use std::net::SocketAddr;
#[cfg(feature = "axum")]
use std::task::{Context, Poll};

#[cfg(feature = "axum")]
use http::Request;
#[cfg(feature = "axum")]
use tower::Service;

/// Wraps `service` so that its requests carry the peer's address when `peer` is given
/// (feature `axum`).
#[cfg(feature = "axum")]
pub(super) fn with_peer<S>(service: S, peer: Option<SocketAddr>) -> WithPeer<S> {
    WithPeer {
        inner: service,
        peer,
    }
}

/// Without axum nothing reads the address: the service is served as it is.
#[cfg(not(feature = "axum"))]
pub(super) fn with_peer<S>(service: S, _peer: Option<SocketAddr>) -> S {
    service
}

/// The service of [`with_peer`].
#[cfg(feature = "axum")]
#[derive(Debug, Clone)]
pub(super) struct WithPeer<S> {
    inner: S,
    peer: Option<SocketAddr>,
}

#[cfg(feature = "axum")]
impl<S, B> Service<Request<B>> for WithPeer<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(peer) = self.peer {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
        }
        self.inner.call(req)
    }
}
