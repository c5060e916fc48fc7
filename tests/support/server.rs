//! The one server fixture: [the app](super::app) served in a [`Mode`] under a
//! `Policy`, on a free loopback port, with its address, registry, the app's state and
//! a shutdown handle. Aborted when dropped.
//!
//! ```ignore
//! for mode in MODES {
//!     let server = Server::start(mode, policy.clone()).await;
//!     // … talk to server.addr …
//!     let report = server.shutdown().await;
//! }
//! ```
//! [`Server::builder`] changes the rest: socket options, the listener, the app, the
//! shutdown, `serve()`'s settings and TLS.

use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use conn_hygiene::serve::{Accepted, BoundedShutdown, Protocol, Serve, ShutdownReport};
use conn_hygiene::{Conn, HygieneLayer, Listener, Policy, SocketOptions, registry::Registry};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::app::{AppState, app_with_state};

/// The bound on anything that should happen "soon": only a broken server reaches it.
const GENEROUS: Duration = Duration::from_secs(10);
/// The bound on a shutdown, deregistration and drain included.
const SHUTDOWN: Duration = Duration::from_secs(20);

/// How the app is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `conn_hygiene::serve(listener, app)`.
    Serve,
    /// `axum::serve` over the crate's listener, with `HygieneLayer` and
    /// `ConnectInfo<Conn>`.
    AxumLayer,
    /// `axum::serve` over the crate's listener, nothing else.
    AxumPlain,
    /// `axum::serve` with `ConnectInfo<Conn>` (for the extractor) but no layer: a
    /// misconfiguration the crate must notice before a clock cuts a handler.
    AxumConnectInfoAlone,
    /// `axum::serve` with the layer and `ConnectInfo<Conn>`, and the app again under
    /// `/outside` added after `.layer(..)` (axum's common pitfall): outside the layer.
    AxumLayerThenRoutes,
    /// `axum::serve` over a tokio `TcpListener`: no hygiene at all, the contrast.
    AxumTokio,
}

/// The three ways of serving the crate supports.
pub(crate) const MODES: [Mode; 3] = [Mode::Serve, Mode::AxumLayer, Mode::AxumPlain];

/// `serve()`'s builder for the app, before its shutdown signal.
pub(crate) type AppServe = Serve<Router, std::future::Pending<()>>;

/// How the `axum::serve` modes shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shutdown {
    /// Through the crate's `BoundedShutdown`: the policy's drain deadline and a report.
    Crate,
    /// `axum::serve`'s own graceful shutdown alone: no deadline, no report.
    Axum,
}

/// A server being set up: [`Server::builder`].
pub(crate) struct ServerBuilder {
    mode: Mode,
    policy: Policy,
    address: SocketAddr,
    options: SocketOptions,
    tune: Box<dyn FnOnce(Listener) -> Listener>,
    routes: Box<dyn FnOnce(Router) -> Router>,
    shutdown: Shutdown,
    configure: Box<dyn FnOnce(AppServe) -> AppServe>,
    graceful: Box<dyn FnOnce(BoundedShutdown) -> BoundedShutdown + Send>,
    tls: Option<(Arc<ServerConfig>, CertificateDer<'static>)>,
}

impl ServerBuilder {
    /// Where to listen (a free loopback port unless told).
    pub(crate) fn address(mut self, address: &str) -> Self {
        self.address = address.parse().expect("a socket address");
        self
    }

    /// The listener's socket options.
    pub(crate) fn options(mut self, options: SocketOptions) -> Self {
        self.options = options;
        self
    }

    /// A change to the listener once bound (a connection cap, …).
    pub(crate) fn tune(mut self, tune: impl FnOnce(Listener) -> Listener + 'static) -> Self {
        self.tune = Box::new(tune);
        self
    }

    /// A change to the app (a test's own routes), before any layer.
    pub(crate) fn routes(mut self, routes: impl FnOnce(Router) -> Router + 'static) -> Self {
        self.routes = Box::new(routes);
        self
    }

    /// How the `axum::serve` modes shut down ([`Shutdown::Crate`] unless told).
    pub(crate) fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The `BoundedShutdown`'s settings (the `axum::serve` modes under
    /// [`Shutdown::Crate`]).
    pub(crate) fn graceful(
        mut self,
        graceful: impl FnOnce(BoundedShutdown) -> BoundedShutdown + Send + 'static,
    ) -> Self {
        self.graceful = Box::new(graceful);
        self
    }

