//! The framed transport for a chunk server's small shard writes:
//! length-prefixed frames with request ids on one connection, instead of a
//! Cap'n Proto call per batch.
//!
//! Why: a gateway's small writes reach each chunk server as `putShards`
//! batches — ~7 shards of 4 KiB per call at 32 writes in flight — and
//! Cap'n Proto RPC's per-call machinery (question and answer tables,
//! promises, a message built and parsed, a `Finish` message per call) was
//! ~25 % of a chunk server's CPU under 4 KiB PUTs (docs/BENCHMARKS.md,
//! "the chunk servers' small writes without Cap'n Proto"). A frame costs a
//! header and the shard bytes. Everything else a chunk server serves
//! (streams, reads, inventory, scrub) stays on Cap'n Proto: those calls are
//! few or large.
//!
//! Owns: the wire format (pure encode/decode functions), the serving loop
//! ([`serve`]) over any [`Io`] stream, telling a framed dialer from a
//! Cap'n Proto one on a shared listener ([`sniff`]), and the client side
//! ([`FrameConn`]): many calls in flight on one connection, answered in
//! any order, matched by id.
//!
//! Wire: the dialer first sends [`PREAMBLE`] (8 bytes a Cap'n Proto stream
//! can never begin with: read as a segment table they claim over a billion
//! segments) and a [`METHOD_HELLO`] request; the server sends the preamble
//! back before any answer (a server that does not is not speaking this
//! protocol: an older chunk server, whose Cap'n Proto side answers with an
//! abort or closes). Then request frames `len:u32 id:u64 method:u8 pad:[u8;3]
//! payload[len]`, answered by `len:u32 id:u64 status:u8 pad:[u8;3]
//! payload[len]`, little-endian. Status [`STATUS_OK`] carries the method's
//! answer, [`STATUS_ERROR`] a call-level error (`kind:u8` then a UTF-8
//! message).
//!
//! Payloads (little-endian): `putShards` request `count:u32` then per shard
//! `id_len:u16 data_len:u32 crc32c:u32 id data`; its answer `count:u32`
//! then per failed shard `index:u32 kind:u8 msg_len:u16 msg`. `hello`
//! answer: `serving_shard:u32 engine_shards:u32 node_id_len:u16 node_id`.
//!
//! Invariants: no frame over [`FRAME_MAX_BYTES`] is read or sent (a longer
//! length ends the connection before anything is allocated for it); at most
//! [`SERVED_INFLIGHT_MAX`] requests of one connection are being handled or
//! waiting to be written, and at most [`CALLS_INFLIGHT_MAX`] calls wait on
//! one client connection, so a peer can make neither side hold unbounded
//! memory; a connection that reads a malformed frame ends (its calls fail
//! and the caller reconnects), it is never resynchronised; every decode
//! checks every length against the bytes it has, so nothing read from the
//! socket panics.

use crate::conn::Io;
use crate::error::RemoteKind;
use crate::limits::{ID_LEN_MAX_BYTES, PUT_BATCH_DATA_MAX_BYTES, PUT_BATCH_SHARDS_MAX};
use futures::channel::{mpsc, oneshot};
use futures::future::LocalBoxFuture;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// What a dialer sends first to speak this protocol rather than Cap'n Proto.
pub const PREAMBLE: [u8; 8] = *b"TSCHNK\x00\x01";
/// Largest frame payload either side reads or sends: a full `putShards`
/// batch plus the headers and longest ids of the most shards a call may
/// carry, and its count.
pub const FRAME_MAX_BYTES: usize =
    PUT_BATCH_DATA_MAX_BYTES + PUT_BATCH_SHARDS_MAX * (SHARD_HEADER_BYTES + ID_LEN_MAX_BYTES) + 4;
