//! Races on a connection's shared state, run on real threads through the real path
//! (`Conn`, `RequestGuard`, `set_request_limits`, `wait_for`).

use std::hint::spin_loop;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use super::Conn;
use crate::{Policy, RequestLimits};

fn conn() -> Conn {
    Conn::new(1, "192.0.2.7:40000".parse().unwrap(), Policy::default())
}

/// Waits until `counter` passes `round`, yielding now and then: the machine may have
/// fewer free cores than there are threads.
fn wait_past(counter: &AtomicUsize, round: usize) {
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

/// Issue 20, item 3: a handler's spawned task sets "no send floor" on one thread while
/// the request ends on another, both let go at once, the one or the other a little
/// later each round. Once both are done no request is in flight, so the connection's
/// next (keep-alive) request must find the policy's floor, never the override.
#[test]
fn an_override_never_outlives_the_requests_in_flight() {
    const ROUNDS: usize = 200_000;
    let conns: Arc<Vec<Conn>> = Arc::new((0..ROUNDS).map(|_| conn()).collect());
    let go = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let spawned_task = {
        let (conns, go, done) = (conns.clone(), go.clone(), done.clone());
        thread::spawn(move || {
            for (round, conn) in conns.iter().enumerate() {
                wait_past(&go, round);
                for _ in 0..(round / 16) % 16 {
                    spin_loop();
                }
                conn.set_request_limits(RequestLimits::new().with_min_send_rate(None));
                done.store(round + 1, Ordering::Release);
            }
        })
    };
    let floor = Policy::default().min_send_rate();
    let mut leaked = 0;
    for (round, conn) in conns.iter().enumerate() {
        let request = conn.begin_request();
        go.store(round + 1, Ordering::Release);
        for _ in 0..round % 16 {
            spin_loop();
        }
        drop(request);
        wait_past(&done, round);
        assert_eq!(conn.in_flight(), 0);
        let next = conn.begin_request();
        if conn.min_send_rate() != floor {
            leaked += 1;
        }
        drop(next);
    }
    spawned_task.join().unwrap();
    assert_eq!(
        leaked, 0,
        "an override outlived its request on {leaked} of {ROUNDS} connections"
    );
}
