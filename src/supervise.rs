//! Enforcing the half-close policy on a connection's task, even while nothing reads.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker, ready};

use pin_project_lite::pin_project;

use crate::conn::{Abandon, Conn, PeerGone, Supervision};
use crate::policy::HalfClose;

impl Conn {
    /// Runs `task`, the work of this connection, under the connection's policy.
    ///
    /// When the peer resets, when it sends FIN and the [`HalfClose`] policy says
    /// `Abort` or a whole `AllowFor` grace passes with no byte moving, or when anything
    /// else abandons the connection (a
    /// drain deadline), `task` is dropped (and with it the stream, which then closes
    /// with an RST) and the future resolves to [`Abandoned`]. This works while `task`
    /// is not reading the socket at all. The task is polled inside the connection's
    /// tracing span.
    ///
    /// While `task` runs, the Tower layer (`HygieneLayer`) leaves the policy to
    /// this future; once `task` has ended (a TLS handshake, say) or this future is
    /// dropped, the layer enforces it again, also for the requests already waiting
    /// whose futures run outside `task` (HTTP/2 streams, in tasks of their own): the end
    /// of the supervision wakes them.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn dox(stream: conn_hygiene::HygieneStream<conn_hygiene::stream::TcpIo>) {
    /// let conn = stream.conn().clone();
    /// tokio::spawn(conn.supervise(async move {
    ///     // A handler that never reads: the peer's FIN still ends it.
    ///     let _stream = stream;
    ///     std::future::pending::<()>().await
    /// }));
    /// # }
    /// ```
    pub fn supervise<F: Future>(&self, task: F) -> Supervised<F> {
        let handoff = Arc::new(Handoff::new());
        Supervised {
            task: Some(task),
            supervision: Some(self.begin_supervision()),
            conn: self.clone(),
            enforce: Box::pin(enforce(self.clone())),
            enforce_waker: Waker::from(handoff.clone()),
            handoff,
            task_waker: None,
        }
    }
}

/// nginx's "client closed request": logged, never seen by a client.
pub(crate) const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Records handlers cancelled by an abandonment, as nginx logs a 499: the layer's
/// requests in flight, dropped with the connection's task or the layer's own watch.
pub(crate) fn record_cancel(conn: &Conn, reason: Abandon) {
    let in_flight = conn.in_flight();
    if in_flight == 0 {
        return;
    }
    tracing::info!(
        target: "conn_hygiene::cancel",
        parent: conn.span(),
        status = CLIENT_CLOSED_REQUEST,
        reason = reason.as_str(),
        in_flight,
        "handler cancelled: client closed request"
    );
    #[cfg(feature = "metrics")]
    crate::metrics::hooks::cancelled(reason, in_flight);
}

/// Waits for the reason to abandon the connection under its half-close policy.
pub(crate) async fn enforce(conn: Conn) -> Abandon {
    let gone = tokio::select! {
        biased;
        reason = conn.wait_abandoned() => return reason,
        gone = conn.peer_closed() => gone,
    };
    let grace = match (gone, conn.policy().half_close()) {
        (PeerGone::Reset, _) => return Abandon::PeerReset,
        (PeerGone::Fin, HalfClose::Abort) => return Abandon::PeerFin,
        (PeerGone::Fin, HalfClose::AllowFor(grace)) => Some(grace),
        // Closed on our side, or half-close allowed without bound: only an explicit
        // abandonment (a drain deadline) ends the task now.
        (PeerGone::Fin, HalfClose::Allow) | (PeerGone::LocalClose, _) => None,
    };
    let Some(grace) = grace else {
        return conn.wait_abandoned().await;
    };
    // An inactivity timeout, as HAProxy's `timeout client-fin`: the grace restarts
    // while bytes move either way. The counters are compared once per grace, which
    // costs nothing per byte; a connection with nothing moving goes `grace` after the
    // FIN, one that stops moving within two graces.
    let mut moved = conn.bytes();
    loop {
        tokio::select! {
            reason = conn.wait_abandoned() => return reason,
            () = tokio::time::sleep(grace) => {}
        }
        let now = conn.bytes();
        if now == moved {
            return Abandon::HalfCloseGrace;
        }
        moved = now;
    }
}

pin_project! {
    /// The future returned by [`Conn::supervise`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Supervised<F> {
        // Dropped in place on abandonment, so the stream closes then, even if the
        // caller keeps this future.
        #[pin]
        task: Option<F>,
        // Held while `task` runs: the layer stands down meanwhile, and enforces the
        // policy itself again once the task has ended or this future is dropped.
        supervision: Option<Supervision>,
        conn: Conn,
        enforce: Pin<Box<dyn Future<Output = Abandon> + Send>>,
        enforce_waker: Waker,
        handoff: Arc<Handoff>,
        // The waker last put in `handoff`.
        task_waker: Option<Waker>,
    }
}

