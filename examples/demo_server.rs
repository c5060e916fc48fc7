//! The demo server: an axum app served through conn-hygiene, or through plain
//! `axum::serve` with `--raw`, for comparison.
//!
//! ```text
//! cargo run --release --features axum --example demo_server -- [FLAGS]
//!   --listen ADDR                 default 127.0.0.1:3000; port 0 picks a free port
//!   --raw                         the same routes through plain axum::serve with no hygiene
//!   --hand-hardened               the same routes through what a careful user writes instead:
//!                                 hyper-util's auto builder with header_read_timeout, HTTP/2
//!                                 keep-alive PINGs, tower-http's TimeoutLayer and hyper-util's
//!                                 GracefulShutdown (the benchmark's peer, `hardened/mod.rs`)
//!   --axum-serve                  the same routes through axum::serve over the crate's listener,
//!                                 with HygieneLayer and GracefulShutdown (instead of serve())
//!   --idle-timeout DUR            keep-alive idle
//!   --header-timeout DUR          the request head must complete within this
//!   --first-byte-timeout DUR      from connect to first byte
//!   --body-stall-timeout DUR      no request-body progress while the handler waits for it
//!   --write-stall-timeout DUR     no write progress (the peer is not reading)
//!   --half-close abort|allow|DUR  the policy after the peer's FIN; DUR means AllowFor(DUR)
//!   --drain-timeout DUR           shutdown deadline
//!   --deregister-delay DUR        after SIGTERM: unready (GET /healthz answers 503) but still
//!                                 serving for DUR, every connection retiring after its next
//!                                 answer, before the listener closes; default 0
//!   --listen-stdin                serve the listening socket passed as standard input (systemd
//!                                 StandardInput=socket): a new process takes over the port
//!                                 while the old one drains; --listen is then ignored
//!   --reuse-port                  bind with SO_REUSEPORT (for comparison: a takeover this way
//!                                 resets the connections queued on the old process's socket)
//!   --min-body-rate BYTES/s        request-body rate floor (0 turns it off)
//!   --min-send-rate BYTES/s        response rate floor (0 turns it off)
//!   --rate-grace DUR               grace before the floors apply
//!   --max-requests N               per connection
//!   --max-connection-age DUR
//!   --max-connections-per-ip N
//!   --max-connections N           at most N live connections; idle ones are evicted at the cap
//!   --eviction-batch N|off        idle connections evicted at once at the cap (default 32)
//!   --pressure-share F|off        from this share of the cap (0 < F <= 1, default 0.8) idle
//!                                 clocks shrink and answers close their connections
//!   --pressure-floor DUR          what the idle clocks shrink toward, at the cap (default 5s)
//!   --ws-read-buffer BYTES        the WebSocket read buffer (default tungstenite's 128 KiB)
//!   --no-keep-alive-header        no `Keep-Alive: timeout=N` on HTTP/1 answers (its cost, measured)
//!   --h2-max-streams N|off        HTTP/2 streams per connection (default 128)
//!   --h2-max-pending-resets N|off HTTP/2 resets before accept, then GOAWAY (default 20)
//!   --h2-max-error-resets N|off   HTTP/2 resets for the peer's errors, then GOAWAY (default 1024)
//!   --h2-max-send-buf BYTES       HTTP/2 response bytes queued per stream (default 64 KiB)
//!   --h2-flood-budget on|off      the HTTP/2 flood budget (default on)
//! ```
//!
//! The `--h2-*` flags configure `serve()`: with `--raw`, `--hand-hardened` or `--axum-serve`
//! they are refused.
//!
//! `GET /healthz` answers 200, and 503 from the shutdown signal on (always 200 with `--raw`).
//! `GET /ws` is a WebSocket that echoes every text and binary message (both variants).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::Duration;

mod cli;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::routing::get;
use cli::{announce, signal};
mod common;
mod hardened;

use common::app;
use conn_hygiene::listener::Pressure;
use conn_hygiene::serve::FloodBudget;
use conn_hygiene::{
    Conn, GracefulShutdown, HalfClose, HygieneLayer, Listener, MinRate, Policy, PolicyBuilder,
    Readiness, SocketOptions,
};

struct Args {
    listen: SocketAddr,
    raw: bool,
    hand_hardened: bool,
    axum_serve: bool,
    policy: PolicyBuilder,
    deregister_delay: Duration,
    listen_stdin: bool,
    reuse_port: bool,
    // The floors take their rate and grace from separate flags: combined after parsing.
    min_body_rate: Option<u32>,
    min_send_rate: Option<u32>,
    rate_grace: Option<Duration>,
    max_connections_per_ip: Option<NonZeroUsize>,
    capacity: CapacityFlags,
    ws_read_buffer: Option<usize>,
    no_keep_alive_header: bool,
    h2: H2Flags,
}

