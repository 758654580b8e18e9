//! The typed client of a chunk server.
//!
//! One [`ChunkClient`] per server and executor: it keeps one connection
//! (Cap'n Proto multiplexes any number of concurrent calls over it), opens
//! it lazily and again after it breaks. Every call has a timeout; calls are
//! retried with exponential backoff on transport failures and timeouts —
//! every `ChunkServer` method is idempotent (a put of the same bytes under
//! the same id, as the gateway does, stores the same shard). Server errors
//! (not found, checksum, limits…) are returned at once, typed.
//!
//! Small puts ([`ChunkClient::put_batched`], shards of at most
//! [`PUT_BATCH_ITEM_MAX_BYTES`]) travel together: while a put call to a
//! server connection is in flight, the puts asked for meanwhile wait and
//! leave as one `putShards` call when it returns (at most
//! [`PUT_BATCHES_INFLIGHT_MAX`] in flight, [`PUT_BATCH_SHARDS_MAX`] shards
//! and [`PUT_BATCH_SEND_MAX_BYTES`] in one). A put that finds nothing in
//! flight leaves at once, alone. Each waiting put holds a copy of its bytes;
//! how many wait is bounded by the callers' own concurrency (the gateway's
//! admission limits).

use crate::error::{Error, RemoteKind, Result};
use crate::frames::{FrameConn, ShardIn};
use crate::limits::*;
use futures::channel::oneshot;
use futures::future::{select, Either};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tessera_schema::chunk_capnp::{byte_sink, chunk_server, error as wire_error};

/// Returns the server's typed error from a results reader that carries one.
macro_rules! server_error {
    ($client:ident, $r:expr) => {
        if $r.has_error() {
            return Err($client.remote($r.get_error().map_err($client.transport())?));
        }
    };
}

/// Client tunables.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
    /// Attempts per call, the first included (1 = no retry).
    pub attempts: u32,
    /// Chunk size for streamed puts and gets.
    pub stream_chunk_bytes: usize,
    /// The node id the server must have: every new connection checks it,
    /// so that a client never reads or writes a node's shards on another
    /// node that took over its address. `None` trusts the address.
    pub expect_node_id: Option<String>,
    /// TLS to the server (with this node's certificate); `None` = plaintext
    /// (an `--insecure` cluster).
    pub tls: Option<tessera_tls::Connector>,
    /// The machine's local socket directory: a server on this machine that
    /// keeps a socket there ([`crate::local::server_socket`]) is reached
    /// through it, without TCP or TLS; any other over TCP.
    pub local_socket_dir: Option<std::path::PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_DEFAULT_MILLIS),
            call_timeout: Duration::from_millis(CALL_TIMEOUT_DEFAULT_MILLIS),
            attempts: ATTEMPTS_DEFAULT,
            stream_chunk_bytes: STREAM_CHUNK_DEFAULT_BYTES,
            expect_node_id: None,
            tls: None,
            local_socket_dir: None,
        }
    }
}

/// One shard as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: Vec<u8>,
    pub len: u32,
    pub crc32c: u32,
}

/// The server's scrubber.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubStatus {
    pub passes: u64,
    pub running: bool,
    pub bytes_verified: u64,
    pub bytes_total: u64,
    pub bad_found: u64,
    pub last_pass_ended_unix_millis: u64,
}

/// Health and capacity of a chunk server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: String,
    pub version: String,
    pub capacity_bytes: u64,
    pub available_bytes: u64,
    pub live_bytes: u64,
    pub dead_bytes: u64,
    pub shards: u64,
    pub engine_shards: u32,
    pub uptime_secs: u64,
    pub writable: bool,
    pub io_errors: u64,
    pub local_requests: u64,
    pub forwarded_requests: u64,
}

/// A client of one chunk server, for use on one glommio executor.
///
/// It keeps one connection per engine shard (core) of the server — the
/// kernel assigns each new connection to a core, and `nodeInfo` says which
/// — and sends a request for an id over the connection of the shard that
/// owns it, so the server never passes it between threads. Until a core's
/// connection exists (or if the kernel keeps placing new ones elsewhere),
/// any connection serves any id.
pub struct ChunkClient {
    addr: SocketAddr,
    opts: ClientOptions,
    /// By serving shard; `shards` slots once known (one before).
    conns: RefCell<Vec<Option<chunk_server::Client>>>,
    /// Engine shards of the server (0 until learned).
    shards: std::cell::Cell<usize>,
    /// Small puts waiting for a call, by the engine shard that owns them
    /// (slot 0 until the count is known).
    put_queues: RefCell<Vec<PutQueue>>,
    /// False once the server answered `putShards` as unimplemented (a
    /// server older than it): small puts are then sent one call each.
    batches_served: Cell<bool>,
    /// `putShards` calls answered, and the shards they carried.
    batch_stats: Cell<PutBatchStats>,
    /// Framed connections for small puts ([`crate::frames`]), by serving
    /// shard like `conns`.
    frames: RefCell<Vec<Option<Rc<FrameConn>>>>,
    /// False once the server did not answer the framed preamble (a server
    /// older than it): small puts then go as Cap'n Proto calls.
    frames_served: Cell<bool>,
    /// No new framed connection is tried before this (the last try could
    /// not open one); Cap'n Proto carries small puts meanwhile.
    frames_paused_until: Cell<Option<std::time::Instant>>,
}

