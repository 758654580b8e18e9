//! `tessera-gateway`: serves the object API (`schema/capnp/gateway.capnp`)
//! over chunk servers and metad. `tessera-gateway --help` for its flags.

use anyhow::{Context, Result};
use clap::Parser;
use futures::FutureExt;
use glommio::net::TcpListener;
use std::io::Write;
use std::net::SocketAddr;
use tessera_gateway::bridge::MetaBridge;
use tessera_gateway::config::GatewayFile;
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
    /// Settings file (TOML; every key optional, unknown keys refused; see
    /// docs/CONFIG.md); the flags below override it.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Listen address (port 0 picks one; it is printed) [default: 127.0.0.1:7300].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Also listen on this Unix socket, for clients on this machine (the S3
    /// front): plaintext, the file made mode 0600 so that only this user
    /// (and root) can connect; clients still show an access key.
    #[arg(long)]
    local_socket: Option<std::path::PathBuf>,
    /// This machine's local socket directory: chunk servers on this
    /// machine started with the same `--local-socket-dir` are reached
    /// through their Unix sockets there, without TCP and TLS.
    #[arg(long)]
    local_socket_dir: Option<std::path::PathBuf>,
    /// metad replicas, comma separated host:port (any of them will do).
    #[arg(long, value_delimiter = ',')]
    metad: Vec<String>,
    /// This gateway's name in the WAL: keep it across restarts so that
    /// replay finds its unfinished writes [default: gateway-1].
    #[arg(long)]
    id: Option<String>,
    /// Data shards of the erasure code [default: 4].
    #[arg(long)]
    k: Option<u8>,
    /// Parity shards of the erasure code [default: 2].
    #[arg(long)]
    m: Option<u8>,
    /// Shard size of erasure-coded objects, in bytes [default: 1048576].
    #[arg(long)]
    shard_bytes: Option<u32>,
    /// Erasure code of new objects: cauchy256 (GF(2^8), rebuilds as fast as
    /// it encodes) or rs-simd (GF(2^16)); every object records its own
    /// [default: cauchy256].
    #[arg(long)]
    codec: Option<String>,
    /// Another erasure code for keys under a prefix, PREFIX=K+M[:CODEC]
    /// (e.g. `logs/=8+3`); repeatable, the longest prefix wins.
    #[arg(long)]
    pool: Vec<String>,
    /// Objects up to this many bytes are replicated ×3 instead [default: 65536].
    #[arg(long)]
    inline_max: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Open connections one peer address may hold [default: 512].
    #[arg(long)]
    connections_per_peer: Option<usize>,
    /// The cluster's seal key file (64 hex digits): keys made here then
    /// carry their secret sealed with it, which lets the S3 front check
    /// their signatures. Without it new keys have no S3 access.
    #[arg(long)]
    seal_key: Option<std::path::PathBuf>,
    /// Bytes of recently read or written stripes kept in memory to serve
    /// reads (0: off) [default: 1/4 of the memory this process may use, at most 16 GiB].
    #[arg(long)]
    cache_bytes: Option<u64>,
    /// Only reads fill the read cache (by default writes do too: an object
    /// just written is often read next; keeping it costs 1 MiB PUTs ~10-15 %
    /// while the cache grows).
    #[arg(long)]
    cache_reads_only: bool,
    /// Let the read cache take its memory as it fills (by default the
    /// gateway touches all of it, up to half of the memory available, once
    /// at start on a background thread, so that filling the cache takes no
    /// page faults on the request path; that memory is then resident).
    #[arg(long)]
    cache_lazy_memory: bool,
    #[command(flatten)]
    tls: tessera_tls::TlsArgs,
    /// Log filter (else the file's, else TESSERA_LOG, else "info").
    #[arg(long)]
    log: Option<String>,
}

