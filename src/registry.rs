//! The registry of one listener's live connections.
//!
//! It feeds the connection cap, the accept backoff (accepting resumes as soon as a
//! connection closes), the drain at shutdown and the census of phases.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::conn::load::Load;
use crate::conn::{Abandon, Conn, Cuts, Phase};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A process-wide unique connection id.
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The live connections of a listener. Cheap to clone.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    conns: Mutex<HashMap<u64, Conn>>,
    // Counts releases, so a waiter can tell whether one happened since it looked.
    releases: AtomicU64,
    released: Notify,
    // The listener has warned that its connections are served without the layer.
    missing_layer_reported: AtomicBool,
    // The layer has counted a request on one of the listener's connections: an h2c
    // connection's weaker evidence that it lacks the layer no longer stands down its
    // idle clock (HTTP/1 connections judge by their own heads).
    layer_counted: Arc<AtomicBool>,
    // Live connections per client (an IPv4 address or an IPv6 prefix), kept only under
    // a per-client cap.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    refused_per_ip: AtomicU64,
    // From a shutdown signal on, while the server still accepts: every connection
    // registered retires after its first answer.
    retire_new: AtomicBool,
    retired_at_accept: AtomicU64,
    cuts: Arc<Cuts>,
    // The pressure on the listener's capacity, and its evictions.
    load: Arc<Load>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("live", &self.len())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many connections are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the live connections, oldest first.
    pub fn connections(&self) -> Vec<Conn> {
        let mut conns: Vec<Conn> = self.lock().values().cloned().collect();
        conns.sort_by_key(Conn::id);
        conns
    }

    /// The registry's own census: every live connection, oldest first.
    pub fn snapshot(&self) -> Snapshot {
        let mut conns: Vec<ConnInfo> = self
            .lock()
            .values()
            .map(|conn| ConnInfo {
                id: conn.id(),
                peer: conn.peer_addr(),
                phase: conn.phase(),
                age: conn.age(),
                in_flight: conn.in_flight(),
                half_closed_busy: conn.peer_gone().is_some() && conn.in_flight() > 0,
            })
            .collect();
        conns.sort_by_key(|conn| std::cmp::Reverse(conn.age));
        Snapshot {
            conns,
            refused_per_ip: self.refused_per_ip(),
            evicted: self.evicted(),
        }
    }

    /// Idle connections evicted so far to admit new ones at the listener's
    /// [capacity](crate::Listener::max_connections).
    pub fn evicted(&self) -> u64 {
        self.inner.load.evicted()
    }

    pub(crate) fn load(&self) -> &Arc<Load> {
        &self.inner.load
    }

    /// Recomputes the pressure with `live` connections, and has the idle clocks read
    /// again when it tightened them.
    fn update_load(&self, live: usize) {
        if self.inner.load.update(live) {
            self.tighten();
        }
    }

    /// Makes the idle connections read their clocks again, after the pressure rose: a
    /// clock armed before is shortened now, not when it would have fired.
    fn tighten(&self) {
        for conn in self.connections() {
            if matches!(conn.phase(), Phase::Idle | Phase::FirstByte) {
                conn.wake_reader();
            }
        }
    }

    /// Connections refused so far because their client was at the
    /// [per-client cap](crate::Listener::max_connections_per_ip).
    pub fn refused_per_ip(&self) -> u64 {
        self.inner.refused_per_ip.load(Ordering::Relaxed)
    }

    /// Takes a slot for one more connection of `client`, unless it holds `max`
    /// already; a refusal is counted.
    pub(crate) fn reserve_ip(&self, client: IpAddr, max: usize) -> Result<(), usize> {
        let mut per_ip = lock(&self.inner.per_ip);
        let live = per_ip.entry(client).or_insert(0);
        if *live >= max {
            let live = *live;
            self.inner.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            return Err(live);
        }
        *live += 1;
        Ok(())
    }

    /// Whether `client` holds `max` connections or more: a new one would be refused.
    pub(crate) fn ip_is_full(&self, client: IpAddr, max: usize) -> bool {
        lock(&self.inner.per_ip)
            .get(&client)
            .is_some_and(|live| *live >= max)
    }

    fn release_ip(&self, client: IpAddr) {
        let mut per_ip = lock(&self.inner.per_ip);
        if let Some(live) = per_ip.get_mut(&client) {
            *live -= 1;
            if *live == 0 {
                per_ip.remove(&client);
            }
        }
    }

    /// Waits until the number of live connections is below `limit`.
    pub async fn wait_below(&self, limit: usize) {
        loop {
            let released = self.inner.released.notified();
            let mut released = std::pin::pin!(released);
            // Registered before the check, so a release between the two is not missed.
            released.as_mut().enable();
            if self.len() < limit {
                return;
            }
            released.await;
        }
    }

    /// How many connections have closed so far: pass it to
    /// [`released_since`](Self::released_since).
    pub fn releases(&self) -> u64 {
        self.inner.releases.load(Ordering::Acquire)
    }

    /// Waits until a connection closes after [`releases`](Self::releases) returned
    /// `seen`; returns at once if one already has.
    pub async fn released_since(&self, seen: u64) {
        loop {
            let released = self.inner.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            if self.releases() != seen {
                return;
            }
            released.await;
        }
    }

    /// Connections abandoned and HTTP/2 streams cut so far, by reason: each reason
    /// counted at least once, with its count.
    pub fn cuts(&self) -> BTreeMap<Abandon, u64> {
        self.inner.cuts.counted()
    }

    /// From now on every connection registered retires after its first answer (a
    /// server withdrawing from its balancer still accepts). Returns how many were
    /// retired so far this way, to count from.
    #[cfg(feature = "hyper")]
    pub(crate) fn retire_new_connections(&self) -> u64 {
        self.inner.retire_new.store(true, Ordering::Release);
        self.retired_at_accept()
    }

    #[cfg(feature = "hyper")]
    pub(crate) fn retired_at_accept(&self) -> u64 {
        self.inner.retired_at_accept.load(Ordering::Acquire)
    }

    pub(crate) fn register(&self, conn: &Conn) -> Registration {
        conn.count_cuts_in(&self.inner.cuts);
        conn.report_layer_to(&self.inner.layer_counted);
        conn.follow_load(&self.inner.load);
        if self.inner.retire_new.load(Ordering::Acquire) {
            conn.start_draining();
            self.inner.retired_at_accept.fetch_add(1, Ordering::AcqRel);
        }
        let live = {
            let mut conns = self.lock();
            conns.insert(conn.id(), conn.clone());
            conns.len()
        };
        self.update_load(live);
        Registration {
            registry: self.clone(),
            id: conn.id(),
            client: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Conn>> {
        lock(&self.inner.conns)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map stays consistent even if a holder panicked: each operation is one call.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One live connection, as [`Registry::snapshot`] saw it.
///
/// With feature `serde` it serializes as
/// `{"id": 7, "peer": "10.0.0.1:5100", "phase": "busy", "age_ms": 1500, "in_flight": 1,
/// "half_closed_busy": false}`: the age in whole milliseconds, the phase as
/// [`Phase::as_str`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct ConnInfo {
    /// The connection's id.
    pub id: u64,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Its phase.
    pub phase: Phase,
    /// Time since accept.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "age_ms", with = "crate::serde_millis")
    )]
    pub age: Duration,
    /// Requests in flight.
    pub in_flight: u32,
    /// The peer has left while a handler is still busy: the CLOSE_WAIT risk.
    pub half_closed_busy: bool,
}

