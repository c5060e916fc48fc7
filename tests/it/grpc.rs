//! gRPC through tonic: the crate (`serve()` with tonic's routes, and tonic's own
//! `Server` on the crate's listener) against plain tonic as the baseline, each check
//! run against both in the same test, both results printed.
//!
//! Clients: tonic's own, and Python's grpcio (`pip install grpcio
//! grpcio-health-checking`) in the `#[ignore]`d tests, which `.ci/run` installs and runs
//! with `cargo test --all-features --test it -- --ignored grpc::`. They fail, loudly, when
//! python3 or grpcio is missing. Judged by the kernel's socket table where sockets are
//! concerned.
#![cfg(all(feature = "tonic", feature = "testing", feature = "client"))]

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use conn_hygiene::census::{Census, TcpState};
use conn_hygiene::client::{ClientStream, HygieneConnector};
use conn_hygiene::grpc::GrpcConnectInfo;
use conn_hygiene::testing::{Side, port_census, wait_for_census};
use conn_hygiene::{
    Conn, HygieneLayer, Listener, Policy, SocketOptions, registry::Registry, serve::BoundedShutdown,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tonic::transport::server::TcpConnectInfo;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower::Service;

// ---------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------

/// How a server under test is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `conn_hygiene::serve()` with tonic's `Routes` as the service.
    Serve,
    /// tonic's own `Server` on `Listener::into_incoming`, with `HygieneLayer`.
    TonicOnListener,
    /// Plain tonic: `Server::builder().add_service(..)` on tonic's `TcpIncoming`.
    Raw,
    /// tonic's own `Server` on `Listener::into_incoming`, the layer forgotten.
    TonicNoLayer,
}

/// What a recording layer saw of each request: the client's port (tonic's
/// `TcpConnectInfo`), and whether the `Conn` and `GrpcConnectInfo` were reachable.
#[derive(Debug, Clone, Default)]
struct Seen(Arc<Mutex<SeenInner>>);

#[derive(Debug, Default)]
struct SeenInner {
    requests: usize,
    // Response bodies dropped: a streaming RPC's body owns its stream, so a dropped
    // body is a cancelled (or finished) RPC.
    bodies_dropped: usize,
    client_ports: HashSet<u16>,
    with_conn: usize,
    with_grpc_info: usize,
}

impl Seen {
    fn requests(&self) -> usize {
        self.0.lock().unwrap().requests
    }

    fn bodies_dropped(&self) -> usize {
        self.0.lock().unwrap().bodies_dropped
    }

    /// Waits until every response body so far was dropped.
    async fn all_bodies_dropped(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.bodies_dropped() < self.requests() {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn client_ports(&self) -> usize {
        self.0.lock().unwrap().client_ports.len()
    }

    fn with_conn(&self) -> usize {
        self.0.lock().unwrap().with_conn
    }

    fn with_grpc_info(&self) -> usize {
        self.0.lock().unwrap().with_grpc_info
    }
}

/// A service that records what a handler would see, then calls `inner`.
#[derive(Debug, Clone)]
struct Record<S> {
    inner: S,
    seen: Seen,
}

impl<S, B> Service<http::Request<B>> for Record<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<TrackedBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        {
            let extensions = req.extensions();
            let mut seen = self.seen.0.lock().unwrap();
            seen.requests += 1;
            if let Some(addr) = extensions
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
            {
                seen.client_ports.insert(addr.port());
            }
            // An extension under tonic's `Server`; `Conn::current()` under `serve()`,
            // which calls and polls HTTP/2 services in the connection's scope.
            let conn = extensions.get::<Conn>().is_some() || Conn::current().is_some();
            seen.with_conn += usize::from(conn);
            seen.with_grpc_info += usize::from(extensions.get::<GrpcConnectInfo>().is_some());
        }
        let response = self.inner.call(req);
        let seen = self.seen.clone();
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                body,
                seen: Some(seen),
            }))
        })
    }
}

/// A response body that counts its drop.
#[derive(Debug, Default)]
struct TrackedBody {
    body: tonic::body::Body,
    seen: Option<Seen>,
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if let Some(seen) = &self.seen {
            seen.0.lock().unwrap().bodies_dropped += 1;
        }
    }
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

struct Server {
    mode: Mode,
    addr: SocketAddr,
    registry: Option<Registry>,
    seen: Seen,
    shutdown: Option<oneshot::Sender<()>>,
    done: oneshot::Receiver<String>,
    // The health reporter: `Watch` streams end when it is dropped.
    _reporter: tonic_health::server::HealthReporter,
}

impl Server {
    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Signals shutdown and waits up to `within` for the server to finish; the
    /// shutdown line it finished with, or `None` if it did not.
    async fn shut_down(&mut self, within: Duration) -> Option<String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(within, &mut self.done)
            .await
            .ok()
            .and_then(Result::ok)
    }
}

fn test_policy(builder: conn_hygiene::policy::PolicyBuilder) -> Policy {
    builder.build().expect("valid policy")
}

