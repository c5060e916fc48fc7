//! The HTTP settings of [`Serve`](super::Serve) and the hyper builders made from them.
//!
//! The settings live on `Serve` as builder methods rather than behind a closure over
//! hyper-util's `auto::Builder`: the crate's invariants (hyper's timer, its
//! `half_close`, no header-read timeout of hyper's own) then cannot be undone by
//! accident, every value is checked before the server starts, and hyper-util's
//! `http1_only`/`http2_only`, which do nothing under `serve_connection_with_upgrades`,
//! are replaced by serving with hyper's own HTTP/1 or HTTP/2 connection.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use super::accept::Protocol;
use super::h2guard::FloodBudget;
use crate::policy::ConfigError;

/// hyper's default limit on an HTTP/1 request head (its read buffer's
/// `DEFAULT_MAX_BUFFER_SIZE`, 8 KiB + 100 × 4 KiB); a larger head gets 431.
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// The smallest head limit hyper accepts (its initial read buffer).
const MIN_HEAD_BYTES: usize = 8192;
/// HTTP/2's bounds on SETTINGS_MAX_FRAME_SIZE (RFC 9113, section 6.5.2).
const MIN_FRAME_SIZE: u32 = 16_384;
const MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// HTTP/2's bound on flow-control windows (RFC 9113, section 6.9.1).
const MAX_WINDOW_SIZE: u32 = (1 << 31) - 1;

/// The default HTTP/2 stream limit per connection: nginx's `http2_max_concurrent_streams`
/// (128), below hyper's 200 and Go's 250. Together with [`HTTP2_MAX_SEND_BUF`] it bounds
/// what responses can queue on one connection: [`HTTP2_SEND_CAP_PER_CONN`].
pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// The default bound on the response bytes h2 queues per stream before the peer's
/// flow-control window lets them out (hyper's default is 400 KiB).
pub const HTTP2_MAX_SEND_BUF: u32 = 64 * 1024;
/// Streams × send buffer with the defaults: 8 MiB per connection. A response body chunk
/// larger than the buffer is queued whole, once per stream, on top of it.
pub const HTTP2_SEND_CAP_PER_CONN: u64 =
    HTTP2_MAX_CONCURRENT_STREAMS as u64 * HTTP2_MAX_SEND_BUF as u64;
/// h2's limit on streams the client resets before the server accepted them (the rapid
/// reset of CVE-2023-44487): past it, GOAWAY `ENHANCE_YOUR_CALM`.
pub const HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// hyper's limit on streams the server resets for the peer's errors (MadeYouReset,
/// CVE-2025-8671): past it, GOAWAY `ENHANCE_YOUR_CALM`.
pub const HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// The HTTP settings of a server, checked by [`validate`](Self::validate).
#[derive(Debug, Clone)]
pub(super) struct HttpConfig {
    pub(super) only: Option<Protocol>,
    /// Both `http1_only` and `http2_only` were asked for.
    pub(super) conflicting_only: bool,
    pub(super) max_head_bytes: usize,
    pub(super) max_concurrent_streams: Option<u32>,
    pub(super) max_pending_accept_reset_streams: Option<usize>,
    pub(super) max_local_error_reset_streams: Option<usize>,
    pub(super) max_send_buf_size: u32,
    pub(super) flood_budget: Option<FloodBudget>,
    pub(super) initial_stream_window_size: Option<u32>,
    pub(super) initial_connection_window_size: Option<u32>,
    pub(super) max_frame_size: Option<u32>,
    pub(super) max_header_list_size: Option<u32>,
    pub(super) keep_alive: Option<(Duration, Duration)>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            only: None,
            conflicting_only: false,
            max_head_bytes: MAX_HEAD_BYTES,
            max_concurrent_streams: Some(HTTP2_MAX_CONCURRENT_STREAMS),
            max_pending_accept_reset_streams: Some(HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS),
            max_local_error_reset_streams: Some(HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS),
            max_send_buf_size: HTTP2_MAX_SEND_BUF,
            flood_budget: Some(FloodBudget::default()),
            initial_stream_window_size: None,
            initial_connection_window_size: None,
            max_frame_size: None,
            max_header_list_size: None,
            keep_alive: None,
        }
    }
}

