//! Load, scale and storm benchmarks: what the hygiene costs next to the same server
//! without it, measured side by side in one run.
//!
//! ```text
//! cargo bench --all-features --bench load -- instructions   # 1a: callgrind instructions per request and message
//! cargo bench --all-features --bench load -- syscalls       # 1b: strace syscalls per request and connection
//! cargo bench --all-features --bench load -- throughput     # 2: rps and latency, alternating rounds
//! cargo bench --all-features --bench load -- scale          # 3: 10,000 idle keep-alive connections
//! cargo bench --all-features --bench load -- storm          # 5: 20,000 abrupt peers beside normal clients
//! cargo bench --all-features --bench load -- detection      # 4: runs `cargo bench --all-features --bench detection`
//! cargo bench --all-features --bench load -- report         # results.md and chart.svg from saved sections
//! cargo bench --all-features --bench load -- all            # every section, then report
//! cargo bench --all-features --bench load -- guard          # CI: fails on an HTTP/1.1 regression
//! ```
//!
//! The server is `examples/demo_server.rs` in its own process (the driver builds it in
//! release mode first): with `--raw` it is plain `axum::serve`, with `--hand-hardened`
//! the same routes go through what a careful user writes instead of this crate
//! (hyper-util's auto builder with `header_read_timeout` on a `TokioTimer`, HTTP/2
//! keep-alive PINGs, tower-http's `TimeoutLayer`, hyper-util's `GracefulShutdown`:
//! `examples/hardened/mod.rs`), and without either through `conn_hygiene::serve`. The
//! instructions, syscalls and throughput sections run the three in the same driver
//! run, alternating, against the same binary (scale and storm run raw and hygiene). Each subcommand prints its section and saves
//! it under `target/load-bench/`; `report` (and `all`) writes `benches/results.md` and
//! `benches/chart.svg` from the saved sections.
//!
//! `guard` is the CI's regression guard: the keep-alive HTTP/1.1 runs of
//! `instructions` (N = 2000 unless `--requests`) for the three servers; it prints the
//! figures and fails when hygiene ÷ raw exceeds 1.14× or hygiene ÷ hand-hardened
//! exceeds 0.90×. Nothing is saved.
//!
//! `instructions` measures three paths (and the cost of a connection), each as
//! (loaded − base) / N from two callgrind runs of a fresh server that differ only by N
//! units of work, with a per-function breakdown: keep-alive HTTP/1.1 `GET /` from a
//! blocking client in the driver (target ≤ 1.05× raw and ≤ 0.88× hand-hardened);
//! HTTP/2 `GET /` from the real `h2load` on one h2c connection with 10 streams in
//! flight (`-c 1 -m 10`, target ≤ 1.03×); WebSocket messages through the tunnel path
//! (`demo_server`'s `GET /ws` echo, a tokio-tungstenite client sending one small
//! message at a time, target ≤ 1.10×). N is `--requests` for all three.
//!
//! Options (after the subcommand): `--requests N` (profiled HTTP/1.1 and HTTP/2
//! requests and WebSocket messages, default 5000), `--conns K` (profiled connections,
//! 200), `--rounds R` (throughput round pairs, 7), `--seconds S` (per throughput round,
//! 3), `--connections C` (scale, 10000), `--idle-seconds S` (scale CPU window, 30),
//! `--peers P` (storm, 20000).
//!
//! Needs on the machine: `valgrind` (1a, with `callgrind_annotate`) and `h2load` (1a,
//! Debian package `nghttp2-client`), and `strace` (1b); a section whose tool is
//! missing fails at once, naming the package. Everything else is Rust. The scale and
//! storm sections raise `RLIMIT_NOFILE` to the hard limit (at least 20,000
//! descriptors are needed) by re-executing the driver under `sh -c 'ulimit -n …'`,
//! and the server is started the same way. All traffic is on loopback; every loop is
//! bounded in count and time.

#[path = "support/load/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::Instant;

use support::profile::{self, Plan};
use support::report::Section;

/// Options shared by the subcommands.
#[derive(Debug, Clone, Copy)]
struct Options {
    plan: Plan,
    rounds: usize,
    seconds: u64,
    connections: usize,
    idle_seconds: u64,
    peers: usize,
}

/// Keep-alive requests of the guard's loaded run: short, and far above callgrind's noise.
const GUARD_REQUESTS: usize = 2000;

