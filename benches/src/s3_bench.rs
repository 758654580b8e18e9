//! `tessera-bench s3`: one S3 load generator against Tessera's S3 front
//! and a peer (Garage) in the same run; every Tessera figure is reported
//! next to the peer's as its ceiling.
//!
//! The generator speaks plain HTTP/1.1 with SigV4 (`UNSIGNED-PAYLOAD`, as
//! the aws SDKs do over TLS-less endpoints for speed), through hyper's
//! pooled client on a tokio runtime of its own: closed loops of PUTs of
//! new keys (so every byte stays live), then GETs of what was written, at
//! each concurrency; then the keys are deleted. Every phase is bounded in
//! time, operations and bytes stored.
//!
//! Disk bytes per stored byte: the growth, across the PUT phases of one
//! size, of the allocated bytes (`st_blocks`) under the target's data
//! directories, over the object bytes acknowledged. Directories whose
//! files are preallocated (Tessera's chunk segments) are measured by the
//! caller instead: `--tessera-du` takes a command whose output is the
//! byte count (the script asks the chunk servers for their live bytes).

use crate::report::Report;
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Most operations of one phase (besides its duration).
const PHASE_OPS_MAX: u64 = 1_000_000;
/// Most bytes the PUT phases of one size may store per target.
const SIZE_BYTES_MAX: u64 = 6 << 30;
/// Payloads are made unique every this many bytes (below Garage's 1 MiB
/// block, and any other store's dedup unit worth having).
const STAMP_EVERY_BYTES: usize = 64 << 10;
/// Longest one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// One S3 endpoint under test.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// `http://host:port`
    pub endpoint: String,
    pub key_id: String,
    pub secret: String,
    pub region: String,
    pub bucket: String,
    /// Directories whose allocated bytes count as its disk use.
    pub data_dirs: Vec<PathBuf>,
    /// Or a shell command that prints its disk use in bytes.
    pub du_command: Option<String>,
}

impl Target {
    /// Parses `NAME,ENDPOINT,KEY_ID,SECRET,REGION,BUCKET[,DIR...]`.
    pub fn parse(s: &str) -> Result<Target> {
        let p: Vec<&str> = s.split(',').collect();
        if p.len() < 6 {
            bail!("a target is NAME,ENDPOINT,KEY_ID,SECRET,REGION,BUCKET[,DATA_DIR...]; got {s:?}");
        }
        Ok(Target {
            name: p[0].into(),
            endpoint: p[1].trim_end_matches('/').into(),
            key_id: p[2].into(),
            secret: p[3].into(),
            region: p[4].into(),
            bucket: p[5].into(),
            data_dirs: p[6..].iter().map(PathBuf::from).collect(),
            du_command: None,
        })
    }

    fn host(&self) -> &str {
        self.endpoint
            .split_once("://")
            .map_or(self.endpoint.as_str(), |x| x.1)
    }
}

pub use crate::load_bench::Plan;
use crate::load_bench::{percentile, size_name, Phase};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hmac(key: &[u8], msg: &str) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// (YYYYMMDD, YYYYMMDDTHHMMSSZ) of a time, UTC.
fn amz_dates(t: SystemTime) -> (String, String) {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let date = format!("{y:04}{m:02}{d:02}");
    let full = format!(
        "{date}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    (date, full)
}

/// SigV4 headers for a request with an unsigned payload; `path` is
/// already URI-encoded, `query` canonical (sorted, encoded) or "".
fn sign(t: &Target, method: &str, path: &str, query: &str) -> [(String, String); 3] {
    let (date, stamp) = amz_dates(SystemTime::now());
    let payload = "UNSIGNED-PAYLOAD";
    let signed = "host;x-amz-content-sha256;x-amz-date";
    let canonical = format!(
        "{method}\n{path}\n{query}\nhost:{}\nx-amz-content-sha256:{payload}\nx-amz-date:{stamp}\n\n{signed}\n{payload}",
        t.host()
    );
    let scope = format!("{date}/{}/s3/aws4_request", t.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("AWS4{}", t.secret).as_bytes(), &date);
    let k = hmac(&k, &t.region);
    let k = hmac(&k, "s3");
    let k = hmac(&k, "aws4_request");
    let sig = hex(&hmac(&k, &to_sign));
    [
        ("x-amz-date".into(), stamp),
        ("x-amz-content-sha256".into(), payload.into()),
        (
            "authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={sig}",
                t.key_id
            ),
        ),
    ]
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// One request; returns the status and the body's length (the body is
/// read and dropped chunk by chunk).
async fn request(
    c: &Client,
    t: &Target,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<(u16, u64)> {
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(format!("{}{path}", t.endpoint))
        .header("host", t.host());
    for (k, v) in sign(t, method, path, "") {
        b = b.header(k, v);
    }
    let req = b.body(Full::new(body))?;
    let fut = async {
        let resp = c.request(req).await?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame?.data_ref() {
                n += d.len() as u64;
            }
        }
        anyhow::Ok((status, n))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .context("request timed out")?
}

/// Runs `conc` closed loops of `op(i)` for the plan's duration.
async fn closed_loop<F, Fut>(plan: &Plan, conc: usize, bytes_per_op: usize, op: F) -> Phase
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + plan.duration;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let (op, next, errors) = (op.clone(), next.clone(), errors.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= PHASE_OPS_MAX {
                        break;
                    }
                    let t = Instant::now();
                    if op(i).await {
                        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap_or_default());
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let ops = lat.len() as u64;
    Phase {
        ops_per_sec: ops as f64 / secs,
        mb_per_sec: ops as f64 * bytes_per_op as f64 / secs / 1e6,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        errors: errors.load(Ordering::Relaxed),
        ops,
    }
}

/// Allocated bytes under `dirs` (st_blocks × 512), or the command's answer.
fn disk_bytes(t: &Target) -> Result<u64> {
    if let Some(cmd) = &t.du_command {
        let o = std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()?;
        let s = String::from_utf8_lossy(&o.stdout);
        return s
            .trim()
            .parse()
            .with_context(|| format!("{cmd:?} printed {s:?}, not a byte count"));
    }
    fn walk(p: &std::path::Path, total: &mut u64) {
        use std::os::unix::fs::MetadataExt;
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                walk(&e.path(), total);
            } else {
                *total += m.blocks() * 512;
            }
        }
    }
    let mut total = 0;
    for d in &t.data_dirs {
        walk(d, &mut total);
    }
    Ok(total)
}