/// Bytes of a frame's header (requests and answers alike).
const HEADER_BYTES: usize = 16;
/// Requests of one connection a server handles (or holds answers of) at
/// once; the next frame is not read until one finishes. A client sends one
/// batch per connection at a time, so this is far above need.
pub const SERVED_INFLIGHT_MAX: usize = 64;
/// Calls one client connection lets wait for answers at once.
pub const CALLS_INFLIGHT_MAX: usize = 1024;
/// Longest error message put in an answer (longer ones are cut).
pub const MESSAGE_MAX_BYTES: usize = 1024;
/// Buffer sizes of a connection's halves (a small frame leaves in one send).
const BUFFER_BYTES: usize = 64 << 10;
/// Capacity reserved up front for a frame's payload; the rest grows as its
/// bytes arrive, so a length alone never allocates megabytes.
const PAYLOAD_PREALLOC_MAX_BYTES: usize = 256 << 10;

/// Method: who are you (the answer is [`Hello`]).
pub const METHOD_HELLO: u8 = 1;
/// Method: store small shards (see the module doc for the payload).
pub const METHOD_PUT_SHARDS: u8 = 2;
/// Answer status: the payload is the method's answer.
pub const STATUS_OK: u8 = 0;
/// Answer status: the payload is `kind:u8` and a message.
pub const STATUS_ERROR: u8 = 1;

/// Bytes before a shard's id and data in a `putShards` request.
const SHARD_HEADER_BYTES: usize = 10;
/// Bytes before a failure's message in a `putShards` answer.
const FAILURE_HEADER_BYTES: usize = 7;

/// What a server says about itself on a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The engine shard (core) that serves this connection.
    pub serving_shard: u32,
    /// The server's engine shards.
    pub engine_shards: u32,
    pub node_id: String,
}

/// One shard of a `putShards` request, borrowed from its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardIn<'a> {
    pub id: &'a [u8],
    pub data: &'a [u8],
    pub crc32c: u32,
}

/// A shard of a `putShards` call that was not stored, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// Its position in the request.
    pub index: u32,
    pub kind: RemoteKind,
    pub message: String,
}

/// A call-level failure: nothing of the call was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub kind: RemoteKind,
    pub message: String,
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// `s` cut to at most [`MESSAGE_MAX_BYTES`] on a character boundary.
fn cut(s: &str) -> &str {
    if s.len() <= MESSAGE_MAX_BYTES {
        return s;
    }
    let mut end = MESSAGE_MAX_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Reads little-endian fields off a payload, every length checked.
struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, at: 0 }
    }

    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.buf.len());
        let Some(end) = end else {
            return Err(format!(
                "{what} needs {n} bytes at offset {} of a {}-byte payload",
                self.at,
                self.buf.len()
            ));
        };
        let b = &self.buf[self.at..end];
        self.at = end;
        Ok(b)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.bytes(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn end(&self, what: &str) -> Result<(), String> {
        if self.at != self.buf.len() {
            return Err(format!(
                "{what} has {} bytes after its end",
                self.buf.len() - self.at
            ));
        }
        Ok(())
    }
}

/// A whole frame (header and payload) with `payload` written by `body`.
fn frame(id: u64, code: u8, body: impl FnOnce(&mut Vec<u8>), size_hint: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER_BYTES + size_hint);
    f.extend_from_slice(&[0u8; 4]);
    f.extend_from_slice(&id.to_le_bytes());
    f.extend_from_slice(&[code, 0, 0, 0]);
    body(&mut f);
    let len = (f.len() - HEADER_BYTES) as u32;
    f[..4].copy_from_slice(&len.to_le_bytes());
    f
}

