//! The framed transport for raft messages between replicas: length-prefixed
//! frames with request ids on one connection per peer, instead of a
//! Cap'n Proto call per message.
//!
//! Why: raft replica traffic is one opaque bincode payload per message, and
//! Cap'n Proto RPC's per-call machinery (question tables, promises, message
//! building, a capability per answer) was ~30 % of every replica's CPU under
//! 4 KiB PUTs (docs/BENCHMARKS.md, "where metad's CPU goes under 4 KiB
//! PUTs"); followers do almost nothing else. A frame costs a header and a
//! copy.
//!
//! Owns: the wire format, the serving loop, and the client side
//! ([`Conn`]): many calls in flight on one connection, answered in any
//! order, matched by id.
//!
//! Wire: the dialer first sends [`PREAMBLE`] (8 bytes a Cap'n Proto
//! stream can never begin with: read as a segment table they claim over a
//! billion segments), so one listener serves both, and the server sends it
//! back before any answer (a peer that does not is not speaking this
//! protocol: an older replica, whose Cap'n Proto answers with an abort);
//! then request frames
//! `len:u32 id:u64 group:u32 kind:u8 pad:[u8;3] payload[len]`, answered by
//! `len:u32 id:u64 status:u8 pad:[u8;3] payload[len]`, little-endian;
//! status [`STATUS_OK`] carries the handler's bytes, [`STATUS_ERROR`] a
//! UTF-8 message.
//!
//! Invariants: no frame over [`RAFT_MESSAGE_MAX_BYTES`] is read or sent
//! (a longer length ends the connection before anything is allocated for
//! it); at most [`SERVED_INFLIGHT_MAX`] requests of one connection are
//! being handled or waiting to be written, and at most
//! [`CALLS_INFLIGHT_MAX`] calls wait on one client connection, so a peer
//! can make neither side hold unbounded memory; a connection that reads a
//! malformed frame ends (its calls fail and the caller reconnects), it is
//! never resynchronised; nothing read from the socket panics.

use crate::limits::RAFT_MESSAGE_MAX_BYTES;
use crate::net::PeerError;
use crate::types::NodeId;
use futures::future::LocalBoxFuture;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

/// What a dialer sends first to speak this protocol rather than Cap'n Proto.
pub const PREAMBLE: [u8; 8] = *b"TSRAFT\x00\x01";
/// Bytes of a request frame's header.
const REQUEST_HEADER_BYTES: usize = 20;
/// Bytes of an answer frame's header.
const ANSWER_HEADER_BYTES: usize = 16;
/// Answer status: the payload is the handler's answer.
pub const STATUS_OK: u8 = 0;
/// Answer status: the payload is a UTF-8 message saying why it failed.
pub const STATUS_ERROR: u8 = 1;
/// Requests of one connection a server handles (or holds answers of) at
/// once; the next frame is not read until one finishes. Raft sends one
/// append per group and peer at a time, so this is far above need.
pub const SERVED_INFLIGHT_MAX: usize = 256;
/// Calls one client connection lets wait for answers at once.
pub const CALLS_INFLIGHT_MAX: usize = 1024;
/// Buffer sizes of a connection's halves (a small frame leaves in one send).
const BUFFER_BYTES: usize = 64 << 10;
/// Capacity reserved up front for a frame's payload; the rest grows as its
/// bytes arrive, so a length alone never allocates 64 MiB.
const PAYLOAD_PREALLOC_MAX_BYTES: usize = 1 << 20;

/// Serves a handler: answers each request frame of one group, kind and
/// payload with the bytes it returns, or with its error message.
pub type Handler = Rc<dyn Fn(u32, u8, Vec<u8>) -> LocalBoxFuture<'static, Result<Vec<u8>, String>>>;

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Reads `len` bytes (already checked against the limit) into a new vector
/// that grows as they arrive.
async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len.min(PAYLOAD_PREALLOC_MAX_BYTES));
    let got = r.take(len as u64).read_to_end(&mut buf).await?;
    if got != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("a frame ended after {got} of its {len} bytes"),
        ));
    }
    Ok(buf)
}

