//! Enforcing the half-close policy on a connection's task, even while nothing reads.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker, ready};

use atomic_waker::AtomicWaker;

use pin_project_lite::pin_project;

use crate::conn::{Abandon, Conn, PeerGone};
use crate::policy::HalfClose;

impl Conn {
    /// Runs `task`, the work of this connection, under the connection's policy.
    ///
    /// When the peer resets, when it sends FIN and the [`HalfClose`] policy says
    /// `Abort` or its grace passes, or when anything else abandons the connection (a
    /// drain deadline), `task` is dropped (and with it the stream, which then closes
    /// with an RST) and the future resolves to [`Abandoned`]. This works while `task`
    /// is not reading the socket at all. The task is polled inside the connection's
    /// tracing span.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn dox(stream: conn_hygiene::HygieneStream<conn_hygiene::TcpIo>) {
    /// let conn = stream.conn().clone();
    /// tokio::spawn(conn.supervise(async move {
    ///     // A handler that never reads: the peer's FIN still ends it.
    ///     let _stream = stream;
    ///     std::future::pending::<()>().await
    /// }));
    /// # }
    /// ```
    pub fn supervise<F: Future>(&self, task: F) -> Supervised<F> {
        self.mark_supervised();
        let woken = Arc::new(WokenFlag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Supervised {
            task: Some(task),
            conn: self.clone(),
            enforce: Box::pin(enforce(self.clone())),
            enforce_waker: Waker::from(woken.clone()),
            woken,
            task_waker: None,
        }
    }
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
        conn: Conn,
        enforce: Pin<Box<dyn Future<Output = Abandon> + Send>>,
        // The enforcement future is polled only when its own wakeup fired, not on every
        // wakeup of the connection's task: polling it takes locks.
        enforce_waker: Waker,
        woken: Arc<WokenFlag>,
        task_waker: Option<Waker>,
    }
}

/// Records that the enforcement future was woken, then wakes the task.
struct WokenFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WokenFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
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
            return Poll::Ready(Ok(output));
        }
        // A wakeup takes the registered waker; otherwise it stays registered, and a
        // task's waker rarely changes: register only in those two cases.
        let woken = this.woken.woken.swap(false, Ordering::AcqRel);
        if woken
            || !this
                .task_waker
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            this.woken.task.register(cx.waker());
            *this.task_waker = Some(cx.waker().clone());
        }
        if !woken {
            return Poll::Pending;
        }
        let mut enforce_cx = Context::from_waker(this.enforce_waker);
        let reason = ready!(this.enforce.as_mut().poll(&mut enforce_cx));
        #[cfg(feature = "hyper")]
        crate::layer::record_cancel(this.conn, reason);
        this.conn.abandon(reason);
        this.task.set(None);
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
