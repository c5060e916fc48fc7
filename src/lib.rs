//! Keep Tokio servers and clients free of stuck connections.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

pub mod census;
pub mod options;

pub use options::{SocketOptions, bind};
