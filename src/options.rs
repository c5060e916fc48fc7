//! Socket options (stub: being written).

/// Socket options applied to listeners and streams.
#[derive(Debug, Clone, Default)]
pub struct SocketOptions {}

/// Binds a listener.
pub fn bind() {}
