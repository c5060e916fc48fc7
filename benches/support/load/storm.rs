//! Storm: thousands of abrupt peers at full speed while normal clients keep going,
//! then a look at what the server has left: CLOSE_WAIT sockets and descriptors.
//!
//! The peers come from the crate's own kit, `conn_hygiene::testing::Peer`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant as StdInstant};

use conn_hygiene::census::TcpState;
use conn_hygiene::testing::{End, Peer, Side, port_census};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::http::{Load, LoadResult, generate, run_load, runtime};
use super::report::{Row, Section, Series};
use super::server::{Server, Spec, Variant, cpu_of};
use super::stats::{dur, percentile, thousands};

/// Abrupt peers alive at once.
const CONCURRENT: usize = 500;
/// A peer still open after this gives up and closes itself.
const HOLD: Duration = Duration::from_secs(4);
/// Normal clients: keep-alive connections and their total paced rate.
const NORMAL_CONNS: usize = 16;
const NORMAL_RATE: f64 = 2000.0;
const CALM: Duration = Duration::from_secs(6);
/// The storm's upper bound in time; it normally ends well before.
const STORM_CAP: Duration = Duration::from_secs(180);
/// How long the server may take to let go of everything after the storm.
const SETTLE: Duration = Duration::from_secs(30);
/// The server's clocks during the storm (the raw server ignores them).
const SERVER_ARGS: &[&str] = &[
    "--first-byte-timeout",
    "2s",
    "--header-timeout",
    "2s",
    "--idle-timeout",
    "5s",
    "--body-stall-timeout",
    "2s",
    "--write-stall-timeout",
    "2s",
    "--half-close",
    "1s",
];

const KINDS: [&str; 7] = [
    "fin_after_request",
    "rst_mid_request",
    "slowloris",
    "silent_connect",
    "garbage",
    "pipelined_then_fin",
    "never_read",
];

fn peer(kind: &str, addr: SocketAddr) -> Peer {
    match kind {
        // The handler is still busy when the FIN arrives.
        "fin_after_request" => Peer::fin_after_request(addr)
            .request(&b"GET /sleep/100 HTTP/1.1\r\nHost: storm\r\n\r\n"[..]),
        "rst_mid_request" => Peer::rst_mid_request(addr),
        "slowloris" => Peer::slowloris(addr),
        "silent_connect" => Peer::silent_connect(addr),
        "garbage" => Peer::garbage(addr),
        "pipelined_then_fin" => Peer::pipelined_then_fin(addr),
        // 16 MiB: far more than the socket buffers hold.
        "never_read" => Peer::never_read(addr)
            .request(&b"GET /big/16777216 HTTP/1.1\r\nHost: storm\r\n\r\n"[..]),
        _ => unreachable!("unknown kind {kind}"),
    }
}

/// How one peer's connection ended.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    kind: usize,
    /// "eof", "rst", "open" (gave up at HOLD), "dropped" (ended it itself), "connect", "error".
    end: &'static str,
    /// From connected to the end seen.
    lasted: Option<Duration>,
}

async fn play(kind: usize, addr: SocketAddr) -> Outcome {
    let started = Instant::now();
    let handle = match peer(KINDS[kind], addr).start().await {
        Ok(handle) => handle,
        Err(_) => {
            return Outcome {
                kind,
                end: "connect",
                lasted: None,
            };
        }
    };
    let response = handle.response_within(HOLD).await;
    let end = match response.end() {
        End::Eof => "eof",
        End::Reset => "rst",
        End::Open => "open",
        End::Dropped => "dropped",
        _ => "error",
    };
    Outcome {
        kind,
        end,
        lasted: response
            .ended_at()
            .map(|t| t.saturating_duration_since(started)),
    }
}

/// Runs `peers` abrupt peers, `CONCURRENT` at a time, on this thread.
fn storm(addr: SocketAddr, peers: usize) -> (Vec<Outcome>, Duration) {
    let started = StdInstant::now();
    let outcomes = runtime().block_on(async move {
        let slots = Arc::new(Semaphore::new(CONCURRENT));
        let deadline = Instant::now() + STORM_CAP;
        let mut tasks = Vec::with_capacity(peers);
        for i in 0..peers {
            if Instant::now() >= deadline {
                break;
            }
            let slot = slots.clone().acquire_owned().await.expect("semaphore");
            tasks.push(tokio::spawn(async move {
                let outcome = play(i % KINDS.len(), addr).await;
                drop(slot);
                outcome
            }));
        }
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            outcomes.push(task.await.expect("peer task"));
        }
        outcomes
    });
    (outcomes, started.elapsed())
}