/// Hands the enforcement future's wakeups to the connection's task.
struct Handoff {
    woken: AtomicBool,
    // A wakeup wakes this waker and leaves it in place, so the slot is never empty and
    // the task re-registers only when its waker changes. (A slot that a wakeup empties,
    // as `AtomicWaker`'s, needs a registration after every wakeup, and a poll cannot
    // tell soundly whether one emptied it since its last check.)
    task: Mutex<Option<Waker>>,
}

impl Handoff {
    fn new() -> Self {
        Handoff {
            // The first poll polls the enforcement future, which registers its wakeups.
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        }
    }

    /// Puts `waker` in the slot if `registered` would not wake the same task, then
    /// takes the woken flag. Registering before the check means that a wakeup the
    /// check misses finds the new waker.
    #[inline]
    fn poll_woken(&self, registered: &mut Option<Waker>, waker: &Waker) -> bool {
        if !registered.as_ref().is_some_and(|r| r.will_wake(waker)) {
            *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker.clone());
            *registered = Some(waker.clone());
        }
        self.woken.swap(false, Ordering::AcqRel)
    }

    // A wakeup's two halves, apart so that a test can poll between them, as a task on
    // another thread can.
    fn mark_woken(&self) {
        self.woken.store(true, Ordering::Release);
    }

    fn wake_task(&self) {
        // Woken outside the lock: a waker may run arbitrary code.
        let waker = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Wake for Handoff {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.mark_woken();
        self.wake_task();
    }
}

impl<F> fmt::Debug for Supervised<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervised")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for Supervised<F> {
    type Output = Result<F::Output, Abandoned>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _span = this.conn.span().enter();
        // Polled after it finished (or was abandoned): nothing left to do.
        let Some(task) = this.task.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        if let Poll::Ready(output) = task.poll(cx) {
            this.task.set(None);
            this.supervision.take();
            return Poll::Ready(Ok(output));
        }
        // The enforcement future is polled only when its own wakeup fired, not on every
        // wakeup of the connection's task: polling it takes locks.
        if !this.handoff.poll_woken(this.task_waker, cx.waker()) {
            return Poll::Pending;
        }
        let mut enforce_cx = Context::from_waker(this.enforce_waker);
        let reason = ready!(this.enforce.as_mut().poll(&mut enforce_cx));
        record_cancel(this.conn, reason);
        this.conn.abandon(reason);
        this.task.set(None);
        this.supervision.take();
        Poll::Ready(Err(Abandoned { reason }))
    }
}

/// The connection was abandoned before its task finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abandoned {
    reason: Abandon,
}

impl Abandoned {
    /// Why.
    pub fn reason(&self) -> Abandon {
        self.reason
    }
}

impl fmt::Display for Abandoned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection abandoned: {}", self.reason)
    }
}

