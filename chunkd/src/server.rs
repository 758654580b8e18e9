//! Listeners and connections on the engine's executors, and the graceful
//! drain at shutdown.
//!
//! Each engine shard's executor binds the listen address with SO_REUSEPORT
//! (glommio's default) and serves the connections the kernel gives it;
//! a bind without it first makes sure no other process listens there.
//! With a local socket directory, each executor also serves its own Unix
//! socket there (`tessera_rpc::local::server_socket`), bound before the
//! executor reports ready and removed at a clean stop; its accept thread
//! admits only this user and root, so those connections skip TLS. A
//! connection beyond the per-core limit is closed at once. Shutdown: stop
//! accepting, refuse new requests with `unavailable`, wait (bounded by the
//! grace period) for in-flight requests to finish; the caller then closes
//! the engine, which flushes and checkpoints.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::service::{ChunkService, Local, NodeState};
use futures::future::{select, Either};
use futures::FutureExt;
use glommio::net::TcpListener;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_engine::Engine;
use tessera_schema::chunk_capnp::chunk_server;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_RETRY_MILLIS: u64 = 20;

/// Method names by ordinal (schema/capnp/chunk.capnp), for request spans.
const NAMES: tessera_auth::Names = tessera_auth::Names {
    service: "chunkd",
    hot_path: true,
    methods: &[
        "put_shard",
        "put_shard_stream",
        "get_shard",
        "get_shard_stream",
        "delete_shard",
        "stat_shard",
        "inventory",
        "scrub_status",
        "start_scrub",
        "bad_shards",
        "node_info",
    ],
};

/// How often the drain checks for in-flight requests.
const DRAIN_POLL_MILLIS: u64 = 5;

/// A running chunk server (its tasks live on the engine's executors).
pub struct Server {
    addr: SocketAddr,
    stops: Vec<async_channel::Sender<()>>,
    drained: std::sync::mpsc::Receiver<(usize, usize)>,
}

