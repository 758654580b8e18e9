//! The wire contract of Tessera: the `.capnp` files under `capnp/` and the
//! Rust code generated from them.
//!
//! The generated code is committed (`src/generated/`), so a build needs no
//! Cap'n Proto compiler; the test `generated_code_matches_schema` regenerates
//! it with `capnp` and fails if the committed copy differs. After editing a
//! schema run `TESSERA_REGEN_SCHEMA=1 cargo test -p tessera-schema` (it needs
//! `apt-get install capnproto libcapnp-dev`).
//!
//! Compatibility rule: fields and methods are only ever added, with new
//! ordinals; nothing is renumbered or retyped.

#![allow(clippy::all, unused_qualifications, missing_docs)]

/// The `ChunkServer` interface (see `capnp/chunk.capnp`).
pub mod chunk_capnp {
    include!("generated/chunk_capnp.rs");
}

/// The `Metad` interface (see `capnp/metad.capnp`).
pub mod metad_capnp {
    include!("generated/metad_capnp.rs");
}

/// The `Gateway` interface (see `capnp/gateway.capnp`).
pub mod gateway_capnp {
    include!("generated/gateway_capnp.rs");
}
