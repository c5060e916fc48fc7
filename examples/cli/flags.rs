//! The examples' one command-line parser. Each example lists its flags in one table,
//! one line per flag: the name, the value it takes, its help, and what it sets.
//! `--help` prints the table; an error names the flag and prints it too.
//!
//! lexopt splits the command line (`--flag value` or `--flag=value`, a value that
//! starts with a dash taken as given); the table decides the rest. A setter takes the
//! example's arguments by value and returns them, so it reads as a struct update:
//! `|a, v| Ok(Args { listen: parse(v)?, ..a })`.
#![allow(dead_code)] // each example uses some of the value parsers

use std::fmt::{Display, Write as _};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use conn_hygiene::HalfClose;

/// An example's command line: its name, what follows the name, and its flags.
pub(crate) struct Command<A: 'static> {
    /// The program's name, the prefix of its error messages.
    pub(crate) name: &'static str,
    /// What follows the name in the usage line, such as `[FLAGS]`.
    pub(crate) synopsis: &'static str,
    /// The flags, in the order `--help` lists them.
    pub(crate) flags: &'static [Flag<A>],
}

/// One flag: its name, the value it takes, one line of help, and its setter.
pub(crate) struct Flag<A> {
    name: &'static str,
    takes: Takes<A>,
    help: &'static str,
}

enum Takes<A> {
    Nothing(fn(A) -> A),
    Value(&'static str, fn(A, &str) -> Result<A, String>),
}

impl<A> Flag<A> {
    /// A flag without a value.
    pub(crate) const fn switch(name: &'static str, help: &'static str, set: fn(A) -> A) -> Self {
        Flag {
            name,
            takes: Takes::Nothing(set),
            help,
        }
    }

    /// A flag with a value, shown in the help as `value` (`DUR`, `N`, `ADDR`, …).
    pub(crate) const fn value(
        name: &'static str,
        value: &'static str,
        help: &'static str,
        set: fn(A, &str) -> Result<A, String>,
    ) -> Self {
        Flag {
            name,
            takes: Takes::Value(value, set),
            help,
        }
    }

    /// `--name VALUE`, as the help lists it.
    fn usage(&self) -> String {
        match self.takes {
            Takes::Nothing(_) => self.name.to_owned(),
            Takes::Value(value, _) => format!("{} {value}", self.name),
        }
    }
}

impl<A> Command<A> {
    /// Reads the process's command line into `args`, which hold the defaults. `--help`
    /// (or `-h`) prints the flags and exits.
    pub(crate) fn parse(&self, args: A) -> Result<A, String> {
        self.parse_from(args, lexopt::Parser::from_env())
    }

    fn parse_from(&self, mut args: A, mut parser: lexopt::Parser) -> Result<A, String> {
        use lexopt::Arg;
        while let Some(arg) = parser.next().map_err(|error| error.to_string())? {
            let name = match arg {
                Arg::Long("help") | Arg::Short('h') => {
                    print!("{}", self.help());
                    std::process::exit(0);
                }
                Arg::Long(name) => format!("--{name}"),
                Arg::Short(letter) => format!("-{letter}"),
                Arg::Value(value) => return Err(format!("unexpected argument {value:?}")),
            };
            let flag = self
                .flags
                .iter()
                .find(|flag| flag.name == name)
                .ok_or_else(|| format!("unknown flag {name}"))?;
            args = match flag.takes {
                Takes::Nothing(set) => set(args),
                Takes::Value(_, set) => {
                    let value = parser
                        .value()
                        .map_err(|_| format!("{name}: missing value"))?;
                    let value = value
                        .into_string()
                        .map_err(|value| format!("{name}: not UTF-8: {value:?}"))?;
                    set(args, &value).map_err(|error| format!("{name}: {error}"))?
                }
            };
        }
        Ok(args)
    }

    /// Prints the error and the flags to stderr: exit status 2.
    pub(crate) fn fail(&self, error: &str) -> ExitCode {
        eprintln!("{}: {error}", self.name);
        eprint!("{}", self.help());
        ExitCode::from(2)
    }

    /// The usage line and one line per flag, its help wrapped beside it.
    fn help(&self) -> String {
        const WIDTH: usize = 100;
        let column = self
            .flags
            .iter()
            .map(|flag| flag.usage().len() + 4)
            .max()
            .unwrap_or(4);
        let mut out = format!("usage: {} {}\n", self.name, self.synopsis);
        for flag in self.flags {
            let mut line = format!("  {:<width$}", flag.usage(), width = column - 2);
            for word in flag.help.split(' ') {
                if line.len() + word.len() >= WIDTH && line.len() > column {
                    writeln!(out, "{}", line.trim_end()).unwrap();
                    line = " ".repeat(column);
                }
                line.push_str(word);
                line.push(' ');
            }
            writeln!(out, "{}", line.trim_end()).unwrap();
        }
        out
    }
}

/// A value of any type that parses from a string (a number, an address, a path).
pub(crate) fn parse<T: FromStr>(value: &str) -> Result<T, String>
where
    T::Err: Display,
{
    value.parse().map_err(|error| format!("{error}: {value:?}"))
}

/// A duration such as `500ms`, `5s` or `1h`.
pub(crate) fn duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|error| format!("{error}: {value:?}"))
}

/// `off` (`None`) or a value.
pub(crate) fn off_or<T: FromStr>(value: &str) -> Result<Option<T>, String>
where
    T::Err: Display,
{
    if value == "off" {
        Ok(None)
    } else {
        parse(value).map(Some)
    }
}

/// `on` or `off`.
pub(crate) fn on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("on or off: {value:?}")),
    }
}

/// `abort`, `allow`, or a duration `DUR` for `AllowFor(DUR)`.
pub(crate) fn half_close(value: &str) -> Result<HalfClose, String> {
    match value {
        "abort" => Ok(HalfClose::Abort),
        "allow" => Ok(HalfClose::Allow),
        _ => duration(value).map(HalfClose::AllowFor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq)]
    struct Args {
        on: bool,
        wait: Option<Duration>,
    }

    const COMMAND: Command<Args> = Command {
        name: "test",
        synopsis: "[FLAGS]",
        flags: &[
            Flag::switch("--on", "a switch", |a| Args { on: true, ..a }),
            Flag::value("--wait", "DUR", "a duration", |a, v| {
                Ok(Args {
                    wait: Some(duration(v)?),
                    ..a
                })
            }),
        ],
    };

    fn run(argv: &[&str]) -> Result<Args, String> {
        COMMAND.parse_from(Args::default(), lexopt::Parser::from_args(argv))
    }

    #[test]
    fn flags_set_their_fields_in_both_spellings() {
        let expected = Args {
            on: true,
            wait: Some(Duration::from_millis(500)),
        };
        assert_eq!(run(&["--on", "--wait", "500ms"]), Ok(expected));
        let expected = Args {
            on: false,
            wait: Some(Duration::from_secs(2)),
        };
        assert_eq!(run(&["--wait=2s"]), Ok(expected));
    }

    #[test]
    fn errors_name_the_flag() {
        assert_eq!(run(&["--wait"]), Err("--wait: missing value".into()));
        assert_eq!(run(&["--nope"]), Err("unknown flag --nope".into()));
        assert!(
            run(&["--wait", "soon"])
                .unwrap_err()
                .starts_with("--wait: ")
        );
        assert!(run(&["stray"]).unwrap_err().contains("stray"));
    }

    #[test]
    fn help_lists_every_flag_on_its_line() {
        let help = COMMAND.help();
        assert_eq!(help.lines().count(), 3);
        assert!(help.contains("  --wait DUR  a duration"));
    }
}
