//! Socket options for listeners and streams, set through [socket2].
//!
//! [`SocketOptions`] is a small, `const`-buildable bundle. Every option is
//! optional: an option you do not set costs no system call and stays at the
//! kernel's default. It is used in two places:
//!
//! - [`bind`] creates a listener with `SO_REUSEADDR` (on by default),
//!   `SO_REUSEPORT`, the buffer sizes and the listen backlog;
//! - [`SocketOptions::apply_to_stream`] sets `TCP_NODELAY`, TCP keepalive,
//!   `TCP_USER_TIMEOUT` and the buffer sizes on each accepted or connected
//!   stream. Accepted sockets do not reliably inherit these from the listener
//!   on every OS, so they are set per stream.
//!
//! # Required and best-effort options
//!
//! | option | kind |
//! | --- | --- |
//! | `TCP_NODELAY`, TCP keepalive, `TCP_USER_TIMEOUT`, `SO_REUSEADDR`, `SO_REUSEPORT` | required: a failure is a [`SocketOptionError`] naming the option |
//! | `SO_SNDBUF`, `SO_RCVBUF` | best-effort tuning: a failure logs a `warn!` event and the socket keeps its current size |
//!
//! A value the kernel would refuse (a keepalive time under a second, say) fails
//! before any system call, when the listener is bound or the options are applied: see
//! [`SocketOptions::validate`].
//!
//! A best-effort failure is logged with target `conn_hygiene::options` and the
//! fields `option` (`"SO_SNDBUF"` or `"SO_RCVBUF"`), `size` (requested bytes)
//! and `error`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use conn_hygiene::{SocketOptions, options::bind};
//!
//! // Built at compile time; share it between the listener and the streams.
//! const OPTIONS: SocketOptions = SocketOptions::new()
//!     .nodelay(true)
//!     .keepalive_time(Duration::from_secs(60))
//!     .backlog(4096);
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let listener = bind("127.0.0.1:0".parse().unwrap(), OPTIONS)?;
//! # let _client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
//! // In the accept loop:
//! let (stream, _peer) = listener.accept().await?;
//! // A required option that fails names itself: "failed to set TCP_NODELAY".
//! OPTIONS.apply_to_stream(&stream)?;
//! assert!(stream.nodelay()?);
//! # Ok(())
//! # }
//! ```

use std::error::Error;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};

