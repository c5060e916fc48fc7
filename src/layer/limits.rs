//! A route's per-request limits: [`RequestLimitsLayer`] applies [`RequestLimits`] to
//! every request of the service it wraps. Public at `conn_hygiene::limits`.

use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::conn::Conn;
use crate::limits::RequestLimits;

/// A Tower layer for one route: its requests run under [`RequestLimits`].
///
/// It finds the connection as [`HygieneLayer`](crate::HygieneLayer) does (the
/// request's extensions, or [`Conn::current`]); a request that came through no
/// crate server passes through unchanged.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct RequestLimitsLayer {
    limits: RequestLimits,
}

impl RequestLimitsLayer {
    /// Applies `limits` to every request of the wrapped service.
    pub const fn new(limits: RequestLimits) -> Self {
        RequestLimitsLayer { limits }
    }
}

impl<S> Layer<S> for RequestLimitsLayer {
    type Service = ApplyLimits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApplyLimits {
            inner,
            limits: self.limits,
        }
    }
}

/// The service of [`RequestLimitsLayer`].
#[derive(Debug, Clone)]
pub struct ApplyLimits<S> {
    inner: S,
    limits: RequestLimits,
}

impl<S, B> Service<http::Request<B>> for ApplyLimits<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(conn) = super::conn_in(&req).or_else(Conn::current) {
            conn.set_request_limits(self.limits);
        }
        self.inner.call(req)
    }
}
