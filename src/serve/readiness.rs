//! [`Readiness`]: whether the server still wants new traffic, for health checks.

use std::convert::Infallible;
use std::fmt;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode, header};
use tokio::sync::watch;
use tower::Service;

/// Where a server is in its life, as [`Readiness::stage`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// Accepting and serving: ready.
    Serving,
    /// The shutdown signal came: still accepting and serving, but unready, so that
    /// balancers withdraw the server (see [`Policy::deregister_delay`](crate::Policy::deregister_delay)).
    Deregistering,
    /// The listener is closed; in-flight work is finishing.
    Draining,
    /// The drain is over.
    Stopped,
}

impl Stage {
    /// A short lowercase name: `serving`, `deregistering`, `draining`, `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Serving => "serving",
            Stage::Deregistering => "deregistering",
            Stage::Draining => "draining",
            Stage::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cheap, cloneable readiness flag set by [`serve`](crate::serve()) or a
/// [`BoundedShutdown`](super::BoundedShutdown): ready while
/// serving, unready from the shutdown signal on.
///
/// It is also a ready-made health endpoint: as a Tower service it answers every
/// request with `200 ok` while ready, and after with a 503 whose body is the
/// [stage](Self::stage) (`deregistering`, then `draining` once the listener has
/// closed) and `Connection: close`. Route your readiness probe to it; with your own
/// health handler, read [`is_ready`](Self::is_ready) instead.
///
/// ```no_run
/// # #[cfg(feature = "axum")]
/// # async fn dox() -> std::io::Result<()> {
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use conn_hygiene::serve::Readiness;
/// use conn_hygiene::{Listener, Policy, SocketOptions};
///
/// let policy = Policy::builder()
///     .deregister_delay(Duration::from_secs(10))
///     .build()
///     .expect("valid policy");
/// let listener = Listener::bind("0.0.0.0:3000", SocketOptions::new(), policy)?;
/// let readiness = Readiness::new();
/// let app = Router::new()
///     .route("/", get(|| async { "ok" }))
///     .route_service("/healthz", readiness.clone());
/// conn_hygiene::serve(listener, app)
///     .with_readiness(readiness)
///     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap() })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Readiness {
    stage: Arc<watch::Sender<Stage>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("stage", &self.stage())
            .finish()
    }
}

impl Readiness {
    /// A flag in [`Stage::Serving`].
    pub fn new() -> Self {
        Readiness {
            stage: Arc::new(watch::Sender::new(Stage::Serving)),
        }
    }

    /// Whether the server wants new traffic: [`Stage::Serving`].
    pub fn is_ready(&self) -> bool {
        self.stage() == Stage::Serving
    }

    /// The server's stage now.
    pub fn stage(&self) -> Stage {
        *self.stage.borrow()
    }

    /// Waits until the server is no longer ready (the shutdown signal came).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn unready(&self) {
        let mut stage = self.stage.subscribe();
        // The sender lives in `self`, so this never fails.
        let _ = stage.wait_for(|stage| *stage != Stage::Serving).await;
    }

    /// Waits until the listener has closed: [`Stage::Draining`] or later.
    pub(crate) async fn listener_closed(&self) {
        let mut stage = self.stage.subscribe();
        let _ = stage
            .wait_for(|stage| matches!(stage, Stage::Draining | Stage::Stopped))
            .await;
    }

    pub(crate) fn set(&self, stage: Stage) {
        self.stage.send_replace(stage);
    }
}

impl<B> Service<Request<B>> for Readiness {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let mut response = Response::new(String::new());
        if self.is_ready() {
            *response.body_mut() = "ok\n".into();
        } else {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            *response.body_mut() = format!("{}\n", self.stage());
            // A checker's connection is not worth keeping to a server on its way out.
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_503_once_unready() {
        let mut readiness = Readiness::new();
        let ok = readiness.call(Request::new(())).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let waiter = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.unready().await }
        });
        readiness.set(Stage::Deregistering);
        waiter.await.unwrap();
        let unready = readiness.call(Request::new(())).await.unwrap();
        assert_eq!(unready.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unready.body(), "deregistering\n");
        assert_eq!(unready.headers()[header::CONNECTION], "close");
    }
}
