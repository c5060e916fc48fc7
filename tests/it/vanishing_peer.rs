//! The vanishing peer: a client that goes silent mid-connection, with no FIN and no RST
//! (a pulled cable, a crashed host, a firewall that starts dropping), as a server built
//! on [`conn_hygiene::Listener`] sees it.
//!
//! The peer host is a network namespace joined to this one by a veth pair, and the
//! client is a `python3` process inside it. Once the client has its answer, nftables in
//! the namespace drops every packet in and out: the process stays alive, and the
//! server's kernel never hears from it again. Three listeners on the root side of the
//! veth pair, three clients, one drop, all at the same moment:
//!
//! - keepalive (idle 1 s, then 2 probes 1 s apart) and `TCP_USER_TIMEOUT` 3 s, on an
//!   idle connection: the kernel gives up (`ETIMEDOUT`) within their ~3 s bound, the
//!   socket leaves the kernel's table, and [`Conn::peer_closed`] says
//!   [`PeerGone::Reset`];
//! - `TCP_USER_TIMEOUT` 3 s alone, with data sent after the drop: the retransmissions
//!   stop at the user timeout, with the same outcome;
//! - no options, on an idle connection: the socket is still ESTABLISHED 8 s later (and,
//!   keepalive being off, would stay so forever).
//!
//! And with no options, a peer that vanishes while a response is being written: the
//! write clocks find it. The kernel's retransmissions are forgiven as the network's
//! time, up to the write-stall timeout again, and no longer.
//!
//! Needs root, iproute2 (`ip`), nftables (`nft`) and `python3`, so the tests are
//! opt-in: `.ci/run` installs the tools and runs them as root with
//! `cargo test --all-features --test it -- --ignored vanishing_peer::`. Where the namespace
//! cannot be made a test fails and says what is missing: it never passes silently.
#![cfg(all(target_os = "linux", feature = "testing"))]

use std::io::{self, BufRead as _};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conn_hygiene::census::{Census, TcpState};
use conn_hygiene::testing::{Side, port_census, wait_for_census};
use conn_hygiene::{
    Conn, Listener, Policy, SocketOptions, conn::Abandon, conn::PeerGone, supervise::Abandoned,
};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::support::netns;
use netns::PeerHost;

const NEEDS: &str = "the vanishing-peer test needs root, iproute2 (`ip`), nftables (`nft`) \
     and python3 to build a network namespace: run .ci/run, or \
     `apt-get install -y iproute2 nftables python3` and run the tests as root";

/// Keepalive: 1 s idle, then probes 1 s apart, 2 unanswered ones close.
const KEEPALIVE_TIME: Duration = Duration::from_secs(1);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_RETRIES: u32 = 2;
const USER_TIMEOUT: Duration = Duration::from_secs(3);
/// The configured bound (keepalive 1 + 2 × 1 s; user timeout 3 s) with generous slack
/// for a loaded CI machine.
const RELEASE_WITHIN: Duration = Duration::from_secs(10);
/// Nothing can notice a silent peer sooner than this after the drop: with keepalive,
/// the peer's last packet (a probe's answer) is at most one interval older than the
/// drop and the kernel waits for 3 s of silence; with data in flight, the user timeout
/// counts 3 s from the first unacknowledged send, after the drop.
const RELEASE_NOT_BEFORE: Duration = Duration::from_secs(1);
/// How long the connection without options must stay ESTABLISHED after the drop.
const LINGERS_FOR: Duration = Duration::from_secs(8);
const STEP: Duration = Duration::from_secs(5);

/// The client, run in the peer namespace: one request line, one reply line, then silence
/// (bounded: it exits on its own after `argv[3]` seconds, and is killed at cleanup).
const CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"hello\n")
reply = s.makefile("rb").readline()
print("got", reply.decode().strip(), flush=True)
time.sleep(float(sys.argv[3]))
"#;
const CLIENT_LIFETIME_SECS: &str = "60";

/// The peer host, with python3 checked: it runs the client.
fn peer_host() -> PeerHost {
    if let Err(e) = netns::run(Command::new("python3").arg("--version")) {
        panic!("{NEEDS}.\n{e}");
    }
    PeerHost::create(NEEDS)
}

/// Starts a client in the namespace against `port`; resolves with its first line of
/// output once it has the server's reply.
fn spawn_client(host: &mut PeerHost, port: u16) -> oneshot::Receiver<String> {
    let server_ip = host.server_ip.to_string();
    let port = port.to_string();
    let mut child = host
        .command("python3")
        .args(["-c", CLIENT])
        .args([&server_ip, &port, CLIENT_LIFETIME_SECS])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{NEEDS}.\nspawning the client: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    host.children.push(child);
    let (tx, rx) = oneshot::channel();
    // Ends at the client's first line or its exit (at the latest, at cleanup).
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx
}