/// A `putShards` request frame. The caller keeps the batch within
/// [`PUT_BATCH_SHARDS_MAX`] and [`PUT_BATCH_DATA_MAX_BYTES`], and each id
/// within `u16` bytes.
pub fn put_shards_frame<'a>(id: u64, shards: impl Iterator<Item = ShardIn<'a>> + Clone) -> Vec<u8> {
    let hint = shards
        .clone()
        .map(|s| SHARD_HEADER_BYTES + s.id.len() + s.data.len())
        .sum::<usize>()
        + 4;
    frame(
        id,
        METHOD_PUT_SHARDS,
        |f| {
            let at = f.len();
            f.extend_from_slice(&0u32.to_le_bytes());
            let mut n = 0u32;
            for s in shards {
                f.extend_from_slice(&(s.id.len() as u16).to_le_bytes());
                f.extend_from_slice(&(s.data.len() as u32).to_le_bytes());
                f.extend_from_slice(&s.crc32c.to_le_bytes());
                f.extend_from_slice(s.id);
                f.extend_from_slice(s.data);
                n += 1;
            }
            f[at..at + 4].copy_from_slice(&n.to_le_bytes());
        },
        hint,
    )
}

/// The shards of a `putShards` request payload. Only the structure is
/// checked here (every length within the payload); ids, counts and
/// checksums are the server's to judge, shard by shard.
pub fn decode_put_shards(payload: &[u8]) -> Result<Vec<ShardIn<'_>>, String> {
    let mut r = Fields::new(payload);
    let n = r.u32("the shard count")? as usize;
    // Every shard takes at least its header: a count beyond that is a lie,
    // refused before anything is allocated for it.
    if n > payload.len() / SHARD_HEADER_BYTES {
        return Err(format!(
            "putShards claims {n} shards in a {}-byte payload",
            payload.len()
        ));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let id_len = r.u16("a shard's id length")? as usize;
        let data_len = r.u32("a shard's data length")? as usize;
        let crc32c = r.u32("a shard's crc32c")?;
        let id = r.bytes(id_len, "a shard's id")?;
        let data = r
            .bytes(data_len, "a shard's data")
            .map_err(|e| format!("shard {i}: {e}"))?;
        out.push(ShardIn { id, data, crc32c });
    }
    r.end("the putShards request")?;
    Ok(out)
}

/// A `putShards` answer payload listing the shards that failed.
pub fn encode_failures(failed: &[Failed]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + failed.len() * (FAILURE_HEADER_BYTES + 64));
    b.extend_from_slice(&(failed.len() as u32).to_le_bytes());
    for f in failed {
        let m = cut(&f.message);
        b.extend_from_slice(&f.index.to_le_bytes());
        b.push(f.kind.to_u8());
        b.extend_from_slice(&(m.len() as u16).to_le_bytes());
        b.extend_from_slice(m.as_bytes());
    }
    b
}

/// The failed shards of a `putShards` answer payload.
pub fn decode_failures(payload: &[u8]) -> Result<Vec<Failed>, String> {
    let mut r = Fields::new(payload);
    let n = r.u32("the failure count")? as usize;
    if n > payload.len() / FAILURE_HEADER_BYTES {
        return Err(format!(
            "a putShards answer claims {n} failures in a {}-byte payload",
            payload.len()
        ));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let index = r.u32("a failure's index")?;
        let kind = RemoteKind::from_u8(r.u8("a failure's kind")?);
        let len = r.u16("a failure's message length")? as usize;
        let message = String::from_utf8_lossy(r.bytes(len, "a failure's message")?).into_owned();
        out.push(Failed {
            index,
            kind,
            message,
        });
    }
    r.end("the putShards answer")?;
    Ok(out)
}

/// A call-level error payload.
pub fn encode_error(e: &CallError) -> Vec<u8> {
    let m = cut(&e.message);
    let mut b = Vec::with_capacity(1 + m.len());
    b.push(e.kind.to_u8());
    b.extend_from_slice(m.as_bytes());
    b
}

/// The call-level error of an error payload.
pub fn decode_error(payload: &[u8]) -> Result<CallError, String> {
    let Some((&k, m)) = payload.split_first() else {
        return Err("an error answer without its kind".into());
    };
    Ok(CallError {
        kind: RemoteKind::from_u8(k),
        message: String::from_utf8_lossy(m).into_owned(),
    })
}

