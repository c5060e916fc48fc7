//! Connection recycling: after [`max_requests`](crate::Policy::max_requests) or at
//! [`max_connection_age`](crate::Policy::max_connection_age), a connection retires
//! gracefully, then is reset if it outlives its [grace](crate::Policy::recycle_grace).
//!
//! Long-lived keep-alive connections pin a client to one server for hours, keep
//! stale load balancing, and hide leaks; nginx closes them after `keepalive_requests`
//! or `keepalive_time`, gRPC after `MAX_CONNECTION_AGE` with ±10 % jitter so that a
//! fleet's connections do not all reconnect at once. Retiring is
//! [`Conn::start_draining`]: the next HTTP/1 answer carries `Connection: close`, and
//! under `serve()` HTTP/2 gets GOAWAY. Tunnels are not recycled: their own clocks bound
//! them.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::conn::{Abandon, Conn};

/// Retires `conn` gracefully for `why` (`max_requests`), and resets it if it is still
/// open after the grace. Once per connection; never a tunnel.
#[cfg(feature = "hyper")]
pub(crate) fn retire(conn: &Conn, why: &'static str) {
    if begin(conn, why) {
        tokio::spawn(force_after_grace(conn.clone()));
    }
}

/// Retires `conn` at its maximum age, jitter included, if the policy sets one. A task
/// per connection, only then: the age must be enforced whatever the connection does,
/// while a busy handler leaves the stream unpolled.
pub(crate) fn watch_age(conn: &Conn) {
    let Some(at) = conn.recycle_at() else {
        return;
    };
    let conn = conn.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep_until(at) => {}
            () = conn.closed() => return,
        }
        if begin(&conn, "max_connection_age") {
            force_after_grace(conn).await;
        }
    });
}

/// Marks `conn` as recycled and asks it to drain; false if it already was, or is a
/// tunnel.
fn begin(conn: &Conn, why: &'static str) -> bool {
    if conn.is_tunnel() || !conn.mark_recycled() {
        return false;
    }
    tracing::debug!(
        target: "conn_hygiene::recycle",
        parent: conn.span(),
        why,
        requests = conn.requests(),
        age_ms = conn.age().as_millis() as u64,
        "recycling connection"
    );
    #[cfg(feature = "metrics")]
    crate::metrics::hooks::recycled(why);
    if !conn.retires_gracefully() {
        warn_ungraceful(conn, why);
    }
    conn.start_draining();
    true
}

/// Warns, once per process, that recycling ends in resets under this server.
#[cold]
fn warn_ungraceful(conn: &Conn, why: &'static str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    tracing::warn!(
        target: "conn_hygiene::layer",
        parent: conn.span(),
        why,
        "recycling a connection its server cannot retire gracefully (axum::serve or \
         tonic's Server send no HTTP/2 GOAWAY; without HygieneLayer no HTTP/1 \
         `Connection: close`): it is reset after recycle_grace. Serve with \
         conn_hygiene::serve() to recycle gracefully"
    );
}

/// Resets `conn` if it is still open after the recycle grace.
async fn force_after_grace(conn: Conn) {
    tokio::select! {
        () = tokio::time::sleep(conn.policy().recycle_grace()) => {
            // A connection that became a tunnel meanwhile is bounded by its own clocks.
            if !conn.is_tunnel() {
                conn.force_close(Abandon::RecycleGrace).await;
            }
        }
        () = conn.closed() => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A connection is asked to drain at its jittered age, within ±10 %, and reset
    /// with its own reason when it outlives the grace.
    #[tokio::test(start_paused = true)]
    async fn age_retires_within_the_band_then_forces_after_the_grace() {
        let policy = crate::Policy::builder()
            .max_connection_age(Some(Duration::from_secs(100)))
            .recycle_grace(Duration::from_secs(5))
            .build()
            .unwrap();
        let conn = Conn::new(42, "192.0.2.7:40000".parse().unwrap(), policy);
        let at = conn.recycle_at().unwrap() - conn.started();
        assert!((Duration::from_secs(90)..=Duration::from_secs(110)).contains(&at));
        watch_age(&conn);
        tokio::time::sleep(at - Duration::from_millis(1)).await;
        assert!(!conn.is_draining());
        tokio::time::sleep(Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        assert!(conn.is_draining());
        assert_eq!(conn.abandoned(), None);
        tokio::time::sleep(Duration::from_secs(5)).await;
        tokio::task::yield_now().await;
        assert_eq!(conn.abandoned(), Some(Abandon::RecycleGrace));
    }

    /// Under `axum::serve` or tonic, only an HTTP/1 connection with the layer retires
    /// gracefully (`Connection: close`): nothing sends GOAWAY, and without the layer
    /// nothing adds the header.
    #[cfg(any(feature = "axum", feature = "tonic"))]
    #[test]
    fn foreign_servers_retire_only_http1_with_the_layer_gracefully() {
        let conn = Conn::new(1, "192.0.2.7:1".parse().unwrap(), crate::Policy::default());
        assert!(conn.retires_gracefully(), "serve()");
        conn.mark_foreign_server();
        assert!(!conn.retires_gracefully(), "no layer");
        conn.mark_http();
        assert!(conn.retires_gracefully(), "HTTP/1 with the layer");
        conn.mark_http2();
        assert!(!conn.retires_gracefully(), "HTTP/2");
    }

    /// A tunnel is not recycled by age: its own clocks bound it.
    #[tokio::test(start_paused = true)]
    async fn tunnels_are_not_recycled() {
        let policy = crate::Policy::builder()
            .max_connection_age(Some(Duration::from_secs(10)))
            .build()
            .unwrap();
        let conn = Conn::new(1, "192.0.2.7:1".parse().unwrap(), policy);
        conn.mark_tunnel();
        watch_age(&conn);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!conn.is_draining());
        assert_eq!(conn.abandoned(), None);
    }
}
