//! The phases of a graceful shutdown and the report of what they did.
//!
//! 1. **Deregistration** ([`Policy::deregister_delay`](crate::Policy::deregister_delay),
//!    none by default): [`Readiness`] turns unready, the listener keeps accepting, and
//!    every connection, old or new, retires after its next answer.
//! 2. **Drain** ([`Policy::drain_timeout`](crate::Policy::drain_timeout)): the listener
//!    is closed, in-flight work finishes, idle HTTP/1 connections close at a quiet
//!    moment, and whatever is left at the deadline is reset.

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::readiness::{Readiness, Stage};
use std::collections::BTreeMap;

use crate::conn::{Abandon, Conn, NOTICE, Phase};
use crate::registry::Registry;

/// How long an idle HTTP/1 connection must have read nothing before the drain closes
/// it. Balancers reuse their most recently used pooled connection first, so one that
/// has been quiet this long is the least likely to carry a request already on its way.
pub(crate) const QUIET: Duration = Duration::from_millis(100);

/// Resolves when hyper should shut `conn` down gracefully (HTTP/1: close if idle, else
/// `Connection: close` on the answer in flight; HTTP/2: GOAWAY).
pub(super) async fn retire(conn: &Conn, readiness: &Readiness) {
    conn.draining().await;
    // Under HTTP/2 GOAWAY tells the peer which streams will be answered, so it is safe
    // any time.
    if conn.is_http2() {
        return;
    }
    // HTTP/1 while deregistering: the layer puts `Connection: close` on the next answer,
    // so the balancer closes the connection itself. Closing an idle one now would race a
    // request the balancer may be sending on it.
    if !readiness.is_ready() {
        readiness.listener_closed().await;
    }
    // Recycled while serving, or drained: at a quiet moment, for the same race.
    quiet(conn).await;
}

/// Waits for a safe moment to close an HTTP/1 connection: a request in flight (its
/// answer then carries `Connection: close`), or nothing read for [`QUIET`].
async fn quiet(conn: &Conn) {
    let mut seen = conn.bytes().0;
    loop {
        if conn.in_flight() > 0 {
            return;
        }
        tokio::time::sleep(QUIET).await;
        let read = conn.bytes().0;
        if read == seen && conn.in_flight() == 0 {
            return;
        }
        seen = read;
    }
}

/// What the deregistration phase did.
#[derive(Debug, Clone, Copy, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub(super) struct Deregistration {
    #[cfg_attr(
        feature = "serde",
        serde(rename = "elapsed_ms", with = "crate::serde_millis")
    )]
    elapsed: Duration,
    live: usize,
    accepted: usize,
    retired: usize,
}

/// The deregistration phase in progress: the server goes on accepting until it
/// [`ended`](Self::ended); the registry retires each connection accepted meanwhile.
pub(super) struct Deregistering {
    started: Instant,
    end: Pin<Box<Sleep>>,
    delay: Duration,
    releases: u64,
    retired_at_accept: u64,
    live: usize,
}

impl Deregistering {
    /// Turns `readiness` unready and asks every live connection but tunnels to retire
    /// after its next answer. Tunnels are told when the drain starts: a relay that sent
    /// its peer away now would send it back to a server still in the balancer.
    pub(super) fn start(registry: &Registry, readiness: &Readiness, delay: Duration) -> Self {
        // Unready before the connections learn of it: their tasks read the stage.
        readiness.set(Stage::Deregistering);
        let connections = registry.connections();
        let retired_at_accept = if delay.is_zero() {
            registry.retired_at_accept()
        } else {
            registry.retire_new_connections()
        };
        if !delay.is_zero() {
            tracing::info!(
                target: "conn_hygiene::drain",
                connections = connections.len(),
                delay_ms = delay.as_millis() as u64,
                "deregistration started"
            );
            for conn in connections.iter().filter(|conn| !conn.is_tunnel()) {
                conn.start_draining();
            }
        }
        Deregistering {
            started: Instant::now(),
            end: Box::pin(tokio::time::sleep(delay)),
            delay,
            releases: registry.releases(),
            retired_at_accept,
            live: connections.len(),
        }
    }

    /// Waits for the end of the phase.
    pub(super) async fn ended(&mut self) {
        if !self.delay.is_zero() {
            self.end.as_mut().await;
        }
    }

