//! Zero-loss deploys, measured with real balancers and real process restarts.
//!
//! Two `demo_server` replicas run behind HAProxy (HTTP health checks on `/healthz`
//! every 300 ms, `retries 3`, `option redispatch`) or nginx (upstream keep-alive,
//! `max_fails=0`), a client loop drives `GET /` and `GET /sleep/300` through the
//! balancer, and each replica is restarted (SIGTERM, wait for its exit, start it again
//! on the same port), twice with the deregistration phase, five times in the contrast
//! runs (without it, plain axum, and plain axum behind HAProxy with `retry-on`). The
//! client counts every request that did not get a 200; behind HAProxy, the test also
//! checks that each replica was withdrawn (DOWN in HAProxy's stats) within its
//! deregistration phase. The single-host takeover hands one listening socket from an
//! old process to a new one while the old drains, and counts refused connections; the
//! test holds the socket only to start each process. The tests named `…_measured`
//! print their numbers and assert nothing.
//!
//! Opt-in: they need HAProxy and nginx, which `.ci/run` installs, and a missing tool
//! fails the test. One runs by default: `demo_server`'s health endpoint, which needs
//! no balancer. Everything stays on loopback, on free ports, with configuration in a
//! temporary directory; every process started is killed at the end. The numbers are
//! printed:
//!
//! ```text
//! cargo test --all-features --test it -- --ignored --nocapture deploy:: 2>&1 | grep deploy:
//! ```
#![cfg(all(feature = "axum", feature = "census", target_os = "linux"))]

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conn_hygiene::census::{Filter, TcpState, sockets};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Restarts of each replica per run with the deregistration phase.
const ROUNDS: usize = 2;
/// Restarts of each replica per contrast run: they are quick, and the race they lose
/// is rare, so more of them tell more.
const CONTRAST_ROUNDS: usize = 5;
/// The deregistration delay behind HAProxy: its health checks (every 300 ms, down
/// after 2 failures) withdraw a replica in under a second; the rest is slack for a
/// machine shared with other jobs.
const DEREGISTER: Duration = Duration::from_secs(2);
/// The bound on a process starting, stopping or a balancer noticing it.
const GENEROUS: Duration = Duration::from_secs(30);

/// The balancers share the machine's two cores with the servers and the client: one
/// measurement at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------
// Tools, ports, temporary directories
// ---------------------------------------------------------------------------------

/// The path of a required tool; panics (never skips) when it is missing.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: `apt-get install {name}` (.ci/run installs it)")
        })
}

/// `demo_server`, built by cargo once per test binary, as `.ci/run` builds it.
fn demo_server() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            // The test binary lives in target/<profile>/deps/.
            let exe = std::env::current_exe().expect("current_exe");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("the test binary lives in target/<profile>/deps");
            let target_dir = profile_dir.parent().expect("target dir");
            let mut cargo = Command::new(option_env!("CARGO").unwrap_or("cargo"));
            cargo.args([
                "build",
                "--quiet",
                "--all-features",
                "--example",
                "demo_server",
            ]);
            // The profile of this test binary (`cargo test --release`: release).
            if profile_dir.ends_with("release") {
                cargo.arg("--release");
            }
            let status = cargo
                .args([
                    "--manifest-path",
                    concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
                ])
                .env("CARGO_TARGET_DIR", target_dir)
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cargo build --example demo_server failed");
            profile_dir.join("examples/demo_server")
        })
        .clone()
}

/// A free loopback port below the kernel's ephemeral range: a replica restarts on its
/// port, and meanwhile an outbound connection (the load, the balancer's upstream) must
/// not take it as its source port ("Address already in use", seen once in CI).
fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, span) = (10_000, ephemeral_low.saturating_sub(10_000).max(1));
    let random = RandomState::new();
    (0u32..10_000)
        .map(|attempt| low + (random.hash_one(attempt) % u64::from(span)) as u16)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free loopback port below the ephemeral range")
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "conn-hygiene-deploy-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `signal` (`TERM`, `INT`) to a child: `kill(1)`, as `unsafe` is not needed.
fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {}", child.id());
}

