//! `healer`: the leader-elected repair daemon. Run any number; the one
//! holding the `healer` lease in metad works, the others stand by.
//! `healer --help` for its flags.

use anyhow::{Context, Result};
use clap::Parser;
use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;
use tessera_gateway::bridge::MetaBridge;
use tessera_healer::config::HealerFile;
use tessera_healer::healer::{Healer, HealerConfig};
use tessera_healer::limits::*;

/// How often the executor looks at the signal flag.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

#[derive(Parser)]
#[command(
    name = "healer",
    version,
    about = "Tessera healer: audits chunk servers against metadata and restores full redundancy"
)]
struct Cli {
    /// Settings file (TOML; every key optional, unknown keys refused); the
    /// flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// metad replicas, comma separated host:port (any of them will do).
    #[arg(long, value_delimiter = ',')]
    metad: Vec<String>,
    /// This instance's name (the lease holder); unique per instance
    /// [default: healer-1].
    #[arg(long)]
    id: Option<String>,
    /// Seconds between passes (a `tessera repair` request starts one at once)
    /// [default: 30].
    #[arg(long)]
    pass_interval_secs: Option<u64>,
    /// Seconds after its heartbeat expired that a chunk server counts as
    /// dead and its shards are rebuilt elsewhere [default: 60].
    #[arg(long)]
    dead_grace_secs: Option<u64>,
    /// Seconds an orphan shard must stay orphaned before it is deleted
    /// [default: 3600].
    #[arg(long)]
    gc_grace_secs: Option<u64>,
    /// Objects repaired at once [default: 4].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Repair bandwidth (bytes read plus written), MiB per second
    /// [default: 256].
    #[arg(long)]
    rate_mib: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// Log filter (else the file's, else TESSERA_LOG, else "info").
    #[command(flatten)]
    tls: tessera_tls::TlsArgs,
    #[arg(long)]
    log: Option<String>,
}

fn main() -> Result<()> {
    // First, before any thread: may re-execute this binary once.
    let memcpy = tessera_engine::tune_memcpy();
    let cli = Cli::parse();
    let file = match &cli.config {
        Some(p) => HealerFile::read(p).context("--config")?,
        None => HealerFile::default(),
    };
    let filter = cli
        .log
        .clone()
        .or(file.log.clone())
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
    let metad = tessera_metad::client::seeds_from(&cli.metad, file.metad.as_ref())
        .context(tessera_metad::client::NO_SEEDS_MESSAGE)?;
    let id = cli
        .id
        .clone()
        .or(file.id.clone())
        .unwrap_or_else(|| "healer-1".into());
    let tls = tessera_tls::resolve(&cli.tls, file.tls.as_ref(), file.insecure)?;
    if tls.is_none() {
        tracing::warn!("--insecure: plaintext connections");
    }
    let node_tls = tls.as_ref().map(tessera_tls::Connector::node).transpose()?;
    let cfg = HealerConfig {
        chunk_tls: node_tls.clone(),
        id: id.clone(),
        pass_interval: Duration::from_secs(
            cli.pass_interval_secs
                .or(file.pass_interval_secs)
                .unwrap_or(PASS_INTERVAL_DEFAULT_SECS),
        ),
        dead_grace: Duration::from_secs(
            cli.dead_grace_secs
                .or(file.dead_grace_secs)
                .unwrap_or(DEAD_GRACE_DEFAULT_SECS),
        ),
        gc_grace: Duration::from_secs(
            cli.gc_grace_secs
                .or(file.gc_grace_secs)
                .unwrap_or(GC_GRACE_DEFAULT_SECS),
        ),
        concurrency: cli
            .concurrency
            .or(file.concurrency)
            .unwrap_or(REPAIR_CONCURRENCY_DEFAULT),
        bytes_per_sec: cli
            .rate_mib
            .or(file.rate_mib)
            .unwrap_or(REPAIR_BYTES_PER_SEC_DEFAULT >> 20)
            .saturating_mul(1 << 20),
    };
    cfg.validate().context("settings")?;
    if let Some(m) = cli.metrics.or(file.metrics) {
        let at = tessera_metrics::serve(m).with_context(|| format!("--metrics {m}"))?;
        tracing::info!(%at, "metrics at http://{at}/metrics");
    }
    tessera_engine::raise_memlock().context("io_uring needs locked memory")?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handlers")?;
    let metad_security = tessera_metad::net::Security {
        tls: node_tls,
        credentials: None,
        local_socket_dir: None,
    };
    let seeds = metad.clone();
    let (connected_tx, connected_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let stop_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_seen = stop_flag.clone();
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("tessera-healer")
        .spawn(move || async move {
            // On this executor: its metad calls never cross threads.
            let bridge = match MetaBridge::start(seeds, metad_security).await {
                Ok(b) => {
                    let _ = connected_tx.send(Ok(()));
                    b
                }
                Err(e) => {
                    let _ = connected_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let stop = Rc::new(Cell::new(false));
            let healer = match Healer::new(cfg, bridge, stop.clone()) {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(error = %e, "healer settings");
                    return;
                }
            };
            // Mirror the signal flag into the executor.
            let s2 = stop.clone();
            glommio::spawn_local(async move {
                while !stop_seen.load(std::sync::atomic::Ordering::Relaxed) {
                    glommio::timer::sleep(SIGNAL_POLL).await;
                }
                s2.set(true);
            })
            .detach();
            healer.run().await;
        })
        .map_err(|e| anyhow::anyhow!("starting the healer's executor: {e}"))?;
    match connected_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => anyhow::bail!("connecting to metad: {e}"),
        Err(_) => anyhow::bail!("connecting to metad: the healer's executor stopped"),
    }
    // `tessera dev` waits for this line on stdout.
    println!(
        "healer {} listening for work from metad {} (one healer works; the others stand by)",
        id,
        metad.join(",")
    );
    if let Some(sig) = signals.forever().next() {
        tracing::info!(
            signal = sig,
            "stopping: the lease is released for a standby"
        );
        stop_flag.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    executor
        .join()
        .map_err(|e| anyhow::anyhow!("healer executor: {e:?}"))?;
    Ok(())
}
