//! FIN-to-socket-released latency of [`Conn::supervise`] on real loopback TCP, against a
//! raw tokio server measured in the same run.
//!
//! ```text
//! cargo bench --all-features --bench detection
//! cargo bench --all-features --bench detection -- --trials 1000 --grace-trials 1000 \
//!     --census-every 20 --grace-census-every 50 --baseline-every 1 --grace-baseline-every 20
//! ```
//!
//! Each trial, run one after another: a client (a blocking std socket on the main
//! thread) connects, sends a few bytes and waits until the server task holds the
//! accepted stream. Then the client calls `shutdown(Write)` (t0) and blocks in `read`:
//!
//! - t1: the server task is done with the connection, the stream dropped;
//! - t2: the client's `read` returned: `ECONNRESET` once the server's RST arrives. This
//!   is the primary "released" signal: the server socket leaves the kernel's table when
//!   its RST is sent (unread bytes plus zero linger).
//!
//! Servers, on one multi-thread runtime with 2 workers:
//!
//! - **hygiene**: a [`Listener`]; the task holds the stream under
//!   `conn.supervise(pending)` and never reads; t1 is when the supervised future
//!   resolved (abandoned) and was dropped.
//! - **baseline**: a plain tokio `TcpListener`; the task *reads* until EOF (the best a
//!   server that reads can do), then, for the grace policy, sleeps the grace with
//!   `tokio::time::sleep`, sets zero linger and drops the stream. One baseline trial
//!   follows every `--baseline-every`-th hygiene trial (`--grace-baseline-every`-th
//!   under the grace policy), so both see the same machine noise.
//!
//! Every `--census-every`-th hygiene trial (`--grace-census-every`-th under the grace
//! policy) is followed by an extra one that polls the kernel's socket table
//! ([`census::sockets`]) in a tight loop from t0 instead of reading, until the
//! server-side socket is gone, then checks the client sees the reset. Those trials are
//! reported apart: "gone" lies between the start of the last scan that listed the socket
//! and the end of the first scan that did not. A scan reads all of `/proc/net/tcp` and
//! `/proc/net/tcp6`, which costs milliseconds on a host with a large established-hash
//! table, so it bounds the release time only to within one scan.
//!
//! Policies: `HalfClose::Abort`, then `HalfClose::AllowFor(50 ms)`, whose p99 should stay
//! within grace + 5 ms. The process fails if a trial does not end in a reset with the
//! expected reason, or if a server socket is still listed after the client saw the reset;
//! a latency bound missed is only reported.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use conn_hygiene::census::{self, Filter};
use conn_hygiene::{HalfClose, Listener, Policy, SocketOptions, conn::Abandon};
use tokio::io::AsyncReadExt;
use tokio::runtime::Runtime;

const GRACE: Duration = Duration::from_millis(50);
const TRIAL_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_FAILURES: usize = 5;

struct Args {
    trials: usize,
    grace_trials: usize,
    census_every: usize,
    grace_census_every: usize,
    baseline_every: usize,
    grace_baseline_every: usize,
}

impl Args {
    fn parse() -> Args {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let count = |flag: &str, default: usize| -> usize {
            match args.iter().position(|a| a == flag) {
                Some(at) => args
                    .get(at + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{flag} needs a count")),
                None => default,
            }
        };
        Args {
            trials: count("--trials", 1000),
            grace_trials: count("--grace-trials", 1000),
            census_every: count("--census-every", 20),
            grace_census_every: count("--grace-census-every", 50),
            baseline_every: count("--baseline-every", 1),
            grace_baseline_every: count("--grace-baseline-every", 20),
        }
    }
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "FIN -> released latency; {} CPUs; servers on a 2-worker runtime; trials sequential",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let abort = Run {
        label: "abort",
        half_close: HalfClose::Abort,
        expected: Abandon::PeerFin,
        grace: None,
        trials: args.trials,
        census_every: args.census_every,
        baseline_every: args.baseline_every,
    };
    let grace = Run {
        label: "allow_for_50ms",
        half_close: HalfClose::AllowFor(GRACE),
        expected: Abandon::HalfCloseGrace,
        grace: Some(GRACE),
        trials: args.grace_trials,
        census_every: args.grace_census_every,
        baseline_every: args.grace_baseline_every,
    };
    // Both runs, even when the first fails.
    let results: Vec<bool> = [abort, grace].iter().map(|r| r.run(&rt)).collect();
    let ok = results.iter().all(|ok| *ok);
    if !ok {
        std::process::exit(1);
    }
}

/// What a server task reports about one connection, keyed by the client's port.
enum Event {
    Holding(u16),
    Done {
        port: u16,
        at: Instant,
        outcome: Result<(), Abandon>,
    },
}

/// How the client's blocking read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Reset,
    Eof,
    Data,
    TimedOut,
    OtherError,
}

