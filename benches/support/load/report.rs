//! Sections of `benches/results.md`: each subcommand saves its own under
//! `target/load-bench/`, and `all` / `report` put them together with the chart.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use super::server::work_dir;

/// One line of a results table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) metric: String,
    pub(crate) hygiene: String,
    /// The hand-hardened hyper-util peer, "—" where the section does not run it.
    pub(crate) hardened: String,
    pub(crate) raw: String,
    pub(crate) ratio: String,
    /// hygiene ÷ hand-hardened.
    pub(crate) ratio_hardened: String,
    pub(crate) target: String,
    /// `None` when the metric has no target.
    pub(crate) met: Option<bool>,
}

impl Row {
    pub(crate) fn new(metric: impl Into<String>) -> Row {
        Row {
            metric: metric.into(),
            hygiene: "—".into(),
            hardened: "—".into(),
            raw: "—".into(),
            ratio: "—".into(),
            ratio_hardened: "—".into(),
            target: "—".into(),
            met: None,
        }
    }

    pub(crate) fn values(mut self, hygiene: impl Into<String>, raw: impl Into<String>) -> Row {
        self.hygiene = hygiene.into();
        self.raw = raw.into();
        self
    }

    pub(crate) fn ratio(mut self, ratio: f64) -> Row {
        self.ratio = format!("{ratio:.3}×");
        self
    }

    /// The hand-hardened peer's value and hygiene ÷ it.
    pub(crate) fn hardened(mut self, value: impl Into<String>, ratio: f64) -> Row {
        self.hardened = value.into();
        self.ratio_hardened = format!("{ratio:.3}×");
        self
    }

    pub(crate) fn target(mut self, target: impl Into<String>, met: bool) -> Row {
        self.target = target.into();
        self.met = Some(met);
        self
    }

    fn cells(&self) -> [String; 8] {
        let met = match self.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        [
            self.metric.clone(),
            self.hygiene.clone(),
            self.hardened.clone(),
            self.raw.clone(),
            self.ratio.clone(),
            self.ratio_hardened.clone(),
            self.target.clone(),
            met.to_owned(),
        ]
    }
}

/// A named series of points for the chart.
#[derive(Debug, Clone, Default)]
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) points: Vec<(f64, f64)>,
}

/// What one subcommand measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Section {
    pub(crate) name: String,
    pub(crate) title: String,
    pub(crate) rows: Vec<Row>,
    /// Markdown: method, conditions and detail tables.
    pub(crate) details: String,
    pub(crate) series: Vec<Series>,
}

pub(crate) const HEADER: &str = "| metric | hygiene | hand-hardened | raw | hygiene ÷ raw | \
     hygiene ÷ hand-hardened | target | met? |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n";

pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = String::from(HEADER);
    for row in rows {
        let cells = row.cells();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

impl Section {
    pub(crate) fn new(name: &str, title: &str) -> Section {
        Section {
            name: name.to_owned(),
            title: title.to_owned(),
            ..Section::default()
        }
    }

    pub(crate) fn markdown(&self) -> String {
        let table = if self.rows.is_empty() {
            String::new()
        } else {
            format!("{}\n", table(&self.rows))
        };
        format!("## {}\n\n{table}{}\n", self.title, self.details)
    }

    fn path(name: &str, ext: &str) -> PathBuf {
        work_dir().join(format!("{name}.{ext}"))
    }

    /// Saves the section under `target/load-bench/` for a later `report`.
    pub(crate) fn save(&self) {
        let mut rows = String::new();
        for row in &self.rows {
            let mut cells = row.cells().to_vec();
            cells[7] = match row.met {
                Some(true) => "1".into(),
                Some(false) => "0".into(),
                None => "-".into(),
            };
            let _ = writeln!(rows, "{}", cells.join("\t"));
        }
        let mut series = String::new();
        for s in &self.series {
            for (x, y) in &s.points {
                let _ = writeln!(series, "{}\t{x}\t{y}", s.name);
            }
        }
        let write = |ext: &str, text: &str| {
            fs::write(Section::path(&self.name, ext), text).expect("save section");
        };
        write("title", &self.title);
        write("rows", &rows);
        write("details", &self.details);
        write("series", &series);
    }

    /// The section last saved by `name`'s subcommand, if any.
    pub(crate) fn load(name: &str) -> Option<Section> {
        let read = |ext: &str| fs::read_to_string(Section::path(name, ext)).ok();
        let title = read("title")?;
        let rows = read("rows")?
            .lines()
            .map(|line| {
                let mut c: Vec<&str> = line.split('\t').collect();
                if c.len() == 6 {
                    // Saved before the hand-hardened peer: no values of its own.
                    c.insert(2, "—");
                    c.insert(5, "—");
                }
                Row {
                    metric: c[0].into(),
                    hygiene: c[1].into(),
                    hardened: c[2].into(),
                    raw: c[3].into(),
                    ratio: c[4].into(),
                    ratio_hardened: c[5].into(),
                    target: c[6].into(),
                    met: match c[7] {
                        "1" => Some(true),
                        "0" => Some(false),
                        _ => None,
                    },
                }
            })
            .collect();
        let mut series: Vec<Series> = Vec::new();
        for line in read("series").unwrap_or_default().lines() {
            let c: Vec<&str> = line.split('\t').collect();
            let point = (c[1].parse().unwrap_or(0.0), c[2].parse().unwrap_or(0.0));
            match series.iter_mut().find(|s| s.name == c[0]) {
                Some(s) => s.points.push(point),
                None => series.push(Series {
                    name: c[0].into(),
                    points: vec![point],
                }),
            }
        }
        Some(Section {
            name: name.to_owned(),
            title,
            rows,
            details: read("details").unwrap_or_default(),
            series,
        })
    }
}

/// The whole `benches/results.md`.
pub(crate) fn results_markdown(sections: &[Section]) -> String {
    let mut out = String::from(
        "# Load, scale and storm benchmarks\n\n\
         Generated by `cargo bench --all-features --bench load -- all` (or `-- report` from the sections \
         saved by the single subcommands); do not edit by hand. Chart: \
         [`chart.svg`](chart.svg).\n\n",
    );
    let _ = writeln!(out, "Machine: {}\n", machine());
    out += "## Summary\n\n";
    let rows: Vec<Row> = sections
        .iter()
        .flat_map(|s| s.rows.iter().cloned())
        .collect();
    out += &table(&rows);
    out += "\n";
    for section in sections {
        out += &section.markdown();
        out += "\n";
    }
    out
}

/// What `sh -c cmd` prints, trimmed; empty if it fails.
fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The processor's model name.
pub(crate) fn cpu_model() -> String {
    sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'")
}

fn machine() -> String {
    format!(
        "{} cores ({}), Linux {}, {}, {}. The machine was shared with other jobs \
         while these ran: wall-clock figures come from alternating rounds, costs from \
         instruction and syscall counts.",
        sh("nproc"),
        cpu_model(),
        sh("uname -r"),
        sh("rustc --version"),
        sh("date -u +%Y-%m-%d"),
    )
}
