//! Registration with metad: the node registers itself (id, address,
//! capacity, zone) and renews its entry every [`HEARTBEAT_INTERVAL`] with
//! its used bytes. An entry not renewed within [`REGISTRY_TTL`] shows as
//! dead, and gateways stop placing shards on it.
//!
//! The metad client runs on tokio, so this runs on its own thread with a
//! current-thread runtime; it stops when the returned handle is dropped.

use crate::error::{Error, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tessera_metad::client::{ClientOptions, MetaClient};

/// How often the node renews its registry entry.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long an entry lives without renewal.
pub const REGISTRY_TTL: Duration = Duration::from_secs(5);
/// One registry call's limit, and how long one is retried: both under the
/// TTL, so that a slow metad costs a late heartbeat, not a lost entry.
pub const REGISTRY_CALL_TIMEOUT: Duration = Duration::from_secs(2);
pub const REGISTRY_RETRY_DEADLINE: Duration = Duration::from_secs(3);

/// Stops the heartbeat thread when dropped.
pub struct Registration {
    stop: Arc<AtomicBool>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub fn start(
    metad: Vec<String>,
    node_id: String,
    addr: String,
    zone: String,
    data: PathBuf,
    tls: Option<tessera_tls::Connector>,
) -> Result<Registration> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::Builder::new()
        .name("registration".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "registration: no tokio runtime; this node stays unregistered");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, run(metad, node_id, addr, zone, data, tls, s));
        })
        .map_err(|e| Error::Config(format!("starting the registration thread: {e}")))?;
    Ok(Registration { stop })
}

async fn run(
    metad: Vec<String>,
    node_id: String,
    addr: String,
    zone: String,
    data: PathBuf,
    tls: Option<tessera_tls::Connector>,
    stop: Arc<AtomicBool>,
) {
    let opts = ClientOptions {
        call_timeout: REGISTRY_CALL_TIMEOUT,
        retry_deadline: REGISTRY_RETRY_DEADLINE,
        security: tessera_metad::net::Security {
            tls,
            credentials: None,
            local_socket_dir: None,
        },
    };
    let mut client: Option<std::rc::Rc<MetaClient>> = None;
    let mut registered = false;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            match MetaClient::connect(&metad, opts.clone()).await {
                Ok(c) => client = Some(c),
                Err(e) => tracing::warn!(error = %e, "registration: metad unreachable; retrying"),
            }
        }
        if let Some(c) = &client {
            let (capacity, available) = crate::service::fs_space(&data).unwrap_or((0, 0));
            let used = capacity.saturating_sub(available);
            let r = if registered {
                c.heartbeat(&node_id, used, capacity).await
            } else {
                c.register_node(&node_id, &addr, capacity, &zone, REGISTRY_TTL)
                    .await
                    .map(|()| {
                        tracing::info!(node_id, addr, "registered with metad");
                    })
            };
            match r {
                Ok(()) => registered = true,
                Err(e) => {
                    tracing::warn!(error = %e, "registration: metad call failed; registering again");
                    registered = false;
                }
            }
        }
        tokio::time::sleep(HEARTBEAT_INTERVAL).await;
    }
}
