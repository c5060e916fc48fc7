//! Outbound hygiene against real servers, judged by the client side's kernel state.
//!
//! Servers: an in-process hyper server, Python's `http.server` (HTTP/1.1, closes idle
//! connections after a timeout), and a scripted raw server that records the time from
//! its FIN to the client's close. Clients: hyper-util's `Client` (with and without
//! `HygieneConnector`) and a generic `Vec` pool of `client::connect` streams.
//!
//! Its own test binary, not a module of `tests/it`: it installs a global tracing
//! subscriber.
#![cfg(all(feature = "client", feature = "testing"))]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use conn_hygiene::census::{Filter, TcpState, sockets};
use conn_hygiene::client::{self, HygieneConnector, KeepAliveLayer, Probe, client_policy};
use conn_hygiene::testing::http1::Response;
use conn_hygiene::{
    Conn, HygieneStream, SocketOptions, conn::Abandon, conn::PeerGone, stream::TcpIo,
};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector, HttpInfo};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, Service};

const GENEROUS: Duration = Duration::from_secs(10);
/// The issue's bound: client-side CLOSE_WAIT gone within 100 ms of the server's close.
const PROMPT: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------
// Servers

/// What the scripted server saw.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    // Per connection the server closed: from its FIN to the client's FIN or RST.
    released: Mutex<Vec<Duration>>,
    // Connections the client reset while the server still kept them alive.
    reset_by_client: AtomicUsize,
    // Connections the client closed first. hyper-util does that to a connection it
    // handed to a checkout that had already lost its race against a new connect.
    closed_by_client: AtomicUsize,
}

#[derive(Clone, Copy)]
struct Script {
    // The server closes (FIN) a connection idle for this long.
    idle: Duration,
    // Announced as `Keep-Alive: timeout=N` when set.
    keep_alive: Option<u64>,
}

/// A raw HTTP/1.1 server. `GET /slow` answers after 1.5 s; `GET /stall` sends half of
/// its body, waits 1.5 s, then the rest; anything else answers `ok` at once.
async fn scripted_server(script: Script) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let state = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            state.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(scripted_conn(stream, script, Arc::clone(&state)));
        }
    });
    (addr, seen)
}

async fn scripted_conn(mut stream: TcpStream, script: Script, seen: Arc<Seen>) {
    let keep_alive = script
        .keep_alive
        .map(|n| format!("keep-alive: timeout={n}\r\n"))
        .unwrap_or_default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(script.idle, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                seen.closed_by_client.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Ok(Err(_)) => {
                seen.reset_by_client.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_idle) => break,
        }
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            let pause = Duration::from_millis(1500);
            let write = if head.starts_with(b"GET /slow ") {
                tokio::time::sleep(pause).await;
                stream
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\n{keep_alive}content-length: 2\r\n\r\nok")
                            .as_bytes(),
                    )
                    .await
            } else if head.starts_with(b"GET /stall ") {
                let head = format!("HTTP/1.1 200 OK\r\n{keep_alive}content-length: 4\r\n\r\nok");
                match stream.write_all(head.as_bytes()).await {
                    Ok(()) => {
                        tokio::time::sleep(pause).await;
                        stream.write_all(b"ok").await
                    }
                    Err(e) => Err(e),
                }
            } else {
                stream
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\n{keep_alive}content-length: 2\r\n\r\nok")
                            .as_bytes(),
                    )
                    .await
            };
            if write.is_err() {
                return;
            }
        }
    }
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
    seen.released.lock().unwrap().push(fin.elapsed());
}

