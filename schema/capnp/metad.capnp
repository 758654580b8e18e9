# The Metad interface: one metadata replica (metad) seen from the network.
# Metadata is split into G raft groups by a hash of the key; a call about a
# key goes to the leader of that key's group. A replica that is not the
# leader answers `notLeader` with the leader's id and address (when known),
# and the client retries there.
#
# Errors: every call that can fail returns `error :Error`; a null `error`
# means success. Transport failures surface as Cap'n Proto exceptions.
#
# Limits (mirrored as constants in tessera-metad::limits):
#   key length         1..=1024 bytes
#   value length       <= 256 KiB
#   batch              <= 128 operations and <= 1 MiB of keys and values
#   list page          <= 10000 items
#   lease name         1..=256 bytes; holder 1..=256 bytes; ttl 100 ms..=10 min
#   raft message       <= 64 MiB (snapshot chunks are smaller)
#   WAL entry          data <= 1 MiB (a larger object logs its intent instead)
#   WAL partition      <= 256 MiB of unfinished data, then appends get `full`
#   WAL read           <= 10000 entries, <= 16 MiB
#   WAL append many    <= 256 items, <= 4 MiB of data
#   write many         <= 256 items, <= 4 MiB of keys and values

@0xd4c1f0a6e0b3a27d;

struct Error {
  kind @0 :Kind;
  message @1 :Text;
  leaderId @2 :UInt64;      # notLeader: the leader's replica id, 0 if unknown
  leaderAddr @3 :Text;      # notLeader: the leader's client address, empty if unknown

  enum Kind {
    invalidArgument @0;  # a malformed or oversized request; the message names the limit
    notLeader @1;        # retry at leaderAddr (or any replica if it is empty)
    unavailable @2;      # no quorum, shutting down, or the group is electing; retry later
    conflict @3;         # a compare-and-set precondition failed; nothing was written
    tooLarge @4;         # over a limit named in the message
    internal @5;         # a bug: please report it
    stale @6;            # a follower read could not meet the staleness bound
    full @7;             # the WAL partition holds its limit of unfinished bytes; finish entries or retry later
    unauthenticated @8;  # the connection has no node certificate and no admin access key
  }
}

struct KeyValue {
  key @0 :Data;
  value @1 :Data;
  version @2 :UInt64;   # the group's log index that last wrote this key (> 0)
}

# How a read may be served.
enum ReadMode {
  linearizable @0;   # by the leader, after confirming leadership with a quorum
  follower @1;       # by any replica whose state is at most maxStalenessMs old
}

# Makes a retried write apply once: the replica remembers the result of
# recent (client, seq) pairs and answers a retry with it. client 0 = none.
struct RequestId {
  client @0 :UInt64;
  seq @1 :UInt64;
  # Every seq of this client below this one has its answer or was given
  # up (so it is never sent again): the cluster may forget their results
  # and refuses a late copy of one. At most `seq`; 0 = not said.
  settledBelow @2 :UInt64;
}

# A write inside a batch, or alone.
struct WriteOp {
  key @0 :Data;
  # The precondition: `any` writes unconditionally; `version` requires the
  # key's current version to equal `expectedVersion` (0 = must not exist).
  condition @1 :Condition;
  expectedVersion @2 :UInt64;
  union {
    put @3 :Data;      # the new value
    delete @4 :Void;
  }
  enum Condition {
    any @0;
    version @1;
  }
}

struct WriteResult {
  version @0 :UInt64;        # the version the key now has (0 after a delete)
  previousVersion @1 :UInt64; # its version before (0 if it did not exist)
}

struct Lease {
  name @0 :Data;
  holder @1 :Data;
  epoch @2 :UInt64;          # fencing token: grows with every new grant of this name
  ttlMillis @3 :UInt32;
  expiresInMillis @4 :UInt32; # from the leader's clock when this answer was made
}