/// What [`ChunkClient::put_batched`] has sent as `putShards` calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutBatchStats {
    /// `putShards` calls the server answered.
    pub calls: u64,
    /// Shards those calls carried.
    pub shards: u64,
    /// Of those calls, the ones sent on the framed transport
    /// ([`crate::frames`]) rather than as Cap'n Proto calls.
    pub framed: u64,
    /// Puts that went alone, on the framed transport.
    pub framed_singles: u64,
}

/// A small put waiting for its call.
struct QueuedPut {
    id: Vec<u8>,
    data: Vec<u8>,
    crc: u32,
    done: oneshot::Sender<Result<()>>,
}

/// The small puts of one connection slot.
#[derive(Default)]
struct PutQueue {
    waiting: VecDeque<QueuedPut>,
    /// Put calls of this slot in flight (at most [`PUT_BATCHES_INFLIGHT_MAX`]).
    sending: usize,
}

/// Closes a connection that is not kept (dropping a client capability alone
/// leaves the connection open).
struct Disconnect(capnp_rpc::Disconnector<capnp_rpc::rpc_twoparty_capnp::Side>);

impl Disconnect {
    fn close(self) {
        glommio::spawn_local(async move {
            let _ = self.0.await;
        })
        .detach();
    }
}

/// The engine shard that owns `id` on a server with `shards` shards (the
/// contract's routing rule: crc32c of the id, modulo the shard count).
pub fn owner_shard(id: &[u8], shards: usize) -> usize {
    (crc32c::crc32c(id) as usize) % shards.max(1)
}

fn check_id(id: &[u8]) -> Result<()> {
    if id.is_empty() || id.len() > ID_LEN_MAX_BYTES {
        return Err(Error::Invalid(format!(
            "shard id is {} bytes; ids must be 1..={ID_LEN_MAX_BYTES} bytes",
            id.len()
        )));
    }
    Ok(())
}

