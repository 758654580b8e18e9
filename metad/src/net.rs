//! Cap'n Proto connections on tokio, for both sides, and the replica-to-
//! replica transport of every group.
//!
//! Owns: one connection per peer replica, shared by all G groups (the
//! multi-raft router pattern: G groups do not mean G times the sockets or
//! heartbeats' connection setups), and the encoding of raft messages. Raft
//! messages travel on the framed transport of [`crate::raft_wire`]; a peer
//! that does not speak it (an older replica) gets Cap'n Proto's `raft`
//! method instead, which every replica still serves.
//!
//! Invariants: a failed call drops the cached connection so the next call
//! reconnects; a peer's answer is decoded with a size bound and never
//! trusted to be well-formed (a bad one is a network error, not a panic).
//! With TLS, every connection is TLS 1.3 (handshake bounded by
//! `tessera_tls::HANDSHAKE_TIMEOUT`); a client with credentials
//! authenticates each new connection before using it.

use crate::limits::{MESSAGE_TRAVERSAL_LIMIT_WORDS, RAFT_MESSAGE_MAX_BYTES};
use crate::raft_wire;
use crate::types::{NodeId, TypeConfig};
use capnp::message::ReaderOptions;
use capnp_rpc::{rpc_twoparty_capnp::Side, twoparty, RpcSystem};
use futures::FutureExt;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tessera_schema::metad_capnp::metad;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

/// How a process talks to metad: TLS (with its node certificate, or only
/// the CA for an operator's CLI) and the access key it authenticates with
/// when it has no node certificate. The default is the plaintext of an
/// `--insecure` cluster.
#[derive(Clone, Default, Debug)]
pub struct Security {
    pub tls: Option<tessera_tls::Connector>,
    pub credentials: Option<tessera_auth::Credentials>,
    /// This machine's local socket directory: a replica on this machine
    /// that keeps a socket there
    /// ([`tessera_rpc::local::server_socket`]) is reached through it,
    /// without TCP or TLS (credentials are still shown).
    pub local_socket_dir: Option<std::path::PathBuf>,
}

impl Security {
    /// The local socket of the replica clients dial at `addr`, when it keeps
    /// one in this machine's local socket directory.
    pub fn local_socket(&self, addr: &str) -> Option<std::path::PathBuf> {
        let dir = self.local_socket_dir.as_ref()?;
        tessera_rpc::local::trusted_socket(dir, addr, 0)
    }
}

/// A tokio byte stream a connection runs over: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// `fut` within `limit`, else a `TimedOut` error naming `what`.
async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(limit, fut).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what} took longer than {limit:?}"),
        )
    })?
}

/// Completes the server side of an accepted connection: TLS when `tls` is
/// given; returns the stream and whether the peer showed a node
/// certificate (always true without TLS: an insecure cluster trusts all).
pub async fn accept(
    stream: TcpStream,
    tls: Option<&tokio_rustls::TlsAcceptor>,
) -> std::io::Result<(Box<dyn Io>, bool)> {
    let _ = stream.set_nodelay(true);
    match tls {
        None => Ok((Box::new(stream), true)),
        Some(a) => {
            let s = within(
                tessera_tls::HANDSHAKE_TIMEOUT,
                "the TLS handshake",
                a.accept(stream),
            )
            .await?;
            let node = s.get_ref().1.peer_certificates().is_some();
            Ok((Box::new(s), node))
        }
    }
}

/// Buffer sizes of a connection's halves (a small message leaves in one send).
const CONN_BUFFER_BYTES: usize = 64 << 10;
/// How long opening a connection to a peer (and authenticating on it) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Raft message kinds on the `raft` method.
pub const KIND_APPEND: u8 = 0;
pub const KIND_VOTE: u8 = 1;
pub const KIND_SNAPSHOT: u8 = 2;

pub fn reader_options() -> ReaderOptions {
    let mut o = ReaderOptions::new();
    o.traversal_limit_in_words(Some(MESSAGE_TRAVERSAL_LIMIT_WORDS));
    o
}

/// Makes `stream` the client side of a connection; its driver runs as a
/// local task until the returned client and everything from it is dropped.
pub fn client_side<S: Io>(stream: S) -> metad::Client {
    let (r, w) = tokio::io::split(stream);
    let r = futures::io::BufReader::with_capacity(CONN_BUFFER_BYTES, r.compat());
    let w = futures::io::BufWriter::with_capacity(CONN_BUFFER_BYTES, w.compat_write());
    let network = twoparty::VatNetwork::new(r, w, Side::Client, reader_options());
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let client: metad::Client = rpc.bootstrap(Side::Server);
    tokio::task::spawn_local(async move {
        match std::panic::AssertUnwindSafe(rpc).catch_unwind().await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "connection ended"),
            Err(_) => tracing::error!("a connection panicked on its peer's input; dropped"),
        }
    });
    client
}

