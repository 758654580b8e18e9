//! The Cap'n Proto `Gateway` interface over [`Objects`]: argument checks,
//! streaming (a put's bytes through a `PutSink`, a get's into the caller's
//! `ByteSink`) and the mapping of errors onto the wire.

use crate::error::Error;
use crate::limits::*;
use crate::meta::ObjectMeta;
use crate::objects::{Objects, Outcome, PutIf, PutWriter};
use futures::lock::Mutex;
use std::rc::Rc;
use tessera_auth::{Permission, Session};
use tessera_schema::gateway_capnp::{error as wire_error, gateway, object_info, put_sink};

pub struct GatewayService {
    objects: Rc<Objects>,
    /// What this connection's peer proved (one service per connection).
    session: Rc<Session>,
    /// The bounds on what clients hold (shared by all connections).
    bounds: Rc<tessera_auth::Bounds>,
}

/// Holds `n` payload bytes for this connection while the value lives.
fn hold(
    session: &Rc<Session>,
    bounds: &tessera_auth::Bounds,
    n: usize,
) -> Result<tessera_auth::gate::Held, Error> {
    session.hold_bytes(bounds, n as u64).map_err(|m| {
        crate::auth::refused("overloaded");
        Error::Unavailable(m)
    })
}

impl GatewayService {
    pub fn new(
        objects: Rc<Objects>,
        session: Rc<Session>,
        bounds: Rc<tessera_auth::Bounds>,
    ) -> Self {
        GatewayService {
            objects,
            session,
            bounds,
        }
    }

    /// The service of one connection behind its call gate
    /// ([`crate::auth::policy`]).
    pub fn gated(
        objects: Rc<Objects>,
        session: Rc<Session>,
        bounds: Rc<tessera_auth::Bounds>,
    ) -> gateway::Client {
        let policy = crate::auth::policy(session.clone(), objects.bridge.clone());
        tessera_auth::gated::<gateway::Client, _>(
            GatewayService::new(objects, session.clone(), bounds.clone()),
            session,
            crate::auth::NAMES,
            Some(bounds),
            policy,
        )
    }

    /// May this connection do `need` to object `key` (permission and the
    /// key's prefix)?
    fn allow(&self, need: Permission, key: &str) -> Result<(), Error> {
        let Some(g) = self.session.effective() else {
            crate::auth::refused("unauthenticated");
            return Err(Error::Unauthenticated(
                "unauthenticated: call authenticate with an access key first".into(),
            ));
        };
        g.check(need, key).map_err(|m| {
            crate::auth::refused("permission");
            Error::PermissionDenied(m)
        })
    }

    /// The prefix a list may cover for this connection's key.
    fn list_prefix(&self, asked: &str) -> Result<String, Error> {
        let Some(g) = self.session.effective() else {
            return Err(Error::Unauthenticated(
                "unauthenticated: call authenticate with an access key first".into(),
            ));
        };
        g.list_prefix(asked).map_err(|m| {
            crate::auth::refused("permission");
            Error::PermissionDenied(m)
        })
    }
}

fn write_error(mut w: wire_error::Builder<'_>, e: &Error) {
    use wire_error::Kind as K;
    let kind = match e {
        Error::NotFound(_) => K::NotFound,
        Error::Invalid(_) => K::InvalidArgument,
        Error::TooLarge(_) => K::TooLarge,
        Error::Unavailable(_) => K::Unavailable,
        Error::Conflict(_) => K::Conflict,
        Error::InsufficientNodes(_) => K::InsufficientNodes,
        Error::DataLoss(_) => K::DataLoss,
        Error::Internal(_) => K::Internal,
        Error::Unauthenticated(_) => K::Unauthenticated,
        Error::PermissionDenied(_) => K::PermissionDenied,
        Error::PreconditionFailed(_) => K::PreconditionFailed,
    };
    w.set_kind(kind);
    w.set_message(e.to_string());
}