/// `--max-connections` and the eviction and pressure flags: `Some(None)` is `off`, `None`
/// the crate's default.
#[derive(Default)]
struct CapacityFlags {
    max: Option<NonZeroUsize>,
    batch: Option<Option<NonZeroUsize>>,
    share: Option<Option<f64>>,
    floor: Option<Duration>,
}

impl CapacityFlags {
    fn apply(&self, mut listener: Listener) -> Result<Listener, String> {
        if let Some(max) = self.max {
            listener = listener.with_max_connections(max);
        }
        if let Some(batch) = self.batch {
            listener = listener.with_eviction_batch(batch);
        }
        let pressure = match self.share {
            Some(None) => None,
            share => Some(
                Pressure::new(
                    share.flatten().unwrap_or(Pressure::DEFAULT_SHARE),
                    self.floor.unwrap_or(Pressure::DEFAULT_FLOOR),
                )
                .map_err(|e| e.to_string())?,
            ),
        };
        Ok(listener.with_pressure(pressure))
    }
}

/// The `--h2-*` flags: `Some(None)` is `off`, `None` the crate's default.
#[derive(Default)]
struct H2Flags {
    max_streams: Option<Option<u32>>,
    max_pending_resets: Option<Option<usize>>,
    max_error_resets: Option<Option<usize>>,
    max_send_buf: Option<u32>,
    flood_budget: Option<bool>,
}

impl H2Flags {
    fn any(&self) -> bool {
        self.max_streams.is_some()
            || self.max_pending_resets.is_some()
            || self.max_error_resets.is_some()
            || self.max_send_buf.is_some()
            || self.flood_budget.is_some()
    }

    fn apply<S, G, A>(
        &self,
        mut serve: conn_hygiene::serve::Serve<S, G, A>,
    ) -> conn_hygiene::serve::Serve<S, G, A> {
        if let Some(max) = self.max_streams {
            serve = serve.http2_max_concurrent_streams(max);
        }
        if let Some(max) = self.max_pending_resets {
            serve = serve.http2_max_pending_accept_reset_streams(max);
        }
        if let Some(max) = self.max_error_resets {
            serve = serve.http2_max_local_error_reset_streams(max);
        }
        if let Some(bytes) = self.max_send_buf {
            serve = serve.http2_max_send_buf_size(bytes);
        }
        if let Some(on) = self.flood_budget {
            serve = serve.http2_flood_budget(on.then(FloodBudget::default));
        }
        serve
    }
}

