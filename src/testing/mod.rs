//! A kit for integration tests of connection hygiene: assertions on the kernel's view
//! of sockets, abrupt peers, and an HTTP/1 response parser.
//!
//! The assertions judge by what the kernel reports (the [census](crate::census), and
//! `/proc/self/fd`), not by what the application believes.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use conn_hygiene::testing::{assert_no_close_wait, Side};
//!
//! # async fn dox(port: u16) {
//! // Fails with the kernel's census of the port if a CLOSE_WAIT socket is still
//! // there after five seconds.
//! assert_no_close_wait(port, Side::Local, Duration::from_secs(5)).await;
//! # }
//! ```
//!
//! # Abrupt peers
//!
//! [`Peer`] builds clients that misbehave on purpose, on real sockets: FIN after the
//! request or in the middle of the body, RST mid-request, slowloris heads, slow and
//! stalled bodies, silent connects, clients that never read, pipelined requests then
//! FIN, garbage, idle keep-alive connections. A [`PeerHandle`] says when the
//! misbehaviour began, what the server answered and how the connection ended (FIN,
//! RST, or still open), so a test can measure how long the server took to let go:
//!
//! ```no_run
//! use std::time::Duration;
//! use conn_hygiene::testing::Peer;
//!
//! # async fn dox(addr: std::net::SocketAddr) -> std::io::Result<()> {
//! let peer = Peer::silent_connect(addr).start().await?;
//! let since = peer.settled().await.expect("connected");
//! // The server's first-byte timeout must release its end of the connection: the
//! // kernel then has no socket left for it.
//! peer.wait_server_side(Duration::from_secs(15), |state| state.is_none())
//!     .await
//!     .expect("the server let the silent peer go");
//! println!("released after {:?}", since.elapsed());
//! # Ok(()) }
//! ```
//!
//! [`PeerHandle::wait_server_side`] (and [`socket_state`], [`wait_for_socket`]) follow
//! one connection by its two addresses. A port census counts every socket with the
//! port number, whoever owns it: on a shared host another process's leftovers can
//! carry the same number.
//!
//! A peer that vanishes without FIN or RST needs packets dropped between the two
//! ends; [`Peer::vanish`] takes that as a hook and refuses to fake it.
//!
//! # HTTP/1 responses
//!
//! [`http1`] reads what a server answered on a raw socket: status, headers and body,
//! framed by `Content-Length`, chunked coding or the connection's end:
//!
//! ```no_run
//! use conn_hygiene::testing::http1::Response;
//! use tokio::io::AsyncWriteExt;
//!
//! # async fn dox(addr: std::net::SocketAddr) -> std::io::Result<()> {
//! let mut stream = tokio::net::TcpStream::connect(addr).await?;
//! stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
//! let mut buf = Vec::new();
//! let response = Response::read(&mut stream, &mut buf).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(()) }
//! ```

pub mod http1;
mod kernel;
mod peers;

pub use kernel::{
    Side, assert_no_close_wait, open_fds, port_census, socket_state, wait_for_census,
    wait_for_socket,
};
pub use peers::{End, Peer, PeerHandle, PeerKind, PeerResponse};
