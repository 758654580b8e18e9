//! Configuration: a TOML file (every key optional, unknown keys refused)
//! overridden by command-line flags.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default listen address (loopback: exposing a node is a decision).
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7410";

/// Default time to finish in-flight requests at shutdown.
pub const SHUTDOWN_GRACE_DEFAULT_SECS: u64 = 10;

/// Default connections per core; more are closed at once (a flood of
/// connections cannot exhaust file descriptors or memory).
pub const CONNECTIONS_PER_CORE_DEFAULT: usize = 1024;

/// Default bytes of streamed puts one core buffers at once (each stream
/// reserves its announced length); beyond it new streams are refused.
pub const STREAM_BUFFER_PER_CORE_DEFAULT_BYTES: u64 = 512 << 20;

/// The chunk server's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Data directory (the engine's files and the node id).
    pub data: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed at start).
    pub listen: SocketAddr,
    /// Engine shards (= cores serving) for a new data directory; 0 = one
    /// per core. An existing directory keeps its own count.
    pub shards: usize,
    /// Pin each shard's thread to a core.
    pub pin_to_cores: bool,
    /// Segment file size of a new data directory, bytes.
    pub segment_size_bytes: u64,
    /// Background scrub rate per shard, bytes per second.
    pub scrub_bytes_per_sec: u64,
    /// Time between background scrub passes, seconds (0 = never).
    pub scrub_interval_secs: u64,
    /// Time to finish in-flight requests at shutdown, seconds.
    pub shutdown_grace_secs: u64,
    /// Open connections per core.
    pub connections_per_core: usize,
    /// Bytes of streamed puts buffered per core.
    pub stream_buffer_per_core_bytes: u64,
    /// metad replicas (host:port) to register with; empty = stand alone.
    pub metad: Vec<String>,
    /// Failure zone reported to the registry (placement spreads shards
    /// over zones when nodes have them).
    pub zone: String,
    /// Address gateways reach this node at (default: the listen address).
    pub advertise: Option<SocketAddr>,
    /// Where to serve Prometheus metrics (`host:port`); none by default.
    pub metrics: Option<SocketAddr>,
    /// Accept plaintext connections from anyone (no `[tls]`).
    pub insecure: bool,
    /// Certificate files (`ca`, `cert`, `key`): peers must show a
    /// certificate from the same CA.
    pub tls: Option<tessera_tls::TlsFiles>,
    /// This machine's local socket directory: each executor also listens
    /// on a Unix socket there, named by the advertised address, so that a
    /// gateway on the same machine given the same directory skips TCP and
    /// TLS (only this user and root may connect). None by default.
    pub local_socket_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        let shard = tessera_engine::ShardConfig::default();
        Config {
            data: PathBuf::from("tessera-data/chunkd"),
            listen: LISTEN_DEFAULT.parse().expect("valid default address"),
            shards: 0,
            pin_to_cores: true,
            segment_size_bytes: shard.segment_size_bytes,
            scrub_bytes_per_sec: shard.scrub_bytes_per_sec,
            scrub_interval_secs: shard.scrub_interval.map_or(0, |d| d.as_secs()),
            shutdown_grace_secs: SHUTDOWN_GRACE_DEFAULT_SECS,
            connections_per_core: CONNECTIONS_PER_CORE_DEFAULT,
            stream_buffer_per_core_bytes: STREAM_BUFFER_PER_CORE_DEFAULT_BYTES,
            metad: Vec::new(),
            zone: String::new(),
            advertise: None,
            metrics: None,
            insecure: false,
            tls: None,
            local_socket_dir: None,
        }
    }
}

impl Config {
    /// Reads a TOML file; unknown keys and wrong types are errors naming
    /// the file and the key.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config> {
        let c: Config = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks values, saying which is wrong and what is allowed.
    pub fn validate(&self) -> Result<()> {
        if self.connections_per_core == 0 {
            return Err(Error::Config(
                "connections_per_core must be at least 1".into(),
            ));
        }
        if self.stream_buffer_per_core_bytes < tessera_rpc::limits::SHARD_SIZE_MAX_BYTES as u64 {
            return Err(Error::Config(format!(
                "stream_buffer_per_core_bytes must be at least one largest shard ({} bytes)",
                tessera_rpc::limits::SHARD_SIZE_MAX_BYTES
            )));
        }
        self.engine_config().shard.validate()?;
        Ok(())
    }

    /// The engine's configuration from these settings.
    pub fn engine_config(&self) -> tessera_engine::EngineConfig {
        let shard = tessera_engine::ShardConfig {
            segment_size_bytes: self.segment_size_bytes,
            scrub_bytes_per_sec: self.scrub_bytes_per_sec,
            scrub_interval: (self.scrub_interval_secs > 0)
                .then(|| std::time::Duration::from_secs(self.scrub_interval_secs)),
            ..tessera_engine::ShardConfig::default()
        };
        tessera_engine::EngineConfig {
            shards: self.shards,
            pin_to_cores: self.pin_to_cores,
            shard,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = Config::from_toml("listen = \"127.0.0.1:1\"\nlisten_addr = 3\n").unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
    }

    #[test]
    fn values_parse_and_defaults_fill_the_rest() {
        let c = Config::from_toml("data = \"/srv/x\"\nshards = 2\n").unwrap();
        assert_eq!(c.data, PathBuf::from("/srv/x"));
        assert_eq!(c.shards, 2);
        assert_eq!(c.listen, LISTEN_DEFAULT.parse().unwrap());
    }

    #[test]
    fn bad_values_say_what_is_allowed() {
        let e = Config::from_toml("connections_per_core = 0\n").unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
        let e = Config::from_toml("segment_size_bytes = 10\n").unwrap_err();
        assert!(e.to_string().contains("segment"), "{e}");
    }
}