fn usage(error: &str) -> ExitCode {
    eprintln!("demo_server: {error}");
    eprintln!(
        "usage: demo_server [--listen ADDR] [--raw] [--hand-hardened] [--axum-serve] [--idle-timeout DUR] \
         [--header-timeout DUR] \
         [--first-byte-timeout DUR] [--body-stall-timeout DUR] [--write-stall-timeout DUR] \
         [--half-close abort|allow|DUR] [--drain-timeout DUR] [--deregister-delay DUR] \
         [--listen-stdin] [--reuse-port] [--min-body-rate BYTES/s] \
         [--min-send-rate BYTES/s] [--rate-grace DUR] [--max-requests N] \
         [--max-connection-age DUR] [--max-connections-per-ip N] [--max-connections N] \
         [--eviction-batch N|off] [--pressure-share F|off] [--pressure-floor DUR] [--ws-read-buffer BYTES] \
         [--no-keep-alive-header] [--h2-max-streams N|off] [--h2-max-pending-resets N|off] \
         [--h2-max-error-resets N|off] [--h2-max-send-buf BYTES] \
         [--h2-flood-budget on|off]"
    );
    ExitCode::from(2)
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:3000".parse().unwrap(),
        raw: false,
        hand_hardened: false,
        axum_serve: false,
        policy: Policy::builder(),
        deregister_delay: Duration::ZERO,
        listen_stdin: false,
        reuse_port: false,
        min_body_rate: None,
        min_send_rate: None,
        rate_grace: None,
        max_connections_per_ip: None,
        capacity: CapacityFlags::default(),
        ws_read_buffer: None,
        no_keep_alive_header: false,
        h2: H2Flags::default(),
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let switch = match flag.as_str() {
            "--raw" => Some(&mut args.raw),
            "--hand-hardened" => Some(&mut args.hand_hardened),
            "--axum-serve" => Some(&mut args.axum_serve),
            "--listen-stdin" => Some(&mut args.listen_stdin),
            "--reuse-port" => Some(&mut args.reuse_port),
            "--no-keep-alive-header" => Some(&mut args.no_keep_alive_header),
            _ => None,
        };
        if let Some(switch) = switch {
            *switch = true;
            continue;
        }
        let value = argv
            .next()
            .ok_or_else(|| format!("{flag}: missing value"))?;
        let duration =
            || humantime::parse_duration(&value).map_err(|e| format!("{flag}: {e}: {value:?}"));
        let number = || {
            value
                .parse::<u32>()
                .map_err(|e| format!("{flag}: {e}: {value:?}"))
        };
        // `off`, or a number.
        let limit = || -> Result<Option<u32>, String> {
            if value == "off" {
                Ok(None)
            } else {
                number().map(Some)
            }
        };
        let policy = std::mem::take(&mut args.policy);
        args.policy = match flag.as_str() {
            "--listen" => {
                args.listen = value
                    .parse()
                    .map_err(|e| format!("--listen: {e}: {value:?}"))?;
                policy
            }
            "--idle-timeout" => policy.idle_timeout(Some(duration()?)),
            "--header-timeout" => policy.header_timeout(Some(duration()?)),
            "--first-byte-timeout" => policy.first_byte_timeout(Some(duration()?)),
            "--body-stall-timeout" => policy.body_stall_timeout(Some(duration()?)),
            "--write-stall-timeout" => policy.write_stall_timeout(Some(duration()?)),
            "--drain-timeout" => policy.drain_timeout(duration()?),
            "--deregister-delay" => {
                args.deregister_delay = duration()?;
                policy
            }
            "--half-close" => policy.half_close(match value.as_str() {
                "abort" => HalfClose::Abort,
                "allow" => HalfClose::Allow,
                _ => HalfClose::AllowFor(duration()?),
            }),
            "--min-body-rate" => {
                args.min_body_rate = Some(number()?);
                policy
            }
            "--min-send-rate" => {
                args.min_send_rate = Some(number()?);
                policy
            }
            "--rate-grace" => {
                args.rate_grace = Some(duration()?);
                policy
            }
            "--max-requests" => policy.max_requests(Some(number()?)),
            "--max-connection-age" => policy.max_connection_age(Some(duration()?)),
            "--max-connections-per-ip" => {
                let max = NonZeroUsize::new(number()? as usize)
                    .ok_or_else(|| format!("{flag}: must be greater than zero"))?;
                args.max_connections_per_ip = Some(max);
                policy
            }
            "--max-connections" => {
                args.capacity.max = Some(
                    NonZeroUsize::new(number()? as usize)
                        .ok_or_else(|| format!("{flag}: must be greater than zero"))?,
                );
                policy
            }
            "--eviction-batch" => {
                args.capacity.batch = Some(limit()?.and_then(|n| NonZeroUsize::new(n as usize)));
                policy
            }
            "--pressure-share" => {
                args.capacity.share = Some(if value == "off" {
                    None
                } else {
                    Some(
                        value
                            .parse()
                            .map_err(|e| format!("{flag}: {e}: {value:?}"))?,
                    )
                });
                policy
            }
            "--pressure-floor" => {
                args.capacity.floor = Some(duration()?);
                policy
            }
            "--h2-max-streams" => {
                args.h2.max_streams = Some(limit()?);
                policy
            }
            "--h2-max-pending-resets" => {
                args.h2.max_pending_resets = Some(limit()?.map(|n| n as usize));
                policy
            }
            "--h2-max-error-resets" => {
                args.h2.max_error_resets = Some(limit()?.map(|n| n as usize));
                policy
            }
            "--h2-flood-budget" => {
                args.h2.flood_budget = Some(match value.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("{flag}: on or off: {value:?}")),
                });
                policy
            }
            "--h2-max-send-buf" => {
                args.h2.max_send_buf = Some(number()?);
                policy
            }
            "--ws-read-buffer" => {
                args.ws_read_buffer = Some(number()? as usize);
                policy
            }
            _ => return Err(format!("unknown flag {flag}")),
        };
    }
    if [args.raw, args.hand_hardened, args.axum_serve]
        .iter()
        .filter(|on| **on)
        .count()
        > 1
    {
        return Err("--raw, --hand-hardened and --axum-serve exclude each other".into());
    }
    if args.h2.any() && (args.raw || args.hand_hardened || args.axum_serve) {
        return Err(
            "the --h2-* flags configure serve(): not with --raw, --hand-hardened or --axum-serve"
                .into(),
        );
    }
    let policy = std::mem::take(&mut args.policy);
    args.policy = floors(&args, policy).advertise_keep_alive(!args.no_keep_alive_header);
    Ok(args)
}

/// The rate floors from `--min-body-rate`, `--min-send-rate` and `--rate-grace`, each
/// defaulting to the crate's; a rate of 0 turns that floor off.
fn floors(args: &Args, policy: PolicyBuilder) -> PolicyBuilder {
    let defaults = Policy::default();
    let floor = |rate: Option<u32>, default: Option<MinRate>| {
        let default = default.unwrap_or(MinRate::KESTREL);
        let rate = rate.unwrap_or(default.bytes_per_sec());
        let grace = args.rate_grace.unwrap_or(default.grace());
        (rate > 0).then(|| MinRate::new(rate, grace))
    };
    policy
        .min_body_rate(floor(args.min_body_rate, defaults.min_body_rate()))
        .min_send_rate(floor(args.min_send_rate, defaults.min_send_rate()))
}