async fn start(mode: Mode, policy: Policy) -> Server {
    let (reporter, health) = tonic_health::server::health_reporter();
    let seen = Seen::default();
    let (shutdown, signal) = oneshot::channel::<()>();
    let signal = async move {
        let _ = signal.await;
    };
    let (done_tx, done) = oneshot::channel();
    let options = SocketOptions::new().nodelay(true);
    let (addr, registry) = match mode {
        Mode::Serve => {
            let listener = Listener::bind("127.0.0.1:0", options, policy).expect("bind");
            let addr = listener.local_addr().unwrap();
            let registry = listener.registry().clone();
            let service = Record {
                inner: tonic::service::Routes::new(health),
                seen: seen.clone(),
            };
            tokio::spawn(async move {
                let report = conn_hygiene::serve(listener, service)
                    .with_graceful_shutdown(signal)
                    .await
                    .expect("serve");
                let _ = done_tx.send(format!("shutdown: {report}"));
            });
            (addr, Some(registry))
        }
        Mode::TonicOnListener | Mode::TonicNoLayer => {
            let listener = Listener::bind("127.0.0.1:0", options, policy).expect("bind");
            let addr = listener.local_addr().unwrap();
            // tonic's own shutdown has no deadline: the crate's adds one.
            let graceful = BoundedShutdown::new(&listener);
            let signal = graceful.signal(signal);
            let incoming = listener.into_incoming();
            let registry = incoming.registry().clone();
            let record = seen.clone();
            let record = tower::layer::layer_fn(move |inner| Record {
                inner,
                seen: record.clone(),
            });
            let builder = tonic::transport::Server::builder();
            let report = if mode == Mode::TonicOnListener {
                let mut builder = builder.layer(HygieneLayer::new()).layer(record);
                let server = builder
                    .add_service(health)
                    .serve_with_incoming_shutdown(incoming, signal);
                tokio::spawn(async move { graceful.run(server).await })
            } else {
                let mut builder = builder.layer(record);
                let server = builder
                    .add_service(health)
                    .serve_with_incoming_shutdown(incoming, signal);
                tokio::spawn(async move { graceful.run(server).await })
            };
            tokio::spawn(async move {
                let report = report.await.unwrap().expect("tonic serve");
                let _ = done_tx.send(format!("shutdown: {report}"));
            });
            (addr, Some(registry))
        }
        Mode::Raw => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let record = seen.clone();
            let mut builder = tonic::transport::Server::builder();
            // tonic's own maximum age (no jitter), as the baseline of the crate's.
            if let Some(age) = policy.max_connection_age() {
                builder = builder.max_connection_age(age);
            }
            let server = builder
                .layer(tower::layer::layer_fn(move |inner| Record {
                    inner,
                    seen: record.clone(),
                }))
                .add_service(health)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    signal,
                );
            spawn_tonic(server, done_tx);
            (addr, None)
        }
    };
    Server {
        mode,
        addr,
        registry,
        seen,
        shutdown: Some(shutdown),
        done,
        _reporter: reporter,
    }
}

fn spawn_tonic(
    server: impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
    done: oneshot::Sender<String>,
) {
    tokio::spawn(async move {
        server.await.expect("tonic serve");
        let _ = done.send("shutdown: tonic finished".to_string());
    });
}

/// Server-side sockets on the port other than the listener and TIME_WAIT (which holds
/// no descriptor and no peer).
fn live_server_sockets(census: &Census) -> usize {
    census.total() - census.get(TcpState::Listen) - census.get(TcpState::TimeWait)
}

/// A census on one line: `ESTABLISHED 1, LISTEN 1`.
fn show(census: &Census) -> String {
    census
        .iter()
        .map(|(state, n)| format!("{state} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------
// tonic clients
// ---------------------------------------------------------------------------------------

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}")).unwrap()
}

async fn tonic_client(addr: SocketAddr) -> HealthClient<Channel> {
    HealthClient::new(endpoint(addr).connect().await.expect("connect"))
}

async fn check(client: &mut HealthClient<Channel>) -> Result<ServingStatus, tonic::Status> {
    let response = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(response.into_inner().status())
}

/// Opens a `Watch` stream and waits for its first message (SERVING).
async fn open_watch(client: &mut HealthClient<Channel>) -> tonic::Streaming<HealthCheckResponse> {
    let mut stream = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = stream.message().await.expect("first watch message");
    assert_eq!(first.expect("a message").status(), ServingStatus::Serving);
    stream
}

// ---------------------------------------------------------------------------------------
// Tests with tonic's client
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_answers_serving_with_tonic_client() {
    for mode in [Mode::Serve, Mode::TonicOnListener, Mode::Raw] {
        let server = start(mode, Policy::default()).await;
        let mut client = tonic_client(server.addr).await;
        let status = check(&mut client).await;
        println!("{mode:?}: Check -> {status:?}");
        assert_eq!(status.expect("check"), ServingStatus::Serving, "{mode:?}");
    }
}

/// `HygieneLayer` finds the `Conn` inside tonic's layer stack (through the
/// `GrpcConnectInfo` tonic inserts), and counts the open `Watch` in flight; handlers
/// see the `Conn` and tonic's `TcpConnectInfo` in both crate modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_finds_the_conn_inside_tonic() {
    for mode in [Mode::Serve, Mode::TonicOnListener, Mode::Raw] {
        let server = start(mode, Policy::default()).await;
        let mut client = tonic_client(server.addr).await;
        let _watch = open_watch(&mut client).await;
        let seen = &server.seen;
        println!(
            "{mode:?}: requests={} with Conn={} with GrpcConnectInfo={} client ports={}",
            seen.requests(),
            seen.with_conn(),
            seen.with_grpc_info(),
            seen.client_ports()
        );
        assert_eq!(seen.requests(), 1, "{mode:?}");
        // tonic's `Request::remote_addr` works in every mode.
        assert_eq!(seen.client_ports(), 1, "{mode:?}");
        match mode {
            Mode::Raw | Mode::TonicNoLayer => assert_eq!(seen.with_conn(), 0),
            Mode::Serve | Mode::TonicOnListener => {
                assert_eq!(seen.with_conn(), 1, "{mode:?}");
                let conns = server.registry.as_ref().unwrap().connections();
                assert_eq!(conns.len(), 1, "{mode:?}");
                // The streaming response keeps its RPC in flight: not idle.
                assert_eq!(conns[0].in_flight(), 1, "{mode:?}");
            }
        }
        assert_eq!(
            seen.with_grpc_info(),
            usize::from(mode == Mode::TonicOnListener),
            "{mode:?}"
        );
    }
}

