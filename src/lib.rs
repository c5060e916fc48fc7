//! Keep Tokio servers and clients free of stuck connections.
//!
//! A socket sits in **CLOSE_WAIT** when the peer has closed its side (sent FIN) and
//! our process has not closed its own. The kernel cannot clear it: only the
//! application can, and hyper, axum and most Tokio servers do not notice a FIN while a
//! handler is busy, a request body is unread or requests are pipelined. A few hundred
//! such sockets take a service down. `conn-hygiene` makes code built on it:
//!
//! - never leave a socket in CLOSE_WAIT with nothing moving past a bounded grace: the
//!   peer's FIN is seen from the kernel (`EPOLLRDHUP`) without reading a byte, and the
//!   half-close [`HalfClose`] policy decides what happens next;
//! - bound every phase of a connection with its own clock ([`Policy`]): first byte,
//!   request head, idle keep-alive, body stall, write stall, lingering close, drain;
//!   and bound a trickling peer's rate ([`MinRate`]), a connection's requests and age
//!   (recycling), and a client's connections (the [`Listener`]'s per-client cap);
//! - shut down within a deadline it states in advance (`serve()`, or `BoundedShutdown`
//!   around `axum::serve` or tonic's `Server`, feature `hyper`), reporting what held the
//!   drain.
//!
//! # The pieces
//!
//! | piece | role |
//! | --- | --- |
//! | [`SocketOptions`], [`bind`](options::bind) | socket2-backed options for listeners and streams |
//! | [`Listener`] | accept loop with options, a registry, a cap that evicts idle connections, pressure before it, and no spin on `EMFILE` |
//! | [`HygieneStream`] | I/O wrapper: stream-level clocks, half-close on `shutdown()`, lingering close on drop, reset on abandon |
//! | [`Conn`] | per-connection handle: phase, `peer_closed()`, in-flight count |
//! | [`Conn::supervise`] | runs a connection's task under the half-close policy |
//! | `HygieneLayer` | Tower layer: in-flight tracking, body-stall clock and rate floor, cancel-on-disconnect, recycling, `Keep-Alive` (feature `hyper`) |
//! | [`MinRate`], [`RequestLimits`](limits::RequestLimits) | rate floors; per-request overrides of the body and send clocks (`RequestLimitsLayer` for a route, feature `hyper`) |
//! | `serve()` | hyper-util auto server with everything wired in, a deregistration phase and a drain deadline; HTTP/1-only or HTTP/2-only, head-size and HTTP/2 settings; any acceptor (TLS) (feature `hyper`) |
//! | `Readiness` | the server's readiness flag and a ready-made health endpoint: 503 from the shutdown signal on (feature `hyper`) |
//! | `BoundedShutdown` | `serve()`'s shutdown (deregistration phase, drain deadline, report) for `axum::serve`, tonic's `Server` or any server over the [`Listener`] (feature `hyper`) |
//! | `takeover` | restarts on one host: serve a listening socket inherited on stdin (systemd `StandardInput=socket`) |
//! | `census`, `doctor` | kernel TCP state counts per port or process; the sysctls that matter (feature `census`) |
//! | `metrics` | counters, gauges and histograms through the `metrics` facade (feature `metrics`) |
//! | `testing` | abrupt peers, kernel-state assertions and an HTTP/1 response parser for integration tests (feature `testing`) |
//! | `client` | a hyper-util connector, Keep-Alive eviction and a reuse probe for pooled outbound connections (feature `client`) |
//! | `grpc` | tonic: the listener as tonic's incoming stream, `Connected`, the layer in tonic's stack; tonic's routes under `serve()` (feature `tonic`) |
//!
//! # Conventions
//!
//! The root holds the three ways in (`serve()`, `HygieneLayer`, [`Listener`])
//! and what they need; everything else is reached through its module
//! (`conn::Abandon`, `registry::Registry`, `serve::Readiness`). Settings are set once,
//! in one place ([`Policy`] for every clock and shutdown bound, `serve::ServeSettings`
//! for `serve()`'s protocol limits), by setters named after them; `None` turns a
//! setting off, and a zero or out-of-range value fails where the settings are built,
//! with a [`ConfigError`] naming it. `with_` marks what changes a type
//! (`with_graceful_shutdown`, `with_acceptor`) or shares an outside handle
//! (`with_readiness`).
//!
//! How the modules depend on one another, and the one rule they keep: [`architecture`].
//!
//! # A whole server
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # async fn dox() -> std::io::Result<()> {
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use conn_hygiene::{HalfClose, Listener, Policy, SocketOptions};
//!
//! let policy = Policy::builder()
//!     .idle_timeout(Some(Duration::from_secs(60)))
//!     .half_close(HalfClose::AllowFor(Duration::from_secs(5)))
//!     .drain_timeout(Duration::from_secs(20))
//!     .build()
//!     .expect("valid policy");
//! let options = SocketOptions::new()
//!     .nodelay(true)
//!     .keepalive_time(Duration::from_secs(60));
//! let listener = Listener::bind("0.0.0.0:3000", options, policy)?;
//! let app = Router::new().route("/", get(|| async { "ok" }));
//! let report = conn_hygiene::serve(listener, app)
//!     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap() })
//!     .await?;
//! println!("shutdown: {report}");
//! # Ok(()) }
//! ```
//!
//! # TLS
//!
//! TLS goes over the stream: `TlsAcceptor::accept(hygiene_stream)`. The stream's
//! clocks then bound the handshake (first byte for a silent client, idle for a stalled
//! one), and FIN detection still watches the TCP socket underneath. See
//! [`stream`](stream#tls). `serve()` takes the handshake as an acceptor
//! (`Serve::with_acceptor`, feature `hyper`), with ALPN choosing HTTP/1.1 or HTTP/2,
//! and keeps its drain deadline and report: see `examples/tls_server.rs`.
//!
//! # Tracing
//!
//! Targets and fields are stable. Every event of a connection is emitted inside its
//! span, `conn` (target `conn_hygiene::conn`, fields `id`, `peer`). Nothing is emitted
//! on the per-read or per-write path.
//!
//! | target | level | when | fields |
//! | --- | --- | --- | --- |
//! | `conn_hygiene::accept` | debug | a connection is accepted | `id`, `peer`, `live` |
//! | `conn_hygiene::accept` | debug | a per-connection accept error is skipped | `error` |
//! | `conn_hygiene::accept` | warn | accept paused: out of descriptors or memory | `error`, `live` |
//! | `conn_hygiene::accept` | warn | idle connections evicted at capacity, once a second (debug for the other bursts of that second) | `reason` (`max_connections`, `descriptors`), `evicted`, `live`, `total` |
//! | `conn_hygiene::accept` | warn | once per listener: at capacity with connections served without the layer (plain `axum::serve`), which cannot be evicted | `connections` |
//! | `conn_hygiene::accept` | warn | a required socket option failed on an accepted stream | `peer`, `error` |
//! | `conn_hygiene::options` | warn | best-effort tuning (buffer sizes) failed | `option`, `size`, `error` |
//! | `conn_hygiene::peer` | debug | the peer sent FIN (`event = "fin"`) or RST (`event = "rst"`) | `event`, `phase`, `in_flight` |
//! | `conn_hygiene::timeout` | info | a phase clock or a rate floor expired; also an idle HTTP/2 connection sent GOAWAY, and a request body failed its stall clock or floor (`phase = "body_wait"`; alone over HTTP/2) | `phase`, `reason` |
//! | `conn_hygiene::tunnel` | debug | the connection became a tunnel (a 101 or a `CONNECT`) | `requests` |
//! | `conn_hygiene::layer` | warn | once per listener: served by `axum::serve` without the layer, so the head, idle and body clocks are off | — |
//! | `conn_hygiene::layer` | warn | once per process: a connection is recycled under a server that cannot retire it gracefully (`axum::serve` or tonic on HTTP/2, `axum::serve` without the layer), so it is reset after `recycle_grace` | `why` |
//! | `conn_hygiene::grpc` | warn | once per listener, from `Listener::into_incoming` when the policy has an idle timeout or a maximum connection age: tonic's `Server` resets those connections instead of sending GOAWAY | `idle_timeout`, `max_connection_age` |
//! | `conn_hygiene::abandon` | info | the connection is reset (zero linger) | `reason`, `phase`, `in_flight` |
//! | `conn_hygiene::linger` | debug | a lingering close (run after a shut-down stream is dropped) ended | `outcome` (`peer_fin`, `timeout`, `error`, `abandoned`), `discarded` |
//! | `conn_hygiene::cancel` | info | handlers were cancelled by an abandonment (nginx's 499) | `status`, `reason`, `in_flight` |
//! | `conn_hygiene::drain` | info | the deregistration phase started / finished | `connections`, `delay_ms` / `accepted`, `retired`, `live` |
//! | `conn_hygiene::drain` | info | the drain started / finished | `connections`, `deadline_ms` / `drained`, `forced`, `elapsed_ms` |
//! | `conn_hygiene::serve` | debug | a served connection ended with an error | `error` |
//! | `conn_hygiene::serve` | debug | an acceptor's handshake failed (the connection is closed); one that timed out is abandoned (`handshake_timeout`) | `error` |
//! | `conn_hygiene::accept` | info | a connection refused at the per-client cap (503 or reset) | `peer`, `client`, `live`, `limit`, `refused` |
//! | `conn_hygiene::recycle` | debug | a connection is recycled (`why` = `max_requests` or `max_connection_age`) | `why`, `requests`, `age_ms` |
//! | `conn_hygiene::client` | debug | outbound: `event = "connect"`, `"peer_closed"` (`how`, `awaiting_response`, `idle_ms`), `"keep_alive_evict"` (`keep_alive_ms`, `idle_ms`) | as listed |
//!
//! `reason` is one of [`Abandon`](conn::Abandon)'s names (`peer_fin`, `peer_reset`,
//! `half_close_grace`, `first_byte_timeout`, `header_timeout`, `idle_timeout`,
//! `body_stall_timeout`, `write_stall_timeout`, `tunnel_idle_timeout`, `linger_timeout`,
//! `drain_deadline`, `min_body_rate`, `min_send_rate`, `recycle_grace`,
//! `handshake_timeout`);
//! `phase` one of [`Phase`](conn::Phase)'s.
//!
//! # Metrics
//!
//! With feature `metrics`, the crate records through the
//! [`metrics`](https://docs.rs/metrics/0.24) facade, so any exporter installed as the
//! global recorder sees them (Prometheus, StatsD, OpenTelemetry). Each counter and
//! histogram is recorded where the tracing event in the same row of the table above is
//! emitted; nothing per read, per write or per request. The gauges are set from a
//! [`Registry`](registry::Registry)'s snapshot when the application asks (`metrics::record` before a scrape,
//! or `metrics::report_every`), since a connection's phase is read, not tracked. Label
//! values are the tracing fields' values.
//!
//! | name | kind | labels | when (tracing target) |
//! | --- | --- | --- | --- |
//! | `conn_hygiene_connections_accepted_total` | counter | — | a connection is accepted (`accept`) |
//! | `conn_hygiene_accept_paused_total` | counter | — | accept paused: out of descriptors or memory, the `EMFILE` backoff (`accept`) |
//! | `conn_hygiene_connections_refused_total` | counter | — | a connection refused at the per-client cap (`accept`) |
//! | `conn_hygiene_proxy_header_rejected_total` | counter | `reason` (`malformed`, `silent`, `closed`) | a connection closed without a valid [PROXY protocol](listener::ProxyProtocol) header (`accept`) |
//! | `conn_hygiene_connections_abandoned_total` | counter | `reason` ([`Abandon`](conn::Abandon)'s names) | a connection is reset (`abandon`) |
//! | `conn_hygiene_peer_closed_total` | counter | `event` (`fin`, `rst`) | the peer sent FIN or RST, once each per connection (`peer`) |
//! | `conn_hygiene_handlers_cancelled_total` | counter | `reason` | handlers cancelled by an abandonment, nginx's 499; one per handler (`cancel`) |
//! | `conn_hygiene_connections_evicted_total` | counter | `reason` (`max_connections`, `descriptors`), `phase` (`idle`, `first_byte`) | an idle connection is evicted at capacity (`accept`) |
//! | `conn_hygiene_connections_recycled_total` | counter | `why` (`max_requests`, `max_connection_age`) | a connection is recycled (`recycle`) |
//! | `conn_hygiene_drains_total` | counter | — | a drain finished (`drain`) |
//! | `conn_hygiene_drain_connections_total` | counter | `outcome` (`drained`, `forced`) | a drain finished: connections that closed on their own, and those reset at the deadline (`drain`) |
//! | `conn_hygiene_drain_duration_seconds` | histogram | — | a drain finished: how long it took (`drain`) |
//! | `conn_hygiene_deregistration_connections_total` | counter | `outcome` (`accepted`, `retired`) | a deregistration phase finished (`drain`) |
//! | `conn_hygiene_deregistration_duration_seconds` | histogram | — | a deregistration phase finished: how long it took (`drain`) |
//! | `conn_hygiene_connections` | gauge | `phase` ([`Phase`](conn::Phase)'s names, all of them) | set by `metrics::record` |
//! | `conn_hygiene_connections_oldest_seconds` | gauge | `phase` | set by `metrics::record`: age of the phase's oldest connection, 0 without one |
//! | `conn_hygiene_connections_half_closed_busy` | gauge | — | set by `metrics::record`: the peer left while a handler is busy, the CLOSE_WAIT risk |
//!
//! `examples/metrics_server.rs` serves them in Prometheus's text format.
//!
//! # Features
//!
//! None is on by default: the core is the listener, the stream, the policy and the
//! registry, on tokio, socket2 and tracing.
//!
//! | feature | adds |
//! | --- | --- |
//! | `hyper` | `HygieneLayer`, `serve()`, `Readiness`, `RequestLimitsLayer` (hyper 1, hyper-util server) |
//! | `axum` | `axum::serve::Listener` for [`Listener`], `ConnectInfo<Conn>`; enables `hyper` |
//! | `client` | hyper-util's pooled-client connector, Keep-Alive eviction, reuse probe; enables `hyper` |
//! | `census` | `census` (kernel TCP states over netlink `inet_diag`, procfs fallback) and `doctor` (sysctls) |
//! | `testing` | abrupt peers, kernel-state assertions, an HTTP/1 response parser; enables `census` |
//! | `metrics` | the metrics above (the `metrics` facade only) |
//! | `serde` | `Serialize`/`Deserialize` for [`Snapshot`](registry::Snapshot), `ConnInfo`, [`Phase`](conn::Phase), the census types and `ShutdownReport` |
//!
//! # Platform
//!
//! Linux is the first-class platform: FIN detection without reading relies on
//! `EPOLLRDHUP`. Elsewhere the peer's FIN is seen when the application reads it, and
//! the census returns `Unsupported`.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

