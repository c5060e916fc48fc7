//! Outbound hygiene: pooled client connections that never sit in CLOSE_WAIT.
//!
//! The seed's incident is outbound: server A keeps a pool of connections to server B,
//! B closes an idle one (its keep-alive timeout, a restart, an error path), and A's
//! socket sits in CLOSE_WAIT until somebody reuses or drops it. Two cases:
//!
//! - **hyper-util's legacy [`Client`]**. hyper's HTTP/1 connection task keeps a read
//!   pending while the connection idles in the pool, reads the server's FIN and drops
//!   the socket at once (measured on loopback, 50 connections closed together:
//!   p50 0.6 to 1 ms, p99 under 1.5 ms from the server's FIN to the client's close,
//!   with or without this module). What
//!   [`HygieneConnector`] adds is the rest: [`SocketOptions`] on every connection
//!   (TCP keepalive and `TCP_USER_TIMEOUT` are what find a peer that vanished without
//!   a FIN), the [`Conn`] handle in every response's extensions, `tracing` events
//!   when a pooled connection's peer leaves, and, with [`KeepAliveLayer`], eviction
//!   before the server's announced `Keep-Alive: timeout=N`, so a request is never
//!   written onto a connection the server is closing at that very moment (the reuse
//!   race of [hyper#2136]).
//! - **Any other pool** (bb8, deadpool, a `Vec`) holding raw streams: nobody reads an
//!   idle connection, so the FIN goes unnoticed. Open connections with [`connect`],
//!   evict at once when [`Conn::peer_closed`] resolves, and run [`probe`] before
//!   reuse. See [Generic pools](#generic-pools).
//!
//! # hyper-util's `Client`
//!
//! ```no_run
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Empty};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use conn_hygiene::{Conn, SocketOptions};
//! use conn_hygiene::client::{HygieneConnector, KeepAliveLayer};
//! use tower::{Service, ServiceBuilder};
//!
//! # async fn dox() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let options = SocketOptions::new()
//!     .nodelay(true)
//!     .keepalive_time(Duration::from_secs(30))
//!     .tcp_user_timeout(Duration::from_secs(30));
//! let client = Client::builder(TokioExecutor::new())
//!     .build::<_, Empty<Bytes>>(HygieneConnector::new(options));
//! // Evict idle connections a second before the server's `Keep-Alive: timeout=N`.
//! let mut client = ServiceBuilder::new().layer(KeepAliveLayer::new()).service(client);
//!
//! let request = http::Request::get("http://127.0.0.1:8080/").body(Empty::new())?;
//! let response = client.call(request).await?;
//! let conn = response.extensions().get::<Conn>().cloned();
//! let body = response.into_body().collect().await?.to_bytes();
//! println!("{} bytes over {conn:?}", body.len());
//! # Ok(()) }
//! ```
//!
//! # Generic pools
//!
//! A pool of [`HygieneStream`]s from [`connect`] gets two tools:
//!
//! - [`Conn::peer_closed`]: a future that resolves when the peer sends FIN or RST,
//!   without reading a byte. Wait on it for each idle connection and evict at once:
//!   the socket leaves CLOSE_WAIT as soon as the pool drops the stream.
//! - [`probe`]: a non-blocking check to run before reuse. It consumes no bytes. It
//!   makes no system call when the answer is already known (a `peer_closed` waiter,
//!   the stream itself or the runtime's reactor saw the FIN); otherwise it makes one
//!   `recv(MSG_PEEK)` of one byte on the non-blocking socket.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::sync::{Arc, Mutex};
//! use conn_hygiene::{HygieneStream, SocketOptions, stream::TcpIo};
//! use conn_hygiene::client::{self, client_policy};
//!
//! #[derive(Clone, Default)]
//! struct Pool {
//!     idle: Arc<Mutex<Vec<HygieneStream<TcpIo>>>>,
//! }
//!
//! impl Pool {
//!     fn check_in(&self, stream: HygieneStream<TcpIo>) {
//!         let conn = stream.conn().clone();
//!         self.idle.lock().unwrap().push(stream);
//!         // Evict as soon as the peer leaves. The waiter holds only a `Conn`, which
//!         // never keeps the socket open; it ends when the stream is dropped.
//!         let pool = self.clone();
//!         tokio::spawn(async move {
//!             let _gone = conn.peer_closed().await;
//!             pool.idle.lock().unwrap().retain(|s| s.conn().id() != conn.id());
//!         });
//!     }
//!
//!     async fn check_out(&self, addr: SocketAddr) -> std::io::Result<HygieneStream<TcpIo>> {
//!         while let Some(stream) = self.idle.lock().unwrap().pop() {
//!             if client::probe(stream.conn()).is_reusable() {
//!                 return Ok(stream);
//!             }
//!             // Dropped here: closed at once.
//!         }
//!         client::connect(addr, SocketOptions::new(), client_policy()).await
//!     }
//! }
//! ```
//!
//! With bb8 the probe goes in `ManageConnection::has_broken`
//! (`!client::probe(conn.conn()).is_reusable()`); with deadpool in
//! `Manager::recycle`.
//!
//! # Tracing
//!
//! Target `conn_hygiene::client`, level `debug`, inside the connection's `conn` span:
//!
//! | `event` | when | other fields |
//! | --- | --- | --- |
//! | `connect` | the connector or [`connect`] opened a connection | |
//! | `peer_closed` | the peer of a connector's connection sent FIN or RST | `how` (`fin`, `rst`), `awaiting_response`, `idle_ms` |
//! | `keep_alive_evict` | an idle connection is evicted before the server's keep-alive timeout | `keep_alive_ms`, `idle_ms` |
//!
//! An eviction abandons the connection, so `conn_hygiene::abandon` follows with
//! `reason = "idle_timeout"`.
//!
//! [`Client`]: hyper_util::client::legacy::Client
//! [`Conn`]: crate::Conn
//! [`Conn::peer_closed`]: crate::Conn::peer_closed
//! [`HygieneStream`]: crate::HygieneStream
//! [`SocketOptions`]: crate::SocketOptions
//! [hyper#2136]: https://github.com/hyperium/hyper/issues/2136

mod connect;
mod connector;
mod keep_alive;
mod probe;
mod stream;

pub use connect::{client_policy, connect};
pub use connector::{ConnectError, HygieneConnector};
pub use keep_alive::{KeepAlive, KeepAliveBody, KeepAliveLayer};
pub use probe::{Probe, probe};
pub use stream::ClientStream;

/// The futures of [`HygieneConnector`] and [`KeepAlive`].
pub mod future {
    pub use super::connector::ConnectFuture;
    pub use super::keep_alive::ResponseFuture;
}
