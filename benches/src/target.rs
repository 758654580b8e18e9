//! How a benchmark reaches a cluster: its gateway with the cluster file's
//! CA and access key, and (for a dev cluster on this machine) the node
//! certificate it needs to read chunk servers' statistics directly.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use tessera_rpc::cluster::ClusterFile;
use tessera_rpc::ConnectOptions;

#[derive(Debug, Clone)]
pub struct Target {
    pub gateway: SocketAddr,
    pub opts: ConnectOptions,
    /// TLS with the dev cluster's node certificate (`None` = plaintext).
    pub node_tls: Option<tessera_tls::Connector>,
}

impl Target {
    /// A plaintext (`--insecure`) cluster's gateway.
    pub fn insecure(gateway: SocketAddr) -> Self {
        Target {
            gateway,
            opts: ConnectOptions::default(),
            node_tls: None,
        }
    }

    pub fn from_file(file: &ClusterFile) -> Result<Self> {
        let gateway = file.gateway_addr()?;
        let Some(ca) = &file.ca else {
            return Ok(Self::insecure(gateway));
        };
        let node_tls = match &file.data {
            Some(d) => Some(tessera_tls::Connector::node(&tessera_tls::dev::existing(
                &d.join("tls"),
            )?)?),
            None => None,
        };
        Ok(Target {
            gateway,
            opts: ConnectOptions {
                tls: Some(
                    tessera_tls::Connector::client(ca)
                        .with_context(|| format!("the cluster CA {}", ca.display()))?,
                ),
                credentials: file.credentials.clone(),
                // A load generator is a client like any other: TCP and TLS
                // (unless `via_local_socket`).
                local_socket: None,
            },
            node_tls,
        })
    }

    /// Connect over the dev cluster's Unix socket (`DATA/gateway.sock`)
    /// instead of TCP and TLS: plaintext, guarded by the socket file's
    /// mode, as a client on the gateway's machine (the S3 front) does.
    /// `data`: the cluster file's data directory.
    pub fn via_local_socket(&mut self, data: Option<&std::path::Path>) -> Result<()> {
        let Some(d) = data else {
            anyhow::bail!(
                "--local-socket needs a dev cluster's file (it names the data directory that \
                 holds gateway.sock); this cluster file has none"
            );
        };
        let sock = d.join("gateway.sock");
        if !sock.exists() {
            anyhow::bail!(
                "--local-socket: {} does not exist; is the dev cluster running?",
                sock.display()
            );
        }
        self.opts.local_socket = Some(sock);
        Ok(())
    }

    /// Options of a chunk client (TLS with the node certificate).
    pub fn chunk_options(&self) -> tessera_rpc::ClientOptions {
        tessera_rpc::ClientOptions {
            tls: self.node_tls.clone(),
            ..Default::default()
        }
    }

    /// metad access as a node (the bench runs beside a dev cluster).
    pub fn metad_security(&self) -> tessera_metad::net::Security {
        tessera_metad::net::Security {
            tls: self.node_tls.clone(),
            credentials: None,
            local_socket_dir: None,
        }
    }
}
