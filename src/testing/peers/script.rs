//! What a peer does: the bytes it sends and when, played on the socket by the
//! peer's own task.

use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, sleep};

use super::kind::{End, PeerKind};
use super::wire::{
    Progress, pace, read_one_response, read_to_end, send, settle, wait_closed_unread,
};

/// The request most peers send unless told otherwise: `GET {path}`.
pub(super) fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

/// The head a slowloris peer starts with; it never sends the blank line that ends it.
pub(super) fn slowloris_head(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n").into_bytes()
}

/// What a slowloris peer keeps sending after its head, one byte at a time, forever.
const SLOWLORIS_FILLER: &[u8] = b"X-Slowloris: 1\r\n";

/// Bytes that no HTTP server can parse: a TLS record header, then binary noise.
pub(super) const GARBAGE: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xff\xfe\x00\x00\
\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\
\x90\x91\x92\x93\x94\x95\x96\x97\x98\x99\x9a\x9b\x9c\x9d\x9e\x9f\
\r\n\r\n\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\r\n\r\n";

/// How the handle asks the peer's task to end the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CloseMode {
    Close,
    Reset,
}

/// What a peer does, resolved from its builder.
pub(super) struct Script {
    pub(super) kind: PeerKind,
    pub(super) remote: SocketAddr,
    pub(super) bytes: Vec<u8>,
    // The paced bytes of a slow body: one per interval after `bytes`.
    pub(super) paced: usize,
    pub(super) interval: Duration,
    pub(super) pause: Duration,
}

impl Script {
    /// Plays the script until the connection ends.
    async fn run(&self, s: &TcpStream, p: &watch::Sender<Progress>) -> Outcome {
        match self.run_inner(s, p).await {
            Ok(outcome) | Err(outcome) => outcome,
        }
    }

    async fn run_inner(
        &self,
        s: &TcpStream,
        p: &watch::Sender<Progress>,
    ) -> Result<Outcome, Outcome> {
        let ended = |end: End| Outcome::Ended(end);
        match self.kind {
            PeerKind::FinAfterRequest | PeerKind::FinMidBody | PeerKind::PipelinedThenFin => {
                send(s, p, &self.bytes).await.map_err(ended)?;
                sleep(self.pause).await;
                SockRef::from(s)
                    .shutdown(Shutdown::Write)
                    .map_err(|e| ended(End::of(&e)))?;
                settle(p);
                Ok(ended(read_to_end(s, p).await))
            }
            PeerKind::RstMidRequest => {
                send(s, p, &self.bytes).await.map_err(ended)?;
                sleep(self.pause).await;
                settle(p);
                Ok(Outcome::ResetHere)
            }
            PeerKind::Slowloris => {
                let endless = self.bytes.iter().chain(SLOWLORIS_FILLER.iter().cycle());
                pace(s, p, endless, self.interval, true)
                    .await
                    .map_err(ended)?;
                unreachable!("an endless head only ends with the connection")
            }
            PeerKind::SlowBody => {
                send(s, p, &self.bytes).await.map_err(ended)?;
                settle(p);
                let body = std::iter::repeat_n(&b'b', self.paced);
                pace(s, p, body, self.interval, false)
                    .await
                    .map_err(ended)?;
                Ok(ended(read_to_end(s, p).await))
            }
            PeerKind::StalledBody | PeerKind::Garbage => {
                send(s, p, &self.bytes).await.map_err(ended)?;
                settle(p);
                Ok(ended(read_to_end(s, p).await))
            }
            PeerKind::SilentConnect => {
                settle(p);
                Ok(ended(read_to_end(s, p).await))
            }
            PeerKind::NeverRead => {
                send(s, p, &self.bytes).await.map_err(ended)?;
                settle(p);
                Ok(ended(wait_closed_unread(s).await))
            }
            PeerKind::IdleKeepAlive => {
                send(s, p, &self.bytes).await.map_err(ended)?;
                read_one_response(s, p).await.map_err(ended)?;
                settle(p);
                Ok(ended(read_to_end(s, p).await))
            }
            PeerKind::Vanish => {
                // The request went out and the hook ran before the task started.
                settle(p);
                Ok(ended(wait_closed_unread(s).await))
            }
        }
    }
}

pub(super) fn post_head(path: &str, content_length: usize) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {content_length}\r\n\r\n")
        .into_bytes()
}

enum Outcome {
    Ended(End),
    ResetHere,
}

/// Owns the socket: plays the script, or closes when told to.
pub(super) async fn drive(
    stream: TcpStream,
    script: Script,
    progress: watch::Sender<Progress>,
    close: oneshot::Receiver<CloseMode>,
) {
    let outcome = tokio::select! {
        biased;
        mode = close => match mode {
            Ok(CloseMode::Reset) => Outcome::ResetHere,
            // A dropped sender means the handle is going away: close.
            Ok(CloseMode::Close) | Err(_) => Outcome::Ended(End::Dropped),
        },
        outcome = script.run(&stream, &progress) => outcome,
    };
    let end = match outcome {
        Outcome::Ended(end) => end,
        Outcome::ResetHere => {
            // Zero linger: the close below sends RST and keeps no state. Never a
            // positive linger, which would block the thread on close.
            let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            End::Dropped
        }
    };
    // The server ended it (or we do): close our side too, as a real client would.
    drop(stream);
    progress.send_modify(|p| {
        p.end = Some(end);
        p.ended_at = Some(Instant::now());
    });
}
