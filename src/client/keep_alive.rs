//! Keep-alive eviction: [`KeepAliveLayer`] reads the server's `Keep-Alive: timeout=N`
//! and arms a clock that the connection's own task runs
//! ([`ClientStream`](super::ClientStream)).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// What [`KeepAliveLayer`] and the connection's task share.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) exchange: AtomicU64,
    evict: Mutex<Evict>,
}

#[derive(Debug, Default)]
pub(super) struct Evict {
    pub(super) armed: Option<Armed>,
    // The connection task's waker, from its last pending read: arming wakes it so
    // that it starts the clock.
    pub(super) waker: Option<Waker>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Armed {
    pub(super) exchange: u64,
    pub(super) after: Duration,
    pub(super) keep_alive: Duration,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Evict> {
        self.evict.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn arm(&self, armed: Armed) {
        let mut evict = self.lock();
        evict.armed = Some(armed);
        let waker = evict.waker.take();
        drop(evict);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Rides in each connection's `Connected` extras, so [`KeepAliveLayer`] finds the
/// connection behind a response. Weak: a response kept around does not keep the
/// connection's state alive.
#[derive(Clone)]
pub(super) struct Evictor(pub(super) Weak<Shared>);

/// A Tower layer for hyper-util's `Client` built with [`HygieneConnector`]: reads the
/// server's `Keep-Alive: timeout=N` from each HTTP/1 response and evicts the
/// connection when it has idled for `N` minus a margin, before the server closes it.
///
/// Without the margin, a request written just as the server's timer fires meets the
/// server's FIN and fails with "connection closed before message completed"; hyper
/// cannot retry it because it was already sent ([hyper#2136]).
///
/// The clock starts at the response's last byte (the layer wraps the body to see its
/// end) and stops when another request goes out on the connection. The eviction runs
/// in the connection's task and resets the connection: hyper-util drops it from the
/// pool, and a request it had handed that connection but not yet written is canceled
/// and retried on another one (hyper-util's `retry_canceled_requests`, on by default).
///
/// Limits: the layer sees only responses that come through it, over connections from
/// [`HygieneConnector`] (others pass through untouched). A server that closes idle
/// connections without announcing it is covered by hyper reading the FIN at once, not
/// by this layer; for a known fixed server timeout, hyper-util's `pool_idle_timeout`
/// below it does the same job for every server.
///
/// [hyper#2136]: https://github.com/hyperium/hyper/issues/2136
/// [`HygieneConnector`]: super::HygieneConnector
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct KeepAliveLayer {
    margin: Duration,
}

impl Default for KeepAliveLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl KeepAliveLayer {
    /// A layer with a margin of 1 s.
    pub const fn new() -> Self {
        KeepAliveLayer {
            margin: Duration::from_secs(1),
        }
    }

    /// How long before the server's timeout to evict. Capped at half the server's
    /// timeout, so `timeout=1` evicts after 500 ms. Defaults to 1 s.
    pub const fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// Renamed to [`margin`](Self::margin).
    #[deprecated(since = "0.2.0", note = "renamed to `margin`")]
    pub const fn with_margin(self, margin: Duration) -> Self {
        self.margin(margin)
    }
}

impl<S> Layer<S> for KeepAliveLayer {
    type Service = KeepAlive<S>;

    fn layer(&self, inner: S) -> KeepAlive<S> {
        KeepAlive {
            inner,
            margin: self.margin,
        }
    }
}

/// The service of [`KeepAliveLayer`].
#[derive(Debug, Clone)]
pub struct KeepAlive<S> {
    inner: S,
    margin: Duration,
}

impl<S> KeepAlive<S> {
    /// Wraps `inner` with the default margin of 1 s.
    pub fn new(inner: S) -> Self {
        KeepAliveLayer::new().layer(inner)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, R> Service<Request<B>> for KeepAlive<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: Body,
{
    type Response = Response<KeepAliveBody<R>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ResponseFuture::new(self.inner.call(request), self.margin)
    }
}

/// Arms the eviction clock of one response's connection when dropped.
#[derive(Debug)]
struct Arm {
    shared: Weak<Shared>,
    armed: Armed,
}

impl Drop for Arm {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.arm(self.armed);
        }
    }
}

fn arm_for<R>(response: &Response<R>, margin: Duration) -> Option<Arm> {
    if !matches!(response.version(), Version::HTTP_11 | Version::HTTP_10) {
        return None;
    }
    let keep_alive = response
        .headers()
        .get_all("keep-alive")
        .iter()
        .find_map(|value| keep_alive_timeout(value.to_str().ok()?))?;
    let Evictor(shared) = response.extensions().get::<Evictor>()?;
    let exchange = shared.upgrade()?.exchange.load(Ordering::Acquire);
    Some(Arm {
        shared: shared.clone(),
        armed: Armed {
            exchange,
            after: evict_after(keep_alive, margin),
            keep_alive,
        },
    })
}

/// How long a connection may idle when the server allows `keep_alive`: `margin`
/// less, capped at half of it.
fn evict_after(keep_alive: Duration, margin: Duration) -> Duration {
    keep_alive.saturating_sub(margin.min(keep_alive / 2))
}

/// The longest `Keep-Alive: timeout` honoured: a day.
const MAX_KEEP_ALIVE_SECS: u64 = 24 * 60 * 60;

/// The `timeout` parameter of a `Keep-Alive` header value, in whole seconds
/// (`timeout=5, max=100`).
fn keep_alive_timeout(value: &str) -> Option<Duration> {
    value.split(',').find_map(|param| {
        let (name, seconds) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("timeout") {
            return None;
        }
        let seconds = seconds.trim().trim_matches('"').parse::<u64>().ok()?;
        // Bounded, so that a hostile value cannot overflow an `Instant` later.
        Some(Duration::from_secs(seconds.min(MAX_KEEP_ALIVE_SECS)))
    })
}

pin_project! {
    /// The response body of [`KeepAlive`]: the inner body, unchanged, that arms the
    /// connection's eviction clock when it ends (or is dropped).
    #[derive(Debug)]
    pub struct KeepAliveBody<B> {
        #[pin]
        inner: B,
        arm: Option<Arm>,
    }
}

impl<B> KeepAliveBody<B> {
    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Unwraps the body. The connection's eviction clock is armed now.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for KeepAliveBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            // Dropping the arm arms the clock.
            None => drop(this.arm.take()),
            Some(Ok(_)) if this.inner.is_end_stream() => drop(this.arm.take()),
            Some(Ok(_)) => {}
            // A broken response: hyper closes the connection itself.
            Some(Err(_)) => {
                if let Some(arm) = this.arm.as_mut() {
                    arm.shared = Weak::new();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// The future of [`KeepAlive`]'s `call`.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        margin: Duration,
    }
}

impl<F> ResponseFuture<F> {
    fn new(inner: F, margin: Duration) -> Self {
        ResponseFuture { inner, margin }
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
    R: Body,
{
    type Output = Result<Response<KeepAliveBody<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let arm = arm_for(&response, *this.margin);
        Poll::Ready(Ok(response.map(|inner| {
            let mut body = KeepAliveBody { inner, arm };
            if body.inner.is_end_stream() {
                // No body to wait for (204, HEAD, `content-length: 0`).
                drop(body.arm.take());
            }
            body
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keep_alive_timeout() {
        let secs = |v| keep_alive_timeout(v).map(|d| d.as_secs());
        assert_eq!(
            secs("timeout=18446744073709551615"),
            Some(MAX_KEEP_ALIVE_SECS)
        );
        assert_eq!(secs("timeout=5, max=100"), Some(5));
        assert_eq!(secs("max=100, Timeout = 15"), Some(15));
        assert_eq!(secs("timeout=\"7\""), Some(7));
        assert_eq!(secs("max=100"), None);
        assert_eq!(secs("timeout=soon"), None);
        assert_eq!(secs(""), None);
    }

    #[test]
    fn margin_is_capped_at_half_the_timeout() {
        let after = |timeout, margin| {
            evict_after(Duration::from_secs(timeout), Duration::from_secs(margin))
        };
        assert_eq!(after(5, 1), Duration::from_secs(4));
        assert_eq!(after(1, 1), Duration::from_millis(500));
        assert_eq!(after(0, 1), Duration::ZERO);
    }
}
