//! The demo server: an axum app served through conn-hygiene, or through plain
//! `axum::serve` with `--raw`, for comparison.
//!
//! ```text
//! cargo run --release --features axum --example demo_server -- [FLAGS]
//! cargo run --release --features axum --example demo_server -- --help   # lists them
//! ```
//!
//! The flags are the `COMMAND` table below, one line each; every clock of the policy
//! is one (`--idle-timeout 5s`, `--half-close 500ms`, `--min-body-rate 240`, …).
//!
//! The `--h2-*` flags configure `serve()`: with `--raw`, `--hand-hardened` or `--axum-serve`
//! they are refused.
//!
//! The routes are `examples/common/mod.rs`'s (`GET /`, `/stuck`, `/sleep/{ms}`,
//! `POST /echo`, `GET /big/{bytes}`) and two more:
//! `GET /healthz` answers 200, and 503 from the shutdown signal on (always 200 with `--raw`).
//! `GET /ip` answers the client's address as the handler sees it (`IP:PORT`; not with
//! `--raw` or `--hand-hardened`, which refuse the `--proxy-*` flags).
//! `GET /ws` is a WebSocket that echoes every text and binary message (both variants).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::Duration;

mod cli;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::routing::get;
use cli::flags::{Command, Flag, duration, half_close, off_or, on_off, parse};
use cli::{announce, signal};
mod common;
mod hardened;

use common::app;
use conn_hygiene::serve::{FloodBudget, ServeSettings, ServeSettingsBuilder};
use conn_hygiene::{
    Conn, HygieneLayer, Listener, MinRate, Policy, SocketOptions, listener::Pressure,
    listener::ProxyProtocol, policy::PolicyBuilder, serve::BoundedShutdown, serve::Readiness,
};

