//! The requests in flight on a connection, and the overrides of its clocks that they
//! set.
//!
//! An override lives only while requests are in flight: the one request that set it
//! from its handler (HTTP/2, see `Conn::set_request_limits`), or, set from elsewhere (a
//! task the handler spawned, HTTP/1), until none is in flight. The count and the flag
//! saying the overrides are set share one word, so the end of the last request clears
//! the flag in the same atomic step that ends the count: no override can slip in
//! between, as one did when the flag was read after the count (issue 20).

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

#[cfg(all(test, loom))]
use loom::sync::{Mutex, MutexGuard, atomic::AtomicU32};
#[cfg(not(all(test, loom)))]
use std::sync::{Mutex, MutexGuard, atomic::AtomicU32};

use crate::limits::{Overrides, RequestLimits};

/// The word's top bit: the overrides are set. The rest counts requests.
const OVERRIDDEN: u32 = 1 << 31;
const COUNT: u32 = !OVERRIDDEN;

#[derive(Debug)]
pub(super) struct InFlight {
    word: AtomicU32,
    // Requests in flight that set the overrides from their handler (see
    // `Conn::set_request_limits`). The lock also orders every change of the flag but the
    // common "one request fewer" step, so a request's override is never merged with
    // what an ended one left.
    overriding: Mutex<u32>,
    overrides: Overrides,
}

impl InFlight {
    pub(super) fn new() -> Self {
        InFlight {
            word: AtomicU32::new(0),
            overriding: Mutex::new(0),
            overrides: Overrides::default(),
        }
    }

    #[inline]
    pub(super) fn count(&self) -> u32 {
        self.word.load(Ordering::Relaxed) & COUNT
    }

    #[inline]
    pub(super) fn begin(&self) {
        self.word.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends one request, which set overrides from its handler if `overriding`; returns
    /// whether it was the last in flight.
    ///
    /// With no override set it costs a load and a compare-exchange where a
    /// `fetch_sub` and a load of the flag did before: one locked instruction, as
    /// before, and no more instructions once inlined (callgrind: 56 per request begun
    /// and ended, against 57).
    #[inline]
    pub(super) fn end(&self, overriding: bool) -> bool {
        if overriding {
            self.end_own_override();
        }
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            if word == OVERRIDDEN | 1 {
                return self.end_overridden();
            }
            match self.word.compare_exchange_weak(
                word,
                word - 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return word & COUNT == 1,
                Err(now) => word = now,
            }
        }
    }

    /// Ends the override of a request that set it from its handler, if no other such
    /// request is in flight.
    #[cold]
    fn end_own_override(&self) {
        let mut overriding = self.lock();
        *overriding -= 1;
        if *overriding == 0 {
            self.word.fetch_and(!OVERRIDDEN, Ordering::Relaxed);
            self.overrides.clear();
        }
    }

    /// [`end`](Self::end) of what may be the last request while overrides are set:
    /// under the lock, so that no override is set between the count's end and the
    /// clearing of the values.
    #[cold]
    fn end_overridden(&self) -> bool {
        let _overriding = self.lock();
        // Under the lock only `begin` and `end` change the count; the flag stays.
        let before = self
            .word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                Some(if word & COUNT == 1 { 0 } else { word - 1 })
            })
            .unwrap_or_else(|word| word);
        let last = before & COUNT == 1;
        if last {
            self.overrides.clear();
        }
        last
    }

    /// Merges `limits` into the overrides if a request is in flight, and returns
    /// whether it did; `attribute` then says whether they are the overriding
    /// request's own (they end with it), and is called under the lock.
    pub(super) fn set(&self, limits: RequestLimits, attribute: impl FnOnce() -> bool) -> bool {
        let mut overriding = self.lock();
        if self.count() == 0 {
            return false;
        }
        // Merged with the overrides in force if the flag is set, else with none: the
        // values are cleared whenever the flag is, under this lock.
        self.overrides.set(limits);
        // Published only while a request is in flight: the last one may have ended
        // since the check (its `end` did not take the lock: the flag was not set yet).
        let published = self
            .word
            .fetch_update(Ordering::Release, Ordering::Relaxed, |word| {
                (word & COUNT != 0).then_some(word | OVERRIDDEN)
            })
            .is_ok();
        if !published {
            self.overrides.clear();
            return false;
        }
        if attribute() {
            *overriding += 1;
        }
        true
    }

    /// The overrides, if any are set.
    #[inline]
    pub(super) fn overrides(&self) -> Option<&Overrides> {
        // One load when nothing is overridden, as is usual.
        (self.word.load(Ordering::Acquire) & OVERRIDDEN != 0).then_some(&self.overrides)
    }

    fn lock(&self) -> MutexGuard<'_, u32> {
        // The count is consistent whatever panicked while it was held.
        self.overriding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The handoff under every interleaving loom finds (`--cfg loom`, see `.ci/run`).
