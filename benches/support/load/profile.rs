//! Per-request and per-connection cost under callgrind (instructions) and strace
//! (system calls).
//!
//! Each variant runs the same runs, in the same process layout (`demo_server`, one
//! tokio worker so that the counts do not depend on work stealing):
//!
//! - `base`: one connection, one HTTP/1.1 request, closed;
//! - `loaded`: one connection, 1 + N keep-alive HTTP/1.1 requests, closed;
//! - `conns`: K connections one after another, each one request, closed;
//! - `h2-base` and `h2-loaded` (callgrind only): `h2load` on one h2c connection, 10
//!   streams at a time, with 10 and 10 + N requests of `GET /`;
//! - `ws-base` and `ws-loaded` (callgrind only): one WebSocket to `/ws`, 10 and
//!   10 + N small messages, each sent after the echo of the one before.
//!
//! Startup, shutdown and the first connection are common to a base run and its loaded
//! run, so `(loaded - base) / N` is the cost of one keep-alive request (or message)
//! through the whole stack (epoll wakeup, read, parse, route, handler, write) and
//! `(conns - base) / (K - 1)` the cost of one connection with its single request.
//! The client waits until the server has closed every connection (its fd count is
//! back to where it started) before sending SIGTERM, so no run shuts down with work
//! in flight.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::http::BlockingClient;
use super::report::{self, Row, Section, Series};
use super::server::{Server, Spec, Variant, Wrap, work_dir};
use super::stats::thousands;
use super::{h2load, ws};

/// The sizes of the profiled runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Extra keep-alive requests in the `loaded` run (N).
    pub(crate) requests: usize,
    /// Connections in the `conns` run (K).
    pub(crate) conns: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Run {
    Base,
    Loaded,
    Conns,
    H2Base,
    H2Loaded,
    WsBase,
    WsLoaded,
    // Base and Loaded again, with the hygienic server's `Keep-Alive` header off.
    BareBase,
    BareLoaded,
}

impl Run {
    /// The HTTP/1.1 runs, which strace repeats.
    const HTTP1: [Run; 3] = [Run::Base, Run::Loaded, Run::Conns];
    const ALL: [Run; 9] = [
        Run::Base,
        Run::Loaded,
        Run::Conns,
        Run::H2Base,
        Run::H2Loaded,
        Run::WsBase,
        Run::WsLoaded,
        Run::BareBase,
        Run::BareLoaded,
    ];

    fn name(self) -> &'static str {
        match self {
            Run::Base => "base",
            Run::Loaded => "loaded",
            Run::Conns => "conns",
            Run::H2Base => "h2-base",
            Run::H2Loaded => "h2-loaded",
            Run::WsBase => "ws-base",
            Run::WsLoaded => "ws-loaded",
            Run::BareBase => "bare-base",
            Run::BareLoaded => "bare-loaded",
        }
    }
}

/// Requests (messages) of the HTTP/2 and WebSocket base runs: a few, one full window
/// of h2load's streams, so that the connection's start and end are in the base.
const FEW: usize = h2load::STREAMS;

/// Plays one run against a server started with `wrap`.
fn play(variant: Variant, wrap: Wrap, run: Run, plan: Plan) {
    let mut spec = Spec::new(variant)
        .workers(1)
        .args(&["--ws-read-buffer", ws::SERVER_READ_BUFFER])
        .wrap(wrap);
    if matches!(run, Run::BareBase | Run::BareLoaded) {
        // The raw server sends no such header: the flag changes only the hygienic one.
        spec = spec.args(&["--no-keep-alive-header"]);
    }
    let mut server = Server::start(&spec);
    let fds = server.fds();
    let addr = server.addr;
    match run {
        Run::Base | Run::BareBase => workload(addr, 1, 0),
        Run::Loaded | Run::BareLoaded => workload(addr, 1, plan.requests),
        Run::Conns => workload(addr, plan.conns, 0),
        Run::H2Base => h2load::get(addr, FEW),
        Run::H2Loaded => h2load::get(addr, FEW + plan.requests),
        Run::WsBase => ws::echo(addr, FEW),
        Run::WsLoaded => ws::echo(addr, FEW + plan.requests),
    }
    wait_for_fds(&server, fds);
    server.stop();
}