/// A hyper HTTP/1 server whose header-read timeout closes idle keep-alive
/// connections after `idle` (hyper starts that clock as it waits for the next head).
async fn hyper_server(idle: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(idle)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Python's `http.server` speaking HTTP/1.1 (keep-alive); the handler's socket timeout
/// closes a connection idle for `idle` (shutdown(SHUT_WR), then close: a FIN).
const PYTHON_SERVER: &str = r#"
import http.server, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = float(sys.argv[1])

    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

struct PythonServer {
    addr: SocketAddr,
    _child: tokio::process::Child,
}

async fn python_server(idle: Duration) -> PythonServer {
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(PYTHON_SERVER)
        .arg(idle.as_secs_f64().to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs (CI installs it)");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stdout);
    tokio::time::timeout(
        GENEROUS,
        tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line),
    )
    .await
    .expect("python server starts")
    .unwrap();
    let port: u16 = line.trim().parse().expect("python server prints its port");
    PythonServer {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        _child: child,
    }
}

// ---------------------------------------------------------------------------------
// Clients

fn options() -> SocketOptions {
    SocketOptions::new()
        .nodelay(true)
        .keepalive_time(Duration::from_secs(30))
}

fn hyper_client<C>(connector: C) -> Client<C, Empty<Bytes>>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Calls any service once and reads the whole body.
async fn fetch<S, B>(service: &mut S, uri: &str) -> Result<hyper::Response<Bytes>, String>
where
    S: Service<http::Request<Empty<Bytes>>, Response = hyper::Response<B>>,
    S::Error: std::fmt::Display,
    B: Body,
    B::Error: std::fmt::Display,
{
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(|e| e.to_string())?;
    let request = http::Request::get(uri).body(Empty::new()).unwrap();
    let response = service.call(request).await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(hyper::Response::from_parts(parts, body))
}

/// `n` concurrent GETs, so that an empty pool opens `n` connections.
async fn round<S, B>(service: &S, uri: &str, n: usize) -> Vec<hyper::Response<Bytes>>
where
    S: Service<http::Request<Empty<Bytes>>, Response = hyper::Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Display,
    B: Body + Send,
    B::Data: Send,
    B::Error: std::fmt::Display,
{
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let mut service = service.clone();
        let uri = uri.to_owned();
        tasks.spawn(async move { fetch(&mut service, &uri).await });
    }
    let mut responses = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let response = result.unwrap().expect("request succeeds");
        assert_eq!(response.body().as_ref(), b"ok");
        responses.push(response);
    }
    responses
}

/// A generic pool: a `Vec` of idle streams, each watched by a `peer_closed` waiter.
#[derive(Clone, Default)]
struct VecPool {
    idle: Arc<Mutex<Vec<HygieneStream<TcpIo>>>>,
}

impl VecPool {
    fn check_in(&self, stream: HygieneStream<TcpIo>) {
        let conn = stream.conn().clone();
        self.idle.lock().unwrap().push(stream);
        let pool = self.clone();
        tokio::spawn(async move {
            conn.peer_closed().await;
            pool.idle
                .lock()
                .unwrap()
                .retain(|s| s.conn().id() != conn.id());
        });
    }

    async fn check_out(&self, addr: SocketAddr) -> HygieneStream<TcpIo> {
        loop {
            let Some(stream) = self.idle.lock().unwrap().pop() else {
                break;
            };
            if client::probe(stream.conn()).is_reusable() {
                return stream;
            }
        }
        client::connect(addr, options(), client_policy())
            .await
            .expect("connect")
    }

    /// One GET; the connection goes back to the pool.
    async fn get(&self, addr: SocketAddr) -> Conn {
        let mut stream = self.check_out(addr).await;
        http_get(&mut stream).await;
        let conn = stream.conn().clone();
        self.check_in(stream);
        conn
    }

    fn len(&self) -> usize {
        self.idle.lock().unwrap().len()
    }
}

async fn vec_pool_round(pool: &VecPool, addr: SocketAddr, n: usize) -> Vec<Conn> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let pool = pool.clone();
        tasks.spawn(async move { pool.get(addr).await });
    }
    tasks.join_all().await
}

