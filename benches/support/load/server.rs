//! The server under test: `demo_server`, with or without `--raw`, in its own process,
//! optionally under callgrind or strace, and what `/proc` says about it.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use procfs::process::{LimitValue, Process};

/// Raw axum (`demo_server --raw`), the same app through `conn_hygiene::serve`, or
/// through what a careful user writes instead (`demo_server --hand-hardened`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    Raw,
    Hygiene,
    HandHardened,
}

impl Variant {
    /// Raw and hygiene, at indices 0 and 1 (the sections without the peer).
    pub(crate) const BOTH: [Variant; 2] = [Variant::Raw, Variant::Hygiene];
    /// The three servers: raw, hygiene and hand-hardened at indices 0, 1 and 2.
    pub(crate) const ALL: [Variant; 3] = [Variant::Raw, Variant::Hygiene, Variant::HandHardened];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Variant::Raw => "raw",
            Variant::Hygiene => "hygiene",
            Variant::HandHardened => "hand-hardened",
        }
    }

    /// `demo_server`'s flag for this variant, if any.
    fn flag(self) -> Option<&'static str> {
        match self {
            Variant::Raw => Some("--raw"),
            Variant::Hygiene => None,
            Variant::HandHardened => Some("--hand-hardened"),
        }
    }
}

/// What the server process runs under.
#[derive(Debug, Clone)]
pub(crate) enum Wrap {
    None,
    /// `valgrind --tool=callgrind`, writing its profile to the path.
    Callgrind(PathBuf),
    /// `strace -f -c`, writing its summary to the path.
    Strace(PathBuf),
}

/// How to start one server.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) variant: Variant,
    pub(crate) args: Vec<String>,
    /// `TOKIO_WORKER_THREADS`; `None` leaves tokio's default (one per core).
    pub(crate) workers: Option<usize>,
    pub(crate) wrap: Wrap,
}

impl Spec {
    pub(crate) fn new(variant: Variant) -> Spec {
        Spec {
            variant,
            args: Vec::new(),
            workers: None,
            wrap: Wrap::None,
        }
    }

    pub(crate) fn args(mut self, args: &[&str]) -> Spec {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    pub(crate) fn workers(mut self, workers: usize) -> Spec {
        self.workers = Some(workers);
        self
    }

    pub(crate) fn wrap(mut self, wrap: Wrap) -> Spec {
        self.wrap = wrap;
        self
    }
}

/// A running server. Stopped (SIGTERM, and escalation) when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    /// The demo server's own pid (the tracee when under strace).
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    variant: Variant,
    lines: mpsc::Receiver<String>,
    stopped: bool,
}

/// The work directory of the driver: `target/load-bench`.
pub(crate) fn work_dir() -> PathBuf {
    let dir = target_dir().join("load-bench");
    fs::create_dir_all(&dir).expect("create target/load-bench");
    dir
}

fn target_dir() -> PathBuf {
    // The bench binary lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("the bench binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// A `cargo` command for the driver's own builds and benches.
pub(crate) fn cargo() -> Command {
    let mut command = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    // What `cargo bench` set for this driver (its package's manifest and metadata).
    // ring's build script watches some of these: passed on, they rebuilt ring and
    // everything above it here, and again in the next `cargo bench`.
    for (name, _) in std::env::vars_os() {
        let set_by_cargo = name.to_str().is_some_and(|name| {
            name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || name.starts_with("CARGO_BIN_")
                || matches!(
                    name,
                    "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR"
                )
        });
        if set_by_cargo {
            command.env_remove(name);
        }
    }
    command
}

/// Builds `demo_server` in release mode (once per driver run) and returns its path.
pub(crate) fn demo_server() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("LOAD_DEMO_SERVER") {
                return PathBuf::from(path);
            }
            let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
            eprintln!("building demo_server (release)…");
            let status = cargo()
                // The bench profile (built in target/release like `--release`): building
                // with the release profile instead would rebuild the shared dependencies
                // of every later `cargo bench`.
                .args([
                    "build",
                    "--profile",
                    "bench",
                    "--quiet",
                    // As the README's `cargo bench --all-features --bench load`.
                    "--all-features",
                    "--example",
                    "demo_server",
                ])
                .args(["--manifest-path", manifest])
                .env("CARGO_TARGET_DIR", target_dir())
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cargo build --example demo_server failed");
            target_dir().join("release/examples/demo_server")
        })
        .clone()
}

