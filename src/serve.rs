//! [`serve`]: HTTP/1 and HTTP/2 serving with every clock wired in and a drain deadline.
//!
//! `serve(listener, service)` accepts from a [`Listener`], runs each connection on
//! hyper-util's auto (HTTP/1 + HTTP/2) builder under [`Conn::supervise`](crate::Conn::supervise), and wraps the
//! service in [`HygieneLayer`](crate::HygieneLayer)'s service. hyper gets a timer, `half_close(true)` (so the
//! crate's half-close policy decides, not hyper) and no header timeout of its own: the
//! stream's request-head clock starts at a head's first byte, whereas hyper's would
//! also cut idle keep-alive connections. Protocol sniffing is bounded by the first-byte
//! clock. A request head larger than [`MAX_HEAD_BYTES`] gets 431.
//!
//! A connection recycled by [request count](crate::Policy::max_requests) or
//! [age](crate::Policy::max_connection_age) retires through hyper's graceful shutdown
//! (HTTP/1 closes after the answer in flight, HTTP/2 gets GOAWAY). The listener answers
//! a client over its [per-client cap](crate::Listener::with_max_connections_per_ip)
//! with a 503.
//!
//! An idle HTTP/2 connection is sent GOAWAY when its idle clock expires, and reset
//! only if it is still open a [linger bound](crate::Policy::linger_timeout) later.
//! [`Serve::http2_keep_alive`] adds server PINGs that find dead HTTP/2 peers.
//!
//! Graceful shutdown has a deadline, the policy's
//! [`drain_timeout`](crate::Policy::drain_timeout):
//!
//! 1. the listener is closed, so the port refuses new connections at once;
//! 2. every connection is asked to drain: idle keep-alive connections close at once,
//!    HTTP/1 answers in flight go out with `Connection: close`, HTTP/2 gets GOAWAY,
//!    and tunnels (WebSockets) are told through [`Conn::draining`](crate::Conn::draining);
//! 3. at the deadline whatever is left is reset;
//! 4. the [`ShutdownReport`] says how many connections drained and, for each one
//!    forced, what held it.
//!
//! # Example
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use conn_hygiene::{Listener, Policy, SocketOptions};
//!
//! # async fn dox() -> std::io::Result<()> {
//! let listener = Listener::bind(
//!     "127.0.0.1:3000".parse().unwrap(),
//!     SocketOptions::new(),
//!     Policy::default(),
//! )?;
//! let app = Router::new().route("/", get(|| async { "ok" }));
//! let report = conn_hygiene::serve(listener, app)
//!     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap() })
//!     .await?;
//! println!("shutdown: {report}");
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::time::Instant;
use tower::Service;

use crate::conn::{Abandon, Phase};
use crate::layer::{Hygiene, RequestBody};
use crate::listener::Listener;
use crate::policy::Policy;
use crate::registry::Registry;

/// The request type a service served by [`serve`] receives.
pub type ServeRequest = Request<RequestBody<Incoming>>;

/// Serves `service` on `listener` until the process ends; add a shutdown signal with
/// [`Serve::with_graceful_shutdown`]. See the [module docs](self).
pub fn serve<S, B>(listener: Listener, service: S) -> Serve<S, std::future::Pending<()>>
where
    S: Service<ServeRequest, Response = Response<B>> + Clone + Send + 'static,
{
    Serve {
        listener,
        service,
        signal: std::future::pending(),
        http2_keep_alive: None,
    }
}

/// The future of [`serve`]: resolves with the [`ShutdownReport`] after a graceful
/// shutdown.
#[must_use = "futures do nothing unless awaited"]
pub struct Serve<S, G> {
    listener: Listener,
    service: S,
    signal: G,
    http2_keep_alive: Option<(Duration, Duration)>,
}

impl<S, G> fmt::Debug for Serve<S, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl<S, G> Serve<S, G> {
    /// Shuts down gracefully, within the policy's drain deadline, when `signal`
    /// completes.
    pub fn with_graceful_shutdown<G2>(self, signal: G2) -> Serve<S, G2>
    where
        G2: Future<Output = ()> + Send + 'static,
    {
        Serve {
            listener: self.listener,
            service: self.service,
            signal,
            http2_keep_alive: self.http2_keep_alive,
        }
    }

    /// Sends an HTTP/2 PING every `interval`, and closes the connection when one is not
    /// acknowledged within `timeout` (hyper's `keep_alive_interval` and
    /// `keep_alive_timeout`): a dead peer behind a silent network is found even while
    /// its streams wait. Off by default. The PINGs and their acknowledgements do not
    /// count as activity for the idle clock.
    pub fn http2_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.http2_keep_alive = Some((interval, timeout));
        self
    }

    /// The listener's live connections, for a census while serving.
    pub fn registry(&self) -> Registry {
        self.listener.registry().clone()
    }
}

