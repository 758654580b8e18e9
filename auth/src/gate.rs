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
//!
//! With [`Bounds`] (the gateway: the face clients reach), a gate also
//! bounds calls in flight per connection (refused with an `overloaded`
//! exception, which clients retry) and how long a call may run (then it is
//! dropped, which cancels it as a client disconnect would); the service
//! holds request payload bytes per connection and in all with
//! [`Session::hold_bytes`] where it reads them. Every call runs inside a `request` tracing span with
//! a process-wide id, the service and the method.

use crate::keys::Grant;
use capnp::capability::{DispatchCallResult, FromServer, Params, Promise, Results, Server};
use futures::future::LocalBoxFuture;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// What a connection's peer has proved.
#[derive(Debug, Default)]
pub struct Session {
    /// The peer showed a certificate from the cluster CA (or the cluster
    /// runs `--insecure`, where every peer is trusted as a node).
    pub node: bool,
    grant: RefCell<Option<(Grant, Instant)>>,
    /// Calls of this connection running now, and their request bytes.
    calls: Cell<usize>,
    bytes: Cell<u64>,
}

impl Session {
    pub fn new(node: bool) -> Rc<Self> {
        Rc::new(Session {
            node,
            ..Session::default()
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

/// Bytes of requests in flight across every connection of a process.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: Cell<u64>,
}

impl Budget {
    pub fn new(limit_bytes: u64) -> Rc<Self> {
        Rc::new(Budget {
            limit: limit_bytes,
            used: Cell::new(0),
        })
    }

    pub fn used(&self) -> u64 {
        self.used.get()
    }
}

/// A timer of the runtime the gate runs on (glommio's or tokio's sleep).
pub type Sleep = fn(Duration) -> LocalBoxFuture<'static, ()>;

/// What a gate bounds (see the module docs).
pub struct Bounds {
    /// Calls one connection may have running at once.
    pub calls_per_connection: usize,
    /// Request bytes one connection's running calls may hold.
    pub bytes_per_connection: u64,
    /// Request bytes all connections' running calls may hold.
    pub total: Rc<Budget>,
    /// Longest a call may run, and the runtime's timer.
    pub timeout: Option<(Duration, Sleep)>,
    /// Methods the timeout does not apply to (long streams).
    pub untimed: &'static [u16],
}

/// Names for spans: the service and its methods by ordinal.
#[derive(Clone, Copy)]
pub struct Names {
    pub service: &'static str,
    pub methods: &'static [&'static str],
    /// A storage hot path: its request spans are at debug level, so that
    /// at the default info level they cost nothing per shard request.
    pub hot_path: bool,
}

impl Names {
    fn method(&self, m: u16) -> &'static str {
        self.methods.get(m as usize).copied().unwrap_or("unknown")
    }
}

/// A service behind a policy (see the module docs).
pub struct Gate<D> {
    inner: D,
    policy: Policy,
    session: Rc<Session>,
    bounds: Option<Rc<Bounds>>,
    names: Names,
}

/// Ids of requests, process-wide, for log spans.
static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// Holds a call's share of the bounds; gives it back when dropped.
pub struct Held {
    session: Rc<Session>,
    total: Option<Rc<Budget>>,
    bytes: u64,
    call: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.call {
            self.session
                .calls
                .set(self.session.calls.get().saturating_sub(1));
        }
        self.session
            .bytes
            .set(self.session.bytes.get().saturating_sub(self.bytes));
        if let Some(t) = &self.total {
            t.used.set(t.used.get().saturating_sub(self.bytes));
        }
    }
}

impl<D> Gate<D> {
    /// Takes this call's place among the connection's running calls, or
    /// says that there is none.
    fn hold_call(&self) -> Result<Held, String> {
        let s = &self.session;
        if let Some(b) = &self.bounds {
            if s.calls.get() >= b.calls_per_connection {
                return Err(format!(
                    "overloaded: this connection has {} calls running (at most {}); wait for \
                     answers before sending more",
                    s.calls.get(),
                    b.calls_per_connection
                ));
            }
        }
        s.calls.set(s.calls.get() + 1);
        Ok(Held {
            session: s.clone(),
            total: None,
            bytes: 0,
            call: true,
        })
    }
}

