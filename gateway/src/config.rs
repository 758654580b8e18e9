//! The gateway's settings file: TOML, every key optional, unknown keys
//! refused; command-line flags override it (see docs/CONFIG.md).

use crate::error::{Error, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

/// The largest settings file read.
pub const CONFIG_FILE_MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    pub listen: Option<SocketAddr>,
    /// A Unix socket for processes on this machine (plaintext, mode 0600).
    pub local_socket: Option<std::path::PathBuf>,
    /// This machine's local socket directory (chunk servers there are
    /// reached without TCP and TLS).
    pub local_socket_dir: Option<std::path::PathBuf>,
    pub metad: Option<Vec<String>>,
    pub id: Option<String>,
    pub k: Option<u8>,
    pub m: Option<u8>,
    pub shard_bytes: Option<u32>,
    pub codec: Option<String>,
    /// `PREFIX=K+M[:CODEC]` entries.
    pub pools: Option<Vec<String>>,
    pub inline_max: Option<u64>,
    pub metrics: Option<SocketAddr>,
    pub log: Option<String>,
    pub connections_per_peer: Option<usize>,
    /// Accept plaintext connections with no access keys (no `[tls]`).
    #[serde(default)]
    pub insecure: bool,
    /// Certificate files (`ca`, `cert`, `key`).
    pub tls: Option<tessera_tls::TlsFiles>,
    /// The cluster's seal key file (S3 access for new keys).
    pub seal_key: Option<std::path::PathBuf>,
    /// Bytes the read cache may hold (0: off).
    pub cache_bytes: Option<u64>,
    /// Only reads fill the read cache (else writes do too).
    #[serde(default)]
    pub cache_reads_only: bool,
    /// The read cache takes its memory as it fills (else all of it at start).
    #[serde(default)]
    pub cache_lazy_memory: bool,
}

impl GatewayFile {
    pub fn read(path: &Path) -> Result<GatewayFile> {
        let bad = |e: String| Error::Invalid(format!("settings file {}: {e}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if meta.len() > CONFIG_FILE_MAX_BYTES {
            return Err(bad(format!(
                "{} bytes; at most {CONFIG_FILE_MAX_BYTES}",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Self::parse(&text).map_err(|e| bad(e.to_string()))
    }

    pub fn parse(text: &str) -> Result<GatewayFile> {
        toml::from_str(text).map_err(|e| Error::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_unknown_ones_are_refused() {
        let f = GatewayFile::parse(
            "k = 8\nm = 3\npools = [\"logs/=8+3\"]\nlisten = \"127.0.0.1:7300\"\n",
        )
        .unwrap();
        assert_eq!((f.k, f.m), (Some(8), Some(3)));
        assert_eq!(f.pools, Some(vec!["logs/=8+3".to_string()]));
        let e = GatewayFile::parse("inline_max_bytes = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("inline_max_bytes"), "{e}");
        assert!(GatewayFile::parse("k = 300\n").is_err(), "k is a u8");
    }
}
