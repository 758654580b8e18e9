//! The limits of the `ChunkServer` contract, with their units; the schema's
//! header comment states the same numbers. Servers enforce them and clients
//! check them before sending, so a mistake gets a clear error locally.

/// Longest shard id (the engine's limit).
pub const ID_LEN_MAX_BYTES: usize = 128;

/// Largest shard (the engine's limit).
pub const SHARD_SIZE_MAX_BYTES: usize = 16 << 20;

/// Most data in one `putShard` or `getShard` message; larger shards stream.
/// 4 MiB keeps a message's buffering bounded while one round trip carries
/// the common shard sizes (a 4+2 stripe of 16 MiB has 4 MiB shards).
pub const INLINE_DATA_MAX_BYTES: usize = 4 << 20;

/// Most shards in one `putShards` call.
pub const PUT_BATCH_SHARDS_MAX: usize = 256;

/// Most data (all shards together) in one `putShards` call: the inline
/// message limit.
pub const PUT_BATCH_DATA_MAX_BYTES: usize = INLINE_DATA_MAX_BYTES;

/// Largest shard a client batches into `putShards` calls; a larger one is
/// a call of its own (its bytes, not the call, are its cost). 64 KiB is
/// the gateway's inline limit: every replica of a replicated object and
/// the shards of small erasure-coded ones.
pub const PUT_BATCH_ITEM_MAX_BYTES: usize = 64 << 10;

/// Most data a client gathers into one `putShards` call (a quarter of
/// what the server accepts, so a batch stays a short message).
pub const PUT_BATCH_SEND_MAX_BYTES: usize = 1 << 20;

/// Batched put calls a client has in flight per server connection; puts
/// asked for meanwhile wait and leave together in the next one. One keeps
/// batches largest: a durable write takes ~1 ms here, and what arrives in
/// it shares the next.
pub const PUT_BATCHES_INFLIGHT_MAX: usize = 1;

/// Largest chunk of one stream write.
pub const STREAM_CHUNK_MAX_BYTES: usize = 1 << 20;

/// Chunk size when the caller does not choose one: large enough that per
/// message overhead is small, small enough to keep several in flight.
pub const STREAM_CHUNK_DEFAULT_BYTES: usize = 256 << 10;

/// Most items in one inventory page.
pub const INVENTORY_PAGE_MAX: usize = 10_000;

/// Most bad-shard reports returned by one call.
pub const BAD_SHARDS_PAGE_MAX: usize = 10_000;

/// Cap'n Proto traversal limit for received messages, in 8-byte words:
/// an inline message of [`INLINE_DATA_MAX_BYTES`] plus generous room for
/// headers and an inventory page (10,000 ids of 128 bytes).
pub const MESSAGE_TRAVERSAL_LIMIT_WORDS: usize = (INLINE_DATA_MAX_BYTES + (4 << 20)) / 8;

/// Default time a client waits for one call (a 16 MiB durable put on a slow
/// disk takes well under a second; this catches a hung peer).
pub const CALL_TIMEOUT_DEFAULT_MILLIS: u64 = 30_000;

/// Default time a client waits for a TCP connection.
pub const CONNECT_TIMEOUT_DEFAULT_MILLIS: u64 = 3_000;

/// Default attempts of a retried call (the first one included).
pub const ATTEMPTS_DEFAULT: u32 = 3;

/// First backoff between attempts; doubled each time, with jitter.
pub const BACKOFF_BASE_MILLIS: u64 = 50;

/// Longest backoff between attempts.
pub const BACKOFF_MAX_MILLIS: u64 = 2_000;

/// After a framed connection to a chunk server could not be opened (its
/// connection limit, or it is down), small puts go as Cap'n Proto calls
/// for this long before frames are tried again.
pub const FRAMES_RETRY_AFTER_MILLIS: u64 = 1_000;
