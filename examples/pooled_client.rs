//! A pool of keep-alive client connections whose server closes them while they idle.
//!
//! ```text
//! cargo run --release --features client,testing --example pooled_client -- [--target HOST:PORT] [--connections N] [--secs S] [--raw]
//! ```
//!
//! `--help` lists the flags (the `COMMAND` table below).
//!
//! 1. Opens N keep-alive connections (default 50) to the target through a pool and
//!    sends one `GET /` on each, so they sit idle in the pool.
//! 2. Makes no requests for S seconds (default 5).
//! 3. Makes one more round of N requests, which must all succeed, reconnecting where
//!    needed.
//! 4. Prints `requests ok=<n> failed=<m>` and exits 0 (1 if a request failed).
//!
//! Without `--target` it starts an in-process server that closes connections idle for
//! 1 s, prints the client-side TCP state counts every 500 ms, and at the end the time
//! from the server's FIN to the client's close of each connection.
//!
//! The pool is the same plain `Vec` either way. By default it holds connections from
//! `conn_hygiene::client::connect`, evicts one as soon as its `Conn::peer_closed()`
//! resolves and runs `client::probe` before reuse: client-side CLOSE_WAIT drops to 0
//! within a millisecond or two of the server closing. With `--raw` it holds plain
//! `TcpStream`s and notices nothing: every connection sits in CLOSE_WAIT until the
//! second round tries to reuse it, reads EOF and reconnects.

