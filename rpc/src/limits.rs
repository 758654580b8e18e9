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
