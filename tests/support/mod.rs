//! What the integration tests share: servers, apps, clients and hostile peers.
//!
//! Each test binary includes this module whole and uses what it needs.
#![allow(dead_code)]

#[cfg(feature = "axum")]
pub(crate) mod app;
pub(crate) mod big;
#[cfg(feature = "hyper")]
pub(crate) mod client;
pub(crate) mod h2frames;
#[cfg(feature = "metrics")]
pub(crate) mod metrics;
pub(crate) mod netns;
pub(crate) mod refusal;
#[cfg(feature = "axum")]
pub(crate) mod server;
pub(crate) mod tls;
