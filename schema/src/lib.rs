//! The wire contract of Tessera.
//!
//! This crate will own the `.capnp` files (the `ChunkServer`, gateway and metad
//! interfaces). It is filled by the chunk-server issue; until then it holds no
//! messages, and nothing depends on it.
