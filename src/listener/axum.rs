//! `axum::serve` support: the listener serves axum apps unchanged, and handlers reach
//! the connection's [`Conn`] through `ConnectInfo`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;

use super::Listener;
use crate::conn::Conn;
use crate::stream::{HygieneStream, TcpIo};

impl axum::serve::Listener for Listener {
    type Io = HygieneStream<TcpIo>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match Listener::accept(self).await {
                Ok(accepted) => return accepted,
                Err(error) => {
                    // The listening socket itself failed; axum's contract is to log
                    // and retry, so do it without spinning.
                    tracing::error!(target: "conn_hygiene::accept", %error, "accept failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Listener::local_addr(self)
    }
}

/// `app.into_make_service_with_connect_info::<Conn>()` gives every request the
/// connection's handle as `ConnectInfo<Conn>`.
impl Connected<IncomingStream<'_, Listener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        stream.io().conn().clone()
    }
}
