//! The metad client library: finds each group's leader, retries on
//! `notLeader`, `unavailable` and broken connections until a deadline, and
//! tags every write with a request id so a retry applies once.
//!
//! Runs on the calling thread's executor (Cap'n Proto clients are not
//! `Send`): a tokio `LocalSet` by default, or any [`ClientRuntime`]
//! ([`MetaClient::connect_on`]; the gateway's glommio executor).
//! WAL appends, and single-key writes, that its callers make at the same
//! time go out together ([`crate::batcher`]): per WAL partition or group at
//! most [`BATCHED_CALLS_INFLIGHT_MAX`] calls are out, and what is made
//! meanwhile leaves in one `walAppendMany` or `writeMany` call (each item
//! keeps its own request id, so a retried call applies none twice).
//! Invariants: a write is retried only with the same (client, seq), so a
//! write the cluster applied before the reply was lost is not applied
//! again; a typed error other than notLeader/unavailable/stale is returned
//! at once, never retried. Every request also carries the client's settled
//! watermark, the lowest seq still outstanding ([`Rid`]): it is at most the
//! request's own seq, and no seq below it is ever sent again, so the
//! cluster may forget those results and refuse late copies.

use crate::batcher::{answer, wait, Batcher, Weighed};
use crate::error::{Error, RemoteKind, Result};
use crate::keys::{group_of, SYSTEM_GROUP};
use crate::limits::{
    BATCHED_CALLS_INFLIGHT_MAX, WAL_APPEND_MANY_BYTES_MAX, WAL_APPEND_MANY_ITEMS_MAX,
    WRITE_MANY_BYTES_MAX, WRITE_MANY_ITEMS_MAX,
};
use crate::runtime::{within, ClientRuntime, Tokio};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tessera_schema::metad_capnp::{error as wire_error, metad, write_op, ReadMode};

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// By the leader after it confirms its leadership with a quorum.
    Linearizable,
    /// By any replica that heard from the leader within this bound.
    Follower { max_staleness: Duration },
}

/// Client tuning.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// One attempt's limit.
    pub call_timeout: Duration,
    /// Retries stop after this long.
    pub retry_deadline: Duration,
    /// TLS and credentials of every connection.
    pub security: crate::net::Security,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            call_timeout: Duration::from_secs(3),
            retry_deadline: Duration::from_secs(15),
            security: crate::net::Security::default(),
        }
    }
}

/// The metad replicas a daemon uses: its `--metad` flag if given, else its
/// settings file's `metad`; `None` when neither names one.
pub fn seeds_from(flag: &[String], file: Option<&Vec<String>>) -> Option<Vec<String>> {
    let seeds = if flag.is_empty() {
        file.cloned().unwrap_or_default()
    } else {
        flag.to_vec()
    };
    (!seeds.is_empty()).then_some(seeds)
}

/// What a daemon says when no metad replica is configured.
pub const NO_SEEDS_MESSAGE: &str =
    "no metad address: pass --metad HOST:PORT[,...] or set `metad` in the --config file";

/// One write of a batch.
#[derive(Debug, Clone)]
pub struct WriteSpec {
    pub key: Vec<u8>,
    /// `Some(v)`: the key's version must be `v` (0 = absent).
    pub expected: Option<u64>,
    /// `None` deletes.
    pub value: Option<Vec<u8>>,
}

/// A key's value and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: u64,
}

/// A lease as a replica reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: Vec<u8>,
    pub epoch: u64,
    pub ttl_ms: u32,
    pub expires_in_ms: u32,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    pub node_id: String,
    pub addr: String,
    pub capacity: u64,
    pub used: u64,
    pub live: bool,
    pub last_heartbeat_ago_ms: u64,
    pub zone: String,
}

/// One group as a replica sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub group: u32,
    pub leader: u64,
    pub is_leader: bool,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// A replica's status.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    pub replica_id: u64,
    /// Metadata groups (the first `meta_groups` entries of `groups`).
    pub meta_groups: u32,
    pub wal_partitions: u32,
    pub addr: String,
    pub groups: Vec<GroupInfo>,
    pub peers: Vec<(u64, String)>,
    pub uptime_secs: u64,
}

enum Attempt {
    Remote {
        kind: RemoteKind,
        message: String,
        leader: String,
    },
    Transport(String),
}

impl From<capnp::Error> for Attempt {
    /// A refused connection (no node certificate and no key, or a revoked
    /// key) is an authentication error, returned at once: retrying it until
    /// the deadline only delayed the answer (15 s by default).
    fn from(e: capnp::Error) -> Self {
        let text = e.to_string();
        if e.kind == capnp::ErrorKind::Failed && text.contains(crate::error::REFUSAL_PREFIX) {
            return Attempt::Remote {
                kind: RemoteKind::Unauthenticated,
                message: text,
                leader: String::new(),
            };
        }
        Attempt::Transport(text)
    }
}

impl From<capnp::NotInSchema> for Attempt {
    fn from(e: capnp::NotInSchema) -> Self {
        Attempt::Transport(e.to_string())
    }
}

