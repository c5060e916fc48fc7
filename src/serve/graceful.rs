//! [`BoundedShutdown`]: the deregistration phase, the drain deadline and the
//! [`ShutdownReport`] for servers the crate does not run, such as `axum::serve` and
//! tonic's `Server`, over the crate's [`Listener`].

use std::fmt;
use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::readiness::Readiness;
use super::shutdown::{Deregistering, ShutdownReport, drain};
use crate::listener::Listener;
use crate::registry::Registry;

/// A graceful shutdown with a deadline for a server that runs its own accept loop over
/// a [`Listener`]: `axum::serve`, tonic's `Server` with
/// `Listener::into_incoming` (feature `tonic`), or your
/// own.
///
/// Such a server's own graceful shutdown waits for every connection with no deadline,
/// and lingering closes after it. This one runs the same phases as
/// [`serve`](crate::serve()) through the listener's [`Registry`]:
///
/// 1. on the signal, a **deregistration phase** of the policy's
///    [`deregister_delay`](crate::policy::PolicyBuilder::deregister_delay) (none by default): the
///    [`Readiness`] turns unready, the server keeps accepting and serving, and every
///    connection, old or new, retires after its next answer (`Connection: close` on
///    HTTP/1, added by the [`HygieneLayer`](crate::HygieneLayer); without the layer
///    nothing tells the client);
/// 2. then the future given to the server's graceful shutdown
///    ([`signal`](Self::signal)) resolves: the server closes its listener and drains
///    (HTTP/2 connections get GOAWAY from the server itself), and the crate asks every
///    connection, tunnels included, to drain;
/// 3. at the policy's [`drain_timeout`](crate::policy::PolicyBuilder::drain_timeout) every
///    connection left is reset. With the layer, a busy handler's response future ends
///    at once; without it, a handler that never returns keeps its task, but its socket
///    is shut down a second later, so the kernel releases the connection.
///
/// [`run`](Self::run) drives the server to the end of the drain and returns the
/// [`ShutdownReport`], by the deadline (plus a second's notice) even when the server
/// itself would wait for a handler forever. It also waits for the lingering closes the
/// server's own shutdown does not see, so that the runtime does not end them early.
///
/// [`serve`](crate::serve()) has these phases built in: do not add one of these to it.
///
/// It was called `GracefulShutdown` before 0.2, the name of hyper-util's
/// `server::graceful::GracefulShutdown`, which watches connections and waits for them
/// with no deadline; this one is bounded, hence its name.
///
/// ```no_run
/// # #[cfg(feature = "axum")]
/// # async fn dox() -> std::io::Result<()> {
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use conn_hygiene::serve::BoundedShutdown;
/// use conn_hygiene::{Conn, HygieneLayer, Listener, Policy, SocketOptions};
///
/// let policy = Policy::builder()
///     .deregister_delay(Duration::from_secs(10))
///     .drain_timeout(Duration::from_secs(20))
///     .build()
///     .expect("valid policy");
/// let listener = Listener::bind("0.0.0.0:3000", SocketOptions::new(), policy)?;
/// let shutdown = BoundedShutdown::new(&listener);
/// let app = Router::new()
///     .route("/", get(|| async { "ok" }))
///     .route_service("/healthz", shutdown.readiness())
///     .layer(HygieneLayer::new());
/// let server = axum::serve(listener, app.into_make_service_with_connect_info::<Conn>())
///     .with_graceful_shutdown(shutdown.signal(async { tokio::signal::ctrl_c().await.unwrap() }));
/// let report = shutdown.run(server).await?;
/// println!("shutdown: {report}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BoundedShutdown {
    registry: Registry,
    readiness: Readiness,
    deregister_delay: Duration,
    drain_timeout: Duration,
    state: Arc<State>,
}

/// The former name of [`BoundedShutdown`].
#[deprecated(
    since = "0.2.0",
    note = "renamed to `BoundedShutdown` (hyper-util's `GracefulShutdown` is another thing)"
)]
pub type GracefulShutdown = BoundedShutdown;

struct State {
    begun: AtomicBool,
    // The deregistration phase is over: the server may close its listener.
    deregistered: watch::Sender<bool>,
    report: watch::Sender<Option<ShutdownReport>>,
}