fn workload(addr: SocketAddr, conns: usize, extra: usize) {
    for c in 0..conns {
        let mut client = BlockingClient::connect(addr).expect("connect");
        let requests = if c == 0 { 1 + extra } else { 1 };
        for _ in 0..requests {
            assert_eq!(client.get().expect("request"), 200);
        }
    }
}

fn wait_for_fds(server: &Server, fds: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.fds() > fds {
        assert!(
            Instant::now() < deadline,
            "the server kept {} fds open (started with {fds})",
            server.fds()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the task that closed the last socket finish before the signal.
    std::thread::sleep(Duration::from_millis(200));
}

fn out_path(tool: &str, variant: Variant, run: Run) -> PathBuf {
    work_dir().join(format!("{tool}-{}-{}.out", variant.name(), run.name()))
}

/// Plays `runs` with the three variants under `tool`, alternating the variants.
fn run_all(
    tool: &str,
    plan: Plan,
    runs: &[Run],
    wrap: impl Fn(PathBuf) -> Wrap,
) -> HashMap<(usize, Run), PathBuf> {
    let mut outs = HashMap::new();
    for &run in runs {
        for (v, variant) in Variant::ALL.into_iter().enumerate() {
            let out = out_path(tool, variant, run);
            let _ = std::fs::remove_file(&out);
            let started = Instant::now();
            play(variant, wrap(out.clone()), run, plan);
            eprintln!(
                "{tool}: {} {} done in {:.1} s",
                variant.name(),
                run.name(),
                started.elapsed().as_secs_f64()
            );
            outs.insert((v, run), out);
        }
    }
    outs
}

/// One figure of the `instructions` section: what the `after` run did beyond the
/// `before` run, per unit, with its row and its per-function table.
struct Figure {
    metric: String,
    before: Run,
    after: Run,
    units: usize,
    /// The largest hygiene ÷ raw ratio that meets the target.
    target: Option<f64>,
    /// The largest hygiene ÷ hand-hardened ratio that meets the target.
    target_hardened: Option<f64>,
    table: String,
    /// Rows of the per-function table.
    top: usize,
}

/// HTTP/1.1 keep-alive `GET /`: the largest hygiene ÷ raw that meets the target.
const H1_TARGET: f64 = 1.05;
/// … and the largest hygiene ÷ hand-hardened.
const H1_TARGET_HARDENED: f64 = 0.88;
/// The CI guard's bounds on the same figure: a regression, not the target. Issue 23
/// asks for 1.12× raw and 1.00× hand-hardened. The guard measured 1.119× raw and
/// 0.873× hand-hardened on 2026-12-07 (15,628 / 13,963 / 17,903 per request, after
/// the end of a request stopped costing a second task poll); a bound of 1.12× would
/// leave less than the ~0.01 that a rebuild on the CI machine has drifted, so each
/// bound is about the measured figure plus 0.02–0.03, and only lowers from here.
const GUARD_RAW: f64 = 1.14;
const GUARD_HARDENED: f64 = 0.90;

/// The `guard` subcommand (CI): keep-alive HTTP/1.1 `GET /` under callgrind for the
/// three servers; false (and the figures printed) when hygiene ÷ raw exceeds
/// [`GUARD_RAW`] or hygiene ÷ hand-hardened exceeds [`GUARD_HARDENED`].
pub(crate) fn guard(plan: Plan) -> bool {
    require("valgrind", "valgrind");
    let outs = run_all("guard", plan, &[Run::Base, Run::Loaded], Wrap::Callgrind);
    let per_request = |v: usize| {
        (callgrind_total(&outs[&(v, Run::Loaded)]) as f64
            - callgrind_total(&outs[&(v, Run::Base)]) as f64)
            / plan.requests as f64
    };
    let [raw, hygiene, hardened] = [0, 1, 2].map(per_request);
    let (ratio, ratio_hardened) = (hygiene / raw, hygiene / hardened);
    let ok = ratio <= GUARD_RAW && ratio_hardened <= GUARD_HARDENED;
    println!(
        "guard: instructions per keep-alive HTTP/1.1 GET / (N = {}): hygiene {}, \
         hand-hardened {}, raw {}\n\
         guard: hygiene ÷ raw {ratio:.3}× (bound {GUARD_RAW:.2}×), hygiene ÷ hand-hardened \
         {ratio_hardened:.3}× (bound {GUARD_HARDENED:.2}×): {}",
        plan.requests,
        thousands(hygiene),
        thousands(hardened),
        thousands(raw),
        if ok { "ok" } else { "FAILED" },
    );
    ok
}

/// The `instructions` subcommand.
pub(crate) fn instructions(plan: Plan) -> Section {
    require("valgrind", "valgrind");
    require("callgrind_annotate", "valgrind");
    require("h2load", "nghttp2-client");
    let (n, k) = (plan.requests, plan.conns);
    let figures = [
        Figure {
            metric: "user-space instructions per keep-alive HTTP/1.1 `GET /`".into(),
            before: Run::Base,
            after: Run::Loaded,
            units: n,
            target: Some(H1_TARGET),
            target_hardened: Some(H1_TARGET_HARDENED),
            table: "Where the per-request instructions go (HTTP/1.1): self cost per \
                    request by function (callgrind_annotate, exclusive, generic \
                    instances merged by name), largest differences first"
                .into(),
            top: 25,
        },
        Figure {
            metric: "user-space instructions per connection (accept, 1 request, close)".into(),
            before: Run::Base,
            after: Run::Conns,
            units: k - 1,
            target: None,
            target_hardened: None,
            table: "Where the per-connection instructions go (same method, \
                    (conns − base) / (K − 1))"
                .into(),
            top: 25,
        },
        Figure {
            metric: format!(
                "user-space instructions per HTTP/2 `GET /` (h2load, 1 connection, {} streams)",
                h2load::STREAMS
            ),
            before: Run::H2Base,
            after: Run::H2Loaded,
            units: n,
            target: Some(1.03),
            target_hardened: None,
            table: "Where the per-request instructions go (HTTP/2, h2load): same method, \
                    (h2-loaded − h2-base) / N"
                .into(),
            top: 15,
        },
        Figure {
            metric: "user-space instructions per WebSocket message echoed (one at a time)".into(),
            before: Run::WsBase,
            after: Run::WsLoaded,
            units: n,
            target: Some(1.10),
            target_hardened: None,
            table: "Where the per-message instructions go (WebSocket echo, the tunnel \
                    path): same method, (ws-loaded − ws-base) / N"
                .into(),
            top: 15,
        },
        Figure {
            metric: "user-space instructions per keep-alive HTTP/1.1 `GET /` without the \
                     `Keep-Alive: timeout=N` header (`advertise_keep_alive(false)`)"
                .into(),
            before: Run::BareBase,
            after: Run::BareLoaded,
            units: n,
            target: None,
            target_hardened: None,
            table: "Where the per-request instructions go (HTTP/1.1, no `Keep-Alive` \
                    header): same method, (bare-loaded − bare-base) / N"
                .into(),
            top: 15,
        },
    ];
    let outs = run_all("callgrind", plan, &Run::ALL, Wrap::Callgrind);
    let totals: HashMap<(usize, Run), u64> = outs
        .iter()
        .map(|(&key, path)| (key, callgrind_total(path)))
        .collect();
    let functions: HashMap<(usize, Run), BTreeMap<String, f64>> = outs
        .iter()
        .map(|(&key, path)| (key, functions(path)))
        .collect();
    let mut section = Section::new(
        "instructions",
        "1a. Instructions per request and per message (callgrind)",
    );
    let mut series = [Vec::new(), Vec::new(), Vec::new()];
    let mut tables = String::new();
    for (i, figure) in figures.iter().enumerate() {
        let per_unit_total = |v: usize| {
            (totals[&(v, figure.after)] as f64 - totals[&(v, figure.before)] as f64)
                / figure.units as f64
        };
        let [raw, hygiene, hardened] = [0, 1, 2].map(per_unit_total);
        let ratio = hygiene / raw;
        let ratio_hardened = hygiene / hardened;
        let mut row = Row::new(figure.metric.as_str())
            .values(thousands(hygiene), thousands(raw))
            .ratio(ratio)
            .hardened(thousands(hardened), ratio_hardened);
        let mut targets = Vec::new();
        let mut met = true;
        if let Some(target) = figure.target {
            targets.push(format!("≤ {target:.2}× raw"));
            met &= ratio <= target;
        }
        if let Some(target) = figure.target_hardened {
            targets.push(format!("≤ {target:.2}× hand-hardened"));
            met &= ratio_hardened <= target;
        }
        if !targets.is_empty() {
            row = row.target(targets.join(", "), met);
        }
        section.rows.push(row);
        for (v, value) in [raw, hygiene, hardened].into_iter().enumerate() {
            series[v].push((i as f64, value));
        }
        let profiles: Vec<BTreeMap<String, f64>> = (0..3)
            .map(|v| {
                per_unit(
                    &functions[&(v, figure.after)],
                    &functions[&(v, figure.before)],
                    figure.units,
                )
            })
            .collect();
        tables += &profile_table(&figure.table, &profiles, figure.top);
    }
    for (variant, points) in Variant::ALL.into_iter().zip(series) {
        section.series.push(Series {
            name: format!("instructions_{}", variant.name()),
            points,
        });
    }
    let mut header = String::from("| variant |");
    let mut rule = String::from("| --- |");
    for run in Run::ALL {
        let _ = write!(header, " {} |", run.name());
        rule += " --- |";
    }
    let _ = write!(
        section.details,
        "Method: `demo_server` (one tokio worker, `RUST_LOG=warn`; `--raw`, \
         `--hand-hardened` or neither) under `valgrind \
         --tool=callgrind`; the clients run in the driver. Each run below starts a fresh \
         server: one connection with one HTTP/1.1 request (base), the same plus N = {n} \
         keep-alive requests (loaded), K = {k} sequential connections with one request \
         each (conns); `h2load -c 1 -m {streams} -n R` (h2c with prior knowledge, \
         `GET /`) with R = {few} (h2-base) and {few} + N (h2-loaded); one WebSocket to \
         `/ws` (tokio-tungstenite) echoing R {bytes}-byte text messages, each sent after \
         the echo of the one before, with R = {few} (ws-base) and {few} + N (ws-loaded), \
         the server's read buffer at `--ws-read-buffer {read_buffer}` as tungstenite \
         zeroes it before every read. Per HTTP/1.1 request = (loaded − base) / N; per \
         connection = (conns − base) / (K − 1); per HTTP/2 request = (h2-loaded − \
         h2-base) / N; per WebSocket message = (ws-loaded − ws-base) / N; bare-base and \
         bare-loaded repeat base and loaded with the hygienic server's `Keep-Alive` \
         header off (`--no-keep-alive-header`). Instruction \
         counts (Ir) are of the whole server process, all threads, user space only, on \
         {cpu} (glibc picks its memcpy and memset by processor, so compare counts from \
         one machine).\n\n\
         {header}\n{rule}\n",
        streams = h2load::STREAMS,
        few = FEW,
        bytes = ws::MESSAGE.len(),
        read_buffer = ws::SERVER_READ_BUFFER,
        cpu = report::cpu_model(),
    );
    for (v, variant) in Variant::ALL.into_iter().enumerate() {
        let _ = write!(section.details, "| {} |", variant.name());
        for run in Run::ALL {
            let _ = write!(
                section.details,
                " {} |",
                thousands(totals[&(v, run)] as f64)
            );
        }
        section.details += "\n";
    }
    section.details += "\n";
    section.details += &tables;
    section
}

fn profile_table(title: &str, profiles: &[BTreeMap<String, f64>], top: usize) -> String {
    let mut names: Vec<&String> = profiles[0].keys().chain(profiles[1].keys()).collect();
    names.sort();
    names.dedup();
    let diff = |name: &String| {
        profiles[1].get(name).copied().unwrap_or(0.0)
            - profiles[0].get(name).copied().unwrap_or(0.0)
    };
    names.sort_by(|a, b| diff(b).abs().total_cmp(&diff(a).abs()));
    let crate_total = |p: &BTreeMap<String, f64>| -> f64 {
        p.iter()
            .filter(|(n, _)| n.contains("conn_hygiene"))
            .map(|(_, v)| v)
            .sum()
    };
    let mut out = format!(
        "\n{title}. Functions of `conn_hygiene` itself: {} per unit in total.\n\n\
         | function | hygiene | raw | difference | hand-hardened |\n\
         | --- | --- | --- | --- | --- |\n",
        thousands(crate_total(&profiles[1]))
    );
    for name in names.into_iter().filter(|n| diff(n).abs() >= 5.0).take(top) {
        let get = |p: &BTreeMap<String, f64>| p.get(name).copied().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {:+.0} | {} |",
            short(name),
            thousands(get(&profiles[1])),
            thousands(get(&profiles[0])),
            diff(name),
            thousands(get(&profiles[2])),
        );
    }
    out
}

fn short(name: &str) -> String {
    const MAX: usize = 110;
    if name.chars().count() <= MAX {
        return name.replace('|', "\\|");
    }
    let tail: String = name.chars().skip(name.chars().count() - MAX).collect();
    format!("…{}", tail.replace('|', "\\|"))
}

fn per_unit(
    after: &BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
    units: usize,
) -> BTreeMap<String, f64> {
    after
        .keys()
        .chain(before.keys())
        .map(|name| {
            let a = after.get(name).copied().unwrap_or(0.0);
            let b = before.get(name).copied().unwrap_or(0.0);
            (name.clone(), (a - b) / units as f64)
        })
        .collect()
}

fn callgrind_total(path: &Path) -> u64 {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no totals in {}", path.display()))
}

/// Exclusive instructions per function, from `callgrind_annotate`.
fn functions(path: &Path) -> BTreeMap<String, f64> {
    let output = Command::new("callgrind_annotate")
        .args(["--inclusive=no", "--threshold=100"])
        .arg(path)
        .output()
        .expect("run callgrind_annotate");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim_start();
        let Some((count, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(count) = count.replace(',', "").parse::<f64>() else {
            continue;
        };
        // Newer versions print a percentage after the count.
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('(') {
            Some(r) => r.split_once(')').map_or(r, |(_, r)| r).trim_start(),
            None => rest,
        };
        if rest.starts_with("PROGRAM TOTALS") || rest.is_empty() {
            continue;
        }
        // "file:function [object]"
        let rest = rest.rsplit_once(" [").map_or(rest, |(f, _)| f);
        let function = rest.split_once(':').map_or(
            rest,
            |(file, f)| {
                if file.contains(' ') { rest } else { f }
            },
        );
        *map.entry(demangled_name(function)).or_insert(0.0) += count;
    }
    map
}

/// Drops a legacy Rust symbol hash (`::h0123456789abcdef`).
fn demangled_name(name: &str) -> String {
    match name.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            head.to_owned()
        }
        _ => name.to_owned(),
    }
}

