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
//!   the cache off. The frequency sketch is bounded too
//!   ([`SKETCH_WIDTH_MAX`]).
//! - **Scan resistant (W-TinyLFU).** A new entry goes into a small FIFO
//!   window (1/[`WINDOW_SHARE`] of the capacity), so what was just written
//!   or read is there for the next read. The window's oldest entry then
//!   asks to enter the main part, which evicts by CLOCK (a hit marks an
//!   entry; the sweep spares a marked one once): it gets in only if it was
//!   used more often than the entry it would evict, by a count-min sketch
//!   of recent accesses ([`SKETCH_DEPTH`] rows of counters up to
//!   [`SKETCH_COUNTER_MAX`], halved every
//!   [`SKETCH_AGING_ACCESSES_PER_ENTRY`] accesses per entry held so that
//!   old popularity fades). A tie keeps the entry already there. So a scan,
//!   or a loop over more objects than fit, cannot flush what is cached: the
//!   cache keeps the part of the loop it holds and hits on it, where LRU
//!   and CLOCK hit nothing.
//! - Each step is O(1); an insert does a bounded number of them (each
//!   queued key is swept at most twice per insert).
//!
use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::rc::Rc;

/// An entry may use at most this fraction (1/N) of the capacity: one huge
/// stripe does not flush everything else.
pub const ENTRY_SHARE_MAX: usize = 8;
/// The default capacity is this fraction (1/N) of the memory the process
/// may use (the machine's, or its cgroup's limit)… Chunk servers read
/// with O_DIRECT, so this cache is the store's only read cache: the page
/// cache a file-backed store like Garage reads from takes all free
/// memory. At 1/8 (2.9 GiB of 24) the load generator's 1 MiB GET phase
/// (4.5 GiB of objects) hit ~60 % and ran 1.19–1.52× the same-run
/// Garage; at 1/4, 1 MiB GETs +60 % (docs/BENCHMARKS.md, "a quarter of
/// memory for the read cache").
pub const CAPACITY_DEFAULT_MEMORY_SHARE: u64 = 4;
/// …but at most this many bytes.
pub const CAPACITY_DEFAULT_MAX_BYTES: u64 = 16 << 30;
/// When the machine's memory cannot be read, the default capacity.
pub const CAPACITY_FALLBACK_BYTES: u64 = 256 << 20;
/// Bytes counted per entry besides its buffers (map slot, key, queue slot,
/// reference counts): many small objects stay within the bound too.
pub const ENTRY_OVERHEAD_BYTES: usize = 160;
/// The stripe index that names a replicated object's single buffer.
pub const REPLICATED_STRIPE: u32 = u32::MAX;
/// The window (new entries, FIFO) holds this fraction (1/N) of the
/// capacity; the main part the rest. A window is lost to a loop over more
/// than fits (its entries leave before they come round again), so it is
/// small; it is there so that a just-written object stays for the read
/// that often follows. With 1/16 the load generator's GET pattern hits
/// 0.60–0.71 where at most 0.63–0.69 fits (test `policy_figures`).
pub const WINDOW_SHARE: usize = 16;
/// Rows of the frequency sketch (each an independent hash of the key; the
/// estimate is their minimum).
pub const SKETCH_DEPTH: usize = 4;
/// A counter saturates here: "used this often" is enough to tell hot from
/// cold, and aging halves it back.
pub const SKETCH_COUNTER_MAX: u8 = 15;
/// Counters per row, at least…
pub const SKETCH_WIDTH_MIN: usize = 1 << 10;
/// …and at most (4 rows of one byte: 16 MiB).
pub const SKETCH_WIDTH_MAX: usize = 1 << 22;
/// Counters per row for each entry held: when the entries outgrow this the
/// sketch doubles (and starts afresh), so that keys rarely share counters.
pub const SKETCH_COUNTERS_PER_ENTRY: usize = 4;
/// Every counter is halved after this many recorded accesses per entry
/// held (at least per [`SKETCH_WIDTH_MIN`] / [`SKETCH_COUNTERS_PER_ENTRY`]
/// entries): popularity is recent popularity.
pub const SKETCH_AGING_ACCESSES_PER_ENTRY: u64 = 10;

