//! Carrying out one record's repair: missing replicas copied from a good
//! one, missing or bad EC shards rebuilt from any k good shards of their
//! stripe, good shards moved where placement now wants them, and the record
//! committed by compare-and-set under the leader's fence.
//!
//! Invariants:
//! - nothing is deleted before the record that no longer names it is
//!   committed, and only copies that record does not name are deleted (a
//!   repair never deletes the last good copy);
//! - a shard counted missing because its live node's inventory lacked it is
//!   checked once more on that node before it is rebuilt (the inventory may
//!   predate the write);
//! - every byte read or written goes through the throttle first.

use crate::audit::{placement_key, slot_id, slot_node, slots, targets, Finding, Missing, Why};
use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::lease::Leadership;
use crate::limits::*;
use crate::throttle::Throttle;
use futures::future::join_all;
use std::cell::Cell;
use std::rc::Rc;
use tessera_gateway::bridge::MetaBridge;
use tessera_gateway::codec::codec_for;
use tessera_gateway::meta::{object_key, stripe_geometry, Layout, ObjectMeta, NO_NODE};
use tessera_gateway::nodes::Nodes;
use tessera_gateway::placement::Candidate;
use tessera_metad::client::Consistency;

/// Counters since this leader started.
#[derive(Debug, Default)]
pub struct Counters {
    pub shards_rebuilt: Cell<u64>,
    pub shards_moved: Cell<u64>,
    pub bytes: Cell<u64>,
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n)
}

/// What a repair needs.
pub struct Ctx {
    pub nodes: Rc<Nodes>,
    pub bridge: MetaBridge,
    pub fence: Rc<Fence>,
    pub lead: Rc<Leadership>,
    pub throttle: Rc<Throttle>,
    pub counters: Rc<Counters>,
}

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Shards rebuilt (or copied) and moved; the record was committed.
    /// `waiting` shards had no node to go to yet.
    Committed {
        rebuilt: u32,
        moved: u32,
        waiting: u32,
    },
    /// Nothing needed doing after all (the shards were there).
    Nothing,
}

/// Whether `meta` names the copy `id` on `node`.
pub fn names_copy(meta: &ObjectMeta, node: &str, id: &[u8]) -> bool {
    let (stripes, _) = slots(meta);
    stripes.iter().enumerate().any(|(s, st)| {
        st.iter().enumerate().any(|(i, &n)| {
            n != NO_NODE
                && meta.nodes.get(n as usize).is_some_and(|x| x == node)
                && slot_id(meta, s as u32, i as u8) == id
        })
    })
}

impl Ctx {
    async fn get(&self, node: &str, id: &[u8]) -> Result<Vec<u8>> {
        self.lead.check()?;
        let c = self.nodes.client(node).await?;
        let data = c.get(id).await?;
        self.throttle.take(data.len() as u64).await;
        add(&self.counters.bytes, data.len() as u64);
        crate::metrics::bytes(data.len() as u64);
        Ok(data)
    }

    async fn put(&self, node: &str, id: &[u8], data: &[u8]) -> Result<()> {
        self.throttle.take(data.len() as u64).await;
        self.lead.check()?;
        let c = self.nodes.client(node).await?;
        c.put(id, data).await?;
        add(&self.counters.bytes, data.len() as u64);
        crate::metrics::bytes(data.len() as u64);
        Ok(())
    }

