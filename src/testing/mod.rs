//! A kit for integration tests of connection hygiene: assertions on the kernel's view
//! of sockets, and abrupt peers.
//!
//! Everything here judges by what the kernel reports (`/proc/net/tcp`, `/proc/self/fd`),
//! not by what the application believes.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use conn_hygiene::testing::{assert_no_close_wait, Side};
//!
//! # async fn dox(port: u16) {
//! // Fails with the kernel's census of the port if a CLOSE_WAIT socket is still
//! // there after five seconds.
//! assert_no_close_wait(port, Side::Local, Duration::from_secs(5)).await;
//! # }
//! ```

mod kernel;

pub use kernel::{Side, assert_no_close_wait, open_fds, port_census, wait_for_census};
