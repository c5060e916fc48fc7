//! What a full listener does: it sheds idle connections, not new clients.
//!
//! A listener is full at its [connection cap](super::Listener::max_connections),
//! or when `accept` fails with `EMFILE`/`ENFILE` (the descriptor limit plays the same
//! role without a cap). Two mechanisms keep it serving:
//!
//! - **eviction at the cap** (nginx's "worker_connections are not enough, reusing
//!   connections"): the oldest idle connections are closed to admit new ones, up to a
//!   [batch](super::Listener::eviction_batch) at a time. Idle means: an HTTP/1
//!   keep-alive connection between requests, a connection that has not sent its first
//!   byte, an HTTP/2 connection with no request in flight under `serve()` (under
//!   `axum::serve` an idle HTTP/2 connection is not evicted; use `serve()`). A request in flight, a
//!   request head arriving and a tunnel are never evicted;
//! - **pressure before the cap** (Envoy's overload manager, `reduce_timeouts`): past a
//!   [share](Pressure::share) of the cap, or of the descriptor limit, the idle and
//!   first-byte clocks shrink linearly toward a [floor](Pressure::floor), reached at
//!   the cap; with a cap set, every request begun meanwhile (not an upgrade) also
//!   retires its connection after its answer (`Connection: close`, HTTP/2 GOAWAY).

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::conn::load::Load;
pub use crate::conn::load::Pressure;
use crate::conn::{Conn, Phase};
use crate::registry::Registry;

/// How long a connection must have been silent since accept before it counts as idle:
/// a client's first bytes follow its handshake within a round trip.
const SILENT_FOR: Duration = Duration::from_secs(1);

/// How often a client waiting at the cap looks again for idle connections, while
/// none is: requests end and silent clients age meanwhile.
pub(crate) const RETRY: Duration = Duration::from_millis(100);

/// How long an evicted connection has to close before its socket is shut down (our
/// FIN) under its owner: its slot is wanted. An HTTP/2 one sent GOAWAY waits for the
/// client's answer to a PING (h2's graceful close), which a client that stopped
/// reading never sends.
const GRACE: Duration = Duration::from_secs(1);

/// How long an evicted connection's lingering close waits for the client's FIN: a
/// request sent as our FIN left arrives within a round trip.
const LINGER: Duration = Duration::from_millis(200);

/// How many idle connections one eviction closes at most: nginx's 32.
pub const EVICTION_BATCH: NonZeroUsize = NonZeroUsize::new(32).unwrap();

/// Why the listener is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// At its connection cap.
    MaxConnections,
    /// Out of descriptors (`EMFILE`, `ENFILE`).
    Descriptors,
}

impl Full {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Full::MaxConnections => "max_connections",
            Full::Descriptors => "descriptors",
        }
    }
}

/// How an idle connection is evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eviction {
    /// The end of reading, in the server's task: it flushes and closes (our FIN, no RST).
    Close,
    /// A graceful retirement: HTTP/2 GOAWAY under `serve()`.
    GoAway,
}

/// How `conn` may be evicted, and since when it is idle; `None` if it may not be.
fn evictable(conn: &Conn) -> Option<(Instant, Eviction)> {
    let flags = conn.flags();
    if conn.is_evicted() || flags.is_draining() || flags.is_tunnel() {
        return None;
    }
    match conn.phase() {
        Phase::FirstByte if conn.age() >= SILENT_FOR => Some((conn.started(), Eviction::Close)),
        // Served without the layer (plain `axum::serve`), or not known to have it:
        // a request may be in flight uncounted.
        Phase::Idle
            if flags.lacks_request_boundaries()
                || (flags.may_lack_layer() && conn.requests() == 0) =>
        {
            None
        }
        // Only where a GOAWAY can be sent (`serve()`): under `axum::serve` or tonic's
        // `Server` an end of reading could fall between a stream's HEADERS and the
        // server counting it (h2 reads on before it hands a stream over), and the
        // client could not tell whether it was served. The grace's shutdown is no
        // safer. So there an idle HTTP/2 connection is not evicted.
        Phase::Idle if flags.is_http2() => conn
            .retires_gracefully()
            .then(|| (idle_since(conn), Eviction::GoAway)),
        // HTTP/1 (or a sealed stream) between requests: no byte since the last answer.
        Phase::Idle if conn.requests() > 0 && !conn.read_since_idle() => {
            Some((idle_since(conn), Eviction::Close))
        }
        _ => None,
    }
}