/// Live connections by phase, with ages, oldest first.
///
/// ```
/// let registry = conn_hygiene::registry::Registry::new();
/// let snapshot = registry.snapshot();
/// assert_eq!(snapshot.connections().len(), 0);
/// assert_eq!(snapshot.to_string(), "");
/// ```
///
/// With feature `serde` it serializes as
/// `{"connections": [ConnInfo, …], "refused_per_ip": 0, "evicted": 0}`, oldest first
/// (see [`ConnInfo`] for each entry).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Snapshot {
    #[cfg_attr(feature = "serde", serde(rename = "connections"))]
    conns: Vec<ConnInfo>,
    refused_per_ip: u64,
    #[cfg_attr(feature = "serde", serde(default))]
    evicted: u64,
}

impl Snapshot {
    /// Every connection, oldest first.
    pub fn connections(&self) -> &[ConnInfo] {
        &self.conns
    }

    /// Per phase: how many connections, and the age of the oldest.
    pub fn by_phase(&self) -> BTreeMap<Phase, (usize, Duration)> {
        let mut phases = BTreeMap::new();
        for conn in &self.conns {
            let entry = phases.entry(conn.phase).or_insert((0, Duration::ZERO));
            entry.0 += 1;
            entry.1 = entry.1.max(conn.age);
        }
        phases
    }

    /// Connections whose peer left while a handler is busy.
    pub fn half_closed_busy(&self) -> usize {
        self.conns.iter().filter(|c| c.half_closed_busy).count()
    }

