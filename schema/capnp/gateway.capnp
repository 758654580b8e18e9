# The object API of a Tessera gateway: blobs by key, streamed both ways.
#
# Limits (the gateway enforces them and names them in its errors):
# - key: 1..=1000 bytes of UTF-8, no NUL;
# - object: up to 8 TiB (streamed); `put` and `get` carry at most 4 MiB in
#   one message — larger objects go through `putStream` / `getStream`;
# - list: 1..=10,000 items per page;
# - JSON documents: at most 4 MiB, hot part at most 64 KiB.
#
# Every answer that can fail carries `error`; when it is set the other
# fields are meaningless.
@0xb92a30a435dc7398;

struct Error {
  kind @0 :Kind;
  message @1 :Text;

  enum Kind {
    notFound @0;           # no object under this key
    invalidArgument @1;    # bad key, range, size or option (the message says which)
    tooLarge @2;           # over a limit named in the message
    unavailable @3;        # metad or too many chunk servers unreachable; retry
    conflict @4;           # the object changed while this request ran; retry
    insufficientNodes @5;  # fewer live chunk servers than the layout needs
    dataLoss @6;           # too few intact shards to rebuild the bytes
    internal @7;           # a bug: please report it
    unauthenticated @8;    # no, a wrong, or a revoked access key
    permissionDenied @9;   # the key lacks the permission or prefix the call needs
    preconditionFailed @10; # a conditional write's ifAbsent/ifVersion did not hold; nothing stored
  }
}

enum Outcome {
  ok @0;        # every shard or replica landed
  accepted @1;  # durable with reduced redundancy (at least k shards of every
                # stripe, or one replica); marked dirty, the healer completes it
}

struct ObjectInfo {
  key @0 :Text;
  size @1 :UInt64;
  versionId @2 :Data;          # 16 random bytes, new for every write
  createdUnixMillis @3 :UInt64;
  layout @4 :Text;             # "replicated x3" or "rs 4+2 (1048576-byte shards)"
  dirty @5 :Bool;              # not yet at full redundancy
  stripes @6 :UInt32;
  attrs @7 :Data;              # the application's attributes, as given to put (at most 8 KiB)
}

struct NodeStatus {
  nodeId @0 :Text;
  addr @1 :Text;
  live @2 :Bool;
  capacityBytes @3 :UInt64;
  usedBytes @4 :UInt64;
  zone @5 :Text;
  lastHeartbeatAgoMillis @6 :UInt64;
}

struct GatewayStatus {
  gatewayId @0 :Text;
  version @1 :Text;
  uptimeSecs @2 :UInt64;
  nodes @3 :List(NodeStatus);
  putsOk @4 :UInt64;            # since start
  putsAccepted @5 :UInt64;
  getsDegraded @6 :UInt64;      # reads that rebuilt missing or bad shards
  checksumFailures @7 :UInt64;  # shards that failed their crc32c on read
  walReplayed @8 :UInt64;       # WAL entries completed or abandoned at start
  defaultLayout @9 :Text;
  docsColdReused @10 :UInt64;   # document updates that skipped an unchanged cold part
  readsHedged @11 :UInt64;      # stripe reads that asked one more shard after the p95
  cacheHits @12 :UInt64;        # stripes (or replicated objects) served from the read cache
  cacheMisses @13 :UInt64;
  cacheBytes @14 :UInt64;       # held now
  cacheCapacityBytes @15 :UInt64; # 0: the cache is off
  cacheEvicted @16 :UInt64;     # entries evicted from the cache's main part
  cacheRejected @17 :UInt64;    # new entries the admission filter dropped (used less often than the entry they would evict)
}

interface ByteSink {
  write @0 (chunk :Data) -> stream;
  done @1 () -> ();
}

interface PutSink {
  write @0 (chunk :Data) -> stream;
  # `attrs`: opaque attributes kept with the object (at most 8 KiB), known
  # only now to a writer that hashes what it streams (an S3 ETag).
  finish @1 (attrs :Data) -> (info :ObjectInfo, outcome :Outcome, error :Error);
}

