//! The healer's loop: stand by until the lease is granted, install the
//! fence, then run passes until the lease is lost.
//!
//! A pass: take the view (registry, one inventory per chunk server, bad
//! shard reports); list every record (paginated, merged across groups) and
//! audit it; read the unfinished WAL entries (their versions are never
//! garbage); repair in priority order (least redundancy left first) with
//! bounded concurrency under the bytes/s throttle; finish WAL entries whose
//! writes are committed and clean (or abandoned past the grace period);
//! delete orphans seen in two audits a grace period apart; publish status.
//!
//! A pass is cheap to restart: progress lives in the records themselves
//! (each repair commits on its own), so a new leader's first pass audits
//! again and finds only what is still left.

use crate::audit::{audit, Class, Finding, View};
use crate::bad_copies::{BadCopies, BadCopiesRecord};
use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::inventory::take_view;
use crate::lease::Leadership;
use crate::limits::*;
use crate::repair::{repair, Counters, Ctx, Done};
use crate::status::{redundancy_label, HealerStatus, RepairRequest};
use crate::throttle::Throttle;
use futures::StreamExt;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tessera_gateway::bridge::MetaBridge;
use tessera_gateway::meta::{object_key, ObjectMeta, WalIntent, OBJECT_KEY_PREFIX};
use tessera_gateway::nodes::Nodes;
use tessera_gateway::objects::now_millis;
use tessera_metad::client::Consistency;

/// The healer's settings.
#[derive(Debug, Clone)]
pub struct HealerConfig {
    /// This instance's name (the lease holder).
    pub id: String,
    pub pass_interval: Duration,
    pub dead_grace: Duration,
    pub gc_grace: Duration,
    pub concurrency: usize,
    pub bytes_per_sec: u64,
    /// TLS to chunk servers (with the node certificate).
    pub chunk_tls: Option<tessera_tls::Connector>,
}

impl Default for HealerConfig {
    fn default() -> Self {
        HealerConfig {
            id: "healer-1".into(),
            pass_interval: Duration::from_secs(PASS_INTERVAL_DEFAULT_SECS),
            dead_grace: Duration::from_secs(DEAD_GRACE_DEFAULT_SECS),
            gc_grace: Duration::from_secs(GC_GRACE_DEFAULT_SECS),
            concurrency: REPAIR_CONCURRENCY_DEFAULT,
            bytes_per_sec: REPAIR_BYTES_PER_SEC_DEFAULT,
            chunk_tls: None,
        }
    }
}

impl HealerConfig {
    pub fn validate(&self) -> Result<()> {
        if self.id.is_empty() || self.id.len() > 256 {
            return Err(Error::Invalid("the healer id must be 1..=256 bytes".into()));
        }
        if !(1..=REPAIR_CONCURRENCY_MAX).contains(&self.concurrency) {
            return Err(Error::Invalid(format!(
                "repair concurrency {} must be 1..={REPAIR_CONCURRENCY_MAX}",
                self.concurrency
            )));
        }
        if self.bytes_per_sec < REPAIR_BYTES_PER_SEC_MIN {
            return Err(Error::Invalid(format!(
                "repair rate {} B/s is below the minimum {REPAIR_BYTES_PER_SEC_MIN} B/s: the healer would never catch up",
                self.bytes_per_sec
            )));
        }
        Ok(())
    }
}

/// One complete audit: every record (or the named keys) diffed against
/// the view.
pub struct AuditReport {
    pub view: View,
    pub scrubs: Vec<crate::status::NodeScrub>,
    /// Records that need work, most urgent first.
    pub findings: Vec<Finding>,
    pub objects: u64,
    pub by_redundancy: BTreeMap<String, u64>,
    /// False when some record could not be read or decoded, or the audit
    /// stopped early: no garbage may be collected from it.
    pub complete: bool,
}

