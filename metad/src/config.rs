//! metad's configuration: a TOML file (unknown keys refused) overridden by
//! flags.

use crate::error::{Error, Result};
use crate::replica::RaftTuning;
use crate::types::NodeId;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The TOML file's contents; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<NodeId>,
    pub data: Option<PathBuf>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    /// "1=127.0.0.1:7101,2=..." or a table.
    pub peers: Option<BTreeMap<String, String>>,
    pub groups: Option<u32>,
    pub wal_partitions: Option<u32>,
    pub join: Option<bool>,
    /// Where to serve Prometheus metrics (`host:port`).
    pub metrics: Option<std::net::SocketAddr>,
    /// This machine's local socket directory (see `--local-socket-dir`).
    pub local_socket_dir: Option<PathBuf>,
    /// Accept plaintext, unauthenticated connections (no `[tls]`).
    #[serde(default)]
    pub insecure: bool,
    /// Certificate files (`ca`, `cert`, `key`).
    pub tls: Option<tessera_tls::TlsFiles>,
    #[serde(default)]
    pub raft: RaftTuning,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

/// Parses `--peers 1=host:port,2=host:port`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, String>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| {
            Error::Config(format!(
                "peer {part:?} is not ID=HOST:PORT (e.g. 1=127.0.0.1:7101)"
            ))
        })?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| Error::Config(format!("peer id {id:?} is not a positive integer")))?;
        if id == 0 {
            return Err(Error::Config("peer ids start at 1".into()));
        }
        if addr.trim().is_empty() {
            return Err(Error::Config(format!("peer {id} has no address")));
        }
        if out.insert(id, addr.trim().to_string()).is_some() {
            return Err(Error::Config(format!("peer {id} is listed twice")));
        }
    }
    if out.len() > crate::limits::REPLICAS_MAX {
        return Err(Error::Config(format!(
            "{} peers; at most {}",
            out.len(),
            crate::limits::REPLICAS_MAX
        )));
    }
    Ok(out)
}

pub fn peers_from_table(t: &BTreeMap<String, String>) -> Result<BTreeMap<NodeId, String>> {
    let joined: Vec<String> = t.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parse_peers(&joined.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_refuse_clearly() {
        let p = parse_peers("1=127.0.0.1:1, 2=127.0.0.1:2").unwrap();
        assert_eq!(p.len(), 2);
        assert!(parse_peers("1=a,1=b")
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(parse_peers("x=a")
            .unwrap_err()
            .to_string()
            .contains("positive integer"));
        assert!(parse_peers("1")
            .unwrap_err()
            .to_string()
            .contains("ID=HOST:PORT"));
        assert!(parse_peers("0=a").is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<FileConfig>("idd = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }
}