    pub(super) fn finish(self, registry: &Registry) -> Deregistration {
        let mut report = Deregistration {
            live: self.live,
            ..Deregistration::default()
        };
        if self.delay.is_zero() {
            return report;
        }
        report.elapsed = self.started.elapsed();
        report.accepted = usize::try_from(registry.retired_at_accept() - self.retired_at_accept)
            .unwrap_or(usize::MAX);
        report.retired = usize::try_from(registry.releases() - self.releases).unwrap_or(usize::MAX);
        tracing::info!(
            target: "conn_hygiene::drain",
            accepted = report.accepted,
            retired = report.retired,
            live = registry.len(),
            "deregistration finished"
        );
        report
    }
}

/// Closes the connections left after the listener closed: asks every one to drain
/// and resets what is left at the deadline.
pub(super) async fn drain(
    registry: &Registry,
    readiness: &Readiness,
    deadline: Duration,
    deregistration: Deregistration,
) -> ShutdownReport {
    let started = Instant::now();
    readiness.set(Stage::Draining);
    let connections = registry.connections();
    tracing::info!(
        target: "conn_hygiene::drain",
        connections = connections.len(),
        deadline_ms = deadline.as_millis() as u64,
        "drain started"
    );
    for conn in &connections {
        conn.start_draining();
    }
    let mut forced = Vec::new();
    if tokio::time::timeout(deadline, registry.wait_below(1))
        .await
        .is_err()
    {
        for conn in registry.connections() {
            forced.push(ForcedConnection {
                id: conn.id(),
                peer: conn.peer_addr(),
                held_by: conn.phase(),
                age: conn.age(),
            });
            conn.abandon(Abandon::DrainDeadline);
        }
        // A supervised task (`serve()`) drops its stream as soon as it is polled. Any
        // other owner (`axum::serve`, tonic's `Server`) notices at its stream's next
        // operation, or has the socket shut down under it after a notice.
        if tokio::time::timeout(NOTICE, registry.wait_below(1))
            .await
            .is_err()
        {
            for conn in registry.connections() {
                conn.shut_down_socket();
            }
            let _ = tokio::time::timeout(NOTICE, registry.wait_below(1)).await;
        }
    }
    readiness.set(Stage::Stopped);
    let report = ShutdownReport {
        deregistration,
        drained: connections.len().saturating_sub(forced.len()),
        forced,
        drain_elapsed: started.elapsed(),
        cuts: registry.cuts(),
        evicted: registry.evicted(),
    };
    tracing::info!(
        target: "conn_hygiene::drain",
        drained = report.drained,
        forced = report.forced.len(),
        elapsed_ms = report.drain_elapsed.as_millis() as u64,
        "drain finished"
    );
    #[cfg(feature = "metrics")]
    record_metrics(&report);
    report
}

/// Records a finished shutdown through the `metrics` facade, next to the `drain` event.
#[cfg(feature = "metrics")]
fn record_metrics(report: &ShutdownReport) {
    use ::metrics::counter;

    use crate::metrics::hooks::{
        DEREGISTRATION_CONNECTIONS, DEREGISTRATION_DURATION, DRAIN_CONNECTIONS, DRAIN_DURATION,
        DRAINS,
    };

    if !report.deregistration_elapsed().is_zero() {
        ::metrics::histogram!(DEREGISTRATION_DURATION).record(report.deregistration_elapsed());
        counter!(DEREGISTRATION_CONNECTIONS, "outcome" => "accepted")
            .increment(report.accepted_while_deregistering() as u64);
        counter!(DEREGISTRATION_CONNECTIONS, "outcome" => "retired")
            .increment(report.retired_while_deregistering() as u64);
    }
    counter!(DRAINS).increment(1);
    counter!(DRAIN_CONNECTIONS, "outcome" => "drained").increment(report.drained() as u64);
    counter!(DRAIN_CONNECTIONS, "outcome" => "forced").increment(report.forced().len() as u64);
    ::metrics::histogram!(DRAIN_DURATION).record(report.drain_elapsed());
}

/// What a graceful shutdown did, phase by phase.
///
/// With feature `serde` it serializes as (durations in whole milliseconds; each forced
/// connection as [`ForcedConnection`] says):
///
/// ```text
/// {"deregistration": {"elapsed_ms": 0, "live": 3, "accepted": 0, "retired": 0},
///  "drained": 2, "forced": [ForcedConnection, …], "drain_elapsed_ms": 20001,
///  "cuts": {"idle_timeout": 4, "min_body_rate": 1}, "evicted": 0}
/// ```
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ShutdownReport {
    deregistration: Deregistration,
    drained: usize,
    forced: Vec<ForcedConnection>,
    #[cfg_attr(
        feature = "serde",
        serde(rename = "drain_elapsed_ms", with = "crate::serde_millis")
    )]
    drain_elapsed: Duration,
    cuts: BTreeMap<Abandon, u64>,
    #[cfg_attr(feature = "serde", serde(default))]
    evicted: u64,
}