/// Serves `server` on an accepted `stream` until the peer goes away.
pub fn serve<S: Io>(stream: S, server: metad::Client) -> impl std::future::Future<Output = ()> {
    let (r, w) = tokio::io::split(stream);
    let r = futures::io::BufReader::with_capacity(CONN_BUFFER_BYTES, r.compat());
    let w = futures::io::BufWriter::with_capacity(CONN_BUFFER_BYTES, w.compat_write());
    let network = twoparty::VatNetwork::new(r, w, Side::Server, reader_options());
    let rpc = RpcSystem::new(Box::new(network), Some(server.client));
    async move {
        match std::panic::AssertUnwindSafe(rpc).catch_unwind().await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "client connection ended"),
            Err(_) => tracing::error!("a client connection panicked on its input; dropped"),
        }
    }
}

/// Opens a connection to `addr` within [`CONNECT_TIMEOUT`] (TLS and
/// authentication as `security` says).
pub async fn connect(addr: &str, security: &Security) -> std::io::Result<metad::Client> {
    let client = client_side(open_stream(addr, security).await?);
    if let Some(creds) = &security.credentials {
        within(
            CONNECT_TIMEOUT,
            "authenticating",
            authenticate(&client, creds),
        )
        .await?;
    }
    Ok(client)
}

/// Opens a byte stream to the replica at `addr`: its local socket when
/// `security` names one that answers, else TCP (with TLS when `security`
/// has it), within [`CONNECT_TIMEOUT`] and the TLS handshake's limit.
pub async fn open_stream(addr: &str, security: &Security) -> std::io::Result<Box<dyn Io>> {
    if let Some(path) = security.local_socket(addr) {
        match connect_local(&path).await {
            Ok(s) => return Ok(Box::new(s)),
            // A socket left by a replica that is gone: TCP still works.
            Err(e) => tracing::debug!(%addr, error = %e, "local socket refused; using TCP"),
        }
    }
    let s = within(
        CONNECT_TIMEOUT,
        &format!("connecting to {addr}"),
        TcpStream::connect(addr),
    )
    .await?;
    let _ = s.set_nodelay(true);
    match &security.tls {
        None => Ok(Box::new(s)),
        Some(c) => {
            let connector = tokio_rustls::TlsConnector::from(c.config.clone());
            let tls = within(
                tessera_tls::HANDSHAKE_TIMEOUT,
                "the TLS handshake",
                connector.connect(c.server_name.clone(), s),
            )
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("TLS with metad at {addr} failed: {e} (is it the same cluster CA?)"),
                )
            })?;
            Ok(Box::new(tls))
        }
    }
}

/// Connects to the Unix socket at `path` (buffers sized as every local
/// connection's), within [`CONNECT_TIMEOUT`].
async fn connect_local(path: &std::path::Path) -> std::io::Result<tokio::net::UnixStream> {
    let s = within(
        CONNECT_TIMEOUT,
        "connecting to the local socket",
        tokio::net::UnixStream::connect(path),
    )
    .await?;
    tessera_rpc::local::size_buffers(&s)?;
    Ok(s)
}

/// Proves `creds` on a fresh connection; a refusal is a `PermissionDenied`
/// error saying why (never the secret). Not bounded in time: the caller
/// puts its executor's deadline on it ([`CONNECT_TIMEOUT`]).
pub async fn authenticate(
    client: &metad::Client,
    creds: &tessera_auth::Credentials,
) -> std::io::Result<()> {
    let mut req = client.authenticate_request();
    req.get().set_key_id(&creds.key_id);
    req.get().set_secret(&creds.secret);
    let refused = |m: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, m);
    let resp = req
        .send()
        .promise
        .await
        .map_err(|e| refused(e.to_string()))?;
    let r = resp.get().map_err(|e| refused(e.to_string()))?;
    if r.has_error() {
        let e = r.get_error().map_err(|e| refused(e.to_string()))?;
        return Err(refused(
            e.get_message()
                .ok()
                .and_then(|m| m.to_str().ok())
                .unwrap_or("refused")
                .to_string(),
        ));
    }
    Ok(())
}

/// A connection to a peer replica.
#[derive(Clone)]
enum PeerConn {
    /// The framed raft transport ([`crate::raft_wire`]).
    Framed(Rc<raft_wire::Conn>),
    /// Cap'n Proto's `raft` method: for a peer that does not speak the
    /// framed transport (a replica older than it, during an upgrade).
    Capnp(metad::Client),
}

/// The connections to peer replicas, one each, shared by all groups.
#[derive(Default)]
pub struct Peers {
    /// TLS with this replica's node certificate (none when insecure).
    pub security: Security,
    conns: RefCell<HashMap<NodeId, (String, PeerConn)>>,
    /// Calls to each peer that timed out in a row since its last answer.
    timeouts_in_a_row: RefCell<HashMap<NodeId, u32>>,
    /// Peers whose framed connection ended before they spoke the protocol,
    /// and until when they are spoken to through Cap'n Proto instead.
    capnp_until: RefCell<HashMap<NodeId, Instant>>,
}

