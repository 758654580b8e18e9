//! The write and read paths of DESIGN.md ("The data path").
//!
//! Write: 1) the WAL entry (intent, plus the bytes for small objects) is
//! appended before any chunk server sees a byte; 2) shards (or replicas) are
//! placed and written in parallel, each stripe as soon as it is full; 3) the
//! record is committed in metad with a compare-and-set on its version;
//! 4) the answer is `ok`, or `accepted` when some shards did not land but
//! at least k of every stripe (one replica) did — the record is then dirty
//! and its WAL entry stays unfinished for the healer; 5) a clean write
//! finishes its WAL entry. A replaced or deleted version's shards are
//! deleted after the commit (a failure leaves garbage for the healer, never
//! a dangling record).
//!
//! Read: the record (linearizable), then replicas fastest first or the k
//! data shards of each stripe in parallel; a missing or corrupt shard makes
//! the stripe read a parity shard and rebuild (counted as degraded; a
//! checksum failure is counted for repair), and a stripe still incomplete
//! after the p95 of recent shard reads asks one more parity shard (hedged)
//! and uses the first k that arrive. A stripe read whole or written (unless
//! writes are configured not to) is kept in the read cache ([`crate::cache`], keyed by the immutable shards'
//! version), and a later read of it after the record's read is served from
//! there.
//!
//! Invariant: a record is only committed after every stripe it names has
//! at least k shards (one replica) durable on chunk servers.

use crate::bridge::MetaBridge;
use crate::cache::{StripeCache, StripeData, REPLICATED_STRIPE};
use crate::codec::{codec_for, Codec};
use crate::error::{Error, Result};
use crate::limits::*;
use crate::meta::*;
use crate::metrics::{write_stage, WriteStage};
use crate::nodes::Nodes;
use crate::placement::{place, rank, Candidate};
use crate::warm::{WarmBuffers, WARM_READY_BYTES_MAX};
use futures::future::join_all;
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tessera_metad::client::Consistency;

/// The erasure code of the keys under a prefix (a bucket, in a flat
/// namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub prefix: String,
    pub k: u8,
    pub m: u8,
    pub codec: CodecId,
}

impl Pool {
    /// Parses `PREFIX=K+M` or `PREFIX=K+M:CODEC` (`logs/=8+3:cauchy256`).
    pub fn parse(s: &str) -> Result<Pool> {
        let bad = || {
            Error::Invalid(format!(
                "pool {s:?}: expected PREFIX=K+M or PREFIX=K+M:CODEC, e.g. logs/=8+3:cauchy256"
            ))
        };
        let (prefix, rest) = s.split_once('=').ok_or_else(bad)?;
        let (km, codec) = match rest.split_once(':') {
            Some((km, c)) => (km, CodecId::parse(c).ok_or_else(bad)?),
            None => (rest, CodecId::Cauchy256),
        };
        let (k, m) = km.split_once('+').ok_or_else(bad)?;
        Ok(Pool {
            prefix: prefix.to_string(),
            k: k.trim().parse().map_err(|_| bad())?,
            m: m.trim().parse().map_err(|_| bad())?,
            codec,
        })
    }
}

/// The gateway's settings for new objects.
#[derive(Debug, Clone)]
pub struct ObjectsConfig {
    /// Names this gateway's WAL entries (replay takes its own).
    pub gateway_id: String,
    pub k: u8,
    pub m: u8,
    pub shard_bytes: u32,
    /// Objects up to this size are replicated ×3.
    pub inline_max: u64,
    /// The erasure code of new objects (each record names its own).
    pub codec: CodecId,
    /// Other codes for keys under given prefixes (the longest match wins).
    pub pools: Vec<Pool>,
    /// TLS to chunk servers (with the node certificate); `None` = plaintext.
    pub chunk_tls: Option<tessera_tls::Connector>,
    /// This machine's local socket directory: chunk servers on this
    /// machine that listen there are reached without TCP and TLS.
    pub local_socket_dir: Option<std::path::PathBuf>,
    /// The cluster's seal key: keys made here carry their sealed secret
    /// and can sign S3 requests. `None`: new keys have no S3 access.
    pub seal_key: Option<std::sync::Arc<tessera_auth::SealKey>>,
    /// Bytes the read cache may hold (0: off).
    pub cache_bytes: u64,
    /// Whether writes fill the read cache too (the default: an object just
    /// written is often read next, and in the whole-store bench every GET
    /// then hits; keeping the buffers costs 1 MiB PUTs 10-15 % while the
    /// cache grows), or only reads do.
    pub cache_writes: bool,
}

impl Default for ObjectsConfig {
    fn default() -> Self {
        ObjectsConfig {
            gateway_id: "gateway".into(),
            k: DATA_SHARDS_DEFAULT,
            m: PARITY_SHARDS_DEFAULT,
            shard_bytes: SHARD_BYTES_DEFAULT,
            inline_max: INLINE_MAX_BYTES_DEFAULT,
            codec: CodecId::Cauchy256,
            pools: Vec::new(),
            chunk_tls: None,
            local_socket_dir: None,
            seal_key: None,
            cache_bytes: 0,
            cache_writes: true,
        }
    }
}

impl ObjectsConfig {
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 || self.k > DATA_SHARDS_MAX || self.m == 0 || self.m > PARITY_SHARDS_MAX {
            return Err(Error::Invalid(format!(
                "erasure code {}+{}: k must be 1..={DATA_SHARDS_MAX} and m 1..={PARITY_SHARDS_MAX}",
                self.k, self.m
            )));
        }
        if !(SHARD_BYTES_MIN..=SHARD_BYTES_MAX).contains(&self.shard_bytes)
            || self.shard_bytes % SHARD_ALIGN_BYTES != 0
        {
            return Err(Error::Invalid(format!(
                "shard size {} must be {SHARD_BYTES_MIN}..={SHARD_BYTES_MAX} bytes and a multiple of {SHARD_ALIGN_BYTES}",
                self.shard_bytes
            )));
        }
        for p in &self.pools {
            if p.k == 0 || p.k > DATA_SHARDS_MAX || p.m == 0 || p.m > PARITY_SHARDS_MAX {
                return Err(Error::Invalid(format!(
                    "pool {:?}: erasure code {}+{}: k must be 1..={DATA_SHARDS_MAX} and m 1..={PARITY_SHARDS_MAX}",
                    p.prefix, p.k, p.m
                )));
            }
        }
        if self.gateway_id.is_empty() || self.gateway_id.len() > 256 {
            return Err(Error::Invalid(
                "the gateway id must be 1..=256 bytes".into(),
            ));
        }
        Ok(())
    }
}

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Accepted,
}

/// Counters since start.
#[derive(Default)]
pub struct Stats {
    pub puts_ok: Cell<u64>,
    pub puts_accepted: Cell<u64>,
    pub gets_degraded: Cell<u64>,
    pub checksum_failures: Cell<u64>,
    pub wal_replayed: Cell<u64>,
    /// Document updates whose cold part was unchanged (its write skipped).
    pub docs_cold_reused: Cell<u64>,
    /// Stripe reads that asked for one more shard after the p95 latency.
    pub reads_hedged: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Checks an attribute blob: at most [`OBJECT_ATTRS_MAX_BYTES`].
pub fn check_attrs(attrs: &[u8]) -> Result<()> {
    if attrs.len() > OBJECT_ATTRS_MAX_BYTES {
        return Err(Error::TooLarge(format!(
            "an object's attributes may be at most {OBJECT_ATTRS_MAX_BYTES} bytes; these are {}",
            attrs.len()
        )));
    }
    Ok(())
}

/// Checks a key: 1..=[`KEY_LEN_MAX_BYTES`] bytes, no NUL.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > KEY_LEN_MAX_BYTES {
        return Err(Error::Invalid(format!(
            "a key must be 1..={KEY_LEN_MAX_BYTES} bytes; this one is {}",
            key.len()
        )));
    }
    if key.contains('\0') {
        return Err(Error::Invalid("a key must not contain NUL".into()));
    }
    Ok(())
}