/// tonic's `Server` on the crate's listener without the layer: the crate cannot tell
/// an open stream from an idle connection, so the idle and head clocks stand down
/// (with a warning) rather than cut a `Watch` that outlives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_layer_clocks_never_cut_a_stream() {
    let policy = test_policy(
        Policy::builder()
            .idle_timeout(Some(Duration::from_secs(1)))
            .header_timeout(Some(Duration::from_secs(1))),
    );
    let server = start(Mode::TonicNoLayer, policy).await;
    let mut client = tonic_client(server.addr).await;
    let mut watch = open_watch(&mut client).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let conns = server.registry.as_ref().unwrap().connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].abandoned(), None);
    // The stream is still open: no message, no end, within a short wait.
    let pending = tokio::time::timeout(Duration::from_millis(200), watch.message()).await;
    assert!(pending.is_err(), "the Watch ended: {pending:?}");
    assert_eq!(check(&mut client).await.unwrap(), ServingStatus::Serving);
    // tonic's own extension is there; the `Conn` is not (no layer to add it).
    assert_eq!(server.seen.with_grpc_info(), 2);
    assert_eq!(server.seen.with_conn(), 0);
    println!("TonicNoLayer: Watch alive after 3 s with 1 s idle and head clocks");
}

/// `into_incoming` warns, once per listener, that tonic's `Server` turns the idle
/// clock's and recycling's GOAWAYs into resets; not when the policy has neither.
#[tokio::test]
async fn into_incoming_warns_that_tonic_cannot_send_goaway() {
    use tracing_subscriber::layer::SubscriberExt;

    /// Counts the `conn_hygiene::grpc` warnings.
    struct Warnings(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let meta = event.metadata();
            if meta.target() == "conn_hygiene::grpc" && *meta.level() == tracing::Level::WARN {
                self.0.lock().unwrap().push(format!("{event:?}"));
            }
        }
    }

    let warnings: Arc<Mutex<Vec<String>>> = Arc::default();
    let subscriber = tracing_subscriber::registry().with(Warnings(warnings.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);
    let bind = |policy| Listener::bind("127.0.0.1:0", SocketOptions::new(), policy).unwrap();
    let count = || warnings.lock().unwrap().len();
    // The default policy has an idle timeout.
    let incoming = bind(Policy::default()).into_incoming();
    assert_eq!(count(), 1);
    drop(incoming);
    let age = test_policy(
        Policy::builder()
            .idle_timeout(None)
            .max_connection_age(Some(Duration::from_secs(60))),
    );
    drop(bind(age).into_incoming());
    assert_eq!(count(), 2);
    assert!(warnings.lock().unwrap()[1].contains("serve(listener, Routes)"));
    let neither = test_policy(Policy::builder().idle_timeout(None));
    drop(bind(neither).into_incoming());
    assert_eq!(count(), 2);
}

/// A server-streaming RPC whose client vanished is cancelled, and no server socket is
/// left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_watch_client_is_cancelled() {
    for mode in [Mode::Serve, Mode::TonicOnListener, Mode::Raw] {
        let server = start(mode, Policy::default()).await;
        let mut clients = Vec::new();
        for _ in 0..5 {
            // One connection each.
            let mut client = tonic_client(server.addr).await;
            let watch = open_watch(&mut client).await;
            clients.push((client, watch));
        }
        if let Some(registry) = &server.registry {
            let in_flight: u32 = registry.connections().iter().map(Conn::in_flight).sum();
            assert_eq!(in_flight, 5, "{mode:?}");
        }
        drop(clients);
        let cancelled = server
            .seen
            .all_bodies_dropped(Duration::from_secs(15))
            .await;
        println!(
            "{mode:?}: Watch streams cancelled after their clients left: {} of 5",
            server.seen.bodies_dropped()
        );
        assert!(cancelled, "{mode:?}");
        let census = wait_for_census(server.port(), Side::Local, Duration::from_secs(15), |c| {
            live_server_sockets(c) == 0
        })
        .await;
        println!(
            "{mode:?}: after the clients left: {}",
            show(census.as_ref().unwrap_or_else(|c| c))
        );
        assert!(census.is_ok(), "{mode:?}: server sockets left: {census:?}");
        if let Some(registry) = &server.registry {
            tokio::time::timeout(Duration::from_secs(5), registry.wait_below(1))
                .await
                .expect("registry empties");
        }
    }
}

