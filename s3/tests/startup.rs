//! `tessera-s3` refuses to start on bad settings with a message that says
//! what to do, before it touches the network. (This test also makes cargo
//! build the binary that `tessera dev` starts.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tessera-s3");

fn run(args: &[&str]) -> (bool, String) {
    let o = Command::new(BIN)
        .args(args)
        .output()
        .expect("tessera-s3 runs");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn bad_settings_are_refused_with_a_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let seal = dir.path().join("seal.key");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate\n").unwrap();

    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![], "--gateway"),
        (vec!["--gateway".into(), "127.0.0.1:1".into()], "--tls-ca"),
        (
            vec![
                "--gateway".into(),
                "127.0.0.1:1".into(),
                "--insecure".into(),
                "--seal-key".into(),
                seal.display().to_string(),
            ],
            "--insecure takes no",
        ),
        (
            vec![
                "--gateway".into(),
                "127.0.0.1:1".into(),
                "--tls-ca".into(),
                ca.display().to_string(),
            ],
            "--seal-key",
        ),
        (
            vec![
                "--gateway".into(),
                "127.0.0.1:1".into(),
                "--tls-ca".into(),
                ca.display().to_string(),
                "--seal-key".into(),
                seal.display().to_string(),
            ],
            "seal.key",
        ),
    ];
    for (args, want) in &cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out) = run(&a);
        assert!(!ok, "{args:?} started");
        assert!(
            out.contains(want),
            "{args:?}: {out:?} does not mention {want:?}"
        );
    }
    let (ca, seal_path) = (ca.display().to_string(), seal.display().to_string());
    let with_files = [
        "--gateway",
        "127.0.0.1:1",
        "--tls-ca",
        &ca,
        "--seal-key",
        &seal_path,
    ];
    // A seal key file that is not one; then a valid seal key but a CA file
    // that holds no certificate.
    for (seal_text, want) in [
        ("abc\n".to_string(), "is not a seal key"),
        (format!("{}\n", "ab".repeat(32)), "the cluster CA"),
    ] {
        std::fs::write(&seal, seal_text).unwrap();
        let (ok, out) = run(&with_files);
        assert!(!ok);
        assert!(out.contains(want), "{out:?} does not mention {want:?}");
    }
}
