//! Every limit the gateway enforces, with its unit.

/// Longest key, in bytes (metad keys are at most 1024; the record prefix
/// takes the rest).
pub const KEY_LEN_MAX_BYTES: usize = 1000;
/// Largest object, in bytes.
pub const OBJECT_SIZE_MAX_BYTES: u64 = 8 << 40;
/// Most bytes one `put` or `get` message carries (larger objects stream).
pub const MESSAGE_DATA_MAX_BYTES: usize = 4 << 20;
/// Objects up to this size are replicated, larger ones erasure coded.
pub const INLINE_MAX_BYTES_DEFAULT: u64 = 64 << 10;
/// Copies of a replicated object.
pub const REPLICAS: usize = 3;
/// Default erasure code and shard size.
pub const DATA_SHARDS_DEFAULT: u8 = 4;
pub const PARITY_SHARDS_DEFAULT: u8 = 2;
pub const SHARD_BYTES_DEFAULT: u32 = 1 << 20;
/// Shard sizes a pool may choose (the chunk server takes up to 16 MiB).
pub const SHARD_BYTES_MIN: u32 = 4 << 10;
pub const SHARD_BYTES_MAX: u32 = 8 << 20;
/// Largest k and m (and k + m: a stripe's shards need that many nodes).
pub const DATA_SHARDS_MAX: u8 = 32;
pub const PARITY_SHARDS_MAX: u8 = 16;
/// Most stripes one object's record lists: the record must fit metad's
/// 256 KiB value limit (about 40 bytes a stripe at 4+2).
pub const STRIPES_MAX: u64 = 5_000;
/// JSON documents up to this size log their JSON in the WAL (replay can
/// finish them); larger ones, and every blob, log their intent only.
pub const WAL_PAYLOAD_MAX_BYTES: u64 = 64 << 10;
/// Stripes of one streamed put being written at once (memory per put is
/// about this many stripes plus one).
pub const STRIPES_IN_FLIGHT_MAX: usize = 2;
/// Most items one list page returns.
pub const LIST_LIMIT_MAX: u32 = 10_000;
/// Default and largest chunk of a streamed get, in bytes.
pub const STREAM_CHUNK_DEFAULT_BYTES: u32 = 1 << 20;
pub const STREAM_CHUNK_MAX_BYTES: u32 = 4 << 20;
/// How often the node table is read from the registry, in milliseconds.
pub const NODES_REFRESH_MILLIS: u64 = 1_000;
/// Compare-and-set attempts of one commit before answering `conflict`.
pub const COMMIT_ATTEMPTS_MAX: u32 = 8;
/// WAL entries read per page during replay.
pub const REPLAY_PAGE_ENTRIES: u32 = 1_000;
/// Concurrent streamed requests one connection may hold open.
pub const CONNECTIONS_MAX: usize = 4_096;
/// WAL finishes are gathered this long and sent as one call per partition.
pub const WAL_FINISH_GATHER_MILLIS: u64 = 2;
/// Most offsets one finish call carries (metad's limit is 10,000).
pub const WAL_FINISH_BATCH_MAX: usize = 5_000;
/// Largest JSON document, in bytes (it travels in one message).
pub const DOC_JSON_MAX_BYTES: usize = MESSAGE_DATA_MAX_BYTES;
/// Without named hot fields, a top-level field is hot when its JSON is at
/// most this many bytes.
pub const HOT_FIELD_MAX_BYTES: usize = 256;
/// Largest hot part, in bytes: it lives in the record (metad values are at
/// most 256 KiB).
pub const HOT_PART_MAX_BYTES: usize = 64 << 10;
/// A timer that will not fire during a request (after a hedge was sent).
pub const HEDGE_NEVER: std::time::Duration = std::time::Duration::from_secs(3600);
/// Nodes one shard or replica write tries: its own, then spares.
pub const SHARD_WRITE_TRIES: usize = 3;
/// Shard deletes (of replaced, deleted or abandoned versions) in flight.
pub const DELETES_IN_FLIGHT_MAX: usize = 64;
/// Longest gateway id, in bytes (metad's node-field limit).
pub const GATEWAY_ID_LEN_MAX_BYTES: usize = 256;
/// A partial-stripe read waits this many p95s for its data-shard ranges
/// before it reads the whole stripe instead (which hedges).
pub const PART_READ_WAIT_P95_MULTIPLE: u32 = 2;
/// Attempts of one chunk server call (the first included).
pub const CHUNK_CALL_ATTEMPTS: u32 = 2;
/// Largest object record or WAL intent decoded, in bytes (metad values are
/// at most 256 KiB; WAL entries at most 1 MiB).
pub const RECORD_DECODE_MAX_BYTES: u64 = 1 << 20;
/// The port a gateway listens on by default (on 127.0.0.1: exposing it is a decision).
pub const LISTEN_PORT_DEFAULT: u16 = 7300;
/// Open connections one peer address may hold by default (a client
/// flooding connections cannot lock the others out).
pub const CONNECTIONS_PER_PEER_DEFAULT: usize = 512;

/// Calls one client connection may have running at once (the client
/// library keeps 8 per connection; more are refused as overloaded).
pub const CALLS_PER_CONNECTION_MAX: usize = 256;
/// Request bytes one connection's running calls may hold: a client cannot
/// pin more memory than this by sending and not waiting.
pub const REQUEST_BYTES_PER_CONNECTION_MAX: u64 = 64 << 20;
/// Request bytes all connections' running calls may hold.
pub const REQUEST_BYTES_TOTAL_MAX: u64 = 1 << 30;
/// Longest a call may run before it is cancelled (`getStream` excepted: it
/// goes at the reader's pace).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// Largest attribute blob an object carries (the S3 front's ETag, content type and user metadata; S3 allows 2 KiB of user metadata).
pub const OBJECT_ATTRS_MAX_BYTES: usize = 8 << 10;
/// Longest version id a conditional write may name (gateways make 16-byte
/// ones; the bound only keeps hostile input small).
pub const VERSION_ID_MAX_BYTES: usize = 64;