/// Options applied to a listener by [`bind`] and to streams by
/// [`apply_to_stream`](SocketOptions::apply_to_stream).
///
/// Built with `const fn with_*` methods, in the style of socket2's
/// [`TcpKeepalive`]. [`Default`] is [`SocketOptions::new`]: `SO_REUSEADDR` on
/// for listeners (except on Windows), a backlog of 1024, everything else left
/// at the kernel default.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct SocketOptions {
    nodelay: Option<bool>,
    // TCP keepalive is on when any of its parameters is set.
    keepalive_time: Option<Duration>,
    // Set only through the Linux builder methods.
    keepalive_interval: Option<Duration>,
    keepalive_retries: Option<u32>,
    user_timeout: Option<Duration>,
    reuse_address: bool,
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    reuse_port: bool,
    backlog: u32,
    send_buffer_size: Option<usize>,
    recv_buffer_size: Option<usize>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl SocketOptions {
    /// Returns the default options: `SO_REUSEADDR` on for listeners (except on
    /// Windows), a listen backlog of 1024, and every other option left at the
    /// kernel default.
    pub const fn new() -> Self {
        Self {
            nodelay: None,
            keepalive_time: None,
            keepalive_interval: None,
            keepalive_retries: None,
            user_timeout: None,
            // On Windows SO_REUSEADDR lets another socket take over a port in
            // use, and rebinding over TIME_WAIT works without it; mio and
            // tokio leave it off there for the same reason.
            reuse_address: !cfg!(windows),
            reuse_port: false,
            backlog: 1024,
            send_buffer_size: None,
            recv_buffer_size: None,
        }
    }

    /// Sets `TCP_NODELAY` on streams: `true` disables Nagle's algorithm, so
    /// small writes are sent at once instead of waiting for the previous
    /// segment's ACK.
    ///
    /// Same name (level `IPPROTO_TCP`) on every OS. The kernel default is
    /// `false`; unset, the stream's value is left as it is.
    ///
    /// Required: a failure is an error.
    pub const fn nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = Some(nodelay);
        self
    }

    /// Renamed to [`nodelay`](Self::nodelay).
    #[deprecated(since = "0.2.0", note = "renamed to `nodelay`")]
    pub const fn with_nodelay(self, nodelay: bool) -> Self {
        self.nodelay(nodelay)
    }

    /// Enables TCP keepalive (`SO_KEEPALIVE`) on streams and sets the idle time
    /// after which the first probe is sent.
    ///
    /// The option is `TCP_KEEPIDLE` on Linux, Android and the BSDs,
    /// `TCP_KEEPALIVE` on macOS and iOS, and the `keepalivetime` field of
    /// `SIO_KEEPALIVE_VALS` on Windows. Linux takes whole seconds from 1 to 32767;
    /// any other value, a fraction of a second included, fails
    /// [validation](SocketOptions::validate) on every platform, rather than being
    /// truncated or refused by the kernel for each connection. On OpenBSD, Haiku and a
    /// few others socket2 cannot set it: there only `SO_KEEPALIVE` is enabled
    /// and the system-wide idle time applies. Unset, keepalive stays off (the kernel
    /// default; Linux's idle time is then `net.ipv4.tcp_keepalive_time`,
    /// 7200 seconds).
    ///
    /// Required: a failure is an error with option name `"TCP keepalive"`.
    pub const fn keepalive_time(mut self, time: Duration) -> Self {
        self.keepalive_time = Some(time);
        self
    }

    /// Renamed to [`keepalive_time`](Self::keepalive_time).
    #[deprecated(since = "0.2.0", note = "renamed to `keepalive_time`")]
    pub const fn with_keepalive_time(self, time: Duration) -> Self {
        self.keepalive_time(time)
    }

    /// Sets the send buffer size (`SO_SNDBUF`, bytes) on the listener and on
    /// streams.
    ///
    /// Linux doubles the value (for bookkeeping overhead), after clamping it
    /// to `net.core.wmem_max`, with a floor of about 4.5 KiB; reading it back
    /// returns the doubled value. Setting it turns off Linux's send buffer
    /// autotuning for that socket. Sockets accepted from the listener inherit
    /// it on Linux. Unset, the kernel default applies (Linux: autotuned,
    /// starting at `net.ipv4.tcp_wmem[1]`).
    ///
    /// Best-effort: a failure logs a `warn!` and the socket keeps its size.
    pub const fn send_buffer_size(mut self, bytes: usize) -> Self {
        self.send_buffer_size = Some(bytes);
        self
    }

    /// Renamed to [`send_buffer_size`](Self::send_buffer_size).
    #[deprecated(since = "0.2.0", note = "renamed to `send_buffer_size`")]
    pub const fn with_send_buffer_size(self, bytes: usize) -> Self {
        self.send_buffer_size(bytes)
    }

    /// Sets the receive buffer size (`SO_RCVBUF`, bytes) on the listener and on
    /// streams.
    ///
    /// Linux doubles the value (for bookkeeping overhead), after clamping it
    /// to `net.core.rmem_max`, with a floor of about 2.3 KiB; reading it back
    /// returns the doubled value. Setting it turns off Linux's receive buffer
    /// autotuning for that socket. It is set on the listener before `listen`
    /// so that accepted sockets inherit it and the TCP window scale is chosen
    /// from it. Unset, the kernel default applies (Linux: autotuned, starting
    /// at `net.ipv4.tcp_rmem[1]`).
    ///
    /// Best-effort: a failure logs a `warn!` and the socket keeps its size.
    pub const fn recv_buffer_size(mut self, bytes: usize) -> Self {
        self.recv_buffer_size = Some(bytes);
        self
    }

    /// Renamed to [`recv_buffer_size`](Self::recv_buffer_size).
    #[deprecated(since = "0.2.0", note = "renamed to `recv_buffer_size`")]
    pub const fn with_recv_buffer_size(self, bytes: usize) -> Self {
        self.recv_buffer_size(bytes)
    }

    /// Sets `SO_REUSEADDR` on the listener, before `bind`.
    ///
    /// On Unix it lets a restarted server bind its port while connections
    /// from the previous run are still in TIME_WAIT (without it, `bind` fails
    /// with `EADDRINUSE` for up to 60 seconds on Linux). It does not let two
    /// listeners share a port: that is [`reuse_port`]. On Windows it lets
    /// a socket take over a port in use, so it is off there by default.
    ///
    /// Defaults to `true` (Windows: `false`). `false` makes no system call and
    /// leaves the kernel default, off.
    ///
    /// Required: a failure is an error.
    ///
    /// [`reuse_port`]: SocketOptions::reuse_port
    pub const fn reuse_address(mut self, reuse: bool) -> Self {
        self.reuse_address = reuse;
        self
    }

    /// Renamed to [`reuse_address`](Self::reuse_address).
    #[deprecated(since = "0.2.0", note = "renamed to `reuse_address`")]
    pub const fn with_reuse_address(self, reuse: bool) -> Self {
        self.reuse_address(reuse)
    }

    /// Sets the listen backlog passed to `listen(2)`: how many fully
    /// established connections may wait for `accept`.
    ///
    /// The kernel silently clamps it: Linux to `net.core.somaxconn` (4096
    /// since Linux 5.4, 128 before), macOS and the BSDs to
    /// `kern.ipc.somaxconn`. Values above `i32::MAX` are clamped to it.
    /// Half-open connections (SYN received) are counted separately, by
    /// `net.ipv4.tcp_max_syn_backlog` on Linux.
    ///
    /// Defaults to 1024.
    pub const fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Renamed to [`backlog`](Self::backlog).
    #[deprecated(since = "0.2.0", note = "renamed to `backlog`")]
    pub const fn with_backlog(self, backlog: u32) -> Self {
        self.backlog(backlog)
    }

    /// Sets the options configured for streams on `stream`: `TCP_NODELAY`, TCP
    /// keepalive, `TCP_USER_TIMEOUT`, `SO_SNDBUF` and `SO_RCVBUF`.
    ///
    /// Call it on every accepted or connected stream. Only configured options
    /// are set, one system call each (keepalive: one per parameter); with none
    /// configured it makes no system call.
    ///
    /// # Errors
    ///
    /// Returns the first option that fails [`validate`](SocketOptions::validate),
    /// before any system call, or else the first required option that the kernel
    /// rejected; the buffer sizes are best-effort and only logged. The error
    /// converts into an [`io::Error`] of the same kind.
    pub fn apply_to_stream(&self, stream: &TcpStream) -> Result<(), SocketOptionError> {
        self.apply_to_socket(SockRef::from(stream))
    }

    /// Same as [`apply_to_stream`](SocketOptions::apply_to_stream), for any
    /// socket socket2 can borrow (a `std` or `socket2` socket, a stream from
    /// another runtime).
    ///
    /// # Errors
    ///
    /// As [`apply_to_stream`](SocketOptions::apply_to_stream).
    pub fn apply_to_socket(&self, socket: SockRef<'_>) -> Result<(), SocketOptionError> {
        self.validate()?;
        if let Some(nodelay) = self.nodelay {
            set("TCP_NODELAY", socket.set_tcp_nodelay(nodelay))?;
        }
        if let Some(keepalive) = self.keepalive() {
            set("TCP keepalive", socket.set_tcp_keepalive(&keepalive))?;
        }
        platform::apply_to_stream(self, &socket)?;
        self.apply_buffer_sizes(&socket);
        Ok(())
    }

    // Best-effort: a buffer size is tuning, not correctness, so a kernel that
    // refuses it (or a sandbox that forbids it) must not stop the server.
    fn apply_buffer_sizes(&self, socket: &Socket) {
        if let Some(size) = self.send_buffer_size
            && let Err(e) = socket.set_send_buffer_size(size)
        {
            warn_buffer("SO_SNDBUF", size, &e);
        }
        if let Some(size) = self.recv_buffer_size
            && let Err(e) = socket.set_recv_buffer_size(size)
        {
            warn_buffer("SO_RCVBUF", size, &e);
        }
    }

    /// Checks every option against the range the kernel accepts, without a system
    /// call.
    ///
    /// [`bind`], [`Listener::bind`](crate::Listener::bind),
    /// [`Listener::from_tokio`](crate::Listener::from_tokio) and
    /// [`apply_to_stream`](SocketOptions::apply_to_stream) call it first, so that a
    /// value the kernel would refuse fails once, when the server starts, instead of
    /// closing every accepted connection. The limits are Linux's, checked on every
    /// platform:
    ///
    /// | builder method | option | accepted |
    /// | --- | --- | --- |
    /// | `keepalive_time` | `TCP_KEEPIDLE` | whole seconds, 1 to 32767 |
    /// | `keepalive_interval` | `TCP_KEEPINTVL` | whole seconds, 1 to 32767 |
    /// | `keepalive_retries` | `TCP_KEEPCNT` | 1 to 127 |
    /// | `tcp_user_timeout` | `TCP_USER_TIMEOUT` | whole milliseconds, 1 to 2³¹ − 1 (about 24.8 days) |
    ///
    /// # Errors
    ///
    /// The first value out of range: a [`SocketOptionError`] whose
    /// [`option`](SocketOptionError::option) is the option's name and whose message
    /// also names the builder method; as an [`io::Error`] its kind is
    /// [`InvalidInput`](io::ErrorKind::InvalidInput).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use conn_hygiene::SocketOptions;
    ///
    /// let options = SocketOptions::new().keepalive_time(Duration::from_millis(500));
    /// let err = options.validate().unwrap_err();
    /// assert_eq!(err.option(), "TCP_KEEPIDLE");
    /// assert!(err.to_string().contains("keepalive_time"), "{err}");
    /// ```
    pub fn validate(&self) -> Result<(), SocketOptionError> {
        let second = Duration::from_secs(1);
        let millisecond = Duration::from_millis(1);
        check_duration(
            ("TCP_KEEPIDLE", "keepalive_time"),
            self.keepalive_time,
            (second, "seconds"),
            MAX_KEEPALIVE_SECS,
        )?;
        check_duration(
            ("TCP_KEEPINTVL", "keepalive_interval"),
            self.keepalive_interval,
            (second, "seconds"),
            MAX_KEEPALIVE_SECS,
        )?;
        if let Some(retries) = self.keepalive_retries
            && !(1..=MAX_KEEPALIVE_RETRIES).contains(&retries)
        {
            return Err(SocketOptionError::invalid(
                "TCP_KEEPCNT",
                format!("keepalive_retries takes 1 to {MAX_KEEPALIVE_RETRIES}, got {retries}"),
            ));
        }
        check_duration(
            ("TCP_USER_TIMEOUT", "tcp_user_timeout"),
            self.user_timeout,
            (millisecond, "milliseconds"),
            MAX_USER_TIMEOUT_MS,
        )
    }

    /// The keepalive parameters to set, if any is.
    fn keepalive(&self) -> Option<TcpKeepalive> {
        if self.keepalive_time.is_none()
            && self.keepalive_interval.is_none()
            && self.keepalive_retries.is_none()
        {
            return None;
        }
        let mut keepalive = TcpKeepalive::new();
        if let Some(time) = self.keepalive_time {
            keepalive = keepalive.with_time(time);
        }
        Some(platform::keepalive(self, keepalive))
    }
}