fn fill_info(mut w: object_info::Builder<'_>, key: &str, m: &ObjectMeta) {
    w.set_key(key);
    w.set_size(m.size);
    w.set_version_id(&m.version_id);
    w.set_created_unix_millis(m.created_unix_millis);
    w.set_layout(m.layout_name());
    w.set_dirty(m.dirty);
    w.set_stripes(m.stripes());
    w.set_attrs(&m.attrs);
}

/// Refuses to read `meta` when the caller pinned another version.
fn check_version(key: &str, meta: &ObjectMeta, want: &[u8]) -> Result<(), Error> {
    if !want.is_empty() && want != meta.version_id.as_slice() {
        return Err(Error::Conflict(format!(
            "{key} was replaced by a newer version while it was being read; read it again"
        )));
    }
    Ok(())
}

/// A put's precondition from its `ifAbsent` and `ifVersion` fields.
fn put_if(if_absent: bool, if_version: capnp::Result<&[u8]>) -> Result<PutIf, Error> {
    let v = if_version.map_err(|e| Error::Invalid(format!("ifVersion: {e}")))?;
    match (if_absent, v.is_empty()) {
        (false, true) => Ok(PutIf::Always),
        (true, true) => Ok(PutIf::Absent),
        (false, false) if v.len() <= VERSION_ID_MAX_BYTES => Ok(PutIf::Version(v.to_vec())),
        (false, false) => Err(Error::Invalid(format!(
            "ifVersion is {} bytes; a version id is at most {VERSION_ID_MAX_BYTES}",
            v.len()
        ))),
        (true, false) => Err(Error::Invalid(
            "ifAbsent and ifVersion exclude each other: an absent object has no version".into(),
        )),
    }
}

fn text(r: capnp::Result<capnp::text::Reader<'_>>, what: &str) -> Result<String, Error> {
    r.map_err(|e| Error::Invalid(format!("{what}: {e}")))?
        .to_str()
        .map(str::to_string)
        .map_err(|_| Error::Invalid(format!("{what} is not valid UTF-8")))
}

/// A document's bytes are its parts, not a blob: `get` refuses them.
fn blob_only(key: &str, meta: &ObjectMeta) -> Result<(), Error> {
    if meta.doc.is_some() {
        return Err(Error::Invalid(format!(
            "{key:?} holds a JSON document: read it with getDoc (`tessera doc get`)"
        )));
    }
    Ok(())
}

fn wire_outcome(o: Outcome) -> tessera_schema::gateway_capnp::Outcome {
    match o {
        Outcome::Ok => tessera_schema::gateway_capnp::Outcome::Ok,
        Outcome::Accepted => tessera_schema::gateway_capnp::Outcome::Accepted,
    }
}

/// The byte range `[offset, offset + length)` of an object of `size` bytes
/// (length 0 = to the end); an offset past the end is an error.
fn range(size: u64, offset: u64, length: u64) -> Result<(u64, u64), Error> {
    if offset > size {
        return Err(Error::Invalid(format!(
            "offset {offset} is past the end of this {size}-byte object"
        )));
    }
    let len = if length == 0 {
        size - offset
    } else {
        length.min(size - offset)
    };
    Ok((offset, len))
}