    /// `serve()`'s settings ([`Mode::Serve`] only).
    pub(crate) fn configure(
        mut self,
        configure: impl FnOnce(AppServe) -> AppServe + 'static,
    ) -> Self {
        self.configure = Box::new(configure);
        self
    }

    /// TLS with a self-signed certificate for `localhost` ([`super::tls`]), the
    /// protocol chosen by ALPN ([`Mode::Serve`] only); [`Server::connect_tls`] trusts it.
    pub(crate) fn tls(mut self) -> Self {
        self.tls = Some(super::tls::server_config());
        self
    }

    /// Binds and serves.
    pub(crate) async fn start(self) -> Server {
        let ServerBuilder {
            mode,
            policy,
            address,
            options,
            tune,
            routes,
            shutdown,
            configure,
            graceful,
            tls,
        } = self;
        assert!(
            mode == Mode::Serve || tls.is_none(),
            "the fixture serves TLS under serve() only"
        );
        let (tls, cert) = tls.unzip();
        let (app, state) = app_with_state();
        let app = routes(app);
        let (signal, signalled) = oneshot::channel::<()>();
        let signalled = async move {
            let _ = signalled.await;
        };
        if mode == Mode::AxumTokio {
            let listener = tokio::net::TcpListener::bind(address).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let serving = axum::serve(listener, app).with_graceful_shutdown(signalled);
            let task = tokio::spawn(async move { serving.await.map(|()| None) });
            return Server::new(addr, Registry::new(), state, cert, signal, task);
        }
        let listener = Listener::bind(address, options, policy).unwrap();
        let listener = tune(listener);
        let addr = listener.local_addr().unwrap();
        let registry = listener.registry().clone();
        let task = match mode {
            Mode::Serve => {
                let serving =
                    configure(conn_hygiene::serve(listener, app)).with_graceful_shutdown(signalled);
                match tls {
                    None => spawn_report(serving.into_future()),
                    Some(config) => {
                        let tls = TlsAcceptor::from(config);
                        let serving = serving.with_acceptor(move |stream| {
                            let tls = tls.clone();
                            async move {
                                let stream = tls.accept(stream).await?;
                                let alpn = stream.get_ref().1.alpn_protocol();
                                let protocol = Protocol::from_alpn(alpn);
                                Ok(Accepted::new(stream).with_protocol(protocol))
                            }
                        });
                        spawn_report(serving.into_future())
                    }
                }
            }
            Mode::AxumTokio => unreachable!("served above"),
            axum_mode => {
                // The app as the mode has it, and whether handlers get `ConnectInfo<Conn>`.
                let (app, connect_info) = match axum_mode {
                    Mode::AxumLayer => (app.layer(HygieneLayer::new()), true),
                    Mode::AxumLayerThenRoutes => {
                        let outside = super::app::app();
                        (
                            app.layer(HygieneLayer::new()).nest("/outside", outside),
                            true,
                        )
                    }
                    Mode::AxumConnectInfoAlone => (app, true),
                    _ => (app, false),
                };
                // `axum::serve` of `$app`, whose type differs with `ConnectInfo`.
                macro_rules! serving {
                    ($app:expr) => {{
                        let app = $app;
                        Box::new(|l, signal| {
                            let serving = axum::serve(l, app).with_graceful_shutdown(signal);
                            Box::pin(serving.into_future()) as Serving
                        })
                    }};
                }
                let serve: Box<dyn FnOnce(Listener, Signal) -> Serving> = if connect_info {
                    serving!(app.into_make_service_with_connect_info::<Conn>())
                } else {
                    serving!(app)
                };
                serve_axum(listener, shutdown, graceful, signalled, serve)
            }
        };
        Server::new(addr, registry, state, cert, signal, task)
    }
}

type ServerTask = JoinHandle<io::Result<Option<ShutdownReport>>>;

fn spawn_report(
    serving: impl Future<Output = io::Result<ShutdownReport>> + Send + 'static,
) -> ServerTask {
    tokio::spawn(async move { serving.await.map(Some) })
}

/// The shutdown signal `axum::serve` gets.
type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;
/// `axum::serve`'s future.
type Serving = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// Serves `listener` with `axum::serve` (`serve(listener, signal)`), shut down as
/// `shutdown` says.
fn serve_axum(
    listener: Listener,
    shutdown: Shutdown,
    graceful: Box<dyn FnOnce(BoundedShutdown) -> BoundedShutdown + Send>,
    signalled: impl Future<Output = ()> + Send + 'static,
    serve: Box<dyn FnOnce(Listener, Signal) -> Serving>,
) -> ServerTask {
    match shutdown {
        Shutdown::Crate => {
            let graceful = graceful(BoundedShutdown::new(&listener));
            let serving = serve(listener, Box::pin(graceful.signal(signalled)));
            tokio::spawn(async move { graceful.run(serving).await.map(Some) })
        }
        Shutdown::Axum => {
            let serving = serve(listener, Box::pin(signalled));
            tokio::spawn(async move { serving.await.map(|()| None) })
        }
    }
}

/// A running server: [`Server::start`] or [`Server::builder`].
pub(crate) struct Server {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Its connections (empty for [`Mode::AxumTokio`]).
    pub(crate) registry: Registry,
    /// The app's state: its stuck handlers.
    pub(crate) state: AppState,
    /// The certificate of a [`ServerBuilder::tls`] server, for clients to trust.
    pub(crate) cert: Option<CertificateDer<'static>>,
    signal: Option<oneshot::Sender<()>>,
    task: ServerTask,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    fn new(
        addr: SocketAddr,
        registry: Registry,
        state: AppState,
        cert: Option<CertificateDer<'static>>,
        signal: oneshot::Sender<()>,
        task: ServerTask,
    ) -> Server {
        Server {
            addr,
            registry,
            state,
            cert,
            signal: Some(signal),
            task,
        }
    }

