//! `tessera dev`: a whole cluster on this machine as separate processes —
//! metad replicas, chunk servers, a gateway and two healers (one works,
//! one stands by) — on embedded defaults.
//!
//! The data directory holds each process's data, their logs (`logs/`) and
//! `dev.toml`, the ports chosen on the first run: a second run on the same
//! directory reuses them (metad replicas know each other by address), so
//! the same cluster and data come back. Ctrl-C (or SIGTERM) stops the
//! healers and the gateway, then the chunk servers, then metad, each with
//! SIGTERM and a grace period.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tessera_rpc::cluster::{self, ClusterFile, Process};

/// Time a process gets to print that it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Time the chunk servers get to appear live in the registry.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace period of each role at shutdown before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Default segment size of a dev chunk server in MiB (small: six share
/// one disk; each keeps a few free segments preallocated).
pub const DEV_SEGMENT_MIB_DEFAULT: u64 = 64;
/// Most processes of each role a dev cluster runs.
const DEV_CHUNK_SERVERS_MAX: usize = 32;
const DEV_METAD_MAX: usize = 7;

pub struct DevArgs {
    pub data: PathBuf,
    pub chunk_servers: usize,
    pub metad: usize,
    pub cluster: PathBuf,
    pub k: u8,
    pub m: u8,
    pub segment_mib: u64,
    /// Flags passed to both healers (`--dead-grace-secs 5` ...).
    pub healer_args: Vec<String>,
    /// Plaintext and no access keys.
    pub insecure: bool,
    /// The gateway's read cache in bytes (None: its default).
    pub gateway_cache_bytes: Option<u64>,
    /// Only reads fill the gateway's read cache.
    pub gateway_cache_reads_only: bool,
    /// The gateway's read cache takes its memory as it fills.
    pub gateway_cache_lazy_memory: bool,
    /// metad's metadata groups on the first run (None: [`dev_metad_groups`]).
    pub metad_groups: Option<u32>,
    /// metad's WAL partitions on the first run (None: [`dev_wal_partitions`]).
    pub wal_partitions: Option<u32>,
}

/// Most metadata groups and WAL partitions a dev cluster picks by itself
/// (metad's own defaults, made for a cluster of machines).
const DEV_METAD_GROUPS_MAX: u32 = 8;
const DEV_WAL_PARTITIONS_MAX: u32 = 4;

/// A dev cluster's metadata groups: one per two cores, 1 to 8.
///
/// Why not metad's 8: a dev cluster runs every replica of every group on
/// this one machine. Each raft entry costs about the same fixed CPU
/// (~2 ms over the three replicas here: its messages, syscalls, log write
/// and thread wake-ups) however few commands it carries, and groups
/// beyond the cores add no parallelism, only split the same load into
/// smaller batches. On two cores (docs/BENCHMARKS.md), 4 KiB PUTs at 32
/// in flight: 8 groups and 4 WAL partitions 459-615 ops/s, 2 and 1
/// 744-880, 1 and 1 968-973 (and 4 KiB GETs +28-66 % over 2 groups, run by run).
/// The end-to-end test runs with 3 groups so that listing across groups
/// stays tested.
pub fn dev_metad_groups() -> u32 {
    (cores() as u32 / 2).clamp(1, DEV_METAD_GROUPS_MAX)
}