/// An idle channel whose client PINGs every 200 ms (tonic's keep-alive while idle) is
/// closed by the idle timeout under the crate: the PINGs are not activity. Plain tonic
/// keeps it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinging_idle_channel_is_closed_by_idle_timeout() {
    let policy = || test_policy(Policy::builder().idle_timeout(Some(Duration::from_secs(2))));
    let mut servers = Vec::new();
    for mode in [Mode::Serve, Mode::TonicOnListener, Mode::Raw] {
        let server = start(mode, policy()).await;
        let channel = endpoint(server.addr)
            .http2_keep_alive_interval(Duration::from_millis(200))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .expect("connect");
        let mut client = HealthClient::new(channel);
        assert_eq!(check(&mut client).await.unwrap(), ServingStatus::Serving);
        servers.push((server, client));
    }
    // PINGs flow: the server reads bytes while no RPC is in flight.
    let bytes_read = |server: &Server| -> u64 {
        server
            .registry
            .as_ref()
            .map(|r| r.connections().iter().map(|c| c.bytes().0).sum())
            .unwrap_or(0)
    };
    let before: Vec<u64> = servers.iter().map(|(s, _)| bytes_read(s)).collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for ((server, _), before) in servers.iter().zip(before) {
        if server.registry.is_some() {
            assert!(
                bytes_read(server) > before,
                "{:?}: the client's PINGs reach the server",
                server.mode
            );
        }
    }
    // Idle 2 s, then GOAWAY (or a reset a linger bound later): well within 12 s.
    for (server, _client) in &servers {
        let census = wait_for_census(server.port(), Side::Local, Duration::from_secs(12), |c| {
            live_server_sockets(c) == 0
        })
        .await;
        println!(
            "{:?}: PINGing idle channel after the idle timeout: {}",
            server.mode,
            match &census {
                Ok(_) => "closed".to_string(),
                Err(c) => format!("still open: {}", show(c)),
            }
        );
        match server.mode {
            Mode::Serve | Mode::TonicOnListener => {
                assert!(census.is_ok(), "{:?}: {census:?}", server.mode)
            }
            // The baseline: tonic has no idle timeout (nor the crate without the layer).
            Mode::Raw | Mode::TonicNoLayer => {
                assert!(census.is_err(), "{:?} closed an idle channel?", server.mode)
            }
        }
    }
}

/// SIGTERM with a `Watch` stream open: the example exits 0 by the drain deadline and
/// prints a `shutdown:` line. Plain tonic (`--raw`) is still waiting for the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_watch_open_exits_by_the_drain_deadline() {
    let binary = example_binary();
    let mut results = Vec::new();
    for raw in [false, true] {
        let mut args = vec!["--listen", "127.0.0.1:0", "--drain-timeout", "1s"];
        if raw {
            args.push("--raw");
        }
        let (mut child, addr, mut lines) = spawn_example(&binary, &args).await;
        let mut client = tonic_client(addr).await;
        let mut watch = open_watch(&mut client).await;
        let sent = tokio::time::Instant::now();
        signal(&child, "TERM");
        // The example turns its gRPC health to NOT_SERVING at the signal (the crate's
        // readiness flag); the open `Watch` hears it before the drain deadline.
        let listen = Duration::from_secs(if raw { 1 } else { 3 });
        let heard = tokio::time::timeout(listen, watch.message()).await;
        let heard = match heard {
            Ok(Ok(Some(message))) => Some(message.status()),
            _ => None,
        };
        println!(
            "{}: Watch after SIGTERM -> {heard:?}",
            if raw { "plain tonic (--raw)" } else { "crate" }
        );
        if !raw {
            assert_eq!(heard, Some(ServingStatus::NotServing));
        }
        // The crate: exit by the deadline (1 s) plus 2 s for a loaded machine; the
        // baseline is only shown to outlive it.
        let wait = Duration::from_secs(if raw { 4 } else { 3 });
        let exited = tokio::time::timeout(wait, child.wait()).await;
        let outcome = match exited {
            Ok(status) => {
                let status = status.expect("wait");
                let mut shutdown = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("shutdown:") {
                        shutdown = Some(line);
                    }
                }
                (Some(status), shutdown, sent.elapsed())
            }
            Err(_) => {
                child.kill().await.expect("kill");
                (None, None, sent.elapsed())
            }
        };
        println!(
            "{}: SIGTERM with a Watch open -> exit {:?} after {:?}, {:?}",
            if raw { "plain tonic (--raw)" } else { "crate" },
            outcome.0.map(|s| s.code()),
            outcome.2,
            outcome.1
        );
        results.push(outcome);
    }
    let (status, line, elapsed) = &results[0];
    assert!(status.expect("exited by the deadline").success());
    assert!(*elapsed < Duration::from_secs(3), "{elapsed:?}");
    // The `Watch` held the drain to its deadline, and was forced.
    let line = line.as_deref().expect("a shutdown: line");
    assert!(line.contains("forced=1"), "{line}");
    assert!(
        *elapsed >= Duration::from_secs(1),
        "{elapsed:?}: before the deadline?"
    );
    // The baseline waits for the stream with no deadline.
    assert!(
        results[1].0.is_none(),
        "plain tonic exited with a stream open?"
    );
}

