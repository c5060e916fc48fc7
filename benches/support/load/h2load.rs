//! HTTP/2 load from the real `h2load` (nghttp2): `GET /` over h2c with prior
//! knowledge, many streams at a time on one connection.

use std::fs;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::server::work_dir;

/// Streams in flight on the connection, as in `h2load -m 10`.
pub(crate) const STREAMS: usize = 10;

/// Makes `requests` requests on one connection, `STREAMS` at a time, and checks that
/// every one of them succeeded over h2c.
pub(crate) fn get(addr: SocketAddr, requests: usize) {
    let out = work_dir().join("h2load.out");
    let file = fs::File::create(&out).expect("create h2load.out");
    let mut child = Command::new("h2load")
        .args(["-n", &requests.to_string()])
        .args(["-c", "1", "-t", "1", "-m", &STREAMS.to_string()])
        // h2load's own bound on a stalled connection, besides the deadline below.
        .args(["-N", "60s"])
        .arg(format!("http://{addr}/"))
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone h2load.out"))
        .stderr(file)
        .spawn()
        .expect("spawn h2load (apt-get install nghttp2-client)");
    // Under callgrind the server runs ~50× slower: generous, but bounded.
    let deadline =
        Instant::now() + Duration::from_secs(60) + Duration::from_millis(50) * requests as u32;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for h2load") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("h2load ran past its deadline: {}", out.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let report = fs::read_to_string(&out).unwrap_or_default();
    assert!(status.success(), "h2load failed ({status}):\n{report}");
    assert!(
        report
            .lines()
            .any(|l| l.trim() == "Application protocol: h2c"),
        "h2load did not speak h2c:\n{report}"
    );
    let succeeded = report
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| {
            l.split(", ")
                .find_map(|field| field.strip_suffix(" succeeded"))
                .and_then(|n| n.parse::<usize>().ok())
        });
    assert_eq!(
        succeeded,
        Some(requests),
        "not every h2load request succeeded:\n{report}"
    );
    let ok = format!("status codes: {requests} 2xx,");
    assert!(
        report.lines().any(|l| l.starts_with(&ok)),
        "not every h2load answer was 2xx:\n{report}"
    );
}
