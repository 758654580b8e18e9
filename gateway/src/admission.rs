//! Connection admission: at most [`CONNECTIONS_MAX`] open connections, and
//! at most a configured number from one peer address, so that one client
//! flooding the gateway with connections cannot lock others out.
//!
//! Invariant (tested over generated sequences): the open count per peer and
//! in total never exceeds its cap, and a slot is given back exactly once,
//! when its guard is dropped.

use crate::limits::CONNECTIONS_MAX;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

#[derive(Default)]
struct Counts {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// The gateway's admission state (one executor: `Rc`).
#[derive(Clone)]
pub struct Admission {
    per_peer_max: usize,
    counts: Rc<RefCell<Counts>>,
}

/// An admitted connection's slot; dropping it gives the slot back.
pub struct Slot {
    peer: IpAddr,
    counts: Rc<RefCell<Counts>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.borrow_mut();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                c.per_peer.remove(&self.peer);
            }
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    Peer,
}

impl Admission {
    pub fn new(per_peer_max: usize) -> Self {
        Admission {
            per_peer_max: per_peer_max.clamp(1, CONNECTIONS_MAX),
            counts: Rc::default(),
        }
    }

    /// A slot for a new connection from `peer`, or why not.
    pub fn admit(&self, peer: IpAddr) -> Result<Slot, Refused> {
        let mut c = self.counts.borrow_mut();
        if c.total >= CONNECTIONS_MAX {
            return Err(Refused::Total);
        }
        let n = c.per_peer.entry(peer).or_insert(0);
        if *n >= self.per_peer_max {
            return Err(Refused::Peer);
        }
        *n += 1;
        c.total += 1;
        Ok(Slot {
            peer,
            counts: self.counts.clone(),
        })
    }

    /// Open connections (total, from `peer`).
    pub fn open(&self, peer: IpAddr) -> (usize, usize) {
        let c = self.counts.borrow();
        (c.total, c.per_peer.get(&peer).copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the order of arrivals and departures, no peer holds more
        /// than its cap, the total never exceeds the limit, and every slot
        /// given back frees exactly one.
        #[test]
        fn caps_hold(cap in 1usize..8, ops in proptest::collection::vec((0u8..4, any::<bool>()), 1..300)) {
            let a = Admission::new(cap);
            let mut held: Vec<Slot> = Vec::new();
            for (p, arrive) in ops {
                let peer = IpAddr::from([127, 0, 0, p + 1]);
                if arrive {
                    let before = a.open(peer).1;
                    match a.admit(peer) {
                        Ok(s) => { prop_assert!(before < cap); held.push(s); }
                        Err(Refused::Peer) => prop_assert_eq!(before, cap),
                        Err(Refused::Total) => prop_assert!(false, "total limit with few slots"),
                    }
                } else if let Some(i) = held.iter().position(|s| s.peer == peer) {
                    let before = a.open(peer);
                    held.swap_remove(i);
                    let after = a.open(peer);
                    prop_assert_eq!((after.0 + 1, after.1 + 1), before);
                }
                prop_assert!(a.open(peer).1 <= cap);
                prop_assert_eq!(a.open(peer).0, held.len());
            }
        }
    }
}