impl ChunkClient {
    /// A client of the server at `addr`; connects now so that a wrong
    /// address is reported here.
    pub async fn connect(addr: SocketAddr, opts: ClientOptions) -> Result<Self> {
        let c = ChunkClient {
            addr,
            opts,
            conns: RefCell::new(Vec::new()),
            shards: std::cell::Cell::new(0),
            put_queues: RefCell::new(Vec::new()),
            batches_served: Cell::new(true),
            batch_stats: Cell::new(PutBatchStats::default()),
            frames: RefCell::new(Vec::new()),
            frames_served: Cell::new(true),
            frames_paused_until: Cell::new(None),
        };
        c.client(None).await?;
        Ok(c)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The local socket of the server's executor `shard`, when the server
    /// keeps one in this machine's local socket directory.
    fn local_socket(&self, shard: usize) -> Option<std::path::PathBuf> {
        let dir = self.opts.local_socket_dir.as_ref()?;
        crate::local::trusted_socket(dir, &self.addr.to_string(), shard)
    }

    /// A new stream to the server: executor `shard`'s local socket when it
    /// has one, else TCP (with TLS when configured).
    async fn dial(&self, shard: usize) -> Result<crate::conn::Stream> {
        let tcp =
            crate::conn::connect(self.addr, self.opts.connect_timeout, self.opts.tls.as_ref());
        crate::conn::connect_local_or(self.local_socket(shard), self.opts.connect_timeout, tcp)
            .await
            .map_err(|source| Error::Connect {
                addr: self.addr,
                source,
            })
    }

    /// Opens a connection (to executor `shard`'s local socket when it has
    /// one, else over TCP) and asks which engine shard serves it (and how
    /// many the server has).
    async fn open_conn(
        &self,
        shard: usize,
    ) -> Result<(chunk_server::Client, Disconnect, usize, usize)> {
        let stream = self.dial(shard).await?;
        let (c, disconnector) = crate::conn::client_side_with_disconnector(stream);
        let c: chunk_server::Client = c;
        let asked = {
            let ask = Box::pin(async {
                let resp = c
                    .node_info_request()
                    .send()
                    .promise
                    .await
                    .map_err(self.transport())?;
                let r = resp.get().map_err(self.transport())?;
                let i = r.get_info().map_err(self.transport())?;
                if let Some(want) = &self.opts.expect_node_id {
                    let found = i
                        .get_node_id()
                        .ok()
                        .and_then(|t| t.to_str().ok())
                        .unwrap_or_default();
                    if found != want {
                        return Err(Error::WrongNode {
                            addr: self.addr,
                            expected: want.clone(),
                            found: found.to_string(),
                        });
                    }
                }
                Ok::<_, Error>((
                    i.get_serving_shard() as usize,
                    i.get_engine_shards() as usize,
                ))
            });
            let timer = Box::pin(glommio::timer::sleep(self.opts.connect_timeout));
            match select(ask, timer).await {
                Either::Left((r, _)) => r,
                Either::Right(_) => Err(Error::Timeout {
                    addr: self.addr,
                    what: "nodeInfo on a new connection",
                    after: self.opts.connect_timeout,
                }),
            }
        };
        match asked {
            Ok((serving, shards)) => Ok((c, Disconnect(disconnector), serving, shards)),
            Err(e) => {
                Disconnect(disconnector).close();
                Err(e)
            }
        }
    }

    /// The connection for engine shard `want` (any connection if `None`),
    /// opening connections as needed: at most `4 × shards` tries to land
    /// one on `want` (the kernel places each at random: with 2 cores, 8
    /// tries all miss one core with probability 1/128), then any open
    /// connection serves it.
    async fn client(&self, want: Option<usize>) -> Result<chunk_server::Client> {
        if let Some(c) = self.existing(want) {
            return Ok(c);
        }
        let tries = 4 * self.shards.get().max(1);
        for _ in 0..tries {
            let (c, disconnect, serving, shards) = match self.open_conn(want.unwrap_or(0)).await {
                Ok(v) => v,
                // No new connection (e.g. the server's per-core limit): an
                // open one serves the request, one thread hop away.
                Err(e) => return self.existing(None).ok_or(e),
            };
            if self.shards.get() != shards {
                // First contact, or the server restarted with another count.
                self.shards.set(shards);
                *self.conns.borrow_mut() = vec![None; shards.max(1)];
                self.frames.borrow_mut().clear();
            }
            let kept = {
                let mut conns = self.conns.borrow_mut();
                match conns.get_mut(serving) {
                    Some(slot @ None) => {
                        *slot = Some(c.clone());
                        true
                    }
                    _ => false,
                }
            };
            if !kept {
                // A second connection on a core that has one: close it.
                disconnect.close();
            }
            let want = want.filter(|w| *w < self.shards.get());
            if let Some(c) = self.existing(want) {
                return Ok(c);
            }
        }
        // The kernel kept placing connections elsewhere: any one will do.
        self.existing(None)
            .ok_or_else(|| Error::Invalid("no connection could be kept".into()))
    }

    /// The open connection of shard `want`, or any open one for `None`.
    fn existing(&self, want: Option<usize>) -> Option<chunk_server::Client> {
        let conns = self.conns.borrow();
        match want {
            Some(w) => conns.get(w).cloned().flatten(),
            None => conns.iter().flatten().next().cloned(),
        }
    }

    /// Forgets the connections after a transport failure; they are opened
    /// again by the next call.
    fn drop_conns(&self) {
        for c in self.conns.borrow_mut().iter_mut() {
            c.take();
        }
        for c in self.frames.borrow_mut().iter_mut() {
            c.take();
        }
    }

    /// Runs `call` with the timeout, retrying retryable failures with
    /// backoff on a fresh connection.
    async fn retried<T, F, Fut>(&self, what: &'static str, key: Option<&[u8]>, call: F) -> Result<T>
    where
        F: Fn(chunk_server::Client) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.attempts(what, || async {
            let want = key
                .filter(|_| self.shards.get() > 0)
                .map(|k| owner_shard(k, self.shards.get()));
            call(self.client(want).await?).await
        })
        .await
    }

    /// Runs `attempt` (which finds its own connection) within the call
    /// timeout, again after a retryable failure, with backoff, at most
    /// `opts.attempts` times; connections are dropped after a transport
    /// failure, so the next attempt opens fresh ones.
    async fn attempts<T, F, Fut>(&self, what: &'static str, attempt: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut tried = 0u32;
        loop {
            tried += 1;
            let r = {
                let call = Box::pin(attempt());
                let timer = Box::pin(glommio::timer::sleep(self.opts.call_timeout));
                match select(call, timer).await {
                    Either::Left((r, _)) => r,
                    Either::Right(_) => Err(Error::Timeout {
                        addr: self.addr,
                        what,
                        after: self.opts.call_timeout,
                    }),
                }
            };
            match r {
                Err(e) if e.is_retryable() && tried < self.opts.attempts.max(1) => {
                    // A broken connection is replaced on the next attempt.
                    self.drop_conns();
                    let exp = BACKOFF_BASE_MILLIS.saturating_mul(1 << (tried - 1).min(16));
                    let cap = exp.min(BACKOFF_MAX_MILLIS);
                    let wait = cap / 2 + rand::random::<u64>() % (cap / 2 + 1);
                    tracing::debug!(addr = %self.addr, what, attempt = tried, error = %e, wait_ms = wait, "retrying");
                    glommio::timer::sleep(Duration::from_millis(wait)).await;
                }
                Err(e) => {
                    if matches!(e, Error::Transport { .. } | Error::Timeout { .. }) {
                        self.drop_conns();
                    }
                    return Err(e);
                }
                Ok(v) => return Ok(v),
            }
        }
    }

    /// The framed connection of engine shard `want`, opening connections
    /// as [`client`](Self::client) does (at most `4 × shards` tries to land
    /// one on `want`, then any open one); `None` when the server does not
    /// speak the framed protocol (remembered: Cap'n Proto from then on) or
    /// none can be opened now (Cap'n Proto for
    /// [`FRAMES_RETRY_AFTER_MILLIS`]).
    async fn frame_conn(&self, want: usize) -> Result<Option<Rc<FrameConn>>> {
        if let Some(c) = self.existing_frames(Some(want)) {
            return Ok(Some(c));
        }
        if let Some(until) = self.frames_paused_until.get() {
            if std::time::Instant::now() < until {
                return Ok(self.existing_frames(None));
            }
        }
        let tries = 4 * self.shards.get().max(1);
        for _ in 0..tries {
            let opened = {
                let open = Box::pin(self.open_frame_conn(want));
                let timer = Box::pin(glommio::timer::sleep(self.opts.connect_timeout));
                match select(open, timer).await {
                    Either::Left((r, _)) => r,
                    Either::Right(_) => Err(Error::Timeout {
                        addr: self.addr,
                        what: "hello on a new framed connection",
                        after: self.opts.connect_timeout,
                    }),
                }
            };
            let (conn, hello) = match opened {
                Ok(Some(v)) => v,
                Ok(None) => {
                    tracing::info!(addr = %self.addr, "the chunk server does not speak the framed protocol (older version); small puts go as Cap'n Proto calls");
                    self.frames_served.set(false);
                    return Ok(None);
                }
                Err(e @ Error::WrongNode { .. }) => return Err(e),
                Err(e) => {
                    if let Some(c) = self.existing_frames(None) {
                        return Ok(Some(c));
                    }
                    // No framed connection now (the server refuses more
                    // connections, or is down): this batch goes as a Cap'n
                    // Proto call, which reports a down server as usual, and
                    // frames are tried again only after a pause.
                    tracing::debug!(addr = %self.addr, error = %e, "no framed connection; Cap'n Proto for now");
                    self.frames_paused_until.set(Some(
                        std::time::Instant::now()
                            + Duration::from_millis(FRAMES_RETRY_AFTER_MILLIS),
                    ));
                    return Ok(None);
                }
            };
            let shards = hello.engine_shards as usize;
            if self.shards.get() != shards {
                // First contact, or the server restarted with another count.
                self.shards.set(shards);
                *self.conns.borrow_mut() = vec![None; shards.max(1)];
                self.frames.borrow_mut().clear();
            }
            {
                let mut frames = self.frames.borrow_mut();
                if frames.len() < shards.max(1) {
                    frames.resize_with(shards.max(1), || None);
                }
                // Kept if its core has none, or only a broken one (the
                // server restarted while this client was idle); a second
                // connection on a core is dropped (closed) here.
                if let Some(slot) = frames.get_mut(hello.serving_shard as usize) {
                    let replace = match slot {
                        None => true,
                        Some(c) => c.is_broken(),
                    };
                    if replace {
                        *slot = Some(Rc::new(conn));
                    }
                }
            }
            if let Some(c) = self.existing_frames(Some(want).filter(|w| *w < self.shards.get())) {
                return Ok(Some(c));
            }
        }
        // The kernel kept placing connections elsewhere: any one will do.
        match self.existing_frames(None) {
            Some(c) => Ok(Some(c)),
            None => Err(Error::Transport {
                addr: self.addr,
                source: capnp::Error::disconnected(
                    "no framed connection could be kept; retry".into(),
                ),
            }),
        }
    }

    /// Opens one framed connection (to executor `shard`'s local socket
    /// when it has one, else over TCP) and checks the node it reached.
    async fn open_frame_conn(
        &self,
        shard: usize,
    ) -> Result<Option<(FrameConn, crate::frames::Hello)>> {
        let stream = self.dial(shard).await?;
        let Some((conn, hello)) = FrameConn::open(stream)
            .await
            .map_err(|e| self.io_error(e))?
        else {
            return Ok(None);
        };
        if let Some(want) = &self.opts.expect_node_id {
            if &hello.node_id != want {
                return Err(Error::WrongNode {
                    addr: self.addr,
                    expected: want.clone(),
                    found: hello.node_id,
                });
            }
        }
        Ok(Some((conn, hello)))
    }

    /// The usable framed connection of shard `want`, or any for `None`.
    fn existing_frames(&self, want: Option<usize>) -> Option<Rc<FrameConn>> {
        let frames = self.frames.borrow();
        let usable = |c: &&Rc<FrameConn>| !c.is_broken();
        match want {
            Some(w) => frames
                .get(w)
                .and_then(|c| c.as_ref())
                .filter(usable)
                .cloned(),
            None => frames.iter().flatten().find(usable).cloned(),
        }
    }

    /// A framed connection's I/O failure as this crate's error: one worth
    /// a retry on a fresh connection unless the server sent something
    /// malformed.
    fn io_error(&self, e: std::io::Error) -> Error {
        let source = if e.kind() == std::io::ErrorKind::InvalidData {
            capnp::Error::failed(format!("malformed framed answer: {e}"))
        } else {
            capnp::Error::disconnected(e.to_string())
        };
        Error::Transport {
            addr: self.addr,
            source,
        }
    }

    /// One framed `putShards` of `batch` (retried): the shards that failed,
    /// by position with their errors, or `None` when the server does not
    /// speak the framed protocol.
    async fn put_shards_framed(&self, batch: &[QueuedPut]) -> Result<Option<Vec<(u32, Error)>>> {
        // A batch's puts share an owner (they queued in its slot).
        let want = match (self.shards.get(), batch.first()) {
            (n, Some(p)) if n > 0 => owner_shard(&p.id, n),
            _ => 0,
        };
        self.attempts("putShards", || async {
            let Some(conn) = self.frame_conn(want).await? else {
                return Ok(None);
            };
            let shards = batch.iter().map(|p| ShardIn {
                id: &p.id,
                data: &p.data,
                crc32c: p.crc,
            });
            let (status, payload) = conn
                .call(|id| crate::frames::put_shards_frame(id, shards))
                .await
                .map_err(|e| self.io_error(e))?;
            let malformed = |m: String| Error::Transport {
                addr: self.addr,
                source: capnp::Error::failed(format!("malformed putShards answer: {m}")),
            };
            if status != crate::frames::STATUS_OK {
                let e = crate::frames::decode_error(&payload).map_err(malformed)?;
                return Err(Error::Remote {
                    addr: self.addr,
                    kind: e.kind,
                    message: e.message,
                });
            }
            let failed = crate::frames::decode_failures(&payload).map_err(malformed)?;
            Ok(Some(
                failed
                    .into_iter()
                    .map(|f| {
                        let e = Error::Remote {
                            addr: self.addr,
                            kind: f.kind,
                            message: f.message,
                        };
                        (f.index, e)
                    })
                    .collect(),
            ))
        })
        .await
    }

    fn transport(&self) -> impl Fn(capnp::Error) -> Error + '_ {
        move |source| Error::Transport {
            addr: self.addr,
            source,
        }
    }

