//! `tessera-bench heal`: how fast the healer restores full redundancy after
//! one of six chunk servers is lost, and what that costs foreground reads.
//!
//! It runs its own `tessera dev` (six chunk servers, 4+2, two healers),
//! fills it until each chunk server holds `per_node_bytes`, measures fio's
//! sequential read on the same file system (the ceiling: a repair reads k
//! shards for each one it writes) and the GET latency of a quiet cluster,
//! then kills one chunk server (-9), wipes its data and starts it again (an
//! empty replacement), and measures the time to full redundancy, the bytes
//! rebuilt per second and the GET latency while the healer works.
//!
//! Every loop is bounded by count and time; the cluster, the replacement
//! chunk server and the data directory are removed at the end.

use crate::fio;
use crate::report::Report;
use anyhow::{bail, Context, Result};
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tessera_gateway::bridge::MetaBridge;
use tessera_healer::limits::STATUS_KEY;
use tessera_healer::status::HealerStatus;
use tessera_metad::client::Consistency;
use tessera_rpc::cluster::ClusterFile;
use tessera_rpc::{ChunkClient, GatewayClient};

/// Object size of the fill (one 4+2 stripe of 1 MiB shards).
const OBJECT_BYTES: usize = 4 << 20;
/// PUTs in flight while filling.
const FILL_IN_FLIGHT: usize = 8;
/// GETs in flight when measuring latency.
const GET_IN_FLIGHT: usize = 4;
/// Longest the fill, the repair or any wait may take.
const STEP_MAX: Duration = Duration::from_secs(3600);
/// Time `tessera dev` gets to start, and to stop before it is killed.
const DEV_START_MAX: Duration = Duration::from_secs(180);
const DEV_STOP_MAX: Duration = Duration::from_secs(60);
/// Poll interval of the waits on processes and on the healer's status.
const POLL: Duration = Duration::from_millis(200);
/// Pause between killing chunkd-1 and wiping its directory (its files
/// are closed by then).
const KILL_SETTLE: Duration = Duration::from_millis(300);
/// Poll interval while the healer repairs (the repair time's resolution).
const REPAIR_POLL: Duration = Duration::from_millis(100);
/// Chunk servers of the bench cluster.
const CHUNK_SERVERS: usize = 6;

pub struct Plan {
    /// Bytes each chunk server holds before one is lost.
    pub per_node_bytes: u64,
    /// Seconds of the quiet GET phase.
    pub get_secs: u64,
    /// The healer's repair rate, MiB/s.
    pub rate_mib: u64,
    /// Objects the healer repairs at once.
    pub concurrency: usize,
}

impl Plan {
    pub fn full() -> Self {
        Plan {
            per_node_bytes: 2 << 30,
            get_secs: 10,
            rate_mib: 256,
            concurrency: 4,
        }
    }
    pub fn quick() -> Self {
        Plan {
            per_node_bytes: 96 << 20,
            get_secs: 2,
            rate_mib: 256,
            concurrency: 4,
        }
    }
}