fn classify(r: &io::Result<usize>) -> Seen {
    match r {
        Ok(0) => Seen::Eof,
        Ok(_) => Seen::Data,
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Seen::Reset,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Seen::TimedOut
        }
        Err(_) => Seen::OtherError,
    }
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// A [`Listener`] whose tasks hold each stream under `supervise(pending)`, never reading.
fn hygiene_server(rt: &Runtime, policy: Policy) -> (SocketAddr, mpsc::Receiver<Event>) {
    let _enter = rt.enter();
    let options = SocketOptions::new().nodelay(true);
    let mut listener = Listener::bind(localhost(), options, policy).expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = mpsc::channel();
    rt.spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let port = peer.port();
                let conn = stream.conn().clone();
                let holding = tx.clone();
                let outcome = conn
                    .supervise(async move {
                        let _stream = stream;
                        let _ = holding.send(Event::Holding(port));
                        std::future::pending::<()>().await
                    })
                    .await;
                // The `Supervised` future, and the stream inside it, is dropped by now.
                let at = Instant::now();
                let outcome = outcome.map_err(|a| a.reason());
                let _ = tx.send(Event::Done { port, at, outcome });
            });
        }
    });
    (addr, rx)
}

/// A plain tokio server whose tasks read to EOF, wait out `grace`, and reset.
fn baseline_server(rt: &Runtime, grace: Option<Duration>) -> (SocketAddr, mpsc::Receiver<Event>) {
    let _enter = rt.enter();
    let listener = std::net::TcpListener::bind(localhost()).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = mpsc::channel();
    rt.spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let port = peer.port();
                stream.set_nodelay(true).expect("nodelay");
                let _ = tx.send(Event::Holding(port));
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                if let Some(grace) = grace {
                    tokio::time::sleep(grace).await;
                }
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                drop(stream);
                let at = Instant::now();
                let _ = tx.send(Event::Done {
                    port,
                    at,
                    outcome: Ok(()),
                });
            });
        }
    });
    (addr, rx)
}

/// Whether the kernel still lists the server side of `client_port`'s connection.
fn server_socket_listed(server_port: u16, client_port: u16) -> bool {
    census::sockets(Filter::Port(client_port))
        .expect("census")
        .iter()
        .any(|s| s.local.port() == server_port && s.remote.port() == client_port)
}

fn wait_for<T>(rx: &mpsc::Receiver<Event>, mut pick: impl FnMut(&Event) -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + TRIAL_TIMEOUT;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let event = rx.recv_timeout(left).ok()?;
        if let Some(found) = pick(&event) {
            return Some(found);
        }
    }
}

/// What one trial saw.
struct Trial {
    done: Duration,
    client_seen: Duration,
    seen: Seen,
    outcome: Result<(), Abandon>,
    census: Option<CensusTrial>,
}

/// When the server socket left the kernel's table, polled from t0.
struct CensusTrial {
    /// Start of the last scan that still listed it: a lower bound.
    gone_after: Duration,
    /// End of the first scan that no longer listed it: an upper bound.
    gone_before: Duration,
    scan: Duration,
    listed_after_reset: bool,
}

type Server = (SocketAddr, mpsc::Receiver<Event>);

