//! Kernel TCP census against real loopback sockets, cross-checked with `ss`.
#![cfg(feature = "census")]

use conn_hygiene::census::{Census, TcpState};

#[test]
fn display_is_state_count_lines_by_count_then_name() {
    use TcpState::*;
    let census: Census = [
        TimeWait,
        CloseWait,
        Established,
        CloseWait,
        TimeWait,
        Established,
    ]
    .into_iter()
    .chain([Established, Listen])
    .collect();
    assert_eq!(
        census.to_string(),
        "ESTABLISHED 3\nCLOSE_WAIT 2\nTIME_WAIT 2\nLISTEN 1\n"
    );
    assert_eq!(census.total(), 8);
    assert_eq!(census.get(FinWait2), 0);
    assert_eq!(Census::default().to_string(), "");
}

#[test]
fn netstat_spelling() {
    let names: Vec<_> = TcpState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "ESTABLISHED",
            "SYN_SENT",
            "SYN_RECV",
            "FIN_WAIT1",
            "FIN_WAIT2",
            "TIME_WAIT",
            "CLOSE",
            "CLOSE_WAIT",
            "LAST_ACK",
            "LISTEN",
            "CLOSING",
            "NEW_SYN_RECV",
        ]
    );
}

#[cfg(target_os = "linux")]
mod kernel {
    use conn_hygiene::census::{Census, Filter, TcpState, sockets, tcp_census};
    use conn_hygiene::doctor::{Status, doctor};
    use std::collections::{BTreeMap, HashSet};
    use std::io;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::process::Command;
    use std::thread::sleep;
    use std::time::{Duration, Instant};

    const ESTABLISHED_PAIRS: usize = 2;
    const CLOSE_WAIT: usize = 3;
    const TIME_WAIT: usize = 2;

    /// Sockets scripted into known states on a port of their own; dropping it
    /// closes everything but the TIME_WAIT sockets.
    struct Scene {
        port: u16,
        _listener: TcpListener,
        _held: Vec<TcpStream>,
    }

    /// A listener on a port with no other sockets (no TIME_WAIT left over).
    fn fresh_listener() -> (TcpListener, u16) {
        for _ in 0..20 {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            if tcp_census(Filter::Port(port)).unwrap().total() == 1 {
                return (l, port);
            }
        }
        panic!("no port without leftover sockets after 20 tries");
    }

    fn scene() -> Scene {
        let (listener, port) = fresh_listener();
        let addr = listener.local_addr().unwrap();
        let pair = || {
            let client = TcpStream::connect(addr).unwrap();
            let (server, _) = listener.accept().unwrap();
            (client, server)
        };
        let mut held = Vec::new();
        for _ in 0..ESTABLISHED_PAIRS {
            let (c, s) = pair();
            held.extend([c, s]);
        }
        // The client half-closes, the server never closes: the bug the crate
        // exists for. Server side CLOSE_WAIT, client side FIN_WAIT2 (the client
        // keeps its socket, so it is not an orphan on a fin_timeout clock).
        for _ in 0..CLOSE_WAIT {
            let (c, s) = pair();
            c.shutdown(Shutdown::Write).unwrap();
            held.extend([c, s]);
        }
        // The server closes first, then the client answers with its own
        // close: the server's socket ends in TIME_WAIT, the client's is gone.
        for _ in 0..TIME_WAIT {
            let (c, s) = pair();
            drop(s);
            wait_for(|| sockets_of(&c).contains(&TcpState::CloseWait));
            drop(c);
        }
        let scene = Scene {
            port,
            _listener: listener,
            _held: held,
        };
        wait_for(|| tcp_census(Filter::Port(port)).unwrap() == expected());
        scene
    }

    fn expected() -> Census {
        use TcpState::*;
        std::iter::once(Listen)
            .chain([Established; 2 * ESTABLISHED_PAIRS])
            .chain([CloseWait; CLOSE_WAIT])
            .chain([FinWait2; CLOSE_WAIT])
            .chain([TimeWait; TIME_WAIT])
            .collect()
    }

    fn sockets_of(s: &TcpStream) -> Vec<TcpState> {
        let local = s.local_addr().unwrap();
        sockets(Filter::Port(local.port()))
            .unwrap()
            .into_iter()
            .filter(|e| e.local == local)
            .map(|e| e.state)
            .collect()
    }