/// The outbound side: tonic's `Endpoint::connect_with_connector` with the crate's
/// `HygieneConnector`. The channel's socket gets the options, and its `Conn` sees the
/// server leave (the server's idle timeout closes the channel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_channel_through_hygiene_connector() {
    let server = start(
        Mode::Serve,
        test_policy(Policy::builder().idle_timeout(Some(Duration::from_secs(1)))),
    )
    .await;
    let keepalive = Duration::from_secs(17);
    let connector =
        HygieneConnector::new(SocketOptions::new().nodelay(true).keepalive_time(keepalive));
    let connected: Arc<Mutex<Vec<Conn>>> = Arc::default();
    let record = connected.clone();
    let connector = tower::ServiceExt::map_response(connector, move |stream: ClientStream| {
        record.lock().unwrap().push(stream.conn().clone());
        let socket = socket2::SockRef::from(stream.get_ref().get_ref().get_ref());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), keepalive);
        assert!(socket.tcp_nodelay().unwrap());
        stream
    });
    let channel = endpoint(server.addr)
        .connect_with_connector(connector)
        .await
        .expect("connect through HygieneConnector");
    let mut client = HealthClient::new(channel);
    assert_eq!(check(&mut client).await.unwrap(), ServingStatus::Serving);
    let conn = connected.lock().unwrap()[0].clone();
    assert_eq!(conn.peer_addr(), server.addr);
    // The server's idle timeout (1 s) sends GOAWAY and closes: the client's `Conn`
    // sees its peer leave.
    let gone = tokio::time::timeout(Duration::from_secs(10), conn.peer_closed())
        .await
        .expect("the client's Conn sees the server leave");
    println!("client Conn: peer left with {gone:?}");
    // hyper's client connection task lets go of the socket: no CLOSE_WAIT on our side.
    tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("the channel drops its socket");
    // The channel reconnects for the next RPC, through the connector again. An RPC
    // issued just as the connection closes may fail with Cancelled ("connection
    // closed"): tonic's channel does not retry an RPC that never left, as gRPC's C core
    // does. Seen under load here, right after the close; none of 120 RPCs issued
    // 0.5 s after a close failed, with this connector or tonic's own.
    let second = match check(&mut client).await {
        Ok(status) => status,
        Err(status) => {
            println!("tonic's channel failed the first RPC after the close: {status}; again");
            check(&mut client).await.expect("the channel reconnects")
        }
    };
    assert_eq!(second, ServingStatus::Serving);
    assert_eq!(connected.lock().unwrap().len(), 2);
}

/// With a maximum connection age of 1 s, RPCs every 100 ms for 4 s spread over
/// several connections: each is retired by GOAWAY at its age (±10 % jitter), and the
/// channel reconnects. Plain tonic with its own `max_connection_age` (no jitter)
/// alongside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_age_spreads_rpcs_over_connections() {
    let policy = || test_policy(Policy::builder().max_connection_age(Some(Duration::from_secs(1))));
    let mut runs = Vec::new();
    // Last, with a `Watch` open that keeps the first connection past its age (see
    // below for the one RPC tonic's client then loses; grpcio's run loses none).
    for (mode, watch) in [
        (Mode::Serve, false),
        (Mode::TonicOnListener, false),
        (Mode::Raw, false),
        (Mode::Serve, true),
    ] {
        let server = start(mode, policy()).await;
        let addr = server.addr;
        let rpcs = tokio::spawn(async move {
            let mut client = tonic_client(addr).await;
            let _watch = if watch {
                Some(open_watch(&mut client).await)
            } else {
                None
            };
            let (mut ok, mut failed) = (0, Vec::new());
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let end = tokio::time::Instant::now() + Duration::from_secs(4);
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                match check(&mut client).await {
                    Ok(ServingStatus::Serving) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        });
        runs.push((server, watch, rpcs));
    }
    for (server, watch, rpcs) in runs {
        let (ok, failed) = rpcs.await.unwrap();
        let connections = server.seen.client_ports();
        println!(
            "{:?}{}: max age 1 s, RPCs every 100 ms for 4 s -> {ok} ok, {} failed, over {connections} connections{}",
            server.mode,
            if watch { " with a Watch open" } else { "" },
            failed.len(),
            failed
                .first()
                .map(|f| format!("; first failure {f}"))
                .unwrap_or_default()
        );
        // An RPC lost at a retirement never reaches the server: the loss is hyper's
        // client under tonic's channel, not the server's GOAWAY (traced with h2=debug;
        // code read in h2 0.4.20, hyper 1.12.0, tonic 0.14.9):
        // - h2's client takes any GOAWAY, the first of hyper's two (last stream id
        //   2^31-1) included, as the end of new streams (`Streams::recv_go_away` sets
        //   `conn_error`), so the window the double GOAWAY leaves is not used;
        // - hyper's client dispatch task notices only when a new request wakes it: its
        //   `poll_ready` then fails and it drops that request ("connection closed",
        //   Cancelled), and only from then on does `SendRequest::poll_ready` fail;
        // - tonic's `Reconnect` reconnects when `poll_ready` fails and does not retry a
        //   failed call.
        // Traced: the server sent GOAWAY(2^31-1), PING, GOAWAY(21) within 0.4 ms; the
        // next RPC, 2.4 ms later, sent no frame and failed; the one after connected
        // anew. A connection that closes at once after its GOAWAY (no stream open)
        // leaves a window of microseconds, so at most one loss per retirement; one
        // held open by a `Watch` loses exactly the next RPC. grpcio moves to another
        // connection at the GOAWAY and loses none.
        // (Had the task taken the request before failing, h2's own GoAway error.)
        let lost = |failed: &[String]| {
            failed
                .iter()
                .all(|f| f.contains("connection closed") || f.contains("GoAway"))
        };
        match server.mode {
            Mode::Serve if watch => {
                assert!(lost(&failed), "{failed:?}");
                // Only the first connection outlives its GOAWAY (the `Watch`).
                assert!(failed.len() <= 1, "{failed:?}");
                assert!(connections >= 3, "{connections}");
            }
            Mode::Serve => {
                assert!(lost(&failed), "{failed:?}");
                assert!(failed.len() < connections, "{failed:?}");
                assert!(ok >= 20, "{ok}");
                // 4 s at 0.9–1.1 s each: at least three connections.
                assert!(connections >= 3, "{connections}");
            }
            // tonic's `Server` on the crate's listener: recycling resets after the
            // grace instead of GOAWAY; printed, not judged.
            Mode::TonicOnListener | Mode::TonicNoLayer | Mode::Raw => {}
        }
    }
}

