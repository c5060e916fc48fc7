//! The one app every server test talks to (the demo server's kind of routes):
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /` | "ok" |
//! | `POST /echo` | the whole body, read first |
//! | `POST /upload` | the same, under a 10 B/s-after-5 s body floor (a route's `RequestLimits`) |
//! | `POST /read-on` | reads on past up to three body errors, then says how the body ended |
//! | `POST /early` | [`EARLY_ANSWER`] bytes at once, the body never read |
//! | `GET /big/{bytes}` | that many bytes, streamed ([`big`](super::big)) |
//! | `GET /block/{bytes}` | that many bytes in one piece: the most a handler hands the server at once |
//! | `POST /count` | the body's length, read first |
//! | `GET /slow/{ms}` | "slept", after `ms` |
//! | `GET /sse/{n}/{ms}` | `n` server-sent events, `ms` apart ([`sse`]) |
//! | `GET`/`POST /stuck` | never answers until [`AppState::release`], counted while it runs; no body extractor |
//! | `POST /hold` | holds the body unread, like `/stuck` |
//! | `GET /ws/{kind}` | a WebSocket echo ([`ws`]) |
//! | any method `/tunnel` | 101, then a tunnel that echoes what it reads ([`tunnel`]) |
//! | `GET /retire` | "bye", and retires the connection (`Conn::start_draining`) |
//! | `GET /peer` | the peer's address from `ConnectInfo<SocketAddr>` |
//! | `GET /conn`, `GET /current` | the peer's address from the `Conn` extractor, `Conn::current` |
//! | `GET /connect-info` | `id=N peer=ADDR`, from `ConnectInfo<Conn>` |
//! | `GET /whoami` | the connection's id and requests in flight, from the `Conn` extractor |
//! | `GET /ip` | `PEER PROXIED_BY` ([`ip`]): the peer and `Conn::proxied_by`, as the mode's `ConnectInfo` gives them |

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::routing::{any, get, post};
use conn_hygiene::{Conn, MinRate, limits::RequestLimits, limits::RequestLimitsLayer};
use tokio::sync::watch;
use tokio::time::Instant;

/// The body of `POST /early`.
pub(crate) const EARLY_ANSWER: usize = 1024 * 1024;

/// What a test can see of the app: how many stuck handlers run (so that it tells a
/// cancelled handler from a leaked one), and a switch that lets them answer.
#[derive(Clone, Debug)]
pub(crate) struct AppState {
    stuck: Arc<AtomicUsize>,
    release: Arc<watch::Sender<bool>>,
}

impl AppState {
    fn new() -> AppState {
        AppState {
            stuck: Arc::new(AtomicUsize::new(0)),
            release: Arc::new(watch::channel(false).0),
        }
    }

    /// How many `/stuck` and `/hold` handlers are running.
    pub(crate) fn stuck(&self) -> usize {
        self.stuck.load(Ordering::SeqCst)
    }

    /// Waits until `n` stuck handlers run.
    pub(crate) async fn wait_stuck(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.stuck() != n {
            assert!(
                Instant::now() < deadline,
                "expected {n} stuck handlers, found {}",
                self.stuck()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Lets every stuck handler answer, now and later.
    pub(crate) fn release(&self) {
        self.release.send_replace(true);
    }
}

/// Counts a running stuck handler until it is dropped (cancelled) or returns.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn enter(counter: &Arc<AtomicUsize>) -> Running {
        counter.fetch_add(1, Ordering::SeqCst);
        Running(counter.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn stuck(State(state): State<AppState>) -> &'static str {
    let _running = Running::enter(&state.stuck);
    let _ = state
        .release
        .subscribe()
        .wait_for(|released| *released)
        .await;
    "released"
}

async fn hold(State(state): State<AppState>, body: Body) -> &'static str {
    let _held = body;
    stuck(State(state)).await
}

/// `n` server-sent events, `every` apart.
pub(crate) fn sse(n: u64, every: Duration) -> Body {
    let events = futures_util::stream::unfold(0, move |i| async move {
        if i == n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(every).await;
        }
        Some((
            Ok::<_, io::Error>(Bytes::from(format!("data: {i}\n\n"))),
            i + 1,
        ))
    });
    Body::from_stream(events)
}

/// A handler that logs a body error and reads on, up to three errors: it says how its
/// body ended.
async fn read_on(mut body: Body) -> String {
    use http_body_util::BodyExt;
    let mut errors = 0;
    loop {
        match body.frame().await {
            Some(Ok(_)) => {}
            Some(Err(error)) if errors < 3 => {
                eprintln!("read-on: {error}");
                errors += 1;
            }
            Some(Err(_)) => return format!("errors={errors}, then an error"),
            None => return format!("errors={errors}, then a clean end"),
        }
    }
}

/// A WebSocket echo. Under a drain it says goodbye with 1001 (going away), unless the
/// route is `/ws/deaf`; `/ws/stuck` never touches the socket after the upgrade.
async fn ws(
    conn: Result<Conn, (http::StatusCode, &'static str)>,
    Path(kind): Path<String>,
    upgrade: WebSocketUpgrade,
) -> axum::response::Response {
    let listens = kind != "deaf";
    upgrade.on_upgrade(move |socket| async move {
        if kind == "stuck" {
            let _held = socket;
            std::future::pending::<()>().await
        } else {
            ws_echo(socket, conn.ok().filter(|_| listens)).await
        }
    })
}

async fn ws_echo(mut socket: WebSocket, conn: Option<Conn>) {
    let draining = async {
        match &conn {
            Some(conn) => conn.draining().await,
            None => std::future::pending().await,
        }
    };
    let mut draining = std::pin::pin!(draining);
    loop {
        tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    if socket.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            () = &mut draining => {
                let close = CloseFrame { code: 1001, reason: "going away".into() };
                let _ = socket.send(Message::Close(Some(close))).await;
                return;
            }
        }
    }
}

/// Upgrades to a tunnel (`Upgrade: echo`) that echoes what it reads.
async fn tunnel(mut req: axum::extract::Request) -> axum::response::Response {
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let io = hyper_util::rt::TokioIo::new(upgraded);
            let (mut r, mut w) = tokio::io::split(io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    axum::response::Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Body::empty())
        .unwrap()
}

/// `GET /ip`: the peer as the handler's `ConnectInfo` gives it, then
/// `Conn::proxied_by`: `ConnectInfo<SocketAddr>` with `Conn::current` under
/// `serve().connect_info(true)`, else `ConnectInfo<Conn>` (`axum::serve` with
/// `into_make_service_with_connect_info::<Conn>`); 500 without either.
async fn ip(req: axum::extract::Request) -> Result<String, (http::StatusCode, &'static str)> {
    let extensions = req.extensions();
    if let Some(ConnectInfo(peer)) = extensions.get::<ConnectInfo<SocketAddr>>() {
        let by = Conn::current().and_then(|conn| conn.proxied_by());
        return Ok(format!("{peer} {by:?}"));
    }
    match extensions.get::<ConnectInfo<Conn>>() {
        Some(ConnectInfo(conn)) => Ok(format!("{} {:?}", conn.peer_addr(), conn.proxied_by())),
        None => Err((http::StatusCode::INTERNAL_SERVER_ERROR, "no ConnectInfo")),
    }
}

/// The app and its state.
pub(crate) fn app_with_state() -> (Router, AppState) {
    let state = AppState::new();
    // Slow mobile uploads: 10 B/s after 5 s, on this route only.
    let slow_uploads = RequestLimits::builder()
        .min_body_rate(Some(MinRate::new(10, Duration::from_secs(5))))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/echo", post(|body: Bytes| async move { body }))
        .route(
            "/upload",
            post(|body: Bytes| async move { body }).layer(RequestLimitsLayer::new(slow_uploads)),
        )
        .route("/read-on", post(read_on))
        .route("/early", post(|| async { vec![b'e'; EARLY_ANSWER] }))
        .route("/big/{bytes}", get(super::big::big))
        .route(
            "/block/{bytes}",
            get(|Path(bytes): Path<usize>| async move { vec![b'x'; bytes] }),
        )
        .route(
            "/count",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .route(
            "/slow/{ms}",
            get(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "slept"
            }),
        )
        .route(
            "/sse/{n}/{ms}",
            get(|Path((n, ms)): Path<(u64, u64)>| async move {
                (
                    [("content-type", "text/event-stream")],
                    sse(n, Duration::from_millis(ms)),
                )
            }),
        )
        .route("/stuck", get(stuck).post(stuck))
        .route("/hold", post(hold))
        .route("/ws/{kind}", get(ws))
        .route("/tunnel", any(tunnel))
        .route(
            "/retire",
            get(|conn: Conn| async move {
                conn.start_draining();
                "bye"
            }),
        )
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .route(
            "/conn",
            get(|conn: Conn| async move { conn.peer_addr().to_string() }),
        )
        .route(
            "/current",
            get(|| async {
                Conn::current()
                    .map(|conn| conn.peer_addr().to_string())
                    .unwrap_or_default()
            }),
        )
        .route(
            "/connect-info",
            get(|ConnectInfo(conn): ConnectInfo<Conn>| async move {
                format!("id={} peer={}", conn.id(), conn.peer_addr())
            }),
        )
        .route(
            "/whoami",
            get(|conn: Conn| async move { format!("{} {}", conn.id(), conn.in_flight()) }),
        )
        .route("/ip", get(ip))
        .with_state(state.clone());
    (app, state)
}

/// The app.
pub(crate) fn app() -> Router {
    app_with_state().0
}
