//! Throughput and latency under load: raw, hygiene and hand-hardened servers side by
//! side, rounds alternating between them.

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
    results: [Vec<LoadResult>; 3],
}

/// hygiene, raw and hand-hardened medians, and the medians of the per-round ratios
/// hygiene ÷ raw and hygiene ÷ hand-hardened.
struct Summary {
    hygiene: f64,
    raw: f64,
    hardened: f64,
    ratio: f64,
    ratio_hardened: f64,
}

impl Summary {
    /// A row of these figures, each shown by `show`.
    fn row(&self, metric: String, show: impl Fn(f64) -> String) -> Row {
        Row::new(metric)
            .values(show(self.hygiene), show(self.raw))
            .ratio(self.ratio)
            .hardened(show(self.hardened), self.ratio_hardened)
    }
}

impl Rounds {
    fn play(servers: &[Server; 3], rounds: usize, load: Load, label: &str) -> Rounds {
        let mut results: [Vec<LoadResult>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for round in 0..rounds {
            // The order rotates, so no variant always goes first.
            for i in 0..3 {
                let v = (round + i) % 3;
                let result = run_load(servers[v].addr, load);
                eprintln!(
                    "{label} round {round} {}: {:.0} rps, p50 {}, p99 {}, errors {}",
                    Variant::ALL[v].name(),
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

    /// The median over rounds of `f`, per variant, and the medians of per-round ratios.
    fn summary(&self, f: impl Fn(&LoadResult) -> f64) -> Summary {
        let values = |v: usize| self.results[v].iter().map(&f).collect::<Vec<_>>();
        let [raw, hyg, peer] = [0, 1, 2].map(values);
        let ratios = |of: &[f64]| -> f64 {
            median(&of.iter().zip(&hyg).map(|(o, h)| h / o).collect::<Vec<_>>())
        };
        Summary {
            hygiene: median(&hyg),
            raw: median(&raw),
            hardened: median(&peer),
            ratio: ratios(&raw),
            ratio_hardened: ratios(&peer),
        }
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

fn micros(us: f64) -> String {
    format!("{us:.0} µs")
}

/// The `throughput` subcommand: `rounds` pairs of `seconds` each, closed loop then
/// paced.
pub(crate) fn run(rounds: usize, seconds: u64) -> Section {
    let servers = Variant::ALL.map(|v| Server::start(&Spec::new(v).workers(1)));
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
    let rps = closed.summary(LoadResult::rps);
    let rate = (PACED_FRACTION * rps.hygiene.min(rps.raw).min(rps.hardened)).round();
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
        rps.row(
            format!("throughput, {CONNS} keep-alive connections, closed loop (rps)"),
            thousands,
        )
        .target("≥ 0.98×", rps.ratio >= 0.98),
    );
    for (mode, rounds) in [
        ("closed loop", &closed),
        (&*format!("paced {} rps", thousands(rate)), &paced),
    ] {
        for p in [50.0, 99.0] {
            let latency = rounds.summary(|res| us(res.percentile(p)));
            let mut row = latency.row(format!("p{p} latency, {mode}"), micros);
            if p == 99.0 {
                row = row.target("≤ 1.05×", latency.ratio <= 1.05);
            }
            section.rows.push(row);
        }
    }
    let latency = paced.summary(|res| us(res.service_percentile(99.0)));
    section.rows.push(
        latency
            .row(
                "p99 latency, paced, timed from the actual send".into(),
                micros,
            )
            .target("≤ 1.05×", latency.ratio <= 1.05),
    );
    let errors = [0, 1, 2].map(|v| closed.errors(v) + paced.errors(v));
    let mut row = Row::new("failed requests, all rounds")
        .values(errors[1].to_string(), errors[0].to_string())
        .target("0", errors[1] == 0);
    row.hardened = errors[2].to_string();
    section.rows.push(row);

    let _ = write!(
        section.details,
        "Method: the three servers run at once (`demo_server`, `demo_server --raw` and \
         `demo_server --hand-hardened`, one tokio worker each: one core for the server, one for the client); the driver's \
         load generator (one thread, tokio current-thread runtime) sends `GET /` on \
         {CONNS} keep-alive connections. {rounds} rounds of {seconds} s per server (after \
         {warm} ms warm-up), the order rotating; each figure is the median over rounds, each \
         ratio the median of the per-round ratios. Closed loop: each connection sends its \
         next request when the answer arrives (saturating). Paced: {rate} rps in total, \
         {frac}% of the slowest variant's closed-loop median, on a fixed schedule; \
         latency counts from the scheduled send time (no coordinated omission; \
         it includes up to 1 ms of tokio timer rounding in the client), and is also \
         reported from the actual send.\n\n\
         | round | raw rps | hygiene rps | hand-hardened rps | raw p99 | hygiene p99 | \
         hand-hardened p99 | raw paced p99 | hygiene paced p99 | hand-hardened paced p99 |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        warm = WARMUP.as_millis(),
        rate = thousands(rate),
        frac = PACED_FRACTION * 100.0,
    );
    for round in 0..rounds {
        let c = |v: usize| &closed.results[v][round];
        let p = |v: usize| &paced.results[v][round];
        let _ = writeln!(
            section.details,
            "| {round} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            thousands(c(0).rps()),
            thousands(c(1).rps()),
            thousands(c(2).rps()),
            dur(c(0).percentile(99.0)),
            dur(c(1).percentile(99.0)),
            dur(c(2).percentile(99.0)),
            dur(p(0).percentile(99.0)),
            dur(p(1).percentile(99.0)),
            dur(p(2).percentile(99.0)),
        );
    }
    let _ = write!(
        section.details,
        "\nPaced latency percentiles, median over the rounds (µs):\n\n\
         | percentile | raw | hygiene | hand-hardened | raw, from send | hygiene, from send | \
         hand-hardened, from send |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n"
    );
    for p in PERCENTILES {
        let _ = writeln!(
            section.details,
            "| p{p} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            paced.median_percentile(0, p, false),
            paced.median_percentile(1, p, false),
            paced.median_percentile(2, p, false),
            paced.median_percentile(0, p, true),
            paced.median_percentile(1, p, true),
            paced.median_percentile(2, p, true),
        );
    }
    for (v, variant) in Variant::ALL.into_iter().enumerate() {
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
