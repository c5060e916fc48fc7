//! [`HygieneLayer`]: the Tower middleware that ties HTTP requests to their connection.
//!
//! For every request it:
//!
//! - finds the connection's [`Conn`]: [`serve`](crate::serve()) hands it over directly;
//!   with plain `axum::serve` it arrives as `ConnectInfo<Conn>` (feature `axum`); under
//!   tonic's `Server` as a `grpc::GrpcConnectInfo` (feature
//!   `tonic`). Outside `serve()`, HTTP/2 requests then carry the `Conn` as an
//!   extension; with feature `tonic`, gRPC requests carry tonic's `TcpConnectInfo`;
//! - counts the request in flight from its head until its response body ends, so the
//!   idle clock never runs while a handler or a streamed response is busy;
//! - wraps the request body, so the body-stall clock and the [body rate
//!   floor](crate::Policy::min_body_rate) run only while the handler waits for body
//!   bytes;
//! - retires the connection after [`max_requests`](crate::Policy::max_requests)
//!   (`Connection: close` on that HTTP/1 answer, GOAWAY under `serve()`), and
//!   advertises the idle timeout as `Keep-Alive: timeout=N` on HTTP/1 answers;
//! - races the handler against the peer's departure under the half-close policy. On
//!   abandonment the handler future is dropped, a 499 ("client closed request", as
//!   nginx logs it) is recorded in tracing, and the connection is reset.
//!
//! A handler can take the handle itself and await [`Conn::peer_closed`]: in axum, as
//! an extractor (`conn: Conn`, feature `axum`); with [`Conn::current`]
//! (under `serve()` for HTTP/1 and HTTP/2, under any server for HTTP/2) or from the
//! request's extensions
//! (`ConnectInfo<Conn>` with plain `axum::serve`, `Conn` under HTTP/2 elsewhere).
//!
//! HTTP/2 works the same way: the peer's departure is connection-wide, while a
//! stream reset already cancels a single request. The body-stall clock is per stream
//! there: a stalled upload fails its own request with a [`BodyStallError`], and the
//! connection and its other streams go on.
//!
//! # Upgrades
//!
//! A `101 Switching Protocols` (WebSocket) or a `CONNECT` answered with 2xx turns an
//! HTTP/1 connection into a tunnel ([`Conn::mark_tunnel`]): the request-head, idle
//! and body-stall clocks stop, the [tunnel idle
//! clock](crate::Policy::tunnel_idle_timeout) starts, and a small task enforces the
//! half-close policy and the drain deadline on the tunnel, whose relay runs outside
//! hyper. A relay sees a drain begin with [`Conn::draining`], for example to send a
//! WebSocket close frame (1001, going away); take the handle (`conn: Conn`) before
//! upgrading.
//!
//! # Without the layer
//!
//! `axum::serve` over the crate's [`Listener`](crate::Listener) without this layer
//! (or without `into_make_service_with_connect_info::<Conn>()`, through which the layer
//! finds the handle) gives the crate no request boundaries: it cannot tell a busy
//! handler from an idle connection. It then runs only the clocks that need none
//! (first byte, write stall), and warns once per listener.
//!
//! Whether the layer is there is a fact of the serving mode, not guessed from traffic:
//! `serve()` always has it. Under `axum::serve` (or tonic's `Server`) with the handle,
//! the layer must wrap the whole service: a route added after `.layer(..)` is outside
//! it, and its requests are never counted. Only a request that reached the server
//! uncounted shows the layer missing, for its own connection: a whole HTTP/1 request
//! head still uncounted once the server has run on (the layer, when present,
//! counts it as soon as the server polls its service) stops that connection's head and
//! idle clocks; a whole HTTP/2 header block makes the idle clock stand down one period
//! at a time, until the layer has counted a request on one of the listener's
//! connections (the server may have refused the block, so this stays provisional).
//! What the server writes first (HTTP/2 SETTINGS) and frames that carry no request
//! never turn a clock off.
//!
//! # Example: plain `axum::serve`
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # async fn dox() -> std::io::Result<()> {
//! use axum::{Router, routing::get};
//! use conn_hygiene::{Conn, HygieneLayer, Listener, Policy, SocketOptions};
//!
//! let listener = Listener::bind(
//!     "127.0.0.1:3000",
//!     SocketOptions::new(),
//!     Policy::default(),
//! )?;
//! let app = Router::new()
//!     .route("/", get(|| async { "ok" }))
//!     .layer(HygieneLayer::new());
//! axum::serve(listener, app.into_make_service_with_connect_info::<Conn>()).await
//! # }
//! ```
//!
//! This gets the stream's clocks, FIN detection and cancel-on-disconnect. axum's own
//! graceful shutdown waits for every connection, however long;
//! [`BoundedShutdown`](crate::serve::BoundedShutdown) adds the deadline, a
//! deregistration phase and the report, as [`serve`](crate::serve()) has them.

mod body;
mod future;
pub(crate) mod limits;

pub use body::{BodyRateError, BodyStallError, BoxError, RequestBody, ResponseBody};
pub use future::ResponseFuture;

use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::conn::Conn;

/// Applies [`Hygiene`] to a service. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct HygieneLayer {
    _priv: (),
}

impl HygieneLayer {
    /// A layer that finds each request's connection in its extensions.
    pub fn new() -> Self {
        HygieneLayer { _priv: () }
    }
}

impl<S> Layer<S> for HygieneLayer {
    type Service = Hygiene<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Hygiene {
            inner,
            conn: None,
            scoped_streams: false,
            connect_info: false,
        }
    }
}

