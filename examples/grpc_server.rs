//! A gRPC server: `grpc.health.v1.Health` (from tonic-health, overall status SERVING)
//! served through conn-hygiene (`serve()` with tonic's routes), or through plain tonic
//! (`Server::builder().add_service(..).serve_with_shutdown`) with `--raw`, for
//! comparison.
//!
//! ```text
//! cargo run --example grpc_server --features tonic -- [FLAGS]   # --help lists them
//! ```
//!
//! The flags are the `COMMAND` table below, one line each.
//!
//! It prints `listening on ADDR` first, and `shutdown: …` after SIGTERM or SIGINT.
//! With `--raw`, tonic's own `max_connection_age` takes `--max-connection-age` (no
//! jitter), and tonic's own HTTP/2 and TCP keepalive take `--http2-keepalive` and
//! `--tcp-keepalive`; tonic has no idle timeout, half-close policy or drain deadline,
//! so those flags are ignored, and its shutdown waits for open streams: a second signal
//! ends it.
//!
//! An open `Watch` stops the idle clock, and the server writes nothing to it while the
//! status holds: a client that vanishes without a FIN or RST (a cut network) keeps it
//! for ever unless `--http2-keepalive` or `--tcp-keepalive` is set.

mod cli;

use cli::flags::{Command, Flag, duration, half_close, parse};
use cli::{announce, signal};

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use conn_hygiene::serve::{Readiness, ServeSettings};
use conn_hygiene::{Listener, Policy, SocketOptions, policy::PolicyBuilder};

struct Args {
    listen: SocketAddr,
    raw: bool,
    policy: PolicyBuilder,
    max_connection_age: Option<Duration>,
    http2_keepalive: Option<Duration>,
    tcp_keepalive: Option<Duration>,
}

/// Unanswered TCP keepalive probes before the kernel gives up on the peer.
const TCP_KEEPALIVE_PROBES: u32 = 3;

/// The flags, one line each.
#[rustfmt::skip]
const COMMAND: Command<Args> = Command {
    name: "grpc_server",
    synopsis: "[FLAGS]",
    flags: &[
        Flag::value("--listen", "ADDR", "default 127.0.0.1:50051; port 0 picks a free port", |a, v| Ok(Args { listen: parse(v)?, ..a })),
        Flag::switch("--raw", "the same service through plain tonic with no hygiene", |a| Args { raw: true, ..a }),
        Flag::value("--idle-timeout", "DUR", "close a connection with no RPC in flight (GOAWAY first)", |a, v| Ok(Args { policy: a.policy.idle_timeout(Some(duration(v)?)), ..a })),
        Flag::value("--half-close", "abort|allow|DUR", "the policy after the peer's FIN; DUR means AllowFor(DUR)", |a, v| Ok(Args { policy: a.policy.half_close(half_close(v)?), ..a })),
        Flag::value("--drain-timeout", "DUR", "shutdown deadline", |a, v| Ok(Args { policy: a.policy.drain_timeout(duration(v)?), ..a })),
        Flag::value("--max-connection-age", "DUR", "retire connections by GOAWAY at this age (±10 % jitter)", |a, v| Ok(Args { max_connection_age: Some(duration(v)?), ..a })),
        Flag::value("--deregister-delay", "DUR", "after the signal, report NOT_SERVING and keep serving this long before draining (default 0)", |a, v| Ok(Args { policy: a.policy.deregister_delay(Some(duration(v)?).filter(|delay| !delay.is_zero())), ..a })),
        Flag::value("--http2-keepalive", "DUR", "PING every DUR; a PING unanswered for DUR closes the connection (finds a client that vanished mid-`Watch`)", |a, v| Ok(Args { http2_keepalive: Some(duration(v)?), ..a })),
        Flag::value("--tcp-keepalive", "DUR", "TCP keepalive: first probe after DUR idle, then every DUR, 3 probes (the kernel resets a vanished peer's connection after about 4 × DUR)", |a, v| Ok(Args { tcp_keepalive: Some(duration(v)?), ..a })),
    ],
};

fn defaults() -> Args {
    Args {
        listen: "127.0.0.1:50051".parse().unwrap(),
        raw: false,
        policy: Policy::builder(),
        max_connection_age: None,
        http2_keepalive: None,
        tcp_keepalive: None,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    cli::init_tracing();
    let args = match COMMAND.parse(defaults()) {
        Ok(args) => args,
        Err(error) => return COMMAND.fail(&error),
    };
    // The overall status ("") starts as SERVING; the reporter must live as long as the
    // server, or `Watch` streams end.
    let (reporter, health) = tonic_health::server::health_reporter();
    if args.raw {
        let _reporter = reporter;
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(error) => return COMMAND.fail(&format!("--listen {}: {error}", args.listen)),
        };
        announce(listener.local_addr().unwrap());
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(args.http2_keepalive)
            .http2_keepalive_timeout(args.http2_keepalive);
        if let Some(age) = args.max_connection_age {
            builder = builder.max_connection_age(age);
        }
        let incoming = tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(args.tcp_keepalive)
            .with_keepalive_interval(args.tcp_keepalive)
            .with_keepalive_retries(args.tcp_keepalive.map(|_| TCP_KEEPALIVE_PROBES));
        let served = builder
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, signal());
        // Plain tonic waits for every open stream however long: a second signal ends it.
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
    let policy = args.policy.max_connection_age(args.max_connection_age);
    let policy = match policy.build() {
        Ok(policy) => policy,
        Err(error) => return COMMAND.fail(&error.to_string()),
    };
    // tonic's own server sets TCP_NODELAY; so does this one.
    let mut options = SocketOptions::new().nodelay(true);
    if let Some(idle) = args.tcp_keepalive {
        options = options
            .keepalive_time(idle)
            .keepalive_interval(idle)
            .keepalive_retries(TCP_KEEPALIVE_PROBES);
    }
    let listener = match Listener::bind(args.listen, options, policy) {
        Ok(listener) => listener,
        Err(error) => return COMMAND.fail(&format!("--listen {}: {error}", args.listen)),
    };
    announce(listener.local_addr().unwrap());
    // From the shutdown signal on, gRPC health checkers (`Check` and open `Watch`
    // streams) see NOT_SERVING while the server deregisters, as HTTP probes see 503.
    let readiness = Readiness::new();
    tokio::spawn({
        let readiness = readiness.clone();
        async move {
            readiness.unready().await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
    });
    let routes = tonic::service::Routes::new(health);
    let mut settings = ServeSettings::builder();
    if let Some(every) = args.http2_keepalive {
        settings = settings.http2_keep_alive(every, every);
    }
    let settings = match settings.build() {
        Ok(settings) => settings,
        Err(error) => return COMMAND.fail(&error.to_string()),
    };
    let report = conn_hygiene::serve(listener, routes)
        .settings(settings)
        .with_readiness(readiness)
        .with_graceful_shutdown(signal())
        .await
        .expect("serve");
    println!("shutdown: {report}");
    ExitCode::SUCCESS
}