/// The same with grpcio as the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with grpcio and grpcio-health-checking; .ci/run installs them"]
async fn grpcio_max_connection_age_spreads_rpcs_over_connections() {
    require_python_grpc();
    let policy = || test_policy(Policy::builder().max_connection_age(Some(Duration::from_secs(1))));
    let mut runs = Vec::new();
    // With a `Watch` open too: it keeps the first connection open past its age (until
    // the recycle grace), and the RPCs must move to new connections.
    for (mode, watch) in [
        (Mode::Serve, false),
        (Mode::Raw, false),
        (Mode::Serve, true),
    ] {
        let server = start(mode, policy()).await;
        let mut args = vec![
            "unary".into(),
            server.addr.to_string(),
            "4".into(),
            "0.1".into(),
        ];
        if watch {
            args.push("with-watch".into());
        }
        let client = tokio::spawn(async move { python_output(&args).await });
        runs.push((server, watch, client));
    }
    for (server, watch, client) in runs {
        let out = client.await.unwrap();
        let connections = server.seen.client_ports();
        println!(
            "{:?}{}: grpcio, max age 1 s, RPCs every 100 ms for 4 s -> {} over {connections} connections",
            server.mode,
            if watch { " with a Watch open" } else { "" },
            out.trim().replace('\n', " | ")
        );
        if server.mode == Mode::Serve {
            assert!(out.trim().ends_with("failed 0"), "{out}");
            assert!(connections >= 3, "{connections}");
        }
    }
}

/// The drain under `serve()`, and under tonic's `Server` on the crate's listener with
/// `BoundedShutdown`, resets a `Watch` stream at the deadline and reports it; plain
/// tonic's shutdown waits for the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_with_watch_open() {
    let policy = || test_policy(Policy::builder().drain_timeout(Duration::from_secs(1)));
    for mode in [Mode::Serve, Mode::TonicOnListener, Mode::Raw] {
        let mut server = start(mode, policy()).await;
        let mut client = tonic_client(server.addr).await;
        let _watch = open_watch(&mut client).await;
        let line = server.shut_down(Duration::from_secs(5)).await;
        println!("{mode:?}: shutdown with a Watch open -> {line:?}");
        match mode {
            Mode::Serve | Mode::TonicOnListener => {
                let line = line.expect("the crate's shutdown drains by its deadline");
                assert!(line.contains("forced=1"), "{line}");
                assert!(line.contains("held by busy handler"), "{line}");
            }
            _ => assert!(line.is_none(), "plain tonic has no deadline: {line:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The example binary
// ---------------------------------------------------------------------------------------

/// `target/<profile>/examples/grpc_server`, built now so that it is never stale
/// (`cargo test` builds examples, `--test grpc` alone does not; cargo has released its
/// lock by the time tests run, and a fresh build costs about a second).
fn example_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let binary = profile_dir.join("examples").join("grpc_server");
    // The features this test was built with: under `--all-features` the example is
    // then the one `cargo build --all-features --examples` made, not a rebuild.
    let features: Vec<&str> = [
        ("hyper", cfg!(feature = "hyper")),
        ("axum", cfg!(feature = "axum")),
        ("testing", cfg!(feature = "testing")),
        ("client", cfg!(feature = "client")),
        ("tonic", cfg!(feature = "tonic")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // Without the variables cargo sets for a test (`CARGO_PKG_*`, `CARGO_MANIFEST_*`,
    // …): build scripts that watch them would rebuild their crates each time.
    for (name, _) in std::env::vars_os() {
        let keep = ["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_TERM_COLOR"];
        if let Some(name) = name.to_str()
            && name.starts_with("CARGO_")
            && !keep.contains(&name)
        {
            build.env_remove(name);
        }
    }
    build.args(["build", "--quiet", "--example", "grpc_server"]);
    build.args(["--no-default-features", "--features", &features.join(",")]);
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        build.arg("--release");
    }
    let status = build
        .status()
        .expect("run cargo build --example grpc_server");
    assert!(status.success(), "cargo build --example grpc_server failed");
    assert!(binary.exists(), "{} missing", binary.display());
    binary
}

async fn spawn_example(
    binary: &std::path::Path,
    args: &[&str],
) -> (
    tokio::process::Child,
    SocketAddr,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = tokio::process::Command::new(binary)
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn grpc_server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("grpc_server announces itself")
        .unwrap()
        .expect("a first line");
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .parse()
        .unwrap();
    (child, addr, lines)
}

fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

// ---------------------------------------------------------------------------------------
// Python grpcio, the independent client (opt-in)
// ---------------------------------------------------------------------------------------

const PY_CLIENT: &str = r#"
import sys, time, threading
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

def main():
    mode, addr = sys.argv[1], sys.argv[2]
    if mode == "check":
        with grpc.insecure_channel(addr) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status), flush=True)
    elif mode == "watch":
        count = int(sys.argv[3])
        streams = []
        for _ in range(count):
            # A channel each: one connection per stream.
            channel = grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
            stub = health_pb2_grpc.HealthStub(channel)
            stream = stub.Watch(health_pb2.HealthCheckRequest(service=""))
            first = next(stream)
            assert first.status == health_pb2.HealthCheckResponse.SERVING, first
            streams.append((channel, stream))
        print("watching", flush=True)
        time.sleep(3600)
    elif mode == "idle":
        options = [
            ("grpc.keepalive_time_ms", 500),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        channel = grpc.insecure_channel(addr, options=options)
        states = []
        channel.subscribe(lambda s: states.append((time.time(), s.name)), try_to_connect=True)
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        done = time.time()
        print("ready", health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status), flush=True)
        time.sleep(float(sys.argv[3]))
        print("states", " ".join(name for _, name in states), flush=True)
        # How long after its RPC the channel went IDLE (its connection closed).
        idle = [t for t, name in states if name == "IDLE" and t > done]
        print("idle_after", round(idle[0] - done, 2) if idle else "never", flush=True)
    elif mode == "unary":
        seconds, interval = float(sys.argv[3]), float(sys.argv[4])
        channel = grpc.insecure_channel(addr)
        stub = health_pb2_grpc.HealthStub(channel)
        if len(sys.argv) > 5 and sys.argv[5] == "with-watch":
            # A stream that keeps the first connection open past its age.
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
            next(watch)
        ok = failed = 0
        end = time.time() + seconds
        while time.time() < end:
            try:
                stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                ok += 1
            except grpc.RpcError as e:
                failed += 1
                print("failed", e.code(), e.details(), flush=True)
            time.sleep(interval)
        print("ok", ok, "failed", failed, flush=True)

main()
"#;

/// Panics, loudly, unless python3 with grpcio and grpcio-health-checking is here.
fn require_python_grpc() {
    let out = Command::new("python3")
        .args(["-c", "import grpc, grpc_health.v1.health_pb2_grpc"])
        .output();
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "python3 lacks grpcio / grpcio-health-checking (pip install grpcio \
             grpcio-health-checking; .ci/run installs them): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("python3 not found ({e}); .ci/run installs it"),
    }
}