#[cfg(all(test, loom))]
mod model {
    use std::time::Duration;

    use loom::sync::Arc;
    use loom::thread;

    use super::InFlight;
    use crate::limits::RequestLimits;

    /// Runs `work` on the model's thread of its own.
    fn on_thread<T: Send + 'static>(
        in_flight: &Arc<InFlight>,
        work: impl FnOnce(&InFlight) -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let in_flight = in_flight.clone();
        thread::spawn(move || work(&in_flight))
    }

    fn no_send_floor() -> RequestLimits {
        RequestLimits::builder()
            .min_send_rate(None)
            .build()
            .unwrap()
    }

    fn assert_clear(in_flight: &InFlight) {
        assert_eq!(in_flight.count(), 0);
        assert!(
            in_flight.overrides().is_none(),
            "the override outlived its requests"
        );
        assert_eq!(
            in_flight.overrides.min_send_rate(),
            None,
            "values left behind"
        );
    }

    /// A spawned task's override against the end of the only request.
    #[test]
    fn an_override_set_from_outside_ends_with_the_last_request() {
        loom::model(|| {
            let in_flight = Arc::new(InFlight::new());
            in_flight.begin();
            let task = on_thread(&in_flight, |it| it.set(no_send_floor(), || false));
            let last = in_flight.end(false);
            task.join().unwrap();
            assert!(last);
            assert_clear(&in_flight);
        });
    }

    /// A handler's own override ends with its request while another goes on, and the
    /// other's spawned task may set one meanwhile: once both have ended nothing is left.
    #[test]
    fn a_handlers_override_ends_with_its_request() {
        loom::model(|| {
            let in_flight = Arc::new(InFlight::new());
            in_flight.begin();
            in_flight.begin();
            assert!(in_flight.set(no_send_floor(), || true));
            let handler = on_thread(&in_flight, |it| it.end(true));
            let task = on_thread(&in_flight, |it| {
                let stall = Some(Duration::from_secs(9));
                it.set(
                    RequestLimits::builder()
                        .write_stall_timeout(stall)
                        .build()
                        .unwrap(),
                    || false,
                )
            });
            let last = in_flight.end(false);
            let handler_last = handler.join().unwrap();
            task.join().unwrap();
            assert!(last ^ handler_last, "exactly one request was the last");
            assert_clear(&in_flight);
            assert_eq!(in_flight.overrides.write_stall(), None);
        });
    }

    /// The next request begins while the last one ends and a late override arrives:
    /// the override may apply to the new request (it overlapped it), but never without
    /// a request in flight, and nothing is left once the new one ends.
    #[test]
    fn a_late_override_never_survives_the_next_request() {
        loom::model(|| {
            let in_flight = Arc::new(InFlight::new());
            in_flight.begin();
            let task = on_thread(&in_flight, |it| it.set(no_send_floor(), || false));
            let next = on_thread(&in_flight, InFlight::begin);
            in_flight.end(false);
            task.join().unwrap();
            next.join().unwrap();
            assert_eq!(in_flight.count(), 1);
            in_flight.end(false);
            assert_clear(&in_flight);
        });
    }
}