fn remote_kind(k: wire_error::Kind) -> RemoteKind {
    match k {
        wire_error::Kind::InvalidArgument => RemoteKind::InvalidArgument,
        wire_error::Kind::NotLeader => RemoteKind::NotLeader,
        wire_error::Kind::Unavailable => RemoteKind::Unavailable,
        wire_error::Kind::Conflict => RemoteKind::Conflict,
        wire_error::Kind::TooLarge => RemoteKind::TooLarge,
        wire_error::Kind::Internal => RemoteKind::Internal,
        wire_error::Kind::Stale => RemoteKind::Stale,
        wire_error::Kind::Full => RemoteKind::Full,
        wire_error::Kind::Unauthenticated => RemoteKind::Unauthenticated,
    }
}

fn check(has: bool, e: capnp::Result<wire_error::Reader<'_>>) -> std::result::Result<(), Attempt> {
    if !has {
        return Ok(());
    }
    let e = e?;
    Err(Attempt::Remote {
        kind: remote_kind(e.get_kind()?),
        message: e.get_message()?.to_string().unwrap_or_default(),
        leader: e.get_leader_addr()?.to_string().unwrap_or_default(),
    })
}

/// The seqs a client has issued whose requests may still be sent.
type Outstanding = Rc<RefCell<BTreeSet<u64>>>;

/// A request id, held while its request may be sent or retried. Dropping
/// it (the answer is in, or the caller gave up) settles its seq.
pub(crate) struct Rid {
    client: u64,
    seq: u64,
    outstanding: Outstanding,
}

impl Rid {
    /// The lowest seq still outstanding (this one's at most, as it is
    /// outstanding while it lives).
    fn settled_below(&self) -> u64 {
        self.outstanding
            .borrow()
            .first()
            .copied()
            .unwrap_or(self.seq)
            .min(self.seq)
    }
}

impl Drop for Rid {
    fn drop(&mut self) {
        self.outstanding.borrow_mut().remove(&self.seq);
    }
}

/// Sets a request id (client, seq) and the settled watermark: a retry
/// carries the same id, so the cluster applies the request once.
fn fill_rid(mut b: tessera_schema::metad_capnp::request_id::Builder<'_>, rid: &Rid) {
    b.set_client(rid.client);
    b.set_seq(rid.seq);
    b.set_settled_below(rid.settled_below());
}

fn fill_op(mut b: write_op::Builder<'_>, w: &WriteSpec) {
    b.set_key(&w.key);
    match w.expected {
        Some(v) => {
            b.set_condition(write_op::Condition::Version);
            b.set_expected_version(v);
        }
        None => b.set_condition(write_op::Condition::Any),
    }
    match &w.value {
        Some(v) => b.set_put(v),
        None => b.set_delete(()),
    }
}

/// A client of a metad cluster.
pub struct MetaClient {
    seeds: RefCell<Vec<String>>,
    conns: RefCell<HashMap<String, metad::Client>>,
    leaders: RefCell<Vec<Option<String>>>,
    groups: u32,
    wal_partitions: u32,
    client_id: u64,
    seq: Cell<u64>,
    /// Seqs issued whose [`Rid`]s live.
    outstanding: Outstanding,
    next_seed: Cell<usize>,
    opts: ClientOptions,
    /// WAL appends waiting to be sent, per partition.
    wal_batcher: Batcher<WalItem, u64>,
    /// Single-key writes waiting to be sent, per group.
    write_batcher: Batcher<WriteItem, (u64, u64)>,
    /// This client, for the senders it starts (set by `connect`).
    me: std::rc::Weak<MetaClient>,
    /// The executor it runs on.
    rt: Rc<dyn ClientRuntime>,
}

/// A future borrowing the client for `'a`.
type Call<'a, T> = std::pin::Pin<Box<dyn Future<Output = Result<T>> + 'a>>;

/// One result per item of a batch, in order.
type Answers<O> = Vec<Result<O>>;

/// How a batch is sent: a lone item by the plain call, more by the
/// `…Many` call (one result per item, in order).
struct Send<I, O> {
    one: for<'a> fn(&'a MetaClient, u32, &'a I) -> Call<'a, O>,
    many: for<'a> fn(&'a MetaClient, u32, &'a [I]) -> Call<'a, Answers<O>>,
}

/// A WAL append waiting to be sent.
struct WalItem {
    gateway: Rc<str>,
    data: Vec<u8>,
    is_intent: bool,
    rid: Rid,
}

impl Weighed for WalItem {
    fn bytes(&self) -> usize {
        self.data.len()
    }
}

/// A single-key write waiting to be sent.
struct WriteItem {
    spec: WriteSpec,
    rid: Rid,
}

impl Weighed for WriteItem {
    fn bytes(&self) -> usize {
        self.spec.key.len() + self.spec.value.as_ref().map_or(0, |v| v.len())
    }
}

/// One item's answer in a batched call's results.
fn item_result<T>(
    has_error: bool,
    e: capnp::Result<wire_error::Reader<'_>>,
    ok: impl FnOnce() -> capnp::Result<T>,
) -> std::result::Result<Result<T>, Attempt> {
    if !has_error {
        return Ok(Ok(ok()?));
    }
    let e = e?;
    Ok(Err(Error::Remote {
        kind: remote_kind(e.get_kind().unwrap_or(wire_error::Kind::Internal)),
        message: e.get_message()?.to_string().unwrap_or_default(),
    }))
}

impl MetaClient {
    /// Connects to a cluster through any of `seeds` (replica addresses),
    /// learning the group count and the other replicas; runs on the
    /// calling thread's tokio `LocalSet`.
    pub async fn connect(seeds: &[String], opts: ClientOptions) -> Result<Rc<Self>> {
        Self::connect_on(seeds, opts, Rc::new(Tokio)).await
    }

