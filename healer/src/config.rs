//! The healer's settings file: TOML, every key optional, unknown keys
//! refused; command-line flags override it.
//!
//! ```toml
//! metad = ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
//! id = "healer-a"
//! pass_interval_secs = 30
//! dead_grace_secs = 60
//! gc_grace_secs = 3600
//! concurrency = 4
//! rate_mib = 256
//! log = "info"
//! metrics = "127.0.0.1:9464"
//! ```

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// The largest settings file read (anything bigger is not one).
pub const CONFIG_FILE_MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealerFile {
    pub metad: Option<Vec<String>>,
    pub id: Option<String>,
    pub pass_interval_secs: Option<u64>,
    pub dead_grace_secs: Option<u64>,
    pub gc_grace_secs: Option<u64>,
    pub concurrency: Option<usize>,
    pub rate_mib: Option<u64>,
    pub log: Option<String>,
    /// Where to serve Prometheus metrics (`host:port`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Plaintext connections (no `[tls]`).
    #[serde(default)]
    pub insecure: bool,
    /// Certificate files (`ca`, `cert`, `key`).
    pub tls: Option<tessera_tls::TlsFiles>,
}

impl HealerFile {
    pub fn read(path: &Path) -> Result<HealerFile> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::Invalid(format!("settings file {}: {e}", path.display())))?;
        if meta.len() > CONFIG_FILE_MAX_BYTES {
            return Err(Error::Invalid(format!(
                "settings file {} is {} bytes; at most {CONFIG_FILE_MAX_BYTES}",
                path.display(),
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Invalid(format!("settings file {}: {e}", path.display())))?;
        Self::parse(&text)
            .map_err(|e| Error::Invalid(format!("settings file {}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<HealerFile> {
        toml::from_str(text).map_err(|e| Error::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_unknown_ones_are_refused() {
        let f = HealerFile::parse("id = \"h\"\nrate_mib = 64\nmetad = [\"a:1\"]\n").unwrap();
        assert_eq!(f.id.as_deref(), Some("h"));
        assert_eq!(f.rate_mib, Some(64));
        assert_eq!(f.metad, Some(vec!["a:1".to_string()]));
        let e = HealerFile::parse("rate_mb = 64\n").unwrap_err().to_string();
        assert!(e.contains("rate_mb"), "{e}");
        assert!(HealerFile::parse("concurrency = \"four\"\n").is_err());
    }
}