/// Audits the cluster. With a leader (`lead`), `bad` takes and keeps the
/// scrubbers' reports; without one (a preview) the reports stay queued
/// on the chunk servers for the healer.
pub async fn audit_cluster(
    bridge: &MetaBridge,
    nodes: &Nodes,
    dead_grace: Duration,
    bad: &mut BadCopies,
    only: &[String],
    lead: Option<&Leadership>,
) -> Result<AuditReport> {
    let (view, scrubs) = take_view(nodes, dead_grace, bad, lead.is_some()).await?;
    let mut findings = Vec::new();
    let mut by_redundancy = BTreeMap::new();
    let mut objects = 0u64;
    let mut complete = only.is_empty();
    let mut audit_one = |okey: &[u8], value: &[u8], version: u64| {
        let key = String::from_utf8_lossy(&okey[OBJECT_KEY_PREFIX.len()..]).into_owned();
        match ObjectMeta::decode(value) {
            Ok(meta) => {
                let f = audit(&key, version, meta, &view);
                objects += 1;
                *by_redundancy.entry(redundancy_label(f.left)).or_insert(0) += 1;
                if f.class().is_some() {
                    findings.push(f);
                }
            }
            Err(e) => {
                tracing::error!(key = %key, error = %e, "a record does not decode; it is skipped and no garbage is collected this pass");
                complete = false;
            }
        }
    };
    if only.is_empty() {
        let mut after: Vec<u8> = Vec::new();
        let mut page_count = 0usize;
        loop {
            if let Some(l) = lead {
                l.check()?;
            }
            let a = after.clone();
            let (page, more) = bridge
                .call("listing object records", move |c| async move {
                    c.list(OBJECT_KEY_PREFIX, &a, LIST_PAGE_RECORDS).await
                })
                .await?;
            for (k, v) in &page {
                audit_one(k, &v.value, v.version);
            }
            page_count += 1;
            match page.last() {
                Some((k, _)) if more => after = k.clone(),
                _ => break,
            }
            if page_count * LIST_PAGE_RECORDS as usize >= AUDIT_RECORDS_MAX {
                tracing::warn!(
                    limit = AUDIT_RECORDS_MAX,
                    "audit stopped at its record limit; the rest wait for the next pass"
                );
                complete = false;
                break;
            }
        }
    } else {
        for key in only {
            let okey = object_key(key);
            let k2 = okey.clone();
            let cur = bridge
                .call("reading a record", move |c| async move {
                    c.get(&k2, Consistency::Linearizable).await
                })
                .await?;
            if let Some(v) = cur {
                audit_one(&okey, &v.value, v.version);
            }
        }
    }
    findings.sort_by_key(|f| f.priority());
    Ok(AuditReport {
        view,
        scrubs,
        findings,
        objects,
        by_redundancy,
        complete,
    })
}

/// Clears the flag when dropped (on every way out of a scope).
struct FlagGuard(Rc<Cell<bool>>);

impl Drop for FlagGuard {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

fn scopeguard(flag: Rc<Cell<bool>>) -> FlagGuard {
    FlagGuard(flag)
}

/// The healer: one per process.
pub struct Healer {
    cfg: HealerConfig,
    bridge: MetaBridge,
    nodes: Rc<Nodes>,
    lead: Rc<Leadership>,
    throttle: Rc<Throttle>,
    counters: Rc<Counters>,
    bad: RefCell<BadCopies>,
    /// What this leader last stored of `bad` in metad.
    bad_record: RefCell<BadCopiesRecord>,
    /// Orphan copies and when an audit first found them orphaned.
    orphans: RefCell<HashMap<(String, Vec<u8>), Instant>>,
    status: RefCell<HealerStatus>,
    stop: Rc<Cell<bool>>,
}

impl Healer {
    pub fn new(cfg: HealerConfig, bridge: MetaBridge, stop: Rc<Cell<bool>>) -> Result<Rc<Self>> {
        cfg.validate()?;
        Ok(Rc::new(Healer {
            nodes: Nodes::new(bridge.clone(), cfg.chunk_tls.clone(), None),
            lead: Rc::new(Leadership::new(bridge.clone(), &cfg.id)),
            throttle: Rc::new(Throttle::new(cfg.bytes_per_sec)),
            counters: Rc::new(Counters::default()),
            bad: RefCell::new(BadCopies::default()),
            bad_record: RefCell::new(BadCopiesRecord::default()),
            orphans: RefCell::new(HashMap::new()),
            status: RefCell::new(HealerStatus::default()),
            bridge,
            cfg,
            stop,
        }))
    }