/// From now on every packet into or out of the namespace is dropped: the peer process
/// lives on, silent, with no FIN and no RST.
fn silence(host: &PeerHost) {
    for command in [
        "add chain inet chv input { type filter hook input priority -500; policy drop; }",
        "add chain inet chv output { type filter hook output priority -500; policy drop; }",
    ] {
        if let Err(e) = host.nft(command) {
            panic!("{NEEDS}.\n{e}");
        }
    }
}

/// Connections on the server's port other than the listener.
fn connections(census: &Census) -> usize {
    census.total() - census.get(TcpState::Listen)
}

type Outcome = Result<io::Result<PeerGone>, Abandoned>;

/// What the server's task does once it has answered the request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Waits on `conn.peer_closed()`, without reading.
    WaitForPeer,
    /// Writes a line once told the peer is silent, then waits on `conn.peer_closed()`.
    WriteAfterDrop,
    /// Reads the next request line, as a line server does, and reports what
    /// `conn.peer_gone()` says once the read fails.
    Read,
}

/// One listener and its one connection, held by a supervised task that answers the
/// request line and then does what [`Then`] says.
#[derive(Debug)]
struct Case {
    name: &'static str,
    port: u16,
    conn: Conn,
    task: JoinHandle<Outcome>,
    write_after_drop: Option<oneshot::Sender<()>>,
    _listener: Listener,
}

impl Case {
    async fn connect(
        host: &mut PeerHost,
        name: &'static str,
        options: SocketOptions,
        then: Then,
    ) -> Case {
        // No clock of the crate may end the connection: only the kernel can.
        let policy = Policy::builder()
            .idle_timeout(None)
            .build()
            .expect("valid policy");
        let mut listener = Listener::bind(SocketAddr::from((host.server_ip, 0)), options, policy)
            .expect("bind the root end of the veth pair");
        let port = listener.local_addr().expect("local_addr").port();
        let got = spawn_client(host, port);
        let (stream, peer) = timeout(STEP, listener.accept())
            .await
            .unwrap_or_else(|_| panic!("{name}: the client in the namespace did not connect"))
            .expect("accept");
        assert_eq!(
            peer.ip(),
            host.peer_ip,
            "{name}: connection from the namespace"
        );
        let conn = stream.conn().clone();
        let (poke, poked) = oneshot::channel::<()>();
        let watcher = conn.clone();
        let task = tokio::spawn(conn.supervise(async move {
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            stream.read_line(&mut line).await?;
            if line != "hello\n" {
                return Err(io::Error::other(format!("unexpected request {line:?}")));
            }
            stream.write_all(b"hi\n").await?;
            match then {
                Then::WaitForPeer => {}
                Then::WriteAfterDrop => {
                    if poked.await.is_ok() {
                        // Lands in the send buffer; the kernel retransmits it into the void.
                        stream.write_all(b"are you there?\n").await?;
                    }
                }
                Then::Read => {
                    line.clear();
                    return match stream.read_line(&mut line).await {
                        Ok(n) => Err(io::Error::other(format!(
                            "read {n} bytes from a silent peer"
                        ))),
                        Err(e) if e.raw_os_error() == Some(libc::ETIMEDOUT) => {
                            Ok(watcher.peer_gone().unwrap_or(PeerGone::LocalClose))
                        }
                        Err(e) => Err(e),
                    };
                }
            }
            Ok(watcher.peer_closed().await)
        }));
        let reply = timeout(STEP, got)
            .await
            .unwrap_or_else(|_| panic!("{name}: the client got no reply"))
            .unwrap_or_default();
        assert_eq!(reply.trim(), "got hi", "{name}: the client's output");
        Case {
            name,
            port,
            conn,
            task,
            write_after_drop: (then == Then::WriteAfterDrop).then_some(poke),
            _listener: listener,
        }
    }

    fn census(&self) -> Census {
        port_census(self.port, Side::Local).expect("read the kernel's TCP tables")
    }

