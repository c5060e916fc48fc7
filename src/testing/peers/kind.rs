//! The vocabulary of the kit: which misbehaviour a peer plays ([`PeerKind`]) and how
//! its connection ended ([`End`]).

use std::io;

/// The misbehaviour a [`Peer`](crate::testing::Peer) plays. See the constructor of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeerKind {
    /// [`Peer::fin_after_request`](crate::testing::Peer::fin_after_request).
    FinAfterRequest,
    /// [`Peer::fin_mid_body`](crate::testing::Peer::fin_mid_body).
    FinMidBody,
    /// [`Peer::rst_mid_request`](crate::testing::Peer::rst_mid_request).
    RstMidRequest,
    /// [`Peer::slowloris`](crate::testing::Peer::slowloris).
    Slowloris,
    /// [`Peer::slow_body`](crate::testing::Peer::slow_body).
    SlowBody,
    /// [`Peer::stalled_body`](crate::testing::Peer::stalled_body).
    StalledBody,
    /// [`Peer::silent_connect`](crate::testing::Peer::silent_connect).
    SilentConnect,
    /// [`Peer::never_read`](crate::testing::Peer::never_read).
    NeverRead,
    /// [`Peer::pipelined_then_fin`](crate::testing::Peer::pipelined_then_fin).
    PipelinedThenFin,
    /// [`Peer::garbage`](crate::testing::Peer::garbage).
    Garbage,
    /// [`Peer::idle_keep_alive`](crate::testing::Peer::idle_keep_alive).
    IdleKeepAlive,
    /// [`Peer::vanish`](crate::testing::Peer::vanish).
    Vanish,
}

impl PeerKind {
    /// Whether the kind builds its bytes from a request head with a body
    /// ([`Peer::path`](crate::testing::Peer::path), [`Peer::content_length`](crate::testing::Peer::content_length), [`Peer::body_sent`](crate::testing::Peer::body_sent)).
    pub(super) fn has_body(self) -> bool {
        matches!(
            self,
            PeerKind::FinMidBody
                | PeerKind::RstMidRequest
                | PeerKind::SlowBody
                | PeerKind::StalledBody
        )
    }
}

/// How the connection of a peer ended, as the peer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum End {
    /// The server closed its side gracefully (FIN): a read returned end of file.
    Eof,
    /// The server reset the connection (RST): a read or write failed with
    /// `ConnectionReset`, `ConnectionAborted` or `BrokenPipe`.
    Reset,
    /// Still open when asked ([`PeerHandle::response_within`](crate::testing::PeerHandle::response_within)).
    Open,
    /// This peer ended the connection itself before the server did:
    /// [`PeerHandle::close`](crate::testing::PeerHandle::close), [`PeerHandle::reset`](crate::testing::PeerHandle::reset) or the scripted RST of
    /// [`Peer::rst_mid_request`].
    ///
    /// [`Peer::rst_mid_request`]: crate::testing::Peer::rst_mid_request
    Dropped,
    /// Another I/O error.
    Error(io::ErrorKind),
}

impl End {
    pub(super) fn of(error: &io::Error) -> End {
        match error.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => End::Reset,
            kind => End::Error(kind),
        }
    }

    pub(super) fn into_error(self, what: &str) -> io::Error {
        let kind = match self {
            End::Reset => io::ErrorKind::ConnectionReset,
            End::Eof => io::ErrorKind::UnexpectedEof,
            End::Error(kind) => kind,
            End::Open | End::Dropped => io::ErrorKind::Other,
        };
        io::Error::new(kind, format!("{what}: connection ended ({self:?})"))
    }
}
