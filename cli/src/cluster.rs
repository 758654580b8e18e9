//! The cluster file: where a cluster's gateway and metad listen (and, for a
//! `tessera dev` cluster, each process's pid). `tessera dev` writes it;
//! every other command reads it (`--cluster FILE`, else `$TESSERA_CLUSTER`,
//! else `~/.config/tessera/cluster.toml`).

use anyhow::{Context, Result};
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
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Process {
    pub name: String,
    pub addr: String,
    pub pid: u32,
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
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "no cluster file at {}: start a local cluster with `tessera dev`, or pass --cluster FILE or --gateway ADDR",
            path.display()
        )
    })?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid cluster file", path.display()))
}

/// Writes the file atomically (a reader never sees half of it).
pub fn write(path: &Path, c: &ClusterFile) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, toml::to_string_pretty(c)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