    /// Waits until the kernel has released the server's socket; returns the time since
    /// the drop. Then checks what the crate reported.
    async fn released(&mut self, dropped: Instant) -> Duration {
        let name = self.name;
        let gone = wait_for_census(self.port, Side::Local, RELEASE_WITHIN, |c| {
            connections(c) == 0
        })
        .await;
        let elapsed = dropped.elapsed();
        if let Err(census) = gone {
            panic!(
                "{name}: the server's socket on port {} is still in the kernel's table \
                 {RELEASE_WITHIN:?} after the peer went silent:\n{census}",
                self.port
            );
        }
        assert!(
            elapsed >= RELEASE_NOT_BEFORE,
            "{name}: released {elapsed:?} after the drop, sooner than any keepalive or \
             user timeout could notice: something else closed it"
        );
        let outcome = timeout(STEP, &mut self.task)
            .await
            .unwrap_or_else(|_| panic!("{name}: the supervised task outlived its socket"))
            .expect("the supervised task did not panic");
        match outcome {
            Ok(Ok(PeerGone::Reset)) => {}
            Err(abandoned) if abandoned.reason() == Abandon::PeerReset => {}
            other => panic!("{name}: expected the peer reported as reset, got {other:?}"),
        }
        let gone = timeout(STEP, self.conn.peer_closed())
            .await
            .unwrap_or_else(|_| panic!("{name}: peer_closed() never resolved"));
        assert_eq!(gone, PeerGone::Reset, "{name}: conn.peer_closed()");
        assert!(self.conn.is_closed(), "{name}: the stream was dropped");
        elapsed
    }

    /// Checks, every 250 ms until `LINGERS_FOR` after the drop, that the connection is
    /// still ESTABLISHED and that nothing has noticed the silent peer; returns the time
    /// since the drop.
    async fn lingers(&self, dropped: Instant) -> Duration {
        let until = dropped + LINGERS_FOR;
        let name = self.name;
        for _ in 0..1000 {
            let census = self.census();
            assert_eq!(
                census.get(TcpState::Established),
                1,
                "{name}: without keepalive or user timeout the silent connection should \
                 stay ESTABLISHED; census of port {}:\n{census}",
                self.port
            );
            assert_eq!(self.conn.peer_gone(), None, "{name}: peer_gone()");
            assert!(!self.task.is_finished(), "{name}: the task ended");
            let now = Instant::now();
            if now >= until {
                break;
            }
            tokio::time::sleep((until - now).min(Duration::from_millis(250))).await;
        }
        dropped.elapsed()
    }
}

/// Abandons (zero linger, so the close is an RST and leaves no FIN_WAIT behind) every
/// connection still open, if the test ends early.
struct AbandonOnDrop(Vec<Conn>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        for conn in self.0.iter().filter(|c| !c.is_closed()) {
            conn.abandon(Abandon::DrainDeadline);
        }
    }
}

fn keepalive_and_user_timeout() -> SocketOptions {
    SocketOptions::new()
        .keepalive_time(KEEPALIVE_TIME)
        .keepalive_interval(KEEPALIVE_INTERVAL)
        .keepalive_retries(KEEPALIVE_RETRIES)
        .tcp_user_timeout(USER_TIMEOUT)
}

#[tokio::test]
#[ignore = "needs root, ip, nft and python3; .ci/run installs them and runs it"]
async fn silent_peer_is_released_by_keepalive_and_user_timeout_and_lingers_without() {
    let mut host = peer_host();

    let mut idle = Case::connect(
        &mut host,
        "keepalive + TCP_USER_TIMEOUT, idle",
        keepalive_and_user_timeout(),
        Then::WaitForPeer,
    )
    .await;
    let mut sending = Case::connect(
        &mut host,
        "TCP_USER_TIMEOUT alone, data in flight",
        SocketOptions::new().tcp_user_timeout(USER_TIMEOUT),
        Then::WriteAfterDrop,
    )
    .await;
    let mut plain = Case::connect(
        &mut host,
        "no options, idle",
        SocketOptions::new(),
        Then::WaitForPeer,
    )
    .await;
    let _guard = AbandonOnDrop(vec![
        idle.conn.clone(),
        sending.conn.clone(),
        plain.conn.clone(),
    ]);

    // Let the client's ACKs of the replies arrive, then check the starting point.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for case in [&idle, &sending, &plain] {
        let census = case.census();
        assert_eq!(
            census.get(TcpState::Established),
            1,
            "{}: before the drop, census of port {}:\n{census}",
            case.name,
            case.port
        );
    }

    silence(&host);
    let dropped = Instant::now();
    if let Some(poke) = sending.write_after_drop.take() {
        poke.send(()).expect("the sending task waits for its cue");
    }

    let (idle_release, sending_release, plain_lingered) = tokio::join!(
        idle.released(dropped),
        sending.released(dropped),
        plain.lingers(dropped),
    );
    println!(
        "vanishing peer: {}: released {idle_release:.2?} after the drop \
         (bound: keepalive {KEEPALIVE_TIME:?} + {KEEPALIVE_RETRIES} x {KEEPALIVE_INTERVAL:?}, \
         user timeout {USER_TIMEOUT:?})",
        idle.name
    );
    println!(
        "vanishing peer: {}: released {sending_release:.2?} after the drop \
         (bound: user timeout {USER_TIMEOUT:?})",
        sending.name
    );
    println!(
        "vanishing peer: {}: still ESTABLISHED {plain_lingered:.2?} after the drop",
        plain.name
    );

    // Release the lingering one ourselves: abandoned, it closes with an RST at once.
    plain.conn.abandon(Abandon::DrainDeadline);
    let outcome = timeout(STEP, &mut plain.task)
        .await
        .expect("the abandoned task ends")
        .expect("the supervised task did not panic");
    assert_eq!(
        outcome.err().map(|a| a.reason()),
        Some(Abandon::DrainDeadline),
        "{}: supervise ends the task when the connection is abandoned",
        plain.name
    );
    if let Err(census) =
        wait_for_census(plain.port, Side::Local, STEP, |c| connections(c) == 0).await
    {
        panic!(
            "{}: still in the kernel's table after abandon:\n{census}",
            plain.name
        );
    }
}

