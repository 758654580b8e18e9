//! The healer end to end on `tessera dev` (7 chunk servers, 4+2, two
//! healers), in phases that each state what must hold:
//! 0. a shard no record names (written straight to a chunk server) is
//!    collected once the grace period has passed;
//! 1. bits flipped in one chunk server's shard records: a scrub finds
//!    them, the healer rewrites them, reads never return wrong bytes
//!    meanwhile, and a second scrub of that server finds nothing;
//! 2. two chunk servers killed (-9), one of them wiped and started again (a
//!    new, empty node), and the healer leader killed (-9) once it has begun
//!    repairing: the standby takes over with a newer epoch and restores
//!    full redundancy of every object; the two never led at once (the old
//!    leader's last repair precedes the new leader's start);
//! 3. a chunk server joins (`tessera node add`): rebalancing moves at most
//!    one shard per stripe (only shards whose placement changed), every
//!    object reads byte-exact throughout, and afterwards a preview finds
//!    nothing left to do; removing a live node objects use is refused;
//!    draining the new node empties it, and then it is removed;
//! 4. with two other chunk servers killed, every object reads.
//!
//! After phase 1 the gateway's, a chunk server's, the metad replicas' and
//! the healer leader's Prometheus endpoints are scraped: they parse, their
//! counters moved with the reads and repairs, and every raft group has
//! exactly one leader among the replicas.

mod common;
use common::*;

use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CHUNK_SERVERS: usize = 7;
/// Short grace periods and passes so that the test sees the healer act;
/// a low rate so that the leader can be killed in the middle of a repair;
/// the gateway's read cache off, so that every read after a repair comes
/// from the chunk servers (a cached copy would hide a shard left missing).
const FLAGS: &[&str] = &[
    "--gateway-cache-bytes",
    "0",
    "--healer-arg=--dead-grace-secs=2",
    "--healer-arg=--gc-grace-secs=3",
    "--healer-arg=--pass-interval-secs=1",
    "--healer-arg=--rate-mib=12",
];
/// Longest wait for the healer to settle after an event.
const SETTLE: Duration = Duration::from_secs(150);

/// A process `tessera node add` started (killed when dropped).
struct Pid(i32);

impl Drop for Pid {
    fn drop(&mut self) {
        kill9(self.0);
    }
}

/// A chunk server this test started itself (killed when dropped).
struct Extra(Child);