    fn remote(&self, e: wire_error::Reader<'_>) -> Error {
        let kind = e
            .get_kind()
            .map(RemoteKind::from_wire)
            .unwrap_or(RemoteKind::Internal);
        let message = e
            .get_message()
            .ok()
            .and_then(|m| m.to_str().ok())
            .unwrap_or("(no message)")
            .to_string();
        Error::Remote {
            addr: self.addr,
            kind,
            message,
        }
    }

    /// Stores `data` under `id`; durable on the server when this returns.
    pub async fn put(&self, id: &[u8], data: &[u8]) -> Result<()> {
        check_id(id)?;
        if data.len() > SHARD_SIZE_MAX_BYTES {
            return Err(Error::Invalid(format!(
                "shard is {} bytes, over the limit of {SHARD_SIZE_MAX_BYTES}",
                data.len()
            )));
        }
        let crc = crc32c::crc32c(data);
        if data.len() <= INLINE_DATA_MAX_BYTES {
            self.put_inline(id, data, crc).await
        } else {
            self.retried("putShardStream", Some(id), |c| {
                self.put_stream(c, id, data, crc)
            })
            .await
        }
    }

    /// One `putShard` call (retried): `data` is at most
    /// [`INLINE_DATA_MAX_BYTES`] and `crc` its crc32c.
    async fn put_inline(&self, id: &[u8], data: &[u8], crc: u32) -> Result<()> {
        self.retried("putShard", Some(id), |c| async move {
            let mut req = c.put_shard_request();
            {
                let mut p = req.get();
                p.set_id(id);
                p.set_data(data);
                p.set_crc32c(crc);
            }
            let resp = req.send().promise.await.map_err(self.transport())?;
            let r = resp.get().map_err(self.transport())?;
            server_error!(self, r);
            Ok(())
        })
        .await
    }

