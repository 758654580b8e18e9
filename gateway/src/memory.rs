//! The gateway process's memory: its allocator keeps what it frees, and
//! the read cache's memory is taken once, at start, off the request path.
//!
//! Why: a gateway whose read cache grows takes memory the process has never
//! touched for every stripe it keeps, and on this kind of VM each fresh
//! 4 KiB page costs 1.6–2.9 µs (the guest's fault and zeroing, and the
//! host's: freed memory goes back to the host). mimalloc also gives freed
//! memory back to the OS after a second (`purge_delay`), so a full cache
//! that recycles evicted stripes faulted 10–35 thousand pages a second
//! in again. With purging off and the cache's memory touched once at
//! start, a fresh gateway's 1 MiB PUTs took almost no faults and ran +28 %
//! faster in an alternating A/B
//! (docs/BENCHMARKS.md, "the cache's memory taken at start").
//!
//! Owns: the allocator's purge setting and the pretouch thread.
//!
//! Invariants:
//! - the gateway's memory stays bounded without purging: the cache by its
//!   capacity, requests in flight by admission (`admission`); what is
//!   freed is reused, so the resident size is the peak, not more;
//! - the pretouch holds the bytes asked for rounded up to whole chunks of
//!   [`PRETOUCH_CHUNK_BYTES`], and frees all of them before it ends; a
//!   failed allocation ends it early, never the process; it takes at most
//!   half of the memory available at start ([`PRETOUCH_AVAILABLE_SHARE`]);
//! - pretouching happens only while purging is off (otherwise the memory
//!   would be handed back a second later and the work wasted);
//! - an operator's `MIMALLOC_PURGE_DELAY` wins over this module.

use std::ffi::{c_int, c_long};
// Links mimalloc's C library, whose functions are declared below, into
// every binary that uses this crate (the gateway's allocator is mimalloc).
use mimalloc as _;
use std::time::{Duration, Instant};

/// The size of each allocation the pretouch makes (the stripe buffers the
/// cache keeps are 1 MiB by default).
pub const PRETOUCH_CHUNK_BYTES: usize = 1 << 20;
/// mimalloc 3's `mi_option_purge_delay` (`include/mimalloc.h`: the 16th
/// entry of `mi_option_e`); the numbering differs in mimalloc 2, hence
/// [`MIMALLOC_VERSION_MIN`].
const MI_OPTION_PURGE_DELAY: c_int = 15;
/// The first mimalloc version whose option numbering this module knows.
const MIMALLOC_VERSION_MIN: c_int = 300;
/// The environment variable mimalloc reads its purge delay from.
const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

// The global allocator's C library (linked through the `mimalloc` crate).
extern "C" {
    fn mi_version() -> c_int;
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
}

/// What [`keep_freed_memory`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgePolicy {
    /// Purging is off: freed memory stays with the process.
    Kept,
    /// `MIMALLOC_PURGE_DELAY` was set; mimalloc follows it (milliseconds;
    /// negative: never).
    FromEnvironment(c_long),
    /// An unknown mimalloc version: left at its default.
    Unknown(i32),
}

impl PurgePolicy {
    /// Whether freed memory stays with the process (what makes a pretouch
    /// worth doing).
    pub fn keeps_memory(&self) -> bool {
        match self {
            PurgePolicy::Kept => true,
            PurgePolicy::FromEnvironment(ms) => *ms < 0,
            PurgePolicy::Unknown(_) => false,
        }
    }
}

/// Turns mimalloc's purging off for this process, unless the operator set
/// `MIMALLOC_PURGE_DELAY`. Call it first thing in `main`.
pub fn keep_freed_memory() -> PurgePolicy {
    // SAFETY: mi_version takes nothing and only returns a constant.
    let version = unsafe { mi_version() };
    if version < MIMALLOC_VERSION_MIN {
        return PurgePolicy::Unknown(version);
    }
    if std::env::var_os(PURGE_DELAY_ENV).is_some() {
        // SAFETY: a valid option index for this version (checked above).
        return PurgePolicy::FromEnvironment(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) });
    }
    // SAFETY: as above; -1 is mimalloc's documented "never purge".
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    PurgePolicy::Kept
}

/// What a pretouch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pretouched {
    /// Bytes allocated, touched and freed again.
    pub bytes: u64,
    pub elapsed: Duration,
    /// An allocation failed before all the bytes asked for were touched.
    pub cut_short: bool,
}

/// Allocates `bytes` (rounded up to [`PRETOUCH_CHUNK_BYTES`]), writes every
/// page of it, and frees it all: with purging off, the allocator then
/// serves later buffers from memory that is already faulted in.
pub fn pretouch(bytes: u64) -> Pretouched {
    let start = Instant::now();
    let chunks = usize::try_from(bytes.div_ceil(PRETOUCH_CHUNK_BYTES as u64)).unwrap_or(usize::MAX);
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut cut_short = held.try_reserve_exact(chunks).is_err();
    while !cut_short && held.len() < chunks {
        let mut chunk: Vec<u8> = Vec::new();
        if chunk.try_reserve_exact(PRETOUCH_CHUNK_BYTES).is_err() {
            cut_short = true;
            break;
        }
        crate::warm::touch_pages(&mut chunk);
        held.push(chunk);
    }
    let touched = held.len() as u64 * PRETOUCH_CHUNK_BYTES as u64;
    drop(held);
    Pretouched {
        bytes: touched,
        elapsed: start.elapsed(),
        cut_short,
    }
}

