//! Sysctl doctor: reads the host's TCP tunables from `/proc/sys` and says
//! what each means for a server or client built on this crate.
//!
//! Most stuck-connection problems are application bugs (a `CLOSE_WAIT` is a
//! socket the application never closed; no sysctl removes it), so the advice
//! here is mostly "leave it, and set it per socket instead". Knobs that only
//! trade one risk for another say so.
//!
//! ```
//! use conn_hygiene::doctor::{Status, doctor};
//!
//! let report = doctor();
//! print!("{report}");
//! for f in report.findings().iter().filter(|f| f.status == Status::Review) {
//!     eprintln!("review {}: {}", f.name, f.advice);
//! }
//! ```
//!
//! One tunable is reported although no current kernel has it:
//! `net.ipv4.tcp_tw_recycle` was removed in Linux 4.12. Before that it
//! dropped SYNs from clients behind NAT (it compared TCP timestamps per source
//! IP across different hosts), so guides that recommend it are wrong.
//!
//! [`doctor`] blocks its thread (file reads and a census): see its `# Blocking`
//! section for calling it from async code.

use std::fmt;
use std::fs;

/// How a value looks for a server or client built on this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Fine as it is.
    Ok,
    /// Worth changing, or worth overriding per socket; see the advice.
    Review,
    /// The sysctl could not be read (not Linux, restricted `/proc/sys`, or an
    /// old kernel) although this crate expects it.
    Unavailable,
}

/// One sysctl and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// Dotted sysctl name, e.g. `net.ipv4.tcp_fin_timeout`.
    pub name: &'static str,
    /// The raw value (whitespace runs collapsed to one space); `None` when
    /// the file is absent or unreadable.
    pub value: Option<String>,
    /// What this value does to connections, concretely.
    pub meaning: String,
    /// What to do about it.
    pub advice: String,
    /// The verdict.
    pub status: Status,
}

/// The doctor's findings, one per sysctl; [`Display`](fmt::Display) renders
/// readable text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    findings: Vec<Finding>,
}

impl Report {
    /// Findings in a fixed order: FIN/keepalive timers, TIME_WAIT, listen
    /// queues, ports.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// The finding for a dotted sysctl name.
    ///
    /// ```
    /// let report = conn_hygiene::doctor::doctor();
    /// assert!(report.get("net.core.somaxconn").is_some());
    /// ```
    pub fn get(&self, name: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.name == name)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, x) in self.findings.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let status = match x.status {
                Status::Ok => "ok",
                Status::Review => "REVIEW",
                Status::Unavailable => "unavailable",
            };
            let value = x.value.as_deref().unwrap_or("(absent)");
            writeln!(f, "[{status}] {} = {value}", x.name)?;
            writeln!(f, "  means:  {}", x.meaning)?;
            writeln!(f, "  advice: {}", x.advice)?;
        }
        Ok(())
    }
}

/// Reads the TCP sysctls from `/proc/sys` and judges them.
///
/// Never fails: a sysctl that cannot be read becomes a
/// [`Status::Unavailable`] finding.
///
/// # Blocking
///
/// Reads about a dozen `/proc/sys` files and takes a host-wide
/// [census](crate::census::tcp_census) (for the `TIME_WAIT` count) on the caller's
/// thread. From async code, run it on tokio's blocking pool:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let report = tokio::task::spawn_blocking(conn_hygiene::doctor::doctor)
///     .await
///     .expect("the doctor does not panic");
/// # let _ = report;
/// # }
/// ```
///
/// ```
/// let report = conn_hygiene::doctor::doctor();
/// assert!(report.to_string().contains("net.ipv4.tcp_keepalive_time"));
/// ```
pub fn doctor() -> Report {
    let tw = crate::census::tcp_census(crate::census::Filter::All)
        .ok()
        .map(|c| c.get(crate::census::TcpState::TimeWait));
    diagnose(read_sysctl, tw)
}

fn read_sysctl(name: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    let raw = fs::read_to_string(path).ok()?;
    Some(raw.split_whitespace().collect::<Vec<_>>().join(" "))
}

