# The ChunkServer interface: one chunk server (chunkd) seen from the network.
# A chunk server knows nothing of the cluster: it stores shards (opaque bytes
# under an id of 1..=128 bytes) durably, returns them only after their crc32c
# verifies, and reports what its scrubber finds.
#
# Errors: every call that can fail returns `error :Error`; a null `error` means
# success. Transport failures (a dropped connection, a malformed message)
# surface as Cap'n Proto exceptions, never as stored data.
#
# Limits (mirrored as constants in tessera-rpc::limits):
#   id length            1..=128 bytes
#   shard length         <= 16 MiB
#   inline put / get     <= 4 MiB of data in one message; larger shards use
#                           putShardStream / getShardStream
#   stream chunk         <= 1 MiB per write
#   putShards            1..=256 shards, <= 4 MiB of data in all
#   inventory page       <= 10000 items
#   bad-shard reports    <= 10000 per call

@0xdbdd6ab5bfba4b51;

struct Error {
  kind @0 :Kind;
  message @1 :Text;

  enum Kind {
    notFound @0;         # no shard with this id
    checksum @1;         # stored bytes failed their crc32c (the shard is reported for repair)
    tooLarge @2;         # over a limit named in the message
    invalidArgument @3;  # empty or oversized id, bad range, crc mismatch in transit...
    diskFull @4;         # no space for a new segment; nothing was written
    unavailable @5;      # the store refuses writes (failed fsync) or is shutting down
    io @6;               # the disk failed the request
    internal @7;         # a bug: please report it
  }
}

struct ShardInfo {
  id @0 :Data;
  length @1 :UInt32;
  crc32c @2 :UInt32;
}

# One shard of a putShards call.
struct ShardPut {
  id @0 :Data;
  data @1 :Data;
  crc32c @2 :UInt32;
}

# A shard of a putShards call that was not stored, and why.
struct PutFailure {
  index @0 :UInt32;   # its position in the call's `shards`
  error @1 :Error;
}

struct ScrubStatus {
  passes @0 :UInt64;          # completed passes since start
  running @1 :Bool;
  bytesVerified @2 :UInt64;   # in the current (or last) pass
  bytesTotal @3 :UInt64;      # live bytes the current pass covers
  badFound @4 :UInt64;        # bad shards found since start
  lastPassEndedUnixMillis @5 :UInt64;
}

struct BadShard {
  id @0 :Data;
  reason @1 :Text;
}

struct NodeInfo {
  nodeId @0 :Text;             # stable: made on first start, kept in the data dir
  version @1 :Text;
  capacityBytes @2 :UInt64;    # size of the data file system
  availableBytes @3 :UInt64;   # free space on it
  liveBytes @4 :UInt64;
  deadBytes @5 :UInt64;
  shards @6 :UInt64;           # live shards
  engineShards @7 :UInt32;     # cores serving
  uptimeSecs @8 :UInt64;
  writable @9 :Bool;           # false after a failed fsync or while draining
  ioErrors @10 :UInt64;
  servingShard @11 :UInt32;    # the engine shard (core) serving this connection
  localRequests @12 :UInt64;   # shard requests served on the owning core
  forwardedRequests @13 :UInt64; # shard requests passed to another core
}

# A byte stream the receiver implements; writes are flow-controlled.
interface ByteSink {
  write @0 (chunk :Data) -> stream;
  # Called once after the last write.
  done @1 () -> ();
}

# Receives one shard announced by putShardStream.
interface ShardSink {
  write @0 (chunk :Data) -> stream;
  # Checks length and crc32c, then stores the shard durably.
  finish @1 () -> (error :Error);
}

# Routing: an id belongs to engine shard crc32c(id) mod engineShards (the
# Castagnoli crc of the id bytes). Every connection is served by one engine
# shard's core (nodeInfo.servingShard); a request for an id of another shard
# costs a hop between threads on the server, so a client that keeps one
# connection per serving shard and sends each request over the owner's saves
# it. Any connection serves any id.
interface ChunkServer {
  # Stores a whole shard sent in one message (<= 4 MiB). `crc32c` is the
  # sender's checksum of `data`; a mismatch is refused (corrupted in transit).
  # Durable when it returns without error. Idempotent for the same bytes.
  putShard @0 (id :Data, data :Data, crc32c :UInt32) -> (error :Error);

  # Stores a shard of `length` bytes (<= 16 MiB) streamed through `sink`.
  putShardStream @1 (id :Data, length :UInt32, crc32c :UInt32) -> (sink :ShardSink, error :Error);

  # Reads `length` bytes at `offset` (length 0: to the end), at most 4 MiB.
  # Returns the whole shard's length and crc32c too. The server verifies the
  # whole shard's crc32c before sending any byte of it.
  getShard @2 (id :Data, offset :UInt32, length :UInt32) -> (data :Data, shardLength :UInt32, crc32c :UInt32, error :Error);

  # Like getShard, any size: the bytes go to `sink` in chunks of
  # `chunkBytes` (0: 256 KiB), then `sink.done()`, then this call returns.
  getShardStream @3 (id :Data, offset :UInt32, length :UInt32, sink :ByteSink, chunkBytes :UInt32) -> (shardLength :UInt32, crc32c :UInt32, sent :UInt32, error :Error);

  # Durable when it returns. `existed` is false for an unknown id (not an error).
  deleteShard @4 (id :Data) -> (existed :Bool, error :Error);

  statShard @5 (id :Data) -> (info :ShardInfo, error :Error);

  # Shards with ids after `startAfter` (empty: from the start), in id order,
  # at most `limit` (<= 10000). `more` is true if another page follows: pass
  # the last id back as `startAfter`.
  inventory @6 (startAfter :Data, limit :UInt32) -> (items :List(ShardInfo), more :Bool, error :Error);

  scrubStatus @7 () -> (status :ScrubStatus);

  # Starts a scrub pass now (if none is running) at most `bytesPerSec`
  # (0: the configured rate). Follow it with scrubStatus.
  startScrub @8 (bytesPerSec :UInt64) -> (started :Bool, error :Error);

  # Takes up to `limit` bad-shard reports from the queue (reads and scrubs
  # fill it); `dropped` counts reports lost to a full queue since start.
  badShards @9 (limit :UInt32) -> (reports :List(BadShard), dropped :UInt64);

  # Health and capacity, for the node registry.
  nodeInfo @10 () -> (info :NodeInfo);

  # Stores several whole shards sent in one message, each exactly as
  # putShard would (same checks, same durability); they share the server's
  # durable writes, and the call's overhead is paid once. `failed` names
  # the shards not stored, by position, with why; every other one is
  # durable when the call returns. `error` is set (and `failed` empty) when
  # the call as a whole is refused: nothing was stored. Idempotent for the
  # same bytes. A server older than this method answers it with an
  # `unimplemented` exception; a client then sends putShard calls.
  putShards @11 (shards :List(ShardPut)) -> (failed :List(PutFailure), error :Error);
}