impl Drop for Extra {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn status(dev: &Dev) -> Value {
    let o = tessera(dev, &["status", "--json"], None);
    assert!(
        o.status.success(),
        "status: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Polls the healer's published status until `pred` holds.
fn wait_healer(dev: &Dev, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let s = status(dev);
        let h = s["healer"].clone();
        if pred(&h) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "healer: {what} did not happen within {SETTLE:?}; last status {h:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A pass that began after `t0` found every one of `n` objects at full
/// redundancy and nothing to do.
fn settled(h: &Value, t0: u64, n: u64) -> bool {
    let st = &h["status"];
    st["pass_started_unix_millis"].as_u64().unwrap_or(0) > t0
        && st["phase"] == "idle"
        && st["queue"].as_object().is_some_and(|q| q.is_empty())
        && st["objects"].as_u64() == Some(n)
        && st["by_redundancy"]["+2"].as_u64() == Some(n)
}

fn node_id_of(dev: &Dev, name: &str) -> String {
    let addr = addr_of(dev, name);
    let s = status(dev);
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["addr"].as_str() == Some(addr.as_str()) && n["state"] == "live")
        .unwrap_or_else(|| panic!("no live node at {addr}: {s:#}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn data_dir(dev: &Dev) -> PathBuf {
    dev.dir.join("data")
}

/// Starts chunk server `name` (its config file is written by `tessera dev`
/// or copied from chunkd-1's) on `addr`.
fn start_chunkd(dev: &Dev, name: &str, addr: &str) -> Extra {
    let bin = Path::new(TESSERA).parent().unwrap().join("chunkd");
    let data = data_dir(dev);
    let cfg = data.join(format!("{name}.toml"));
    if !cfg.exists() {
        std::fs::copy(data.join("chunkd-1.toml"), &cfg).unwrap();
    }
    let log = std::fs::File::create(data.join("logs").join(format!("{name}-test.log"))).unwrap();
    let child = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .arg("--data")
        .arg(data.join(name))
        .args(["--listen", addr, "--metad", &metad_addrs(dev).join(",")])
        .args(tls_flags(dev))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start chunkd");
    Extra(child)
}

fn live_nodes(dev: &Dev) -> usize {
    status(dev)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "live")
        .count()
}

fn wait_live(dev: &Dev, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while live_nodes(dev) != n {
        assert!(
            Instant::now() < deadline,
            "{n} live chunk servers never showed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Flips one byte in up to `blocks` 4 KiB blocks of written data in every
/// segment file of chunk server `name`. Returns the bytes flipped.
fn flip_bits(dev: &Dev, name: &str, blocks: usize) -> usize {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut flipped = 0;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(99);
    let engine = data_dir(dev).join(name).join("engine");
    for shard in std::fs::read_dir(&engine).unwrap().flatten() {
        if !shard.file_name().to_string_lossy().starts_with("shard-") {
            continue;
        }
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            if !f.file_name().to_string_lossy().starts_with("seg-") {
                continue;
            }
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(f.path())
                .unwrap();
            let mut data = Vec::new();
            file.read_to_end(&mut data).unwrap();
            // Blocks of random payload (few zero bytes), not headers or
            // unwritten space.
            let full: Vec<usize> = (0..data.len() / 4096)
                .filter(|b| {
                    data[b * 4096..(b + 1) * 4096]
                        .iter()
                        .filter(|&&x| x == 0)
                        .count()
                        < 64
                })
                .collect();
            for _ in 0..blocks.min(full.len()) {
                let b = full[rng.gen_range(0..full.len())];
                let off = b * 4096 + rng.gen_range(0..4096);
                file.seek(SeekFrom::Start(off as u64)).unwrap();
                file.write_all(&[data[off] ^ 0x20]).unwrap();
                flipped += 1;
            }
            file.sync_all().unwrap();
        }
    }
    flipped
}

/// Log lines of `healer-N` with ANSI colours removed.
fn healer_log(dev: &Dev, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(data_dir(dev).join("logs").join(format!("{name}.log")))
        .unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut out = String::new();
            let mut esc = false;
            for ch in l.chars() {
                match (esc, ch) {
                    (false, '\u{1b}') => esc = true,
                    (true, 'm') => esc = false,
                    (true, _) => {}
                    (false, c) => out.push(c),
                }
            }
            out
        })
        .collect()
}

/// The objects: (key, seed, length), a mix of erasure-coded, replicated
/// and empty ones; and the stripes they have (for the rebalancing bound).
fn objects() -> (Vec<(String, u64, usize)>, u64) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
    let mut v = Vec::new();
    let mut stripes = 0u64;
    for i in 0..10u64 {
        let len = rng.gen_range((1 << 20)..(3 << 20));
        v.push((format!("ec/{i:02}"), i, len));
        stripes += (len as u64).div_ceil(4 << 20).max(1);
    }
    for i in 0..16u64 {
        let len = rng.gen_range(0..60_000);
        v.push((format!("small/{i:02}"), 100 + i, len));
        stripes += 1;
    }
    (v, stripes)
}

fn put_all(gw: &Gw, objs: Vec<(String, u64, usize)>) {
    with_client(gw.clone(), move |c| async move {
        for (key, seed, len) in objs {
            c.put(&key, &blob(seed, len))
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e}"));
        }
    })
}

#[test]
fn healer_end_to_end() {
    let dev = start_dev("heal", CHUNK_SERVERS, FLAGS);
    let gw = gateway_addr(&dev);
    let (objs, stripes) = objects();
    let n = objs.len() as u64;
    put_all(&gw, objs.clone());
    let t0 = now_ms();
    wait_healer(&dev, "a first clean pass", |h| settled(h, t0, n));

    // 0. An orphan shard is collected after the grace period.
    let stray_node = addr_of(&dev, "chunkd-5");
    let stray_id: Vec<u8> = (0..21u8).map(|i| 0xA0 ^ i).collect();
    let id2 = stray_id.clone();
    let sa: SocketAddr = stray_node.parse().unwrap();
    let tls = node_tls(&dev);
    let stray_exists = move |id: Vec<u8>, put: bool| {
        let tls = tls.clone();
        tessera_engine::raise_memlock().unwrap();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let opts = tessera_rpc::ClientOptions {
                    tls: Some(tls),
                    ..Default::default()
                };
                let c = tessera_rpc::ChunkClient::connect(sa, opts).await.unwrap();
                if put {
                    c.put(&id, &[7u8; 4096]).await.unwrap();
                }
                c.stat(&id).await.is_ok()
            })
            .unwrap()
            .join()
            .unwrap()
    };
    assert!(stray_exists(stray_id.clone(), true));
    let deadline = Instant::now() + SETTLE;
    while stray_exists(id2.clone(), false) {
        assert!(
            Instant::now() < deadline,
            "the orphan shard was never collected"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // 1. Bit flips: scrub finds them, the healer rewrites them.
    let victim = node_id_of(&dev, "chunkd-3");
    let flipped = flip_bits(&dev, "chunkd-3", 3);
    assert!(flipped > 0, "nothing to flip on chunkd-3");
    let o = tessera(&dev, &["scrub", "--node", &victim, "--json"], None);
    assert!(
        o.status.success(),
        "scrub: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let scrub: Value = serde_json::from_slice(&o.stdout).unwrap();
    let bad = scrub["bad_found"].as_u64().unwrap();
    assert!(
        bad > 0,
        "{flipped} flipped bytes, but the scrub found nothing: {scrub}"
    );
    check_all(&gw, objs.clone());
    let t1 = now_ms();
    let h = wait_healer(&dev, "rewriting the bad shards", |h| {
        settled(h, t1, n) && h["status"]["shards_rebuilt"].as_u64().unwrap_or(0) >= bad
    });
    eprintln!("phase 1: {flipped} byte(s) flipped, {bad} bad shard(s) found and rewritten");
    let o = tessera(&dev, &["scrub", "--node", &victim, "--json"], None);
    let again: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        again["bad_found"], 0,
        "a second scrub still finds bad shards: {again}; healer {h:#}"
    );
    check_all(&gw, objs.clone());

    // Metrics: each daemon's scrape parses and moves with traffic.
    let leader = status(&dev)["healer"]["leader"]
        .as_str()
        .unwrap()
        .trim_start_matches("dev-")
        .to_string();
    let gets = |p: &prometheus_parse::Scrape| {
        sample(
            p,
            "tessera_gateway_requests_total",
            &[("op", "get"), ("result", "ok")],
        )
    };
    let g0 = gets(&scrape(&dev, "gateway"));
    check_all(&gw, objs.clone());
    let g1 = gets(&scrape(&dev, "gateway"));
    assert!(
        g1 >= g0 + n as f64,
        "gateway GETs went from {g0} to {g1} after {n} reads"
    );
    let c = scrape(&dev, "chunkd-4");
    assert!(
        sample(
            &c,
            "tessera_chunkd_requests_total",
            &[("op", "get"), ("result", "ok")]
        ) > 0.0
    );
    assert!(
        sample(&c, "tessera_chunkd_live_bytes", &[]) > 0.0,
        "engine gauges are exported"
    );
    let md: Vec<prometheus_parse::Scrape> = (1..=3)
        .map(|i| scrape(&dev, &format!("metad-{i}")))
        .collect();
    assert!(
        md.iter()
            .map(|m| sample(m, "tessera_metad_requests_total", &[("op", "get")]))
            .sum::<f64>()
            > 0.0
    );
    // Every group has exactly one leader among the three replicas.
    let leaders: f64 = md
        .iter()
        .map(|m| sample(m, "tessera_metad_raft_is_leader", &[]))
        .sum();
    let groups = md[0]
        .samples
        .iter()
        .filter(|x| x.metric == "tessera_metad_raft_term")
        .count() as f64;
    assert!(
        groups > 0.0 && leaders == groups,
        "{leaders} leaders for {groups} groups"
    );
    let h = scrape(&dev, &leader);
    assert_eq!(sample(&h, "tessera_healer_leader", &[]), 1.0);
    assert!(sample(&h, "tessera_healer_repairs_total", &[("result", "done")]) >= 1.0);
    assert!(sample(&h, "tessera_healer_shards_rebuilt_total", &[]) >= bad as f64);

    // 2. Two chunk servers lost (one comes back empty), and the healer
    // leader killed in the middle of the repair.
    let h = status(&dev)["healer"].clone();
    let old_leader = h["leader"].as_str().unwrap().to_string();
    let old_epoch = h["epoch"].as_u64().unwrap();
    let old_name = old_leader.trim_start_matches("dev-").to_string();
    let repaired_before = healer_log(&dev, &old_name)
        .iter()
        .filter(|l| l.contains("repaired"))
        .count();
    let c1 = addr_of(&dev, "chunkd-1");
    kill9(pid_of(&dev, "chunkd-1"));
    kill9(pid_of(&dev, "chunkd-2"));
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_dir_all(data_dir(&dev).join("chunkd-1")).unwrap();
    let _c1 = start_chunkd(&dev, "chunkd-1", &c1);
    let deadline = Instant::now() + SETTLE;
    loop {
        let log = healer_log(&dev, &old_name);
        if log.iter().filter(|l| l.contains("repaired")).count() > repaired_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leader never began repairing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    kill9(pid_of(&dev, &old_name));
    let t2 = now_ms();
    let h = wait_healer(&dev, "the standby restoring full redundancy", |h| {
        h["epoch"].as_u64().unwrap_or(0) > old_epoch && settled(h, t2, n)
    });
    let new_leader = h["leader"].as_str().unwrap().to_string();
    assert_ne!(new_leader, old_leader);
    // Never two at once: the old leader's last repair came before the new
    // leader's start.
    let ts = |l: &str| l.split_whitespace().next().unwrap_or("").to_string();
    let old_last = healer_log(&dev, &old_name)
        .iter()
        .filter(|l| l.contains("repaired"))
        .map(|l| ts(l))
        .max()
        .unwrap();
    let new_name = new_leader.trim_start_matches("dev-").to_string();
    let new_start = healer_log(&dev, &new_name)
        .iter()
        .filter(|l| l.contains("this healer leads") && l.contains(&format!("epoch={}", h["epoch"])))
        .map(|l| ts(l))
        .next()
        .unwrap_or_else(|| panic!("{new_name} never logged its start"));
    assert!(
        old_last < new_start,
        "old leader repaired at {old_last}, new one started at {new_start}"
    );
    // The replacement took chunkd-1's address: it must never have been
    // taken for the old node (whose shards would then look absent and be
    // rebuilt onto the wrong identity).
    for name in [&old_name, &new_name] {
        let wrong: Vec<String> = healer_log(&dev, name)
            .into_iter()
            .filter(|l| l.contains("repaired") && l.contains("Some(Missing)"))
            .collect();
        assert!(
            wrong.is_empty(),
            "{name} rebuilt shards absent from a live node: {wrong:?}"
        );
    }
    let new_repairs = healer_log(&dev, &new_name)
        .iter()
        .filter(|l| l.contains("repaired"))
        .count();
    eprintln!(
        "phase 2: {old_leader} (epoch {old_epoch}) killed after it began repairing; {new_leader} (epoch {}) led from {new_start} and repaired {new_repairs} object(s)",
        h["epoch"]
    );
    check_all(&gw, objs.clone());

    // 3. A chunk server joins: only shards whose placement changed move,
    // and every object reads throughout.
    let moved_before = h["status"]["shards_moved"].as_u64().unwrap();
    let data8 = data_dir(&dev).join("chunkd-8");
    let o = tessera(
        &dev,
        &["node", "add", "--data", data8.to_str().unwrap(), "--json"],
        None,
    );
    assert!(
        o.status.success(),
        "node add: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let added: Value = serde_json::from_slice(&o.stdout).unwrap();
    let _c8 = Pid(added["pid"].as_i64().unwrap() as i32);
    let id8 = added["node"].as_str().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, rounds, objs) = (stop.clone(), rounds.clone(), objs.clone());
        let gw = gw.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                check_all(&gw, objs.clone());
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    wait_live(&dev, CHUNK_SERVERS); // 7 - 2 lost + 1 back + 1 new
    let t3 = now_ms();
    let h = wait_healer(&dev, "rebalancing onto the new chunk server", |h| {
        h["status"]["shards_moved"].as_u64().unwrap_or(0) > moved_before && settled(h, t3, n)
    });
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("a read failed while shards moved");
    assert!(rounds.load(Ordering::Relaxed) > 0);
    let moved = h["status"]["shards_moved"].as_u64().unwrap() - moved_before;
    assert!(
        moved <= stripes,
        "{moved} shards moved for one new node, more than the {stripes} stripes"
    );
    eprintln!(
        "phase 3: {moved} shard(s) moved (bound {stripes} stripes), {} read rounds meanwhile",
        rounds.load(Ordering::Relaxed)
    );
    let o = tessera(&dev, &["repair", "--all", "--dry-run", "--json"], None);
    let preview: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        preview["repairs"].as_array().map(|a| a.len()),
        Some(0),
        "{preview:#}"
    );

    // 3b. Removing a live node that objects use is refused; draining the
    // new one moves every shard off it, and then it can be removed.
    let busy = node_id_of(&dev, "chunkd-5");
    let o = tessera(&dev, &["node", "remove", &busy], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("drain it first"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = tessera(&dev, &["node", "drain", &id8], None);
    assert!(
        o.status.success(),
        "drain: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let t4 = now_ms();
    wait_healer(&dev, "draining the new chunk server", |h| {
        settled(h, t4, n)
            && h["status"]["nodes"].as_array().is_some_and(|ns| {
                ns.iter()
                    .any(|x| x["node_id"] == id8.as_str() && x["shards"] == 0)
            })
    });
    let o = tessera(&dev, &["node", "remove", &id8], None);
    assert!(
        o.status.success(),
        "remove: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    check_all(&gw, objs.clone());

    // 4. Any two other chunk servers down: every object reads.
    kill9(pid_of(&dev, "chunkd-3"));
    kill9(pid_of(&dev, "chunkd-4"));
    check_all(&gw, objs);
}