/// A peer connection whose calls time out this many times in a row (and
/// never answer) is dropped and made anew: the peer may be gone without the
/// socket saying so.
const PEER_TIMEOUTS_BEFORE_RECONNECT: u32 = 16;
/// How long a peer whose framed connection ended before it sent the
/// preamble back (an older replica, or one that went down at that moment) is
/// spoken to through Cap'n Proto's `raft` method before the framed
/// transport is tried again. Every replica serves both, so guessing wrong
/// costs only speed.
pub const CAPNP_FALLBACK: Duration = Duration::from_secs(60);

/// Why a peer call failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {0} unreachable: {1}")]
    Unreachable(NodeId, String),
    #[error("peer {0}: {1}")]
    Call(NodeId, String),
    #[error("peer {0} timed out after {1:?}")]
    Timeout(NodeId, Duration),
}

impl Peers {
    pub fn new(security: Security) -> Self {
        Peers {
            security,
            ..Peers::default()
        }
    }

    fn use_capnp(&self, target: NodeId) -> bool {
        let mut until = self.capnp_until.borrow_mut();
        match until.get(&target) {
            Some(t) if Instant::now() < *t => true,
            Some(_) => {
                until.remove(&target);
                false
            }
            None => false,
        }
    }

    async fn client(&self, target: NodeId, addr: &str) -> Result<PeerConn, PeerError> {
        if let Some((a, c)) = self.conns.borrow().get(&target) {
            let open = match c {
                PeerConn::Framed(f) => !f.is_closed(),
                PeerConn::Capnp(_) => true,
            };
            if a == addr && open {
                return Ok(c.clone());
            }
        }
        let unreachable = |e: std::io::Error| PeerError::Unreachable(target, e.to_string());
        let c = if self.use_capnp(target) {
            PeerConn::Capnp(connect(addr, &self.security).await.map_err(unreachable)?)
        } else {
            let s = open_stream(addr, &self.security)
                .await
                .map_err(unreachable)?;
            PeerConn::Framed(Rc::new(raft_wire::Conn::start(s)))
        };
        self.conns
            .borrow_mut()
            .insert(target, (addr.to_string(), c.clone()));
        Ok(c)
    }

    fn forget(&self, target: NodeId) {
        self.conns.borrow_mut().remove(&target);
    }

    /// Sends one raft message and returns the answer's bytes.
    pub async fn call(
        &self,
        target: NodeId,
        addr: &str,
        group: u32,
        kind: u8,
        msg: &impl Serialize,
        timeout: Duration,
    ) -> Result<Vec<u8>, PeerError> {
        let conn = self.client(target, addr).await?;
        let result = match &conn {
            PeerConn::Framed(f) => {
                let r = tokio::time::timeout(timeout, f.call(target, group, kind, msg)).await;
                if matches!(r, Ok(Err(_))) && f.is_closed() {
                    self.forget(target);
                    if !f.spoke_protocol() {
                        tracing::info!(
                            peer = target,
                            "the peer does not answer the framed raft transport; \
                             using Cap'n Proto with it for {CAPNP_FALLBACK:?}"
                        );
                        self.capnp_until
                            .borrow_mut()
                            .insert(target, Instant::now() + CAPNP_FALLBACK);
                    }
                }
                r
            }
            PeerConn::Capnp(c) => {
                let r =
                    tokio::time::timeout(timeout, capnp_call(c, target, group, kind, msg)).await;
                if matches!(r, Ok(Err((_, true)))) {
                    self.forget(target);
                }
                r.map(|r| r.map_err(|(e, _)| e))
            }
        };
        // Only a broken connection is dropped: every group shares it, and a
        // timed-out call (a slow flush on the peer) says nothing about the
        // connection; reconnecting would fail every other group's calls.
        match result {
            Ok(Ok(b)) => {
                self.timeouts_in_a_row.borrow_mut().remove(&target);
                Ok(b)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let n = {
                    let mut t = self.timeouts_in_a_row.borrow_mut();
                    let n = t.entry(target).or_insert(0);
                    *n += 1;
                    *n
                };
                if n >= PEER_TIMEOUTS_BEFORE_RECONNECT {
                    self.timeouts_in_a_row.borrow_mut().remove(&target);
                    self.forget(target);
                }
                Err(PeerError::Timeout(target, timeout))
            }
        }
    }
}