struct NodeRecord {
  nodeId @0 :Text;
  addr @1 :Text;
  capacityBytes @2 :UInt64;
  usedBytes @3 :UInt64;
  live @4 :Bool;             # its heartbeat lease has not expired
  lastHeartbeatAgoMillis @5 :UInt64;
  registeredVersion @6 :UInt64;
  zone @7 :Text;
}

struct GroupStatus {
  group @0 :UInt32;
  leaderId @1 :UInt64;       # 0 if unknown
  term @2 :UInt64;
  lastLogIndex @3 :UInt64;
  appliedIndex @4 :UInt64;
  snapshotIndex @5 :UInt64;
  voters @6 :List(UInt64);
  learners @7 :List(UInt64);
  isLeader @8 :Bool;
}

struct ReplicaInfo {
  replicaId @0 :UInt64;
  clientAddr @1 :Text;
  groups @2 :UInt32;
  version @3 :Text;
  uptimeSecs @4 :UInt64;
  peers @5 :List(Peer);
  struct Peer {
    id @0 :UInt64;
    addr @1 :Text;
  }
  walPartitions @6 :UInt32;   # WAL partitions; their raft groups follow the metadata groups
}

# One entry of a WAL partition.
struct WalEntry {
  offset @0 :UInt64;       # position in the partition, from 1, gap-free
  gateway @1 :Text;        # the gateway that owns it (changes on a claim)
  data @2 :Data;           # the request itself, or its intent for a large object
  isIntent @3 :Bool;       # data is an intent (key, version id, size, hash, stripe plan)
  finished @4 :Bool;
}

struct WalPosition {
  gateway @0 :Text;
  offset @1 :UInt64;       # the gateway's consumer position
}

interface Metad {
  # Keys and values.
  get @0 (key :Data, mode :ReadMode, maxStalenessMs :UInt32)
      -> (error :Error, found :Bool, kv :KeyValue);
  # One write (put or delete, optionally compare-and-set).
  write @1 (op :WriteOp, rid :RequestId) -> (error :Error, result :WriteResult);
  # Writes applied atomically: all preconditions hold and all writes apply,
  # or nothing does. Every key must be in the same group: use the same hash
  # tag (the part between the first `{` and the next `}`) in each key.
  batch @2 (ops :List(WriteOp), rid :RequestId) -> (error :Error, results :List(WriteResult));
  # Keys with `prefix`, after `startAfter`, in key order, from this call's
  # group (the client merges groups). `more` says the page was cut at limit.
  list @3 (group :UInt32, prefix :Data, startAfter :Data, limit :UInt32, mode :ReadMode)
      -> (error :Error, items :List(KeyValue), more :Bool);

  # Node registry: a node registers, then heartbeats before ttlMillis runs out.
  registerNode @4 (nodeId :Text, addr :Text, capacityBytes :UInt64, zone :Text, ttlMillis :UInt32)
      -> (error :Error);
  heartbeat @5 (nodeId :Text, usedBytes :UInt64, capacityBytes :UInt64)
      -> (error :Error);
  listNodes @6 () -> (error :Error, nodes :List(NodeRecord));

  # Leases with fencing epochs.
  acquireLease @7 (name :Data, holder :Data, ttlMillis :UInt32, rid :RequestId)
      -> (error :Error, granted :Bool, lease :Lease);
  renewLease @8 (name :Data, holder :Data, epoch :UInt64, ttlMillis :UInt32, rid :RequestId)
      -> (error :Error, renewed :Bool, lease :Lease);
  releaseLease @9 (name :Data, holder :Data, epoch :UInt64, rid :RequestId) -> (error :Error);
  getLease @10 (name :Data) -> (error :Error, held :Bool, lease :Lease);

  # Operators.
  status @11 () -> (error :Error, replica :ReplicaInfo, groups :List(GroupStatus));
  # Adds a replica to `group` as a learner, waits for it to catch up, then
  # makes it a voter; or removes it. Sent to the group's leader.
  addVoter @12 (group :UInt32, replicaId :UInt64, addr :Text) -> (error :Error);
  removeVoter @13 (group :UInt32, replicaId :UInt64) -> (error :Error);
  # Takes a snapshot of every group this replica hosts and purges the log.
  snapshot @14 () -> (error :Error);

