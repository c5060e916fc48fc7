//! Races on a connection's shared state, run on real threads through the real path
//! (`Conn`, `RequestGuard`, `set_request_limits`, `wait_for`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use super::Conn;
use crate::lockstep::{spin, wait_past};
use crate::{Policy, limits::RequestLimits};

fn conn() -> Conn {
    Conn::new(1, "192.0.2.7:40000".parse().unwrap(), Policy::default())
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
    let floor = Policy::default().min_send_rate();
    let spawned_task = {
        let (conns, go, done) = (conns.clone(), go.clone(), done.clone());
        thread::spawn(move || {
            // Rounds in which the override was seen in force just after it was set:
            // both kinds of rounds must occur for the race to have been run.
            let mut seen = 0;
            for (round, conn) in conns.iter().enumerate() {
                wait_past(&go, round);
                spin((round / 16) % 16);
                conn.set_request_limits(
                    RequestLimits::builder()
                        .min_send_rate(None)
                        .build()
                        .unwrap(),
                );
                seen += usize::from(conn.min_send_rate() != floor);
                done.store(round + 1, Ordering::Release);
            }
            seen
        })
    };
    let mut leaked = 0;
    for (round, conn) in conns.iter().enumerate() {
        let request = conn.begin_request();
        go.store(round + 1, Ordering::Release);
        spin(round % 16);
        drop(request);
        wait_past(&done, round);
        assert_eq!(conn.in_flight(), 0);
        let next = conn.begin_request();
        if conn.min_send_rate() != floor {
            leaked += 1;
        }
        drop(next);
    }
    let seen = spawned_task.join().unwrap();
    eprintln!("override seen in force in {seen} of {ROUNDS} rounds, leaked in {leaked}");
    assert_eq!(
        leaked, 0,
        "an override outlived its request on {leaked} of {ROUNDS} connections"
    );
}

type Wait = fn(Conn) -> Pin<Box<dyn Future<Output = ()> + Send>>;
/// Makes ready a change of the connection, to be made on another thread.
type Change = fn(&Conn) -> Box<dyn FnOnce() + Send>;

/// `change`, made ready to run on another thread.
fn later(conn: &Conn, change: impl FnOnce(&Conn) + Send + 'static) -> Box<dyn FnOnce() + Send> {
    let conn = conn.clone();
    Box::new(move || change(&conn))
}

/// `Conn::wait_for` (through `draining`, `wait_abandoned`, `peer_closed` on a handle
/// without a socket) and `wait_until` (through `unsupervised`): a task on a
/// multi-thread runtime starts waiting while another thread makes the change, shifted
/// against the task's registration from round to round. Every wait must end.
#[test]
fn no_connection_change_is_missed_across_threads() {
    const ROUNDS: usize = 20_000;
    #[cfg_attr(not(feature = "hyper"), allow(unused_mut))]
    let mut cases: Vec<(&str, Wait, Change)> = vec![
        (
            "draining",
            |conn| Box::pin(async move { conn.draining().await }),
            |conn| later(conn, Conn::start_draining),
        ),
        (
            "abandoned",
            |conn| {
                Box::pin(async move {
                    let _ = conn.wait_abandoned().await;
                })
            },
            |conn| {
                later(conn, |conn| {
                    conn.abandon(crate::conn::Abandon::DrainDeadline)
                })
            },
        ),
        (
            "peer's FIN",
            |conn| {
                Box::pin(async move {
                    let _ = conn.peer_closed().await;
                })
            },
            |conn| later(conn, |conn| conn.record_peer(crate::conn::PeerGone::Fin)),
        ),
    ];
    #[cfg(feature = "hyper")]
    cases.push((
        "supervision's end",
        |conn| Box::pin(async move { conn.unsupervised().await }),
        |conn| {
            let supervision = conn.begin_supervision();
            Box::new(move || drop(supervision))
        },
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (name, wait, change) in cases {
        let conns: Vec<Conn> = (0..ROUNDS).map(|_| conn()).collect();
        let changes: Vec<_> = conns.iter().map(change).collect();
        let waiting = Arc::new(AtomicUsize::new(0));
        let changer = {
            let waiting = waiting.clone();
            thread::spawn(move || {
                for (round, change) in changes.into_iter().enumerate() {
                    wait_past(&waiting, round);
                    spin(round % 64);
                    change();
                }
            })
        };
        let missed = runtime.block_on(async {
            for (round, conn) in conns.into_iter().enumerate() {
                let waiting = waiting.clone();
                let waiter = tokio::spawn(async move {
                    let waited = wait(conn);
                    waiting.store(round + 1, Ordering::Release);
                    waited.await;
                });
                if tokio::time::timeout(Duration::from_secs(5), waiter)
                    .await
                    .is_err()
                {
                    return Some(round);
                }
            }
            None
        });
        // The changer waits for a round that never comes after a miss: not joined.
        assert_eq!(
            missed, None,
            "{name}: a change was missed (of {ROUNDS} rounds)"
        );
        changer.join().unwrap();
    }
}
