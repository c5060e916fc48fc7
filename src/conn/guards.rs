//! Guards that count on a [`Conn`] while they live: a request in flight, a handler
//! waiting for body bytes, a supervisor enforcing the half-close policy.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::Conn;
#[cfg(feature = "hyper")]
use super::current::{ENTERED, Entered};

impl Conn {
    /// Counts a request in flight until the guard drops. While any request is in
    /// flight the idle clock does not run. The first request counted on a connection
    /// tells its listener that the layer is installed, which its HTTP/2 connections
    /// then no longer doubt (an HTTP/1 connection judges by its own requests).
    pub fn begin_request(&self) -> RequestGuard {
        self.begin_request_unless_upgrade(|| false)
    }

    /// [`begin_request`](Self::begin_request), for a request that may ask to become a
    /// tunnel (`upgrade` says whether it does, asked only under pressure): pressure
    /// does not retire a WebSocket or CONNECT, whose relay would close on `draining`.
    pub(crate) fn begin_request_unless_upgrade(
        &self,
        upgrade: impl FnOnce() -> bool,
    ) -> RequestGuard {
        self.shared.in_flight.begin();
        if self.shared.requests.fetch_add(1, Ordering::Relaxed) == 0
            && let Some(layer) = self.shared.listener_layer.get()
        {
            // The layer is there: it serves every connection of the listener.
            layer.store(true, Ordering::Relaxed);
        }
        if self.shared.load.get().is_some_and(|load| load.retires())
            && !self.is_draining()
            && !self.is_tunnel()
            && self.retires_gracefully()
            && !upgrade()
        {
            // Under the listener's pressure the answer ends the connection
            // (`Connection: close`, GOAWAY), where the server can retire it gracefully.
            self.start_draining();
        }
        RequestGuard {
            conn: self.clone(),
            overriding: false,
        }
    }

    /// Marks a handler as waiting for request-body bytes until the guard drops: the
    /// body-stall clock runs meanwhile.
    pub fn begin_body_wait(&self) -> BodyWaitGuard {
        self.begin_body_wait_at(Instant::now())
    }

    /// [`begin_body_wait`](Self::begin_body_wait), with the time already read.
    pub(crate) fn begin_body_wait_at(&self, now: Instant) -> BodyWaitGuard {
        if self.shared.body_waiting.fetch_add(1, Ordering::Relaxed) == 0 {
            let since = now
                .saturating_duration_since(self.shared.started)
                .as_nanos() as u64;
            self.shared.body_wait_since.store(since, Ordering::Relaxed);
            // The body-stall clock starts now: let a waiting reader arm it.
            self.shared.reader.wake();
        }
        BodyWaitGuard { conn: self.clone() }
    }

    /// Counts a supervisor enforcing the half-close policy until the guard drops.
    pub(crate) fn begin_supervision(&self) -> Supervision {
        self.shared.supervisors.fetch_add(1, Ordering::Relaxed);
        Supervision { conn: self.clone() }
    }
}

/// Counts one request in flight on a [`Conn`] while it lives.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct RequestGuard {
    conn: Conn,
    // The request set overrides, which end with it (see `attributing`).
    overriding: bool,
}

impl RequestGuard {
    /// The connection the request belongs to.
    #[cfg(feature = "hyper")]
    pub(crate) fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Enters this (HTTP/2) request for one call or poll of its service, which hyper
    /// runs in a task of the stream's own: [`Conn::current`] finds the connection,
    /// and limits set with [`Conn::set_request_limits`] are this request's, ending
    /// when this guard drops although other streams of the connection are in flight.
    #[cfg(feature = "hyper")]
    pub(crate) fn enter(&mut self) -> Entered<'_> {
        let ours = Some((self.conn.clone(), self.overriding));
        let previous = ENTERED.replace(ours);
        Entered {
            previous,
            overriding: &mut self.overriding,
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let conn = &self.conn;
        // The overrides end with the requests that set them; overrides set outside a
        // request's handler (a spawned task, HTTP/1) end when none is in flight.
        let last = conn.shared.in_flight.end(self.overriding);
        if last {
            let flags = conn.flags();
            if flags.idle_by_requests() {
                // Read by the idle clock where the stream cannot see requests (TLS).
                let since = conn.shared.started.elapsed().as_nanos() as u64;
                conn.shared
                    .idle_by_requests_since
                    .store(since, Ordering::Relaxed);
            }
            // Read by the eviction at capacity: a byte since is a head arriving.
            let read = conn.shared.bytes_read.load(Ordering::Relaxed);
            conn.shared.idle_bytes.store(read, Ordering::Relaxed);
            // The idle clock starts now, or runs on: a waiting reader arms it, woken
            // unless the clock it armed fires in time. Where the reader judges
            // idleness by bytes on HTTP/1 (where it marks), the end's time is left for
            // it: the idle clock starts at the end, whenever the reader looks.
            let looks = conn.shared.handoff.end(
                flags.is_plain_http1_past_first_byte(),
                Instant::now,
                || conn.idle_timeout(),
            );
            if !looks {
                conn.shared.reader.wake();
            }
        }
    }
}

/// Counts one supervisor on a [`Conn`] while it lives.
pub(crate) struct Supervision {
    conn: Conn,
}

impl Drop for Supervision {
    fn drop(&mut self) {
        let shared = &self.conn.shared;
        if shared.supervisors.fetch_sub(1, Ordering::Relaxed) == 1 {
            // Requests polled outside the supervisor (HTTP/2 streams) guard themselves
            // from now on.
            shared.changed.notify_waiters();
        }
    }
}

/// Marks a handler as waiting for request-body bytes while it lives.
#[derive(Debug)]
#[must_use = "the body-stall clock runs only while the guard lives"]
pub struct BodyWaitGuard {
    conn: Conn,
}

impl Drop for BodyWaitGuard {
    fn drop(&mut self) {
        self.conn
            .shared
            .body_waiting
            .fetch_sub(1, Ordering::Relaxed);
    }
}