    /// [`MetaClient::connect`] on the executor `rt` (the calling thread's).
    pub async fn connect_on(
        seeds: &[String],
        opts: ClientOptions,
        rt: Rc<dyn ClientRuntime>,
    ) -> Result<Rc<Self>> {
        if seeds.is_empty() {
            return Err(Error::Config("no metad address given".into()));
        }
        let c = MetaClient {
            seeds: RefCell::new(seeds.to_vec()),
            conns: RefCell::new(HashMap::new()),
            leaders: RefCell::new(Vec::new()),
            groups: 0,
            wal_partitions: 0,
            client_id: rand::random::<u64>() | 1,
            seq: Cell::new(0),
            outstanding: Rc::new(RefCell::new(BTreeSet::new())),
            next_seed: Cell::new(0),
            opts,
            wal_batcher: Batcher::new(
                BATCHED_CALLS_INFLIGHT_MAX,
                WAL_APPEND_MANY_ITEMS_MAX,
                WAL_APPEND_MANY_BYTES_MAX,
            ),
            write_batcher: Batcher::new(
                BATCHED_CALLS_INFLIGHT_MAX,
                WRITE_MANY_ITEMS_MAX,
                WRITE_MANY_BYTES_MAX,
            ),
            me: std::rc::Weak::new(),
            rt,
        };
        let start = Instant::now();
        let mut last = String::new();
        let mut attempts = 0;
        while start.elapsed() < c.opts.retry_deadline {
            for addr in seeds {
                attempts += 1;
                match c.status_of(addr).await {
                    Ok(s) => {
                        let mut c = c;
                        c.groups = s.meta_groups;
                        c.wal_partitions = s.wal_partitions;
                        *c.leaders.borrow_mut() = vec![None; s.groups.len()];
                        for (_, a) in &s.peers {
                            if !c.seeds.borrow().contains(a) {
                                c.seeds.borrow_mut().push(a.clone());
                            }
                        }
                        return Ok(Rc::new_cyclic(|me| MetaClient {
                            me: me.clone(),
                            ..c
                        }));
                    }
                    // A refused key will not be accepted on a retry.
                    Err(
                        e @ Error::Remote {
                            kind: RemoteKind::Unauthenticated,
                            ..
                        },
                    ) => return Err(e),
                    Err(e) => last = e.to_string(),
                }
            }
            c.rt.sleep(Duration::from_millis(100)).await;
        }
        Err(Error::GaveUp {
            attempts,
            waited_ms: start.elapsed().as_millis() as u64,
            last,
        })
    }

    /// The number of groups the cluster has.
    pub fn groups(&self) -> u32 {
        self.groups
    }

    /// The group `key` belongs to.
    pub fn group_of(&self, key: &[u8]) -> u32 {
        group_of(key, self.groups)
    }

