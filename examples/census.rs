//! TCP state counts, like `netstat -n | awk '/^tcp/ {++S[$NF]} END {...}'`.
//!
//! ```text
//! cargo run --features census,serde --example census -- [--port P | --pid N] [--json] [--doctor]
//! ```
//!
//! Prints `STATE COUNT` lines (or one JSON object with `--json`, through the census's
//! `serde` form), most populated state first; `--doctor` adds the sysctl report.
//! `--help` lists the flags.

mod cli;

use cli::flags::{Command, Flag, parse};
use conn_hygiene::census::{Filter, tcp_census};
use conn_hygiene::doctor::doctor;
use std::process::ExitCode;

struct Args {
    filter: Filter,
    json: bool,
    doctor: bool,
}

#[rustfmt::skip]
const COMMAND: Command<Args> = Command {
    name: "census",
    synopsis: "[--port P | --pid N] [--json] [--doctor]",
    flags: &[
        Flag::value("--port", "P", "count the sockets of this local or remote port", |a, v| only_one(a, Filter::Port(parse(v)?))),
        Flag::value("--pid", "N", "count the sockets of this process", |a, v| only_one(a, Filter::Pid(parse(v)?))),
        Flag::switch("--json", "one JSON object of the non-empty states' counts", |a| Args { json: true, ..a }),
        Flag::switch("--doctor", "add the sysctls that matter, with advice", |a| Args { doctor: true, ..a }),
    ],
};

/// Sets the filter, which `--port` and `--pid` share.
fn only_one(args: Args, filter: Filter) -> Result<Args, String> {
    if args.filter != Filter::All {
        return Err("give only one of --port and --pid".into());
    }
    Ok(Args { filter, ..args })
}

fn main() -> ExitCode {
    let defaults = Args {
        filter: Filter::All,
        json: false,
        doctor: false,
    };
    let args = match COMMAND.parse(defaults) {
        Ok(args) => args,
        Err(error) => return COMMAND.fail(&error),
    };
    let census = match tcp_census(args.filter) {
        Ok(census) => census,
        Err(e) => {
            eprintln!("census: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&census).expect("a census serializes")
        );
    } else {
        print!("{census}");
    }
    if args.doctor {
        println!();
        print!("{}", doctor());
    }
    ExitCode::SUCCESS
}
