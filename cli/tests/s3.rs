//! The S3 front end to end: a real S3 client (boto3) against `tessera
//! dev`'s `tessera-s3`, with TLS and access keys (the default).
//!
//! The client side is `s3/tests/boto3_suite.py`: buckets, round trips of
//! many sizes (ETag = MD5), headers and user metadata, Content-MD5,
//! ranges, conditional reads and copies (If-Match, If-None-Match,
//! If-(Un)Modified-Since), listing with prefixes, delimiters and continuation tokens,
//! copies, multipart (listed, completed with S3's ETag, wrong order and
//! small parts refused, aborted), boto3's managed transfer, bad
//! signatures and unknown keys refused, a read-only key that cannot
//! write, deletes. Here: a revoked key stops signing within the key
//! cache's refresh window.
//!
//! Needs python3; installs boto3 from PyPI when it is missing.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// Longest the suite may run (it takes seconds on a dev cluster).
const SUITE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a revoked key may still sign (the front's key refresh, 10 s,
/// plus slack).
const REVOKE_WINDOW: Duration = Duration::from_secs(30);

fn suite() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../s3/tests/boto3_suite.py")
}

fn python(args: &[&str]) -> std::process::Output {
    let mut child = Command::new("python3")
        .arg(suite())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let deadline = Instant::now() + SUITE_TIMEOUT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the boto3 suite ran past {SUITE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn key(dev: &Dev, perms: &str) -> (String, String) {
    let o = tessera(
        dev,
        &["key", "create", "--permissions", perms, "--json"],
        None,
    );
    assert!(
        o.status.success(),
        "key create: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    (
        v["key_id"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    )
}

fn have_boto3() -> bool {
    Command::new("python3")
        .args(["-c", "import boto3"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Installs boto3 from PyPI when it is missing (idempotent; a system
/// Python that refuses pip installs gets `--break-system-packages`).
fn ensure_boto3() {
    if have_boto3() {
        return;
    }
    for extra in [&[][..], &["--break-system-packages"][..]] {
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "boto3"])
            .args(extra)
            .status();
        if have_boto3() {
            return;
        }
    }
    panic!("this test needs python3 with boto3, and `python3 -m pip install boto3` did not work");
}

#[test]
fn boto3_drives_the_s3_front() {
    ensure_boto3();
    let dev = start_dev("s3", 6, &[]);
    let c = cluster(&dev);
    let endpoint = c["s3"]
        .as_str()
        .expect("the cluster file names the S3 endpoint")
        .to_string();
    let admin = (
        c["credentials"]["key_id"].as_str().unwrap().to_string(),
        c["credentials"]["secret"].as_str().unwrap().to_string(),
    );
    let (ro_id, ro_secret) = key(&dev, "r");
    let o = python(&[&endpoint, &admin.0, &admin.1, &ro_id, &ro_secret]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "boto3 suite:\n{out}");
    assert!(out.contains("all checks passed"), "{out}");

    // Revocation reaches the S3 front within its refresh window.
    let o = tessera(&dev, &["key", "revoke", &ro_id], None);
    assert!(
        o.status.success(),
        "key revoke: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let deadline = Instant::now() + REVOKE_WINDOW;
    loop {
        let o = python(&["--expect-refused", &endpoint, &ro_id, &ro_secret]);
        if o.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a revoked key still signs S3 requests after {REVOKE_WINDOW:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// An `--insecure` cluster's front serves anonymous requests and those
/// signed with the documented insecure key, and refuses other signatures
/// (it cannot check them).
#[test]
fn insecure_front_serves_anonymous_and_the_insecure_key() {
    ensure_boto3();
    let dev = start_dev("s3-insecure", 6, &["--insecure"]);
    let endpoint = cluster(&dev)["s3"].as_str().unwrap().to_string();
    let script = r#"
import sys, boto3
from botocore import UNSIGNED
from botocore.client import Config
from botocore.exceptions import ClientError
ep = sys.argv[1]
cfg = lambda sig: Config(signature_version=sig, s3={"addressing_style": "path"}, retries={"max_attempts": 1})
signed = boto3.client("s3", endpoint_url=ep, aws_access_key_id="insecure", aws_secret_access_key="insecure",
                      region_name="us-east-1", config=cfg("s3v4"))
signed.create_bucket(Bucket="open")
signed.put_object(Bucket="open", Key="k", Body=b"hello")
anon = boto3.client("s3", endpoint_url=ep, region_name="us-east-1", config=cfg(UNSIGNED))
assert anon.get_object(Bucket="open", Key="k")["Body"].read() == b"hello"
other = boto3.client("s3", endpoint_url=ep, aws_access_key_id="someone", aws_secret_access_key="x",
                     region_name="us-east-1", config=cfg("s3v4"))
try:
    other.list_buckets()
    raise SystemExit("a signature by an unknown key was accepted")
except ClientError as e:
    assert e.response["Error"]["Code"] == "InvalidAccessKeyId", e
print("ok")
"#;
    let o = Command::new("python3")
        .args(["-c", script, &endpoint])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Abandoned multipart uploads expire: a front started with
/// `--upload-expiry-secs 2` aborts an upload older than that (its record
/// and its parts go) and leaves a fresh one alone.
#[test]
fn abandoned_multipart_uploads_expire() {
    ensure_boto3();
    let dev = start_dev("s3-expiry", 6, &["--insecure"]);
    let c = cluster(&dev);
    let endpoint = c["s3"].as_str().unwrap().to_string();
    let gateway = c["gateway"].as_str().unwrap().to_string();
    let bin = std::path::Path::new(TESSERA).with_file_name("tessera-s3");
    let mut front = Command::new(bin)
        .args([
            "--insecure",
            "--gateway",
            &gateway,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--upload-expiry-secs", "2", "--log", "warn"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start a second tessera-s3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(front.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("listening"), "tessera-s3: {line:?}");
    let script = r#"
import sys, time, boto3
from botocore.client import Config
from botocore.exceptions import ClientError
s = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="insecure", aws_secret_access_key="insecure",
                 region_name="us-east-1", config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                 retries={"total_max_attempts": 1, "mode": "standard"}))
s.create_bucket(Bucket="exp")
old = s.create_multipart_upload(Bucket="exp", Key="old")["UploadId"]
s.upload_part(Bucket="exp", Key="old", UploadId=old, PartNumber=1, Body=b"x" * 1000)
s.upload_part(Bucket="exp", Key="old", UploadId=old, PartNumber=2, Body=b"y" * 1000)
time.sleep(6)  # past the 2 s expiry and a 1 s sweep, with room to spare
fresh = s.create_multipart_upload(Bucket="exp", Key="new")["UploadId"]
ids = [u["UploadId"] for u in s.list_multipart_uploads(Bucket="exp").get("Uploads", [])]
assert old not in ids, f"the abandoned upload is still listed: {ids}"
assert fresh in ids, f"a fresh upload was expired: {ids}"
try:
    s.list_parts(Bucket="exp", Key="old", UploadId=old)
    raise SystemExit("the expired upload still answers ListParts")
except ClientError as e:
    assert e.response["Error"]["Code"] == "NoSuchUpload", e
print(old)
"#;
    let o = Command::new("python3")
        .args(["-c", script, &endpoint])
        .output()
        .unwrap();
    let _ = front.kill();
    let _ = front.wait();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let old = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let ls = tessera(&dev, &["ls", &format!(".s3/parts/{old}/")], None);
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    let listed = String::from_utf8_lossy(&ls.stdout);
    assert!(
        !listed.contains(&old),
        "the expired upload's parts are still stored:\n{listed}"
    );
}
