//! The gateway's read cache: the data of recently read or written stripes,
//! in memory, bounded in bytes.
//!
//! Chunk servers read with O_DIRECT, so no page cache sits under them; a
//! hot object would otherwise cost `k` shard reads, their checksums and
//! two network hops on every GET. This cache keeps what a stripe read (or
//! a write) already assembled.
//!
//! Invariants:
//! - **Never stale.** An entry is keyed by the shards' version id (16
//!   random bytes, new for every write) and the stripe's index. Those
//!   bytes never change: a new write makes a new version, and a repair
//!   rewrites the same bytes. The caller still reads the object's record
//!   (linearizably) first, so a deleted or replaced object is never served
//!   from here; its entries only wait to be evicted (or are dropped early
//!   by [`StripeCache::forget_version`]).
//! - **Bounded.** The buffers held never exceed the capacity in bytes
//!   (counted by their capacity, not their length, plus
//!   [`ENTRY_OVERHEAD_BYTES`] each); an entry larger than
//!   [`ENTRY_SHARE_MAX`] of the whole is not kept at all. Capacity 0 turns
//!   the cache off.
//! - **Eviction is CLOCK** (second chance): a hit marks an entry, and the
//!   sweep spares a marked entry once. Each sweep step is O(1) and one
//!   insert does a bounded number of them.
//!
//! Bytes served from here skip the chunk servers' checksum check: they are
//! the bytes a verified read (or the writer) produced. The scrubber still
//! reads every shard on disk, so bitrot is found either way.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

/// An entry may use at most this fraction (1/N) of the capacity: one huge
/// stripe does not flush everything else.
pub const ENTRY_SHARE_MAX: usize = 8;
/// The default capacity is this fraction (1/N) of the memory the process
/// may use (the machine's, or its cgroup's limit)…
pub const CAPACITY_DEFAULT_MEMORY_SHARE: u64 = 8;
/// …but at most this many bytes.
pub const CAPACITY_DEFAULT_MAX_BYTES: u64 = 4 << 30;
/// When the machine's memory cannot be read, the default capacity.
pub const CAPACITY_FALLBACK_BYTES: u64 = 256 << 20;
/// Bytes counted per entry besides its buffers (map slot, key, queue slot,
/// reference counts): many small objects stay within the bound too.
pub const ENTRY_OVERHEAD_BYTES: usize = 160;
/// The stripe index that names a replicated object's single buffer.
pub const REPLICATED_STRIPE: u32 = u32::MAX;

/// The bytes of one stripe's data (or a replicated object), in order: the
/// buffers concatenated; readers take ranges of them, so a buffer may run
/// past the stripe's end (padding of the last shard).
pub type StripeData = Rc<Vec<Rc<Vec<u8>>>>;

type Key = (Vec<u8>, u32);

struct Entry {
    data: StripeData,
    bytes: usize,
    referenced: Cell<bool>,
}

/// Counters since start.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub inserted: u64,
    pub evicted: u64,
    pub bytes: u64,
    pub capacity_bytes: u64,
}

/// See the module documentation.
pub struct StripeCache {
    capacity: usize,
    used: Cell<usize>,
    map: RefCell<HashMap<Key, Entry>>,
    /// Keys in insertion order, for the CLOCK sweep; may hold keys already
    /// removed from `map` (skipped when swept).
    queue: RefCell<VecDeque<Key>>,
    hits: Cell<u64>,
    misses: Cell<u64>,
    inserted: Cell<u64>,
    evicted: Cell<u64>,
}

/// The default capacity on this machine: 1/8 of the memory this process
/// may use (the machine's, or its cgroup's limit when lower), at most
/// 4 GiB.
pub fn default_capacity_bytes() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| mem_total_bytes(&s));
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| cgroup_limit_bytes(&s));
    capacity_for(total, limit)
}

/// `MemTotal` of a /proc/meminfo text, in bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A cgroup v2 `memory.max` ("max": no limit).
fn cgroup_limit_bytes(memory_max: &str) -> Option<u64> {
    memory_max.trim().parse().ok()
}

/// The default capacity for the memory known (None: unknown).
fn capacity_for(total: Option<u64>, cgroup_limit: Option<u64>) -> u64 {
    let usable = match (total, cgroup_limit) {
        (Some(t), Some(l)) => Some(t.min(l)),
        (t, l) => t.or(l),
    };
    usable
        .map_or(CAPACITY_FALLBACK_BYTES, |m| {
            m / CAPACITY_DEFAULT_MEMORY_SHARE
        })
        .min(CAPACITY_DEFAULT_MAX_BYTES)
}