/// Warns, once per listener, that the cap is held by connections served without the
/// layer, which cannot be told idle: plain `axum::serve` counts no request.
#[cold]
fn warn_unevictable(load: &Load, conns: &[Conn]) {
    let blind = conns
        .iter()
        .filter(|conn| conn.phase() == Phase::Idle && conn.flags().lacks_request_boundaries())
        .count();
    if blind > 0 && load.first_warning_without_layer() {
        tracing::warn!(
            target: "conn_hygiene::accept",
            connections = blind,
            "at capacity, and connections served without HygieneLayer cannot be told idle: \
             they are not evicted. Serve with conn_hygiene::serve(), or add the layer"
        );
    }
}

/// Closes `conn` (our FIN) unless it has closed within `grace`; never under a
/// request in flight or a head arriving (one that began since the eviction). Ended
/// reading (`Eviction::Close`), such a connection is handed back: it is not evicted
/// any more, and may be chosen again once idle. Sent a GOAWAY, it is looked at again
/// a grace later.
async fn close_after(conn: Conn, how: Eviction, grace: Duration) {
    let mut closed = std::pin::pin!(conn.closed());
    let mut waited = Duration::ZERO;
    loop {
        tokio::select! {
            () = &mut closed => return,
            () = tokio::time::sleep(LINGER) => {}
        }
        waited += LINGER;
        if conn.phase() == Phase::Lingering {
            // Our FIN is out, and bytes that raced it were discarded without a reset;
            // a client that does not close in answer is not waited for: its slot is
            // wanted.
            conn.mark_eviction_shut();
            conn.shut_down_socket();
            return;
        }
        if waited < grace {
            continue;
        }
        waited = Duration::ZERO;
        let busy = conn.in_flight() > 0 || conn.is_tunnel();
        if how == Eviction::Close && !conn.eviction_shut() && (busy || conn.read_since_idle()) {
            conn.unmark_evicted();
            return;
        }
        if !busy {
            conn.mark_eviction_shut();
            conn.shut_down_socket();
            return;
        }
    }
}

/// Whether bytes wait in the socket's receive buffer, unread by the server.
fn has_unread_bytes(conn: &Conn) -> bool {
    let Some(socket) = conn.socket() else {
        return false;
    };
    let mut byte = [std::mem::MaybeUninit::uninit()];
    // The socket is non-blocking: no byte is `WouldBlock`, the peer's FIN is 0.
    matches!(socket2::SockRef::from(&*socket).peek(&mut byte), Ok(n) if n > 0)
}

/// When `conn` became idle, where the connection tracks it (idleness judged by
/// requests: TLS, HTTP/2 whose frames are not followed); its accept otherwise, which
/// costs no clock read per request: the oldest go first.
fn idle_since(conn: &Conn) -> Instant {
    if conn.requests() > 0 && conn.flags().idle_by_requests() {
        conn.idle_by_requests_since()
    } else {
        conn.started()
    }
}