/// A dev cluster's WAL partitions: one per two cores, 1 to 4 (see
/// [`dev_metad_groups`]).
pub fn dev_wal_partitions() -> u32 {
    (cores() as u32 / 2).clamp(1, DEV_WAL_PARTITIONS_MAX)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Longest path a Unix socket address holds (`sun_path` is 108 bytes with
/// its terminating NUL).
const UNIX_SOCKET_PATH_MAX_BYTES: usize = tessera_rpc::local::UNIX_SOCKET_PATH_MAX_BYTES;
/// The dev cluster's local socket directory, under its data directory.
const LOCAL_SOCKET_DIR: &str = "sockets";

/// Healers a dev cluster runs: one works, one stands by.
const DEV_HEALERS: usize = 2;
/// Seconds between healer passes in a dev cluster (short: one machine).
const DEV_HEALER_PASS_SECS: u64 = 10;

/// Ports chosen on the first run, kept in `DIR/dev.toml`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layout {
    metad_ports: Vec<u16>,
    chunk_ports: Vec<u16>,
    gateway_port: u16,
    /// The S3 front's port (added later: older layouts get one).
    #[serde(default)]
    s3_port: Option<u16>,
    /// metad's groups and WAL partitions, chosen on the first run (added
    /// later: older layouts have none, and their metad keeps what its
    /// data directory was made with, metad's defaults).
    #[serde(default)]
    metad_groups: Option<u32>,
    #[serde(default)]
    wal_partitions: Option<u32>,
}

/// A listening port for a child (below the ephemeral range: see
/// `tessera_rpc::ports`).
fn free_port() -> Result<u16> {
    Ok(tessera_rpc::ports::pick_listen_port()?)
}

pub fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the tessera binary")?;
    let dir = exe
        .parent()
        .context("the tessera binary has no directory")?;
    // Tests run from target/debug/deps; the binaries are one level up.
    for d in [dir.to_path_buf(), dir.join("..")] {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "`{name}` is not next to {}: build the whole workspace first (`cargo build --release`), \
         which builds metad, chunkd, tessera-gateway, healer and tessera-s3 beside tessera",
        exe.display()
    )
}

fn layout(data: &Path, args: &DevArgs) -> Result<Layout> {
    let p = data.join("dev.toml");
    let mut l = match std::fs::read_to_string(&p) {
        Ok(t) => {
            let mut l = toml::from_str::<Layout>(&t)
                .with_context(|| format!("{} is damaged; move the directory away", p.display()))?;
            reclaim_ports(&mut l, &p)?;
            l
        }
        Err(_) => Layout {
            metad_ports: (0..args.metad)
                .map(|_| free_port())
                .collect::<Result<_>>()?,
            chunk_ports: Vec::new(),
            gateway_port: free_port()?,
            s3_port: None,
            metad_groups: Some(args.metad_groups.unwrap_or_else(dev_metad_groups)),
            wal_partitions: Some(args.wal_partitions.unwrap_or_else(dev_wal_partitions)),
        },
    };
    for (flag, asked, made, max) in [
        (
            "--metad-groups",
            args.metad_groups,
            l.metad_groups,
            tessera_metad::limits::GROUPS_MAX,
        ),
        (
            "--wal-partitions",
            args.wal_partitions,
            l.wal_partitions,
            tessera_metad::limits::WAL_PARTITIONS_MAX,
        ),
    ] {
        if let Some(a) = asked {
            if a == 0 || a > max {
                bail!("{flag} {a} is out of range: 1 to {max}");
            }
            if made != Some(a) {
                bail!(
                    "{} was made with {}; {flag} is fixed on the first run (leave it out, or use a new --data directory)",
                    data.display(),
                    made.map_or_else(|| "metad's defaults".to_string(), |m| format!("{flag} {m}")),
                );
            }
        }
    }
    if l.s3_port.is_none() {
        l.s3_port = Some(free_port()?);
    }
    if l.metad_ports.len() != args.metad {
        bail!(
            "{} was made with {} metad replicas; run with --metad {} or use a new --data directory",
            data.display(),
            l.metad_ports.len(),
            l.metad_ports.len()
        );
    }
    if args.chunk_servers < l.chunk_ports.len() {
        bail!(
            "{} has {} chunk servers holding data; run with --chunk-servers {} or more (removing \
             servers is the healer's job)",
            data.display(),
            l.chunk_ports.len(),
            l.chunk_ports.len()
        );
    }
    while l.chunk_ports.len() < args.chunk_servers {
        l.chunk_ports.push(free_port()?);
    }
    save_layout(data, &l)?;
    Ok(l)
}

/// Writes the layout (`dev.toml`) a next run starts from.
fn save_layout(data: &Path, l: &Layout) -> Result<()> {
    let p = data.join("dev.toml");
    std::fs::write(&p, toml::to_string_pretty(l)?)
        .with_context(|| format!("writing {}", p.display()))
}

