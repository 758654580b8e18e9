//! The listener: accepts connections (at most [`CONNECTIONS_MAX`]), serves
//! each with the `Metad` service, and on shutdown stops accepting, stops
//! the groups and makes the log durable.

use crate::limits::CONNECTIONS_MAX;
use crate::net::serve;
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
    replica: Rc<Replica>,
    stop: impl std::future::Future<Output = ()>,
) {
    let client: metad::Client = capnp_rpc::new_client(MetadService::new(replica.clone()));
    let open = Rc::new(Cell::new(0usize));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
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
                let fut = serve(stream, client.clone());
                tokio::task::spawn_local(async move {
                    fut.await;
                    open2.set(open2.get() - 1);
                });
            }
        }
    }
    tracing::info!("stopping: no new connections; stopping the groups");
    replica.shutdown().await;
}
