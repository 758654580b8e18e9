//! Runs fio (installing Debian's package if it is missing) and reads the
//! figures out of its JSON output. fio is the disk's ceiling for the engine.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// Makes sure `fio` is on PATH, installing it with apt-get if it is not.
pub fn ensure_fio() -> Result<()> {
    if Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    eprintln!("fio is missing; installing Debian's fio package (needs root)…");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "fio"])
            .status()
    };
    let ok = install().is_ok_and(|s| s.success())
        || (Command::new("apt-get")
            .args(["update", "-q"])
            .status()
            .is_ok_and(|s| s.success())
            && install().is_ok_and(|s| s.success()));
    if !ok {
        bail!(
            "fio is not installed and `apt-get install fio` failed; install fio yourself and rerun"
        );
    }
    Ok(())
}

/// One fio job's result.
#[derive(Debug, Clone, Copy)]
pub struct FioResult {
    pub bytes_per_sec: f64,
    pub iops: f64,
}

/// Runs one fio job on `file` and returns the figures of its `rw` side.
pub fn run(name: &str, file: &Path, args: &[&str]) -> Result<FioResult> {
    let out = Command::new("fio")
        .arg(format!("--name={name}"))
        .arg(format!("--filename={}", file.display()))
        .args([
            "--ioengine=io_uring",
            "--direct=1",
            "--output-format=json",
            "--group_reporting",
        ])
        .args(args)
        .output()
        .context("running fio")?;
    if !out.status.success() {
        bail!(
            "fio {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // fio may print notes before the JSON.
    let start = text.find('{').context("no JSON in fio output")?;
    let v: serde_json::Value = serde_json::from_str(&text[start..]).context("parsing fio JSON")?;
    let job = &v["jobs"][0];
    let side = if job["write"]["io_bytes"].as_u64().unwrap_or(0) > 0 {
        &job["write"]
    } else {
        &job["read"]
    };
    let (bw, iops) = (side["bw_bytes"].as_f64(), side["iops"].as_f64());
    match (bw, iops) {
        (Some(bytes_per_sec), Some(iops)) => Ok(FioResult {
            bytes_per_sec,
            iops,
        }),
        _ => bail!("fio {name}: no bw_bytes/iops in its output"),
    }
}
