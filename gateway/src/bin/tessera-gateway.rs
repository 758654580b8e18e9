//! `tessera-gateway`: serves the object API (`schema/capnp/gateway.capnp`)
//! over chunk servers and metad. `tessera-gateway --help` for its flags.

use anyhow::{Context, Result};
use clap::Parser;
use futures::FutureExt;
use glommio::net::TcpListener;
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use tessera_gateway::bridge::MetaBridge;
use tessera_gateway::limits::*;
use tessera_gateway::objects::{Objects, ObjectsConfig};
use tessera_gateway::service::GatewayService;
use tessera_schema::gateway_capnp::gateway;

/// mimalloc: the gateway allocates a buffer per shard and message.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tessera-gateway",
    version,
    about = "Tessera gateway: the object API over chunk servers and metad"
)]
struct Cli {
    /// Listen address (port 0 picks one; it is printed).
    #[arg(long, default_value = "127.0.0.1:7300")]
    listen: SocketAddr,
    /// metad replicas, comma separated host:port (any of them will do).
    #[arg(long, value_delimiter = ',', required = true)]
    metad: Vec<String>,
    /// This gateway's name in the WAL: keep it across restarts so that
    /// replay finds its unfinished writes.
    #[arg(long, default_value = "gateway-1")]
    id: String,
    /// Data shards of the erasure code.
    #[arg(long, default_value_t = DATA_SHARDS_DEFAULT)]
    k: u8,
    /// Parity shards of the erasure code.
    #[arg(long, default_value_t = PARITY_SHARDS_DEFAULT)]
    m: u8,
    /// Shard size of erasure-coded objects, in bytes.
    #[arg(long, default_value_t = SHARD_BYTES_DEFAULT)]
    shard_bytes: u32,
    /// Erasure code of new objects: cauchy256 (GF(2^8), rebuilds as fast as
    /// it encodes) or rs-simd (GF(2^16)); every object records its own.
    #[arg(long, default_value = "cauchy256")]
    codec: String,
    /// Another erasure code for keys under a prefix, PREFIX=K+M[:CODEC]
    /// (e.g. `logs/=8+3`); repeatable, the longest prefix wins.
    #[arg(long)]
    pool: Vec<String>,
    /// Objects up to this many bytes are replicated ×3 instead.
    #[arg(long, default_value_t = INLINE_MAX_BYTES_DEFAULT)]
    inline_max: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Log filter (else TESSERA_LOG, else "info").
    #[arg(long)]
    log: Option<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("TESSERA_LOG").ok())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let cfg = ObjectsConfig {
        gateway_id: cli.id.clone(),
        k: cli.k,
        m: cli.m,
        shard_bytes: cli.shard_bytes,
        inline_max: cli.inline_max,
        codec: tessera_gateway::meta::CodecId::parse(&cli.codec)
            .with_context(|| format!("--codec {:?}: use cauchy256 or rs-simd", cli.codec))?,
        pools: cli
            .pool
            .iter()
            .map(|p| tessera_gateway::objects::Pool::parse(p))
            .collect::<Result<_, _>>()
            .context("--pool")?,
    };
    cfg.validate().context("settings")?;
    if let Some(m) = cli.metrics {
        let at = tessera_metrics::serve(m).with_context(|| format!("--metrics {m}"))?;
        tracing::info!(%at, "metrics at http://{at}/metrics");
    }
    tessera_engine::raise_memlock().context("io_uring needs locked memory")?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handlers")?;
    let bridge = MetaBridge::start(cli.metad.clone()).context("connecting to metad")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    let listen = cli.listen;
    let _executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("tessera-gateway")
        .spawn(move || async move {
            let objects = match Objects::new(cfg, bridge) {
                Ok(o) => o,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            match objects.replay_wal().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(entries = n, "WAL replay done"),
                Err(e) => tracing::warn!(error = %e, "WAL replay incomplete; the healer finishes what is left"),
            }
            let listener = match TcpListener::bind(listen) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("listening on {listen}: {e}")));
                    return;
                }
            };
            let _ = ready_tx.send(listener.local_addr().map_err(|e| e.to_string()));
            let service: gateway::Client =
                capnp_rpc::new_client(GatewayService::new(objects.clone()));
            let open = Rc::new(std::cell::Cell::new(0usize));
            loop {
                let stream = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                };
                if open.get() >= CONNECTIONS_MAX {
                    tracing::warn!(limit = CONNECTIONS_MAX, "connection limit reached; closing a new connection");
                    continue;
                }
                open.set(open.get() + 1);
                let conn = tessera_rpc::conn::serve(stream, service.clone().client);
                let open = open.clone();
                glommio::spawn_local(async move {
                    match std::panic::AssertUnwindSafe(conn).catch_unwind().await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
                        Err(_) => tracing::error!("a connection panicked on its input; dropped"),
                    }
                    open.set(open.get() - 1);
                })
                .detach();
            }
        })
        .map_err(|e| anyhow::anyhow!("starting the gateway executor: {e}"))?;
    let addr = match ready_rx.recv() {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => anyhow::bail!("the gateway did not start: {e}"),
        Err(_) => anyhow::bail!("the gateway executor stopped while starting"),
    };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "gateway {} listening on {addr}", cli.id);
    let _ = out.flush();
    let sig = signals.forever().next();
    tracing::info!(
        ?sig,
        "stopping: unacknowledged writes are replayed from the WAL at the next start"
    );
    let _ = writeln!(std::io::stdout(), "gateway stopped");
    std::process::exit(0);
}