// Pure core of `doctor`: `read` maps a dotted name to its value, `time_wait`
// is the host's current TIME_WAIT count if known.
fn diagnose(read: impl Fn(&str) -> Option<String>, time_wait: Option<usize>) -> Report {
    let num = |name: &str| read(name).and_then(|v| v.parse::<u64>().ok());
    let mut findings = Vec::new();
    let mut add = |name: &'static str, judge: &dyn Fn(u64) -> (Status, String, String)| {
        let value = read(name);
        let (status, meaning, advice) = match value.as_deref().map(str::parse::<u64>) {
            Some(Ok(v)) => judge(v),
            Some(Err(_)) => (
                Status::Unavailable,
                "value is not a number".to_owned(),
                "check the kernel documentation for this sysctl".to_owned(),
            ),
            None => unavailable(),
        };
        findings.push(Finding {
            name,
            value,
            meaning,
            advice,
            status,
        });
    };

    add("net.ipv4.tcp_fin_timeout", &|v| {
        let status = if v > 60 { Status::Review } else { Status::Ok };
        (
            status,
            format!(
                "after this side closes and the peer never sends its FIN, the orphaned \
                 socket stays in FIN_WAIT2 for {v} s. It does not shorten TIME_WAIT (fixed \
                 at 60 s in Linux) and cannot clear CLOSE_WAIT: only the application can"
            ),
            "60 (the default) or less; 15-30 helps when many peers vanish after our \
             close. Abandoned connections are reset by the crate and skip FIN_WAIT2"
                .to_owned(),
        )
    });

    let (ka_time, ka_intvl, ka_probes) = (
        num("net.ipv4.tcp_keepalive_time"),
        num("net.ipv4.tcp_keepalive_intvl"),
        num("net.ipv4.tcp_keepalive_probes"),
    );
    let detect = match (ka_time, ka_intvl, ka_probes) {
        (Some(t), Some(i), Some(p)) => {
            let total = t + i * p;
            format!(
                "a peer that vanished without FIN or RST is noticed after {t} + {i} x {p} \
                 = {total} s ({}), ",
                human(total)
            )
        }
        _ => String::new(),
    };
    add("net.ipv4.tcp_keepalive_time", &|v| {
        let status = if v > 600 { Status::Review } else { Status::Ok };
        (
            status,
            format!(
                "idle seconds before the first keepalive probe, on sockets that enable \
                 SO_KEEPALIVE at all; {detect}unless the crate's SocketOptions set \
                 keepalive per socket"
            ),
            "leave the host default and set keepalive per socket in SocketOptions (e.g. \
             60 s time, 10 s interval, 5 probes), plus TCP_USER_TIMEOUT for unacknowledged \
             data; the crate's idle timeouts bound silent connections regardless"
                .to_owned(),
        )
    });
    add("net.ipv4.tcp_keepalive_intvl", &|v| {
        (
            Status::Ok,
            format!("{v} s between unanswered keepalive probes"),
            "override per socket in SocketOptions rather than host-wide".to_owned(),
        )
    });
    add("net.ipv4.tcp_keepalive_probes", &|v| {
        (
            Status::Ok,
            format!("{v} unanswered keepalive probes before the kernel resets the connection"),
            "override per socket in SocketOptions rather than host-wide".to_owned(),
        )
    });

    add("net.ipv4.tcp_tw_reuse", &|v| {
        let mode = match v {
            0 => "off: an outbound connect() never reuses a TIME_WAIT 4-tuple",
            1 => {
                "on: outbound connect() may reuse a TIME_WAIT 4-tuple when timestamps \
                  make it safe"
            }
            2 => {
                "loopback only: outbound connect() to 127.0.0.0/8 or ::1 may reuse a \
                  TIME_WAIT 4-tuple"
            }
            _ => "unknown mode",
        };
        (
            Status::Ok,
            format!(
                "{mode}. Only clients are affected; it does nothing for a server's \
                 accepted sockets"
            ),
            "1 is safe (needs tcp_timestamps) for clients that open many short \
             connections to one upstream, but pooling connections is the real fix. A \
             server restarting over its own TIME_WAIT sockets needs SO_REUSEADDR \
             (SocketOptions' reuse_address), not this"
                .to_owned(),
        )
    });

    add("net.ipv4.tcp_tw_recycle", &|v| {
        if v == 0 {
            (
                Status::Ok,
                "off. This knob was removed in Linux 4.12".to_owned(),
                "keep it off; never enable it".to_owned(),
            )
        } else {
            (
                Status::Review,
                "on: SYNs whose TCP timestamp is older than the last one seen from the \
                 same IP are dropped, which silently breaks clients behind NAT"
                    .to_owned(),
                "set it to 0 (it was removed in Linux 4.12 for this reason)".to_owned(),
            )
        }
    });
    add("net.ipv4.tcp_max_tw_buckets", &|v| {
        let now = time_wait.map_or(String::new(), |n| format!(" ({n} now)"));
        let near = time_wait.is_some_and(|n| n as u64 * 5 > v * 4);
        (
            if near { Status::Review } else { Status::Ok },
            format!(
                "at most {v} TIME_WAIT sockets host-wide{now}; beyond that new ones are \
                 destroyed at once (\"time wait bucket table overflow\" in dmesg)"
            ),
            "do not lower it to hide TIME_WAIT, that drops TIME_WAIT's protection \
             against stale segments; have clients close first, or reuse connections"
                .to_owned(),
        )
    });

    add("net.ipv4.tcp_max_syn_backlog", &|v| {
        (
            if v < 1024 { Status::Review } else { Status::Ok },
            format!(
                "up to {v} half-open connections (SYN_RECV) queued per listener; the \
                 queue of completed connections waiting for accept() is capped \
                 separately by net.core.somaxconn"
            ),
            "1024 or more for servers that see connection bursts; with syncookies on, an \
             overflow degrades instead of dropping SYNs"
                .to_owned(),
        )
    });
    add("net.ipv4.tcp_syncookies", &|v| match v {
        1 => (
            Status::Ok,
            "SYN cookies are sent when a listener's SYN queue overflows, so a SYN \
             flood cannot lock legitimate clients out"
                .to_owned(),
            "keep 1".to_owned(),
        ),
        0 => (
            Status::Review,
            "off: a full SYN queue drops new SYNs, and clients wait for retransmits \
             (1 s, 3 s, 7 s...)"
                .to_owned(),
            "set 1".to_owned(),
        ),
        _ => (
            Status::Review,
            "cookies on every SYN, even without overflow; connections lose TCP \
             options the cookie cannot encode"
                .to_owned(),
            "set 1 unless testing".to_owned(),
        ),
    });
    add("net.ipv4.tcp_syn_retries", &|v| {
        // Initial RTO 1 s, doubling: retries n give up after 2^(n+1) - 1 s.
        let secs = 2u64.saturating_pow(v.min(62) as u32 + 1) - 1;
        (
            Status::Ok,
            format!(
                "connect() to a silent host gives up after {v} SYN retransmits, about \
                 {secs} s ({}), unless the client bounds connect with its own timeout",
                human(secs)
            ),
            "bound connect in code (the crate's connect phase timeout) instead of \
             lowering this; 2-3 is reasonable only for LAN-only hosts"
                .to_owned(),
        )
    });
    add("net.ipv4.tcp_orphan_retries", &|v| {
        let n = if v == 0 { 8 } else { v };
        (
            Status::Ok,
            format!(
                "after this side closes, the kernel retries an unacknowledged FIN or \
                 data {n} times (0 means 8) before dropping the orphaned socket \
                 (FIN_WAIT1); the crate's abandoned closes send RST and leave no orphan"
            ),
            "the default is fine; 3 frees memory sooner on servers whose clients \
             often vanish"
                .to_owned(),
        )
    });

    add("net.core.somaxconn", &|v| {
        (
            if v < 1024 { Status::Review } else { Status::Ok },
            format!(
                "caps every listen backlog at {v}: the backlog the crate's SocketOptions \
                 ask for is silently truncated to it. A full accept queue drops SYNs, \
                 clients retry after 1 s+, and a load balancer starts timing out"
            ),
            "4096 or more on servers (the default since Linux 5.4), and at least the \
             backlog set in SocketOptions"
                .to_owned(),
        )
    });
    add("net.core.netdev_max_backlog", &|v| {
        (
            Status::Ok,
            format!(
                "up to {v} received packets queued per CPU before the network stack takes \
                 them; unrelated to the listen backlog"
            ),
            "raise it only if the second column of /proc/net/softnet_stat (drops) grows".to_owned(),
        )
    });

    // The port range is two numbers, so it does not fit `add`.
    let name = "net.ipv4.ip_local_port_range";
    let value = read(name);
    let range = value.as_deref().and_then(|v| {
        let (lo, hi) = v.split_once(' ')?;
        Some((lo.parse::<u64>().ok()?, hi.parse::<u64>().ok()?))
    });
    let (status, meaning, advice) = match range {
        Some((lo, hi)) => {
            let n = (hi + 1).saturating_sub(lo);
            (
                if n < 10_000 {
                    Status::Review
                } else {
                    Status::Ok
                },
                format!(
                    "{n} ephemeral ports for outbound connections per destination \
                     address and port; a client that closes first keeps each port in \
                     TIME_WAIT for 60 s, so about {} new connections/s to one upstream \
                     exhaust it (EADDRNOTAVAIL)",
                    n / 60
                ),
                "reuse pooled connections; if still short, widen (e.g. 1024 65535, with \
                 listening ports in ip_local_reserved_ports) and consider tcp_tw_reuse=1"
                    .to_owned(),
            )
        }
        None => unavailable(),
    };
    findings.push(Finding {
        name,
        value,
        meaning,
        advice,
        status,
    });

    // Absent is the expected case on every kernel since 4.12.
    let recycle = findings
        .iter_mut()
        .find(|f| f.name == "net.ipv4.tcp_tw_recycle");
    if let Some(f) = recycle.filter(|f| f.value.is_none()) {
        f.status = Status::Ok;
        f.meaning = "removed in Linux 4.12; before that it dropped SYNs from clients \
                     behind NAT (per-IP timestamp check across different hosts)"
            .to_owned();
        f.advice = "nothing to do; ignore guides that recommend enabling it".to_owned();
    }

    Report { findings }
}