/// Waits for a child's exit, killing it after `bound`; calls `observe` with the time
/// waited so far meanwhile.
fn wait_exit(
    child: &mut Child,
    bound: Duration,
    mut observe: impl FnMut(Duration),
) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < bound {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        observe(started.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

// ---------------------------------------------------------------------------------
// The replicas: demo_server processes
// ---------------------------------------------------------------------------------

/// How a replica gets its listening socket.
enum Socket {
    /// Binds this loopback port itself.
    Port(u16),
    /// Inherits this listening socket on stdin (`--listen-stdin`).
    Inherited(OwnedFd),
    /// Inherited, and handed to the running process on this port: the test keeps no
    /// copy, so the socket lives only as long as a process holds it.
    Given(u16),
}

/// One `demo_server` process, restartable; killed when dropped.
struct Replica {
    socket: Socket,
    args: Vec<String>,
    child: Option<Child>,
    lines: Option<mpsc::Receiver<String>>,
}

impl Replica {
    fn new(socket: Socket, args: &[&str]) -> Replica {
        Replica {
            socket,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
            lines: None,
        }
    }

    /// Starts the process and waits for its `listening on` line.
    fn start(&mut self) {
        let mut command = Command::new(demo_server());
        command
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("RUST_LOG", "warn");
        match &self.socket {
            Socket::Port(port) => {
                command.args(["--listen", &format!("127.0.0.1:{port}")]);
                command.stdin(Stdio::null());
            }
            Socket::Inherited(_) => {
                let port = self.port();
                let Socket::Inherited(fd) =
                    std::mem::replace(&mut self.socket, Socket::Given(port))
                else {
                    unreachable!()
                };
                command.arg("--listen-stdin");
                command.stdin(Stdio::from(fd));
            }
            Socket::Given(_) => panic!("the socket was handed to an earlier process"),
        }
        let mut child = command.spawn().expect("spawn demo_server");
        // Closes the test's copy of an inherited socket.
        drop(command);
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = rx.recv_timeout(GENEROUS);
        assert!(
            matches!(&first, Ok(line) if line.starts_with("listening on")),
            "demo_server {:?} did not start: {first:?}",
            self.args
        );
        self.child = Some(child);
        self.lines = Some(rx);
    }

    /// SIGTERM, then waits for the exit; returns the `shutdown:` line.
    fn stop(&mut self) -> String {
        self.stop_observing(|_| {})
    }

    /// [`stop`](Self::stop), calling `observe` with the time since the signal while
    /// the process runs.
    fn stop_observing(&mut self, observe: impl FnMut(Duration)) -> String {
        let mut child = self.child.take().expect("running");
        signal(&child, "TERM");
        let status = wait_exit(&mut child, GENEROUS, observe);
        assert!(
            status.is_some_and(|s| s.success()),
            "demo_server did not exit cleanly within {GENEROUS:?}: {status:?}"
        );
        let lines = self.lines.take().expect("running");
        let shutdown = lines
            .recv_timeout(GENEROUS)
            .expect("demo_server printed its shutdown line");
        assert!(shutdown.starts_with("shutdown:"), "{shutdown}");
        shutdown
    }

    fn port(&self) -> u16 {
        match &self.socket {
            Socket::Port(port) => *port,
            Socket::Inherited(fd) => socket2::SockRef::from(fd)
                .local_addr()
                .ok()
                .and_then(|addr| addr.as_socket())
                .expect("a bound socket")
                .port(),
            Socket::Given(port) => *port,
        }
    }

    /// A copy of the listening socket the running process inherited, taken from its
    /// standard input (pidfd_getfd(2), Linux 5.6): what a supervisor would hold.
    fn listening_socket(&self) -> OwnedFd {
        use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
        let child = self.child.as_ref().expect("running");
        let pidfd = pidfd_open(Pid::from_child(child), PidfdFlags::empty()).expect("pidfd_open");
        pidfd_getfd(pidfd, 0, PidfdGetfdFlags::empty()).expect("pidfd_getfd")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Server-side sockets of `port` stuck in CLOSE_WAIT.
fn close_wait(port: u16) -> usize {
    sockets(Filter::Port(port))
        .expect("census")
        .iter()
        .filter(|s| s.local.port() == port && s.state == TcpState::CloseWait)
        .count()
}

// ---------------------------------------------------------------------------------
// The balancers
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Haproxy,
    /// HAProxy with `retry-on conn-failure empty-response response-timeout`: it
    /// resends a request lost on a connection the server closed.
    HaproxyRetryOn,
    Nginx,
}

impl Kind {
    fn is_haproxy(self) -> bool {
        matches!(self, Kind::Haproxy | Kind::HaproxyRetryOn)
    }
}

/// A running balancer in front of two replicas; killed when dropped.
struct Balancer {
    kind: Kind,
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Balancer {
    fn start(kind: Kind, replicas: [u16; 2]) -> Balancer {
        let dir = TempDir::new(if kind.is_haproxy() {
            "haproxy"
        } else {
            "nginx"
        });
        let port = free_port();
        let [a, b] = replicas;
        let d = dir.0.display();
        let child = match kind {
            Kind::Haproxy | Kind::HaproxyRetryOn => {
                let retry_on = if kind == Kind::HaproxyRetryOn {
                    "retry-on conn-failure empty-response response-timeout"
                } else {
                    ""
                };
                let config = format!(
                    "global\n\
                     \x20   maxconn 4096\n\
                     \x20   stats socket {d}/admin.sock mode 600 level admin\n\
                     defaults\n\
                     \x20   mode http\n\
                     \x20   timeout connect 2s\n\
                     \x20   timeout client 30s\n\
                     \x20   timeout server 30s\n\
                     \x20   timeout check 2s\n\
                     \x20   retries 3\n\
                     \x20   option redispatch\n\
                     \x20   {retry_on}\n\
                     frontend fe\n\
                     \x20   bind 127.0.0.1:{port}\n\
                     \x20   default_backend be\n\
                     backend be\n\
                     \x20   balance roundrobin\n\
                     \x20   option httpchk GET /healthz\n\
                     \x20   default-server inter 300ms fall 2 rise 2\n\
                     \x20   server a 127.0.0.1:{a} check\n\
                     \x20   server b 127.0.0.1:{b} check\n"
                );
                spawn_haproxy(&dir, &config)
            }
            Kind::Nginx => {
                let config = format!(
                    "daemon off;\n\
                     master_process off;\n\
                     worker_processes 1;\n\
                     pid {d}/nginx.pid;\n\
                     error_log {d}/error.log warn;\n\
                     events {{ worker_connections 4096; }}\n\
                     http {{\n\
                     \x20   access_log off;\n\
                     \x20   client_body_temp_path {d}/body;\n\
                     \x20   proxy_temp_path {d}/proxy;\n\
                     \x20   fastcgi_temp_path {d}/fastcgi;\n\
                     \x20   uwsgi_temp_path {d}/uwsgi;\n\
                     \x20   scgi_temp_path {d}/scgi;\n\
                     \x20   upstream app {{\n\
                     \x20       server 127.0.0.1:{a} max_fails=0;\n\
                     \x20       server 127.0.0.1:{b} max_fails=0;\n\
                     \x20       keepalive 32;\n\
                     \x20       keepalive_timeout 20s;\n\
                     \x20   }}\n\
                     \x20   server {{\n\
                     \x20       listen 127.0.0.1:{port};\n\
                     \x20       location / {{\n\
                     \x20           proxy_pass http://app;\n\
                     \x20           proxy_http_version 1.1;\n\
                     \x20           proxy_set_header Connection \"\";\n\
                     \x20       }}\n\
                     \x20   }}\n\
                     }}\n"
                );
                let file = dir.0.join("nginx.conf");
                std::fs::write(&file, config).expect("write nginx.conf");
                Command::new(tool("nginx"))
                    .arg("-p")
                    .arg(&dir.0)
                    .arg("-e")
                    .arg(dir.0.join("error.log"))
                    .arg("-c")
                    .arg(&file)
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("spawn nginx")
            }
        };
        let balancer = Balancer::listening(kind, child, port, dir);
        balancer.wait_up(["a", "b"]);
        balancer
    }

    /// HAProxy in `mode tcp` before one server `a` on `server`, with `send` on the
    /// server line (`send-proxy` or `send-proxy-v2`); its health checks (`GET /ip`,
    /// PROXY `UNKNOWN` or `LOCAL` headers) expect the balancer's own address.
    fn haproxy_sending_proxy(send: &str, server: u16) -> Balancer {
        let dir = TempDir::new("haproxy");
        let port = free_port();
        let d = dir.0.display();
        let config = format!(
            "global\n\
             \x20   stats socket {d}/admin.sock mode 600 level admin\n\
             defaults\n\
             \x20   mode tcp\n\
             \x20   timeout connect 2s\n\
             \x20   timeout client 30s\n\
             \x20   timeout server 30s\n\
             \x20   timeout check 2s\n\
             frontend fe\n\
             \x20   bind 127.0.0.1:{port}\n\
             \x20   default_backend be\n\
             backend be\n\
             \x20   option httpchk GET /ip\n\
             \x20   http-check expect rstring ^127\\.0\\.0\\.1:\n\
             \x20   server a 127.0.0.1:{server} {send} check check-send-proxy inter 300ms fall 2 rise 1\n"
        );
        let child = spawn_haproxy(&dir, &config);
        let balancer = Balancer::listening(Kind::Haproxy, child, port, dir);
        balancer.wait_up(["a"]);
        balancer
    }

    /// Waits until a balancer just started listens on the loopback `port`.
    fn listening(kind: Kind, child: Child, port: u16, dir: TempDir) -> Balancer {
        let mut balancer = Balancer {
            kind,
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(balancer.addr).is_err() {
            if let Some(status) = balancer.child.try_wait().expect("try_wait") {
                panic!("{kind:?} exited at start: {status}");
            }
            assert!(started.elapsed() < GENEROUS, "{kind:?} never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        balancer
    }

    /// HAProxy's stats for a server of the backend: its status (`UP`, `DOWN`, `UP 1/2`,
    /// …), retries and redispatches.
    fn haproxy_server(&self, name: &str) -> Option<(String, u64, u64)> {
        let mut stats = UnixStream::connect(self.dir.0.join("admin.sock")).ok()?;
        stats.write_all(b"show stat\n").ok()?;
        let mut csv = String::new();
        stats.read_to_string(&mut csv).ok()?;
        // # pxname,svname,…: status is field 17, wretr 15, wredis 16.
        csv.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields.len() > 17 && fields[0] == "be" && fields[1] == name).then(|| {
                (
                    fields[17].to_owned(),
                    fields[15].parse().unwrap_or(0),
                    fields[16].parse().unwrap_or(0),
                )
            })
        })
    }

    /// Waits until the balancer sends traffic to these replicas again.
    fn wait_up<const N: usize>(&self, names: [&str; N]) {
        if !self.kind.is_haproxy() {
            return;
        }
        let started = Instant::now();
        for name in names {
            loop {
                let server = self.haproxy_server(name);
                if matches!(&server, Some((status, ..)) if status == "UP") {
                    break;
                }
                assert!(
                    started.elapsed() < GENEROUS,
                    "HAProxy never saw {name} up: {server:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// HAProxy's retries and redispatches, summed over the servers.
    fn retries(&self) -> (u64, u64) {
        ["a", "b"]
            .into_iter()
            .filter_map(|name| self.haproxy_server(name))
            .fold((0, 0), |(r, d), (_, retries, redispatches)| {
                (r + retries, d + redispatches)
            })
    }
}

/// HAProxy in the foreground on `config`, written into `dir`.
fn spawn_haproxy(dir: &TempDir, config: &str) -> Child {
    let file = dir.0.join("haproxy.cfg");
    std::fs::write(&file, config).expect("write haproxy.cfg");
    Command::new(tool("haproxy"))
        .arg("-db")
        .arg("-f")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn haproxy")
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------
// The client: a bounded load loop on hyper's client
// ---------------------------------------------------------------------------------

/// What the client saw. A failure is any request that did not get a 200.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    ok: u64,
    /// Connections refused (the port had no listener).
    refused: u64,
    /// Other connect errors.
    connect_errors: u64,
    /// Requests sent that got no complete answer: a read cut, a reset, a timeout.
    cut: u64,
    /// Answers other than 200 (a balancer's 502 or 503).
    bad_status: u64,
}

impl Counts {
    fn failed(&self) -> u64 {
        self.refused + self.connect_errors + self.cut + self.bad_status
    }

    fn add(&mut self, other: Counts) {
        self.ok += other.ok;
        self.refused += other.refused;
        self.connect_errors += other.connect_errors;
        self.cut += other.cut;
        self.bad_status += other.bad_status;
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "requests={} failed={} (refused={} connect_errors={} cut={} non_200={})",
            self.ok + self.failed(),
            self.failed(),
            self.refused,
            self.connect_errors,
            self.cut,
            self.bad_status
        )
    }
}

/// One client connection at a time, `GET path` in a loop until told to stop.
/// `keep_alive: false` sends `Connection: close`, so every request is a new
/// connection: the accept queue's traffic.
async fn worker(
    addr: SocketAddr,
    path: &'static str,
    keep_alive: bool,
    stop: watch::Receiver<bool>,
) -> Counts {
    let mut counts = Counts::default();
    'connections: while !*stop.borrow() {
        let stream = match TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    counts.refused += 1;
                } else {
                    counts.connect_errors += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok((mut sender, connection)) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
        else {
            continue;
        };
        tokio::spawn(connection);
        while !*stop.borrow() {
            // Closed before the next request was sent: a client takes another connection,
            // nothing is lost.
            if sender.ready().await.is_err() {
                continue 'connections;
            }
            let mut request = http::Request::get(path).header(http::header::HOST, "localhost");
            if !keep_alive {
                request = request.header(http::header::CONNECTION, "close");
            }
            let request = request.body(Empty::new()).expect("request");
            let answer = tokio::time::timeout(Duration::from_secs(15), async {
                let response = sender.send_request(request).await?;
                let status = response.status();
                let close = response
                    .headers()
                    .get(http::header::CONNECTION)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                response.into_body().collect().await?;
                Ok::<_, hyper::Error>((status, close))
            })
            .await;
            match answer {
                Ok(Ok((status, close))) => {
                    if status == http::StatusCode::OK {
                        counts.ok += 1;
                    } else {
                        counts.bad_status += 1;
                    }
                    if close || !keep_alive {
                        continue 'connections;
                    }
                }
                Ok(Err(_)) | Err(_) => {
                    counts.cut += 1;
                    continue 'connections;
                }
            }
            // Leaves the machine's two cores some room for the servers and balancers.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    counts
}

/// A running load; [`Load::finish`] stops it and sums what every worker saw.
struct Load {
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<Counts>>,
}

impl Load {
    /// `fast` keep-alive workers on `/`, `slow` on `/sleep/300`, and `churn` workers
    /// that open a connection per request.
    fn start(addr: SocketAddr, fast: usize, slow: usize, churn: usize) -> Load {
        let (stop, stopped) = watch::channel(false);
        let mut workers = Vec::new();
        let plan = [
            ("/", true, fast),
            ("/sleep/300", true, slow),
            ("/", false, churn),
        ];
        for (path, keep_alive, n) in plan {
            for _ in 0..n {
                workers.push(tokio::spawn(worker(
                    addr,
                    path,
                    keep_alive,
                    stopped.clone(),
                )));
            }
        }
        Load { stop, workers }
    }

    async fn finish(self) -> Counts {
        self.stop.send_replace(true);
        let mut counts = Counts::default();
        for worker in self.workers {
            counts.add(worker.await.expect("load worker"));
        }
        counts
    }
}

// ---------------------------------------------------------------------------------
// The measurements
// ---------------------------------------------------------------------------------

/// How the replicas run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `conn_hygiene::serve` with this deregistration delay (zero: none).
    Hygiene(Duration),
    /// `--axum-serve`: `axum::serve` with the layer, shut down through
    /// `BoundedShutdown` with this deregistration delay.
    AxumServe(Duration),
    /// `--raw`: plain `axum::serve`.
    Raw,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Hygiene(delay) if delay.is_zero() => f.write_str("no deregistration"),
            Mode::Hygiene(delay) => write!(f, "deregister {delay:?}"),
            Mode::AxumServe(delay) => {
                write!(f, "axum::serve + BoundedShutdown, deregister {delay:?}")
            }
            Mode::Raw => f.write_str("raw axum::serve"),
        }
    }
}

struct Outcome {
    counts: Counts,
    close_wait: usize,
    /// For each restart behind HAProxy: how long after SIGTERM its stats first showed
    /// the replica DOWN while the process still ran (`None`: not before it exited).
    withdrawn: Vec<Option<Duration>>,
}

/// Two replicas behind `kind`, restarted one after the other `rounds` times under load.
async fn rolling_restarts(kind: Kind, mode: Mode, rounds: usize) -> Outcome {
    let _serial = SERIAL.lock().await;
    let args: Vec<String> = match mode {
        Mode::Hygiene(delay) => vec![
            "--deregister-delay".into(),
            humantime::format_duration(delay).to_string(),
        ],
        Mode::AxumServe(delay) => vec![
            "--axum-serve".into(),
            "--deregister-delay".into(),
            humantime::format_duration(delay).to_string(),
        ],
        Mode::Raw => vec!["--raw".into()],
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut replicas = [
        Replica::new(Socket::Port(free_port()), &args),
        Replica::new(Socket::Port(free_port()), &args),
    ];
    for replica in &mut replicas {
        replica.start();
    }
    let balancer = Balancer::start(kind, [replicas[0].port(), replicas[1].port()]);
    let load = Load::start(balancer.addr, 6, 2, 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let mut withdrawn = Vec::new();
    for _ in 0..rounds {
        for (replica, name) in replicas.iter_mut().zip(["a", "b"]) {
            let mut down = None;
            let shutdown = replica.stop_observing(|since_signal| {
                if down.is_none()
                    && kind.is_haproxy()
                    && balancer
                        .haproxy_server(name)
                        .is_some_and(|(status, ..)| status.starts_with("DOWN"))
                {
                    down = Some(since_signal);
                }
            });
            let mut seen = String::new();
            if kind.is_haproxy() {
                withdrawn.push(down);
                seen = format!(" (DOWN in HAProxy after {down:?})");
            }
            eprintln!("deploy: {kind:?} {mode}: replica {name}{seen} {shutdown}");
            replica.start();
            balancer.wait_up([name]);
        }
    }
    // Traffic on the restarted replicas for a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = load.finish().await;
    let close_wait = replicas.iter().map(|r| close_wait(r.port())).sum();
    let retries = match kind {
        Kind::Haproxy | Kind::HaproxyRetryOn => {
            let (retries, redispatches) = balancer.retries();
            format!(" haproxy_retries={retries} redispatches={redispatches}")
        }
        Kind::Nginx => String::new(),
    };
    eprintln!(
        "deploy: {kind:?} {mode}: {} restarts in {:.1?}: {counts} close_wait={close_wait}{retries}",
        rounds * 2,
        started.elapsed(),
    );
    Outcome {
        counts,
        close_wait,
        withdrawn,
    }
}

/// The contrast runs: no deregistration phase, and plain axum. Printed, not asserted:
/// the race they lose is timing-dependent.
async fn contrast(kind: Kind) {
    let mut runs = vec![(kind, Mode::Hygiene(Duration::ZERO)), (kind, Mode::Raw)];
    if kind == Kind::Haproxy {
        // The balancer setting that removes the race, even for plain axum.
        runs.push((Kind::HaproxyRetryOn, Mode::Raw));
    }
    for (kind, mode) in runs {
        let outcome = rolling_restarts(kind, mode, CONTRAST_ROUNDS).await;
        eprintln!(
            "deploy: {kind:?} {mode}: {} client-visible failures",
            outcome.counts.failed()
        );
    }
}

fn assert_lossless(kind: Kind, outcome: &Outcome) {
    assert!(
        outcome.counts.ok > 1000,
        "too little load to tell: {}",
        outcome.counts
    );
    assert_eq!(
        outcome.counts.failed(),
        0,
        "{kind:?}: client-visible failures during the rolling restart: {}",
        outcome.counts
    );
    assert_eq!(
        outcome.close_wait, 0,
        "{kind:?}: CLOSE_WAIT on the replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs haproxy and nginx; .ci/run installs them"]
async fn haproxy_rolling_restart_with_deregistration_loses_nothing() {
    let outcome = rolling_restarts(Kind::Haproxy, Mode::Hygiene(DEREGISTER), ROUNDS).await;
    assert_lossless(Kind::Haproxy, &outcome);
    // The phase did its work: HAProxy withdrew each replica while it still served,
    // before its listener closed.
    assert_eq!(outcome.withdrawn.len(), ROUNDS * 2);
    for down in &outcome.withdrawn {
        assert!(
            down.is_some_and(|after| after < DEREGISTER),
            "HAProxy did not see a replica DOWN within its deregistration phase: {:?}",
            outcome.withdrawn
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs haproxy and nginx; .ci/run installs them"]
async fn nginx_rolling_restart_with_deregistration_loses_nothing() {
    let outcome = rolling_restarts(Kind::Nginx, Mode::Hygiene(DEREGISTER), ROUNDS).await;
    assert_lossless(Kind::Nginx, &outcome);
}

/// The same phases under `axum::serve` with the layer, through `BoundedShutdown`
/// (`demo_server --axum-serve`): behind HAProxy and nginx, a rolling restart loses
/// nothing either, and HAProxy withdraws each replica within its phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs haproxy and nginx; .ci/run installs them"]
async fn axum_serve_rolling_restart_with_deregistration_loses_nothing() {
    let outcome = rolling_restarts(Kind::Haproxy, Mode::AxumServe(DEREGISTER), ROUNDS).await;
    assert_lossless(Kind::Haproxy, &outcome);
    assert!(
        outcome
            .withdrawn
            .iter()
            .all(|down| down.is_some_and(|after| after < DEREGISTER)),
        "HAProxy did not see a replica DOWN within its deregistration phase: {:?}",
        outcome.withdrawn
    );
    let outcome = rolling_restarts(Kind::Nginx, Mode::AxumServe(DEREGISTER), ROUNDS).await;
    assert_lossless(Kind::Nginx, &outcome);
}

/// A measurement, printed and not asserted (see [`contrast`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs haproxy and nginx; .ci/run installs them"]
async fn haproxy_rolling_restart_without_deregistration_and_raw_measured() {
    contrast(Kind::Haproxy).await;
}

/// A measurement, printed and not asserted (see [`contrast`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs haproxy and nginx; .ci/run installs them"]
async fn nginx_rolling_restart_without_deregistration_and_raw_measured() {
    contrast(Kind::Nginx).await;
}

// ---------------------------------------------------------------------------------
// demo_server's health endpoint
// ---------------------------------------------------------------------------------

/// The status of `GET path` on a new connection to the loopback `port`, or `None`
/// if there is no complete answer.
fn status(port: u16, path: &str) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(GENEROUS)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split(' ').nth(1)?.parse().ok()
}

/// `GET /healthz` answers 200, then 503 from SIGTERM on while `--deregister-delay`
/// runs, and the server still serves meanwhile. Needs no balancer.
#[test]
fn demo_server_healthz_answers_503_while_deregistering() {
    let _serial = SERIAL.blocking_lock();
    let port = free_port();
    let delay = humantime::format_duration(DEREGISTER).to_string();
    let mut replica = Replica::new(Socket::Port(port), &["--deregister-delay", &delay]);
    replica.start();
    assert_eq!(status(port, "/healthz"), Some(200));
    // When the health check first failed (since SIGTERM), its answer, then `GET /`'s.
    let mut unready = None;
    let shutdown = replica.stop_observing(|since_signal| {
        if unready.is_none() {
            let health = status(port, "/healthz");
            if health != Some(200) {
                unready = Some((since_signal, health, status(port, "/")));
            }
        }
    });
    let (after, health, root) = unready.expect("the health check never failed");
    assert_eq!(health, Some(503), "GET /healthz {after:?} after SIGTERM");
    assert_eq!(root, Some(200), "GET / after the health check failed");
    assert!(after < DEREGISTER, "unready only {after:?} after SIGTERM");
    assert!(shutdown.contains("deregistered in"), "{shutdown}");
}

// ---------------------------------------------------------------------------------
// One host: a new process takes over the port while the old one drains
// ---------------------------------------------------------------------------------

/// Old and new processes take turns on one port, under load that includes a new
/// connection per request; `make` gets the process running, if any. Returns what the
/// client saw, after the last process has stopped.
async fn takeover(
    mut make: impl FnMut(Option<&Replica>) -> Replica,
    port: u16,
    label: &str,
) -> Counts {
    let _serial = SERIAL.lock().await;
    let mut old = make(None);
    old.start();
    let load = Load::start(SocketAddr::from(([127, 0, 0, 1], port)), 4, 1, 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..4 {
        let mut new = make(Some(&old));
        new.start();
        let shutdown = old.stop();
        eprintln!("deploy: takeover ({label}): old process {shutdown}");
        old = new;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = load.finish().await;
    eprintln!(
        "deploy: takeover ({label}), 4 handovers: {counts} close_wait={}",
        close_wait(port)
    );
    old.stop();
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs haproxy and nginx; .ci/run installs them"]
async fn takeover_with_an_inherited_socket_refuses_nothing() {
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener.set_reuse_address(true).unwrap();
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    listener.listen(1024).unwrap();
    let port = listener.local_addr().unwrap().as_socket().unwrap().port();
    // The test plays the supervisor, but holds the socket only to start the next
    // process: the first from its bind, the others with a copy taken from the running
    // one. Between, the processes alone keep the port open, so one letting go of the
    // socket too early would show as refused connections.
    let mut first = Some(OwnedFd::from(listener));
    let make = |running: Option<&Replica>| {
        let fd = match running {
            None => first.take().expect("one first process"),
            Some(running) => running.listening_socket(),
        };
        Replica::new(Socket::Inherited(fd), &["--deregister-delay", "500ms"])
    };
    let counts = takeover(make, port, "inherited socket").await;
    assert!(counts.ok > 500, "too little load to tell: {counts}");
    assert_eq!(counts.refused, 0, "refused connections: {counts}");
    assert_eq!(counts.failed(), 0, "client-visible failures: {counts}");
    assert_eq!(close_wait(port), 0);
    // The count could see a gap: with the last process gone, nothing holds the socket.
    let refused = std::net::TcpStream::connect(("127.0.0.1", port))
        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
    assert!(
        refused,
        "the port still accepts with no process holding its socket"
    );
}

/// A measurement, printed and not asserted: the design not taken, `SO_REUSEPORT`,
/// where closing the old process's socket resets what waits in its accept queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs haproxy and nginx; .ci/run installs them"]
async fn takeover_with_reuseport_measured() {
    let port = free_port();
    let make = |_: Option<&Replica>| {
        Replica::new(
            Socket::Port(port),
            &["--reuse-port", "--deregister-delay", "500ms"],
        )
    };
    let counts = takeover(make, port, "SO_REUSEPORT").await;
    eprintln!(
        "deploy: takeover (SO_REUSEPORT): {} client-visible failures",
        counts.failed()
    );
}

// ---------------------------------------------------------------------------------
// Behind HAProxy's PROXY protocol: the real client everywhere
// ---------------------------------------------------------------------------------

/// A connection from the loopback address `source` to `to`.
fn connect_from(source: &str, to: SocketAddr) -> std::net::TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    let source: SocketAddr = format!("{source}:0").parse().expect("an address");
    socket
        .bind(&source.into())
        .expect("bind the source address");
    socket.connect(&to.into()).expect("connect");
    let stream = std::net::TcpStream::from(socket);
    stream.set_read_timeout(Some(GENEROUS)).expect("a timeout");
    stream
}

/// Sends `GET path` on a keep-alive connection and reads one answer (sized by
/// `content-length`): its status and body.
fn get(stream: &mut std::net::TcpStream, path: &str) -> (u16, String) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read the answer's head");
        assert_eq!(n, 1, "closed inside the head: {answer:?}");
        answer.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("read the body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// What a connection saw at its end: `Ok` with the bytes before EOF, or the error
/// (a reset), and how long after `started` it came.
fn read_to_close(
    stream: &mut std::net::TcpStream,
    started: Instant,
) -> (Result<usize, std::io::ErrorKind>, Duration) {
    let mut sink = Vec::new();
    let read = stream.read_to_end(&mut sink).map_err(|e| e.kind());
    (read, started.elapsed())
}

/// Whether the kernel has a socket of the server on `port` whose peer is `client`.
fn server_holds(port: u16, client: SocketAddr) -> bool {
    sockets(Filter::Port(port))
        .expect("census")
        .iter()
        .any(|s| s.local.port() == port && s.remote == client)
}

/// demo_server with `--proxy-protocol` behind HAProxy sending `send`: the health
/// checks' headers (v1 `UNKNOWN`, v2 `LOCAL`) are served with the balancer as the
/// client, `GET /ip` answers each real client (127.0.0.5, 127.0.0.6), the per-client
/// cap (2) counts real clients, and a connection that bypasses the balancer is reset:
/// at once when it sends a request or a malformed header, at the header deadline when
/// silent.
fn proxy_protocol_behind_haproxy(send: &str) {
    let _serial = SERIAL.blocking_lock();
    let port = free_port();
    let mut replica = Replica::new(
        Socket::Port(port),
        &[
            "--proxy-protocol",
            "--proxy-header-timeout",
            "1s",
            "--max-connections-per-ip",
            "2",
        ],
    );
    replica.start();
    // Up only when its health checks, with their own headers, were answered 200 with
    // HAProxy's address.
    let started = Instant::now();
    let haproxy = Balancer::haproxy_sending_proxy(send, port);
    println!(
        "deploy: proxy {send}: HAProxy up in {:?}",
        started.elapsed()
    );
    let server = SocketAddr::from(([127, 0, 0, 1], port));

    let mut five = [
        connect_from("127.0.0.5", haproxy.addr),
        connect_from("127.0.0.5", haproxy.addr),
    ];
    for stream in &mut five {
        let (status, body) = get(stream, "/ip");
        let me = stream.local_addr().expect("local address");
        assert_eq!(
            (status, body.as_str()),
            (200, me.to_string().as_str()),
            "{send}: /ip"
        );
    }
    // 127.0.0.5 holds its two slots: its third connection is refused, 127.0.0.6 is not.
    let mut third = connect_from("127.0.0.5", haproxy.addr);
    let (status, _) = get(&mut third, "/ip");
    assert_eq!(status, 503, "{send}: 127.0.0.5's third connection");
    let mut six = connect_from("127.0.0.6", haproxy.addr);
    let (status, body) = get(&mut six, "/ip");
    let me = six.local_addr().expect("local address");
    assert_eq!((status, body), (200, me.to_string()), "{send}: 127.0.0.6");

    for (what, opening) in [
        (
            "a request without a header",
            &b"GET /ip HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        ),
        (
            "a malformed header",
            b"PROXY TCP4 127.0.0.7 127.0.0.1 1\r\n",
        ),
    ] {
        let mut direct = connect_from("127.0.0.7", server);
        let client = direct.local_addr().expect("local address");
        let started = Instant::now();
        direct.write_all(opening).expect("send");
        let (read, took) = read_to_close(&mut direct, started);
        println!("deploy: proxy {send}: {what} closed after {took:?}: {read:?}");
        assert_eq!(
            read,
            Err(std::io::ErrorKind::ConnectionReset),
            "{send}: {what}"
        );
        assert!(
            took < Duration::from_millis(900),
            "{send}: {what}: {took:?}, not at once"
        );
        assert!(
            !server_holds(port, client),
            "{send}: {what}: the server's socket is gone"
        );
    }
    let mut silent = connect_from("127.0.0.7", server);
    let client = silent.local_addr().expect("local address");
    let (read, took) = read_to_close(&mut silent, Instant::now());
    println!(
        "deploy: proxy {send}: a silent connection closed after {took:?} (deadline 1s): {read:?}"
    );
    assert_eq!(
        read,
        Err(std::io::ErrorKind::ConnectionReset),
        "{send}: silent"
    );
    assert!(
        took >= Duration::from_millis(900),
        "{send}: silent closed before the deadline: {took:?}"
    );
    assert!(
        !server_holds(port, client),
        "{send}: silent: the server's socket is gone"
    );
    let (status, _) = haproxy
        .haproxy_server("a")
        .map(|(status, ..)| (status, ()))
        .expect("HAProxy's stats");
    assert_eq!(status, "UP", "{send}: the health checks still pass");
    drop((five, third, six, haproxy));
    let started = Instant::now();
    let shutdown = replica.stop();
    println!("deploy: proxy {send}: stopped in {:?}", started.elapsed());
    assert!(shutdown.starts_with("shutdown:"), "{shutdown}");
}

#[test]
#[ignore = "needs haproxy and nginx; .ci/run installs them"]
fn proxy_protocol_v1_behind_haproxy_sees_the_real_client() {
    proxy_protocol_behind_haproxy("send-proxy");
}

#[test]
#[ignore = "needs haproxy and nginx; .ci/run installs them"]
fn proxy_protocol_v2_behind_haproxy_sees_the_real_client() {
    proxy_protocol_behind_haproxy("send-proxy-v2");
}
