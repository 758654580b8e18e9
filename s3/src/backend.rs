//! The bridge from the S3 front's tokio world to the gateway's client
//! library, which runs on a glommio executor (its futures are `!Send`).
//!
//! Owns: one glommio thread holding [`GATEWAY_CONNECTIONS`] gateway
//! connections, and the bounded job queue into it. A job is a `Send`
//! closure that builds a `!Send` future on the glommio side; its answer
//! comes back through a oneshot channel (tokio's channels need no runtime
//! to be awaited, so both sides use them).
//!
//! Invariants: at most [`JOBS_IN_FLIGHT_MAX`] jobs exist at once (a
//! semaphore permit travels with each job and is released when it ends),
//! so a flood of S3 requests waits in the front instead of growing the
//! gateway's queues; a job whose caller went away still runs to its end
//! (a put is never left half-finished by a dropped HTTP connection: its
//! stream just ends and nothing is stored).

use futures::future::LocalBoxFuture;
use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tessera_rpc::{ConnectOptions, GatewayClient};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Gateway connections the front spreads its calls over (each carries many
/// calls at once; more than one keeps one slow stream from delaying all).
pub const GATEWAY_CONNECTIONS: usize = 4;
/// Jobs (S3 requests being served) at once; more wait for a slot.
pub const JOBS_IN_FLIGHT_MAX: usize = 512;
/// How long the front waits for the gateway when it starts.
pub const GATEWAY_WAIT_AT_START: Duration = Duration::from_secs(60);

type Job = Box<dyn FnOnce(Rc<GatewayClient>) -> LocalBoxFuture<'static, ()> + Send>;

/// A handle on the glommio side; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Backend {
    jobs: mpsc::Sender<(Job, OwnedSemaphorePermit)>,
    slots: Arc<Semaphore>,
}

#[derive(Debug, thiserror::Error)]
#[error("the gateway connection thread stopped; restart tessera-s3")]
pub struct Stopped;

impl Backend {
    /// Starts the glommio thread and connects to the gateway at `addr`,
    /// retrying for up to [`GATEWAY_WAIT_AT_START`].
    pub fn start(addr: SocketAddr, opts: ConnectOptions) -> Result<Backend, crate::Error> {
        let (tx, mut rx) = mpsc::channel::<(Job, OwnedSemaphorePermit)>(JOBS_IN_FLIGHT_MAX);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name("tessera-s3-gw")
            .spawn(move || async move {
                let deadline = std::time::Instant::now() + GATEWAY_WAIT_AT_START;
                let mut clients = Vec::with_capacity(GATEWAY_CONNECTIONS);
                while clients.len() < GATEWAY_CONNECTIONS {
                    match GatewayClient::connect_with(addr, opts.clone()).await {
                        Ok(c) => clients.push(Rc::new(c)),
                        Err(e) if std::time::Instant::now() >= deadline => {
                            let _ = ready_tx.send(Err(format!(
                                "no gateway at {addr} after {}s: {e}",
                                GATEWAY_WAIT_AT_START.as_secs()
                            )));
                            return;
                        }
                        Err(e) => {
                            // A refused key will not get better: say so now.
                            if matches!(
                                &e,
                                tessera_rpc::Error::Gateway {
                                    kind: tessera_rpc::GatewayErrorKind::Unauthenticated,
                                    ..
                                }
                            ) {
                                let _ = ready_tx.send(Err(e.to_string()));
                                return;
                            }
                            glommio::timer::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                let next = Cell::new(0usize);
                while let Some((job, permit)) = rx.recv().await {
                    let i = next.get();
                    next.set((i + 1) % clients.len());
                    let fut = job(clients[i].clone());
                    glommio::spawn_local(async move {
                        fut.await;
                        drop(permit);
                    })
                    .detach();
                }
            })
            .map_err(|e| crate::Error::Start(format!("the gateway thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Backend {
                jobs: tx,
                slots: Arc::new(Semaphore::new(JOBS_IN_FLIGHT_MAX)),
            }),
            Ok(Err(e)) => Err(crate::Error::Start(e)),
            Err(_) => Err(crate::Error::Start(
                "the gateway thread ended before connecting".into(),
            )),
        }
    }

    /// Runs `f` on the glommio side with a gateway connection; its output
    /// comes back here.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, Stopped>
    where
        T: Send + 'static,
        F: FnOnce(Rc<GatewayClient>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Stopped)?;
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |gw| {
            Box::pin(async move {
                let _ = tx.send(f(gw).await);
            })
        });
        self.jobs.send((job, permit)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }
}
