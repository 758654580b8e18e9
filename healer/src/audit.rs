//! The audit: one object record diffed against what the chunk servers'
//! inventories hold, into what is missing, what should move, and (over the
//! whole pass) which stored shards no record names.
//!
//! A shard slot of a record is
//! - **good**: its node is live, inventoried this pass, lists the shard,
//!   and no scrubber or read reported that copy bad;
//! - **missing**: no node (the write left it dirty), its node is dead
//!   (heartbeat expired past the grace period, or unregistered), its live
//!   node does not list it, or the copy is bad;
//! - **pending**: its node is suspect (heartbeat expired within the grace
//!   period) or could not be inventoried: neither repaired nor trusted.
//!
//! Invariants (tested over generated clusters):
//! - a slot is missing exactly when the truth says it is gone or bad, and
//!   good exactly when it is present and sound on a live node;
//! - `left` is, over the stripes, the least count of good slots minus the
//!   slots needed to read (k, or one replica); below zero the object is lost;
//! - moves are proposed only for objects with every slot good, each to a
//!   node of the stripe's current placement that the stripe does not use,
//!   and applying them makes the stripe's nodes its placement;
//! - an orphan is never a copy that a record names on a node, nor any
//!   shard of a version an unfinished WAL intent names.

use crate::limits::{SHARD_ID_BYTES, VERSION_ID_BYTES};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use tessera_gateway::limits::REPLICAS;
use tessera_gateway::meta::{shard_id, Layout, ObjectMeta, NO_NODE};
use tessera_gateway::placement::{place, rank, Candidate};

/// A chunk server's state as the registry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Live,
    /// Its heartbeat lease expired, within the dead grace period.
    Suspect,
    /// Expired past the grace period (or not registered).
    Dead,
}

/// One inventoried copy of a shard.
#[derive(Debug)]
pub struct Holder {
    /// Index into [`View::inventoried`].
    pub node: u16,
    /// Some record names this copy (set by [`audit`]).
    pub named: Cell<bool>,
}

/// What one pass knows of the chunk servers.
#[derive(Debug, Default)]
pub struct View {
    pub states: HashMap<String, NodeState>,
    /// Nodes inventoried this pass.
    pub inventoried: Vec<String>,
    inv_index: HashMap<String, u16>,
    /// Shard id → the inventoried copies.
    pub holders: HashMap<Vec<u8>, Vec<Holder>>,
    /// Copies (node, shard id) reported bad.
    pub bad: HashSet<(String, Vec<u8>)>,
    /// Where new copies may go: live nodes that are not draining.
    pub candidates: Vec<Candidate>,
}

impl View {
    /// Records that `node` was inventoried; returns its index.
    pub fn add_inventoried(&mut self, node: &str) -> u16 {
        if let Some(&i) = self.inv_index.get(node) {
            return i;
        }
        let i = self.inventoried.len() as u16;
        self.inventoried.push(node.to_string());
        self.inv_index.insert(node.to_string(), i);
        i
    }

    /// Adds a copy of `id` held by inventoried node `node`.
    pub fn add_shard(&mut self, node: u16, id: Vec<u8>) {
        self.holders.entry(id).or_default().push(Holder {
            node,
            named: Cell::new(false),
        });
    }

    pub fn state(&self, node: &str) -> NodeState {
        self.states.get(node).copied().unwrap_or(NodeState::Dead)
    }

    fn holds(&self, node: &str, id: &[u8]) -> Option<&Holder> {
        let i = *self.inv_index.get(node)?;
        self.holders.get(id)?.iter().find(|h| h.node == i)
    }

    fn inventoried(&self, node: &str) -> bool {
        self.inv_index.contains_key(node)
    }

    /// The copies no record named during the audits so far, of versions
    /// no unfinished WAL intent names: (node, shard id).
    pub fn orphans(&self, protected: &HashSet<Vec<u8>>) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for (id, hs) in &self.holders {
            if id.len() != SHARD_ID_BYTES || protected.contains(&id[..VERSION_ID_BYTES]) {
                continue;
            }
            for h in hs.iter().filter(|h| !h.named.get()) {
                if let Some(n) = self.inventoried.get(h.node as usize) {
                    out.push((n.clone(), id.clone()));
                }
            }
        }
        out
    }
}