/// The settings of a [`serve`](super::serve()) server, built and checked once, as a
/// [`Policy`](crate::Policy) is: [`ServeSettings::builder`] chains plain setters
/// (hyper-util's and tonic's names), and [`build`](ServeSettingsBuilder::build) returns
/// the first invalid one as a [`ConfigError`] naming it, before any listener is bound.
/// [`Serve::settings`](super::Serve::settings) takes them; a server can then no longer
/// fail at start for a setting.
///
/// ```
/// use conn_hygiene::serve::ServeSettings;
///
/// let settings = ServeSettings::builder()
///     .http2_max_concurrent_streams(64)
///     .max_head_bytes(64 * 1024)
///     .build()
///     .expect("valid settings");
/// # let _ = settings;
/// let error = ServeSettings::builder().http2_max_frame_size(1024).build().unwrap_err();
/// assert_eq!(error.field(), "http2_max_frame_size");
/// ```
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub(super) http: HttpConfig,
    pub(super) handshake_timeout: Duration,
}

impl Default for ServeSettings {
    fn default() -> Self {
        ServeSettings {
            http: HttpConfig::default(),
            handshake_timeout: super::DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl ServeSettings {
    /// A builder holding the defaults.
    pub fn builder() -> ServeSettingsBuilder {
        ServeSettingsBuilder::default()
    }
}

/// Builds [`ServeSettings`]; see there.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ServeSettingsBuilder {
    settings: ServeSettings,
}

impl ServeSettingsBuilder {
    /// How long an [acceptor](super::Serve::with_acceptor)'s handshake may take in
    /// all, on top of the stream's first-byte and idle clocks (which a client trickling
    /// its handshake a byte at a time keeps alive). Defaults to
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`](super::DEFAULT_HANDSHAKE_TIMEOUT) (10 s). A
    /// handshake still running then is abandoned
    /// ([`Abandon::HandshakeTimeout`](crate::conn::Abandon::HandshakeTimeout)): the
    /// connection is reset.
    ///
    /// # Errors
    ///
    /// Zero (every handshake would be cut) or over a year makes [`build`](Self::build)
    /// fail with a [`ConfigError`] naming `handshake_timeout`.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.settings.handshake_timeout = timeout;
        self
    }

    /// Serves HTTP/1 only: an HTTP/2 client (prior knowledge, or ALPN `h2`) fails.
    /// By default both are served, the protocol told by ALPN or sniffed from the first
    /// bytes.
    ///
    /// # Errors
    ///
    /// Together with [`http2_only`](Self::http2_only), [`build`](Self::build) fails
    /// with a [`ConfigError`].
    pub fn http1_only(mut self) -> Self {
        self.settings.http.only(Protocol::Http1);
        self
    }

    /// Serves HTTP/2 only (prior knowledge, or TLS with ALPN `h2`): an HTTP/1 client
    /// fails. See [`http1_only`](Self::http1_only).
    pub fn http2_only(mut self) -> Self {
        self.settings.http.only(Protocol::Http2);
        self
    }

    /// The largest HTTP/1 request head accepted, in bytes (hyper's `max_buf_size`); a
    /// larger head gets 431 (Request Header Fields Too Large). Defaults to
    /// [`MAX_HEAD_BYTES`], hyper's default (408 KiB); nginx allows 4 × 8 KiB. HTTP/2
    /// header lists have their own limit,
    /// [`http2_max_header_list_size`](Self::http2_max_header_list_size).
    ///
    /// # Errors
    ///
    /// Below 8192 (hyper's minimum), [`build`](Self::build) fails with a [`ConfigError`]
    /// naming `max_head_bytes`.
    pub fn max_head_bytes(mut self, bytes: usize) -> Self {
        self.settings.http.max_head_bytes = bytes;
        self
    }

    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: how many requests a client may have
    /// open at once on one connection; a stream beyond it is refused
    /// (`REFUSED_STREAM`). Defaults to [`HTTP2_MAX_CONCURRENT_STREAMS`] (128, nginx's;
    /// hyper's is 200). `None` turns the limit off, which lets one client pin memory
    /// without bound (not advised).
    ///
    /// # Errors
    ///
    /// 0 makes [`build`](Self::build) fail with a [`ConfigError`] naming
    /// `http2_max_concurrent_streams`.
    pub fn http2_max_concurrent_streams(mut self, max: impl Into<Option<u32>>) -> Self {
        self.settings.http.max_concurrent_streams = max.into();
        self
    }

    /// How many streams a client may reset before the server has accepted them (the
    /// rapid reset attack, CVE-2023-44487) before it gets GOAWAY `ENHANCE_YOUR_CALM`
    /// (h2's `max_pending_accept_reset_streams`). Defaults to
    /// [`HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS`] (20, h2's). `None` turns the limit off.
    ///
    /// # Errors
    ///
    /// 0 makes [`build`](Self::build) fail with a [`ConfigError`] naming
    /// `http2_max_pending_accept_reset_streams`.
    pub fn http2_max_pending_accept_reset_streams(mut self, max: impl Into<Option<usize>>) -> Self {
        self.settings.http.max_pending_accept_reset_streams = max.into();
        self
    }

    /// How many streams the server may reset for the client's errors before the client
    /// gets GOAWAY `ENHANCE_YOUR_CALM` (hyper's `max_local_error_reset_streams`; the
    /// MadeYouReset attack, CVE-2025-8671). Defaults to
    /// [`HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS`] (1024, hyper's). `None` turns the limit
    /// off.
    ///
    /// # Errors
    ///
    /// 0 makes [`build`](Self::build) fail with a [`ConfigError`] naming
    /// `http2_max_local_error_reset_streams`.
    pub fn http2_max_local_error_reset_streams(mut self, max: impl Into<Option<usize>>) -> Self {
        self.settings.http.max_local_error_reset_streams = max.into();
        self
    }

    /// How many response bytes h2 queues per stream ahead of the client's flow-control
    /// window (hyper's `max_send_buf_size`). Defaults to [`HTTP2_MAX_SEND_BUF`] (64 KiB;
    /// hyper's is 400 KiB): with the default stream limit a connection queues at most
    /// [`HTTP2_SEND_CAP_PER_CONN`] (8 MiB), plus one body chunk per stream where a
    /// chunk is larger than the buffer.
    ///
    /// # Errors
    ///
    /// 0 makes [`build`](Self::build) fail with a [`ConfigError`] naming
    /// `http2_max_send_buf_size`.
    pub fn http2_max_send_buf_size(mut self, bytes: u32) -> Self {
        self.settings.http.max_send_buf_size = bytes;
        self
    }

    /// HTTP/2 `SETTINGS_INITIAL_WINDOW_SIZE`: the flow-control window of each stream,
    /// in bytes. Defaults to hyper's 1 MiB.
    ///
    /// # Errors
    ///
    /// Above 2³¹ − 1, [`build`](Self::build) fails with a [`ConfigError`] naming
    /// `http2_initial_stream_window_size`.
    pub fn http2_initial_stream_window_size(mut self, bytes: u32) -> Self {
        self.settings.http.initial_stream_window_size = Some(bytes);
        self
    }

    /// The HTTP/2 flow-control window of the whole connection, in bytes. Defaults to
    /// hyper's 1 MiB.
    ///
    /// # Errors
    ///
    /// Above 2³¹ − 1, [`build`](Self::build) fails with a [`ConfigError`] naming
    /// `http2_initial_connection_window_size`.
    pub fn http2_initial_connection_window_size(mut self, bytes: u32) -> Self {
        self.settings.http.initial_connection_window_size = Some(bytes);
        self
    }

    /// HTTP/2 `SETTINGS_MAX_FRAME_SIZE`: the largest frame payload the server
    /// accepts, in bytes. Defaults to hyper's 16 KiB.
    ///
    /// # Errors
    ///
    /// Outside 16 384 ..= 16 777 215 (RFC 9113), [`build`](Self::build) fails with
    /// a [`ConfigError`] naming `http2_max_frame_size`.
    pub fn http2_max_frame_size(mut self, bytes: u32) -> Self {
        self.settings.http.max_frame_size = Some(bytes);
        self
    }

    /// HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`: the largest request header list
    /// accepted, in bytes (decoded, plus 32 bytes per field), HTTP/2's counterpart of
    /// [`max_head_bytes`](Self::max_head_bytes). Defaults to hyper's 16 KiB; raise it
    /// with `max_head_bytes` for large cookies or tokens over HTTP/2.
    pub fn http2_max_header_list_size(mut self, bytes: u32) -> Self {
        self.settings.http.max_header_list_size = Some(bytes);
        self
    }

    /// The flood budget of every HTTP/2 connection: PING, SETTINGS, PRIORITY,
    /// WINDOW_UPDATE, RST_STREAM, empty and unknown frames are paid from a budget that
    /// only work (requests, DATA sent) refills, and a client past it gets GOAWAY
    /// `ENHANCE_YOUR_CALM` and is closed (nginx's "http2 flood detected", Envoy's frame
    /// budgets). On by default with [`FloodBudget::default`]; `None` turns it off.
    /// Works over TLS as in plaintext: it follows the frames after the acceptor.
    ///
    /// # Errors
    ///
    /// A zero `burst` or `resets_judged_after` makes [`build`](Self::build) fail with
    /// a [`ConfigError`] naming `http2_flood_budget.FIELD`.
    ///
    /// ```no_run
    /// # async fn dox(listener: conn_hygiene::Listener, app: axum::Router) -> std::io::Result<()> {
    /// use conn_hygiene::serve::{FloodBudget, ServeSettings};
    ///
    /// // Twice Envoy's burst for clients that PRIORITY-storm legitimately.
    /// let mut budget = FloodBudget::default();
    /// budget.burst = 2000;
    /// let settings = ServeSettings::builder()
    ///     .http2_flood_budget(budget)
    ///     .build()
    ///     .expect("valid settings");
    /// conn_hygiene::serve(listener, app).settings(settings).await?;
    /// # Ok(()) }
    /// ```
    pub fn http2_flood_budget(mut self, budget: impl Into<Option<FloodBudget>>) -> Self {
        self.settings.http.flood_budget = budget.into();
        self
    }

    /// Sends an HTTP/2 PING every `interval`, and closes the connection when one is not
    /// acknowledged within `timeout` (hyper's `keep_alive_interval` and
    /// `keep_alive_timeout`): a dead peer behind a silent network is found even while
    /// its streams wait. Off by default. The PINGs and their acknowledgements do not
    /// count as activity for the idle clock.
    ///
    /// # Errors
    ///
    /// A zero interval or timeout makes [`build`](Self::build) fail with a [`ConfigError`]
    /// naming `http2_keep_alive`.
    pub fn http2_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.settings.http.keep_alive = Some((interval, timeout));
        self
    }

    /// Checks every setting and returns them.
    ///
    /// # Errors
    ///
    /// The first invalid setting, named as its setter is; see each setter.
    pub fn build(self) -> Result<ServeSettings, ConfigError> {
        self.settings.http.validate()?;
        let handshake = self.settings.handshake_timeout;
        if handshake.is_zero() || handshake > crate::rate::MAX_TIMEOUT {
            return Err(ConfigError::new(
                "handshake_timeout",
                "must be greater than zero and at most a year",
            ));
        }
        Ok(self.settings)
    }
}

impl HttpConfig {
    /// Restricts serving to one protocol.
    pub(super) fn only(&mut self, protocol: Protocol) {
        if self.only.is_some_and(|only| only != protocol) {
            self.conflicting_only = true;
        }
        self.only = Some(protocol);
    }