/// True when nothing listens on `port` of 127.0.0.1 now.
fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Checks the ports a layout remembers before a second run uses them:
/// another process (another dev cluster, say) may have taken one since.
/// metad's ports cannot change (each replica knows the others by address),
/// so a taken one is an error; a chunk server, the gateway and the S3 front
/// simply get a new port (chunk servers register their address anew).
fn reclaim_ports(l: &mut Layout, at: &Path) -> Result<()> {
    for (i, port) in l.metad_ports.iter().enumerate() {
        if !port_is_free(*port) {
            bail!(
                "metad-{}'s port {port} (kept in {}; replicas know each other by it) is in use: \
                 is this cluster already running? Stop whatever listens there \
                 (`ss -ltnp | grep :{port}`) and run again",
                i + 1,
                at.display()
            );
        }
    }
    let moved = |name: String, port: &mut u16| -> Result<()> {
        if !port_is_free(*port) {
            let new = free_port()?;
            eprintln!("{name}'s port {port} is taken by another process; it listens on {new} now");
            *port = new;
        }
        Ok(())
    };
    for (i, port) in l.chunk_ports.iter_mut().enumerate() {
        moved(format!("chunkd-{}", i + 1), port)?;
    }
    moved("the gateway".into(), &mut l.gateway_port)?;
    if let Some(port) = l.s3_port.as_mut() {
        moved("the S3 front".into(), port)?;
    }
    Ok(())
}

struct Running {
    name: String,
    addr: String,
    child: Child,
    /// Its Prometheus endpoint, when it has one.
    metrics: Option<String>,
}

/// A fresh metrics address (metrics ports need not survive a restart).
fn metrics_addr() -> Result<String> {
    Ok(format!("127.0.0.1:{}", free_port()?))
}

/// Starts `cmd` with stderr into `logs/NAME.log` and waits for the stdout
/// line saying it listens.
fn spawn(data: &Path, name: &str, addr: &str, mut cmd: Command) -> Result<Running> {
    let logs = data.join("logs");
    std::fs::create_dir_all(&logs)?;
    let log_path = logs.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut sent = false;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if !sent && line.contains("listening") {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(_) => Ok(Running {
            name: name.into(),
            addr: addr.into(),
            child,
            metrics: None,
        }),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{name} did not start within {START_TIMEOUT:?}; see {}:\n{}",
                log_path.display(),
                log_tail(&log_path)
            )
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // Its stdout closed before it said it listens: it exited.
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            bail!(
                "{name} exited ({status}) before listening; see {}:\n{}",
                log_path.display(),
                log_tail(&log_path)
            )
        }
    }
}

/// Times a child is started again on a new port when its port was taken
/// between choosing it and binding it (another dev cluster starting at the
/// same moment picked it too: ports are checked free when chosen, but not
/// held until the child binds them).
const PORT_MOVES_MAX: usize = 3;

