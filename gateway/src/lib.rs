//! The object API: placement, Reed-Solomon coding, hot/cold JSON split,
//! WAL-first writes and degraded reads. It knows no disk.
//!
//! Filled by the gateway issue; empty until then.