    /// Checks every setting; the error names the one at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.conflicting_only {
            return Err(ConfigError::new(
                "http1_only/http2_only",
                "both set: no protocol left to serve",
            ));
        }
        if self.max_head_bytes < MIN_HEAD_BYTES {
            return Err(ConfigError::new(
                "max_head_bytes",
                "below hyper's minimum of 8192",
            ));
        }
        if let Some(size) = self.max_frame_size
            && !(MIN_FRAME_SIZE..=MAX_FRAME_SIZE).contains(&size)
        {
            return Err(ConfigError::new(
                "http2_max_frame_size",
                "outside 16384..=16777215 (RFC 9113)",
            ));
        }
        for (setting, size) in [
            (
                "http2_initial_stream_window_size",
                self.initial_stream_window_size,
            ),
            (
                "http2_initial_connection_window_size",
                self.initial_connection_window_size,
            ),
        ] {
            if size.is_some_and(|size| size > MAX_WINDOW_SIZE) {
                return Err(ConfigError::new(setting, "above 2^31 - 1 (RFC 9113)"));
            }
        }
        if self.max_concurrent_streams == Some(0) {
            return Err(ConfigError::new(
                "http2_max_concurrent_streams",
                "0 lets no request through; None turns the limit off",
            ));
        }
        for (setting, max) in [
            (
                "http2_max_pending_accept_reset_streams",
                self.max_pending_accept_reset_streams,
            ),
            (
                "http2_max_local_error_reset_streams",
                self.max_local_error_reset_streams,
            ),
        ] {
            if max == Some(0) {
                return Err(ConfigError::new(
                    setting,
                    "0 sends GOAWAY at the first reset; None turns the limit off",
                ));
            }
        }
        if self.max_send_buf_size == 0 {
            return Err(ConfigError::new(
                "http2_max_send_buf_size",
                "0 lets no response body out",
            ));
        }
        if let Some(budget) = &self.flood_budget {
            budget.validate()?;
        }
        if let Some((interval, timeout)) = self.keep_alive
            && (interval.is_zero() || timeout.is_zero())
        {
            return Err(ConfigError::new(
                "http2_keep_alive",
                "the interval and the timeout must be above zero",
            ));
        }
        Ok(())
    }

    /// The builders for the validated settings.
    pub(super) fn builders(&self) -> Builders {
        let mut auto = auto::Builder::new(TokioExecutor::new());
        let mut http1 = hyper::server::conn::http1::Builder::new();
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        // hyper gets a timer and no header timeout of its own: the stream's request-head
        // clock starts at a head's first byte, whereas hyper's would also cut idle
        // keep-alive connections.
        auto.http1()
            .timer(TokioTimer::new())
            .half_close(super::http1_half_close())
            .header_read_timeout(None)
            .max_buf_size(self.max_head_bytes);
        http1
            .timer(TokioTimer::new())
            .half_close(super::http1_half_close())
            .header_read_timeout(None)
            .max_buf_size(self.max_head_bytes);
        let mut auto_http2 = auto.http2();
        auto_http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(self.max_local_error_reset_streams)
            .max_send_buf_size(self.max_send_buf_size as usize)
            .initial_stream_window_size(self.initial_stream_window_size)
            .initial_connection_window_size(self.initial_connection_window_size)
            .max_frame_size(self.max_frame_size);
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(self.max_local_error_reset_streams)
            .max_send_buf_size(self.max_send_buf_size as usize)
            .initial_stream_window_size(self.initial_stream_window_size)
            .initial_connection_window_size(self.initial_connection_window_size)
            .max_frame_size(self.max_frame_size);
        if let Some(max) = self.max_header_list_size {
            auto_http2.max_header_list_size(max);
            http2.max_header_list_size(max);
        }
        if let Some((interval, timeout)) = self.keep_alive {
            auto_http2
                .keep_alive_interval(interval)
                .keep_alive_timeout(timeout);
            http2
                .keep_alive_interval(interval)
                .keep_alive_timeout(timeout);
        }
        Builders {
            auto,
            http1,
            http2,
            only: self.only,
            flood_budget: self.flood_budget,
        }
    }
}