fn main() -> Result<()> {
    // First, before any thread: may re-execute this binary once.
    let memcpy = tessera_engine::tune_memcpy();
    // Before the heap grows: the allocator keeps what the gateway frees.
    let purge = tessera_gateway::memory::keep_freed_memory();
    // Before the heap grows: huge pages made every fresh arena page a
    // 2 MiB fault (see the function's documentation).
    let thp_off = tessera_engine::disable_transparent_huge_pages();
    let cli = Cli::parse();
    let file = match &cli.config {
        Some(p) => GatewayFile::read(p).context("--config")?,
        None => GatewayFile::default(),
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
    if !thp_off {
        tracing::warn!("could not turn transparent huge pages off (prctl); large buffers may cost more page faults");
    }
    let metad = tessera_metad::client::seeds_from(&cli.metad, file.metad.as_ref())
        .context(tessera_metad::client::NO_SEEDS_MESSAGE)?;
    let codec = cli
        .codec
        .clone()
        .or(file.codec.clone())
        .unwrap_or_else(|| "cauchy256".into());
    let pools = if cli.pool.is_empty() {
        file.pools.clone().unwrap_or_default()
    } else {
        cli.pool.clone()
    };
    let local_socket = cli.local_socket.clone().or(file.local_socket.clone());
    let local_socket_dir = cli
        .local_socket_dir
        .clone()
        .or(file.local_socket_dir.clone());
    let listen = cli
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], LISTEN_PORT_DEFAULT)));
    let tls = tessera_tls::resolve(&cli.tls, file.tls.as_ref(), file.insecure)?;
    if tls.is_none() {
        tracing::warn!("--insecure: plaintext connections, no access keys");
    }
    let node_tls = tls.as_ref().map(tessera_tls::Connector::node).transpose()?;
    let server_tls = tls
        .as_ref()
        .map(|f| tessera_tls::server_config(f, tessera_tls::ClientAuth::None))
        .transpose()?;
    let cfg = ObjectsConfig {
        chunk_tls: node_tls.clone(),
        local_socket_dir: local_socket_dir.clone(),
        gateway_id: cli
            .id
            .clone()
            .or(file.id.clone())
            .unwrap_or_else(|| "gateway-1".into()),
        k: cli.k.or(file.k).unwrap_or(DATA_SHARDS_DEFAULT),
        m: cli.m.or(file.m).unwrap_or(PARITY_SHARDS_DEFAULT),
        shard_bytes: cli
            .shard_bytes
            .or(file.shard_bytes)
            .unwrap_or(SHARD_BYTES_DEFAULT),
        inline_max: cli
            .inline_max
            .or(file.inline_max)
            .unwrap_or(INLINE_MAX_BYTES_DEFAULT),
        codec: tessera_gateway::meta::CodecId::parse(&codec)
            .with_context(|| format!("codec {codec:?}: use cauchy256 or rs-simd"))?,
        pools: pools
            .iter()
            .map(|p| tessera_gateway::objects::Pool::parse(p))
            .collect::<Result<_, _>>()
            .context("pool")?,
        seal_key: match cli.seal_key.clone().or(file.seal_key.clone()) {
            Some(p) => Some(std::sync::Arc::new(
                tessera_auth::SealKey::load(&p).context("--seal-key")?,
            )),
            None => None,
        },
        cache_bytes: cli
            .cache_bytes
            .or(file.cache_bytes)
            .unwrap_or_else(tessera_gateway::cache::default_capacity_bytes),
        cache_writes: !(cli.cache_reads_only || file.cache_reads_only),
    };
    cfg.validate().context("settings")?;
    let lazy_memory = cli.cache_lazy_memory || file.cache_lazy_memory;
    tracing::info!(
        cache_bytes = cfg.cache_bytes,
        cache_writes = cfg.cache_writes,
        lazy_memory,
        "read cache"
    );
    match &purge {
        tessera_gateway::memory::PurgePolicy::Kept => {}
        tessera_gateway::memory::PurgePolicy::FromEnvironment(ms) => {
            tracing::info!(ms, "freed memory goes back to the OS after MIMALLOC_PURGE_DELAY")
        }
        tessera_gateway::memory::PurgePolicy::Unknown(v) => tracing::warn!(
            "mimalloc {v}: unknown option numbering, freed memory goes back to the OS after its default delay"
        ),
    }
    if !lazy_memory && purge.keeps_memory() {
        // Detached: it ends by itself and logs what it did.
        let _ = tessera_gateway::memory::take_cache_memory(cfg.cache_bytes);
    }
    let gateway_id = cfg.gateway_id.clone();
    let per_peer = cli
        .connections_per_peer
        .or(file.connections_per_peer)
        .unwrap_or(CONNECTIONS_PER_PEER_DEFAULT);
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
        local_socket_dir,
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    let _executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("tessera-gateway")
        .spawn(move || async move {
            // On this executor: its metad calls never cross threads.
            let bridge = match MetaBridge::start(metad, metad_security).await {
                Ok(b) => b,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("connecting to metad: {e}")));
                    return;
                }
            };
            let objects = match Objects::new(cfg, bridge) {
                Ok(o) => o,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            if objects.cache.enabled() {
                // A weak reference: this task never keeps the gateway's
                // state alive at shutdown.
                let weak = std::rc::Rc::downgrade(&objects);
                glommio::spawn_local(async move {
                    while let Some(o) = weak.upgrade() {
                        tessera_gateway::metrics::cache(&o.cache.stats());
                        tessera_gateway::metrics::warm(&o.warm.stats(), o.warm.ready_bytes());
                        drop(o);
                        glommio::timer::sleep(tessera_gateway::metrics::CACHE_METRICS_EVERY).await;
                    }
                })
                .detach();
            }
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
            let admission = tessera_gateway::admission::Admission::new(per_peer);
            let bounds = tessera_gateway::auth::bounds();
            if let Some(path) = &local_socket {
                match tessera_rpc::local::bind_replacing_stale(path) {
                    Ok(l) => {
                        glommio::spawn_local(serve_local(
                            l,
                            objects.clone(),
                            admission.clone(),
                            bounds.clone(),
                            server_tls.is_none(),
                        ))
                        .detach();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("--local-socket {}: {e}", path.display())));
                        return;
                    }
                }
            }
            let _ = ready_tx.send(listener.local_addr().map_err(|e| e.to_string()));
            let acceptor = server_tls.map(tessera_rpc::conn::acceptor);
            loop {
                let stream = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        glommio::timer::sleep(ACCEPT_RETRY_DELAY).await;
                        continue;
                    }
                };
                let peer = match stream.peer_addr() {
                    Ok(a) => a.ip(),
                    Err(_) => continue,
                };
                let slot = match admission.admit(peer) {
                    Ok(s) => s,
                    Err(tessera_gateway::admission::Refused::Total) => {
                        refused("total");
                        tracing::warn!(limit = CONNECTIONS_MAX, "connection limit reached; closing a new connection");
                        continue;
                    }
                    Err(tessera_gateway::admission::Refused::Peer) => {
                        refused("peer");
                        tracing::debug!(%peer, limit = per_peer, "per-peer connection limit reached; closing a new connection");
                        continue;
                    }
                };
                let objects = objects.clone();
                let acceptor = acceptor.clone();
                let bounds = bounds.clone();
                let conn = async move {
                    // The handshake runs in the connection's own task.
                    let (stream, peer) = tessera_rpc::conn::accept(stream, acceptor.as_ref())
                        .await
                        .map_err(|e| {
                            tessera_gateway::auth::refused("tls_handshake");
                            capnp::Error::failed(format!("TLS handshake: {e}"))
                        })?;
                    // With TLS nobody is a node here: every client shows a key.
                    let session = tessera_auth::Session::new(acceptor.is_none() && peer.node_certificate);
                    let service: gateway::Client = GatewayService::gated(objects, session, bounds);
                    tessera_rpc::conn::serve(stream, service.client).await
                };
                glommio::spawn_local(run_connection(conn, slot)).detach();
            }
        })
        .map_err(|e| anyhow::anyhow!("starting the gateway executor: {e}"))?;
    let addr = match ready_rx.recv() {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => anyhow::bail!("the gateway did not start: {e}"),
        Err(_) => anyhow::bail!("the gateway executor stopped while starting"),
    };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "gateway {gateway_id} listening on {addr}");
    let _ = out.flush();
    let sig = signals.forever().next();
    tracing::info!(
        ?sig,
        "stopping: unacknowledged writes are replayed from the WAL at the next start"
    );
    let _ = writeln!(std::io::stdout(), "gateway stopped");
    std::process::exit(0);
}

