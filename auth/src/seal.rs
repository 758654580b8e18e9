//! Sealed secrets: what lets the S3 front check SigV4 signatures.
//!
//! SigV4 is a symmetric MAC: whoever checks a signature needs the secret
//! itself, not a hash of it. A key record therefore may carry, beside the
//! salted HMAC every Cap'n Proto login checks, the secret sealed
//! (ChaCha20-Poly1305) with the cluster's *seal key*: a 256-bit key in a
//! file (`seal.key`, 0600) that only the gateway (which seals when it
//! makes a key) and the S3 front (which opens) are given. metad and
//! anyone who reads its records see only ciphertext.
//!
//! Format of a sealed secret: `v1:` + hex(nonce (12 bytes) ‖ ciphertext ‖
//! tag (16 bytes)); the key id is the associated data, so a sealed secret
//! copied onto another key's record does not open.
//!
//! Invariants: a seal key file is exactly 64 hex digits (and a newline);
//! it is written 0600 and never logged; opening fails cleanly (never
//! panics) on any damaged input.

use crate::keys::{hex, unhex};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::{Path, PathBuf};

/// Bytes of a seal key.
pub const SEAL_KEY_BYTES: usize = 32;
/// Largest seal key file read (it is 65 bytes).
const SEAL_FILE_MAX_BYTES: u64 = 4096;
/// Longest sealed secret accepted for opening (a 64-hex-digit secret seals
/// into 3 + 2 × (12 + 64 + 16) = 187 characters).
pub const SEALED_LEN_MAX_BYTES: usize = 512;
const VERSION_TAG: &str = "v1:";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("reading the seal key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the seal key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a seal key (one line of 64 hex digits); make one with `tessera dev` or `head -c32 /dev/urandom | xxd -p -c64`")]
    BadKeyFile { path: PathBuf },
    #[error("a sealed secret does not open: it is damaged, belongs to another key, or was sealed with another seal key")]
    DoesNotOpen,
    #[error("no random numbers from the system")]
    Random,
}

/// The cluster's seal key. Debug never shows it.
pub struct SealKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl SealKey {
    fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != SEAL_KEY_BYTES {
            return None;
        }
        let k = UnboundKey::new(&CHACHA20_POLY1305, b).ok()?;
        Some(SealKey {
            key: LessSafeKey::new(k),
        })
    }

    /// A fresh random key and its file text.
    fn generate() -> Result<(Self, String), SealError> {
        let mut b = [0u8; SEAL_KEY_BYTES];
        SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| SealError::Random)?;
        let text = format!("{}\n", hex(&b));
        let k = Self::from_bytes(&b).ok_or(SealError::Random)?;
        Ok((k, text))
    }

    /// Reads the key at `path`.
    pub fn load(path: &Path) -> Result<Self, SealError> {
        use std::io::Read;
        let read = |source| SealError::Read {
            path: path.into(),
            source,
        };
        let f = std::fs::File::open(path).map_err(read)?;
        let mut s = String::new();
        f.take(SEAL_FILE_MAX_BYTES)
            .read_to_string(&mut s)
            .map_err(read)?;
        unhex(s.trim())
            .and_then(|b| Self::from_bytes(&b))
            .ok_or_else(|| SealError::BadKeyFile { path: path.into() })
    }

    /// Reads the key at `path`, making it (0600) first if there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        if path.exists() {
            return Self::load(path);
        }
        let (k, text) = Self::generate()?;
        let write = |source| SealError::Write {
            path: path.into(),
            source,
        };
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(write)?;
        f.write_all(text.as_bytes()).map_err(write)?;
        f.sync_all().map_err(write)?;
        Ok(k)
    }

    /// Seals `secret` for the key `key_id`.
    pub fn seal(&self, key_id: &str, secret: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut buf = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key_id.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{VERSION_TAG}{}", hex(&out)))
    }

    /// Opens what [`SealKey::seal`] made for `key_id`.
    pub fn open(&self, key_id: &str, sealed: &str) -> Result<String, SealError> {
        if sealed.len() > SEALED_LEN_MAX_BYTES {
            return Err(SealError::DoesNotOpen);
        }
        let body = sealed
            .strip_prefix(VERSION_TAG)
            .and_then(unhex)
            .ok_or(SealError::DoesNotOpen)?;
        if body.len() < NONCE_LEN {
            return Err(SealError::DoesNotOpen);
        }
        let (n, ct) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).map_err(|_| SealError::DoesNotOpen)?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(key_id.as_bytes()), &mut buf)
            .map_err(|_| SealError::DoesNotOpen)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::DoesNotOpen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> SealKey {
        SealKey::generate().unwrap().0
    }

    #[test]
    fn a_key_file_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seal.key");
        let a = SealKey::load_or_create(&p).unwrap();
        let sealed = a.seal("TK1", "secret").unwrap();
        let b = SealKey::load_or_create(&p).unwrap();
        assert_eq!(b.open("TK1", &sealed).unwrap(), "secret");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&p, "not hex\n").unwrap();
        assert!(matches!(
            SealKey::load(&p),
            Err(SealError::BadKeyFile { .. })
        ));
        assert_eq!(format!("{b:?}"), "SealKey(<redacted>)");
    }

    proptest! {
        /// A sealed secret opens to itself with its key id only; any
        /// flipped character, truncation, other key id or other seal key
        /// fails cleanly.
        #[test]
        fn seal_opens_only_for_its_key(secret in "[0-9a-f]{64}", flip in 0usize..200, cut in 0usize..200) {
            let k = key();
            let s = k.seal("TKAAAA", &secret).unwrap();
            prop_assert_eq!(k.open("TKAAAA", &s).unwrap(), secret);
            prop_assert!(k.open("TKBBBB", &s).is_err());
            prop_assert!(key().open("TKAAAA", &s).is_err());
            let mut bytes = s.clone().into_bytes();
            let i = flip % bytes.len();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let flipped = String::from_utf8(bytes).unwrap();
            prop_assert!(k.open("TKAAAA", &flipped).is_err());
            if cut < s.len() {
                prop_assert!(k.open("TKAAAA", &s[..cut]).is_err());
            }
        }
    }
}
