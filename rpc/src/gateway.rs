//! The client library of Tessera's object API: [`GatewayClient`].
//!
//! ```no_run
//! # async fn demo() -> tessera_rpc::Result<()> {
//! use tessera_rpc::GatewayClient;
//! let gw = GatewayClient::connect("127.0.0.1:7300".parse().unwrap()).await?;
//! let (info, outcome) = gw.put("photos/cat.jpg", b"...bytes...").await?;
//! println!("stored {} bytes as {} ({outcome:?})", info.size, info.layout);
//! let bytes = gw.get("photos/cat.jpg").await?;
//! assert_eq!(bytes, b"...bytes...");
//! for o in gw.list("photos/", "", 100).await?.0 {
//!     println!("{} {}", o.key, o.size);
//! }
//! gw.delete("photos/cat.jpg").await?;
//! # Ok(()) }
//! ```
//!
//! A secured cluster (the default) needs TLS and an access key:
//! [`GatewayClient::connect_with`] with [`ConnectOptions`] (the cluster CA
//! and the key's id and secret); every new connection authenticates before
//! its first call. [`GatewayClient::connect`] is for `--insecure` clusters.
//!
//! Runs on a glommio executor (see `examples/objects.rs` in this crate).
//! Objects of any size stream in both directions: [`GatewayClient::put_reader`]
//! sends from any `AsyncRead` with bounded memory, [`GatewayClient::get_to`]
//! writes into any `AsyncWrite`. Reads, stats, lists and deletes are retried
//! once on a fresh connection when the connection broke; puts are not (a
//! retried put would store a second version).

use crate::error::{Error, GatewayErrorKind, Result};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tessera_schema::gateway_capnp::{
    byte_sink, error as wire_error, gateway, object_info, put_sink, Outcome,
};

/// Most bytes one `put` message carries; larger objects stream.
pub const PUT_MESSAGE_MAX_BYTES: usize = 4 << 20;
/// Bytes per streamed chunk.
pub const STREAM_CHUNK_BYTES: usize = 1 << 20;
/// Most bytes `get_range` reserves up front for a streamed object (from the
/// size the gateway states); above it the buffer grows as bytes arrive.
/// Bounded because the size comes from the network.
pub const GET_RESERVE_MAX_BYTES: u64 = 1 << 30;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub use tessera_auth::Credentials;

/// How to reach a gateway: TLS (checking its certificate against the
/// cluster CA) and the access key to authenticate with. The default is
/// plaintext with no key (an `--insecure` cluster).
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub tls: Option<tessera_tls::Connector>,
    pub credentials: Option<Credentials>,
    /// The Unix socket of a gateway on this machine (its `--local-socket`):
    /// when set, connections go there instead, in plaintext (the socket
    /// file's permissions admit only its owner), and still authenticate
    /// with `credentials`. Saves the TLS work of a co-located client.
    pub local_socket: Option<std::path::PathBuf>,
}

/// An access key as `listKeys` describes it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub key_id: String,
    pub name: String,
    pub permissions: String,
    pub prefix: String,
    pub created_unix_millis: u64,
    pub revoked: bool,
    /// The secret sealed with the cluster's seal key ("" = no S3 access);
    /// only the S3 front, which holds the seal key, can open it.
    pub sealed_secret: String,
}

/// One chunk server's scrub progress as the gateway reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeScrub {
    pub node_id: String,
    pub addr: String,
    pub passes: u64,
    pub running: bool,
    pub bytes_verified: u64,
    pub bytes_total: u64,
    pub bad_found: u64,
    pub started: bool,
    /// Non-empty when the gateway could not ask the node.
    pub error: String,
}

/// A write's precondition ([`GatewayClient::put_if`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PutIf {
    /// Replace whatever is there.
    #[default]
    Always,
    /// Only when no object is under the key.
    Absent,
    /// Only when the object's version id ([`ObjectInfo::version_id`]) is
    /// this one.
    Version(Vec<u8>),
}

impl PutIf {
    fn set(&self, p: &mut gateway::put_params::Builder<'_>) {
        match self {
            PutIf::Always => {}
            PutIf::Absent => p.set_if_absent(true),
            PutIf::Version(v) => p.set_if_version(v),
        }
    }

    fn set_stream(&self, p: &mut gateway::put_stream_params::Builder<'_>) {
        match self {
            PutIf::Always => {}
            PutIf::Absent => p.set_if_absent(true),
            PutIf::Version(v) => p.set_if_version(v),
        }
    }
}

