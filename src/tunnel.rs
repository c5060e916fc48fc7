//! Upgraded connections (WebSocket, `CONNECT`): once HTTP hands the socket to a relay,
//! the half-close policy and the drain deadline are enforced by a task of their own.

use std::time::Duration;

use crate::conn::Conn;
use crate::supervise::enforce;

/// How long an abandoned tunnel's relay has to notice (at its next read or write)
/// before the socket is shut down under it.
const RELAY_NOTICE: Duration = Duration::from_secs(1);

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
        conn.abandon(reason);
        // A relay parked in a read is woken by the abandonment; one that does not touch
        // the socket is not, so the kernel's side is shut down for it.
        if tokio::time::timeout(RELAY_NOTICE, conn.closed())
            .await
            .is_err()
        {
            conn.shut_down_socket();
        }
    });
}