    async fn conn(&self, addr: &str) -> std::result::Result<metad::Client, Attempt> {
        if let Some(c) = self.conns.borrow().get(addr) {
            return Ok(c.clone());
        }
        let c = self
            .rt
            .connect(addr, &self.opts.security)
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    Attempt::Remote {
                        kind: RemoteKind::Unauthenticated,
                        message: format!("metad at {addr} refused the access key: {e}"),
                        leader: String::new(),
                    }
                } else {
                    Attempt::Transport(format!("{addr}: {e}"))
                }
            })?;
        self.conns.borrow_mut().insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn pick(&self, group: u32) -> String {
        if let Some(Some(a)) = self.leaders.borrow().get(group as usize) {
            return a.clone();
        }
        let seeds = self.seeds.borrow();
        let i = self.next_seed.get();
        self.next_seed.set(i.wrapping_add(1));
        seeds[i % seeds.len()].clone()
    }

    fn set_leader(&self, group: u32, addr: Option<String>) {
        if let Some(slot) = self.leaders.borrow_mut().get_mut(group as usize) {
            *slot = addr;
        }
    }

    /// Runs `f` against the replica that should serve `group`, following
    /// redirects and retrying transient failures until the deadline.
    async fn call<T, F, Fut>(&self, group: u32, f: F) -> Result<T>
    where
        F: Fn(metad::Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, Attempt>>,
    {
        let start = Instant::now();
        let mut attempts = 0u32;
        let mut backoff = Duration::from_millis(20);
        let last;
        loop {
            attempts += 1;
            let addr = self.pick(group);
            let r = match self.conn(&addr).await {
                Ok(c) => match within(&*self.rt, self.opts.call_timeout, f(c)).await {
                    Some(r) => r,
                    None => Err(Attempt::Transport(format!(
                        "{addr} did not answer within {:?}",
                        self.opts.call_timeout
                    ))),
                },
                Err(e) => Err(e),
            };
            let why = match r {
                Ok(v) => return Ok(v),
                Err(Attempt::Remote {
                    kind: RemoteKind::NotLeader,
                    message,
                    leader,
                }) if !leader.is_empty() && leader != addr => {
                    self.set_leader(group, Some(leader));
                    if start.elapsed() < self.opts.retry_deadline {
                        continue;
                    }
                    message
                }
                Err(Attempt::Remote {
                    kind: RemoteKind::NotLeader | RemoteKind::Unavailable | RemoteKind::Stale,
                    message,
                    ..
                }) => {
                    self.set_leader(group, None);
                    message
                }
                Err(Attempt::Remote { kind, message, .. }) => {
                    return Err(Error::Remote { kind, message })
                }
                Err(Attempt::Transport(m)) => {
                    self.conns.borrow_mut().remove(&addr);
                    self.set_leader(group, None);
                    format!("{addr}: {m}")
                }
            };
            if start.elapsed() + backoff >= self.opts.retry_deadline {
                last = why;
                break;
            }
            self.rt.sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        Err(Error::GaveUp {
            attempts,
            waited_ms: start.elapsed().as_millis() as u64,
            last,
        })
    }

    fn next_rid(&self) -> Rid {
        let s = self.seq.get() + 1;
        self.seq.set(s);
        self.outstanding.borrow_mut().insert(s);
        Rid {
            client: self.client_id,
            seq: s,
            outstanding: self.outstanding.clone(),
        }
    }

    /// Reads `key`.
    pub async fn get(&self, key: &[u8], consistency: Consistency) -> Result<Option<Versioned>> {
        let g = self.group_of(key);
        self.call(g, |c| async move {
            let mut req = c.get_request();
            {
                let mut p = req.get();
                p.set_key(key);
                match consistency {
                    Consistency::Linearizable => p.set_mode(ReadMode::Linearizable),
                    Consistency::Follower { max_staleness } => {
                        p.set_mode(ReadMode::Follower);
                        p.set_max_staleness_ms(
                            max_staleness.as_millis().min(u32::MAX as u128) as u32
                        );
                    }
                }
            }
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())?;
            if !r.get_found() {
                return Ok(None);
            }
            let kv = r.get_kv()?;
            Ok(Some(Versioned {
                value: kv.get_value()?.to_vec(),
                version: kv.get_version(),
            }))
        })
        .await
    }

    async fn batch_inner(&self, ops: &[WriteSpec]) -> Result<Vec<(u64, u64)>> {
        let Some(first) = ops.first() else {
            return Err(Error::Config("an empty batch".into()));
        };
        let g = self.group_of(&first.key);
        let rid = &self.next_rid();
        self.call(g, |c| async move {
            let mut req = c.batch_request();
            {
                let mut p = req.get();
                fill_rid(p.reborrow().init_rid(), rid);
                let mut l = p.init_ops(ops.len() as u32);
                for (i, w) in ops.iter().enumerate() {
                    fill_op(l.reborrow().get(i as u32), w);
                }
            }
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())?;
            Ok(r.get_results()?
                .iter()
                .map(|w| (w.get_version(), w.get_previous_version()))
                .collect())
        })
        .await
    }

    /// Applies `ops` atomically (all keys must share a group: use one hash
    /// tag). Returns each op's (new version, previous version).
    pub async fn batch(&self, ops: &[WriteSpec]) -> Result<Vec<(u64, u64)>> {
        self.batch_inner(ops).await
    }

    /// Writes `key` unconditionally; returns its new version.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64> {
        self.write(WriteSpec {
            key: key.to_vec(),
            expected: None,
            value: Some(value.to_vec()),
        })
        .await
        .map(|w| w.0)
    }

    /// Writes `key` if its version is `expected` (0 = absent); a mismatch is
    /// `Error::Remote { kind: Conflict, .. }`.
    pub async fn put_if(&self, key: &[u8], value: &[u8], expected: u64) -> Result<u64> {
        self.write(WriteSpec {
            key: key.to_vec(),
            expected: Some(expected),
            value: Some(value.to_vec()),
        })
        .await
        .map(|w| w.0)
    }

    /// Deletes `key`; returns the version it had (0 if absent).
    pub async fn delete(&self, key: &[u8], expected: Option<u64>) -> Result<u64> {
        self.write(WriteSpec {
            key: key.to_vec(),
            expected,
            value: None,
        })
        .await
        .map(|w| w.1)
    }

    /// One write; returns (new version, previous version). Writes made
    /// while earlier ones to the same group are out go together in one
    /// `writeMany` call.
    pub async fn write(&self, w: WriteSpec) -> Result<(u64, u64)> {
        let g = self.group_of(&w.key);
        let item = WriteItem {
            spec: w,
            rid: self.next_rid(),
        };
        let send = Send {
            one: |c, g, it| Box::pin(c.write_one(g, it)),
            many: |c, g, items| Box::pin(c.write_many(g, items)),
        };
        self.submit(|c| &c.write_batcher, g, item, send).await
    }

    /// Queues `item` under `key` in the batcher `which` picks and waits for
    /// its answer; starts a sender (a task of its own: the items it carries
    /// are not only this caller's, and this caller may stop waiting) when
    /// fewer are out than allowed. `send` makes one call of a batch.
    async fn submit<I: Weighed + 'static, O: 'static>(
        &self,
        which: fn(&MetaClient) -> &Batcher<I, O>,
        key: u32,
        item: I,
        send: Send<I, O>,
    ) -> Result<O> {
        let me = self.me()?;
        let (rx, start) = which(self).push(key, item);
        if start {
            let rt = me.rt.clone();
            rt.spawn_local(Box::pin(async move {
                while let Some((items, answers)) = which(&me).take(key) {
                    let outcome = match &items[..] {
                        [one] => (send.one)(&me, key, one).await.map(|o| vec![Ok(o)]),
                        _ => (send.many)(&me, key, &items).await,
                    };
                    answer(answers, outcome);
                }
            }));
        }
        wait(rx).await
    }

    /// One `writeMany` call (retried as a whole); one result per item, in
    /// order.
    async fn write_many(&self, g: u32, items: &[WriteItem]) -> Result<Vec<Result<(u64, u64)>>> {
        self.call(g, |c| async move {
            let mut req = c.write_many_request();
            {
                let mut list = req.get().init_items(items.len() as u32);
                for (i, it) in items.iter().enumerate() {
                    let mut b = list.reborrow().get(i as u32);
                    fill_op(b.reborrow().init_op(), &it.spec);
                    fill_rid(b.init_rid(), &it.rid);
                }
            }
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())?;
            let mut out = Vec::with_capacity(items.len());
            for res in r.get_results()?.iter() {
                out.push(item_result(res.has_error(), res.get_error(), || {
                    let w = res.get_result()?;
                    Ok((w.get_version(), w.get_previous_version()))
                })?);
            }
            Ok(out)
        })
        .await
    }

    /// One `write` call (retried until the deadline).
    async fn write_one(&self, g: u32, it: &WriteItem) -> Result<(u64, u64)> {
        let rid = &it.rid;
        let w = &it.spec;
        self.call(g, |c| async move {
            let mut req = c.write_request();
            {
                let mut p = req.get();
                fill_rid(p.reborrow().init_rid(), rid);
                fill_op(p.init_op(), w);
            }
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())?;
            let w = r.get_result()?;
            Ok((w.get_version(), w.get_previous_version()))
        })
        .await
    }

    /// Keys starting with `prefix` after `start_after`, in key order across
    /// all groups, at most `limit`. Returns the items and whether more exist.
    pub async fn list(
        &self,
        prefix: &[u8],
        start_after: &[u8],
        limit: u32,
    ) -> Result<(Vec<(Vec<u8>, Versioned)>, bool)> {
        let mut all = Vec::new();
        let mut more = false;
        for g in 0..self.groups {
            let (items, m) = self
                .call(g, |c| async move {
                    let mut req = c.list_request();
                    {
                        let mut p = req.get();
                        p.set_group(g);
                        p.set_prefix(prefix);
                        p.set_start_after(start_after);
                        p.set_limit(limit);
                        p.set_mode(ReadMode::Linearizable);
                    }
                    let resp = req.send().promise.await?;
                    let r = resp.get()?;
                    check(r.has_error(), r.get_error())?;
                    let mut items = Vec::new();
                    for kv in r.get_items()?.iter() {
                        items.push((
                            kv.get_key()?.to_vec(),
                            Versioned {
                                value: kv.get_value()?.to_vec(),
                                version: kv.get_version(),
                            },
                        ));
                    }
                    Ok((items, r.get_more()))
                })
                .await?;
            more |= m;
            all.extend(items);
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        if all.len() > limit as usize {
            all.truncate(limit as usize);
            more = true;
        }
        Ok((all, more))
    }

    /// Registers (or re-registers) a node in the registry.
    pub async fn register_node(
        &self,
        node_id: &str,
        addr: &str,
        capacity: u64,
        zone: &str,
        ttl: Duration,
    ) -> Result<()> {
        self.call(SYSTEM_GROUP, |c| async move {
            let mut req = c.register_node_request();
            {
                let mut p = req.get();
                p.set_node_id(node_id);
                p.set_addr(addr);
                p.set_capacity_bytes(capacity);
                p.set_zone(zone);
                p.set_ttl_millis(ttl.as_millis().min(u32::MAX as u128) as u32);
            }
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())
        })
        .await
    }

    /// Renews a node's registry lease.
    pub async fn heartbeat(&self, node_id: &str, used: u64, capacity: u64) -> Result<()> {
        self.call(SYSTEM_GROUP, |c| async move {
            let mut req = c.heartbeat_request();
            {
                let mut p = req.get();
                p.set_node_id(node_id);
                p.set_used_bytes(used);
                p.set_capacity_bytes(capacity);
            }
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())
        })
        .await
    }

    /// Every registered node, live or dead.
    pub async fn list_nodes(&self) -> Result<Vec<NodeEntry>> {
        self.call(SYSTEM_GROUP, |c| async move {
            let resp = c.list_nodes_request().send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())?;
            let mut out = Vec::new();
            for n in r.get_nodes()?.iter() {
                out.push(NodeEntry {
                    node_id: n.get_node_id()?.to_string().unwrap_or_default(),
                    addr: n.get_addr()?.to_string().unwrap_or_default(),
                    capacity: n.get_capacity_bytes(),
                    used: n.get_used_bytes(),
                    live: n.get_live(),
                    last_heartbeat_ago_ms: n.get_last_heartbeat_ago_millis(),
                    zone: n.get_zone()?.to_string().unwrap_or_default(),
                });
            }
            Ok(out)
        })
        .await
    }

    fn read_lease(
        l: tessera_schema::metad_capnp::lease::Reader<'_>,
    ) -> std::result::Result<Lease, Attempt> {
        Ok(Lease {
            holder: l.get_holder()?.to_vec(),
            epoch: l.get_epoch(),
            ttl_ms: l.get_ttl_millis(),
            expires_in_ms: l.get_expires_in_millis(),
        })
    }

    /// Tries to take lease `name` for `holder`. Returns whether it was
    /// granted and the lease as it now stands. The holder must treat the
    /// lease as lost `ttl` after it *sent* this call (its own clock), and
    /// pass the epoch as a fencing token to whatever the lease guards.
    pub async fn acquire_lease(
        &self,
        name: &[u8],
        holder: &[u8],
        ttl: Duration,
    ) -> Result<(bool, Lease)> {
        let rid = &self.next_rid();
        self.call(SYSTEM_GROUP, |c| async move {
            let mut req = c.acquire_lease_request();
            {
                let mut p = req.get();
                p.set_name(name);
                p.set_holder(holder);
                p.set_ttl_millis(ttl.as_millis().min(u32::MAX as u128) as u32);
                fill_rid(p.init_rid(), rid);
            }
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())?;
            Ok((r.get_granted(), Self::read_lease(r.get_lease()?)?))
        })
        .await
    }

    /// Extends a held lease; `false` if it was lost (expired or taken).
    pub async fn renew_lease(
        &self,
        name: &[u8],
        holder: &[u8],
        epoch: u64,
        ttl: Duration,
    ) -> Result<(bool, Lease)> {
        let rid = &self.next_rid();
        self.call(SYSTEM_GROUP, |c| async move {
            let mut req = c.renew_lease_request();
            {
                let mut p = req.get();
                p.set_name(name);
                p.set_holder(holder);
                p.set_epoch(epoch);
                p.set_ttl_millis(ttl.as_millis().min(u32::MAX as u128) as u32);
                fill_rid(p.init_rid(), rid);
            }
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())?;
            Ok((r.get_renewed(), Self::read_lease(r.get_lease()?)?))
        })
        .await
    }

    /// Lease `name` as it stands: `None` when nobody holds it now.
    pub async fn get_lease(&self, name: &[u8]) -> Result<Option<Lease>> {
        self.call(SYSTEM_GROUP, |c| async move {
            let mut req = c.get_lease_request();
            req.get().set_name(name);
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())?;
            if !r.get_held() {
                return Ok(None);
            }
            Ok(Some(Self::read_lease(r.get_lease()?)?))
        })
        .await
    }

    /// Gives a lease up (no-op if `epoch` is no longer held by `holder`).
    pub async fn release_lease(&self, name: &[u8], holder: &[u8], epoch: u64) -> Result<()> {
        let rid = &self.next_rid();
        self.call(SYSTEM_GROUP, |c| async move {
            let mut req = c.release_lease_request();
            {
                let mut p = req.get();
                p.set_name(name);
                p.set_holder(holder);
                p.set_epoch(epoch);
                fill_rid(p.init_rid(), rid);
            }
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())
        })
        .await
    }

    /// The status of the replica at `addr` (no retries).
    pub async fn status_of(&self, addr: &str) -> Result<ReplicaStatus> {
        let r = async {
            let c = self.conn(addr).await?;
            let fut = async {
                let resp = c.status_request().send().promise.await?;
                let r = resp.get()?;
                check(r.has_error(), r.get_error())?;
                let rep = r.get_replica()?;
                let mut groups = Vec::new();
                for g in r.get_groups()?.iter() {
                    groups.push(GroupInfo {
                        group: g.get_group(),
                        leader: g.get_leader_id(),
                        is_leader: g.get_is_leader(),
                        term: g.get_term(),
                        last_log_index: g.get_last_log_index(),
                        applied_index: g.get_applied_index(),
                        snapshot_index: g.get_snapshot_index(),
                        voters: g.get_voters()?.iter().collect(),
                        learners: g.get_learners()?.iter().collect(),
                    });
                }
                let mut peers = Vec::new();
                for p in rep.get_peers()?.iter() {
                    peers.push((p.get_id(), p.get_addr()?.to_string().unwrap_or_default()));
                }
                Ok::<_, Attempt>(ReplicaStatus {
                    replica_id: rep.get_replica_id(),
                    meta_groups: rep.get_groups(),
                    wal_partitions: rep.get_wal_partitions(),
                    addr: rep.get_client_addr()?.to_string().unwrap_or_default(),
                    groups,
                    peers,
                    uptime_secs: rep.get_uptime_secs(),
                })
            };
            match within(&*self.rt, self.opts.call_timeout, fut).await {
                Some(r) => r,
                None => Err(Attempt::Transport(format!(
                    "{addr} did not answer within {:?}",
                    self.opts.call_timeout
                ))),
            }
        }
        .await;
        r.map_err(|a| match a {
            Attempt::Remote { kind, message, .. } => Error::Remote { kind, message },
            Attempt::Transport(m) => {
                self.conns.borrow_mut().remove(addr);
                Error::GaveUp {
                    attempts: 1,
                    waited_ms: 0,
                    last: m,
                }
            }
        })
    }

    /// Adds replica `id` at `addr` as a voter of every group (each group's
    /// leader copies its state to it first).
    pub async fn add_voter(&self, id: u64, addr: &str) -> Result<()> {
        for g in 0..self.groups + self.wal_partitions {
            self.call(g, |c| async move {
                let mut req = c.add_voter_request();
                {
                    let mut p = req.get();
                    p.set_group(g);
                    p.set_replica_id(id);
                    p.set_addr(addr);
                }
                let resp = req.send().promise.await?;
                let r = resp.get()?;
                check(r.has_error(), r.get_error())
            })
            .await?;
        }
        if !self.seeds.borrow().iter().any(|a| a == addr) {
            self.seeds.borrow_mut().push(addr.to_string());
        }
        Ok(())
    }

    /// Removes replica `id` from every group's voters.
    pub async fn remove_voter(&self, id: u64) -> Result<()> {
        for g in 0..self.groups + self.wal_partitions {
            let r = self
                .call(g, |c| async move {
                    let mut req = c.remove_voter_request();
                    {
                        let mut p = req.get();
                        p.set_group(g);
                        p.set_replica_id(id);
                    }
                    let resp = req.send().promise.await?;
                    let r = resp.get()?;
                    check(r.has_error(), r.get_error())
                })
                .await;
            match r {
                // Already removed from this group (a retry of an earlier call).
                Err(Error::Remote {
                    kind: RemoteKind::InvalidArgument,
                    message,
                }) if message.contains("is not a voter") => {}
                r => r?,
            }
        }
        Ok(())
    }

    /// Asks the replica at `addr` to snapshot every group now.
    pub async fn snapshot(&self, addr: &str) -> Result<()> {
        let c = self.conn(addr).await.map_err(|_| Error::GaveUp {
            attempts: 1,
            waited_ms: 0,
            last: format!("cannot reach {addr}"),
        })?;
        let resp = c
            .snapshot_request()
            .send()
            .promise
            .await
            .map_err(|e| Error::GaveUp {
                attempts: 1,
                waited_ms: 0,
                last: e.to_string(),
            })?;
        let r = resp.get().map_err(|e| Error::GaveUp {
            attempts: 1,
            waited_ms: 0,
            last: e.to_string(),
        })?;
        check(r.has_error(), r.get_error()).map_err(|a| match a {
            Attempt::Remote { kind, message, .. } => Error::Remote { kind, message },
            Attempt::Transport(m) => Error::GaveUp {
                attempts: 1,
                waited_ms: 0,
                last: m,
            },
        })
    }

    /// The number of WAL partitions.
    pub fn wal_partitions(&self) -> u32 {
        self.wal_partitions
    }

    fn wal_group(&self, partition: u32) -> Result<u32> {
        if partition >= self.wal_partitions {
            return Err(Error::Config(format!(
                "WAL partition {partition} does not exist (the cluster has {})",
                self.wal_partitions
            )));
        }
        Ok(self.groups + partition)
    }

    /// Appends `data` to WAL `partition` for `gateway`; returns its offset
    /// once a quorum holds it durably. A retry after a lost reply returns
    /// the same offset (it is not appended twice). Appends made while
    /// earlier ones to the partition are out go together in one call.
    pub async fn wal_append(
        &self,
        partition: u32,
        gateway: &str,
        data: &[u8],
        is_intent: bool,
    ) -> Result<u64> {
        self.wal_group(partition)?;
        let item = WalItem {
            gateway: gateway.into(),
            data: data.to_vec(),
            is_intent,
            rid: self.next_rid(),
        };
        let send = Send {
            one: |c, p, it| Box::pin(c.wal_append_one(p, it)),
            many: |c, p, items| Box::pin(c.wal_append_many(p, items)),
        };
        self.submit(|c| &c.wal_batcher, partition, item, send).await
    }

    /// This client as the `Rc` `connect` made.
    fn me(&self) -> Result<Rc<MetaClient>> {
        self.me.upgrade().ok_or_else(|| Error::Remote {
            kind: RemoteKind::Internal,
            message: "this metad client was not made by MetaClient::connect, which batched \
                      calls need: make it with MetaClient::connect"
                .into(),
        })
    }

    /// One `walAppendMany` call (retried as a whole); one result per item,
    /// in order.
    async fn wal_append_many(&self, partition: u32, items: &[WalItem]) -> Result<Vec<Result<u64>>> {
        let g = self.wal_group(partition)?;
        self.call(g, |c| async move {
            let mut req = c.wal_append_many_request();
            {
                let mut p = req.get();
                p.set_partition(partition);
                let mut list = p.init_items(items.len() as u32);
                for (i, it) in items.iter().enumerate() {
                    let mut b = list.reborrow().get(i as u32);
                    b.set_gateway(&*it.gateway);
                    b.set_data(&it.data);
                    b.set_is_intent(it.is_intent);
                    fill_rid(b.init_rid(), &it.rid);
                }
            }
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())?;
            let mut out = Vec::with_capacity(items.len());
            for res in r.get_results()?.iter() {
                out.push(item_result(res.has_error(), res.get_error(), || {
                    Ok(res.get_offset())
                })?);
            }
            Ok(out)
        })
        .await
    }

    /// One `walAppend` call (retried until the deadline).
    async fn wal_append_one(&self, partition: u32, it: &WalItem) -> Result<u64> {
        let rid = &it.rid;
        let (gateway, data, is_intent) = (&*it.gateway, &it.data[..], it.is_intent);
        let g = self.wal_group(partition)?;
        self.call(g, |c| async move {
            let mut req = c.wal_append_request();
            {
                let mut p = req.get();
                p.set_partition(partition);
                p.set_gateway(gateway);
                p.set_data(data);
                p.set_is_intent(is_intent);
                fill_rid(p.init_rid(), rid);
            }
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())?;
            Ok(r.get_offset())
        })
        .await
    }

    /// Reads entries of `partition` from offset `from`. Returns the entries,
    /// the offset to continue from, and the first offset not yet truncated.
    pub async fn wal_read(
        &self,
        partition: u32,
        from: u64,
        limit: u32,
        unfinished_only: bool,
    ) -> Result<(Vec<WalEntry>, u64, u64)> {
        let g = self.wal_group(partition)?;
        self.call(g, |c| async move {
            let mut req = c.wal_read_request();
            {
                let mut p = req.get();
                p.set_partition(partition);
                p.set_from(from);
                p.set_limit(limit);
                p.set_max_bytes(crate::limits::WAL_READ_BYTES_MAX);
                p.set_unfinished_only(unfinished_only);
            }
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())?;
            let mut out = Vec::new();
            for e in r.get_entries()?.iter() {
                out.push(WalEntry {
                    offset: e.get_offset(),
                    gateway: e.get_gateway()?.to_string().unwrap_or_default(),
                    data: e.get_data()?.to_vec(),
                    is_intent: e.get_is_intent(),
                    finished: e.get_finished(),
                });
            }
            Ok((out, r.get_next(), r.get_truncated_before()))
        })
        .await
    }

    /// Marks entries finished; returns the first offset not truncated.
    pub async fn wal_finish(&self, partition: u32, offsets: &[u64]) -> Result<u64> {
        let g = self.wal_group(partition)?;
        let rid = &self.next_rid();
        self.call(g, |c| async move {
            let mut req = c.wal_finish_request();
            {
                let mut p = req.get();
                p.set_partition(partition);
                let mut l = p.reborrow().init_offsets(offsets.len() as u32);
                for (i, o) in offsets.iter().enumerate() {
                    l.set(i as u32, *o);
                }
                fill_rid(p.init_rid(), rid);
            }
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())?;
            Ok(r.get_truncated_before())
        })
        .await
    }

    /// Moves `from`'s unfinished entries of `partition` to `to`.
    pub async fn wal_claim(&self, partition: u32, from: &str, to: &str) -> Result<u64> {
        let g = self.wal_group(partition)?;
        let rid = &self.next_rid();
        self.call(g, |c| async move {
            let mut req = c.wal_claim_request();
            {
                let mut p = req.get();
                p.set_partition(partition);
                p.set_from_gateway(from);
                p.set_to_gateway(to);
                fill_rid(p.init_rid(), rid);
            }
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())?;
            Ok(r.get_claimed())
        })
        .await
    }

    /// Records `gateway`'s consumer position in `partition`.
    pub async fn wal_set_position(&self, partition: u32, gateway: &str, offset: u64) -> Result<()> {
        let g = self.wal_group(partition)?;
        self.call(g, |c| async move {
            let mut req = c.wal_set_position_request();
            {
                let mut p = req.get();
                p.set_partition(partition);
                p.set_gateway(gateway);
                p.set_offset(offset);
            }
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())
        })
        .await
    }

    /// A partition's (next offset, first untruncated offset, unfinished
    /// entries, unfinished bytes, consumer positions).
    pub async fn wal_status(&self, partition: u32) -> Result<WalStatus> {
        let g = self.wal_group(partition)?;
        self.call(g, |c| async move {
            let mut req = c.wal_status_request();
            req.get().set_partition(partition);
            let resp = req.send().promise.await?;
            let r = resp.get()?;
            check(r.has_error(), r.get_error())?;
            let mut positions = Vec::new();
            for p in r.get_positions()?.iter() {
                positions.push((
                    p.get_gateway()?.to_string().unwrap_or_default(),
                    p.get_offset(),
                ));
            }
            Ok(WalStatus {
                next_offset: r.get_next_offset(),
                truncated_before: r.get_truncated_before(),
                unfinished: r.get_unfinished(),
                unfinished_bytes: r.get_unfinished_bytes(),
                positions,
            })
        })
        .await
    }
}

