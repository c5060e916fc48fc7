//! A peer host for opt-in tests: a network namespace joined to this one by a veth
//! pair, whose processes, nftables rules and traffic shaping go with it when dropped.
//! Needs root and iproute2 (`ip`, `tc`); each test names what else it needs.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs a command to completion; `Err` names it and carries its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("{shown} could not run: {e}")),
    }
}

pub(crate) fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// A network namespace (the peer host) joined to this one by a veth pair with a /30
/// from 10.213.0.0/16. Dropping it kills the processes spawned in it and deletes the
/// pair and the namespace (with its nft rules and qdiscs).
#[derive(Debug)]
pub(crate) struct PeerHost {
    pub(crate) ns: String,
    /// Our end of the pair.
    pub(crate) veth: String,
    /// The namespace's end.
    pub(crate) peer_veth: String,
    pub(crate) server_ip: Ipv4Addr,
    pub(crate) peer_ip: Ipv4Addr,
    pub(crate) children: Vec<Child>,
}

impl PeerHost {
    /// A new peer host; panics with `needs` (what the test requires) if it cannot be
    /// made.
    pub(crate) fn create(needs: &str) -> PeerHost {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        match PeerHost::try_create(n) {
            Ok(host) => host,
            Err(e) => panic!("{needs}.\n{e}"),
        }
    }

    fn try_create(n: u32) -> Result<PeerHost, String> {
        run(Command::new("nft").arg("--version"))?;
        remove_stale_namespaces();
        let pid = std::process::id();
        let (server_ip, peer_ip) = free_subnet(pid, n)?;
        // The guard exists before the first resource, so a failure halfway cleans up.
        let host = PeerHost {
            ns: format!("chv-{pid}-{n}"),
            veth: format!("chv{pid}r{n}"),
            peer_veth: format!("chv{pid}p{n}"),
            server_ip,
            peer_ip,
            children: Vec::new(),
        };
        let (ns, veth, peer_veth) = (&host.ns, &host.veth, &host.peer_veth);
        ip(&["netns", "add", ns])?;
        ip(&[
            "link", "add", veth, "type", "veth", "peer", "name", peer_veth, "netns", ns,
        ])?;
        ip(&["addr", "add", &format!("{server_ip}/30"), "dev", veth])?;
        ip(&["link", "set", veth, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{peer_ip}/30"),
            "dev",
            peer_veth,
        ])?;
        ip(&["-n", ns, "link", "set", peer_veth, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        // nftables must work inside the namespace before the test relies on it.
        host.nft("add table inet chv")?;
        Ok(host)
    }

    /// One nft command inside the namespace.
    pub(crate) fn nft(&self, command: &str) -> Result<String, String> {
        run(Command::new("ip").args(["netns", "exec", &self.ns, "nft", command]))
    }

    /// A command run inside the namespace (`ip netns exec`).
    pub(crate) fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns, program]);
        command
    }
}

impl Drop for PeerHost {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting one end removes the pair at once; the namespace then goes with its
        // rules. Errors mean it is already gone (or was never made).
        let _ = ip(&["link", "del", &self.veth]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// Deletes namespaces left by earlier runs of these tests whose process is gone
/// (killed before its cleanup ran).
fn remove_stale_namespaces() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("chv-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A /30 in 10.213.0.0/16 that no route of this namespace uses yet: (ours, peer's).
fn free_subnet(pid: u32, n: u32) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let routes = ip(&["-4", "route", "show", "table", "all"])?;
    for attempt in 0..64u32 {
        let block = pid
            .wrapping_mul(4)
            .wrapping_add(n)
            .wrapping_add(attempt.wrapping_mul(997))
            % 16384;
        let [c, d] = [(block / 64) as u8, (block % 64 * 4) as u8];
        let net = Ipv4Addr::new(10, 213, c, d);
        if !routes.contains(&format!("{net}/30")) {
            return Ok((
                Ipv4Addr::new(10, 213, c, d + 1),
                Ipv4Addr::new(10, 213, c, d + 2),
            ));
        }
    }
    Err("no free /30 in 10.213.0.0/16 after 64 tries".into())
}
