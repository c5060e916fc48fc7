//! A deadline that touches the timer wheel only when it must.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::task::coop::unconstrained;
use tokio::time::{Instant, Sleep, sleep_until};

/// One lazily armed sleep. Progress moves a deadline later without touching the timer:
/// the armed sleep fires early and is re-armed then. It is reset at once only when a
/// deadline moves earlier.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    sleep: Option<Pin<Box<Sleep>>>,
    // The waker the armed sleep holds: until it fires, a wait by the same task at the
    // same or a later deadline need not poll it again (one wait per request).
    armed_for: Option<Waker>,
}

impl Clock {
    /// Ready once `deadline` has passed; otherwise registers the waker and is Pending.
    #[inline(always)]
    pub(crate) fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
            self.armed_for = None;
        } else if !sleep.is_elapsed()
            && self
                .armed_for
                .as_ref()
                .is_some_and(|armed| armed.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        loop {
            // Out of the task's coop budget a sleep answers `Pending` without
            // registering the waker: unconstrained, a `Pending` here always arms it, so
            // that the waits after it can trust `armed_for`.
            if Pin::new(&mut unconstrained(sleep.as_mut()))
                .poll(cx)
                .is_pending()
            {
                if !self
                    .armed_for
                    .as_ref()
                    .is_some_and(|armed| armed.will_wake(cx.waker()))
                {
                    self.armed_for = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            if sleep.deadline() >= deadline {
                self.armed_for = None;
                return Poll::Ready(());
            }
            // Fired for a deadline that progress has since moved: re-arm once.
            sleep.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio_test::{assert_pending, assert_ready, task};

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_latest_deadline_only() {
        let start = Instant::now();
        let mut clock = Clock::default();
        let mut deadline = start + Duration::from_secs(10);
        let mut t = task::spawn(());
        assert_pending!(t.enter(|cx, _| clock.poll_until(cx, deadline)));
        // Progress moves the deadline later; the old sleep fires early and re-arms.
        tokio::time::advance(Duration::from_secs(5)).await;
        deadline = start + Duration::from_secs(15);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(t.is_woken());
        assert_pending!(t.enter(|cx, _| clock.poll_until(cx, deadline)));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_pending!(t.enter(|cx, _| clock.poll_until(cx, deadline)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(t.is_woken());
        assert_ready!(t.enter(|cx, _| clock.poll_until(cx, deadline)));
    }

    /// A wait by the same task at the same deadline leaves the armed sleep alone; a
    /// wait by another task arms it for that task.
    #[tokio::test(start_paused = true)]
    async fn a_new_task_rearms_the_sleep() {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut clock = Clock::default();
        let mut first = task::spawn(());
        assert_pending!(first.enter(|cx, _| clock.poll_until(cx, deadline)));
        assert_pending!(first.enter(|cx, _| clock.poll_until(cx, deadline)));
        let mut second = task::spawn(());
        assert_pending!(second.enter(|cx, _| clock.poll_until(cx, deadline)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(second.is_woken());
        assert_ready!(second.enter(|cx, _| clock.poll_until(cx, deadline)));
    }

    /// A task out of its coop budget (a connection task that wrote a lot) still arms
    /// the sleep: the next wait at the same deadline trusts it, and it wakes the task.
    #[tokio::test(start_paused = true)]
    async fn a_task_out_of_budget_still_arms_the_sleep() {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut clock = Clock::default();
        let mut t = task::spawn(());
        t.enter(|cx, _| {
            while let Poll::Ready(progress) = tokio::task::coop::poll_proceed(cx) {
                progress.made_progress();
            }
            assert_pending!(clock.poll_until(cx, deadline));
        });
        // A new poll of the test's task, with a new budget: the wait trusts the sleep.
        tokio::task::yield_now().await;
        assert_pending!(t.enter(|cx, _| clock.poll_until(cx, deadline)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(t.is_woken(), "the sleep never armed");
        assert_ready!(t.enter(|cx, _| clock.poll_until(cx, deadline)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_resets_at_once() {
        let start = Instant::now();
        let mut clock = Clock::default();
        let mut t = task::spawn(());
        assert_pending!(t.enter(|cx, _| clock.poll_until(cx, start + Duration::from_secs(60))));
        let early = start + Duration::from_secs(1);
        assert_pending!(t.enter(|cx, _| clock.poll_until(cx, early)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(t.is_woken());
        assert_ready!(t.enter(|cx, _| clock.poll_until(cx, early)));
    }
}
