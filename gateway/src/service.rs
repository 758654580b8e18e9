//! The Cap'n Proto `Gateway` interface over [`Objects`]: argument checks,
//! streaming (a put's bytes through a `PutSink`, a get's into the caller's
//! `ByteSink`) and the mapping of errors onto the wire.

use crate::error::Error;
use crate::limits::*;
use crate::meta::ObjectMeta;
use crate::objects::{Objects, Outcome, PutWriter};
use futures::lock::Mutex;
use std::rc::Rc;
use tessera_schema::gateway_capnp::{error as wire_error, gateway, object_info, put_sink};

pub struct GatewayService {
    objects: Rc<Objects>,
}

impl GatewayService {
    pub fn new(objects: Rc<Objects>) -> Self {
        GatewayService { objects }
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
            let data = p.get_data().map_err(|e| Error::Invalid(format!("data: {e}")))?;
            if data.len() > MESSAGE_DATA_MAX_BYTES {
                return Err(Error::TooLarge(format!(
                    "put carries at most {MESSAGE_DATA_MAX_BYTES} bytes; use putStream for larger objects"
                )));
            }
            let (meta, outcome) = self.objects.put(&key, data).await?;
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
            let w = self.objects.begin_put(&key, p.get_size()).await?;
            Ok((key, w))
        }
        .await;
        crate::metrics::observe("put_stream", started, r.as_ref().err());
        match r {
            Ok((key, w)) => {
                let sink: put_sink::Client = capnp_rpc::new_client(PutSinkImpl {
                    key,
                    writer: Mutex::new(Some(w)),
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
        let r = async {
            let key = text(p.get_key(), "key")?;
            let meta = self.objects.stat(&key).await?;
            blob_only(&key, &meta)?;
            let (off, len) = range(meta.size, p.get_offset(), p.get_length())?;
            if len > MESSAGE_DATA_MAX_BYTES as u64 {
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
            }
            Err(e) => write_error(results.get().init_error(), &e),
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
            let meta = self.objects.stat(&key).await?;
            blob_only(&key, &meta)?;
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
            let json = text(p.get_json(), "json")?;
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
}

impl put_sink::Server for PutSinkImpl {
    async fn write(self: Rc<Self>, params: put_sink::WriteParams) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let chunk = p.get_chunk()?;
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
        _: put_sink::FinishParams,
        mut results: put_sink::FinishResults,
    ) -> Result<(), capnp::Error> {
        let w = self.writer.lock().await.take();
        let r = match w {
            Some(w) => w.finish().await,
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
