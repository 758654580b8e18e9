//! Process limits the engine needs raised, each to its hard limit (a
//! process may raise a soft limit that far; only the hard limit needs an
//! operator):
//! - RLIMIT_MEMLOCK for io_uring: glommio refuses to start an executor below
//!   512 KiB (its rings live in locked memory), and registers its I/O
//!   buffers in locked memory too;
//! - RLIMIT_NOFILE: every segment file stays open (twice once it has been
//!   written since open), so a large disk needs thousands of descriptors,
//!   past the usual soft limit of 1024.
//!
//! And one process-wide memory setting: [`disable_transparent_huge_pages`].

use crate::error::{Error, Result};

/// What glommio needs at the least, per process.
pub const MEMLOCK_MIN_BYTES: u64 = 512 << 10;

/// Raises `resource`'s soft limit to its hard limit (as far as allowed);
/// returns the limits now in force.
fn raise_to_hard(resource: libc::__rlimit_resource_t) -> std::io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(resource, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim)
}

/// Raises the soft RLIMIT_MEMLOCK to the hard limit; errors clearly if even
/// the hard limit is below what io_uring needs.
pub fn raise_memlock() -> Result<u64> {
    let lim = raise_to_hard(libc::RLIMIT_MEMLOCK)
        .map_err(|e| Error::Runtime(format!("getrlimit(RLIMIT_MEMLOCK) failed: {e}")))?;
    let have: u64 = lim.rlim_cur;
    if have < MEMLOCK_MIN_BYTES {
        return Err(Error::Runtime(format!(
            "RLIMIT_MEMLOCK is {have} bytes (hard limit {}); io_uring needs at least {MEMLOCK_MIN_BYTES}. \
             Raise it: `ulimit -l 65536` in the shell, LimitMEMLOCK=64M in a systemd unit, or memlock in /etc/security/limits.conf",
            lim.rlim_max
        )));
    }
    Ok(have)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the soft
/// limit now in force. Best effort: a failure leaves the limit as it was,
/// and opening a file past it fails with a clear EMFILE error.
pub fn raise_open_files() -> u64 {
    raise_to_hard(libc::RLIMIT_NOFILE).map_or(0, |l| l.rlim_cur)
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`;
/// inherited by children). Best effort: false when the kernel refused.
///
/// Why: mimalloc asks for huge pages for its arenas, so every fresh 2 MiB
/// of heap is a fault that zeroes 2 MiB at once, and memory it purges
/// comes back the same way. A process that keeps many large buffers alive
/// (the gateway's read cache) keeps touching fresh arena memory: in the
/// whole-store bench, 1 MiB PUTs lost ~40 % with the cache on and huge
/// pages allowed (`clear_page_erms` was 18 % of the machine), and got it
/// back with them off (docs/BENCHMARKS.md, "Read cache").
pub fn disable_transparent_huge_pages() -> bool {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
}
