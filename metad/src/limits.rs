//! Every limit metad enforces, with its unit. The schema's header comment
//! mirrors the client-visible ones.

/// Longest key, in bytes (keys are 1..=this).
pub const KEY_LEN_MAX_BYTES: usize = 1024;
/// Longest value, in bytes.
pub const VALUE_LEN_MAX_BYTES: usize = 256 << 10;
/// Most operations in one batch.
pub const BATCH_OPS_MAX: usize = 128;
/// Most key and value bytes in one batch.
pub const BATCH_BYTES_MAX: usize = 1 << 20;
/// Most items in one list page.
pub const LIST_LIMIT_MAX: u32 = 10_000;
/// Longest lease name and holder, in bytes.
pub const LEASE_NAME_LEN_MAX_BYTES: usize = 256;
/// Shortest and longest lease (and node heartbeat) TTL, in milliseconds.
pub const LEASE_TTL_MIN_MILLIS: u32 = 100;
pub const LEASE_TTL_MAX_MILLIS: u32 = 600_000;
/// Longest node id and address, in bytes.
pub const NODE_FIELD_LEN_MAX_BYTES: usize = 256;
/// Most raft groups one replica hosts.
pub const GROUPS_MAX: u32 = 256;
/// Most replicas in a group (openraft has no hard limit; past seven a
/// write waits on too many fsyncs to be worth it).
pub const REPLICAS_MAX: usize = 7;
/// Largest raft message accepted from a peer, in bytes (append batches are
/// bounded by `max_payload_entries` times the value limit; snapshot chunks
/// by `snapshot_max_chunk_size`).
pub const RAFT_MESSAGE_MAX_BYTES: usize = 64 << 20;
/// Remembered (client, seq) results per group for retried writes. A
/// client that sends its settled watermark (this crate's does) keeps only
/// its unsettled requests here; this bounds the rest (clients that do not
/// say), oldest first.
pub const DEDUP_ENTRIES_MAX: usize = 100_000;
/// Clients whose settled watermark a group remembers; past it the one
/// heard from least recently is forgotten (its late copies are then caught
/// only by `DEDUP_ENTRIES_MAX`'s results).
pub const CLIENT_SESSIONS_MAX: usize = 4096;
/// A leader proposes a client's new watermark once it has moved this many
/// seqs past the last one it proposed: a group then holds at most about
/// this many settled results per client, at one small command per this
/// many requests.
pub const SETTLE_STEP_SEQS: u64 = 128;
/// A log segment is rewritten (its live records into a new one) past this.
pub const LOG_SEGMENT_ROTATE_BYTES: u64 = 64 << 20;
/// Largest record in the log, in bytes (a torn or hostile length is
/// rejected before allocating).
pub const LOG_RECORD_MAX_BYTES: usize = 256 << 20;
/// Cap'n Proto traversal limit for one message, in 8-byte words.
pub const MESSAGE_TRAVERSAL_LIMIT_WORDS: usize = (RAFT_MESSAGE_MAX_BYTES / 8) * 2;
/// Most client connections one replica serves at once.
pub const CONNECTIONS_MAX: usize = 4096;
/// Most commands one raft entry carries (below `VERSIONS_PER_ENTRY`).
pub const PROPOSAL_COMMANDS_MAX: usize = 1024;
/// A raft entry stops taking commands past this many key and value bytes
/// (one command always fits).
pub const PROPOSAL_BYTES_MAX: usize = 1 << 20;
/// Entries of one group submitted to raft and not yet applied. While they
/// are in flight new commands gather into the next entry. One: since a
/// leader no longer waits for its own flush before replicating
/// (vendor/README.md), a second entry in flight no longer shortened WAL
/// rounds (append_4kib_c64 the same), and with one the entries are larger
/// and fewer, which the CPU-bound whole store needs (4 KiB PUTs ~+10 %;
/// docs/BENCHMARKS.md, "2026-11-28").
pub const PROPOSALS_INFLIGHT_MAX: usize = 1;
/// Largest WAL entry (request or intent), in bytes; larger objects log
/// their intent and rely on their shards.
pub const WAL_DATA_MAX_BYTES: usize = 1 << 20;
/// Items of one `walAppendMany` call.
pub const WAL_APPEND_MANY_ITEMS_MAX: usize = 256;
/// Data bytes of one `walAppendMany` call (a single item may be up to
/// [`WAL_DATA_MAX_BYTES`] on its own).
pub const WAL_APPEND_MANY_BYTES_MAX: usize = 4 << 20;
/// Items of one `writeMany` call.
pub const WRITE_MANY_ITEMS_MAX: usize = 256;
/// Key and value bytes of one `writeMany` call (a single write may be up
/// to [`VALUE_LEN_MAX_BYTES`] and its key on its own).
pub const WRITE_MANY_BYTES_MAX: usize = 4 << 20;
/// Batched calls (`walAppend(Many)`, `write(Many)`) a client keeps out per
/// WAL partition or group; what its callers make meanwhile waits and goes
/// out together in the next call. One, for the reason given at
/// [`PROPOSALS_INFLIGHT_MAX`].
pub const BATCHED_CALLS_INFLIGHT_MAX: usize = 1;
/// Unfinished bytes one WAL partition holds before appends get `full`
/// (back-pressure instead of unbounded memory: the state machine keeps
/// unfinished entries in memory and in its snapshots).
pub const WAL_PARTITION_UNFINISHED_BYTES_MAX: u64 = 256 << 20;
/// Unfinished entries one WAL partition holds before appends get `full`
/// (intents carry no data, so the byte limit alone would not bound them).
pub const WAL_PARTITION_ENTRIES_MAX: usize = 1_000_000;
/// Most entries and bytes one WAL read returns.
pub const WAL_READ_ENTRIES_MAX: u32 = 10_000;
pub const WAL_READ_BYTES_MAX: u32 = 16 << 20;
/// Most WAL partitions.
pub const WAL_PARTITIONS_MAX: u32 = 64;
/// Most offsets one finish call names.
pub const WAL_FINISH_OFFSETS_MAX: usize = 10_000;
/// Commands of one group waiting for a proposal slot; past this a write
/// gets `unavailable` (bounded memory under a flood of clients).
pub const PROPOSALS_QUEUED_MAX: usize = 16_384;
/// Reads of one group waiting for a leadership confirmation.
pub const READS_WAITING_MAX: usize = 16_384;