/// The service of [`HygieneLayer`].
#[derive(Debug, Clone)]
pub struct Hygiene<S> {
    inner: S,
    conn: Option<Conn>,
    // Under `serve()` the handle need not be an HTTP/2 extension: handlers find it with
    // `Conn::current()`, as every server's do; elsewhere the extension stays for those
    // that look there.
    scoped_streams: bool,
    // serve()'s `connect_info`: requests carry axum's `ConnectInfo<SocketAddr>`.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    connect_info: bool,
}

impl<S> Hygiene<S> {
    /// Wraps `inner` for the requests of one known connection. HTTP/2 requests carry
    /// the `Conn` as an extension.
    pub fn for_conn(inner: S, conn: Conn) -> Self {
        Hygiene {
            inner,
            conn: Some(conn),
            scoped_streams: false,
            connect_info: false,
        }
    }

    /// [`for_conn`](Self::for_conn) for `serve()`: HTTP/2 services are called and
    /// polled with the connection as [`Conn::current`]; with `connect_info`, requests carry
    /// the peer's address as axum's `ConnectInfo<SocketAddr>` (feature `axum`).
    pub(crate) fn for_served_conn(inner: S, conn: Conn, connect_info: bool) -> Self {
        Hygiene {
            inner,
            conn: Some(conn),
            scoped_streams: true,
            connect_info,
        }
    }
}

/// The connection handle a request carries in its extensions: `Conn`,
/// `ConnectInfo<Conn>` with plain `axum::serve`, or tonic's `GrpcConnectInfo`.
pub(crate) fn conn_in<B>(req: &Request<B>) -> Option<Conn> {
    let extensions = req.extensions();
    if let Some(conn) = extensions.get::<Conn>() {
        return Some(conn.clone());
    }
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<Conn>>() {
        return Some(info.0.clone());
    }
    #[cfg(feature = "tonic")]
    if let Some(conn) = crate::grpc::conn_of(extensions) {
        return Some(conn);
    }
    None
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Hygiene<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: http_body::Body,
    ResBody: Default,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // Borrowed where the service knows it: a clone only where one is kept.
        let found;
        let conn = match &self.conn {
            Some(conn) => Some(conn),
            None => {
                found = conn_in(&req);
                found.as_ref()
            }
        };
        let Some(conn) = conn else {
            tracing::trace!(
                target: "conn_hygiene::layer",
                "no connection handle on the request: passing through"
            );
            let req = req.map(|body| RequestBody::new(body, None, false, false));
            return ResponseFuture::new(self.inner.call(req), None);
        };
        let http2 = req.version() == http::Version::HTTP_2;
        if http2 {
            conn.mark_http2();
        } else {
            conn.mark_http();
        }
        let connect = req.method() == http::Method::CONNECT;
        let kind = match (http2, connect) {
            (true, _) => RequestKind::Http2,
            (false, false) => RequestKind::Http1,
            (false, true) => RequestKind::Http1Connect,
        };
        let mut guard = conn.begin_request_unless_upgrade(|| {
            connect || req.headers().contains_key(http::header::UPGRADE)
        });
        // Paid only when asked for: an extensions insert, most of it the map's growth.
        #[cfg(feature = "axum")]
        if self.connect_info {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(conn.peer_addr()));
        }
        // Handlers find the handle with `Conn::current()`, which costs less than an
        // extension on every request: HTTP/1 ones in `serve()`'s connection task,
        // HTTP/2 ones because the layer enters their request for each call and poll.
        // Outside `serve()` the HTTP/2 extension stays, for handlers that look there.
        if http2 && !self.scoped_streams {
            let extensions = req.extensions_mut();
            if extensions.get::<Conn>().is_none() {
                extensions.insert(conn.clone());
            }
        }
        // gRPC handlers ask tonic's `Request::remote_addr`, under any server. gRPC
        // requests are POSTs: others skip the header lookup.
        #[cfg(feature = "tonic")]
        if http2 && req.method() == http::Method::POST {
            crate::grpc::insert_tcp_connect_info(&mut req, conn);
        }
        // An HTTP/1 body that has ended (a GET's) is never waited for: it needs no
        // clocks. (Over HTTP/2 asking costs a lock.) An HTTP/2 CONNECT stream's body is
        // a tunnel: no rate floor.
        let clocks = (http2 || !req.body().is_end_stream()).then(|| conn.clone());
        let req = req.map(|body| RequestBody::new(body, clocks, http2, http2 && connect));
        if !http2 {
            return ResponseFuture::new(self.inner.call(req), Some((guard, kind)));
        }
        // hyper calls (and then polls) an HTTP/2 service in the stream's own task. A
        // route's `RequestLimitsLayer` sets its limits in this call.
        let entered = guard.enter();
        let future = self.inner.call(req);
        drop(entered);
        ResponseFuture::new(future, Some((guard, kind)))
    }
}

/// What the response to a request may do to its connection.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RequestKind {
    /// HTTP/2: a stream's CONNECT tunnels that stream only, and GOAWAY retires the
    /// connection.
    Http2,
    /// HTTP/1: a `101 Switching Protocols` (WebSocket) makes it a tunnel.
    Http1,
    /// An HTTP/1 `CONNECT`: a 2xx (or 101) makes it a tunnel.
    Http1Connect,
}

impl RequestKind {
    /// Whether a response with `status` turns the connection into a tunnel.
    #[inline]
    pub(crate) fn tunnels(self, status: http::StatusCode) -> bool {
        match self {
            RequestKind::Http2 => false,
            RequestKind::Http1 => status == http::StatusCode::SWITCHING_PROTOCOLS,
            RequestKind::Http1Connect => {
                status.is_success() || status == http::StatusCode::SWITCHING_PROTOCOLS
            }
        }
    }
}
