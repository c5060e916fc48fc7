//! The integration tests, in one binary: linking axum, hyper and tonic once instead of
//! once per file is most of the build's time.
//!
//! Where a test goes: in a module here named for the part or behaviour it tests (a new
//! file gets a `mod` line below), or as a row of an existing table. A test that serves
//! HTTP starts `support::server::Server` (a `Mode` of `MODES` × a `Policy`) and talks
//! to `support::app`'s routes: a route it needs goes into that one app, not a copy.
//! Clients, hostile peers and frame writers shared by two files live in
//! `tests/support/`. Only a test that needs the process to itself (a global tracing
//! subscriber or metrics recorder, an rlimit or environment variable it sets, counts of
//! the process's descriptors, memory or CPU) is a binary of its own, `tests/NAME.rs`
//! with `#[path = "support/mod.rs"] mod support;`, saying why in its first lines:
//! today `tests/client.rs` and `tests/evasion.rs` (a global subscriber),
//! `tests/h2_attacks.rs` (the process's memory) and `tests/serve_fd.rs` (its
//! descriptors). Opt-in tests are `#[ignore = "needs …"]`; `.ci/run` runs them with
//! `cargo test --all-features --test it -- --ignored NAME::`.

#[path = "../support/mod.rs"]
mod support;

mod architecture;
mod capacity;
mod census;
mod close;
mod deploy;
mod deregister;
mod extractor;
mod graceful;
mod grpc;
mod listener;
mod metrics;
mod paths;
mod proxy;
mod proxy_protocol;
mod rate_clocks;
mod rates;
mod serve;
mod serve_config;
mod slow_link;
mod slowhttptest;
mod socket_options;
mod stream;
mod stream_clocks;
mod stream_proptest;
mod supervise;
mod tcp_io;
mod tls;
mod tls_serve;
mod vanishing_peer;
