//! `ConnectInfo<SocketAddr>` for axum handlers under `serve()`.
//!
//! axum's `ConnectInfo` extractor reads the request's extensions, which axum's own
//! `serve` fills through `into_make_service_with_connect_info`. Under the crate's
//! `serve()` this wrapper fills them: one extensions insert per request, paid only
//! with feature `axum`. Measured with callgrind on a keep-alive `GET /` through an
//! axum `Router`: about 800 instructions (16,300 against 15,500), mostly the map's
//! growth past the entries axum adds itself.

use std::net::SocketAddr;
#[cfg(feature = "axum")]
use std::task::{Context, Poll};

#[cfg(feature = "axum")]
use http::Request;
#[cfg(feature = "axum")]
use tower::Service;

/// Wraps `service` so its requests carry the peer's address (feature `axum`).
#[cfg(feature = "axum")]
pub(super) fn with_peer<S>(service: S, peer: SocketAddr) -> WithPeer<S> {
    WithPeer {
        inner: service,
        peer,
    }
}

/// Without axum nothing reads the address: the service is served as it is.
#[cfg(not(feature = "axum"))]
pub(super) fn with_peer<S>(service: S, _peer: SocketAddr) -> S {
    service
}

/// The service of [`with_peer`].
#[cfg(feature = "axum")]
#[derive(Debug, Clone)]
pub(super) struct WithPeer<S> {
    inner: S,
    peer: SocketAddr,
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
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        self.inner.call(req)
    }
}
