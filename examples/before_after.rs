//! The same small axum server twice in one process, raw (`axum::serve`) and hygienic
//! (`conn_hygiene::serve`), with the test kit's abrupt peers thrown at both. A few
//! seconds later it prints what the kernel holds for each, side by side, and exits.
//!
//! ```text
//! cargo run --release --all-features --example before_after
//! ```

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::app;
use conn_hygiene::census::{Filter, TcpState, sockets};
use conn_hygiene::testing::{Peer, PeerHandle, Side, port_census};
use conn_hygiene::{HalfClose, Listener, Policy, SocketOptions};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// How many of each abrupt peer each server gets.
const EACH: usize = 3;
/// Between a request and its FIN.
const PAUSE: Duration = Duration::from_millis(100);
/// Long enough for every hygienic clock below to have fired, with margin.
const SETTLE: Duration = Duration::from_secs(4);

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let forced = ForcedCloses::default();
    tracing_subscriber::registry().with(forced.clone()).init();

    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let raw_addr = raw.local_addr()?;
    tokio::spawn(async move { axum::serve(raw, app()).await });

    let policy = Policy::builder()
        .first_byte_timeout(Some(Duration::from_secs(1)))
        .header_timeout(Some(Duration::from_secs(1)))
        .idle_timeout(Some(Duration::from_secs(2)))
        .body_stall_timeout(Some(Duration::from_secs(1)))
        .write_stall_timeout(Some(Duration::from_secs(1)))
        .half_close(HalfClose::AllowFor(Duration::from_millis(500)))
        .build()
        .expect("valid policy");
    let listener = Listener::bind("127.0.0.1:0", SocketOptions::new(), policy)?;
    let hygienic_addr = listener.local_addr()?;
    tokio::spawn(async move { conn_hygiene::serve(listener, app()).await });

    println!("raw axum::serve on {raw_addr}, conn-hygiene on {hygienic_addr}");
    println!("sending {EACH} of each abrupt peer to both; waiting {SETTLE:?}…\n");
    let mut peers = abrupt_peers(raw_addr).await;
    peers.extend(abrupt_peers(hygienic_addr).await);
    tokio::time::sleep(SETTLE).await;

    let raw_row = Row::measure(raw_addr);
    let hygienic_row = Row::measure(hygienic_addr);
    println!(
        "{:<28} {:>16} {:>16}",
        "server side, after the storm", "raw axum::serve", "conn-hygiene"
    );
    println!(
        "{:<28} {:>16} {:>16}",
        "CLOSE_WAIT", raw_row.close_wait, hygienic_row.close_wait
    );
    println!(
        "{:<28} {:>16} {:>16}",
        "ESTABLISHED", raw_row.established, hygienic_row.established
    );
    println!(
        "{:<28} {:>16} {:>16}",
        "open fds (connections)", raw_row.fds, hygienic_row.fds
    );
    println!("{:<28} {:>16} {:>16}", "forced closes", "-", forced.total());
    for (reason, count) in forced.by_reason() {
        println!("{:<28} {:>16} {:>16}", format!("  {reason}"), "-", count);
    }
    drop(peers);
    // Handlers stuck in the raw server would keep a graceful exit waiting forever.
    std::process::exit(0);
}

/// Starts [`EACH`] of every abrupt peer the kit has (but the vanishing one, which
/// needs a network namespace) against `addr`.
async fn abrupt_peers(addr: SocketAddr) -> Vec<PeerHandle> {
    let stuck = &b"GET /stuck HTTP/1.1\r\nHost: demo\r\n\r\n"[..];
    let big = &b"GET /big/50000000 HTTP/1.1\r\nHost: demo\r\n\r\n"[..];
    let mut handles = Vec::new();
    for _ in 0..EACH {
        let peers = [
            // The pause lets the handler start before the FIN, as in real traffic.
            Peer::fin_after_request(addr).request(stuck).pause(PAUSE),
            Peer::pipelined_then_fin(addr).path("/stuck").pause(PAUSE),
            Peer::fin_mid_body(addr).path("/stuck").pause(PAUSE),
            Peer::rst_mid_request(addr).path("/stuck"),
            Peer::slowloris(addr),
            Peer::stalled_body(addr).path("/echo"),
            Peer::silent_connect(addr),
            Peer::never_read(addr).request(big),
            Peer::garbage(addr),
            Peer::idle_keep_alive(addr),
        ];
        for peer in peers {
            match peer.start().await {
                Ok(handle) => handles.push(handle),
                Err(error) => eprintln!("a peer failed to start: {error}"),
            }
        }
    }
    handles
}

struct Row {
    close_wait: usize,
    established: usize,
    fds: usize,
}

impl Row {
    fn measure(addr: SocketAddr) -> Row {
        let census = port_census(addr.port(), Side::Local).expect("read the kernel's TCP tables");
        // Sockets this process holds on the server's port, the listener aside.
        let fds = sockets(Filter::Pid(std::process::id()))
            .expect("read this process's sockets")
            .into_iter()
            .filter(|s| s.local.port() == addr.port() && s.state != TcpState::Listen)
            .count();
        Row {
            close_wait: census.get(TcpState::CloseWait),
            established: census.get(TcpState::Established),
            fds,
        }
    }
}

/// Counts `conn_hygiene::abandon` events by their `reason` field.
#[derive(Clone, Default)]
struct ForcedCloses(Arc<Mutex<BTreeMap<String, usize>>>);

impl ForcedCloses {
    fn by_reason(&self) -> BTreeMap<String, usize> {
        self.0.lock().unwrap().clone()
    }

    fn total(&self) -> usize {
        self.by_reason().values().sum()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ForcedCloses {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "conn_hygiene::abandon" {
            return;
        }
        struct Reason(String);
        impl Visit for Reason {
            fn record_str(&mut self, field: &Field, value: &str) {
                if field.name() == "reason" {
                    self.0 = value.to_owned();
                }
            }
            fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
        }
        let mut reason = Reason(String::new());
        event.record(&mut reason);
        *self.0.lock().unwrap().entry(reason.0).or_default() += 1;
    }
}
