//! The connector for hyper-util's legacy `Client`.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

use super::connect::{client_policy, wrap};
use super::stream::ClientStream;
use crate::options::SocketOptions;
use crate::policy::Policy;

type BoxError = Box<dyn StdError + Send + Sync>;

/// A connector for hyper-util's legacy `Client`: wraps a connector that yields TCP
/// streams (by default hyper-util's `HttpConnector`), applies [`SocketOptions`] to
/// each connection and returns it as a [`ClientStream`].
///
/// Every response then carries the connection's [`Conn`] (and hyper-util's
/// `HttpInfo`) in its extensions. See the [module docs](super).
///
/// `SO_SNDBUF` and `SO_RCVBUF` are set after the connection is made; to shape the TCP
/// window, set them on the `HttpConnector` instead (`set_send_buffer_size`,
/// `set_recv_buffer_size`), which sets them before connecting.
///
/// [`Conn`]: crate::Conn
#[derive(Debug, Clone)]
pub struct HygieneConnector<C = HttpConnector> {
    inner: C,
    options: Arc<SocketOptions>,
    policy: Policy,
}

impl HygieneConnector {
    /// Wraps a default `HttpConnector` (plain `http://` only), with `options` and
    /// [`client_policy`].
    pub fn new(options: SocketOptions) -> Self {
        Self::with_connector(HttpConnector::new(), options)
    }
}

impl<C> HygieneConnector<C> {
    /// Wraps `inner`, any connector that yields `TokioIo<TcpStream>` (an
    /// `HttpConnector` with its own resolver or settings), with `options` and
    /// [`client_policy`].
    pub fn with_connector(inner: C, options: SocketOptions) -> Self {
        HygieneConnector {
            inner,
            options: Arc::new(options),
            policy: client_policy(),
        }
    }

    /// Sets the policy of the connections' streams. Defaults to [`client_policy`].
    #[must_use]
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The options applied to each connection.
    pub fn options(&self) -> &SocketOptions {
        &self.options
    }

    /// The policy of the connections' streams.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The wrapped connector.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// The wrapped connector, mutably.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Unwraps the connector.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<C> Service<Uri> for HygieneConnector<C>
where
    C: Service<Uri, Response = TokioIo<TcpStream>>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = ClientStream;
    type Error = ConnectError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| ConnectError::new("connect error", e))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let options = Arc::clone(&self.options);
        let policy = self.policy.clone();
        ConnectFuture::new(async move {
            // A value the kernel would refuse fails before the connect.
            options
                .validate()
                .map_err(|e| ConnectError::new("socket option error", e))?;
            let stream = connecting
                .await
                .map_err(|e| ConnectError::new("connect error", e))?
                .into_inner();
            options
                .apply_to_stream(&stream)
                .map_err(|e| ConnectError::new("socket option error", e))?;
            let peer = stream
                .peer_addr()
                .map_err(|e| ConnectError::new("connect error", e))?;
            Ok(ClientStream::new(wrap(stream, peer, policy)))
        })
    }
}

/// [`HygieneConnector`] failed to connect.
///
/// The cause (hyper-util's `ConnectError`, or a [`SocketOptionError`]) comes through
/// [`source`](StdError::source).
///
/// [`SocketOptionError`]: crate::options::SocketOptionError
#[derive(Debug)]
pub struct ConnectError {
    message: &'static str,
    source: BoxError,
}

impl ConnectError {
    fn new(message: &'static str, source: impl Into<BoxError>) -> Self {
        ConnectError {
            message,
            source: source.into(),
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)
    }
}

impl StdError for ConnectError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// The future of [`HygieneConnector`]'s `call`.
#[must_use = "futures do nothing unless polled"]
pub struct ConnectFuture {
    inner: Pin<Box<dyn Future<Output = Result<ClientStream, ConnectError>> + Send>>,
}

impl ConnectFuture {
    fn new(
        inner: impl Future<Output = Result<ClientStream, ConnectError>> + Send + 'static,
    ) -> Self {
        ConnectFuture {
            inner: Box::pin(inner),
        }
    }
}

impl fmt::Debug for ConnectFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectFuture").finish_non_exhaustive()
    }
}

impl Future for ConnectFuture {
    type Output = Result<ClientStream, ConnectError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