  # Replica to replica: one raft message of `group`, bincode-encoded by
  # tessera-metad (kind: 0 append, 1 vote, 2 install snapshot chunk).
  raft @15 (group :UInt32, kind :UInt8, payload :Data) -> (payload :Data);

  # The write-ahead log: P partitions (raft groups of their own). An append
  # is acknowledged once a quorum of replicas has it durably.
  walAppend @16 (partition :UInt32, gateway :Text, data :Data, isIntent :Bool, rid :RequestId)
      -> (error :Error, offset :UInt64);
  # Unfinished entries from offset `from` (at most `limit` entries and about
  # `maxBytes`); `next` is where to continue. A finished entry is dropped when
  # it is finished, so only a partition written by an older version can still
  # hold finished ones (flagged; `unfinishedOnly` skips them).
  walRead @17 (partition :UInt32, from :UInt64, limit :UInt32, maxBytes :UInt32, unfinishedOnly :Bool)
      -> (error :Error, entries :List(WalEntry), next :UInt64, truncatedBefore :UInt64);
  # Marks entries finished and drops them; `truncatedBefore` is the lowest
  # unfinished offset (every offset below it is finished).
  walFinish @18 (partition :UInt32, offsets :List(UInt64), rid :RequestId)
      -> (error :Error, truncatedBefore :UInt64);
  # Moves every unfinished entry of `fromGateway` to `toGateway` (a gateway
  # that is gone); returns how many moved.
  walClaim @19 (partition :UInt32, fromGateway :Text, toGateway :Text, rid :RequestId)
      -> (error :Error, claimed :UInt64);
  # Records a gateway's consumer position.
  walSetPosition @20 (partition :UInt32, gateway :Text, offset :UInt64) -> (error :Error);
  walStatus @21 (partition :UInt32)
      -> (error :Error, nextOffset :UInt64, truncatedBefore :UInt64, unfinished :UInt64,
          unfinishedBytes :UInt64, positions :List(WalPosition), partitions :UInt32);

  # A connection without a node certificate (an operator's CLI) proves an
  # admin access key here; every other call fails until it does. Raft
  # traffic always needs a node certificate.
  authenticate @22 (keyId :Text, secret :Text) -> (error :Error);

  # Several appends to one partition in one call (a client sends the
  # appends its callers make while an earlier call is out): each item is
  # appended as by walAppend, under its own request id, and `results`
  # answers the items in order. A call-wide `error` (notLeader,
  # unavailable, a malformed call) means the call must be retried as a
  # whole; items it may have appended are not appended again (their
  # request ids). At most 256 items and 4 MiB of data.
  walAppendMany @23 (partition :UInt32, items :List(WalAppendItem))
      -> (error :Error, results :List(WalAppendResult));

  # Several single-key writes in one call (a client sends the writes its
  # callers make while an earlier call to the group is out): each item is
  # applied as by `write`, under its own request id, and `results` answers
  # them in order (a failed precondition is that item's `conflict`). A
  # call-wide `error` means the call must be retried as a whole. At most
  # 256 items and 4 MiB of keys and values.
  writeMany @24 (items :List(WriteItem)) -> (error :Error, results :List(WriteItemResult));
}

struct WriteItem {
  op @0 :WriteOp;
  rid @1 :RequestId;
}

struct WriteItemResult {
  error @0 :Error;      # null: written
  result @1 :WriteResult;
}

struct WalAppendItem {
  gateway @0 :Text;
  data @1 :Data;
  isIntent @2 :Bool;
  rid @3 :RequestId;
}

struct WalAppendResult {
  error @0 :Error;      # null: appended at `offset`
  offset @1 :UInt64;
}
