//! A TCP proxy on the crate's listener: every byte forwarded both ways with
//! `tokio::io::copy_bidirectional`, half-closes passed on, and every clock in place.
//!
//! Inbound connections come from a [`Listener`]; each gets an outbound connection to
//! the upstream through [`client::connect`], within a connect timeout. Both streams
//! run their clocks: first byte (inbound only: an upstream may wait for the request),
//! idle (no byte moving either way), write stall (a side that stops reading). The copy
//! runs under [`Conn::supervise`](conn_hygiene::Conn::supervise) of both connections,
//! so a FIN from either side starts that side's half-close policy. A FIN is forwarded
//! as a half-close (`shutdown()` sends our FIN and reads on).
//!
//! # Closing
//!
//! Only a clean finish (both directions at EOF and shut down) closes gracefully.
//! Anything else (a clock, the half-close policy, a reset, a drain deadline, an
//! error from the copy, on either side) abandons *both* connections, so both peers
//! get an RST. Otherwise a side that already forwarded the other's FIN would run its
//! lingering close: read and discard the rest of its peer's data and close gracefully,
//! and the peer would take a truncated transfer for a complete one.
//!
//! # The half-close policy for a proxy
//!
//! The upstream's connections take the listener's policy (without the first-byte
//! clock), so one `--half-close` governs both sides, each on its own connection.
//!
//! - **Not `Abort`**: a FIN is an ordinary part of many protocols (a request, then
//!   FIN; a banner, then FIN), and `Abort` resets the relay at the first one.
//! - **`AllowFor(grace)`** (the default: 10 s, or the idle timeout if shorter) is an
//!   *inactivity* grace, as HAProxy's `timeout client-fin`: after a side's FIN, that
//!   side is abandoned (and with it the relay) once a whole grace passes with no byte
//!   moving on its connection either way; a transfer that keeps moving is never cut.
//!   It is checked once per grace, so a pause longer than the grace may cut the
//!   relay, and one of two graces always does. Mind the pauses: a peer that stops
//!   reading for longer than the grace after its FIN (or an upstream that thinks
//!   longer than the grace after the client's FIN) is cut by the grace even if
//!   `--write-stall-timeout` is longer. Make the grace the longest pause to accept,
//!   at least the write-stall timeout.
//! - **`Allow`** leaves a half-closed connection to the other clocks (idle, write
//!   stall) and the drain deadline: keep an idle timeout then.
//!
//! ```text
//! cargo run --features client --example tcp_proxy -- --upstream ADDR [FLAGS]   # --help lists them
//! ```
//!
//! The flags are the `COMMAND` table below, one line each.
//!
//! It prints `listening on ADDR` first.

mod cli;

use cli::flags::{Command, Flag, duration, half_close, parse};

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use conn_hygiene::client;
use conn_hygiene::{
    HygieneStream, Listener, Policy, SocketOptions, conn::Abandon, policy::PolicyBuilder,
    stream::TcpIo,
};

/// Where the proxy forwards to, and how it connects.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    pub(crate) options: SocketOptions,
    pub(crate) policy: Policy,
    pub(crate) connect_timeout: Duration,
}

impl Upstream {
    /// The upstream at `addr`, its connections under `inbound`'s clocks except the
    /// first-byte clock: an upstream may say nothing until the request is complete.
    pub(crate) fn new(addr: SocketAddr, inbound: &PolicyBuilder) -> Result<Self, String> {
        let policy = inbound.clone().first_byte_timeout(None).build();
        Ok(Upstream {
            addr,
            options: SocketOptions::new().nodelay(true),
            policy: policy.map_err(|e| e.to_string())?,
            connect_timeout: Duration::from_secs(5),
        })
    }
}

/// Accepts from `listener` and forwards every connection to `upstream`, until the
/// listening socket fails.
pub(crate) async fn serve(mut listener: Listener, upstream: Upstream) -> io::Result<()> {
    loop {
        let (inbound, _peer) = listener.accept().await?;
        tokio::spawn(forward(inbound, upstream.clone()));
    }
}

