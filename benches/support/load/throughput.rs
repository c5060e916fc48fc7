//! Throughput and latency under load: raw and hygiene servers side by side, rounds
//! alternating between them.

use std::fmt::Write as _;
use std::time::Duration;

use super::http::{Load, LoadResult, run_load};
use super::report::{Row, Section, Series};
use super::server::{Server, Spec, Variant};
use super::stats::{dur, median, thousands};

/// Connections of the closed-loop (saturating) rounds.
const CONNS: usize = 50;
/// The paced rounds run at this fraction of the slower variant's saturated rate.
const PACED_FRACTION: f64 = 0.5;
const WARMUP: Duration = Duration::from_millis(500);
const PERCENTILES: [f64; 7] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99];

/// The rounds of one mode: `results[variant][round]`.
struct Rounds {
    results: [Vec<LoadResult>; 2],
}

impl Rounds {
    fn play(servers: &[Server; 2], rounds: usize, load: Load, label: &str) -> Rounds {
        let mut results: [Vec<LoadResult>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            // ABBA order, so neither variant always goes first.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for v in order {
                let result = run_load(servers[v].addr, load);
                eprintln!(
                    "{label} round {round} {}: {:.0} rps, p50 {}, p99 {}, errors {}",
                    Variant::BOTH[v].name(),
                    result.rps(),
                    dur(result.percentile(50.0)),
                    dur(result.percentile(99.0)),
                    result.errors
                );
                results[v].push(result);
            }
        }
        Rounds { results }
    }

    /// The median over rounds of `f`, per variant, and the median of per-round ratios
    /// hygiene / raw.
    fn summary(&self, f: impl Fn(&LoadResult) -> f64) -> (f64, f64, f64) {
        let values = |v: usize| self.results[v].iter().map(&f).collect::<Vec<_>>();
        let (raw, hyg) = (values(0), values(1));
        let ratios: Vec<f64> = raw.iter().zip(&hyg).map(|(r, h)| h / r).collect();
        (median(&hyg), median(&raw), median(&ratios))
    }

    fn errors(&self, v: usize) -> u64 {
        self.results[v].iter().map(|r| r.errors).sum()
    }

    /// The median over the rounds of a variant of its `p`-th percentile latency, in
    /// microseconds (from the scheduled send, or from the actual send).
    fn median_percentile(&self, v: usize, p: f64, from_send: bool) -> f64 {
        let values: Vec<f64> = self.results[v]
            .iter()
            .map(|r| {
                us(if from_send {
                    r.service_percentile(p)
                } else {
                    r.percentile(p)
                })
            })
            .collect();
        median(&values)
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The `throughput` subcommand: `rounds` pairs of `seconds` each, closed loop then
/// paced.
pub(crate) fn run(rounds: usize, seconds: u64) -> Section {
    let servers = Variant::BOTH.map(|v| Server::start(&Spec::new(v).workers(1)));
    let duration = Duration::from_secs(seconds);
    let closed = Rounds::play(
        &servers,
        rounds,
        Load {
            conns: CONNS,
            warmup: WARMUP,
            duration,
            rate: None,
        },
        "closed",
    );
    let (hyg_rps, raw_rps, rps_ratio) = closed.summary(LoadResult::rps);
    let rate = (PACED_FRACTION * hyg_rps.min(raw_rps)).round();
    let paced = Rounds::play(
        &servers,
        rounds,
        Load {
            conns: CONNS,
            warmup: WARMUP,
            duration,
            rate: Some(rate),
        },
        "paced",
    );
    drop(servers);

    let mut section = Section::new("throughput", "2. Throughput and latency under load");
    section.rows.push(
        Row::new(format!(
            "throughput, {CONNS} keep-alive connections, closed loop (rps)"
        ))
        .values(thousands(hyg_rps), thousands(raw_rps))
        .ratio(rps_ratio)
        .target("≥ 0.98×", rps_ratio >= 0.98),
    );
    for (mode, rounds) in [
        ("closed loop", &closed),
        (&*format!("paced {} rps", thousands(rate)), &paced),
    ] {
        for p in [50.0, 99.0] {
            let (h, r, ratio) = rounds.summary(|res| us(res.percentile(p)));
            let mut row = Row::new(format!("p{p} latency, {mode}"))
                .values(format!("{h:.0} µs"), format!("{r:.0} µs"))
                .ratio(ratio);
            if p == 99.0 {
                row = row.target("≤ 1.05×", ratio <= 1.05);
            }
            section.rows.push(row);
        }
    }
    let (h, r, ratio) = paced.summary(|res| us(res.service_percentile(99.0)));
    section.rows.push(
        Row::new("p99 latency, paced, timed from the actual send")
            .values(format!("{h:.0} µs"), format!("{r:.0} µs"))
            .ratio(ratio)
            .target("≤ 1.05×", ratio <= 1.05),
    );
    let errors = [0, 1].map(|v| closed.errors(v) + paced.errors(v));
    section.rows.push(
        Row::new("failed requests, all rounds")
            .values(errors[1].to_string(), errors[0].to_string())
            .target("0", errors[1] == 0),
    );

    let _ = write!(
        section.details,
        "Method: both servers run at once (`demo_server` and `demo_server --raw`, one \
         tokio worker each: one core for the server, one for the client); the driver's \
         load generator (one thread, tokio current-thread runtime) sends `GET /` on \
         {CONNS} keep-alive connections. {rounds} round pairs of {seconds} s (after \
         {warm} ms warm-up), in ABBA order; each figure is the median over rounds, each \
         ratio the median of the per-pair ratios. Closed loop: each connection sends its \
         next request when the answer arrives (saturating). Paced: {rate} rps in total, \
         {frac}% of the slower variant's closed-loop median, on a fixed schedule; \
         latency counts from the scheduled send time (no coordinated omission; \
         it includes up to 1 ms of tokio timer rounding in the client), and is also \
         reported from the actual send.\n\n\
         | round | raw rps | hygiene rps | raw p99 | hygiene p99 | raw paced p99 | hygiene paced p99 |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
        warm = WARMUP.as_millis(),
        rate = thousands(rate),
        frac = PACED_FRACTION * 100.0,
    );
    for round in 0..rounds {
        let c = |v: usize| &closed.results[v][round];
        let p = |v: usize| &paced.results[v][round];
        let _ = writeln!(
            section.details,
            "| {round} | {} | {} | {} | {} | {} | {} |",
            thousands(c(0).rps()),
            thousands(c(1).rps()),
            dur(c(0).percentile(99.0)),
            dur(c(1).percentile(99.0)),
            dur(p(0).percentile(99.0)),
            dur(p(1).percentile(99.0)),
        );
    }
    let _ = write!(
        section.details,
        "\nPaced latency percentiles, median over the rounds (µs):\n\n\
         | percentile | raw | hygiene | raw, from send | hygiene, from send |\n\
         | --- | --- | --- | --- | --- |\n"
    );
    for p in PERCENTILES {
        let _ = writeln!(
            section.details,
            "| p{p} | {:.0} | {:.0} | {:.0} | {:.0} |",
            paced.median_percentile(0, p, false),
            paced.median_percentile(1, p, false),
            paced.median_percentile(0, p, true),
            paced.median_percentile(1, p, true),
        );
    }
    for (v, variant) in Variant::BOTH.into_iter().enumerate() {
        section.series.push(Series {
            name: format!("rps_{}", variant.name()),
            points: closed.results[v]
                .iter()
                .enumerate()
                .map(|(i, r)| (i as f64, r.rps()))
                .collect(),
        });
        section.series.push(Series {
            name: format!("paced_{}", variant.name()),
            points: PERCENTILES
                .iter()
                .map(|&p| (p, paced.median_percentile(v, p, false)))
                .collect(),
        });
    }
    section
}