/// An object as the gateway describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub version_id: Vec<u8>,
    pub created_unix_millis: u64,
    /// "replicated x3" or "rs 4+2 (1048576-byte shards)".
    pub layout: String,
    /// Not yet at full redundancy (the healer completes it).
    pub dirty: bool,
    pub stripes: u32,
    /// The application's attributes given to put (opaque, ≤ 8 KiB).
    pub attrs: Vec<u8>,
}

/// How a put ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Every shard or replica landed.
    Ok,
    /// Durable with reduced redundancy; the healer completes it.
    Accepted,
}

/// A chunk server as the gateway's registry view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: String,
    pub addr: String,
    pub live: bool,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub zone: String,
    pub last_heartbeat_ago_millis: u64,
}

/// What `status` reports.
#[derive(Debug, Clone)]
pub struct GatewayStatus {
    pub gateway_id: String,
    pub version: String,
    pub uptime_secs: u64,
    pub nodes: Vec<NodeStatus>,
    pub puts_ok: u64,
    pub puts_accepted: u64,
    pub gets_degraded: u64,
    pub checksum_failures: u64,
    pub wal_replayed: u64,
    pub default_layout: String,
    /// Document updates that skipped an unchanged cold part.
    pub docs_cold_reused: u64,
    /// Stripe reads that asked one more shard after the p95 latency.
    pub reads_hedged: u64,
    /// Stripes (or replicated objects) served from the read cache, and
    /// those looked for and not found there.
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Bytes the read cache holds, and may hold (0: off).
    pub cache_bytes: u64,
    pub cache_capacity_bytes: u64,
    /// Entries evicted from the cache's main part, and new entries its
    /// admission filter dropped (used less often than the entry they
    /// would have evicted). 0 from a gateway older than these counters.
    pub cache_evicted: u64,
    pub cache_rejected: u64,
}

pub struct GatewayClient {
    addr: SocketAddr,
    opts: ConnectOptions,
    conn: RefCell<Option<gateway::Client>>,
}

fn info(r: object_info::Reader<'_>) -> capnp::Result<ObjectInfo> {
    Ok(ObjectInfo {
        key: r.get_key()?.to_string().unwrap_or_default(),
        size: r.get_size(),
        version_id: r.get_version_id()?.to_vec(),
        created_unix_millis: r.get_created_unix_millis(),
        layout: r.get_layout()?.to_string().unwrap_or_default(),
        dirty: r.get_dirty(),
        stripes: r.get_stripes(),
        attrs: r.get_attrs()?.to_vec(),
    })
}

/// A text field, or "" if absent or not UTF-8 (descriptive fields only).
fn text_or_empty(x: capnp::Result<capnp::text::Reader<'_>>) -> String {
    x.ok().and_then(|t| t.to_string().ok()).unwrap_or_default()
}

/// A `getStream` call of bytes `[offset, offset + len)` into `sink`.
fn get_stream_request(
    c: &gateway::Client,
    key: &str,
    offset: u64,
    len: u64,
    sink: byte_sink::Client,
    if_version: &[u8],
) -> capnp::capability::Request<gateway::get_stream_params::Owned, gateway::get_stream_results::Owned>
{
    let mut req = c.get_stream_request();
    let mut p = req.get();
    p.set_key(key);
    p.set_offset(offset);
    p.set_length(len);
    p.set_sink(sink);
    p.set_chunk_bytes(STREAM_CHUNK_BYTES as u32);
    p.set_if_version(if_version);
    req
}

fn outcome(o: std::result::Result<Outcome, capnp::NotInSchema>) -> PutOutcome {
    match o {
        Ok(Outcome::Ok) => PutOutcome::Ok,
        _ => PutOutcome::Accepted,
    }
}