impl Server {
    /// Starts listening on every executor of `engine`.
    /// Starts one listener per engine shard; with `tls`, every connection
    /// is TLS and its peer must show a certificate from the cluster CA.
    pub fn start(
        engine: &Engine,
        cfg: &Config,
        node: Arc<NodeState>,
        tls: Option<Arc<tessera_tls::rustls::ServerConfig>>,
    ) -> Result<Server> {
        let mut addr = cfg.listen;
        if addr.port() != 0 {
            // The executors bind with SO_REUSEPORT, which another process of
            // the same user listening there with it too (a second chunk
            // server given the same port) would let succeed: both would
            // serve, each getting some of the connections. A bind without it
            // fails if anything listens there. (A process that takes the
            // port between this probe and the executors' binds is not seen.)
            std::net::TcpListener::bind(addr).map_err(|source| Error::Listen { addr, source })?;
        }
        let mut stops = Vec::new();
        let (drained_tx, drained) = std::sync::mpsc::channel();
        for i in 0..engine.shards() {
            let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let handle = engine.handle();
            let node = node.clone();
            let drained_tx = drained_tx.clone();
            let conns_max = cfg.connections_per_core;
            let stream_budget = cfg.stream_buffer_per_core_bytes;
            let grace = Duration::from_secs(cfg.shutdown_grace_secs);
            let bind = addr;
            let tls = tls.clone();
            let local_dir = cfg.local_socket_dir.clone();
            let advertise = cfg.advertise;
            engine.spawn_on_shard(i, move |ops| {
                Box::pin(async move {
                    let listener = match listen(bind) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    // Bound before this executor says it is ready: a
                    // client that finds the server up finds its sockets.
                    let local_path = local_dir.as_deref().and_then(|dir| {
                        let dial = advertise.or(listener.local_addr().ok())?;
                        tessera_rpc::local::listen_in_dir(dir, &dial.to_string(), i)
                    });
                    let _ = ready_tx.send(listener.local_addr().map_err(Into::into));
                    let local = Rc::new(Local {
                        shard: ops,
                        engine: handle,
                        node,
                        inflight: Rc::new(Cell::new(0)),
                        stream_budget: Rc::new(Cell::new(stream_budget)),
                        draining: Rc::new(Cell::new(false)),
                    });
                    if i == 0 {
                        // Engine gauges, from executor 0 only (the stats
                        // cover every shard). A weak reference: this task
                        // never keeps the engine shard open at shutdown.
                        let weak = Rc::downgrade(&local);
                        glommio::spawn_local(async move {
                            loop {
                                match weak.upgrade() {
                                    Some(l) if !l.draining.get() => {
                                        if let Ok(s) = l.engine.stats().await {
                                            crate::metrics::engine(&s);
                                        }
                                    }
                                    _ => break,
                                }
                                glommio::timer::sleep(crate::metrics::ENGINE_GAUGES_EVERY).await;
                            }
                        })
                        .detach();
                    }
                    // Behind a gate that allows everything (only peers with a
                    // node certificate get this far) for one tracing span
                    // per request.
                    let service = Services {
                        capnp: tessera_auth::gated::<chunk_server::Client, _>(
                            ChunkService::new(local.clone()),
                            tessera_auth::Session::new(true),
                            NAMES,
                            None,
                            |_, _| tessera_auth::Check::Allow,
                        ),
                        frames: Rc::new(ChunkService::new(local.clone())),
                    };
                    let conns = Rc::new(Conns::default());
                    let local_path = local_path.map(|(path, l)| {
                        let (service, stop_rx, conns) =
                            (service.clone(), stop_rx.clone(), conns.clone());
                        glommio::spawn_local(async move {
                            local_accept_loop(l, &service, conns_max, &stop_rx, &conns).await;
                        })
                        .detach();
                        path
                    });
                    let acceptor = tls.map(tessera_rpc::conn::acceptor);
                    accept_loop(&listener, &service, acceptor, conns_max, &stop_rx, &conns).await;
                    drop(listener);
                    if let Some(path) = &local_path {
                        // New connections go to TCP from now on (a gateway
                        // finding no socket, or a refused one, uses TCP).
                        let _ = std::fs::remove_file(path);
                    }
                    local.draining.set(true);
                    let deadline = Instant::now() + grace;
                    while local.inflight.get() > 0 && Instant::now() < deadline {
                        glommio::timer::sleep(Duration::from_millis(DRAIN_POLL_MILLIS)).await;
                    }
                    let left = local.inflight.get();
                    // Close the remaining (idle) connections, so nothing on
                    // this executor holds the engine shard when it closes.
                    for (_, task) in conns.tasks.borrow_mut().drain() {
                        task.cancel();
                    }
                    drop(service);
                    drop(local);
                    let _ = drained_tx.send((i, left));
                })
            })?;
            let bound = ready_rx
                .recv()
                .map_err(|_| Error::Config(format!("executor {i} stopped before listening")))?
                .map_err(|source| Error::Listen { addr, source })?;
            // Port 0: every other executor joins the port the first one got.
            addr = bound;
            stops.push(stop_tx);
        }
        Ok(Server {
            addr,
            stops,
            drained,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, refuses new requests and waits for in-flight ones
    /// (each executor gives up after the configured grace). Returns the
    /// number of requests still running when the grace ran out.
    pub fn drain(self) -> usize {
        for s in &self.stops {
            s.close();
        }
        let mut left = 0;
        for _ in 0..self.stops.len() {
            match self.drained.recv() {
                Ok((_, n)) => left += n,
                Err(_) => break,
            }
        }
        left
    }
}

/// Backlog of each executor's listening socket.
const LISTEN_BACKLOG: i32 = 1024;

/// Binds and listens on `addr` as glommio's `TcpListener::bind` does
/// (SO_REUSEPORT: every executor binds the same port), and with
/// SO_REUSEADDR, which the accepted connections inherit: a connection this
/// server closed first lingers in TIME_WAIT on the server's port for a
/// minute, and without it that blocks the port for a restarted server.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let sk = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sk.set_reuse_port(true)?;
    sk.set_reuse_address(true)?;
    sk.bind(&addr.into())?;
    sk.listen(LISTEN_BACKLOG)?;
    // SAFETY: the descriptor is a bound, listening TCP socket that nothing
    // else owns (into_raw_fd gave up socket2's ownership).
    Ok(unsafe { TcpListener::from_raw_fd(sk.into_raw_fd()) })
}

/// The connection tasks of one executor, by number; each removes itself
/// when it ends.
#[derive(Default)]
struct Conns {
    tasks: Rc<RefCell<HashMap<u64, glommio::task::JoinHandle<()>>>>,
    next: Cell<u64>,
}

impl Conns {
    /// Runs one connection as a task of its own (`peer`: its TCP address;
    /// `None` for a local socket).
    fn spawn(
        &self,
        conn: impl std::future::Future<Output = std::result::Result<(), capnp::Error>> + 'static,
        peer: Option<SocketAddr>,
    ) {
        let n = self.next.get();
        self.next.set(n + 1);
        let tasks = self.tasks.clone();
        let handle = glommio::spawn_local(async move {
            // A panic inside the protocol library (a bug reachable by a
            // hostile peer) must cost that connection only, never the
            // executor and the engine shard it runs.
            match std::panic::AssertUnwindSafe(conn).catch_unwind().await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(?peer, error = %e, "connection ended with an error")
                }
                Err(_) => tracing::error!(
                    ?peer,
                    "connection handler panicked on input from this peer; connection dropped"
                ),
            }
            tasks.borrow_mut().remove(&n);
        })
        .detach();
        self.tasks.borrow_mut().insert(n, handle);
    }
}

