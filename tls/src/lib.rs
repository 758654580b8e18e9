//! TLS for every Tessera connection.
//!
//! Owns: the certificate files a daemon is given (`--tls-ca/--tls-cert/
//! --tls-key` or a `[tls]` table), the rustls configurations built from
//! them, and the cluster CA `tessera dev` makes on first run ([`dev`]).
//!
//! The trust model (ARCHITECTURE.md, "Security"):
//! - Every daemon holds a *node* certificate signed by the cluster CA; its
//!   names include [`NODE_SERVER_NAME`], the name every client checks
//!   (nodes are found by address in the registry, so the name proves
//!   membership of the cluster, not which node it is; the chunk client
//!   checks node ids on top).
//! - Node-to-node connections are mutual: a chunk server refuses a peer
//!   without a certificate from the cluster CA; metad accepts a peer
//!   without one only to let it authenticate with an admin access key.
//! - Applications and the CLI need no certificate: they check the
//!   server's against the CA and prove who they are with an access key.
//! - TLS 1.3 only, ring's ciphers (AES-GCM with AES-NI here).
//!
//! Invariants: a daemon without certificates refuses to start unless
//! `--insecure` was asked for ([`resolve`]); key files are written 0600.

pub mod dev;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use rustls;

/// The name in every node certificate, checked by every client.
pub const NODE_SERVER_NAME: &str = "tessera-node";
/// Longest a TLS handshake may take before the connection is dropped (a
/// client that opens a socket and says nothing must not hold a slot).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest certificate or key file read (PEM).
pub const PEM_FILE_MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {PEM_FILE_MAX_BYTES} bytes; is it a PEM certificate or key?")]
    TooLarge { path: PathBuf },
    #[error("{path} holds no PEM certificate (expected `-----BEGIN CERTIFICATE-----`)")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (expected `-----BEGIN PRIVATE KEY-----`)")]
    NoKey { path: PathBuf },
    #[error("{path}: {message}")]
    BadPem { path: PathBuf, message: String },
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
    #[error("the CA certificate is not usable: {0}")]
    BadCa(String),
    #[error("making certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The certificate files of a daemon (all PEM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate: peers are trusted if it signed theirs.
    pub ca: PathBuf,
    /// This node's certificate (signed by the CA).
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// The TLS flags every daemon takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Cluster CA certificate (PEM); with --tls-cert and --tls-key.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Accept and make plaintext connections with no authentication. Only
    /// for a machine nobody else can reach.
    #[arg(long)]
    pub insecure: bool,
}

/// The flags that give a daemon `files` (`--tls-ca/--tls-cert/--tls-key`),
/// or `--insecure` without: what a process starting daemons passes on.
pub fn daemon_args(files: Option<&TlsFiles>) -> Vec<std::ffi::OsString> {
    match files {
        Some(f) => vec![
            "--tls-ca".into(),
            f.ca.clone().into(),
            "--tls-cert".into(),
            f.cert.clone().into(),
            "--tls-key".into(),
            f.key.clone().into(),
        ],
        None => vec!["--insecure".into()],
    }
}

/// The daemon's certificates from its flags (which win) or its settings
/// file; `None` when it runs `--insecure`. Neither is an error that says
/// what to do: security is never off by accident.
pub fn resolve(
    args: &TlsArgs,
    file: Option<&TlsFiles>,
    file_insecure: bool,
) -> Result<Option<TlsFiles>> {
    let flags = [&args.tls_ca, &args.tls_cert, &args.tls_key];
    let given = flags.iter().filter(|f| f.is_some()).count();
    let from_flags = match (given, &args.tls_ca, &args.tls_cert, &args.tls_key) {
        (0, ..) => None,
        (3, Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => {
            return Err(Error::Config(
                "give all three of --tls-ca, --tls-cert and --tls-key (or none and a [tls] \
                 table in the config file)"
                    .into(),
            ))
        }
    };
    let files = from_flags.or_else(|| file.cloned());
    let insecure = args.insecure || file_insecure;
    match (files, insecure) {
        (Some(_), true) => Err(Error::Config(
            "both certificates and --insecure were given; choose one (drop --insecure / \
             `insecure = true` to run with TLS)"
                .into(),
        )),
        (Some(f), false) => Ok(Some(f)),
        (None, true) => Ok(None),
        (None, false) => Err(Error::Config(
            "no TLS certificates: give --tls-ca, --tls-cert and --tls-key (or a [tls] table \
             with ca, cert and key in the config file; `tessera dev` makes them), or run with \
             --insecure to accept unauthenticated plaintext connections"
                .into(),
        )),
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    if meta.len() > PEM_FILE_MAX_BYTES {
        return Err(Error::TooLarge { path: path.into() });
    }
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })
}

/// The certificates of a PEM file (a chain: leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::BadPem {
            path: path.into(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read_pem(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| Error::BadPem {
            path: path.into(),
            message: e.to_string(),
        })?
        .ok_or_else(|| Error::NoKey { path: path.into() })
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| Error::BadCa(format!("{}: {e}", ca.display())))?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Who must show a certificate to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Only peers with a certificate from the cluster CA get in (chunkd).
    Required,
    /// A certificate, if shown, must be from the cluster CA; peers without
    /// one get in and must authenticate otherwise (metad: admin keys).
    Optional,
    /// No certificate is asked for (the gateway: clients use access keys).
    None,
}

