//! The `Metad` Cap'n Proto service: validates every request, routes it to
//! its group, answers `notLeader` with the leader's address when this
//! replica does not lead that group, and turns raft's errors into the
//! schema's typed errors.
//!
//! Invariants: nothing from the network reaches raft unvalidated (limits
//! in `crate::limits`); a read in `linearizable` mode is served only after a
//! quorum confirmed this replica still leads; no request panics.

use crate::error::REFUSAL_PREFIX;
use crate::keys::{group_of, SYSTEM_GROUP};
use crate::limits::*;
use crate::net::{decode, encode, KIND_APPEND, KIND_SNAPSHOT, KIND_VOTE};
use crate::replica::{Group, ProposeError, Replica};
use crate::types::{Command, CommandResult, KeyWrite, LeaseState, NodeId, Op, TypeConfig};
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use openraft::{BasicNode, ChangeMembers};
use std::future::Future;
use std::ops::Bound;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tessera_schema::metad_capnp::{error as wire_error, metad, write_op, ReadMode};

pub use tessera_schema::metad_capnp::error::Kind as ErrorKind;

/// A request that failed, as the client will see it.
#[derive(Debug, Clone)]
pub struct Failure {
    kind: ErrorKind,
    message: String,
    leader: Option<(NodeId, String)>,
}

impl Failure {
    /// The kind as a metric label.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ErrorKind::InvalidArgument => "invalid",
            ErrorKind::NotLeader => "not_leader",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Conflict => "conflict",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Internal => "internal",
            ErrorKind::Stale => "stale",
            ErrorKind::Full => "full",
            ErrorKind::Unauthenticated => "unauthenticated",
        }
    }
}

fn fail(kind: ErrorKind, message: impl Into<String>) -> Failure {
    Failure {
        kind,
        message: message.into(),
        leader: None,
    }
}

fn invalid(message: impl Into<String>) -> Failure {
    fail(ErrorKind::InvalidArgument, message)
}

impl From<capnp::Error> for Failure {
    fn from(e: capnp::Error) -> Self {
        invalid(format!("malformed request: {e}"))
    }
}

impl From<capnp::NotInSchema> for Failure {
    fn from(e: capnp::NotInSchema) -> Self {
        invalid(format!(
            "a field holds a value this replica does not know ({e}); upgrade the replica"
        ))
    }
}

impl From<std::str::Utf8Error> for Failure {
    fn from(e: std::str::Utf8Error) -> Self {
        invalid(format!("a text field is not UTF-8: {e}"))
    }
}

fn write_failure(mut b: wire_error::Builder<'_>, f: &Failure) {
    b.set_kind(f.kind);
    b.set_message(&f.message);
    if let Some((id, addr)) = &f.leader {
        b.set_leader_id(*id);
        b.set_leader_addr(addr);
    }
}

