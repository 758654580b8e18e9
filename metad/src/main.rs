//! `metad`: one metadata replica.

use anyhow::{bail, Context};
use clap::Parser;
use std::path::PathBuf;
use tessera_metad::config::{parse_peers, peers_from_table, FileConfig};
use tessera_metad::replica::{Replica, ReplicaConfig};

/// mimalloc: metad allocates many small short-lived buffers (messages,
/// entries); with it the metad bench ran a few per cent faster than with
/// glibc's allocator (within the machine's noise, never slower).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Default number of raft groups the metadata is split into.
const GROUPS_DEFAULT: u32 = 8;

#[derive(Parser, Debug)]
#[command(
    name = "metad",
    version,
    about = "Tessera metadata replica (openraft groups, node registry, leases)"
)]
struct Args {
    /// TOML config file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This replica's id (1, 2, ...), unique in the cluster.
    #[arg(long)]
    id: Option<u64>,
    /// Data directory (created if missing).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:7101.
    #[arg(long)]
    listen: Option<String>,
    /// Address others reach this replica at (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// The initial replicas: 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT.
    #[arg(long)]
    peers: Option<String>,
    /// Raft groups (fixed when the data directory is created).
    #[arg(long)]
    groups: Option<u32>,
    /// WAL partitions (fixed when the data directory is created).
    #[arg(long)]
    wal_partitions: Option<u32>,
    /// Start empty and wait to be added with addVoter.
    #[arg(long)]
    join: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// This machine's local socket directory: also listen on a Unix socket
    /// there (named by the advertised address), and reach replicas on this
    /// machine given the same directory through theirs (no TCP, no TLS;
    /// only this user and root may connect).
    #[arg(long)]
    local_socket_dir: Option<PathBuf>,
    #[command(flatten)]
    tls: tessera_tls::TlsArgs,
    /// Log filter (RUST_LOG syntax).
    #[arg(long, default_value = "info,openraft=off")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    // First, before any thread: may re-execute this binary once.
    let memcpy = tessera_engine::tune_memcpy();
    // Before the heap grows (see the function's documentation).
    let thp_off = tessera_engine::disable_transparent_huge_pages();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
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
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let Some(id) = args.id.or(file.id) else {
        bail!("--id is required (this replica's id, 1, 2, ...)")
    };
    let Some(data) = args.data.clone().or(file.data.clone()) else {
        bail!("--data DIR is required")
    };
    if let Some(w) = tessera_engine::journal_less_ext4_warning(&data, "the raft logs") {
        tracing::warn!("{w}");
    }
    let Some(listen) = args.listen.clone().or(file.listen.clone()) else {
        bail!("--listen HOST:PORT is required")
    };
    let advertise = args
        .advertise
        .clone()
        .or(file.advertise.clone())
        .unwrap_or_else(|| listen.clone());
    let peers = match (&args.peers, &file.peers) {
        (Some(p), _) => parse_peers(p)?,
        (None, Some(t)) => peers_from_table(t)?,
        (None, None) => [(id, advertise.clone())].into_iter().collect(),
    };
    let tls = tessera_tls::resolve(&args.tls, file.tls.as_ref(), file.insecure)?;
    let (acceptor, mut peer_security) = match &tls {
        None => {
            tracing::warn!("--insecure: plaintext connections, no authentication");
            (None, tessera_metad::net::Security::default())
        }
        Some(f) => (
            Some(tokio_rustls::TlsAcceptor::from(tessera_tls::server_config(
                f,
                tessera_tls::ClientAuth::Optional,
            )?)),
            tessera_metad::net::Security {
                tls: Some(tessera_tls::Connector::node(f)?),
                credentials: None,
                local_socket_dir: None,
            },
        ),
    };
    let local_socket_dir = args
        .local_socket_dir
        .clone()
        .or(file.local_socket_dir.clone());
    peer_security.local_socket_dir = local_socket_dir.clone();
    let cfg = ReplicaConfig {
        id,
        data_dir: data,
        advertise: advertise.clone(),
        peers,
        groups: args.groups.or(file.groups).unwrap_or(GROUPS_DEFAULT),
        wal_partitions: args
            .wal_partitions
            .or(file.wal_partitions)
            .unwrap_or(tessera_metad::replica::WAL_PARTITIONS_DEFAULT),
        join: args.join || file.join.unwrap_or(false),
        raft: file.raft,
        peer_security,
    };
    let metrics = args.metrics.or(file.metrics);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        // Like chunkd: a local socket that cannot be had leaves this
        // replica on TCP (peers and clients fall back to it), never down.
        let (local_socket, local) = local_socket_dir
            .as_deref()
            .and_then(|dir| tessera_rpc::local::listen_in_dir(dir, &advertise, 0))
            .unzip();
        let groups = cfg.groups;
        let wal_partitions = cfg.wal_partitions;
        let replica = Replica::start(cfg).await?;
        tracing::info!("{groups} metadata groups, {wal_partitions} WAL partitions");
        if let Some(m) = metrics {
            let at = tessera_metrics::serve(m).with_context(|| format!("--metrics {m}"))?;
            tracing::info!(%at, "metrics at http://{at}/metrics");
            tokio::task::spawn_local(tessera_metad::metrics::raft_gauges(replica.clone()));
        }
        println!(
            "metad {id} listening on {} ({groups} groups)",
            listener.local_addr()?
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot install the SIGTERM handler")?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        };
        tessera_metad::server::run(listener, local, replica, acceptor, stop).await;
        if let Some(path) = &local_socket {
            let _ = std::fs::remove_file(path);
        }
        println!("metad {id} stopped cleanly");
        Ok::<_, anyhow::Error>(())
    })
}
