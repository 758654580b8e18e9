//! Warm buffers: large byte buffers whose pages a helper thread has already
//! faulted in, so that the gateway's executor thread does not have to.
//!
//! Why: a gateway whose read cache is still growing keeps every stripe it
//! writes, so each large PUT takes memory the process has never touched.
//! On this kind of VM that costs 1.6–2.9 µs per 4 KiB page (0.4–0.75 ms per
//! MiB: the guest's page fault plus the host's, as freed memory goes back
//! to the host through free page reporting), and it was paid on the one
//! executor thread every PUT goes through (docs/BENCHMARKS.md, "warm
//! buffers"). The helper pays it on another core, ahead of need.
//!
//! Owns: a bounded set of ready buffers, kept per exact capacity for the
//! few capacities asked for most recently, and the helper thread that
//! refills them.
//!
//! Invariants:
//! - the ready buffers hold at most the `ready_bytes_max` given to
//!   [`WarmBuffers::new`] (≤ [`WARM_READY_BYTES_MAX`]);
//! - at most [`WARM_SIZES_MAX`] capacities are kept; asking for another
//!   forgets one asked for only once if there is one, else the least
//!   recently asked, and frees its buffers;
//! - a capacity is prepared only once it has been asked for twice (the
//!   helper spends the other core only on sizes that come again);
//! - [`WarmBuffers::take`] never waits for the helper: on a miss it
//!   allocates on the caller's thread, exactly as without this module;
//! - a buffer handed out is empty (`len` 0) with `capacity` exactly the
//!   length asked for (a cached stripe carries no slack).
//!
//! The helper ends when the [`WarmBuffers`] is dropped (it is woken and
//! joined).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Buffers smaller than this are allocated on the caller's thread: their
/// few pages cost less than the hand-over.
pub const WARM_BUFFER_MIN_BYTES: usize = 256 << 10;
/// Upper bound of the bytes held ready (memory the process holds beyond
/// what it uses): 16 MiB is ~80 ms of 1 MiB PUTs at 200 MB/s.
pub const WARM_READY_BYTES_MAX: usize = 16 << 20;
/// Distinct capacities kept ready at once (an object's full stripes share
/// one; its last stripe and other object sizes bring others).
pub const WARM_SIZES_MAX: usize = 4;
/// The granularity at which the helper touches a buffer: the page size.
const PAGE_BYTES: usize = 4096;
/// How long the idle helper sleeps between checks of its work when no one
/// wakes it (a bound on its wait, not a poll interval that matters).
const HELPER_IDLE_WAIT: Duration = Duration::from_millis(500);

/// Counters of [`WarmBuffers::take`] for buffers of at least
/// [`WARM_BUFFER_MIN_BYTES`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WarmStats {
    /// Handed out warm.
    pub hits: u64,
    /// Allocated on the caller's thread (none of that size was ready).
    pub misses: u64,
}

/// A pool of warm buffers and its helper thread; see the module doc.
pub struct WarmBuffers {
    shared: Arc<Shared>,
    helper: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    ready_bytes_max: usize,
}

#[derive(Default)]
struct State {
    classes: Vec<Class>,
    ready_bytes: usize,
    /// Bumped by every `take` of a kept size; orders the classes by use.
    clock: u64,
    closed: bool,
    stats: WarmStats,
}

struct Class {
    len: usize,
    ready: Vec<Vec<u8>>,
    last_asked: u64,
    /// Times asked for since it was kept; prepared from the second on.
    asks: u64,
}