/// What one executor serves on each connection: Cap'n Proto, or the
/// framed transport for small shard writes (`tessera_rpc::frames`),
/// whichever the dialer speaks.
#[derive(Clone)]
struct Services {
    capnp: chunk_server::Client,
    frames: Rc<dyn tessera_rpc::frames::FrameService>,
}

impl Services {
    /// Serves `stream` in the protocol its first bytes announce.
    async fn serve<S: tessera_rpc::conn::Io>(
        self,
        stream: S,
    ) -> std::result::Result<(), capnp::Error> {
        use tessera_rpc::frames::{serve, sniff, Sniffed};
        let io = |e: std::io::Error| capnp::Error::failed(format!("framed connection: {e}"));
        match sniff(stream).await.map_err(io)? {
            Sniffed::Frames(s) => serve(s, self.frames).await.map_err(io),
            Sniffed::Other(s) => tessera_rpc::conn::serve(s, self.capnp.client).await,
        }
    }
}

/// Serves the local socket: its accept thread let in only this user and
/// root, who may read this node's key anyway, so no TLS; connections count
/// against the same per-core limit as TCP ones and stop with them.
async fn local_accept_loop(
    mut listener: tessera_rpc::local::LocalListener,
    service: &Services,
    conns_max: usize,
    stop: &async_channel::Receiver<()>,
    conns: &Conns,
) {
    loop {
        let accepted = {
            let accept = Box::pin(listener.accept());
            let stopped = Box::pin(stop.recv());
            match select(accept, stopped).await {
                Either::Left((r, _)) => r,
                Either::Right(_) => return,
            }
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return,
            Err(e) => {
                tracing::warn!(error = %e, "local accept failed");
                glommio::timer::sleep(Duration::from_millis(ACCEPT_RETRY_MILLIS)).await;
                continue;
            }
        };
        if conns.tasks.borrow().len() >= conns_max {
            tracing::warn!(
                limit = conns_max,
                "connection limit reached on this core; closing a new local connection"
            );
            continue;
        }
        conns.spawn(service.clone().serve(stream), None);
    }
}

async fn accept_loop(
    listener: &TcpListener,
    service: &Services,
    tls: Option<tessera_rpc::conn::Acceptor>,
    conns_max: usize,
    stop: &async_channel::Receiver<()>,
    conns: &Conns,
) {
    loop {
        let accept = Box::pin(listener.accept());
        let stopped = Box::pin(stop.recv());
        match select(accept, stopped).await {
            Either::Left((Ok(stream), _)) => {
                if conns.tasks.borrow().len() >= conns_max {
                    tracing::warn!(
                        limit = conns_max,
                        "connection limit reached on this core; closing a new connection"
                    );
                    drop(stream);
                    continue;
                }
                let peer = stream.peer_addr().ok();
                let service = service.clone();
                let tls = tls.clone();
                let conn = async move {
                    // The handshake runs in the connection's task, never in
                    // the accept loop (a silent peer must not stall it).
                    let (stream, _) = tessera_rpc::conn::accept(stream, tls.as_ref())
                        .await
                        .map_err(|e| {
                            crate::metrics::tls_refused();
                            capnp::Error::failed(format!("TLS handshake: {e}"))
                        })?;
                    service.serve(stream).await
                };
                conns.spawn(conn, peer);
            }
            Either::Left((Err(e), _)) => {
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(ACCEPT_RETRY_MILLIS)).await;
            }
            Either::Right(_) => return,
        }
    }
}