impl gateway::Server for GatewayService {
    async fn put(
        self: Rc<Self>,
        params: gateway::PutParams,
        mut results: gateway::PutResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let started = std::time::Instant::now();
        let r = async {
            let key = text(p.get_key(), "key")?;
            self.allow(Permission::Write, &key)?;
            let data = p.get_data().map_err(|e| Error::Invalid(format!("data: {e}")))?;
            let _held = hold(&self.session, &self.bounds, data.len())?;
            crate::metrics::bytes("in", data.len() as u64);
            if data.len() > MESSAGE_DATA_MAX_BYTES {
                return Err(Error::TooLarge(format!(
                    "put carries at most {MESSAGE_DATA_MAX_BYTES} bytes; use putStream for larger objects"
                )));
            }
            let attrs = p
                .get_attrs()
                .map_err(|e| Error::Invalid(format!("attrs: {e}")))?
                .to_vec();
            let cond = put_if(p.get_if_absent(), p.get_if_version())?;
            let (meta, outcome) = self.objects.put_if(&key, data, attrs, cond).await?;
            Ok((key, meta, outcome))
        }
        .await;
        crate::metrics::observe("put", started, r.as_ref().err());
        match r {
            Ok((key, meta, outcome)) => {
                let mut b = results.get();
                fill_info(b.reborrow().init_info(), &key, &meta);
                b.set_outcome(wire_outcome(outcome));
            }
            Err(e) => write_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn put_stream(
        self: Rc<Self>,
        params: gateway::PutStreamParams,
        mut results: gateway::PutStreamResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let started = std::time::Instant::now();
        let r = async {
            let key = text(p.get_key(), "key")?;
            self.allow(Permission::Write, &key)?;
            let cond = put_if(p.get_if_absent(), p.get_if_version())?;
            let w = self.objects.begin_put_if(&key, p.get_size(), cond).await?;
            Ok((key, w))
        }
        .await;
        crate::metrics::observe("put_stream", started, r.as_ref().err());
        match r {
            Ok((key, w)) => {
                let sink: put_sink::Client = capnp_rpc::new_client(PutSinkImpl {
                    key,
                    writer: Mutex::new(Some(w)),
                    session: self.session.clone(),
                    bounds: self.bounds.clone(),
                });
                results.get().set_sink(sink);
            }
            Err(e) => write_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn get(
        self: Rc<Self>,
        params: gateway::GetParams,
        mut results: gateway::GetResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let started = std::time::Instant::now();
        // The record a `tooLarge` answer describes too: the client then
        // knows how much the stream it falls back on will bring.
        let too_large = std::cell::RefCell::new(None);
        let r = async {
            let key = text(p.get_key(), "key")?;
            self.allow(Permission::Read, &key)?;
            let meta = self.objects.stat(&key).await?;
            blob_only(&key, &meta)?;
            check_version(&key, &meta, p.get_if_version().unwrap_or_default())?;
            let (off, len) = range(meta.size, p.get_offset(), p.get_length())?;
            if len > MESSAGE_DATA_MAX_BYTES as u64 {
                *too_large.borrow_mut() = Some((key.clone(), meta));
                return Err(Error::TooLarge(format!(
                    "get returns at most {MESSAGE_DATA_MAX_BYTES} bytes and this range is {len}; \
                     use getStream or a smaller range"
                )));
            }
            // The pieces as the shards arrived; copied once, into the answer.
            let pieces = std::cell::RefCell::new(Vec::new());
            self.objects
                .read(&meta, off, len, |piece| {
                    pieces.borrow_mut().push(piece);
                    async { Ok(()) }
                })
                .await?;
            Ok((key, meta, len, pieces.into_inner()))
        }
        .await;
        crate::metrics::observe("get", started, r.as_ref().err());
        match r {
            Ok((key, meta, len, pieces)) => {
                let mut b = results.get();
                fill_info(b.reborrow().init_info(), &key, &meta);
                let data = b.init_data(len as u32);
                let mut at = 0;
                for p in &pieces {
                    for sl in p.slices() {
                        data[at..at + sl.len()].copy_from_slice(sl);
                        at += sl.len();
                    }
                }
                debug_assert_eq!(at as u64, len, "read() delivers exactly the range");
                crate::metrics::bytes("out", len);
            }
            Err(e) => {
                let mut b = results.get();
                if let Some((key, meta)) = too_large.borrow().as_ref() {
                    fill_info(b.reborrow().init_info(), key, meta);
                }
                write_error(b.init_error(), &e)
            }
        }
        Ok(())
    }

    async fn get_stream(
        self: Rc<Self>,
        params: gateway::GetStreamParams,
        mut results: gateway::GetStreamResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let sink = p.get_sink()?;
        let chunk = match p.get_chunk_bytes() {
            0 => STREAM_CHUNK_DEFAULT_BYTES,
            n => n.min(STREAM_CHUNK_MAX_BYTES),
        } as usize;
        let started = std::time::Instant::now();
        let r = async {
            let key = text(p.get_key(), "key")?;
            self.allow(Permission::Read, &key)?;
            let meta = self.objects.stat(&key).await?;
            blob_only(&key, &meta)?;
            check_version(&key, &meta, p.get_if_version().unwrap_or_default())?;
            let (off, len) = range(meta.size, p.get_offset(), p.get_length())?;
            let sent = std::cell::Cell::new(0u64);
            self.objects
                .read(&meta, off, len, |piece| {
                    let sink = sink.clone();
                    let sent = &sent;
                    async move {
                        for sl in piece.slices() {
                            for c in sl.chunks(chunk) {
                                let mut req = sink.write_request();
                                req.get().set_chunk(c);
                                req.send().await.map_err(|e| {
                                    Error::Unavailable(format!("the reader went away: {e}"))
                                })?;
                                sent.set(sent.get() + c.len() as u64);
                            }
                        }
                        Ok(())
                    }
                })
                .await?;
            sink.done_request()
                .send()
                .promise
                .await
                .map_err(|e| Error::Unavailable(format!("the reader went away: {e}")))?;
            Ok((key, meta, sent.get()))
        }
        .await;
        crate::metrics::observe("get_stream", started, r.as_ref().err());
        match r {
            Ok((key, meta, sent)) => {
                let mut b = results.get();
                fill_info(b.reborrow().init_info(), &key, &meta);
                b.set_sent(sent);
                crate::metrics::bytes("out", sent);
            }
            Err(e) => write_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn stat(
        self: Rc<Self>,
        params: gateway::StatParams,
        mut results: gateway::StatResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let started = std::time::Instant::now();
        let r = async {
            let key = text(p.get_key(), "key")?;
            self.allow(Permission::Read, &key)?;
            let meta = self.objects.stat(&key).await?;
            Ok((key, meta))
        }
        .await;
        crate::metrics::observe("stat", started, r.as_ref().err());
        match r {
            Ok((key, meta)) => fill_info(results.get().init_info(), &key, &meta),
            Err(e) => write_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn delete(
        self: Rc<Self>,
        params: gateway::DeleteParams,
        mut results: gateway::DeleteResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let started = std::time::Instant::now();
        let r = async {
            let key = text(p.get_key(), "key")?;
            self.allow(Permission::Write, &key)?;
            self.objects.delete(&key).await
        }
        .await;
        crate::metrics::observe("delete", started, r.as_ref().err());
        match r {
            Ok(existed) => results.get().set_existed(existed),
            Err(e) => write_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn list(
        self: Rc<Self>,
        params: gateway::ListParams,
        mut results: gateway::ListResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let started = std::time::Instant::now();
        let r = async {
            let prefix = text(p.get_prefix(), "prefix")?;
            let prefix = self.list_prefix(&prefix)?;
            let after = text(p.get_start_after(), "startAfter")?;
            self.objects.list(&prefix, &after, p.get_limit()).await
        }
        .await;
        crate::metrics::observe("list", started, r.as_ref().err());
        match r {
            Ok((items, more)) => {
                let mut b = results.get();
                b.set_more(more);
                let mut l = b.init_items(items.len() as u32);
                for (i, (k, m)) in items.iter().enumerate() {
                    fill_info(l.reborrow().get(i as u32), k, m);
                }
            }
            Err(e) => write_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn put_doc(
        self: Rc<Self>,
        params: gateway::PutDocParams,
        mut results: gateway::PutDocResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let started = std::time::Instant::now();
        let r = async {
            let key = text(p.get_key(), "key")?;
            self.allow(Permission::Write, &key)?;
            let json = text(p.get_json(), "json")?;
            let _held = hold(&self.session, &self.bounds, json.len())?;
            let mut hot = Vec::new();
            for h in p
                .get_hot()
                .map_err(|e| Error::Invalid(format!("hot: {e}")))?
                .iter()
            {
                hot.push(text(h, "a hot field name")?);
            }
            let (meta, outcome, skipped) = self.objects.put_doc(&key, &json, &hot).await?;
            Ok((key, meta, outcome, skipped))
        }
        .await;
        crate::metrics::observe("put_doc", started, r.as_ref().err());
        match r {
            Ok((key, meta, outcome, skipped)) => {
                let mut b = results.get();
                fill_info(b.reborrow().init_info(), &key, &meta);
                b.set_outcome(wire_outcome(outcome));
                b.set_cold_skipped(skipped);
            }
            Err(e) => write_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn get_doc(
        self: Rc<Self>,
        params: gateway::GetDocParams,
        mut results: gateway::GetDocResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let started = std::time::Instant::now();
        let r = async {
            let key = text(p.get_key(), "key")?;
            self.allow(Permission::Read, &key)?;
            let (meta, json) = self.objects.get_doc(&key).await?;
            Ok((key, meta, json))
        }
        .await;
        crate::metrics::observe("get_doc", started, r.as_ref().err());
        match r {
            Ok((key, meta, json)) => {
                let mut b = results.get();
                fill_info(b.reborrow().init_info(), &key, &meta);
                b.set_json(&json);
            }
            Err(e) => write_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn authenticate(
        self: Rc<Self>,
        params: gateway::AuthenticateParams,
        mut results: gateway::AuthenticateResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let started = std::time::Instant::now();
        let r = async {
            let creds = tessera_auth::Credentials {
                key_id: text(p.get_key_id(), "keyId")?,
                secret: text(p.get_secret(), "secret")?,
            };
            crate::auth::authenticate(&self.objects.bridge, &self.session, &creds).await
        }
        .await;
        crate::metrics::observe("authenticate", started, r.as_ref().err());
        match r {
            Ok(g) => {
                let mut b = results.get();
                b.set_permissions(g.permissions.to_string());
                b.set_prefix(&g.prefix);
            }
            Err(e) => write_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn create_key(
        self: Rc<Self>,
        params: gateway::CreateKeyParams,
        mut results: gateway::CreateKeyResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let started = std::time::Instant::now();
        let r = async {
            self.allow(Permission::Admin, "")?;
            let name = text(p.get_name(), "name")?;
            let perms = text(p.get_permissions(), "permissions")?;
            let prefix = text(p.get_prefix(), "prefix")?;
            crate::auth::create(
                &self.objects.bridge,
                &name,
                &perms,
                &prefix,
                self.objects.cfg.seal_key.as_deref(),
            )
            .await
        }
        .await;
        crate::metrics::observe("create_key", started, r.as_ref().err());
        match r {
            Ok((rec, creds)) => {
                tracing::info!(key_id = %rec.id, permissions = %rec.permissions, prefix = %rec.prefix, "access key created");
                let mut b = results.get();
                b.set_key_id(&creds.key_id);
                b.set_secret(&creds.secret);
            }
            Err(e) => write_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn list_keys(
        self: Rc<Self>,
        _: gateway::ListKeysParams,
        mut results: gateway::ListKeysResults,
    ) -> Result<(), capnp::Error> {
        let started = std::time::Instant::now();
        let r = async {
            self.allow(Permission::Admin, "")?;
            crate::auth::list(&self.objects.bridge).await
        }
        .await;
        crate::metrics::observe("list_keys", started, r.as_ref().err());
        match r {
            Ok(keys) => {
                let mut l = results.get().init_keys(keys.len() as u32);
                for (i, k) in keys.iter().enumerate() {
                    let mut w = l.reborrow().get(i as u32);
                    w.set_key_id(&k.id);
                    w.set_name(&k.name);
                    w.set_permissions(k.permissions.to_string());
                    w.set_prefix(&k.prefix);
                    w.set_created_unix_millis(k.created_unix_millis);
                    w.set_revoked(k.revoked_unix_millis.is_some());
                    if let Some(s) = &k.sealed_secret {
                        w.set_sealed_secret(s);
                    }
                }
            }
            Err(e) => write_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn revoke_key(
        self: Rc<Self>,
        params: gateway::RevokeKeyParams,
        mut results: gateway::RevokeKeyResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let started = std::time::Instant::now();
        let r = async {
            self.allow(Permission::Admin, "")?;
            let id = text(p.get_key_id(), "keyId")?;
            let existed = crate::auth::revoke(&self.objects.bridge, &id).await?;
            if existed {
                tracing::info!(key_id = %id, "access key revoked");
            }
            Ok(existed)
        }
        .await;
        crate::metrics::observe("revoke_key", started, r.as_ref().err());
        match r {
            Ok(existed) => results.get().set_existed(existed),
            Err(e) => write_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn scrub(
        self: Rc<Self>,
        params: gateway::ScrubParams,
        mut results: gateway::ScrubResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let started = std::time::Instant::now();
        let r = async {
            self.allow(Permission::Admin, "")?;
            let node = text(p.get_node(), "node")?;
            let (start, rate) = (p.get_start(), p.get_bytes_per_sec());
            let o = &self.objects;
            o.nodes.refresh().await?;
            let chosen: Vec<_> = o
                .nodes
                .all()
                .into_iter()
                .filter(|n| n.live && (node.is_empty() || node == n.node_id || node == n.addr))
                .collect();
            if chosen.is_empty() {
                return Err(if node.is_empty() {
                    Error::Unavailable("no chunk server is live".into())
                } else {
                    Error::NotFound(format!(
                        "no live chunk server has the id or address {node:?}; `tessera status` lists them"
                    ))
                });
            }
            let mut out = Vec::with_capacity(chosen.len());
            for n in chosen {
                let asked = async {
                    let c = o.nodes.client(&n.node_id).await?;
                    let started = if start {
                        c.start_scrub(rate)
                            .await
                            .map_err(|e| Error::Unavailable(e.to_string()))?
                    } else {
                        false
                    };
                    let s = c
                        .scrub_status()
                        .await
                        .map_err(|e| Error::Unavailable(e.to_string()))?;
                    Ok::<_, Error>((s, started))
                }
                .await;
                out.push((n, asked));
            }
            Ok(out)
        }
        .await;
        crate::metrics::observe("scrub", started, r.as_ref().err());
        match r {
            Ok(nodes) => {
                let mut l = results.get().init_nodes(nodes.len() as u32);
                for (i, (n, asked)) in nodes.iter().enumerate() {
                    let mut w = l.reborrow().get(i as u32);
                    w.set_node_id(&n.node_id);
                    w.set_addr(&n.addr);
                    match asked {
                        Ok((s, started)) => {
                            w.set_passes(s.passes);
                            w.set_running(s.running);
                            w.set_bytes_verified(s.bytes_verified);
                            w.set_bytes_total(s.bytes_total);
                            w.set_bad_found(s.bad_found);
                            w.set_started(*started);
                        }
                        Err(e) => w.set_error(e.to_string()),
                    }
                }
            }
            Err(e) => write_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn status(
        self: Rc<Self>,
        _: gateway::StatusParams,
        mut results: gateway::StatusResults,
    ) -> Result<(), capnp::Error> {
        let o = &self.objects;
        if let Err(e) = o.nodes.refresh().await {
            write_error(results.get().init_error(), &e);
            return Ok(());
        }
        let nodes = o.nodes.all();
        let mut s = results.get().init_status();
        s.set_gateway_id(&o.cfg.gateway_id);
        s.set_version(env!("CARGO_PKG_VERSION"));
        s.set_uptime_secs(o.started.elapsed().as_secs());
        s.set_puts_ok(o.stats.puts_ok.get());
        s.set_puts_accepted(o.stats.puts_accepted.get());
        s.set_gets_degraded(o.stats.gets_degraded.get());
        s.set_checksum_failures(o.stats.checksum_failures.get());
        s.set_wal_replayed(o.stats.wal_replayed.get());
        s.set_docs_cold_reused(o.stats.docs_cold_reused.get());
        s.set_reads_hedged(o.stats.reads_hedged.get());
        let c = o.cache.stats();
        s.set_cache_hits(c.hits);
        s.set_cache_misses(c.misses);
        s.set_cache_bytes(c.bytes);
        s.set_cache_capacity_bytes(c.capacity_bytes);
        s.set_cache_evicted(c.evicted);
        s.set_cache_rejected(c.rejected);
        s.set_default_layout(format!(
            "rs {}+{} ({}-byte shards, {}) above {} bytes, replicated x{REPLICAS} up to it",
            o.cfg.k,
            o.cfg.m,
            o.cfg.shard_bytes,
            o.cfg.codec.name(),
            o.cfg.inline_max
        ));
        let mut l = s.init_nodes(nodes.len() as u32);
        for (i, n) in nodes.iter().enumerate() {
            let mut w = l.reborrow().get(i as u32);
            w.set_node_id(&n.node_id);
            w.set_addr(&n.addr);
            w.set_live(n.live);
            w.set_capacity_bytes(n.capacity);
            w.set_used_bytes(n.used);
            w.set_zone(&n.zone);
            w.set_last_heartbeat_ago_millis(n.last_heartbeat_ago_ms);
        }
        Ok(())
    }
}

/// The receiving end of a streamed put. Writes are applied in arrival
/// order under a lock (Cap'n Proto may run a stream's calls concurrently).
struct PutSinkImpl {
    key: String,
    writer: Mutex<Option<PutWriter>>,
    /// The connection's session and bounds: chunks waiting for the writer
    /// hold their bytes, so a client that floods writes is refused.
    session: Rc<Session>,
    bounds: Rc<tessera_auth::Bounds>,
}

impl put_sink::Server for PutSinkImpl {
    async fn write(self: Rc<Self>, params: put_sink::WriteParams) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let chunk = p.get_chunk()?;
        let _held = hold(&self.session, &self.bounds, chunk.len())
            .map_err(|e| capnp::Error::overloaded(e.to_string()))?;
        crate::metrics::bytes("in", chunk.len() as u64);
        let mut g = self.writer.lock().await;
        let w = g
            .as_mut()
            .ok_or_else(|| capnp::Error::failed("this put has already finished".into()))?;
        if let Err(e) = w.write(chunk).await {
            // The put is dead; finish reports it.
            *g = None;
            return Err(capnp::Error::failed(e.to_string()));
        }
        Ok(())
    }

    async fn finish(
        self: Rc<Self>,
        params: put_sink::FinishParams,
        mut results: put_sink::FinishResults,
    ) -> Result<(), capnp::Error> {
        let attrs = params.get()?.get_attrs().unwrap_or_default().to_vec();
        let w = self.writer.lock().await.take();
        let r = match w {
            Some(mut w) => match w.set_attrs(attrs) {
                Ok(()) => w.finish().await,
                Err(e) => Err(e),
            },
            None => Err(Error::Invalid(
                "this put failed or finished earlier; start a new one".into(),
            )),
        };
        match r {
            Ok((meta, outcome)) => {
                let mut b = results.get();
                fill_info(b.reborrow().init_info(), &self.key, &meta);
                b.set_outcome(wire_outcome(outcome));
            }
            Err(e) => write_error(results.get().init_error(), &e),
        }
        Ok(())
    }
}