#[cfg(feature = "census")]
#[cfg_attr(docsrs, doc(cfg(feature = "census")))]
pub mod census;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
pub mod conn;
#[doc = include_str!("../docs/architecture.md")]
pub mod architecture {}
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
#[doc = include_str!("../docs/deploy.md")]
pub mod deploy {}
#[cfg(feature = "census")]
#[cfg_attr(docsrs, doc(cfg(feature = "census")))]
pub mod doctor;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod grpc;
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
pub mod layer;
pub mod limits;
pub mod listener;
#[cfg(test)]
mod lockstep;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod options;
pub mod policy;
pub mod rate;
mod recycle;
pub mod registry;
#[cfg(feature = "serde")]
mod serde_millis;
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
pub mod serve;
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
#[doc = include_str!("../docs/serving.md")]
pub mod serving {}
pub mod stream;
pub mod supervise;
#[cfg(any(target_os = "linux", target_os = "android"))]
#[cfg_attr(docsrs, doc(cfg(any(target_os = "linux", target_os = "android"))))]
pub mod takeover;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
#[cfg(feature = "hyper")]
mod tunnel;

// The root: the three ways in (`serve`, `HygieneLayer`, `Listener`) and what they
// need. Everything else is reached through its module (`conn::Abandon`,
// `registry::Registry`, `serve::Readiness`, ...).
pub use conn::Conn;
#[cfg(feature = "hyper")]
pub use layer::HygieneLayer;
pub use listener::Listener;
pub use options::SocketOptions;
pub use policy::{ConfigError, HalfClose, Policy};
pub use rate::MinRate;
#[cfg(feature = "hyper")]
pub use serve::{ShutdownReport, serve};
pub use stream::HygieneStream;