/// `GET /` and read a response of body `ok`.
async fn http_get(stream: &mut HygieneStream<TcpIo>) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let response = Response::read(stream, &mut buf).await.unwrap();
    assert_eq!(response.body(), b"ok");
    assert_eq!(response.wire_len(), buf.len(), "nothing after the response");
}

// ---------------------------------------------------------------------------------
// The kernel's view

/// The client side of a server on `server`: sockets whose peer is that address.
fn client_side(server: SocketAddr) -> Vec<(u16, TcpState)> {
    sockets(Filter::Port(server.port()))
        .expect("read the kernel's TCP tables")
        .into_iter()
        .filter(|e| e.remote == server)
        .map(|e| (e.local.port(), e.state))
        .collect()
}

/// Watches the client side of `server` every 2 ms until every client socket is gone
/// or `within` passes. Returns how long the longest-lived socket sat in CLOSE_WAIT,
/// how many sockets were seen in it, and what is left.
async fn watch_close_wait(
    server: SocketAddr,
    within: Duration,
) -> (Duration, usize, Vec<(u16, TcpState)>) {
    let deadline = Instant::now() + within;
    let mut dwell: HashMap<u16, (Instant, Instant)> = HashMap::new();
    loop {
        let now = Instant::now();
        let left = client_side(server);
        for (port, state) in &left {
            if *state == TcpState::CloseWait {
                dwell.entry(*port).or_insert((now, now)).1 = now;
            }
        }
        let open = left
            .iter()
            .any(|(_, s)| matches!(s, TcpState::Established | TcpState::CloseWait));
        if !open || now >= deadline {
            let max = dwell
                .values()
                .map(|(first, last)| *last - *first)
                .max()
                .unwrap_or_default();
            return (max, dwell.len(), left);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Asserts that every client socket of `server` is released, and none sat in
/// CLOSE_WAIT for `PROMPT` or longer.
async fn assert_released_promptly(server: SocketAddr, what: &str) {
    let (dwell, seen, left) = watch_close_wait(server, GENEROUS).await;
    assert!(
        left.iter()
            .all(|(_, s)| !matches!(s, TcpState::Established | TcpState::CloseWait)),
        "{what}: client sockets still open: {left:?}"
    );
    assert!(
        dwell < PROMPT,
        "{what}: a client socket sat in CLOSE_WAIT for {dwell:?} ({seen} seen in it)"
    );
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + GENEROUS;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------
// hyper-util's Client

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_util_client_against_hyper_server() {
    const N: usize = 20;
    let addr = hyper_server(Duration::from_millis(500)).await;
    let uri = format!("http://{addr}/");
    let client = hyper_client(HygieneConnector::new(options()));

    let responses = round(&client, &uri, N).await;
    let conns: Vec<Conn> = responses
        .iter()
        .map(|r| {
            r.extensions()
                .get::<Conn>()
                .expect("Conn in extensions")
                .clone()
        })
        .collect();
    let info = responses[0]
        .extensions()
        .get::<HttpInfo>()
        .expect("HttpInfo");
    assert_eq!(info.remote_addr(), addr);
    let opened = client_side(addr).len();
    assert!(opened >= 2, "{opened} connections");

    // The server closes them all after 500 ms of idling.
    assert_released_promptly(addr, "hyper server").await;
    // The handle is marked closed just after its socket is: on a loaded machine the
    // kernel's table can be read in between.
    wait_until("every handle is closed", || {
        conns.iter().all(Conn::is_closed)
    })
    .await;
    for conn in &conns {
        assert_eq!(conn.peer_gone(), Some(PeerGone::Fin), "{conn:?}");
    }
    // The next round reconnects without a single failure.
    round(&client, &uri, N).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_util_client_against_python_http_server() {
    const N: usize = 20;
    let server = python_server(Duration::from_millis(500)).await;
    let uri = format!("http://{}/", server.addr);
    let client = hyper_client(HygieneConnector::new(options()));
    round(&client, &uri, N).await;
    assert!(!client_side(server.addr).is_empty());
    assert_released_promptly(server.addr, "python, hyper-util client").await;
    round(&client, &uri, N).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_pool_against_python_http_server() {
    const N: usize = 20;
    let server = python_server(Duration::from_millis(500)).await;
    let pool = VecPool::default();
    vec_pool_round(&pool, server.addr, N).await;
    assert!(pool.len() > 0);
    assert_released_promptly(server.addr, "python, generic pool").await;
    // The watchers emptied the pool; the next round reconnects.
    assert_eq!(pool.len(), 0);
    vec_pool_round(&pool, server.addr, N).await;
}

/// The note's numbers: from the server's FIN to the client's close, per connection.
/// `cargo test --release --all-features --test client -- --nocapture fin_to_release`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fin_to_release_latency() {
    const N: usize = 50;
    const ROUNDS: usize = 4;
    let script = Script {
        idle: Duration::from_millis(300),
        keep_alive: None,
    };

    async fn measure<F, Fut>(name: &str, script: Script, mut one_round: F)
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: Future<Output = ()>,
    {
        let (addr, seen) = scripted_server(script).await;
        for r in 1..=ROUNDS {
            one_round(addr).await;
            let what = format!("{name}, round {r}: the server closed every connection");
            wait_until(&what, || {
                let accepted = seen.accepted.load(Ordering::SeqCst);
                let released = seen.released.lock().unwrap().len();
                let left = client_side(addr);
                let done = accepted >= r
                    && released
                        + seen.reset_by_client.load(Ordering::SeqCst)
                        + seen.closed_by_client.load(Ordering::SeqCst)
                        == accepted
                    && left
                        .iter()
                        .all(|(_, s)| !matches!(s, TcpState::Established | TcpState::CloseWait));
                if !done {
                    eprintln!(
                        "{what}: accepted {accepted}, released {released}, client side {left:?}"
                    );
                }
                done
            })
            .await;
        }
        let mut times = seen.released.lock().unwrap().clone();
        times.sort();
        let (p50, p99, max) = (
            percentile(&times, 50),
            percentile(&times, 99),
            times[times.len() - 1],
        );
        println!(
            "{name}: server FIN -> client close over {} connections: p50 {p50:?}, p99 {p99:?}, max {max:?}",
            times.len()
        );
        assert!(p99 < PROMPT, "{name}: p99 {p99:?}");
    }

    let plain = hyper_client(HttpConnector::new());
    measure("hyper-util Client, HttpConnector", script, |addr| {
        let plain = plain.clone();
        async move {
            round(&plain, &format!("http://{addr}/"), N).await;
        }
    })
    .await;

    let hygienic = hyper_client(HygieneConnector::new(options()));
    measure("hyper-util Client, HygieneConnector", script, |addr| {
        let hygienic = hygienic.clone();
        async move {
            round(&hygienic, &format!("http://{addr}/"), N).await;
        }
    })
    .await;

    let pool = VecPool::default();
    measure("generic Vec pool, peer_closed watcher", script, |addr| {
        let pool = pool.clone();
        async move {
            vec_pool_round(&pool, addr, N).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Keep-Alive: timeout=N

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_layer_evicts_before_the_server_closes() {
    // The server announces 2 s and closes at 2 s; the layer evicts after 1 s.
    let (addr, seen) = scripted_server(Script {
        idle: Duration::from_secs(2),
        keep_alive: Some(2),
    })
    .await;
    let uri = format!("http://{addr}/");
    let mut client = KeepAliveLayer::new().layer(hyper_client(HygieneConnector::new(options())));

    let first = fetch(&mut client, &uri).await.unwrap();
    let first = first.extensions().get::<Conn>().unwrap().clone();
    // Within the allowance the connection is reused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = fetch(&mut client, &uri).await.unwrap();
    assert_eq!(again.extensions().get::<Conn>().unwrap().id(), first.id());

    // 1.3 s after that response: evicted (reset), well before the server's 2 s.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(first.abandoned(), Some(Abandon::IdleTimeout));
    wait_until("the evicted socket is gone", || {
        client_side(addr).is_empty()
    })
    .await;
    wait_until("the server saw the reset", || {
        seen.reset_by_client.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        seen.released.lock().unwrap().is_empty(),
        "the server never had to close"
    );

    // The next request opens a new connection and succeeds.
    let next = fetch(&mut client, &uri).await.unwrap();
    assert_ne!(next.extensions().get::<Conn>().unwrap().id(), first.id());
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_clock_never_cuts_a_request_in_flight() {
    // `timeout=1`: the layer evicts idle connections after 500 ms. A response that
    // takes 1.5 s to start, or stalls 1.5 s mid-body, must still complete.
    let (addr, seen) = scripted_server(Script {
        idle: Duration::from_secs(5),
        keep_alive: Some(1),
    })
    .await;
    let base = format!("http://{addr}");
    let mut client = KeepAliveLayer::new().layer(hyper_client(HygieneConnector::new(options())));

    // hyper-util returns a connection to its pool a moment after the response; a
    // request sent before that opens a second connection. Let it settle.
    let settle = || tokio::time::sleep(Duration::from_millis(50));
    let first = fetch(&mut client, &format!("{base}/")).await.unwrap();
    let conn = first.extensions().get::<Conn>().unwrap().clone();
    settle().await;
    let slow = fetch(&mut client, &format!("{base}/slow")).await.unwrap();
    assert_eq!(slow.body().as_ref(), b"ok");
    settle().await;
    let stall = fetch(&mut client, &format!("{base}/stall")).await.unwrap();
    assert_eq!(stall.body().as_ref(), b"okok");
    // All three on one connection, which is still alive.
    assert_eq!(slow.extensions().get::<Conn>().unwrap().id(), conn.id());
    assert_eq!(stall.extensions().get::<Conn>().unwrap().id(), conn.id());
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(conn.abandoned(), None);
    // Idle now: evicted after 500 ms.
    tokio::time::timeout(GENEROUS, conn.closed()).await.unwrap();
    assert_eq!(conn.abandoned(), Some(Abandon::IdleTimeout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_layer_ignores_other_connectors() {
    let (addr, seen) = scripted_server(Script {
        idle: Duration::from_secs(5),
        keep_alive: Some(1),
    })
    .await;
    let uri = format!("http://{addr}/");
    let mut client = KeepAliveLayer::new().layer(hyper_client(HttpConnector::new()));
    fetch(&mut client, &uri).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    fetch(&mut client, &uri).await.unwrap();
    // Nothing evicted: one connection served both.
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------
// The reuse probe

async fn pair() -> (HygieneStream<TcpIo>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = options();
    let (client, server) = tokio::join!(
        client::connect(addr, options, client_policy()),
        listener.accept()
    );
    (client.unwrap(), server.unwrap().0)
}

/// Probes until the answer changes from `Reusable` (the peer's packet is in flight).
async fn probe_settled(conn: &Conn) -> Probe {
    let deadline = Instant::now() + GENEROUS;
    loop {
        let probe = client::probe(conn);
        if probe != Probe::Reusable || Instant::now() >= deadline {
            return probe;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn probe_sees_an_open_idle_connection_as_reusable() {
    let (client, _server) = pair().await;
    assert_eq!(client::probe(client.conn()), Probe::Reusable);
    assert!(client::probe(client.conn()).is_reusable());
}

#[tokio::test]
async fn probe_sees_the_peers_fin_without_a_watcher() {
    let (client, mut server) = pair().await;
    server.shutdown().await.unwrap();
    assert_eq!(
        probe_settled(client.conn()).await,
        Probe::PeerGone(PeerGone::Fin)
    );
    // Recorded on the Conn: the next probe needs no system call.
    assert_eq!(client.conn().peer_gone(), Some(PeerGone::Fin));
    assert_eq!(client::probe(client.conn()), Probe::PeerGone(PeerGone::Fin));
    // The socket is in CLOSE_WAIT until the pool drops it, then it is gone.
    let local = client.get_ref().get_ref().local_addr().unwrap();
    let server_addr = server.local_addr().unwrap();
    assert!(client_side(server_addr).contains(&(local.port(), TcpState::CloseWait)));
    drop(client);
    let (_, _, left) = watch_close_wait(server_addr, GENEROUS).await;
    assert!(
        !left.iter().any(|(_, s)| *s == TcpState::CloseWait),
        "{left:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn probe_peeks_when_the_reactor_has_not_seen_the_fin() {
    let (client, server) = pair().await;
    // No await from here on: the runtime's reactor cannot learn of the FIN, so the
    // probe must ask the kernel (one MSG_PEEK).
    let server = server.into_std().unwrap();
    server.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(client.conn().peer_gone(), None);
    assert_eq!(client::probe(client.conn()), Probe::PeerGone(PeerGone::Fin));
    assert_eq!(client.conn().peer_gone(), Some(PeerGone::Fin));
}

#[tokio::test]
async fn probe_sees_a_reset() {
    let (client, server) = pair().await;
    server.set_zero_linger().unwrap();
    drop(server);
    assert_eq!(
        probe_settled(client.conn()).await,
        Probe::PeerGone(PeerGone::Reset)
    );
    assert_eq!(client.conn().peer_gone(), Some(PeerGone::Reset));
}

#[tokio::test]
async fn probe_reports_unread_bytes_and_consumes_none() {
    let (mut client, mut server) = pair().await;
    server.write_all(b"late").await.unwrap();
    assert_eq!(probe_settled(client.conn()).await, Probe::Unread);
    assert_eq!(client::probe(client.conn()), Probe::Unread);
    let mut buf = [0u8; 4];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"late");
    // Drained, the connection is reusable again.
    assert_eq!(client::probe(client.conn()), Probe::Reusable);
}

#[tokio::test]
async fn probe_answers_from_the_conn_when_it_already_knows() {
    let (client, mut server) = pair().await;
    let conn = client.conn().clone();
    // A watcher sees the FIN first; the probe then only reads the Conn's state.
    server.shutdown().await.unwrap();
    let gone = tokio::time::timeout(GENEROUS, conn.peer_closed())
        .await
        .unwrap();
    assert_eq!(gone, PeerGone::Fin);
    assert_eq!(client::probe(&conn), Probe::PeerGone(PeerGone::Fin));

    let (other, _server) = pair().await;
    other.conn().abandon(Abandon::DrainDeadline);
    assert_eq!(
        client::probe(other.conn()),
        Probe::Abandoned(Abandon::DrainDeadline)
    );

    drop(client);
    assert_eq!(client::probe(&conn), Probe::PeerGone(PeerGone::Fin));
    let (closed, _server) = pair().await;
    let closed_conn = closed.conn().clone();
    drop(closed);
    assert_eq!(
        client::probe(&closed_conn),
        Probe::PeerGone(PeerGone::LocalClose)
    );
}

#[tokio::test]
async fn connect_applies_the_socket_options() {
    let (client, _server) = pair().await;
    let socket = client.get_ref().get_ref();
    assert!(socket.nodelay().unwrap());
    assert!(socket2::SockRef::from(socket).keepalive().unwrap());
}

// ---------------------------------------------------------------------------------
// Tracing

mod events {
    use std::sync::{Arc, Mutex, OnceLock};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    type Events = Arc<Mutex<Vec<(u64, String)>>>;

    /// The `event` field of every `conn_hygiene::client` event, with the id of the
    /// connection whose span it was emitted in. One global subscriber for the whole
    /// test binary: a scoped one misses events whose callsites other tests' threads
    /// registered first.
    pub(super) fn recorded(conn: u64) -> Vec<String> {
        events()
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| *id == conn)
            .map(|(_, event)| event.clone())
            .collect()
    }

    fn events() -> &'static Events {
        static EVENTS: OnceLock<Events> = OnceLock::new();
        EVENTS.get_or_init(|| {
            let events = Events::default();
            let subscriber = tracing_subscriber::registry().with(Recorder(Arc::clone(&events)));
            tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
            events
        })
    }

    /// Installs the recorder before the test opens connections.
    pub(super) fn install() {
        events();
    }

    struct Recorder(Events);

    struct ConnId(u64);

    #[derive(Default)]
    struct Fields {
        id: Option<u64>,
        event: Option<String>,
    }

    impl Visit for Fields {
        fn record_u64(&mut self, field: &Field, value: u64) {
            if field.name() == "id" {
                self.id = Some(value);
            }
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "event" {
                self.event = Some(value.to_owned());
            }
        }

        fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
    }

    impl<S> Layer<S> for Recorder
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut fields = Fields::default();
            attrs.record(&mut fields);
            if let (Some(conn), Some(span)) = (fields.id, ctx.span(id)) {
                span.extensions_mut().insert(ConnId(conn));
            }
        }

        fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
            if event.metadata().target() != "conn_hygiene::client" {
                return;
            }
            let mut fields = Fields::default();
            event.record(&mut fields);
            let conn = ctx
                .event_span(event)
                .and_then(|span| span.extensions().get::<ConnId>().map(|c| c.0));
            if let (Some(conn), Some(name)) = (conn, fields.event) {
                self.0.lock().unwrap().push((conn, name));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emits_connect_peer_closed_and_evict_events() {
    events::install();

    // The server closes idle connections after 300 ms and announces nothing.
    let (addr, _seen) = scripted_server(Script {
        idle: Duration::from_millis(300),
        keep_alive: None,
    })
    .await;
    let mut client = hyper_client(HygieneConnector::new(options()));
    let response = fetch(&mut client, &format!("http://{addr}/"))
        .await
        .unwrap();
    let closed = response.extensions().get::<Conn>().unwrap().clone();
    tokio::time::timeout(GENEROUS, closed.closed())
        .await
        .unwrap();

    // This one announces 1 s: evicted after 500 ms.
    let (addr, _seen) = scripted_server(Script {
        idle: Duration::from_secs(5),
        keep_alive: Some(1),
    })
    .await;
    let mut client = KeepAliveLayer::new().layer(hyper_client(HygieneConnector::new(options())));
    let response = fetch(&mut client, &format!("http://{addr}/"))
        .await
        .unwrap();
    let evicted = response.extensions().get::<Conn>().unwrap().clone();
    tokio::time::timeout(GENEROUS, evicted.closed())
        .await
        .unwrap();

    assert_eq!(events::recorded(closed.id()), ["connect", "peer_closed"]);
    assert_eq!(
        events::recorded(evicted.id()),
        ["connect", "keep_alive_evict"]
    );
}

/// Options the kernel would refuse fail the connect before it is made, naming the
/// option (they used to fail after connecting, as the kernel's EINVAL).
#[tokio::test]
async fn connector_rejects_invalid_options_before_connecting() {
    use std::error::Error as _;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = SocketOptions::new().keepalive_time(Duration::from_millis(500));
    let mut connector = HygieneConnector::new(options);
    let uri: hyper::Uri = format!("http://{addr}/").parse().unwrap();
    let err = connector.call(uri).await.unwrap_err();
    let source = err.source().expect("the option error");
    let option = source.downcast_ref::<conn_hygiene::options::SocketOptionError>();
    assert_eq!(
        option.expect("a SocketOptionError").option(),
        "TCP_KEEPIDLE"
    );
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "a connection was made");
}
