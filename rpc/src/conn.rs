//! Connection setup: a Cap'n Proto two-party connection over a glommio TCP
//! stream, for either side. Both sides set TCP_NODELAY (a request's header
//! and body must not wait for an ACK) and bound what they accept with
//! [`crate::limits::MESSAGE_TRAVERSAL_LIMIT_WORDS`].

use crate::limits::MESSAGE_TRAVERSAL_LIMIT_WORDS;
use capnp::message::ReaderOptions;
use capnp_rpc::{rpc_twoparty_capnp::Side, twoparty, RpcSystem};
use futures::{AsyncReadExt, FutureExt};
use glommio::net::TcpStream;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// Write buffer of a connection: Cap'n Proto writes a message as its
/// segment table and then each segment, then flushes; buffered, a small
/// message leaves in one send instead of one io_uring round trip per piece.
/// Larger writes bypass the buffer.
const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// Read buffer of a connection (the segment table and small messages are
/// read in one receive).
const READ_BUFFER_BYTES: usize = 64 << 10;

fn halves(
    stream: TcpStream,
) -> (
    futures::io::BufReader<futures::io::ReadHalf<TcpStream>>,
    futures::io::BufWriter<futures::io::WriteHalf<TcpStream>>,
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
pub fn client_side<C: capnp::capability::FromClientHook>(stream: TcpStream) -> C {
    client_side_with_disconnector(stream).0
}

/// Like [`client_side`], also returning what closes the connection.
pub fn client_side_with_disconnector<C: capnp::capability::FromClientHook>(
    stream: TcpStream,
) -> (C, capnp_rpc::Disconnector<Side>) {
    let (reader, writer) = halves(stream);
    let network = twoparty::VatNetwork::new(reader, writer, Side::Client, reader_options());
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
pub fn serve(
    stream: TcpStream,
    bootstrap: capnp::capability::Client,
) -> impl Future<Output = Result<(), capnp::Error>> {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = halves(stream);
    let network = twoparty::VatNetwork::new(reader, writer, Side::Server, reader_options());
    RpcSystem::new(Box::new(network), Some(bootstrap))
}