/// A line server that is reading when the kernel gives up on the silent peer: its read
/// fails with `ETIMEDOUT`, and the connection should then say the peer is gone
/// ([`PeerGone::Reset`]: "or the kernel gave up on it (keepalive or `TCP_USER_TIMEOUT`
/// expiry)"), not that we closed it.
#[tokio::test]
#[ignore = "needs root, ip, nft and python3; .ci/run installs them and runs it"]
async fn reading_task_learns_the_silent_peer_is_gone() {
    let mut host = peer_host();
    let mut reading = Case::connect(
        &mut host,
        "keepalive + TCP_USER_TIMEOUT, reading",
        keepalive_and_user_timeout(),
        Then::Read,
    )
    .await;
    let _guard = AbandonOnDrop(vec![reading.conn.clone()]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    silence(&host);
    let released = reading.released(Instant::now()).await;
    println!(
        "vanishing peer: {}: released {released:.2?} after the drop",
        reading.name
    );
}

/// A peer that vanishes while a response is being written, on a connection without
/// keepalive or `TCP_USER_TIMEOUT`: the write clocks find it. Its kernel retransmits
/// into the void, which the clocks forgive as the network's time, but only up to the
/// write-stall timeout again: the write is cut between one and two stall timeouts
/// after it blocked (under the default policy, within 2 min).
#[tokio::test]
#[ignore = "needs root, ip, nft and python3; .ci/run installs them and runs it"]
async fn peer_vanishing_mid_response_is_cut_within_the_write_clocks_bound() {
    const STALL: Duration = Duration::from_secs(2);
    let mut host = peer_host();
    let policy = Policy::builder()
        .idle_timeout(None)
        .min_send_rate(None)
        .write_stall_timeout(Some(STALL))
        .build()
        .expect("valid policy");
    let address = SocketAddr::from((host.server_ip, 0));
    let mut listener = Listener::bind(address, SocketOptions::new(), policy).expect("bind");
    let port = listener.local_addr().expect("local_addr").port();
    let got = spawn_client(&mut host, port);
    let (stream, _) = timeout(STEP, listener.accept())
        .await
        .expect("the client in the namespace connects")
        .expect("accept");
    let conn = stream.conn().clone();
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await.expect("the request line");
    stream.write_all(b"hi\n").await.expect("the reply");
    let reply = timeout(STEP, got).await.expect("the client's output");
    assert_eq!(reply.unwrap_or_default().trim(), "got hi");

    silence(&host);
    let silenced = Instant::now();
    // More than the peer's window and our send buffer hold: the write blocks.
    let written = timeout(10 * STALL, stream.write_all(&vec![b'x'; 16 << 20]))
        .await
        .expect("a write clock ends the write to the vanished peer");
    let elapsed = silenced.elapsed();
    println!("vanished mid-response: cut {elapsed:?} after the peer went silent");
    let error = written.expect_err("the peer read nothing");
    assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    assert_eq!(conn.abandoned(), Some(Abandon::WriteStallTimeout));
    assert!(
        elapsed >= STALL + Duration::from_secs(1),
        "cut after {elapsed:?}: the kernel's retransmissions were not forgiven"
    );
    assert!(
        elapsed <= 2 * STALL + STEP,
        "cut after {elapsed:?}: beyond the bound"
    );
}