/// Starts a chunk server, the gateway or the S3 front on `*port` with
/// `make(listen address, metrics address)` (a fresh metrics address each
/// attempt when `with_metrics`). When it exits before listening because an
/// address was in use, moves `*port` to a new free one and starts it again,
/// at most [`PORT_MOVES_MAX`] times; any other failure is returned as is.
fn spawn_on_port(
    data: &Path,
    name: &str,
    port: &mut u16,
    with_metrics: bool,
    mut make: impl FnMut(&str, Option<&str>) -> Command,
) -> Result<Running> {
    let mut moves = 0;
    loop {
        let addr = format!("127.0.0.1:{port}");
        let metrics = if with_metrics {
            Some(metrics_addr()?)
        } else {
            None
        };
        match spawn(data, name, &addr, make(&addr, metrics.as_deref())) {
            Ok(mut r) => {
                r.metrics = metrics;
                return Ok(r);
            }
            Err(e) if moves < PORT_MOVES_MAX && address_was_in_use(&e) => {
                let new = free_port()?;
                eprintln!(
                    "tessera dev: {name}'s port {port} (or its metrics port) was taken while it started; trying port {new}"
                );
                *port = new;
                moves += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// True when a failed start says an address was in use (EADDRINUSE), in
/// the excerpt of its log that [`spawn`] puts in the error.
fn address_was_in_use(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("Address already in use") || text.contains("os error 98")
}

/// Lines of a child's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 8;

/// The part of a log file that says why its process stopped, for an error
/// message.
fn log_tail(path: &Path) -> String {
    error_excerpt(&std::fs::read_to_string(path).unwrap_or_default())
}

/// What of a log says why a process stopped: from its last error or panic
/// line on ([`LOG_TAIL_LINES`] lines), else its last lines. A backtrace
/// after the error would otherwise fill the excerpt and hide the reason.
fn error_excerpt(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("Error:") || l.contains("panicked at"))
        .unwrap_or(lines.len().saturating_sub(LOG_TAIL_LINES));
    lines[start..(start + LOG_TAIL_LINES).min(lines.len())].join("\n")
}

fn stop_all(procs: &mut Vec<Running>) {
    // Healers and gateway first, then chunk servers, then metad: nothing is left
    // writing to a service that is already gone.
    for role in ["s3", "healer", "gateway", "chunkd", "metad"] {
        let group: Vec<&mut Running> = procs
            .iter_mut()
            .filter(|p| p.name.starts_with(role))
            .collect();
        for p in &group {
            // SAFETY: kill(2) on a pid we started; a gone process gives ESRCH.
            unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_GRACE;
        for p in group {
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("{} did not stop within {STOP_GRACE:?}; killing it", p.name);
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
    procs.clear();
}

/// Waits until the gateway sees `want` live chunk servers.
fn wait_registry(gw: crate::access::Gw, want: usize) -> Result<()> {
    let deadline = Instant::now() + REGISTRY_TIMEOUT;
    crate::ops::on_executor(move || async move {
        let c = crate::ops::connect(&gw).await?;
        loop {
            let live = match c.status().await {
                Ok(s) => s.nodes.iter().filter(|n| n.live).count(),
                Err(_) => 0,
            };
            if live >= want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {live} of {want} chunk servers registered within {REGISTRY_TIMEOUT:?}; see the logs");
            }
            glommio::timer::sleep(Duration::from_millis(200)).await;
        }
    })
}

pub fn run(args: DevArgs) -> Result<()> {
    if args.metad == 0 || args.metad > DEV_METAD_MAX || args.metad % 2 == 0 {
        bail!(
            "--metad must be an odd number from 1 to {DEV_METAD_MAX} (a raft majority); got {}",
            args.metad
        );
    }
    if args.chunk_servers == 0 || args.chunk_servers > DEV_CHUNK_SERVERS_MAX {
        bail!(
            "--chunk-servers must be 1..={DEV_CHUNK_SERVERS_MAX}; got {}",
            args.chunk_servers
        );
    }
    if args.k == 0 || args.m == 0 || (args.k as usize + args.m as usize) > args.chunk_servers {
        bail!(
            "erasure code {}+{} puts every stripe on {} different chunk servers: run at least that \
             many (--chunk-servers), or choose a smaller --k/--m (both at least 1)",
            args.k,
            args.m,
            args.k as usize + args.m as usize
        );
    }
    let (metad_bin, chunkd_bin, gateway_bin, healer_bin, s3_bin) = (
        sibling("metad")?,
        sibling("chunkd")?,
        sibling("tessera-gateway")?,
        sibling("healer")?,
        sibling("tessera-s3")?,
    );
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    let data = args
        .data
        .canonicalize()
        .with_context(|| format!("resolving {}", args.data.display()))?;
    // Once here, where the user sees it (the daemons log it too).
    if let Some(w) = tessera_engine::journal_less_ext4_warning(&data, "the cluster's data") {
        eprintln!("tessera dev: note: {w}");
    }
    let mut l = layout(&data, &args)?;
    let tls = if args.insecure {
        None
    } else {
        Some(
            tessera_tls::dev::ensure(&data.join("tls"))
                .context("making the dev cluster's CA and node certificate")?,
        )
    };
    // The seal key lets the gateway seal new keys' secrets for the S3 front.
    let seal_path = data.join("tls").join("seal.key");
    let seal = match &tls {
        Some(_) => Some(std::sync::Arc::new(
            tessera_auth::SealKey::load_or_create(&seal_path).context("the dev seal key")?,
        )),
        None => None,
    };
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handlers")?;
    let metad_addrs: Vec<String> = l
        .metad_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let peers = metad_addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs: Vec<Running> = Vec::new();
    let mut credentials: Option<tessera_auth::Credentials> = None;
    let started = (|| -> Result<()> {
        // Every process here is on one machine: metad replicas and chunk
        // servers also listen on Unix sockets in this directory, and the
        // replicas and the gateway reach each other there (no TCP, no TLS:
        // the directory admits only this user).
        let sockets = data.join(LOCAL_SOCKET_DIR);
        for (i, a) in metad_addrs.iter().enumerate() {
            let mut c = Command::new(&metad_bin);
            c.args([
                "--id",
                &(i + 1).to_string(),
                "--listen",
                a,
                "--peers",
                &peers,
            ])
            .arg("--data")
            .arg(data.join(format!("metad-{}", i + 1)));
            if let Some(g) = l.metad_groups {
                c.args(["--groups", &g.to_string()]);
            }
            if let Some(p) = l.wal_partitions {
                c.args(["--wal-partitions", &p.to_string()]);
            }
            let m = metrics_addr()?;
            c.args(["--metrics", &m]);
            c.arg("--local-socket-dir").arg(&sockets);
            c.args(tessera_tls::daemon_args(tls.as_ref()));
            let mut r = spawn(&data, &format!("metad-{}", i + 1), a, c)?;
            r.metrics = Some(m);
            procs.push(r);
        }
        let metad_list = metad_addrs.join(",");
        if let Some(f) = &tls {
            let (data, seeds, f) = (data.clone(), metad_addrs.clone(), f.clone());
            let seal = seal.clone();
            let creds = crate::ops::on_executor(move || async move {
                let b = tessera_gateway::bridge::MetaBridge::start(
                    seeds,
                    tessera_metad::net::Security {
                        tls: Some(tessera_tls::Connector::node(&f)?),
                        credentials: None,
                        local_socket_dir: None,
                    },
                )
                .await?;
                crate::access::dev_admin_key(&data, &b, seal.as_deref()).await
            })?;
            credentials = Some(creds);
        }
        for i in 0..l.chunk_ports.len() {
            let name = format!("chunkd-{}", i + 1);
            let cfg = data.join(format!("{name}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "shards = 1\npin_to_cores = false\nsegment_size_bytes = {}\n",
                    args.segment_mib << 20
                ),
            )?;
            let mut port = l.chunk_ports[i];
            let r = spawn_on_port(&data, &name, &mut port, true, |addr, metrics| {
                let mut c = Command::new(&chunkd_bin);
                c.arg("--config")
                    .arg(&cfg)
                    .arg("--data")
                    .arg(data.join(&name))
                    .args(["--listen", addr, "--metad", &metad_list])
                    .arg("--local-socket-dir")
                    .arg(&sockets);
                c.args(["--metrics", metrics.unwrap_or_default()]);
                c.args(tessera_tls::daemon_args(tls.as_ref()));
                c
            });
            if port != l.chunk_ports[i] {
                // A chunk server registers its address anew at start.
                l.chunk_ports[i] = port;
                save_layout(&data, &l)?;
            }
            procs.push(r?);
        }
        // The S3 front runs beside it: it talks over this socket (no TLS
        // work for bytes that never leave the machine). A data directory
        // too deep for a socket address keeps the front on TCP + TLS.
        let gw_socket = data.join("gateway.sock");
        let gw_socket =
            (gw_socket.as_os_str().len() <= UNIX_SOCKET_PATH_MAX_BYTES).then_some(gw_socket);
        if gw_socket.is_none() {
            eprintln!(
                "tessera dev: {} is too long for a Unix socket ({UNIX_SOCKET_PATH_MAX_BYTES} bytes at most); \
                 the S3 front talks to the gateway over TCP + TLS",
                data.join("gateway.sock").display()
            );
        }
        let mut port = l.gateway_port;
        let r = spawn_on_port(&data, "gateway", &mut port, true, |gw, metrics| {
            let mut c = Command::new(&gateway_bin);
            c.args([
                "--listen",
                gw,
                "--metad",
                &metad_list,
                "--id",
                "dev-gateway-1",
                "--k",
                &args.k.to_string(),
                "--m",
                &args.m.to_string(),
            ]);
            c.args(["--metrics", metrics.unwrap_or_default()]);
            c.arg("--local-socket-dir").arg(&sockets);
            c.args(tessera_tls::daemon_args(tls.as_ref()));
            if seal.is_some() {
                c.arg("--seal-key").arg(&seal_path);
            }
            if let Some(b) = args.gateway_cache_bytes {
                c.args(["--cache-bytes", &b.to_string()]);
            }
            if args.gateway_cache_reads_only {
                c.arg("--cache-reads-only");
            }
            if args.gateway_cache_lazy_memory {
                c.arg("--cache-lazy-memory");
            }
            if let Some(p) = &gw_socket {
                c.arg("--local-socket").arg(p);
            }
            c
        });
        if port != l.gateway_port {
            l.gateway_port = port;
            save_layout(&data, &l)?;
        }
        procs.push(r?);
        let gw = format!("127.0.0.1:{}", l.gateway_port);
        let access = crate::access::Access {
            ca: tls.as_ref().map(|f| f.ca.clone()),
            credentials: credentials.clone(),
        };
        wait_registry(access.gateway(gw.parse()?)?, l.chunk_ports.len())?;
        let mut port = l.s3_port.unwrap_or_default();
        let r = spawn_on_port(&data, "s3", &mut port, false, |s3, _| {
            let mut c = Command::new(&s3_bin);
            c.args(["--listen", s3, "--gateway", &gw]);
            if let Some(p) = &gw_socket {
                c.arg("--gateway-socket").arg(p);
            }
            match &tls {
                Some(f) => {
                    c.arg("--tls-ca").arg(&f.ca);
                    c.arg("--seal-key").arg(&seal_path);
                    c.arg("--key-file").arg(crate::access::dev_key_path(&data));
                }
                None => {
                    c.arg("--insecure");
                }
            }
            c
        });
        if Some(port) != l.s3_port {
            l.s3_port = Some(port);
            save_layout(&data, &l)?;
        }
        procs.push(r?);
        for i in 1..=DEV_HEALERS {
            let name = format!("healer-{i}");
            let mut c = Command::new(&healer_bin);
            c.args(["--metad", &metad_list, "--id", &format!("dev-{name}")]);
            if !args
                .healer_args
                .iter()
                .any(|a| a.starts_with("--pass-interval-secs"))
            {
                c.args(["--pass-interval-secs", &DEV_HEALER_PASS_SECS.to_string()]);
            }
            c.args(&args.healer_args);
            let m = metrics_addr()?;
            c.args(["--metrics", &m]);
            c.args(tessera_tls::daemon_args(tls.as_ref()));
            let mut r = spawn(&data, &name, "-", c)?;
            r.metrics = Some(m);
            procs.push(r);
        }
        Ok(())
    })();
    if let Err(e) = started {
        stop_all(&mut procs);
        return Err(e);
    }
    let file = ClusterFile {
        gateway: format!("127.0.0.1:{}", l.gateway_port),
        metad: metad_addrs.clone(),
        data: Some(data.clone()),
        processes: procs
            .iter()
            .map(|p| Process {
                name: p.name.clone(),
                addr: p.addr.clone(),
                pid: p.child.id(),
                metrics: p.metrics.clone(),
            })
            .collect(),
        ca: tls.as_ref().map(|f| f.ca.clone()),
        credentials: credentials.clone(),
        s3: Some(format!(
            "http://127.0.0.1:{}",
            l.s3_port.unwrap_or_default()
        )),
    };
    cluster::write(&args.cluster, &file)
        .with_context(|| format!("writing the cluster file {}", args.cluster.display()))?;
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "tessera dev: {} metad, {} chunk servers, 1 gateway, {DEV_HEALERS} healers (data {})",
        args.metad,
        l.chunk_ports.len(),
        data.display()
    );
    for p in &procs {
        let _ = writeln!(out, "  {:<10} {:<21} pid {}", p.name, p.addr, p.child.id());
    }
    let _ = writeln!(out, "gateway listening on {}", file.gateway);
    if let Some(s3) = &file.s3 {
        let _ = writeln!(out, "S3 endpoint {s3} (path-style; region any)");
    }
    if args.insecure {
        let _ = writeln!(
            out,
            "S3 without authentication (--insecure): anonymous, or key id \"insecure\", secret \"insecure\""
        );
    }
    if let Some(c) = &credentials {
        let _ = writeln!(
            out,
            "admin access key {} (its secret, also for S3, is in {})",
            c.key_id,
            crate::access::dev_key_path(&data).display()
        );
    }
    let _ = writeln!(
        out,
        "cluster file {} (other tessera commands use it); Ctrl-C stops the cluster",
        args.cluster.display()
    );
    let _ = out.flush();

    let mut reported: Vec<bool> = vec![false; procs.len()];
    loop {
        if signals.pending().next().is_some() {
            break;
        }
        for (i, p) in procs.iter_mut().enumerate() {
            if !reported[i] {
                if let Ok(Some(st)) = p.child.try_wait() {
                    eprintln!(
                        "{} (pid {}) exited: {st}; see {}",
                        p.name,
                        p.child.id(),
                        data.join("logs").join(format!("{}.log", p.name)).display()
                    );
                    reported[i] = true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("stopping the cluster…");
    stop_all(&mut procs);
    let _ = std::fs::remove_file(&args.cluster);
    println!(
        "tessera dev stopped; `tessera dev --data {}` brings it back",
        data.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_excerpt_of_a_failed_start_shows_the_error_not_the_backtrace() {
        let mut log = String::from("INFO starting\nINFO opening the engine\n");
        log.push_str("Error: the engine at /d refuses to open: bad segment\n\nStack backtrace:\n");
        for i in 0..40 {
            log.push_str(&format!("  {i}: frame\n             at src/x.rs:{i}\n"));
        }
        let e = error_excerpt(&log);
        assert!(e.starts_with("Error: the engine at /d refuses"), "{e}");
        assert_eq!(e.lines().count(), LOG_TAIL_LINES);

        let panic = format!("{log}thread 'main' panicked at src/y.rs:3:5:\nindex out of range\n");
        assert!(error_excerpt(&panic).starts_with("thread 'main' panicked at src/y.rs"));

        let plain: String = (0..20).map(|i| format!("line {i}\n")).collect();
        let e = error_excerpt(&plain);
        assert_eq!(e.lines().next(), Some("line 12"));
        assert_eq!(e.lines().count(), LOG_TAIL_LINES);
        assert_eq!(error_excerpt(""), "");
    }

    /// A child that fails to start as a daemon does when its address is
    /// taken, or for another reason, or starts and stays up.
    fn child(kind: &str, addr: &str) -> Command {
        let script = match kind {
            "in-use" => "echo \"Error: listening on $1\" >&2; echo \"Caused by: cannot listen on $1: Address already in use (os error 98)\" >&2; exit 1",
            "other" => "echo \"Error: the engine refuses to open: bad segment\" >&2; exit 1",
            _ => "echo \"listening on $1\"; exec sleep 60",
        };
        let mut c = Command::new("sh");
        c.args(["-c", script, "sh", addr]);
        c
    }

    #[test]
    fn a_child_whose_port_was_taken_starts_again_on_a_new_port() {
        let t = tempfile::tempdir().unwrap();
        let first = 20_001u16;
        let mut port = first;
        let mut seen = Vec::new();
        let mut r = spawn_on_port(t.path(), "chunkd-1", &mut port, true, |addr, metrics| {
            assert!(metrics.is_some_and(|m| m.starts_with("127.0.0.1:")));
            seen.push(addr.to_string());
            child(if seen.len() < 3 { "in-use" } else { "up" }, addr)
        })
        .unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_ne!(port, first);
        assert_eq!(r.addr, format!("127.0.0.1:{port}"));
        assert_eq!(seen.last(), Some(&r.addr));
        assert!(r.metrics.is_some());
        let _ = r.child.kill();
        let _ = r.child.wait();
    }

    #[test]
    fn other_failures_and_a_port_always_taken_are_errors() {
        let t = tempfile::tempdir().unwrap();
        let mut port = 20_002u16;
        let mut calls = 0;
        let e = spawn_on_port(t.path(), "gateway", &mut port, false, |addr, metrics| {
            assert!(metrics.is_none());
            calls += 1;
            child("other", addr)
        })
        .err()
        .unwrap();
        assert_eq!(calls, 1, "a failure other than EADDRINUSE is not retried");
        assert_eq!(port, 20_002);
        assert!(format!("{e:#}").contains("bad segment"), "{e:#}");

        let mut calls = 0;
        let e = spawn_on_port(t.path(), "s3", &mut port, false, |addr, _| {
            calls += 1;
            child("in-use", addr)
        })
        .err()
        .unwrap();
        assert_eq!(calls, PORT_MOVES_MAX + 1);
        assert!(address_was_in_use(&e), "{e:#}");
    }

    fn layout_on(metad: Vec<u16>, chunk: Vec<u16>, gateway: u16, s3: u16) -> Layout {
        Layout {
            metad_ports: metad,
            chunk_ports: chunk,
            gateway_port: gateway,
            s3_port: Some(s3),
            metad_groups: Some(1),
            wal_partitions: Some(1),
        }
    }

    /// A restart finds its remembered ports taken: chunk servers, the
    /// gateway and the S3 front move to free ports, the free ones stay, and
    /// a taken metad port is an error that says what to do.
    ///
    /// "Free" is a fact about the whole machine: another test's child
    /// process (which picks ports in its own process) can take one of these
    /// between the check and the assertion. Such an attempt is run again,
    /// at most [`ATTEMPTS`] times; a real fault fails every attempt.
    #[test]
    fn taken_ports_move_except_metad_which_is_an_error() {
        const ATTEMPTS: usize = 3;
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            match taken_ports_scenario() {
                Ok(()) => return,
                Err(e) => failures.push(e),
            }
        }
        panic!("failed {ATTEMPTS} times: {failures:#?}");
    }

    fn taken_ports_scenario() -> std::result::Result<(), String> {
        fn check(ok: bool, what: String) -> std::result::Result<(), String> {
            if ok {
                Ok(())
            } else {
                Err(what)
            }
        }
        let free: Vec<u16> = (0..4).map(|_| free_port().unwrap()).collect();
        let held: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let taken: Vec<u16> = held
            .iter()
            .map(|h| h.local_addr().unwrap().port())
            .collect();
        let at = Path::new("/d/dev.toml");

        let mut l = layout_on(vec![free[0]], vec![free[1], taken[0]], taken[1], taken[2]);
        reclaim_ports(&mut l, at).map_err(|e| format!("{e:#}"))?;
        check(
            l.metad_ports == vec![free[0]],
            format!("metad moved: {l:?}"),
        )?;
        check(
            l.chunk_ports[0] == free[1],
            format!("a free port moved: {l:?}"),
        )?;
        for (port, was) in [
            (l.chunk_ports[1], taken[0]),
            (l.gateway_port, taken[1]),
            (l.s3_port.unwrap_or(0), taken[2]),
        ] {
            check(port != was, format!("a taken port {was} was kept"))?;
            check(port_is_free(port), format!("moved to {port}, not free"))?;
        }

        let mut l = layout_on(vec![free[2], taken[0]], vec![free[3]], free[1], free[0]);
        let e = match reclaim_ports(&mut l, at) {
            Ok(()) => return Err(format!("a taken metad port was accepted: {l:?}")),
            Err(e) => e.to_string(),
        };
        check(
            e.contains(&format!("metad-2's port {}", taken[0])),
            e.clone(),
        )?;
        check(e.contains("already running"), e.clone())?;
        drop(held);
        Ok(())
    }
}
