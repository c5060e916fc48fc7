//! Keep Tokio servers and clients free of stuck connections.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

pub mod census;
pub mod conn;
pub mod doctor;
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
pub mod layer;
pub mod listener;
pub mod options;
pub mod policy;
pub mod registry;
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
pub mod serve;
pub mod stream;
mod supervise;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use conn::{Abandon, Conn, PeerGone, Phase};
#[cfg(feature = "hyper")]
pub use layer::HygieneLayer;
pub use listener::Listener;
pub use options::{SocketOptionError, SocketOptions, bind};
pub use policy::{ConfigError, HalfClose, Policy, PolicyBuilder};
pub use registry::Registry;
#[cfg(feature = "hyper")]
pub use serve::{ShutdownReport, serve};
pub use stream::{HygieneStream, TcpIo};
pub use supervise::{Abandoned, Supervised};