/// Runs one connection to its end; a panic on its input drops only it.
async fn run_connection(
    conn: impl std::future::Future<Output = Result<(), capnp::Error>>,
    slot: tessera_gateway::admission::Slot,
) {
    match std::panic::AssertUnwindSafe(conn).catch_unwind().await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
        Err(_) => tracing::error!("a connection panicked on its input; dropped"),
    }
    drop(slot);
}

/// Counts a connection closed at once, by the limit it hit.
fn refused(why: &'static str) {
    tessera_metrics::global()
        .counter(
            "tessera_gateway_connections_refused_total",
            "Connections closed at once, by the limit they hit.",
            &[("limit", why)],
        )
        .inc()
}

/// How long an accept loop waits after a failed accept (out of descriptors,
/// say) before it tries again.
const ACCEPT_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// The address local connections count under in the per-peer limit.
const LOCAL_PEER: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// Serves connections on the local socket: no TLS (the file's mode admits
/// only this user), and, in a secure cluster, every client shows a key.
async fn serve_local(
    mut listener: tessera_rpc::local::LocalListener,
    objects: std::rc::Rc<Objects>,
    admission: tessera_gateway::admission::Admission,
    bounds: std::rc::Rc<tessera_auth::Bounds>,
    insecure: bool,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                tracing::error!(error = %e, "the local socket stopped accepting; TCP still serves");
                return;
            }
            Err(e) => {
                // The accept thread has paused already (it paces failures).
                tracing::warn!(error = %e, "accept on the local socket failed");
                continue;
            }
        };
        let slot = match admission.admit(LOCAL_PEER) {
            Ok(s) => s,
            Err(tessera_gateway::admission::Refused::Total) => {
                refused("total");
                tracing::warn!(
                    limit = CONNECTIONS_MAX,
                    "connection limit reached; closing a new local connection"
                );
                continue;
            }
            Err(tessera_gateway::admission::Refused::Peer) => {
                refused("peer");
                tracing::debug!("per-peer limit reached by local connections; closing a new one");
                continue;
            }
        };
        let session = tessera_auth::Session::new(insecure);
        let service: gateway::Client =
            GatewayService::gated(objects.clone(), session, bounds.clone());
        let conn = tessera_rpc::conn::serve(
            Box::new(stream) as tessera_rpc::conn::Stream,
            service.client,
        );
        glommio::spawn_local(run_connection(conn, slot)).detach();
    }
}