fn python(args: &[&str]) -> Command {
    let mut command = Command::new("python3");
    command.arg("-c").arg(PY_CLIENT).args(args);
    command
}

async fn python_output(args: &[String]) -> String {
    python_run(args, &[]).await.0
}

/// Runs the client with `env` set; its standard output and error.
async fn python_run(args: &[String], env: &[(&str, &str)]) -> (String, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut command = tokio::process::Command::from(python(&args));
    command.envs(env.iter().copied());
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("python client finishes")
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "python client failed: {stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with grpcio and grpcio-health-checking; .ci/run installs them"]
async fn grpcio_check_answers_serving() {
    require_python_grpc();
    for mode in [Mode::Serve, Mode::TonicOnListener, Mode::Raw] {
        let server = start(mode, Policy::default()).await;
        let out = python_output(&["check".into(), server.addr.to_string()]).await;
        println!("{mode:?}: grpcio Check -> {}", out.trim());
        assert_eq!(out.trim(), "SERVING", "{mode:?}");
    }
}

/// 40 `Watch` streams whose client processes are killed (`kill -9`): no server socket
/// is left behind within the half-close grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with grpcio and grpcio-health-checking; .ci/run installs them"]
async fn grpcio_killed_watch_clients_leave_no_socket() {
    require_python_grpc();
    const PROCESSES: usize = 8;
    const STREAMS_EACH: usize = 5;
    for mode in [Mode::Serve, Mode::TonicOnListener, Mode::Raw] {
        let server = start(mode, Policy::default()).await;
        let mut children: Vec<Child> = Vec::new();
        for _ in 0..PROCESSES {
            children.push(
                python(&["watch", &server.addr.to_string(), &STREAMS_EACH.to_string()])
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("spawn python3"),
            );
        }
        // Every process reports its streams open.
        let mut readers = Vec::new();
        for child in &mut children {
            let stdout = child.stdout.take().unwrap();
            readers.push(tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                    .unwrap();
                line
            }));
        }
        for reader in readers {
            let line = tokio::time::timeout(Duration::from_secs(60), reader)
                .await
                .expect("python watchers start")
                .unwrap();
            assert_eq!(line.trim(), "watching", "{mode:?}");
        }
        let open = port_census(server.port(), Side::Local).unwrap();
        assert_eq!(
            live_server_sockets(&open),
            PROCESSES * STREAMS_EACH,
            "{mode:?}: {open:?}"
        );
        for child in &mut children {
            child.kill().unwrap(); // SIGKILL
        }
        for child in &mut children {
            child.wait().unwrap();
        }
        // Within the default half-close grace (10 s), with room for a loaded machine.
        let census = wait_for_census(server.port(), Side::Local, Duration::from_secs(15), |c| {
            live_server_sockets(c) == 0
        })
        .await;
        let cancelled = server.seen.all_bodies_dropped(Duration::from_secs(5)).await;
        println!(
            "{mode:?}: {} of {} Watch streams cancelled",
            server.seen.bodies_dropped(),
            server.seen.requests()
        );
        assert!(cancelled, "{mode:?}");
        println!(
            "{mode:?}: {} Watch clients killed -> server sockets {}",
            PROCESSES * STREAMS_EACH,
            match &census {
                Ok(_) => "all gone".to_string(),
                Err(c) => format!("left: {}", show(c)),
            }
        );
        if let Some(registry) = &server.registry {
            assert!(census.is_ok(), "{mode:?}: {census:?}");
            tokio::time::timeout(Duration::from_secs(5), registry.wait_below(1))
                .await
                .expect("registry empties");
        }
    }
}