    /// Runs until `stop` is set, leading whenever the lease is granted.
    pub async fn run(self: Rc<Self>) {
        while !self.stop.get() {
            if !self.lead.valid() {
                crate::metrics::leading(false);
                match self.lead.try_acquire().await {
                    Ok(true) => crate::metrics::leading(true),
                    Ok(false) => {
                        glommio::timer::sleep(STANDBY_POLL).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "asking for the healer lease failed");
                        glommio::timer::sleep(STANDBY_POLL).await;
                        continue;
                    }
                }
                let epoch = self.lead.epoch();
                tracing::info!(id = %self.cfg.id, epoch, "this healer leads");
                self.spawn_renewer(epoch);
                let fence = match Fence::install(self.bridge.clone(), epoch).await {
                    Ok(f) => Rc::new(f),
                    Err(e) => {
                        tracing::warn!(error = %e, "installing the fence failed; standing by");
                        self.lead.release().await;
                        glommio::timer::sleep(STANDBY_POLL).await;
                        continue;
                    }
                };
                self.orphans.borrow_mut().clear();
                self.bad_record.borrow_mut().reset();
                // Go on with the copies earlier leaders were told are bad.
                match BadCopies::load(&self.bridge).await {
                    Ok(stored) => {
                        if !stored.set.is_empty() {
                            tracing::info!(
                                copies = stored.set.len(),
                                "bad copies from earlier leaders"
                            );
                        }
                        let mut bad = self.bad.borrow_mut();
                        for (n, id) in stored.set {
                            bad.insert(n, id);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the stored bad copies could not be read; the next scrubs find them again")
                    }
                }
                *self.status.borrow_mut() = HealerStatus {
                    leader: self.cfg.id.clone(),
                    epoch,
                    ..Default::default()
                };
                self.lead_until_lost(fence).await;
                tracing::info!(id = %self.cfg.id, epoch, "this healer stopped leading");
            }
        }
        self.lead.release().await;
    }

    fn spawn_renewer(self: &Rc<Self>, epoch: u64) {
        let me = self.clone();
        glommio::spawn_local(async move {
            while me.lead.epoch() == epoch && me.lead.valid() && !me.stop.get() {
                glommio::timer::sleep(LEASE_RENEW_EVERY).await;
                if me.lead.epoch() != epoch || !me.lead.renew().await {
                    break;
                }
            }
        })
        .detach();
    }

    async fn lead_until_lost(self: &Rc<Self>, fence: Rc<Fence>) {
        let mut served = 0u64;
        while self.lead.valid() && !self.stop.get() {
            let req = self.request().await;
            let (only, req_id) = match &req {
                Some(r) if r.id > served => (r.keys.clone(), r.id),
                _ => (Vec::new(), 0),
            };
            {
                let mut st = self.status.borrow_mut();
                st.request_id = req_id.max(served);
                st.request_done = req_id == 0;
            }
            let started = Instant::now();
            match self.pass(&fence, &only).await {
                Ok(()) => self.status.borrow_mut().last_error.clear(),
                Err(Error::Fenced(m)) => {
                    tracing::warn!(reason = %m, "pass stopped: fenced");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pass stopped");
                    self.status.borrow_mut().last_error = e.to_string();
                }
            }
            if req_id > 0 {
                served = req_id;
            }
            {
                let mut st = self.status.borrow_mut();
                st.passes += 1;
                st.phase = "idle".into();
                st.last_pass_secs = started.elapsed().as_secs_f64();
                crate::metrics::pass(started.elapsed());
                st.request_done = true;
            }
            self.publish(&fence).await;
            // Wait for the next pass, a request, or the end of leadership.
            let until = Instant::now() + self.cfg.pass_interval;
            while Instant::now() < until && self.lead.valid() && !self.stop.get() {
                glommio::timer::sleep(REQUEST_POLL.min(self.cfg.pass_interval)).await;
                if self.request().await.is_some_and(|r| r.id > served) {
                    break;
                }
            }
        }
    }

