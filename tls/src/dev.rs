//! The cluster CA of a `tessera dev` cluster, made on first run.
//!
//! `ensure(dir)` writes, once, into `dir`: `ca.pem` and `ca.key` (the
//! cluster CA, ECDSA P-256), `node.pem` and `node.key` (the node
//! certificate every dev daemon uses, for [`crate::NODE_SERVER_NAME`],
//! `localhost` and 127.0.0.1, good for client and server). Later runs reuse
//! them, so a restarted cluster keeps trusting its own nodes. Keys are
//! written 0600, through a temporary file and a rename, so a crash never
//! leaves half a key.

use crate::{Error, Result, TlsFiles, NODE_SERVER_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let err = |source| Error::Write {
        path: path.into(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

/// A new CA: its certificate (PEM), key (PEM) and the pair to sign with.
fn make_ca(name: &str) -> Result<(rcgen::Certificate, KeyPair)> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.distinguished_name
        .push(DnType::OrganizationName, "Tessera dev cluster");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    Ok((cert, key))
}

fn make_node(ca: &rcgen::Certificate, ca_key: &KeyPair) -> Result<(rcgen::Certificate, KeyPair)> {
    let mut p = CertificateParams::new(vec![NODE_SERVER_NAME.to_string(), "localhost".into()])?;
    p.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    p.distinguished_name
        .push(DnType::CommonName, "tessera dev node");
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, ca, ca_key)?;
    Ok((cert, key))
}

fn files_in(dir: &Path) -> TlsFiles {
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("node.pem"),
        key: dir.join("node.key"),
    }
}

/// The dev cluster's certificate files in `dir`, which must exist: a
/// process joining a running cluster never makes a CA of its own.
pub fn existing(dir: &Path) -> Result<TlsFiles> {
    let files = files_in(dir);
    for p in [&files.ca, &files.cert, &files.key] {
        if !p.is_file() {
            return Err(Error::Config(format!(
                "{} is missing: this dev cluster's certificates are not in {} (was the data \
                 directory moved, or started with --insecure?)",
                p.display(),
                dir.display()
            )));
        }
    }
    Ok(files)
}

/// The dev cluster's certificate files in `dir`, made if absent (only
/// `tessera dev` itself calls this).
pub fn ensure(dir: &Path) -> Result<TlsFiles> {
    let files = files_in(dir);
    let ca_key = dir.join("ca.key");
    let present = [&files.ca, &ca_key, &files.cert, &files.key].map(|p| p.exists());
    if present.iter().all(|&p| p) {
        return Ok(files);
    }
    if present.iter().any(|&p| p) {
        return Err(Error::Config(format!(
            "{} holds some but not all of ca.pem, ca.key, node.pem, node.key; restore the \
             missing ones, or remove the directory to make a new CA (every node must then get \
             a new certificate)",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.into(),
        source,
    })?;
    let (ca, key) = make_ca("tessera dev CA")?;
    let (node, node_key) = make_node(&ca, &key)?;
    // Keys first, the CA certificate last: its presence means "complete".
    write_file(&ca_key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&files.key, node_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&files.cert, node.pem().as_bytes(), 0o644)?;
    write_file(&files.ca, ca.pem().as_bytes(), 0o644)?;
    Ok(files)
}