    /// Like [`put`](Self::put), but a small shard (at most
    /// [`PUT_BATCH_ITEM_MAX_BYTES`]) shares a `putShards` call with the
    /// other small puts to this server that wait while one is in flight
    /// (see the module doc). Durable on the server when this returns.
    pub async fn put_batched(self: &Rc<Self>, id: &[u8], data: &[u8]) -> Result<()> {
        if data.len() > PUT_BATCH_ITEM_MAX_BYTES || !self.batches_served.get() {
            return self.put(id, data).await;
        }
        check_id(id)?;
        let slot = match self.shards.get() {
            0 => 0,
            n => owner_shard(id, n),
        };
        let (done, answer) = oneshot::channel();
        {
            let mut queues = self.put_queues.borrow_mut();
            if queues.len() <= slot {
                queues.resize_with(slot + 1, PutQueue::default);
            }
            queues[slot].waiting.push_back(QueuedPut {
                id: id.to_vec(),
                data: data.to_vec(),
                crc: crc32c::crc32c(data),
                done,
            });
        }
        self.send_waiting_puts(slot);
        match answer.await {
            Ok(r) => r,
            // Only if the executor drops the sending task (shutting down).
            Err(_) => Err(Error::Invalid(format!(
                "the put to {} was dropped before it was sent (the client is shutting down); retry",
                self.addr
            ))),
        }
    }

    /// The `putShards` calls [`put_batched`](Self::put_batched) has made.
    pub fn put_batch_stats(&self) -> PutBatchStats {
        self.batch_stats.get()
    }

    /// Starts put calls for the puts waiting in `slot`, while fewer than
    /// [`PUT_BATCHES_INFLIGHT_MAX`] are in flight; each call, when it
    /// returns, starts the next.
    fn send_waiting_puts(self: &Rc<Self>, slot: usize) {
        loop {
            let batch = {
                let mut queues = self.put_queues.borrow_mut();
                let Some(q) = queues.get_mut(slot) else {
                    return;
                };
                if q.sending >= PUT_BATCHES_INFLIGHT_MAX {
                    return;
                }
                let mut batch = Vec::new();
                let mut bytes = 0usize;
                while let Some(front) = q.waiting.front() {
                    let full = batch.len() >= PUT_BATCH_SHARDS_MAX
                        || bytes + front.data.len() > PUT_BATCH_SEND_MAX_BYTES;
                    if !batch.is_empty() && full {
                        break;
                    }
                    let Some(p) = q.waiting.pop_front() else {
                        break;
                    };
                    // A caller that stopped waiting (its request was
                    // cancelled) does not need its put.
                    if p.done.is_canceled() {
                        continue;
                    }
                    bytes += p.data.len();
                    batch.push(p);
                }
                if batch.is_empty() {
                    return;
                }
                q.sending += 1;
                batch
            };
            let me = self.clone();
            glommio::spawn_local(async move {
                me.send_puts(batch).await;
                if let Some(q) = me.put_queues.borrow_mut().get_mut(slot) {
                    q.sending -= 1;
                }
                me.send_waiting_puts(slot);
            })
            .detach();
        }
    }