impl ObjectsConfig {
    /// (k, m, codec) for `key`: the longest matching pool, else the default.
    pub fn code_for(&self, key: &str) -> (u8, u8, CodecId) {
        self.pools
            .iter()
            .filter(|p| key.starts_with(&p.prefix))
            .max_by_key(|p| p.prefix.len())
            .map_or((self.k, self.m, self.codec), |p| (p.k, p.m, p.codec))
    }
}

pub struct Objects {
    pub cfg: ObjectsConfig,
    pub nodes: Rc<Nodes>,
    pub bridge: MetaBridge,
    pub stats: Stats,
    pub started: Instant,
    /// Recently read or written stripes (see [`crate::cache`]).
    pub cache: StripeCache,
    /// Stripe buffers faulted in ahead of need (see [`crate::warm`]); on
    /// whenever written stripes go into the read cache (the default), also
    /// once the cache is full.
    pub warm: WarmBuffers,
    /// WAL entries to mark finished, gathered by [`Objects::wal_finish`].
    wal_done: std::cell::RefCell<Vec<(u32, u64)>>,
    wal_finisher_running: Cell<bool>,
}

/// Where a stripe's shards landed: the node id of each shard (None: missing).
type Landed = Vec<Option<String>>;

/// Bytes of an object handed to a reader without copying: parts of the
/// buffers shards arrived in (or of a cached stripe).
pub struct Piece {
    bufs: StripeData,
    ranges: Vec<std::ops::Range<usize>>,
}

impl Piece {
    /// The bytes, in order.
    pub fn slices(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs
            .iter()
            .zip(&self.ranges)
            .map(|(b, r)| &b[r.clone()])
    }