    /// Writes `data` as `id` to the best-ranked of `choices` that takes it.
    async fn put_somewhere(&self, choices: &[String], id: &[u8], data: &[u8]) -> Result<String> {
        let mut last = None;
        for n in choices.iter().take(SHARD_WRITE_TRIES) {
            match self.put(n, id, data).await {
                Ok(()) => return Ok(n.clone()),
                Err(e @ Error::Fenced(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(node = %n, error = %e, "writing a rebuilt shard failed; trying the next node");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::Unavailable("no live chunk server can take a rebuilt shard".into())
        }))
    }

    async fn delete(&self, node: &str, id: &[u8]) {
        if let Ok(c) = self.nodes.client(node).await {
            if let Err(e) = c.delete(id).await {
                tracing::debug!(node, error = %e, "deleting a replaced copy failed; the GC retries");
            }
        }
    }
}

/// Repairs one audited record; `candidates` are where new copies may go.
pub async fn repair(ctx: &Ctx, f: &Finding, candidates: &[Candidate]) -> Result<Done> {
    ctx.lead.check()?;
    let okey = object_key(&f.key);
    let k2 = okey.clone();
    let cur = ctx
        .bridge
        .call("reading a record to repair", move |c| async move {
            c.get(&k2, Consistency::Linearizable).await
        })
        .await?;
    match cur {
        Some(v) if v.version == f.md_version => {}
        _ => {
            return Err(Error::Changed(format!(
                "{:?} changed since the audit",
                f.key
            )))
        }
    }
    let meta = &f.meta;
    // Confirm what the inventory said was absent from live nodes.
    let mut missing: Vec<Missing> = Vec::with_capacity(f.missing.len());
    for m in &f.missing {
        if m.why == Why::Absent {
            let node = slot_node(meta, m.stripe, m.index);
            if let Some(node) = node {
                let id = slot_id(meta, m.stripe, m.index);
                if let Ok(c) = ctx.nodes.client(node).await {
                    if c.stat(&id).await.is_ok() {
                        continue;
                    }
                }
            }
        }
        missing.push(m.clone());
    }
    let (mut stripes, need) = slots(meta);
    let mut names: Vec<String> = meta.nodes.clone();
    let index_of = |names: &mut Vec<String>, n: &str| -> u16 {
        match names.iter().position(|x| x == n) {
            Some(i) => i as u16,
            None => {
                names.push(n.to_string());
                (names.len() - 1) as u16
            }
        }
    };
    // Copies written by this repair (to delete if the commit fails) and
    // copies to delete once it succeeds.
    let mut written: Vec<(String, Vec<u8>)> = Vec::new();
    let mut replaced: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rebuilt = 0u32;
    // Missing slots no node can take now (too few live nodes).
    let mut waiting = 0u32;
    let result: Result<()> = async {
        for (s, stripe) in stripes.iter_mut().enumerate() {
            let gone: Vec<&Missing> = missing.iter().filter(|m| m.stripe as usize == s).collect();
            if gone.is_empty() {
                continue;
            }
            let width = stripe.len();
            let slot_node = |i: usize| slot_node(meta, s as u32, i as u8).cloned();
            let is_gone = |i: usize| gone.iter().any(|m| m.index as usize == i);
            // Good sources: slots not missing, on live nodes.
            let sources: Vec<(usize, String)> = (0..width)
                .filter(|&i| !is_gone(i))
                .filter_map(|i| slot_node(i).map(|n| (i, n)))
                .filter(|(_, n)| ctx.nodes.is_live(n))
                .collect();
            // Every live node of the stripe is taken (a lost or bad copy on a
            // live node is rewritten there, where placement put it).
            let mut used: Vec<String> = (0..width)
                .filter_map(&slot_node)
                .filter(|n| ctx.nodes.is_live(n))
                .collect();
            let in_place = |m: &Missing| -> Option<String> {
                slot_node(m.index as usize)
                    .filter(|o| matches!(m.why, Why::Bad | Why::Absent) && ctx.nodes.is_live(o))
            };
            let pkey = placement_key(meta, s as u32);
            // Decide what can be placed before reading anything: slots
            // rewritten in place, then as many others as free nodes remain.
            let mut free = targets(&pkey, candidates, &used, usize::MAX).len();
            let doable: Vec<&Missing> = gone
                .iter()
                .copied()
                .filter(|m| {
                    if in_place(m).is_some() {
                        return true;
                    }
                    if free > 0 {
                        free -= 1;
                        return true;
                    }
                    false
                })
                .collect();
            if doable.len() < gone.len() {
                waiting += (gone.len() - doable.len()) as u32;
            }
            if doable.is_empty() {
                continue;
            }
            let rebuilt_shards = rebuild(ctx, meta, s as u32, need, &sources, &doable).await?;
            for (m, bytes) in doable.iter().zip(rebuilt_shards) {
                let id = slot_id(meta, s as u32, m.index);
                let old = slot_node(m.index as usize);
                let mut choices: Vec<String> = in_place(m).into_iter().collect();
                choices.extend(targets(&pkey, candidates, &used, SHARD_WRITE_TRIES));
                let at = ctx.put_somewhere(&choices, &id, &bytes).await?;
                rebuilt += 1;
                if old.as_deref() != Some(at.as_str()) {
                    written.push((at.clone(), id.clone()));
                    if let (Why::Bad, Some(o)) = (m.why, old) {
                        replaced.push((o, id.clone()));
                    }
                }
                if !used.contains(&at) {
                    used.push(at.clone());
                }
                stripe[m.index as usize] = index_of(&mut names, &at);
            }
        }
        // Moves (only proposed when every slot is good).
        for mv in &f.moves {
            let id = slot_id(meta, mv.stripe, mv.index);
            let data = ctx.get(&mv.from, &id).await?;
            ctx.put(&mv.to, &id, &data).await?;
            written.push((mv.to.clone(), id.clone()));
            replaced.push((mv.from.clone(), id));
            if let Some(slot) = stripes
                .get_mut(mv.stripe as usize)
                .and_then(|s| s.get_mut(mv.index as usize))
            {
                *slot = index_of(&mut names, &mv.to);
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        // Nothing was committed: the copies this repair wrote are named by
        // no record (unless in place) and go now, not after a GC grace.
        for (n, id) in &written {
            ctx.delete(n, id).await;
        }
        return Err(e);
    }
    let moved = f.moves.len() as u32;
    let still_short = stripes.iter().any(|s| s.contains(&NO_NODE));
    if rebuilt == 0 && moved == 0 && meta.dirty == still_short {
        if waiting > 0 {
            return Err(Error::NoPlace(format!(
                "{waiting} shard(s) of {:?} have no live chunk server to go to that their stripe does not use; waiting for nodes",
                f.key
            )));
        }
        return Ok(Done::Nothing);
    }
    let new = rebuild_record(meta, stripes, names, still_short);
    match ctx
        .fence
        .commit(&okey, Some(new.encode()), Some(f.md_version))
        .await
    {
        Ok(_) => {}
        Err(e) => {
            if !matches!(e, Error::Fenced(_)) {
                let k2 = okey.clone();
                let now = ctx
                    .bridge
                    .call("reading a record after a lost race", move |c| async move {
                        c.get(&k2, Consistency::Linearizable).await
                    })
                    .await
                    .ok()
                    .flatten()
                    .and_then(|v| ObjectMeta::decode(&v.value).ok());
                for (n, id) in &written {
                    if !now.as_ref().is_some_and(|m| names_copy(m, n, id)) {
                        ctx.delete(n, id).await;
                    }
                }
            }
            return Err(e);
        }
    }
    add(&ctx.counters.shards_rebuilt, rebuilt as u64);
    add(&ctx.counters.shards_moved, moved as u64);
    for (n, id) in &replaced {
        if !names_copy(&new, n, id) {
            ctx.delete(n, id).await;
        }
    }
    Ok(Done::Committed {
        rebuilt,
        moved,
        waiting,
    })
}

/// The bytes of each `gone` slot of stripe `s`, from its good `sources`.
async fn rebuild(
    ctx: &Ctx,
    meta: &ObjectMeta,
    s: u32,
    need: usize,
    sources: &[(usize, String)],
    gone: &[&Missing],
) -> Result<Vec<Vec<u8>>> {
    match &meta.layout {
        Layout::Replicated { .. } => {
            let id = slot_id(meta, 0, 0);
            for (_, n) in sources {
                match ctx.get(n, &id).await {
                    Ok(d) => return Ok(gone.iter().map(|_| d.clone()).collect()),
                    Err(e @ Error::Fenced(_)) => return Err(e),
                    Err(e) => {
                        tracing::warn!(node = %n, error = %e, "reading a replica failed; trying another")
                    }
                }
            }
            Err(Error::DataLoss(format!(
                "no replica of an object of {} bytes could be read",
                meta.size
            )))
        }
        Layout::Erasure {
            codec,
            k,
            m,
            shard_bytes,
            ..
        } => {
            let (k, m) = (*k as usize, *m as usize);
            let shard_len = stripe_geometry(meta.size, k as u8, *shard_bytes, s as u64).1 as usize;
            // Prefer data shards (no decode when all k are there).
            let mut order: Vec<&(usize, String)> = sources.iter().collect();
            order.sort_by_key(|(i, _)| *i);
            let mut present: Vec<(usize, Vec<u8>)> = Vec::with_capacity(k);
            let mut next = 0;
            while present.len() < need && next < order.len() {
                let want = (need - present.len()).min(order.len() - next);
                let batch = &order[next..next + want];
                next += want;
                let got = join_all(batch.iter().map(|(i, n)| async move {
                    (*i, n, ctx.get(n, &slot_id(meta, s, *i as u8)).await)
                }))
                .await;
                for (i, n, r) in got {
                    match r {
                        Ok(d) if d.len() == shard_len => present.push((i, d)),
                        Ok(d) => {
                            tracing::warn!(node = %n, len = d.len(), want = shard_len, "a shard has the wrong length; not used")
                        }
                        Err(e @ Error::Fenced(_)) => return Err(e),
                        Err(e) => {
                            tracing::warn!(node = %n, error = %e, "reading a shard failed; trying another")
                        }
                    }
                }
            }
            if present.len() < k {
                return Err(Error::DataLoss(format!(
                    "stripe {s}: only {} of the {k} shards needed could be read",
                    present.len()
                )));
            }
            let c = codec_for(*codec);
            let data = c.data_from(k, m, present)?;
            let parity = if gone.iter().any(|g| g.index as usize >= k) {
                let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
                c.encode(k, m, &refs)?
            } else {
                Vec::new()
            };
            let mut out = Vec::with_capacity(gone.len());
            for g in gone {
                let i = g.index as usize;
                let b = if i < k {
                    data.get(i)
                } else {
                    parity.get(i - k)
                };
                out.push(
                    b.cloned()
                        .ok_or_else(|| Error::Internal(format!("shard {i} of a {k}+{m} stripe")))?,
                );
            }
            Ok(out)
        }
    }
}

/// The record with new slots: the node table rebuilt to the nodes used.
fn rebuild_record(
    meta: &ObjectMeta,
    stripes: Vec<Vec<u16>>,
    names: Vec<String>,
    dirty: bool,
) -> ObjectMeta {
    let mut table: Vec<String> = Vec::new();
    let remap: Vec<Vec<u16>> = stripes
        .into_iter()
        .map(|s| {
            s.into_iter()
                .map(|n| {
                    if n == NO_NODE {
                        return NO_NODE;
                    }
                    let Some(name) = names.get(n as usize) else {
                        return NO_NODE;
                    };
                    match table.iter().position(|x| x == name) {
                        Some(i) => i as u16,
                        None => {
                            table.push(name.clone());
                            (table.len() - 1) as u16
                        }
                    }
                })
                .collect()
        })
        .collect();
    let mut new = meta.clone();
    new.nodes = table;
    new.dirty = dirty;
    new.layout = match &meta.layout {
        Layout::Replicated { .. } => Layout::Replicated {
            replicas: remap.into_iter().next().unwrap_or_default(),
        },
        Layout::Erasure {
            codec,
            k,
            m,
            shard_bytes,
            ..
        } => Layout::Erasure {
            codec: *codec,
            k: *k,
            m: *m,
            shard_bytes: *shard_bytes,
            stripes: remap,
        },
    };
    new
}
