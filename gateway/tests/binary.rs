//! The `tessera-gateway` binary refuses bad settings with a clear message
//! (and this test makes cargo build the binary for the end-to-end tests
//! of `tessera dev`, which start it).

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera-gateway"))
        .args(args)
        .output()
        .expect("run tessera-gateway");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_settings_are_refused_with_a_reason() {
    // Security is never off by accident: no certificates and no
    // --insecure is refused, saying what to give.
    let (ok, err) = run(&["--metad", "127.0.0.1:1"]);
    assert!(!ok);
    assert!(
        err.contains("no TLS certificates") && err.contains("--insecure"),
        "{err}"
    );
    let (ok, err) = run(&["--metad", "127.0.0.1:1", "--insecure", "--k", "0"]);
    assert!(!ok);
    assert!(err.contains("k must be"), "{err}");
    let (ok, err) = run(&[
        "--metad",
        "127.0.0.1:1",
        "--insecure",
        "--shard-bytes",
        "1000",
    ]);
    assert!(!ok);
    assert!(err.contains("shard size"), "{err}");
    let (ok, err) = run(&[
        "--metad",
        "127.0.0.1:1",
        "--tls-ca",
        "/nonexistent/ca.pem",
        "--tls-cert",
        "/nonexistent/c.pem",
        "--tls-key",
        "/nonexistent/k.pem",
    ]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    let (ok, err) = run(&[]);
    assert!(!ok);
    assert!(err.contains("--metad"), "{err}");
}