interface Gateway {
  # Stores `data` (at most 4 MiB) under `key`, replacing any older version.
  # `attrs`: opaque attributes kept in the object's record and returned in
  # its ObjectInfo (at most 8 KiB; the S3 front keeps ETag, content type
  # and user metadata there).
  # Conditional writes: `ifAbsent` stores only if no object is under `key`;
  # a non-empty `ifVersion` only if the object's version id is that one.
  # Checked before any byte is stored and enforced by the commit's
  # compare-and-set: when it does not hold, nothing is stored and the error
  # is `preconditionFailed`. A conditional write a gateway
  # crash interrupts is abandoned by WAL replay, never completed.
  put @0 (key :Text, data :Data, attrs :Data, ifAbsent :Bool, ifVersion :Data) -> (info :ObjectInfo, outcome :Outcome, error :Error);

  # Opens a streamed put of exactly `size` bytes; the object exists once
  # `finish` answers without error. `ifAbsent`, `ifVersion` as for `put`.
  putStream @1 (key :Text, size :UInt64, ifAbsent :Bool, ifVersion :Data) -> (sink :PutSink, error :Error);

  # Bytes [offset, offset + length) of the object (length 0 = to the end),
  # at most 4 MiB. A non-empty `ifVersion` must be the object's version
  # id, else `conflict` (a reader that pieces one object from several calls
  # never mixes two versions).
  get @2 (key :Text, offset :UInt64, length :UInt64, ifVersion :Data) -> (data :Data, info :ObjectInfo, error :Error);

  # Streams bytes [offset, offset + length) (0 = to the end) into `sink` in
  # chunks of `chunkBytes` (0 = 1 MiB), then calls `sink.done`.
  # `ifVersion` as for `get`.
  getStream @3 (key :Text, offset :UInt64, length :UInt64, sink :ByteSink, chunkBytes :UInt32, ifVersion :Data) -> (info :ObjectInfo, sent :UInt64, error :Error);

  stat @4 (key :Text) -> (info :ObjectInfo, error :Error);

  delete @5 (key :Text) -> (existed :Bool, error :Error);

  # Keys starting with `prefix` after `startAfter`, in key order.
  list @6 (prefix :Text, startAfter :Text, limit :UInt32) -> (items :List(ObjectInfo), more :Bool, error :Error);

  status @7 () -> (status :GatewayStatus, error :Error);

  # Stores a JSON document (at most 4 MiB). Top-level fields named in `hot`
  # — or, when none are named, those whose JSON is at most 256 bytes — are
  # kept in the object record (replicated by metad); the rest is erasure
  # coded, unless it equals (SHA-256) the previous version's cold part,
  # whose stripes are then reused (`coldSkipped`).
  putDoc @8 (key :Text, json :Text, hot :List(Text)) -> (info :ObjectInfo, outcome :Outcome, coldSkipped :Bool, error :Error);

  # The document, equal as a JSON value to the one stored (keys sorted).
  getDoc @9 (key :Text) -> (json :Text, info :ObjectInfo, error :Error);

  # Proves who the caller is with an access key. On a TLS gateway every
  # other call of a connection fails until this succeeds (the secret only
  # travels inside TLS). Answers the key's permissions ("rwa" letters) and
  # object-key prefix.
  authenticate @10 (keyId :Text, secret :Text) -> (error :Error, permissions :Text, prefix :Text);

  # Access keys (admin): the secret is in this answer only, never stored
  # (metad keeps a salted HMAC of it).
  createKey @11 (name :Text, permissions :Text, prefix :Text) -> (keyId :Text, secret :Text, error :Error);
  listKeys @12 () -> (keys :List(KeyInfo), error :Error);
  revokeKey @13 (keyId :Text) -> (existed :Bool, error :Error);

  # Scrub progress of the live chunk servers (or the one whose id or
  # address is `node`), starting a pass first when `start` (admin).
  scrub @14 (node :Text, start :Bool, bytesPerSec :UInt64) -> (nodes :List(NodeScrub), error :Error);
}

struct KeyInfo {
  keyId @0 :Text;
  name @1 :Text;
  permissions @2 :Text;
  prefix @3 :Text;
  createdUnixMillis @4 :UInt64;
  revoked @5 :Bool;
  sealedSecret @6 :Text;   # the secret sealed with the cluster's seal key ("" = no S3 access)
}

struct NodeScrub {
  nodeId @0 :Text;
  addr @1 :Text;
  passes @2 :UInt64;
  running @3 :Bool;
  bytesVerified @4 :UInt64;
  bytesTotal @5 :UInt64;
  badFound @6 :UInt64;
  started @7 :Bool;     # a pass was started by this call
  error @8 :Text;       # non-empty when the node could not be asked
}
