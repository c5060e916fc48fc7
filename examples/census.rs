//! TCP state counts, like `netstat -n | awk '/^tcp/ {++S[$NF]} END {...}'`.
//!
//! ```text
//! cargo run --features census --example census -- [--port P | --pid N] [--json] [--doctor]
//! ```
//!
//! Prints `STATE COUNT` lines (or one JSON object with `--json`), most
//! populated state first; `--doctor` adds the sysctl report.

use conn_hygiene::census::{Filter, tcp_census};
use conn_hygiene::doctor::doctor;
use std::process::ExitCode;

const USAGE: &str = "usage: census [--port P | --pid N] [--json] [--doctor]";

struct Args {
    filter: Filter,
    json: bool,
    doctor: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut out = Args {
        filter: Filter::All,
        json: false,
        doctor: false,
    };
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().ok_or_else(|| format!("{arg} needs a {what}"));
        let filter = match arg.as_str() {
            "--json" => {
                out.json = true;
                continue;
            }
            "--doctor" => {
                out.doctor = true;
                continue;
            }
            "--port" => {
                let v = value("port number")?;
                Filter::Port(v.parse().map_err(|_| format!("--port: bad port {v:?}"))?)
            }
            "--pid" => {
                let v = value("process id")?;
                Filter::Pid(v.parse().map_err(|_| format!("--pid: bad pid {v:?}"))?)
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        };
        if out.filter != Filter::All {
            return Err(format!("{arg}: give only one of --port and --pid"));
        }
        out.filter = filter;
    }
    Ok(out)
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("census: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let census = match tcp_census(args.filter) {
        Ok(census) => census,
        Err(e) => {
            eprintln!("census: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        // State names are plain ASCII: no escaping needed.
        let fields: Vec<String> = census
            .iter()
            .map(|(s, n)| format!("\"{s}\": {n}"))
            .collect();
        println!("{{{}}}", fields.join(", "));
    } else {
        print!("{census}");
    }
    if args.doctor {
        println!();
        print!("{}", doctor());
    }
    ExitCode::SUCCESS
}
