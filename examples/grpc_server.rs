//! A gRPC server: `grpc.health.v1.Health` (from tonic-health, overall status SERVING)
//! served through conn-hygiene (`serve()` with tonic's routes), or through plain tonic
//! (`Server::builder().add_service(..).serve_with_shutdown`) with `--raw`, for
//! comparison.
//!
//! ```text
//! cargo run --example grpc_server --features tonic -- [FLAGS]
//!   --listen ADDR                 default 127.0.0.1:50051; port 0 picks a free port
//!   --raw                         the same service through plain tonic with no hygiene
//!   --idle-timeout DUR            close a connection with no RPC in flight (GOAWAY first)
//!   --half-close abort|allow|DUR  the policy after the peer's FIN; DUR means AllowFor(DUR)
//!   --drain-timeout DUR           shutdown deadline
//!   --max-connection-age DUR      retire connections by GOAWAY at this age (±10 % jitter)
//!   --deregister-delay DUR        after the signal, report NOT_SERVING and keep serving
//!                                 this long before draining (default 0)
//!   --http2-keepalive DUR         PING every DUR; a PING unanswered for DUR closes the
//!                                 connection (finds a client that vanished mid-`Watch`)
//!   --tcp-keepalive DUR           TCP keepalive: first probe after DUR idle, then every
//!                                 DUR, 3 probes (the kernel resets a vanished peer's
//!                                 connection after about 4 × DUR)
//! ```
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

use cli::{announce, signal};

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use conn_hygiene::serve::{Readiness, ServeSettings};
use conn_hygiene::{HalfClose, Listener, Policy, SocketOptions, policy::PolicyBuilder};

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

const USAGE: &str = "usage: grpc_server [--listen ADDR] [--raw] [--idle-timeout DUR] \
                     [--half-close abort|allow|DUR] [--drain-timeout DUR] \
                     [--max-connection-age DUR] [--deregister-delay DUR] \
                     [--http2-keepalive DUR] [--tcp-keepalive DUR]";

fn usage(error: &str) -> ExitCode {
    eprintln!("grpc_server: {error}");
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:50051".parse().unwrap(),
        raw: false,
        policy: Policy::builder(),
        max_connection_age: None,
        http2_keepalive: None,
        tcp_keepalive: None,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        if flag == "--raw" {
            args.raw = true;
            continue;
        }
        let value = argv
            .next()
            .ok_or_else(|| format!("{flag}: missing value"))?;
        let duration =
            || humantime::parse_duration(&value).map_err(|e| format!("{flag}: {e}: {value:?}"));
        let policy = std::mem::take(&mut args.policy);
        args.policy = match flag.as_str() {
            "--listen" => {
                args.listen = value
                    .parse()
                    .map_err(|e| format!("--listen: {e}: {value:?}"))?;
                policy
            }
            "--idle-timeout" => policy.idle_timeout(Some(duration()?)),
            "--drain-timeout" => policy.drain_timeout(duration()?),
            "--half-close" => policy.half_close(match value.as_str() {
                "abort" => HalfClose::Abort,
                "allow" => HalfClose::Allow,
                _ => HalfClose::AllowFor(duration()?),
            }),
            "--max-connection-age" => {
                args.max_connection_age = Some(duration()?);
                policy
            }
            // 0 on the command line: no deregistration phase.
            "--deregister-delay" => {
                policy.deregister_delay(Some(duration()?).filter(|delay| !delay.is_zero()))
            }
            "--http2-keepalive" => {
                args.http2_keepalive = Some(duration()?);
                policy
            }
            "--tcp-keepalive" => {
                args.tcp_keepalive = Some(duration()?);
                policy
            }
            _ => return Err(format!("unknown flag {flag}")),
        };
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    cli::init_tracing();
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => return usage(&error),
    };
    // The overall status ("") starts as SERVING; the reporter must live as long as the
    // server, or `Watch` streams end.
    let (reporter, health) = tonic_health::server::health_reporter();
    if args.raw {
        let _reporter = reporter;
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(error) => return usage(&format!("--listen {}: {error}", args.listen)),
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
        Err(error) => return usage(&error.to_string()),
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
        Err(error) => return usage(&format!("--listen {}: {error}", args.listen)),
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
        Err(error) => return usage(&error.to_string()),
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