// Linux's limits (`MAX_TCP_KEEPIDLE`, `MAX_TCP_KEEPINTVL`, `MAX_TCP_KEEPCNT`; the user
// timeout is read as a non-negative `int` of milliseconds).
const MAX_KEEPALIVE_SECS: u64 = 32_767;
const MAX_KEEPALIVE_RETRIES: u32 = 127;
const MAX_USER_TIMEOUT_MS: u64 = i32::MAX as u64;

/// Checks that `value`, if set, is a whole number of `unit`s from 1 to `max`: the
/// kernel takes whole units only, and socket2 would drop a fraction silently.
fn check_duration(
    (option, method): (&'static str, &str),
    value: Option<Duration>,
    (unit, unit_name): (Duration, &str),
    max: u64,
) -> Result<(), SocketOptionError> {
    let Some(value) = value else {
        return Ok(());
    };
    let units = value.as_nanos() / unit.as_nanos();
    let whole = value.as_nanos() % unit.as_nanos() == 0;
    if whole && (1..=u128::from(max)).contains(&units) {
        return Ok(());
    }
    Err(SocketOptionError::invalid(
        option,
        format!("{method} takes whole {unit_name} from 1 to {max}, got {value:?}"),
    ))
}

/// The options this crate supports on Linux and Android only, the platforms it is
/// tested on. socket2 offers them on more systems; this gate is a subset of socket2's,
/// so it cannot go stale the wrong way.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[cfg_attr(docsrs, doc(cfg(any(target_os = "linux", target_os = "android"))))]
impl SocketOptions {
    /// Enables TCP keepalive on streams and sets the time between unanswered
    /// probes.
    ///
    /// The option is `TCP_KEEPINTVL` (whole seconds from 1 to 32767; other values
    /// fail [validation](SocketOptions::validate)), and on Windows the
    /// `keepaliveinterval` field of `SIO_KEEPALIVE_VALS` (milliseconds).
    /// Unset, the system default applies (Linux:
    /// `net.ipv4.tcp_keepalive_intvl`, 75 seconds).
    ///
    /// Required: a failure is an error with option name `"TCP keepalive"`.
    pub const fn keepalive_interval(mut self, interval: Duration) -> Self {
        self.keepalive_interval = Some(interval);
        self
    }

    /// Renamed to [`keepalive_interval`](Self::keepalive_interval).
    #[deprecated(since = "0.2.0", note = "renamed to `keepalive_interval`")]
    pub const fn with_keepalive_interval(self, interval: Duration) -> Self {
        self.keepalive_interval(interval)
    }

    /// Enables TCP keepalive on streams and sets how many unanswered probes
    /// close the connection.
    ///
    /// The option is `TCP_KEEPCNT` (a count from 1 to 127; other values fail
    /// [validation](SocketOptions::validate)). Unset, the system default applies
    /// (Linux: `net.ipv4.tcp_keepalive_probes`, 9; Windows: 10).
    ///
    /// Required: a failure is an error with option name `"TCP keepalive"`.
    pub const fn keepalive_retries(mut self, retries: u32) -> Self {
        self.keepalive_retries = Some(retries);
        self
    }

    /// Renamed to [`keepalive_retries`](Self::keepalive_retries).
    #[deprecated(since = "0.2.0", note = "renamed to `keepalive_retries`")]
    pub const fn with_keepalive_retries(self, retries: u32) -> Self {
        self.keepalive_retries(retries)
    }

    /// Sets `TCP_USER_TIMEOUT` on streams: how long sent data may stay
    /// unacknowledged before the kernel drops the connection (`ETIMEDOUT`).
    ///
    /// This bounds a peer that vanished without FIN or RST while we have data
    /// in flight, which retransmissions would otherwise keep alive for about
    /// 15 minutes (`net.ipv4.tcp_retries2`). With keepalive on, it also bounds
    /// how long unanswered probes are tolerated, overriding the probe count.
    ///
    /// Unit: whole milliseconds, from 1 to 2³¹ − 1 (about 24.8 days): other values,
    /// zero and fractions of a millisecond included, fail
    /// [validation](SocketOptions::validate) rather than meaning the system default
    /// or being refused by the kernel. Unset, the kernel default (0, no user
    /// timeout) applies.
    ///
    /// Required: a failure is an error.
    pub const fn tcp_user_timeout(mut self, timeout: Duration) -> Self {
        self.user_timeout = Some(timeout);
        self
    }

    /// Renamed to [`tcp_user_timeout`](Self::tcp_user_timeout).
    #[deprecated(since = "0.2.0", note = "renamed to `tcp_user_timeout`")]
    pub const fn with_tcp_user_timeout(self, timeout: Duration) -> Self {
        self.tcp_user_timeout(timeout)
    }

    /// Sets `SO_REUSEPORT` on the listener, before `bind`, so that several
    /// listeners (in this or other processes of the same user) can bind the
    /// same address and port.
    ///
    /// On Linux (3.9 and later) the kernel then spreads incoming connections
    /// over those listeners. On macOS and the BSDs it only permits the
    /// duplicate binding, without load balancing.
    ///
    /// Defaults to `false`, which makes no system call and leaves the kernel
    /// default, off.
    ///
    /// Required: a failure is an error.
    pub const fn reuse_port(mut self, reuse: bool) -> Self {
        self.reuse_port = reuse;
        self
    }

    /// Renamed to [`reuse_port`](Self::reuse_port).
    #[deprecated(since = "0.2.0", note = "renamed to `reuse_port`")]
    pub const fn with_reuse_port(self, reuse: bool) -> Self {
        self.reuse_port(reuse)
    }
}

/// Applies the Linux-only options; elsewhere there are none to apply.
#[cfg(any(target_os = "linux", target_os = "android"))]
mod platform {
    use super::{SocketOptionError, SocketOptions, set};
    use socket2::{Socket, TcpKeepalive};

    pub(super) fn keepalive(options: &SocketOptions, mut keepalive: TcpKeepalive) -> TcpKeepalive {
        if let Some(interval) = options.keepalive_interval {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(retries) = options.keepalive_retries {
            keepalive = keepalive.with_retries(retries);
        }
        keepalive
    }

    pub(super) fn apply_to_stream(
        options: &SocketOptions,
        socket: &Socket,
    ) -> Result<(), SocketOptionError> {
        if let Some(timeout) = options.user_timeout {
            set(
                "TCP_USER_TIMEOUT",
                socket.set_tcp_user_timeout(Some(timeout)),
            )?;
        }
        Ok(())
    }

    pub(super) fn apply_to_listener(
        options: &SocketOptions,
        socket: &Socket,
    ) -> Result<(), SocketOptionError> {
        if options.reuse_port {
            set("SO_REUSEPORT", socket.set_reuse_port(true))?;
        }
        Ok(())
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod platform {
    use super::{SocketOptionError, SocketOptions};
    use socket2::{Socket, TcpKeepalive};

    pub(super) fn keepalive(_: &SocketOptions, keepalive: TcpKeepalive) -> TcpKeepalive {
        keepalive
    }

    pub(super) fn apply_to_stream(_: &SocketOptions, _: &Socket) -> Result<(), SocketOptionError> {
        Ok(())
    }

    pub(super) fn apply_to_listener(
        _: &SocketOptions,
        _: &Socket,
    ) -> Result<(), SocketOptionError> {
        Ok(())
    }
}

/// Creates a Tokio listener on `addr` with `options`.
///
/// In order: creates the socket (`Domain::for_address(addr)`, TCP), makes it
/// non-blocking, sets `SO_REUSEADDR` (if on, the default except on Windows)
/// and `SO_REUSEPORT` (if on), sets the buffer sizes (inherited by accepted
/// sockets on Linux), binds, and listens with the configured backlog. The
/// per-stream options (`TCP_NODELAY`, keepalive, `TCP_USER_TIMEOUT`) are not
/// set on the listener: apply them to each accepted stream with
/// [`SocketOptions::apply_to_stream`]. For an IPv6 address, `IPV6_V6ONLY` is
/// left at the system default.
///
/// # Errors
///
/// Returns the error of the step that failed: [validating](SocketOptions::validate)
/// `options` (all of them, the per-stream ones too, before any system call),
/// creating the socket, a required option (the error's message names the option
/// and [`get_ref`](io::Error::get_ref) gives the [`SocketOptionError`]), `bind`
/// (for example [`io::ErrorKind::AddrInUse`]) or `listen`.
///
/// # Panics
///
/// Panics if called outside a Tokio runtime, or in one without I/O enabled,
/// like [`TcpListener::from_std`].
pub fn bind(addr: SocketAddr, options: SocketOptions) -> io::Result<TcpListener> {
    options.validate()?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    if options.reuse_address {
        set("SO_REUSEADDR", socket.set_reuse_address(true))?;
    }
    platform::apply_to_listener(&options, &socket)?;
    options.apply_buffer_sizes(&socket);
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(options.backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

/// A required socket option that the kernel rejected, or a value it would reject,
/// found by [`SocketOptions::validate`] before any system call.
///
/// For a rejection its [`source`](Error::source) is the kernel's error, and it
/// converts into an [`io::Error`] of the same kind; an invalid value has no source
/// and converts into [`io::ErrorKind::InvalidInput`]. Either way the message names
/// the option.
#[derive(Debug)]
pub struct SocketOptionError {
    option: &'static str,
    cause: Cause,
}

#[derive(Debug)]
enum Cause {
    Kernel(io::Error),
    // What the builder method accepts, and the value given.
    Invalid(String),
}

impl SocketOptionError {
    fn invalid(option: &'static str, reason: String) -> Self {
        SocketOptionError {
            option,
            cause: Cause::Invalid(reason),
        }
    }
}

impl SocketOptionError {
    /// The option that failed, as the platform headers name it (for example
    /// `"TCP_NODELAY"`, or `"TCP_KEEPIDLE"` for an invalid keepalive time), or
    /// `"TCP keepalive"` when the kernel rejected the keepalive group
    /// (`SO_KEEPALIVE` and the `TCP_KEEP*` parameters, set together).
    #[must_use]
    pub fn option(&self) -> &'static str {
        self.option
    }
}

impl fmt::Display for SocketOptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Kernel(_) => write!(f, "failed to set {}", self.option),
            Cause::Invalid(reason) => write!(f, "invalid {}: {reason}", self.option),
        }
    }
}

impl Error for SocketOptionError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.cause {
            Cause::Kernel(source) => Some(source),
            Cause::Invalid(_) => None,
        }
    }
}

impl From<SocketOptionError> for io::Error {
    fn from(error: SocketOptionError) -> Self {
        let kind = match &error.cause {
            Cause::Kernel(source) => source.kind(),
            Cause::Invalid(_) => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, error)
    }
}

fn set(option: &'static str, result: io::Result<()>) -> Result<(), SocketOptionError> {
    result.map_err(|source| SocketOptionError {
        option,
        cause: Cause::Kernel(source),
    })
}

fn warn_buffer(option: &'static str, size: usize, error: &io::Error) {
    tracing::warn!(
        target: "conn_hygiene::options",
        option,
        size,
        error = %error,
        "failed to set socket buffer size; keeping the current size",
    );
}
