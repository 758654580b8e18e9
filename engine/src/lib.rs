//! `tessera-engine`: the log-structured shard store of one node.
//!
//! Shards (opaque ids up to [`limits::ID_LEN_MAX_BYTES`], payloads up to
//! [`limits::SHARD_SIZE_MAX_BYTES`]) are appended as checksummed records to
//! preallocated segment files with O_DIRECT through io_uring (glommio);
//! whole-block payloads are block-aligned so a 4 KiB shard reads as one block.
//! Many puts share one write and one fdatasync (group commit); a put is
//! acknowledged only once durable. The index lives in memory, is rebuilt on
//! open from a checkpoint plus the log written after it, and a torn tail is
//! cut, never served. Deletes are tombstones; compaction rewrites the live
//! records of the emptiest segments; a throttled scrubber re-verifies
//! everything and reports bad shards.
//!
//! Layout: [`Engine`] (thread-per-core handle; requests routed by id hash to
//! the core that owns the shard) over [`Shard`] (one core's files and index)
//! over a [`device::Device`] (real io_uring files, or a crash-simulating or
//! fault-injecting one in tests). No networking here.
//!
//! Process-wide settings every Tessera binary makes first live here too:
//! raised limits (`rlimit`), transparent huge pages off, and glibc's
//! memcpy kept off `rep movsb` on AMD (`memcpy_tuning`).

pub mod checkpoint;
mod crc;
pub mod device;
mod engine;
mod error;
pub mod format;
mod fs_check;
pub mod limits;
mod memcpy_tuning;
mod reader;
mod rlimit;
mod shard;

pub use engine::{
    route, DeviceFactory, Engine, EngineConfig, EngineHandle, FaultyFactory, LocalTask, ShardOps,
    SimFactory, UringFactory,
};
pub use error::{Error, Result};
pub use fs_check::{
    journal_less_ext4, journal_less_ext4_device, journal_less_ext4_warning, SystemRoots,
};
pub use memcpy_tuning::{tune_memcpy, MemcpyTuning, MEMCPY_TUNING_ENV, REP_MOVSB_TUNABLE};
pub use rlimit::{
    disable_transparent_huge_pages, raise_memlock, raise_open_files, MEMLOCK_MIN_BYTES,
};
pub use shard::{
    BadShard, CompactReport, Entry, InventoryItem, ScrubProgress, Shard, ShardConfig, ShardStat,
    Stats,
};