/// Connects to the upstream and copies both ways until both directions are done, a
/// clock expires or the half-close policy of either side ends it.
async fn forward(mut inbound: HygieneStream<TcpIo>, upstream: Upstream) {
    let connect = client::connect(upstream.addr, upstream.options, upstream.policy);
    let connected = tokio::time::timeout(upstream.connect_timeout, connect)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
    let mut outbound = match connected {
        Ok(outbound) => outbound,
        Err(error) => {
            tracing::info!(peer = %inbound.conn().peer_addr(), %error, "upstream unreachable");
            // Dropped without a shutdown: the client's connection closes at once.
            return;
        }
    };
    let (client_conn, upstream_conn) = (inbound.conn().clone(), outbound.conn().clone());
    // The copy borrows the streams, so an abandonment drops the copy but not them:
    // they must not close before the other side is abandoned too (below).
    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
    // Either side's FIN starts its own half-close policy; an abandonment on either side
    // ends the copy.
    let outcome = client_conn.supervise(upstream_conn.supervise(copy)).await;
    let failed = match outcome {
        Ok(Ok(Ok((up, down)))) => {
            tracing::debug!(up, down, "proxied");
            None
        }
        Ok(Ok(Err(error))) => {
            tracing::debug!(%error, "copy ended with an error");
            // A clock that fired has abandoned its side already, with its reason;
            // otherwise the kernel reported a peer gone (reset, broken pipe, a
            // keepalive timeout), for which PeerReset is the nearest reason.
            Some(
                client_conn
                    .abandoned()
                    .or(upstream_conn.abandoned())
                    .unwrap_or(Abandon::PeerReset),
            )
        }
        Ok(Err(abandoned)) | Err(abandoned) => {
            tracing::debug!(%abandoned, "proxy abandoned");
            Some(abandoned.reason())
        }
    };
    if let Some(reason) = failed {
        // The relay failed and bytes may be lost. A side that already forwarded the other's FIN is
        // shut down, and dropped as it is it would linger: read and discard the rest
        // of its peer's data, then close gracefully, so the peer would take a
        // truncated transfer for a complete one. Abandoned, both close with an RST.
        // (The first reason given wins: a side abandoned on its own keeps its own.)
        client_conn.abandon(reason);
        upstream_conn.abandon(reason);
    }
    // Only after a clean finish (both directions at EOF and shut down) is a close
    // graceful.
    drop((inbound, outbound));
}

struct Args {
    listen: SocketAddr,
    upstream: Option<SocketAddr>,
    connect_timeout: Option<Duration>,
    policy: PolicyBuilder,
}

/// The flags, one line each.
#[rustfmt::skip]
const COMMAND: Command<Args> = Command {
    name: "tcp_proxy",
    synopsis: "--upstream ADDR [FLAGS]",
    flags: &[
        Flag::value("--listen", "ADDR", "default 127.0.0.1:7100; port 0 picks a free port", |a, v| Ok(Args { listen: parse(v)?, ..a })),
        Flag::value("--upstream", "ADDR", "where to forward (required)", |a, v| Ok(Args { upstream: Some(parse(v)?), ..a })),
        Flag::value("--connect-timeout", "DUR", "connecting to the upstream; default 5s", |a, v| Ok(Args { connect_timeout: Some(duration(v)?), ..a })),
        Flag::value("--first-byte-timeout", "DUR", "from accept to the client's first byte", |a, v| Ok(Args { policy: a.policy.first_byte_timeout(Some(duration(v)?)), ..a })),
        Flag::value("--idle-timeout", "DUR", "no byte moving either way", |a, v| Ok(Args { policy: a.policy.idle_timeout(Some(duration(v)?)), ..a })),
        Flag::value("--write-stall-timeout", "DUR", "no write progress (a side is not reading)", |a, v| Ok(Args { policy: a.policy.write_stall_timeout(Some(duration(v)?)), ..a })),
        Flag::value("--half-close", "abort|allow|DUR", "after a FIN; DUR means AllowFor(DUR), an inactivity grace", |a, v| Ok(Args { policy: a.policy.half_close(half_close(v)?), ..a })),
        Flag::value("--linger-timeout", "DUR", "the lingering close's bound", |a, v| Ok(Args { policy: a.policy.linger_timeout(duration(v)?), ..a })),
    ],
};

#[tokio::main]
async fn main() -> ExitCode {
    cli::init_tracing();
    let defaults = Args {
        listen: "127.0.0.1:7100".parse().unwrap(),
        upstream: None,
        connect_timeout: None,
        policy: Policy::builder(),
    };
    let args = match COMMAND.parse(defaults) {
        Ok(args) => args,
        Err(error) => return COMMAND.fail(&error),
    };
    let Some(upstream) = args.upstream else {
        return COMMAND.fail("--upstream is required");
    };
    let mut upstream = match Upstream::new(upstream, &args.policy) {
        Ok(upstream) => upstream,
        Err(error) => return COMMAND.fail(&error),
    };
    upstream.connect_timeout = args.connect_timeout.unwrap_or(upstream.connect_timeout);
    let policy = match args.policy.build() {
        Ok(policy) => policy,
        Err(error) => return COMMAND.fail(&error.to_string()),
    };
    let options = SocketOptions::new().nodelay(true);
    let listener = match Listener::bind(args.listen, options, policy) {
        Ok(listener) => listener,
        Err(error) => return COMMAND.fail(&format!("--listen {}: {error}", args.listen)),
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", listener.local_addr().unwrap()).unwrap();
    stdout.flush().unwrap();
    drop(stdout);
    match serve(listener, upstream).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tcp_proxy: accept failed: {error}");
            ExitCode::FAILURE
        }
    }
}
