//! The executor a [`crate::client::MetaClient`] runs on.
//!
//! Owns: the three things the client needs from an executor — a task of
//! the calling thread, a timer, and a connection to a replica — and the
//! deadline built from them ([`within`]). metad itself and most tools run
//! the client on tokio ([`Tokio`]); the gateway runs it on its own glommio
//! executor (that implementation lives in the gateway, which knows glommio's
//! sockets), so a metad call never crosses threads there: a hand-off to
//! another thread and back cost two wake-ups per call.
//!
//! Invariants: every future an implementation returns runs on the calling
//! thread (Cap'n Proto clients are not `Send`); `connect` applies the
//! security it is given (TLS, and authenticating with the credentials)
//! before it returns a client.

use crate::net::Security;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;
use tessera_schema::metad_capnp::metad;

/// A future of the calling thread's executor.
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// What a metad client needs from the executor it runs on.
pub trait ClientRuntime {
    /// Runs `task` as a task of the calling thread's executor, detached.
    fn spawn_local(&self, task: LocalFuture<()>);
    /// Completes after `d`.
    fn sleep(&self, d: Duration) -> LocalFuture<()>;
    /// Opens a connection to the replica at `addr` ("host:port"), with TLS
    /// and authentication as `security` says; the connection is driven by a
    /// task of this executor. A refused access key is a `PermissionDenied`
    /// error.
    fn connect(&self, addr: &str, security: &Security) -> LocalFuture<io::Result<metad::Client>>;
}

/// The client on a tokio `LocalSet`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokio;

impl ClientRuntime for Tokio {
    fn spawn_local(&self, task: LocalFuture<()>) {
        tokio::task::spawn_local(task);
    }

    fn sleep(&self, d: Duration) -> LocalFuture<()> {
        Box::pin(tokio::time::sleep(d))
    }

    fn connect(&self, addr: &str, security: &Security) -> LocalFuture<io::Result<metad::Client>> {
        let (addr, security) = (addr.to_string(), security.clone());
        Box::pin(async move { crate::net::connect(&addr, &security).await })
    }
}

/// Runs `f` on a fresh current-thread tokio runtime with a `LocalSet`, as
/// a replica runs its tasks: what unit tests of this crate drive their
/// futures with.
#[cfg(test)]
pub(crate) fn run_local<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a test runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}

/// `fut`'s output, or `None` when `limit` passed first (on `rt`'s timer).
pub async fn within<T>(
    rt: &dyn ClientRuntime,
    limit: Duration,
    fut: impl Future<Output = T>,
) -> Option<T> {
    let fut = std::pin::pin!(fut);
    match futures::future::select(fut, rt.sleep(limit)).await {
        futures::future::Either::Left((v, _)) => Some(v),
        futures::future::Either::Right(_) => None,
    }
}