mod cli;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cli::flags::{Command, Flag, parse};
use conn_hygiene::census::{Filter, TcpState, sockets};
use conn_hygiene::client::{self, client_policy};
use conn_hygiene::testing::http1::Response;
use conn_hygiene::{Conn, Policy, SocketOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long the in-process server lets a connection idle before it closes it.
const SERVER_IDLE: Duration = Duration::from_secs(1);

struct Args {
    target: Option<String>,
    connections: usize,
    secs: u64,
    raw: bool,
}

/// The flags, one line each.
#[rustfmt::skip]
const COMMAND: Command<Args> = Command {
    name: "pooled_client",
    synopsis: "[--target HOST:PORT] [--connections N] [--secs S] [--raw]",
    flags: &[
        Flag::value("--target", "HOST:PORT", "the server to pool connections to; default an in-process server that closes connections idle for 1 s", |a, v| Ok(Args { target: Some(v.to_owned()), ..a })),
        Flag::value("--connections", "N", "keep-alive connections in the pool (default 50)", |a, v| Ok(Args { connections: parse(v)?, ..a })),
        Flag::value("--secs", "S", "seconds without requests between the two rounds (default 5)", |a, v| Ok(Args { secs: parse(v)?, ..a })),
        Flag::switch("--raw", "a pool of plain TcpStreams that notices nothing", |a| Args { raw: true, ..a }),
    ],
};

#[tokio::main]
async fn main() -> ExitCode {
    let defaults = Args {
        target: None,
        connections: 50,
        secs: 5,
        raw: false,
    };
    let args = match COMMAND.parse(defaults) {
        Ok(args) => args,
        Err(error) => return COMMAND.fail(&error),
    };
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> std::io::Result<ExitCode> {
    let released = Arc::new(Mutex::new(Vec::new()));
    let (target, host) = match &args.target {
        Some(target) => {
            let addr = tokio::net::lookup_host(target.as_str())
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other(format!("{target}: no address")))?;
            (addr, target.clone())
        }
        None => {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            tokio::spawn(server(listener, Arc::clone(&released)));
            println!(
                "in-process server on {addr}, closing connections idle for {} ms",
                SERVER_IDLE.as_millis()
            );
            (addr, addr.to_string())
        }
    };
    let mode = if args.raw {
        "raw pool (no hygiene)"
    } else {
        "pool with hygiene"
    };
    println!(
        "{mode}: {} connections to {target}, idle {} s between rounds",
        args.connections, args.secs
    );
    let started = Instant::now();
    let census = tokio::spawn(print_census(target, started));

    let pool = Pool::new(target, host, !args.raw);
    let ok = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    for round in 1..=2 {
        if round == 2 {
            tokio::time::sleep(Duration::from_secs(args.secs)).await;
        }
        println!(
            "[{:5.1}s] round {round}: {} requests",
            started.elapsed().as_secs_f64(),
            args.connections
        );
        // Every request holds its connection before any goes back to the pool, so a
        // round uses N connections at once.
        let all_out = Arc::new(tokio::sync::Barrier::new(args.connections));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.connections {
            let pool = Arc::clone(&pool);
            let all_out = Arc::clone(&all_out);
            tasks.spawn(async move { pool.get(&all_out).await });
        }
        while let Some(result) = tasks.join_next().await {
            match result {
                Ok(Ok(())) => ok.fetch_add(1, Ordering::Relaxed),
                Ok(Err(e)) => {
                    eprintln!("request failed: {e}");
                    failed.fetch_add(1, Ordering::Relaxed)
                }
                Err(e) => {
                    eprintln!("request task failed: {e}");
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    }
    census.abort();
    let _ = census.await;

    println!(
        "connections opened={} evicted_on_peer_close={} stale_on_reuse={}",
        pool.opened.load(Ordering::Relaxed),
        pool.evicted.load(Ordering::Relaxed),
        pool.stale.load(Ordering::Relaxed),
    );
    if args.target.is_none() {
        let mut times = released.lock().unwrap().clone();
        times.sort();
        if let (Some(max), false) = (times.last(), times.is_empty()) {
            let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
            println!(
                "server FIN -> client close: p50={:.3} ms p99={:.3} ms max={:.3} ms (n={})",
                ms(pct(50)),
                ms(pct(99)),
                ms(*max),
                times.len()
            );
        }
    }
    let (ok, failed) = (ok.into_inner(), failed.into_inner());
    println!("requests ok={ok} failed={failed}");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Prints the client side's TCP states every 500 ms: sockets whose peer is `target`.
async fn print_census(target: SocketAddr, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.tick().await;
    loop {
        tick.tick().await;
        let entries = match sockets(Filter::Port(target.port())) {
            Ok(entries) => entries,
            Err(e) => {
                println!("no TCP census on this platform: {e}");
                return;
            }
        };
        let census: conn_hygiene::census::Census = entries
            .into_iter()
            .filter(|e| e.remote == target)
            .map(|e| e.state)
            .collect();
        let mut line = format!("CLOSE_WAIT={}", census.get(TcpState::CloseWait));
        for (state, n) in census.iter().filter(|(s, _)| *s != TcpState::CloseWait) {
            line.push_str(&format!(" {state}={n}"));
        }
        println!(
            "[{:5.1}s] client-side: {line}",
            started.elapsed().as_secs_f64()
        );
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Pooled {
    io: Box<dyn Io>,
    // Set for connections with hygiene.
    conn: Option<Conn>,
    reused: bool,
}

/// A naive pool: a `Vec` of idle connections, last in first out.
struct Pool {
    target: SocketAddr,
    host: String,
    hygiene: bool,
    options: SocketOptions,
    policy: Policy,
    idle: Mutex<Vec<Pooled>>,
    opened: AtomicUsize,
    evicted: AtomicUsize,
    stale: AtomicUsize,
}

impl Pool {
    fn new(target: SocketAddr, host: String, hygiene: bool) -> Arc<Self> {
        Arc::new(Pool {
            target,
            host,
            hygiene,
            options: SocketOptions::new()
                .nodelay(true)
                .keepalive_time(Duration::from_secs(30)),
            policy: client_policy(),
            idle: Mutex::new(Vec::new()),
            opened: AtomicUsize::new(0),
            evicted: AtomicUsize::new(0),
            stale: AtomicUsize::new(0),
        })
    }

    async fn check_out(self: &Arc<Self>) -> std::io::Result<Pooled> {
        loop {
            let Some(mut pooled) = self.idle.lock().unwrap().pop() else {
                break;
            };
            if let Some(conn) = &pooled.conn {
                // No syscall when the watcher already saw the FIN; one MSG_PEEK if not.
                if !client::probe(conn).is_reusable() {
                    self.stale.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            pooled.reused = true;
            return Ok(pooled);
        }
        self.opened.fetch_add(1, Ordering::Relaxed);
        if !self.hygiene {
            let io = TcpStream::connect(self.target).await?;
            io.set_nodelay(true)?;
            return Ok(Pooled {
                io: Box::new(io),
                conn: None,
                reused: false,
            });
        }
        let stream = client::connect(self.target, self.options, self.policy.clone()).await?;
        let conn = stream.conn().clone();
        // Evict the moment the peer leaves. The watcher holds only a `Conn`, which never
        // keeps the socket open, and ends when the stream is dropped.
        let pool = Arc::downgrade(self);
        let watched = conn.clone();
        tokio::spawn(async move {
            watched.peer_closed().await;
            let Some(pool) = pool.upgrade() else { return };
            let mut idle = pool.idle.lock().unwrap();
            let before = idle.len();
            idle.retain(|p| p.conn.as_ref().is_none_or(|c| c.id() != watched.id()));
            if idle.len() < before {
                pool.evicted.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Pooled {
            io: Box::new(stream),
            conn: Some(conn),
            reused: false,
        })
    }

    fn check_in(&self, pooled: Pooled) {
        self.idle.lock().unwrap().push(pooled);
    }

    /// One `GET /`, retried when a reused connection turns out dead (safe: GET is
    /// idempotent and nothing of the answer arrived). Each retry takes the dead
    /// connection out of the pool, so it ends on a fresh connection at the latest.
    async fn get(self: &Arc<Self>, all_out: &tokio::sync::Barrier) -> std::io::Result<()> {
        let mut first = true;
        loop {
            let pooled = self.check_out().await;
            if std::mem::take(&mut first) {
                all_out.wait().await;
            }
            let mut pooled = pooled?;
            let exchange = get(&mut pooled.io, &self.host);
            match tokio::time::timeout(Duration::from_secs(10), exchange).await {
                Ok(Ok(Exchange::KeepAlive)) => {
                    self.check_in(pooled);
                    return Ok(());
                }
                Ok(Ok(Exchange::Close)) => return Ok(()),
                Ok(Err(e)) if pooled.reused && e.no_response => {
                    self.stale.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => return Err(e.error),
                Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
            }
        }
    }
}

enum Exchange {
    KeepAlive,
    Close,
}

struct GetError {
    error: std::io::Error,
    // Nothing of a response arrived: the request may be retried.
    no_response: bool,
}

/// One HTTP/1.1 `GET /`; the kit's parser reads `content-length`, chunked, or
/// read-to-close bodies.
async fn get(io: &mut Box<dyn Io>, host: &str) -> Result<Exchange, GetError> {
    let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nuser-agent: pooled_client\r\n\r\n");
    io.write_all(request.as_bytes())
        .await
        .map_err(|error| GetError {
            error,
            no_response: true,
        })?;
    let mut buf = Vec::with_capacity(1024);
    match Response::read(io, &mut buf).await {
        Ok(response) if response.keep_alive() => Ok(Exchange::KeepAlive),
        Ok(_) => Ok(Exchange::Close),
        Err(error) => Err(GetError {
            error,
            no_response: buf.is_empty(),
        }),
    }
}

/// Where a request head ends, for the in-process server.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The in-process server: answers every `GET` with `ok`, keeps connections alive, and
/// closes one (FIN) after `SERVER_IDLE` without a request. It then waits for the
/// client's close and records how long that took.
async fn server(listener: TcpListener, released: Arc<Mutex<Vec<Duration>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_one(stream, Arc::clone(&released)));
    }
}

async fn serve_one(mut stream: TcpStream, released: Arc<Mutex<Vec<Duration>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(SERVER_IDLE, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = find(&buf, b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(reply).await.is_err() {
                        return;
                    }
                }
            }
            Err(_idle) => break,
        }
    }
    // Our FIN, then wait for the client's close (its FIN or RST), discarding whatever a
    // naive client still sends onto the dead connection.
    let fin = Instant::now();
    if stream.shutdown().await.is_err() {
        return;
    }
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    released.lock().unwrap().push(fin.elapsed());
}
