//! Every limit of the engine, named with its unit, and why it has the value
//! it has.

/// Largest shard id. Gateway shard ids are 21 bytes (128-bit version id,
/// stripe, index); 128 leaves room for other callers without letting ids
/// bloat the in-memory index.
pub const ID_LEN_MAX_BYTES: usize = 128;

/// Largest shard payload. Stripes are cut into shards of at most a few MiB;
/// 16 MiB bounds the memory one request can pin.
pub const SHARD_SIZE_MAX_BYTES: usize = 16 << 20;

/// O_DIRECT alignment for offsets, lengths and buffers. The disk here has
/// 4 KiB physical sectors, so 4 KiB also avoids read-modify-write.
pub const IO_ALIGN_BYTES: u64 = 4096;

/// Default segment size: large enough that segment roll-over and the
/// per-segment bookkeeping are rare, small enough that compaction of one
/// segment is a short job.
pub const SEGMENT_SIZE_DEFAULT_BYTES: u64 = 256 << 20;

/// Smallest configurable segment (tests use small ones to force roll-over).
pub const SEGMENT_SIZE_MIN_BYTES: u64 = 64 << 10;

/// Largest configurable segment: offsets inside a segment are kept in u32.
pub const SEGMENT_SIZE_MAX_BYTES: u64 = 4 << 30;

/// Bytes at the start of each segment holding its header.
pub const SEGMENT_HEADER_BYTES: u64 = IO_ALIGN_BYTES;

/// Target size of one group-commit buffer (and the largest a configuration
/// may set). A flush writes all full buffers plus the open one concurrently,
/// then issues one fdatasync.
pub const BATCH_BUFFER_BYTES: usize = 1 << 20;

/// Flushes of one shard on their way to disk at once. Two let the disk
/// work on the next group while the previous one completes (O_DSYNC writes
/// here: ~2.1k/s at one in flight, ~3.4k/s at two, ~4.7k/s at four), while a
/// crash can still tear only the two newest, both unacknowledged.
pub const FLUSHES_INFLIGHT_MAX: usize = 2;

/// Writes in one flush from which the flush writes without O_DSYNC and ends
/// with one fdatasync. This disk's cache is volatile and it has no FUA, so
/// each O_DSYNC write is a write plus a cache flush; a lone write is cheaper
/// that way (one round trip), but a flush of several pays one cache flush
/// per write.
pub const FLUSH_ONE_SYNC_MIN_WRITES: usize = 2;

/// Most bytes one flush writes before its fdatasync, bounding the latency a
/// small put can wait behind large ones.
pub const FLUSH_MAX_BYTES: usize = 16 << 20;

/// How far past a clean-looking end of the log recovery looks for the
/// remnants of flushes that were in flight at a crash: the flushes that can
/// be in flight, each at most [`FLUSH_MAX_BYTES`] plus one largest shard and
/// its batch (a flush closes past the limit), plus the padding to a block.
pub const TORN_REMNANT_WINDOW_BYTES: u64 = FLUSHES_INFLIGHT_MAX as u64
    * (FLUSH_MAX_BYTES as u64 + SHARD_SIZE_MAX_BYTES as u64 + 2 * BATCH_BUFFER_BYTES as u64);

/// Backlog (bytes) from which a flush with none before it in flight takes
/// only half, so the other half can follow pipelined (see `take_flush`).
/// At this size a flush is bound by the disk's bandwidth (1 MiB takes
/// ~0.4 ms at 2.5 GB/s, about one durable-write latency here), not by its
/// latency, so splitting it costs no extra round trip worth counting.
pub const FLUSH_SPLIT_MIN_BYTES: usize = 1 << 20;

/// Smallest first payload (a whole number of blocks) for which a batch
/// stages its payloads in an aligned buffer written as is, saving a copy;
/// below it the copy costs less than setting up that buffer.
pub const STAGED_PAYLOAD_MIN_BYTES: usize = 64 << 10;

/// Most requests one shard works on at once; further ones wait in its queue.
pub const SHARD_INFLIGHT_MAX: usize = 1024;

/// Depth of each shard's request queue (back-pressure beyond it).
pub const SHARD_QUEUE_DEPTH: usize = 4096;

/// Bad-shard reports buffered for the consumer; more are counted as dropped
/// (the next scrub pass finds them again).
pub const BAD_SHARD_QUEUE_DEPTH: usize = 4096;

/// Reads the scrubber and the recovery scan issue per step.
pub const SCAN_READ_BYTES: usize = 1 << 20;

/// Most engine shards (executor threads) one engine runs.
pub const SHARDS_MAX: usize = 256;

/// Largest checkpoint file the engine will read back (bounds memory on open).
pub const CHECKPOINT_MAX_BYTES: u64 = 8 << 30;

/// Reads in flight when scanning, compacting or scrubbing sequentially
/// (the queue depth at which this disk reaches its sequential read speed).
pub const SCAN_READAHEAD: usize = 8;

/// Bytes of copies compaction queues before waiting for them to be durable.
pub const COMPACT_STEP_BYTES: usize = 8 << 20;

/// Longest a background step waits for foreground requests to drain before
/// going ahead anyway (so background work is never starved).
pub const BACKGROUND_YIELD_MAX_MILLIS: u64 = 20;

/// Longest the flusher waits for more writers to join a flush when fewer are
/// queued than went into the previous one (group commit gathering). Small
/// against a durable write here (~200-400 us).
pub const FLUSH_GATHER_MICROS: u64 = 60;