/// A `hello` answer payload.
pub fn encode_hello(h: &Hello) -> Vec<u8> {
    let id = cut(&h.node_id);
    let mut b = Vec::with_capacity(10 + id.len());
    b.extend_from_slice(&h.serving_shard.to_le_bytes());
    b.extend_from_slice(&h.engine_shards.to_le_bytes());
    b.extend_from_slice(&(id.len() as u16).to_le_bytes());
    b.extend_from_slice(id.as_bytes());
    b
}

/// The [`Hello`] of a `hello` answer payload.
pub fn decode_hello(payload: &[u8]) -> Result<Hello, String> {
    let mut r = Fields::new(payload);
    let serving_shard = r.u32("the serving shard")?;
    let engine_shards = r.u32("the engine shard count")?;
    let len = r.u16("the node id's length")? as usize;
    let node_id = String::from_utf8_lossy(r.bytes(len, "the node id")?).into_owned();
    r.end("the hello answer")?;
    Ok(Hello {
        serving_shard,
        engine_shards,
        node_id,
    })
}

/// A frame header: payload length (checked against the limit), id, code.
fn parse_header(h: &[u8; HEADER_BYTES]) -> std::io::Result<(usize, u64, u8)> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if len > FRAME_MAX_BYTES {
        return Err(invalid(format!(
            "a frame of {len} bytes is over the {FRAME_MAX_BYTES}-byte limit"
        )));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[4..12]);
    Ok((len, u64::from_le_bytes(id), h[12]))
}

/// Reads one frame; `Ok(None)` at a clean end (EOF between frames).
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(u64, u8, Vec<u8>)>> {
    let mut h = [0u8; HEADER_BYTES];
    let mut at = 0;
    while at < HEADER_BYTES {
        let n = r.read(&mut h[at..]).await?;
        if n == 0 {
            if at == 0 {
                return Ok(None);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("a frame header ended after {at} of its {HEADER_BYTES} bytes"),
            ));
        }
        at += n;
    }
    let (len, id, code) = parse_header(&h)?;
    let mut payload = Vec::with_capacity(len.min(PAYLOAD_PREALLOC_MAX_BYTES));
    let got = r.take(len as u64).read_to_end(&mut payload).await?;
    if got != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("a frame ended after {got} of its {len} bytes"),
        ));
    }
    Ok(Some((id, code, payload)))
}

/// An answer frame for request `id`.
fn answer_frame(id: u64, result: Result<Vec<u8>, CallError>) -> Vec<u8> {
    let (status, body) = match result {
        Ok(b) if b.len() <= FRAME_MAX_BYTES => (STATUS_OK, b),
        Ok(b) => (
            STATUS_ERROR,
            encode_error(&CallError {
                kind: RemoteKind::Internal,
                message: format!(
                    "the answer of {} bytes is over the {FRAME_MAX_BYTES}-byte limit",
                    b.len()
                ),
            }),
        ),
        Err(e) => (STATUS_ERROR, encode_error(&e)),
    };
    let n = body.len();
    frame(id, status, |f| f.extend_from_slice(&body), n)
}

/// Writes queued frames, flushing once the queue is empty (frames that are
/// ready together leave in one send); ends when every sender is gone,
/// without a half-close: the socket closes when its read half is dropped
/// too. (A server that half-closed first would hold its port in TIME_WAIT
/// after a restart, and a restarted chunk server must bind it again.) `T`
/// is held until its frame is written (a server's request slot).
async fn write_frames<W: AsyncWrite + Unpin, T>(
    w: W,
    mut rx: mpsc::UnboundedReceiver<(Vec<u8>, T)>,
) -> std::io::Result<()> {
    let mut w = futures::io::BufWriter::with_capacity(BUFFER_BYTES, w);
    while let Some((frame, held)) = rx.next().await {
        w.write_all(&frame).await?;
        drop(held);
        while let Ok((frame, held)) = rx.try_recv() {
            w.write_all(&frame).await?;
            drop(held);
        }
        w.flush().await?;
    }
    w.flush().await
}