#[tokio::main]
async fn main() -> ExitCode {
    cli::init_tracing();
    let mut args = match parse_args() {
        Ok(args) => args,
        Err(error) => return usage(&error),
    };
    let policy = match std::mem::take(&mut args.policy).build() {
        Ok(policy) => policy,
        Err(error) => return usage(&error.to_string()),
    };
    let listener = match bind(&args) {
        Ok(listener) => listener,
        Err(error) if args.listen_stdin => return usage(&format!("--listen-stdin: {error}")),
        Err(error) => return usage(&format!("--listen {}: {error}", args.listen)),
    };
    announce(listener.local_addr().unwrap());
    let readiness = Readiness::new();
    let ws_read_buffer = args.ws_read_buffer;
    let app = app()
        .route("/ws", get(move |upgrade| ws(upgrade, ws_read_buffer)))
        .route_service("/healthz", readiness.clone());
    if args.raw {
        let served = axum::serve(listener, app).with_graceful_shutdown(signal());
        // Plain axum waits for every connection however long: a second signal ends it.
        tokio::select! {
            result = served => {
                result.expect("serve");
                println!("shutdown: drained=all forced=0 (raw: no deadline)");
            }
            () = async { signal().await; signal().await } => {
                println!("shutdown: raw drain never finished; exiting on second signal");
            }
        }
        return ExitCode::SUCCESS;
    }
    if args.hand_hardened {
        // As raw: hyper-util's drain has no deadline, a second signal ends it.
        tokio::select! {
            () = hardened::serve(listener, app, signal()) => {
                println!("shutdown: drained=all forced=0 (hand-hardened: no deadline)");
            }
            () = async { signal().await; signal().await } => {
                println!("shutdown: hand-hardened drain never finished; exiting on second signal");
            }
        }
        return ExitCode::SUCCESS;
    }
    let mut listener = match Listener::from_tokio(listener, SocketOptions::new(), policy) {
        Ok(listener) => listener,
        Err(error) => return usage(&error.to_string()),
    };
    if let Some(max) = args.max_connections_per_ip {
        listener = listener.with_max_connections_per_ip(max);
    }
    listener = match args.capacity.apply(listener) {
        Ok(listener) => listener,
        Err(error) => return usage(&error),
    };
    if args.axum_serve {
        // The crate's shutdown around axum's own: deregistration, deadline, report.
        let shutdown = GracefulShutdown::new(&listener)
            .with_readiness(readiness)
            .deregister_delay(args.deregister_delay);
        let app = app
            .layer(HygieneLayer::new())
            .into_make_service_with_connect_info::<Conn>();
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.signal(signal()));
        let report = shutdown.run(server).await.expect("serve");
        println!("shutdown: {report}");
        return ExitCode::SUCCESS;
    }
    let report = args
        .h2
        .apply(conn_hygiene::serve(listener, app))
        .with_readiness(readiness)
        .deregister_delay(args.deregister_delay)
        .with_graceful_shutdown(signal())
        .await;
    match report {
        Ok(report) => println!("shutdown: {report}"),
        // A setting refused at start names itself (`http2_max_send_buf_size: ...`).
        Err(error) if error.kind() == std::io::ErrorKind::InvalidInput => {
            return usage(&error.to_string());
        }
        Err(error) => panic!("serve: {error}"),
    }
    ExitCode::SUCCESS
}

/// `GET /ws`: upgrades to a WebSocket echo (under `serve`, a tunnel).
async fn ws(upgrade: WebSocketUpgrade, read_buffer: Option<usize>) -> axum::response::Response {
    match read_buffer {
        Some(size) => upgrade.read_buffer_size(size),
        None => upgrade,
    }
    .on_upgrade(echo)
}

/// Sends back every text and binary message until the peer closes or goes away.
async fn echo(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        match message {
            Message::Text(_) | Message::Binary(_) => {
                if socket.send(message).await.is_err() {
                    return;
                }
            }
            Message::Close(_) => return,
            // axum answers pings by itself.
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

/// The listening socket: inherited on stdin, or bound (with SO_REUSEPORT if asked).
fn bind(args: &Args) -> std::io::Result<tokio::net::TcpListener> {
    if args.listen_stdin {
        return conn_hygiene::takeover::stdin_listener();
    }
    conn_hygiene::bind(
        args.listen,
        SocketOptions::new().with_reuse_port(args.reuse_port),
    )
}
