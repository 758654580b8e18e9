//! `tessera-bench`: side-by-side benchmarks of Tessera against the ceiling
//! or peer measured in the same run (fio for the disk, the engine itself
//! for the chunk server).

mod chunkd_bench;
mod codec_bench;
mod engine_bench;
mod fio;
mod heal_bench;
mod load_bench;
mod metad_bench;
mod report;
mod s3_bench;
mod target;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "tessera-bench",
    about = "Tessera benchmarks, each figure next to its ceiling from the same run"
)]
struct Cli {
    /// Print one JSON object {"figures": {NAME: {value, unit, ceiling, ratio}}}.
    #[arg(long, global = true)]
    json: bool,
    /// Smaller data sets and 2-second runs (a smoke test, not a measurement).
    #[arg(long, global = true)]
    quick: bool,
    /// Engine shards (executor threads); 0 = one per core.
    #[arg(long, global = true, default_value_t = 0)]
    shards: usize,
    /// Client executors (threads) driving chunkd in `chunkd` (the load is
    /// split between them; each has its own connections).
    #[arg(long, global = true, default_value_t = 1)]
    client_executors: usize,
    /// Raft groups metad splits its keys into in `metad`.
    #[arg(long, global = true, default_value_t = 8)]
    metad_groups: u32,
    /// WAL partitions of the metad replicas `wal` starts; 0 = metad's
    /// default (4). `tessera dev` uses one per two cores (1 here).
    #[arg(long, global = true, default_value_t = 0)]
    wal_partitions: u32,
    /// `metad` and `wal`: the replicas and the bench talk over Unix sockets
    /// (metad's `--local-socket-dir`), as in a `tessera dev` cluster,
    /// instead of TCP.
    #[arg(long, global = true)]
    local_sockets: bool,
    /// Skip the etcd side of `metad` (Tessera's figures only).
    #[arg(long, global = true)]
    no_etcd: bool,
    /// Only these WAL phases, as SIZE_KIB:IN_FLIGHT (e.g. `4:64`); all when empty.
    #[arg(long, global = true, value_delimiter = ',')]
    wal_phases: Vec<String>,
    /// Rounds of each paired figure of `engine` (fio, then the engine; the
    /// round with the median ratio is reported); 0 = 3, or 1 with --quick.
    #[arg(long, global = true, default_value_t = 0)]
    rounds: usize,
    /// Directory for the data files (engine and fio share its file system).
    #[arg(long, global = true, default_value = "/tmp/tessera-bench")]
    dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The storage engine against fio on the same file system.
    Engine,
    /// A chunkd process over loopback against the engine's own figures.
    Chunkd,
    /// Three metad replicas against three etcd members, one after the other.
    Metad,
    /// WAL appends on three metad replicas against fio's fdatasync rate.
    Wal,
    /// The gateway's erasure codes against ISA-L (build with --features isal).
    Codec,
    /// Time and MB/s to restore full redundancy after one of six chunk
    /// servers is lost (fio's sequential read as the ceiling), and GET p99
    /// during the repair against a quiet cluster. Runs its own `tessera dev`.
    Heal {
        /// Bytes each chunk server holds before one is lost, MiB (default 2048).
        #[arg(long)]
        per_node_mib: Option<u64>,
        /// The healer's repair rate, MiB/s.
        #[arg(long)]
        rate_mib: Option<u64>,
    },
    /// The load generator: PUT and GET of 4 KiB, 1 MiB and 16 MiB objects
    /// against a running cluster (`tessera dev`), next to Garage's figures.
    Load {
        /// Gateway address (else the cluster file's).
        #[arg(long)]
        gateway: Option<std::net::SocketAddr>,
        /// Cluster file (else $TESSERA_CLUSTER, else ~/.config/tessera/cluster.toml).
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// Seconds per phase.
        #[arg(long)]
        secs: Option<u64>,
        /// Object sizes in KiB (default 4,1024,16384).
        #[arg(long, value_delimiter = ',')]
        sizes_kib: Vec<usize>,
        /// Requests in flight per phase (default 8,32).
        #[arg(long, value_delimiter = ',')]
        concurrency: Vec<usize>,
        /// MiB of 1 MiB objects to write first, not measured (0: none), so
        /// that the gateway's read cache is full as in a gateway that has
        /// been running: about its --cache-bytes (1/4 of its memory). At
        /// most 16384.
        #[arg(long, default_value_t = 0)]
        warmup_mib: u64,
        /// Connect over the dev cluster's Unix socket (DATA/gateway.sock)
        /// instead of TCP and TLS, as a client on the gateway's machine
        /// (the S3 front) does: no TLS, no loopback TCP.
        #[arg(long)]
        local_socket: bool,
        /// An S3 peer measured in the same run, after Tessera, with the
        /// same phases: NAME,ENDPOINT,KEY_ID,SECRET,REGION,BUCKET[,DATA_DIR...]
        /// (benches/scripts/load-vs-garage.sh sets up Garage). Its figures
        /// replace the LIMITS.md ones as the ceilings.
        #[arg(long)]
        peer: Option<String>,
    },
    /// Prints the live bytes of a dev cluster's chunk servers (shards and
    /// record headers): the disk use `s3 --tessera-du` compares.
    LiveBytes {
        /// Cluster file (else $TESSERA_CLUSTER, else ~/.config/tessera/cluster.toml).
        #[arg(long)]
        cluster: Option<PathBuf>,
    },
    /// One S3 load generator against Tessera's S3 front and a peer (Garage)
    /// in the same run: PUT and GET of 4 KiB, 1 MiB and 16 MiB objects at 8
    /// and 32 in flight, and disk bytes per stored byte.
    /// benches/scripts/s3-vs-garage.sh sets both up.
    S3 {
        /// NAME,ENDPOINT,KEY_ID,SECRET,REGION,BUCKET[,DATA_DIR...]
        #[arg(long)]
        tessera: String,
        /// The peer, in the same form.
        #[arg(long)]
        peer: Option<String>,
        /// A shell command printing Tessera's disk use in bytes (its chunk
        /// segments are preallocated, so allocated blocks say nothing).
        #[arg(long)]
        tessera_du: Option<String>,
        /// Seconds per phase.
        #[arg(long)]
        secs: Option<u64>,
        /// Object sizes in KiB (default 4,1024,16384).
        #[arg(long, value_delimiter = ',')]
        sizes_kib: Vec<usize>,
        /// Requests in flight per phase (default 8,32).
        #[arg(long, value_delimiter = ',')]
        concurrency: Vec<usize>,
    },
}

