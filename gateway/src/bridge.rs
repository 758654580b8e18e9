//! metad calls from a glommio executor.
//!
//! Owns: the metad client ([`MetaClient`]) of one glommio executor, run on
//! that executor itself through [`Glommio`] (its tasks, timers and
//! sockets). Until 2026-11-28 the client ran on a thread of its own with a
//! tokio runtime and each call crossed to it and back: two thread wake-ups
//! per call, and that thread used ~13 % of a core under 4 KiB PUTs.
//!
//! Invariants: a `MetaBridge` is used only on the executor that made it
//! (it is not `Send`); every connection it opens applies the security it
//! was given (TLS, and the access key when it has no node certificate).

use crate::error::{Error, Result};
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;
use tessera_metad::client::{ClientOptions, MetaClient};
use tessera_metad::net::{Security, CONNECT_TIMEOUT};
use tessera_metad::runtime::{within, ClientRuntime, LocalFuture};
use tessera_schema::metad_capnp::metad;

/// The metad client's executor: the calling glommio executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct Glommio;

/// `addr` ("host:port") as a socket address; a name is resolved (once per
/// new connection, so the blocking lookup is rare).
fn resolve(addr: &str) -> io::Result<SocketAddr> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    addr.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("metad address {addr} resolves to nothing; check the cluster file"),
        )
    })
}

impl ClientRuntime for Glommio {
    fn spawn_local(&self, task: LocalFuture<()>) {
        glommio::spawn_local(task).detach();
    }

    fn sleep(&self, d: Duration) -> LocalFuture<()> {
        Box::pin(async move {
            glommio::timer::sleep(d).await;
        })
    }

    fn connect(&self, addr: &str, security: &Security) -> LocalFuture<io::Result<metad::Client>> {
        let (addr, security) = (addr.to_string(), security.clone());
        Box::pin(async move {
            let tcp = async {
                let at = resolve(&addr)?;
                tessera_rpc::conn::connect(at, CONNECT_TIMEOUT, security.tls.as_ref()).await
            };
            let stream = tessera_rpc::conn::connect_local_or(
                security.local_socket(&addr),
                CONNECT_TIMEOUT,
                tcp,
            )
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("metad at {addr}: {e}")))?;
            let (client, _) = tessera_rpc::conn::client_side_with_options::<metad::Client, _>(
                stream,
                tessera_metad::net::reader_options(),
            );
            if let Some(creds) = &security.credentials {
                let auth = tessera_metad::net::authenticate(&client, creds);
                match within(&Glommio, CONNECT_TIMEOUT, auth).await {
                    Some(r) => r?,
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("authenticating with metad at {addr} took longer than {CONNECT_TIMEOUT:?}"),
                        ))
                    }
                }
            }
            Ok(client)
        })
    }
}

/// The metad client of this executor; cheap to clone.
#[derive(Clone)]
pub struct MetaBridge {
    client: Rc<MetaClient>,
    wal_partitions: u32,
    groups: u32,
}

impl MetaBridge {
    /// Connects to metad at `seeds` (any replica addresses) from the calling
    /// glommio executor; fails with what went wrong when none answers.
    /// `security`: TLS (and credentials, for an operator's CLI) of every
    /// metad connection.
    pub async fn start(seeds: Vec<String>, security: Security) -> Result<Self> {
        let client = MetaClient::connect_on(
            &seeds,
            ClientOptions {
                security,
                ..ClientOptions::default()
            },
            Rc::new(Glommio),
        )
        .await
        .map_err(|e| match e {
            // A refused certificate or key is not a reachability problem.
            e @ tessera_metad::Error::Remote { .. } => Error::from_metad("connecting to metad", e),
            e => Error::Unavailable(format!("cannot reach metad at {}: {e}", seeds.join(","))),
        })?;
        Ok(MetaBridge {
            wal_partitions: client.wal_partitions(),
            groups: client.groups(),
            client,
        })
    }

    pub fn wal_partitions(&self) -> u32 {
        self.wal_partitions
    }

    pub fn groups(&self) -> u32 {
        self.groups
    }

    /// Runs `f` with the metad client and returns its answer; `what` names
    /// the call in an error.
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnOnce(Rc<MetaClient>) -> Fut,
        Fut: Future<Output = tessera_metad::Result<T>>,
    {
        f(self.client.clone())
            .await
            .map_err(|e| Error::from_metad(what, e))
    }
}