fn unavailable() -> (Status, String, String) {
    (
        Status::Unavailable,
        "not readable from /proc/sys here".to_owned(),
        "run on the Linux host (or in its network namespace) to check it".to_owned(),
    )
}

fn human(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn defaults_explain_keepalive_and_recycle() {
        let r = diagnose(
            fake(&[
                ("net.ipv4.tcp_keepalive_time", "7200"),
                ("net.ipv4.tcp_keepalive_intvl", "75"),
                ("net.ipv4.tcp_keepalive_probes", "9"),
                ("net.ipv4.ip_local_port_range", "32768 60999"),
                ("net.core.somaxconn", "128"),
            ]),
            Some(0),
        );
        let ka = r.get("net.ipv4.tcp_keepalive_time").unwrap();
        assert_eq!(ka.status, Status::Review);
        assert!(ka.meaning.contains("= 7875 s (2h11m)"), "{}", ka.meaning);
        let rec = r.get("net.ipv4.tcp_tw_recycle").unwrap();
        assert_eq!(rec.status, Status::Ok);
        assert!(rec.meaning.contains("4.12") && rec.meaning.contains("NAT"));
        assert_eq!(r.get("net.core.somaxconn").unwrap().status, Status::Review);
        let ports = r.get("net.ipv4.ip_local_port_range").unwrap();
        assert!(ports.meaning.starts_with("28232 ephemeral ports"));
        assert_eq!(
            r.get("net.ipv4.tcp_fin_timeout").unwrap().status,
            Status::Unavailable
        );
    }

    #[test]
    fn recycle_enabled_is_flagged() {
        let r = diagnose(fake(&[("net.ipv4.tcp_tw_recycle", "1")]), None);
        assert_eq!(
            r.get("net.ipv4.tcp_tw_recycle").unwrap().status,
            Status::Review
        );
    }

    #[test]
    fn syn_retries_time() {
        let r = diagnose(fake(&[("net.ipv4.tcp_syn_retries", "6")]), None);
        let f = r.get("net.ipv4.tcp_syn_retries").unwrap();
        assert!(f.meaning.contains("about 127 s"), "{}", f.meaning);
    }

    #[test]
    fn display_is_readable() {
        let r = diagnose(fake(&[("net.core.somaxconn", "4096")]), None);
        let text = r.to_string();
        assert!(text.contains("[ok] net.core.somaxconn = 4096\n  means:  caps"));
        assert!(text.contains("net.ipv4.tcp_fin_timeout = (absent)"));
    }
}