/// A stream whose first bytes were already read (by [`sniff`]) and are
/// given back before the rest.
pub struct Prefixed<S> {
    prefix: [u8; PREAMBLE.len()],
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.len().min(this.prefix.len() - this.at);
            buf[..n].copy_from_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// What a new connection speaks.
pub enum Sniffed<S> {
    /// This protocol (its preamble consumed): serve it with [`serve`].
    Frames(S),
    /// Anything else (Cap'n Proto), its first bytes given back.
    Other(Prefixed<S>),
}

/// Reads a new connection's first 8 bytes and tells which protocol it
/// speaks. Every dialer of a chunk server speaks first (a Cap'n Proto
/// client sends its bootstrap call, longer than 8 bytes).
pub async fn sniff<S: AsyncRead + Unpin>(mut stream: S) -> std::io::Result<Sniffed<S>> {
    let mut prefix = [0u8; PREAMBLE.len()];
    stream.read_exact(&mut prefix).await?;
    if prefix == PREAMBLE {
        Ok(Sniffed::Frames(stream))
    } else {
        Ok(Sniffed::Other(Prefixed {
            prefix,
            at: 0,
            inner: stream,
        }))
    }
}

/// What a server does for framed requests.
pub trait FrameService {
    /// Who this connection talks to.
    fn hello(&self) -> Hello;
    /// Stores the shards: each one's failure by position, or a call-level
    /// failure (nothing stored).
    fn put_shards<'a>(
        &'a self,
        shards: Vec<ShardIn<'a>>,
    ) -> LocalBoxFuture<'a, Result<Vec<Failed>, CallError>>;
}

/// Runs one request.
async fn handle(
    service: &dyn FrameService,
    method: u8,
    payload: &[u8],
) -> Result<Vec<u8>, CallError> {
    match method {
        METHOD_HELLO => Ok(encode_hello(&service.hello())),
        METHOD_PUT_SHARDS => {
            let shards = decode_put_shards(payload).map_err(|m| CallError {
                kind: RemoteKind::InvalidArgument,
                message: format!("malformed putShards request: {m}"),
            })?;
            Ok(encode_failures(&service.put_shards(shards).await?))
        }
        m => Err(CallError {
            kind: RemoteKind::InvalidArgument,
            message: format!(
                "unknown method {m}: this chunk server is older than the client; upgrade it"
            ),
        }),
    }
}

/// The request tasks of a served connection, cancelled when it is
/// dropped; each removes itself when it finishes.
#[derive(Default)]
struct Running(Rc<RefCell<HashMap<u64, glommio::task::JoinHandle<()>>>>);

impl Drop for Running {
    fn drop(&mut self) {
        for (_, task) in self.0.borrow_mut().drain() {
            task.cancel();
        }
    }
}

/// Serves request frames of `stream` (whose preamble [`sniff`] consumed)
/// with `service` after sending the preamble back, until the peer closes
/// or sends something malformed (returned as the error). Requests run
/// concurrently, at most [`SERVED_INFLIGHT_MAX`] at once.
pub async fn serve<S: Io>(stream: S, service: Rc<dyn FrameService>) -> std::io::Result<()> {
    let (r, mut w) = stream.split();
    w.write_all(&PREAMBLE).await?;
    let mut r = futures::io::BufReader::with_capacity(BUFFER_BYTES, r);
    let slots = Rc::new(glommio::sync::Semaphore::new(SERVED_INFLIGHT_MAX as u64));
    let (tx, rx) = mpsc::unbounded::<(Vec<u8>, glommio::sync::StaticPermit)>();
    let writer = glommio::spawn_local(write_frames(w, rx));
    // Requests run as tasks of their own, cancelled with this future (a
    // server that stops a connection stops its requests: nothing of the
    // connection outlives it, e.g. into the engine's close).
    let running = Running::default();
    let next_task = Cell::new(0u64);
    let read = async {
        loop {
            let permit = slots
                .acquire_static_permit(1)
                .await
                .map_err(|e| std::io::Error::other(format!("the request slots closed: {e}")))?;
            let Some((id, method, payload)) = read_frame(&mut r).await? else {
                return Ok(());
            };
            let service = service.clone();
            let tx = tx.clone();
            let key = next_task.get();
            next_task.set(key + 1);
            let tasks = running.0.clone();
            let task = glommio::spawn_local(async move {
                let answer = answer_frame(id, handle(&*service, method, &payload).await);
                // A send fails only when the writer ended (the connection
                // broke): nobody waits for this answer then.
                let _ = tx.unbounded_send((answer, permit));
                tasks.borrow_mut().remove(&key);
            })
            .detach();
            running.0.borrow_mut().insert(key, task);
        }
    };
    let read: std::io::Result<()> = read.await;
    // The writer ends once every request's sender is gone (answers of
    // requests still running are written first).
    drop(tx);
    let written = writer.await;
    read.and(written)
}

