//! `chunkd`: the chunk server binary. See the crate docs of
//! `tessera-chunkd` for what it does; `chunkd --help` for its flags.

use anyhow::{Context, Result};
use clap::Parser;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use tessera_chunkd::service::NodeState;
use tessera_chunkd::{Config, Server};

/// mimalloc: every request allocates its message segments, ids and
/// futures; with glibc's allocator `malloc`, `_int_malloc`,
/// `malloc_consolidate` and `free` took ~2 % of the whole machine during
/// 4 KiB PUTs against `tessera dev`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "chunkd",
    version,
    about = "Tessera chunk server: stores shards on this node's disk"
)]
struct Cli {
    /// TOML configuration file (flags override its values).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:7410 (port 0 picks one; it is printed).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Engine shards for a new data directory (0 = one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// metad replicas to register with, comma separated host:port.
    #[arg(long, value_delimiter = ',')]
    metad: Vec<String>,
    /// Failure zone to report to the registry.
    #[arg(long)]
    zone: Option<String>,
    /// Address gateways reach this node at (default: the listen address).
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Also listen on Unix sockets in this directory (one per executor,
    /// named by the advertised address): gateways on this machine given
    /// the same directory connect there, without TCP or TLS.
    #[arg(long)]
    local_socket_dir: Option<std::path::PathBuf>,
    /// Do not pin engine threads to cores (several chunk servers on one
    /// machine, as `tessera dev` runs them).
    #[arg(long)]
    no_pin: bool,
    #[command(flatten)]
    tls: tessera_tls::TlsArgs,
    /// Log filter (else TESSERA_LOG, else "info").
    #[arg(long)]
    log: Option<String>,
}

/// File in the data directory holding this node's id.
const NODE_ID_FILE: &str = "NODE_ID";

fn node_id(dir: &std::path::Path) -> Result<String> {
    let p = dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&p) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    }
    let id = format!("chunk-{:016x}", rand::random::<u64>());
    let tmp = dir.join(format!("{NODE_ID_FILE}.tmp"));
    std::fs::write(&tmp, format!("{id}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &p)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(id)
}

fn main() -> Result<()> {
    // First, before any thread: may re-execute this binary once.
    let memcpy = tessera_engine::tune_memcpy();
    // Before the heap grows: mimalloc's arenas would otherwise fault in
    // whole 2 MiB pages (see the function's documentation).
    let thp_off = tessera_engine::disable_transparent_huge_pages();
    let cli = Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("TESSERA_LOG").ok())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(w) = memcpy.failure() {
        tracing::warn!("{w}");
    }
    if !thp_off {
        tracing::warn!("could not turn transparent huge pages off (prctl); large buffers may cost more page faults");
    }

    let mut cfg = match &cli.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(d) = cli.data {
        cfg.data = d;
    }
    if let Some(l) = cli.listen {
        cfg.listen = l;
    }
    if let Some(s) = cli.shards {
        cfg.shards = s;
    }
    if !cli.metad.is_empty() {
        cfg.metad = cli.metad.clone();
    }
    if let Some(z) = cli.zone {
        cfg.zone = z;
    }
    if cli.local_socket_dir.is_some() {
        cfg.local_socket_dir = cli.local_socket_dir.clone();
    }
    if cli.advertise.is_some() {
        cfg.advertise = cli.advertise;
    }
    if cli.no_pin {
        cfg.pin_to_cores = false;
    }
    if cli.metrics.is_some() {
        cfg.metrics = cli.metrics;
    }
    cfg.validate()?;
    let tls = tessera_tls::resolve(&cli.tls, cfg.tls.as_ref(), cfg.insecure)?;
    if tls.is_none() {
        tracing::warn!("--insecure: plaintext connections, no authentication");
    }
    let server_tls = tls
        .as_ref()
        .map(|f| tessera_tls::server_config(f, tessera_tls::ClientAuth::Required))
        .transpose()?;
    let metad_tls = tls.as_ref().map(tessera_tls::Connector::node).transpose()?;
    if let Some(m) = cfg.metrics {
        let at = tessera_metrics::serve(m).with_context(|| format!("metrics address {m}"))?;
        tracing::info!(%at, "metrics at http://{at}/metrics");
    }

    std::fs::create_dir_all(&cfg.data)
        .with_context(|| format!("creating the data directory {}", cfg.data.display()))?;
    if let Some(w) = tessera_engine::journal_less_ext4_warning(&cfg.data, "the shards") {
        tracing::warn!("{w}");
    }
    let node = Arc::new(NodeState {
        node_id: node_id(&cfg.data)?,
        data_dir: cfg.data.clone(),
        started: std::time::Instant::now(),
        scrub_running: AtomicBool::new(false),
        last_scrub_end_unix_millis: AtomicU64::new(0),
        scrub_passes_started: AtomicU64::new(0),
        local_requests: AtomicU64::new(0),
        forwarded_requests: AtomicU64::new(0),
    });
    // Signals are blocked before any thread starts so that only the wait
    // below receives them.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handlers")?;
    let engine = tessera_engine::Engine::open(cfg.data.join("engine"), cfg.engine_config())
        .context("opening the storage engine")?;
    let server = Server::start(&engine, &cfg, node.clone(), server_tls).with_context(|| {
        format!(
            "listening on {} (if the port is in use, stop what holds it or choose another with --listen)",
            cfg.listen
        )
    })?;
    // stdout may be a pipe nobody reads any more: never fail on it.
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "chunkd {} listening on {} ({} cores, data {})",
        node.node_id,
        server.local_addr(),
        engine.shards(),
        cfg.data.display()
    );
    let _ = out.flush();
    let registration = if cfg.metad.is_empty() {
        None
    } else {
        Some(tessera_chunkd::registration::start(
            cfg.metad.clone(),
            node.node_id.clone(),
            cfg.advertise.unwrap_or(server.local_addr()).to_string(),
            cfg.zone.clone(),
            cfg.data.clone(),
            metad_tls,
        )?)
    };

    let sig = signals.forever().next();
    drop(registration);
    tracing::info!(?sig, "shutting down: draining requests");
    let left = server.drain();
    if left > 0 {
        tracing::warn!(left, "grace period over with requests still running");
    }
    engine.close().context("closing the engine")?;
    let _ = writeln!(std::io::stdout(), "chunkd stopped cleanly");
    Ok(())
}
