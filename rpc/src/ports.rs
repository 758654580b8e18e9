//! Listening ports for processes started together on one machine
//! (`tessera dev`, benchmarks, tests).
//!
//! A port handed out by binding `127.0.0.1:0` comes from the kernel's
//! ephemeral range, the same range every outgoing connection takes its local
//! port from. Between choosing such a port and the child process binding it,
//! one of the cluster's own connections (metad replicas dialling each other,
//! say) can take it, and the child fails with "address in use". So ports are
//! chosen *below* the ephemeral range, where the kernel never hands out
//! local ports, at random (so that parallel tests rarely pick the same one),
//! checked free by binding, and never handed out twice by one process.

use crate::error::{Error, Result};
use rand::Rng;
use std::collections::HashSet;
use std::sync::Mutex;

/// Lowest port chosen (above the well-known and most registered services).
pub const LISTEN_PORT_MIN: u16 = 20_000;
/// Start of the kernel's ephemeral range when it cannot be read.
const EPHEMERAL_PORT_MIN_DEFAULT: u16 = 32_768;
/// Attempts at finding a free port before giving up.
const PICK_ATTEMPTS_MAX: usize = 512;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// The first port of the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`).
fn ephemeral_port_min() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(EPHEMERAL_PORT_MIN_DEFAULT)
}

/// A port on 127.0.0.1 that nothing listens on now, outside the ephemeral
/// range, not handed out before by this process.
pub fn pick_listen_port() -> Result<u16> {
    let high = ephemeral_port_min();
    // When the ephemeral range starts low, fall back to the range above it.
    let (lo, hi) = if high > LISTEN_PORT_MIN + 1_000 {
        (LISTEN_PORT_MIN, high)
    } else {
        (61_000, 65_000)
    };
    let mut rng = rand::thread_rng();
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let handed = guard.get_or_insert_with(HashSet::new);
    for _ in 0..PICK_ATTEMPTS_MAX {
        let port = rng.gen_range(lo..hi);
        if handed.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed.insert(port);
            return Ok(port);
        }
    }
    Err(Error::NoFreePort {
        lo,
        hi,
        attempts: PICK_ATTEMPTS_MAX,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_below_the_ephemeral_range() {
        let high = ephemeral_port_min();
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let p = pick_listen_port().expect("a free port");
            assert!(seen.insert(p), "port {p} handed out twice");
            if high > LISTEN_PORT_MIN + 1_000 {
                assert!((LISTEN_PORT_MIN..high).contains(&p), "{p} out of range");
            }
            std::net::TcpListener::bind(("127.0.0.1", p)).expect("picked port binds");
        }
    }
}
