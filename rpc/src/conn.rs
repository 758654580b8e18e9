//! Connection setup: a Cap'n Proto two-party connection over a glommio TCP
//! stream, plain or inside TLS (rustls through `futures-rustls`), for either
//! side. Both sides set TCP_NODELAY (a request's header and body must not
//! wait for an ACK) and bound what they accept with
//! [`crate::limits::MESSAGE_TRAVERSAL_LIMIT_WORDS`]. A TLS handshake is
//! bounded by [`tessera_tls::HANDSHAKE_TIMEOUT`]. A process on the
//! gateway's machine may connect over its Unix socket instead
//! ([`connect_unix`]): plaintext, guarded by the socket file's permissions.

use crate::limits::MESSAGE_TRAVERSAL_LIMIT_WORDS;
use capnp::message::ReaderOptions;
use capnp_rpc::{rpc_twoparty_capnp::Side, twoparty, RpcSystem};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, FutureExt};
use glommio::net::TcpStream;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tessera_tls::Connector;

/// A byte stream a connection runs over: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + 'static> Io for T {}

/// Either kind of stream, chosen at run time.
pub type Stream = Box<dyn Io>;

/// The server side of TLS for a listener.
pub type Acceptor = futures_rustls::TlsAcceptor;

/// An acceptor for `config` (see `tessera_tls::server_config`).
pub fn acceptor(config: std::sync::Arc<tessera_tls::rustls::ServerConfig>) -> Acceptor {
    futures_rustls::TlsAcceptor::from(config)
}

/// `fut`, or a `TimedOut` error after `limit`.
async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    let fut = std::pin::pin!(fut);
    let timer = std::pin::pin!(glommio::timer::sleep(limit));
    match futures::future::select(fut, timer).await {
        futures::future::Either::Left((r, _)) => r,
        futures::future::Either::Right(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what} took longer than {limit:?}"),
        )),
    }
}

/// Opens a connection to `addr` within `timeout`, inside TLS when
/// `tls` is given (the handshake has its own bound).
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&Connector>,
) -> std::io::Result<Stream> {
    let tcp = connect_tcp(addr, timeout).await?;
    match tls {
        None => Ok(Box::new(tcp)),
        Some(c) => {
            let connector = futures_rustls::TlsConnector::from(c.config.clone());
            let s = within(
                tessera_tls::HANDSHAKE_TIMEOUT,
                "the TLS handshake",
                connector.connect(c.server_name.clone(), tcp),
            )
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "TLS with {addr} failed: {e} (does the server use the same cluster CA?)"
                    ),
                )
            })?;
            Ok(Box::new(s))
        }
    }
}

/// What an accepted connection proved about its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity {
    /// It showed a certificate the cluster CA signed (a node).
    pub node_certificate: bool,
}

/// Completes the server side of an accepted `tcp`: TLS when `tls` is given
/// (bounded by the handshake timeout), plain otherwise (then the peer is
/// trusted as a node: an insecure cluster has no identities).
pub async fn accept(
    tcp: TcpStream,
    tls: Option<&Acceptor>,
) -> std::io::Result<(Stream, PeerIdentity)> {
    let _ = tcp.set_nodelay(true);
    match tls {
        None => Ok((
            Box::new(tcp),
            PeerIdentity {
                node_certificate: true,
            },
        )),
        Some(a) => {
            let s = within(
                tessera_tls::HANDSHAKE_TIMEOUT,
                "the TLS handshake",
                a.accept(tcp),
            )
            .await?;
            let node_certificate = s.get_ref().1.peer_certificates().is_some();
            Ok((Box::new(s), PeerIdentity { node_certificate }))
        }
    }
}

/// Write buffer of a connection: Cap'n Proto writes a message as its
/// segment table and then each segment, then flushes; buffered, a small
/// message leaves in one send instead of one io_uring round trip per piece.
/// Larger writes bypass the buffer.
const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// Read buffer of a connection (the segment table and small messages are
/// read in one receive).
const READ_BUFFER_BYTES: usize = 64 << 10;