/// What one variant went through.
struct Run {
    calm: LoadResult,
    stormy: LoadResult,
    outcomes: Vec<Outcome>,
    storm_time: Duration,
    base_fds: usize,
    peak_fds: usize,
    peak_close_wait: usize,
    /// Time after the storm until CLOSE_WAIT was 0 and the fds back to baseline.
    settled: Option<Duration>,
    final_fds: usize,
    final_close_wait: usize,
    final_census: String,
    /// CPU during the storm, % of a core: the server, the driver (all its clients).
    cpu: [f64; 2],
    /// The 1-minute load average when the storm ended.
    load_average: String,
}

fn normal(rate_duration: Duration) -> Load {
    Load {
        conns: NORMAL_CONNS,
        warmup: Duration::from_millis(500),
        duration: rate_duration,
        rate: Some(NORMAL_RATE),
    }
}

fn close_wait(port: u16) -> usize {
    port_census(port, Side::Local)
        .map(|c| c.get(TcpState::CloseWait))
        .unwrap_or(usize::MAX)
}

fn run_variant(variant: Variant, peers: usize) -> Run {
    let server = Server::start(&Spec::new(variant).args(SERVER_ARGS));
    let (addr, port) = (server.addr, server.port());
    std::thread::sleep(Duration::from_millis(200));
    let base_fds = server.fds();
    let calm = run_load(addr, normal(CALM));

    let stop = Arc::new(AtomicBool::new(false));
    let normal_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || runtime().block_on(generate(addr, normal(STORM_CAP), stop)))
    };
    // Let the normal clients settle in before the storm starts.
    std::thread::sleep(Duration::from_millis(700));
    let cpu_before = (server.cpu(), cpu_of(std::process::id()));
    let storm_thread = std::thread::spawn(move || storm(addr, peers));
    let (mut peak_fds, mut peak_close_wait) = (0, 0);
    let mut polls = 0u64;
    while !storm_thread.is_finished() {
        peak_fds = peak_fds.max(server.fds());
        // The census reads the whole socket table: not too often.
        if polls.is_multiple_of(10) {
            peak_close_wait = peak_close_wait.max(close_wait(port));
        }
        polls += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (outcomes, storm_time) = storm_thread.join().expect("storm thread");
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().next().unwrap_or("?").to_owned())
        .unwrap_or_default();
    let cpu = [
        server.cpu() - cpu_before.0,
        cpu_of(std::process::id()) - cpu_before.1,
    ]
    .map(|c| 100.0 * c.as_secs_f64() / storm_time.as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    let stormy = normal_thread.join().expect("normal clients");

    let after = StdInstant::now();
    let mut settled = None;
    while after.elapsed() < SETTLE {
        if close_wait(port) == 0 && server.fds() <= base_fds {
            settled = Some(after.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let final_census = port_census(port, Side::Local)
        .map(|c| c.to_string().trim().replace('\n', ", "))
        .unwrap_or_default();
    let run = Run {
        calm,
        stormy,
        outcomes,
        storm_time,
        base_fds,
        peak_fds,
        peak_close_wait,
        settled,
        final_fds: server.fds(),
        final_close_wait: close_wait(port),
        final_census,
        cpu,
        load_average,
    };
    eprintln!(
        "storm {}: {} peers in {:.1} s; normal p99 calm {} storm {} (from send: {} / {}), errors {}; peak fds {}, \
         settled {:?}, final fds {} (base {}), CLOSE_WAIT {}",
        variant.name(),
        run.outcomes.len(),
        run.storm_time.as_secs_f64(),
        dur(run.calm.percentile(99.0)),
        dur(run.stormy.percentile(99.0)),
        dur(run.calm.service_percentile(99.0)),
        dur(run.stormy.service_percentile(99.0)),
        run.stormy.errors,
        run.peak_fds,
        run.settled,
        run.final_fds,
        run.base_fds,
        run.final_close_wait
    );
    run
}

/// The `storm` subcommand.
pub(crate) fn run(peers: usize) -> Section {
    let runs = [
        run_variant(Variant::Raw, peers),
        run_variant(Variant::Hygiene, peers),
    ];
    let [raw, hyg] = &runs;
    let mut section = Section::new(
        "storm",
        &format!(
            "5. Storm: {} abrupt peers beside normal clients",
            thousands(peers as f64)
        ),
    );
    let error_rate = |r: &Run| {
        let total = r.stormy.ok + r.stormy.errors;
        100.0 * r.stormy.errors as f64 / total.max(1) as f64
    };
    section.rows.push(
        Row::new("normal clients' error rate during the storm")
            .values(
                format!(
                    "{:.3} % ({} of {})",
                    error_rate(hyg),
                    hyg.stormy.errors,
                    hyg.stormy.ok + hyg.stormy.errors
                ),
                format!(
                    "{:.3} % ({} of {})",
                    error_rate(raw),
                    raw.stormy.errors,
                    raw.stormy.ok + raw.stormy.errors
                ),
            )
            .target("0", hyg.stormy.errors == 0),
    );
    let p99 = |r: &LoadResult| r.percentile(99.0).as_secs_f64();
    let storm_ratio = |r: &Run| p99(&r.stormy) / p99(&r.calm);
    section.rows.push(
        Row::new("normal clients' p99 in the storm ÷ p99 calm")
            .values(
                format!(
                    "{:.2}× ({} vs {})",
                    storm_ratio(hyg),
                    dur(hyg.stormy.percentile(99.0)),
                    dur(hyg.calm.percentile(99.0))
                ),
                format!(
                    "{:.2}× ({} vs {})",
                    storm_ratio(raw),
                    dur(raw.stormy.percentile(99.0)),
                    dur(raw.calm.percentile(99.0))
                ),
            )
            .target("≤ 2×", storm_ratio(hyg) <= 2.0),
    );
    let service = |r: &LoadResult| r.service_percentile(99.0).as_secs_f64();
    let service_ratio = |r: &Run| service(&r.stormy) / service(&r.calm);
    section.rows.push(
        Row::new("the same, timed from the actual send (server + network only)").values(
            format!(
                "{:.2}× ({} vs {})",
                service_ratio(hyg),
                dur(hyg.stormy.service_percentile(99.0)),
                dur(hyg.calm.service_percentile(99.0))
            ),
            format!(
                "{:.2}× ({} vs {})",
                service_ratio(raw),
                dur(raw.stormy.service_percentile(99.0)),
                dur(raw.calm.service_percentile(99.0))
            ),
        ),
    );
    section.rows.push(
        Row::new("server CLOSE_WAIT sockets after the storm")
            .values(
                hyg.final_close_wait.to_string(),
                raw.final_close_wait.to_string(),
            )
            .target("0", hyg.final_close_wait == 0),
    );
    let settle = |r: &Run| match r.settled {
        Some(t) => format!("{} (back after {:.1} s)", r.final_fds, t.as_secs_f64()),
        None => format!("{} (not back within {} s)", r.final_fds, SETTLE.as_secs()),
    };
    section.rows.push(
        Row::new("server fds after the storm (baseline hygiene/raw)")
            .values(settle(hyg), settle(raw))
            .target(
                format!("= baseline ({} / {})", hyg.base_fds, raw.base_fds),
                hyg.final_fds <= hyg.base_fds,
            ),
    );
    section.rows.push(
        Row::new("server peak fds / peak CLOSE_WAIT during the storm").values(
            format!("{} / {}", hyg.peak_fds, hyg.peak_close_wait),
            format!("{} / {}", raw.peak_fds, raw.peak_close_wait),
        ),
    );
    section.rows.push(
        Row::new("CPU during the storm: server / driver with all clients (% of a core)").values(
            format!("{:.0} % / {:.0} %", hyg.cpu[0], hyg.cpu[1]),
            format!("{:.0} % / {:.0} %", raw.cpu[0], raw.cpu[1]),
        ),
    );
    section.rows.push(Row::new("storm duration (s)").values(
        format!("{:.1}", hyg.storm_time.as_secs_f64()),
        format!("{:.1}", raw.storm_time.as_secs_f64()),
    ));

    let _ = write!(
        section.details,
        "Method: one `demo_server` per variant with `{args}` (the raw server ignores \
         them), RLIMIT_NOFILE at the hard limit. Normal clients: {NORMAL_CONNS} keep-alive \
         connections sending `GET /` on a fixed schedule, {rate} rps in total, latency from \
         the scheduled time; first alone for {calm} s (calm), then throughout the storm \
         (its own thread and runtime). The storm: {peers} peers from \
         `conn_hygiene::testing::Peer`, kinds in rotation ({kinds}), at most {CONCURRENT} \
         at once, each started as soon as a slot frees (its own thread and runtime); a \
         peer that the server has not closed after {hold} s closes itself. \
         `fin_after_request` asks for `/sleep/100` (the handler is busy when the FIN \
         comes), `never_read` for 16 MiB. After the storm, the server's CLOSE_WAIT \
         sockets (census of its port, local side) and `/proc/PID/fd` are polled until \
         both are back (CLOSE_WAIT 0, fds at the pre-storm baseline), for at most {settle} s. \
         Final census of the server's port: hygiene `{hc}`; raw `{rc}`. The machine \
         has 2 cores shared by the server, the driver (storm and normal clients) and \
         other jobs: 1-minute load average at the end of the storm {lh} (hygiene run), \
         {lr} (raw run).\n\n\
         How each kind of peer ended (peer's view: `eof` = server FIN, `rst` = server \
         RST, `open` = still open at {hold} s so the peer closed it, `dropped` = the peer \
         reset it as scripted), and the median time from connect to that end:\n\n\
         | kind | hygiene | raw | hygiene p50 end | raw p50 end |\n| --- | --- | --- | --- | --- |\n",
        args = SERVER_ARGS.join(" "),
        rate = thousands(NORMAL_RATE),
        calm = CALM.as_secs(),
        kinds = KINDS.join(", "),
        hold = HOLD.as_secs(),
        settle = SETTLE.as_secs(),
        hc = hyg.final_census,
        rc = raw.final_census,
        lh = hyg.load_average,
        lr = raw.load_average,
    );
    for (k, kind) in KINDS.iter().enumerate() {
        let summary = |r: &Run| {
            let mut ends: BTreeMap<&str, usize> = BTreeMap::new();
            let mut lasted: Vec<u64> = Vec::new();
            for o in r.outcomes.iter().filter(|o| o.kind == k) {
                *ends.entry(o.end).or_default() += 1;
                if let Some(l) = o.lasted {
                    lasted.push(l.as_nanos() as u64);
                }
            }
            lasted.sort_unstable();
            let ends = ends
                .iter()
                .map(|(e, n)| format!("{e} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let p50 = if lasted.is_empty() {
                "—".to_owned()
            } else {
                dur(Duration::from_nanos(percentile(&lasted, 50.0)))
            };
            (ends, p50)
        };
        let (h, hl) = summary(hyg);
        let (r, rl) = summary(raw);
        let _ = writeln!(section.details, "| {kind} | {h} | {r} | {hl} | {rl} |");
    }
    let _ = writeln!(
        section.details,
        "\n| normal clients | hygiene calm | hygiene storm | raw calm | raw storm |\n| --- | --- | --- | --- | --- |"
    );
    for p in [50.0, 90.0, 99.0, 99.9] {
        let _ = writeln!(
            section.details,
            "| p{p} | {} | {} | {} | {} |",
            dur(hyg.calm.percentile(p)),
            dur(hyg.stormy.percentile(p)),
            dur(raw.calm.percentile(p)),
            dur(raw.stormy.percentile(p)),
        );
    }
    let _ = writeln!(
        section.details,
        "| requests (errors) | {} ({}) | {} ({}) | {} ({}) | {} ({}) |",
        hyg.calm.ok,
        hyg.calm.errors,
        hyg.stormy.ok,
        hyg.stormy.errors,
        raw.calm.ok,
        raw.calm.errors,
        raw.stormy.ok,
        raw.stormy.errors,
    );
    for (name, r) in [("hygiene", hyg), ("raw", raw)] {
        for (mode, load) in [("calm", &r.calm), ("storm", &r.stormy)] {
            section.series.push(Series {
                name: format!("storm_{name}_{mode}"),
                points: [50.0, 75.0, 90.0, 95.0, 99.0, 99.9]
                    .iter()
                    .map(|&p| (p, load.percentile(p).as_secs_f64() * 1e3))
                    .collect(),
            });
        }
    }
    section
}