impl ShutdownReport {
    /// How long the deregistration phase lasted (the
    /// [deregistration delay](crate::Policy::deregister_delay)).
    pub fn deregistration_elapsed(&self) -> Duration {
        self.deregistration.elapsed
    }

    /// Connections live when the shutdown signal came.
    pub fn live_at_signal(&self) -> usize {
        self.deregistration.live
    }

    /// Connections accepted during the deregistration phase: traffic the balancer still
    /// sent while withdrawing the server. Each was retired after one answer.
    pub fn accepted_while_deregistering(&self) -> usize {
        self.deregistration.accepted
    }

    /// Connections that closed during the deregistration phase, most of them after an
    /// answer with `Connection: close` (or an HTTP/2 GOAWAY).
    pub fn retired_while_deregistering(&self) -> usize {
        self.deregistration.retired
    }

    /// Connections that finished on their own during the drain (after the listener
    /// closed).
    pub fn drained(&self) -> usize {
        self.drained
    }

    /// Connections reset at the drain deadline, with what held each.
    pub fn forced(&self) -> &[ForcedConnection] {
        &self.forced
    }

    /// How long the drain took, from closing the listener.
    pub fn drain_elapsed(&self) -> Duration {
        self.drain_elapsed
    }

    /// Connections the listener abandoned over the server's whole life, and HTTP/2
    /// streams failed by a clock or a rate floor, counted by reason: idle and stall
    /// clocks, [`Abandon::MinBodyRate`] and [`Abandon::MinSendRate`] cuts,
    /// [`Abandon::RecycleGrace`], the drain deadline's resets. Reasons never counted
    /// are absent.
    pub fn cuts(&self) -> &BTreeMap<Abandon, u64> {
        &self.cuts
    }

    /// Idle connections the listener evicted over the server's whole life to admit new
    /// ones at its capacity (see [`Listener::eviction_batch`](crate::Listener::eviction_batch)).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// How long the whole shutdown took: deregistration and drain.
    pub fn elapsed(&self) -> Duration {
        self.deregistration.elapsed + self.drain_elapsed
    }
}

/// `drained=N forced=N in DUR`, then the deregistration phase's counts when it ran,
/// the cuts by reason when there were any (`cut: idle_timeout=4 min_body_rate=1`),
/// the evictions at capacity when there were any (`evicted=32`), then each forced
/// connection.
impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "drained={} forced={} in {:?}",
            self.drained,
            self.forced.len(),
            self.drain_elapsed
        )?;
        let deregistration = &self.deregistration;
        if !deregistration.elapsed.is_zero() {
            write!(
                f,
                " deregistered in {:?}: live={} accepted={} retired={}",
                deregistration.elapsed,
                deregistration.live,
                deregistration.accepted,
                deregistration.retired
            )?;
        }
        if !self.cuts.is_empty() {
            f.write_str(" cut:")?;
            for (reason, count) in &self.cuts {
                write!(f, " {reason}={count}")?;
            }
        }
        if self.evicted > 0 {
            write!(f, " evicted={}", self.evicted)?;
        }
        for conn in &self.forced {
            write!(f, "; #{} {} held by {}", conn.id, conn.peer, conn.held_by())?;
        }
        Ok(())
    }
}

/// A connection reset at the drain deadline.
///
/// With feature `serde`:
/// `{"id": 9, "peer": "10.0.0.1:5100", "phase": "busy", "age_ms": 31000}`.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ForcedConnection {
    id: u64,
    peer: SocketAddr,
    #[cfg_attr(feature = "serde", serde(rename = "phase"))]
    held_by: Phase,
    #[cfg_attr(
        feature = "serde",
        serde(rename = "age_ms", with = "crate::serde_millis")
    )]
    age: Duration,
}

impl ForcedConnection {
    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The phase it was in at the deadline: [`Phase::Busy`] is a busy handler,
    /// [`Phase::WriteStall`] a slow reader, [`Phase::BodyWait`] a body upload,
    /// [`Phase::Tunnel`] an upgraded connection (a WebSocket).
    pub fn phase(&self) -> Phase {
        self.held_by
    }