impl WarmBuffers {
    /// A pool holding at most `ready_bytes_max` bytes ready (clamped to
    /// [`WARM_READY_BYTES_MAX`]); 0 turns it off (no helper thread, every
    /// buffer allocated by the caller).
    pub fn new(ready_bytes_max: usize) -> WarmBuffers {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            ready_bytes_max: ready_bytes_max.min(WARM_READY_BYTES_MAX),
        });
        let helper = if shared.ready_bytes_max >= WARM_BUFFER_MIN_BYTES {
            let s = shared.clone();
            match std::thread::Builder::new()
                .name("warm-buffers".into())
                .spawn(move || helper(&s))
            {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "could not start the warm-buffer thread; large buffers are allocated on the executor");
                    None
                }
            }
        } else {
            None
        };
        WarmBuffers { shared, helper }
    }

    /// An empty buffer with capacity exactly `len`: a warm one when one of
    /// that capacity is ready, else a new allocation. Asking also tells the
    /// helper which capacity to prepare next.
    pub fn take(&self, len: usize) -> Vec<u8> {
        if len < WARM_BUFFER_MIN_BYTES || self.helper.is_none() {
            return Vec::with_capacity(len);
        }
        let mut forgotten = None;
        let warm = {
            let mut st = lock(&self.shared.state);
            st.clock += 1;
            let now = st.clock;
            let warm = match st.classes.iter_mut().position(|c| c.len == len) {
                Some(i) => {
                    let c = &mut st.classes[i];
                    c.last_asked = now;
                    c.asks += 1;
                    let b = c.ready.pop();
                    if b.is_some() {
                        st.ready_bytes -= len;
                    }
                    b
                }
                None => {
                    if st.classes.len() >= WARM_SIZES_MAX {
                        // A capacity asked for once goes first (the last
                        // stripe of objects of many sizes), then the least
                        // recently asked.
                        if let Some(i) = (0..st.classes.len())
                            .min_by_key(|&i| (st.classes[i].asks >= 2, st.classes[i].last_asked))
                        {
                            let c = st.classes.swap_remove(i);
                            st.ready_bytes -= c.len * c.ready.len();
                            forgotten = Some(c);
                        }
                    }
                    st.classes.push(Class {
                        len,
                        ready: Vec::new(),
                        last_asked: now,
                        asks: 1,
                    });
                    None
                }
            };
            if warm.is_some() {
                st.stats.hits += 1;
            } else {
                st.stats.misses += 1;
            }
            warm
        };
        // Freed outside the lock (the helper may be waiting on it).
        drop(forgotten);
        self.shared.wake.notify_one();
        match warm {
            Some(b) => {
                debug_assert!(b.is_empty() && b.capacity() == len);
                b
            }
            None => Vec::with_capacity(len),
        }
    }

    /// Hits and misses so far.
    pub fn stats(&self) -> WarmStats {
        lock(&self.shared.state).stats
    }

    /// Bytes held ready now.
    pub fn ready_bytes(&self) -> usize {
        lock(&self.shared.state).ready_bytes
    }
}

impl Drop for WarmBuffers {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.helper.take() {
            // The helper only allocates and touches memory; it cannot
            // panic on anything but allocation failure, which aborts.
            let _ = h.join();
        }
    }
}

/// The state, even after a panic elsewhere while it was held: every
/// update keeps it consistent before anything that could panic.
fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The capacity to prepare next: among the kept capacities asked for more
/// than once (a size seen once — say the last stripe of an object of an
/// odd size — may never come again, and preparing it would spend the
/// other core on memory no one takes) whose next buffer still fits under
/// the bound, the one with the fewest ready, the most recently asked first.
fn next_job(st: &State, ready_bytes_max: usize) -> Option<usize> {
    st.classes
        .iter()
        .filter(|c| c.asks >= 2 && st.ready_bytes + c.len <= ready_bytes_max)
        .min_by_key(|c| (c.ready.len(), std::cmp::Reverse(c.last_asked)))
        .map(|c| c.len)
}

