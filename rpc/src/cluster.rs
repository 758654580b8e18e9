//! The cluster file: where a cluster's gateway and metad listen (and, for a
//! `tessera dev` cluster, each process's pid). `tessera dev` writes it;
//! every other command reads it (`--cluster FILE`, else `$TESSERA_CLUSTER`,
//! else `~/.config/tessera/cluster.toml`). It lives in the client library
//! so that every tool finds a cluster the same way.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub gateway: String,
    pub metad: Vec<String>,
    /// Data directory of a dev cluster.
    #[serde(default)]
    pub data: Option<PathBuf>,
    /// Processes of a dev cluster: (role and number, address, pid).
    #[serde(default)]
    pub processes: Vec<Process>,
    /// The cluster CA (PEM) servers' certificates are checked against;
    /// none for an `--insecure` cluster (plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The access key commands authenticate with (`TESSERA_KEY_ID` and
    /// `TESSERA_SECRET` override it). The file is written 0600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<tessera_auth::Credentials>,
    /// The S3 endpoint of a dev cluster (`http://HOST:PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Process {
    pub name: String,
    pub addr: String,
    pub pid: u32,
    /// Where it serves Prometheus metrics (`http://ADDR/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// The cluster file to use: the flag, `$TESSERA_CLUSTER`, or the default.
pub fn path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("TESSERA_CLUSTER") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".config/tessera/cluster.toml")
}

pub fn read(path: &Path) -> Result<ClusterFile> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Invalid(format!(
            "no cluster file at {} ({e}): start a local cluster with `tessera dev`, or pass \
             --cluster FILE or --gateway ADDR",
            path.display()
        ))
    })?;
    toml::from_str(&text).map_err(|e| {
        Error::Invalid(format!(
            "{} is not a valid cluster file: {e}",
            path.display()
        ))
    })
}

impl ClusterFile {
    /// The gateway's address.
    pub fn gateway_addr(&self) -> Result<std::net::SocketAddr> {
        self.gateway.parse().map_err(|_| {
            Error::Invalid(format!(
                "the cluster file's gateway {:?} is not host:port",
                self.gateway
            ))
        })
    }
}

/// Writes the file atomically (a reader never sees half of it).
pub fn write(path: &Path, c: &ClusterFile) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let text = toml::to_string_pretty(c).map_err(std::io::Error::other)?;
    // It may hold an access key's secret: only its owner reads it.
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
