//! The control plane: openraft metadata groups sharded by key hash, the node
//! registry and its leases, and the replicated WAL.
//!
//! Filled by the metad and WAL issues; empty until then.
