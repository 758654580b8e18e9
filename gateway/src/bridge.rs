//! metad calls from the gateway's glommio executor.
//!
//! The metad client ([`MetaClient`]) runs on tokio; the gateway's data path
//! runs on glommio. The bridge owns one OS thread with a tokio
//! current-thread runtime and the client; a call sends a closure there and
//! awaits its answer on a runtime-neutral oneshot. Only metadata crosses
//! (records, WAL intents of at most 64 KiB of payload); shard bytes never
//! do.

use crate::error::{Error, Result};
use futures::channel::oneshot;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use tessera_metad::client::{ClientOptions, MetaClient};

type Job = Box<dyn FnOnce(Rc<MetaClient>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A handle to the metad thread; cheap to clone.
#[derive(Clone)]
pub struct MetaBridge {
    tx: tokio::sync::mpsc::UnboundedSender<Job>,
    wal_partitions: u32,
    groups: u32,
}

impl MetaBridge {
    /// Starts the thread and connects to metad at `seeds` (any replica
    /// addresses); fails with what went wrong when none answers.
    /// `security`: TLS (and credentials, for an operator's CLI) of every
    /// metad connection.
    pub fn start(seeds: Vec<String>, security: tessera_metad::net::Security) -> Result<Self> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(u32, u32)>>();
        std::thread::Builder::new()
            .name("metad-bridge".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::Internal(format!("tokio runtime: {e}"))));
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let client = match MetaClient::connect(
                        &seeds,
                        ClientOptions {
                            security,
                            ..ClientOptions::default()
                        },
                    )
                    .await
                    {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(Error::Unavailable(format!(
                                "cannot reach metad at {}: {e}",
                                seeds.join(",")
                            ))));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok((client.wal_partitions(), client.groups())));
                    while let Some(job) = rx.recv().await {
                        tokio::task::spawn_local(job(client.clone()));
                    }
                });
            })
            .map_err(|e| Error::Internal(format!("starting the metad thread: {e}")))?;
        let (wal_partitions, groups) = ready_rx
            .recv()
            .map_err(|_| Error::Internal("the metad thread died while connecting".into()))??;
        Ok(MetaBridge {
            tx,
            wal_partitions,
            groups,
        })
    }

    pub fn wal_partitions(&self) -> u32 {
        self.wal_partitions
    }

    pub fn groups(&self) -> u32 {
        self.groups
    }

    /// Runs `f` with the metad client on its thread and returns its answer.
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Rc<MetaClient>) -> Fut + Send + 'static,
        Fut: Future<Output = tessera_metad::Result<T>> + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |c| {
            Box::pin(async move {
                let _ = tx.send(f(c).await);
            })
        });
        self.tx
            .send(job)
            .map_err(|_| Error::Internal("the metad thread has stopped".into()))?;
        match rx.await {
            Ok(r) => r.map_err(|e| Error::from_metad(what, e)),
            Err(_) => Err(Error::Internal(format!(
                "{what}: the metad thread dropped the call"
            ))),
        }
    }
}
