//! An HTTPS server: an axum app through `conn_hygiene::serve` with a tokio-rustls
//! acceptor. ALPN offers `h2` and `http/1.1` and decides which one a connection is
//! served with; the handshake runs under the connection's clocks, the half-close
//! policy and the drain deadline.
//!
//! ```text
//! cargo run --features axum --example tls_server -- [--listen ADDR] [--cert FILE --key FILE]
//! ```
//!
//! `--help` lists the flags (the `COMMAND` table below). Without `--cert` and `--key`,
//! a self-signed certificate for localhost is made at startup.
//!
//! Prints `listening on ADDR`, then serves until Ctrl-C:
//!
//! ```text
//! curl -k --http2 https://localhost:3443/     # HTTP/2 via ALPN
//! curl -k --http1.1 https://localhost:3443/   # HTTP/1.1 via ALPN
//! ```

mod cli;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use cli::flags::{Command, Flag, parse};
use conn_hygiene::serve::{Accepted, Protocol, ServeSettings};
use conn_hygiene::{Conn, Listener, Policy, SocketOptions};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    listen: SocketAddr,
    cert: Option<String>,
    key: Option<String>,
}

/// The flags, one line each.
#[rustfmt::skip]
const COMMAND: Command<Args> = Command {
    name: "tls_server",
    synopsis: "[--listen ADDR] [--cert FILE --key FILE]",
    flags: &[
        Flag::value("--listen", "ADDR", "default 127.0.0.1:3443; port 0 picks a free port", |a, v| Ok(Args { listen: parse(v)?, ..a })),
        Flag::value("--cert", "FILE", "PEM certificate chain; with --key. Without both, a self-signed certificate for localhost is made at startup", |a, v| Ok(Args { cert: Some(v.to_owned()), ..a })),
        Flag::value("--key", "FILE", "PEM private key", |a, v| Ok(Args { key: Some(v.to_owned()), ..a })),
    ],
};

/// The certificate chain and key: from the files, or self-signed for `localhost`.
fn certificate(
    args: &Args,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), BoxError> {
    match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(key)?;
            Ok((chain, key))
        }
        (None, None) => {
            let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
            let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
            Ok((vec![certified.cert.der().clone()], key.into()))
        }
        _ => Err("--cert and --key go together".into()),
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let (chain, key) = certificate(&args)?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // ALPN decides the protocol: the acceptor hands it to `serve`.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tls = TlsAcceptor::from(Arc::new(config));

    let policy = Policy::builder()
        .first_byte_timeout(Some(Duration::from_secs(5)))
        .idle_timeout(Some(Duration::from_secs(30)))
        .build()?;
    let listener = Listener::bind(args.listen, SocketOptions::new().nodelay(true), policy)?;
    let app = Router::new().route(
        "/",
        get(|conn: Conn, version: http::Version| async move {
            format!("hello {} over {version:?}\n", conn.peer_addr())
        }),
    );
    println!("listening on {}", listener.local_addr()?);
    let settings = ServeSettings::builder()
        .handshake_timeout(Duration::from_secs(10))
        .build()
        .map_err(std::io::Error::from)?;
    let report = conn_hygiene::serve(listener, app)
        .settings(settings)
        .with_acceptor(move |stream| {
            let tls = tls.clone();
            async move {
                let stream = tls.accept(stream).await?;
                let protocol = Protocol::from_alpn(stream.get_ref().1.alpn_protocol());
                Ok(Accepted::new(stream).with_protocol(protocol))
            }
        })
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    println!("shutdown: {report}");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let defaults = Args {
        listen: "127.0.0.1:3443".parse().unwrap(),
        cert: None,
        key: None,
    };
    let args = match COMMAND.parse(defaults) {
        Ok(args) => args,
        Err(error) => return COMMAND.fail(&error),
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tls_server: {error}");
            ExitCode::FAILURE
        }
    }
}