/// hyper's three ways of serving a connection, configured alike.
#[derive(Debug)]
pub(super) struct Builders {
    pub(super) auto: auto::Builder<TokioExecutor>,
    pub(super) http1: hyper::server::conn::http1::Builder,
    pub(super) http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    pub(super) only: Option<Protocol>,
    /// The HTTP/2 guard's flood budget; `None`: off.
    pub(super) flood_budget: Option<FloodBudget>,
}

impl Builders {
    /// The protocol to serve a connection with: the server's restriction wins, then
    /// what the acceptor negotiated (ALPN); `None` sniffs the first bytes.
    pub(super) fn protocol(&self, negotiated: Option<Protocol>) -> Option<Protocol> {
        self.only.or(negotiated)
    }
}

/// A served connection that can be told to finish gracefully (HTTP/1: close after the
/// answer in flight; HTTP/2: GOAWAY).
pub(super) trait Retire: Future {
    fn retire(self: Pin<&mut Self>);
}

impl<I, S, B> Retire for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn retire(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> Retire for hyper::server::conn::http2::Connection<I, S, TokioExecutor>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn retire(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> Retire for auto::UpgradeableConnection<'_, I, S, TokioExecutor>
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper_util::server::conn::auto::HttpServerConnExec<S::Future, B>,
{
    fn retire(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every HTTP/2 default is at least as strict as hyper's and h2's, and `None`
    /// (off) is allowed wherever hyper allows it.
    #[test]
    fn http2_defaults_are_never_looser_than_hypers() {
        let config = HttpConfig::default();
        assert!(config.max_concurrent_streams.is_some_and(|max| max <= 200));
        assert!(
            config
                .max_pending_accept_reset_streams
                .is_some_and(|max| max <= 20)
        );
        assert!(
            config
                .max_local_error_reset_streams
                .is_some_and(|max| max <= 1024)
        );
        assert!(config.max_send_buf_size <= 400 * 1024);
        assert_eq!(HTTP2_SEND_CAP_PER_CONN, 8 << 20);
        let off = HttpConfig {
            max_concurrent_streams: None,
            max_pending_accept_reset_streams: None,
            max_local_error_reset_streams: None,
            ..HttpConfig::default()
        };
        off.validate().unwrap();
    }

    #[test]
    fn the_default_head_limit_is_hypers() {
        assert_eq!(MAX_HEAD_BYTES, 417_792);
        HttpConfig::default().validate().unwrap();
    }

    #[test]
    fn invalid_values_name_their_setting() {
        type Case = (fn(&mut HttpConfig), &'static str);
        let cases: [Case; 9] = [
            (|c| c.max_head_bytes = 100, "max_head_bytes"),
            (
                |c| c.max_concurrent_streams = Some(0),
                "http2_max_concurrent_streams",
            ),
            (
                |c| c.max_pending_accept_reset_streams = Some(0),
                "http2_max_pending_accept_reset_streams",
            ),
            (
                |c| c.max_local_error_reset_streams = Some(0),
                "http2_max_local_error_reset_streams",
            ),
            (|c| c.max_send_buf_size = 0, "http2_max_send_buf_size"),
            (|c| c.max_frame_size = Some(1024), "http2_max_frame_size"),
            (
                |c| c.initial_stream_window_size = Some(u32::MAX),
                "http2_initial_stream_window_size",
            ),
            (
                |c| c.keep_alive = Some((Duration::ZERO, Duration::from_secs(1))),
                "http2_keep_alive",
            ),
            (
                |c| {
                    c.only(Protocol::Http1);
                    c.only(Protocol::Http2);
                },
                "http1_only/http2_only",
            ),
        ];
        for (configure, setting) in cases {
            let mut config = HttpConfig::default();
            configure(&mut config);
            let error = config.validate().unwrap_err();
            assert_eq!(error.field(), setting, "{error}");
        }
    }
}