impl Session {
    /// Takes `bytes` of request payload for as long as the returned value
    /// lives (a service calls this where it reads a payload: measuring in
    /// the gate would traverse the message twice), or says which bound it
    /// would break.
    pub fn hold_bytes(self: &Rc<Self>, bounds: &Bounds, bytes: u64) -> Result<Held, String> {
        if self.bytes.get() + bytes > bounds.bytes_per_connection {
            return Err(format!(
                "overloaded: this connection's running calls hold {} request bytes and this \
                 one adds {bytes} (at most {}); wait for answers or send smaller requests",
                self.bytes.get(),
                bounds.bytes_per_connection
            ));
        }
        let t = &bounds.total;
        if t.used.get() + bytes > t.limit {
            return Err(format!(
                "overloaded: the server holds {} bytes of running requests (at most {}); retry \
                 shortly",
                t.used.get(),
                t.limit
            ));
        }
        t.used.set(t.used.get() + bytes);
        self.bytes.set(self.bytes.get() + bytes);
        Ok(Held {
            session: self.clone(),
            total: Some(t.clone()),
            bytes,
            call: false,
        })
    }
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
        let gate = &self.0;
        let check = (gate.policy)(interface_id, method_id);
        if let Check::Refuse(why) = check {
            return DispatchCallResult::new(Promise::err(capnp::Error::failed(why)), false);
        }
        let held = match gate.hold_call() {
            Ok(h) => h,
            Err(why) => {
                return DispatchCallResult::new(Promise::err(capnp::Error::overloaded(why)), false)
            }
        };
        let (id, service, method) = (
            NEXT_REQUEST.fetch_add(1, Ordering::Relaxed),
            gate.names.service,
            gate.names.method(method_id),
        );
        let span = if gate.names.hot_path {
            tracing::debug_span!("request", id, service, method)
        } else {
            tracing::info_span!("request", id, service, method)
        };
        let timeout = gate
            .bounds
            .as_ref()
            .and_then(|b| b.timeout.filter(|_| !b.untimed.contains(&method_id)));
        let inner = gate.inner.clone();
        let (run, is_streaming): (LocalBoxFuture<'static, Result<(), capnp::Error>>, bool) =
            match check {
                Check::After(check) => (
                    Box::pin(async move {
                        check.await.map_err(capnp::Error::failed)?;
                        inner
                            .dispatch_call(interface_id, method_id, params, results)
                            .promise
                            .await
                    }),
                    false,
                ),
                _ => {
                    let r = inner.dispatch_call(interface_id, method_id, params, results);
                    (Box::pin(r.promise), r.is_streaming)
                }
            };
        let run = async move {
            let _held = held;
            match timeout {
                None => run.await,
                Some((limit, sleep)) => match futures::future::select(run, sleep(limit)).await {
                    futures::future::Either::Left((r, _)) => r,
                    futures::future::Either::Right(_) => {
                        tracing::warn!(?limit, "request timed out; cancelled");
                        Err(capnp::Error::failed(format!(
                            "timed out: the request ran longer than {limit:?} and was \
                                 cancelled"
                        )))
                    }
                },
            }
        };
        DispatchCallResult::new(Promise::from_future(run.instrument(span)), is_streaming)
    }

    fn as_ptr(&self) -> usize {
        self.0.inner.as_ptr()
    }
}

/// Puts `server` behind `policy` (and `bounds`, if any) for the
/// connection of `session`; returns the capability to serve.
pub fn gated<C, S>(
    server: S,
    session: Rc<Session>,
    names: Names,
    bounds: Option<Rc<Bounds>>,
    policy: impl Fn(u64, u16) -> Check + 'static,
) -> C
where
    C: FromServer<S> + FromServer<Gate<<C as FromServer<S>>::Dispatch>>,
{
    let inner = <C as FromServer<S>>::from_server(Rc::new(server));
    capnp_rpc::new_client::<C, _>(Gate {
        inner,
        policy: Box::new(policy),
        session,
        bounds,
        names,
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