impl GatewayClient {
    /// Connects to the gateway of an `--insecure` cluster at `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        Self::connect_with(addr, ConnectOptions::default()).await
    }

    /// Connects to the gateway at `addr` with TLS and an access key as
    /// `opts` says; a refused key fails here.
    pub async fn connect_with(addr: SocketAddr, opts: ConnectOptions) -> Result<Self> {
        let c = GatewayClient {
            addr,
            opts,
            conn: RefCell::new(None),
        };
        c.client().await?;
        Ok(c)
    }

    async fn client(&self) -> Result<gateway::Client> {
        if let Some(c) = self.conn.borrow().as_ref() {
            return Ok(c.clone());
        }
        let s = match &self.opts.local_socket {
            Some(path) => crate::conn::connect_unix(path, CONNECT_TIMEOUT).await,
            None => crate::conn::connect(self.addr, CONNECT_TIMEOUT, self.opts.tls.as_ref()).await,
        }
        .map_err(|source| Error::Connect {
            addr: self.addr,
            source,
        })?;
        let c: gateway::Client = crate::conn::client_side(s);
        if let Some(creds) = &self.opts.credentials {
            self.authenticate(&c, creds).await?;
        }
        *self.conn.borrow_mut() = Some(c.clone());
        Ok(c)
    }

    /// Proves `creds` on a new connection.
    async fn authenticate(&self, c: &gateway::Client, creds: &Credentials) -> Result<()> {
        let mut req = c.authenticate_request();
        req.get().set_key_id(&creds.key_id);
        req.get().set_secret(&creds.secret);
        let resp = req.send().promise.await.map_err(self.transport())?;
        let r = resp.get().map_err(self.transport())?;
        if r.has_error() {
            return Err(self.remote(r.get_error().map_err(self.transport())?));
        }
        Ok(())
    }

    /// Makes an access key (admin); the secret is in this answer only.
    pub async fn create_key(
        &self,
        name: &str,
        permissions: &str,
        prefix: &str,
    ) -> Result<Credentials> {
        let c = self.client().await?;
        let mut req = c.create_key_request();
        req.get().set_name(name);
        req.get().set_permissions(permissions);
        req.get().set_prefix(prefix);
        let resp = req.send().promise.await.map_err(self.transport())?;
        let r = resp.get().map_err(self.transport())?;
        if r.has_error() {
            return Err(self.remote(r.get_error().map_err(self.transport())?));
        }
        let t = text_or_empty;
        Ok(Credentials {
            key_id: t(r.get_key_id()),
            secret: t(r.get_secret()),
        })
    }

    /// Every access key (admin).
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        self.idempotent(|c| async move {
            let resp = c
                .list_keys_request()
                .send()
                .promise
                .await
                .map_err(self.transport())?;
            let r = resp.get().map_err(self.transport())?;
            if r.has_error() {
                return Err(self.remote(r.get_error().map_err(self.transport())?));
            }
            let t = text_or_empty;
            let mut out = Vec::new();
            for k in r.get_keys().map_err(self.transport())?.iter() {
                out.push(KeyInfo {
                    key_id: t(k.get_key_id()),
                    name: t(k.get_name()),
                    permissions: t(k.get_permissions()),
                    prefix: t(k.get_prefix()),
                    created_unix_millis: k.get_created_unix_millis(),
                    revoked: k.get_revoked(),
                    sealed_secret: t(k.get_sealed_secret()),
                });
            }
            Ok(out)
        })
        .await
    }

    /// Revokes an access key (admin); false when there is no such key.
    pub async fn revoke_key(&self, key_id: &str) -> Result<bool> {
        self.idempotent(|c| async move {
            let mut req = c.revoke_key_request();
            req.get().set_key_id(key_id);
            let resp = req.send().promise.await.map_err(self.transport())?;
            let r = resp.get().map_err(self.transport())?;
            if r.has_error() {
                return Err(self.remote(r.get_error().map_err(self.transport())?));
            }
            Ok(r.get_existed())
        })
        .await
    }

    /// Scrub progress of the live chunk servers, or of the one whose id or
    /// address is `node` (admin); `start` starts a pass first, read at
    /// `bytes_per_sec` (0 = the server's setting).
    pub async fn scrub(
        &self,
        node: &str,
        start: bool,
        bytes_per_sec: u64,
    ) -> Result<Vec<NodeScrub>> {
        self.idempotent(|c| async move {
            let mut req = c.scrub_request();
            req.get().set_node(node);
            req.get().set_start(start);
            req.get().set_bytes_per_sec(bytes_per_sec);
            let resp = req.send().promise.await.map_err(self.transport())?;
            let r = resp.get().map_err(self.transport())?;
            if r.has_error() {
                return Err(self.remote(r.get_error().map_err(self.transport())?));
            }
            let t = text_or_empty;
            let mut out = Vec::new();
            for n in r.get_nodes().map_err(self.transport())?.iter() {
                out.push(NodeScrub {
                    node_id: t(n.get_node_id()),
                    addr: t(n.get_addr()),
                    passes: n.get_passes(),
                    running: n.get_running(),
                    bytes_verified: n.get_bytes_verified(),
                    bytes_total: n.get_bytes_total(),
                    bad_found: n.get_bad_found(),
                    started: n.get_started(),
                    error: t(n.get_error()),
                });
            }
            Ok(out)
        })
        .await
    }

    fn transport(&self) -> impl Fn(capnp::Error) -> Error + '_ {
        move |source| {
            if source.kind == capnp::ErrorKind::Disconnected {
                self.conn.borrow_mut().take();
            }
            // The gateway's call gate refuses with an exception whose text
            // starts with what was wrong: a typed error for the caller.
            if source.kind == capnp::ErrorKind::Failed {
                let text = source.extra.as_str();
                for (prefix, kind) in [
                    ("unauthenticated", GatewayErrorKind::Unauthenticated),
                    ("permission denied", GatewayErrorKind::PermissionDenied),
                ] {
                    if let Some(at) = text.find(prefix) {
                        return Error::Gateway {
                            addr: self.addr,
                            kind,
                            message: text[at..].to_string(),
                        };
                    }
                }
            }
            Error::Transport {
                addr: self.addr,
                source,
            }
        }
    }

    fn remote(&self, e: wire_error::Reader<'_>) -> Error {
        Error::Gateway {
            addr: self.addr,
            kind: e
                .get_kind()
                .map(GatewayErrorKind::from_wire)
                .unwrap_or(GatewayErrorKind::Internal),
            message: e
                .get_message()
                .ok()
                .and_then(|m| m.to_string().ok())
                .unwrap_or_default(),
        }
    }

    /// Runs an idempotent call, once more on a fresh connection if the
    /// connection broke.
    async fn idempotent<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(gateway::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let r = f(self.client().await?).await;
        match r {
            Err(Error::Transport { source, .. })
                if source.kind == capnp::ErrorKind::Disconnected =>
            {
                f(self.client().await?).await
            }
            r => r,
        }
    }

    /// Stores `data` under `key` (any size: above 4 MiB it streams).
    pub async fn put(&self, key: &str, data: &[u8]) -> Result<(ObjectInfo, PutOutcome)> {
        self.put_with_attrs(key, data, &[]).await
    }

    /// Stores `data` under `key` with opaque attributes (at most 8 KiB)
    /// that come back in every [`ObjectInfo`] of this version.
    pub async fn put_with_attrs(
        &self,
        key: &str,
        data: &[u8],
        attrs: &[u8],
    ) -> Result<(ObjectInfo, PutOutcome)> {
        self.put_if(key, data, attrs, &PutIf::Always).await
    }

    /// [`GatewayClient::put_with_attrs`] only if `cond` holds; when it does
    /// not, nothing is stored and the error is a gateway
    /// `PreconditionFailed`. Two writers with the same
    /// condition never both succeed (the gateway commits by
    /// compare-and-set).
    pub async fn put_if(
        &self,
        key: &str,
        data: &[u8],
        attrs: &[u8],
        cond: &PutIf,
    ) -> Result<(ObjectInfo, PutOutcome)> {
        if data.len() > PUT_MESSAGE_MAX_BYTES {
            let mut w = self.put_open_if(key, data.len() as u64, cond).await?;
            w.write(data).await?;
            return w.finish(attrs).await;
        }
        let c = self.client().await?;
        let mut req = c.put_request();
        req.get().set_key(key);
        req.get().set_data(data);
        req.get().set_attrs(attrs);
        cond.set(&mut req.get());
        let resp = req.send().promise.await.map_err(self.transport())?;
        let r = resp.get().map_err(self.transport())?;
        if r.has_error() {
            return Err(self.remote(r.get_error().map_err(self.transport())?));
        }
        let i = info(r.get_info().map_err(self.transport())?).map_err(self.transport())?;
        Ok((i, outcome(r.get_outcome())))
    }

    /// Opens a streamed put of exactly `size` bytes under `key`: write the
    /// bytes with [`PutStream::write`], then [`PutStream::finish`]. Dropped
    /// before `finish`, nothing is stored.
    pub async fn put_open(&self, key: &str, size: u64) -> Result<PutStream<'_>> {
        self.put_open_if(key, size, &PutIf::Always).await
    }

    /// [`GatewayClient::put_open`] for a write that commits only if `cond`
    /// holds (checked when opening and again at `finish`).
    pub async fn put_open_if(&self, key: &str, size: u64, cond: &PutIf) -> Result<PutStream<'_>> {
        let c = self.client().await?;
        let mut req = c.put_stream_request();
        req.get().set_key(key);
        req.get().set_size(size);
        cond.set_stream(&mut req.get());
        let resp = req.send().promise.await.map_err(self.transport())?;
        let r = resp.get().map_err(self.transport())?;
        if r.has_error() {
            return Err(self.remote(r.get_error().map_err(self.transport())?));
        }
        let sink = r.get_sink().map_err(self.transport())?;
        Ok(PutStream {
            gw: self,
            sink,
            size,
            sent: 0,
        })
    }

    /// Streams exactly `size` bytes from `reader` under `key`, calling
    /// `progress` with the bytes sent so far.
    pub async fn put_reader<R: AsyncRead + Unpin>(
        &self,
        key: &str,
        size: u64,
        reader: R,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(ObjectInfo, PutOutcome)> {
        self.put_reader_if(key, size, reader, progress, &PutIf::Always)
            .await
    }

    /// [`GatewayClient::put_reader`] only if `cond` holds (see
    /// [`GatewayClient::put_if`]).
    pub async fn put_reader_if<R: AsyncRead + Unpin>(
        &self,
        key: &str,
        size: u64,
        mut reader: R,
        progress: &mut dyn FnMut(u64),
        cond: &PutIf,
    ) -> Result<(ObjectInfo, PutOutcome)> {
        let mut w = self.put_open_if(key, size, cond).await?;
        let mut buf = vec![0u8; STREAM_CHUNK_BYTES];
        while w.sent < size {
            let want = ((size - w.sent) as usize).min(buf.len());
            let n = reader
                .read(&mut buf[..want])
                .await
                .map_err(|e| Error::Invalid(format!("reading the input: {e}")))?;
            if n == 0 {
                return Err(Error::Invalid(format!(
                    "the input ended after {} of the {size} bytes announced; nothing was stored",
                    w.sent
                )));
            }
            w.write(&buf[..n]).await?;
            progress(w.sent);
        }
        w.finish(&[]).await
    }

    /// The whole object.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.get_range(key, 0, 0).await
    }

    /// Bytes `[offset, offset + len)` (len 0: to the end).
    pub async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        // One round trip for up to 4 MiB; the gateway answers `tooLarge`
        // for more (with the object's size), and the bytes then stream.
        let mut want = len;
        if len <= PUT_MESSAGE_MAX_BYTES as u64 {
            match self.get_once(key, offset, len, &[]).await? {
                GetOnce::Data(data, _) => return Ok(data),
                GetOnce::TooLarge(_, Some(size)) => {
                    let rest = size.saturating_sub(offset);
                    want = if len == 0 { rest } else { len.min(rest) };
                }
                GetOnce::TooLarge(_, None) => {}
            }
        }
        // Reserved at once: grown by doubling, a 16 MiB object was copied
        // twice more and faulted in fresh memory at every step.
        let mut buf = Vec::new();
        let _ = buf.try_reserve_exact(want.min(GET_RESERVE_MAX_BYTES) as usize);
        let out = Rc::new(futures::lock::Mutex::new(buf));
        self.get_range_to(key, offset, len, out.clone(), &mut |_| {})
            .await?;
        let v = std::mem::take(&mut *out.lock().await);
        Ok(v)
    }

    /// Bytes `[offset, offset + len)` (at most 4 MiB; len 0: to the end) in
    /// one round trip, with the object's description. A non-empty
    /// `if_version` must be the object's version id, else `Conflict`.
    pub async fn get_range_info(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        if_version: &[u8],
    ) -> Result<(Vec<u8>, ObjectInfo)> {
        match self.get_once(key, offset, len, if_version).await? {
            GetOnce::Data(data, i) => Ok((data, i)),
            GetOnce::TooLarge(e, _) => Err(e),
        }
    }

    /// One `get` call: the bytes, or the gateway's `tooLarge` with the
    /// object's size when it stated it (gateways before 2026-11-29 do not).
    async fn get_once(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        if_version: &[u8],
    ) -> Result<GetOnce> {
        self.idempotent(|c| async move {
            let mut req = c.get_request();
            {
                let mut p = req.get();
                p.set_key(key);
                p.set_offset(offset);
                p.set_length(len);
                p.set_if_version(if_version);
            }
            let resp = req.send().promise.await.map_err(self.transport())?;
            let r = resp.get().map_err(self.transport())?;
            if r.has_error() {
                let e = self.remote(r.get_error().map_err(self.transport())?);
                return match e {
                    Error::Gateway {
                        kind: GatewayErrorKind::TooLarge,
                        ..
                    } => {
                        let size = r
                            .has_info()
                            .then(|| r.get_info().ok().map(|i| i.get_size()))
                            .flatten();
                        Ok(GetOnce::TooLarge(e, size))
                    }
                    e => Err(e),
                };
            }
            let i = info(r.get_info().map_err(self.transport())?).map_err(self.transport())?;
            Ok(GetOnce::Data(
                r.get_data().map_err(self.transport())?.to_vec(),
                i,
            ))
        })
        .await
    }

    /// Streams bytes `[offset, offset + len)` (len 0: to the end) of the
    /// version `if_version` (empty: whichever is current) to `chunk`, one
    /// call per chunk of at most 1 MiB, in order; an `Err` from `chunk`
    /// stops the stream. Not retried (chunks may already have gone out).
    pub async fn get_chunks<F, Fut>(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        if_version: &[u8],
        chunk: F,
    ) -> Result<ObjectInfo>
    where
        F: Fn(Vec<u8>) -> Fut + 'static,
        Fut: std::future::Future<Output = std::result::Result<(), String>> + 'static,
    {
        let c = self.client().await?;
        let received = Rc::new(std::cell::Cell::new(0u64));
        let failed = Rc::new(RefCell::new(None::<String>));
        let sink: byte_sink::Client = capnp_rpc::new_client(ChunkSink {
            chunk,
            received: received.clone(),
            failed: failed.clone(),
        });
        let r = get_stream_request(&c, key, offset, len, sink, if_version)
            .send()
            .promise
            .await;
        if let Some(why) = failed.borrow_mut().take() {
            return Err(Error::Invalid(format!("passing the bytes on: {why}")));
        }
        self.stream_end(r, received.get())
    }

    /// The answer that ends a streamed get, checked against the bytes
    /// that arrived.
    fn stream_end(
        &self,
        r: std::result::Result<
            capnp::capability::Response<gateway::get_stream_results::Owned>,
            capnp::Error,
        >,
        received: u64,
    ) -> Result<ObjectInfo> {
        let resp = r.map_err(self.transport())?;
        let r = resp.get().map_err(self.transport())?;
        if r.has_error() {
            return Err(self.remote(r.get_error().map_err(self.transport())?));
        }
        let i = info(r.get_info().map_err(self.transport())?).map_err(self.transport())?;
        if r.get_sent() != received {
            return Err(Error::Invalid(format!(
                "the gateway sent {} bytes but {received} arrived",
                r.get_sent()
            )));
        }
        Ok(i)
    }

    /// Streams the object into `writer`, calling `progress` with the bytes
    /// received so far; returns its description.
    pub async fn get_to<W: AsyncWrite + Unpin + 'static>(
        &self,
        key: &str,
        writer: W,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ObjectInfo> {
        let w = Rc::new(futures::lock::Mutex::new(writer));
        let i = self.get_range_to(key, 0, 0, w.clone(), progress).await?;
        w.lock()
            .await
            .flush()
            .await
            .map_err(|e| Error::Invalid(format!("writing the output: {e}")))?;
        Ok(i)
    }

    async fn get_range_to<W: AsyncWrite + Unpin + 'static>(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        writer: Rc<futures::lock::Mutex<W>>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ObjectInfo> {
        let progress = RefCell::new(progress);
        self.idempotent(|c| {
            let writer = writer.clone();
            let progress = &progress;
            async move {
                let received = Rc::new(std::cell::Cell::new(0u64));
                let failed = Rc::new(RefCell::new(None::<String>));
                let sink: byte_sink::Client = capnp_rpc::new_client(WriterSink {
                    writer,
                    received: received.clone(),
                    failed: failed.clone(),
                });
                let req = get_stream_request(&c, key, offset, len, sink, &[]);
                let mut call = Box::pin(req.send().promise);
                // Report progress while the stream runs.
                let r = loop {
                    let tick = Box::pin(glommio::timer::sleep(Duration::from_millis(100)));
                    match futures::future::select(call, tick).await {
                        futures::future::Either::Left((r, _)) => break r,
                        futures::future::Either::Right((_, c)) => {
                            (progress.borrow_mut())(received.get());
                            call = c;
                        }
                    }
                };
                (progress.borrow_mut())(received.get());
                if let Some(why) = failed.borrow_mut().take() {
                    return Err(Error::Invalid(format!("writing the output: {why}")));
                }
                self.stream_end(r, received.get())
            }
        })
        .await
    }

    /// Stores a JSON document (at most 4 MiB). Fields named in `hot` (or,
    /// when none are named, the small ones) are kept with the metadata; the
    /// rest is erasure coded unless unchanged since the previous version.
    /// Returns the description, the outcome and whether the cold write was
    /// skipped.
    pub async fn put_doc(
        &self,
        key: &str,
        json: &str,
        hot: &[&str],
    ) -> Result<(ObjectInfo, PutOutcome, bool)> {
        let c = self.client().await?;
        let mut req = c.put_doc_request();
        {
            let mut p = req.get();
            p.set_key(key);
            p.set_json(json);
            let mut h = p.init_hot(hot.len() as u32);
            for (i, name) in hot.iter().enumerate() {
                h.set(i as u32, *name);
            }
        }
        let resp = req.send().promise.await.map_err(self.transport())?;
        let r = resp.get().map_err(self.transport())?;
        if r.has_error() {
            return Err(self.remote(r.get_error().map_err(self.transport())?));
        }
        let i = info(r.get_info().map_err(self.transport())?).map_err(self.transport())?;
        Ok((i, outcome(r.get_outcome()), r.get_cold_skipped()))
    }

    /// The JSON document under `key` (equal as a JSON value to what was
    /// stored; keys come back sorted).
    pub async fn get_doc(&self, key: &str) -> Result<(String, ObjectInfo)> {
        self.idempotent(|c| async move {
            let mut req = c.get_doc_request();
            req.get().set_key(key);
            let resp = req.send().promise.await.map_err(self.transport())?;
            let r = resp.get().map_err(self.transport())?;
            if r.has_error() {
                return Err(self.remote(r.get_error().map_err(self.transport())?));
            }
            let json = r
                .get_json()
                .map_err(self.transport())?
                .to_string()
                .map_err(|e| {
                    Error::Invalid(format!(
                        "the gateway sent a document that is not UTF-8: {e}"
                    ))
                })?;
            let i = info(r.get_info().map_err(self.transport())?).map_err(self.transport())?;
            Ok((json, i))
        })
        .await
    }

    /// The object's description.
    pub async fn stat(&self, key: &str) -> Result<ObjectInfo> {
        self.idempotent(|c| async move {
            let mut req = c.stat_request();
            req.get().set_key(key);
            let resp = req.send().promise.await.map_err(self.transport())?;
            let r = resp.get().map_err(self.transport())?;
            if r.has_error() {
                return Err(self.remote(r.get_error().map_err(self.transport())?));
            }
            info(r.get_info().map_err(self.transport())?).map_err(self.transport())
        })
        .await
    }

    /// Deletes the object; false when there was none.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        self.idempotent(|c| async move {
            let mut req = c.delete_request();
            req.get().set_key(key);
            let resp = req.send().promise.await.map_err(self.transport())?;
            let r = resp.get().map_err(self.transport())?;
            if r.has_error() {
                return Err(self.remote(r.get_error().map_err(self.transport())?));
            }
            Ok(r.get_existed())
        })
        .await
    }

    /// Objects whose key starts with `prefix`, after `start_after`, at most
    /// `limit` (1..=10,000); true when more follow.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: &str,
        limit: u32,
    ) -> Result<(Vec<ObjectInfo>, bool)> {
        self.idempotent(|c| async move {
            let mut req = c.list_request();
            {
                let mut p = req.get();
                p.set_prefix(prefix);
                p.set_start_after(start_after);
                p.set_limit(limit);
            }
            let resp = req.send().promise.await.map_err(self.transport())?;
            let r = resp.get().map_err(self.transport())?;
            if r.has_error() {
                return Err(self.remote(r.get_error().map_err(self.transport())?));
            }
            let mut out = Vec::new();
            for i in r.get_items().map_err(self.transport())?.iter() {
                out.push(info(i).map_err(self.transport())?);
            }
            Ok((out, r.get_more()))
        })
        .await
    }

    /// The gateway's view of the cluster.
    pub async fn status(&self) -> Result<GatewayStatus> {
        self.idempotent(|c| async move {
            let resp = c
                .status_request()
                .send()
                .promise
                .await
                .map_err(self.transport())?;
            let r = resp.get().map_err(self.transport())?;
            if r.has_error() {
                return Err(self.remote(r.get_error().map_err(self.transport())?));
            }
            let s = r.get_status().map_err(self.transport())?;
            let t = text_or_empty;
            let mut nodes = Vec::new();
            for n in s.get_nodes().map_err(self.transport())?.iter() {
                nodes.push(NodeStatus {
                    node_id: t(n.get_node_id()),
                    addr: t(n.get_addr()),
                    live: n.get_live(),
                    capacity_bytes: n.get_capacity_bytes(),
                    used_bytes: n.get_used_bytes(),
                    zone: t(n.get_zone()),
                    last_heartbeat_ago_millis: n.get_last_heartbeat_ago_millis(),
                });
            }
            Ok(GatewayStatus {
                gateway_id: t(s.get_gateway_id()),
                version: t(s.get_version()),
                uptime_secs: s.get_uptime_secs(),
                nodes,
                puts_ok: s.get_puts_ok(),
                puts_accepted: s.get_puts_accepted(),
                gets_degraded: s.get_gets_degraded(),
                checksum_failures: s.get_checksum_failures(),
                wal_replayed: s.get_wal_replayed(),
                default_layout: t(s.get_default_layout()),
                docs_cold_reused: s.get_docs_cold_reused(),
                reads_hedged: s.get_reads_hedged(),
                cache_hits: s.get_cache_hits(),
                cache_misses: s.get_cache_misses(),
                cache_bytes: s.get_cache_bytes(),
                cache_capacity_bytes: s.get_cache_capacity_bytes(),
                cache_evicted: s.get_cache_evicted(),
                cache_rejected: s.get_cache_rejected(),
            })
        })
        .await
    }
}

