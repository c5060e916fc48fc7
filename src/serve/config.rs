//! The HTTP settings of [`Serve`](super::Serve) and the hyper builders made from them.
//!
//! The settings live on `Serve` as builder methods rather than behind a closure over
//! hyper-util's `auto::Builder`: the crate's invariants (hyper's timer, its
//! `half_close`, no header-read timeout of hyper's own) then cannot be undone by
//! accident, every value is checked before the server starts, and hyper-util's
//! `http1_only`/`http2_only`, which do nothing under `serve_connection_with_upgrades`,
//! are replaced by serving with hyper's own HTTP/1 or HTTP/2 connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use super::accept::Protocol;
use super::h2guard::FloodBudget;

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

fn invalid(setting: &str, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{setting}: {why}"))
}

impl HttpConfig {
    /// Restricts serving to one protocol.
    pub(super) fn only(&mut self, protocol: Protocol) {
        if self.only.is_some_and(|only| only != protocol) {
            self.conflicting_only = true;
        }
        self.only = Some(protocol);
    }

    /// Checks every setting; the error (`InvalidInput`) names the one at fault.
    pub(super) fn validate(&self) -> io::Result<()> {
        if self.conflicting_only {
            return Err(invalid(
                "http1_only/http2_only",
                "both set: no protocol left to serve",
            ));
        }
        if self.max_head_bytes < MIN_HEAD_BYTES {
            return Err(invalid(
                "max_head_bytes",
                format_args!(
                    "{} is below hyper's minimum of {MIN_HEAD_BYTES}",
                    self.max_head_bytes
                ),
            ));
        }
        if let Some(size) = self.max_frame_size
            && !(MIN_FRAME_SIZE..=MAX_FRAME_SIZE).contains(&size)
        {
            return Err(invalid(
                "http2_max_frame_size",
                format_args!("{size} is outside {MIN_FRAME_SIZE}..={MAX_FRAME_SIZE}"),
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
            if let Some(size) = size
                && size > MAX_WINDOW_SIZE
            {
                return Err(invalid(
                    setting,
                    format_args!("{size} is above {MAX_WINDOW_SIZE}"),
                ));
            }
        }
        if self.max_concurrent_streams == Some(0) {
            return Err(invalid(
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
                return Err(invalid(
                    setting,
                    "0 sends GOAWAY at the first reset; None turns the limit off",
                ));
            }
        }
        if self.max_send_buf_size == 0 {
            return Err(invalid(
                "http2_max_send_buf_size",
                "0 lets no response body out",
            ));
        }
        if let Some(budget) = &self.flood_budget {
            budget
                .validate()
                .map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
        }
        if let Some((interval, timeout)) = self.keep_alive
            && (interval.is_zero() || timeout.is_zero())
        {
            return Err(invalid(
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
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
            assert!(error.to_string().starts_with(setting), "{error}");
        }
    }
}