fn bytes_of(data: &[Rc<Vec<u8>>]) -> usize {
    ENTRY_OVERHEAD_BYTES + data.iter().map(|b| b.capacity()).sum::<usize>()
}

impl StripeCache {
    pub fn new(capacity_bytes: u64) -> StripeCache {
        StripeCache {
            capacity: usize::try_from(capacity_bytes).unwrap_or(usize::MAX),
            used: Cell::new(0),
            map: RefCell::new(HashMap::new()),
            queue: RefCell::new(VecDeque::new()),
            hits: Cell::new(0),
            misses: Cell::new(0),
            inserted: Cell::new(0),
            evicted: Cell::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The data of stripe `stripe` of the shards' version `version`.
    pub fn get(&self, version: &[u8], stripe: u32) -> Option<StripeData> {
        if !self.enabled() {
            return None;
        }
        let map = self.map.borrow();
        match map.get(&(version.to_vec(), stripe)) {
            Some(e) => {
                e.referenced.set(true);
                self.hits.set(self.hits.get() + 1);
                Some(e.data.clone())
            }
            None => {
                self.misses.set(self.misses.get() + 1);
                None
            }
        }
    }

    /// Keeps `data` as stripe `stripe` of `version` (the same bytes as any
    /// entry already there: versions are immutable), evicting others to
    /// stay within the capacity. Too large an entry is not kept.
    pub fn insert(&self, version: &[u8], stripe: u32, data: StripeData) {
        let bytes = bytes_of(&data);
        if !self.enabled() || bytes > self.capacity / ENTRY_SHARE_MAX {
            return;
        }
        let key = (version.to_vec(), stripe);
        if self.map.borrow().contains_key(&key) {
            return;
        }
        self.make_room(bytes);
        if self.used.get() + bytes > self.capacity {
            return;
        }
        self.map.borrow_mut().insert(
            key.clone(),
            Entry {
                data,
                bytes,
                referenced: Cell::new(false),
            },
        );
        self.queue.borrow_mut().push_back(key);
        self.used.set(self.used.get() + bytes);
        self.inserted.set(self.inserted.get() + 1);
    }

    /// Drops the entries of `version`'s stripes `0..stripes` and its
    /// replicated buffer (the object was deleted or replaced).
    pub fn forget_version(&self, version: &[u8], stripes: u32) {
        if !self.enabled() {
            return;
        }
        let mut map = self.map.borrow_mut();
        let mut key = (version.to_vec(), REPLICATED_STRIPE);
        for s in std::iter::once(REPLICATED_STRIPE).chain(0..stripes) {
            key.1 = s;
            if let Some(e) = map.remove(&key) {
                self.used.set(self.used.get() - e.bytes);
            }
        }
        drop(map);
        self.compact_queue();
    }

    /// Sweeps until `bytes` more fit. Each queued key is looked at at most
    /// twice (once to clear its mark, once to evict it), so this ends.
    fn make_room(&self, bytes: usize) {
        let mut steps = 2 * self.queue.borrow().len() + 1;
        while self.used.get() + bytes > self.capacity && steps > 0 {
            steps -= 1;
            let Some(key) = self.queue.borrow_mut().pop_front() else {
                break;
            };
            let mut map = self.map.borrow_mut();
            let Some(e) = map.get(&key) else { continue };
            if e.referenced.replace(false) {
                drop(map);
                self.queue.borrow_mut().push_back(key);
                continue;
            }
            if let Some(e) = map.remove(&key) {
                self.used.set(self.used.get() - e.bytes);
                self.evicted.set(self.evicted.get() + 1);
            }
        }
    }

    /// Removes keys of forgotten entries from the queue once they are the
    /// majority (keeps the queue O(entries)).
    fn compact_queue(&self) {
        let live = self.map.borrow().len();
        let mut q = self.queue.borrow_mut();
        if q.len() > 2 * live + 64 {
            let map = self.map.borrow();
            q.retain(|k| map.contains_key(k));
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            inserted: self.inserted.get(),
            evicted: self.evicted.get(),
            bytes: self.used.get() as u64,
            capacity_bytes: self.capacity as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(fill: u8, len: usize) -> StripeData {
        let mut v = Vec::with_capacity(len);
        v.resize(len, fill);
        Rc::new(vec![Rc::new(v)])
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32, usize),
        Get(u8, u32),
        Forget(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..12, 0u32..4, 1usize..3000).prop_map(|(v, s, l)| Op::Insert(v, s, l)),
            (0u8..12, 0u32..4).prop_map(|(v, s)| Op::Get(v, s)),
            (0u8..12).prop_map(Op::Forget),
        ]
    }

    proptest! {
        /// Under any sequence of inserts, reads and forgets: the bytes held
        /// never pass the capacity, a hit returns exactly the bytes stored
        /// under that key, a forgotten version is never served, and the
        /// bookkeeping matches the entries.
        #[test]
        fn bounded_and_never_wrong(cap in 0usize..20_000, ops in proptest::collection::vec(op(), 1..300)) {
            let c = StripeCache::new(cap as u64);
            for o in ops {
                match o {
                    Op::Insert(v, s, l) => {
                        // The fill names the key, so a wrong hit shows.
                        c.insert(&[v], s, data(v.wrapping_mul(7).wrapping_add(s as u8), l));
                    }
                    Op::Get(v, s) => {
                        if let Some(d) = c.get(&[v], s) {
                            let want = v.wrapping_mul(7).wrapping_add(s as u8);
                            prop_assert!(d.iter().all(|b| b.iter().all(|&x| x == want)));
                        }
                    }
                    Op::Forget(v) => {
                        c.forget_version(&[v], 4);
                        for s in 0..4 {
                            prop_assert!(c.get(&[v], s).is_none());
                        }
                    }
                }
                let st = c.stats();
                prop_assert!(st.bytes as usize <= cap);
                let sum: usize = c.map.borrow().values().map(|e| e.bytes).sum();
                prop_assert_eq!(sum, st.bytes as usize);
                prop_assert!(c.queue.borrow().len() >= c.map.borrow().len());
            }
        }
    }

    #[test]
    fn a_hit_survives_one_sweep_and_a_cold_entry_goes_first() {
        let entry = (4096 + ENTRY_OVERHEAD_BYTES) as u64;
        let c = StripeCache::new(8 * entry * ENTRY_SHARE_MAX as u64);
        // Exactly full: 8 × ENTRY_SHARE_MAX entries of 4 KiB.
        let n = 8 * ENTRY_SHARE_MAX as u32;
        for s in 0..n {
            c.insert(b"v", s, data(1, 4096));
        }
        assert_eq!(c.stats().evicted, 0);
        assert!(c.get(b"v", 0).is_some());
        c.insert(b"w", 0, data(2, 4096));
        assert!(c.get(b"v", 0).is_some(), "the marked entry was spared");
        assert!(c.get(b"v", 1).is_none(), "the oldest unmarked one went");
        assert_eq!(c.stats().evicted, 1);
    }

    #[test]
    fn off_keeps_nothing_and_an_oversized_entry_is_not_kept() {
        let off = StripeCache::new(0);
        off.insert(b"v", 0, data(1, 10));
        assert!(off.get(b"v", 0).is_none());
        assert_eq!(off.stats().misses, 0, "a disabled cache counts nothing");
        let c = StripeCache::new(80_000);
        c.insert(b"v", 0, data(1, 80_000 / ENTRY_SHARE_MAX + 1));
        assert!(c.get(b"v", 0).is_none());
        c.insert(
            b"v",
            1,
            data(1, 80_000 / ENTRY_SHARE_MAX - ENTRY_OVERHEAD_BYTES),
        );
        assert!(c.get(b"v", 1).is_some());
    }

    #[test]
    fn the_default_capacity_is_bounded_and_honours_a_cgroup_limit() {
        let d = default_capacity_bytes();
        assert!(d > 0 && d <= CAPACITY_DEFAULT_MAX_BYTES, "{d}");
        let gib = 1u64 << 30;
        assert_eq!(
            mem_total_bytes("MemTotal:       25165824 kB\nMemFree: 1 kB\n"),
            Some(24 * gib)
        );
        assert_eq!(cgroup_limit_bytes("max\n"), None);
        assert_eq!(cgroup_limit_bytes("2147483648\n"), Some(2 * gib));
        assert_eq!(capacity_for(Some(24 * gib), None), 3 * gib);
        assert_eq!(
            capacity_for(Some(24 * gib), Some(2 * gib)),
            gib / 4,
            "the cgroup's limit wins"
        );
        assert_eq!(
            capacity_for(Some(512 * gib), None),
            CAPACITY_DEFAULT_MAX_BYTES
        );
        assert_eq!(capacity_for(None, None), CAPACITY_FALLBACK_BYTES);
    }
}