/// Why a slot is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Why {
    /// The write never placed it (the record is dirty).
    NoNode,
    /// Its node is dead.
    DeadNode,
    /// Its live node does not hold it.
    Absent,
    /// Its copy failed a checksum.
    Bad,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub stripe: u32,
    pub index: u8,
    pub why: Why,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub stripe: u32,
    pub index: u8,
    pub from: String,
    pub to: String,
}

/// The repair classes, most urgent first after redundancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Class {
    /// Fewer than k good shards (or no good replica) are left.
    Lost,
    /// Shards missing where the registry thinks they should be.
    Missing,
    /// The write left it short; only the flag is left to clear.
    Dirty,
    /// A copy failed a checksum.
    Bad,
    /// A copy is on a dead node.
    DeadNode,
    /// Every copy is good but placement moved.
    Rebalance,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Lost => "lost",
            Class::Missing => "missing",
            Class::Dirty => "dirty",
            Class::Bad => "bad shard",
            Class::DeadNode => "dead node",
            Class::Rebalance => "rebalance",
        }
    }
}

/// One record's audit.
#[derive(Debug, Clone)]
pub struct Finding {
    pub key: String,
    /// The record's metad version when audited (repairs commit on it).
    pub md_version: u64,
    pub meta: ObjectMeta,
    pub missing: Vec<Missing>,
    pub pending: u32,
    pub moves: Vec<Move>,
    /// Least (good slots − slots needed) over the stripes.
    pub left: i32,
    /// `left` at full redundancy (m, or replicas − 1).
    pub full: i32,
}

impl Finding {
    /// What the healer should do about it, if anything.
    pub fn class(&self) -> Option<Class> {
        if self.left < 0 {
            return Some(Class::Lost);
        }
        if self.missing.iter().any(|x| x.why == Why::Bad) {
            return Some(Class::Bad);
        }
        if self.missing.iter().any(|x| x.why == Why::DeadNode) {
            return Some(Class::DeadNode);
        }
        if self.meta.dirty || self.missing.iter().any(|x| x.why == Why::NoNode) {
            return Some(Class::Dirty);
        }
        if !self.missing.is_empty() {
            return Some(Class::Missing);
        }
        if !self.moves.is_empty() {
            return Some(Class::Rebalance);
        }
        None
    }

    /// Sort key: least redundancy left first (DESIGN.md: a stripe with m
    /// missing shards before one with one), then dirty, bad, dead-node,
    /// then rebalancing.
    pub fn priority(&self) -> (i32, u8) {
        let c = match self.class() {
            Some(Class::Lost) => 0,
            Some(Class::Dirty) => 1,
            Some(Class::Bad) => 2,
            Some(Class::DeadNode) => 3,
            Some(Class::Missing) => 4,
            Some(Class::Rebalance) | None => 5,
        };
        (if c == 5 { i32::MAX } else { self.left }, c)
    }
}

/// The slots of a record: per stripe, (node index or NO_NODE), the width
/// a full stripe has, and the slots needed to read it.
pub fn slots(meta: &ObjectMeta) -> (Vec<Vec<u16>>, usize) {
    match &meta.layout {
        Layout::Replicated { replicas } if replicas.is_empty() => (Vec::new(), 1),
        Layout::Replicated { replicas } => {
            let mut r = replicas.clone();
            if r.len() < REPLICAS {
                r.resize(REPLICAS, NO_NODE);
            }
            (vec![r], 1)
        }
        Layout::Erasure { k, stripes, .. } => (stripes.clone(), *k as usize),
    }
}

/// The chunk-server id of slot (`stripe`, `index`) of a record.
pub fn slot_id(meta: &ObjectMeta, stripe: u32, index: u8) -> Vec<u8> {
    match &meta.layout {
        Layout::Replicated { .. } => shard_id(meta.shards_version(), 0, 0),
        Layout::Erasure { .. } => shard_id(meta.shards_version(), stripe, index),
    }
}

