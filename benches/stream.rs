//! Per-operation overhead of [`HygieneStream`]'s poll path against the raw transport.
//!
//! ```text
//! cargo bench --bench stream                     # criterion: duplex and loopback TCP
//! cargo bench --bench stream -- --ab 200         # interleaved raw/hygiene batches
//! cargo bench --bench stream -- --syscalls 20000 # strace counts per ping-pong
//! cargo bench --bench stream -- --syscalls 20000 --mode hygiene   # one run, for strace
//! ```
//!
//! Benchmark ids are `<case>/<size>/<variant>`, so each raw/hygiene pair sorts together:
//!
//! - `duplex_rt/{1B,4KiB}/{raw,hygiene}`: `a` writes n bytes, `b` reads them, `b` writes
//!   them back, `a` reads them, on a `tokio::io::duplex` pair, both ends wrapped
//!   (`HygieneStream::new` with a [`Conn::new`] handle and the default policy) or both bare.
//! - `tcp_pingpong/64B/{raw,hygiene,hygiene_supervised}`: a 64-byte ping-pong over real
//!   loopback TCP (nodelay on both ends) on one current-thread runtime, the echo server
//!   a spawned task. `raw` is a plain tokio `TcpStream` pair; `hygiene` wraps both ends
//!   (`Listener::accept` on the server, `HygieneStream::tcp` on the client);
//!   `hygiene_supervised` also runs the server's echo under `Conn::supervise`, the way a
//!   server uses it (kernel FIN watch armed).
//!
//! `--ab ROUNDS` measures the same cases in alternating batches and reports the median
//! of the per-round ratios, which a noisy machine disturbs less than two runs minutes
//! apart. `--syscalls N` runs `strace -f -c` on this binary once per variant, with N
//! ping-pongs and with none, and prints the difference per ping-pong.

use std::hint::black_box;
use std::io;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use conn_hygiene::{Conn, HygieneStream, Listener, Policy, SocketOptions, stream::TcpIo};
use criterion::{Criterion, Throughput};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, duplex};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const PING: usize = 64;
const DUPLEX_CAPACITY: usize = 64 * 1024;
const SIZES: [(&str, usize); 2] = [("1B", 1), ("4KiB", 4096)];
const TRACED: &str = "read,write,recvfrom,sendto,recvmsg,sendmsg,readv,writev,\
                      epoll_wait,epoll_pwait,epoll_pwait2,epoll_ctl";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(n) = flag_value(&args, "--syscalls") {
        match flag_value(&args, "--mode") {
            Some(mode) => traced_run(parse_mode(&mode), parse_count(&n)),
            None => syscall_report(parse_count(&n)),
        }
        return;
    }
    if let Some(rounds) = flag_value(&args, "--ab") {
        interleaved(parse_count(&rounds));
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench_duplex(&mut c);
    bench_tcp(&mut c);
    c.final_summary();
}

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let at = args.iter().position(|a| a == flag)?;
    Some(args.get(at + 1).cloned().unwrap_or_default())
}

fn parse_count(s: &str) -> u64 {
    s.parse()
        .unwrap_or_else(|_| panic!("expected a count, got {s:?}"))
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn policy() -> Policy {
    Policy::default()
}

// ---------------------------------------------------------------------------------------
// duplex

fn wrap<S>(io: S, id: u64) -> HygieneStream<S> {
    let peer: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    HygieneStream::new(io, Conn::new(id, peer, policy()))
}

fn raw_duplex() -> (DuplexStream, DuplexStream) {
    duplex(DUPLEX_CAPACITY)
}

fn hygiene_duplex() -> (HygieneStream<DuplexStream>, HygieneStream<DuplexStream>) {
    let (a, b) = duplex(DUPLEX_CAPACITY);
    (wrap(a, 1), wrap(b, 2))
}

/// `iters` round trips of `size` bytes: a -> b, then b -> a.
async fn duplex_round_trips<S>(a: &mut S, b: &mut S, size: usize, iters: u64) -> Duration
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let out = vec![0x5au8; size];
    let mut back = vec![0u8; size];
    let start = Instant::now();
    for _ in 0..iters {
        a.write_all(&out).await.expect("write a");
        b.read_exact(&mut back).await.expect("read b");
        b.write_all(&back).await.expect("write b");
        a.read_exact(&mut back).await.expect("read a");
        black_box(&back);
    }
    start.elapsed()
}