/// Every figure of one target: (name, value, unit, note).
async fn measure(t: Arc<Target>, plan: &Plan) -> Result<Vec<(String, f64, &'static str, String)>> {
    // TCP_NODELAY, as every S3 SDK sets it: without it a request's body
    // waits behind its headers for the server's delayed ACK (~40 ms).
    let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
    conn.set_nodelay(true);
    let c: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(conn);
    let c = Arc::new(c);
    // The bucket (made here if missing; an existing one is fine).
    let (st, _) = request(&c, &t, "PUT", &format!("/{}", t.bucket), Bytes::new()).await?;
    if !(200..300).contains(&st) && st != 409 {
        bail!(
            "{}: creating bucket {} answered HTTP {st}",
            t.name,
            t.bucket
        );
    }
    let run: u64 = rand::random();
    let mut out = Vec::new();
    eprintln!("s3 load against {} ({})", t.name, t.endpoint);
    for &size in &plan.sizes {
        let name = size_name(size);
        let payload = {
            let mut v = vec![0u8; size];
            rand::Rng::fill(&mut rand::thread_rng(), &mut v[..]);
            Bytes::from(v)
        };
        let written: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let stored = Arc::new(AtomicU64::new(0));
        let disk0 = disk_bytes(&t)?;
        for &conc in &plan.concurrency {
            let (c, t2, payload, written, stored) = (
                c.clone(),
                t.clone(),
                payload.clone(),
                written.clone(),
                stored.clone(),
            );
            let prefix = format!("/{}/bench-{run:016x}/{name}/c{conc}", t.bucket);
            let ph = closed_loop(plan, conc, size, move |i| {
                let (c, t, payload, written, stored) = (
                    c.clone(),
                    t2.clone(),
                    payload.clone(),
                    written.clone(),
                    stored.clone(),
                );
                let path = format!("{prefix}/{i:08}");
                async move {
                    if stored.load(Ordering::Relaxed) + payload.len() as u64 > SIZE_BYTES_MAX {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        return false;
                    }
                    let body = unique(&payload, run, conc as u64, i);
                    match request(&c, &t, "PUT", &path, body).await {
                        Ok((200, _)) => {
                            stored.fetch_add(payload.len() as u64, Ordering::Relaxed);
                            written.lock().unwrap_or_else(|p| p.into_inner()).push(path);
                            true
                        }
                        r => {
                            show_error(&r);
                            false
                        }
                    }
                }
            })
            .await;
            out.push(phase_figure("put", &name, conc, &ph));
        }
        let disk1 = disk_bytes(&t)?;
        let stored = stored.load(Ordering::Relaxed);
        if stored > 0 {
            out.push((
                format!("disk_per_byte_{name}"),
                disk1.saturating_sub(disk0) as f64 / stored as f64,
                "x",
                format!(
                    "{} bytes on disk for {stored} stored",
                    disk1.saturating_sub(disk0)
                ),
            ));
        }
        let keys = Arc::new(written.lock().unwrap_or_else(|p| p.into_inner()).clone());
        if keys.is_empty() {
            continue;
        }
        for &conc in &plan.concurrency {
            let (c, t2, keys) = (c.clone(), t.clone(), keys.clone());
            let ph = closed_loop(plan, conc, size, move |i| {
                let (c, t, keys) = (c.clone(), t2.clone(), keys.clone());
                async move {
                    let path = &keys[(i as usize).wrapping_mul(2_654_435_761) % keys.len()];
                    match request(&c, &t, "GET", path, Bytes::new()).await {
                        Ok((200, n)) => n == size as u64,
                        r => {
                            show_error(&r);
                            false
                        }
                    }
                }
            })
            .await;
            out.push(phase_figure("get", &name, conc, &ph));
        }
        // Clean up so that the next size has the disk (32 at a time).
        let del = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (c, t, keys, del) = (c.clone(), t.clone(), keys.clone(), del.clone());
                tokio::spawn(async move {
                    loop {
                        let i = del.fetch_add(1, Ordering::Relaxed) as usize;
                        if i >= keys.len() {
                            break;
                        }
                        let _ = request(&c, &t, "DELETE", &keys[i], Bytes::new()).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }
    Ok(out)
}

/// Bytes stamped every [`STAMP_EVERY_BYTES`] with (run, phase, op): no two
/// objects, and no two blocks of one, are equal, so a store that
/// deduplicates by content (Garage does, per 1 MiB block) stores and reads
/// as much as one that does not.
fn unique(payload: &Bytes, run: u64, phase: u64, op: u64) -> Bytes {
    let mut b = bytes::BytesMut::from(&payload[..]);
    let mut at = 0;
    while at + 24 <= b.len() {
        b[at..at + 8].copy_from_slice(&run.to_le_bytes());
        b[at + 8..at + 16].copy_from_slice(&phase.to_le_bytes());
        b[at + 16..at + 24].copy_from_slice(&op.to_le_bytes());
        at += STAMP_EVERY_BYTES;
    }
    b.freeze()
}

fn show_error(r: &Result<(u16, u64)>) {
    static SHOWN: AtomicU64 = AtomicU64::new(0);
    if SHOWN.fetch_add(1, Ordering::Relaxed) < 5 {
        match r {
            Ok((s, _)) => eprintln!("  error: HTTP {s}"),
            Err(e) => eprintln!("  error: {e:#}"),
        }
    }
}

fn phase_figure(
    op: &str,
    name: &str,
    conc: usize,
    ph: &Phase,
) -> (String, f64, &'static str, String) {
    let note = format!(
        "p50 {:.1} ms, p99 {:.1} ms, {} ops, {} errors",
        ph.p50_ms, ph.p99_ms, ph.ops, ph.errors
    );
    let fig = format!("{op}_{name}_c{conc}");
    if name == "4kib" {
        (fig, ph.ops_per_sec, "ops/s", note)
    } else {
        (fig, ph.mb_per_sec, "MB/s", note)
    }
}

/// Measures `tessera`, then `peer`, and reports Tessera's figures with
/// the peer's as their ceiling (for disk per byte lower is better: a ratio
/// below 1 is ahead there, above 1 everywhere else).
pub fn run(tessera: Target, peer: Option<Target>, plan: &Plan) -> Result<Report> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mine = rt.block_on(measure(Arc::new(tessera.clone()), plan))?;
    let theirs = match &peer {
        Some(p) => rt.block_on(measure(Arc::new(p.clone()), plan))?,
        None => Vec::new(),
    };
    let mut r = Report::default();
    for (name, value, unit, note) in &mine {
        let other = theirs.iter().find(|x| &x.0 == name);
        let peer_name = peer.as_ref().map_or("", |p| p.name.as_str());
        match other {
            Some((_, pv, _, pnote)) => r.add(
                name,
                *value,
                unit,
                Some(*pv),
                format!("{}: {note}; {peer_name}: {pnote}", tessera.name),
            ),
            None => r.add(name, *value, unit, None, note.clone()),
        }
    }
    Ok(r)
}

/// Measures `peer` with `plan` and makes its figures the ceilings of the
/// same-named figures in `r` (a `load` run's), replacing the fixed ones.
pub fn compare_with(r: &mut Report, peer: Target, plan: &Plan) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let name = peer.name.clone();
    let theirs = rt.block_on(measure(Arc::new(peer), plan))?;
    for (fig, value, _, note) in theirs {
        r.set_ceiling(&fig, value, &format!("{name} in this run: {note}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_civil_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(amz_dates(t), ("20231114".into(), "20231114T221320Z".into()));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(amz_dates(t).0, "20000229");
    }

    #[test]
    fn signature_matches_the_aws_documentation_example() {
        // The signing key of the AWS SigV4 documentation ("Examples of
        // the complete Version 4 signing process"): secret
        // wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY, 20120215, us-east-1, iam.
        let k = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215");
        let k = hmac(&k, "us-east-1");
        let k = hmac(&k, "iam");
        let k = hmac(&k, "aws4_request");
        assert_eq!(
            hex(&k),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }
}