/// One WAL entry as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEntry {
    pub offset: u64,
    pub gateway: String,
    pub data: Vec<u8>,
    pub is_intent: bool,
    pub finished: bool,
}

/// A WAL partition's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalStatus {
    pub next_offset: u64,
    pub truncated_before: u64,
    pub unfinished: u64,
    pub unfinished_bytes: u64,
    pub positions: Vec<(String, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever order requests finish in, the watermark a request
        /// carries is at most its own seq and at most every seq still
        /// outstanding (so none that may be sent again is ever settled),
        /// and once all are done it is the next seq to come.
        #[test]
        fn the_watermark_never_passes_an_outstanding_seq(
            ops in proptest::collection::vec((any::<bool>(), any::<usize>()), 1..200),
        ) {
            let outstanding: Outstanding = Rc::new(RefCell::new(BTreeSet::new()));
            let mut next = 0u64;
            let mut live: Vec<Rid> = Vec::new();
            for (issue, pick) in ops {
                if issue || live.is_empty() {
                    next += 1;
                    outstanding.borrow_mut().insert(next);
                    live.push(Rid { client: 1, seq: next, outstanding: outstanding.clone() });
                } else {
                    live.swap_remove(pick % live.len());
                }
                for r in &live {
                    let w = r.settled_below();
                    prop_assert!(w <= r.seq);
                    prop_assert!(live.iter().all(|o| w <= o.seq));
                    prop_assert!(live.iter().any(|o| o.seq == w));
                }
            }
            drop(live);
            prop_assert!(outstanding.borrow().is_empty());
            let last = Rid { client: 1, seq: next + 1, outstanding: outstanding.clone() };
            outstanding.borrow_mut().insert(next + 1);
            prop_assert_eq!(last.settled_below(), next + 1);
        }
    }
}