fn helper(shared: &Shared) {
    loop {
        let len = {
            let mut st = lock(&shared.state);
            loop {
                if st.closed {
                    return;
                }
                if let Some(len) = next_job(&st, shared.ready_bytes_max) {
                    break len;
                }
                st = match shared.wake.wait_timeout(st, HELPER_IDLE_WAIT) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
        };
        let buf = warm_buffer(len);
        let mut st = lock(&shared.state);
        let fits = st.ready_bytes + len <= shared.ready_bytes_max;
        if let Some(c) = st.classes.iter_mut().find(|c| c.len == len) {
            if fits {
                c.ready.push(buf);
                st.ready_bytes += len;
                continue;
            }
        }
        // Its capacity was forgotten or the bound was reached meanwhile.
        drop(st);
        drop(buf);
    }
}

/// A new empty buffer of capacity `len` with every page written once, so
/// that the kernel (and the host) have mapped it.
fn warm_buffer(len: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(len);
    touch_pages(&mut b);
    b
}

/// Writes one byte in every page of `b`'s spare capacity (its length and
/// contents stay as they were), so that the kernel (and the host) map it.
pub(crate) fn touch_pages(b: &mut Vec<u8>) {
    for byte in b.spare_capacity_mut().iter_mut().step_by(PAGE_BYTES) {
        byte.write(0);
    }
    // The writes are to memory nothing reads: keep them.
    std::hint::black_box(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Waits (at most 10 s) until the pool holds `bytes` ready.
    fn wait_ready(w: &WarmBuffers, bytes: usize) {
        let until = Instant::now() + Duration::from_secs(10);
        while w.ready_bytes() < bytes {
            assert!(
                Instant::now() < until,
                "the helper did not prepare {bytes} bytes in 10 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn small_buffers_and_a_pool_that_is_off_allocate_directly() {
        let w = WarmBuffers::new(0);
        let b = w.take(1 << 20);
        assert_eq!((b.len(), b.capacity()), (0, 1 << 20));
        let w = WarmBuffers::new(4 << 20);
        let b = w.take(4096);
        assert_eq!((b.len(), b.capacity()), (0, 4096));
        assert_eq!(w.stats(), WarmStats::default());
    }

    #[test]
    fn a_capacity_asked_for_again_is_prepared_within_the_bound_and_then_handed_out() {
        let max = 4 << 20;
        let w = WarmBuffers::new(max);
        let len = 1 << 20;
        let first = w.take(len);
        assert_eq!((first.len(), first.capacity()), (0, len));
        // Asked for once: nothing is prepared.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(w.ready_bytes(), 0, "a size asked for once was prepared");
        w.take(len);
        assert_eq!(w.stats().misses, 2);
        wait_ready(&w, max);
        // It stops at the bound.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(w.ready_bytes(), max);
        for _ in 0..4 {
            let b = w.take(len);
            assert_eq!((b.len(), b.capacity()), (0, len));
        }
        assert_eq!(w.stats(), WarmStats { hits: 4, misses: 2 });
    }

    #[test]
    fn a_new_capacity_beyond_the_kept_ones_forgets_a_one_off_then_the_least_recent() {
        let w = WarmBuffers::new(WARM_READY_BYTES_MAX);
        let base = WARM_BUFFER_MIN_BYTES;
        let len = |pages: usize| base + pages * PAGE_BYTES;
        for i in 0..WARM_SIZES_MAX {
            w.take(len(i));
            w.take(len(i));
        }
        wait_ready(&w, WARM_READY_BYTES_MAX - 2 * len(WARM_SIZES_MAX));
        let kept = |w: &WarmBuffers| -> Vec<usize> {
            let st = lock(&w.shared.state);
            st.classes.iter().map(|c| c.len).collect()
        };
        // Keep the first one recent, then ask for a new capacity: the
        // second (least recently asked) goes.
        w.take(len(0));
        w.take(len(100));
        let k = kept(&w);
        assert_eq!(k.len(), WARM_SIZES_MAX);
        assert!(!k.contains(&len(1)), "{k:?}");
        assert!(k.contains(&len(0)) && k.contains(&len(100)), "{k:?}");
        // Another new one replaces the one-off, not a capacity that came
        // again.
        w.take(len(200));
        let k = kept(&w);
        assert!(!k.contains(&len(100)), "{k:?}");
        for keep in [len(0), len(2), len(3), len(200)] {
            assert!(k.contains(&keep), "{k:?}");
        }
        check_invariants(&w);
    }

    /// The bookkeeping the helper and `take` share, checked under the lock.
    fn check_invariants(w: &WarmBuffers) {
        let st = lock(&w.shared.state);
        assert!(st.classes.len() <= WARM_SIZES_MAX);
        let held: usize = st.classes.iter().map(|c| c.len * c.ready.len()).sum();
        assert_eq!(held, st.ready_bytes);
        assert!(st.ready_bytes <= w.shared.ready_bytes_max);
        for c in &st.classes {
            assert!(c
                .ready
                .iter()
                .all(|b| b.is_empty() && b.capacity() == c.len));
        }
        let mut lens: Vec<usize> = st.classes.iter().map(|c| c.len).collect();
        lens.sort_unstable();
        lens.dedup();
        assert_eq!(lens.len(), st.classes.len(), "a capacity kept twice");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Whatever is asked for, in whatever order and while the helper
        /// runs: every buffer handed out is empty with exactly the asked
        /// capacity, and the pool stays within its bounds.
        #[test]
        fn buffers_are_exact_and_the_pool_bounded(
            max_mib in 0usize..6,
            asks in proptest::collection::vec((0usize..7, 0u64..3), 1..60),
        ) {
            // Seven capacities (more than are kept), one below the minimum.
            let lens = [
                4096,
                WARM_BUFFER_MIN_BYTES,
                WARM_BUFFER_MIN_BYTES + PAGE_BYTES,
                512 << 10,
                1 << 20,
                (1 << 20) + 1,
                3 << 20,
            ];
            let w = WarmBuffers::new(max_mib << 20);
            let mut taken = Vec::new();
            for (i, pause_ms) in asks {
                let b = w.take(lens[i]);
                proptest::prop_assert_eq!((b.len(), b.capacity()), (0, lens[i]));
                taken.push(b);
                check_invariants(&w);
                std::thread::sleep(Duration::from_millis(pause_ms));
            }
            let s = w.stats();
            let big = taken.iter().filter(|b| b.capacity() >= WARM_BUFFER_MIN_BYTES).count() as u64;
            if max_mib << 20 >= WARM_BUFFER_MIN_BYTES {
                proptest::prop_assert_eq!(s.hits + s.misses, big);
            } else {
                proptest::prop_assert_eq!(s, WarmStats::default());
            }
        }
    }

    #[test]
    fn dropping_the_pool_ends_its_helper() {
        let w = WarmBuffers::new(8 << 20);
        w.take(1 << 20);
        w.take(1 << 20);
        wait_ready(&w, 1 << 20);
        let shared = w.shared.clone();
        drop(w);
        // Joined in drop: only this test's handle is left.
        assert_eq!(Arc::strong_count(&shared), 1);
    }
}
