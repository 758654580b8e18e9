//! Bindings generated from `tessera-schema`, connection setup and the typed
//! client library.
//!
//! Filled by the chunk-server issue; empty until then.