impl Server {
    /// Starts the server with RLIMIT_NOFILE raised to its hard limit, and waits for its
    /// `listening on ADDR` line.
    pub(crate) fn start(spec: &Spec) -> Server {
        let mut argv: Vec<String> = Vec::new();
        match &spec.wrap {
            Wrap::None => {}
            Wrap::Callgrind(out) => argv.extend([
                "valgrind".to_owned(),
                "--tool=callgrind".to_owned(),
                "--quiet".to_owned(),
                format!("--callgrind-out-file={}", out.display()),
            ]),
            Wrap::Strace(out) => argv.extend([
                "strace".to_owned(),
                "-f".to_owned(),
                "-c".to_owned(),
                "-o".to_owned(),
                out.display().to_string(),
            ]),
        }
        argv.push(demo_server().display().to_string());
        argv.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
        argv.extend(spec.variant.flag().map(str::to_owned));
        argv.extend(spec.args.iter().cloned());
        let log_path = work_dir().join(format!("server-{}.log", spec.variant.name()));
        let log = fs::File::create(&log_path).expect("server log");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"ulimit -n "$(ulimit -Hn)" && exec "$@""#)
            .arg("sh")
            .args(&argv)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        match spec.workers {
            Some(n) => command.env("TOKIO_WORKER_THREADS", n.to_string()),
            None => command.env_remove("TOKIO_WORKER_THREADS"),
        };
        let mut child = command.spawn().expect("spawn the server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let Ok(first) = lines.recv_timeout(Duration::from_secs(120)) else {
            panic!(
                "the server printed no `listening on` line; its stderr:\n{}",
                fs::read_to_string(&log_path).unwrap_or_default()
            );
        };
        let addr = first
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {first:?}"));
        let pid = match spec.wrap {
            Wrap::Strace(_) => tracee(child.id()),
            _ => child.id(),
        };
        Server {
            child,
            pid,
            addr,
            variant: spec.variant,
            lines,
            stopped: false,
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// SIGTERM, then (raw waits for its connections forever) a second SIGTERM, then
    /// SIGKILL. Returns the `shutdown:` line, if any.
    pub(crate) fn stop(&mut self) -> Option<String> {
        if self.stopped {
            return None;
        }
        self.stopped = true;
        let patience = Duration::from_secs(60);
        for signal in ["-TERM", "-TERM", "-KILL"] {
            let _ = Command::new("kill")
                .args([signal, &self.pid.to_string()])
                .status();
            let deadline = Instant::now() + patience;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return self.lines.try_iter().find(|l| l.starts_with("shutdown:"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("{} server: {signal} did not stop it", self.variant.name());
        }
        let _ = self.child.wait();
        None
    }

    /// Resident set size, in bytes.
    pub(crate) fn rss(&self) -> u64 {
        let status = process(self.pid).and_then(|p| p.status()).expect("status");
        status.vmrss.expect("VmRSS") * 1024
    }

    /// User plus system CPU time so far.
    pub(crate) fn cpu(&self) -> Duration {
        cpu_of(self.pid)
    }

    /// Open file descriptors.
    pub(crate) fn fds(&self) -> usize {
        process(self.pid).and_then(|p| p.fd_count()).unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The process `pid` in `/proc`.
fn process(pid: u32) -> procfs::ProcResult<Process> {
    Process::new(i32::try_from(pid).expect("a pid"))
}

/// utime + stime of a process, from `/proc/PID/stat` (clock ticks of 10 ms).
pub(crate) fn cpu_of(pid: u32) -> Duration {
    let stat = process(pid).and_then(|p| p.stat()).expect("stat");
    Duration::from_millis((stat.utime + stat.stime) * 1000 / procfs::ticks_per_second())
}

/// The only child of a tracer process.
fn tracee(tracer: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children = process(tracer)
            .and_then(|p| p.task_main_thread())
            .and_then(|t| t.children())
            .unwrap_or_default();
        if let Some(&pid) = children.first() {
            return pid;
        }
        assert!(Instant::now() < deadline, "strace has no child");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Re-executes this driver with `RLIMIT_NOFILE` raised to its hard limit, unless that
/// is done already; returns the child's exit code when it re-executed.
pub(crate) fn raise_nofile() -> Option<std::process::ExitCode> {
    const MARK: &str = "LOAD_BENCH_NOFILE_RAISED";
    let below_hard = Process::myself()
        .and_then(|p| p.limits())
        .is_ok_and(|limits| {
            let files = limits.max_open_files;
            matches!((files.soft_limit, files.hard_limit),
            (LimitValue::Value(soft), LimitValue::Value(hard)) if soft < hard)
        });
    if std::env::var_os(MARK).is_some() || !below_hard {
        return None;
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n "$(ulimit -Hn)" && exec "$@""#)
        .arg("sh")
        .arg(std::env::current_exe().expect("current_exe"))
        .args(std::env::args_os().skip(1))
        .env(MARK, "1")
        .status()
        .expect("re-execute the driver");
    Some(std::process::ExitCode::from(
        status.code().unwrap_or(1) as u8
    ))
}

/// This process's soft limit on open files.
pub(crate) fn nofile_limit() -> u64 {
    Process::myself()
        .and_then(|p| p.limits())
        .map_or(1024, |limits| match limits.max_open_files.soft_limit {
            LimitValue::Value(soft) => soft,
            LimitValue::Unlimited => 1024,
        })
}