/// The phases of `load` and `s3`: the full or quick plan with the
/// command line's overrides (each clamped to a sane range).
fn load_plan(
    quick: bool,
    secs: Option<u64>,
    sizes_kib: &[usize],
    concurrency: &[usize],
) -> load_bench::Plan {
    let mut plan = if quick {
        load_bench::Plan::quick()
    } else {
        load_bench::Plan::full()
    };
    if let Some(s) = secs {
        plan.duration = std::time::Duration::from_secs(s.clamp(1, 3600));
    }
    if !sizes_kib.is_empty() {
        plan.sizes = sizes_kib
            .iter()
            .map(|k| k.clamp(&1, &(1 << 20)) << 10)
            .collect();
    }
    if !concurrency.is_empty() {
        plan.concurrency = concurrency.iter().map(|c| *c.clamp(&1, &1024)).collect();
    }
    plan
}

/// mimalloc: the load generator allocates a buffer per object it sends or receives; with
/// glibc every 1 MiB+ buffer was fresh mmap'd memory (page faults, zeroing,
/// munmap: ~20 % of its samples in the 1 MiB GET phase), on the same two
/// cores as the cluster it measures.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    // First, before any thread: may re-execute this binary once. The load
    // generator shares the cores with the cluster it measures, so its
    // copies are as costly as the servers'.
    if let Some(w) = tessera_engine::tune_memcpy().failure() {
        eprintln!("{w}");
    }
    // As in the gateway: fresh huge pages under mimalloc cost a 2 MiB
    // fault and zeroing each; best effort.
    let _ = tessera_engine::disable_transparent_huge_pages();
    let cli = Cli::parse();
    let report = match cli.cmd {
        Cmd::Engine => {
            let mut plan = if cli.quick {
                engine_bench::Plan::quick()
            } else {
                engine_bench::Plan::full()
            };
            if cli.rounds > 0 {
                plan.rounds = cli.rounds.min(engine_bench::ROUNDS_MAX);
            }
            engine_bench::run(&cli.dir, &plan, cli.shards)?
        }
        Cmd::Chunkd => {
            let mut plan = if cli.quick {
                chunkd_bench::Plan::quick()
            } else {
                chunkd_bench::Plan::full()
            };
            plan.client_executors = cli.client_executors.max(1);
            chunkd_bench::run(&cli.dir, &plan, cli.shards)?
        }
        Cmd::Metad => {
            let mut plan = if cli.quick {
                metad_bench::Plan::quick()
            } else {
                metad_bench::Plan::full()
            };
            plan.groups = cli.metad_groups;
            plan.with_etcd = !cli.no_etcd;
            plan.local_sockets = cli.local_sockets;
            metad_bench::run(&cli.dir, &plan)?
        }
        Cmd::Wal => {
            let mut plan = if cli.quick {
                metad_bench::Plan::quick()
            } else {
                metad_bench::Plan::full()
            };
            plan.groups = cli.metad_groups;
            plan.wal_partitions = cli.wal_partitions;
            plan.local_sockets = cli.local_sockets;
            plan.wal_phases = cli
                .wal_phases
                .iter()
                .map(|p| metad_bench::parse_wal_phase(p))
                .collect::<Result<_>>()?;
            metad_bench::run_wal(&cli.dir, &plan)?
        }
        Cmd::Codec => codec_bench::run()?,
        Cmd::Heal {
            per_node_mib,
            rate_mib,
        } => {
            let mut plan = if cli.quick {
                heal_bench::Plan::quick()
            } else {
                heal_bench::Plan::full()
            };
            if let Some(m) = per_node_mib {
                plan.per_node_bytes = m.clamp(16, 1 << 20) << 20;
            }
            if let Some(r) = rate_mib {
                plan.rate_mib = r.clamp(1, 1 << 20);
            }
            heal_bench::run(&cli.dir, &plan)?
        }
        Cmd::Load {
            gateway,
            cluster,
            secs,
            sizes_kib,
            concurrency,
            warmup_mib,
            local_socket,
            peer,
        } => {
            // Parsed first: a malformed peer fails before minutes of load.
            let peer = peer.as_deref().map(s3_bench::Target::parse).transpose()?;
            let gw = match gateway {
                Some(g) if !local_socket => target::Target::insecure(g),
                Some(_) => anyhow::bail!(
                    "--local-socket connects through the cluster file's socket; leave out --gateway"
                ),
                None => {
                    let path = tessera_rpc::cluster::path(cluster.as_deref());
                    let file = tessera_rpc::cluster::read(&path)?;
                    let mut t = target::Target::from_file(&file)?;
                    if local_socket {
                        t.via_local_socket(file.data.as_deref())?;
                    }
                    t
                }
            };
            let mut plan = load_plan(cli.quick, secs, &sizes_kib, &concurrency);
            plan.warmup_bytes = (warmup_mib << 20).min(load_bench::WARMUP_BYTES_MAX);
            let mut r = load_bench::run(gw, &plan)?;
            if let Some(p) = peer {
                s3_bench::compare_with(&mut r, p, &plan)?;
            }
            r
        }
        Cmd::LiveBytes { cluster } => {
            let path = tessera_rpc::cluster::path(cluster.as_deref());
            let t = target::Target::from_file(&tessera_rpc::cluster::read(&path)?)?;
            println!("{}", load_bench::cluster_live_bytes(t)?);
            return Ok(());
        }
        Cmd::S3 {
            tessera,
            peer,
            tessera_du,
            secs,
            sizes_kib,
            concurrency,
        } => {
            let mut t = s3_bench::Target::parse(&tessera)?;
            t.du_command = tessera_du;
            let p = peer.as_deref().map(s3_bench::Target::parse).transpose()?;
            let plan = load_plan(cli.quick, secs, &sizes_kib, &concurrency);
            s3_bench::run(t, p, &plan)?
        }
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