    async fn request(&self) -> Option<RepairRequest> {
        let v = self
            .bridge
            .call("reading the repair request", |c| async move {
                c.get(REQUEST_KEY, Consistency::Linearizable).await
            })
            .await
            .ok()??;
        serde_json::from_slice(&v.value).ok()
    }

    async fn publish(&self, fence: &Fence) {
        let body = {
            let mut st = self.status.borrow_mut();
            st.updated_unix_millis = now_millis();
            st.shards_rebuilt = self.counters.shards_rebuilt.get();
            st.shards_moved = self.counters.shards_moved.get();
            st.bytes_repaired = self.counters.bytes.get();
            serde_json::to_vec(&*st).unwrap_or_default()
        };
        crate::metrics::status(&self.status.borrow(), self.lead.valid());
        if let Err(e) = fence.commit(STATUS_KEY, Some(body), None).await {
            tracing::debug!(error = %e, "publishing the healer status failed");
        }
    }

    /// Stores the bad copies for the next leader (if they changed). Only
    /// a fenced leader must stop; otherwise the copies stay remembered
    /// here and the next pass stores them.
    async fn save_bad(&self, fence: &Fence) -> Result<()> {
        let enc = self.bad.borrow().encode();
        let mut rec = std::mem::take(&mut *self.bad_record.borrow_mut());
        let r = rec.save(fence, enc).await;
        *self.bad_record.borrow_mut() = rec;
        match r {
            Err(Error::Fenced(m)) => Err(Error::Fenced(m)),
            Err(e) => {
                tracing::warn!(error = %e, "storing the bad copies failed; the next pass tries again");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    async fn set_phase(&self, fence: &Fence, phase: &str) {
        self.status.borrow_mut().phase = phase.into();
        self.publish(fence).await;
    }

    /// One pass (over `only` keys when not empty).
    async fn pass(self: &Rc<Self>, fence: &Rc<Fence>, only: &[String]) -> Result<()> {
        self.status.borrow_mut().pass_started_unix_millis = now_millis();
        self.set_phase(fence, "audit").await;
        let report = {
            let mut bad = std::mem::take(&mut *self.bad.borrow_mut());
            let r = audit_cluster(
                &self.bridge,
                &self.nodes,
                self.cfg.dead_grace,
                &mut bad,
                only,
                Some(&self.lead),
            )
            .await;
            *self.bad.borrow_mut() = bad;
            r?
        };
        // Reports just taken off the chunk servers' queues exist nowhere
        // else: store them before working on them.
        self.save_bad(fence).await?;
        // Versions of writes still in flight are never garbage; entries
        // whose writes are settled get finished.
        let (protected, unfinished) = self.read_wal().await?;
        {
            let mut st = self.status.borrow_mut();
            if only.is_empty() {
                st.objects = report.objects;
                st.by_redundancy = report.by_redundancy.clone();
            }
            st.nodes = report.scrubs.clone();
            st.queue.clear();
            for f in &report.findings {
                if let Some(c) = f.class() {
                    *st.queue.entry(c.name().to_string()).or_insert(0) += 1;
                }
            }
            st.repairs_planned = report
                .findings
                .iter()
                .filter(|f| f.class() != Some(Class::Lost))
                .count() as u64;
            st.repairs_done = 0;
            st.repairs_failed = 0;
            st.repairs_waiting = 0;
            st.dead_grace_secs = self.cfg.dead_grace.as_secs();
        }
        self.set_phase(fence, "repair").await;
        self.repair_all(fence, &report).await?;
        if only.is_empty() {
            self.finish_wal(unfinished).await?;
            if report.complete {
                self.set_phase(fence, "gc").await;
                self.collect_garbage(&report.view, &protected).await?;
            }
        }
        // Reports of copies no inventory holds any more are settled.
        self.bad.borrow_mut().set.retain(|(n, id)| {
            !report.view.inventoried.contains(n) || report.view.holders.contains_key(id)
        });
        self.save_bad(fence).await
    }

    async fn repair_all(self: &Rc<Self>, fence: &Rc<Fence>, report: &AuditReport) -> Result<()> {
        let ctx = Ctx {
            nodes: self.nodes.clone(),
            bridge: self.bridge.clone(),
            fence: fence.clone(),
            lead: self.lead.clone(),
            throttle: self.throttle.clone(),
            counters: self.counters.clone(),
        };
        let ctx = &ctx;
        let cands = &report.view.candidates;
        let work = report
            .findings
            .iter()
            .filter(|f| f.class() != Some(Class::Lost));
        for f in report
            .findings
            .iter()
            .filter(|f| f.class() == Some(Class::Lost))
        {
            tracing::error!(key = %f.key, "object has fewer good shards than it needs to be read; waiting for suspect nodes to return");
        }
        let mut results = futures::stream::iter(work)
            .map(|f| async move { (f, repair(ctx, f, cands).await) })
            .buffer_unordered(self.cfg.concurrency);
        // Progress is published by a task of its own: awaiting a publish
        // here would stop polling the repairs, and one of them may hold the
        // fence lock of the status key's group (a deadlock).
        let publishing = Rc::new(Cell::new(true));
        {
            let (me, fence, on) = (self.clone(), fence.clone(), publishing.clone());
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(STATUS_PUBLISH_EVERY).await;
                    if !on.get() {
                        break;
                    }
                    me.publish(&fence).await;
                }
            })
            .detach();
        }
        let _stop_publishing = scopeguard(publishing);
        while let Some((f, r)) = results.next().await {
            match r {
                Ok(d) => {
                    if let Done::Committed {
                        rebuilt,
                        moved,
                        waiting,
                    } = d
                    {
                        tracing::info!(key = %f.key, class = ?f.class(), rebuilt, moved, waiting, "repaired");
                        crate::metrics::shards(rebuilt as u64, moved as u64);
                        if waiting > 0 {
                            self.status.borrow_mut().repairs_waiting += 1;
                        }
                    }
                    self.status.borrow_mut().repairs_done += 1;
                    crate::metrics::repair("done");
                    let mut bad = self.bad.borrow_mut();
                    for m in &f.missing {
                        if let Some(node) = crate::audit::slot_node(&f.meta, m.stripe, m.index) {
                            bad.set.remove(&(
                                node.clone(),
                                crate::audit::slot_id(&f.meta, m.stripe, m.index),
                            ));
                        }
                    }
                }
                Err(Error::Fenced(m)) => return Err(Error::Fenced(m)),
                Err(Error::NoPlace(m)) => {
                    tracing::debug!(key = %f.key, reason = %m, "repair waits for nodes");
                    self.status.borrow_mut().repairs_waiting += 1;
                    crate::metrics::repair("waiting");
                }
                Err(Error::Changed(m)) => {
                    tracing::debug!(key = %f.key, reason = %m, "record changed; the next pass audits it again");
                    self.status.borrow_mut().repairs_done += 1;
                    crate::metrics::repair("changed");
                }
                Err(e) => {
                    tracing::warn!(key = %f.key, error = %e, "repair failed; the next pass tries again");
                    self.status.borrow_mut().repairs_failed += 1;
                    crate::metrics::repair("failed");
                }
            }
        }
        Ok(())
    }

