//! Kernel TCP state census (stub: being written).