impl<S, B, G> IntoFuture for Serve<S, G>
where
    S: Service<ServeRequest, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Default + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    G: Future<Output = ()> + Send + 'static,
{
    type Output = io::Result<ShutdownReport>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let Serve {
                listener,
                service,
                signal,
                http2_keep_alive,
            } = self;
            // A client over its connection cap gets a 503 rather than a reset.
            let mut listener = listener.with_http_refusal(true);
            let registry = listener.registry().clone();
            let policy = listener.policy().clone();
            let builder = Arc::new(http_builder(http2_keep_alive));
            let mut signal = pin!(signal);
            loop {
                let accepted = tokio::select! {
                    biased;
                    () = &mut signal => break,
                    accepted = listener.accept() => accepted,
                };
                let (stream, _peer) = accepted?;
                let conn = stream.conn().clone();
                conn.mark_http();
                let service =
                    TowerToHyperService::new(Hygiene::for_conn(service.clone(), conn.clone()));
                let builder = builder.clone();
                // HTTP/1 handlers run inside this task: `Conn::current()` finds the handle.
                let task = conn.clone().supervise(conn.clone().scope(async move {
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let mut connection = pin!(connection);
                    let result = tokio::select! {
                        result = connection.as_mut() => result,
                        () = conn.draining() => {
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    };
                    if let Err(error) = result {
                        tracing::debug!(target: "conn_hygiene::serve", parent: conn.span(), %error, "connection error");
                    }
                }));
                tokio::spawn(task);
            }
            // Closing the listening socket makes the port refuse new connections at once.
            drop(listener);
            Ok(drain(&registry, &policy).await)
        })
    }
}

/// The largest HTTP/1 request head accepted; a larger one gets 431. hyper's own limit
/// is about 400 KiB; nginx allows 4 × 8 KiB by default.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

fn http_builder(http2_keep_alive: Option<(Duration, Duration)>) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .half_close(true)
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES);
    let mut http2 = builder.http2();
    http2.timer(TokioTimer::new());
    if let Some((interval, timeout)) = http2_keep_alive {
        http2
            .keep_alive_interval(interval)
            .keep_alive_timeout(timeout);
    }
    builder
}

/// Asks every live connection to drain and resets what is left at the deadline. The
/// connections' tasks run under `Conn::supervise`, which drops them on abandonment.
async fn drain(registry: &Registry, policy: &Policy) -> ShutdownReport {
    let started = Instant::now();
    let deadline = policy.drain_timeout();
    let connections = registry.connections();
    tracing::info!(
        target: "conn_hygiene::drain",
        connections = connections.len(),
        deadline_ms = deadline.as_millis() as u64,
        "drain started"
    );
    for conn in &connections {
        conn.start_draining();
    }
    let mut forced = Vec::new();
    if tokio::time::timeout(deadline, registry.wait_below(1))
        .await
        .is_err()
    {
        for conn in registry.connections() {
            forced.push(ForcedConnection {
                id: conn.id(),
                peer: conn.peer_addr(),
                held_by: conn.phase(),
                age: conn.age(),
            });
            conn.abandon(Abandon::DrainDeadline);
        }
        // The supervised tasks drop their streams as soon as they are polled.
        let _ = tokio::time::timeout(Duration::from_secs(1), registry.wait_below(1)).await;
    }
    let report = ShutdownReport {
        drained: connections.len().saturating_sub(forced.len()),
        forced,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        target: "conn_hygiene::drain",
        drained = report.drained,
        forced = report.forced.len(),
        elapsed_ms = report.elapsed.as_millis() as u64,
        "drain finished"
    );
    report
}

/// What a graceful shutdown did.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    drained: usize,
    forced: Vec<ForcedConnection>,
    elapsed: Duration,
}

impl ShutdownReport {
    /// Connections that finished on their own during the drain.
    pub fn drained(&self) -> usize {
        self.drained
    }

    /// Connections reset at the deadline, with what held each.
    pub fn forced(&self) -> &[ForcedConnection] {
        &self.forced
    }

    /// How long the drain took.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "drained={} forced={} in {:?}",
            self.drained,
            self.forced.len(),
            self.elapsed
        )?;
        for conn in &self.forced {
            write!(f, "; #{} {} held by {}", conn.id, conn.peer, conn.held_by())?;
        }
        Ok(())
    }
}

/// A connection reset at the drain deadline.
#[derive(Debug, Clone)]
pub struct ForcedConnection {
    id: u64,
    peer: SocketAddr,
    held_by: Phase,
    age: Duration,
}

impl ForcedConnection {
    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The phase it was in at the deadline: [`Phase::Busy`] is a busy handler,
    /// [`Phase::WriteStall`] a slow reader, [`Phase::BodyWait`] a body upload,
    /// [`Phase::Tunnel`] an upgraded connection (a WebSocket).
    pub fn phase(&self) -> Phase {
        self.held_by
    }

    /// What held the drain, in words: "busy handler", "slow reader", "body upload",
    /// "tunnel", …
    pub fn held_by(&self) -> &'static str {
        match self.held_by {
            Phase::Busy => "busy handler",
            Phase::WriteStall => "slow reader",
            Phase::BodyWait => "body upload",
            Phase::ReadingHead => "request head",
            Phase::HalfClosed => "half-closed peer",
            Phase::Lingering => "lingering close",
            Phase::Tunnel => "tunnel",
            _ => "idle",
        }
    }

    /// How old the connection was.
    pub fn age(&self) -> Duration {
        self.age
    }
}