struct Cluster {
    dev: Child,
    extra: Option<Child>,
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(c) = &mut self.extra {
            let _ = c.kill();
            let _ = c.wait();
        }
        // SAFETY: kill(2) on the dev process this bench started.
        unsafe { libc::kill(self.dev.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + DEV_STOP_MAX;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.dev.try_wait() {
                break;
            }
            std::thread::sleep(POLL);
        }
        let _ = self.dev.kill();
        let _ = self.dev.wait();
        // TESSERA_BENCH_KEEP=1 keeps the data and logs for a look.
        if std::env::var_os("TESSERA_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .context("bench binary has no directory")?
        .join(name);
    if !p.is_file() {
        bail!(
            "{name} is not next to {}: `cargo build --release` first",
            exe.display()
        );
    }
    Ok(p)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn start(dir: &Path, plan: &Plan) -> Result<(Cluster, ClusterFile)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let cluster_path = dir.join("cluster.toml");
    let out = std::fs::File::create(dir.join("dev.out"))?;
    let dev = Command::new(sibling("tessera")?)
        .arg("dev")
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--cluster")
        .arg(&cluster_path)
        .args(["--chunk-servers", &CHUNK_SERVERS.to_string()])
        .arg("--healer-arg=--dead-grace-secs=2")
        .arg("--healer-arg=--pass-interval-secs=1")
        .arg(format!("--healer-arg=--rate-mib={}", plan.rate_mib))
        .arg(format!("--healer-arg=--concurrency={}", plan.concurrency))
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out))
        .spawn()
        .context("starting tessera dev")?;
    let mut c = Cluster {
        dev,
        extra: None,
        dir: dir.to_path_buf(),
    };
    let deadline = Instant::now() + DEV_START_MAX;
    while !cluster_path.exists() {
        if c.dev.try_wait()?.is_some() || Instant::now() > deadline {
            bail!(
                "tessera dev did not start: {}",
                std::fs::read_to_string(dir.join("dev.out")).unwrap_or_default()
            );
        }
        std::thread::sleep(POLL);
    }
    let file = tessera_rpc::cluster::read(&cluster_path)?;
    Ok((c, file))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

async fn healer_status(b: &MetaBridge) -> Option<HealerStatus> {
    let v = b
        .call("healer status", |c| async move {
            c.get(STATUS_KEY, Consistency::Linearizable).await
        })
        .await
        .ok()??;
    serde_json::from_slice(&v.value).ok()
}

/// A pass that began after `t0` found all `n` objects at full redundancy.
fn settled(s: &HealerStatus, t0: u64, n: u64) -> bool {
    s.pass_started_unix_millis > t0
        && s.phase == "idle"
        && s.queue.is_empty()
        && s.objects == n
        && s.by_redundancy.get("+2") == Some(&n)
}

async fn wait_settled(b: &MetaBridge, t0: u64, n: u64) -> Result<HealerStatus> {
    let deadline = Instant::now() + STEP_MAX;
    loop {
        if let Some(s) = healer_status(b).await {
            if settled(&s, t0, n) {
                return Ok(s);
            }
        }
        if Instant::now() > deadline {
            bail!("the healer did not settle within {STEP_MAX:?}");
        }
        glommio::timer::sleep(POLL).await;
    }
}

/// GETs of random keys in `keys` until `stop` is set (or `max` passes):
/// (latencies in µs, bytes).
async fn get_loop(
    gw: Rc<GatewayClient>,
    keys: Rc<Vec<String>>,
    stop: Rc<Cell<bool>>,
    max: Duration,
) -> (Vec<u32>, u64) {
    let lat: Rc<RefCell<Vec<u32>>> = Rc::default();
    let bytes = Rc::new(Cell::new(0u64));
    let deadline = Instant::now() + max;
    let tasks: Vec<_> = (0..GET_IN_FLIGHT)
        .map(|_| {
            let (gw, keys, stop, lat, bytes) = (
                gw.clone(),
                keys.clone(),
                stop.clone(),
                lat.clone(),
                bytes.clone(),
            );
            glommio::spawn_local(async move {
                while !stop.get() && Instant::now() < deadline {
                    let k = &keys[rand::random::<usize>() % keys.len()];
                    let t = Instant::now();
                    if let Ok(d) = gw.get(k).await {
                        lat.borrow_mut()
                            .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        bytes.set(bytes.get() + d.len() as u64);
                    }
                }
            })
            .detach()
        })
        .collect();
    for t in tasks {
        t.await;
    }
    let mut l = lat.take();
    l.sort_unstable();
    (l, bytes.get())
}

pub fn run(dir: &Path, plan: &Plan) -> Result<Report> {
    fio::ensure_fio()?;
    tessera_engine::raise_memlock()?;
    let dir = dir.join("heal");
    let (mut cluster, file) = start(&dir, plan)?;
    let gw = file.gateway_addr()?;
    let metad = file.metad.clone();
    let per_node = plan.per_node_bytes;
    let get_secs = plan.get_secs;
    let data = dir.join("data");
    let (report, extra) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("heal-bench")
        .spawn(move || async move { run_inner(gw, metad, per_node, get_secs, &data, &file).await })
        .map_err(|e| anyhow::anyhow!("starting the bench executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("the bench executor failed: {e}"))??;
    cluster.extra = Some(extra);
    Ok(report)
}

async fn run_inner(
    gw_addr: std::net::SocketAddr,
    metad: Vec<String>,
    per_node: u64,
    get_secs: u64,
    data: &Path,
    file: &ClusterFile,
) -> Result<(Report, Child)> {
    let mut r = Report::default();
    let target = crate::target::Target::from_file(file)?;
    let bridge = MetaBridge::start(metad.clone(), target.metad_security()).await?;
    let gw = Rc::new(GatewayClient::connect_with(gw_addr, target.opts.clone()).await?);
    // 1. Fill until each chunk server holds `per_node` bytes: with 4+2 on
    // six servers each holds a quarter of the object bytes.
    let objects = (per_node * 4).div_ceil(OBJECT_BYTES as u64).max(1);
    let payload = Rc::new({
        let mut v = vec![0u8; OBJECT_BYTES];
        rand::Rng::fill(&mut rand::thread_rng(), &mut v[..]);
        v
    });
    let next = Rc::new(Cell::new(0u64));
    let t = Instant::now();
    let fillers: Vec<_> = (0..FILL_IN_FLIGHT)
        .map(|_| {
            let (gw, payload, next) = (gw.clone(), payload.clone(), next.clone());
            glommio::spawn_local(async move {
                let mut buf = payload.to_vec();
                loop {
                    let i = next.get();
                    if i >= objects || t.elapsed() > STEP_MAX {
                        return Ok::<_, anyhow::Error>(());
                    }
                    next.set(i + 1);
                    // Distinct bytes per object (nothing may be shared).
                    buf[..8].copy_from_slice(&i.to_le_bytes());
                    gw.put(&format!("heal/{i:08}"), &buf).await?;
                }
            })
        })
        .collect();
    for f in fillers {
        f.await?;
    }
    let fill_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "filled {objects} objects of {} MiB in {fill_secs:.0} s",
        OBJECT_BYTES >> 20
    );
    let keys: Rc<Vec<String>> = Rc::new((0..objects).map(|i| format!("heal/{i:08}")).collect());
    let t0 = now_ms();
    wait_settled(&bridge, t0, objects).await?;

    // 2. The ceiling: fio's sequential read on the same file system.
    let fio_file = data.join("fio.dat");
    let seq = fio::run(
        "seqread",
        &fio_file,
        &[
            "--rw=read",
            "--bs=1M",
            "--size=2G",
            "--iodepth=16",
            "--runtime=10",
            "--time_based",
        ],
    )?;
    let _ = std::fs::remove_file(&fio_file);

    // 3. GET latency of the quiet cluster.
    let stop = Rc::new(Cell::new(false));
    let (quiet, _) = get_loop(
        gw.clone(),
        keys.clone(),
        stop.clone(),
        Duration::from_secs(get_secs),
    )
    .await;
    let quiet_p99 = percentile(&quiet, 0.99);

    // 4. Lose chunkd-1: kill it, wipe it, start an empty replacement.
    let before = healer_status(&bridge).await.unwrap_or_default();
    let p = file
        .processes
        .iter()
        .find(|p| p.name == "chunkd-1")
        .context("no chunkd-1 in the cluster file")?;
    // SAFETY: kill(2) on a chunk server of the cluster this bench started.
    unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
    let lost_at = Instant::now();
    let t_kill = now_ms();
    glommio::timer::sleep(KILL_SETTLE).await;
    std::fs::remove_dir_all(data.join("chunkd-1"))?;
    let tls = match &file.ca {
        Some(_) => Some(tessera_tls::dev::existing(&data.join("tls"))?),
        None => None,
    };
    let extra = Command::new(sibling("chunkd")?)
        .args(tessera_tls::daemon_args(tls.as_ref()))
        .arg("--config")
        .arg(data.join("chunkd-1.toml"))
        .arg("--data")
        .arg(data.join("chunkd-1"))
        .args(["--listen", &p.addr, "--metad", &metad.join(",")])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            data.join("logs/chunkd-1-replacement.log"),
        )?))
        .spawn()
        .context("starting the replacement chunk server")?;

    // 5. GETs while the healer works, until full redundancy.
    let stop2 = stop.clone();
    let during = glommio::spawn_local(get_loop(gw.clone(), keys.clone(), stop.clone(), STEP_MAX));
    let mut first_repair: Option<Instant> = None;
    let deadline = Instant::now() + STEP_MAX;
    let done = loop {
        if let Some(s) = healer_status(&bridge).await {
            if first_repair.is_none() && s.bytes_repaired > before.bytes_repaired {
                first_repair = Some(Instant::now());
            }
            if settled(&s, t_kill, objects) && s.shards_rebuilt > before.shards_rebuilt {
                break s;
            }
        }
        if Instant::now() > deadline {
            stop2.set(true);
            bail!("full redundancy not restored within {STEP_MAX:?}");
        }
        glommio::timer::sleep(REPAIR_POLL).await;
    };
    let restored = lost_at.elapsed().as_secs_f64();
    stop2.set(true);
    let (busy, _) = during.await;
    let repair_secs = first_repair.map_or(restored, |f| f.elapsed().as_secs_f64());
    // The replacement now holds what was rebuilt.
    let node = ChunkClient::connect(
        p.addr.parse()?,
        crate::target::Target::from_file(file)?.chunk_options(),
    )
    .await?;
    let rebuilt_bytes = node.node_info().await?.live_bytes;
    let moved = done.bytes_repaired - before.bytes_repaired;
    let read_bytes = moved.saturating_sub(rebuilt_bytes);
    let busy_p99 = percentile(&busy, 0.99);
    r.add(
        "heal_lost_node_gib",
        rebuilt_bytes as f64 / (1u64 << 30) as f64,
        "GiB",
        None,
        format!("{objects} objects of 4 MiB, 4+2 on six chunk servers"),
    );
    r.add(
        "heal_full_redundancy_secs",
        restored,
        "s",
        None,
        "from kill -9 to a pass finding every object at +2 (includes 5 s registry TTL + 2 s dead grace)",
    );
    r.add(
        "heal_repair_secs",
        repair_secs,
        "s",
        None,
        "from the first rebuilt byte to full redundancy",
    );
    r.add(
        "heal_rebuilt_mb_s",
        rebuilt_bytes as f64 / repair_secs / 1e6,
        "MB/s",
        None,
        "shard bytes written to the replacement per second",
    );
    r.add(
        "heal_read_mb_s",
        read_bytes as f64 / repair_secs / 1e6,
        "MB/s",
        Some(seq.bytes_per_sec / 1e6),
        "fio seq read 1 MiB QD16 O_DIRECT, same run (a rebuild reads k shards per shard written)",
    );
    r.add(
        "get_4mib_p99_quiet_ms",
        quiet_p99,
        "ms",
        None,
        format!("{GET_IN_FLIGHT} GETs in flight, {} samples", quiet.len()),
    );
    r.add(
        "get_4mib_p99_repair_ms",
        busy_p99,
        "ms",
        Some(quiet_p99),
        format!(
            "same load while the healer rebuilds, {} samples; ratio = slowdown",
            busy.len()
        ),
    );
    let _ = fill_secs;
    Ok((r, extra))
}