/// The server side of a daemon.
pub fn server_config(files: &TlsFiles, auth: ClientAuth) -> Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| Error::Rustls {
            what: "TLS versions",
            source,
        })?;
    let builder = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Required | ClientAuth::Optional => {
            let v = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider());
            let v = if auth == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            let v = v.build().map_err(|e| Error::BadCa(e.to_string()))?;
            builder.with_client_cert_verifier(v)
        }
    };
    let mut cfg = builder
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|source| Error::Rustls {
            what: "the node certificate and key do not fit together",
            source,
        })?;
    // Cap'n Proto frames are the protocol; no ALPN, no session tickets to
    // rotate: connections are long-lived.
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// An HTTPS server (the S3 front): the certificate chain and key of
/// `cert`/`key` (PEM), TLS 1.2 and 1.3 (S3 clients still speak 1.2),
/// HTTP/1.1 by ALPN, no client certificates.
pub fn https_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| Error::Rustls {
            what: "TLS versions",
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|source| Error::Rustls {
            what: "the certificate and key do not fit together",
            source,
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The client side of a daemon: checks servers against the CA and shows
/// the node certificate.
pub fn node_client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>> {
    let cfg = client_builder(&files.ca)?
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|source| Error::Rustls {
            what: "the node certificate and key do not fit together",
            source,
        })?;
    Ok(Arc::new(cfg))
}

/// The client side of an application or the CLI: checks servers against
/// the CA, shows no certificate.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>> {
    Ok(Arc::new(client_builder(ca)?.with_no_client_auth()))
}

/// TLS 1.3 with ring, trusting what `ca` signed.
fn client_builder(
    ca: &Path,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| Error::Rustls {
            what: "TLS versions",
            source,
        })?
        .with_root_certificates(roots(ca)?))
}

/// What a client needs to open TLS connections: its configuration and the
/// name it checks in the server's certificate.
#[derive(Clone)]
pub struct Connector {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connector({:?})", self.server_name)
    }
}

impl Connector {
    /// A connector that checks for [`NODE_SERVER_NAME`].
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Connector {
            config,
            server_name: ServerName::try_from(NODE_SERVER_NAME)
                .expect("NODE_SERVER_NAME is a valid DNS name"),
        }
    }

    /// A daemon's connector (with its node certificate).
    pub fn node(files: &TlsFiles) -> Result<Self> {
        Ok(Self::new(node_client_config(files)?))
    }

    /// An application's connector (CA only).
    pub fn client(ca: &Path) -> Result<Self> {
        Ok(Self::new(client_config(ca)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ca: bool, cert: bool, key: bool, insecure: bool) -> TlsArgs {
        TlsArgs {
            tls_ca: ca.then(|| "ca.pem".into()),
            tls_cert: cert.then(|| "c.pem".into()),
            tls_key: key.then(|| "k.pem".into()),
            insecure,
        }
    }

    #[test]
    fn security_is_never_off_by_accident() {
        let file = TlsFiles {
            ca: "f-ca".into(),
            cert: "f-c".into(),
            key: "f-k".into(),
        };
        for bits in 0u8..16 {
            let a = args(bits & 1 != 0, bits & 2 != 0, bits & 4 != 0, bits & 8 != 0);
            for with_file in [false, true] {
                for file_insecure in [false, true] {
                    let r = resolve(&a, with_file.then_some(&file), file_insecure);
                    let some_flags = bits & 7 != 0;
                    let all_flags = bits & 7 == 7;
                    let insecure = a.insecure || file_insecure;
                    let has_files = all_flags || (!some_flags && with_file);
                    match r {
                        Ok(None) => assert!(insecure && !has_files, "insecure only when asked"),
                        Ok(Some(f)) => {
                            assert!(!insecure);
                            if all_flags {
                                assert_eq!(f.ca, PathBuf::from("ca.pem"));
                            } else {
                                assert_eq!(f, file);
                            }
                        }
                        Err(_) => assert!(
                            (some_flags && !all_flags) || insecure == has_files,
                            "refused a valid choice: {a:?} file={with_file} {file_insecure}"
                        ),
                    }
                }
            }
        }
    }

    #[test]
    fn dev_certificates_load_into_both_sides() {
        let d = tempfile::tempdir().unwrap();
        let files = dev::ensure(d.path()).unwrap();
        server_config(&files, ClientAuth::Required).unwrap();
        server_config(&files, ClientAuth::Optional).unwrap();
        node_client_config(&files).unwrap();
        client_config(&files.ca).unwrap();
        // A second call keeps the same CA.
        let ca = std::fs::read(&files.ca).unwrap();
        let again = dev::ensure(d.path()).unwrap();
        assert_eq!(std::fs::read(&again.ca).unwrap(), ca);
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.pem");
        std::fs::write(&p, b"not a pem").unwrap();
        let e = load_certs(&p).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = load_key(&p).unwrap_err().to_string();
        assert!(e.contains("no PEM private key"), "{e}");
        let e = load_certs(&d.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