/// A grpcio channel that is idle but PINGs (keepalive_time 500 ms) is closed by the idle
/// timeout; hyper's HTTP/2 server does not answer the PINGs with ENHANCE_YOUR_CALM
/// (h2 has no PING-flood limit), so the client keeps pinging throughout.
///
/// Under `serve()` the close is a GOAWAY at the idle timeout: the server side is gone
/// within the idle timeout plus a second (a reset would come a linger bound, 5 s,
/// later), and grpcio's own trace (`GRPC_TRACE=http`) shows the GOAWAY. grpcio's
/// connectivity goes READY → IDLE, never TRANSIENT_FAILURE; it does the same after a
/// reset (measured with grpcio 1.85 under tonic's `Server`, below), so the states
/// alone cannot tell the two apart: the trace and the timing do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with grpcio and grpcio-health-checking; .ci/run installs them"]
async fn grpcio_pinging_idle_channel_is_closed_by_idle_timeout() {
    require_python_grpc();
    const IDLE: Duration = Duration::from_secs(3);
    // The default linger bound: how much later a reset comes than a GOAWAY.
    const LINGER: Duration = Duration::from_secs(5);
    // Long enough for the reset under tonic's `Server` (idle + linger) to happen while
    // the client runs.
    const CLIENT_IDLES: &str = "11";
    let policy = || test_policy(Policy::builder().idle_timeout(Some(IDLE)));
    let mut runs = Vec::new();
    for mode in [Mode::Raw, Mode::Serve, Mode::TonicOnListener] {
        let server = start(mode, policy()).await;
        let args = vec!["idle".into(), server.addr.to_string(), CLIENT_IDLES.into()];
        let client = tokio::spawn(async move {
            python_run(
                &args,
                &[("GRPC_VERBOSITY", "debug"), ("GRPC_TRACE", "http")],
            )
            .await
        });
        // Judged from the server's side, from when the one RPC arrived.
        let (seen, registry, port) = (server.seen.clone(), server.registry.clone(), server.port());
        let judge = tokio::spawn(async move {
            let arrived = tokio::time::Instant::now() + Duration::from_secs(30);
            while seen.requests() == 0 {
                assert!(tokio::time::Instant::now() < arrived, "{mode:?}: no RPC");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let rpc = tokio::time::Instant::now();
            if let Some(registry) = &registry {
                // PINGs flow while the channel idles, before the idle timeout. grpcio
                // sends one a second at most ("Ping delayed: not enough time elapsed
                // since last ping" in its trace), whatever its keepalive_time.
                let conns = registry.connections();
                assert_eq!(conns.len(), 1, "{mode:?}");
                let before = conns[0].bytes().0;
                let window = IDLE * 2 / 3;
                tokio::time::sleep(window).await;
                assert!(
                    !conns[0].is_closed(),
                    "{mode:?}: closed before its idle timeout"
                );
                let pings = conns[0].bytes().0 - before;
                // A PING frame is 17 bytes.
                assert!(pings >= 17, "{mode:?}: {pings} bytes in {window:?}");
            }
            let within = match mode {
                Mode::Serve => IDLE + Duration::from_secs(1),
                Mode::TonicOnListener => IDLE + LINGER + Duration::from_secs(2),
                Mode::Raw | Mode::TonicNoLayer => IDLE + Duration::from_secs(1),
            };
            let census = wait_for_census(port, Side::Local, within - rpc.elapsed(), |c| {
                live_server_sockets(c) == 0
            })
            .await;
            (census, rpc.elapsed())
        });
        runs.push((server, client, judge));
    }
    for (server, client, judge) in runs {
        let mode = server.mode;
        let (census, elapsed) = judge.await.unwrap();
        let (out, trace) = client.await.unwrap();
        let goaway = trace.contains("got goaway");
        println!(
            "{mode:?}: grpcio PINGing idle channel -> server side {} ({elapsed:?} after the RPC); \
             client: {}; GOAWAY in grpcio's trace: {goaway}",
            match &census {
                Ok(_) => "closed".to_string(),
                Err(c) => format!("still open: {}", show(c)),
            },
            out.trim().replace('\n', " | "),
        );
        assert!(!trace.contains("ENHANCE_YOUR_CALM") && !trace.contains("too_many_pings"));
        let states = out
            .lines()
            .find_map(|line| line.strip_prefix("states "))
            .expect("states");
        let idle_after = out
            .lines()
            .find_map(|line| line.strip_prefix("idle_after "))
            .expect("idle_after");
        assert!(!states.contains("TRANSIENT_FAILURE"), "{mode:?}: {states}");
        match mode {
            Mode::Raw | Mode::TonicNoLayer => {
                assert!(census.is_err(), "plain tonic closed an idle channel?");
                assert_eq!(idle_after, "never", "{mode:?}");
                assert!(!goaway, "{mode:?}");
            }
            Mode::Serve => {
                assert!(census.is_ok(), "{census:?}");
                assert!(goaway, "{mode:?}: no GOAWAY in grpcio's trace");
                assert!(states.ends_with("READY IDLE"), "{mode:?}: {states}");
                let idle_after: f64 = idle_after.parse().expect("the channel went IDLE");
                let (low, high) = (IDLE.as_secs_f64() - 0.2, IDLE.as_secs_f64() + 1.0);
                assert!((low..high).contains(&idle_after), "{idle_after} s");
            }
            // Reset at idle + linger, without GOAWAY: tonic's `Server` cannot send one
            // for the crate.
            Mode::TonicOnListener => {
                assert!(census.is_ok(), "{census:?}");
                assert!(
                    elapsed >= IDLE + LINGER - Duration::from_millis(200),
                    "{elapsed:?}"
                );
                assert!(!goaway, "{mode:?}: a GOAWAY from tonic's Server?");
            }
        }
    }
}
