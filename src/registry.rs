//! The registry of one listener's live connections.
//!
//! It feeds the connection cap, the accept backoff (accepting resumes as soon as a
//! connection closes), the drain at shutdown and the census of phases.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::conn::Conn;

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

    pub(crate) fn register(&self, conn: &Conn) -> Registration {
        self.lock().insert(conn.id(), conn.clone());
        Registration {
            registry: self.clone(),
            id: conn.id(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Conn>> {
        // The map stays consistent even if a holder panicked: each operation is one call.
        self.inner
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes its connection from the registry when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    registry: Registry,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
        self.registry.inner.releases.fetch_add(1, Ordering::Release);
        self.registry.inner.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    fn conn() -> Conn {
        Conn::new(
            next_id(),
            "127.0.0.1:1".parse().unwrap(),
            Arc::new(Policy::default()),
        )
    }

    #[tokio::test]
    async fn release_wakes_a_waiter_below_the_limit() {
        let registry = Registry::new();
        let a = conn();
        let first = registry.register(&a);
        let _second = registry.register(&conn());
        assert_eq!(registry.len(), 2);
        let waiter = tokio::spawn({
            let registry = registry.clone();
            async move { registry.wait_below(2).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        waiter.await.unwrap();
        assert_eq!(registry.len(), 1);
        assert!(registry.connections().iter().all(|c| c.id() != a.id()));
    }
}
