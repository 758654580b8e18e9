//! The call gate: every call on a service's bootstrap capability passes a
//! policy before the service sees it.
//!
//! Each accepted connection gets its own [`Session`] (what its peer proved:
//! a node certificate, or an access key via the service's `authenticate`
//! method) and its own gate around the service. The policy maps (interface,
//! method) to allow, refuse, or "allow after this check" (an async re-check,
//! e.g. that a key was not revoked since it authenticated). A refused call
//! fails with a `failed` exception whose message says what was wrong and
//! what to do; the service never runs, so nothing is written.

use crate::keys::Grant;
use capnp::capability::{DispatchCallResult, FromServer, Params, Promise, Results, Server};
use futures::future::LocalBoxFuture;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

/// What a connection's peer has proved.
#[derive(Debug, Default)]
pub struct Session {
    /// The peer showed a certificate from the cluster CA (or the cluster
    /// runs `--insecure`, where every peer is trusted as a node).
    pub node: bool,
    grant: RefCell<Option<(Grant, Instant)>>,
}

impl Session {
    pub fn new(node: bool) -> Rc<Self> {
        Rc::new(Session {
            node,
            grant: RefCell::new(None),
        })
    }

    /// Records a successful `authenticate`.
    pub fn grant(&self, g: Grant) {
        *self.grant.borrow_mut() = Some((g, Instant::now()));
    }

    /// Forgets the key (it was revoked).
    pub fn revoke(&self) {
        self.grant.borrow_mut().take();
    }

    /// The key this connection authenticated with, and when it was last
    /// checked.
    pub fn current(&self) -> Option<(Grant, Instant)> {
        self.grant.borrow().clone()
    }

    /// Marks the key as checked now.
    pub fn rechecked(&self) {
        if let Some((_, at)) = self.grant.borrow_mut().as_mut() {
            *at = Instant::now();
        }
    }

    /// What this connection may do on objects: everything for a node,
    /// the key's grant otherwise.
    pub fn effective(&self) -> Option<Grant> {
        if self.node {
            return Some(Grant::everything("node"));
        }
        self.current().map(|(g, _)| g)
    }
}

/// A policy's answer for one call.
pub enum Check {
    Allow,
    Refuse(String),
    /// Allow once the future succeeds; refuse with its error otherwise.
    After(LocalBoxFuture<'static, Result<(), String>>),
}

type Policy = Box<dyn Fn(u64, u16) -> Check>;

/// A service behind a policy (see the module docs).
pub struct Gate<D> {
    inner: D,
    policy: Policy,
}

/// The dispatch form of a [`Gate`] (what capnp-rpc calls).
pub struct GateDispatch<D>(Rc<Gate<D>>);

impl<D> Clone for GateDispatch<D> {
    fn clone(&self) -> Self {
        GateDispatch(self.0.clone())
    }
}

impl<D> std::ops::Deref for GateDispatch<D> {
    type Target = Gate<D>;
    fn deref(&self) -> &Gate<D> {
        &self.0
    }
}

impl<D: Server + Clone + 'static> Server for GateDispatch<D> {
    fn dispatch_call(
        self,
        interface_id: u64,
        method_id: u16,
        params: Params<capnp::any_pointer::Owned>,
        results: Results<capnp::any_pointer::Owned>,
    ) -> DispatchCallResult {
        match (self.0.policy)(interface_id, method_id) {
            Check::Allow => {
                self.0
                    .inner
                    .clone()
                    .dispatch_call(interface_id, method_id, params, results)
            }
            Check::Refuse(why) => {
                DispatchCallResult::new(Promise::err(capnp::Error::failed(why)), false)
            }
            Check::After(check) => {
                let inner = self.0.inner.clone();
                DispatchCallResult::new(
                    Promise::from_future(async move {
                        check.await.map_err(capnp::Error::failed)?;
                        inner
                            .dispatch_call(interface_id, method_id, params, results)
                            .promise
                            .await
                    }),
                    false,
                )
            }
        }
    }

    fn as_ptr(&self) -> usize {
        self.0.inner.as_ptr()
    }
}

/// Puts `server` behind `policy` and returns the capability to serve.
pub fn gated<C, S>(server: S, policy: impl Fn(u64, u16) -> Check + 'static) -> C
where
    C: FromServer<S> + FromServer<Gate<<C as FromServer<S>>::Dispatch>>,
{
    let inner = <C as FromServer<S>>::from_server(Rc::new(server));
    capnp_rpc::new_client::<C, _>(Gate {
        inner,
        policy: Box::new(policy),
    })
}

macro_rules! gate_for {
    ($client:ty) => {
        impl<D: Server + Clone + 'static> FromServer<Gate<D>> for $client {
            type Dispatch = GateDispatch<D>;
            fn from_server(s: Rc<Gate<D>>) -> GateDispatch<D> {
                GateDispatch(s)
            }
        }
    };
}

gate_for!(tessera_schema::metad_capnp::metad::Client);
gate_for!(tessera_schema::gateway_capnp::gateway::Client);
gate_for!(tessera_schema::chunk_capnp::chunk_server::Client);