/// One connection to `server`: connect, send, wait until held, half-close, observe.
fn one_trial(server: &Server, census_poll: bool) -> Result<Trial, String> {
    let (addr, events) = server;
    let mut client = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    client.set_nodelay(true).expect("nodelay");
    client
        .set_read_timeout(Some(TRIAL_TIMEOUT))
        .expect("timeout");
    client.write_all(b"hello").expect("write");
    let port = client.local_addr().expect("local addr").port();
    wait_for(events, |e| match e {
        Event::Holding(p) if *p == port => Some(()),
        _ => None,
    })
    .ok_or("the server never held the connection")?;

    let t0 = Instant::now();
    client.shutdown(Shutdown::Write).expect("shutdown");
    let census = census_poll.then(|| {
        let mut last_listed = Duration::ZERO;
        let mut scan = Duration::ZERO;
        loop {
            let start = t0.elapsed();
            let listed = server_socket_listed(addr.port(), port);
            let end = t0.elapsed();
            scan = scan.max(end - start);
            if !listed {
                break (last_listed, end, scan);
            }
            last_listed = start;
            if end > TRIAL_TIMEOUT {
                break (last_listed, Duration::MAX, scan);
            }
        }
    });
    let read = client.read(&mut [0u8; 64]);
    let client_seen = t0.elapsed();
    let seen = classify(&read);
    let census = census.map(|(gone_after, gone_before, scan)| CensusTrial {
        gone_after,
        gone_before,
        scan,
        listed_after_reset: server_socket_listed(addr.port(), port),
    });
    let (at, outcome) = wait_for(events, |e| match e {
        Event::Done {
            port: p,
            at,
            outcome,
        } if *p == port => Some((*at, *outcome)),
        _ => None,
    })
    .ok_or_else(|| format!("the server task never finished (client read: {seen:?})"))?;
    Ok(Trial {
        done: at.saturating_duration_since(t0),
        client_seen,
        seen,
        outcome,
        census,
    })
}

/// Latencies of one server kind.
#[derive(Default)]
struct Samples {
    done: Vec<Duration>,
    client_seen: Vec<Duration>,
    seen: BTreeMap<Seen, usize>,
    outcomes: BTreeMap<String, usize>,
    census: Vec<CensusTrial>,
    failures: Vec<String>,
}

impl Samples {
    fn record(&mut self, trial: Result<Trial, String>, expected: Result<(), Abandon>) {
        let trial = match trial {
            Ok(trial) => trial,
            Err(e) => return self.failures.push(e),
        };
        *self.seen.entry(trial.seen).or_default() += 1;
        let outcome = match trial.outcome {
            Ok(()) => "finished".to_string(),
            Err(reason) => reason.to_string(),
        };
        *self.outcomes.entry(outcome).or_default() += 1;
        if trial.seen != Seen::Reset || trial.outcome != expected {
            let e = format!("read {:?}, outcome {:?}", trial.seen, trial.outcome);
            return self.failures.push(e);
        }
        match trial.census {
            // Polling the census delays the client's read: kept apart.
            Some(census) => self.census.push(census),
            None => {
                self.done.push(trial.done);
                self.client_seen.push(trial.client_seen);
            }
        }
    }
}

struct Run {
    label: &'static str,
    half_close: HalfClose,
    expected: Abandon,
    grace: Option<Duration>,
    trials: usize,
    census_every: usize,
    baseline_every: usize,
}

impl Run {
    fn run(&self, rt: &Runtime) -> bool {
        let policy = Policy::builder()
            .half_close(self.half_close)
            .build()
            .expect("policy");
        let hygiene = hygiene_server(rt, policy);
        let baseline = baseline_server(rt, self.grace);
        let mut h = Samples::default();
        let mut b = Samples::default();
        let started = Instant::now();
        for trial in 0..self.trials {
            if h.failures.len() + b.failures.len() >= MAX_FAILURES {
                println!(
                    "{}: giving up after {MAX_FAILURES} failed trials",
                    self.label
                );
                break;
            }
            h.record(one_trial(&hygiene, false), Err(self.expected));
            if self.census_every > 0 && trial % self.census_every == 0 {
                h.record(one_trial(&hygiene, true), Err(self.expected));
            }
            if self.baseline_every > 0 && trial % self.baseline_every == 0 {
                b.record(one_trial(&baseline, false), Ok(()));
            }
        }
        self.report(&h, &b, started.elapsed())
    }

