//! The pieces of the `load` bench driver; see `benches/load.rs`.

pub(crate) mod chart;
pub(crate) mod h2load;
pub(crate) mod http;
pub(crate) mod profile;
pub(crate) mod report;
pub(crate) mod scale;
pub(crate) mod server;
pub(crate) mod stats;
pub(crate) mod storm;
pub(crate) mod throughput;
pub(crate) mod ws;