fn bench_duplex(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("duplex_rt");
    for (label, size) in SIZES {
        group.throughput(Throughput::Bytes(2 * size as u64));
        let (mut a, mut b) = raw_duplex();
        group.bench_function(format!("{label}/raw"), |bench| {
            bench.iter_custom(|iters| rt.block_on(duplex_round_trips(&mut a, &mut b, size, iters)))
        });
        let (mut a, mut b) = hygiene_duplex();
        group.bench_function(format!("{label}/hygiene"), |bench| {
            bench.iter_custom(|iters| rt.block_on(duplex_round_trips(&mut a, &mut b, size, iters)))
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------
// loopback TCP

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Raw,
    Hygiene,
    Supervised,
}

const MODES: [Mode; 3] = [Mode::Raw, Mode::Hygiene, Mode::Supervised];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::Hygiene => "hygiene",
            Mode::Supervised => "hygiene_supervised",
        }
    }
}

fn parse_mode(s: &str) -> Mode {
    MODES
        .into_iter()
        .find(|m| m.name() == s)
        .unwrap_or_else(|| panic!("--mode is one of raw, hygiene, hygiene_supervised"))
}

/// Echoes fixed-size pings until the client goes away.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> io::Result<()> {
    let mut buf = [0u8; PING];
    loop {
        s.read_exact(&mut buf).await?;
        s.write_all(&buf).await?;
    }
}

async fn ping_pongs<S: AsyncRead + AsyncWrite + Unpin>(c: &mut S, iters: u64) -> Duration {
    let ping = [0xa5u8; PING];
    let mut pong = [0u8; PING];
    let start = Instant::now();
    for _ in 0..iters {
        c.write_all(&ping).await.expect("ping");
        c.read_exact(&mut pong).await.expect("pong");
        black_box(&pong);
    }
    start.elapsed()
}

/// A client end of a loopback connection whose server end echoes in a spawned task.
// Not boxed: one per run, and a box would add an indirection to the stream measured.
#[allow(clippy::large_enum_variant)]
enum Client {
    Raw(TcpStream),
    Hygiene(HygieneStream<TcpIo>),
}

impl Client {
    async fn ping_pongs(&mut self, iters: u64) -> Duration {
        // Dispatched once per batch, never per operation.
        match self {
            Client::Raw(s) => ping_pongs(s, iters).await,
            Client::Hygiene(s) => ping_pongs(s, iters).await,
        }
    }
}

async fn connect(mode: Mode) -> Client {
    let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    match mode {
        Mode::Raw => {
            let listener = TcpListener::bind(local).await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
            let (client, (server, _)) = (client.expect("connect"), accepted.expect("accept"));
            client.set_nodelay(true).expect("nodelay");
            server.set_nodelay(true).expect("nodelay");
            tokio::spawn(echo(server));
            Client::Raw(client)
        }
        Mode::Hygiene | Mode::Supervised => {
            let options = SocketOptions::new().nodelay(true);
            let mut listener = Listener::bind(local, options, Policy::default()).expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
            let (client, (server, _)) = (client.expect("connect"), accepted.expect("accept"));
            client.set_nodelay(true).expect("nodelay");
            if mode == Mode::Supervised {
                let conn = server.conn().clone();
                tokio::spawn(conn.supervise(echo(server)));
            } else {
                tokio::spawn(echo(server));
            }
            // The listener may go: accepted connections do not depend on it.
            drop(listener);
            Client::Hygiene(HygieneStream::tcp(client, addr, policy()))
        }
    }
}