struct Args {
    listen: SocketAddr,
    raw: bool,
    hand_hardened: bool,
    axum_serve: bool,
    policy: PolicyBuilder,
    listen_stdin: bool,
    reuse_port: bool,
    // The floors take their rate and grace from separate flags: combined after parsing.
    min_body_rate: Option<u32>,
    min_send_rate: Option<u32>,
    rate_grace: Option<Duration>,
    max_connections_per_ip: Option<NonZeroUsize>,
    proxy_protocol: Option<ProxyProtocol>,
    proxy_header_timeout: Option<Duration>,
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
            listener = listener.max_connections(max);
        }
        if let Some(batch) = self.batch {
            listener = listener.eviction_batch(batch);
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
        Ok(listener.pressure(pressure))
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

    fn apply(&self, mut serve: ServeSettingsBuilder) -> ServeSettingsBuilder {
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

/// The flags, one line each.
#[rustfmt::skip]
const COMMAND: Command<Args> = Command {
    name: "demo_server",
    synopsis: "[FLAGS]",
    flags: &[
        Flag::value("--listen", "ADDR", "default 127.0.0.1:3000; port 0 picks a free port", |a, v| Ok(Args { listen: parse(v)?, ..a })),
        Flag::switch("--raw", "the same routes through plain axum::serve with no hygiene", |a| Args { raw: true, ..a }),
        Flag::switch("--hand-hardened", "the same routes through what a careful user writes instead: hyper-util's auto builder with header_read_timeout, HTTP/2 keep-alive PINGs, tower-http's TimeoutLayer and hyper-util's GracefulShutdown (the benchmark's peer, `hardened/mod.rs`)", |a| Args { hand_hardened: true, ..a }),
        Flag::switch("--axum-serve", "the same routes through axum::serve over the crate's listener, with HygieneLayer and BoundedShutdown (instead of serve())", |a| Args { axum_serve: true, ..a }),
        Flag::value("--idle-timeout", "DUR", "keep-alive idle", |a, v| Ok(Args { policy: a.policy.idle_timeout(Some(duration(v)?)), ..a })),
        Flag::value("--header-timeout", "DUR", "the request head must complete within this", |a, v| Ok(Args { policy: a.policy.header_timeout(Some(duration(v)?)), ..a })),
        Flag::value("--first-byte-timeout", "DUR", "from connect to first byte", |a, v| Ok(Args { policy: a.policy.first_byte_timeout(Some(duration(v)?)), ..a })),
        Flag::value("--body-stall-timeout", "DUR", "no request-body progress while the handler waits for it", |a, v| Ok(Args { policy: a.policy.body_stall_timeout(Some(duration(v)?)), ..a })),
        Flag::value("--write-stall-timeout", "DUR", "no write progress (the peer is not reading)", |a, v| Ok(Args { policy: a.policy.write_stall_timeout(Some(duration(v)?)), ..a })),
        Flag::value("--half-close", "abort|allow|DUR", "the policy after the peer's FIN; DUR means AllowFor(DUR)", |a, v| Ok(Args { policy: a.policy.half_close(half_close(v)?), ..a })),
        Flag::value("--drain-timeout", "DUR", "shutdown deadline", |a, v| Ok(Args { policy: a.policy.drain_timeout(duration(v)?), ..a })),
        Flag::value("--deregister-delay", "DUR", "after SIGTERM: unready (GET /healthz answers 503) but still serving for DUR, every connection retiring after its next answer, before the listener closes; default 0", |a, v| Ok(Args { policy: a.policy.deregister_delay(Some(duration(v)?).filter(|delay| !delay.is_zero())), ..a })),
        Flag::switch("--listen-stdin", "serve the listening socket passed as standard input (systemd StandardInput=socket): a new process takes over the port while the old one drains; --listen is then ignored", |a| Args { listen_stdin: true, ..a }),
        Flag::switch("--reuse-port", "bind with SO_REUSEPORT (for comparison: a takeover this way resets the connections queued on the old process's socket)", |a| Args { reuse_port: true, ..a }),
        Flag::value("--min-body-rate", "BYTES/s", "request-body rate floor (0 turns it off)", |a, v| Ok(Args { min_body_rate: Some(parse(v)?), ..a })),
        Flag::value("--min-send-rate", "BYTES/s", "response rate floor (0 turns it off)", |a, v| Ok(Args { min_send_rate: Some(parse(v)?), ..a })),
        Flag::value("--rate-grace", "DUR", "grace before the floors apply", |a, v| Ok(Args { rate_grace: Some(duration(v)?), ..a })),
        Flag::value("--max-requests", "N", "per connection", |a, v| Ok(Args { policy: a.policy.max_requests(Some(parse(v)?)), ..a })),
        Flag::value("--max-connection-age", "DUR", "recycle connections at this age (±10 % jitter)", |a, v| Ok(Args { policy: a.policy.max_connection_age(Some(duration(v)?)), ..a })),
        Flag::value("--max-connections-per-ip", "N", "connections per client IP (IPv6 per /64)", |a, v| Ok(Args { max_connections_per_ip: Some(NonZeroUsize::new(parse(v)?).ok_or("must be greater than zero")?), ..a })),
        Flag::switch("--proxy-protocol", "every connection starts with a PROXY protocol header (v1 or v2): the balancer's client is the peer (GET /ip shows it)", |a| Args { proxy_protocol: Some(ProxyProtocol::required()), ..a }),
        Flag::value("--proxy-trusted", "CIDR,...", "a PROXY protocol header from these balancers only; others are served as direct clients", |a, v| Ok(Args { proxy_protocol: Some(ProxyProtocol::from_trusted(v.split(',').map(parse).collect::<Result<Vec<_>, _>>()?)), ..a })),
        Flag::value("--proxy-header-timeout", "DUR", "the PROXY protocol header's deadline (default 3s)", |a, v| Ok(Args { proxy_header_timeout: Some(duration(v)?), ..a })),
        Flag::value("--max-connections", "N", "live connections at most: at the cap the oldest idle ones are evicted to admit new clients", |a, v| Ok(Args { capacity: CapacityFlags { max: Some(NonZeroUsize::new(parse(v)?).ok_or("must be greater than zero")?), ..a.capacity }, ..a })),
        Flag::value("--eviction-batch", "N|off", "idle connections evicted at most per burst at the cap or at EMFILE (default 32; off never evicts)", |a, v| Ok(Args { capacity: CapacityFlags { batch: Some(off_or::<usize>(v)?.and_then(NonZeroUsize::new)), ..a.capacity }, ..a })),
        Flag::value("--pressure-share", "F|off", "share of the cap (or of the descriptor limit) from which idle clocks shrink and answers close their connections (default 0.8)", |a, v| Ok(Args { capacity: CapacityFlags { share: Some(off_or(v)?), ..a.capacity }, ..a })),
        Flag::value("--pressure-floor", "DUR", "what the idle clocks shrink toward, reached at the cap (default 5s)", |a, v| Ok(Args { capacity: CapacityFlags { floor: Some(duration(v)?), ..a.capacity }, ..a })),
        Flag::value("--ws-read-buffer", "BYTES", "the WebSocket read buffer (default tungstenite's 128 KiB)", |a, v| Ok(Args { ws_read_buffer: Some(parse(v)?), ..a })),
        Flag::switch("--no-keep-alive-header", "no `Keep-Alive: timeout=N` on HTTP/1 answers (its cost, measured)", |a| Args { no_keep_alive_header: true, ..a }),
        Flag::value("--h2-max-streams", "N|off", "HTTP/2 streams per connection (default 128)", |a, v| Ok(Args { h2: H2Flags { max_streams: Some(off_or(v)?), ..a.h2 }, ..a })),
        Flag::value("--h2-max-pending-resets", "N|off", "HTTP/2 resets before accept, then GOAWAY (default 20)", |a, v| Ok(Args { h2: H2Flags { max_pending_resets: Some(off_or(v)?), ..a.h2 }, ..a })),
        Flag::value("--h2-max-error-resets", "N|off", "HTTP/2 resets for the peer's errors, then GOAWAY (default 1024)", |a, v| Ok(Args { h2: H2Flags { max_error_resets: Some(off_or(v)?), ..a.h2 }, ..a })),
        Flag::value("--h2-max-send-buf", "BYTES", "HTTP/2 response bytes queued per stream (default 64 KiB)", |a, v| Ok(Args { h2: H2Flags { max_send_buf: Some(parse(v)?), ..a.h2 }, ..a })),
        Flag::value("--h2-flood-budget", "on|off", "the HTTP/2 flood budget (default on)", |a, v| Ok(Args { h2: H2Flags { flood_budget: Some(on_off(v)?), ..a.h2 }, ..a })),
    ],
};

fn parse_args() -> Result<Args, String> {
    let defaults = Args {
        listen: "127.0.0.1:3000".parse().unwrap(),
        raw: false,
        hand_hardened: false,
        axum_serve: false,
        policy: Policy::builder(),
        listen_stdin: false,
        reuse_port: false,
        min_body_rate: None,
        min_send_rate: None,
        rate_grace: None,
        max_connections_per_ip: None,
        proxy_protocol: None,
        proxy_header_timeout: None,
        capacity: CapacityFlags::default(),
        ws_read_buffer: None,
        no_keep_alive_header: false,
        h2: H2Flags::default(),
    };
    let mut args = COMMAND.parse(defaults)?;
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
    if (args.proxy_protocol.is_some() || args.proxy_header_timeout.is_some())
        && (args.raw || args.hand_hardened)
    {
        return Err(
            "the --proxy-* flags need the crate's listener: not with --raw or --hand-hardened"
                .into(),
        );
    }
    if let Some(timeout) = args.proxy_header_timeout {
        let proxy = args
            .proxy_protocol
            .take()
            .ok_or("--proxy-header-timeout needs --proxy-protocol or --proxy-trusted".to_owned())?;
        args.proxy_protocol = Some(proxy.with_header_timeout(timeout));
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
        Err(error) => return COMMAND.fail(&error),
    };
    let policy = match std::mem::take(&mut args.policy).build() {
        Ok(policy) => policy,
        Err(error) => return COMMAND.fail(&error.to_string()),
    };
    // A setting refused names itself (`invalid http2_max_send_buf_size: ...`).
    // A setting refused names itself (`invalid http2_max_send_buf_size: ...`).
    let settings = match args.h2.apply(ServeSettings::builder()).build() {
        Ok(settings) => settings,
        Err(error) => return COMMAND.fail(&error.to_string()),
    };
    let listener = match bind(&args) {
        Ok(listener) => listener,
        Err(error) if args.listen_stdin => {
            return COMMAND.fail(&format!("--listen-stdin: {error}"));
        }
        Err(error) => return COMMAND.fail(&format!("--listen {}: {error}", args.listen)),
    };
    announce(listener.local_addr().unwrap());
    let readiness = Readiness::new();
    let ws_read_buffer = args.ws_read_buffer;
    let app = app()
        .route("/ws", get(move |upgrade| ws(upgrade, ws_read_buffer)))
        .route_service("/healthz", readiness.clone())
        .route(
            "/ip",
            get(|conn: Conn| async move { conn.peer_addr().to_string() }),
        );
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
        Err(error) => return COMMAND.fail(&error.to_string()),
    };
    if let Some(max) = args.max_connections_per_ip {
        listener = listener.max_connections_per_ip(max);
    }
    if let Some(proxy) = args.proxy_protocol.take() {
        listener = match listener.proxy_protocol(proxy) {
            Ok(listener) => listener,
            Err(error) => return COMMAND.fail(&error.to_string()),
        };
    }
    listener = match args.capacity.apply(listener) {
        Ok(listener) => listener,
        Err(error) => return COMMAND.fail(&error),
    };
    if args.axum_serve {
        // The crate's shutdown around axum's own: deregistration, deadline, report.
        let shutdown = BoundedShutdown::new(&listener).with_readiness(readiness);
        let app = app
            .layer(HygieneLayer::new())
            .into_make_service_with_connect_info::<Conn>();
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.signal(signal()));
        let report = shutdown.run(server).await.expect("serve");
        println!("shutdown: {report}");
        return ExitCode::SUCCESS;
    }
    let report = conn_hygiene::serve(listener, app)
        .settings(settings)
        .with_readiness(readiness)
        .with_graceful_shutdown(signal())
        .await;
    match report {
        Ok(report) => println!("shutdown: {report}"),
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
    conn_hygiene::options::bind(
        args.listen,
        SocketOptions::new().reuse_port(args.reuse_port),
    )
}