impl fmt::Debug for BoundedShutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedShutdown")
            .field("stage", &self.readiness.stage())
            .field("deregister_delay", &self.deregister_delay)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl BoundedShutdown {
    /// A shutdown of `listener`'s connections, with the policy's
    /// [`deregister_delay`](crate::Policy::deregister_delay) and
    /// [`drain_timeout`](crate::Policy::drain_timeout).
    pub fn new(listener: &Listener) -> Self {
        BoundedShutdown {
            registry: listener.registry().clone(),
            readiness: Readiness::new(),
            deregister_delay: listener.policy().deregister_delay().unwrap_or_default(),
            drain_timeout: listener.policy().drain_timeout(),
            state: Arc::new(State {
                begun: AtomicBool::new(false),
                deregistered: watch::Sender::new(false),
                report: watch::Sender::new(None),
            }),
        }
    }

    /// Overrides the policy's [`deregister_delay`](crate::policy::PolicyBuilder::deregister_delay)
    /// for this shutdown.
    #[must_use]
    #[deprecated(
        since = "0.2.0",
        note = "set `deregister_delay` on the listener's `Policy`, its one home"
    )]
    pub fn deregister_delay(mut self, delay: Duration) -> Self {
        self.deregister_delay = delay;
        self
    }

    /// Overrides the policy's [`drain_timeout`](crate::policy::PolicyBuilder::drain_timeout) for
    /// this shutdown.
    #[must_use]
    #[deprecated(
        since = "0.2.0",
        note = "set `drain_timeout` on the listener's `Policy`, its one home"
    )]
    pub fn drain_timeout(mut self, deadline: Duration) -> Self {
        self.drain_timeout = deadline;
        self
    }

    /// Uses `readiness` as the flag this shutdown turns unready, instead of its own.
    #[must_use]
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// The readiness flag: ready until the signal. As a Tower service it is a health
    /// endpoint that answers 503 from then on.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// The future to give the server's graceful shutdown (axum's
    /// `with_graceful_shutdown`, tonic's `serve_with_incoming_shutdown`): it waits for
    /// `signal`, runs the deregistration phase, and resolves when the server should
    /// close its listener. The drain and its deadline start then.
    pub fn signal<F>(&self, signal: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        async move {
            signal.await;
            this.begin(this.deregister_delay);
            let mut deregistered = this.state.deregistered.subscribe();
            // The sender lives in `this`, so this never fails.
            let _ = deregistered.wait_for(|done| *done).await;
        }
    }

    /// Runs `server` (given [`signal`](Self::signal) as its shutdown signal) and
    /// resolves with the report when the drain is over: every connection closed,
    /// lingering closes included, or reset at the deadline. A server that still waits
    /// for a handler after that is dropped (its connection tasks, spawned, run on until
    /// the runtime ends). An error of the server is returned at once.
    ///
    /// A server that ends before the signal is drained at once, without the
    /// deregistration phase.
    pub async fn run<F, E>(&self, server: F) -> Result<ShutdownReport, E>
    where
        F: IntoFuture<Output = Result<(), E>>,
    {
        let mut report = self.state.report.subscribe();
        tokio::select! {
            result = server.into_future() => result?,
            _ = report.wait_for(Option::is_some) => {}
        }
        self.begin(Duration::ZERO);
        loop {
            if let Some(report) = report.borrow_and_update().clone() {
                return Ok(report);
            }
            // The sender lives in `self`, so this never fails.
            let _ = report.changed().await;
        }
    }

    /// Starts the phases once, in a task of their own, so that they run to the end
    /// whether or not the server still polls its signal.
    fn begin(&self, deregister_delay: Duration) {
        if self.state.begun.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut phase = Deregistering::start(&this.registry, &this.readiness, deregister_delay);
            phase.ended().await;
            let deregistration = phase.finish(&this.registry);
            this.state.deregistered.send_replace(true);
            let report = drain(
                &this.registry,
                &this.readiness,
                this.drain_timeout,
                deregistration,
            )
            .await;
            this.state.report.send_replace(Some(report));
        });
    }
}
