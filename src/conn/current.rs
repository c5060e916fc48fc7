//! The current connection: a task-local for a connection's own task, and a
//! thread-local for the HTTP/2 request being called or polled.

use std::future::Future;

use super::Conn;

tokio::task_local! {
    static CURRENT: Conn;
}

thread_local! {
    // The HTTP/2 request being called or polled on this thread, for the span of one
    // `call` or `poll` (see `RequestGuard::enter`): its connection, which
    // `Conn::current` returns before the task-local one, and whether the request has
    // overridden its limits (`set_request_limits` then counts it among the overriding
    // requests, so that the override ends with it rather than with the connection's
    // last stream).
    // A `Cell`, not a `RefCell`: entered twice per HTTP/2 request, where a borrow
    // flag's checks showed.
    pub(super) static ENTERED: std::cell::Cell<Option<(Conn, bool)>> = const { std::cell::Cell::new(None) };
}

/// While it lives, [`Conn::current`] on this thread is its request's connection, and
/// limits set on it are that request's; dropped at the end of one synchronous `call`
/// or `poll`, never held across an `await`.
#[cfg(feature = "hyper")]
pub(crate) struct Entered<'g> {
    pub(super) previous: Option<(Conn, bool)>,
    pub(super) overriding: &'g mut bool,
}

#[cfg(feature = "hyper")]
impl Drop for Entered<'_> {
    // Also on a panic: a request counted among the overriding ones remembers it.
    fn drop(&mut self) {
        let ours = ENTERED.replace(self.previous.take());
        *self.overriding = ours.is_some_and(|(_, counted)| counted);
    }
}

impl Conn {
    /// The connection whose task is running, if it runs under [`scope`](Self::scope):
    /// `serve()` runs each connection's task (with its HTTP/1 handlers) in one. An
    /// HTTP/2 service behind `HygieneLayer` (under any server) is also called and
    /// polled with its connection as the current one, although hyper runs each stream
    /// in a task of its own.
    pub fn current() -> Option<Conn> {
        ENTERED
            .with(|entered| {
                let ours = entered.take();
                let conn = ours.as_ref().map(|(conn, _)| conn.clone());
                entered.set(ours);
                conn
            })
            .or_else(|| CURRENT.try_with(Conn::clone).ok())
    }

    /// Runs `task` with this connection as [`Conn::current`].
    pub fn scope<F: Future>(self, task: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, task)
    }
}