#[allow(clippy::type_complexity)]
fn halves<S: Io>(
    stream: S,
) -> (
    futures::io::BufReader<futures::io::ReadHalf<S>>,
    futures::io::BufWriter<futures::io::WriteHalf<S>>,
) {
    let (reader, writer) = stream.split();
    (
        futures::io::BufReader::with_capacity(READ_BUFFER_BYTES, reader),
        futures::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer),
    )
}

fn reader_options() -> ReaderOptions {
    let mut o = ReaderOptions::new();
    o.traversal_limit_in_words(Some(MESSAGE_TRAVERSAL_LIMIT_WORDS));
    o
}

/// Opens a connection to the Unix socket at `path` within `timeout`
/// (plaintext: only a process that may open the socket file gets here),
/// with buffers sized for large messages ([`crate::local`]).
pub async fn connect_unix(path: &std::path::Path, timeout: Duration) -> std::io::Result<Stream> {
    // Bounded by `timeout` itself: the connect does not block, and a full
    // backlog is retried only until then.
    let s = crate::local::connect(path, timeout).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("the Unix socket {}: {e}", path.display()))
    })?;
    Ok(Box::new(s))
}

/// Opens a connection through the local socket `local` when there is one
/// and it answers, else (none, or a socket left by a server that is gone)
/// through `tcp`, which is not started unless needed.
pub async fn connect_local_or(
    local: Option<std::path::PathBuf>,
    timeout: Duration,
    tcp: impl Future<Output = std::io::Result<Stream>>,
) -> std::io::Result<Stream> {
    if let Some(p) = local {
        match connect_unix(&p, timeout).await {
            Ok(s) => return Ok(s),
            Err(e) => tracing::debug!(error = %e, "local socket refused; using TCP"),
        }
    }
    tcp.await
}

/// Opens a TCP connection to `addr` within `timeout`.
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(std::io::Error::from)?;
    s.set_nodelay(true).map_err(std::io::Error::from)?;
    Ok(s)
}

/// Makes `stream` the client side of a connection and returns the server's
/// bootstrap capability. The connection is driven by a task on the current
/// executor; it ends when every capability from it is dropped or the peer
/// goes away (calls then fail with a `Disconnected` error).
pub fn client_side<C: capnp::capability::FromClientHook, S: Io>(stream: S) -> C {
    client_side_with_disconnector(stream).0
}

/// Like [`client_side`], also returning what closes the connection.
pub fn client_side_with_disconnector<C: capnp::capability::FromClientHook, S: Io>(
    stream: S,
) -> (C, capnp_rpc::Disconnector<Side>) {
    client_side_with_options(stream, reader_options())
}

/// Like [`client_side_with_disconnector`], bounding what the client accepts
/// with `options` instead of this crate's limits (a metad client takes
/// metad's).
pub fn client_side_with_options<C: capnp::capability::FromClientHook, S: Io>(
    stream: S,
    options: ReaderOptions,
) -> (C, capnp_rpc::Disconnector<Side>) {
    let (reader, writer) = halves(stream);
    let network = twoparty::VatNetwork::new(reader, writer, Side::Client, options);
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let client: C = rpc.bootstrap(Side::Server);
    let disconnector = rpc.get_disconnector();
    glommio::spawn_local(async move {
        // A protocol-library panic on a hostile server's input ends this
        // connection (its calls fail as disconnected), not the executor.
        match std::panic::AssertUnwindSafe(rpc).catch_unwind().await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "client connection ended"),
            Err(_) => tracing::error!("client connection panicked on the server's input; dropped"),
        }
    })
    .detach();
    (client, disconnector)
}

/// Serves `bootstrap` to the peer of `stream` until it disconnects. A
/// malformed message ends this connection with an error; it never touches
/// anything else.
pub fn serve<S: Io>(
    stream: S,
    bootstrap: capnp::capability::Client,
) -> impl Future<Output = Result<(), capnp::Error>> {
    let (reader, writer) = halves(stream);
    let network = twoparty::VatNetwork::new(reader, writer, Side::Server, reader_options());
    RpcSystem::new(Box::new(network), Some(bootstrap))
}