impl std::error::Error for Abandoned {}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::task::{Wake, Waker};
    use std::time::Duration;

    use super::Handoff;
    use crate::conn::{Abandon, Conn, PeerGone};
    use crate::lockstep::{spin, wait_past};
    use crate::{HalfClose, Policy};

    /// The connection's task as its executor sees it: notified, or parked.
    struct Task {
        notified: AtomicBool,
    }

    impl Task {
        fn new() -> Arc<Task> {
            Arc::new(Task {
                notified: AtomicBool::new(false),
            })
        }

        fn take_notified(&self) -> bool {
            self.notified.swap(false, Ordering::AcqRel)
        }
    }

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.notified.store(true, Ordering::Release);
        }
    }

    /// The interleaving that lost a wakeup: the peer's FIN marks the enforcement future
    /// woken; the task, polling on its own on another thread, sees the mark and
    /// registers; only then does the FIN's wakeup reach the task. The old handoff (an
    /// `AtomicWaker`, registered again only after a wakeup it had seen) was emptied by
    /// that late wakeup, the next poll did not register, and the grace timer's wakeup
    /// found nobody: the handler stayed stuck, its socket in CLOSE_WAIT.
    #[test]
    fn wakeup_reaching_the_task_after_its_poll_loses_nothing() {
        let handoff = Arc::new(Handoff::new());
        let task = Task::new();
        let waker = Waker::from(task.clone());
        let mut registered = None;
        assert!(handoff.poll_woken(&mut registered, &waker), "first poll");

        handoff.mark_woken(); // the FIN
        assert!(
            handoff.poll_woken(&mut registered, &waker),
            "self-woken poll"
        );
        handoff.wake_task(); // the FIN's wakeup arrives late
        assert!(task.take_notified());
        assert!(!handoff.poll_woken(&mut registered, &waker), "nothing new");

        handoff.wake_by_ref(); // the grace timer
        assert!(task.take_notified(), "the grace timer's wakeup was lost");
        assert!(handoff.poll_woken(&mut registered, &waker));
    }

    /// A new waker (the future moved to another task) is the one woken.
    #[test]
    fn a_new_waker_replaces_the_old() {
        let handoff = Arc::new(Handoff::new());
        let (first, second) = (Task::new(), Task::new());
        let mut registered = None;
        handoff.poll_woken(&mut registered, &Waker::from(first.clone()));
        handoff.poll_woken(&mut registered, &Waker::from(second.clone()));
        handoff.wake_by_ref();
        assert!(!first.take_notified());
        assert!(second.take_notified());
    }

    struct Round {
        handoff: Arc<Handoff>,
        task: Arc<Task>,
        // What the enforcement future would see when polled.
        events: AtomicUsize,
    }

    /// The same race on real threads, many times over: two wakeups (the FIN, then
    /// the grace timer) against a task that polls on its own, then only when notified.
    /// After both, a poll must have seen the second.
    #[test]
    fn no_enforcement_wakeup_is_lost_across_threads() {
        const ROUNDS: usize = 20_000;
        let rounds: Arc<Vec<Round>> = Arc::new(
            (0..ROUNDS)
                .map(|_| Round {
                    handoff: Arc::new(Handoff::new()),
                    task: Task::new(),
                    events: AtomicUsize::new(0),
                })
                .collect(),
        );
        // Rounds released to the enforcer, and rounds it has finished.
        let go = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let enforcer = {
            let (rounds, go, done) = (rounds.clone(), go.clone(), done.clone());
            std::thread::spawn(move || {
                for (i, round) in rounds.iter().enumerate() {
                    wait_past(&go, i);
                    // Shift the wakeups against the polls a little each round.
                    spin(i % 32);
                    for _ in 0..2 {
                        round.events.fetch_add(1, Ordering::Release);
                        round.handoff.wake_by_ref();
                    }
                    done.store(i + 1, Ordering::Release);
                }
            })
        };
        let mut lost = 0;
        for (i, round) in rounds.iter().enumerate() {
            let waker = Waker::from(round.task.clone());
            let mut registered = None;
            let mut seen = 0;
            let mut poll = || {
                if round.handoff.poll_woken(&mut registered, &waker) {
                    seen = round.events.load(Ordering::Acquire);
                }
            };
            poll();
            go.store(i + 1, Ordering::Release);
            for _ in 0..3 {
                poll();
                if round.task.take_notified() {
                    poll();
                }
            }
            wait_past(&done, i);
            while round.task.take_notified() {
                poll();
            }
            if seen != 2 {
                lost += 1;
            }
        }
        enforcer.join().unwrap();
        assert_eq!(lost, 0, "wakeups lost in {lost} of {ROUNDS} rounds");
    }

    /// `Supervised::poll` on the real path, on real threads: a supervised task on a
    /// multi-thread runtime wakes itself a few times (more or fewer each round) while
    /// another thread reports the peer's FIN or abandons the connection, shifted
    /// against the task's polls from round to round. Every task must be released, for
    /// the right reason; with a half-close grace, by the grace timer's wakeup.
    #[test]
    fn every_supervised_task_is_released_across_threads() {
        type Change = fn(&Conn);
        let fin: Change = |conn| conn.record_peer(PeerGone::Fin);
        let cases: [(HalfClose, Change, Abandon, usize); 3] = [
            (HalfClose::Abort, fin, Abandon::PeerFin, 10_000),
            (
                HalfClose::Abort,
                |conn| conn.abandon(Abandon::DrainDeadline),
                Abandon::DrainDeadline,
                10_000,
            ),
            // Each round waits out the grace: fewer rounds.
            (
                HalfClose::AllowFor(Duration::from_millis(1)),
                fin,
                Abandon::HalfCloseGrace,
                2_000,
            ),
        ];
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        for (half_close, change, expected, rounds) in cases {
            let policy = Policy::builder().half_close(half_close).build().unwrap();
            let conns: Arc<Vec<Conn>> = Arc::new(
                (0..rounds)
                    .map(|id| {
                        Conn::new(
                            id as u64,
                            "192.0.2.7:40000".parse().unwrap(),
                            policy.clone(),
                        )
                    })
                    .collect(),
            );
            let started = Arc::new(AtomicUsize::new(0));
            let peer = {
                let (conns, started) = (conns.clone(), started.clone());
                std::thread::spawn(move || {
                    for (round, conn) in conns.iter().enumerate() {
                        wait_past(&started, round);
                        spin(round % 64);
                        change(conn);
                    }
                })
            };
            let stuck = runtime.block_on(async {
                for (round, conn) in conns.iter().enumerate() {
                    let started = started.clone();
                    let task = tokio::spawn(conn.supervise(async move {
                        started.store(round + 1, Ordering::Release);
                        for _ in 0..round % 8 {
                            tokio::task::yield_now().await;
                        }
                        std::future::pending::<()>().await
                    }));
                    match tokio::time::timeout(Duration::from_secs(5), task).await {
                        Ok(Ok(Err(abandoned))) => assert_eq!(abandoned.reason(), expected),
                        _ => return Some(round),
                    }
                }
                None
            });
            // The peer waits for a round that never comes after a stuck one: not joined.
            assert_eq!(stuck, None, "{expected}: a supervised task stayed stuck");
            peer.join().unwrap();
        }
    }
}