fn bench_tcp(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("tcp_pingpong");
    group.throughput(Throughput::Bytes(2 * PING as u64));
    for mode in MODES {
        let mut client = rt.block_on(connect(mode));
        group.bench_function(format!("{PING}B/{}", mode.name()), |bench| {
            bench.iter_custom(|iters| rt.block_on(client.ping_pongs(iters)))
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------
// interleaved A/B

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn report_ab(case: &str, names: &[&str], per_op: &mut [Vec<f64>]) {
    let base = per_op[0].clone();
    let mut medians = Vec::new();
    for v in per_op.iter_mut() {
        medians.push(median(&mut v.clone()));
    }
    for (i, name) in names.iter().enumerate() {
        let mut ratios: Vec<f64> = per_op[i].iter().zip(&base).map(|(x, b)| x / b).collect();
        println!(
            "{case}/{name:<20} median {:>9.1} ns/iter   ratio vs raw: {:.3} (median of {} paired rounds)",
            medians[i],
            median(&mut ratios),
            ratios.len()
        );
    }
}

fn interleaved(rounds: u64) {
    let rt = runtime();
    for (label, size) in SIZES {
        let (mut ra, mut rb) = raw_duplex();
        let (mut ha, mut hb) = hygiene_duplex();
        let batch = if size == 1 { 20_000 } else { 5_000 };
        // Warm both up before measuring.
        rt.block_on(duplex_round_trips(&mut ra, &mut rb, size, batch));
        rt.block_on(duplex_round_trips(&mut ha, &mut hb, size, batch));
        let mut per_op = vec![Vec::new(), Vec::new()];
        for round in 0..rounds {
            // Alternate which goes first, so drift does not favour one side.
            for k in 0..2 {
                let which = (k + round as usize) % 2;
                let t = if which == 0 {
                    rt.block_on(duplex_round_trips(&mut ra, &mut rb, size, batch))
                } else {
                    rt.block_on(duplex_round_trips(&mut ha, &mut hb, size, batch))
                };
                per_op[which].push(t.as_nanos() as f64 / batch as f64);
            }
        }
        report_ab(
            &format!("duplex_rt/{label}"),
            &["raw", "hygiene"],
            &mut per_op,
        );
    }
    let batch = 2_000;
    let mut clients: Vec<Client> = MODES.iter().map(|m| rt.block_on(connect(*m))).collect();
    for client in &mut clients {
        rt.block_on(client.ping_pongs(batch));
    }
    let mut per_op = vec![Vec::new(); MODES.len()];
    for round in 0..rounds {
        for k in 0..MODES.len() {
            let which = (k + round as usize) % MODES.len();
            let t = rt.block_on(clients[which].ping_pongs(batch));
            per_op[which].push(t.as_nanos() as f64 / batch as f64);
        }
    }
    let names: Vec<&str> = MODES.iter().map(|m| m.name()).collect();
    report_ab(&format!("tcp_pingpong/{PING}B"), &names, &mut per_op);
}

// ---------------------------------------------------------------------------------------
// syscall counts

/// One variant, `n` ping-pongs, nothing else: the process strace watches.
fn traced_run(mode: Mode, n: u64) {
    let rt = runtime();
    rt.block_on(async {
        let mut client = connect(mode).await;
        client.ping_pongs(n).await;
    });
}

/// `syscall -> (calls, errors)` from a `strace -c` summary.
fn parse_strace_summary(text: &str) -> Vec<(String, u64, u64)> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 5 || cols[0].parse::<f64>().is_err() {
            continue;
        }
        let name = cols[cols.len() - 1].to_string();
        if name == "total" {
            continue;
        }
        let calls = cols[3].parse().unwrap_or(0);
        let errors = if cols.len() >= 6 {
            cols[4].parse().unwrap_or(0)
        } else {
            0
        };
        rows.push((name, calls, errors));
    }
    rows
}

fn strace_counts(mode: Mode, n: u64) -> Vec<(String, u64, u64)> {
    let exe = std::env::current_exe().expect("current exe");
    let out = std::env::temp_dir().join(format!(
        "conn-hygiene-strace-{}-{}-{n}.txt",
        std::process::id(),
        mode.name()
    ));
    let status = Command::new("strace")
        .args(["-f", "-c", "-o"])
        .arg(&out)
        .args(["-e", &format!("trace={TRACED}")])
        .arg(&exe)
        .args(["--syscalls", &n.to_string(), "--mode", mode.name()])
        .status()
        .expect("strace must be installed (apt-get install strace)");
    assert!(status.success(), "strace run failed: {status}");
    let text = std::fs::read_to_string(&out).expect("strace output");
    let _ = std::fs::remove_file(&out);
    parse_strace_summary(&text)
}

fn syscall_report(n: u64) {
    assert!(n > 0, "--syscalls needs a positive count");
    println!(
        "syscalls per {PING}-byte ping-pong (client write + server read + server write + \
         client read), (strace -f -c with {n} ping-pongs - without) / {n}:"
    );
    let mut totals = Vec::new();
    for mode in MODES {
        let with = strace_counts(mode, n);
        let without = strace_counts(mode, 0);
        let base = |name: &str| {
            without
                .iter()
                .find(|r| r.0 == name)
                .map_or((0, 0), |r| (r.1, r.2))
        };
        let mut total = 0.0;
        let mut parts = Vec::new();
        for (name, calls, errors) in &with {
            let (c0, e0) = base(name);
            let per = (*calls as f64 - c0 as f64) / n as f64;
            let err = (*errors as f64 - e0 as f64) / n as f64;
            if per.abs() < 0.0005 {
                continue;
            }
            total += per;
            parts.push(format!("{name} {per:.3} (errors {err:.3})"));
        }
        println!(
            "  {:<20} total {total:.3}: {}",
            mode.name(),
            parts.join(", ")
        );
        totals.push(total);
    }
    println!(
        "  extra per op vs raw: hygiene {:+.3}, hygiene_supervised {:+.3}",
        totals[1] - totals[0],
        totals[2] - totals[0]
    );
}