/// The failure that ends a batched call as a whole: leadership lost or
/// the group busy for any item. The client retries the whole call, and
/// the items' request ids keep those already applied from applying twice.
fn call_wide_failure<T>(outcomes: &[Result<T, Failure>]) -> Result<(), Failure> {
    match outcomes.iter().find_map(|o| match o {
        Err(f) if matches!(f.kind, ErrorKind::NotLeader | ErrorKind::Unavailable) => {
            Some(f.clone())
        }
        _ => None,
    }) {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// A checked WAL append: request id (client, seq) and the op.
type WalAppendOp = (RequestRef, Op);

/// A request's id as it came: (client, seq) and the client's settled
/// watermark (0 = not said).
#[derive(Clone, Copy, Debug, Default)]
struct RequestRef {
    client: u64,
    seq: u64,
    settled_below: u64,
}

/// Checks one WAL append (walAppend or an item of walAppendMany).
fn wal_append_op(
    gateway: &str,
    data: &[u8],
    is_intent: bool,
    rid: RequestRef,
) -> Result<WalAppendOp, Failure> {
    check_node_field("gateway", gateway, false)?;
    if data.len() > WAL_DATA_MAX_BYTES {
        return Err(fail(
            ErrorKind::TooLarge,
            format!(
                "a WAL entry of {} bytes is over the {WAL_DATA_MAX_BYTES}-byte limit: log the \
                 object's intent (key, version id, size, hash, stripe plan) instead",
                data.len()
            ),
        ));
    }
    let op = Op::WalAppend {
        gateway: gateway.to_string(),
        data: data.into(),
        is_intent,
    };
    Ok((rid, op))
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn check_key(key: &[u8]) -> Result<(), Failure> {
    if key.is_empty() {
        return Err(invalid("the key is empty: keys are 1 or more bytes"));
    }
    if key.len() > KEY_LEN_MAX_BYTES {
        return Err(fail(
            ErrorKind::TooLarge,
            format!(
                "the key is {} bytes; keys are at most {KEY_LEN_MAX_BYTES}",
                key.len()
            ),
        ));
    }
    Ok(())
}

fn check_value(v: &[u8]) -> Result<(), Failure> {
    if v.len() > VALUE_LEN_MAX_BYTES {
        return Err(fail(
            ErrorKind::TooLarge,
            format!("the value is {} bytes; values are at most {VALUE_LEN_MAX_BYTES} (store large data in chunks)", v.len()),
        ));
    }
    Ok(())
}

fn check_name(what: &str, v: &[u8]) -> Result<(), Failure> {
    if v.is_empty() || v.len() > LEASE_NAME_LEN_MAX_BYTES {
        return Err(invalid(format!(
            "the lease {what} must be 1..={LEASE_NAME_LEN_MAX_BYTES} bytes, got {}",
            v.len()
        )));
    }
    Ok(())
}

fn check_ttl(ttl: u32) -> Result<(), Failure> {
    if !(LEASE_TTL_MIN_MILLIS..=LEASE_TTL_MAX_MILLIS).contains(&ttl) {
        return Err(invalid(format!(
            "ttlMillis must be {LEASE_TTL_MIN_MILLIS}..={LEASE_TTL_MAX_MILLIS}, got {ttl}"
        )));
    }
    Ok(())
}

fn check_node_field(what: &str, v: &str, allow_empty: bool) -> Result<(), Failure> {
    if (!allow_empty && v.is_empty()) || v.len() > NODE_FIELD_LEN_MAX_BYTES {
        return Err(invalid(format!(
            "{what} must be {}..={NODE_FIELD_LEN_MAX_BYTES} bytes, got {}",
            u8::from(!allow_empty),
            v.len()
        )));
    }
    Ok(())
}

fn read_write_op(op: write_op::Reader<'_>) -> Result<KeyWrite, Failure> {
    let key = op.get_key()?.to_vec();
    check_key(&key)?;
    let expected = match op.get_condition()? {
        write_op::Condition::Any => None,
        write_op::Condition::Version => Some(op.get_expected_version()),
    };
    let value = match op.which()? {
        write_op::Which::Put(v) => {
            let v = v?;
            check_value(v)?;
            Some(v.to_vec())
        }
        write_op::Which::Delete(()) => None,
    };
    Ok(KeyWrite {
        key,
        expected,
        value,
    })
}

fn write_lease(
    mut b: tessera_schema::metad_capnp::lease::Builder<'_>,
    name: &[u8],
    l: &LeaseState,
    now: u64,
) {
    b.set_name(name);
    b.set_holder(&l.holder);
    b.set_epoch(l.epoch);
    b.set_ttl_millis(l.ttl_ms);
    b.set_expires_in_millis(l.expires_at_ms.saturating_sub(now).min(u32::MAX as u64) as u32);
}

pub struct MetadService {
    replica: Rc<Replica>,
    /// What this connection's peer proved (one service per connection).
    session: Rc<tessera_auth::Session>,
}

/// How stale a replica's copy of a key record may be when it checks an
/// access key: a revocation reaches every replica within this.
pub const KEY_READ_STALENESS_MS: u32 = 2_000;
/// An operator connection re-checks its key this often, so that a revoked
/// key stops working on connections it opened before.
pub const SESSION_RECHECK: Duration = Duration::from_secs(10);
/// Method ids of the `Metad` interface the gate treats specially (the
/// schema's ordinals; `cli/tests/security.rs` exercises them: an admin key
/// authenticates, raft between replicas runs).
pub const METHOD_RAFT: u16 = 15;
pub const METHOD_AUTHENTICATE: u16 = 22;

/// Method names by ordinal, for request spans.
const NAMES: tessera_auth::Names = tessera_auth::Names {
    service: "metad",
    hot_path: false,
    methods: &[
        "get",
        "write",
        "batch",
        "list",
        "register_node",
        "heartbeat",
        "list_nodes",
        "acquire_lease",
        "renew_lease",
        "release_lease",
        "get_lease",
        "status",
        "add_voter",
        "remove_voter",
        "snapshot",
        "raft",
        "wal_append",
        "wal_read",
        "wal_finish",
        "wal_claim",
        "wal_set_position",
        "wal_status",
        "authenticate",
        "wal_append_many",
        "write_many",
    ],
};

impl MetadService {
    pub fn new(replica: Rc<Replica>, session: Rc<tessera_auth::Session>) -> Self {
        MetadService { replica, session }
    }

    /// This service behind the call gate: a peer without a node
    /// certificate may only `authenticate` until it has proved an admin
    /// key; raft traffic always needs a node certificate.
    pub fn gated(replica: Rc<Replica>, session: Rc<tessera_auth::Session>) -> metad::Client {
        let svc = Rc::new(MetadService::new(replica.clone(), session.clone()));
        let checker = svc.clone();
        let iface = <metad::Client as capnp::traits::HasTypeId>::TYPE_ID;
        tessera_auth::gated::<metad::Client, _>(
            MetadService::new(replica, session.clone()),
            session.clone(),
            NAMES,
            None,
            move |interface, method| {
                use tessera_auth::Check;
                if interface != iface || method == METHOD_AUTHENTICATE || session.node {
                    return Check::Allow;
                }
                if method == METHOD_RAFT {
                    crate::metrics::auth_refused("raft_without_certificate");
                    return Check::Refuse(
                        "raft traffic needs a node certificate from the cluster CA".into(),
                    );
                }
                match session.current() {
                    None => {
                        crate::metrics::auth_refused("unauthenticated");
                        Check::Refuse(format!(
                            "{REFUSAL_PREFIX}this connection showed no node certificate; call \
                             authenticate with an admin access key first (the CLI does this \
                             with the key in its cluster file, or TESSERA_KEY_ID and \
                             TESSERA_SECRET)"
                        ))
                    }
                    Some((_, at)) if at.elapsed() < SESSION_RECHECK => Check::Allow,
                    Some((grant, _)) => {
                        let svc = checker.clone();
                        Check::After(Box::pin(async move { svc.recheck(&grant.key_id).await }))
                    }
                }
            },
        )
    }

    /// The stored record of `key_id` (`None` if there is none), from this
    /// replica's state if it is at most [`KEY_READ_STALENESS_MS`] old.
    async fn key_record(&self, key_id: &str) -> Result<Option<tessera_auth::KeyRecord>, Failure> {
        let key = tessera_auth::keys::record_key(key_id).into_bytes();
        let g = self.group_for_key(&key).clone();
        self.read_gate(&g, ReadMode::Follower, KEY_READ_STALENESS_MS)
            .await?;
        match g.sm.with(|d| d.kv.get(&key).cloned()) {
            None => Ok(None),
            Some(v) => tessera_auth::KeyRecord::from_json(&v.value)
                .map(Some)
                .map_err(|e| fail(ErrorKind::Internal, e.to_string())),
        }
    }

    /// Checks again that the session's key is neither revoked nor gone.
    async fn recheck(&self, key_id: &str) -> Result<(), String> {
        let rec = self.key_record(key_id).await.map_err(|f| f.message)?;
        match rec {
            Some(r) if r.revoked_unix_millis.is_none() && r.permissions.admin => {
                self.session.rechecked();
                Ok(())
            }
            _ => {
                self.session.revoke();
                crate::metrics::auth_refused("revoked");
                Err(format!(
                    "{REFUSAL_PREFIX}access key {key_id} was revoked or lost admin; \
                     authenticate again with another admin key"
                ))
            }
        }
    }

    fn meta_group(&self, g: u32) -> Result<&Rc<Group>, Failure> {
        if g >= self.replica.group_count() {
            return Err(invalid(format!(
                "group {g} does not exist: this cluster has {} metadata groups",
                self.replica.group_count()
            )));
        }
        self.group(g)
    }

    fn wal(&self, p: u32) -> Result<&Rc<Group>, Failure> {
        self.replica.wal_group(p).ok_or_else(|| {
            invalid(format!(
                "WAL partition {p} does not exist: this cluster has {} (0..{})",
                self.replica.wal_partitions, self.replica.wal_partitions
            ))
        })
    }

    fn group(&self, g: u32) -> Result<&Rc<Group>, Failure> {
        self.replica.groups.get(g as usize).ok_or_else(|| {
            invalid(format!(
                "group {g} does not exist: this cluster has {} groups",
                self.replica.groups.len()
            ))
        })
    }

    fn group_for_key(&self, key: &[u8]) -> &Rc<Group> {
        &self.replica.groups[group_of(key, self.replica.group_count()) as usize]
    }

    fn leader_hint(&self, g: &Group) -> Option<(NodeId, String)> {
        let m = g.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Some((leader, addr))
    }

    fn not_leader(&self, g: &Group) -> Failure {
        let hint = self.leader_hint(g);
        let msg = match &hint {
            Some((id, addr)) => format!(
                "replica {} does not lead group {}; replica {id} at {addr} does",
                self.replica.id, g.id
            ),
            None => format!(
                "group {} has no leader right now (an election is running); retry shortly",
                g.id
            ),
        };
        let kind = if hint.is_some() {
            ErrorKind::NotLeader
        } else {
            ErrorKind::Unavailable
        };
        Failure {
            kind,
            message: msg,
            leader: hint,
        }
    }

    fn is_leader(&self, g: &Group) -> bool {
        g.raft.metrics().borrow().current_leader == Some(self.replica.id)
    }

    /// Makes a read of group `g` safe in `mode`.
    async fn read_gate(
        &self,
        g: &Rc<Group>,
        mode: ReadMode,
        max_stale_ms: u32,
    ) -> Result<(), Failure> {
        match mode {
            ReadMode::Linearizable => {
                if !self.is_leader(g) {
                    return Err(self.not_leader(g));
                }
                self.replica.read_barrier(g).await.map_err(|e| {
                    let f = self.not_leader(g);
                    if f.kind == ErrorKind::NotLeader
                        && f.leader
                            .as_ref()
                            .is_some_and(|(id, _)| *id != self.replica.id)
                    {
                        f
                    } else {
                        fail(
                            ErrorKind::Unavailable,
                            format!("could not confirm leadership of group {}: {e}; retry", g.id),
                        )
                    }
                })
            }
            ReadMode::Follower => {
                if self.is_leader(g) {
                    return Ok(());
                }
                let fresh = g
                    .last_leader_contact
                    .get()
                    .is_some_and(|t| t.elapsed() <= Duration::from_millis(max_stale_ms as u64));
                if fresh {
                    Ok(())
                } else {
                    let mut f = self.not_leader(g);
                    f.kind = ErrorKind::Stale;
                    f.message = format!(
                        "replica {} has not heard from group {}'s leader within {max_stale_ms} ms; read from the leader{}",
                        self.replica.id,
                        g.id,
                        f.leader.as_ref().map(|(_, a)| format!(" at {a}")).unwrap_or_default()
                    );
                    Err(f)
                }
            }
        }
    }

    async fn propose(
        &self,
        g: &Rc<Group>,
        rid: RequestRef,
        op: Op,
    ) -> Result<CommandResult, Failure> {
        if !self.is_leader(g) {
            return Err(self.not_leader(g));
        }
        let now_ms = wall_ms();
        if rid.client != 0 && rid.settled_below != 0 {
            g.note_settled(rid.client, rid.settled_below.min(rid.seq), now_ms);
        }
        let cmd = Command {
            client: rid.client,
            seq: rid.seq,
            now_ms,
            op,
        };
        match g.propose(cmd).await {
            // Only a copy the client no longer waits for gets here (its
            // watermark passed this seq), but say so plainly.
            Ok(CommandResult::AlreadySettled) => Err(fail(
                ErrorKind::Conflict,
                format!(
                    "request {} of client {:#x} is a late copy of one its client had already \
                     settled (answered or given up); nothing was applied. Nothing to do: a new \
                     request gets a new seq",
                    rid.seq, rid.client
                ),
            )),
            Ok(r) => Ok(r),
            Err(ProposeError::NotLeader) => Err(self.not_leader(g)),
            Err(ProposeError::Overloaded(e)) => Err(fail(ErrorKind::Unavailable, e)),
            Err(ProposeError::Other(e)) => {
                Err(fail(ErrorKind::Internal, format!("unexpected: {e}")))
            }
            Err(ProposeError::Stopped(e)) => Err(fail(
                ErrorKind::Unavailable,
                format!(
                    "group {} on replica {} stopped: {e}; retry on another replica",
                    g.id, self.replica.id
                ),
            )),
        }
    }

    /// Proposes one single-key write to its key's group.
    async fn propose_write(
        &self,
        rid: RequestRef,
        op: KeyWrite,
    ) -> Result<crate::types::WriteOutcome, Failure> {
        let g = self.group_for_key(&op.key).clone();
        let expected = op.expected;
        match self.propose(&g, rid, Op::Write(vec![op])).await? {
            CommandResult::Written(w) if w.len() == 1 => Ok(w[0]),
            CommandResult::Conflict { current, .. } => Err(fail(
                ErrorKind::Conflict,
                format!(
                    "the key's version is {current}, not the expected {}; nothing was written",
                    expected.unwrap_or(0)
                ),
            )),
            other => Err(fail(
                ErrorKind::Internal,
                format!("unexpected result {other:?}"),
            )),
        }
    }

    /// Proposes one WAL append ([`wal_append_op`]); returns its offset.
    async fn propose_wal_append(
        &self,
        g: &Rc<Group>,
        (rid, op): WalAppendOp,
    ) -> Result<u64, Failure> {
        match self.propose(g, rid, op).await? {
            CommandResult::WalAppended { offset } => Ok(offset),
            CommandResult::WalFull(why) => Err(fail(ErrorKind::Full, why)),
            other => Err(fail(
                ErrorKind::Internal,
                format!("unexpected result {other:?}"),
            )),
        }
    }

    async fn handle_raft(
        &self,
        group: u32,
        kind: u8,
        payload: &[u8],
    ) -> Result<Vec<u8>, capnp::Error> {
        crate::metrics::raft_message_served("capnp");
        dispatch_raft(&self.replica, group, kind, payload)
            .await
            .map_err(capnp::Error::failed)
    }

    fn rid(
        r: Result<tessera_schema::metad_capnp::request_id::Reader<'_>, capnp::Error>,
    ) -> RequestRef {
        match r {
            Ok(r) => RequestRef {
                client: r.get_client(),
                seq: r.get_seq(),
                settled_below: r.get_settled_below(),
            },
            Err(_) => RequestRef::default(),
        }
    }
}

/// Runs `body`, writing its failure (if any) into the results' error field.
macro_rules! respond {
    ($results:ident, $body:expr, |$ok:pat_param| $fill:expr) => {{
        match $body {
            Ok($ok) => $fill,
            Err(f) => write_failure($results.get().init_error(), &f),
        }
        Ok(())
    }};
}

// The trait asks for `impl Future + 'static`; the explicit form keeps that
// bound visible where `self` and the params are moved in.
#[allow(clippy::manual_async_fn)]
impl metad::Server for MetadService {
    fn get(
        self: Rc<Self>,
        params: metad::GetParams,
        mut results: metad::GetResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let key = p.get_key()?.to_vec();
                check_key(&key)?;
                let mode = p.get_mode().map_err(|_| invalid("unknown read mode"))?;
                let g = self.group_for_key(&key).clone();
                self.read_gate(&g, mode, p.get_max_staleness_ms()).await?;
                Ok::<_, Failure>(g.sm.with(|d| d.kv.get(&key).cloned()).map(|v| (key, v)))
            }
            .await;
            crate::metrics::observe(
                "get",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |found| if let Some((key, v)) = found {
                let mut b = results.get();
                b.set_found(true);
                let mut kv = b.init_kv();
                kv.set_key(&key);
                kv.set_value(&v.value);
                kv.set_version(v.version);
            })
        }
    }

    fn write(
        self: Rc<Self>,
        params: metad::WriteParams,
        mut results: metad::WriteResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let op = read_write_op(p.get_op()?)?;
                self.propose_write(Self::rid(p.get_rid()), op).await
            }
            .await;
            crate::metrics::observe(
                "write",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |w| {
                let mut b = results.get().init_result();
                b.set_version(w.version);
                b.set_previous_version(w.previous_version);
            })
        }
    }

    fn write_many(
        self: Rc<Self>,
        params: metad::WriteManyParams,
        mut results: metad::WriteManyResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let items = params.get()?.get_items()?;
                let n = items.len() as usize;
                if n == 0 || n > WRITE_MANY_ITEMS_MAX {
                    return Err(invalid(format!(
                        "a writeMany call carries 1..={WRITE_MANY_ITEMS_MAX} items, got {n}"
                    )));
                }
                // Every item is checked before any is proposed.
                let mut ops = Vec::with_capacity(n);
                let mut bytes = 0usize;
                for it in items.iter() {
                    let op = it.get_op().map_err(Failure::from).and_then(read_write_op);
                    if let Ok(op) = &op {
                        bytes += op.key.len() + op.value.as_ref().map_or(0, |v| v.len());
                    }
                    ops.push(op.map(|op| (Self::rid(it.get_rid()), op)));
                }
                if n > 1 && bytes > WRITE_MANY_BYTES_MAX {
                    return Err(fail(
                        ErrorKind::TooLarge,
                        format!(
                            "a writeMany call carries {bytes} bytes of keys and values, over its \
                             {WRITE_MANY_BYTES_MAX}-byte limit: send fewer items per call"
                        ),
                    ));
                }
                let outcomes = futures::future::join_all(ops.into_iter().map(|op| {
                    let me = self.clone();
                    async move {
                        let (rid, op) = op?;
                        me.propose_write(rid, op).await
                    }
                }))
                .await;
                call_wide_failure(&outcomes)?;
                Ok(outcomes)
            }
            .await;
            crate::metrics::observe(
                "write_many",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |outcomes| {
                let mut list = results.get().init_results(outcomes.len() as u32);
                for (i, o) in outcomes.iter().enumerate() {
                    let b = list.reborrow().get(i as u32);
                    match o {
                        Ok(w) => {
                            let mut r = b.init_result();
                            r.set_version(w.version);
                            r.set_previous_version(w.previous_version);
                        }
                        Err(f) => write_failure(b.init_error(), f),
                    }
                }
            })
        }
    }

    fn batch(
        self: Rc<Self>,
        params: metad::BatchParams,
        mut results: metad::BatchResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let list = p.get_ops()?;
                if list.is_empty() {
                    return Err(invalid("the batch is empty"));
                }
                if list.len() as usize > BATCH_OPS_MAX {
                    return Err(fail(ErrorKind::TooLarge, format!("the batch has {} operations; at most {BATCH_OPS_MAX}", list.len())));
                }
                let mut ops = Vec::with_capacity(list.len() as usize);
                let mut bytes = 0usize;
                for op in list.iter() {
                    let op = read_write_op(op)?;
                    bytes += op.key.len() + op.value.as_ref().map_or(0, |v| v.len());
                    ops.push(op);
                }
                if bytes > BATCH_BYTES_MAX {
                    return Err(fail(ErrorKind::TooLarge, format!("the batch holds {bytes} bytes of keys and values; at most {BATCH_BYTES_MAX}")));
                }
                let groups = self.replica.group_count();
                let g0 = group_of(&ops[0].key, groups);
                if let Some(other) = ops.iter().find(|o| group_of(&o.key, groups) != g0) {
                    return Err(invalid(format!(
                        "the batch spans groups ({:?} is in group {g0}, {:?} in group {}): a batch is atomic only within one \
                         group; give its keys the same hash tag, e.g. \"users/{{alice}}/a\" and \"users/{{alice}}/b\"",
                        String::from_utf8_lossy(&ops[0].key),
                        String::from_utf8_lossy(&other.key),
                        group_of(&other.key, groups)
                    )));
                }
                let rid = Self::rid(p.get_rid());
                let g = self.replica.groups[g0 as usize].clone();
                match self.propose(&g, rid, Op::Write(ops)).await? {
                    CommandResult::Written(w) => Ok(w),
                    CommandResult::Conflict { index, current } => Err(fail(
                        ErrorKind::Conflict,
                        format!("operation {index}'s precondition failed (the key's version is {current}); nothing was written"),
                    )),
                    other => Err(fail(ErrorKind::Internal, format!("unexpected result {other:?}"))),
                }
            }
            .await;
            crate::metrics::observe(
                "batch",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |w| {
                let mut l = results.get().init_results(w.len() as u32);
                for (i, x) in w.iter().enumerate() {
                    let mut b = l.reborrow().get(i as u32);
                    b.set_version(x.version);
                    b.set_previous_version(x.previous_version);
                }
            })
        }
    }

    fn list(
        self: Rc<Self>,
        params: metad::ListParams,
        mut results: metad::ListResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let g = self.meta_group(p.get_group())?.clone();
                let prefix = p.get_prefix()?.to_vec();
                let after = p.get_start_after()?.to_vec();
                let limit = p.get_limit();
                if limit == 0 || limit > LIST_LIMIT_MAX {
                    return Err(invalid(format!(
                        "limit must be 1..={LIST_LIMIT_MAX}, got {limit}"
                    )));
                }
                if prefix.len() > KEY_LEN_MAX_BYTES || after.len() > KEY_LEN_MAX_BYTES {
                    return Err(fail(
                        ErrorKind::TooLarge,
                        format!("prefix and startAfter are at most {KEY_LEN_MAX_BYTES} bytes"),
                    ));
                }
                let mode = p.get_mode().map_err(|_| invalid("unknown read mode"))?;
                self.read_gate(&g, mode, 0).await?;
                Ok(g.sm.with(|d| {
                    let lower = if after.is_empty() || after < prefix {
                        Bound::Included(prefix.clone())
                    } else {
                        Bound::Excluded(after.clone())
                    };
                    let mut items = Vec::new();
                    let mut more = false;
                    for (k, v) in d.kv.range::<Vec<u8>, _>((lower, Bound::Unbounded)) {
                        if !k.starts_with(&prefix) {
                            break;
                        }
                        if items.len() == limit as usize {
                            more = true;
                            break;
                        }
                        items.push((k.clone(), v.clone()));
                    }
                    (items, more)
                }))
            }
            .await;
            crate::metrics::observe(
                "list",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |(items, more)| {
                let mut b = results.get();
                b.set_more(more);
                let mut l = b.init_items(items.len() as u32);
                for (i, (k, v)) in items.iter().enumerate() {
                    let mut e = l.reborrow().get(i as u32);
                    e.set_key(k);
                    e.set_value(&v.value);
                    e.set_version(v.version);
                }
            })
        }
    }

    fn register_node(
        self: Rc<Self>,
        params: metad::RegisterNodeParams,
        mut results: metad::RegisterNodeResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let node_id = p.get_node_id()?.to_str()?.to_string();
                let addr = p.get_addr()?.to_str()?.to_string();
                let zone = p.get_zone()?.to_str()?.to_string();
                check_node_field("nodeId", &node_id, false)?;
                check_node_field("addr", &addr, false)?;
                check_node_field("zone", &zone, true)?;
                check_ttl(p.get_ttl_millis())?;
                let op = Op::RegisterNode {
                    node_id,
                    addr,
                    capacity: p.get_capacity_bytes(),
                    zone,
                    ttl_ms: p.get_ttl_millis(),
                };
                let g = self.replica.groups[SYSTEM_GROUP as usize].clone();
                match self.propose(&g, RequestRef::default(), op).await? {
                    CommandResult::Done => Ok(()),
                    other => Err(fail(
                        ErrorKind::Internal,
                        format!("unexpected result {other:?}"),
                    )),
                }
            }
            .await;
            crate::metrics::observe(
                "register_node",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |()| ())
        }
    }

    fn heartbeat(
        self: Rc<Self>,
        params: metad::HeartbeatParams,
        mut results: metad::HeartbeatResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let node_id = p.get_node_id()?.to_str()?.to_string();
                check_node_field("nodeId", &node_id, false)?;
                let op = Op::Heartbeat {
                    node_id,
                    used: p.get_used_bytes(),
                    capacity: p.get_capacity_bytes(),
                };
                let g = self.replica.groups[SYSTEM_GROUP as usize].clone();
                match self.propose(&g, RequestRef::default(), op).await? {
                    CommandResult::Done => Ok(()),
                    CommandResult::Refused(why) => Err(fail(ErrorKind::InvalidArgument, why)),
                    other => Err(fail(
                        ErrorKind::Internal,
                        format!("unexpected result {other:?}"),
                    )),
                }
            }
            .await;
            crate::metrics::observe(
                "heartbeat",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |()| ())
        }
    }

    fn list_nodes(
        self: Rc<Self>,
        _params: metad::ListNodesParams,
        mut results: metad::ListNodesResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let g = self.replica.groups[SYSTEM_GROUP as usize].clone();
                self.read_gate(&g, ReadMode::Linearizable, 0).await?;
                Ok::<_, Failure>(g.sm.with(|d| d.nodes.clone()))
            }
            .await;
            crate::metrics::observe(
                "list_nodes",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            let now = wall_ms();
            respond!(results, r, |nodes| {
                let mut l = results.get().init_nodes(nodes.len() as u32);
                for (i, (id, n)) in nodes.iter().enumerate() {
                    let mut b = l.reborrow().get(i as u32);
                    let ago = now.saturating_sub(n.last_heartbeat_ms);
                    b.set_node_id(id);
                    b.set_addr(&n.addr);
                    b.set_capacity_bytes(n.capacity);
                    b.set_used_bytes(n.used);
                    b.set_live(ago <= n.ttl_ms as u64);
                    b.set_last_heartbeat_ago_millis(ago);
                    b.set_registered_version(n.registered_version);
                    b.set_zone(&n.zone);
                }
            })
        }
    }

    fn acquire_lease(
        self: Rc<Self>,
        params: metad::AcquireLeaseParams,
        mut results: metad::AcquireLeaseResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let name = p.get_name()?.to_vec();
                let holder = p.get_holder()?.to_vec();
                check_name("name", &name)?;
                check_name("holder", &holder)?;
                check_ttl(p.get_ttl_millis())?;
                let rid = Self::rid(p.get_rid());
                let g = self.replica.groups[SYSTEM_GROUP as usize].clone();
                match self
                    .propose(
                        &g,
                        rid,
                        Op::AcquireLease {
                            name: name.clone(),
                            holder,
                            ttl_ms: p.get_ttl_millis(),
                        },
                    )
                    .await?
                {
                    CommandResult::Lease { ok, lease } => Ok((name, ok, lease)),
                    other => Err(fail(
                        ErrorKind::Internal,
                        format!("unexpected result {other:?}"),
                    )),
                }
            }
            .await;
            crate::metrics::observe(
                "acquire_lease",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            let now = wall_ms();
            respond!(results, r, |(name, ok, lease)| {
                results.get().set_granted(ok);
                write_lease(results.get().init_lease(), &name, &lease, now);
            })
        }
    }

    fn renew_lease(
        self: Rc<Self>,
        params: metad::RenewLeaseParams,
        mut results: metad::RenewLeaseResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let name = p.get_name()?.to_vec();
                let holder = p.get_holder()?.to_vec();
                check_name("name", &name)?;
                check_name("holder", &holder)?;
                check_ttl(p.get_ttl_millis())?;
                let rid = Self::rid(p.get_rid());
                let g = self.replica.groups[SYSTEM_GROUP as usize].clone();
                let op = Op::RenewLease {
                    name: name.clone(),
                    holder,
                    epoch: p.get_epoch(),
                    ttl_ms: p.get_ttl_millis(),
                };
                match self.propose(&g, rid, op).await? {
                    CommandResult::Lease { ok, lease } => Ok((name, ok, lease)),
                    other => Err(fail(
                        ErrorKind::Internal,
                        format!("unexpected result {other:?}"),
                    )),
                }
            }
            .await;
            crate::metrics::observe(
                "renew_lease",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            let now = wall_ms();
            respond!(results, r, |(name, ok, lease)| {
                results.get().set_renewed(ok);
                write_lease(results.get().init_lease(), &name, &lease, now);
            })
        }
    }

    fn release_lease(
        self: Rc<Self>,
        params: metad::ReleaseLeaseParams,
        mut results: metad::ReleaseLeaseResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let name = p.get_name()?.to_vec();
                let holder = p.get_holder()?.to_vec();
                check_name("name", &name)?;
                check_name("holder", &holder)?;
                let rid = Self::rid(p.get_rid());
                let g = self.replica.groups[SYSTEM_GROUP as usize].clone();
                self.propose(
                    &g,
                    rid,
                    Op::ReleaseLease {
                        name,
                        holder,
                        epoch: p.get_epoch(),
                    },
                )
                .await
                .map(|_| ())
            }
            .await;
            crate::metrics::observe(
                "release_lease",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |()| ())
        }
    }

    fn get_lease(
        self: Rc<Self>,
        params: metad::GetLeaseParams,
        mut results: metad::GetLeaseResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let name = params.get()?.get_name()?.to_vec();
                check_name("name", &name)?;
                let g = self.replica.groups[SYSTEM_GROUP as usize].clone();
                self.read_gate(&g, ReadMode::Linearizable, 0).await?;
                Ok::<_, Failure>((g.sm.with(|d| d.leases.get(&name).cloned()), name))
            }
            .await;
            crate::metrics::observe(
                "get_lease",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            let now = wall_ms();
            respond!(results, r, |(lease, name)| if let Some(l) = lease {
                results
                    .get()
                    .set_held(!l.holder.is_empty() && l.expires_at_ms > now);
                write_lease(results.get().init_lease(), &name, &l, now);
            })
        }
    }

    fn status(
        self: Rc<Self>,
        _params: metad::StatusParams,
        mut results: metad::StatusResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let rep = self.replica.clone();
        async move {
            let mut b = results.get();
            {
                let mut r = b.reborrow().init_replica();
                r.set_replica_id(rep.id);
                r.set_client_addr(&rep.advertise);
                r.set_groups(rep.group_count());
                r.set_wal_partitions(rep.wal_partitions);
                r.set_version(env!("CARGO_PKG_VERSION"));
                r.set_uptime_secs(rep.started.elapsed().as_secs());
                let m = rep.groups[0]
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .clone();
                let nodes: Vec<_> = m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
                let mut l = r.init_peers(nodes.len() as u32);
                for (i, (id, addr)) in nodes.iter().enumerate() {
                    let mut p = l.reborrow().get(i as u32);
                    p.set_id(*id);
                    p.set_addr(addr);
                }
            }
            let mut l = b.init_groups(rep.groups.len() as u32);
            for (i, g) in rep.groups.iter().enumerate() {
                let m = g.raft.metrics().borrow().clone();
                let mut s = l.reborrow().get(i as u32);
                s.set_group(g.id);
                s.set_leader_id(m.current_leader.unwrap_or(0));
                s.set_is_leader(m.current_leader == Some(rep.id));
                s.set_term(m.current_term);
                s.set_last_log_index(m.last_log_index.unwrap_or(0));
                s.set_applied_index(m.last_applied.map_or(0, |l| l.index));
                s.set_snapshot_index(m.snapshot.map_or(0, |l| l.index));
                let mem = m.membership_config.membership();
                let voters: Vec<_> = mem.voter_ids().collect();
                let learners: Vec<_> = mem.learner_ids().collect();
                let mut v = s.reborrow().init_voters(voters.len() as u32);
                for (j, id) in voters.iter().enumerate() {
                    v.set(j as u32, *id);
                }
                let mut lr = s.init_learners(learners.len() as u32);
                for (j, id) in learners.iter().enumerate() {
                    lr.set(j as u32, *id);
                }
            }
            Ok(())
        }
    }

    fn add_voter(
        self: Rc<Self>,
        params: metad::AddVoterParams,
        mut results: metad::AddVoterResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let g = self.group(p.get_group())?.clone();
                let id = p.get_replica_id();
                let addr = p.get_addr()?.to_str()?.to_string();
                if id == 0 {
                    return Err(invalid("replica ids start at 1"));
                }
                check_node_field("addr", &addr, false)?;
                if !self.is_leader(&g) {
                    return Err(self.not_leader(&g));
                }
                let voters: Vec<_> = g
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .collect();
                if !voters.contains(&id) && voters.len() >= REPLICAS_MAX {
                    return Err(invalid(format!(
                        "group {} already has {} voters; at most {REPLICAS_MAX}",
                        g.id,
                        voters.len()
                    )));
                }
                let map_err = |e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| match e {
                    RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
                        self.not_leader(&g)
                    }
                    e => fail(
                        ErrorKind::Unavailable,
                        format!("membership change of group {} failed: {e}; retry", g.id),
                    ),
                };
                // Blocking: returns once the learner has caught up, so the
                // new voter does not stall commits while it copies the log.
                g.raft
                    .add_learner(id, BasicNode { addr }, true)
                    .await
                    .map_err(map_err)?;
                g.raft
                    .change_membership(
                        ChangeMembers::AddVoterIds([id].into_iter().collect()),
                        false,
                    )
                    .await
                    .map_err(map_err)?;
                Ok(())
            }
            .await;
            crate::metrics::observe(
                "add_voter",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |()| ())
        }
    }

    fn remove_voter(
        self: Rc<Self>,
        params: metad::RemoveVoterParams,
        mut results: metad::RemoveVoterResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let g = self.group(p.get_group())?.clone();
                let id = p.get_replica_id();
                if !self.is_leader(&g) {
                    return Err(self.not_leader(&g));
                }
                let voters: Vec<_> = g
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .collect();
                if !voters.contains(&id) {
                    return Err(invalid(format!(
                        "replica {id} is not a voter of group {} (voters: {voters:?})",
                        g.id
                    )));
                }
                if voters.len() == 1 {
                    return Err(invalid(format!(
                        "replica {id} is group {}'s only voter; add another first",
                        g.id
                    )));
                }
                g.raft
                    .change_membership(
                        ChangeMembers::RemoveVoters([id].into_iter().collect()),
                        false,
                    )
                    .await
                    .map_err(|e| match e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
                            self.not_leader(&g)
                        }
                        e => fail(
                            ErrorKind::Unavailable,
                            format!("membership change of group {} failed: {e}; retry", g.id),
                        ),
                    })?;
                Ok(())
            }
            .await;
            crate::metrics::observe(
                "remove_voter",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |()| ())
        }
    }

    fn snapshot(
        self: Rc<Self>,
        _params: metad::SnapshotParams,
        mut results: metad::SnapshotResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let mut r = Ok(());
            for g in &self.replica.groups {
                if let Err(e) = g.raft.trigger().snapshot().await {
                    r = Err(fail(ErrorKind::Unavailable, format!("group {}: {e}", g.id)));
                }
            }
            respond!(results, r, |()| ())
        }
    }

    fn wal_append(
        self: Rc<Self>,
        params: metad::WalAppendParams,
        mut results: metad::WalAppendResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let g = self.wal(p.get_partition())?.clone();
                let item = wal_append_op(
                    p.get_gateway()?.to_str()?,
                    p.get_data()?,
                    p.get_is_intent(),
                    Self::rid(p.get_rid()),
                )?;
                self.propose_wal_append(&g, item).await
            }
            .await;
            crate::metrics::observe(
                "wal_append",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |offset| results.get().set_offset(offset))
        }
    }

    fn wal_append_many(
        self: Rc<Self>,
        params: metad::WalAppendManyParams,
        mut results: metad::WalAppendManyResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let g = self.wal(p.get_partition())?.clone();
                let items = p.get_items()?;
                let n = items.len() as usize;
                if n == 0 || n > WAL_APPEND_MANY_ITEMS_MAX {
                    return Err(invalid(format!(
                        "a walAppendMany call carries 1..={WAL_APPEND_MANY_ITEMS_MAX} items, got {n}"
                    )));
                }
                // Every item is checked before any is proposed.
                let mut ops = Vec::with_capacity(n);
                let mut bytes = 0usize;
                for it in items.iter() {
                    let data = it.get_data()?;
                    bytes += data.len();
                    ops.push(match it.get_gateway()?.to_str() {
                        Ok(gw) => wal_append_op(gw, data, it.get_is_intent(), Self::rid(it.get_rid())),
                        Err(e) => Err(e.into()),
                    });
                }
                if n > 1 && bytes > WAL_APPEND_MANY_BYTES_MAX {
                    return Err(fail(
                        ErrorKind::TooLarge,
                        format!(
                            "a walAppendMany call carries {bytes} bytes of data, over its \
                             {WAL_APPEND_MANY_BYTES_MAX}-byte limit: send fewer items per call"
                        ),
                    ));
                }
                // Proposed together, they share raft entries (the group's
                // proposer batches what waits).
                let outcomes = futures::future::join_all(ops.into_iter().map(|op| {
                    let (me, g) = (self.clone(), g.clone());
                    async move { me.propose_wal_append(&g, op?).await }
                }))
                .await;
                call_wide_failure(&outcomes)?;
                Ok(outcomes)
            }
            .await;
            crate::metrics::observe(
                "wal_append_many",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |outcomes| {
                let mut list = results.get().init_results(outcomes.len() as u32);
                for (i, o) in outcomes.iter().enumerate() {
                    let mut b = list.reborrow().get(i as u32);
                    match o {
                        Ok(offset) => b.set_offset(*offset),
                        Err(f) => write_failure(b.init_error(), f),
                    }
                }
            })
        }
    }

    fn wal_read(
        self: Rc<Self>,
        params: metad::WalReadParams,
        mut results: metad::WalReadResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let g = self.wal(p.get_partition())?.clone();
                let limit = p.get_limit();
                if limit == 0 || limit > WAL_READ_ENTRIES_MAX {
                    return Err(invalid(format!(
                        "limit must be 1..={WAL_READ_ENTRIES_MAX}, got {limit}"
                    )));
                }
                let max_bytes = p.get_max_bytes().clamp(1, WAL_READ_BYTES_MAX) as usize;
                let from = p.get_from();
                let unfinished_only = p.get_unfinished_only();
                self.read_gate(&g, ReadMode::Linearizable, 0).await?;
                Ok(g.sm.with(|d| {
                    let w = &d.wal;
                    let mut out = Vec::new();
                    let mut bytes = 0usize;
                    let mut next = from.max(w.truncated_before);
                    let mut cut = false;
                    for (o, rec) in w.entries.range(from..) {
                        if out.len() as u32 >= limit
                            || (!out.is_empty() && bytes + rec.data.len() > max_bytes)
                        {
                            cut = true;
                            break;
                        }
                        next = o + 1;
                        if unfinished_only && rec.finished {
                            continue;
                        }
                        bytes += rec.data.len();
                        out.push((*o, rec.clone()));
                    }
                    if !cut {
                        next = w.next_offset.max(from);
                    }
                    (out, next, w.truncated_before)
                }))
            }
            .await;
            crate::metrics::observe(
                "wal_read",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |(entries, next, truncated)| {
                let mut b = results.get();
                b.set_next(next);
                b.set_truncated_before(truncated);
                let mut l = b.init_entries(entries.len() as u32);
                for (i, (o, rec)) in entries.iter().enumerate() {
                    let mut e = l.reborrow().get(i as u32);
                    e.set_offset(*o);
                    e.set_gateway(&rec.gateway);
                    e.set_data(&rec.data);
                    e.set_is_intent(rec.is_intent);
                    e.set_finished(rec.finished);
                }
            })
        }
    }

    fn wal_finish(
        self: Rc<Self>,
        params: metad::WalFinishParams,
        mut results: metad::WalFinishResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let g = self.wal(p.get_partition())?.clone();
                let list = p.get_offsets()?;
                if list.len() as usize > WAL_FINISH_OFFSETS_MAX {
                    return Err(fail(
                        ErrorKind::TooLarge,
                        format!(
                            "{} offsets; at most {WAL_FINISH_OFFSETS_MAX} per call",
                            list.len()
                        ),
                    ));
                }
                let offsets: Vec<u64> = list.iter().collect();
                let rid = Self::rid(p.get_rid());
                match self.propose(&g, rid, Op::WalFinish { offsets }).await? {
                    CommandResult::WalFinished { truncated_before } => Ok(truncated_before),
                    other => Err(fail(
                        ErrorKind::Internal,
                        format!("unexpected result {other:?}"),
                    )),
                }
            }
            .await;
            crate::metrics::observe(
                "wal_finish",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |t| results.get().set_truncated_before(t))
        }
    }

    fn wal_claim(
        self: Rc<Self>,
        params: metad::WalClaimParams,
        mut results: metad::WalClaimResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let g = self.wal(p.get_partition())?.clone();
                let from = p.get_from_gateway()?.to_str()?.to_string();
                let to = p.get_to_gateway()?.to_str()?.to_string();
                check_node_field("fromGateway", &from, false)?;
                check_node_field("toGateway", &to, false)?;
                let rid = Self::rid(p.get_rid());
                match self.propose(&g, rid, Op::WalClaim { from, to }).await? {
                    CommandResult::WalClaimed { count } => Ok(count),
                    other => Err(fail(
                        ErrorKind::Internal,
                        format!("unexpected result {other:?}"),
                    )),
                }
            }
            .await;
            crate::metrics::observe(
                "wal_claim",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |n| results.get().set_claimed(n))
        }
    }

    fn wal_set_position(
        self: Rc<Self>,
        params: metad::WalSetPositionParams,
        mut results: metad::WalSetPositionResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let g = self.wal(p.get_partition())?.clone();
                let gateway = p.get_gateway()?.to_str()?.to_string();
                check_node_field("gateway", &gateway, false)?;
                let op = Op::WalSetPosition {
                    gateway,
                    offset: p.get_offset(),
                };
                self.propose(&g, RequestRef::default(), op)
                    .await
                    .map(|_| ())
            }
            .await;
            crate::metrics::observe(
                "wal_set_position",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |()| ())
        }
    }

    fn wal_status(
        self: Rc<Self>,
        params: metad::WalStatusParams,
        mut results: metad::WalStatusResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let g = self.wal(p.get_partition())?.clone();
                self.read_gate(&g, ReadMode::Linearizable, 0).await?;
                Ok::<_, Failure>(g.sm.with(|d| {
                    let w = &d.wal;
                    let unfinished = w.entries.values().filter(|r| !r.finished).count() as u64;
                    (
                        w.next_offset,
                        w.truncated_before,
                        unfinished,
                        w.unfinished_bytes,
                        w.positions.clone(),
                    )
                }))
            }
            .await;
            crate::metrics::observe(
                "wal_status",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            let parts = self.replica.wal_partitions;
            respond!(results, r, |(next, trunc, unf, unf_bytes, positions)| {
                let mut b = results.get();
                b.set_next_offset(next);
                b.set_truncated_before(trunc);
                b.set_unfinished(unf);
                b.set_unfinished_bytes(unf_bytes);
                b.set_partitions(parts);
                let mut l = b.init_positions(positions.len() as u32);
                for (i, (gw, off)) in positions.iter().enumerate() {
                    let mut e = l.reborrow().get(i as u32);
                    e.set_gateway(gw);
                    e.set_offset(*off);
                }
            })
        }
    }

    fn authenticate(
        self: Rc<Self>,
        params: metad::AuthenticateParams,
        mut results: metad::AuthenticateResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let text = |t: capnp::Result<capnp::text::Reader<'_>>| {
                    t.ok()
                        .and_then(|t| t.to_str().ok())
                        .map(str::to_string)
                        .unwrap_or_default()
                };
                let creds = tessera_auth::Credentials {
                    key_id: text(p.get_key_id()),
                    secret: text(p.get_secret()),
                };
                let rec = if tessera_auth::keys::check_key_id(&creds.key_id).is_ok() {
                    self.key_record(&creds.key_id).await?
                } else {
                    None
                };
                let refused = |why: &'static str| {
                    crate::metrics::auth_refused(why);
                    fail(
                        ErrorKind::Unauthenticated,
                        format!(
                            "access key {:?} was refused (unknown, wrong secret, revoked, or \
                             not admin); operator commands need an admin key",
                            creds.key_id.chars().take(32).collect::<String>()
                        ),
                    )
                };
                let grant = tessera_auth::keys::authenticate(&creds, rec.as_ref())
                    .map_err(|r| refused(r.name()))?;
                if !grant.permissions.admin {
                    return Err(refused("not_admin"));
                }
                self.session.grant(grant);
                Ok::<_, Failure>(())
            }
            .await;
            crate::metrics::observe(
                "authenticate",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind_name()),
            );
            respond!(results, r, |()| ())
        }
    }

    fn raft(
        self: Rc<Self>,
        params: metad::RaftParams,
        mut results: metad::RaftResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            let p = params.get()?;
            let out = self
                .handle_raft(p.get_group(), p.get_kind(), p.get_payload()?)
                .await?;
            results.get().set_payload(&out);
            Ok(())
        }
    }
}