    fn report(&self, h: &Samples, b: &Samples, elapsed: Duration) -> bool {
        println!();
        println!(
            "== {}: {} hygiene trials (+{} census-polled), {} baseline trials, in {:.1} s",
            self.label,
            h.client_seen.len(),
            h.census.len(),
            b.client_seen.len(),
            elapsed.as_secs_f64()
        );
        println!("  {:<44}{}", "", header());
        row("hygiene: supervise resolved (t1-t0)", &h.done);
        row("hygiene: client sees reset (t2-t0)", &h.client_seen);
        row("baseline: task done (t1-t0)", &b.done);
        row("baseline: client sees reset (t2-t0)", &b.client_seen);
        let (hp, bp) = (quantiles(&h.client_seen), quantiles(&b.client_seen));
        if let (Some(hp), Some(bp)) = (hp, bp) {
            let ratios: Vec<String> = hp
                .iter()
                .zip(&bp)
                .map(|(x, y)| format!("{:>9.2}", x.as_secs_f64() / y.as_secs_f64()))
                .collect();
            println!(
                "  {:<44}{}",
                "ratio hygiene/baseline, client sees reset",
                ratios.join("")
            );
        }
        let after: Vec<Duration> = h.census.iter().map(|c| c.gone_after).collect();
        let before: Vec<Duration> = h.census.iter().map(|c| c.gone_before).collect();
        let scan: Vec<Duration> = h.census.iter().map(|c| c.scan).collect();
        row("census: gone after (last scan listing it)", &after);
        row("census: gone before (first scan without)", &before);
        row("census: slowest scan per trial", &scan);
        let still_listed = h.census.iter().filter(|c| c.listed_after_reset).count();
        println!(
            "  hygiene: client reads {:?}, outcomes {:?}; baseline: client reads {:?}",
            h.seen, h.outcomes, b.seen
        );
        println!(
            "  server socket still listed after the client saw the reset: {still_listed} of {}",
            h.census.len()
        );
        for (who, s) in [("hygiene", &h), ("baseline", &b)] {
            for e in s.failures.iter().take(MAX_FAILURES) {
                println!("  FAILED {who} trial: {e}");
            }
        }
        if let Some(grace) = self.grace {
            let bound = grace + Duration::from_millis(5);
            let early = h.done.iter().filter(|d| **d < grace).count();
            let p99 = |v: &[Duration]| quantiles(v).map_or(Duration::ZERO, |q| q[2]);
            let within = p99(&h.client_seen) <= bound;
            println!(
                "  grace {} ms: hygiene p99 {:.2} ms <= {} ms: {} (baseline p99 {:.2} ms); \
                 resolved before the grace: {early}",
                grace.as_millis(),
                p99(&h.client_seen).as_secs_f64() * 1e3,
                bound.as_millis(),
                if within { "yes" } else { "NO" },
                p99(&b.client_seen).as_secs_f64() * 1e3,
            );
            if early > 0 {
                return false;
            }
        }
        h.failures.is_empty() && b.failures.is_empty() && still_listed == 0
    }
}

fn header() -> String {
    format!(
        "{:>9}{:>9}{:>9}{:>9}{:>7}",
        "p50 µs", "p90 µs", "p99 µs", "max µs", "n"
    )
}

/// p50, p90, p99 and max, by nearest rank.
fn quantiles(v: &[Duration]) -> Option<[Duration; 4]> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort();
    let at = |q: f64| {
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    };
    Some([at(0.50), at(0.90), at(0.99), v[v.len() - 1]])
}

fn row(label: &str, v: &[Duration]) {
    let Some(q) = quantiles(v) else {
        println!("  {label:<44}no samples");
        return;
    };
    let cells: Vec<String> = q
        .iter()
        .map(|d| format!("{:>9.1}", d.as_secs_f64() * 1e6))
        .collect();
    println!("  {label:<44}{}{:>7}", cells.join(""), v.len());
}