/// Reads a frame header; `Ok(None)` at a clean end (EOF between frames).
async fn read_header<R: AsyncRead + Unpin, const N: usize>(
    r: &mut R,
) -> std::io::Result<Option<[u8; N]>> {
    let mut h = [0u8; N];
    let mut at = 0;
    while at < N {
        let n = r.read(&mut h[at..]).await?;
        if n == 0 {
            if at == 0 {
                return Ok(None);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("a frame header ended after {at} of its {N} bytes"),
            ));
        }
        at += n;
    }
    Ok(Some(h))
}

fn frame_len(h: &[u8]) -> std::io::Result<usize> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if len > RAFT_MESSAGE_MAX_BYTES {
        return Err(invalid(format!(
            "a frame of {len} bytes is over the {RAFT_MESSAGE_MAX_BYTES}-byte limit"
        )));
    }
    Ok(len)
}

fn u64_at(h: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[at..at + 8]);
    u64::from_le_bytes(b)
}

fn answer_frame(id: u64, result: Result<Vec<u8>, String>) -> Vec<u8> {
    let (status, mut body) = match result {
        Ok(b) => (STATUS_OK, b),
        Err(m) => (STATUS_ERROR, m.into_bytes()),
    };
    if body.len() > RAFT_MESSAGE_MAX_BYTES {
        // The peer would refuse it and drop the connection; say why instead.
        body = format!(
            "the answer of {} bytes is over the {RAFT_MESSAGE_MAX_BYTES}-byte limit",
            body.len()
        )
        .into_bytes();
        return answer_frame(id, Err(String::from_utf8_lossy(&body).into_owned()));
    }
    let mut f = Vec::with_capacity(ANSWER_HEADER_BYTES + body.len());
    f.extend_from_slice(&(body.len() as u32).to_le_bytes());
    f.extend_from_slice(&id.to_le_bytes());
    f.extend_from_slice(&[status, 0, 0, 0]);
    f.extend_from_slice(&body);
    f
}

/// Writes queued frames, flushing once the queue is empty (answers and
/// calls that are ready together leave in one send); ends when every
/// sender is gone or `stop` fires, then shuts the write half.
async fn write_frames<W: AsyncWrite + Unpin, T>(
    w: W,
    mut rx: mpsc::UnboundedReceiver<(Vec<u8>, T)>,
    stop: Rc<Notify>,
) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(BUFFER_BYTES, w);
    loop {
        let first = tokio::select! {
            f = rx.recv() => f,
            _ = stop.notified() => None,
        };
        let Some((frame, _held)) = first else { break };
        w.write_all(&frame).await?;
        drop(_held);
        while let Ok((frame, _held)) = rx.try_recv() {
            w.write_all(&frame).await?;
        }
        w.flush().await?;
    }
    w.flush().await?;
    w.shutdown().await
}

/// Serves request frames read from `r` (once [`sniff`] has read the
/// dialer's preamble) with `handler`, answering on `w` after sending the
/// preamble back, until the peer closes or sends something malformed
/// (returned as the error). Requests run concurrently, at most
/// [`SERVED_INFLIGHT_MAX`] at once.
pub async fn serve<R, W>(r: R, w: W, handler: Handler) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + 'static,
{
    let mut w = w;
    w.write_all(&PREAMBLE).await?;
    let mut r = BufReader::with_capacity(BUFFER_BYTES, r);
    let (tx, rx) = mpsc::unbounded_channel::<(Vec<u8>, OwnedSemaphorePermit)>();
    let stop = Rc::new(Notify::new());
    let writer = tokio::task::spawn_local(write_frames(w, rx, stop.clone()));
    let slots = std::sync::Arc::new(Semaphore::new(SERVED_INFLIGHT_MAX));
    let read = async {
        loop {
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| std::io::Error::other("the request slots closed"))?;
            let Some(h) = read_header::<_, REQUEST_HEADER_BYTES>(&mut r).await? else {
                return Ok(());
            };
            let len = frame_len(&h)?;
            let id = u64_at(&h, 4);
            let group = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
            let kind = h[16];
            let payload = read_payload(&mut r, len).await?;
            let tx = tx.clone();
            let fut = handler(group, kind, payload);
            tokio::task::spawn_local(async move {
                let answer = answer_frame(id, fut.await);
                // A send fails only once the writer has ended (the
                // connection is gone): the answer has nowhere to go.
                let _ = tx.send((answer, permit));
            });
        }
    };
    let result: std::io::Result<()> = read.await;
    drop(tx);
    if result.is_err() {
        stop.notify_one();
    }
    // Answers of requests still running are written before the write half
    // closes (the handlers hold the other senders).
    match writer.await {
        Ok(Ok(())) => result,
        Ok(Err(e)) => result.and(Err(e)),
        Err(e) => result.and(Err(std::io::Error::other(format!(
            "the frame writer failed: {e}"
        )))),
    }
}