/// The node a record puts slot (`stripe`, `index`) on (`None`: no node,
/// or no such slot). Replicated records have one stripe, padded to
/// [`REPLICAS`] slots by [`slots`].
pub fn slot_node(meta: &ObjectMeta, stripe: u32, index: u8) -> Option<&String> {
    let n = match &meta.layout {
        Layout::Replicated { replicas } if stripe == 0 => replicas.get(index as usize),
        Layout::Replicated { .. } => None,
        Layout::Erasure { stripes, .. } => stripes
            .get(stripe as usize)
            .and_then(|s| s.get(index as usize)),
    }?;
    (*n != NO_NODE)
        .then(|| meta.nodes.get(*n as usize))
        .flatten()
}

/// The key placement ranks nodes by for a stripe (as the gateway wrote it).
pub fn placement_key(meta: &ObjectMeta, stripe: u32) -> Vec<u8> {
    match &meta.layout {
        Layout::Replicated { .. } => meta.shards_version().to_vec(),
        Layout::Erasure { .. } => shard_id(meta.shards_version(), stripe, 0),
    }
}

/// Nodes for `count` new copies of a stripe, best ranked first, skipping
/// the nodes in `used`; fewer when the candidates run out.
pub fn targets(key: &[u8], candidates: &[Candidate], used: &[String], count: usize) -> Vec<String> {
    rank(key, candidates)
        .into_iter()
        .filter(|c| !used.contains(&c.node_id))
        .take(count)
        .map(|c| c.node_id.clone())
        .collect()
}