const SECTIONS: [&str; 6] = [
    "instructions",
    "syscalls",
    "throughput",
    "scale",
    "detection",
    "storm",
];

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; drop it.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(command) = args.first().cloned() else {
        eprintln!(
            "usage: cargo bench --all-features --bench load -- <{}|report|all|guard> [options]",
            SECTIONS.join("|")
        );
        return ExitCode::from(2);
    };
    let options = match parse(&args[1..]) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("load: {error}");
            return ExitCode::from(2);
        }
    };
    if matches!(command.as_str(), "scale" | "storm" | "all")
        && let Some(code) = support::server::raise_nofile()
    {
        return code;
    }
    match command.as_str() {
        "all" => {
            let started = Instant::now();
            for name in SECTIONS {
                run_section(name, &options);
            }
            report();
            eprintln!("all done in {:.0} s", started.elapsed().as_secs_f64());
        }
        "report" => report(),
        "guard" => {
            let mut plan = options.plan;
            if !args.iter().any(|a| a == "--requests") {
                plan.requests = GUARD_REQUESTS;
            }
            if !profile::guard(plan) {
                return ExitCode::FAILURE;
            }
        }
        name if SECTIONS.contains(&name) => {
            if !run_section(name, &options) {
                return ExitCode::FAILURE;
            }
        }
        other => {
            eprintln!("load: unknown subcommand {other:?}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        plan: Plan {
            requests: 5000,
            conns: 200,
        },
        rounds: 7,
        seconds: 3,
        connections: 10_000,
        idle_seconds: 30,
        peers: 20_000,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value: u64 = args
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{flag} needs a number"))?;
        let n = value as usize;
        match flag.as_str() {
            "--requests" => options.plan.requests = n.max(1),
            "--conns" => options.plan.conns = n.max(2),
            "--rounds" => options.rounds = n.max(1),
            "--seconds" => options.seconds = value.max(1),
            "--connections" => options.connections = n.max(1),
            "--idle-seconds" => options.idle_seconds = value.max(1),
            "--peers" => options.peers = n,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(options)
}

/// Runs one section, prints and saves it. A section that panics is reported and the
/// others still run.
fn run_section(name: &str, options: &Options) -> bool {
    let started = Instant::now();
    eprintln!("== {name}");
    let options = *options;
    let name_owned = name.to_owned();
    let result = std::panic::catch_unwind(move || match name_owned.as_str() {
        "instructions" => Some(profile::instructions(options.plan)),
        "syscalls" => Some(profile::syscalls(options.plan)),
        "throughput" => Some(support::throughput::run(options.rounds, options.seconds)),
        "scale" => Some(support::scale::run(
            options.connections,
            options.idle_seconds,
        )),
        "storm" => Some(support::storm::run(options.peers)),
        "detection" => detection(),
        _ => unreachable!(),
    });
    match result {
        Ok(Some(section)) => {
            section.save();
            println!("{}", section.markdown());
            eprintln!("== {name} done in {:.0} s", started.elapsed().as_secs_f64());
            true
        }
        Ok(None) => false,
        Err(_) => {
            eprintln!(
                "== {name} FAILED after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            false
        }
    }
}

/// Section 4 belongs to `benches/detection.rs`: run it and keep what it prints.
fn detection() -> Option<Section> {
    let bench = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/detection.rs");
    if !std::path::Path::new(bench).exists() {
        eprintln!("benches/detection.rs is not there: skipped");
        return None;
    }
    let output = support::server::cargo()
        .args([
            "bench",
            "--quiet",
            // The features of `cargo bench --all-features --bench load`: nothing rebuilds.
            "--all-features",
            "--bench",
            "detection",
            "--manifest-path",
        ])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("run cargo bench --all-features --bench detection");
    if !output.status.success() {
        eprintln!(
            "cargo bench --all-features --bench detection failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    let mut section = Section::new(
        "detection",
        "4. Detection latency (from `cargo bench --all-features --bench detection`)",
    );
    section.details = format!(
        "Measured by `benches/detection.rs` (another bench; run by `all` and copied \
         verbatim):\n\n```text\n{}```\n",
        String::from_utf8_lossy(&output.stdout)
    );
    Some(section)
}

/// Writes `benches/results.md` and `benches/chart.svg` from the saved sections.
fn report() {
    let sections: Vec<Section> = SECTIONS
        .iter()
        .filter_map(|name| Section::load(name))
        .collect();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches");
    let markdown = support::report::results_markdown(&sections);
    std::fs::write(format!("{dir}/results.md"), markdown).expect("write results.md");
    support::chart::draw(&sections, &format!("{dir}/chart.svg"));
    eprintln!("wrote benches/results.md and benches/chart.svg");
}