    /// Connections refused so far at the per-client cap.
    pub fn refused_per_ip(&self) -> u64 {
        self.refused_per_ip
    }

    /// Idle connections evicted so far at the listener's capacity.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

/// One line per phase, `PHASE COUNT oldest=AGE`, then the half-closed-busy count,
/// the per-client refusals and the evictions at capacity when there are any.
impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (phase, (count, oldest)) in self.by_phase() {
            writeln!(f, "{phase} {count} oldest={oldest:.1?}")?;
        }
        let risky = self.half_closed_busy();
        if risky > 0 {
            writeln!(f, "half_closed_busy {risky}")?;
        }
        if self.refused_per_ip > 0 {
            writeln!(f, "refused_per_ip {}", self.refused_per_ip)?;
        }
        if self.evicted > 0 {
            writeln!(f, "evicted {}", self.evicted)?;
        }
        Ok(())
    }
}

/// Removes its connection from the registry when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    registry: Registry,
    id: u64,
    // The client slot taken by `reserve_ip`, released with the connection.
    client: Option<IpAddr>,
}

impl Registration {
    /// Ties a slot taken with [`Registry::reserve_ip`] to this connection.
    pub(crate) fn with_client(mut self, client: IpAddr) -> Self {
        self.client = Some(client);
        self
    }

    /// Whether this is the first report, on this connection's listener, that the
    /// layer is missing: the warning is given once per listener.
    pub(crate) fn first_missing_layer_report(&self) -> bool {
        !self
            .registry
            .inner
            .missing_layer_reported
            .swap(true, Ordering::Relaxed)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let live = {
            let mut conns = self.registry.lock();
            conns.remove(&self.id);
            conns.len()
        };
        self.registry.update_load(live);
        if let Some(client) = self.client {
            self.registry.release_ip(client);
        }
        self.registry.inner.releases.fetch_add(1, Ordering::Release);
        self.registry.inner.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    fn conn() -> Conn {
        Conn::new(next_id(), "127.0.0.1:1".parse().unwrap(), Policy::default())
    }

    #[tokio::test]
    async fn release_wakes_a_waiter_below_the_limit() {
        let registry = Registry::new();
        let a = conn();
        let first = registry.register(&a);
        // Ages differ only if time moves between the two.
        std::thread::sleep(Duration::from_millis(2));
        let _second = registry.register(&conn());
        assert_eq!(registry.len(), 2);
        let waiter = tokio::spawn({
            let registry = registry.clone();
            async move { registry.wait_below(2).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.connections().len(), 2);
        assert_eq!(snapshot.connections()[0].id, a.id(), "oldest first");
        assert_eq!(snapshot.by_phase()[&Phase::FirstByte].0, 2);
        assert_eq!(snapshot.half_closed_busy(), 0);
        drop(first);
        waiter.await.unwrap();
        assert_eq!(registry.len(), 1);
        assert!(registry.connections().iter().all(|c| c.id() != a.id()));
    }
}

#[cfg(all(test, feature = "serde"))]
mod serde_tests {
    use super::*;

    #[test]
    fn a_snapshot_serializes_with_ages_in_milliseconds_and_round_trips() {
        let snapshot = Snapshot {
            conns: vec![ConnInfo {
                id: 7,
                peer: "10.0.0.1:5100".parse().unwrap(),
                phase: Phase::BodyWait,
                age: Duration::from_micros(1_500_900),
                in_flight: 1,
                half_closed_busy: false,
            }],
            refused_per_ip: 2,
            evicted: 3,
        };
        let json = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "connections": [{
                    "id": 7,
                    "peer": "10.0.0.1:5100",
                    "phase": "body_wait",
                    "age_ms": 1500,
                    "in_flight": 1,
                    "half_closed_busy": false,
                }],
                "refused_per_ip": 2,
                "evicted": 3,
            })
        );
        let back: Snapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back.connections()[0].age, Duration::from_millis(1500));
        assert_eq!(back.connections()[0].phase, Phase::BodyWait);
        assert_eq!(back.refused_per_ip(), 2);
        assert_eq!(back.evicted(), 3);
    }

    #[test]
    fn every_phase_serializes_as_its_name() {
        for phase in Phase::ALL {
            let json = serde_json::to_value(phase).unwrap();
            assert_eq!(json, phase.as_str());
            assert_eq!(serde_json::from_value::<Phase>(json).unwrap(), phase);
        }
    }
}
