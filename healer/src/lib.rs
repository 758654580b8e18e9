//! The leader-elected repair loop: audit, re-replicate, reconstruct,
//! rebalance and garbage-collect.
//!
//! Filled by the healer issue; empty until then.