/// Waiting calls of a client connection, by id.
type Pending = RefCell<HashMap<u64, oneshot::Sender<std::io::Result<(u8, Vec<u8>)>>>>;

/// What a client connection's tasks share.
struct ConnState {
    pending: Pending,
    next_id: Cell<u64>,
    /// Why the connection is unusable, once it is.
    broken: RefCell<Option<String>>,
}

impl ConnState {
    /// Marks the connection broken and fails every waiting call.
    fn fail_all(&self, why: String) {
        let waiting: Vec<_> = self.pending.borrow_mut().drain().collect();
        for (_, w) in waiting {
            let _ = w.send(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                why.clone(),
            )));
        }
        self.broken.borrow_mut().get_or_insert(why);
    }
}

/// Removes a call from the waiting ones when its caller stops waiting (a
/// timeout), so that a late answer is dropped.
struct PendingGuard<'a> {
    state: &'a ConnState,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.state.pending.borrow_mut().remove(&self.id);
    }
}

/// The client side of one framed connection, on one glommio executor.
/// Dropping it closes the connection.
pub struct FrameConn {
    state: Rc<ConnState>,
    tx: mpsc::UnboundedSender<(Vec<u8>, ())>,
    reader: Option<glommio::task::JoinHandle<()>>,
}

impl Drop for FrameConn {
    fn drop(&mut self) {
        // The writer ends with the sender (closing the write half); the
        // reader is stopped here rather than left waiting for the server.
        self.tx.close_channel();
        if let Some(r) = self.reader.take() {
            r.cancel();
        }
    }
}