    /// Sends `batch` (one `putShards` call, or `putShard` for one shard or
    /// an older server) and answers each of its puts.
    async fn send_puts(&self, batch: Vec<QueuedPut>) {
        if self.frames_served.get() {
            match self.put_shards_framed(&batch).await {
                Ok(Some(failed)) => {
                    let mut st = self.batch_stats.get();
                    if batch.len() > 1 {
                        st.framed += 1;
                    } else {
                        st.framed_singles += 1;
                    }
                    self.batch_stats.set(st);
                    self.answer_batch(batch, failed);
                    return;
                }
                // An older server: Cap'n Proto below.
                Ok(None) => {}
                Err(e) => {
                    for p in batch {
                        let _ = p.done.send(Err(e.duplicate()));
                    }
                    return;
                }
            }
        }
        if batch.len() > 1 && self.batches_served.get() {
            let r = self
                .retried("putShards", Some(&batch[0].id), |c| {
                    self.put_shards_call(c, &batch)
                })
                .await;
            match r {
                Ok(Some(failed)) => {
                    self.answer_batch(batch, failed);
                    return;
                }
                Ok(None) => {
                    tracing::info!(addr = %self.addr, "the chunk server does not serve putShards (older version); sending one putShard per shard");
                    self.batches_served.set(false);
                }
                Err(e) => {
                    for p in batch {
                        let _ = p.done.send(Err(e.duplicate()));
                    }
                    return;
                }
            }
        }
        let one = |p: QueuedPut| async move {
            let r = self.put_inline(&p.id, &p.data, p.crc).await;
            let _ = p.done.send(r);
        };
        futures::future::join_all(batch.into_iter().map(one)).await;
    }

    /// Answers each put of a batch the server took: its own failure, if it
    /// is listed, else success. Counts batches of more than one shard.
    fn answer_batch(&self, batch: Vec<QueuedPut>, mut failed: Vec<(u32, Error)>) {
        if batch.len() > 1 {
            let mut st = self.batch_stats.get();
            st.calls += 1;
            st.shards += batch.len() as u64;
            self.batch_stats.set(st);
        }
        for (i, p) in batch.into_iter().enumerate() {
            let r = match failed.iter().position(|(at, _)| *at as usize == i) {
                Some(j) => Err(failed.swap_remove(j).1),
                None => Ok(()),
            };
            let _ = p.done.send(r);
        }
    }

    /// One `putShards` attempt: the shards that failed, by position with
    /// their errors, or `None` when the server does not serve the method.
    async fn put_shards_call(
        &self,
        c: chunk_server::Client,
        batch: &[QueuedPut],
    ) -> Result<Option<Vec<(u32, Error)>>> {
        let mut req = c.put_shards_request();
        {
            let mut list = req.get().init_shards(batch.len() as u32);
            for (i, p) in batch.iter().enumerate() {
                let mut s = list.reborrow().get(i as u32);
                s.set_id(&p.id);
                s.set_data(&p.data);
                s.set_crc32c(p.crc);
            }
        }
        let resp = match req.send().promise.await {
            Ok(r) => r,
            Err(e) if e.kind == capnp::ErrorKind::Unimplemented => return Ok(None),
            Err(e) => return Err(self.transport()(e)),
        };
        let r = resp.get().map_err(self.transport())?;
        server_error!(self, r);
        let failed = r.get_failed().map_err(self.transport())?;
        let mut out = Vec::with_capacity(failed.len() as usize);
        for f in failed.iter() {
            let e = f.get_error().map_err(self.transport())?;
            out.push((f.get_index(), self.remote(e)));
        }
        Ok(Some(out))
    }

    async fn put_stream(
        &self,
        c: chunk_server::Client,
        id: &[u8],
        data: &[u8],
        crc: u32,
    ) -> Result<()> {
        let mut req = c.put_shard_stream_request();
        {
            let mut p = req.get();
            p.set_id(id);
            p.set_length(data.len() as u32);
            p.set_crc32c(crc);
        }
        let resp = req.send().promise.await.map_err(self.transport())?;
        let r = resp.get().map_err(self.transport())?;
        server_error!(self, r);
        let sink = r.get_sink().map_err(self.transport())?;
        let chunk = self
            .opts
            .stream_chunk_bytes
            .clamp(4096, STREAM_CHUNK_MAX_BYTES);
        let mut writes = Vec::new();
        for part in data.chunks(chunk) {
            let mut w = sink.write_request();
            w.get().set_chunk(part);
            // Streaming calls are flow-controlled by capnp-rpc: `send`
            // resolves when the window has room.
            writes.push(w.send());
        }
        for w in writes {
            w.await.map_err(self.transport())?;
        }
        let resp = sink
            .finish_request()
            .send()
            .promise
            .await
            .map_err(self.transport())?;
        let r = resp.get().map_err(self.transport())?;
        server_error!(self, r);
        Ok(())
    }