    /// The versions of unfinished WAL intents, and those entries.
    async fn read_wal(&self) -> Result<(HashSet<Vec<u8>>, Vec<(u32, u64, WalIntent)>)> {
        let mut protected = HashSet::new();
        let mut entries = Vec::new();
        for p in 0..self.bridge.wal_partitions() {
            let mut from = 0;
            loop {
                let (page, next, _) = self
                    .bridge
                    .call("reading the WAL", move |c| async move {
                        c.wal_read(p, from, WAL_PAGE_ENTRIES, true).await
                    })
                    .await?;
                for e in &page {
                    if e.finished {
                        continue;
                    }
                    match WalIntent::decode(&e.data) {
                        Ok(i) => {
                            protected.insert(i.version_id.clone());
                            entries.push((p, e.offset, i));
                        }
                        Err(err) => {
                            tracing::warn!(partition = p, offset = e.offset, error = %err, "a WAL entry does not decode; left alone")
                        }
                    }
                }
                if page.is_empty() || next <= from {
                    break;
                }
                from = next;
            }
        }
        Ok((protected, entries))
    }

    /// Finishes WAL entries whose writes are settled: committed and clean,
    /// or never committed and older than the grace period (the write was
    /// never acknowledged; its shards become garbage).
    async fn finish_wal(&self, unfinished: Vec<(u32, u64, WalIntent)>) -> Result<()> {
        let mut by_part: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        let now = now_millis();
        let grace = self.cfg.gc_grace.as_millis() as u64;
        for (p, off, intent) in unfinished {
            self.lead.check()?;
            let okey = object_key(&intent.key);
            let cur = self
                .bridge
                .call("reading a record for the WAL", move |c| async move {
                    c.get(&okey, Consistency::Linearizable).await
                })
                .await?
                .and_then(|v| ObjectMeta::decode(&v.value).ok());
            let old = now.saturating_sub(intent.created_unix_millis) > grace;
            let done = match cur {
                Some(m) if m.version_id == intent.version_id => !m.dirty,
                Some(m) => m.created_unix_millis > intent.created_unix_millis && old,
                None => old,
            };
            if done {
                by_part.entry(p).or_default().push(off);
            }
        }
        for (p, offs) in by_part {
            let n = offs.len() as u64;
            self.bridge
                .call("finishing WAL entries", move |c| async move {
                    c.wal_finish(p, &offs).await
                })
                .await?;
            self.status.borrow_mut().wal_entries_finished += n;
            crate::metrics::wal_finished(n);
        }
        Ok(())
    }

