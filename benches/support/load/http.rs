//! Minimal HTTP/1.1 keep-alive clients: a blocking one for the profiled runs and a
//! tokio load generator (closed loop or paced) that records every latency.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use conn_hygiene::testing::http1::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// The request every well-behaved client sends: the demo's `GET /` answers "ok".
pub(crate) const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

/// One blocking keep-alive connection.
#[derive(Debug)]
pub(crate) struct BlockingClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl BlockingClient {
    pub(crate) fn connect(addr: SocketAddr) -> io::Result<BlockingClient> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(BlockingClient {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends `GET /` and reads the whole answer; returns its status.
    pub(crate) fn get(&mut self) -> io::Result<u16> {
        self.stream.write_all(GET)?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(response) = Response::parse(&self.buf)? {
                debug_assert_eq!(response.wire_len(), self.buf.len());
                return Ok(response.status());
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One tokio keep-alive connection.
#[derive(Debug)]
pub(crate) struct Client {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub(crate) async fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends `GET /` and reads the whole answer; returns its status.
    pub(crate) async fn get(&mut self) -> io::Result<u16> {
        self.stream.write_all(GET).await?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(response) = Response::parse(&self.buf)? {
                return Ok(response.status());
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Waits until the server closes the connection: returns when the read saw it.
    pub(crate) async fn wait_closed(&mut self) -> Instant {
        let mut chunk = [0u8; 512];
        loop {
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    }
}

/// How to load the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) conns: usize,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    /// Total requests per second, spread over the connections (open loop: latency
    /// counts from the scheduled send time). `None`: each connection sends its next
    /// request as soon as the last answer arrives (closed loop, saturating).
    pub(crate) rate: Option<f64>,
}

/// What a load run measured after its warm-up.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadResult {
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    /// Every latency of the measured window, in nanoseconds, sorted: from the
    /// scheduled send time (paced) or the send (closed loop) to the whole answer.
    pub(crate) latencies: Vec<u64>,
    /// The same from the actual send: what the server and the network took, without
    /// the client's own lateness in sending.
    pub(crate) service: Vec<u64>,
}

impl LoadResult {
    pub(crate) fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn percentile(&self, p: f64) -> Duration {
        Duration::from_nanos(crate::support::stats::percentile(&self.latencies, p))
    }

    pub(crate) fn service_percentile(&self, p: f64) -> Duration {
        Duration::from_nanos(crate::support::stats::percentile(&self.service, p))
    }
}

/// Runs `load` on a fresh current-thread runtime (one core) in this thread.
pub(crate) fn run_load(addr: SocketAddr, load: Load) -> LoadResult {
    runtime().block_on(generate(addr, load, Arc::new(AtomicBool::new(false))))
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime")
}

/// Loads the server for `load.warmup + load.duration`, or until `stop` is set.
pub(crate) async fn generate(addr: SocketAddr, load: Load, stop: Arc<AtomicBool>) -> LoadResult {
    let start = Instant::now();
    let measure_from = start + load.warmup;
    let end = measure_from + load.duration;
    let interval = load
        .rate
        .map(|rate| Duration::from_secs_f64(load.conns as f64 / rate));
    let tasks: Vec<_> = (0..load.conns)
        .map(|i| {
            let stop = stop.clone();
            // Paced connections start evenly spread over one interval.
            let first =
                start + interval.map_or(Duration::ZERO, |iv| iv * i as u32 / load.conns as u32);
            tokio::spawn(connection(addr, first, interval, measure_from, end, stop))
        })
        .collect();
    let mut result = LoadResult::default();
    for task in tasks {
        let (ok, errors, latencies, service) = task.await.expect("load task");
        result.ok += ok;
        result.errors += errors;
        result.latencies.extend(latencies);
        result.service.extend(service);
    }
    result.elapsed = Instant::now()
        .min(end)
        .saturating_duration_since(measure_from);
    result.latencies.sort_unstable();
    result.service.sort_unstable();
    result
}

async fn connection(
    addr: SocketAddr,
    first: Instant,
    interval: Option<Duration>,
    measure_from: Instant,
    end: Instant,
    stop: Arc<AtomicBool>,
) -> (u64, u64, Vec<u64>, Vec<u64>) {
    let (mut ok, mut errors) = (0, 0);
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut service = Vec::with_capacity(1 << 16);
    let mut client = None;
    let mut next = first;
    loop {
        let scheduled = match interval {
            Some(interval) => {
                tokio::time::sleep_until(next).await;
                let scheduled = next;
                next += interval;
                scheduled
            }
            None => Instant::now(),
        };
        if scheduled >= end || stop.load(Ordering::Relaxed) {
            break;
        }
        let measured = scheduled >= measure_from;
        if client.is_none() {
            match Client::connect(addr).await {
                Ok(c) => client = Some(c),
                Err(_) => {
                    errors += u64::from(measured);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let sent = Instant::now();
        let outcome = client.as_mut().expect("connected").get().await;
        let done = Instant::now();
        match outcome {
            Ok(200) if measured && done <= end => {
                ok += 1;
                latencies.push((done - scheduled).as_nanos() as u64);
                service.push((done - sent).as_nanos() as u64);
            }
            Ok(200) => {}
            Ok(_) => errors += u64::from(measured),
            Err(_) => {
                errors += u64::from(measured);
                client = None;
            }
        }
    }
    (ok, errors, latencies, service)
}
