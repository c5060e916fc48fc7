//! Scale: thousands of idle keep-alive connections on one server, from one client
//! process. Memory per connection, CPU while idle with every clock armed, and how
//! precisely the idle timeout closes them all.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant as StdInstant};

use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use super::http::{Client, runtime};
use super::report::{Row, Section, Series};
use super::server::{Server, Spec, Variant, nofile_limit};
use super::stats::{median, percentile, thousands};

/// Connections being opened at once.
const CONNECTING: usize = 256;
/// RSS rounds per variant (alternating, a fresh server each).
const RSS_ROUNDS: usize = 3;
/// The idle timeout of the closing run.
const IDLE: Duration = Duration::from_secs(5);
/// The closing precision asked for.
const TOLERANCE: Duration = Duration::from_millis(100);

/// One held connection, as the client saw it.
#[derive(Debug, Clone, Copy)]
struct Record {
    sent: Instant,
    answered: Instant,
    /// When a read saw the server's FIN or RST.
    closed: Option<Instant>,
}

/// Connections held open by a client thread until released.
struct Held {
    release: watch::Sender<bool>,
    thread: Option<JoinHandle<Vec<Record>>>,
    established: usize,
    failed: usize,
}

impl Held {
    /// Opens `n` connections, each answered once, and keeps them until the server
    /// closes them or [`release`](Self::release).
    fn open(addr: SocketAddr, n: usize) -> Held {
        let (release, released) = watch::channel(false);
        let (ready_tx, ready) = mpsc::channel::<bool>();
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let connecting = Arc::new(Semaphore::new(CONNECTING));
                let tasks: Vec<_> = (0..n)
                    .map(|_| {
                        let connecting = connecting.clone();
                        let ready = ready_tx.clone();
                        let mut released = released.clone();
                        tokio::spawn(async move {
                            let permit = connecting.acquire_owned().await.expect("semaphore");
                            let mut client = Client::connect(addr).await.ok()?;
                            let sent = Instant::now();
                            let answered = match client.get().await {
                                Ok(200) => Instant::now(),
                                _ => {
                                    let _ = ready.send(false);
                                    return None;
                                }
                            };
                            drop(permit);
                            let _ = ready.send(true);
                            let closed = tokio::select! {
                                at = client.wait_closed() => Some(at),
                                _ = released.wait_for(|r| *r) => None,
                            };
                            Some(Record {
                                sent,
                                answered,
                                closed,
                            })
                        })
                    })
                    .collect();
                drop(ready_tx);
                let mut records = Vec::with_capacity(n);
                for task in tasks {
                    if let Ok(Some(record)) = task.await {
                        records.push(record);
                    }
                }
                records
            })
        });
        let mut held = Held {
            release,
            thread: Some(thread),
            established: 0,
            failed: 0,
        };
        let deadline = StdInstant::now() + Duration::from_secs(180);
        while held.established + held.failed < n {
            let left = deadline.saturating_duration_since(StdInstant::now());
            match ready.recv_timeout(left) {
                Ok(true) => held.established += 1,
                Ok(false) => held.failed += 1,
                Err(_) => break,
            }
        }
        held
    }

    /// Closes every connection still open and returns the records.
    fn release(mut self) -> Vec<Record> {
        let _ = self.release.send(true);
        self.thread
            .take()
            .expect("joined once")
            .join()
            .expect("client thread")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.release.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Opens and closes a few connections so that allocator arenas and runtime
/// structures exist before the baseline is taken.
fn warm_up(addr: SocketAddr) {
    let held = Held::open(addr, 200);
    drop(held.release());
    std::thread::sleep(Duration::from_millis(500));
}

fn wait_for_fds(server: &Server, at_most: usize, within: Duration) -> bool {
    let deadline = StdInstant::now() + within;
    while server.fds() > at_most {
        if StdInstant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// RSS and fd growth for `n` held connections; with `idle`, also the CPU used while
/// they sit idle for that long.
struct Footprint {
    rss_per_conn: f64,
    cpu: Option<Duration>,
    established: usize,
}

fn footprint(variant: Variant, n: usize, idle: Option<Duration>) -> Footprint {
    // A long idle timeout: the clocks are armed but do not fire during the window.
    let server = Server::start(&Spec::new(variant).args(&["--idle-timeout", "600s"]));
    warm_up(server.addr);
    let fds = server.fds();
    let before = server.rss();
    let held = Held::open(server.addr, n);
    std::thread::sleep(Duration::from_secs(2));
    let after = server.rss();
    let cpu = idle.map(|window| {
        let start = server.cpu();
        std::thread::sleep(window);
        server.cpu() - start
    });
    let established = held.established;
    eprintln!(
        "scale {}: {} connections ({} failed), RSS {} → {} kB, fds {} → {}{}",
        variant.name(),
        established,
        held.failed,
        before / 1024,
        after / 1024,
        fds,
        server.fds(),
        cpu.map(|c| format!(", CPU {c:?} while idle"))
            .unwrap_or_default()
    );
    drop(held.release());
    wait_for_fds(&server, fds, Duration::from_secs(30));
    Footprint {
        rss_per_conn: (after as f64 - before as f64) / established.max(1) as f64,
        cpu,
        established,
    }
}

/// The `scale` subcommand: `n` connections; CPU measured over `idle_seconds`.
pub(crate) fn run(n: usize, idle_seconds: u64) -> Section {
    let limit = nofile_limit();
    assert!(
        limit as usize >= n + 200,
        "RLIMIT_NOFILE is {limit}: {n} connections need more (raise the hard limit)"
    );
    let window = Duration::from_secs(idle_seconds);
    let mut rss: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut cpu = [Duration::ZERO; 2];
    let mut established = [usize::MAX; 2];
    for round in 0..RSS_ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for v in order {
            let last = round == RSS_ROUNDS - 1;
            let f = footprint(Variant::BOTH[v], n, last.then_some(window));
            rss[v].push(f.rss_per_conn);
            established[v] = established[v].min(f.established);
            if let Some(c) = f.cpu {
                cpu[v] = c;
            }
        }
    }
    let closing = closing(n);

    let mut section = Section::new(
        "scale",
        &format!(
            "3. Scale: {} idle keep-alive connections",
            thousands(n as f64)
        ),
    );
    let (rss_raw, rss_hyg) = (median(&rss[0]), median(&rss[1]));
    let extra = rss_hyg - rss_raw;
    section.rows.push(
        Row::new("server RSS per idle connection (bytes)")
            .values(thousands(rss_hyg), thousands(rss_raw))
            .ratio(rss_hyg / rss_raw)
            .target(
                format!("≤ 512 B extra (measured {extra:+.0} B)"),
                extra <= 512.0,
            ),
    );
    section.series.push(Series {
        name: "rss_raw".into(),
        points: vec![(0.0, rss_raw)],
    });
    section.series.push(Series {
        name: "rss_hygiene".into(),
        points: vec![(0.0, rss_hyg)],
    });
    let pct = |c: Duration| 100.0 * c.as_secs_f64() / window.as_secs_f64();
    section.rows.push(
        Row::new(format!(
            "server CPU, all idle with clocks armed, over {idle_seconds} s (% of a core)"
        ))
        .values(
            format!("{:.2} %", pct(cpu[1])),
            format!("{:.2} %", pct(cpu[0])),
        )
        .target("≤ 1 %", pct(cpu[1]) <= 1.0),
    );
    let within = closing
        .deltas
        .iter()
        .filter(|d| d.abs() <= TOLERANCE.as_secs_f64() * 1e3)
        .count();
    let all_closed = closing.deltas.len() == closing.established && closing.established == n;
    section.rows.push(
        Row::new(format!(
            "closed by the {} s idle timeout within ±{} ms of the deadline",
            IDLE.as_secs(),
            TOLERANCE.as_millis()
        ))
        .values(
            format!("{} / {}", thousands(within as f64), thousands(n as f64)),
            "n/a (never closes)",
        )
        .target("all", all_closed && within == n),
    );
    let mut sorted = closing.deltas.clone();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    };
    section.rows.push(
        Row::new("close time − deadline: min / p50 / p99 / max (ms)").values(
            format!(
                "{:.1} / {:.1} / {:.1} / {:.1}",
                q(0.0),
                q(50.0),
                q(99.0),
                q(100.0)
            ),
            "—",
        ),
    );
    let _ = write!(
        section.details,
        "Method: one client process (the driver, one thread) holds {n} keep-alive \
         connections to one `demo_server` process (tokio's default workers), each after \
         one `GET /`; both processes run with `RLIMIT_NOFILE` raised to the hard limit. \
         RSS per connection = (VmRSS with all connections − VmRSS before) / connections \
         (after a warm-up of 200 connections, 2 s settle), median of {RSS_ROUNDS} rounds \
         per variant, alternating, a fresh server each (hygiene: {hyg_rounds}; raw: \
         {raw_rounds} bytes). CPU = utime + stime from `/proc/PID/stat` over {idle_seconds} s \
         with every connection idle (the hygiene server runs with `--idle-timeout 600s`, \
         so each connection has its idle clock armed; 1 tick = 10 ms, i.e. {tick:.3} % of \
         a core over the window). Fewest connections established in a round: hygiene \
         {est_h}, raw {est_r}.\n\n\
         Idle timeout: a fresh hygiene server with `--idle-timeout {idle}s`; the client \
         opens {n} connections, one request each, and records for each when the answer \
         arrived and when a read saw the server's close (RST: the idle close abandons the \
         connection). Deadline = answer time + {idle} s (the server's clock starts at its \
         last write, a little before the answer arrives; the request→answer time was at \
         most {rtt:.1} ms). {closed} of {est} connections closed by the server, {within} \
         within ±{tol} ms. The raw server has no idle timeout: its connections stay open \
         until the client leaves.\n",
        hyg_rounds = rss[1]
            .iter()
            .map(|b| format!("{b:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        raw_rounds = rss[0]
            .iter()
            .map(|b| format!("{b:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        tick = 100.0 * 0.01 / window.as_secs_f64(),
        est_h = established[1],
        est_r = established[0],
        idle = IDLE.as_secs(),
        rtt = closing.max_rtt_ms,
        closed = closing.deltas.len(),
        est = closing.established,
        tol = TOLERANCE.as_millis(),
    );
    let _ = writeln!(
        section.details,
        "\n| close time − deadline | ms |\n| --- | --- |\n| min | {:.1} |\n| p1 | {:.1} |\n| p50 | {:.1} |\n| p99 | {:.1} |\n| p99.9 | {:.1} |\n| max | {:.1} |",
        q(0.0),
        q(1.0),
        q(50.0),
        q(99.0),
        q(99.9),
        q(100.0)
    );
    section.series.push(Series {
        name: "idle_close_delta_ms".into(),
        points: sorted
            .iter()
            .enumerate()
            .map(|(i, d)| (100.0 * (i + 1) as f64 / sorted.len() as f64, *d))
            .collect(),
    });
    section
}

struct Closing {
    established: usize,
    /// Close time minus deadline, in milliseconds, per connection the server closed.
    deltas: Vec<f64>,
    max_rtt_ms: f64,
}

fn closing(n: usize) -> Closing {
    let idle = format!("{}s", IDLE.as_secs());
    // The half-close grace may not exceed the idle timeout.
    let server = Server::start(&Spec::new(Variant::Hygiene).args(&[
        "--idle-timeout",
        &idle,
        "--half-close",
        "2s",
    ]));
    let held = Held::open(server.addr, n);
    let established = held.established;
    // Every connection's deadline has passed by then, with room for lateness.
    std::thread::sleep(IDLE + Duration::from_secs(5));
    let records = held.release();
    let deltas: Vec<f64> = records
        .iter()
        .filter_map(|r| {
            let closed = r.closed?;
            let deadline = r.answered + IDLE;
            Some(if closed >= deadline {
                (closed - deadline).as_secs_f64() * 1e3
            } else {
                -((deadline - closed).as_secs_f64() * 1e3)
            })
        })
        .collect();
    let max_rtt_ms = records
        .iter()
        .map(|r| (r.answered - r.sent).as_secs_f64() * 1e3)
        .fold(0.0, f64::max);
    let mut sorted: Vec<u64> = deltas.iter().map(|d| (d.abs() * 1e3) as u64).collect();
    sorted.sort_unstable();
    eprintln!(
        "scale closing: {} established, {} closed by the server, |delta| p99 {} µs",
        established,
        deltas.len(),
        percentile(&sorted, 99.0)
    );
    Closing {
        established,
        deltas,
        max_rtt_ms,
    }
}