    /// Deletes copies two audits at least the grace period apart found
    /// orphaned.
    async fn collect_garbage(&self, view: &View, protected: &HashSet<Vec<u8>>) -> Result<()> {
        let now = Instant::now();
        let current = view.orphans(protected);
        let due: Vec<(String, Vec<u8>)> = {
            let mut seen = self.orphans.borrow_mut();
            let cur: HashSet<&(String, Vec<u8>)> = current.iter().collect();
            seen.retain(|k, _| cur.contains(k));
            for o in &current {
                if seen.len() >= GC_TRACKED_MAX {
                    break;
                }
                seen.entry(o.clone()).or_insert(now);
            }
            seen.iter()
                .filter(|(_, &t)| now.duration_since(t) >= self.cfg.gc_grace)
                .map(|(k, _)| k.clone())
                .take(GC_DELETES_PER_PASS_MAX)
                .collect()
        };
        self.status.borrow_mut().orphans_tracked = self.orphans.borrow().len() as u64;
        let lead = &self.lead;
        let nodes = &self.nodes;
        let deleted = Cell::new(0u64);
        let deleted = &deleted;
        futures::stream::iter(due.iter())
            .for_each_concurrent(DELETES_IN_FLIGHT_MAX, |(n, id)| async move {
                if !lead.valid() {
                    return;
                }
                if let Ok(c) = nodes.client(n).await {
                    if c.delete(id).await.is_ok() {
                        deleted.set(deleted.get() + 1);
                    }
                }
            })
            .await;
        lead.check()?;
        let mut seen = self.orphans.borrow_mut();
        for k in &due {
            seen.remove(k);
        }
        let mut st = self.status.borrow_mut();
        st.orphans_deleted += deleted.get();
        crate::metrics::orphans_deleted(deleted.get());
        st.orphans_tracked = seen.len() as u64;
        if deleted.get() > 0 {
            tracing::info!(deleted = deleted.get(), "orphan shards collected");
        }
        Ok(())
    }
}