/// The bytes of one stripe's data (or a replicated object), in order: the
/// buffers concatenated; readers take ranges of them, so a buffer may run
/// past the stripe's end (padding of the last shard).
pub type StripeData = Rc<Vec<Rc<Vec<u8>>>>;

type Key = (Vec<u8>, u32);

/// Where an entry lives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Place {
    Window,
    Main,
}

struct Entry {
    data: StripeData,
    bytes: usize,
    referenced: bool,
    place: Place,
    /// Names this entry's one live queue slot: a slot whose number differs
    /// (the key was forgotten and inserted again) is stale and skipped.
    seq: u64,
    /// The key's hash, for the sketch.
    hash: u64,
}

/// Counters since start.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub inserted: u64,
    pub evicted: u64,
    /// Entries that left the window and lost to the main part's victim
    /// (used less often): dropped.
    pub rejected: u64,
    pub bytes: u64,
    pub capacity_bytes: u64,
}

/// A count-min sketch of recent accesses (conservative update: only the
/// smallest counters of a key grow).
struct Sketch {
    counters: Vec<u8>,
    /// Counters per row, a power of two.
    width: usize,
    /// Accesses recorded since the last halving.
    recorded: u64,
}

/// Odd multipliers that make a row's index from the key's one hash.
const SKETCH_ROW_SEEDS: [u64; SKETCH_DEPTH] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0xD6E8_FEB8_6659_FD93,
];

impl Sketch {
    fn new(width: usize) -> Sketch {
        let width = width
            .clamp(SKETCH_WIDTH_MIN, SKETCH_WIDTH_MAX)
            .next_power_of_two();
        Sketch {
            counters: vec![0; SKETCH_DEPTH * width],
            width,
            recorded: 0,
        }
    }

    fn slots(&self, hash: u64) -> [usize; SKETCH_DEPTH] {
        let mut out = [0; SKETCH_DEPTH];
        for (row, slot) in out.iter_mut().enumerate() {
            let x = (hash ^ (hash >> 29)).wrapping_mul(SKETCH_ROW_SEEDS[row]);
            *slot = row * self.width + ((x >> 32) as usize & (self.width - 1));
        }
        out
    }

    fn estimate(&self, hash: u64) -> u8 {
        self.slots(hash)
            .iter()
            .map(|&i| self.counters[i])
            .min()
            .unwrap_or(0)
    }

    /// Counts one access; halves every counter once `aging_period`
    /// accesses were counted since the last halving.
    fn record(&mut self, hash: u64, aging_period: u64) {
        let slots = self.slots(hash);
        let min = slots.iter().map(|&i| self.counters[i]).min().unwrap_or(0);
        if min < SKETCH_COUNTER_MAX {
            for i in slots {
                if self.counters[i] == min {
                    self.counters[i] += 1;
                }
            }
        }
        self.recorded += 1;
        if self.recorded >= aging_period {
            for c in &mut self.counters {
                *c >>= 1;
            }
            self.recorded = 0;
        }
    }
}

/// The mutable part of the cache (one borrow per call; no call awaits).
struct Inner {
    map: HashMap<Key, Entry>,
    /// The window's keys, oldest first, with their entries' `seq`; may
    /// hold stale slots (skipped).
    window: VecDeque<(Key, u64)>,
    /// The main part's CLOCK queue, the same way.
    main: VecDeque<(Key, u64)>,
    window_bytes: usize,
    main_bytes: usize,
    sketch: Sketch,
    hasher: RandomState,
    next_seq: u64,
    stats: CacheStats,
}

/// See the module documentation.
pub struct StripeCache {
    capacity: usize,
    window_capacity: usize,
    inner: RefCell<Inner>,
}

/// The default capacity on this machine: 1/4 of the memory this process
/// may use (the machine's, or its cgroup's limit when lower), at most
/// 16 GiB.
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
    meminfo_bytes(meminfo, "MemTotal:")
}

