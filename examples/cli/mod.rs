//! What the examples share on the command line: the flag parser, logging to stderr,
//! the `listening on ADDR` line that outside tools wait for, and the shutdown signal.

pub(crate) mod flags;

use std::io::Write;
use std::net::SocketAddr;

/// Logs to stderr, filtered by `RUST_LOG` (warnings by default), so stdout carries
/// only the lines tools read.
#[allow(dead_code)] // not every example logs
pub(crate) fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Prints `listening on ADDR`, flushed: the first line of every server example.
#[allow(dead_code)] // not every example that logs also listens
pub(crate) fn announce(addr: SocketAddr) {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {addr}").unwrap();
    stdout.flush().unwrap();
}

/// Resolves at SIGTERM or SIGINT.
#[allow(dead_code)] // not every example drains on a signal
pub(crate) async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
