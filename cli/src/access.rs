//! How the CLI reaches a cluster: the CA it checks servers against and the
//! access key it authenticates with, from the cluster file, overridden by
//! `TESSERA_CA`, `TESSERA_KEY_ID` and `TESSERA_SECRET`.
//!
//! Also the dev cluster's first admin key: made once per data directory,
//! stored (as its salted HMAC) in metad over the node certificate, and
//! kept with its secret in `DIR/tls/admin-key.toml` (0600) so that a
//! restarted `tessera dev` hands out the same key.

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tessera_auth::Credentials;
use tessera_metad::net::Security;
use tessera_rpc::cluster::ClusterFile;
use tessera_rpc::ConnectOptions;

/// What the CLI shows servers.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub ca: Option<PathBuf>,
    pub credentials: Option<Credentials>,
}

/// A gateway and how to talk to it.
#[derive(Debug, Clone)]
pub struct Gw {
    pub addr: SocketAddr,
    pub opts: ConnectOptions,
}

impl std::fmt::Display for Gw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)
    }
}

impl Access {
    /// From the cluster file (if any) and the environment.
    pub fn new(file: Option<&ClusterFile>) -> Result<Access> {
        let mut a = Access {
            ca: file.and_then(|f| f.ca.clone()),
            credentials: file.and_then(|f| f.credentials.clone()),
        };
        if let Some(ca) = std::env::var_os("TESSERA_CA") {
            a.ca = Some(PathBuf::from(ca));
        }
        match (
            std::env::var("TESSERA_KEY_ID"),
            std::env::var("TESSERA_SECRET"),
        ) {
            (Ok(key_id), Ok(secret)) => a.credentials = Some(Credentials { key_id, secret }),
            (Ok(_), Err(_)) | (Err(_), Ok(_)) => {
                bail!("set both TESSERA_KEY_ID and TESSERA_SECRET, or neither")
            }
            _ => {}
        }
        Ok(a)
    }

    fn connector(&self) -> Result<Option<tessera_tls::Connector>> {
        self.ca
            .as_ref()
            .map(|ca| {
                tessera_tls::Connector::client(ca)
                    .with_context(|| format!("the cluster CA {}", ca.display()))
            })
            .transpose()
    }

    /// How to open gateway connections.
    pub fn gateway(&self, addr: SocketAddr) -> Result<Gw> {
        Ok(Gw {
            addr,
            opts: ConnectOptions {
                tls: self.connector()?,
                credentials: self.credentials.clone(),
                local_socket: None,
            },
        })
    }

    /// How to open metad connections (operator commands: an admin key).
    pub fn metad(&self) -> Result<Security> {
        let tls = self.connector()?;
        if tls.is_some() && self.credentials.is_none() {
            bail!(
                "operator commands need an admin access key: put one in the cluster file or set \
                 TESSERA_KEY_ID and TESSERA_SECRET (`tessera key create --permissions a`)"
            );
        }
        Ok(Security {
            tls,
            credentials: self.credentials.clone(),
            local_socket_dir: None,
        })
    }
}

/// The dev cluster's admin key file.
pub fn dev_key_path(data: &Path) -> PathBuf {
    data.join("tls").join("admin-key.toml")
}

/// The dev cluster's admin key: read from `DIR/tls/admin-key.toml`, or
/// made, stored in metad (through `bridge`, which uses the node
/// certificate) and written there.
pub async fn dev_admin_key(
    data: &Path,
    bridge: &tessera_gateway::bridge::MetaBridge,
    seal: Option<&tessera_auth::SealKey>,
) -> Result<Credentials> {
    let path = dev_key_path(data);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return toml::from_str(&text).with_context(|| format!("{} is damaged", path.display()));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let (rec, creds) = tessera_auth::keys::new_key(
        "tessera dev admin",
        tessera_auth::Permissions::ALL,
        "",
        now,
        seal,
    )?;
    tessera_gateway::auth::store_new(bridge, &rec)
        .await
        .context("storing the dev admin key in metad")?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(toml::to_string(&creds)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(creds)
}