#[doc(hidden)]
pub use deprecated_root::*;

/// Declares each name as a deprecated alias of its new path.
macro_rules! moved {
    ($($(#[$cfg:meta])* $name:ident => $target:ty, $note:literal;)*) => {
        $(
            $(#[$cfg])*
            #[doc = concat!("Moved: ", $note, ".")]
            #[deprecated(since = "0.2.0", note = $note)]
            pub type $name = $target;
        )*
    };
}

/// The names the root re-exported before 0.2, each now reached through its module.
mod deprecated_root {
    moved! {
        #[cfg(feature = "client")] KeepAliveLayer => crate::client::KeepAliveLayer, "use `conn_hygiene::client::KeepAliveLayer`";
        Abandon => crate::conn::Abandon, "use `conn_hygiene::conn::Abandon`";
        PeerGone => crate::conn::PeerGone, "use `conn_hygiene::conn::PeerGone`";
        Phase => crate::conn::Phase, "use `conn_hygiene::conn::Phase`";
        RequestLimits => crate::limits::RequestLimits, "use `conn_hygiene::limits::RequestLimits`";
        #[cfg(feature = "hyper")] RequestLimitsLayer => crate::limits::RequestLimitsLayer, "use `conn_hygiene::limits::RequestLimitsLayer`";
        SocketOptionError => crate::options::SocketOptionError, "use `conn_hygiene::options::SocketOptionError`";
        PolicyBuilder => crate::policy::PolicyBuilder, "use `conn_hygiene::policy::PolicyBuilder`";
        Registry => crate::registry::Registry, "use `conn_hygiene::registry::Registry`";
        Snapshot => crate::registry::Snapshot, "use `conn_hygiene::registry::Snapshot`";
        #[cfg(feature = "hyper")] GracefulShutdown => crate::serve::BoundedShutdown, "use `conn_hygiene::serve::BoundedShutdown`";
        #[cfg(feature = "hyper")] Readiness => crate::serve::Readiness, "use `conn_hygiene::serve::Readiness`";
        TcpIo => crate::stream::TcpIo, "use `conn_hygiene::stream::TcpIo`";
        Abandoned => crate::supervise::Abandoned, "use `conn_hygiene::supervise::Abandoned`";
    }
    /// Moved: use `conn_hygiene::client::HygieneConnector`.
    #[cfg(feature = "client")]
    #[deprecated(since = "0.2.0", note = "use `conn_hygiene::client::HygieneConnector`")]
    pub type HygieneConnector<C = hyper_util::client::legacy::connect::HttpConnector> =
        crate::client::HygieneConnector<C>;
    /// Moved: use `conn_hygiene::supervise::Supervised`.
    #[deprecated(since = "0.2.0", note = "use `conn_hygiene::supervise::Supervised`")]
    pub type Supervised<F> = crate::supervise::Supervised<F>;

    /// Binds a listener: [`options::bind`](crate::options::bind).
    ///
    /// # Errors
    ///
    /// As [`options::bind`](crate::options::bind).
    #[deprecated(since = "0.2.0", note = "use `conn_hygiene::options::bind`")]
    pub fn bind(
        addr: std::net::SocketAddr,
        options: crate::SocketOptions,
    ) -> std::io::Result<tokio::net::TcpListener> {
        crate::options::bind(addr, options)
    }
}

// The README's examples compile as doctests.
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    /// Code written against the old root still compiles, with deprecation warnings.
    #[test]
    #[allow(deprecated)]
    fn the_old_root_names_still_resolve() {
        let reason: crate::Abandon = crate::Abandon::DrainDeadline;
        assert_eq!(reason, crate::conn::Abandon::DrainDeadline);
        let policy = crate::PolicyBuilder::new().build().unwrap();
        assert_eq!(policy, crate::Policy::default());
        let limits = crate::RequestLimits::new().with_min_send_rate(None);
        assert_eq!(
            limits,
            crate::limits::RequestLimits::builder()
                .min_send_rate(None)
                .build()
                .unwrap()
        );
    }
}