    /// What held the drain, in words: "busy handler", "slow reader", "body upload",
    /// "tunnel", …
    pub fn held_by(&self) -> &'static str {
        match self.held_by {
            Phase::Busy => "busy handler",
            Phase::WriteStall => "slow reader",
            Phase::BodyWait => "body upload",
            Phase::ReadingHead => "request head",
            Phase::HalfClosed => "half-closed peer",
            Phase::Lingering => "lingering close",
            Phase::Tunnel => "tunnel",
            _ => "idle",
        }
    }

    /// How old the connection was.
    pub fn age(&self) -> Duration {
        self.age
    }
}

#[cfg(test)]
mod tests {

    use tokio::time::advance;

    use super::*;
    use crate::Policy;

    fn conn() -> Conn {
        Conn::new(1, "127.0.0.1:1".parse().unwrap(), Policy::default())
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_a_quiet_moment() {
        let conn = conn();
        let started = Instant::now();
        quiet(&conn).await;
        assert_eq!(started.elapsed(), QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_put_the_close_off_and_a_request_in_flight_ends_the_wait() {
        let conn = conn();
        let mut waiting = tokio_test::task::spawn(quiet(&conn));
        for _ in 0..5 {
            conn.add_read(10);
            advance(QUIET).await;
            tokio_test::assert_pending!(waiting.poll());
        }
        let _request = conn.begin_request();
        advance(QUIET).await;
        tokio_test::assert_ready!(waiting.poll());
    }

    #[tokio::test(start_paused = true)]
    async fn an_http1_connection_waits_for_the_listener_to_close_while_deregistering() {
        let conn = conn();
        let readiness = Readiness::new();
        readiness.set(Stage::Deregistering);
        conn.start_draining();
        let mut retiring = tokio_test::task::spawn(retire(&conn, &readiness));
        advance(QUIET * 10).await;
        tokio_test::assert_pending!(retiring.poll());
        // The listener closed: the connection is closed once quiet.
        readiness.set(Stage::Draining);
        assert!(retiring.is_woken());
        tokio_test::assert_pending!(retiring.poll());
        advance(QUIET).await;
        tokio_test::assert_ready!(retiring.poll());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_recycled_while_serving_retires_at_a_quiet_moment() {
        let readiness = Readiness::new();
        let idle = conn();
        idle.start_draining();
        let mut retiring = tokio_test::task::spawn(retire(&idle, &readiness));
        tokio_test::assert_pending!(retiring.poll());
        idle.add_read(10);
        advance(QUIET).await;
        tokio_test::assert_pending!(retiring.poll());
        advance(QUIET).await;
        tokio_test::assert_ready!(retiring.poll());
        // With a request in flight: at once (its answer carries `Connection: close`).
        let busy = conn();
        busy.start_draining();
        let _request = busy.begin_request();
        let mut retiring = tokio_test::task::spawn(retire(&busy, &readiness));
        tokio_test::assert_ready!(retiring.poll());
    }
}

#[cfg(all(test, feature = "serde"))]
mod serde_tests {
    use super::*;

    #[test]
    fn a_report_serializes_with_durations_in_milliseconds_and_round_trips() {
        let report = ShutdownReport {
            deregistration: Deregistration {
                elapsed: Duration::from_millis(1500),
                live: 3,
                accepted: 1,
                retired: 2,
            },
            drained: 1,
            forced: vec![ForcedConnection {
                id: 9,
                peer: "[::1]:5100".parse().unwrap(),
                held_by: Phase::Busy,
                age: Duration::from_secs(31),
            }],
            drain_elapsed: Duration::from_nanos(20_001_000_999),
            cuts: BTreeMap::from([(Abandon::IdleTimeout, 4), (Abandon::MinBodyRate, 1)]),
            evicted: 32,
        };
        let json = serde_json::to_value(&report).unwrap();
        let expected = serde_json::json!({
            "deregistration": {"elapsed_ms": 1500, "live": 3, "accepted": 1, "retired": 2},
            "drained": 1,
            "forced": [{"id": 9, "peer": "[::1]:5100", "phase": "busy", "age_ms": 31000}],
            "drain_elapsed_ms": 20001,
            "cuts": {"idle_timeout": 4, "min_body_rate": 1},
            "evicted": 32,
        });
        assert_eq!(json, expected);
        let back: ShutdownReport = serde_json::from_value(json).unwrap();
        assert_eq!(back.drain_elapsed(), Duration::from_millis(20001));
        assert_eq!(back.forced()[0].phase(), Phase::Busy);
        assert_eq!(serde_json::to_value(&back).unwrap(), expected);
    }
}