/// One raft message through Cap'n Proto's `raft` method; the error says
/// whether the connection is gone.
async fn capnp_call(
    client: &metad::Client,
    target: NodeId,
    group: u32,
    kind: u8,
    msg: &impl Serialize,
) -> Result<Vec<u8>, (PeerError, bool)> {
    // Encoded straight into the request, not into a buffer first: an
    // append can carry MiBs of entries, once per follower.
    let size = bincode::serialized_size(msg).map_err(|e| {
        (
            PeerError::Call(target, format!("a raft message does not encode: {e}")),
            false,
        )
    })?;
    if size > RAFT_MESSAGE_MAX_BYTES as u64 {
        return Err((
            PeerError::Call(
                target,
                format!("a raft message of {size} bytes is over the {RAFT_MESSAGE_MAX_BYTES}-byte limit"),
            ),
            false,
        ));
    }
    let fut = async {
        let mut req = client.raft_request();
        {
            let mut p = req.get();
            p.set_group(group);
            p.set_kind(kind);
            let buf: &mut [u8] = p.init_payload(size as u32);
            bincode::serialize_into(buf, msg).map_err(|e| {
                capnp::Error::failed(format!("a raft message does not encode: {e}"))
            })?;
        }
        let resp = req.send().promise.await?;
        let bytes = resp.get()?.get_payload()?;
        Ok::<_, capnp::Error>(bytes.to_vec())
    };
    fut.await.map_err(|e| {
        let gone = e.kind == capnp::ErrorKind::Disconnected;
        (PeerError::Call(target, e.to_string()), gone)
    })
}

/// Encodes a raft message or answer.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("bincode into a Vec")
}

/// Decodes a raft message or answer from a peer, bounded in size.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    use bincode::Options;
    if bytes.len() > RAFT_MESSAGE_MAX_BYTES {
        return Err(format!(
            "a raft message of {} bytes is over the {RAFT_MESSAGE_MAX_BYTES}-byte limit",
            bytes.len()
        ));
    }
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(RAFT_MESSAGE_MAX_BYTES as u64)
        .deserialize(bytes)
        .map_err(|e| format!("a raft message does not decode: {e}"))
}

/// Makes a group's network clients.
#[derive(Clone)]
pub struct GroupNetworkFactory {
    pub peers: Rc<Peers>,
    pub group: u32,
}

pub struct GroupNetwork {
    peers: Rc<Peers>,
    group: u32,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        GroupNetwork {
            peers: self.peers.clone(),
            group: self.group,
            target,
            addr: node.addr.clone(),
        }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl GroupNetwork {
    async fn roundtrip<Req, Resp, E>(
        &self,
        kind: u8,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let bytes = self
            .peers
            .call(
                self.target,
                &self.addr,
                self.group,
                kind,
                req,
                option.hard_ttl(),
            )
            .await
            .map_err(|e| match e {
                PeerError::Unreachable(..) => RPCError::Unreachable(Unreachable::new(&e)),
                _ => RPCError::Network(NetworkError::new(&e)),
            })?;
        let answer: Result<Resp, RaftError<NodeId, E>> = decode(&bytes)
            .map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for GroupNetwork {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        self.roundtrip(KIND_APPEND, &req, &option).await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.roundtrip(KIND_SNAPSHOT, &req, &option).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.roundtrip(KIND_VOTE, &req, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_schema::metad_capnp::metad;

    /// A replica from before the framed transport: Cap'n Proto only, whose
    /// `raft` method answers the payload back.
    struct CapnpOnly;

    impl metad::Server for CapnpOnly {
        async fn raft(
            self: Rc<Self>,
            params: metad::RaftParams,
            mut results: metad::RaftResults,
        ) -> Result<(), capnp::Error> {
            let p = params.get()?.get_payload()?.to_vec();
            results.get().set_payload(&p);
            Ok(())
        }
    }

    /// A peer that does not send the preamble back (Cap'n Proto aborts on
    /// it and closes) costs one failed call; the next ones go through
    /// Cap'n Proto's `raft` method and work.
    #[test]
    fn an_older_peer_is_spoken_to_through_capnp() {
        crate::runtime::run_local(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            tokio::task::spawn_local(async move {
                loop {
                    let (s, _) = listener.accept().await.unwrap();
                    let client: metad::Client = capnp_rpc::new_client(CapnpOnly);
                    tokio::task::spawn_local(serve(s, client));
                }
            });
            let peers = Peers::new(Security::default());
            let t = Duration::from_secs(5);
            let first = peers.call(2, &addr, 0, KIND_VOTE, &7u64, t).await;
            assert!(
                first.is_err(),
                "an older peer answered the framed transport"
            );
            for n in 0..3u64 {
                let b = peers.call(2, &addr, 0, KIND_VOTE, &n, t).await.unwrap();
                assert_eq!(decode::<u64>(&b).unwrap(), n);
            }
            assert!(peers.use_capnp(2));
            // Other peers are not affected.
            assert!(!peers.use_capnp(3));
        });
    }
}