    /// The whole shard, checked against the server's crc32c after transit.
    pub async fn get(&self, id: &[u8]) -> Result<Vec<u8>> {
        check_id(id)?;
        self.retried("getShard", Some(id), |c| async move {
            let (mut data, total, crc) = self.get_inline(&c, id, 0, 0).await?;
            if (total as usize) > data.len() {
                let rest = self
                    .get_stream(&c, id, data.len() as u32, total - data.len() as u32)
                    .await?;
                data.extend_from_slice(&rest.0);
            }
            let got = crc32c::crc32c(&data);
            if got != crc || data.len() != total as usize {
                return Err(Error::TransitChecksum {
                    addr: self.addr,
                    expected: crc,
                    got,
                });
            }
            Ok(data)
        })
        .await
    }

    /// `len` bytes at `offset` of the shard (`len` 0: to its end). The server
    /// verifies the whole shard before sending any of it.
    pub async fn get_range(&self, id: &[u8], offset: u32, len: u32) -> Result<Vec<u8>> {
        check_id(id)?;
        self.retried("getShard", Some(id), |c| async move {
            if (len as usize) <= INLINE_DATA_MAX_BYTES && len != 0 {
                return Ok(self.get_inline(&c, id, offset, len).await?.0);
            }
            let (data, _, _) = self.get_stream(&c, id, offset, len).await?;
            Ok(data)
        })
        .await
    }

    async fn get_inline(
        &self,
        c: &chunk_server::Client,
        id: &[u8],
        offset: u32,
        len: u32,
    ) -> Result<(Vec<u8>, u32, u32)> {
        let mut req = c.get_shard_request();
        {
            let mut p = req.get();
            p.set_id(id);
            p.set_offset(offset);
            p.set_length(len);
        }
        let resp = req.send().promise.await.map_err(self.transport())?;
        let r = resp.get().map_err(self.transport())?;
        server_error!(self, r);
        let data = r.get_data().map_err(self.transport())?.to_vec();
        Ok((data, r.get_shard_length(), r.get_crc32c()))
    }

    async fn get_stream(
        &self,
        c: &chunk_server::Client,
        id: &[u8],
        offset: u32,
        len: u32,
    ) -> Result<(Vec<u8>, u32, u32)> {
        let buf = Rc::new(RefCell::new(Vec::new()));
        let sink: byte_sink::Client = capnp_rpc::new_client(Collector {
            buf: buf.clone(),
            limit: SHARD_SIZE_MAX_BYTES,
        });
        let mut req = c.get_shard_stream_request();
        {
            let mut p = req.get();
            p.set_id(id);
            p.set_offset(offset);
            p.set_length(len);
            p.set_sink(sink);
            p.set_chunk_bytes(self.opts.stream_chunk_bytes as u32);
        }
        let resp = req.send().promise.await.map_err(self.transport())?;
        let r = resp.get().map_err(self.transport())?;
        server_error!(self, r);
        let data = std::mem::take(&mut *buf.borrow_mut());
        if data.len() != r.get_sent() as usize {
            return Err(Error::Transport {
                addr: self.addr,
                source: capnp::Error::failed(format!(
                    "server says it sent {} bytes, {} arrived",
                    r.get_sent(),
                    data.len()
                )),
            });
        }
        Ok((data, r.get_shard_length(), r.get_crc32c()))
    }

    /// Deletes `id`; true if it existed. Durable when it returns.
    pub async fn delete(&self, id: &[u8]) -> Result<bool> {
        check_id(id)?;
        self.retried("deleteShard", Some(id), |c| async move {
            let mut req = c.delete_shard_request();
            req.get().set_id(id);
            let resp = req.send().promise.await.map_err(self.transport())?;
            let r = resp.get().map_err(self.transport())?;
            server_error!(self, r);
            Ok(r.get_existed())
        })
        .await
    }

    /// Length and crc32c of `id`.
    pub async fn stat(&self, id: &[u8]) -> Result<ShardInfo> {
        check_id(id)?;
        self.retried("statShard", Some(id), |c| async move {
            let mut req = c.stat_shard_request();
            req.get().set_id(id);
            let resp = req.send().promise.await.map_err(self.transport())?;
            let r = resp.get().map_err(self.transport())?;
            server_error!(self, r);
            let i = r.get_info().map_err(self.transport())?;
            Ok(ShardInfo {
                id: i.get_id().map_err(self.transport())?.to_vec(),
                len: i.get_length(),
                crc32c: i.get_crc32c(),
            })
        })
        .await
    }