    /// The app served in `mode` under `policy`, with the defaults of
    /// [`Server::builder`].
    pub(crate) async fn start(mode: Mode, policy: Policy) -> Server {
        Server::builder(mode, policy).start().await
    }

    /// A server to set up further: default socket options, the listener as bound, the
    /// app as is, the `axum::serve` modes shut down through `BoundedShutdown`.
    pub(crate) fn builder(mode: Mode, policy: Policy) -> ServerBuilder {
        ServerBuilder {
            mode,
            policy,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            options: SocketOptions::new(),
            tune: Box::new(|listener| listener),
            routes: Box::new(|app| app),
            shutdown: Shutdown::Crate,
            configure: Box::new(|serve| serve),
            graceful: Box::new(|graceful| graceful),
            tls: None,
        }
    }

    /// Whether it still serves (it has not returned).
    pub(crate) fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Sends the shutdown signal (once; later calls do nothing).
    pub(crate) fn signal(&mut self) {
        if let Some(signal) = self.signal.take() {
            let _ = signal.send(());
        }
    }

    /// Signals and waits up to `within` for the server to end: `None` if it still
    /// runs, else how it ended: its report, or `None` where the mode gives none. Once it
    /// has ended, call nothing that waits for it again.
    pub(crate) async fn stopped(
        &mut self,
        within: Duration,
    ) -> Option<io::Result<Option<ShutdownReport>>> {
        self.signal();
        let ended = tokio::time::timeout(within, &mut self.task).await.ok()?;
        Some(ended.expect("the server's task"))
    }

    /// Waits, without signalling, for the server to end by itself: how it ended.
    pub(crate) async fn ended(&mut self) -> io::Result<Option<ShutdownReport>> {
        (&mut self.task).await.expect("the server's task")
    }

    /// Signals, waits for the server to end, and returns its report.
    pub(crate) async fn shutdown(mut self) -> ShutdownReport {
        self.stopped(SHUTDOWN)
            .await
            .expect("the server shuts down")
            .expect("the server ends cleanly")
            .expect("a mode with a report")
    }

    /// A TLS connection to a [`ServerBuilder::tls`] server, offering the one ALPN
    /// protocol `alpn` (which the server must choose).
    pub(crate) async fn connect_tls(&self, alpn: &[u8]) -> TlsStream<TcpStream> {
        let cert = self.cert.clone().expect("a TLS server");
        let connector = TlsConnector::from(super::tls::client_config(cert, alpn));
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        tls
    }

    /// Waits until `n` stuck handlers run.
    pub(crate) async fn wait_stuck(&self, n: usize) {
        self.state.wait_stuck(n).await;
    }

    /// The server's handle of the connection from `client`, once it is registered.
    pub(crate) async fn conn_of(&self, client: SocketAddr) -> Conn {
        let deadline = Instant::now() + GENEROUS;
        loop {
            let found = self
                .registry
                .connections()
                .into_iter()
                .find(|conn| conn.peer_addr() == client);
            if let Some(conn) = found {
                return conn;
            }
            assert!(
                Instant::now() < deadline,
                "connection {client} never registered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