/// The field named `field` (with its colon) of a /proc/meminfo text, in
/// bytes (the file gives kB).
pub(crate) fn meminfo_bytes(meminfo: &str, field: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with(field))?;
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
        let capacity = usize::try_from(capacity_bytes).unwrap_or(usize::MAX);
        StripeCache {
            capacity,
            window_capacity: capacity / WINDOW_SHARE,
            inner: RefCell::new(Inner {
                map: HashMap::new(),
                window: VecDeque::new(),
                main: VecDeque::new(),
                window_bytes: 0,
                main_bytes: 0,
                sketch: Sketch::new(SKETCH_WIDTH_MIN),
                hasher: RandomState::new(),
                next_seq: 0,
                stats: CacheStats {
                    capacity_bytes: capacity as u64,
                    ..CacheStats::default()
                },
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The data of stripe `stripe` of the shards' version `version`. Counts
    /// one access of it, hit or miss.
    pub fn get(&self, version: &[u8], stripe: u32) -> Option<StripeData> {
        if !self.enabled() {
            return None;
        }
        let mut s = self.inner.borrow_mut();
        let key = (version.to_vec(), stripe);
        let hash = s.hasher.hash_one(&key);
        s.record(hash);
        match s.map.get_mut(&key) {
            Some(e) => {
                e.referenced = true;
                let data = e.data.clone();
                s.stats.hits += 1;
                Some(data)
            }
            None => {
                s.stats.misses += 1;
                None
            }
        }
    }

    /// Keeps `data`, just read after [`StripeCache::get`] missed it, as
    /// stripe `stripe` of `version` (that miss counted the access).
    pub fn insert_read(&self, version: &[u8], stripe: u32, data: StripeData) {
        self.insert(version, stripe, data, false)
    }

    /// Keeps `data`, just written, as stripe `stripe` of `version`; the
    /// write counts as one access.
    pub fn insert_written(&self, version: &[u8], stripe: u32, data: StripeData) {
        self.insert(version, stripe, data, true)
    }

    /// Puts a new entry in the window (the same bytes as any entry already
    /// there are not replaced: versions are immutable), then moves the
    /// window's oldest entries on to the main part (or drops them) until
    /// the window fits its share. Too large an entry is not kept.
    fn insert(&self, version: &[u8], stripe: u32, data: StripeData, access: bool) {
        let bytes = bytes_of(&data);
        if !self.enabled() || bytes > self.capacity / ENTRY_SHARE_MAX {
            return;
        }
        let mut guard = self.inner.borrow_mut();
        let s = &mut *guard;
        let key = (version.to_vec(), stripe);
        let hash = s.hasher.hash_one(&key);
        if access {
            s.record(hash);
        }
        if s.map.contains_key(&key) {
            return;
        }
        s.grow_sketch_for(s.map.len() + 1);
        let seq = s.next_seq;
        s.next_seq += 1;
        s.map.insert(
            key.clone(),
            Entry {
                data,
                bytes,
                referenced: false,
                place: Place::Window,
                seq,
                hash,
            },
        );
        s.window.push_back((key, seq));
        s.window_bytes += bytes;
        s.stats.inserted += 1;
        // Each live window entry has exactly one live slot, so while the
        // window is over its share a live slot remains: this ends.
        while s.window_bytes > self.window_capacity {
            let Some((key, seq)) = s.window.pop_front() else {
                break;
            };
            if s.is_live(&key, seq, Place::Window) {
                s.promote(key, self.capacity - self.window_capacity);
            }
        }
        s.compact_queues();
        debug_assert!(s.window_bytes + s.main_bytes <= self.capacity);
    }

    /// Drops the entries of `version`'s stripes `0..stripes` and its
    /// replicated buffer (the object was deleted or replaced).
    pub fn forget_version(&self, version: &[u8], stripes: u32) {
        if !self.enabled() {
            return;
        }
        let mut s = self.inner.borrow_mut();
        let mut key = (version.to_vec(), REPLICATED_STRIPE);
        for stripe in std::iter::once(REPLICATED_STRIPE).chain(0..stripes) {
            key.1 = stripe;
            if let Some(e) = s.map.remove(&key) {
                s.take_bytes(e.place, e.bytes);
            }
        }
        s.compact_queues();
    }

    pub fn stats(&self) -> CacheStats {
        let s = self.inner.borrow();
        CacheStats {
            bytes: (s.window_bytes + s.main_bytes) as u64,
            ..s.stats
        }
    }
}

impl Inner {
    /// Accesses between halvings of the sketch's counters.
    fn aging_period(&self) -> u64 {
        let entries = self
            .map
            .len()
            .max(SKETCH_WIDTH_MIN / SKETCH_COUNTERS_PER_ENTRY);
        SKETCH_AGING_ACCESSES_PER_ENTRY * entries as u64
    }

    fn record(&mut self, hash: u64) {
        let period = self.aging_period();
        self.sketch.record(hash, period);
    }

    /// A wider sketch (afresh) when `entries` outgrew this one.
    fn grow_sketch_for(&mut self, entries: usize) {
        let want = entries.saturating_mul(SKETCH_COUNTERS_PER_ENTRY);
        if want > self.sketch.width && self.sketch.width < SKETCH_WIDTH_MAX {
            self.sketch = Sketch::new(self.sketch.width * 2);
        }
    }

    fn is_live(&self, key: &Key, seq: u64, place: Place) -> bool {
        self.map
            .get(key)
            .is_some_and(|e| e.seq == seq && e.place == place)
    }

    fn take_bytes(&mut self, place: Place, bytes: usize) {
        match place {
            Place::Window => self.window_bytes -= bytes,
            Place::Main => self.main_bytes -= bytes,
        }
    }

    /// The window entry `key` (its slot already popped) leaves the window:
    /// into the main part if there is room, or if it was used more often
    /// than each entry it must evict; else it is dropped.
    fn promote(&mut self, key: Key, main_capacity: usize) {
        let Some(e) = self.map.get(&key) else { return };
        let (bytes, hash, seq) = (e.bytes, e.hash, e.seq);
        self.window_bytes -= bytes;
        let freq = self.sketch.estimate(hash);
        while self.main_bytes + bytes > main_capacity {
            let Some((victim, vseq)) = self.clock_victim() else {
                break;
            };
            let vhash = self.map.get(&victim).map_or(0, |v| v.hash);
            if freq > self.sketch.estimate(vhash) {
                if let Some(v) = self.map.remove(&victim) {
                    self.main_bytes -= v.bytes;
                    self.stats.evicted += 1;
                }
            } else {
                // The incumbent stays, first in line again. Victims already
                // evicted for this candidate stay evicted: each was used
                // less often than it; their room goes to later entries.
                self.main.push_front((victim, vseq));
                break;
            }
        }
        if self.main_bytes + bytes > main_capacity {
            self.map.remove(&key);
            self.stats.rejected += 1;
            return;
        }
        if let Some(e) = self.map.get_mut(&key) {
            e.place = Place::Main;
        }
        self.main.push_back((key, seq));
        self.main_bytes += bytes;
    }

    /// The main part's next victim by CLOCK: its slot popped, the entry
    /// still held. A marked entry is unmarked and passed over once; each
    /// slot is looked at at most twice, so this ends.
    fn clock_victim(&mut self) -> Option<(Key, u64)> {
        let mut steps = 2 * self.main.len() + 1;
        while steps > 0 {
            steps -= 1;
            let (key, seq) = self.main.pop_front()?;
            if !self.is_live(&key, seq, Place::Main) {
                continue;
            }
            let e = self.map.get_mut(&key)?;
            if e.referenced {
                e.referenced = false;
                self.main.push_back((key, seq));
                continue;
            }
            return Some((key, seq));
        }
        None
    }

    /// Drops stale slots once they are the majority (keeps the queues
    /// O(entries)).
    fn compact_queues(&mut self) {
        if self.window.len() + self.main.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            let live = |(k, seq): &(Key, u64), place: Place| {
                map.get(k)
                    .is_some_and(|e| e.seq == *seq && e.place == place)
            };
            self.window.retain(|slot| live(slot, Place::Window));
            self.main.retain(|slot| live(slot, Place::Main));
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
        Insert(u8, u32, usize, bool),
        Get(u8, u32),
        Forget(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..12, 0u32..4, 1usize..3000, any::<bool>())
                .prop_map(|(v, s, l, w)| Op::Insert(v, s, l, w)),
            (0u8..12, 0u32..4).prop_map(|(v, s)| Op::Get(v, s)),
            (0u8..12).prop_map(Op::Forget),
        ]
    }

    /// Checks the bookkeeping against the entries.
    fn check(c: &StripeCache) -> Result<(), TestCaseError> {
        let s = c.inner.borrow();
        let of = |p: Place| -> usize {
            s.map
                .values()
                .filter(|e| e.place == p)
                .map(|e| e.bytes)
                .sum()
        };
        prop_assert_eq!(of(Place::Window), s.window_bytes);
        prop_assert_eq!(of(Place::Main), s.main_bytes);
        prop_assert!(s.window_bytes <= c.window_capacity);
        prop_assert!(s.window_bytes + s.main_bytes <= c.capacity);
        // Every entry has exactly one live slot, in its own queue.
        for (k, e) in &s.map {
            let q = match e.place {
                Place::Window => &s.window,
                Place::Main => &s.main,
            };
            let n = q
                .iter()
                .filter(|(qk, seq)| qk == k && *seq == e.seq)
                .count();
            prop_assert_eq!(n, 1);
        }
        prop_assert!(s.window.len() + s.main.len() <= 2 * s.map.len() + 64 + 1);
        Ok(())
    }

    proptest! {
        /// Under any sequence of inserts, reads and forgets: the bytes held
        /// never pass the capacity (nor the window its share), a hit
        /// returns exactly the bytes stored under that key, a forgotten
        /// version is never served, and the bookkeeping matches the
        /// entries.
        #[test]
        fn bounded_and_never_wrong(cap in 0usize..20_000, ops in proptest::collection::vec(op(), 1..300)) {
            let c = StripeCache::new(cap as u64);
            for o in ops {
                match o {
                    Op::Insert(v, s, l, written) => {
                        // The fill names the key, so a wrong hit shows.
                        let d = data(v.wrapping_mul(7).wrapping_add(s as u8), l);
                        if written {
                            c.insert_written(&[v], s, d);
                        } else {
                            c.insert_read(&[v], s, d);
                        }
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
                check(&c)?;
            }
        }

        /// The sketch never under-counts a key's recent accesses (between
        /// halvings), whatever else it counts.
        #[test]
        fn the_sketch_never_undercounts(keys in proptest::collection::vec(0u64..5_000, 1..2_000)) {
            let mut sk = Sketch::new(SKETCH_WIDTH_MIN);
            let mut exact: HashMap<u64, u8> = HashMap::new();
            let h = RandomState::new();
            for k in keys {
                sk.record(h.hash_one(k), u64::MAX);
                let n = exact.entry(k).or_default();
                *n = (*n + 1).min(SKETCH_COUNTER_MAX);
            }
            for (k, n) in exact {
                prop_assert!(sk.estimate(h.hash_one(k)) >= n);
            }
        }
    }

    /// Entries of 4 KiB and a cache that holds `n` of them (besides its
    /// window).
    fn cache_of(n: u64) -> StripeCache {
        let entry = (4096 + ENTRY_OVERHEAD_BYTES) as u64;
        let main = n * entry;
        // capacity − capacity / WINDOW_SHARE ≥ main.
        StripeCache::new(main + main / (WINDOW_SHARE as u64 - 1) + entry)
    }

    /// Reads `keys` in a loop (a miss reads and inserts), as the load
    /// generator's GET phase does; the fraction of hits.
    fn loop_hits(c: &StripeCache, keys: u32, passes: u32) -> f64 {
        let mut hits = 0;
        for _ in 0..passes {
            for k in 0..keys {
                let v = k.to_le_bytes();
                if c.get(&v, 0).is_some() {
                    hits += 1;
                } else {
                    c.insert_read(&v, 0, data(1, 4096));
                }
            }
        }
        hits as f64 / (keys * passes) as f64
    }

    #[test]
    fn a_loop_over_more_than_fits_keeps_hitting_on_what_is_held() {
        // 1.5 times the cache, written first (as the load generator's PUT
        // phase does), then read in a loop: LRU and CLOCK hit nothing.
        let c = cache_of(200);
        for k in 0..300u32 {
            c.insert_written(&k.to_le_bytes(), 0, data(1, 4096));
        }
        let rate = loop_hits(&c, 300, 10);
        assert!(rate > 0.5, "hit rate {rate:.3}: the loop flushed the cache");
        assert!(rate <= 200.0 / 300.0 + 0.05, "{rate}");
    }

    /// The load generator's GET pattern on this cache (benches/src/
    /// load_bench.rs): `keys` objects written in order, then two GET phases
    /// of `phase_reads` each, both starting from `i = 0`, reading key
    /// `i * 2654435761 % keys` (a miss reads and inserts). Entries of 4 KiB
    /// stand in for 1 MiB stripes (the policy counts entries, not bytes,
    /// when they are all one size).
    fn load_generator_hits(cache_entries: u64, keys: usize, phase_reads: usize) -> f64 {
        let c = cache_of(cache_entries);
        for k in 0..keys as u32 {
            c.insert_written(&k.to_le_bytes(), 0, data(1, 4096));
        }
        let mut hits = 0;
        for _ in 0..2 {
            for i in 0..phase_reads {
                let v = ((i.wrapping_mul(2654435761) % keys) as u32).to_le_bytes();
                if c.get(&v, 0).is_some() {
                    hits += 1;
                } else {
                    c.insert_read(&v, 0, data(1, 4096));
                }
            }
        }
        hits as f64 / (2 * phase_reads) as f64
    }

    /// The most a cache of `entries` can hit on reads drawn from `weights`:
    /// the sum of the largest weights that fit.
    fn best_hit_rate(weights: &[f64], entries: usize) -> f64 {
        let mut w = weights.to_vec();
        w.sort_by(|a, b| b.total_cmp(a));
        w.iter().take(entries).sum::<f64>() / w.iter().sum::<f64>()
    }

    /// The figures docs/BENCHMARKS.md and ARCHITECTURE.md quote for the
    /// admission policy, measured on this code (print them with
    /// `cargo test -p tessera-gateway --lib cache::tests::policy_figures --
    /// --nocapture`), each held to a floor:
    /// - the load generator's GET pattern with 1.44× and 1.6× more objects
    ///   than fit (the 2026-11-28 full runs wrote 4,280 and 4,742 objects
    ///   against ~2,970 entries): at least 0.8 of the best possible hit rate
    ///   (cache / objects). CLOCK, the previous policy, hit 31–56 % in the
    ///   whole-store A/B where this one hit 58–75 %.
    /// - Zipf-distributed reads (s = 0.8 and 1.0) over 20,000 objects: at
    ///   least 0.8 of the best possible (the hottest that fit).
    #[test]
    fn policy_figures() {
        const CACHE: u64 = 2_970;
        for keys in [4_280usize, 4_742] {
            let rate = load_generator_hits(CACHE, keys, 6_500);
            let best = CACHE as f64 / keys as f64;
            eprintln!(
                "load generator pattern, {keys} objects: hit rate {rate:.3} (best {best:.3})"
            );
            assert!(
                rate >= 0.8 * best,
                "{keys} objects: hit rate {rate:.3}, best {best:.3}"
            );
        }
        use rand::{Rng, SeedableRng};
        const OBJECTS: usize = 20_000;
        const READS: usize = 100_000;
        for s in [0.8f64, 1.0] {
            let weights: Vec<f64> = (1..=OBJECTS).map(|i| 1.0 / (i as f64).powf(s)).collect();
            let mut cumulative = Vec::with_capacity(OBJECTS);
            let mut total = 0.0;
            for w in &weights {
                total += w;
                cumulative.push(total);
            }
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let c = cache_of(CACHE);
            let mut hits = 0;
            for _ in 0..READS {
                let x = rng.gen::<f64>() * total;
                let k = (cumulative.partition_point(|&c| c < x) as u32).to_le_bytes();
                if c.get(&k, 0).is_some() {
                    hits += 1;
                } else {
                    c.insert_read(&k, 0, data(1, 4096));
                }
            }
            let rate = hits as f64 / READS as f64;
            let best = best_hit_rate(&weights, CACHE as usize);
            eprintln!("zipf {s}: hit rate {rate:.3} (best {best:.3})");
            assert!(
                rate >= 0.8 * best,
                "zipf {s}: hit rate {rate:.3}, best {best:.3}"
            );
        }
    }

    #[test]
    fn a_just_written_object_is_there_for_the_next_read() {
        let c = cache_of(50);
        // Fill the main part with entries read often.
        for k in 0..60u32 {
            c.insert_written(&k.to_le_bytes(), 0, data(1, 4096));
        }
        loop_hits(&c, 60, 3);
        let fresh = 1_000u32.to_le_bytes();
        c.insert_written(&fresh, 0, data(2, 4096));
        assert!(c.get(&fresh, 0).is_some(), "the window keeps it");
    }

    #[test]
    fn a_hot_object_displaces_a_cold_one_and_a_cold_one_does_not() {
        let c = cache_of(50);
        for k in 0..50u32 {
            c.insert_written(&k.to_le_bytes(), 0, data(1, 4096));
        }
        let window = (c.window_capacity / (4096 + ENTRY_OVERHEAD_BYTES)) as u32;
        // Cold newcomers, each written once and never read: they pass
        // through the window and lose to the incumbents (a tie).
        for k in 100..100 + 2 * window + 20 {
            c.insert_written(&k.to_le_bytes(), 0, data(1, 4096));
        }
        assert!(c.stats().rejected > 0);
        let held = (0..50u32)
            .filter(|k| c.get(&k.to_le_bytes(), 0).is_some())
            .count();
        assert!(
            held >= 45,
            "cold newcomers evicted {} incumbents",
            50 - held
        );
        // A newcomer read many times wins its place.
        let hot = 7_000u32.to_le_bytes();
        c.insert_written(&hot, 0, data(3, 4096));
        for _ in 0..5 {
            assert!(c.get(&hot, 0).is_some());
        }
        for k in 200..200 + 2 * window + 20 {
            c.insert_written(&k.to_le_bytes(), 0, data(1, 4096));
        }
        assert!(
            c.get(&hot, 0).is_some(),
            "the hot entry left the window for the main part"
        );
    }

    #[test]
    fn off_keeps_nothing_and_an_oversized_entry_is_not_kept() {
        let off = StripeCache::new(0);
        off.insert_written(b"v", 0, data(1, 10));
        assert!(off.get(b"v", 0).is_none());
        assert_eq!(off.stats().misses, 0, "a disabled cache counts nothing");
        let c = StripeCache::new(80_000);
        c.insert_written(b"v", 0, data(1, 80_000 / ENTRY_SHARE_MAX + 1));
        assert!(c.get(b"v", 0).is_none());
        c.insert_written(
            b"v",
            1,
            data(1, 80_000 / ENTRY_SHARE_MAX - ENTRY_OVERHEAD_BYTES),
        );
        assert!(c.get(b"v", 1).is_some());
    }

    #[test]
    fn the_sketch_grows_with_the_entries_and_stays_bounded() {
        let c = StripeCache::new(1 << 30);
        for k in 0..2_000u32 {
            c.insert_written(&k.to_le_bytes(), 0, data(1, 16));
        }
        let w = c.inner.borrow().sketch.width;
        assert!(w >= 2_000 * SKETCH_COUNTERS_PER_ENTRY, "{w}");
        assert!(Sketch::new(usize::MAX / 2).width <= SKETCH_WIDTH_MAX);
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
        assert_eq!(capacity_for(Some(24 * gib), None), 6 * gib);
        assert_eq!(
            capacity_for(Some(24 * gib), Some(2 * gib)),
            gib / 2,
            "the cgroup's limit wins"
        );
        assert_eq!(
            capacity_for(Some(512 * gib), None),
            CAPACITY_DEFAULT_MAX_BYTES
        );
        assert_eq!(capacity_for(None, None), CAPACITY_FALLBACK_BYTES);
    }
}