/// A streamed put in progress (see [`GatewayClient::put_open`]).
pub struct PutStream<'a> {
    gw: &'a GatewayClient,
    sink: put_sink::Client,
    size: u64,
    sent: u64,
}

impl PutStream<'_> {
    /// Bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Sends the next bytes (in messages of at most 1 MiB; flow controlled).
    pub async fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        if self.sent + bytes.len() as u64 > self.size {
            return Err(Error::Invalid(format!(
                "more than the {} bytes announced for this object; nothing was stored",
                self.size
            )));
        }
        while !bytes.is_empty() {
            let n = bytes.len().min(STREAM_CHUNK_BYTES);
            let mut w = self.sink.write_request();
            w.get().set_chunk(&bytes[..n]);
            w.send().await.map_err(self.gw.transport())?;
            self.sent += n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Stores the object once every announced byte was sent, with opaque
    /// `attrs` (at most 8 KiB) kept in its record.
    pub async fn finish(self, attrs: &[u8]) -> Result<(ObjectInfo, PutOutcome)> {
        if self.sent != self.size {
            return Err(Error::Invalid(format!(
                "{} of the {} bytes announced were sent; nothing was stored",
                self.sent, self.size
            )));
        }
        let mut req = self.sink.finish_request();
        req.get().set_attrs(attrs);
        let resp = req.send().promise.await.map_err(self.gw.transport())?;
        let r = resp.get().map_err(self.gw.transport())?;
        if r.has_error() {
            return Err(self.gw.remote(r.get_error().map_err(self.gw.transport())?));
        }
        let i = info(r.get_info().map_err(self.gw.transport())?).map_err(self.gw.transport())?;
        Ok((i, outcome(r.get_outcome())))
    }
}