/// The `syscalls` subcommand.
pub(crate) fn syscalls(plan: Plan) -> Section {
    require("strace", "strace");
    let outs = run_all("strace", plan, &Run::HTTP1, Wrap::Strace);
    let counts = |v: usize, run: Run| strace_counts(&outs[&(v, run)]);
    let mut per_request: Vec<BTreeMap<String, f64>> = Vec::new();
    let mut per_conn: Vec<BTreeMap<String, f64>> = Vec::new();
    for v in 0..3 {
        let base = counts(v, Run::Base);
        per_request.push(per_unit(&counts(v, Run::Loaded), &base, plan.requests));
        per_conn.push(per_unit(&counts(v, Run::Conns), &base, plan.conns - 1));
    }
    let sum = |m: &BTreeMap<String, f64>, io_only: bool| -> f64 {
        m.iter()
            .filter(|(name, _)| !io_only || is_io(name))
            .map(|(_, v)| v)
            .sum()
    };
    let mut section = Section::new(
        "syscalls",
        "1b. System calls per request and per connection (strace)",
    );
    let (raw_req, hyg_req) = (sum(&per_request[0], true), sum(&per_request[1], true));
    let (raw_conn, hyg_conn) = (sum(&per_conn[0], true), sum(&per_conn[1], true));
    let (peer_req, peer_conn) = (sum(&per_request[2], true), sum(&per_conn[2], true));
    let extra_req = hyg_req - raw_req;
    let extra_conn = hyg_conn - raw_conn;
    section.rows.push(
        Row::new("I/O syscalls per keep-alive request")
            .values(format!("{hyg_req:.2}"), format!("{raw_req:.2}"))
            .ratio(hyg_req / raw_req)
            .hardened(format!("{peer_req:.2}"), hyg_req / peer_req)
            .target(
                format!("0 extra (measured {extra_req:+.2})"),
                extra_req < 0.5,
            ),
    );
    section.rows.push(
        Row::new("I/O syscalls per connection (accept, 1 request, close)")
            .values(format!("{hyg_conn:.2}"), format!("{raw_conn:.2}"))
            .ratio(hyg_conn / raw_conn)
            .hardened(format!("{peer_conn:.2}"), hyg_conn / peer_conn)
            .target(
                format!("≤ 4 extra (measured {extra_conn:+.2})"),
                extra_conn <= 4.0,
            ),
    );
    section.rows.push(
        Row::new("all syscalls per keep-alive request (with futex, clock…)")
            .values(
                format!("{:.2}", sum(&per_request[1], false)),
                format!("{:.2}", sum(&per_request[0], false)),
            )
            .ratio(sum(&per_request[1], false) / sum(&per_request[0], false))
            .hardened(
                format!("{:.2}", sum(&per_request[2], false)),
                sum(&per_request[1], false) / sum(&per_request[2], false),
            ),
    );
    let _ = write!(
        section.details,
        "Method: the three HTTP/1.1 runs of 1a under `strace -f -c` (all threads) \
         instead of callgrind: N = {n} keep-alive requests, K = {k} connections. \"I/O\" \
         counts every socket and epoll call ({io}); a connection's figure includes its \
         one request.\n\n\
         | syscall | hygiene / request | raw / request | hand-hardened / request | \
         hygiene / connection | raw / connection | hand-hardened / connection |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
        n = plan.requests,
        k = plan.conns,
        io = IO.join(", "),
    );
    let mut names: Vec<&String> = per_request
        .iter()
        .chain(&per_conn)
        .flat_map(|m| m.keys())
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        let get = |m: &BTreeMap<String, f64>| m.get(name).copied().unwrap_or(0.0);
        let cells = [
            get(&per_request[1]),
            get(&per_request[0]),
            get(&per_request[2]),
            get(&per_conn[1]),
            get(&per_conn[0]),
            get(&per_conn[2]),
        ];
        if cells.iter().all(|c| c.abs() < 0.005) {
            continue;
        }
        let _ = writeln!(
            section.details,
            "| {name}{} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            if is_io(name) { "" } else { " (not I/O)" },
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5]
        );
    }
    section
}

const IO: &[&str] = &[
    "read",
    "write",
    "readv",
    "writev",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_ctl",
    "accept",
    "accept4",
    "close",
    "shutdown",
    "setsockopt",
    "getsockopt",
    "getsockname",
    "getpeername",
    "ioctl",
    "fcntl",
];

fn is_io(name: &str) -> bool {
    IO.contains(&name)
}

/// Calls per syscall from an `strace -c` summary.
fn strace_counts(path: &Path) -> BTreeMap<String, f64> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 || fields[0].starts_with('%') || fields[0].starts_with('-') {
            continue;
        }
        let name = fields[fields.len() - 1];
        if name == "total" {
            continue;
        }
        if let Ok(calls) = fields[3].parse::<f64>() {
            map.insert(name.to_owned(), calls);
        }
    }
    map
}

/// Fails the section at once, before any run, when `tool` is missing.
fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} not found: apt-get install {package} (see the module docs of benches/load.rs)"
    );
}