type Waiters = RefCell<HashMap<u64, oneshot::Sender<Result<Vec<u8>, String>>>>;

/// Shared by a [`Conn`] and its reader task.
struct Shared {
    waiters: Waiters,
    closed: Cell<bool>,
    why_closed: RefCell<String>,
    spoke_protocol: Cell<bool>,
    stop: Rc<Notify>,
}

impl Shared {
    fn close(&self, why: String) {
        if !self.closed.replace(true) {
            *self.why_closed.borrow_mut() = why;
        }
        // Dropping the senders wakes every waiting call with `Closed`.
        self.waiters.borrow_mut().clear();
        self.stop.notify_one();
    }
}

/// The client side of one framed connection to a peer: calls from any task
/// of this thread share it, each waiting for its own answer.
pub struct Conn {
    out: mpsc::UnboundedSender<(Vec<u8>, ())>,
    shared: Rc<Shared>,
    next_id: Cell<u64>,
}

/// Removes a call's waiter when the call is dropped before its answer
/// (timed out), so the map holds only calls that still wait.
struct WaiterGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.shared.waiters.borrow_mut().remove(&self.id);
    }
}

impl Conn {
    /// Starts the protocol on a connected `stream` (sends the preamble);
    /// its reader and writer run as local tasks until the connection ends
    /// or the `Conn` is dropped.
    pub fn start<S: AsyncRead + AsyncWrite + 'static>(stream: S) -> Conn {
        let (r, w) = tokio::io::split(stream);
        let (out, rx) = mpsc::unbounded_channel();
        let stop = Rc::new(Notify::new());
        let shared = Rc::new(Shared {
            waiters: RefCell::new(HashMap::new()),
            closed: Cell::new(false),
            why_closed: RefCell::new(String::new()),
            spoke_protocol: Cell::new(false),
            stop: stop.clone(),
        });
        // First in the queue, so first on the wire.
        let _ = out.send((PREAMBLE.to_vec(), ()));
        let writer_shared = shared.clone();
        tokio::task::spawn_local(async move {
            let r = write_frames(w, rx, stop).await;
            writer_shared.close(match r {
                Ok(()) => "closed".into(),
                Err(e) => format!("writing failed: {e}"),
            });
        });
        let reader_shared = shared.clone();
        tokio::task::spawn_local(async move {
            let why = match read_answers(r, &reader_shared).await {
                Ok(()) => "the peer closed the connection".to_string(),
                Err(e) => e.to_string(),
            };
            reader_shared.close(why);
        });
        Conn {
            out,
            shared,
            next_id: Cell::new(1),
        }
    }

    /// Whether the connection has ended (its calls fail; make a new one).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.get()
    }

    /// Whether the peer sent the preamble back: one whose connection ends
    /// before it does may not speak this protocol (an older replica).
    pub fn spoke_protocol(&self) -> bool {
        self.shared.spoke_protocol.get()
    }

    /// Sends `msg` (bincode) to `group` of peer `target` as a message of
    /// `kind` and waits for the answer's bytes. Not bounded in time: the
    /// caller puts its deadline on it (dropping the call forgets its
    /// answer). After a failure, [`Conn::is_closed`] says whether the
    /// connection is gone.
    pub async fn call(
        &self,
        target: NodeId,
        group: u32,
        kind: u8,
        msg: &impl Serialize,
    ) -> Result<Vec<u8>, PeerError> {
        let closed = |why: &RefCell<String>| {
            PeerError::Call(
                target,
                format!("the connection ended before the answer: {}", why.borrow()),
            )
        };
        if self.is_closed() {
            return Err(closed(&self.shared.why_closed));
        }
        if self.shared.waiters.borrow().len() >= CALLS_INFLIGHT_MAX {
            return Err(PeerError::Call(
                target,
                format!("{CALLS_INFLIGHT_MAX} calls already wait on this connection"),
            ));
        }
        let size = bincode::serialized_size(msg)
            .map_err(|e| PeerError::Call(target, format!("a raft message does not encode: {e}")))?;
        if size > RAFT_MESSAGE_MAX_BYTES as u64 {
            return Err(PeerError::Call(
                target,
                format!(
                "a raft message of {size} bytes is over the {RAFT_MESSAGE_MAX_BYTES}-byte limit"
            ),
            ));
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let mut frame = Vec::with_capacity(REQUEST_HEADER_BYTES + size as usize);
        frame.extend_from_slice(&(size as u32).to_le_bytes());
        frame.extend_from_slice(&id.to_le_bytes());
        frame.extend_from_slice(&group.to_le_bytes());
        frame.extend_from_slice(&[kind, 0, 0, 0]);
        bincode::serialize_into(&mut frame, msg)
            .map_err(|e| PeerError::Call(target, format!("a raft message does not encode: {e}")))?;
        if frame.len() != REQUEST_HEADER_BYTES + size as usize {
            return Err(PeerError::Call(
                target,
                format!(
                    "a raft message encoded to {} bytes, not the {size} it measured",
                    frame.len() - REQUEST_HEADER_BYTES
                ),
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.shared.waiters.borrow_mut().insert(id, tx);
        let _guard = WaiterGuard {
            shared: &self.shared,
            id,
        };
        if self.out.send((frame, ())).is_err() {
            return Err(closed(&self.shared.why_closed));
        }
        match rx.await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(m)) => Err(PeerError::Call(target, m)),
            Err(_) => Err(closed(&self.shared.why_closed)),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Ends the writer (which shuts the write half: the peer sees EOF
        // and closes, which ends the reader).
        self.shared.stop.notify_one();
    }
}

/// Hands each answer read from `r` to the call waiting for it (answers of
/// calls that gave up are dropped); returns at EOF or a malformed frame.
async fn read_answers<R: AsyncRead + Unpin>(r: R, shared: &Shared) -> std::io::Result<()> {
    let mut r = BufReader::with_capacity(BUFFER_BYTES, r);
    let mut pre = [0u8; PREAMBLE.len()];
    r.read_exact(&mut pre).await?;
    if pre != PREAMBLE {
        return Err(invalid(
            "the peer does not speak the framed raft transport (an older replica?)".into(),
        ));
    }
    shared.spoke_protocol.set(true);
    loop {
        let Some(h) = read_header::<_, ANSWER_HEADER_BYTES>(&mut r).await? else {
            return Ok(());
        };
        let len = frame_len(&h)?;
        let id = u64_at(&h, 4);
        let status = h[12];
        let payload = read_payload(&mut r, len).await?;
        let answer = match status {
            STATUS_OK => Ok(payload),
            STATUS_ERROR => Err(String::from_utf8_lossy(&payload).into_owned()),
            s => return Err(invalid(format!("an answer with unknown status {s}"))),
        };
        let waiter = shared.waiters.borrow_mut().remove(&id);
        if let Some(w) = waiter {
            let _ = w.send(answer);
        }
    }
}

/// A stream whose first bytes were read already (to tell the protocols
/// apart) and are given back to its next reader.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if me.at < me.prefix.len() {
            let n = (me.prefix.len() - me.at).min(buf.remaining());
            buf.put_slice(&me.prefix[me.at..me.at + n]);
            me.at += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Reads up to the preamble's length from a fresh server-side connection;
/// returns whether it is this protocol, and the bytes read (to give back
/// to Cap'n Proto when it is not). `Ok(None)`: the peer closed first.
pub async fn sniff<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Option<(bool, Vec<u8>)>> {
    let mut got = Vec::with_capacity(PREAMBLE.len());
    let mut b = [0u8; PREAMBLE.len()];
    while got.len() < PREAMBLE.len() {
        let n = s.read(&mut b[..PREAMBLE.len() - got.len()]).await?;
        if n == 0 {
            return Ok(if got.is_empty() {
                None
            } else {
                Some((false, got))
            });
        }
        got.extend_from_slice(&b[..n]);
        // A Cap'n Proto peer may send fewer bytes first and wait; stop at
        // the first byte that rules the preamble out.
        if !PREAMBLE.starts_with(&got) {
            return Ok(Some((false, got)));
        }
    }
    Ok(Some((true, got)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::run_local;
    use proptest::prelude::*;
    use std::time::Duration;
    use tokio::net::UnixStream;

    /// Answers `group`, `kind` and the payload reversed, after a delay the
    /// payload's first byte chooses (so answers come back out of order);
    /// kind 9 fails.
    fn echo() -> Handler {
        Rc::new(|group, kind, payload: Vec<u8>| {
            Box::pin(async move {
                let delay = payload.first().copied().unwrap_or(0) % 8;
                tokio::time::sleep(Duration::from_millis(delay as u64)).await;
                if kind == 9 {
                    return Err(format!("kind 9 refused in group {group}"));
                }
                let mut out = group.to_le_bytes().to_vec();
                out.push(kind);
                out.extend(payload.iter().rev());
                Ok(out)
            })
        })
    }

    /// A server task on one end of a socket pair (after checking the
    /// preamble as a replica does) and a client on the other.
    async fn pair(handler: Handler) -> (Conn, tokio::task::JoinHandle<std::io::Result<()>>) {
        let (a, mut b) = UnixStream::pair().unwrap();
        let server = tokio::task::spawn_local(async move {
            let first = sniff(&mut b).await?;
            assert!(matches!(first, Some((true, _))), "no preamble: {first:?}");
            let (r, w) = tokio::io::split(b);
            serve(r, w, handler).await
        });
        (Conn::start(a), server)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Every call gets its own answer, whatever the sizes, however
        /// many are in flight and in whatever order the answers come.
        #[test]
        fn concurrent_calls_get_their_own_answers(
            calls in proptest::collection::vec(
                (0u32..4, 0u8..3, proptest::collection::vec(any::<u8>(), 0..3000)),
                1..40,
            )
        ) {
            run_local(async move {
                let (conn, server) = pair(echo()).await;
                let conn = Rc::new(conn);
                let mut tasks = Vec::new();
                for (group, kind, payload) in calls.clone() {
                    let conn = conn.clone();
                    tasks.push(tokio::task::spawn_local(async move {
                        let bytes = serde_bytes::ByteBuf::from(payload);
                        conn.call(7, group, kind, &bytes).await
                    }));
                }
                for ((group, kind, payload), t) in calls.into_iter().zip(tasks) {
                    let got = t.await.unwrap().expect("answered");
                    // The request went as bincode: an 8-byte length, then the bytes.
                    let mut sent = (payload.len() as u64).to_le_bytes().to_vec();
                    sent.extend(&payload);
                    let mut want = group.to_le_bytes().to_vec();
                    want.push(kind);
                    want.extend(sent.iter().rev());
                    assert_eq!(got, want);
                }
                drop(conn);
                // The client's end closes the connection cleanly.
                server.await.unwrap().expect("a clean end");
            });
        }
    }

    #[test]
    fn a_refused_call_carries_the_handlers_message() {
        run_local(async {
            let (conn, _server) = pair(echo()).await;
            let e = conn.call(7, 3, 9, &1u8).await.unwrap_err();
            assert!(e.to_string().contains("kind 9 refused in group 3"), "{e}");
            // The connection stays usable.
            assert!(conn.call(7, 3, 0, &1u8).await.is_ok());
        });
    }

    #[test]
    fn a_call_that_gave_up_leaves_the_connection_usable() {
        run_local(async {
            let slow: Handler = Rc::new(|_, kind, p: Vec<u8>| {
                Box::pin(async move {
                    if kind == 1 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Ok(p)
                })
            });
            let (conn, _server) = pair(slow).await;
            let r = tokio::time::timeout(Duration::from_millis(20), conn.call(7, 0, 1, &5u8)).await;
            assert!(r.is_err(), "the slow call should have timed out");
            assert_eq!(conn.call(7, 0, 0, &6u8).await.unwrap(), vec![6]);
            // The late answer arrives and is dropped; nothing waits for it.
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(conn.shared.waiters.borrow().is_empty());
            assert_eq!(conn.call(7, 0, 0, &7u8).await.unwrap(), vec![7]);
        });
    }

    /// Raw bytes to a serving replica: the preamble, then `frames`; returns
    /// how `serve` ended.
    fn serve_raw(frames: Vec<u8>) -> std::io::Result<()> {
        run_local(async move {
            let (mut a, mut b) = UnixStream::pair().unwrap();
            let server = tokio::task::spawn_local(async move {
                let first = sniff(&mut b).await?;
                assert!(matches!(first, Some((true, _))));
                let (r, w) = tokio::io::split(b);
                serve(r, w, echo()).await
            });
            a.write_all(&PREAMBLE).await.unwrap();
            a.write_all(&frames).await.unwrap();
            a.shutdown().await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .expect("serve ended")
                .unwrap()
        })
    }

    fn request(len: u32, id: u64, payload: &[u8]) -> Vec<u8> {
        let mut f = len.to_le_bytes().to_vec();
        f.extend(id.to_le_bytes());
        f.extend(0u32.to_le_bytes());
        f.extend([0, 0, 0, 0]);
        f.extend(payload);
        f
    }

    #[test]
    fn an_oversized_frame_ends_the_connection_with_a_reason() {
        let e = serve_raw(request(RAFT_MESSAGE_MAX_BYTES as u32 + 1, 1, b"")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("over the"), "{e}");
    }

    #[test]
    fn a_torn_frame_ends_the_connection_with_a_reason() {
        // A header that promises 100 bytes, then 10 and EOF.
        let e = serve_raw(request(100, 1, &[0; 10])).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("10 of its 100 bytes"), "{e}");
        // A torn header.
        let e = serve_raw(vec![1, 0, 0]).unwrap_err();
        assert!(e.to_string().contains("3 of its 20 bytes"), "{e}");
        // Whole frames, then EOF: a clean end.
        serve_raw(request(1, 1, &[3])).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever a peer sends after the preamble, serving ends (with an
        /// error or cleanly) and never panics.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = serve_raw(bytes);
        }
    }

    #[test]
    fn a_malformed_answer_fails_the_waiting_call_and_closes() {
        run_local(async {
            let (a, mut b) = UnixStream::pair().unwrap();
            let conn = Conn::start(a);
            tokio::task::spawn_local(async move {
                let mut pre = [0u8; 8];
                b.read_exact(&mut pre).await.unwrap();
                b.write_all(&PREAMBLE).await.unwrap();
                let mut h = [0u8; REQUEST_HEADER_BYTES];
                b.read_exact(&mut h).await.unwrap();
                // Status 7 does not exist.
                let mut f = 0u32.to_le_bytes().to_vec();
                f.extend_from_slice(&h[4..12]);
                f.extend([7, 0, 0, 0]);
                b.write_all(&f).await.unwrap();
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
            let e = conn.call(7, 0, 0, &1u8).await.unwrap_err();
            assert!(e.to_string().contains("unknown status 7"), "{e}");
            assert!(conn.is_closed());
            // Calls after the end fail at once, saying why.
            let e = conn.call(7, 0, 0, &1u8).await.unwrap_err();
            assert!(e.to_string().contains("unknown status 7"), "{e}");
        });
    }

    #[test]
    fn a_peer_that_closes_unanswered_is_told_apart() {
        run_local(async {
            let (a, b) = UnixStream::pair().unwrap();
            let conn = Conn::start(a);
            drop(b);
            assert!(conn.call(7, 0, 0, &1u8).await.is_err());
            assert!(conn.is_closed() && !conn.spoke_protocol());
        });
    }

    #[test]
    fn sniff_gives_back_what_is_not_the_preamble() {
        run_local(async {
            // A Cap'n Proto stream begins with its segment count: a zero.
            let (mut a, mut b) = UnixStream::pair().unwrap();
            a.write_all(&[0, 0, 0, 0, 2, 0, 0, 0, 9, 9]).await.unwrap();
            let (raft, got) = sniff(&mut b).await.unwrap().unwrap();
            assert!(!raft);
            let mut p = Prefixed::new(got, b);
            let mut all = [0u8; 10];
            p.read_exact(&mut all).await.unwrap();
            assert_eq!(all, [0, 0, 0, 0, 2, 0, 0, 0, 9, 9]);
            // A prefix of the preamble, then EOF: not this protocol.
            let (mut a, mut b) = UnixStream::pair().unwrap();
            a.write_all(&PREAMBLE[..3]).await.unwrap();
            drop(a);
            assert_eq!(
                sniff(&mut b).await.unwrap(),
                Some((false, PREAMBLE[..3].to_vec()))
            );
            // Nothing, then EOF.
            let (a, mut b) = UnixStream::pair().unwrap();
            drop(a);
            assert_eq!(sniff(&mut b).await.unwrap(), None);
        });
    }
}