/// Receives a streamed get chunk by chunk.
struct ChunkSink<F> {
    chunk: F,
    received: Rc<std::cell::Cell<u64>>,
    failed: Rc<RefCell<Option<String>>>,
}

impl<F, Fut> byte_sink::Server for ChunkSink<F>
where
    F: Fn(Vec<u8>) -> Fut + 'static,
    Fut: std::future::Future<Output = std::result::Result<(), String>> + 'static,
{
    async fn write(self: Rc<Self>, params: byte_sink::WriteParams) -> Result<(), capnp::Error> {
        let chunk = params.get()?.get_chunk()?.to_vec();
        let n = chunk.len() as u64;
        if let Err(e) = (self.chunk)(chunk).await {
            *self.failed.borrow_mut() = Some(e.clone());
            return Err(capnp::Error::failed(e));
        }
        self.received.set(self.received.get() + n);
        Ok(())
    }

    async fn done(
        self: Rc<Self>,
        _: byte_sink::DoneParams,
        _: byte_sink::DoneResults,
    ) -> Result<(), capnp::Error> {
        Ok(())
    }
}

/// What one `get` call came to.
enum GetOnce {
    Data(Vec<u8>, ObjectInfo),
    /// More than one message holds: the error, and the object's size when
    /// the gateway stated it.
    TooLarge(Error, Option<u64>),
}

/// Receives a streamed get into a writer.
struct WriterSink<W> {
    writer: Rc<futures::lock::Mutex<W>>,
    received: Rc<std::cell::Cell<u64>>,
    failed: Rc<RefCell<Option<String>>>,
}

impl<W: AsyncWrite + Unpin + 'static> byte_sink::Server for WriterSink<W> {
    async fn write(self: Rc<Self>, params: byte_sink::WriteParams) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let chunk = p.get_chunk()?;
        let mut w = self.writer.lock().await;
        if let Err(e) = w.write_all(chunk).await {
            *self.failed.borrow_mut() = Some(e.to_string());
            return Err(capnp::Error::failed(format!("writing the output: {e}")));
        }
        self.received.set(self.received.get() + chunk.len() as u64);
        Ok(())
    }

    async fn done(
        self: Rc<Self>,
        _: byte_sink::DoneParams,
        _: byte_sink::DoneResults,
    ) -> Result<(), capnp::Error> {
        Ok(())
    }
}
