//! slowhttptest against `serve()` and against plain `axum::serve`, side by side, in its
//! three slow modes: slow body (`-B`, R-U-Dead-Yet), slowloris (`-H`) and slow read
//! (`-X`). Each attack opens 50 connections that trickle; about 9 s in, the kernel's
//! socket table says how many the server still holds. Under `serve()` each is cut within
//! its bound (the request-body floor, the head clock, the response floor), and normal
//! requests keep succeeding; plain axum holds them all.
//!
//! ```text
//! cargo test --all-features --test it -- --ignored --nocapture slowhttptest::
//! ```
#![cfg(all(feature = "axum", feature = "testing"))]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use conn_hygiene::census::TcpState;
use conn_hygiene::testing::{Side, port_census};
use conn_hygiene::{MinRate, Policy};
use tokio::process::{Child, Command};

use crate::support::client;
use crate::support::server::{Mode, Server};

/// When the sockets are counted, after the attack starts.
const COUNT_AT: Duration = Duration::from_secs(9);
/// The clocks and floors under test: short, so the attack is over in seconds.
const CLOCK: Duration = Duration::from_secs(2);
const FLOOR: MinRate = MinRate::new(500, Duration::from_secs(2));

async fn hygiene_server() -> Server {
    let policy = Policy::builder()
        .first_byte_timeout(Some(CLOCK))
        .header_timeout(Some(CLOCK))
        .idle_timeout(Some(CLOCK))
        .body_stall_timeout(Some(CLOCK))
        // Long: the floor, not the stall clock, must cut the slow reader.
        .write_stall_timeout(Some(Duration::from_secs(30)))
        .half_close(conn_hygiene::HalfClose::AllowFor(CLOCK))
        .min_body_rate(Some(FLOOR))
        .min_send_rate(Some(FLOOR))
        .build()
        .unwrap();
    Server::start(Mode::Serve, policy).await
}

async fn raw_server() -> Server {
    Server::start(Mode::AxumTokio, Policy::default()).await
}

#[derive(Debug, Clone, Copy)]
enum Attack {
    SlowBody,
    Slowloris,
    SlowRead,
}

impl Attack {
    fn args(self, addr: SocketAddr) -> Vec<String> {
        let (specific, path): (&[&str], &str) = match self {
            // A 100 kB body, in pairs of up to 10 characters a second.
            Attack::SlowBody => (&["-B", "-s", "100000", "-x", "10", "-t", "POST"], "/echo"),
            Attack::Slowloris => (&["-H", "-x", "10"], "/"),
            // Three 10 MB answers per connection, read 5 bytes a second through a
            // window of 10 to 20 bytes.
            Attack::SlowRead => (
                &[
                    "-X", "-k", "3", "-n", "1", "-w", "10", "-y", "20", "-z", "5",
                ],
                "/big/10000000",
            ),
        };
        let common = ["-c", "50", "-r", "50", "-l", "14", "-p", "3", "-i", "1"];
        let url = format!("http://{addr}{path}");
        specific
            .iter()
            .chain(&common)
            .copied()
            .chain(["-u", &url])
            .map(str::to_string)
            .collect()
    }

    fn start(self, addr: SocketAddr) -> Child {
        Command::new("slowhttptest")
            .args(self.args(addr))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("slowhttptest runs (apt-get install slowhttptest)")
    }
}

/// Connections the server's application still holds on `port`: open, or half-closed
/// by the peer and not yet closed by us.
fn held(port: u16) -> (usize, String) {
    let census = port_census(port, Side::Local).expect("the kernel's socket table");
    let held = census.get(TcpState::Established) + census.get(TcpState::CloseWait);
    (held, census.to_string().replace('\n', " "))
}

async fn get_ok(addr: SocketAddr) -> Result<u16, String> {
    Ok(client::get(addr, "/").await?.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs slowhttptest; .ci/run installs it and runs this test with --ignored"]
async fn slowhttptest_attacks_are_cut_where_raw_axum_holds_them() {
    let attacks = [Attack::SlowBody, Attack::Slowloris, Attack::SlowRead];
    let mut runs = Vec::new();
    for attack in attacks {
        let hygiene = hygiene_server().await;
        let raw = raw_server().await;
        let (on_hygiene, on_raw) = (attack.start(hygiene.addr), attack.start(raw.addr));
        runs.push((attack, hygiene, raw, on_hygiene, on_raw));
    }
    // Normal requests keep succeeding under every attack.
    tokio::time::sleep(COUNT_AT / 2).await;
    for (attack, hygiene, ..) in &runs {
        assert_eq!(
            get_ok(hygiene.addr).await,
            Ok(200),
            "{attack:?}: a normal request"
        );
    }
    tokio::time::sleep(COUNT_AT - COUNT_AT / 2).await;
    let mut failures = Vec::new();
    for (attack, hygiene, raw, ..) in &runs {
        let (held_hygiene, census_hygiene) = held(hygiene.addr.port());
        let (held_raw, census_raw) = held(raw.addr.port());
        println!(
            "{attack:?}: held at {COUNT_AT:?}: conn-hygiene {held_hygiene} [{census_hygiene}], \
             raw axum {held_raw} [{census_raw}]"
        );
        // slowhttptest's probe may be connected at the moment of the count.
        if held_hygiene > 2 {
            failures.push(format!("{attack:?}: {held_hygiene} held"));
        }
        if held_raw <= held_hygiene {
            failures.push(format!("{attack:?}: raw axum held only {held_raw}"));
        }
    }
    for (.., mut a, mut b) in runs {
        let _ = a.kill().await;
        let _ = b.kill().await;
    }
    assert!(failures.is_empty(), "{failures:?}");
}