/// The pretouch takes at most 1/this of the memory available at start: a
/// cache set larger than the machine can hold is then taken as it fills,
/// and the gateway is not killed for memory at start.
pub const PRETOUCH_AVAILABLE_SHARE: u64 = 2;

/// How much of a cache of `cache_bytes` to take at start, given this
/// machine's /proc/meminfo (None: unknown, and then nothing).
pub fn pretouch_bytes(cache_bytes: u64, meminfo: Option<&str>) -> u64 {
    meminfo
        .and_then(|m| crate::cache::meminfo_bytes(m, "MemAvailable:"))
        .map_or(0, |a| cache_bytes.min(a / PRETOUCH_AVAILABLE_SHARE))
}

/// Takes the memory of a cache of `cache_bytes` (at most
/// [`pretouch_bytes`] of it) on a thread of its own, see
/// [`pretouch_in_background`].
pub fn take_cache_memory(cache_bytes: u64) -> Option<std::thread::JoinHandle<Pretouched>> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let bytes = pretouch_bytes(cache_bytes, meminfo.as_deref());
    if meminfo.is_none() && cache_bytes > 0 {
        tracing::warn!("could not read /proc/meminfo; the read cache takes its memory as it fills");
    } else if bytes < cache_bytes {
        tracing::warn!(
            cache_bytes,
            taken_at_start = bytes,
            "the read cache is larger than 1/{PRETOUCH_AVAILABLE_SHARE} of the memory available; \
             the rest of it is taken as the cache fills (a smaller --cache-bytes fits this machine)"
        );
    }
    pretouch_in_background(bytes)
}

/// Runs [`pretouch`] on a thread of its own and logs what it did. None
/// when `bytes` is 0 or the thread could not start (logged).
///
/// At normal priority, on purpose: started with the process, it is done
/// in ~1–2 s for 3 GiB on a quiet machine (5 s for 6 GiB beside a
/// starting `tessera dev` on the bench VM), while the gateway connects to
/// metad and the chunk servers. At the lowest priority it took 5 s beside
/// a starting `tessera dev` and then competed with the first requests.
pub fn pretouch_in_background(bytes: u64) -> Option<std::thread::JoinHandle<Pretouched>> {
    if bytes == 0 {
        return None;
    }
    let spawned = std::thread::Builder::new()
        .name("cache-pretouch".into())
        .spawn(move || {
            let done = pretouch(bytes);
            crate::metrics::cache_memory_taken(done.bytes);
            if done.cut_short {
                tracing::warn!(
                    touched = done.bytes,
                    asked = bytes,
                    "the read cache's memory could not all be taken at start (out of memory); \
                     the cache takes the rest as it fills"
                );
            } else {
                tracing::info!(
                    bytes = done.bytes,
                    ms = done.elapsed.as_millis() as u64,
                    "the read cache's memory is taken"
                );
            }
            done
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!("could not start the cache pretouch thread: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mimalloc_is_the_version_whose_options_are_numbered_here() {
        // SAFETY: see keep_freed_memory.
        let v = unsafe { mi_version() };
        assert!(
            v >= MIMALLOC_VERSION_MIN,
            "mimalloc {v}: check MI_OPTION_PURGE_DELAY"
        );
    }

    #[test]
    fn purging_is_turned_off_unless_the_environment_says_otherwise() {
        let policy = keep_freed_memory();
        // SAFETY: see keep_freed_memory.
        let now = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        match policy {
            PurgePolicy::Kept => assert_eq!(now, -1),
            PurgePolicy::FromEnvironment(ms) => assert_eq!(now, ms),
            PurgePolicy::Unknown(v) => panic!("mimalloc {v}"),
        }
    }

    #[test]
    fn pretouch_takes_at_most_half_of_the_memory_available() {
        let info = |avail_kib: u64| {
            format!("MemTotal: 25000000 kB\nMemFree: 1 kB\nMemAvailable: {avail_kib} kB\n")
        };
        let gib = 1u64 << 30;
        // 20 GiB available: a 3 GiB cache is taken whole, a 16 GiB one to 10.
        assert_eq!(pretouch_bytes(3 * gib, Some(&info(20 << 20))), 3 * gib);
        assert_eq!(pretouch_bytes(16 * gib, Some(&info(20 << 20))), 10 * gib);
        assert_eq!(pretouch_bytes(0, Some(&info(20 << 20))), 0);
        // Unknown memory: nothing.
        assert_eq!(pretouch_bytes(3 * gib, None), 0);
        assert_eq!(pretouch_bytes(3 * gib, Some("MemTotal: 1 kB\n")), 0);
        assert_eq!(pretouch_bytes(3 * gib, Some("MemAvailable: lots\n")), 0);
    }

    #[test]
    fn pretouch_rounds_up_to_whole_chunks_and_frees_them() {
        for (asked, chunks) in [(1u64, 1u64), (1 << 20, 1), ((1 << 20) + 1, 2), (5 << 20, 5)] {
            let done = pretouch(asked);
            assert!(!done.cut_short);
            assert_eq!(
                done.bytes,
                chunks * PRETOUCH_CHUNK_BYTES as u64,
                "asked {asked}"
            );
        }
        assert_eq!(pretouch(0).bytes, 0);
    }
}
