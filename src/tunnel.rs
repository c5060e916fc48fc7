//! Upgraded connections (WebSocket, `CONNECT`): once HTTP hands the socket to a relay,
//! the half-close policy and the drain deadline are enforced by a task of their own.

use crate::conn::Conn;
use crate::supervise::enforce;

/// Turns `conn` into a tunnel and watches it until it closes: the peer's departure
/// under the half-close policy, or an abandonment (a tunnel clock, the drain
/// deadline), resets it.
pub(crate) fn watch(conn: &Conn) {
    conn.mark_tunnel();
    let conn = conn.clone();
    tokio::spawn(async move {
        let reason = tokio::select! {
            reason = enforce(conn.clone()) => reason,
            () = conn.closed() => return,
        };
        // A relay parked in a read is woken by the abandonment; one that does not touch
        // the socket is not, so the kernel's side is shut down for it.
        conn.force_close(reason).await;
    });
}
