//! How the end of the last request in flight reaches the stream's reader without waking
//! it.
//!
//! The end of a request changes the reader's clocks: the request's head clock stops
//! (which only makes the next deadline later), and the idle clock starts at the end
//! where the reader had no start for it (it saw the request in flight, or bytes came
//! since it last waited), or runs on from the wait's start. Waking the reader at
//! every end would cost each keep-alive request a second poll of the connection's
//! task, although the clock the reader armed fires in time: so a waiting reader marks
//! here the idle timeout it armed its clock with ([`Handoff::mark`]), and the end
//! leaves its time for the reader to find when it next looks, and wakes it only when
//! the mark does not cover the end: no mark, or pressure shortened the idle timeout
//! since.
//!
//! One word, so that the mark and the end are ordered: whichever comes second sees the
//! other.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[cfg(all(test, loom))]
use loom::sync::{Mutex, atomic::AtomicU64};
#[cfg(not(all(test, loom)))]
use std::sync::{Mutex, atomic::AtomicU64};
use tokio::time::Instant;

/// A reader's mark: its clock fires no later than any deadline it would compute after
/// the end of a request, as long as the idle timeout (the low bits, in nanoseconds;
/// all ones for none) is not shorter then.
const MARKED: u64 = 1 << 63;
/// A request ended since the reader's last mark, at the time left beside the word.
const ENDED: u64 = 1 << 62;
/// Durations, in nanoseconds: 146 years.
const LOW: u64 = ENDED - 1;

#[inline]
fn nanos(timeout: Option<Duration>) -> u64 {
    timeout.map_or(LOW, |t| (t.as_nanos() as u64).min(LOW))
}

/// The handoff of one connection; `T` is the time (a model's is a number).
#[derive(Debug)]
pub(super) struct Handoff<T = Instant> {
    word: AtomicU64,
    // When the last request ended, written before the word says so: an `Instant` as
    // is, which costs less than its conversion to a number that fits the word.
    end_at: Mutex<Option<T>>,
}

impl<T: Copy> Handoff<T> {
    pub(super) fn new() -> Self {
        Handoff {
            word: AtomicU64::new(0),
            end_at: Mutex::new(None),
        }
    }

    /// The reader waits with its clock armed with `idle_timeout`. Returns whether a
    /// request ended since its last mark.
    #[inline]
    pub(super) fn mark(&self, idle_timeout: Option<Duration>) -> bool {
        let word = MARKED | nanos(idle_timeout);
        self.word.swap(word, Ordering::AcqRel) & ENDED != 0
    }

    /// The reader takes its mark back: the end of a request wakes it. Returns whether a
    /// request ended since the mark.
    #[inline]
    pub(super) fn unmark(&self) -> bool {
        self.word.swap(0, Ordering::AcqRel) & ENDED != 0
    }

    /// [`mark`](Self::mark), for a reader that finds no end left when it looked: an
    /// end that came since (its guard dropped on another thread) is taken with its
    /// time, if it stamped one, rather than wiped by the mark. `None`: none came.
    #[inline]
    pub(super) fn mark_or_take_end(&self, idle_timeout: Option<Duration>) -> Option<Option<T>> {
        let word = self
            .word
            .swap(MARKED | nanos(idle_timeout), Ordering::AcqRel);
        (word & ENDED != 0).then(|| *self.end_at())
    }

    /// Whether a request ended since the reader's last mark.
    #[inline]
    pub(super) fn ended(&self) -> bool {
        self.word.load(Ordering::Acquire) & ENDED != 0
    }

    /// The reader takes its mark back, and learns when the last request ended, if it
    /// ended while the mark stood.
    #[inline]
    pub(super) fn take_end(&self) -> Option<T> {
        let word = self.word.swap(0, Ordering::AcqRel);
        // A later end may have written since: its time is as good (idle since then).
        (word & ENDED != 0).then(|| *self.end_at()).flatten()
    }

    /// The last request in flight ended: leaves its time, read with `now`, if
    /// `stamped` (a reader that marks wants it). Returns whether the reader's mark
    /// covers the end (the idle timeout is `idle_timeout()` now), so that the end need
    /// not wake it. An end left unstamped (no reader marks: TLS, HTTP/2, a tunnel)
    /// always wakes the reader, and leaves nothing: the word stays empty, so that
    /// nothing on such a connection takes it for an end to look at.
    #[inline]
    pub(super) fn end(
        &self,
        stamped: bool,
        now: impl FnOnce() -> T,
        idle_timeout: impl FnOnce() -> Option<Duration>,
    ) -> bool {
        if !stamped {
            // A mark left from before (the connection was plain HTTP/1 then) goes.
            self.word.store(0, Ordering::Release);
            return false;
        }
        *self.end_at() = Some(now());
        let before = self.word.swap(ENDED, Ordering::AcqRel);
        before & MARKED != 0 && before & LOW <= nanos(idle_timeout())
    }

