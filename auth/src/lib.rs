//! Who may do what: access keys ([`keys`]) and the per-connection gate in
//! front of every Cap'n Proto service ([`gate`]). ARCHITECTURE.md,
//! "Security", has the whole model.

pub mod gate;
pub mod keys;
pub mod seal;

pub use gate::{gated, Bounds, Budget, Check, Held, Names, Session};
pub use keys::{Credentials, Grant, KeyRecord, Permission, Permissions, Refusal};
pub use seal::{SealError, SealKey};