impl FrameConn {
    /// Speaks this protocol on `stream`: sends the preamble and a `hello`,
    /// and returns the connection with the server's answer, or `None` when
    /// the server does not speak it (it answered something other than the
    /// preamble). A connection closed before any answer is an error.
    /// The caller bounds the time this takes.
    pub async fn open<S: Io>(stream: S) -> std::io::Result<Option<(FrameConn, Hello)>> {
        let (r, mut w) = stream.split();
        let mut hello = PREAMBLE.to_vec();
        hello.extend_from_slice(&frame(0, METHOD_HELLO, |_| {}, 0));
        w.write_all(&hello).await?;
        w.flush().await?;
        let mut r = futures::io::BufReader::with_capacity(BUFFER_BYTES, r);
        let mut back = [0u8; PREAMBLE.len()];
        let mut at = 0;
        while at < back.len() {
            match r.read(&mut back[at..]).await {
                // Closed without a word: not an older server (that answers
                // the preamble with a Cap'n Proto abort) but one refusing
                // connections (its per-core limit) or stopping.
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the chunk server closed a new connection before answering (its connection limit, or stopping)",
                    ))
                }
                Ok(n) => at += n,
                Err(e) => return Err(e),
            }
        }
        if back != PREAMBLE {
            return Ok(None);
        }
        let hello = match read_frame(&mut r).await? {
            Some((0, STATUS_OK, p)) => decode_hello(&p).map_err(invalid)?,
            Some((0, STATUS_ERROR, p)) => {
                let e = decode_error(&p).map_err(invalid)?;
                return Err(std::io::Error::other(format!(
                    "the server refused hello: {}",
                    e.message
                )));
            }
            Some((id, status, _)) => {
                return Err(invalid(format!(
                    "expected the answer to hello, got one for call {id} (status {status})"
                )))
            }
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before answering hello",
                ))
            }
        };
        let state = Rc::new(ConnState {
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            broken: RefCell::new(None),
        });
        let (tx, rx) = mpsc::unbounded::<(Vec<u8>, ())>();
        let st = state.clone();
        glommio::spawn_local(async move {
            if let Err(e) = write_frames(w, rx).await {
                st.fail_all(format!("writing to the chunk server failed: {e}"));
            }
        })
        .detach();
        let st = state.clone();
        let stop_writer = tx.clone();
        let reader = glommio::spawn_local(async move {
            let why = loop {
                match read_frame(&mut r).await {
                    Ok(Some((id, status, payload))) => {
                        // An id nobody waits for is a call whose caller
                        // gave up: its answer is dropped.
                        if let Some(w) = st.pending.borrow_mut().remove(&id) {
                            let _ = w.send(Ok((status, payload)));
                        }
                    }
                    Ok(None) => break "the chunk server closed the connection".to_string(),
                    Err(e) => break format!("reading from the chunk server failed: {e}"),
                }
            };
            st.fail_all(why);
            // The server is gone: close this end now (the writer ends and
            // drops its half) rather than when the connection is dropped.
            stop_writer.close_channel();
        })
        .detach();
        Ok(Some((
            FrameConn {
                state,
                tx,
                reader: Some(reader),
            },
            hello,
        )))
    }

    /// Why this connection can no longer be used, once it cannot.
    pub fn broken(&self) -> Option<String> {
        self.state.broken.borrow().clone()
    }

    /// Whether this connection can no longer be used (no copy of why).
    pub fn is_broken(&self) -> bool {
        self.state.broken.borrow().is_some()
    }

    /// Sends the frame `build` makes for a fresh call id and waits for its
    /// answer: `(status, payload)`. Fails at once on a broken connection
    /// or with [`CALLS_INFLIGHT_MAX`] calls already waiting.
    pub async fn call(&self, build: impl FnOnce(u64) -> Vec<u8>) -> std::io::Result<(u8, Vec<u8>)> {
        if let Some(why) = self.broken() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                why,
            ));
        }
        if self.state.pending.borrow().len() >= CALLS_INFLIGHT_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("{CALLS_INFLIGHT_MAX} calls already wait on this connection; retry"),
            ));
        }
        let id = self.state.next_id.get();
        self.state.next_id.set(id.wrapping_add(1).max(1));
        let frame = build(id);
        if frame.len() > HEADER_BYTES + FRAME_MAX_BYTES {
            return Err(invalid(format!(
                "a request of {} bytes is over the {FRAME_MAX_BYTES}-byte limit",
                frame.len() - HEADER_BYTES
            )));
        }
        let (done, answer) = oneshot::channel();
        self.state.pending.borrow_mut().insert(id, done);
        let _guard = PendingGuard {
            state: &self.state,
            id,
        };
        if self.tx.unbounded_send((frame, ())).is_err() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the connection's writer ended",
            ));
        }
        match answer.await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                self.broken()
                    .unwrap_or_else(|| "the connection ended".to_string()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kinds() -> impl Strategy<Value = RemoteKind> {
        (0u8..8).prop_map(RemoteKind::from_u8)
    }

    proptest! {
        /// Any batch encodes to a frame whose payload decodes to the same
        /// shards, and whose header says its length.
        #[test]
        fn put_shards_round_trip(
            shards in prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 0..130), prop::collection::vec(any::<u8>(), 0..3000), any::<u32>()),
                0..40),
            call in any::<u64>(),
        ) {
            let ins: Vec<ShardIn> = shards.iter().map(|(i, d, c)| ShardIn { id: i, data: d, crc32c: *c }).collect();
            let f = put_shards_frame(call, ins.iter().copied());
            let mut h = [0u8; HEADER_BYTES];
            h.copy_from_slice(&f[..HEADER_BYTES]);
            let (len, id, code) = parse_header(&h).unwrap();
            prop_assert_eq!((len, id, code), (f.len() - HEADER_BYTES, call, METHOD_PUT_SHARDS));
            prop_assert_eq!(decode_put_shards(&f[HEADER_BYTES..]).unwrap(), ins);
        }

        /// Failures, errors and hellos come back as sent (messages cut to
        /// the limit on a character boundary).
        #[test]
        fn answers_round_trip(
            failed in prop::collection::vec((any::<u32>(), kinds(), ".{0,40}"), 0..30),
            long in ".{0,2000}",
            node in ".{0,60}",
            serving in any::<u32>(),
            shards in any::<u32>(),
        ) {
            let failed: Vec<Failed> = failed.into_iter().map(|(index, kind, message)| Failed { index, kind, message }).collect();
            prop_assert_eq!(decode_failures(&encode_failures(&failed)).unwrap(), failed);
            let e = CallError { kind: RemoteKind::DiskFull, message: long.clone() };
            let back = decode_error(&encode_error(&e)).unwrap();
            prop_assert_eq!(back.kind, RemoteKind::DiskFull);
            prop_assert!(back.message.len() <= MESSAGE_MAX_BYTES);
            prop_assert!(long.starts_with(&back.message));
            let h = Hello { serving_shard: serving, engine_shards: shards, node_id: node };
            prop_assert_eq!(decode_hello(&encode_hello(&h)).unwrap(), h);
        }

        /// Arbitrary bytes never panic a decoder, and a truncated or
        /// extended valid payload is refused, never misread.
        #[test]
        fn decoders_refuse_garbage(
            junk in prop::collection::vec(any::<u8>(), 0..300),
            shards in prop::collection::vec((prop::collection::vec(any::<u8>(), 1..20), prop::collection::vec(any::<u8>(), 0..50)), 1..8),
            cut_at in any::<prop::sample::Index>(),
            extra in 1u8..=255,
        ) {
            let _ = decode_put_shards(&junk);
            let _ = decode_failures(&junk);
            let _ = decode_hello(&junk);
            let _ = decode_error(&junk);
            let ins: Vec<ShardIn> = shards.iter().map(|(i, d)| ShardIn { id: i, data: d, crc32c: 7 }).collect();
            let f = put_shards_frame(1, ins.iter().copied());
            let p = &f[HEADER_BYTES..];
            let at = cut_at.index(p.len());
            prop_assert!(decode_put_shards(&p[..at]).is_err(), "a payload cut at {} of {} decoded", at, p.len());
            let mut longer = p.to_vec();
            longer.push(extra);
            prop_assert!(decode_put_shards(&longer).is_err());
        }
    }

    /// A header claiming more than the limit is refused before anything is
    /// allocated for it.
    #[test]
    fn oversized_frame_header_is_refused() {
        let mut h = [0u8; HEADER_BYTES];
        h[..4].copy_from_slice(&((FRAME_MAX_BYTES + 1) as u32).to_le_bytes());
        let e = parse_header(&h).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        h[..4].copy_from_slice(&(FRAME_MAX_BYTES as u32).to_le_bytes());
        assert!(parse_header(&h).is_ok());
    }

    /// The preamble can never start a Cap'n Proto stream of this crate's
    /// limits: read as a segment table it claims more segments than any
    /// message may hold.
    #[test]
    fn preamble_is_not_a_capnp_segment_table() {
        let segments =
            u32::from_le_bytes([PREAMBLE[0], PREAMBLE[1], PREAMBLE[2], PREAMBLE[3]]) as u64 + 1;
        assert!(segments > 512, "{segments}");
    }
}