/// Waits until `registry` holds fewer than `max` connections, evicting idle ones
/// meanwhile: a client accepted at the cap waits for the room.
pub(crate) async fn make_room(registry: &Registry, batch: usize, max: usize) {
    while registry.len() >= max {
        evict(registry, registry.load(), batch, Full::MaxConnections);
        tokio::select! {
            () = registry.wait_below(max) => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// How long a connection's request count must stand, between two looks of the
/// eviction, before it counts as quiet: `serve()`'s drain waits as long for an idle
/// HTTP/1 connection, for the same race.
const QUIET_MS: u32 = 100;

/// What the eviction's look finds on an idle connection.
enum Look {
    /// No request began for [`QUIET_MS`], or it never had one (silent since accept
    /// for a second).
    Quiet,
    /// Seen for the first time, or no request began since a look less than
    /// [`QUIET_MS`] ago: quiet soon, unless a request begins.
    Settling,
    /// A request began since the last look.
    Busy,
}

/// Looks at `conn` at `now` (ms, from the load): compares its request count with the
/// last look's, a clock read per scan rather than per request.
fn look(conn: &Conn, now: u32) -> Look {
    if conn.requests() == 0 {
        return Look::Quiet;
    }
    match conn.look_for_eviction(now) {
        (_, None) => Look::Settling,
        (requests, Some((count, at))) if count == requests => {
            if now.wrapping_sub(at) >= QUIET_MS {
                Look::Quiet
            } else {
                Look::Settling
            }
        }
        _ => Look::Busy,
    }
}

/// What an eviction did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Evicted {
    /// Connections evicted.
    pub(crate) count: usize,
    /// Idle connections not quiet long enough yet: the next look should come soon.
    pub(crate) settling: bool,
}

/// Evicts up to `batch` of the oldest idle connections of `registry`, less those
/// evicted before that are still closing.
pub(crate) fn evict(registry: &Registry, load: &Arc<Load>, batch: usize, full: Full) -> Evicted {
    let conns = registry.connections();
    // Evicted and still open. A request begun since (before the eviction took
    // effect) holds no place: its work may last hours. A lingering close, which only
    // waits for the client's FIN (`LINGER` at most), holds no place in the batch
    // either, but its slot is on its way.
    let (mut closing, mut leaving) = (0, 0);
    for conn in &conns {
        if conn.is_evicted() && conn.in_flight() == 0 {
            leaving += 1;
            closing += usize::from(conn.phase() != Phase::Lingering);
        }
    }
    let room = batch.saturating_sub(closing);
    if room == 0 {
        return Evicted {
            count: 0,
            settling: false,
        };
    }
    let mut idle: Vec<(Instant, Eviction, &Conn)> = conns
        .iter()
        .filter_map(|conn| evictable(conn).map(|(since, how)| (since, how, conn)))
        .collect();
    idle.sort_by_key(|&(since, _, _)| since);
    // The quiet ones first: a connection whose last request ended a moment ago may
    // have the next on its way (a balancer reuses its most recently used connection
    // first). The others only when none is quiet, none may soon be, and no slot is
    // on its way.
    let now = load.millis();
    let mut settling = false;
    let (quiet, recent): (Vec<_>, Vec<_>) =
        idle.into_iter()
            .partition(|&(_, _, conn)| match look(conn, now) {
                Look::Quiet => true,
                Look::Settling => {
                    settling = true;
                    false
                }
                Look::Busy => false,
            });
    let idle = if quiet.is_empty() && !settling && leaving == 0 {
        recent
    } else {
        quiet
    };
    // Bytes the server has not read yet (a request on its way in) make a connection
    // busy: looked at only for the connections about to go.
    let idle: Vec<(Eviction, &Conn)> = idle
        .into_iter()
        .filter(|&(_, how, conn)| how == Eviction::GoAway || !has_unread_bytes(conn))
        .take(room)
        .map(|(_, how, conn)| (how, conn))
        .collect();
    let mut evicted = 0;
    for &(how, conn) in &idle {
        if !conn.mark_evicted() {
            continue;
        }
        // Looked at again now that it is marked: a request that began since the look
        // above (the scan, the peeks) keeps its connection. What remains is the time
        // between this look and the shutdown, a few instructions.
        if conn.in_flight() > 0 || (!conn.is_http2() && conn.read_since_idle()) {
            conn.unmark_evicted();
            continue;
        }
        evicted += 1;
        #[cfg(feature = "metrics")]
        crate::metrics::hooks::evicted(full.as_str(), conn.phase().as_str());
        match how {
            // The reader ends reading in the server's task, which flushes what it
            // wrote and closes.
            Eviction::Close => conn.wake_reader(),
            Eviction::GoAway => conn.start_draining(),
        }
        // An owner that does not read now (a handshake's acceptor, a task that reads
        // no more), or a client that ignores the GOAWAY: the socket is shut down
        // under it.
        tokio::spawn(close_after(conn.clone(), how, GRACE));
    }
    load.count_evicted(evicted);
    if evicted == 0 && closing == 0 {
        warn_unevictable(load, &conns);
    }
    if evicted > 0 {
        if load.first_of_burst() {
            tracing::warn!(
                target: "conn_hygiene::accept",
                reason = full.as_str(),
                evicted,
                live = conns.len(),
                total = load.evicted(),
                "connections are not enough, evicting idle connections"
            );
        } else {
            tracing::debug!(
                target: "conn_hygiene::accept",
                reason = full.as_str(),
                evicted,
                live = conns.len(),
                "evicting idle connections"
            );
        }
    }
    Evicted {
        count: evicted,
        settling,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    fn load(share: f64, floor: Duration, max: usize) -> Load {
        let load = Load::default();
        load.set_pressure(Some(Pressure::new(share, floor).unwrap()));
        load.set_max(NonZeroUsize::new(max));
        load
    }

    #[test]
    fn invalid_pressure_names_its_field() {
        for share in [0.0, -0.1, 1.01, f64::NAN] {
            let err = Pressure::new(share, Duration::from_secs(1)).unwrap_err();
            assert_eq!(err.field(), "pressure.share", "{share}");
        }
        assert_eq!(
            Pressure::new(0.5, Duration::ZERO).unwrap_err().field(),
            "pressure.floor"
        );
        assert!(Pressure::new(1.0, Duration::from_millis(1)).is_ok());
    }

    /// Below the share the clocks are whole; past it they shrink linearly, and reach
    /// the floor at the cap; a clock shorter than the floor keeps its length.
    #[test]
    fn clocks_shrink_from_the_share_to_the_floor_at_the_cap() {
        let load = load(0.8, Duration::from_secs(5), 1000);
        let idle = Duration::from_secs(65);
        let cases = [
            (0, idle),
            (799, idle),
            (800, idle),
            (900, Duration::from_secs(35)),
            (950, Duration::from_secs(20)),
            (1000, Duration::from_secs(5)),
            (1500, Duration::from_secs(5)),
        ];
        for (live, expected) in cases {
            load.update(live);
            let scaled = load.scale(idle);
            let diff = scaled.abs_diff(expected);
            assert!(diff < Duration::from_millis(100), "{live}: {scaled:?}");
            assert_eq!(load.is_pressed(), live > 800, "{live}");
        }
        assert_eq!(load.scale(Duration::from_secs(2)), Duration::from_secs(2));
        // Back below the share: whole again.
        load.update(10);
        assert_eq!(load.scale(idle), idle);
    }

    /// The descriptor limit is pressure too: a descriptor number near it, or an
    /// `EMFILE`, shrinks the clocks as the cap does, with no cap set.
    #[test]
    fn descriptors_are_pressure_without_a_cap() {
        let load = load(0.8, Duration::from_secs(5), 0);
        load.update(5000);
        assert!(!load.is_pressed(), "no cap, no descriptors noted");
        load.note_descriptor(950, 940, Some(1000));
        load.update(940);
        assert!(load.is_pressed());
        assert!(load.scale(Duration::from_secs(65)) < Duration::from_secs(25));
        // Connections closing lower it before the next accept.
        load.update(700);
        assert!(!load.is_pressed(), "710 of 1000 descriptors");
        load.note_exhausted(990);
        load.update(990);
        assert_eq!(load.scale(Duration::from_secs(65)), Duration::from_secs(5));
    }

    /// Pressure retires connections (`Connection: close`) only with a cap set: from
    /// the descriptor limit alone it shrinks the clocks and keeps keep-alive. Fails
    /// on the old rule, which retired under any pressure.
    #[test]
    fn descriptor_pressure_without_a_cap_retires_nothing() {
        for (max, retires) in [(0, false), (2000, true)] {
            let registry = Registry::new();
            let load = registry.load().clone();
            load.set_max(NonZeroUsize::new(max));
            let conn = http_conn(Policy::default());
            let _registration = registry.register(&conn);
            // Descriptor 950 of 1,000 (the rest held elsewhere): 95 %.
            load.note_descriptor(950, 1, Some(1000));
            load.update(1);
            assert!(load.is_pressed(), "{max}");
            drop(conn.begin_request());
            assert_eq!(conn.is_draining(), retires, "cap {max}");
        }
    }

    /// The pauses at `EMFILE` warn once a second, not at every retry (100 ms).
    #[tokio::test(start_paused = true)]
    async fn exhaustion_warns_once_a_second() {
        let load = Load::default();
        let mut warned = 0;
        for _ in 0..30 {
            warned += usize::from(load.first_exhaustion_of_burst());
            tokio::time::sleep(RETRY).await;
        }
        assert_eq!(warned, 3);
    }

    #[test]
    fn pressure_off_leaves_the_clocks_alone() {
        let load = Load::default();
        load.set_pressure(None);
        load.set_max(NonZeroUsize::new(10));
        load.note_descriptor(100, 10, Some(100));
        assert!(!load.update(10));
        assert!(!load.is_pressed());
    }

    /// A rise past the share asks for the armed clocks to be read again, once per
    /// sixteenth of tightening, not at every accept.
    #[test]
    fn a_rise_tightens_the_armed_clocks_once_per_step() {
        let load = load(0.5, Duration::from_secs(1), 1000);
        assert!(!load.update(400));
        assert!(load.update(600), "past the share");
        assert!(!load.update(601), "the same step");
        assert!(load.update(700), "a step further");
        assert!(!load.update(650), "easing");
    }

    /// A connection marked HTTP, outside any listener.
    fn http_conn(policy: Policy) -> Conn {
        let conn = Conn::new(
            crate::registry::next_id(),
            "127.0.0.1:1".parse().unwrap(),
            policy,
        );
        conn.mark_http();
        conn
    }

    /// An HTTP/1 stream over an in-memory pipe whose first request was served: idle
    /// between requests, the state eviction takes.
    async fn served_once(
        policy: Policy,
    ) -> (
        crate::HygieneStream<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Conn,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (io, mut peer) = tokio::io::duplex(64);
        let conn = http_conn(policy);
        let mut stream = crate::HygieneStream::new(io, conn.clone());
        peer.write_all(b"x").await.unwrap();
        assert_eq!(stream.read(&mut [0u8; 8]).await.unwrap(), 1);
        drop(conn.begin_request());
        (stream, peer, conn)
    }

    /// An evicted reader ends reading while nothing arrived since the last answer,
    /// and not once a head has begun arriving (in pieces: a long head, a slow client),
    /// which hyper would otherwise drop as an incomplete message. Fails on the old
    /// reader, which ended reading at the first wait.
    #[tokio::test(start_paused = true)]
    async fn an_evicted_reader_does_not_cut_a_head_arriving_in_pieces() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, _peer, conn) = served_once(Policy::default()).await;
        assert!(conn.mark_evicted());
        assert_eq!(stream.read(&mut [0u8; 8]).await.unwrap(), 0, "evicted idle");

        let (mut stream, mut peer, conn) = served_once(Policy::default()).await;
        assert!(conn.mark_evicted());
        peer.write_all(b"GET / HT").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 8);
        let next = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await;
        assert!(next.is_err(), "the head was cut: {next:?}");
        peer.write_all(b"TP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(stream.read(&mut buf).await.unwrap(), 10, "the head's rest");
        assert!(!conn.eviction_shut());
    }

    /// A request begun on an evicted connection before the eviction took effect keeps
    /// its peer detection: the client's FIN during it is the peer's, and
    /// `HalfClose::Abort` cancels. Fails while the eviction mark muted peer reports.
    #[tokio::test(start_paused = true)]
    async fn a_request_begun_after_eviction_still_sees_the_peer_leave() {
        use tokio::io::AsyncReadExt;
        let abort = Policy::builder()
            .half_close(crate::HalfClose::Abort)
            .build()
            .unwrap();
        let (mut stream, peer, conn) = served_once(abort).await;
        assert!(conn.mark_evicted());
        let request = conn.begin_request();
        drop(peer);
        assert_eq!(stream.read(&mut [0u8; 8]).await.unwrap(), 0);
        assert_eq!(conn.peer_gone(), Some(crate::conn::PeerGone::Fin));
        assert_eq!(conn.abandoned(), Some(crate::conn::Abandon::PeerFin));
        drop(request);
    }

    /// On paused time: a connection registered with a pressed listener times out
    /// idle at the shrunk clock, and one registered before has its armed clock
    /// shortened when the pressure rises.
    #[tokio::test(start_paused = true)]
    async fn an_armed_idle_clock_shrinks_when_the_pressure_rises() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let policy = Policy::builder()
            .idle_timeout(Some(Duration::from_secs(60)))
            .build()
            .unwrap();
        let registry = Registry::new();
        let load = registry.load().clone();
        load.set_max(NonZeroUsize::new(10));
        let (io, mut peer) = tokio::io::duplex(64);
        let conn = http_conn(policy);
        let _registration = registry.register(&conn);
        let mut stream = crate::HygieneStream::new(io, conn.clone());
        peer.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 1);
        drop(conn.begin_request());
        let started = Instant::now();
        let reading = tokio::spawn(async move { stream.read(&mut buf).await });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!reading.is_finished());
        // Eight more: 9 of 10, 90 % of the cap, halfway from the share to the cap.
        let others: Vec<_> = (0..8)
            .map(|_| {
                let conn = Conn::new(
                    crate::registry::next_id(),
                    "127.0.0.1:2".parse().unwrap(),
                    Policy::default(),
                );
                (registry.register(&conn), conn)
            })
            .collect();
        let error = reading.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        // 5 s + (60 s - 5 s) / 2 = 32.5 s after the wait began.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(32_400) && waited <= Duration::from_millis(32_600),
            "{waited:?}"
        );
        drop(others);
        assert!(!load.is_pressed(), "released: no pressure");
    }
}