    pub fn len(&self) -> usize {
        self.ranges.iter().map(|r| r.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The part of `bufs` (concatenated) in `[a, b)`.
    fn of(bufs: StripeData, a: usize, b: usize) -> Piece {
        let mut ranges = Vec::with_capacity(bufs.len());
        let mut base = 0;
        for buf in bufs.iter() {
            let (s, e) = (a.max(base), b.min(base + buf.len()));
            ranges.push(if s < e { s - base..e - base } else { 0..0 });
            base += buf.len();
        }
        Piece { bufs, ranges }
    }
}

/// Owned buffers as one stripe's data (no copy).
fn stripe_data(bufs: Vec<Vec<u8>>) -> StripeData {
    Rc::new(bufs.into_iter().map(Rc::new).collect())
}

/// A write's precondition (the client library's type): checked before any
/// shard is written, then enforced by the commit's compare-and-set, so two
/// writers with the same precondition never both succeed.
pub use tessera_rpc::PutIf;

/// Whether the current record (`None`: absent) lets a write under `cond`
/// go on.
fn put_if_holds(cond: &PutIf, cur: Option<&ObjectMeta>) -> bool {
    match (cond, cur) {
        (PutIf::Always, _) | (PutIf::Absent, None) => true,
        (PutIf::Version(v), Some(c)) => &c.version_id == v,
        _ => false,
    }
}

fn precondition_failed(key: &str, cond: &PutIf) -> Error {
    Error::PreconditionFailed(match cond {
        PutIf::Absent => format!(
            "precondition failed: an object exists under {key:?}, so this create-only write stored nothing; \
             delete it first, or write without the absent condition"
        ),
        _ => format!(
            "precondition failed: the object under {key:?} is not the version named (it was replaced, \
             deleted or never existed), so nothing was stored; read its current version and retry with that"
        ),
    })
}

impl Objects {
    pub fn new(cfg: ObjectsConfig, bridge: MetaBridge) -> Result<Rc<Self>> {
        cfg.validate()?;
        Ok(Rc::new(Objects {
            nodes: Nodes::new(
                bridge.clone(),
                cfg.chunk_tls.clone(),
                cfg.local_socket_dir.clone(),
            ),
            cache: StripeCache::new(cfg.cache_bytes),
            warm: WarmBuffers::new(if cfg.cache_bytes > 0 && cfg.cache_writes {
                WARM_READY_BYTES_MAX
            } else {
                0
            }),
            cfg,
            bridge,
            stats: Stats::default(),
            started: Instant::now(),
            wal_done: Default::default(),
            wal_finisher_running: Cell::new(false),
        }))
    }

    /// The WAL partition this gateway appends to: one per gateway (by its
    /// id), not one per key, so the appends it makes at the same time share
    /// raft entries. Spread by key hash, 4 KiB appends at 64 in flight did
    /// ~0.6× of one partition's rate (docs/BENCHMARKS.md, "random
    /// partitions, and where a round's time goes"). Gateways spread over the
    /// partitions; replay and the healer read every partition anyway.
    fn wal_partition(&self) -> u32 {
        home_partition(&self.cfg.gateway_id, self.bridge.wal_partitions())
    }

    /// Appends `intent` to this gateway's WAL partition and
    /// returns where it landed (partition, offset): step 1 of every write,
    /// timed as its [`WriteStage::Wal`].
    async fn append_intent(&self, intent: &WalIntent) -> Result<(u32, u64)> {
        let p = self.wal_partition();
        let gw = self.cfg.gateway_id.clone();
        let bytes = intent.encode();
        let started = std::time::Instant::now();
        let off = self
            .bridge
            .call("logging the write in the WAL", move |c| async move {
                c.wal_append(p, &gw, &bytes, true).await
            })
            .await;
        write_stage(WriteStage::Wal, started);
        Ok((p, off?))
    }

    /// Starts a write of `size` bytes under `key`: checks, takes the live
    /// nodes and, for an erasure-coded object, logs the intent in the WAL.
    pub async fn begin_put(self: &Rc<Self>, key: &str, size: u64) -> Result<PutWriter> {
        self.begin(key, size, None).await
    }

    /// A write that happens only if `cond` holds: checked now (before any
    /// byte is stored) and again, atomically, when it commits.
    pub async fn begin_put_if(
        self: &Rc<Self>,
        key: &str,
        size: u64,
        cond: PutIf,
    ) -> Result<PutWriter> {
        if cond != PutIf::Always {
            check_key(key)?;
            let cur = self.record(key).await?;
            if !put_if_holds(&cond, cur.as_ref().map(|c| &c.0)) {
                return Err(precondition_failed(key, &cond));
            }
        }
        let mut w = self.begin(key, size, None).await?;
        w.cond = cond;
        Ok(w)
    }

    /// `replay`: the version id and creation time of a WAL entry being
    /// completed (no new WAL entry is logged).
    async fn begin(
        self: &Rc<Self>,
        key: &str,
        size: u64,
        replay: Option<(Vec<u8>, u64)>,
    ) -> Result<PutWriter> {
        self.begin_with(key, size, replay, false).await
    }

    /// `part_of_doc`: the cold part of a document (always erasure coded;
    /// its WAL entry is the document's, logged by the caller).
    async fn begin_with(
        self: &Rc<Self>,
        key: &str,
        size: u64,
        replay: Option<(Vec<u8>, u64)>,
        part_of_doc: bool,
    ) -> Result<PutWriter> {
        check_key(key)?;
        if size > OBJECT_SIZE_MAX_BYTES {
            return Err(Error::TooLarge(format!(
                "an object may be at most {OBJECT_SIZE_MAX_BYTES} bytes; this one is {size}"
            )));
        }
        self.nodes.refresh_if_stale().await?;
        let candidates = self.nodes.candidates();
        let replaying = replay.is_some() || part_of_doc;
        let (version_id, created) =
            replay.unwrap_or_else(|| (rand::random::<[u8; 16]>().to_vec(), now_millis()));
        let erasure = size > self.cfg.inline_max || part_of_doc;
        let plan = if erasure {
            let (k, m, codec) = self.cfg.code_for(key);
            let sb = self.cfg.shard_bytes;
            let registered = self.nodes.all().len();
            if registered < (k + m) as usize {
                // Not an outage (those are written with reduced redundancy
                // and healed) but a layout this cluster can never hold.
                return Err(Error::InsufficientNodes(format!(
                    "erasure code {k}+{m} puts every stripe on {} different chunk servers, and this \
                     cluster has {registered} registered: add chunk servers or run the gateway with \
                     a smaller --k/--m",
                    k + m
                )));
            }
            if candidates.len() < k as usize {
                return Err(Error::InsufficientNodes(format!(
                    "erasure code {k}+{m} needs at least {k} live chunk servers (ideally {}); {} are live",
                    k + m,
                    candidates.len()
                )));
            }
            let stripes = stripe_count(size, k, sb);
            if stripes > STRIPES_MAX {
                return Err(Error::TooLarge(format!(
                    "an object of {size} bytes needs {stripes} stripes of {} bytes; a record holds at most \
                     {STRIPES_MAX}: use a pool with larger shards",
                    k as u64 * sb as u64
                )));
            }
            Plan::Erasure {
                codec,
                k,
                m,
                shard_bytes: sb,
            }
        } else {
            if candidates.is_empty() {
                return Err(Error::InsufficientNodes(
                    "no chunk server is live in the registry; start one (tessera dev starts six)"
                        .into(),
                ));
            }
            Plan::Replicated
        };
        let mut w = PutWriter {
            objects: self.clone(),
            key: key.to_string(),
            size,
            version_id,
            created,
            candidates,
            plan,
            received: 0,
            buf: Vec::new(),
            next_stripe: 0,
            inflight: VecDeque::new(),
            landed: Vec::new(),
            wal: None,
            replaying,
            attrs: Vec::new(),
            cond: PutIf::Always,
        };
        if erasure && !replaying {
            w.log_intent().await?;
        }
        Ok(w)
    }

    /// Writes a whole object held in memory.
    pub async fn put(self: &Rc<Self>, key: &str, data: &[u8]) -> Result<(ObjectMeta, Outcome)> {
        self.put_with_attrs(key, data, Vec::new()).await
    }

    /// Writes a whole object held in memory with the application's
    /// attributes (see [`PutWriter::set_attrs`]).
    pub async fn put_with_attrs(
        self: &Rc<Self>,
        key: &str,
        data: &[u8],
        attrs: Vec<u8>,
    ) -> Result<(ObjectMeta, Outcome)> {
        self.put_if(key, data, attrs, PutIf::Always).await
    }

    /// [`Objects::put_with_attrs`] only if `cond` holds (see [`PutIf`]).
    pub async fn put_if(
        self: &Rc<Self>,
        key: &str,
        data: &[u8],
        attrs: Vec<u8>,
        cond: PutIf,
    ) -> Result<(ObjectMeta, Outcome)> {
        check_attrs(&attrs)?;
        let mut w = self.begin_put_if(key, data.len() as u64, cond).await?;
        w.set_attrs(attrs)?;
        w.write(data).await?;
        w.finish().await
    }

    /// The record of `key` (a linearizable read).
    pub async fn stat(&self, key: &str) -> Result<ObjectMeta> {
        check_key(key)?;
        Ok(self.record(key).await?.ok_or_else(|| not_found(key))?.0)
    }

    async fn record(&self, key: &str) -> Result<Option<(ObjectMeta, u64)>> {
        let k = object_key(key);
        let v = self
            .bridge
            .call("reading the object record", move |c| async move {
                c.get(&k, Consistency::Linearizable).await
            })
            .await?;
        match v {
            None => Ok(None),
            Some(v) => Ok(Some((ObjectMeta::decode(&v.value)?, v.version))),
        }
    }

    /// Commits `meta` under `key`, replacing whatever is there; returns the
    /// replaced record. With `only_if_newer`, a record created after `meta`
    /// wins and `meta` is not committed (WAL replay): returns Err(Conflict).
    async fn commit(
        &self,
        key: &str,
        meta: &ObjectMeta,
        only_if_newer: bool,
        cond: &PutIf,
    ) -> Result<Option<ObjectMeta>> {
        let value = meta.encode();
        // Most writes create a key: try that first, without reading (one
        // raft write instead of a linearizable read and a write). A key
        // that exists answers `conflict`, and the loop below reads it.
        if !only_if_newer && !matches!(cond, PutIf::Version(_)) {
            let (k, v) = (object_key(key), value.clone());
            let r = self
                .bridge
                .call("committing the object record", move |c| async move {
                    c.put_if(&k, &v, 0).await
                })
                .await;
            match r {
                Ok(_) => return Ok(None),
                Err(Error::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        for _ in 0..COMMIT_ATTEMPTS_MAX {
            let cur = self.record(key).await?;
            if let Some((c, _)) = &cur {
                if c.version_id == meta.version_id {
                    return Ok(None);
                }
                if only_if_newer && c.created_unix_millis > meta.created_unix_millis {
                    return Err(Error::Conflict(format!(
                        "{key} has a newer version than the one being replayed"
                    )));
                }
            }
            // A conditional write is judged on the record its
            // compare-and-set below names (a conflict re-reads and judges
            // again); one whose winner is this very write (an answer lost,
            // the call retried) returned above.
            if !put_if_holds(cond, cur.as_ref().map(|c| &c.0)) {
                return Err(precondition_failed(key, cond));
            }
            let expected = cur.as_ref().map_or(0, |c| c.1);
            let (k, v) = (object_key(key), value.clone());
            let r = self
                .bridge
                .call("committing the object record", move |c| async move {
                    c.put_if(&k, &v, expected).await
                })
                .await;
            match r {
                Ok(_) => return Ok(cur.map(|c| c.0)),
                Err(Error::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(format!(
            "{key} changed {COMMIT_ATTEMPTS_MAX} times while this write committed; retry"
        )))
    }

    /// Commits `meta`, deletes the replaced version's shards (unless the
    /// new record still uses them), finishes the WAL entry of a clean write.
    async fn commit_and_finish(
        self: &Rc<Self>,
        key: &str,
        meta: ObjectMeta,
        replay: bool,
        wal: Option<(u32, u64)>,
        cond: &PutIf,
    ) -> Result<(ObjectMeta, Outcome)> {
        let started = std::time::Instant::now();
        let committed = self.commit(key, &meta, replay, cond).await;
        write_stage(WriteStage::Commit, started);
        let replaced = match committed {
            Ok(r) => r,
            // Lost to another writer (or raced past the commit attempts):
            // not committed, so nothing of this write stays.
            Err(e @ (Error::PreconditionFailed(_) | Error::Conflict(_)))
                if *cond != PutIf::Always =>
            {
                self.delete_shards_later(meta);
                if let Some((p, off)) = wal {
                    self.wal_finish(p, off).await;
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if let Some(old) = replaced {
            if old.shards_version() != meta.shards_version() {
                self.delete_shards_later(old);
            }
        }
        let dirty = meta.dirty;
        if !dirty {
            if let Some((p, off)) = wal {
                self.wal_finish(p, off).await;
            }
            bump(&self.stats.puts_ok);
        } else {
            bump(&self.stats.puts_accepted);
        }
        Ok((
            meta,
            if dirty {
                Outcome::Accepted
            } else {
                Outcome::Ok
            },
        ))
    }

    /// Stores a JSON document: top-level fields named in `hot` (or, when
    /// none are named, those whose JSON is at most [`HOT_FIELD_MAX_BYTES`])
    /// go in the record, the rest is erasure coded — unless it is the same
    /// (by SHA-256) as the current version's cold part, whose stripes are
    /// then reused. Returns the record, the outcome and whether the cold
    /// write was skipped.
    pub async fn put_doc(
        self: &Rc<Self>,
        key: &str,
        json: &str,
        hot: &[String],
    ) -> Result<(ObjectMeta, Outcome, bool)> {
        self.put_doc_inner(key, json, hot, None).await
    }

    async fn put_doc_inner(
        self: &Rc<Self>,
        key: &str,
        json: &str,
        hot: &[String],
        replay: Option<(Vec<u8>, u64)>,
    ) -> Result<(ObjectMeta, Outcome, bool)> {
        check_key(key)?;
        if json.len() > DOC_JSON_MAX_BYTES {
            return Err(Error::TooLarge(format!(
                "a document may be at most {DOC_JSON_MAX_BYTES} bytes of JSON; this one is {}",
                json.len()
            )));
        }
        let split = crate::doc::split(json, hot)?;
        self.nodes.refresh_if_stale().await?;
        let candidates = self.nodes.candidates();
        let replaying = replay.is_some();
        let (version_id, created) =
            replay.unwrap_or_else(|| (rand::random::<[u8; 16]>().to_vec(), now_millis()));
        // 1. The WAL entry, before any chunk server sees a byte.
        let mut wal = None;
        if !replaying {
            let has_payload = json.len() as u64 <= WAL_PAYLOAD_MAX_BYTES;
            let intent = WalIntent {
                key: key.to_string(),
                version_id: version_id.clone(),
                size: split.cold.len() as u64,
                created_unix_millis: created,
                candidates: candidates.iter().map(|c| c.node_id.clone()).collect(),
                erasure: {
                    let (k, m, _) = self.cfg.code_for(key);
                    Some((k, m, self.cfg.shard_bytes))
                },
                payload: if has_payload {
                    json.as_bytes().to_vec()
                } else {
                    Vec::new()
                },
                has_payload,
                doc_hot: Some(hot.to_vec()),
                attrs: Vec::new(),
            };
            wal = Some(self.append_intent(&intent).await?);
        }
        // 2. Skip the cold write when the current version has the same cold part.
        let current = self.record(key).await?.map(|c| c.0);
        let reuse = current.as_ref().filter(|c| {
            c.doc.as_ref().is_some_and(|d| {
                !split.cold.is_empty() && d.cold_sha256 == split.cold_sha256 && !c.dirty
            })
        });
        let (layout, nodes, dirty, cold_version, skipped) = match reuse {
            Some(c) => {
                bump(&self.stats.docs_cold_reused);
                (
                    c.layout.clone(),
                    c.nodes.clone(),
                    false,
                    c.shards_version().to_vec(),
                    true,
                )
            }
            None if split.cold.is_empty() => (
                Layout::Replicated {
                    replicas: Vec::new(),
                },
                Vec::new(),
                false,
                version_id.clone(),
                false,
            ),
            None => {
                // 3. The cold part, erasure coded.
                let mut w = self
                    .begin_with(
                        key,
                        split.cold.len() as u64,
                        Some((version_id.clone(), created)),
                        true,
                    )
                    .await?;
                w.write(&split.cold).await?;
                let (layout, nodes, dirty) = w.land().await?;
                (layout, nodes, dirty, version_id.clone(), false)
            }
        };
        let meta = ObjectMeta {
            version_id,
            size: split.cold.len() as u64,
            created_unix_millis: created,
            dirty,
            layout,
            nodes,
            doc: Some(DocMeta {
                hot_json: split.hot,
                cold_sha256: split.cold_sha256,
                cold_shards_version: cold_version,
                whole_cold: split.whole_cold,
            }),
            attrs: Vec::new(),
        };
        // 4. Commit, 5. answer.
        let (meta, outcome) = self
            .commit_and_finish(key, meta, replaying, wal, &PutIf::Always)
            .await?;
        Ok((meta, outcome, skipped))
    }

    /// Reads a JSON document back: its hot part from the record, its cold
    /// part from its stripes, merged.
    pub async fn get_doc(&self, key: &str) -> Result<(ObjectMeta, String)> {
        let meta = self.stat(key).await?;
        let Some(d) = &meta.doc else {
            return Err(Error::Invalid(format!(
                "{key:?} holds a blob, not a JSON document: read it with get"
            )));
        };
        let cold = std::cell::RefCell::new(Vec::with_capacity(meta.size as usize));
        self.read(&meta, 0, meta.size, |piece| {
            let mut c = cold.borrow_mut();
            for sl in piece.slices() {
                c.extend_from_slice(sl);
            }
            async { Ok(()) }
        })
        .await?;
        let json = crate::doc::merge(&d.hot_json, &cold.into_inner(), d.whole_cold)?;
        Ok((meta, json))
    }

    /// Marks a WAL entry finished. Finishes are gathered for
    /// [`WAL_FINISH_GATHER_MILLIS`] and sent as one call per partition: the
    /// write has been answered already, and an entry left unfinished by a
    /// crash is finished by replay (its object is committed and clean).
    async fn wal_finish(self: &Rc<Self>, partition: u32, offset: u64) {
        self.wal_done.borrow_mut().push((partition, offset));
        if self.wal_finisher_running.replace(true) {
            return;
        }
        let me = self.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(std::time::Duration::from_millis(WAL_FINISH_GATHER_MILLIS))
                    .await;
                let mut done = std::mem::take(&mut *me.wal_done.borrow_mut());
                if done.is_empty() {
                    me.wal_finisher_running.set(false);
                    return;
                }
                done.sort_unstable();
                for p in 0..me.bridge.wal_partitions() {
                    let offs: Vec<u64> = done.iter().filter(|d| d.0 == p).map(|d| d.1).collect();
                    for chunk in offs.chunks(WAL_FINISH_BATCH_MAX) {
                        let chunk = chunk.to_vec();
                        let n = chunk.len();
                        let r = me
                            .bridge
                            .call("finishing WAL entries", move |c| async move {
                                c.wal_finish(p, &chunk).await
                            })
                            .await;
                        if let Err(e) = r {
                            // Replay finishes them (committed and clean).
                            tracing::warn!(error = %e, partition = p, entries = n, "WAL entries not finished");
                        }
                    }
                }
            }
        })
        .detach();
    }

    /// Deletes `key`; false when there was nothing.
    pub async fn delete(self: &Rc<Self>, key: &str) -> Result<bool> {
        check_key(key)?;
        for _ in 0..COMMIT_ATTEMPTS_MAX {
            let Some((meta, version)) = self.record(key).await? else {
                return Ok(false);
            };
            let k = object_key(key);
            let r = self
                .bridge
                .call("deleting the object record", move |c| async move {
                    c.delete(&k, Some(version)).await
                })
                .await;
            match r {
                Ok(_) => {
                    self.delete_shards_later(meta);
                    return Ok(true);
                }
                Err(Error::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(format!(
            "{key} kept changing while being deleted; retry"
        )))
    }

    /// Deletes a version's shards in the background (best effort: what
    /// fails stays as garbage for the healer; no record refers to it).
    fn delete_shards_later(self: &Rc<Self>, meta: ObjectMeta) {
        let stripes = match &meta.layout {
            Layout::Replicated { .. } => 0,
            Layout::Erasure { stripes, .. } => stripes.len() as u32,
        };
        self.cache.forget_version(meta.shards_version(), stripes);
        let me = self.clone();
        glommio::spawn_local(async move {
            let mut jobs = Vec::new();
            for (stripe, nodes) in shard_nodes(&meta).into_iter().enumerate() {
                for (i, n) in nodes.into_iter().enumerate() {
                    if let Some(n) = n {
                        let id = match &meta.layout {
                            Layout::Replicated { .. } => shard_id(meta.shards_version(), 0, 0),
                            Layout::Erasure { .. } => {
                                shard_id(meta.shards_version(), stripe as u32, i as u8)
                            }
                        };
                        jobs.push((n, id));
                    }
                }
            }
            me.delete_shards(jobs).await;
        })
        .detach();
    }

    /// Deletes each (node, shard id), at most [`DELETES_IN_FLIGHT_MAX`] at
    /// once, best effort: what fails stays as garbage for the healer.
    async fn delete_shards(&self, jobs: Vec<(String, Vec<u8>)>) {
        use futures::StreamExt;
        futures::stream::iter(jobs)
            .for_each_concurrent(DELETES_IN_FLIGHT_MAX, |(n, id)| async move {
                if let Ok(c) = self.nodes.client(&n).await {
                    let _ = c.delete(&id).await;
                }
            })
            .await;
    }

    /// Lists records whose key starts with `prefix`, after `start_after`.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: &str,
        limit: u32,
    ) -> Result<(Vec<(String, ObjectMeta)>, bool)> {
        if limit == 0 || limit > LIST_LIMIT_MAX {
            return Err(Error::Invalid(format!(
                "limit must be 1..={LIST_LIMIT_MAX}, got {limit}"
            )));
        }
        if prefix.len() > KEY_LEN_MAX_BYTES || start_after.len() > KEY_LEN_MAX_BYTES {
            return Err(Error::Invalid(format!(
                "prefix and startAfter must be at most {KEY_LEN_MAX_BYTES} bytes"
            )));
        }
        let p = object_key(prefix);
        let s = if start_after.is_empty() {
            Vec::new()
        } else {
            object_key(start_after)
        };
        let (items, more) = self
            .bridge
            .call("listing objects", move |c| async move {
                c.list(&p, &s, limit).await
            })
            .await?;
        let mut out = Vec::with_capacity(items.len());
        for (k, v) in items {
            let key = String::from_utf8_lossy(&k[OBJECT_KEY_PREFIX.len()..]).into_owned();
            out.push((key, ObjectMeta::decode(&v.value)?));
        }
        Ok((out, more))
    }

    /// Reads bytes `[offset, offset + len)` of the object `meta` describes,
    /// one stripe at a time, handing each piece to `out`.
    pub async fn read<F, Fut>(
        &self,
        meta: &ObjectMeta,
        offset: u64,
        len: u64,
        mut out: F,
    ) -> Result<()>
    where
        F: FnMut(Piece) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        match &meta.layout {
            Layout::Replicated { replicas } => {
                let version = meta.shards_version();
                let data = match self.cache.get(version, REPLICATED_STRIPE) {
                    Some(d) => d,
                    None => {
                        let d = stripe_data(vec![self.read_replicated(meta, replicas).await?]);
                        self.cache
                            .insert_read(version, REPLICATED_STRIPE, d.clone());
                        d
                    }
                };
                let len = data.iter().map(|b| b.len() as u64).sum::<u64>();
                let (a, b) = (offset as usize, end.min(len) as usize);
                out(Piece::of(data, a, b)).await
            }
            Layout::Erasure {
                codec,
                k,
                m,
                shard_bytes,
                stripes,
            } => {
                let stripe_bytes = *k as u64 * *shard_bytes as u64;
                let first = offset / stripe_bytes;
                let last = (end - 1) / stripe_bytes;
                for s in first..=last {
                    let base = s * stripe_bytes;
                    let (stripe_len, shard_len) = stripe_geometry(meta.size, *k, *shard_bytes, s);
                    let a = offset.max(base) - base;
                    let b = end.min(base + stripe_len) - base;
                    if let Some(d) = self.cache.get(meta.shards_version(), s as u32) {
                        out(Piece::of(d, a as usize, b as usize)).await?;
                        continue;
                    }
                    if a > 0 || b < stripe_len {
                        // Part of a stripe: the data shards' byte ranges
                        // alone, when they all answer; else the stripe.
                        let nodes = &stripes[s as usize];
                        if let Some(p) = self.read_part(meta, s, shard_len, nodes, a, b).await {
                            out(p).await?;
                            continue;
                        }
                        tracing::debug!(stripe = s, "range read fell back to the whole stripe");
                    }
                    let (shards, stripe_len) = self
                        .read_stripe(
                            meta,
                            codec_for(*codec),
                            *k,
                            *m,
                            *shard_bytes,
                            s,
                            &stripes[s as usize],
                        )
                        .await?;
                    let b = end.min(base + stripe_len) - base;
                    let d = stripe_data(shards);
                    self.cache
                        .insert_read(meta.shards_version(), s as u32, d.clone());
                    out(Piece::of(d, a as usize, b as usize)).await?;
                }
                Ok(())
            }
        }
    }

    /// Bytes `[a, b)` of stripe `s` straight from the data shards that
    /// hold them (byte ranges of each); None when any of them fails (the
    /// caller then reads and decodes the whole stripe).
    async fn read_part(
        &self,
        meta: &ObjectMeta,
        s: u64,
        shard_len: u32,
        nodes: &[u16],
        a: u64,
        b: u64,
    ) -> Option<Piece> {
        let sl = shard_len as u64;
        let (first, last) = (a / sl, (b - 1) / sl);
        let jobs = (first..=last).map(|i| {
            let node = nodes
                .get(i as usize)
                .filter(|&&n| n != NO_NODE)
                .map(|&n| meta.nodes[n as usize].clone());
            let id = shard_id(meta.shards_version(), s as u32, i as u8);
            let (from, to) = (a.max(i * sl) - i * sl, b.min((i + 1) * sl) - i * sl);
            async move {
                let node = node?;
                let c = self.nodes.client(&node).await.ok()?;
                let t = Instant::now();
                let r = c
                    .get_range(&id, from as u32, (to - from) as u32)
                    .await
                    .ok()?;
                self.nodes.observe(&node, t.elapsed());
                (r.len() as u64 == to - from).then_some(r)
            }
        });
        // A shard slower than the p95 (a stalled node) sends the read to
        // the whole-stripe path, which hedges.
        let all = Box::pin(join_all(jobs));
        let timer = Box::pin(glommio::timer::sleep(
            self.nodes.read_p95() * PART_READ_WAIT_P95_MULTIPLE,
        ));
        let parts: Option<Vec<Vec<u8>>> = match futures::future::select(all, timer).await {
            futures::future::Either::Left((r, _)) => r.into_iter().collect(),
            futures::future::Either::Right(_) => None,
        };
        let parts = parts?;
        let total = parts.iter().map(|p| p.len()).sum();
        Some(Piece::of(stripe_data(parts), 0, total))
    }

    async fn read_replicated(&self, meta: &ObjectMeta, replicas: &[u16]) -> Result<Vec<u8>> {
        self.nodes.refresh_if_stale().await.ok();
        let mut order: Vec<(usize, String)> = replicas
            .iter()
            .filter(|&&i| i != NO_NODE)
            .map(|&i| (i as usize, meta.nodes[i as usize].clone()))
            .collect();
        self.nodes.order_for_read(&mut order);
        let id = shard_id(meta.shards_version(), 0, 0);
        let mut why = Vec::new();
        // The fastest replica first; the next one when it fails, or when
        // it has not answered after the p95 of recent reads (hedged).
        let fetch = |n: usize| {
            let node = order[n].1.clone();
            let id = &id;
            async move { (node.clone(), self.read_shard(&node, id).await) }
        };
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut next = 0;
        if next < order.len() {
            pending.push(fetch(next));
            next += 1;
        }
        let mut timer = Box::pin(glommio::timer::sleep(self.nodes.read_p95()));
        loop {
            use futures::StreamExt;
            let got = match futures::future::select(pending.next(), timer.as_mut()).await {
                futures::future::Either::Left((got, _)) => got,
                futures::future::Either::Right(_) => {
                    if next < order.len() {
                        bump(&self.stats.reads_hedged);
                        pending.push(fetch(next));
                        next += 1;
                    }
                    timer = Box::pin(glommio::timer::sleep(crate::limits::HEDGE_NEVER));
                    continue;
                }
            };
            let Some((node, r)) = got else { break };
            match r {
                Ok(b) if b.len() as u64 == meta.size => {
                    if node != order[0].1 {
                        bump(&self.stats.gets_degraded);
                    }
                    return Ok(b);
                }
                Ok(b) => why.push(format!("{node}: {} bytes, want {}", b.len(), meta.size)),
                Err(e) => why.push(format!("{node}: {e}")),
            }
            if next < order.len() {
                pending.push(fetch(next));
                next += 1;
            }
        }
        Err(Error::DataLoss(format!(
            "no replica of this object could be read ({})",
            why.join("; ")
        )))
    }

    async fn read_shard(&self, node: &str, id: &[u8]) -> Result<Vec<u8>> {
        let c = self.nodes.client(node).await?;
        let t = Instant::now();
        match c.get(id).await {
            Ok(b) => {
                self.nodes.observe(node, t.elapsed());
                Ok(b)
            }
            Err(tessera_rpc::Error::Remote {
                kind: tessera_rpc::RemoteKind::Checksum,
                message,
                ..
            }) => {
                bump(&self.stats.checksum_failures);
                tracing::warn!(node, shard = ?id, "shard failed its checksum; the chunk server reports it for repair");
                Err(Error::DataLoss(format!("checksum: {message}")))
            }
            Err(e) => Err(Error::Unavailable(e.to_string())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_stripe(
        &self,
        meta: &ObjectMeta,
        codec: &dyn Codec,
        k: u8,
        m: u8,
        shard_bytes: u32,
        s: u64,
        nodes: &[u16],
    ) -> Result<(Vec<Vec<u8>>, u64)> {
        let (len, shard_len) = stripe_geometry(meta.size, k, shard_bytes, s);
        let (k, m) = (k as usize, m as usize);
        let fetch = |i: usize| {
            let node = nodes
                .get(i)
                .filter(|&&n| n != NO_NODE)
                .map(|&n| meta.nodes[n as usize].clone());
            let id = shard_id(meta.shards_version(), s as u32, i as u8);
            async move {
                match node {
                    None => (i, Err(Error::Unavailable("shard never landed".into()))),
                    Some(node) => (i, self.read_shard(&node, &id).await),
                }
            }
        };
        // The k data shards in parallel; a failed one starts the next parity
        // shard at once, and when the stripe is not complete after the p95
        // of recent shard reads, one more parity read is hedged.
        let mut present: Vec<(usize, Vec<u8>)> = Vec::with_capacity(k + m);
        let mut pending = futures::stream::FuturesUnordered::new();
        for i in 0..k {
            pending.push(fetch(i));
        }
        let mut next_parity = k;
        let mut degraded = false;
        let mut hedged = false;
        let hedge_after = self.nodes.read_p95();
        let mut timer = Box::pin(glommio::timer::sleep(hedge_after));
        while present.len() < k {
            use futures::StreamExt;
            let got = if hedged {
                pending.next().await
            } else {
                match futures::future::select(pending.next(), timer.as_mut()).await {
                    futures::future::Either::Left((got, _)) => got,
                    futures::future::Either::Right(_) => {
                        hedged = true;
                        if next_parity < k + m {
                            bump(&self.stats.reads_hedged);
                            pending.push(fetch(next_parity));
                            next_parity += 1;
                        }
                        continue;
                    }
                }
            };
            let Some((i, r)) = got else { break };
            match r {
                Ok(b) if b.len() == shard_len as usize => present.push((i, b)),
                _ => {
                    degraded = true;
                    if next_parity < k + m {
                        pending.push(fetch(next_parity));
                        next_parity += 1;
                    }
                }
            }
        }
        drop(pending);
        if degraded || present.iter().any(|(i, _)| *i >= k) {
            bump(&self.stats.gets_degraded);
        }
        let data = codec.data_from(k, m, present).map_err(|e| match e {
            Error::DataLoss(w) => Error::DataLoss(format!("stripe {s}: {w}")),
            e => e,
        })?;
        Ok((data, len))
    }

    /// Replays this gateway's unfinished WAL entries (at start): a write
    /// whose record is committed is finished; one that is not is completed
    /// from its logged bytes when it has them, else abandoned (its shards
    /// deleted where placement put them). Returns the entries handled.
    pub async fn replay_wal(self: &Rc<Self>) -> Result<u64> {
        let mut handled = 0;
        self.nodes.refresh().await?;
        for p in 0..self.bridge.wal_partitions() {
            let mut from = 0;
            loop {
                let (entries, next, _) = self
                    .bridge
                    .call("reading the WAL", move |c| async move {
                        c.wal_read(p, from, REPLAY_PAGE_ENTRIES, true).await
                    })
                    .await?;
                for e in &entries {
                    if e.gateway != self.cfg.gateway_id || e.finished {
                        continue;
                    }
                    match self.replay_one(&e.data).await {
                        Ok(finish) => {
                            handled += 1;
                            bump(&self.stats.wal_replayed);
                            if finish {
                                self.wal_finish(p, e.offset).await;
                            }
                        }
                        Err(err) => {
                            tracing::warn!(partition = p, offset = e.offset, error = %err, "WAL entry left for the healer")
                        }
                    }
                }
                if entries.is_empty() || next <= from {
                    break;
                }
                from = next;
            }
        }
        Ok(handled)
    }

    /// Replays one entry; true when it can be marked finished.
    async fn replay_one(self: &Rc<Self>, data: &[u8]) -> Result<bool> {
        let intent = WalIntent::decode(data)?;
        if let Some((cur, _)) = self.record(&intent.key).await? {
            if cur.version_id == intent.version_id {
                // Committed before the crash; clean ones are done, dirty
                // ones are the healer's.
                return Ok(!cur.dirty);
            }
            if cur.created_unix_millis > intent.created_unix_millis {
                self.abandon(&intent).await;
                return Ok(true);
            }
        }
        if let (Some(hot), true) = (&intent.doc_hot, intent.has_payload) {
            let replay = Some((intent.version_id.clone(), intent.created_unix_millis));
            let json = String::from_utf8_lossy(&intent.payload).into_owned();
            return match self.put_doc_inner(&intent.key, &json, hot, replay).await {
                Ok(_) | Err(Error::Conflict(_)) => Ok(true),
                Err(e) => Err(e),
            };
        }
        // Blob intents carry no bytes now; entries logged by earlier
        // gateways may, and are completed.
        if intent.has_payload && intent.doc_hot.is_none() {
            let replay = Some((intent.version_id.clone(), intent.created_unix_millis));
            let mut w = self.begin(&intent.key, intent.size, replay).await?;
            w.set_attrs(intent.attrs.clone())?;
            w.write(&intent.payload).await?;
            match w.finish_inner(true).await {
                Ok(_) | Err(Error::Conflict(_)) => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        self.abandon(&intent).await;
        Ok(true)
    }

    /// Deletes the shards an unfinished write may have stored, where
    /// placement over its recorded candidates put them.
    async fn abandon(&self, intent: &WalIntent) {
        let cands: Vec<Candidate> = intent
            .candidates
            .iter()
            .map(|n| Candidate {
                node_id: n.clone(),
                weight: 1,
                zone: String::new(),
            })
            .collect();
        let mut jobs = Vec::new();
        match intent.erasure {
            None => {
                let id = shard_id(&intent.version_id, 0, 0);
                for c in rank(&intent.version_id, &cands) {
                    jobs.push((c.node_id.clone(), id.clone()));
                }
            }
            Some((k, m, sb)) => {
                // The intent comes from the WAL (the disk): a geometry no
                // gateway could have written is refused, not trusted.
                let sane = (1..=DATA_SHARDS_MAX).contains(&k)
                    && (1..=PARITY_SHARDS_MAX).contains(&m)
                    && (SHARD_BYTES_MIN..=SHARD_BYTES_MAX).contains(&sb)
                    && stripe_count(intent.size, k, sb) <= STRIPES_MAX;
                if !sane {
                    tracing::warn!(key = %intent.key, k, m, shard_bytes = sb, size = intent.size,
                        "WAL intent with an impossible stripe plan: its shards are left to the healer");
                    return;
                }
                let w = (k + m) as usize;
                for s in 0..stripe_count(intent.size, k, sb) {
                    let key = shard_id(&intent.version_id, s as u32, 0);
                    let ranked = rank(&key, &cands);
                    for idx in 0..w {
                        // Shard idx went to rank idx, or to a spare ranked
                        // after the stripe's k + m.
                        let id = shard_id(&intent.version_id, s as u32, idx as u8);
                        for c in ranked.iter().skip(w).chain(ranked.get(idx)) {
                            jobs.push((c.node_id.clone(), id.clone()));
                        }
                    }
                }
            }
        }
        self.delete_shards(jobs).await;
    }
}

fn not_found(key: &str) -> Error {
    Error::NotFound(format!("no object under the key {key:?}"))
}

/// For each stripe, the node id of each shard (None: missing).
fn shard_nodes(meta: &ObjectMeta) -> Vec<Landed> {
    let name = |i: &u16| (*i != NO_NODE).then(|| meta.nodes[*i as usize].clone());
    match &meta.layout {
        Layout::Replicated { replicas } => vec![replicas.iter().map(name).collect()],
        Layout::Erasure { stripes, .. } => stripes
            .iter()
            .map(|s| s.iter().map(name).collect())
            .collect(),
    }
}

enum Plan {
    Replicated,
    Erasure {
        codec: CodecId,
        k: u8,
        m: u8,
        shard_bytes: u32,
    },
}

/// One write in progress (streamed or whole).
pub struct PutWriter {
    objects: Rc<Objects>,
    key: String,
    size: u64,
    version_id: Vec<u8>,
    created: u64,
    candidates: Vec<Candidate>,
    plan: Plan,
    received: u64,
    buf: Vec<u8>,
    next_stripe: u64,
    inflight: VecDeque<glommio::task::JoinHandle<Result<Landed>>>,
    landed: Vec<Landed>,
    /// (partition, offset) of the WAL entry once logged.
    wal: Option<(u32, u64)>,
    replaying: bool,
    /// The application's attributes for the record.
    attrs: Vec<u8>,
    /// The precondition the commit enforces.
    cond: PutIf,
}

impl PutWriter {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Sets the attributes the record will carry (any time before
    /// `finish`). They are not logged in the WAL: replay never completes
    /// a blob write, so nothing would read them there.
    pub fn set_attrs(&mut self, attrs: Vec<u8>) -> Result<()> {
        check_attrs(&attrs)?;
        self.attrs = attrs;
        Ok(())
    }

    /// Logs the write's intent — never its bytes. Replay finishes a blob
    /// write that was committed (or leaves it to the healer when dirty)
    /// and abandons one that was not: it was never acknowledged, and its
    /// shards are deleted where placement put them. Nothing else reads a
    /// blob's bytes from the WAL (the healer repairs a dirty object from
    /// its surviving replicas or shards), and logging them cost every
    /// small PUT three more copies of its bytes in metad's logs.
    /// (Entries of earlier gateways that carry bytes are still completed
    /// by replay.)
    async fn log_intent(&mut self) -> Result<()> {
        let intent = WalIntent {
            key: self.key.clone(),
            version_id: self.version_id.clone(),
            size: self.size,
            created_unix_millis: self.created,
            candidates: self.candidates.iter().map(|c| c.node_id.clone()).collect(),
            erasure: match self.plan {
                Plan::Replicated => None,
                Plan::Erasure {
                    k, m, shard_bytes, ..
                } => Some((k, m, shard_bytes)),
            },
            has_payload: false,
            payload: Vec::new(),
            doc_hot: None,
            // Only a completed write would need them (see above).
            attrs: Vec::new(),
        };
        self.wal = Some(self.objects.append_intent(&intent).await?);
        Ok(())
    }

    /// Takes the next bytes of the object.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        if self.received + chunk.len() as u64 > self.size {
            return Err(Error::Invalid(format!(
                "more bytes than the {} announced for this object",
                self.size
            )));
        }
        self.received += chunk.len() as u64;
        match self.plan {
            Plan::Replicated => {
                if self.buf.capacity() == 0 {
                    self.buf = self.objects.warm.take(self.size as usize);
                }
                self.buf.extend_from_slice(chunk)
            }
            Plan::Erasure { k, shard_bytes, .. } => {
                let stripe = k as usize * shard_bytes as usize;
                let mut rest = chunk;
                while !rest.is_empty() {
                    if self.buf.capacity() == 0 {
                        // Exactly the padded stripe the shards are cut
                        // from: no regrowth, and a cached stripe holds no
                        // slack.
                        let (_, shard_len) =
                            stripe_geometry(self.size, k, shard_bytes, self.next_stripe);
                        self.buf = self.objects.warm.take(k as usize * shard_len as usize);
                    }
                    let take = (stripe - self.buf.len()).min(rest.len());
                    self.buf.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if self.buf.len() == stripe {
                        self.flush_stripe().await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Encodes the buffered stripe and starts writing its shards; waits for
    /// the oldest stripe when [`STRIPES_IN_FLIGHT_MAX`] are being written.
    async fn flush_stripe(&mut self) -> Result<()> {
        let Plan::Erasure {
            codec,
            k,
            m,
            shard_bytes,
        } = self.plan
        else {
            return Ok(());
        };
        let s = self.next_stripe;
        self.next_stripe += 1;
        let data = std::mem::take(&mut self.buf);
        let (_, shard_len) = stripe_geometry(self.size, k, shard_bytes, s);
        let objects = self.objects.clone();
        let version = self.version_id.clone();
        let cands = self.candidates.clone();
        let h = glommio::spawn_local(async move {
            write_stripe(
                &objects, &version, s as u32, codec, k, m, shard_len, data, &cands,
            )
            .await
        })
        .detach();
        self.inflight.push_back(h);
        while self.inflight.len() > STRIPES_IN_FLIGHT_MAX {
            self.collect_one().await?;
        }
        Ok(())
    }

    async fn collect_one(&mut self) -> Result<()> {
        if let Some(h) = self.inflight.pop_front() {
            let landed = h
                .await
                .ok_or_else(|| Error::Internal("a stripe write was cancelled".into()))??;
            self.landed.push(landed);
        }
        Ok(())
    }

    /// Completes the write: the last stripe, the commit, the WAL finish.
    pub async fn finish(self) -> Result<(ObjectMeta, Outcome)> {
        self.finish_inner(false).await
    }

    async fn finish_inner(mut self, replay: bool) -> Result<(ObjectMeta, Outcome)> {
        if self.received != self.size {
            return Err(Error::Invalid(format!(
                "the object was announced as {} bytes but {} arrived; nothing was stored",
                self.size, self.received
            )));
        }
        let objects = self.objects.clone();
        let layout_nodes: Vec<Landed>;
        let make_layout: Box<dyn Fn(Vec<Vec<u16>>) -> Layout>;
        match self.plan {
            Plan::Replicated => {
                if !self.replaying {
                    // The intent, not the bytes: replay abandons a blob
                    // write that was not committed (see `log_intent`).
                    self.log_intent().await?;
                }
                let data = std::mem::take(&mut self.buf);
                let started = std::time::Instant::now();
                let landed =
                    write_replicas(&objects, &self.version_id, data, &self.candidates).await;
                write_stage(WriteStage::Shards, started);
                let landed = landed?;
                layout_nodes = vec![landed];
                make_layout = Box::new(|mut v| Layout::Replicated {
                    replicas: v.pop().unwrap_or_default(),
                });
            }
            Plan::Erasure {
                codec,
                k,
                m,
                shard_bytes,
            } => {
                self.land_stripes().await?;
                layout_nodes = std::mem::take(&mut self.landed);
                make_layout = Box::new(move |stripes| Layout::Erasure {
                    codec,
                    k,
                    m,
                    shard_bytes,
                    stripes,
                });
            }
        }
        let (layout, names, dirty) =
            node_table(layout_nodes, make_layout, self.plan_is_replicated());
        let meta = ObjectMeta {
            version_id: self.version_id.clone(),
            size: self.size,
            created_unix_millis: self.created,
            dirty,
            layout,
            nodes: names,
            doc: None,
            attrs: std::mem::take(&mut self.attrs),
        };
        objects
            .commit_and_finish(&self.key, meta, replay, self.wal, &self.cond)
            .await
    }

    fn plan_is_replicated(&self) -> bool {
        matches!(self.plan, Plan::Replicated)
    }

    /// Writes the last (partial or only) stripe and waits for every stripe
    /// still in flight: the erasure-coded part of a write's
    /// [`WriteStage::Shards`].
    async fn land_stripes(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        let r = async {
            if !self.buf.is_empty() || self.next_stripe == 0 {
                self.flush_stripe().await?;
            }
            while !self.inflight.is_empty() {
                self.collect_one().await?;
            }
            Ok(())
        }
        .await;
        write_stage(WriteStage::Shards, started);
        r
    }

    /// Writes what is left and returns where every shard landed, without
    /// committing (the cold part of a document).
    async fn land(mut self) -> Result<(Layout, Vec<String>, bool)> {
        let Plan::Erasure {
            codec,
            k,
            m,
            shard_bytes,
        } = self.plan
        else {
            return Err(Error::Internal("land() is for erasure-coded parts".into()));
        };
        if self.received != self.size {
            return Err(Error::Internal("the cold part is short".into()));
        }
        self.land_stripes().await?;
        let landed = std::mem::take(&mut self.landed);
        let make = move |stripes| Layout::Erasure {
            codec,
            k,
            m,
            shard_bytes,
            stripes,
        };
        Ok(node_table(landed, Box::new(make), false))
    }
}

/// The record's node table from where shards landed: (layout, node ids,
/// dirty).
fn node_table(
    layout_nodes: Vec<Landed>,
    make_layout: Box<dyn Fn(Vec<Vec<u16>>) -> Layout>,
    replicated: bool,
) -> (Layout, Vec<String>, bool) {
    {
        let mut names: Vec<String> = Vec::new();
        let mut dirty = false;
        let idx: Vec<Vec<u16>> = layout_nodes
            .iter()
            .map(|s| {
                s.iter()
                    .map(|n| match n {
                        None => {
                            dirty = true;
                            NO_NODE
                        }
                        Some(n) => match names.iter().position(|x| x == n) {
                            Some(i) => i as u16,
                            None => {
                                names.push(n.clone());
                                (names.len() - 1) as u16
                            }
                        },
                    })
                    .collect()
            })
            .collect();
        if replicated {
            dirty |= idx
                .first()
                .map_or(0, |r| r.iter().filter(|&&i| i != NO_NODE).count())
                < REPLICAS;
        }
        (make_layout(idx), names, dirty)
    }
}

/// Writes one copy of `data` to `want` nodes ranked for `key`, trying the
/// next-ranked spare for each write that fails. Returns the node of each
/// slot (None: no node took it).
/// A shard to write: its id and its bytes, a range of a shared buffer (the
/// stripe or the object is not copied per shard).
type ShardOut = (Vec<u8>, Rc<Vec<u8>>, std::ops::Range<usize>);

async fn write_ranked(
    objects: &Rc<Objects>,
    key: &[u8],
    shards: Vec<ShardOut>,
    cands: &[Candidate],
) -> Landed {
    let want = shards.len();
    let ranked: Vec<String> = place(key, cands, cands.len())
        .into_iter()
        .map(|c| c.node_id.clone())
        .collect();
    let spares =
        std::cell::RefCell::new(ranked.iter().skip(want).cloned().collect::<VecDeque<_>>());
    let jobs = shards.into_iter().enumerate().map(|(i, (id, buf, range))| {
        let first = ranked.get(i).cloned();
        let spares = &spares;
        async move {
            let mut node = first;
            // Each slot tries its own node, then at most two spares.
            for _ in 0..SHARD_WRITE_TRIES {
                let Some(n) = node.take() else { break };
                match objects.nodes.client(&n).await {
                    Ok(c) => match c.put_batched(&id, &buf[range.clone()]).await {
                        Ok(()) => return Some(n),
                        Err(e) => tracing::warn!(node = %n, error = %e, "shard write failed; trying a spare"),
                    },
                    Err(e) => tracing::debug!(node = %n, error = %e, "chunk server unavailable"),
                }
                node = spares.borrow_mut().pop_front();
            }
            None
        }
    });
    join_all(jobs).await
}

async fn write_replicas(
    objects: &Rc<Objects>,
    version: &[u8],
    data: Vec<u8>,
    cands: &[Candidate],
) -> Result<Landed> {
    let id = shard_id(version, 0, 0);
    let len = data.len();
    let data = Rc::new(data);
    let shards = (0..REPLICAS)
        .map(|_| (id.clone(), data.clone(), 0..len))
        .collect();
    let landed = write_ranked(objects, version, shards, cands).await;
    if landed.iter().all(|n| n.is_none()) {
        return Err(Error::Unavailable(
            "no chunk server took a replica of this object; nothing was stored".into(),
        ));
    }
    if objects.cfg.cache_writes {
        objects
            .cache
            .insert_written(version, REPLICATED_STRIPE, Rc::new(vec![data]));
    }
    Ok(landed)
}

#[allow(clippy::too_many_arguments)]
async fn write_stripe(
    objects: &Rc<Objects>,
    version: &[u8],
    s: u32,
    codec: CodecId,
    k: u8,
    m: u8,
    shard_len: u32,
    mut data: Vec<u8>,
    cands: &[Candidate],
) -> Result<Landed> {
    let (k, m) = (k as usize, m as usize);
    data.resize(k * shard_len as usize, 0);
    let parity = {
        let refs: Vec<&[u8]> = data.chunks(shard_len as usize).collect();
        codec_for(codec).encode(k, m, &refs)?
    };
    let sl = shard_len as usize;
    let data = Rc::new(data);
    let mut shards: Vec<ShardOut> = (0..k)
        .map(|i| {
            (
                shard_id(version, s, i as u8),
                data.clone(),
                i * sl..(i + 1) * sl,
            )
        })
        .collect();
    for (j, p) in parity.into_iter().enumerate() {
        shards.push((shard_id(version, s, (k + j) as u8), Rc::new(p), 0..sl));
    }
    let landed = write_ranked(objects, &shard_id(version, s, 0), shards, cands).await;
    let n = landed.iter().filter(|x| x.is_some()).count();
    if n < k {
        return Err(Error::Unavailable(format!(
            "only {n} of the {} shards of stripe {s} landed (at least {k} must); nothing was committed",
            k + m
        )));
    }
    if objects.cfg.cache_writes {
        // The stripe buffer the shards were cut from: no copy. A version
        // whose commit then fails is never read; its entry ages out.
        objects
            .cache
            .insert_written(version, s, Rc::new(vec![data]));
    }
    Ok(landed)
}

/// The WAL partition of the gateway `gateway_id` among `partitions` (0
/// partitions: 0, which the metad client then refuses with its own error).
fn home_partition(gateway_id: &str, partitions: u32) -> u32 {
    crc32c::crc32c(gateway_id.as_bytes()) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every write of one gateway goes to one partition, in range; gateways
    /// spread over all partitions.
    #[test]
    fn a_gateway_appends_to_one_partition_and_gateways_spread() {
        const GATEWAYS: u32 = 4096;
        for parts in [1u32, 2, 4, 64] {
            let mut load = vec![0u32; parts as usize];
            for g in 0..GATEWAYS {
                let id = format!("gateway-{g}");
                let p = home_partition(&id, parts);
                assert!(p < parts);
                assert_eq!(p, home_partition(&id, parts), "stable");
                load[p as usize] += 1;
            }
            // Within half to twice an even share.
            let share = GATEWAYS / parts;
            assert!(
                load.iter().all(|&n| n >= share / 2 && n <= share * 2),
                "{parts} partitions: {load:?}"
            );
        }
        assert_eq!(home_partition("gw", 0), 0);
    }

    #[test]
    fn pools_parse_and_the_longest_prefix_wins() {
        let mut cfg = ObjectsConfig {
            pools: vec![
                Pool::parse("logs/=8+3").unwrap(),
                Pool::parse("logs/cold/=10+4:rs-simd").unwrap(),
            ],
            ..Default::default()
        };
        cfg.validate().unwrap();
        assert_eq!(cfg.code_for("a"), (4, 2, CodecId::Cauchy256));
        assert_eq!(cfg.code_for("logs/x"), (8, 3, CodecId::Cauchy256));
        assert_eq!(cfg.code_for("logs/cold/x"), (10, 4, CodecId::RsSimd));
        for bad in ["logs", "logs/=8", "logs/=8+x", "a=4+2:lz4"] {
            assert!(Pool::parse(bad).is_err(), "{bad}");
        }
        cfg.pools.push(Pool::parse("z=0+1").unwrap());
        assert!(cfg.validate().is_err());
    }
}
