//! The listener: accepts connections (at most [`CONNECTIONS_MAX`]), runs
//! each one's TLS handshake (bounded) off the accept loop, serves each with
//! its own gated `Metad` service (its session: node certificate or admin
//! key), and on shutdown stops accepting, stops the groups and makes the
//! log durable. A local socket (`--local-socket-dir`), when given, is
//! served beside TCP: its accept thread lets in only this user and root,
//! who can read this replica's node key anyway, so its connections carry a
//! node's session without TLS. Each connection speaks Cap'n Proto, or —
//! when it opens with [`raft_wire::PREAMBLE`] — the framed raft transport,
//! which only a peer with a node session may use.

use crate::limits::CONNECTIONS_MAX;
use crate::net::{accept, serve, Io};
use crate::raft_wire;
use crate::replica::Replica;
use crate::service::MetadService;
use std::cell::Cell;
use std::rc::Rc;
use tessera_schema::metad_capnp::metad;
use tokio::net::TcpListener;

/// Serves `replica` on `listener` until `stop` resolves, then shuts the
/// replica down.
pub async fn run(
    listener: TcpListener,
    mut local: Option<tessera_rpc::local::LocalListener>,
    replica: Rc<Replica>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: impl std::future::Future<Output = ()>,
) {
    let open = Rc::new(Cell::new(0usize));
    tokio::pin!(stop);
    loop {
        let local_accept = async {
            match local.as_mut() {
                Some(l) => l.accept_std().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => break,
            accepted = local_accept => {
                let stream = match accepted.and_then(|s| {
                    s.set_nonblocking(true)?;
                    tokio::net::UnixStream::from_std(s)
                }) {
                    Ok(s) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        tracing::warn!("the local socket's accept thread ended; serving TCP only");
                        local = None;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "local accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if open.get() >= CONNECTIONS_MAX {
                    tracing::warn!("refusing a local connection: {CONNECTIONS_MAX} are open");
                    continue;
                }
                open.set(open.get() + 1);
                let open2 = open.clone();
                let replica = replica.clone();
                tokio::task::spawn_local(async move {
                    let session = tessera_auth::Session::new(true);
                    serve_connection(Box::new(stream), replica, session).await;
                    open2.set(open2.get() - 1);
                });
            }
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if open.get() >= CONNECTIONS_MAX {
                    tracing::warn!(%peer, "refusing a connection: {CONNECTIONS_MAX} are open");
                    drop(stream);
                    continue;
                }
                open.set(open.get() + 1);
                let open2 = open.clone();
                let tls = tls.clone();
                let replica = replica.clone();
                tokio::task::spawn_local(async move {
                    match accept(stream, tls.as_ref()).await {
                        Ok((stream, node)) => {
                            let session = tessera_auth::Session::new(node);
                            serve_connection(stream, replica, session).await;
                        }
                        Err(e) => {
                            crate::metrics::auth_refused("tls_handshake");
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                    }
                    open2.set(open2.get() - 1);
                });
            }
        }
    }
    tracing::info!("stopping: no new connections; stopping the groups");
    replica.shutdown().await;
}

/// Serves one accepted connection until its peer goes away: the framed raft
/// transport when it opens with the preamble (refused without a node
/// session), otherwise the gated `Metad` service over Cap'n Proto.
async fn serve_connection(
    mut stream: Box<dyn Io>,
    replica: Rc<Replica>,
    session: Rc<tessera_auth::Session>,
) {
    let first = match raft_wire::sniff(&mut stream).await {
        Ok(Some(f)) => f,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(error = %e, "a connection failed before its first bytes");
            return;
        }
    };
    match first {
        (true, _) if !session.node => {
            // Nothing is answered: a peer that may not send raft messages
            // learns nothing from this replica.
            crate::metrics::auth_refused("raft_without_certificate");
            // Debug, not warn: anyone who can connect could fill the log.
            tracing::debug!(
                "refused a framed raft connection without a node certificate from the cluster CA"
            );
        }
        (true, _) => {
            let (r, w) = tokio::io::split(stream);
            let handler: raft_wire::Handler = Rc::new(move |group, kind, payload| {
                let replica = replica.clone();
                Box::pin(async move {
                    let started = std::time::Instant::now();
                    crate::metrics::raft_message_served("framed");
                    let r = crate::service::dispatch_raft(&replica, group, kind, &payload).await;
                    crate::metrics::observe("raft", started, r.as_ref().err().map(|_| "failed"));
                    r
                })
            });
            if let Err(e) = raft_wire::serve(r, w, handler).await {
                tracing::warn!(error = %e, "a framed raft connection ended on an error");
            }
        }
        (false, prefix) => {
            let client: metad::Client = MetadService::gated(replica, session);
            serve(raft_wire::Prefixed::new(prefix, stream), client).await;
        }
    }
}
