//! Abrupt peers: clients that misbehave on purpose, on real sockets.
//!
//! Each constructor of [`Peer`] names one misbehaviour; the builder tunes it and
//! [`Peer::start`] connects and plays it in a background task. The returned
//! [`PeerHandle`] says when the misbehaviour began ([`PeerHandle::settled`]), what the
//! server sent back and how the connection ended ([`PeerHandle::response`]), and lets
//! the test end the connection itself ([`PeerHandle::close`], [`PeerHandle::reset`]).
//! Dropping the handle closes the socket.

mod builder;
mod handle;
mod kind;
mod script;
mod wire;

pub use builder::Peer;
pub use handle::{PeerHandle, PeerResponse};
pub use kind::{End, PeerKind};
