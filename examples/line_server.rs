//! A line-protocol server with no HTTP, protected by the crate's listener and stream.
//!
//! Each line a client sends is answered with its length. A client that connects and
//! says nothing, goes quiet, stops reading, or half-closes and leaves cannot hold a
//! socket: the first-byte, idle and write-stall clocks and the half-close policy
//! release it, and the kernel never keeps it in CLOSE_WAIT.
//!
//! ```text
//! cargo run --example line_server -- [ADDR]      # default 127.0.0.1:7000
//! printf 'hello\nworld\n' | nc -N 127.0.0.1 7000
//! ```

use std::time::Duration;

use conn_hygiene::{HalfClose, Listener, Policy, SocketOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "conn_hygiene=debug".into()),
        )
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    let policy = Policy::builder()
        .first_byte_timeout(Some(Duration::from_secs(5)))
        .idle_timeout(Some(Duration::from_secs(30)))
        .write_stall_timeout(Some(Duration::from_secs(10)))
        .half_close(HalfClose::AllowFor(Duration::from_secs(2)))
        .build()
        .expect("valid policy");
    let options = SocketOptions::new()
        .nodelay(true)
        .keepalive_time(Duration::from_secs(60));
    let mut listener = Listener::bind(addr.as_str(), options, policy)?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        let conn = stream.conn().clone();
        // `supervise` enforces the half-close policy even while the task is not reading.
        tokio::spawn(conn.supervise(async move {
            let mut lines = BufReader::new(stream);
            let mut line = String::new();
            let result: std::io::Result<()> = async {
                while lines.read_line(&mut line).await? > 0 {
                    let answer = format!("{}\n", line.trim_end().len());
                    lines.get_mut().write_all(answer.as_bytes()).await?;
                    line.clear();
                }
                // Our FIN after the client's: nothing is left unread, so the drop
                // closes at once.
                lines.get_mut().shutdown().await
            }
            .await;
            if let Err(error) = result {
                tracing::info!(%peer, %error, "connection ended");
            }
        }));
    }
}