/// Audits one record against the pass's view.
pub fn audit(key: &str, md_version: u64, meta: ObjectMeta, view: &View) -> Finding {
    let (stripes, need) = slots(&meta);
    // A record with no shards (a document that is all hot) is its own
    // data: metad keeps it on every replica, like three replicas.
    let full = stripes
        .first()
        .map_or(REPLICAS as i32 - 1, |s| s.len() as i32 - need as i32);
    let mut missing = Vec::new();
    let mut pending = 0u32;
    let mut left = full;
    for (s, stripe) in stripes.iter().enumerate() {
        let mut good = 0i32;
        for (i, &n) in stripe.iter().enumerate() {
            let id = slot_id(&meta, s as u32, i as u8);
            let miss = |why| Missing {
                stripe: s as u32,
                index: i as u8,
                why,
            };
            let Some(name) = (n != NO_NODE).then(|| meta.nodes.get(n as usize)).flatten() else {
                missing.push(miss(Why::NoNode));
                continue;
            };
            match view.state(name) {
                NodeState::Dead => missing.push(miss(Why::DeadNode)),
                NodeState::Suspect => pending += 1,
                NodeState::Live if !view.inventoried(name) => pending += 1,
                NodeState::Live => match view.holds(name, &id) {
                    Some(h) => {
                        // A bad copy is still named: the repair rewrites it
                        // in place, and until then it is nobody's garbage.
                        h.named.set(true);
                        if view.bad.contains(&(name.clone(), id.clone())) {
                            missing.push(miss(Why::Bad));
                        } else {
                            good += 1;
                        }
                    }
                    None => missing.push(miss(Why::Absent)),
                },
            }
        }
        left = left.min(good - need as i32);
    }
    let mut moves = Vec::new();
    if missing.is_empty() && pending == 0 && !meta.dirty {
        for (s, stripe) in stripes.iter().enumerate() {
            let want = place(
                &placement_key(&meta, s as u32),
                &view.candidates,
                stripe.len(),
            );
            if want.len() < stripe.len() {
                continue;
            }
            let now: Vec<&String> = stripe
                .iter()
                .filter_map(|&n| meta.nodes.get(n as usize))
                .collect();
            let mut free = want.iter().map(|c| &c.node_id).filter(|w| !now.contains(w));
            for (i, from) in now.iter().enumerate() {
                if want.iter().any(|c| &c.node_id == *from) {
                    continue;
                }
                if let Some(to) = free.next() {
                    moves.push(Move {
                        stripe: s as u32,
                        index: i as u8,
                        from: (*from).clone(),
                        to: to.clone(),
                    });
                }
            }
        }
    }
    Finding {
        key: key.to_string(),
        md_version,
        meta,
        missing,
        pending,
        moves,
        left,
        full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tessera_gateway::meta::CodecId;

    /// A node's generated state: 0 live and inventoried, 1 live but its
    /// inventory failed, 2 suspect, 3 dead.
    fn node_state(s: u8) -> NodeState {
        match s {
            0 | 1 => NodeState::Live,
            2 => NodeState::Suspect,
            _ => NodeState::Dead,
        }
    }

    /// The truth of one slot: 0..=5 present, 6 absent, 7 bad, 8 no node.
    #[derive(Debug, Clone)]
    struct Obj {
        ec: Option<(u8, u8)>,
        stripes: Vec<Vec<(usize, u8)>>,
        version: u8,
    }

    fn obj(nodes: usize) -> impl Strategy<Value = Obj> {
        let ec = prop_oneof![Just(None), (1u8..4, 1u8..3).prop_map(Some)];
        (ec, 1usize..4, any::<u8>(), any::<u64>()).prop_flat_map(move |(ec, ns, version, seed)| {
            let width = ec.map_or(REPLICAS, |(k, m)| (k + m) as usize).min(nodes);
            let ec = ec.filter(|(k, m)| ((k + m) as usize) <= nodes);
            let ns = if ec.is_none() { 1 } else { ns };
            proptest::collection::vec(proptest::collection::vec(0u8..9, width), ns).prop_map(
                move |truth| {
                    let stripes = truth
                        .into_iter()
                        .enumerate()
                        .map(|(s, t)| {
                            // Distinct nodes per stripe: a rotation by the seed.
                            t.into_iter()
                                .enumerate()
                                .map(|(i, x)| ((seed as usize + s + i) % nodes, x))
                                .collect()
                        })
                        .collect();
                    Obj {
                        ec,
                        stripes,
                        version,
                    }
                },
            )
        })
    }

    fn meta_of(o: &Obj, names: &[String]) -> ObjectMeta {
        let version = vec![o.version; 16];
        let idx = |s: &Vec<(usize, u8)>| -> Vec<u16> {
            s.iter()
                .map(|&(n, t)| if t == 8 { NO_NODE } else { n as u16 })
                .collect()
        };
        let (layout, size) = match o.ec {
            None => (
                Layout::Replicated {
                    replicas: idx(&o.stripes[0]),
                },
                100,
            ),
            Some((k, m)) => (
                Layout::Erasure {
                    codec: CodecId::Cauchy256,
                    k,
                    m,
                    shard_bytes: 4096,
                    stripes: o.stripes.iter().map(idx).collect(),
                },
                (o.stripes.len() as u64 - 1) * k as u64 * 4096 + 1,
            ),
        };
        ObjectMeta {
            version_id: version,
            size,
            created_unix_millis: 1,
            dirty: false,
            layout,
            nodes: names.to_vec(),
            doc: None,
            attrs: Vec::new(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Every slot is classified as its truth says; `left` is the least
        /// spare count; moves only for sound objects and they land on the
        /// placement; orphans are exactly the unnamed, unprotected copies.
        #[test]
        fn audit_matches_the_truth(
            (states, objs) in proptest::collection::vec(0u8..4, 4..9).prop_flat_map(|st| {
                let n = st.len();
                (Just(st), proptest::collection::vec(obj(n), 1..12))
            }),
            strays in proptest::collection::vec((0usize..9, any::<u8>(), 0u32..3), 0..8),
            protect in any::<u8>(),
        ) {
            let n = states.len();
            let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
            let objs: Vec<Obj> = objs.into_iter().enumerate().map(|(i, mut o)| { o.version = i as u8; o }).collect();
            let mut view = View::default();
            for (i, &s) in states.iter().enumerate() {
                view.states.insert(names[i].clone(), node_state(s));
                if s == 0 {
                    view.add_inventoried(&names[i]);
                }
                if s <= 1 {
                    view.candidates.push(Candidate { node_id: names[i].clone(), weight: 1, zone: String::new() });
                }
            }
            let metas: Vec<ObjectMeta> = objs.iter().map(|o| meta_of(o, &names)).collect();
            let mut named: HashSet<(String, Vec<u8>)> = HashSet::new();
            // Every (node, id) a record places, whatever its truth: a stray
            // copy must not make an absent slot present.
            let mut placed: HashSet<(String, Vec<u8>)> = HashSet::new();
            for (o, m) in objs.iter().zip(&metas) {
                for (s, st) in o.stripes.iter().enumerate() {
                    for (i, &(node, t)) in st.iter().enumerate() {
                        let id = slot_id(m, s as u32, i as u8);
                        placed.insert((names[node].clone(), id.clone()));
                        if states[node] == 0 && (t <= 5 || t == 7) {
                            let ni = view.add_inventoried(&names[node]);
                            view.add_shard(ni, id.clone());
                            named.insert((names[node].clone(), id.clone()));
                            if t == 7 {
                                view.bad.insert((names[node].clone(), id));
                            }
                        }
                    }
                }
            }
            // Stray copies: of known versions on other nodes, or unknown ones.
            let mut stray_set = HashSet::new();
            for (node, v, s) in &strays {
                let node = node % n;
                if states[node] != 0 { continue; }
                let id = shard_id(&[*v; 16], *s, 0);
                if placed.contains(&(names[node].clone(), id.clone())) { continue; }
                if stray_set.insert((names[node].clone(), id.clone())) {
                    let ni = view.add_inventoried(&names[node]);
                    view.add_shard(ni, id);
                }
            }
            for (o, m) in objs.iter().zip(&metas) {
                let f = audit("k", 1, m.clone(), &view);
                // slot_node reads the same slots as `slots` does.
                for (si, st) in slots(m).0.iter().enumerate() {
                    for (ii, &nn) in st.iter().enumerate() {
                        let want = (nn != NO_NODE).then(|| &m.nodes[nn as usize]);
                        prop_assert_eq!(slot_node(m, si as u32, ii as u8), want);
                    }
                }
                let need = o.ec.map_or(1, |(k, _)| k as i32);
                let mut want_missing = Vec::new();
                let mut want_pending = 0;
                let mut left = i32::MAX;
                for (s, st) in o.stripes.iter().enumerate() {
                    let mut good = 0;
                    for (i, &(node, t)) in st.iter().enumerate() {
                        let miss = |why| Missing { stripe: s as u32, index: i as u8, why };
                        if t == 8 { want_missing.push(miss(Why::NoNode)); continue; }
                        match states[node] {
                            3 => want_missing.push(miss(Why::DeadNode)),
                            1 | 2 => want_pending += 1,
                            _ if t == 6 => want_missing.push(miss(Why::Absent)),
                            _ if t == 7 => want_missing.push(miss(Why::Bad)),
                            _ => good += 1,
                        }
                    }
                    // Replicated records are padded to three slots.
                    if o.ec.is_none() && st.len() < REPLICAS {
                        for i in st.len()..REPLICAS {
                            want_missing.push(Missing { stripe: 0, index: i as u8, why: Why::NoNode });
                        }
                    }
                    left = left.min(good - need);
                }
                prop_assert_eq!(&f.missing, &want_missing);
                prop_assert_eq!(f.pending, want_pending);
                prop_assert_eq!(f.left, left);
                if !f.moves.is_empty() {
                    prop_assert!(f.missing.is_empty() && f.pending == 0);
                    let (mut stripes, _) = slots(m);
                    let mut names2 = m.nodes.clone();
                    for mv in &f.moves {
                        let i = names2.iter().position(|x| *x == mv.to).unwrap_or_else(|| { names2.push(mv.to.clone()); names2.len() - 1 });
                        prop_assert_eq!(&names2[stripes[mv.stripe as usize][mv.index as usize] as usize], &mv.from);
                        stripes[mv.stripe as usize][mv.index as usize] = i as u16;
                    }
                    for (s, st) in stripes.iter().enumerate() {
                        let mut got: Vec<&String> = st.iter().map(|&x| &names2[x as usize]).collect();
                        let mut want: Vec<&String> = place(&placement_key(m, s as u32), &view.candidates, st.len()).into_iter().map(|c| &c.node_id).collect();
                        got.sort();
                        want.sort();
                        prop_assert_eq!(got, want);
                    }
                }
            }
            let protected: HashSet<Vec<u8>> = [vec![protect; 16]].into_iter().collect();
            let orphans: HashSet<(String, Vec<u8>)> = view.orphans(&protected).into_iter().collect();
            for o in &orphans {
                prop_assert!(!named.contains(o), "a named copy is an orphan: {:?}", o);
                prop_assert!(o.1[..16] != [protect; 16]);
            }
            for s in &stray_set {
                // A stray of a version a record names on another node is
                // still an orphan: only the exact copy a record names is kept.
                prop_assert_eq!(orphans.contains(s), s.1[..16] != [protect; 16], "{:?}", s);
            }
        }
    }
}
