//! Two threads in lockstep, for the stress tests of the crate's handoffs: each round
//! one thread lets the other go, and both race, shifted a little against each other
//! from round to round.

use std::hint::spin_loop;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// Waits until `counter` passes `round`, yielding now and then: the machine may have
/// fewer free cores than there are threads.
pub(crate) fn wait_past(counter: &AtomicUsize, round: usize) {
    let mut spins = 0u32;
    while counter.load(Ordering::Acquire) <= round {
        spins += 1;
        if spins.is_multiple_of(64) {
            thread::yield_now();
        } else {
            spin_loop();
        }
    }
}

/// Spins `n` times: the shift of one side against the other.
pub(crate) fn spin(n: usize) {
    for _ in 0..n {
        spin_loop();
    }
}
