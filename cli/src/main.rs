//! `tessera`: Tessera's command line — a local cluster (`tessera dev`),
//! object commands and cluster status. `tessera --help` lists them.

mod access;
mod dev;
mod heal;
mod ops;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tessera_rpc::{cluster, PutIf};

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Tessera: a distributed object store",
    after_help = "Exit codes: 0 done, 1 failed, 2 bad usage, 3 not found, 4 cluster unreachable or unavailable, 5 data loss, 6 access key refused, 7 a conditional put's condition did not hold (nothing stored)."
)]
struct Cli {
    /// Cluster file (else $TESSERA_CLUSTER, else ~/.config/tessera/cluster.toml).
    #[arg(long, global = true)]
    cluster: Option<PathBuf>,
    /// Gateway address, instead of the cluster file's.
    #[arg(long, global = true)]
    gateway: Option<SocketAddr>,
    /// One JSON value on stdout, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a whole cluster on this machine (separate processes); Ctrl-C stops it.
    Dev {
        /// Data directory (a second run on it brings the same data back).
        #[arg(long, default_value = "tessera-dev")]
        data: PathBuf,
        /// Chunk servers to run.
        #[arg(long, default_value_t = 6)]
        chunk_servers: usize,
        /// metad replicas to run (odd).
        #[arg(long, default_value_t = 3)]
        metad: usize,
        /// Data shards of the erasure code for large objects.
        #[arg(long, default_value_t = 4)]
        k: u8,
        /// Parity shards of the erasure code.
        #[arg(long, default_value_t = 2)]
        m: u8,
        /// Segment size of each chunk server, MiB (tests use small ones).
        #[arg(long, default_value_t = dev::DEV_SEGMENT_MIB_DEFAULT, hide = true)]
        segment_mib: u64,
        /// A flag for both healers, e.g. `--healer-arg=--dead-grace-secs=5` (repeatable).
        #[arg(long = "healer-arg", hide = true, allow_hyphen_values = true)]
        healer_args: Vec<String>,
        /// Plaintext connections and no access keys (security is on by
        /// default: a cluster CA, node certificates and an admin key are
        /// made in DIR/tls on first run).
        #[arg(long)]
        insecure: bool,
        /// Bytes of the gateway's read cache (0: off) [default: 1/4 of
        /// the memory it may use, at most 16 GiB].
        #[arg(long)]
        gateway_cache_bytes: Option<u64>,
        /// Only reads fill the gateway's read cache (else writes do too).
        #[arg(long)]
        gateway_cache_reads_only: bool,
        /// The gateway's read cache takes its memory as it fills (else all
        /// of it at start, in the background).
        #[arg(long)]
        gateway_cache_lazy_memory: bool,
        /// metad's metadata raft groups, fixed on the first run [default:
        /// one per two cores, 1 to 8].
        #[arg(long)]
        metad_groups: Option<u32>,
        /// metad's WAL partitions, fixed on the first run [default: half
        /// this machine's cores, 1 to 4].
        #[arg(long)]
        wal_partitions: Option<u32>,
    },
    /// Store FILE (or stdin with `-` or nothing) under KEY.
    Put {
        key: String,
        file: Option<String>,
        /// Store only if no object is under KEY (else nothing is stored).
        #[arg(long, conflicts_with = "if_version")]
        if_absent: bool,
        /// Store only if the object's version is this one (hex, as `stat`
        /// prints it): a compare-and-set; a write in between makes this one
        /// fail and store nothing.
        #[arg(long, value_name = "HEX")]
        if_version: Option<String>,
    },
    /// Write the object under KEY to stdout, or to FILE with -o.
    Get {
        key: String,
        #[arg(short = 'o', long = "output")]
        output: Option<String>,
    },
    /// Describe the object under KEY.
    Stat { key: String },
    /// Delete the object under KEY.
    Rm { key: String },
    /// List objects whose key starts with PREFIX.
    Ls {
        #[arg(default_value = "")]
        prefix: String,
        /// Show at most this many.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Each chunk server (id, address, pid, state, capacity, used) and object counts.
    Status,
    /// Scrub chunk servers now (verify every shard's checksum) and follow it.
    Scrub {
        /// Only this chunk server (its id or address).
        #[arg(long)]
        node: Option<String>,
        /// Read at most this many MiB/s per server (default: its configured rate).
        #[arg(long)]
        rate_mib: Option<u64>,
    },
    /// Ask the healer to repair now (KEY, or --all) and follow it; --dry-run previews.
    Repair {
        /// The object to repair.
        key: Option<String>,
        /// Every object.
        #[arg(long, conflicts_with = "key")]
        all: bool,
        /// Print what would be repaired or moved; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// JSON documents: hot fields kept with the metadata, the rest erasure coded.
    #[command(subcommand)]
    Doc(DocCmd),
    /// Chunk servers: add one, drain one (the healer moves its shards), remove one.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Access keys (admin): create, list, revoke.
    #[command(subcommand)]
    Key(KeyCmd),
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Makes a key; its secret is printed once.
    Create {
        /// A name to recognise it by.
        #[arg(long, default_value = "")]
        name: String,
        /// Any of r (read), w (write), a (admin).
        #[arg(long, default_value = "rw")]
        permissions: String,
        /// Limit the key to object keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Lists keys (never their secrets).
    List,
    /// Revokes a key: it authenticates nothing from then on.
    Revoke { key_id: String },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Start a new chunk server for this cluster (detached) and wait until it is live.
    Add {
        /// Its data directory (created if missing).
        #[arg(long)]
        data: PathBuf,
        /// Address to listen on (port 0 picks one).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// chunkd settings file (default: a dev cluster's, else chunkd's defaults).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Stop placing new shards on ID and let the healer move its shards away.
    Drain {
        id: String,
        /// Undo: ID takes new shards again.
        #[arg(long)]
        undo: bool,
    },
    /// Forget ID (refused while it is live and objects use its shards: drain it first).
    Remove { id: String },
}

#[derive(Subcommand)]
enum DocCmd {
    /// Store JSON (inline, or @FILE, or - for stdin) under KEY.
    Put {
        key: String,
        #[arg(value_name = "JSON")]
        document: String,
        /// Top-level fields to keep hot (default: fields of at most 256 bytes).
        #[arg(long, value_delimiter = ',')]
        hot: Vec<String>,
    },
    /// Print the document under KEY.
    Get { key: String },
}

fn gateway_addr(cli: &Cli) -> Result<(access::Gw, Option<cluster::ClusterFile>)> {
    if let Some(g) = cli.gateway {
        return Ok((access::Access::new(None)?.gateway(g)?, None));
    }
    let path = cluster::path(cli.cluster.as_deref());
    let c = cluster::read(&path)?;
    let g = c.gateway.parse().with_context(|| {
        format!(
            "{}: gateway {:?} is not host:port",
            path.display(),
            c.gateway
        )
    })?;
    Ok((access::Access::new(Some(&c))?.gateway(g)?, Some(c)))
}

/// metad's addresses and how to reach them (an admin key).
fn metad_access(cli: &Cli) -> Result<(Vec<String>, tessera_metad::net::Security)> {
    let path = cluster::path(cli.cluster.as_deref());
    let c = cluster::read(&path)?;
    let sec = access::Access::new(Some(&c))?.metad()?;
    Ok((c.metad, sec))
}

/// A dev cluster's node certificate (in its data directory), for the
/// commands that talk to chunk servers directly.
fn node_tls(file: &cluster::ClusterFile) -> Result<Option<tessera_tls::TlsFiles>> {
    if file.ca.is_none() {
        return Ok(None);
    }
    let Some(data) = &file.data else {
        anyhow::bail!(
            "this command talks to chunk servers directly and needs a node certificate; it runs \
             on a dev cluster's machine (the cluster file names its data directory)"
        );
    };
    Ok(Some(tessera_tls::dev::existing(&data.join("tls"))?))
}

fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    match &cli.cmd {
        Cmd::Dev {
            data,
            chunk_servers,
            metad,
            k,
            m,
            segment_mib,
            healer_args,
            insecure,
            gateway_cache_bytes,
            gateway_cache_reads_only,
            gateway_cache_lazy_memory,
            metad_groups,
            wal_partitions,
        } => dev::run(dev::DevArgs {
            metad_groups: *metad_groups,
            wal_partitions: *wal_partitions,
            gateway_cache_reads_only: *gateway_cache_reads_only,
            gateway_cache_lazy_memory: *gateway_cache_lazy_memory,
            insecure: *insecure,
            gateway_cache_bytes: *gateway_cache_bytes,
            data: data.clone(),
            chunk_servers: *chunk_servers,
            metad: *metad,
            cluster: cluster::path(cli.cluster.as_deref()),
            k: *k,
            m: *m,
            segment_mib: *segment_mib,
            healer_args: healer_args.clone(),
        }),
        Cmd::Put {
            key,
            file,
            if_absent,
            if_version,
        } => {
            let cond = match (if_absent, if_version) {
                (true, _) => PutIf::Absent,
                (false, None) => PutIf::Always,
                (false, Some(h)) => PutIf::Version(tessera_auth::keys::unhex(h).with_context(|| {
                    format!("--if-version {h:?} is not hex: give the version id as `tessera stat` prints it")
                })?),
            };
            let (gw, _) = gateway_addr(&cli)?;
            let (key, file) = (key.clone(), file.clone());
            ops::on_executor(move || async move { ops::put(gw, key, file, cond, json).await })
        }
        Cmd::Get { key, output } => {
            let (gw, _) = gateway_addr(&cli)?;
            let (key, output) = (key.clone(), output.clone());
            ops::on_executor(move || async move { ops::get(gw, key, output, json).await })
        }
        Cmd::Stat { key } => {
            let (gw, _) = gateway_addr(&cli)?;
            let key = key.clone();
            ops::on_executor(move || async move { ops::stat(gw, key, json).await })
        }
        Cmd::Rm { key } => {
            let (gw, _) = gateway_addr(&cli)?;
            let key = key.clone();
            ops::on_executor(move || async move { ops::rm(gw, key, json).await })
        }
        Cmd::Ls { prefix, limit } => {
            let (gw, _) = gateway_addr(&cli)?;
            let (prefix, limit) = (prefix.clone(), *limit);
            ops::on_executor(move || async move { ops::ls(gw, prefix, limit, json).await })
        }
        Cmd::Doc(DocCmd::Put {
            key,
            document: doc,
            hot,
        }) => {
            let (gw, _) = gateway_addr(&cli)?;
            let doc = ops::read_json_arg(doc)?;
            let (key, hot) = (key.clone(), hot.clone());
            ops::on_executor(move || async move { ops::doc_put(gw, key, doc, hot, json).await })
        }
        Cmd::Doc(DocCmd::Get { key }) => {
            let (gw, _) = gateway_addr(&cli)?;
            let key = key.clone();
            ops::on_executor(move || async move { ops::doc_get(gw, key, json).await })
        }
        Cmd::Scrub { node, rate_mib } => {
            let (gw, _) = gateway_addr(&cli)?;
            let (node, rate) = (node.clone(), *rate_mib);
            ops::on_executor(move || async move { heal::scrub(gw, node, rate, json).await })
        }
        Cmd::Key(k) => {
            let (gw, _) = gateway_addr(&cli)?;
            match k {
                KeyCmd::Create {
                    name,
                    permissions,
                    prefix,
                } => {
                    let (name, permissions, prefix) =
                        (name.clone(), permissions.clone(), prefix.clone());
                    ops::on_executor(move || async move {
                        ops::key_create(gw, name, permissions, prefix, json).await
                    })
                }
                KeyCmd::List => {
                    ops::on_executor(move || async move { ops::key_list(gw, json).await })
                }
                KeyCmd::Revoke { key_id } => {
                    let key_id = key_id.clone();
                    ops::on_executor(move || async move { ops::key_revoke(gw, key_id, json).await })
                }
            }
        }
        Cmd::Repair { key, all, dry_run } => {
            if key.is_none() && !all {
                anyhow::bail!("say what to repair: a KEY, or --all for every object");
            }
            let (metad, sec) = metad_access(&cli)?;
            let file = cluster::read(&cluster::path(cli.cluster.as_deref()))?;
            let tls = if *dry_run {
                node_tls(&file)?
                    .map(|f| tessera_tls::Connector::node(&f))
                    .transpose()?
            } else {
                None
            };
            let keys: Vec<String> = key.iter().cloned().collect();
            let dry = *dry_run;
            ops::on_executor(move || async move {
                heal::repair(heal::bridge(&metad, sec).await?, tls, keys, dry, json).await
            })
        }
        Cmd::Node(cmd) => {
            let path = cluster::path(cli.cluster.as_deref());
            let file = cluster::read(&path)?;
            let metad = file.metad.clone();
            let sec = access::Access::new(Some(&file))?.metad()?;
            match cmd {
                NodeCmd::Add {
                    data,
                    listen,
                    config,
                } => {
                    // A dev cluster's chunk servers share one settings file
                    // shape (small segments, no pinning): use it.
                    let config = config.clone().or_else(|| {
                        file.data
                            .as_ref()
                            .map(|d| d.join("chunkd-1.toml"))
                            .filter(|p| p.is_file())
                    });
                    let (data, listen) = (data.clone(), listen.clone());
                    let tls = node_tls(&file)?;
                    ops::on_executor(move || async move {
                        let b = heal::bridge(&metad, sec).await?;
                        heal::node_add(b, metad, data, listen, config, tls, json).await
                    })
                }
                NodeCmd::Drain { id, undo } => {
                    let (id, undo) = (id.clone(), *undo);
                    ops::on_executor(move || async move {
                        heal::node_drain(heal::bridge(&metad, sec).await?, id, undo, json).await
                    })
                }
                NodeCmd::Remove { id } => {
                    let id = id.clone();
                    let tls = node_tls(&file)?
                        .map(|f| tessera_tls::Connector::node(&f))
                        .transpose()?;
                    ops::on_executor(move || async move {
                        heal::node_remove(heal::bridge(&metad, sec).await?, tls, id, json).await
                    })
                }
            }
        }
        Cmd::Status => {
            let (gw, c) = gateway_addr(&cli)?;
            ops::on_executor(move || async move { ops::status(gw, c, json).await })
        }
    }
}

/// mimalloc: the client library allocates a buffer per object it sends or receives
/// (see the load generator's, which measured glibc's fresh pages for 1 MiB
/// buffers at ~20 % of its samples).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // First, before any thread: may re-execute this binary once (a
    // failure costs copy speed only, so it is not reported here).
    let _ = tessera_engine::tune_memcpy();
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = ops::exit_code(&e);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"error": format!("{e:#}"), "exit_code": code})
                );
            } else {
                eprintln!("tessera: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}
