//! Locked-memory limit for io_uring. glommio refuses to start an executor
//! below 512 KiB of RLIMIT_MEMLOCK (its rings live in locked memory), and
//! registers its I/O buffers in locked memory too. A process may raise its
//! soft limit up to the hard limit; only the hard limit needs an operator.

use crate::error::{Error, Result};

/// What glommio needs at the least, per process.
pub const MEMLOCK_MIN_BYTES: u64 = 512 << 10;

/// Raises the soft RLIMIT_MEMLOCK to the hard limit; errors clearly if even
/// the hard limit is below what io_uring needs.
pub fn raise_memlock() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err(Error::Runtime(format!(
            "getrlimit(RLIMIT_MEMLOCK) failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
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