    fn end_at(&self) -> impl std::ops::DerefMut<Target = Option<T>> + '_ {
        // A time is whole whatever panicked while it was held.
        self.end_at.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The handoff under every interleaving loom finds (`--cfg loom`, see `.ci/run`).
#[cfg(all(test, loom))]
mod model {
    use std::time::Duration;

    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicU32, Ordering};
    use loom::thread;

    use super::Handoff;

    const IDLE: Option<Duration> = Some(Duration::from_nanos(100));
    const END: u64 = 40;

    /// A reader marked (a wait before the request), and the end of the only request
    /// on its own thread, with the idle timeout then: whether it woke the reader.
    fn marked_request_ending(
        idle_timeout: Option<Duration>,
    ) -> (Arc<Handoff<u64>>, Arc<AtomicU32>, thread::JoinHandle<bool>) {
        let handoff = Arc::new(Handoff::<u64>::new());
        let in_flight = Arc::new(AtomicU32::new(1));
        handoff.mark(IDLE);
        let end = {
            let (handoff, in_flight) = (handoff.clone(), in_flight.clone());
            thread::spawn(move || {
                in_flight.fetch_sub(1, Ordering::Relaxed);
                !handoff.end(true, || END, || idle_timeout)
            })
        };
        (handoff, in_flight, end)
    }

    /// What the stream's reader does in one wait, as far as the handoff goes: a busy
    /// mark while the request it sees runs, taken back if that request turns out to
    /// have ended (the reader then looks again at once). Returns (marked busy, saw
    /// the end itself).
    fn wait(handoff: &Handoff<u64>, in_flight: &AtomicU32) -> (bool, bool) {
        if in_flight.load(Ordering::Relaxed) == 0 {
            // Idle: the idle mark it left before stands for the same clock.
            return (false, false);
        }
        if handoff.mark(IDLE) && in_flight.load(Ordering::Relaxed) == 0 {
            handoff.unmark();
            return (false, true);
        }
        (true, false)
    }

    /// The reader marked (a wait before the request), then waits again while the
    /// request ends on another thread. Either the end wakes the reader, or it saw the
    /// end itself, or its mark covers the end, whose time is left for it.
    #[test]
    fn an_end_that_does_not_wake_the_reader_is_found_by_it() {
        loom::model(|| {
            let (handoff, in_flight, end) = marked_request_ending(IDLE);
            let (_, saw_end) = wait(&handoff, &in_flight);
            let woke = end.join().unwrap();
            if !woke && !saw_end {
                assert_eq!(handoff.take_end(), Some(END), "the end's time is lost");
            }
        });
    }

    /// The reader, waiting idle (marked before), looks and finds no end, then marks
    /// again as the only request ends on another thread (a guard dropped there): the
    /// end wakes it, or the mark takes the end's time, or the end comes after the mark
    /// and leaves its time.
    #[test]
    fn an_end_between_the_look_and_the_idle_mark_is_not_lost() {
        loom::model(|| {
            let (handoff, _in_flight, end) = marked_request_ending(IDLE);
            // An end seen at the look is taken there.
            let looked = handoff.ended();
            let taken = (!looked).then(|| handoff.mark_or_take_end(IDLE)).flatten();
            let woke = end.join().unwrap();
            if !woke && !looked {
                let found = taken.flatten().or_else(|| handoff.take_end());
                assert_eq!(found, Some(END), "the end's time is lost");
            }
        });
    }

    /// A mark made with a longer idle timeout than the one in force at the end
    /// (pressure shortened it) never stands in for the wakeup.
    #[test]
    fn a_shortened_idle_timeout_wakes_the_reader() {
        loom::model(|| {
            let (handoff, in_flight, end) = marked_request_ending(Some(Duration::from_nanos(10)));
            let (_, saw_end) = wait(&handoff, &in_flight);
            assert!(end.join().unwrap() || saw_end, "a late clock stood in");
        });
    }

    /// The reader takes its mark back (its provisional clock fired while the request
    /// ran, or another clock runs) as the request ends: the end wakes it, or the
    /// reader learns of the end from the handoff itself.
    #[test]
    fn a_mark_taken_back_as_the_request_ends_leaves_the_wakeup_on() {
        loom::model(|| {
            let (handoff, in_flight, end) = marked_request_ending(IDLE);
            let ended = handoff.unmark();
            let woke = end.join().unwrap();
            assert!(woke || ended, "the end counted on a mark taken back");
            if ended {
                assert_eq!(in_flight.load(Ordering::Relaxed), 0);
            }
        });
    }
}