/// Hands one raft message from a peer (`kind` and its bincode `payload`)
/// to `group`'s raft and returns the encoded answer; the error says what
/// was wrong with the message. Both transports land here: the framed one
/// ([`crate::raft_wire`]) and Cap'n Proto's `raft` method.
pub async fn dispatch_raft(
    replica: &Replica,
    group: u32,
    kind: u8,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    let g = replica.groups.get(group as usize).ok_or_else(|| {
        format!(
            "group {group} does not exist: this cluster has {} groups",
            replica.groups.len()
        )
    })?;
    match kind {
        KIND_APPEND => {
            let req: AppendEntriesRequest<TypeConfig> = decode(payload)?;
            let from_leader = req.vote.leader_id().voted_for();
            let r = g.raft.append_entries(req).await;
            if matches!(r, Ok(AppendEntriesResponse::Success)) && from_leader.is_some() {
                g.last_leader_contact.set(Some(std::time::Instant::now()));
            }
            Ok(encode(&r))
        }
        KIND_VOTE => {
            let req: VoteRequest<NodeId> = decode(payload)?;
            Ok(encode(&g.raft.vote(req).await))
        }
        KIND_SNAPSHOT => {
            let req: InstallSnapshotRequest<TypeConfig> = decode(payload)?;
            Ok(encode(&g.raft.install_snapshot(req).await))
        }
        k => Err(format!("unknown raft message kind {k}")),
    }
}