    // Loopback transitions take microseconds; the deadline only guards a hang.
    fn wait_for(mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "kernel state did not settle");
            sleep(Duration::from_millis(5));
        }
    }

    /// State counts from `ss -tanH '( sport = :P or dport = :P )'`, in
    /// netstat's spelling.
    fn ss_counts(port: u16) -> BTreeMap<String, usize> {
        let out = Command::new("ss")
            .arg("-tanH")
            .arg(format!("( sport = :{port} or dport = :{port} )"))
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run `ss` ({e}): install iproute2 (apt-get install iproute2)")
            });
        assert!(out.status.success(), "ss failed: {out:?}");
        let mut counts = BTreeMap::new();
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let state = match line.split_whitespace().next().unwrap() {
                "ESTAB" => "ESTABLISHED".to_owned(),
                "UNCONN" => "CLOSE".to_owned(),
                "FIN-WAIT-1" => "FIN_WAIT1".to_owned(),
                "FIN-WAIT-2" => "FIN_WAIT2".to_owned(),
                other => other.replace('-', "_"),
            };
            *counts.entry(state).or_default() += 1;
        }
        counts
    }

    fn as_map(census: &Census) -> BTreeMap<String, usize> {
        census.iter().map(|(s, n)| (s.to_string(), n)).collect()
    }

    #[test]
    fn port_census_matches_ss_and_script() {
        let scene = scene();
        let census = tcp_census(Filter::Port(scene.port)).unwrap();
        assert_eq!(as_map(&census), ss_counts(scene.port), "census vs ss");

        assert_eq!(census.get(TcpState::Listen), 1);
        assert_eq!(census.get(TcpState::Established), 2 * ESTABLISHED_PAIRS);
        assert_eq!(census.get(TcpState::CloseWait), CLOSE_WAIT);
        assert_eq!(census.get(TcpState::FinWait2), CLOSE_WAIT);
        assert_eq!(census.get(TcpState::TimeWait), TIME_WAIT);
        assert_eq!(
            census.total(),
            1 + 2 * ESTABLISHED_PAIRS + 2 * CLOSE_WAIT + TIME_WAIT
        );

        // The host view contains the port's view.
        let all = tcp_census(Filter::All).unwrap();
        for (state, n) in census.iter() {
            assert!(
                all.get(state) >= n,
                "{state}: host {} < port {n}",
                all.get(state)
            );
        }
    }

    #[test]
    fn pid_census_holds_this_process_sockets() {
        let scene = scene();
        let ours = sockets(Filter::Pid(std::process::id())).unwrap();
        let inodes: HashSet<u64> = ours.iter().map(|s| s.inode).collect();
        let on_port = sockets(Filter::Port(scene.port)).unwrap();
        for s in on_port.iter().filter(|s| s.state != TcpState::TimeWait) {
            assert!(inodes.contains(&s.inode), "{s:?} missing from Filter::Pid");
        }
        // TIME_WAIT sockets belong to no process.
        assert!(on_port.iter().any(|s| s.state == TcpState::TimeWait));
        let census = tcp_census(Filter::Pid(std::process::id())).unwrap();
        assert_eq!(census.get(TcpState::TimeWait), 0);
        assert!(census.get(TcpState::CloseWait) >= CLOSE_WAIT);
        assert!(census.get(TcpState::Listen) >= 1);
    }

    #[test]
    fn pid_errors() {
        let gone = tcp_census(Filter::Pid(i32::MAX as u32)).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound, "{gone}");
        let bad = tcp_census(Filter::Pid(u32::MAX)).unwrap_err();
        assert_eq!(bad.kind(), io::ErrorKind::InvalidInput, "{bad}");
    }

    #[test]
    fn doctor_reads_live_sysctls() {
        let report = doctor();
        let somaxconn = report.get("net.core.somaxconn").unwrap();
        assert_ne!(somaxconn.status, Status::Unavailable);
        assert!(somaxconn.value.as_deref().unwrap().parse::<u32>().is_ok());
        let text = report.to_string();
        assert!(text.contains("net.ipv4.tcp_tw_recycle"));
        assert!(text.contains("removed in Linux 4.12"));
        assert_eq!(report.findings().len(), 14);
    }
}
