//! The committed bindings are exactly what `capnp` generates from the schema.

use std::path::Path;

const SCHEMAS: &[&str] = &["chunk", "metad", "gateway"];

fn capnp_available() -> bool {
    std::process::Command::new("capnp")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Path::new("/usr/include/capnp/stream.capnp").exists()
}

/// Installs the compiler and its standard schemas with apt-get when they
/// are missing (a fresh machine); does nothing when they are there.
fn ensure_capnp() {
    if capnp_available() {
        return;
    }
    eprintln!("installing capnproto and libcapnp-dev with apt-get (needed to check the schema)");
    let _ = std::process::Command::new("apt-get")
        .args(["install", "-y", "-q", "capnproto", "libcapnp-dev"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
}

#[test]
fn generated_code_matches_schema() {
    ensure_capnp();
    assert!(
        capnp_available(),
        "the Cap'n Proto compiler is missing: `apt-get install -y capnproto libcapnp-dev` \
         (this test tries it when it runs as root)"
    );
    // The directory cargo runs the test for (at run time: a build cache
    // shared by clones at different paths may hold a binary compiled for
    // another checkout), else the one it was compiled in.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let root = dir.as_path();
    let out = tempfile::tempdir().expect("temp dir");
    let mut cmd = capnpc::CompilerCommand::new();
    cmd.src_prefix(root.join("capnp")).output_path(out.path());
    for s in SCHEMAS {
        cmd.file(root.join("capnp").join(format!("{s}.capnp")));
    }
    cmd.run().expect("capnp compile");
    let regen = std::env::var_os("TESSERA_REGEN_SCHEMA").is_some();
    for s in SCHEMAS {
        let name = format!("{s}_capnp.rs");
        let fresh = std::fs::read_to_string(out.path().join(&name)).expect("generated file");
        let committed_path = root.join("src/generated").join(&name);
        if regen {
            std::fs::write(&committed_path, &fresh).expect("writing generated code");
            continue;
        }
        let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
        assert!(
            committed == fresh,
            "{} is out of date with capnp/{s}.capnp: run \
             `TESSERA_REGEN_SCHEMA=1 cargo test -p tessera-schema` and commit the result",
            committed_path.display()
        );
    }
}