    /// One page of the inventory after `start_after`; the flag says whether
    /// more follow.
    pub async fn inventory_page(
        &self,
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<ShardInfo>, bool)> {
        if limit == 0 || limit > INVENTORY_PAGE_MAX {
            return Err(Error::Invalid(format!(
                "inventory page of {limit}; pages hold 1..={INVENTORY_PAGE_MAX} items"
            )));
        }
        self.retried("inventory", None, |c| async move {
            let mut req = c.inventory_request();
            {
                let mut p = req.get();
                p.set_start_after(start_after.unwrap_or(&[]));
                p.set_limit(limit as u32);
            }
            let resp = req.send().promise.await.map_err(self.transport())?;
            let r = resp.get().map_err(self.transport())?;
            server_error!(self, r);
            let items = r.get_items().map_err(self.transport())?;
            let mut out = Vec::with_capacity(items.len() as usize);
            for i in items.iter() {
                out.push(ShardInfo {
                    id: i.get_id().map_err(self.transport())?.to_vec(),
                    len: i.get_length(),
                    crc32c: i.get_crc32c(),
                });
            }
            Ok((out, r.get_more()))
        })
        .await
    }

    /// The whole inventory, page by page.
    pub async fn inventory_all(&self) -> Result<Vec<ShardInfo>> {
        let mut all: Vec<ShardInfo> = Vec::new();
        loop {
            let after = all.last().map(|i| i.id.clone());
            let (page, more) = self
                .inventory_page(after.as_deref(), INVENTORY_PAGE_MAX)
                .await?;
            all.extend(page);
            if !more {
                return Ok(all);
            }
        }
    }

    /// Health and capacity.
    pub async fn node_info(&self) -> Result<NodeInfo> {
        self.retried("nodeInfo", None, |c| async move {
            let resp = c
                .node_info_request()
                .send()
                .promise
                .await
                .map_err(self.transport())?;
            let r = resp.get().map_err(self.transport())?;
            let i = r.get_info().map_err(self.transport())?;
            let text = |t: capnp::Result<capnp::text::Reader<'_>>| {
                t.ok()
                    .and_then(|t| t.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            Ok(NodeInfo {
                node_id: text(i.get_node_id()),
                version: text(i.get_version()),
                capacity_bytes: i.get_capacity_bytes(),
                available_bytes: i.get_available_bytes(),
                live_bytes: i.get_live_bytes(),
                dead_bytes: i.get_dead_bytes(),
                shards: i.get_shards(),
                engine_shards: i.get_engine_shards(),
                uptime_secs: i.get_uptime_secs(),
                writable: i.get_writable(),
                io_errors: i.get_io_errors(),
                local_requests: i.get_local_requests(),
                forwarded_requests: i.get_forwarded_requests(),
            })
        })
        .await
    }

    /// The scrubber's progress.
    pub async fn scrub_status(&self) -> Result<ScrubStatus> {
        self.retried("scrubStatus", None, |c| async move {
            let resp = c
                .scrub_status_request()
                .send()
                .promise
                .await
                .map_err(self.transport())?;
            let r = resp.get().map_err(self.transport())?;
            let s = r.get_status().map_err(self.transport())?;
            Ok(ScrubStatus {
                passes: s.get_passes(),
                running: s.get_running(),
                bytes_verified: s.get_bytes_verified(),
                bytes_total: s.get_bytes_total(),
                bad_found: s.get_bad_found(),
                last_pass_ended_unix_millis: s.get_last_pass_ended_unix_millis(),
            })
        })
        .await
    }

    /// Starts a scrub pass (false if one is running already).
    pub async fn start_scrub(&self, bytes_per_sec: u64) -> Result<bool> {
        self.retried("startScrub", None, |c| async move {
            let mut req = c.start_scrub_request();
            req.get().set_bytes_per_sec(bytes_per_sec);
            let resp = req.send().promise.await.map_err(self.transport())?;
            let r = resp.get().map_err(self.transport())?;
            server_error!(self, r);
            Ok(r.get_started())
        })
        .await
    }

    /// Takes up to `limit` bad-shard reports (id, reason) and the count of
    /// reports dropped by the server's full queue.
    pub async fn bad_shards(&self, limit: usize) -> Result<(Vec<(Vec<u8>, String)>, u64)> {
        let limit = limit.clamp(1, BAD_SHARDS_PAGE_MAX);
        // Not retried: the reports taken by a lost answer would be lost.
        let c = self.client(None).await?;
        let mut req = c.bad_shards_request();
        req.get().set_limit(limit as u32);
        let resp = req.send().promise.await.map_err(self.transport())?;
        let r = resp.get().map_err(self.transport())?;
        let mut out = Vec::new();
        for b in r.get_reports().map_err(self.transport())?.iter() {
            out.push((
                b.get_id().map_err(self.transport())?.to_vec(),
                b.get_reason()
                    .ok()
                    .and_then(|t| t.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
            ));
        }
        Ok((out, r.get_dropped()))
    }
}

/// Client side of a streamed get: collects the chunks, refusing more than
/// `limit` bytes.
struct Collector {
    buf: Rc<RefCell<Vec<u8>>>,
    limit: usize,
}

impl byte_sink::Server for Collector {
    fn write(
        self: Rc<Self>,
        params: byte_sink::WriteParams,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let r = (|| {
            let chunk = params.get()?.get_chunk()?;
            let mut b = self.buf.borrow_mut();
            if b.len() + chunk.len() > self.limit {
                return Err(capnp::Error::failed(format!(
                    "stream exceeds {} bytes",
                    self.limit
                )));
            }
            b.extend_from_slice(chunk);
            Ok(())
        })();
        std::future::ready(r)
    }

    fn done(
        self: Rc<Self>,
        _: byte_sink::DoneParams,
        _: byte_sink::DoneResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        std::future::ready(Ok(()))
    }
}
